//! The outbox worker: delivers fan-out messages written by DS operations in the same
//! transaction as the state change. Entries for this server's QS are enqueued locally
//! (idempotently, by their dedup key) and deleted; entries for other homeservers are
//! forwarded to their QS ([`crate::federation::send`]): delivered or already-delivered
//! entries are deleted, transient failures are retried with exponential backoff capped at
//! the configured maximum, and permanent refusals are dropped and logged. The outbox is in
//! the database, so nothing is lost when a peer is down or this process restarts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::federation::send::{SendOutcome, send};
use crate::qs::enqueue::{EnqueueOutcome, enqueue_local};
use crate::server::{Server, now};
use crate::store::{DsStore, StoreError};

/// Entries handled per round.
const BATCH: u32 = 256;

/// Which entries a delivery round handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only entries for this server's QS (fast; used right after a request's commit).
    Local,
    /// Everything that is due.
    All,
}

/// Deliver what is due now. Returns how many entries were handled.
pub async fn deliver_due(server: &Server, scope: Scope) -> Result<usize, StoreError> {
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
            match &outcome {
                EnqueueOutcome::Undeliverable(reason) => {
                    tracing::warn!(outbox_id = id, %reason, "dropping undeliverable fan-out message");
                }
                _ => {
                    server
                        .metrics
                        .local_delivered
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            done.push(*id);
        }
    }
    let mut handled = done.len();
    if scope == Scope::All {
        for (id, entry) in &remote {
            handled += 1;
            match send(server, entry).await {
                SendOutcome::Delivered => {
                    server
                        .metrics
                        .federation_sent
                        .fetch_add(1, Ordering::Relaxed);
                    done.push(*id);
                }
                SendOutcome::Permanent(error) => {
                    server
                        .metrics
                        .federation_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(outbox_id = id, destination = %entry.destination, %error,
                        "the destination refused a federated message for good; dropping it");
                    done.push(*id);
                }
                SendOutcome::Transient(reason) => {
                    server
                        .metrics
                        .federation_retried
                        .fetch_add(1, Ordering::Relaxed);
                    let attempts = server.store.outbox_attempts(*id).await?;
                    let delay = backoff(attempts, server.federation.max_backoff);
                    tracing::warn!(outbox_id = id, destination = %entry.destination, attempts = attempts + 1,
                        retry_in_secs = delay, %reason, "federated delivery failed; will retry");
                    server.store.postpone_outbox(*id, now + delay).await?;
                }
            }
        }
    }
    server.store.delete_outbox(&done).await?;
    Ok(handled)
}

/// Exponential backoff: 1, 2, 4, ... seconds, capped at `max`.
pub fn backoff(attempts: u32, max: u64) -> u64 {
    1u64.checked_shl(attempts.min(63))
        .unwrap_or(u64::MAX)
        .min(max.max(1))
}

/// Deliver right after a state change committed, so that a sender's request returns once
/// local recipients have the message in their queues. Remote deliveries are left to the
/// worker (a slow peer must not slow the request); failures never fail the request (the
/// state change has committed) and are retried by the worker.
pub async fn deliver_now(server: &Server) {
    if let Err(e) = deliver_due(server, Scope::Local).await {
        tracing::warn!(error = %e, "immediate fan-out failed; the outbox worker will retry");
    }
    server.outbox_wakeup.notify_one();
}

/// Run the worker until the process ends: deliver what is due whenever woken, and at
/// least once a second.
pub async fn run(server: Arc<Server>) {
    loop {
        match deliver_due(&server, Scope::All).await {
            Ok(n) if n >= BATCH as usize => continue,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "outbox delivery failed; retrying"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), server.outbox_wakeup.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0, 60), 1);
        assert_eq!(backoff(3, 60), 8);
        assert_eq!(backoff(6, 60), 60);
        assert_eq!(backoff(200, 60), 60);
        assert_eq!(backoff(0, 0), 1);
    }
}
