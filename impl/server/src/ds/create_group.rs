//! `create_group`: a local client creates a group under a reserved id. The DS rebuilds the
//! public group from the creator's ratchet tree and group info (openmls verifies both),
//! requires exactly one member, checks the request signature with that member's leaf key,
//! and stores the state encrypted under the client-supplied EAR key.

use openmls::group::ProposalStore;
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{CreationFromExternalError, PublicGroup, PublicTreeError};
use openmls::treesync::RatchetTreeError;
use openmls::treesync::errors::TreeSyncFromNodesError;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::ds::CreateGroupRequest;
use phoenix_types::messages::{Auth, Empty};

use crate::auth::{Request, check_fresh};
use crate::ds::check_member_info;
use crate::ds::decode::{self, MAX_MLS_MESSAGE};
use crate::ds::group_state::{self, GroupState, Member};
use crate::server::Server;
use crate::store::{CreateGroup, DsStore};

// Requirement: DS-GID-1
pub async fn create_group(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let mut req: CreateGroupRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    let group_id = req.group_id.as_slice().to_vec();
    group_state::local_group_id(server, &group_id)?;
    check_member_info(&req.creator)?;
    if req.group_info.as_slice().len() > MAX_MLS_MESSAGE
        || req.ratchet_tree.as_slice().len() > MAX_MLS_MESSAGE
    {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "group info or ratchet tree is too large",
        ));
    }

    let info = decode::group_info(req.group_info.as_slice())?;
    if info.group_id().as_slice() != group_id.as_slice() {
        return Err(WireError::new(
            ErrorCode::InvalidGroupInfo,
            "group info is for another group id",
        ));
    }
    if info.extensions().external_pub().is_none() {
        return Err(WireError::new(
            ErrorCode::InvalidGroupInfo,
            "group info lacks the external_pub extension",
        ));
    }
    let (public_group, storage) = rebuild_public_group(req.ratchet_tree.as_slice(), info)?;
    let members: Vec<_> = public_group.members().collect();
    let [creator] = members.as_slice() else {
        return Err(WireError::new(
            ErrorCode::InvalidGroupInfo,
            "a new group must have exactly one member",
        ));
    };
    let Auth::DsLeaf(auth) = &request.auth else {
        return Err(WireError::new(
            ErrorCode::Unauthenticated,
            "create_group needs the creator's leaf signature",
        ));
    };
    // Requirement: ADV-OP-2
    observe!(
        [
            Observed::GroupId(group_id.clone()),
            Observed::LeafIndex(creator.index.u32()),
            Observed::sealed_queue_config(&req.creator.queue_config),
            Observed::encrypted_credential(req.creator.encrypted_credential.as_slice()),
        ]
        .into_iter()
        .chain(Observed::leaf(&creator.signature_key, &creator.credential))
    );
    if auth.leaf_index != creator.index.u32() {
        return Err(WireError::new(
            ErrorCode::UnknownSender,
            "the signer is not the group's member",
        ));
    }
    phoenix_types::crypto::verify(
        &creator.signature_key,
        &request.label(),
        &request.payload,
        auth.signature.as_slice(),
    )
    .map_err(|_| {
        WireError::new(
            ErrorCode::BadSignature,
            "the request signature does not verify with the leaf's key",
        )
    })?;

    let state = GroupState {
        mls: group_state::entries_of(&storage)?,
        group_info: req.group_info.clone(),
        members: vec![Member {
            leaf_index: creator.index.u32(),
            info: req.creator.clone(),
        }],
    };
    // Requirement: DS-EAR-3 (a new group's row is version 0)
    let ciphertext = group_state::seal(
        &ear_key,
        &group_id,
        0,
        public_group.group_context().epoch().as_u64(),
        &state,
    )?;
    match server
        .store
        // Requirement: ADV-REPLAY-3
        .create_group(
            &group_id,
            &ciphertext,
            now,
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?
    {
        CreateGroup::Created => codec::encode(&Empty {}),
        CreateGroup::NotReserved => Err(WireError::new(
            ErrorCode::GroupIdNotReserved,
            "request a group id first (or the reservation expired)",
        )),
        CreateGroup::Exists => Err(WireError::new(
            ErrorCode::GroupExists,
            "a group with this id exists",
        )),
    }
}

/// Why a group could not be rebuilt from a ratchet tree and a group info, by the step
/// that refused it (in the order openmls checks them). On the wire every one of them is
/// `INVALID_GROUP_INFO` (the creator sent a tree and group info that do not make a valid
/// group), except a tree that does not decode or is too large.
#[derive(Debug, thiserror::Error)]
pub enum RebuildGroupError {
    /// The tree is too large or does not decode (`TOO_LARGE`, `INVALID_MLS_MESSAGE`).
    #[error(transparent)]
    Decode(WireError),
    /// A leaf's signature does not verify (over the leaf and, for leaves from a commit or
    /// an update, the group id and the leaf's position).
    #[error("a leaf signature does not verify")]
    LeafSignature,
    /// A parent node is not parent-hash valid: no chain of parent hashes from a leaf
    /// reaches it (RFC 9420, 7.9.2).
    #[error("a parent hash does not verify")]
    ParentHash,
    /// Any other defect of the tree: node types, trailing blanks, duplicate keys,
    /// unmerged leaves that are not descendants.
    #[error("invalid ratchet tree: {0}")]
    Tree(String),
    /// The group info's signer is not a leaf of the tree or its signature does not
    /// verify with that leaf's key: the first check that involves the group info.
    #[error("the group info signature does not verify with its signer's leaf")]
    GroupInfoSignature,
    /// The tree hash in the group info's context is not the tree's.
    #[error("the group info's tree hash is not the tree's")]
    TreeHash,
    /// A leaf is not acceptable in the group's context (capabilities, lifetime,
    /// credential type).
    #[error("a leaf is not valid in this group: {0}")]
    Leaf(String),
    /// Unsupported protocol version or cipher suite, or an internal error of openmls.
    #[error("group rejected: {0}")]
    Other(String),
}

impl From<RebuildGroupError> for WireError {
    fn from(e: RebuildGroupError) -> Self {
        match e {
            RebuildGroupError::Decode(e) => e,
            e => WireError::new(ErrorCode::InvalidGroupInfo, format!("group rejected: {e}")),
        }
    }
}

// Requirement: DS-COMMIT-1, VEC-2
/// Rebuild a group's public state from its ratchet tree (encoded, as received) and its
/// group info, as a member joining it would: decode the tree ([`decode::ratchet_tree`]),
/// verify every leaf signature and every parent hash, recompute the tree hash, verify
/// the group info's signature with its signer's leaf and its tree hash against the tree,
/// and validate every leaf in the group's context. The result is the openmls public group
/// and the storage it was written to (the DS persists the storage's entries).
///
/// Pure: no store, no clock beyond openmls's own lifetime check, no request. `create_group`
/// calls it after its own checks of the group info (group id, `external_pub`); the MLS
/// working group's tree vectors run through it (`tests/mls_vectors.rs`).
pub fn rebuild_public_group(
    ratchet_tree: &[u8],
    info: VerifiableGroupInfo,
) -> Result<(PublicGroup, MemoryStorage), RebuildGroupError> {
    let tree = decode::ratchet_tree(ratchet_tree).map_err(RebuildGroupError::Decode)?;
    let storage = MemoryStorage::default();
    let (public_group, _) = PublicGroup::from_external(
        &RustCrypto::default(),
        &storage,
        tree,
        info,
        ProposalStore::new(),
    )
    .map_err(|e| match e {
        CreationFromExternalError::TreeSyncError(TreeSyncFromNodesError::RatchetTreeError(
            RatchetTreeError::InvalidNodeSignature,
        )) => RebuildGroupError::LeafSignature,
        CreationFromExternalError::TreeSyncError(TreeSyncFromNodesError::PublicTreeError(
            PublicTreeError::InvalidParentHash,
        )) => RebuildGroupError::ParentHash,
        CreationFromExternalError::TreeSyncError(e) => RebuildGroupError::Tree(e.to_string()),
        e @ (CreationFromExternalError::UnmergedLeafNotADescendant
        | CreationFromExternalError::IntermediateNodeMissingUnmergedLeaf
        | CreationFromExternalError::DuplicateEncryptionKey
        | CreationFromExternalError::DuplicateSignatureKey) => {
            RebuildGroupError::Tree(e.to_string())
        }
        CreationFromExternalError::UnknownSender
        | CreationFromExternalError::InvalidGroupInfoSignature => {
            RebuildGroupError::GroupInfoSignature
        }
        CreationFromExternalError::TreeHashMismatch => RebuildGroupError::TreeHash,
        CreationFromExternalError::LeafNodeValidation(e) => RebuildGroupError::Leaf(e.to_string()),
        e => RebuildGroupError::Other(e.to_string()),
    })?;
    Ok((public_group, storage))
}
