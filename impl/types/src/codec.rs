//! Bounded, exact decoding of untrusted bytes with the TLS presentation language codec
//! (MLS's own encoding). Every wire body goes through [`decode`]: the input length is
//! checked before anything is parsed, and trailing bytes are an error.

use tls_codec::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// The largest request body any route accepts (bytes). Routes may set smaller limits.
pub const MAX_BODY: usize = 1024 * 1024;

/// Decode `bytes` as a `T`, refusing inputs longer than `max_len` and trailing data.
///
/// tls_codec reads a vector's length prefix before allocating, and never allocates more
/// than the remaining input, so a bounded input bounds the allocation.
pub fn decode<T: Deserialize>(bytes: &[u8], max_len: usize) -> Result<T, WireError> {
    if bytes.len() > max_len {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "body exceeds the size limit",
        ));
    }
    T::tls_deserialize_exact(bytes)
        .map_err(|e| WireError::new(ErrorCode::Malformed, format!("malformed body: {e}")))
}

/// Encode a value. Encoding our own well-formed values only fails if a vector exceeds the
/// codec's length limits, which the size checks upstream rule out; it is still an error,
/// never a panic.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    value
        .tls_serialize_detached()
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("encoding failed: {e}")))
}

/// Decode a UTF-8 string field with a length limit.
pub fn utf8(bytes: &[u8], max_len: usize, what: &'static str) -> Result<String, WireError> {
    if bytes.len() > max_len {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{what} is too long"),
        ));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| WireError::new(ErrorCode::Malformed, format!("{what} is not UTF-8")))
}
