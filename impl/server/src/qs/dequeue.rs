//! `dequeue`: the owner of a client record fetches its queue from a sequence number on;
//! everything below that number is deleted (the client has processed it).

use phoenix_types::codec;
use phoenix_types::error::WireError;
use phoenix_types::messages::{DequeueRequest, DequeueResponse};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::QsStore;

// Requirement: QS-DEQ-1, QS-DEQ-2, QS-DEQ-3
pub async fn dequeue(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: DequeueRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let max = u32::from(req.max).min(server.limits.max_dequeue);
    let (messages, remaining) = QsStore::dequeue(
        &server.store,
        &client.client_id,
        req.sequence_number_start,
        max,
    )
    .await
    .map_err(server.internal())?;
    codec::encode(&DequeueResponse {
        messages,
        remaining,
    })
}
