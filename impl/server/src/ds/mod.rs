//! The Delivery Service: hosts MLS groups as an MLS "filtering server". It validates every
//! commit with openmls's `PublicGroup` (as a receiving member would), serialises commits
//! per group (exactly one commit per epoch wins; the loser gets `WRONG_EPOCH`), stores the
//! group state encrypted under a key only clients hold, and fans messages out to members'
//! queues through the outbox after the new state has committed.
//!
//! It knows members only by leaf index, per-group pseudonymous leaf credential and sealed
//! queue config: it cannot read who they are or link their groups.

pub mod add_users;
pub mod commit;
pub mod create_group;
pub mod decode;
pub mod external_commit_info;
pub mod group_state;
pub mod join_connection_group;
pub mod remove_users;
pub mod request_group_id;
pub mod resync;
pub mod send_message;
pub mod update;

use openmls::prelude::LeafNodeIndex;
use rand_core::{OsRng, RngCore};

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Auth;
use phoenix_types::messages::ds::{self, MemberInfo, QueuePayload};

use crate::auth::Request;
use crate::server::Server;
use crate::store::OutboxEntry;
use group_state::LoadedGroup;

pub fn operation(name: &str) -> Option<&'static str> {
    [
        ds::REQUEST_GROUP_ID,
        ds::CREATE_GROUP,
        ds::EXTERNAL_COMMIT_INFO,
        ds::JOIN_CONNECTION_GROUP,
        ds::ADD_USERS,
        ds::REMOVE_USERS,
        ds::UPDATE,
        ds::SEND_MESSAGE,
        ds::RESYNC,
    ]
    .into_iter()
    .find(|op| *op == name)
}

pub async fn handle(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    // Requirement: ADV-REPLAY-3 (before the group is loaded: a replayed commit is REPLAYED,
    // not WRONG_EPOCH)
    crate::replay::refuse_seen(server, request).await?;
    match request.operation {
        ds::REQUEST_GROUP_ID => request_group_id::request_group_id(server, request, now).await,
        ds::CREATE_GROUP => create_group::create_group(server, request, now).await,
        ds::EXTERNAL_COMMIT_INFO => {
            external_commit_info::external_commit_info(server, request).await
        }
        ds::JOIN_CONNECTION_GROUP => {
            join_connection_group::join_connection_group(server, request, now).await
        }
        ds::ADD_USERS => add_users::add_users(server, request, now).await,
        ds::REMOVE_USERS => remove_users::remove_users(server, request, now).await,
        ds::UPDATE => update::update(server, request, now).await,
        ds::SEND_MESSAGE => send_message::send_message(server, request, now).await,
        ds::RESYNC => resync::resync(server, request, now).await,
        _ => Err(WireError::new(ErrorCode::NotFound, "unknown DS operation")),
    }
}

// Requirement: DS-AUTH-1
/// Authenticate the sender of a request as the member at the claimed leaf, by that leaf's
/// signature key over the exact payload bytes. Returns the leaf index.
pub fn authenticate_leaf(request: &Request, group: &LoadedGroup) -> Result<u32, WireError> {
    let Auth::DsLeaf(auth) = &request.auth else {
        return Err(WireError::new(
            ErrorCode::Unauthenticated,
            "this operation needs a group member's leaf signature",
        ));
    };
    let leaf = group
        .public_group
        .leaf(LeafNodeIndex::new(auth.leaf_index))
        .ok_or_else(|| WireError::new(ErrorCode::UnknownSender, "no member at that leaf index"))?;
    crypto::verify(
        leaf.signature_key().as_slice(),
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
    // Requirement: ADV-OP-2
    observe!(
        std::iter::once(Observed::LeafIndex(auth.leaf_index)).chain(Observed::leaf(
            leaf.signature_key().as_slice(),
            leaf.credential()
        ))
    );
    Ok(auth.leaf_index)
}

/// One outbox entry delivering `payload` to a member.
// Requirement: DS-PRIV-1 (entries carry the member's sealed queue config, no QS id)
pub fn fan_out_entry(
    member: &MemberInfo,
    payload: &QueuePayload,
) -> Result<OutboxEntry, WireError> {
    let mut dedup = [0u8; 16];
    OsRng.fill_bytes(&mut dedup);
    Ok(OutboxEntry {
        destination: member.queue_config.qs_domain.clone(),
        queue_config: codec::encode(&member.queue_config)?,
        payload: codec::encode(payload)?,
        dedup,
        notify: true,
    })
}

// Requirement: DS-FAN-1, DS-FAN-2
/// Outbox entries delivering `payload` to every member except `except`.
pub fn fan_out_to_members(
    members: &[group_state::Member],
    except: Option<u32>,
    payload: &QueuePayload,
) -> Result<Vec<OutboxEntry>, WireError> {
    members
        .iter()
        .filter(|m| Some(m.leaf_index) != except)
        .map(|m| fan_out_entry(&m.info, payload))
        .collect()
}

/// Check a member entry's sizes before storing it.
pub fn check_member_info(info: &MemberInfo) -> Result<(), WireError> {
    if info.encrypted_credential.as_slice().len() > ds::MAX_ENCRYPTED_CREDENTIAL {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "encrypted credential is too large",
        ));
    }
    if info.queue_config.qs_domain.len() > phoenix_types::ids::MAX_DOMAIN_LEN
        || info.queue_config.sealed.ciphertext.as_slice().len() > 256
        || info.queue_config.sealed.kem_output.as_slice().len() != 32
    {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "malformed queue config",
        ));
    }
    phoenix_types::ids::Domain::parse(&info.queue_config.qs_domain).map_err(|_| {
        WireError::new(ErrorCode::Malformed, "queue config names an invalid domain")
    })?;
    Ok(())
}
