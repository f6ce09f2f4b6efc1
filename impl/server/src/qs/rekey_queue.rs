//! `rekey_queue`: a client gives its queue a new queue key and a new chain (QS-ENC-4). A
//! client record created before queue encryption gets its first chain this way; a client
//! whose chain broke (a ratchet update it could not open) starts a fresh one. The chain
//! starts at the queue's next sequence number, under the record's lock, so an enqueue
//! running at the same time seals under either the old chain (before) or the new one.

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{RekeyQueueRequest, RekeyQueueResponse};
use phoenix_types::queue_ratchet::QueueRatchet;

use crate::auth::{Request, check_fresh};
use crate::qs::create_user::queue_key;
use crate::server::Server;
use crate::store::{QsStore, QueueKeys};

// Requirement: QS-ENC-4, ADV-REPLAY-3
pub async fn rekey_queue(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: RekeyQueueRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let keys = QueueKeys {
        queue_key: queue_key(req.queue_key.as_slice())?,
        ratchet: QueueRatchet::from_secret(req.queue_ratchet_secret),
    };
    let chain_start = server
        .store
        .rekey_queue(
            &client.client_id,
            &keys,
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?
        .ok_or_else(|| WireError::new(ErrorCode::UnknownClient, "no such QS client record"))?;
    codec::encode(&RekeyQueueResponse { chain_start })
}
