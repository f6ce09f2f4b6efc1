//! Round trip of the Queuing Service request and response types, queue configs and the
//! QS-to-QS federation messages: for an arbitrary value, decode(encode(x)) == x and
//! re-encoding the decoded value gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::roundtrip;
use phoenix_types::messages::federation::{FederatedEnqueue, FederatedEnqueueTbs};
use phoenix_types::messages::qs::*;

#[derive(Debug, Arbitrary)]
enum Value {
    QueueConfigKeyResponse(QueueConfigKeyResponse),
    CreateUserRequest(CreateUserRequest),
    CreateUserResponse(CreateUserResponse),
    QueueConfig(QueueConfig),
    SealedQueueConfig(SealedQueueConfig),
    AddPackage(AddPackage),
    PublishKeyPackagesRequest(PublishKeyPackagesRequest),
    FetchKeyPackagesRequest(FetchKeyPackagesRequest),
    FetchKeyPackagesResponse(FetchKeyPackagesResponse),
    KeyPackageStatusRequest(KeyPackageStatusRequest),
    KeyPackageStatusResponse(KeyPackageStatusResponse),
    FederatedEnqueueTbs(FederatedEnqueueTbs),
    FederatedEnqueue(FederatedEnqueue),
    ListenChallenge(ListenChallenge),
    ListenInit(ListenInit),
    ListenInitTbs(ListenInitTbs),
    ListenAck(ListenAck),
    ListenFrame(ListenFrame),
    QueueEntry(phoenix_types::queue_ratchet::QueueEntry),
    RekeyQueueRequest(RekeyQueueRequest),
    SetPushEndpointRequest(SetPushEndpointRequest),
    DeleteClientRequest(DeleteClientRequest),
    DeleteClientResponse(DeleteClientResponse),
}

fuzz_target!(|value: Value| {
    match value {
        Value::QueueConfigKeyResponse(v) => roundtrip(&v),
        Value::CreateUserRequest(v) => roundtrip(&v),
        Value::CreateUserResponse(v) => roundtrip(&v),
        Value::QueueConfig(v) => roundtrip(&v),
        Value::SealedQueueConfig(v) => roundtrip(&v),
        Value::AddPackage(v) => roundtrip(&v),
        Value::PublishKeyPackagesRequest(v) => roundtrip(&v),
        Value::FetchKeyPackagesRequest(v) => roundtrip(&v),
        Value::FetchKeyPackagesResponse(v) => roundtrip(&v),
        Value::KeyPackageStatusRequest(v) => roundtrip(&v),
        Value::KeyPackageStatusResponse(v) => roundtrip(&v),
        Value::FederatedEnqueueTbs(v) => roundtrip(&v),
        Value::FederatedEnqueue(v) => roundtrip(&v),
        Value::ListenChallenge(v) => roundtrip(&v),
        Value::ListenInit(v) => roundtrip(&v),
        Value::ListenInitTbs(v) => roundtrip(&v),
        Value::ListenAck(v) => roundtrip(&v),
        Value::ListenFrame(v) => roundtrip(&v),
        Value::QueueEntry(v) => roundtrip(&v),
        Value::RekeyQueueRequest(v) => roundtrip(&v),
        Value::SetPushEndpointRequest(v) => roundtrip(&v),
        Value::DeleteClientRequest(v) => roundtrip(&v),
        Value::DeleteClientResponse(v) => roundtrip(&v),
    }
});
