//! Wire messages. Every Phoenix operation is `POST /phoenix/v1/{as,qs,ds}/<operation>` with a
//! TLS-codec [`RequestEnvelope`] body; a success answer is the TLS-codec response type of
//! that operation (`application/octet-stream`), a failure an RFC 9457 problem document.
//!
//! The envelope carries the protocol version, the exact payload bytes and the caller's
//! authentication. Signatures cover `label(operation) || payload` where the payload is the
//! encoded request struct; the server verifies over the bytes it received and only then
//! decodes. Every authenticated payload carries a timestamp that must be within
//! [`MAX_CLOCK_SKEW`] of the server's clock.
//!
//! - [`as_`]: Authentication Service (real identities, certificates, connection setup).
//! - [`qs`]: Queuing Service (pseudonymous records, key packages, queues).
//! - [`ds`]: Delivery Service (groups, commits, application messages).
//! - [`federation`]: QS-to-QS forwarding between homeservers.
//! - [`client`]: payloads clients exchange through the server, opaque to it (connection
//!   establishment packages, encrypted credentials, welcome attribution).

pub mod as_;
pub mod client;
pub mod ds;
pub mod federation;
pub mod qs;

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::ids::QsId;

/// How far a signed request's timestamp may be from the server's clock (seconds).
pub const MAX_CLOCK_SKEW: u64 = 300;

/// The body of every Phoenix request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestEnvelope {
    /// Must be [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// The encoded request struct of the operation named in the URL path.
    pub payload: VLBytes,
    pub auth: Auth,
}

/// Who sends a request and their proof. Each variant's signature is an Ed25519 signature
/// over `label(operation) || payload` made with the key named.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum Auth {
    /// Anonymous operations (registration, anonymous enqueue, public lookups).
    #[tls_codec(discriminant = 0)]
    None,
    /// A registered client, with the key of its ID-Cert.
    #[tls_codec(discriminant = 1)]
    AsClient(AsClientAuth),
    /// A QS user record, with the user auth key.
    #[tls_codec(discriminant = 2)]
    QsUser(QsAuth),
    /// A QS client record, with the client auth key.
    #[tls_codec(discriminant = 3)]
    QsClient(QsAuth),
    /// A group member, with the signature key of its leaf (its per-group pseudonym).
    #[tls_codec(discriminant = 4)]
    DsLeaf(DsLeafAuth),
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AsClientAuth {
    pub fid: String,
    pub client_id: String,
    pub signature: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct QsAuth {
    pub id: QsId,
    pub signature: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DsLeafAuth {
    pub leaf_index: u32,
    pub signature: VLBytes,
}

/// One message of a queue (an AS direct queue or a QS fan-out queue).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct QueueMessage {
    pub sequence_number: u64,
    pub payload: VLBytes,
}

/// Request body of a dequeue: delete every message below `sequence_number_start` (the
/// caller has processed them), then return up to `max` messages from there on.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DequeueRequest {
    pub timestamp: u64,
    pub sequence_number_start: u64,
    pub max: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DequeueResponse {
    pub messages: Vec<QueueMessage>,
    /// How many messages remain after the returned ones.
    pub remaining: u64,
}

/// The empty response of operations that only succeed or fail.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Empty {}

/// The operation label used in request signatures: `"<service>/<operation>"`.
pub fn operation_label(service: &str, operation: &str) -> String {
    format!("{service}/{operation}")
}

/// Whether a message may be announced by a push notification (QS-PUSH-4): the sender of an
/// application message chooses (`ds/send_message`), and the DS passes it on with each
/// fan-out entry, to a remote QS too (`FederatedEnqueueTbs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum Notification {
    Send = 0,
    Suppress = 1,
}
