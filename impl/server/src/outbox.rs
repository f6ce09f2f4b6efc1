//! The outbox worker: delivers fan-out messages written by DS operations in the same
//! transaction as the state change. Entries for this server's QS are enqueued locally
//! (idempotently, by their dedup key) and then deleted; delivery to other servers'
//! QSs is the federation issue's work and is not implemented yet: such entries stay in
//! the outbox, postponed, and are logged.

use std::sync::Arc;
use std::time::Duration;

use crate::qs::enqueue::{EnqueueOutcome, enqueue_local};
use crate::server::{Server, now};
use crate::store::{DsStore, StoreError};

/// Entries handled per round.
const BATCH: u32 = 256;
/// How long a remote entry waits before it is looked at again (seconds).
const REMOTE_RETRY: u64 = 60;

/// Deliver everything that is due now. Returns how many entries were handled.
pub async fn deliver_due(server: &Server) -> Result<usize, StoreError> {
    let now = now();
    let due = server.store.due_outbox(now, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let (local, remote): (Vec<_>, Vec<_>) = due
        .into_iter()
        .partition(|(_, entry)| entry.destination == server.domain.as_str());
    let mut done = Vec::with_capacity(local.len());
    if !local.is_empty() {
        let entries: Vec<_> = local.iter().map(|(_, e)| e.clone()).collect();
        let outcomes = enqueue_local(server, &entries).await?;
        for ((id, _), outcome) in local.iter().zip(outcomes) {
            if let EnqueueOutcome::Undeliverable(reason) = &outcome {
                tracing::warn!(outbox_id = id, %reason, "dropping undeliverable fan-out message");
            }
            done.push(*id);
        }
    }
    for (id, entry) in &remote {
        tracing::warn!(
            outbox_id = id,
            destination = %entry.destination,
            "federated delivery is not implemented yet; message stays in the outbox"
        );
        server
            .store
            .postpone_outbox(*id, now + REMOTE_RETRY)
            .await?;
    }
    server.store.delete_outbox(&done).await?;
    Ok(done.len() + remote.len())
}

/// Deliver right after a state change committed, so that a sender's request returns once
/// local recipients have the message in their queues. Failures are left to the worker,
/// which retries; they never fail the request (the state change has committed).
pub async fn deliver_now(server: &Server) {
    if let Err(e) = deliver_due(server).await {
        tracing::warn!(error = %e, "immediate fan-out failed; the outbox worker will retry");
        server.outbox_wakeup.notify_one();
    }
}

/// Run the worker until the process ends: deliver what is due whenever woken, and at
/// least once a second.
pub async fn run(server: Arc<Server>) {
    loop {
        match deliver_due(&server).await {
            Ok(n) if n >= BATCH as usize => continue,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "outbox delivery failed; retrying"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), server.outbox_wakeup.notified()).await;
    }
}
