//! Periodic purges of ephemeral rows, once a minute while the server runs: cache entries of
//! foreign actors' certificates whose window ended ([`crate::federation::certificates`];
//! reads evict them too, this bounds what an idle cache keeps), and replay records of
//! federated messages, of the DS's application messages and of signed requests
//! ([`crate::replay`]) too old for a replay to pass the freshness check, connection
//! packages whose validity ended (never served once expired; this deletes them) and
//! group id reservations that expired unused (never usable once expired; this deletes
//! them).
//!
//! What this module is not: the outbox worker ([`crate::outbox`]) or the CA jobs
//! ([`crate::server::Server::run_ca_jobs`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use phoenix_types::messages::MAX_CLOCK_SKEW;

use crate::server::{Server, now};
use crate::store::EphemeralStore;

/// How often the purges run.
pub const PURGE_PERIOD: Duration = Duration::from_secs(60);

/// How long a replay record (of a federated message, of an application message the DS
/// accepted, or of a signed request, [`crate::replay`]) is kept (seconds). A request is accepted only if its timestamp is within
/// [`MAX_CLOCK_SKEW`] of the receiver's clock, so a replay arriving more than
/// `2 × MAX_CLOCK_SKEW` after the original was received is refused as `STALE_REQUEST`
/// whatever the replay records say; the rest is margin for clock steps on the receiver.
/// How long the QS remembers the dedup key of an entry it enqueued (Requirement:
/// QS-DEDUP-1): far beyond any outbox claim lease and restart, so a local outbox entry is
/// never delivered twice unless the server was down with it pending for a week.
pub const QS_DELIVERED_RETENTION: u64 = 7 * 24 * 3600;

pub const FEDERATION_SEEN_RETENTION: u64 = 2 * MAX_CLOCK_SKEW + 3600;

/// Run the purges every [`PURGE_PERIOD`] until the task is aborted.
pub async fn run_purges(server: Arc<Server>) {
    let mut tick = tokio::time::interval(PURGE_PERIOD);
    loop {
        tick.tick().await;
        purge_once(&server, now()).await;
    }
}

/// One round of purges as of `now`.
pub async fn purge_once(server: &Server, now: u64) {
    crate::federation::certificates::purge(server, now).await;
    let before = now.saturating_sub(FEDERATION_SEEN_RETENTION);
    // Requirement: FED-5
    count_pruned(
        server.store.prune_federation_seen(before).await,
        &server.metrics.federation_seen_pruned,
        "federated replay records",
    );
    // Requirement: ADV-REPLAY-2
    count_pruned(
        server.store.prune_ds_seen(before).await,
        &server.metrics.ds_seen_pruned,
        "the DS's message replay records",
    );
    // Requirement: QS-DEDUP-1
    count_pruned(
        server
            .store
            .prune_qs_delivered(now.saturating_sub(QS_DELIVERED_RETENTION))
            .await,
        &server.metrics.qs_delivered_pruned,
        "the QS's records of delivered entries",
    );
    // Requirement: AS-CP-7
    count_pruned(
        server.store.purge_connection_packages(now).await,
        &server.metrics.connection_packages_purged,
        "expired connection packages",
    );
    // Requirement: DS-GID-2
    count_pruned(
        server.store.purge_group_reservations(now).await,
        &server.metrics.group_reservations_purged,
        "expired group id reservations",
    );
    // Requirement: ADV-REPLAY-3
    count_pruned(
        server.store.prune_seen_requests(before).await,
        &server.metrics.requests_seen_pruned,
        "replay records of signed requests",
    );
}

/// Add what a purge of `what` deleted to `counter`, or log why it failed.
fn count_pruned(
    result: crate::store::StoreResult<u64>,
    counter: &std::sync::atomic::AtomicU64,
    what: &str,
) {
    match result {
        Ok(pruned) => {
            counter.fetch_add(pruned, Ordering::Relaxed);
            // Requirement: OPS-METRICS-3
            if pruned > 0 {
                tracing::info!(purged = pruned, "expiry sweep: purged {pruned} {what}");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot prune {what}"),
    }
}
