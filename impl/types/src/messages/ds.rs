//! Delivery Service requests and responses (`/phoenix/v1/ds/<operation>`), and what the DS
//! fans out to queues.
//!
//! | operation | auth | request → response |
//! |---|---|---|
//! | `request_group_id` | a group-creation token (anonymous) | [`RequestGroupIdRequest`] → [`RequestGroupIdResponse`] |
//! | `create_group` | DsLeaf (leaf 0) | [`CreateGroupRequest`] → `Empty` |
//! | `external_commit_info` | EAR key | [`ExternalCommitInfoRequest`] → [`ExternalCommitInfoResponse`] |
//! | `join_connection_group` | EAR key + the external commit's own signature | [`JoinConnectionGroupRequest`] → `Empty` |
//! | `add_users` | DsLeaf | [`AddUsersRequest`] → `Empty` |
//! | `remove_users` | DsLeaf | [`CommitRequest`] → `Empty` |
//! | `update` | DsLeaf | [`CommitRequest`] → `Empty` |
//! | `send_message` | DsLeaf | [`SendMessageRequest`] → `Empty` |
//! | `resync` | DsLeaf (the leaf being replaced) + the external commit's own signature | [`ResyncRequest`] → `Empty` |
//!
//! Every request carries the group's EAR key: the DS decrypts the stored group state with
//! it for the duration of the request and then forgets it. Members are known to the DS only
//! by their leaf index and per-group pseudonymous leaf credential; their real credentials
//! travel encrypted under the group's credential key, which only clients hold.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::messages::qs::SealedQueueConfig;

pub const REQUEST_GROUP_ID: &str = "request_group_id";
pub const CREATE_GROUP: &str = "create_group";
pub const EXTERNAL_COMMIT_INFO: &str = "external_commit_info";
pub const JOIN_CONNECTION_GROUP: &str = "join_connection_group";
pub const ADD_USERS: &str = "add_users";
pub const REMOVE_USERS: &str = "remove_users";
pub const UPDATE: &str = "update";
pub const SEND_MESSAGE: &str = "send_message";
pub const RESYNC: &str = "resync";

/// Most members a group may have.
pub const MAX_GROUP_SIZE: usize = 1024;
/// Largest encrypted credential of one member (bytes).
pub const MAX_ENCRYPTED_CREDENTIAL: usize = 4 * 1024;

/// `request_group_id`: the request carries one anonymous group-creation token issued by
/// this server's AS ([`crate::tokens`]): the DS learns that a client of its own server
/// asks, never which one.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestGroupIdRequest {
    pub token: GroupToken,
}

/// An anonymous group-creation token (RFC 9497 VOPRF, Ristretto255-SHA512): the client's
/// random `input` and the unblinded VOPRF `output` the AS's token key gives it. Spent once;
/// presenting the same token again returns the same reservation while it is unused (a
/// lost reply is retried safely), and `INVALID_TOKEN` after.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GroupToken {
    /// [`crate::tokens::key_id`] of the token key that issued it.
    pub key_id: VLBytes,
    /// [`crate::tokens::INPUT_LEN`] random bytes chosen by the client.
    pub input: VLBytes,
    /// [`crate::tokens::OUTPUT_LEN`] bytes.
    pub output: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestGroupIdResponse {
    /// A fresh [`crate::ids::QualifiedGroupId`], reserved until used or expired.
    pub group_id: VLBytes,
}

/// A member's entry as the DS keeps it: where to deliver (sealed) and its encrypted
/// credential (opaque).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MemberInfo {
    pub queue_config: SealedQueueConfig,
    /// A [`crate::messages::client::ClientCredentialInfo`] encrypted under the group's
    /// credential key.
    pub encrypted_credential: VLBytes,
}

/// A leaf's encrypted credential, as handed to members and joiners.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LeafCredential {
    pub leaf_index: u32,
    pub encrypted_credential: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CreateGroupRequest {
    pub timestamp: u64,
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    /// TLS-encoded MLS `MlsMessage` carrying the group's `GroupInfo` (epoch 0).
    pub group_info: VLBytes,
    /// TLS-encoded MLS `RatchetTree` (the creator's single leaf).
    pub ratchet_tree: VLBytes,
    pub creator: MemberInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ExternalCommitInfoRequest {
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ExternalCommitInfoResponse {
    /// TLS-encoded `MlsMessage` with the current `GroupInfo` (with the external_pub
    /// extension), as last uploaded by a committer.
    pub group_info: VLBytes,
    /// TLS-encoded `RatchetTree`.
    pub ratchet_tree: VLBytes,
    pub credentials: Vec<LeafCredential>,
}

/// Join a connection group by external commit. Allowed only while the group has exactly
/// one member: knowing the EAR key (from the connection establishment package) is the
/// authorisation.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct JoinConnectionGroupRequest {
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    /// TLS-encoded `MlsMessage` (a `PublicMessage` external commit).
    pub commit: VLBytes,
    /// TLS-encoded `MlsMessage` with the new epoch's `GroupInfo`.
    pub group_info: VLBytes,
    pub joiner: MemberInfo,
}

/// One joiner of an `add_users` commit, in the order of the commit's Add proposals.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AddedMember {
    /// The joiner's credential info re-encrypted under the group's credential key.
    pub encrypted_credential: VLBytes,
    /// [`crate::messages::client::WelcomeAttributionInfo`] encrypted for the joiner.
    pub welcome_info: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AddUsersRequest {
    pub timestamp: u64,
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    /// TLS-encoded `MlsMessage` (a `PublicMessage` commit with only Add proposals, inline).
    pub commit: VLBytes,
    /// TLS-encoded `MlsMessage` (the `Welcome`).
    pub welcome: VLBytes,
    pub group_info: VLBytes,
    pub added: Vec<AddedMember>,
}

/// `remove_users` (a commit with only Remove proposals) and `update` (a commit with a path
/// and no proposals, optionally replacing the sender's encrypted credential).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CommitRequest {
    pub timestamp: u64,
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    pub commit: VLBytes,
    pub group_info: VLBytes,
    pub new_encrypted_credential: Option<VLBytes>,
}

/// `resync`: a member that fell behind rejoins by external commit, removing its own old
/// leaf and adding a new one with the same leaf credential. The request is signed with the
/// old leaf's key (the request's `DsLeaf` names the leaf being replaced); the commit itself
/// is signed by the new leaf.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ResyncRequest {
    pub timestamp: u64,
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    /// TLS-encoded `MlsMessage` (a `PublicMessage` external commit with exactly one Remove,
    /// of the signer's old leaf).
    pub commit: VLBytes,
    /// TLS-encoded `MlsMessage` with the new epoch's `GroupInfo`.
    pub group_info: VLBytes,
    /// The new leaf's member entry (its queue config and encrypted credential).
    pub member: MemberInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SendMessageRequest {
    pub timestamp: u64,
    pub group_id: VLBytes,
    pub ear_key: [u8; 32],
    /// TLS-encoded `MlsMessage` (a `PrivateMessage` of the current epoch).
    pub message: VLBytes,
    /// Whether the recipients' QS may send a push notification for this message
    /// (QS-PUSH-4); with `Suppress` they still receive it, unannounced.
    pub notification: crate::messages::Notification,
}

/// What the DS enqueues in a member's QS queue.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum QueuePayload {
    #[tls_codec(discriminant = 1)]
    GroupMessage(GroupMessage),
    #[tls_codec(discriminant = 2)]
    Welcome(WelcomeBundle),
}

/// A commit or application message of a group, with the encrypted credentials of leaves
/// the commit added or changed.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GroupMessage {
    pub group_id: VLBytes,
    pub message: VLBytes,
    pub new_credentials: Vec<LeafCredential>,
}

/// Everything a joiner needs: the Welcome, the tree, every member's encrypted credential
/// and the inviter's encrypted attribution info.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct WelcomeBundle {
    pub group_id: VLBytes,
    pub welcome: VLBytes,
    pub ratchet_tree: VLBytes,
    pub credentials: Vec<LeafCredential>,
    pub welcome_info: VLBytes,
}
