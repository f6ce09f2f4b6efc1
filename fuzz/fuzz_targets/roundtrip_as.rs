//! Round trip of the Authentication Service request and response types: for an arbitrary value, decode(encode(x)) == x and
//! re-encoding the decoded value gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::roundtrip;
use phoenix_types::messages::as_::*;

#[derive(Debug, Arbitrary)]
enum Value {
    RegisterRequest(RegisterRequest),
    RegisterResponse(RegisterResponse),
    ConnectionPackagePayload(ConnectionPackagePayload),
    ConnectionPackage(ConnectionPackage),
    PublishConnectionPackagesRequest(PublishConnectionPackagesRequest),
    FetchConnectionPackageRequest(FetchConnectionPackageRequest),
    FetchConnectionPackageResponse(FetchConnectionPackageResponse),
    EnqueueConnectionRequest(EnqueueConnectionRequest),
    ClientCertificatesRequest(ClientCertificatesRequest),
    ClientCertificatesResponse(ClientCertificatesResponse),
    RenewCertificateRequest(RenewCertificateRequest),
    IssueGroupTokensRequest(IssueGroupTokensRequest),
    IssueGroupTokensResponse(IssueGroupTokensResponse),
    ServerCertificateResponse(ServerCertificateResponse),
}

fuzz_target!(|value: Value| {
    match value {
        Value::RegisterRequest(v) => roundtrip(&v),
        Value::RegisterResponse(v) => roundtrip(&v),
        Value::ConnectionPackagePayload(v) => roundtrip(&v),
        Value::ConnectionPackage(v) => roundtrip(&v),
        Value::PublishConnectionPackagesRequest(v) => roundtrip(&v),
        Value::FetchConnectionPackageRequest(v) => roundtrip(&v),
        Value::FetchConnectionPackageResponse(v) => roundtrip(&v),
        Value::EnqueueConnectionRequest(v) => roundtrip(&v),
        Value::ClientCertificatesRequest(v) => roundtrip(&v),
        Value::ClientCertificatesResponse(v) => roundtrip(&v),
        Value::RenewCertificateRequest(v) => roundtrip(&v),
        Value::IssueGroupTokensRequest(v) => roundtrip(&v),
        Value::IssueGroupTokensResponse(v) => roundtrip(&v),
        Value::ServerCertificateResponse(v) => roundtrip(&v),
    }
});
