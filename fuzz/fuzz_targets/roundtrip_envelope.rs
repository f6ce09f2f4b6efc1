//! Round trip of the request envelope, queue messages and the DS's stored group state: for an arbitrary value, decode(encode(x)) == x and
//! re-encoding the decoded value gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::roundtrip;
use phoenix_server::ds::group_state::GroupState;
use phoenix_types::messages::*;

#[derive(Debug, Arbitrary)]
enum Value {
    RequestEnvelope(RequestEnvelope),
    Auth(Auth),
    AsClientAuth(AsClientAuth),
    QsAuth(QsAuth),
    DsLeafAuth(DsLeafAuth),
    QueueMessage(QueueMessage),
    DequeueRequest(DequeueRequest),
    DequeueResponse(DequeueResponse),
    Empty(Empty),
    GroupState(GroupState),
}

fuzz_target!(|value: Value| {
    match value {
        Value::RequestEnvelope(v) => roundtrip(&v),
        Value::Auth(v) => roundtrip(&v),
        Value::AsClientAuth(v) => roundtrip(&v),
        Value::QsAuth(v) => roundtrip(&v),
        Value::DsLeafAuth(v) => roundtrip(&v),
        Value::QueueMessage(v) => roundtrip(&v),
        Value::DequeueRequest(v) => roundtrip(&v),
        Value::DequeueResponse(v) => roundtrip(&v),
        Value::Empty(v) => roundtrip(&v),
        Value::GroupState(v) => roundtrip(&v),
    }
});
