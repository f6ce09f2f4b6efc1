//! `resync`: a member that fell behind (it lost commits, or restored an old state) rejoins
//! by external commit. The commit removes the member's own old leaf and adds a new one with
//! the same leaf credential (phoenix.md § Spec-DS, Resync). The request is signed with the
//! old leaf's key (the member still holds it: the leaf key survives path updates), the commit
//! by the new leaf; the DS validates the commit as a member would, like every other commit.
//!
//! Pending proposals are not part of the external-commit info: the DS keeps no proposal
//! store (no self-removals or DS-induced removals exist yet), so there are none to include.

use openmls::prelude::{LeafNodeIndex, Sender};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::{GroupMessage, LeafCredential, QueuePayload, ResyncRequest};

use crate::auth::{Request, check_fresh};
use crate::ds::commit::{self, leaf_of_signature_key};
use crate::ds::group_state::LoadedGroup;
use crate::ds::{authenticate_leaf, check_member_info, fan_out_to_members};
use crate::server::Server;

fn invalid(detail: &str) -> WireError {
    WireError::new(ErrorCode::InvalidCommit, detail)
}

// Requirement: DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3, DS-COMMIT-1
pub async fn resync(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let mut req: ResyncRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    check_member_info(&req.member)?;
    let mut group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    // Requirement: DS-RESYNC-1 (only the member whose leaf is replaced)
    let old_leaf = authenticate_leaf(request, &group)?;
    let old_credential = group
        .public_group
        .leaf(LeafNodeIndex::new(old_leaf))
        .map(|leaf| leaf.credential().clone())
        .ok_or_else(|| WireError::new(ErrorCode::UnknownSender, "no member at that leaf index"))?;
    // Requirement: DS-EPOCH-1, DS-COMMIT-1
    let staged = commit::stage(&group, req.commit.as_slice())?;
    if staged.sender != Sender::NewMemberCommit {
        return Err(invalid("resync takes an external commit"));
    }
    let removed: Vec<u32> = staged
        .commit
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    if removed != [old_leaf] || staged.commit.add_proposals().count() != 0 {
        return Err(invalid(
            "a resync commit removes exactly the signer's own leaf and adds nothing else",
        ));
    }
    let new_leaf_node = staged
        .commit
        .update_path_leaf_node()
        .ok_or_else(|| invalid("the external commit has no path"))?;
    // Requirement: DS-RESYNC-2 (the leaf credential must not change)
    if new_leaf_node.credential() != &old_credential {
        return Err(invalid(
            "a resync must keep the leaf credential of the leaf it replaces",
        ));
    }
    let new_key = new_leaf_node.signature_key().as_slice().to_vec();
    // Requirement: ADV-OP-2
    observe!(
        [
            Observed::LeafIndex(old_leaf),
            Observed::sealed_queue_config(&req.member.queue_config),
            Observed::encrypted_credential(req.member.encrypted_credential.as_slice()),
        ]
        .into_iter()
        .chain(Observed::leaf(&new_key, new_leaf_node.credential()))
    );
    let recipients = group.state.members.clone();
    commit::merge(&mut group, staged)?;
    let new_leaf = leaf_of_signature_key(&group, &new_key).ok_or_else(|| {
        WireError::new(
            ErrorCode::Internal,
            "the resynced leaf is missing after the merge",
        )
    })?;
    commit::accept_group_info(&mut group, req.group_info.as_slice(), new_leaf)?;
    group.state.members.retain(|m| m.leaf_index != old_leaf);
    group.set_member(new_leaf, req.member.clone());
    let payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.commit.clone(),
        new_credentials: vec![LeafCredential {
            leaf_index: new_leaf,
            encrypted_credential: req.member.encrypted_credential.clone(),
        }],
    });
    // Requirement: DS-RESYNC-3, DS-FAN-1 (everyone but the resyncing member)
    let outbox = fan_out_to_members(&recipients, Some(old_leaf), &payload)?;
    // Requirement: ADV-REPLAY-3
    group
        .save(server, now, &outbox, &crate::replay::record(request, now)?)
        .await?;
    codec::encode(&Empty {})
}
