//! `send_message`: a member sends an application message (an MLS `PrivateMessage` of the
//! current epoch) to the group. The DS cannot read it; it checks the request signature
//! with the sender's leaf key, the group and epoch, and fans it out to every other member,
//! once: a replayed message is refused (`REPLAYED`), by a digest the DS keeps for as long
//! as the replay could still pass the freshness check.

use openmls::prelude::{ContentType, ProtocolMessage};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::ds::{GroupMessage, QueuePayload, SendMessageRequest};
use phoenix_types::messages::{Empty, Notification};

use crate::auth::{Request, check_fresh};
use crate::ds::commit;
use crate::ds::group_state::LoadedGroup;
use crate::ds::{authenticate_leaf, fan_out_to_members};
use crate::server::Server;
use crate::store::DsStore;

// Requirement: DS-SEND-1, DS-EPOCH-2
pub async fn send_message(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let mut req: SendMessageRequest = request.payload()?;
    let ear_key = SymmetricKey(req.ear_key);
    req.ear_key.zeroize();
    check_fresh(req.timestamp, now)?;
    let group = LoadedGroup::load(server, req.group_id.as_slice(), ear_key).await?;
    let sender = authenticate_leaf(request, &group)?;
    let message = commit::protocol_message(&group, req.message.as_slice())?;
    if !matches!(message, ProtocolMessage::PrivateMessage(_))
        || message.content_type() != ContentType::Application
    {
        return Err(WireError::new(
            ErrorCode::InvalidMlsMessage,
            "send_message takes an application message sent as a private message",
        ));
    }
    let payload = QueuePayload::GroupMessage(GroupMessage {
        group_id: req.group_id.clone(),
        message: req.message.clone(),
        new_credentials: Vec::new(),
    });
    let mut outbox = fan_out_to_members(&group.state.members, Some(sender), &payload)?;
    // Requirement: QS-PUSH-4
    if req.notification == Notification::Suppress {
        for entry in &mut outbox {
            entry.notify = false;
        }
    }
    // Requirement: ADV-REPLAY-2
    let recorded = server
        .store
        .append_message_outbox(&message_digest(req.message.as_slice()), now, &outbox)
        .await
        .map_err(server.internal())?;
    let Some(outbox_ids) = recorded else {
        server
            .metrics
            .ds_replays_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(WireError::new(
            ErrorCode::Replayed,
            "this application message was sent before",
        ));
    };
    crate::outbox::deliver_now(server, &outbox_ids).await;
    codec::encode(&Empty {})
}

/// The replay record of an application message: SHA-256 over a label and the message (a
/// `PrivateMessage`: its nonce and ciphertext make two sends of one text differ).
fn message_digest(message: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"phoenix ds sent message v1");
    hash.update(message);
    hash.finalize().into()
}
