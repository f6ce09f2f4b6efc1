//! Queuing Service requests and responses (`/phoenix/v1/qs/<operation>`).
//!
//! | operation | auth | request → response |
//! |---|---|---|
//! | `queue_config_key` | none | `Empty` → [`QueueConfigKeyResponse`] |
//! | `create_user` | none | [`CreateUserRequest`] → [`CreateUserResponse`] |
//! | `publish_key_packages` | QsClient | [`PublishKeyPackagesRequest`] → `Empty` |
//! | `fetch_key_packages` | friendship token | [`FetchKeyPackagesRequest`] → [`FetchKeyPackagesResponse`] |
//! | `dequeue` | QsClient | `DequeueRequest` → `DequeueResponse` |
//! | `key_package_status` | QsClient | [`KeyPackageStatusRequest`] → [`KeyPackageStatusResponse`] |
//! | `rekey_queue` | QsClient | [`RekeyQueueRequest`] → [`RekeyQueueResponse`] |
//! | `set_push_endpoint` | QsClient | [`SetPushEndpointRequest`] → `Empty` |
//! | `delete_client` | QsClient | [`DeleteClientRequest`] → [`DeleteClientResponse`] |
//!
//! Nothing here names an FID: QS records are pseudonymous.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::ids::QsId;

pub const QUEUE_CONFIG_KEY: &str = "queue_config_key";
pub const CREATE_USER: &str = "create_user";
pub const PUBLISH_KEY_PACKAGES: &str = "publish_key_packages";
pub const FETCH_KEY_PACKAGES: &str = "fetch_key_packages";
pub const DEQUEUE: &str = "dequeue";
pub const KEY_PACKAGE_STATUS: &str = "key_package_status";
pub const REKEY_QUEUE: &str = "rekey_queue";
pub const SET_PUSH_ENDPOINT: &str = "set_push_endpoint";
pub const DELETE_CLIENT: &str = "delete_client";

/// Longest push endpoint URL the QS accepts (bytes).
pub const MAX_PUSH_URL_LEN: usize = 1024;
/// Length of an uncompressed P-256 public key (RFC 8291 `p256dh`).
pub const PUSH_P256DH_LEN: usize = 65;

/// Most key packages one upload may carry.
pub const MAX_KEY_PACKAGES: usize = 100;
/// Largest single key package (bytes).
pub const MAX_KEY_PACKAGE_LEN: usize = 8 * 1024;

/// The MLS extension type (private-use range) of the sealed queue config extension that
/// every key package uploaded to a QS must carry.
pub const QUEUE_CONFIG_EXTENSION_TYPE: u16 = 0xff01;

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct QueueConfigKeyResponse {
    /// The QS's HPKE public key that clients seal their queue configs to.
    pub public_key: VLBytes,
}

/// Create a pseudonymous user record with its first client record.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CreateUserRequest {
    /// Ed25519 key authenticating the user record.
    pub user_auth_key: VLBytes,
    /// The secret contacts present to fetch this user's key packages. The QS stores only
    /// its SHA-256 hash.
    pub friendship_token: [u8; 32],
    /// Ed25519 key authenticating the first client record.
    pub client_auth_key: VLBytes,
    /// The client's X25519 HPKE public key for its queue: the QS seals the fresh
    /// randomness of queue ratchet updates to it ([`crate::queue_ratchet`]).
    pub queue_key: VLBytes,
    /// The first secret of the queue's encryption chain, chosen by the client.
    pub queue_ratchet_secret: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CreateUserResponse {
    pub user_id: QsId,
    pub client_id: QsId,
}

/// The plaintext of a sealed queue config: which client queue a message goes to. Sealed
/// with HPKE to the QS's queue config key (info [`crate::crypto::hpke_info::QUEUE_CONFIG`],
/// aad = the QS domain), so the DS that stores it cannot read it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct QueueConfig {
    pub client_id: QsId,
}

/// A sealed queue config as the DS stores it: the QS domain in clear (so the DS knows
/// where to deliver) and the sealed [`QueueConfig`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SealedQueueConfig {
    pub qs_domain: String,
    #[cfg_attr(
        feature = "arbitrary",
        arbitrary(with = crate::messages::qs::arbitrary_hpke_ciphertext)
    )]
    pub sealed: openmls_traits::types::HpkeCiphertext,
}

/// A key package as published to and fetched from the QS.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AddPackage {
    /// A TLS-encoded MLS `KeyPackage` whose extensions hold the [`SealedQueueConfig`]
    /// (extension type [`QUEUE_CONFIG_EXTENSION_TYPE`]).
    pub key_package: VLBytes,
    /// The client's [`crate::messages::client::ClientCredentialInfo`] for this package's
    /// leaf, encrypted under the user's friendship encryption key. Opaque to the QS.
    pub encrypted_client_info: VLBytes,
}

/// Replace all key packages of the calling client. Exactly one must be last-resort.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PublishKeyPackagesRequest {
    pub timestamp: u64,
    pub add_packages: Vec<AddPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FetchKeyPackagesRequest {
    pub friendship_token: [u8; 32],
}

/// One add package per client of the user; consumed unless it is the last-resort one.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FetchKeyPackagesResponse {
    pub add_packages: Vec<AddPackage>,
}

/// Ask how the calling client's key packages stand (authenticated by the QS client key).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KeyPackageStatusRequest {
    pub timestamp: u64,
}

/// How the calling client's key packages stand. A growing `last_resort_served` means
/// contacts got the last-resort package because the pool was empty: publish fresh
/// packages (and suspect draining if nobody added you to that many groups).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KeyPackageStatusResponse {
    /// One-time key packages left in the pool.
    pub one_time_remaining: u64,
    /// 1 if a last-resort key package is stored, else 0.
    pub has_last_resort: u8,
    /// How often the last-resort package was handed out because the pool was empty,
    /// since the client record was created.
    pub last_resort_served: u64,
}

/// Give the calling client's queue a new queue key and a new chain (QS-ENC-4): for a client
/// record created before queue encryption, or one whose chain broke. Entries already
/// stored stay as they are; entries from [`RekeyQueueResponse::chain_start`] on are sealed
/// under the new chain.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RekeyQueueRequest {
    pub timestamp: u64,
    /// The client's new X25519 HPKE public key for its queue.
    pub queue_key: VLBytes,
    /// The first secret of the new chain.
    pub queue_ratchet_secret: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RekeyQueueResponse {
    /// The sequence number of the first entry sealed under the new chain.
    pub chain_start: u64,
}

/// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys), as a browser's
/// `PushSubscription` or a UnifiedPush distributor gives it. The QS POSTs a notification
/// to `url`, encrypted to `p256dh` with `auth` (RFC 8291, `aes128gcm`) and signed with
/// its VAPID key (RFC 8292, published in discovery as `push_vapid_key`). The
/// notification carries no content: it only says that the queue has something.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PushEndpoint {
    /// `https://` URL of the push resource (at most [`MAX_PUSH_URL_LEN`] bytes).
    pub url: VLBytes,
    /// The user agent's P-256 public key, uncompressed ([`PUSH_P256DH_LEN`] bytes).
    pub p256dh: VLBytes,
    /// The user agent's authentication secret.
    pub auth: [u8; 16],
}

/// Set (or, with `None`, clear) the push endpoint of the signing client record. The QS
/// stores it sealed to itself and opens it only to send a notification.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SetPushEndpointRequest {
    pub timestamp: u64,
    pub endpoint: Option<PushEndpoint>,
}

/// Delete the signing client record with everything the QS keeps for it: its queue, its key
/// packages, its push endpoint and its delivery records. When it was its user's last
/// client, the user record (and its friendship token) goes too.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeleteClientRequest {
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeleteClientResponse {
    /// 1 if the user record was deleted with it (it had no other client), else 0.
    pub user_deleted: u8,
}

/// `Arbitrary` for [`openmls_traits::types::HpkeCiphertext`], which does not implement it
/// (a foreign type): used by the derives of the types that carry one.
#[cfg(feature = "arbitrary")]
pub(crate) fn arbitrary_hpke_ciphertext(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<openmls_traits::types::HpkeCiphertext> {
    Ok(openmls_traits::types::HpkeCiphertext {
        kem_output: u.arbitrary()?,
        ciphertext: u.arbitrary()?,
    })
}

// ----- listen: the live stream of a client's queue ----------------------------------------
//
// A WebSocket at `GET /phoenix/v1/qs/listen`; every frame is one binary WebSocket message
// holding one TLS-encoded value:
//
// 1. server → client: [`ListenChallenge`] (a fresh random nonce);
// 2. client → server: [`ListenInit`]: the client record, where to start, the nonce, and a
//    signature by the client record's auth key (label [`LISTEN_LABEL`]) over
//    [`ListenInitTbs`];
// 3. server → client: [`ListenFrame::Message`] for each queued message from the start on,
//    at most [`LISTEN_WINDOW`] before the client acknowledges; [`ListenFrame::Empty`] once
//    the queue is drained (then each new message as soon as its enqueue committed);
//    [`ListenFrame::Refused`] (and the close) when the init does not authenticate;
// 4. client → server: [`ListenAck`]: every message below `up_to` is processed (deleted).

/// The path of the listen stream.
pub const LISTEN_PATH: &str = "/phoenix/v1/qs/listen";
/// Signature label of [`ListenInitTbs`].
pub const LISTEN_LABEL: &str = "qs/listen";
/// Most messages the server sends before the client acknowledges them.
pub const LISTEN_WINDOW: u16 = 64;
/// Largest frame the server accepts from a client (bytes).
pub const MAX_LISTEN_CLIENT_FRAME: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ListenChallenge {
    pub nonce: [u8; 32],
}

/// What [`ListenInit::signature`] signs: the server's domain too, so a signature for one
/// QS is no good at another.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ListenInitTbs {
    pub qs_domain: VLBytes,
    pub client_id: QsId,
    pub sequence_number_start: u64,
    pub nonce: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ListenInit {
    pub client_id: QsId,
    /// Every message below this number is processed: deleted before the stream starts.
    pub sequence_number_start: u64,
    pub nonce: [u8; 32],
    pub signature: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ListenAck {
    /// Every message below this number is processed.
    pub up_to: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum ListenFrame {
    #[tls_codec(discriminant = 1)]
    Message(crate::messages::QueueMessage),
    /// The queue holds nothing from `next` on (yet).
    #[tls_codec(discriminant = 2)]
    Empty { next: u64 },
    /// The init was refused: the error code's name and a detail.
    #[tls_codec(discriminant = 3)]
    Refused { code: VLBytes, detail: VLBytes },
}
