//! Operations on an in-process server: `/ready` until the shutdown signal, and the expiry
//! sweeps counting what they purged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use phoenix_server::federation::FederationSettings;
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::{DsStore, Store};

async fn server() -> Arc<Server> {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    Server::start_with(
        phoenix_types::ids::Domain::parse("ops.test").unwrap(),
        store,
        Limits::default(),
        FederationSettings::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ready_until_the_shutdown_signal() {
    // Requirement: OPS-HEALTH-2
    let server = server().await;
    assert!(phoenix_server::ops::ready(&server).ok());
    assert!(phoenix_server::ops::health(&server).await.ok());
    server.metrics.ops.begin_shutdown();
    let status = phoenix_server::ops::ready(&server);
    assert!(!status.ok());
    assert_eq!(status.checks[0].error.as_deref(), Some("shutting down"));
}

#[tokio::test]
async fn expiry_sweeps_count_what_they_purged() {
    // Requirement: OPS-METRICS-3
    let server = server().await;
    let now = now();
    assert!(
        server
            .store
            .reserve_group_id(&[7; 16], now - 10)
            .await
            .unwrap()
    );
    assert!(
        server
            .store
            .reserve_group_id(&[8; 16], now + 3600)
            .await
            .unwrap()
    );
    phoenix_server::jobs::purge_once(&server, now).await;
    assert_eq!(
        server
            .metrics
            .group_reservations_purged
            .load(Ordering::Relaxed),
        1
    );
}
