//! The properties every decoder target checks.

use std::fmt::Debug;

use tls_codec::{Deserialize, Serialize};

use phoenix_types::codec;
use phoenix_types::error::WireError;

/// Decode `data` as a `T` through the server's bounded, exact decoder. If it decodes, the
/// encoding must be canonical: re-encoding the value gives back exactly the bytes that
/// were received (signatures are checked over received bytes, and stored re-encodings
/// must not differ from what was signed).
pub fn canonical<T: Deserialize + Serialize + Debug>(data: &[u8]) -> Option<T> {
    let value: T = codec::decode(data, codec::MAX_BODY).ok()?;
    let again = codec::encode(&value).expect("a decoded value re-encodes");
    assert_eq!(
        again, data,
        "a non-canonical encoding was accepted: {value:?}"
    );
    Some(value)
}

/// [`canonical`], as a plain function pointer for decoder tables.
pub fn decodes<T: Deserialize + Serialize + Debug>(data: &[u8]) {
    let _ = canonical::<T>(data);
}

/// decode(encode(x)) == x, and re-encoding the decoded value gives the same bytes.
pub fn roundtrip<T: Deserialize + Serialize + PartialEq + Debug>(value: &T) {
    let Ok(bytes) = codec::encode(value) else {
        // Only values beyond the codec's length limits fail to encode; an arbitrary value
        // built from a bounded input never is one, but refusing is not a bug either.
        return;
    };
    let decoded: T = T::tls_deserialize_exact(&bytes)
        .unwrap_or_else(|e| panic!("an encoded value does not decode ({e}): {value:?}"));
    assert_eq!(&decoded, value, "decode(encode(x)) != x");
    let again = codec::encode(&decoded).expect("a decoded value re-encodes");
    assert_eq!(again, bytes, "re-encoding changed the bytes");
}

/// Pick the decoder named by the first byte of `data` and run it on the rest.
pub fn dispatch(table: &[fn(&[u8])], data: &[u8]) {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    if let Some(decoder) = table.get(usize::from(*selector) % table.len().max(1)) {
        decoder(rest);
    }
}

/// An error answered to input must blame the caller (4xx): a 5xx means our own fault,
/// and no input may cause one (design principle 6).
pub fn blames_caller(context: &str, error: &WireError) {
    assert!(
        error.code.http_status() < 500,
        "{context}: input caused a server error {:?}: {}",
        error.code,
        error.detail
    );
}
