//! Federation end to end: two real `phoenix-server` processes on loopback, `a.test` on
//! SQLite and `b.test` on Postgres, users on each driving the real `phoenix` CLI: they
//! connect across servers, chat in a group hosted on `a.test` and in one hosted on
//! `b.test`, and every message arrives with a verified sender. Then `b.test` is stopped:
//! a message for its user waits in `a.test`'s outbox (visible in `/metrics`); after both
//! servers restart it arrives, exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use phoenix_e2e::{Cli, TestDatabase, TestServer, free_port};

const WAIT: Duration = Duration::from_secs(30);

fn message_from<'a>(sender: &'a str, text: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |e| {
        e["kind"] == "message"
            && e["sender"] == sender
            && e["text"] == text
            && e["verified"] == true
    }
}

/// The value of a Prometheus sample on `server`'s /metrics, if present.
fn metric(server: &TestServer, sample: &str) -> Option<u64> {
    let (_, body) = server.get("/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn two_homeservers_chat_and_survive_an_outage() {
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    let peers = |other: &str, url: &str| {
        vec![
            "--resolve".to_owned(),
            format!("{other}={url}"),
            "--outbox-max-backoff-secs".to_owned(),
            "2".to_owned(),
        ]
    };
    let mut a = TestServer::start_with(
        "a.test",
        None,
        &format!("127.0.0.1:{port_a}"),
        &peers("b.test", &url_b),
    );
    let b_database = TestDatabase::for_test();
    if b_database.is_none() {
        eprintln!("b.test runs on SQLite instead of Postgres (Postgres unavailable)");
    }
    let mut b = TestServer::start_with(
        "b.test",
        b_database,
        &format!("127.0.0.1:{port_b}"),
        &peers("a.test", &url_a),
    );

    let alice = Cli::for_server("alice", &a);
    let bob = Cli::for_server("bob", &b);
    let resolve = format!("--resolve=a.test={url_a}");
    let resolve_b = format!("--resolve=b.test={url_b}");
    alice.run(&[
        "register",
        "alice@a.test",
        "--server",
        &url_a,
        &resolve,
        &resolve_b,
    ]);
    bob.run(&[
        "register",
        "bob@b.test",
        "--server",
        &url_b,
        &resolve,
        &resolve_b,
    ]);

    // Connect across servers: alice's request waits in bob's direct queue on b.test; bob
    // joins the connection group hosted on a.test.
    alice.run(&["connect", "bob@b.test"]);
    let requests = bob.run(&["requests"]);
    assert_eq!(requests["requests"][0]["fid"], "alice@a.test", "{requests}");
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(WAIT, |e| {
        e["kind"] == "connected" && e["contact"] == "bob@b.test"
    });

    // A group hosted on a.test.
    alice.run(&["group", "create", "on-a"]);
    alice.run(&["group", "invite", "on-a", "bob@b.test"]);
    bob.sync_until(WAIT, |e| {
        e["kind"] == "joined" && e["group"] == "on-a" && e["invited_by"] == "alice@a.test"
    });
    alice.run(&["send", "on-a", "hello from a.test"]);
    bob.sync_until(WAIT, message_from("alice@a.test", "hello from a.test"));
    bob.run(&["send", "on-a", "hello back from b.test"]);
    alice.sync_until(WAIT, message_from("bob@b.test", "hello back from b.test"));

    // A group hosted on b.test.
    bob.run(&["group", "create", "on-b"]);
    bob.run(&["group", "invite", "on-b", "alice@a.test"]);
    alice.sync_until(WAIT, |e| {
        e["kind"] == "joined" && e["group"] == "on-b" && e["invited_by"] == "bob@b.test"
    });
    alice.run(&["send", "on-b", "alice on b's group"]);
    bob.sync_until(WAIT, message_from("alice@a.test", "alice on b's group"));
    bob.run(&["send", "on-b", "bob on his own group"]);
    alice.sync_until(WAIT, message_from("bob@b.test", "bob on his own group"));
    for (cli, group) in [
        (&alice, "on-a"),
        (&alice, "on-b"),
        (&bob, "on-a"),
        (&bob, "on-b"),
    ] {
        let members = cli.run(&["group", "members", group]);
        let verified: Vec<_> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["verified"] == true)
            .map(|m| m["fid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(verified.len(), 2, "{members}");
    }

    // b.test goes down: a message for bob waits in a.test's outbox.
    b.pause();
    alice.run(&["send", "on-a", "sent while b.test was down"]);
    let deadline = Instant::now() + WAIT;
    while metric(&a, "phoenix_outbox_pending{destination=\"b.test\"}") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the message never showed up in a.test's outbox:\n{}",
            a.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + WAIT;
    while metric(&a, "phoenix_federation_retries_total").unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "a.test never retried:\n{}",
            a.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        a.log().contains("will retry"),
        "the retry is not in a.test's log"
    );

    // Both servers restart (a.test's outbox is in its database); the message arrives once.
    a.restart();
    b.start_again();
    let events = bob.sync_until(
        WAIT,
        message_from("alice@a.test", "sent while b.test was down"),
    );
    let deadline = Instant::now() + WAIT;
    while metric(&a, "phoenix_outbox_pending{destination=\"b.test\"}").is_some() {
        assert!(
            Instant::now() < deadline,
            "a.test's outbox never drained:\n{}",
            a.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(3));
    let later = bob.run(&["sync"]);
    let copies = events
        .iter()
        .chain(later["events"].as_array().unwrap())
        .filter(|e| message_from("alice@a.test", "sent while b.test was down")(e))
        .count();
    assert_eq!(
        copies, 1,
        "the message must arrive exactly once: {events:?} {later}"
    );
    // And the conversation goes on.
    bob.run(&["send", "on-a", "back online"]);
    alice.sync_until(WAIT, message_from("bob@b.test", "back online"));

    // Mid-conversation: a.test rotates its CA key (by hand, while running) and alice
    // renews her certificate (new key, issued by the new CA) and announces it in every
    // group. Her next messages verify on bob's side (his client fetches a.test's CA
    // history), and every earlier message stays verifiable.
    let rotated = a.command("rotate-ca-key");
    assert!(rotated.contains("rotated the CA of a.test"), "{rotated}");
    let renewed = alice.run(&["renew"]);
    assert_eq!(renewed["groups_updated"], 3, "{renewed}");
    alice.run(&["send", "on-a", "after the rotations"]);
    alice.run(&["send", "on-b", "after the rotations, on b"]);
    let events = bob.sync_until(
        WAIT,
        message_from("alice@a.test", "after the rotations, on b"),
    );
    assert!(
        events
            .iter()
            .any(message_from("alice@a.test", "after the rotations")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "contact_certificate_renewed" && e["contact"] == "alice@a.test"),
        "{events:?}"
    );
    bob.run(&["send", "on-b", "bob after the rotations"]);
    alice.sync_until(WAIT, message_from("bob@b.test", "bob after the rotations"));
    let history = bob.run(&["history", "on-a"]);
    let messages = history["messages"].as_array().unwrap();
    let texts: Vec<_> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&"hello from a.test") && texts.contains(&"after the rotations"),
        "{history}"
    );
    assert!(messages.iter().all(|m| m["verified"] == true), "{history}");
    // alice's messages (bob's own are in his history too, under his one certificate).
    let certificates: std::collections::BTreeSet<_> = messages
        .iter()
        .filter(|m| m["sender"] == "alice@a.test")
        .map(|m| m["certificate"].to_string())
        .collect();
    assert_eq!(
        certificates.len(),
        2,
        "messages before and after the renewal carry different certificates: {history}"
    );
    // A new invitation with the renewed certificate is accepted: the pin followed it.
    alice.run(&["group", "create", "after-renewal"]);
    alice.run(&["group", "invite", "after-renewal", "bob@b.test"]);
    bob.sync_until(WAIT, |e| {
        e["kind"] == "joined" && e["group"] == "after-renewal"
    });
}
