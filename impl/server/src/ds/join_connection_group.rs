//! `join_connection_group`: the responder of a connection joins the initiator's connection
//! group by external commit. Only allowed while the group has exactly one member; the EAR
//! key (handed over in the connection establishment package) is the authorisation, and
//! the commit itself is signed by the joiner's new leaf.

use openmls::prelude::Sender;
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::ds::{
    GroupMessage, JoinConnectionGroupRequest, LeafCredential, QueuePayload,
};

use crate::auth::Request;
use crate::ds::commit::{self, leaf_of_signature_key};
use crate::ds::group_state::LoadedGroup;
use crate::ds::{check_member_info, fan_out_to_members};
use crate::server::Server;

pub async fn join_connection_group(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let mut req: JoinConnectionGroupRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_member_info(&req.joiner)?;
    let mut group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    if group.state.members.len() != 1 || group.public_group.members().count() != 1 {
        return Err(WireError::new(
            ErrorCode::NotConnectionGroup,
            "only a group with exactly one member can be joined as a connection group",
        ));
    }
    let staged = commit::stage(&group, req.commit.as_slice())?;
    if staged.sender != Sender::NewMemberCommit {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "expected an external commit",
        ));
    }
    if staged.commit.add_proposals().count() != 0 || staged.commit.remove_proposals().count() != 0 {
        return Err(WireError::new(
            ErrorCode::InvalidCommit,
            "the external commit may only add its sender",
        ));
    }
    let joiner_key = staged
        .commit
        .update_path_leaf_node()
        .map(|leaf| leaf.signature_key().as_slice().to_vec())
        .ok_or_else(|| {
            WireError::new(ErrorCode::InvalidCommit, "the external commit has no path")
        })?;
    let recipients = group.state.members.clone();
    commit::merge(&mut group, staged)?;
    let joiner = leaf_of_signature_key(&group, &joiner_key).ok_or_else(|| {
        WireError::new(ErrorCode::Internal, "the joiner is missing after the merge")
    })?;
    commit::accept_group_info(&mut group, req.group_info.as_slice(), joiner)?;
    // Requirement: ADV-OP-2
    observe!(
        [
            Observed::LeafIndex(joiner),
            Observed::sealed_queue_config(&req.joiner.queue_config),
            Observed::encrypted_credential(req.joiner.encrypted_credential.as_slice()),
        ]
        .into_iter()
        .chain(
            group
                .public_group
                .members()
                .filter(|m| m.index.u32() == joiner)
                .flat_map(|m| Observed::leaf(&m.signature_key, &m.credential))
        )
    );
    group.set_member(joiner, req.joiner.clone());
    let payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.commit.clone(),
        new_credentials: vec![LeafCredential {
            leaf_index: joiner,
            encrypted_credential: req.joiner.encrypted_credential.clone(),
        }],
    });
    let outbox = fan_out_to_members(&recipients, None, &payload)?;
    // Requirement: ADV-REPLAY-3
    group
        .save(server, now, &outbox, &crate::replay::record(request, now)?)
        .await?;
    codec::encode(&Empty {})
}
