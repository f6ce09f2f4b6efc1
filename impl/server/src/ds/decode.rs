//! Bounded, exact decoding of the MLS structures the DS takes from requests: welcomes,
//! group infos and commits or application messages (each an `MLSMessage`), and ratchet
//! trees. Every decoder checks the length against [`MAX_MLS_MESSAGE`] before parsing
//! (`TOO_LARGE`), refuses trailing bytes, and checks the message's wire format, each
//! refusal with the error code its operation has always used.
//!
//! These are pure functions of the received bytes: what the structure means for a group
//! (its id, its epoch, its signatures) is checked by the callers, in `commit` and in the
//! operations. They are public so that the MLS working group's test vectors run through
//! exactly this code (`tests/mls_vectors.rs`).

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, RatchetTreeIn, Welcome};
use tls_codec::Deserialize;

use phoenix_types::error::{ErrorCode, WireError};

/// Largest commit, welcome, group info, application message or ratchet tree (bytes).
pub const MAX_MLS_MESSAGE: usize = 512 * 1024;

// Requirement: WIRE-3, VEC-1
/// Decode an `MLSMessage`: at most [`MAX_MLS_MESSAGE`] bytes, nothing after it.
fn mls_message(bytes: &[u8], code: ErrorCode, what: &str) -> Result<MlsMessageIn, WireError> {
    if bytes.len() > MAX_MLS_MESSAGE {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{what} is too large"),
        ));
    }
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| WireError::new(code, format!("malformed {what}: {e}")))
}

/// A `Welcome` (as sent by a committer adding members): `INVALID_MLS_MESSAGE` if it is
/// malformed or another kind of message.
pub fn welcome(bytes: &[u8]) -> Result<Welcome, WireError> {
    match mls_message(bytes, ErrorCode::InvalidMlsMessage, "welcome")?.extract() {
        MlsMessageBodyIn::Welcome(welcome) => Ok(welcome),
        _ => Err(WireError::new(
            ErrorCode::InvalidMlsMessage,
            "expected a welcome message",
        )),
    }
}

/// A `GroupInfo` (of a new group, or after a commit): `INVALID_GROUP_INFO` if it is
/// malformed or another kind of message. Its signature is not checked here.
pub fn group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, WireError> {
    match mls_message(bytes, ErrorCode::InvalidGroupInfo, "group info")?.extract() {
        MlsMessageBodyIn::GroupInfo(info) => Ok(info),
        _ => Err(WireError::new(
            ErrorCode::InvalidGroupInfo,
            "expected a group info message",
        )),
    }
}

/// A public or private message (a commit, or an application message):
/// `INVALID_MLS_MESSAGE` if it is malformed or another kind of message.
pub fn protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, WireError> {
    mls_message(bytes, ErrorCode::InvalidMlsMessage, "MLS message")?
        .try_into_protocol_message()
        .map_err(|_| {
            WireError::new(
                ErrorCode::InvalidMlsMessage,
                "expected a public or private message",
            )
        })
}

/// A ratchet tree (the creator's, for a new group): `INVALID_MLS_MESSAGE` if malformed.
/// Its nodes are verified when the group is rebuilt from it
/// ([`crate::ds::create_group::rebuild_public_group`]).
pub fn ratchet_tree(bytes: &[u8]) -> Result<RatchetTreeIn, WireError> {
    if bytes.len() > MAX_MLS_MESSAGE {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "ratchet tree is too large",
        ));
    }
    RatchetTreeIn::tls_deserialize_exact(bytes).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidMlsMessage,
            format!("malformed ratchet tree: {e}"),
        )
    })
}
