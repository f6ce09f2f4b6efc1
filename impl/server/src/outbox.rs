//! The outbox worker: delivers fan-out messages written by DS operations in the same
//! transaction as the state change. Entries for this server's QS are enqueued locally
//! (idempotently, by their dedup key) and deleted; entries for other homeservers are
//! forwarded to their QS ([`crate::federation::send`]): delivered or already-delivered
//! entries are deleted, transient failures are retried with exponential backoff capped at
//! the configured maximum, and permanent refusals are dropped and logged. The outbox is in
//! the database, so nothing is lost when a peer is down or this process restarts.
//!
//! Who delivers what (Requirement: DS-OUTBOX-2): a DS request delivers exactly the local
//! entries it wrote, by their ids, right after its commit; everything else belongs to the
//! worker. Every deliverer first claims its entries in the store (a lease,
//! `claimed_until`, that runs out if the deliverer dies), so two deliverers (two tasks, or
//! two processes sharing one database) never take the same entry.
//!
//! Order (Requirement: FED-ORDER-1): an entry is not claimed while an older entry of the
//! same destination queue (local) or destination domain (remote) is pending and not due
//! or claimed by someone else; the entries of one domain are sent oldest first, and a
//! transient failure postpones the whole domain (backoff per destination), so when a peer
//! comes back its entries flow oldest first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::federation::PEER_TIMEOUT;
use crate::federation::send::{SendOutcome, send};
use crate::qs::enqueue::{EnqueueOutcome, enqueue_local};
use crate::server::{Server, now};
use crate::store::admin::AdminStore;
use crate::store::{DsStore, OutboxEntry, StoreError};

/// Entries handled per round.
const BATCH: u32 = 256;

/// How long a claim lasts. A deliverer stops sending once less than two peer timeouts of
/// it are left and gives the rest back, so a claim never runs out under a live deliverer.
pub const LEASE: Duration = Duration::from_secs(60);

/// The worker's round: claim what is due (in order, see the module docs) and deliver it.
/// Returns how many entries were claimed.
pub async fn deliver_due(server: &Server) -> Result<usize, StoreError> {
    let now = now();
    let claimed = server
        .store
        .claim_due_outbox(
            server.domain.as_str(),
            now,
            now.saturating_add(LEASE.as_secs()),
            BATCH,
        )
        .await?;
    let n = claimed.len();
    deliver_claimed(server, claimed, now).await?;
    Ok(n)
}

/// Deliver claimed entries (oldest first): local ones in one batch, then each remote
/// destination's in order, stopping at a destination's first transient failure.
async fn deliver_claimed(
    server: &Server,
    claimed: Vec<(i64, OutboxEntry)>,
    now: u64,
) -> Result<(), StoreError> {
    if claimed.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let (local, remote): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|(_, entry)| entry.destination == server.domain.as_str());
    if !local.is_empty() {
        let entries: Vec<_> = local.iter().map(|(_, e)| e.clone()).collect();
        let outcomes = enqueue_local(server, &entries).await?;
        let mut done = Vec::with_capacity(local.len());
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
        server.store.delete_outbox(&done).await?;
    }
    let mut by_destination: BTreeMap<String, Vec<(i64, OutboxEntry)>> = BTreeMap::new();
    for (id, entry) in remote {
        by_destination
            .entry(entry.destination.clone())
            .or_default()
            .push((id, entry));
    }
    // Keep a margin of two peer timeouts before the claims run out.
    let budget = LEASE.saturating_sub(PEER_TIMEOUT * 2);
    for (destination, entries) in by_destination {
        let mut done = Vec::new();
        let mut untouched = Vec::new();
        let mut postponed = false;
        for (id, entry) in &entries {
            if postponed {
                // The destination's entries were postponed together, claims released.
                break;
            }
            if started.elapsed() >= budget {
                untouched.push(*id);
                continue;
            }
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
                    tracing::error!(outbox_id = id, %destination, %error,
                        "the destination refused a federated message for good; dropping it");
                    done.push(*id);
                }
                SendOutcome::Transient(reason) => {
                    server
                        .metrics
                        .federation_retried
                        .fetch_add(1, Ordering::Relaxed);
                    // Delete what went through first, so that the postponement below
                    // only holds back what is still pending.
                    server.store.delete_outbox(&done).await?;
                    done.clear();
                    let attempts = server.store.outbox_attempts(*id).await?;
                    let delay = backoff(attempts, server.federation.max_backoff);
                    tracing::warn!(outbox_id = id, %destination, attempts = attempts + 1,
                        retry_in_secs = delay, %reason,
                        "federated delivery failed; will retry the destination's messages in order");
                    // Requirement: FED-ORDER-1
                    server
                        .store
                        .postpone_destination(&destination, *id, now.saturating_add(delay))
                        .await?;
                    // Requirement: OPS-ADMIN-4 (shown by `admin outbox list`)
                    server
                        .store
                        .record_outbox_error(&destination, Some(&reason.to_string()), now)
                        .await?;
                    postponed = true;
                }
            }
        }
        if !postponed && !done.is_empty() {
            server
                .store
                .record_outbox_error(&destination, None, now)
                .await?;
        }
        server.store.delete_outbox(&done).await?;
        server.store.release_outbox(&untouched).await?;
    }
    Ok(())
}

/// Exponential backoff: 1, 2, 4, ... seconds, capped at `max`.
pub fn backoff(attempts: u32, max: u64) -> u64 {
    1u64.checked_shl(attempts.min(63))
        .unwrap_or(u64::MAX)
        .min(max.max(1))
}

// Requirement: DS-OUTBOX-2
/// Deliver right after a state change committed the outbox entries `ids`, so that a
/// sender's request returns once local recipients have the message in their queues. Only
/// these entries, and only those addressed to this server's QS that are not waiting
/// behind older entries of their queue, are delivered here; the rest (remote entries,
/// and local ones that must wait their turn) are left to the worker, which is woken (a
/// slow peer must not slow the request). Failures never fail the request (the state
/// change has committed) and are retried by the worker once the claim runs out.
pub async fn deliver_now(server: &Server, ids: &[i64]) {
    let now = now();
    let delivered = async {
        let claimed = server
            .store
            .claim_outbox(
                ids,
                server.domain.as_str(),
                now,
                now.saturating_add(LEASE.as_secs()),
            )
            .await?;
        deliver_claimed(server, claimed, now).await
    }
    .await;
    if let Err(e) = delivered {
        server.metrics.outbox_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "immediate fan-out failed; the outbox worker will retry");
    }
    server.outbox_wakeup.notify_one();
}

/// Run the worker until the process ends: deliver what is due whenever woken, and at
/// least once a second.
pub async fn run(server: Arc<Server>) {
    loop {
        match deliver_due(&server).await {
            Ok(n) if n >= BATCH as usize => continue,
            Ok(_) => {}
            Err(e) => {
                server.metrics.outbox_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "outbox delivery failed; retrying");
            }
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
