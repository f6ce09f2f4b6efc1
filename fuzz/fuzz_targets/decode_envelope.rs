//! The request envelope, as every route decodes it: canonical, and the server's decoder
//! agrees with the codec (same payload bytes, same auth).
#![no_main]

use libfuzzer_sys::fuzz_target;

use phoenix_fuzz::check::{canonical, decodes, dispatch};
use phoenix_server::auth::Request;
use phoenix_types::codec::MAX_BODY;
use phoenix_types::messages::{AsClientAuth, Auth, DsLeafAuth, QsAuth, RequestEnvelope};

fuzz_target!(|data: &[u8]| {
    let envelope = canonical::<RequestEnvelope>(data);
    match Request::decode("as", "register", data, MAX_BODY) {
        Ok(request) => {
            let envelope = envelope.expect("the server decoded what the codec refused");
            assert_eq!(request.payload, envelope.payload.as_slice());
            assert_eq!(request.auth, envelope.auth);
            assert_eq!(envelope.version, phoenix_types::PROTOCOL_VERSION);
        }
        Err(e) => phoenix_fuzz::check::blames_caller("envelope", &e),
    }
    dispatch(
        &[
            decodes::<Auth>,
            decodes::<AsClientAuth>,
            decodes::<QsAuth>,
            decodes::<DsLeafAuth>,
        ],
        data,
    );
});
