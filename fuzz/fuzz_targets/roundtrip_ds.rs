//! Round trip of the Delivery Service request and response types and queue payloads: for an arbitrary value, decode(encode(x)) == x and
//! re-encoding the decoded value gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::roundtrip;
use phoenix_types::messages::ds::*;

#[derive(Debug, Arbitrary)]
enum Value {
    RequestGroupIdResponse(RequestGroupIdResponse),
    MemberInfo(MemberInfo),
    LeafCredential(LeafCredential),
    CreateGroupRequest(CreateGroupRequest),
    ExternalCommitInfoRequest(ExternalCommitInfoRequest),
    ExternalCommitInfoResponse(ExternalCommitInfoResponse),
    JoinConnectionGroupRequest(JoinConnectionGroupRequest),
    AddedMember(AddedMember),
    AddUsersRequest(AddUsersRequest),
    CommitRequest(CommitRequest),
    SendMessageRequest(SendMessageRequest),
    QueuePayload(QueuePayload),
    GroupMessage(GroupMessage),
    WelcomeBundle(WelcomeBundle),
    RequestGroupIdRequest(RequestGroupIdRequest),
    ResyncRequest(ResyncRequest),
}

fuzz_target!(|value: Value| {
    match value {
        Value::RequestGroupIdResponse(v) => roundtrip(&v),
        Value::RequestGroupIdRequest(v) => roundtrip(&v),
        Value::MemberInfo(v) => roundtrip(&v),
        Value::LeafCredential(v) => roundtrip(&v),
        Value::CreateGroupRequest(v) => roundtrip(&v),
        Value::ExternalCommitInfoRequest(v) => roundtrip(&v),
        Value::ExternalCommitInfoResponse(v) => roundtrip(&v),
        Value::JoinConnectionGroupRequest(v) => roundtrip(&v),
        Value::AddedMember(v) => roundtrip(&v),
        Value::AddUsersRequest(v) => roundtrip(&v),
        Value::CommitRequest(v) => roundtrip(&v),
        Value::SendMessageRequest(v) => roundtrip(&v),
        Value::QueuePayload(v) => roundtrip(&v),
        Value::GroupMessage(v) => roundtrip(&v),
        Value::WelcomeBundle(v) => roundtrip(&v),
        Value::ResyncRequest(v) => roundtrip(&v),
    }
});
