//! Federation after a peer's outage, through the real binaries (Requirement: FED-ORDER-1):
//! bob@b.test is in a group hosted on a.test; b.test stops, alice sends a burst while
//! a.test is killed (SIGKILL) and restarted in the middle of it, b.test comes back, and bob
//! syncs until nothing more arrives. Every acknowledged message must arrive once: a newer
//! message that overtook an older one still waiting out its backoff made bob's client drop
//! the older one (its generation too old to be processed). a.test runs on SQLite in one
//! test and on Postgres in the other (the outbox is a.test's); b.test on SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use phoenix_e2e::{Cli, TestDatabase, TestServer, free_port};

const WAIT: Duration = Duration::from_secs(30);
const BURST: usize = 30;

fn burst_survives_outage_in_order(a_database: Option<TestDatabase>) {
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    // A short backoff cap keeps the test quick; the order must hold whatever the cap.
    let peers = |other: &str, url: &str| {
        vec![
            "--resolve".to_owned(),
            format!("{other}={url}"),
            "--outbox-max-backoff-secs".to_owned(),
            "4".to_owned(),
        ]
    };
    let mut a = TestServer::start_with(
        "a.test",
        a_database,
        &format!("127.0.0.1:{port_a}"),
        &peers("b.test", &url_b),
    );
    let mut b = TestServer::start_with(
        "b.test",
        None,
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
    alice.run(&["connect", "bob@b.test"]);
    bob.run(&["requests"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(WAIT, |e| e["kind"] == "connected");
    alice.run(&["group", "create", "on-a"]);
    alice.run(&["group", "invite", "on-a", "bob@b.test"]);
    bob.sync_until(WAIT, |e| e["kind"] == "joined" && e["group"] == "on-a");

    // b.test goes down; alice sends a burst, and a.test crashes and restarts halfway.
    b.pause();
    let mut acknowledged = Vec::new();
    for i in 0..BURST {
        if i == BURST / 2 {
            a.crash_restart();
        }
        let text = format!("burst {i}");
        if alice.output(&["send", "on-a", &text]).status.success() {
            acknowledged.push(text);
        }
        if i % 5 == 4 {
            // Let some entries fail a few times, so their backoffs differ.
            thread::sleep(Duration::from_secs(1));
        }
    }
    b.start_again();

    // bob syncs until a.test's outbox is empty and then nothing more arrives.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet = 0;
    while quiet < 3 {
        assert!(
            Instant::now() < deadline,
            "bob's sync never went quiet:\n{}",
            a.log()
        );
        let answer = bob.run(&["sync"]);
        let batch = answer["events"].as_array().cloned().unwrap_or_default();
        let drained = a.get("/metrics").is_some_and(|(_, body)| {
            !body.contains("phoenix_outbox_pending{destination=\"b.test\"}")
        });
        if batch.is_empty() && drained {
            quiet += 1;
        } else {
            quiet = 0;
        }
        events.extend(batch);
        thread::sleep(Duration::from_secs(1));
    }

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        if e["kind"] == "message" && e["sender"] == "alice@a.test" {
            *counts
                .entry(e["text"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let delivered = acknowledged
        .iter()
        .filter(|t| counts.contains_key(*t))
        .count();
    let lost = acknowledged.len() - delivered;
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "acknowledged {}, delivered {delivered}, lost {lost}, duplicated {duplicated}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= BURST - 2,
        "alice's sends failed: {acknowledged:?}"
    );
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "events: {}",
        serde_json::Value::Array(events.clone())
    );
}

// Requirement: FED-ORDER-1
#[test]
fn burst_during_peer_outage_arrives_in_order_sqlite() {
    burst_survives_outage_in_order(None);
}

// Requirement: FED-ORDER-1
#[test]
fn burst_during_peer_outage_arrives_in_order_postgres() {
    let Some(database) = TestDatabase::for_test() else {
        return;
    };
    burst_survives_outage_in_order(Some(database));
}
