//! The network adversary between a client and its server: it sees every request (TLS aside:
//! here it sits where TLS would end) and can send any of them again. A recorded
//! `send_message` request, replayed byte for byte while still fresh, is refused by the DS
//! with `REPLAYED` and fanned out no second time; the recipient sees the message once.
//! Every other signed state-changing request, replayed byte for byte, is refused with
//! `REPLAYED` too and changes nothing in the database; in particular a replayed publication
//! of key packages or connection packages does not restore a one-time package that was
//! handed out in between.
//!
//! Requirement: ADV-REPLAY-2, ADV-REPLAY-1, ADV-REPLAY-3, ADV-REPLAY-4

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use phoenix_conformance::observed::Observed;
use phoenix_conformance::proxy::{RecordingProxy, post_raw};
use phoenix_server::store::{AsStore, DsStore, QsStore};
use phoenix_threat_model_tests::{Backend, Homeserver, User, connect, group_of_two, listener};
use phoenix_types::codec;
use phoenix_types::messages::RequestEnvelope;
use phoenix_types::messages::as_::{ConnectionPackagePayload, PublishConnectionPackagesRequest};
use phoenix_types::messages::qs::{AddPackage, PublishKeyPackagesRequest};

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

// Replays of the other signed requests (ADV-REPLAY-3, ADV-REPLAY-4) -------------------

/// `a.test` on `backend`, with a recording proxy in front of it; `None` if Postgres is
/// unavailable and not required.
async fn server_with_proxy(backend: Backend) -> Option<(Homeserver, RecordingProxy, Vec<String>)> {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let a = Homeserver::start("a.test", backend, l, &resolve).await?;
    let proxy = RecordingProxy::start(&a.url).await.unwrap();
    Some((a, proxy, resolve))
}

/// The payload of a recorded request.
fn payload<T: tls_codec::Deserialize>(body: &[u8]) -> T {
    let envelope: RequestEnvelope = codec::decode(body, usize::MAX).unwrap();
    codec::decode(envelope.payload.as_slice(), usize::MAX).unwrap()
}

/// The adversary replays the last accepted request to `path`, byte for byte: `REPLAYED`.
async fn replay_is_refused(a: &Homeserver, proxy: &RecordingProxy, path: &str) {
    let request = proxy
        .last_accepted(|p| p == path)
        .unwrap_or_else(|| panic!("no accepted {path} went through the proxy"));
    assert_eq!(
        post_raw(&a.url, &request.path, request.body).await.unwrap(),
        Observed::Error("REPLAYED".into()),
        "{path}"
    );
}

/// How many one-time key packages the QS client `client` has left.
async fn one_time_left(a: &Homeserver, client: &[u8; 16]) -> u64 {
    QsStore::key_package_status(&a.server.store, client)
        .await
        .unwrap()
        .unwrap()
        .one_time
}

// Requirement: ADV-REPLAY-3, ADV-REPLAY-4
async fn replayed_publish_key_packages_on(backend: Backend) {
    let Some((a, proxy, resolve)) = server_with_proxy(backend).await else {
        return;
    };
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    // bob's traffic goes through the adversary's proxy.
    let mut bob = User::register("bob@a.test", &proxy.url, &resolve).await;
    connect(&mut alice, &mut bob).await;
    let bob_id = bob.local().await.identity().await.unwrap().unwrap();
    let published = proxy
        .last_accepted(|p| p == "/phoenix/v1/qs/publish_key_packages")
        .expect("bob published key packages through the proxy");
    let published: BTreeSet<Vec<u8>> = payload::<PublishKeyPackagesRequest>(&published.body)
        .add_packages
        .iter()
        .map(|p| codec::encode::<AddPackage>(p).unwrap())
        .collect();
    let before = one_time_left(&a, &bob_id.qs_client_id).await;
    assert_eq!(
        before + 1,
        published.len() as u64,
        "one of them is last-resort"
    );

    // alice invites bob: the QS hands one of bob's one-time packages out.
    alice.client.create_group("g").await.unwrap();
    alice.client.invite("g", &bob.fid).await.unwrap();
    assert_eq!(one_time_left(&a, &bob_id.qs_client_id).await, before - 1);

    // The adversary replays bob's publication: refused, nothing restored.
    replay_is_refused(&a, &proxy, "/phoenix/v1/qs/publish_key_packages").await;
    assert_eq!(one_time_left(&a, &bob_id.qs_client_id).await, before - 1);
    assert_eq!(
        a.server
            .metrics
            .request_replays_refused
            .load(Ordering::Relaxed),
        1
    );

    // Everything left is handed out once; the package alice got is never handed out again.
    let mut served = Vec::new();
    while one_time_left(&a, &bob_id.qs_client_id).await > 0 {
        let taken = a
            .server
            .store
            .take_key_packages(&bob_id.qs_user_id)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        served.extend(taken.into_iter().map(|(_, package)| package));
    }
    let last_resort = a
        .server
        .store
        .take_key_packages(&bob_id.qs_user_id)
        .await
        .unwrap();
    let served_set: BTreeSet<Vec<u8>> = served.iter().cloned().collect();
    assert_eq!(
        served_set.len(),
        served.len(),
        "a package was handed out twice"
    );
    assert!(served_set.is_subset(&published));
    assert!(published.contains(&last_resort[0].1));
    assert!(!served_set.contains(&last_resort[0].1));
    let given_to_alice: Vec<_> = published
        .iter()
        .filter(|p| !served_set.contains(*p) && **p != last_resort[0].1)
        .collect();
    assert_eq!(
        given_to_alice.len(),
        1,
        "exactly the package alice got is gone"
    );
}

// Requirement: ADV-REPLAY-3, ADV-REPLAY-4
async fn replayed_publish_connection_packages_on(backend: Backend) {
    let Some((a, proxy, resolve)) = server_with_proxy(backend).await else {
        return;
    };
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let bob = User::register("bob@a.test", &proxy.url, &resolve).await;
    let published = proxy
        .last_accepted(|p| p == "/phoenix/v1/as/publish_connection_packages")
        .expect("bob published connection packages through the proxy");
    let mut one_time = BTreeSet::new();
    let mut last_resort = None;
    for package in payload::<PublishConnectionPackagesRequest>(&published.body).packages {
        let fields: ConnectionPackagePayload =
            codec::decode(package.payload.as_slice(), usize::MAX).unwrap();
        let encoded = codec::encode(&package).unwrap();
        if fields.last_resort == 1 {
            last_resort = Some(encoded);
        } else {
            one_time.insert(encoded);
        }
    }
    let last_resort = last_resort.expect("a last-resort package");
    assert!(!one_time.is_empty());

    // alice asks bob to connect: the AS hands one of bob's one-time packages out.
    alice.client.connect(&bob.fid).await.unwrap();

    // The adversary replays bob's publication: refused, nothing restored.
    replay_is_refused(&a, &proxy, "/phoenix/v1/as/publish_connection_packages").await;
    assert_eq!(
        a.server
            .metrics
            .request_replays_refused
            .load(Ordering::Relaxed),
        1
    );

    // Everything left is handed out once, then only the last-resort package; the package
    // alice got is never handed out again.
    let mut served = Vec::new();
    loop {
        let (_, package) = a
            .server
            .store
            .take_connection_package(&bob.fid, phoenix_server::server::now())
            .await
            .unwrap()
            .unwrap();
        if package == last_resort {
            break;
        }
        served.push(package);
        assert!(
            served.len() <= one_time.len(),
            "more packages than published"
        );
    }
    let served_set: BTreeSet<Vec<u8>> = served.iter().cloned().collect();
    assert_eq!(
        served_set.len(),
        served.len(),
        "a package was handed out twice"
    );
    assert!(served_set.is_subset(&one_time));
    assert_eq!(
        one_time.len() - served_set.len(),
        1,
        "exactly the package alice got is gone"
    );
}

/// The paths of every signed state-changing operation protected by replay records.
const PROTECTED: [&str; 9] = [
    "/phoenix/v1/as/publish_connection_packages",
    // Requirement: CL-AMBIG-3 (unsigned, but recorded: a copy is not a second request)
    "/phoenix/v1/as/enqueue_connection",
    "/phoenix/v1/as/renew_certificate",
    "/phoenix/v1/qs/publish_key_packages",
    "/phoenix/v1/ds/create_group",
    "/phoenix/v1/ds/join_connection_group",
    "/phoenix/v1/ds/add_users",
    "/phoenix/v1/ds/update",
    "/phoenix/v1/ds/remove_users",
];

// Requirement: ADV-REPLAY-3, ADV-REPLAY-1
async fn every_replayed_signed_request_on(backend: Backend) {
    let Some((a, proxy, resolve)) = server_with_proxy(backend).await else {
        return;
    };
    // Both users' traffic goes through the adversary's proxy; between them they make every
    // signed state-changing request once.
    let mut alice = User::register("alice@a.test", &proxy.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &proxy.url, &resolve).await;
    group_of_two(&mut alice, &mut bob, "g").await;
    alice.client.update("g").await.unwrap();
    alice.client.remove("g", &bob.fid).await.unwrap();
    alice.client.renew().await.unwrap();
    // Let the fan-out settle, then record the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !a
        .server
        .store
        .due_outbox(u64::MAX, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never drained"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = a.snapshot().await.tables;

    for path in PROTECTED {
        replay_is_refused(&a, &proxy, path).await;
    }
    assert_eq!(
        a.server
            .metrics
            .request_replays_refused
            .load(Ordering::Relaxed),
        PROTECTED.len() as u64
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = a.snapshot().await.tables;
    for (table, cells) in &before {
        assert_eq!(Some(cells), after.get(table), "the replays changed {table}");
    }
    assert_eq!(before.len(), after.len());

    // The replays took nothing from alice: her next commit goes through.
    alice.client.update("g").await.unwrap();
    let g = alice.client.group("g").await.unwrap();
    assert!(a.server.store.group(&g.group_id).await.unwrap().is_some());
}

macro_rules! on_both_backends {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body(Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body(Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends! {
    replayed_publish_key_packages_does_not_restore_served_packages =>
        replayed_publish_key_packages_on,
    replayed_publish_connection_packages_does_not_restore_served_packages =>
        replayed_publish_connection_packages_on,
    every_replayed_signed_request_is_refused_and_changes_nothing =>
        every_replayed_signed_request_on,
}
