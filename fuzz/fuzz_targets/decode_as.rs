//! Every Authentication Service request and response type, chosen by the first byte; a
//! decoded connection package also goes through the AS's package verification.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{canonical, decodes, dispatch};
use phoenix_fuzz::harness::{NOW, key};
use phoenix_server::as_::connection_packages::verify_package;
use phoenix_types::messages::as_::*;
use phoenix_types::messages::{DequeueRequest, DequeueResponse, Empty};

fn connection_package(data: &[u8]) {
    if let Some(package) = canonical::<ConnectionPackage>(data) {
        let owner = key(0).verifying_key().to_bytes();
        let _ = verify_package(&package, &owner, NOW);
    }
}

fuzz_target!(|data: &[u8]| {
    dispatch(
        &[
            decodes::<RegisterRequest>,
            decodes::<RegisterResponse>,
            decodes::<ConnectionPackagePayload>,
            connection_package,
            decodes::<PublishConnectionPackagesRequest>,
            decodes::<FetchConnectionPackageRequest>,
            decodes::<FetchConnectionPackageResponse>,
            decodes::<EnqueueConnectionRequest>,
            decodes::<ClientCertificatesRequest>,
            decodes::<ClientCertificatesResponse>,
            decodes::<RenewCertificateRequest>,
            decodes::<ServerCertificateResponse>,
            decodes::<DequeueRequest>,
            decodes::<DequeueResponse>,
            decodes::<Empty>,
        ],
        data,
    );
});
