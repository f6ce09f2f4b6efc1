//! `remove_users`: a member commits Remove proposals (and nothing else) for other members.
//! Removed members get the commit too, so they learn they were removed; their entries are
//! deleted from the group state.

use openmls::prelude::{LeafNodeIndex, Sender};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::{CommitRequest, GroupMessage, QueuePayload};

use crate::auth::{Request, check_fresh};
use crate::ds::commit;
use crate::ds::group_state::LoadedGroup;
use crate::ds::{authenticate_leaf, fan_out_to_members};
use crate::server::Server;

// Requirement: DS-FAN-2, DS-COMMIT-1
pub async fn remove_users(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let mut req: CommitRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    if req.new_encrypted_credential.is_some() {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "remove_users does not change credentials",
        ));
    }
    let mut group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    let sender = authenticate_leaf(request, &group)?;
    let staged = commit::stage(&group, req.commit.as_slice())?;
    if staged.sender != Sender::Member(LeafNodeIndex::new(sender)) {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "the commit's sender is not the request's signer",
        ));
    }
    let removed: Vec<u32> = staged
        .commit
        .remove_proposals()
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    let proposals = staged.commit.queued_proposals().count();
    if removed.is_empty() || proposals != removed.len() {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            format!(
                "remove_users takes a commit with only Remove proposals (found {proposals} proposals, {} removes)",
                removed.len()
            ),
        ));
    }
    // Requirement: ADV-OP-2
    observe!(removed.iter().map(|leaf| Observed::LeafIndex(*leaf)));
    if removed.contains(&sender) {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "a member cannot remove itself with remove_users",
        ));
    }
    let recipients = group.state.members.clone();
    commit::merge(&mut group, staged)?;
    commit::accept_group_info(&mut group, req.group_info.as_slice(), sender)?;
    group
        .state
        .members
        .retain(|m| !removed.contains(&m.leaf_index));
    let payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.commit.clone(),
        new_credentials: Vec::new(),
    });
    let outbox = fan_out_to_members(&recipients, Some(sender), &payload)?;
    // Requirement: ADV-REPLAY-3
    group
        .save(server, now, &outbox, &crate::replay::record(request, now)?)
        .await?;
    codec::encode(&Empty {})
}
