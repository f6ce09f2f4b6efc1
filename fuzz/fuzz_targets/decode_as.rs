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

/// A decoded token request goes through the AS's evaluation (VOPRF element decoding and
/// the batch proof) under a fixed key: malformed elements are an error, never a panic.
fn issue_tokens(data: &[u8]) {
    if let Some(request) = canonical::<IssueGroupTokensRequest>(data) {
        let key = phoenix_types::tokens::TokenKey::from_private(&[7u8; 32]).expect("a key");
        let blinded: Vec<&[u8]> = request.blinded.iter().map(|b| b.as_slice()).collect();
        let _ = key.issue(&mut rand_core::OsRng, &blinded);
    }
}

/// A decoded issuance response goes through the client's proof check and unblinding.
fn finalize_tokens(data: &[u8]) {
    if let Some(response) = canonical::<IssueGroupTokensResponse>(data) {
        let pending: Vec<_> = (0..response.evaluated.len().min(16))
            .map(|_| phoenix_types::tokens::blind(&mut rand_core::OsRng).expect("blinding"))
            .collect();
        let evaluated: Vec<&[u8]> = response.evaluated.iter().map(|e| e.as_slice()).collect();
        let _ = phoenix_types::tokens::finalize(
            &pending,
            &evaluated,
            response.proof.as_slice(),
            response.public_key.as_slice(),
        );
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
            issue_tokens,
            finalize_tokens,
        ],
        data,
    );
});
