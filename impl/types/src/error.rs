//! Stable machine-readable error codes and the RFC 9457 problem document that carries them.
//!
//! The HTTP boundary maps a [`WireError`] to a response exactly once. Codes are part of the
//! protocol: clients, the conformance suite and the model compare them, so they never
//! change meaning. 4xx codes blame the caller; 5xx only our own faults.

use serde::{Deserialize, Serialize};
use thiserror::Error;

macro_rules! codes {
    ($($variant:ident = ($status:expr, $text:expr)),* $(,)?) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            /// The wire string, e.g. `WRONG_EPOCH`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text),* }
            }

            /// The HTTP status this code is answered with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(ErrorCode::$variant),)* _ => None }
            }

            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];
        }
    };
}

codes! {
    Malformed = (400, "MALFORMED"),
    TooLarge = (413, "TOO_LARGE"),
    UnsupportedVersion = (400, "VERSION_UNSUPPORTED"),
    InvalidFid = (400, "INVALID_FID"),
    WrongDomain = (400, "WRONG_DOMAIN"),
    InvalidCsr = (400, "INVALID_CSR"),
    InvalidCertificate = (400, "INVALID_CERTIFICATE"),
    UserExists = (409, "USER_EXISTS"),
    UnknownUser = (404, "UNKNOWN_USER"),
    UnknownClient = (404, "UNKNOWN_CLIENT"),
    Unauthenticated = (401, "UNAUTHENTICATED"),
    BadSignature = (401, "BAD_SIGNATURE"),
    StaleRequest = (401, "STALE_REQUEST"),
    Forbidden = (403, "FORBIDDEN"),
    NoConnectionPackage = (404, "NO_CONNECTION_PACKAGE"),
    InvalidConnectionPackage = (400, "INVALID_CONNECTION_PACKAGE"),
    InvalidKeyPackage = (400, "INVALID_KEY_PACKAGE"),
    MissingQueueConfig = (400, "MISSING_QUEUE_CONFIG"),
    LastResortRequired = (400, "LAST_RESORT_REQUIRED"),
    UnknownFriendshipToken = (404, "UNKNOWN_FRIENDSHIP_TOKEN"),
    DuplicateFriendshipToken = (409, "DUPLICATE_FRIENDSHIP_TOKEN"),
    NoKeyPackage = (404, "NO_KEY_PACKAGE"),
    UnknownQueue = (404, "UNKNOWN_QUEUE"),
    UnknownGroup = (404, "UNKNOWN_GROUP"),
    GroupIdNotReserved = (409, "GROUP_ID_NOT_RESERVED"),
    GroupExists = (409, "GROUP_EXISTS"),
    WrongGroupDomain = (400, "WRONG_GROUP_DOMAIN"),
    WrongEarKey = (403, "WRONG_EAR_KEY"),
    // Requirement: DS-EAR-3
    GroupStateInvalid = (500, "GROUP_STATE_INVALID"),
    WrongEpoch = (409, "WRONG_EPOCH"),
    InvalidMlsMessage = (400, "INVALID_MLS_MESSAGE"),
    InvalidCommit = (400, "INVALID_COMMIT"),
    InvalidGroupInfo = (400, "INVALID_GROUP_INFO"),
    UnknownSender = (403, "UNKNOWN_SENDER"),
    NotConnectionGroup = (409, "NOT_A_CONNECTION_GROUP"),
    GroupFull = (413, "GROUP_FULL"),
    RateLimited = (429, "RATE_LIMITED"),
    FederationRefused = (403, "FEDERATION_REFUSED"),
    Misaddressed = (421, "MISADDRESSED"),
    Replayed = (409, "REPLAYED"),
    // Requirement: DS-GID-3
    InvalidToken = (403, "INVALID_TOKEN"),
    // Requirement: AS-TOKEN-2
    TokenQuotaExceeded = (429, "TOKEN_QUOTA_EXCEEDED"),
    // Requirement: OPS-ADMIN-2
    UserSuspended = (403, "USER_SUSPENDED"),
    UnknownPeer = (502, "UNKNOWN_PEER"),
    NotFound = (404, "NOT_FOUND"),
    MethodNotAllowed = (405, "METHOD_NOT_ALLOWED"),
    UnsupportedMediaType = (415, "UNSUPPORTED_MEDIA_TYPE"),
    RequestTimeout = (408, "REQUEST_TIMEOUT"),
    Internal = (500, "INTERNAL"),
    Unavailable = (503, "UNAVAILABLE"),
}

/// An error as it travels on the wire: a code and a human-readable detail that never
/// contains secrets or internal state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} ({})", detail, code.as_str())]
pub struct WireError {
    pub code: ErrorCode,
    pub detail: String,
}

impl WireError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// The RFC 9457 `application/problem+json` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The stable machine code.
    pub code: String,
}

impl Problem {
    pub const CONTENT_TYPE: &'static str = "application/problem+json";

    pub fn from_error(err: &WireError) -> Self {
        let code = err.code.as_str();
        Self {
            type_: format!(
                "https://phoenix.invalid/errors/{}",
                code.to_ascii_lowercase()
            ),
            title: code.replace('_', " ").to_ascii_lowercase(),
            status: err.code.http_status(),
            detail: err.detail.clone(),
            code: code.to_owned(),
        }
    }

    pub fn to_error(&self) -> WireError {
        let code = ErrorCode::parse(&self.code).unwrap_or(if self.status >= 500 {
            ErrorCode::Internal
        } else {
            ErrorCode::Malformed
        });
        WireError::new(code, self.detail.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_blame_correctly() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            let status = code.http_status();
            let ours = matches!(
                code,
                ErrorCode::Internal
                    | ErrorCode::Unavailable
                    | ErrorCode::UnknownPeer
                    | ErrorCode::GroupStateInvalid
            );
            assert_eq!(status >= 500, ours, "{code:?}");
        }
    }
}
