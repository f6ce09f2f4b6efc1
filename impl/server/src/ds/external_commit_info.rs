//! `external_commit_info`: what a client needs to join a group by external commit (the
//! current group info, the ratchet tree and the members' encrypted credentials). Knowing
//! the EAR key is the authorisation: only clients that were handed the group's keys have it.

use tls_codec::{Serialize, VLBytes};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::ds::{ExternalCommitInfoRequest, ExternalCommitInfoResponse};

use crate::auth::Request;
use crate::ds::group_state::LoadedGroup;
use crate::server::Server;

// Requirement: DS-INFO-1, DS-EAR-1
pub async fn external_commit_info(
    server: &Server,
    request: &Request,
) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let mut req: ExternalCommitInfoRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    let group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    let tree = group
        .public_group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(|_| WireError::new(ErrorCode::Internal, "encoding failed"))?;
    codec::encode(&ExternalCommitInfoResponse {
        group_info: group.state.group_info.clone(),
        ratchet_tree: VLBytes::new(tree),
        credentials: group.credentials(),
    })
}
