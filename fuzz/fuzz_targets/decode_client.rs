//! The client-to-client payloads that travel through the server (encrypted or inside MLS
//! application messages), including the connection establishment package.
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{decodes, dispatch};
use phoenix_types::messages::client::*;

fuzz_target!(|data: &[u8]| {
    dispatch(
        &[
            decodes::<ClientCredentialInfo>,
            decodes::<FriendshipPackage>,
            decodes::<ConnectionEstablishmentTbs>,
            decodes::<ConnectionEstablishmentPackage>,
            decodes::<WelcomeAttributionTbs>,
            decodes::<WelcomeAttributionInfo>,
            decodes::<ApplicationPayload>,
        ],
        data,
    );
});
