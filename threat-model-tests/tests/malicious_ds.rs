//! Malicious DS (or anyone between it and the queue): a tampered copy of a genuine
//! application message is injected into a member's queue. The member's client refuses it
//! (the MLS signature / AEAD check fails) and reports an error event; the genuine message is
//! still shown with its verified sender, and the injected one never as a message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tls_codec::VLBytes;

use phoenix_server::store::queue_sealing::QueueSealer;
use phoenix_server::store::{EnqueueEntry, QsStore};
use phoenix_threat_model_tests::{Backend, Homeserver, User, group_of_two, listener};
use phoenix_types::codec;
use phoenix_types::messages::ds::QueuePayload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_message_is_refused() {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, l, &resolve)
        .await
        .unwrap();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    group_of_two(&mut alice, &mut bob, "g").await;

    alice.client.send("g", "genuine").await.unwrap();
    // The adversary reads bob's queue (it controls the server) and injects a copy of the
    // message with one byte of the ciphertext flipped.
    let bob_queue = bob.qs_client_id().await;
    let (messages, _) = QsStore::dequeue(&a.server.store, &bob_queue, 0, 100)
        .await
        .unwrap();
    // Sealed under bob's queue chain (QS-ENC-1): the adversary, which fanned the message
    // out, knows what it was; the test opens it as bob would.
    let bob_id = bob.local().await.identity().await.unwrap().unwrap();
    let genuine = phoenix_client::client::queue_entry::open_in_order(&bob_id, &messages)
        .pop()
        .unwrap()
        .unwrap();
    let QueuePayload::GroupMessage(mut message) =
        codec::decode::<QueuePayload>(&genuine, usize::MAX).unwrap()
    else {
        panic!("expected a group message");
    };
    let mut bytes = message.message.as_slice().to_vec();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x01;
    message.message = VLBytes::new(bytes);
    let tampered = codec::encode(&QueuePayload::GroupMessage(message)).unwrap();
    a.server
        .store
        .enqueue(
            &[EnqueueEntry {
                client_id: bob_queue,
                payload: tampered,
                dedup: None,
            }],
            &QueueSealer::default(),
        )
        .await
        .unwrap();

    let events = bob.client.sync().await.unwrap();
    let messages: Vec<_> = events.iter().filter(|e| e["kind"] == "message").collect();
    assert_eq!(messages.len(), 1, "{events:?}");
    assert_eq!(messages[0]["text"], "genuine");
    assert_eq!(messages[0]["sender"], "alice@a.test");
    assert_eq!(messages[0]["verified"], true);
    assert!(
        events.iter().any(|e| e["kind"] == "error"),
        "the tampered message is reported: {events:?}"
    );
    // Requirement: CL-LOSS-1
    // The report names the group, and bob's history shows the gap where it happened.
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "error" && e["group"] == "g"),
        "{events:?}"
    );
    let history = bob.client.history("g").await.unwrap();
    let gaps: Vec<_> = history.iter().filter(|m| m["gap"] == true).collect();
    assert_eq!(gaps.len(), 1, "{history:?}");
    assert_eq!(history.last().unwrap()["gap"], true, "{history:?}");
    // The group still works.
    alice.client.send("g", "after the attack").await.unwrap();
    bob.sync_until(|e| e["text"] == "after the attack" && e["verified"] == true)
        .await;
}
