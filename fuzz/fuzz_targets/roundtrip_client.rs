//! Round trip of the client-to-client payloads: for an arbitrary value, decode(encode(x)) == x and
//! re-encoding the decoded value gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::roundtrip;
use phoenix_types::messages::client::*;

#[derive(Debug, Arbitrary)]
enum Value {
    ClientCredentialInfo(ClientCredentialInfo),
    FriendshipPackage(FriendshipPackage),
    ConnectionEstablishmentTbs(ConnectionEstablishmentTbs),
    ConnectionEstablishmentPackage(ConnectionEstablishmentPackage),
    WelcomeAttributionTbs(WelcomeAttributionTbs),
    WelcomeAttributionInfo(WelcomeAttributionInfo),
    ApplicationPayload(ApplicationPayload),
}

fuzz_target!(|value: Value| {
    match value {
        Value::ClientCredentialInfo(v) => roundtrip(&v),
        Value::FriendshipPackage(v) => roundtrip(&v),
        Value::ConnectionEstablishmentTbs(v) => roundtrip(&v),
        Value::ConnectionEstablishmentPackage(v) => roundtrip(&v),
        Value::WelcomeAttributionTbs(v) => roundtrip(&v),
        Value::WelcomeAttributionInfo(v) => roundtrip(&v),
        Value::ApplicationPayload(v) => roundtrip(&v),
    }
});
