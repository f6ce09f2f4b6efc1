//! `add_users`: a member commits Add proposals (inline, nothing else) for key packages it
//! fetched from its contacts' QSs. The DS validates and merges the commit, records each
//! joiner's sealed queue config (from its key package) and encrypted credential, fans the
//! commit out to the other members and a welcome bundle to each joiner.

use openmls::prelude::Sender;
use tls_codec::{Serialize, VLBytes};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::{
    AddUsersRequest, GroupMessage, LeafCredential, MemberInfo, QueuePayload, WelcomeBundle,
};

use crate::auth::{Request, check_fresh};
use crate::ds::commit::{self, leaf_of_signature_key};
use crate::ds::decode;
use crate::ds::group_state::LoadedGroup;
use crate::ds::{authenticate_leaf, check_member_info, fan_out_entry, fan_out_to_members};
use crate::qs::sealed_queue_config;
use crate::server::Server;

// Requirement: DS-ADD-1, DS-COMMIT-1
pub async fn add_users(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let mut req: AddUsersRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    let mut group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    let sender = authenticate_leaf(request, &group)?;
    // Before validating the commit (whose cost grows with the number of joiners): the
    // request names one entry per joiner.
    let max_group_size = server.limits.max_group_size;
    if group.state.members.len().saturating_add(req.added.len()) > max_group_size {
        return Err(WireError::new(
            ErrorCode::GroupFull,
            format!("groups have at most {max_group_size} members"),
        ));
    }
    decode::welcome(req.welcome.as_slice())?;

    let staged = commit::stage(&group, req.commit.as_slice())?;
    if staged.sender != Sender::Member(openmls::prelude::LeafNodeIndex::new(sender)) {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "the commit's sender is not the request's signer",
        ));
    }
    let adds: Vec<_> = staged.commit.add_proposals().collect();
    if adds.is_empty() || staged.commit.queued_proposals().count() != adds.len() {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "add_users takes a commit with only Add proposals",
        ));
    }
    if adds.len() != req.added.len() {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "one added-member entry is needed per Add proposal",
        ));
    }
    if group.state.members.len() + adds.len() > max_group_size {
        return Err(WireError::new(
            ErrorCode::GroupFull,
            format!("groups have at most {max_group_size} members"),
        ));
    }
    let mut joiners = Vec::with_capacity(adds.len());
    for (add, added) in adds.iter().zip(&req.added) {
        let key_package = add.add_proposal().key_package();
        let info = MemberInfo {
            queue_config: sealed_queue_config(key_package)?,
            encrypted_credential: added.encrypted_credential.clone(),
        };
        check_member_info(&info)?;
        // The joiner's key package (as the QS handed it out), its leaf and member entry.
        // Requirement: ADV-OP-2
        observe!(
            [
                Observed::key_package(
                    &tls_codec::Serialize::tls_serialize_detached(key_package).unwrap_or_default()
                ),
                Observed::sealed_queue_config(&info.queue_config),
                Observed::encrypted_credential(info.encrypted_credential.as_slice()),
            ]
            .into_iter()
            .chain(Observed::leaf(
                key_package.leaf_node().signature_key().as_slice(),
                key_package.leaf_node().credential()
            ))
        );
        joiners.push((
            key_package.leaf_node().signature_key().as_slice().to_vec(),
            info,
            added.welcome_info.clone(),
        ));
    }
    drop(adds);

    let recipients = group.state.members.clone();
    commit::merge(&mut group, staged)?;
    commit::accept_group_info(&mut group, req.group_info.as_slice(), sender)?;
    let mut new_credentials = Vec::with_capacity(joiners.len());
    let mut placed = Vec::with_capacity(joiners.len());
    for (key, info, welcome_info) in joiners {
        let leaf = leaf_of_signature_key(&group, &key).ok_or_else(|| {
            WireError::new(ErrorCode::Internal, "a joiner is missing after the merge")
        })?;
        new_credentials.push(LeafCredential {
            leaf_index: leaf,
            encrypted_credential: info.encrypted_credential.clone(),
        });
        observe!([Observed::LeafIndex(leaf)]);
        group.set_member(leaf, info.clone());
        placed.push((info, welcome_info));
    }

    let commit_payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.commit.clone(),
        new_credentials,
    });
    let mut outbox = fan_out_to_members(&recipients, Some(sender), &commit_payload)?;
    let tree = group
        .public_group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(|_| WireError::new(ErrorCode::Internal, "encoding failed"))?;
    let credentials = group.credentials();
    for (info, welcome_info) in placed {
        let bundle = QueuePayload::Welcome(WelcomeBundle {
            group_id: req.group_id.clone(),
            welcome: req.welcome.clone(),
            ratchet_tree: VLBytes::new(tree.clone()),
            credentials: credentials.clone(),
            welcome_info,
        });
        outbox.push(fan_out_entry(&info, &bundle)?);
    }
    // Requirement: ADV-REPLAY-3
    group
        .save(server, now, &outbox, &crate::replay::record(request, now)?)
        .await?;
    codec::encode(&Empty {})
}
