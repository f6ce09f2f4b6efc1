//! `create_group`: a local client creates a group under a reserved id. The DS rebuilds the
//! public group from the creator's ratchet tree and group info (openmls verifies both),
//! requires exactly one member, checks the request signature with that member's leaf key,
//! and stores the state encrypted under the client-supplied EAR key.

use openmls::group::ProposalStore;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, PublicGroup, RatchetTreeIn};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use tls_codec::Deserialize;
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::ds::CreateGroupRequest;
use phoenix_types::messages::{Auth, Empty};

use crate::auth::{Request, check_fresh};
use crate::ds::check_member_info;
use crate::ds::commit::MAX_MLS_MESSAGE;
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

    let message = MlsMessageIn::tls_deserialize_exact(req.group_info.as_slice()).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidGroupInfo,
            format!("malformed group info: {e}"),
        )
    })?;
    let MlsMessageBodyIn::GroupInfo(info) = message.extract() else {
        return Err(WireError::new(
            ErrorCode::InvalidGroupInfo,
            "expected a group info message",
        ));
    };
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
    let tree = RatchetTreeIn::tls_deserialize_exact(req.ratchet_tree.as_slice()).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidMlsMessage,
            format!("malformed ratchet tree: {e}"),
        )
    })?;
    let storage = MemoryStorage::default();
    let (public_group, _) = PublicGroup::from_external(
        &RustCrypto::default(),
        &storage,
        tree,
        info,
        ProposalStore::new(),
    )
    .map_err(|e| WireError::new(ErrorCode::InvalidGroupInfo, format!("group rejected: {e}")))?;
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
    let ciphertext = group_state::seal(&ear_key, &group_id, &state)?;
    match server
        .store
        .create_group(&group_id, &ciphertext, now)
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
