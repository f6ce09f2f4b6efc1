//! Enqueue from the DS (through the outbox): open each sealed queue config, and append the
//! payloads to the named client queues in one transaction. Entries whose queue config does
//! not open or whose client record is gone are reported back, not retried.

use phoenix_types::codec;
use phoenix_types::error::WireError;
use phoenix_types::messages::qs::SealedQueueConfig;

use crate::qs::open_queue_config;
use crate::server::Server;
use crate::store::{EnqueueEntry, OutboxEntry, QsStore, StoreError};

/// What happened to each outbox entry handed to [`enqueue_local`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Delivered(u64),
    /// Already delivered earlier (idempotent retry).
    Duplicate,
    /// The queue config is invalid or the client record no longer exists.
    Undeliverable(String),
}

// Requirement: QS-ENQ-1, QS-Q-1
/// Deliver outbox entries addressed to this QS.
pub async fn enqueue_local(
    server: &Server,
    entries: &[OutboxEntry],
) -> Result<Vec<EnqueueOutcome>, StoreError> {
    let mut outcomes: Vec<Option<EnqueueOutcome>> = Vec::with_capacity(entries.len());
    let mut batch = Vec::new();
    let mut batch_index = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match target(server, entry) {
            Ok(client_id) => {
                batch.push(EnqueueEntry {
                    client_id,
                    payload: entry.payload.clone(),
                    dedup: Some(entry.dedup),
                });
                batch_index.push(i);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(EnqueueOutcome::Undeliverable(e.detail))),
        }
    }
    let results = server.store.enqueue(&batch).await?;
    for (i, result) in batch_index.into_iter().zip(results) {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(match result {
                Some(seq) => EnqueueOutcome::Delivered(seq),
                None => EnqueueOutcome::Duplicate,
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(EnqueueOutcome::Undeliverable("not processed".into())))
        .collect())
}

fn target(server: &Server, entry: &OutboxEntry) -> Result<phoenix_types::ids::QsId, WireError> {
    let sealed: SealedQueueConfig = codec::decode(&entry.queue_config, 1024)?;
    open_queue_config(server, &sealed)
}
