//! Requests and replies: one variant per operation of the server's API, in the model's
//! vocabulary. A request names the key that signed it (symbolically), so forged senders
//! and wrong owners are ordinary requests with the wrong key.
//!
//! The outcome of every call is `Result<Reply, ErrorCode>` with the server's own stable
//! codes ([`phoenix_types::error::ErrorCode`]); the conformance suite compares both.

use phoenix_types::error::ErrorCode;

use crate::ids::{
    ClientName, DomainId, FidArg, GroupId, KeyId, Leaf, MsgId, PkgId, QsCid, QsUid, Sealed, Seq,
    Token,
};
use crate::queue::QueueItem;

/// A call to one homeserver.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Call {
    As(AsCall),
    Qs(QsCall),
    Ds(DsCall),
}

/// Who signs an AS request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AsSigner {
    Anonymous,
    /// A client of the AS, signing with `key` (its ID-Cert key if honest).
    Client {
        fid: FidArg,
        client: ClientName,
        key: KeyId,
    },
}

/// What is wrong with a connection package in an upload, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PackageDefect {
    None,
    /// Signed with a key that is not the publisher's.
    BadSignature,
    /// Names another client as its owner.
    NamesAnotherClient,
    /// Its validity ended.
    Expired,
}

/// One connection package of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConnectionPackageArg {
    pub id: PkgId,
    pub last_resort: bool,
    pub defect: PackageDefect,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AsCall {
    /// Register a user with its first client from a CSR signed by `key`; `csr_valid`
    /// false is a CSR whose self-signature does not verify.
    Register {
        fid: crate::ids::Fid,
        client: ClientName,
        key: KeyId,
        csr_valid: bool,
    },
    PublishConnectionPackages {
        signer: AsSigner,
        fresh: bool,
        packages: Vec<ConnectionPackageArg>,
    },
    FetchConnectionPackage {
        fid: FidArg,
    },
    /// Anonymous enqueue of an opaque ciphertext into a client's direct queue.
    EnqueueConnection {
        fid: FidArg,
        client: ClientName,
        msg: MsgId,
    },
    DequeueConnection {
        signer: AsSigner,
        fresh: bool,
        start: Seq,
        max: u16,
    },
    ClientCertificates {
        fid: FidArg,
    },
    /// A client asks for `count` group-creation tokens (Requirement: AS-TOKEN-1).
    IssueGroupTokens {
        signer: AsSigner,
        fresh: bool,
        count: u8,
        /// Stands for the blinded elements: fresh in every honest request, so two
        /// requests differ as the real ones do (and a replay is the same value).
        blinded: KeyId,
    },
}

/// Who signs a QS request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QsSigner {
    Anonymous,
    /// A QS client record (which may not exist), signing with `key`.
    Client {
        id: QsCid,
        key: KeyId,
    },
}

/// One key package of an upload: its leaf key (the per-group pseudonym it will become),
/// and the queue config sealed inside it, which names the client record `queue_of`
/// (honest uploads name the publisher itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyPackageArg {
    pub id: PkgId,
    pub last_resort: bool,
    pub leaf_key: KeyId,
    pub queue_of: QsCid,
    /// The client's credential for the package's leaf, encrypted under its friendship key:
    /// opaque to the QS, which stores and serves it as is. `None` where only the QS's
    /// handling is at stake (the conformance suite's raw uploads).
    pub client_info: Option<Sealed<crate::ds::LeafBinding>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QsCall {
    CreateUser {
        user_key: KeyId,
        token: Token,
        client_key: KeyId,
    },
    PublishKeyPackages {
        signer: QsSigner,
        fresh: bool,
        packages: Vec<KeyPackageArg>,
    },
    FetchKeyPackages {
        token: Token,
    },
    Dequeue {
        signer: QsSigner,
        fresh: bool,
        start: Seq,
        max: u16,
    },
    /// Open a `qs/listen` stream at `start` (the init signed over a fresh server
    /// challenge, so there is no timestamp to be stale) and read its first window: what
    /// lies below `start` is deleted, up to [`LISTEN_WINDOW`] messages are sent, and the
    /// stream says whether that was everything (`Empty`).
    Listen {
        signer: QsSigner,
        start: Seq,
    },
    /// Give the signer's queue a new queue key and chain (QS-ENC-4): the new chain starts
    /// at the queue's next sequence number, which the reply names.
    RekeyQueue {
        signer: QsSigner,
        fresh: bool,
        /// The new queue key (each re-key request names a new one).
        queue_key: KeyId,
    },
    /// Set (or, with `None`, clear) the signer's push endpoint (QS-PUSH-1). What the QS
    /// sends to it after an enqueue is not in the model: a notification carries nothing
    /// and goes outside the system (the hostile test checks it with a real receiver).
    SetPushEndpoint {
        signer: QsSigner,
        fresh: bool,
        endpoint: Option<PushArg>,
        /// Tells requests apart (a real one carries its own timestamp): two requests
        /// with the same arguments are two requests, not a replay.
        request: u32,
    },
    /// Delete the signer's client record (QS-REC-1), and its user record when no other
    /// client is left; the reply says which.
    DeleteClient {
        signer: QsSigner,
        fresh: bool,
        /// Tells requests apart, as for `SetPushEndpoint`.
        request: u32,
    },
}

/// A push endpoint as a client gives it: a subscription (named by its key) at an
/// `https://` URL, or at a plain `http://` one, which the QS refuses unless its operator
/// allowed it (the model's QS does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PushArg {
    pub subscription: KeyId,
    pub https: bool,
}

/// Most messages a listen stream sends before an acknowledgement
/// (`phoenix_types::messages::qs::LISTEN_WINDOW`).
pub const LISTEN_WINDOW: u16 = 64;

/// A member's entry as the DS receives it: the leaf's signature key (its per-group
/// pseudonym), the sealed queue config, and the encrypted credential binding the leaf to
/// a client certificate (opaque to the DS).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberArg {
    pub leaf_key: KeyId,
    pub queue_config: Sealed<QsCid>,
    pub credential: Sealed<crate::ds::LeafBinding>,
}

/// A joiner of an `add_users` commit: its member entry (from its key package) and the
/// welcome information the inviter sealed for it (opaque to the DS).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AddedMember {
    pub member: MemberArg,
    pub welcome: Sealed<crate::client::GroupSecrets>,
}

/// A group member signing a DS request with its leaf key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeafSigner {
    pub leaf: Leaf,
    pub key: KeyId,
}

/// A group-creation token: the model's abstraction of an RFC 9497 VOPRF token
/// (phoenix-types `tokens`). `n` names it; `genuine` is false for a token the server's
/// token key did not evaluate (forged, or evaluated under another server's key), which the
/// DS recognises as the real one does, by evaluating the input itself. The AS that issued
/// it never sees `n` (the real AS sees only a blinded element): the operator's
/// observations of `issue_group_tokens` hold the client, of `request_group_id` nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GroupToken {
    pub domain: DomainId,
    pub n: u32,
    pub genuine: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DsCall {
    /// Reserve a group id for one group-creation token (Requirement: DS-GID-3).
    RequestGroupId {
        token: GroupToken,
    },
    CreateGroup {
        group: GroupId,
        ear: KeyId,
        creator: MemberArg,
    },
    ExternalCommitInfo {
        group: GroupId,
        ear: KeyId,
    },
    /// An external commit into a connection group by `joiner`, for the group's `epoch`.
    JoinConnectionGroup {
        group: GroupId,
        ear: KeyId,
        epoch: u64,
        joiner: MemberArg,
    },
    /// A commit at `epoch` adding one member per key package.
    AddUsers {
        group: GroupId,
        ear: KeyId,
        signer: LeafSigner,
        epoch: u64,
        joiners: Vec<AddedMember>,
    },
    RemoveUsers {
        group: GroupId,
        ear: KeyId,
        signer: LeafSigner,
        epoch: u64,
        removed: Vec<Leaf>,
    },
    /// A path update of the signer's own leaf.
    Update {
        group: GroupId,
        ear: KeyId,
        signer: LeafSigner,
        epoch: u64,
    },
    SendMessage {
        group: GroupId,
        ear: KeyId,
        signer: LeafSigner,
        epoch: u64,
        msg: MsgId,
    },
    /// A member that fell behind rejoins by external commit at `epoch`: the request is
    /// signed by `signer` (the leaf it replaces), the commit removes `removed` and adds
    /// `member` (Requirement: DS-RESYNC-1, DS-RESYNC-2).
    Resync {
        group: GroupId,
        ear: KeyId,
        signer: LeafSigner,
        epoch: u64,
        removed: Leaf,
        member: MemberArg,
    },
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Reply {
    Empty,
    /// A certificate was issued (its serial in the model).
    Registered {
        serial: u32,
    },
    ConnectionPackage {
        client: ClientName,
        id: PkgId,
        last_resort: bool,
    },
    Dequeued {
        messages: Vec<(Seq, QueueItem)>,
        remaining: u64,
    },
    /// The first window of a listen stream, and whether the queue held nothing more.
    Streamed {
        messages: Vec<(Seq, QueueItem)>,
        drained: bool,
    },
    Certificates {
        count: u32,
    },
    /// Where a re-keyed queue's new chain starts.
    ChainStart(Seq),
    /// A client record was deleted; `user`: its user record with it.
    ClientDeleted {
        user: bool,
    },
    QsUserCreated {
        user: QsUid,
        client: QsCid,
    },
    /// One key package per client of the user, in client order.
    KeyPackages {
        packages: Vec<(QsCid, PkgId)>,
    },
    GroupId(GroupId),
    /// What `external_commit_info` shows: the epoch and the members' leaves.
    GroupInfo {
        epoch: u64,
        leaves: Vec<Leaf>,
        /// Every member's entry (the real DS returns the ratchet tree and the encrypted
        /// credentials).
        members: Vec<crate::queue::MemberInfo>,
    },
    /// Tokens issued, in order.
    GroupTokens {
        tokens: Vec<GroupToken>,
    },
}

/// The outcome of a call: a reply, or the server's stable error code.
pub type Outcome = Result<Reply, ErrorCode>;

/// The service a call goes to (for the operator's view and the requirement table).
pub fn service_of(call: &Call) -> &'static str {
    match call {
        Call::As(_) => "as",
        Call::Qs(_) => "qs",
        Call::Ds(_) => "ds",
    }
}

/// The domain of a group id.
pub fn group_domain(group: &GroupId) -> DomainId {
    group.domain
}
