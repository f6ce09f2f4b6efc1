//! `update`: a member commits a new path for its own leaf (no proposals), optionally
//! replacing its encrypted credential (e.g. after a certificate renewal).

use openmls::prelude::{LeafNodeIndex, Sender};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::{
    CommitRequest, GroupMessage, LeafCredential, MAX_ENCRYPTED_CREDENTIAL, QueuePayload,
};

use crate::auth::{Request, check_fresh};
use crate::ds::commit;
use crate::ds::group_state::LoadedGroup;
use crate::ds::{authenticate_leaf, fan_out_to_members};
use crate::server::Server;

// Requirement: DS-COMMIT-1
pub async fn update(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let mut req: CommitRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    let mut group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    let sender = authenticate_leaf(request, &group)?;
    let staged = commit::stage(&group, req.commit.as_slice())?;
    if staged.sender != Sender::Member(LeafNodeIndex::new(sender)) {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "the commit's sender is not the request's signer",
        ));
    }
    if staged.commit.queued_proposals().count() != 0
        || staged.commit.update_path_leaf_node().is_none()
    {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "update takes a commit with a path and no proposals",
        ));
    }
    // Requirement: ADV-OP-2
    observe!(
        staged
            .commit
            .update_path_leaf_node()
            .into_iter()
            .flat_map(|leaf| Observed::leaf(leaf.signature_key().as_slice(), leaf.credential()))
            .chain(
                req.new_encrypted_credential
                    .iter()
                    .map(|c| Observed::encrypted_credential(c.as_slice()))
            )
    );
    let recipients = group.state.members.clone();
    commit::merge(&mut group, staged)?;
    commit::accept_group_info(&mut group, req.group_info.as_slice(), sender)?;
    let mut new_credentials = Vec::new();
    if let Some(credential) = &req.new_encrypted_credential {
        if credential.as_slice().len() > MAX_ENCRYPTED_CREDENTIAL {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                "encrypted credential is too large",
            ));
        }
        let mut info = group
            .member(sender)
            .map(|m| m.info.clone())
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "the sender has no member entry"))?;
        info.encrypted_credential = credential.clone();
        group.set_member(sender, info);
        new_credentials.push(LeafCredential {
            leaf_index: sender,
            encrypted_credential: credential.clone(),
        });
    }
    let payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.commit.clone(),
        new_credentials,
    });
    let outbox = fan_out_to_members(&recipients, Some(sender), &payload)?;
    // Requirement: ADV-REPLAY-3
    group
        .save(server, now, &outbox, &crate::replay::record(request, now)?)
        .await?;
    codec::encode(&Empty {})
}
