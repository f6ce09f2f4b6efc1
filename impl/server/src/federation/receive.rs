//! `POST /phoenix/v1/federation/enqueue`: accept a message from a remote QS for one of our
//! clients' queues. Checks, in order, each with its own error code:
//! 1. the body decodes (`MALFORMED`, `TOO_LARGE`);
//! 2. our policy allows the sender (`FEDERATION_REFUSED`);
//! 3. the message and its queue config are addressed to us: no open relay
//!    (`MISADDRESSED`);
//! 4. the signature verifies with the sender's QS key from its discovery document, fetched
//!    and cached, refetched once in case the key changed (`BAD_SIGNATURE`; an unreachable
//!    sender is `UNKNOWN_PEER`);
//! 5. the timestamp is fresh (`STALE_REQUEST`);
//! 6. the message id was not seen before from that sender (`REPLAYED`), recorded in the
//!    same transaction as the enqueue.

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Domain;
use phoenix_types::messages::federation::{
    self, FederatedEnqueue, FederatedEnqueueTbs, MAX_FEDERATED_MESSAGE,
};
use phoenix_types::messages::qs::SealedQueueConfig;
use phoenix_types::messages::{Empty, Notification};

use crate::auth::check_fresh;
use crate::qs::open_queue_config;
use crate::server::Server;
use crate::store::{EnqueueEntry, FederatedEnqueue as Stored, QsStore};

pub async fn enqueue(server: &Server, body: &[u8], now: u64) -> Result<Vec<u8>, WireError> {
    let message: FederatedEnqueue = codec::decode(body, MAX_FEDERATED_MESSAGE)?;
    let tbs: FederatedEnqueueTbs = codec::decode(message.tbs.as_slice(), MAX_FEDERATED_MESSAGE)?;
    let sender = Domain::parse(&tbs.sender)
        .map_err(|_| WireError::new(ErrorCode::Malformed, "invalid sender domain"))?;
    // Requirement: FED-4
    server.federation.policy.check(&sender)?;
    // Requirement: FED-1, ADV-REMOTE-1
    if tbs.destination != server.domain.as_str() {
        return Err(WireError::new(
            ErrorCode::Misaddressed,
            format!(
                "this is {}, not {}: this server does not relay",
                server.domain, tbs.destination
            ),
        ));
    }
    let sealed: SealedQueueConfig = codec::decode(tbs.queue_config.as_slice(), 1024)?;
    if sealed.qs_domain != server.domain.as_str() {
        return Err(WireError::new(
            ErrorCode::Misaddressed,
            "the queue config is addressed to another QS: this server does not relay",
        ));
    }
    if sender == server.domain {
        return Err(WireError::new(
            ErrorCode::BadSignature,
            "a federated message claiming to come from this server",
        ));
    }
    // Requirement: FED-2, ADV-REMOTE-1
    verify_signature(server, &sender, &message).await?;
    check_fresh(tbs.timestamp, now)?;
    let client_id = open_queue_config(server, &sealed)?;
    // Requirement: ADV-OP-1
    observe!(
        [
            Observed::PeerDomain(sender.to_string()),
            Observed::sealed_queue_config(&sealed),
            Observed::QsClientId(client_id),
        ]
        .into_iter()
        .chain(Observed::payload_group(tbs.payload.as_slice()))
    );
    let entry = EnqueueEntry {
        client_id,
        payload: tbs.payload.as_slice().to_vec(),
        dedup: Some(tbs.message_id),
    };
    // Requirement: FED-3
    match server
        .store
        .enqueue_federated(
            sender.as_str(),
            &tbs.message_id,
            now,
            &entry,
            &server.limits.queue_sealer,
        )
        .await
        .map_err(server.internal())?
    {
        Stored::Replayed => Err(WireError::new(
            ErrorCode::Replayed,
            "this message was delivered before",
        )),
        Stored::Enqueued(None) => Err(WireError::new(ErrorCode::UnknownQueue, "no such queue")),
        Stored::Enqueued(Some(_)) => {
            // Requirement: QS-LISTEN-2 (after the commit)
            server.queue_wakeup.wake(&client_id);
            // Requirement: QS-PUSH-2, QS-PUSH-4
            if tbs.notification == Notification::Send
                && !server.queue_wakeup.is_listening(&client_id)
            {
                server.pusher.notify(vec![client_id]);
            }
            server
                .metrics
                .federation_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            codec::encode(&Empty {})
        }
    }
}

async fn verify_signature(
    server: &Server,
    sender: &Domain,
    message: &FederatedEnqueue,
) -> Result<(), WireError> {
    let forged = || {
        WireError::new(
            ErrorCode::BadSignature,
            format!("the message is not signed by {sender}'s QS"),
        )
    };
    for refresh in [false, true] {
        let peer = server.peers.peer(sender, refresh).await?;
        if crypto::verify(
            &peer.qs_verifying_key,
            federation::LABEL,
            message.tbs.as_slice(),
            message.signature.as_slice(),
        )
        .is_ok()
        {
            return Ok(());
        }
    }
    Err(forged())
}
