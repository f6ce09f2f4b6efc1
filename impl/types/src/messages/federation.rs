//! QS-to-QS federation (`POST /phoenix/v1/federation/enqueue`).
//!
//! A DS reaches a remote member's queue only through its local QS, which forwards the
//! message to the member's QS. The message is signed by the sending QS's key (published
//! in its discovery document, fetched and cached by the receiver), names its sender and
//! destination, and carries a message id that is unique per sender: the receiver rejects
//! it if the destination is not itself (no open relay: also every entry's sealed queue
//! config must be addressed to it), if the message id was seen before (a replay; the
//! sender's retries of a delivered message get the same answer and stop), if the signature
//! does not verify (forged), or if its policy refuses the sender.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

pub const ENQUEUE: &str = "enqueue";

/// Signature label of [`FederatedEnqueueTbs`].
pub const LABEL: &str = "federation/enqueue";

/// Largest federated enqueue body (bytes).
pub const MAX_FEDERATED_MESSAGE: usize = 1024 * 1024;

/// The signed part of a federated enqueue.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FederatedEnqueueTbs {
    pub sender: String,
    pub destination: String,
    /// Unique per sender; the same for every retry of one message.
    pub message_id: [u8; 16],
    pub timestamp: u64,
    /// An encoded `SealedQueueConfig` addressed to `destination`.
    pub queue_config: VLBytes,
    /// An encoded `QueuePayload`.
    pub payload: VLBytes,
    /// Whether the receiving QS may send the recipient a push notification (QS-PUSH-4).
    pub notification: crate::messages::Notification,
}

/// The body of `POST /phoenix/v1/federation/enqueue`: the encoded [`FederatedEnqueueTbs`]
/// and the sending QS's signature over it (label [`LABEL`]).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FederatedEnqueue {
    pub tbs: VLBytes,
    pub signature: VLBytes,
}
