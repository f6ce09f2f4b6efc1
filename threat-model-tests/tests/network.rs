//! The network adversary between a client and its server: it sees every request (TLS aside:
//! here it sits where TLS would end) and can send any of them again. A recorded
//! `send_message` request, replayed byte for byte while still fresh, is refused by the DS
//! with `REPLAYED` and fanned out no second time; the recipient sees the message once.
//!
//! Requirement: ADV-REPLAY-2, ADV-REPLAY-1

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use phoenix_conformance::observed::Observed;
use phoenix_conformance::proxy::{RecordingProxy, post_raw};
use phoenix_server::store::QsStore;
use phoenix_threat_model_tests::{Backend, Homeserver, User, group_of_two, listener};

async fn replay_send_message_on(backend: Backend) {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let Some(a) = Homeserver::start("a.test", backend, l, &resolve).await else {
        return;
    };
    let proxy = RecordingProxy::start(&a.url).await.unwrap();
    // alice's traffic goes through the adversary's proxy.
    let mut alice = User::register("alice@a.test", &proxy.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    group_of_two(&mut alice, &mut bob, "g").await;

    alice.client.send("g", "only once").await.unwrap();
    let events = bob
        .sync_until(|e| e["kind"] == "message" && e["text"] == "only once")
        .await;
    assert_eq!(
        events.iter().filter(|e| e["text"] == "only once").count(),
        1,
        "{events:?}"
    );

    // The adversary sends alice's send_message request again, byte for byte.
    let request = proxy
        .last_accepted(|path| path == "/phoenix/v1/ds/send_message")
        .expect("alice's send_message request went through the proxy");
    assert_eq!(
        post_raw(&a.url, &request.path, request.body).await.unwrap(),
        Observed::Error("REPLAYED".into())
    );
    assert_eq!(
        a.server
            .metrics
            .ds_replays_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Nothing was fanned out again: bob's queue stays empty once he has read it, and he
    // sees no second copy.
    let bob_queue = bob.qs_client_id().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().all(|e| e["kind"] != "message"),
        "the replay reached bob: {events:?}"
    );
    let (queued, _) = QsStore::dequeue(&a.server.store, &bob_queue, 0, 100)
        .await
        .unwrap();
    assert!(queued.is_empty(), "{} entries in bob's queue", queued.len());

    // alice's next message goes through as usual.
    alice.client.send("g", "and another").await.unwrap();
    bob.sync_until(|e| e["kind"] == "message" && e["text"] == "and another")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_is_refused_on_sqlite() {
    replay_send_message_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_is_refused_on_postgres() {
    replay_send_message_on(Backend::Postgres).await;
}
