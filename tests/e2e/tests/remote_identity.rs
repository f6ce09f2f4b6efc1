//! Federated identity end to end, with two real `phoenix-server` processes (`a.test` on
//! SQLite, `b.test` on Postgres when available) and the real `phoenix` CLI:
//!
//! - **Cached foreign certificates.** alice@a.test asks for bob@b.test's certificates:
//!   a.test fetches them from b.test once, verified, and serves the second request from its
//!   cache (`/metrics`: one miss, then one hit). The expiry of the window is shown by the
//!   server's own test (`impl/server/tests/polyproto.rs`), where the window can be seconds
//!   long; here the issuer's window is polyproto's minimum, an hour.
//! - **Foreign sessions.** alice's connection request to bob acts on b.test's AS with a
//!   session she opened there by a key trial, and her invitation (opted in with
//!   `--remote-sessions all`) fetches bob's key packages from b.test's QS with the same
//!   session; every message between them arrives verified, bob's certificate vouched for by
//!   b.test. After alice renews her certificate, her next request opens a new session; a
//!   token b.test refuses (`UNAUTHENTICATED`) is replaced by a new session transparently.
//! - **The ladder.** With a.test down, alice's client asks b.test itself; with both down,
//!   it fails and says why for each rung.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::Value;

use phoenix_e2e::{Cli, TestDatabase, TestServer, free_port};

const WAIT: Duration = Duration::from_secs(30);

/// Overwrite the session token the client in `home` holds on `domain`'s server with one
/// that server never issued (the client's state is a SQLite file of its own).
fn replace_session_token(home: &std::path::Path, domain: &str) {
    let url = format!("sqlite://{}", home.join("client.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let replaced = runtime.block_on(async {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE sessions SET token = ? WHERE domain = ?")
            .bind("00".repeat(32))
            .bind(domain)
            .execute(&mut db)
            .await
            .unwrap()
            .rows_affected()
    });
    assert_eq!(replaced, 1, "the client holds a session on {domain}");
}

/// The value of a Prometheus sample on `server`'s /metrics, if present.
fn metric(server: &TestServer, sample: &str) -> Option<u64> {
    let (_, body) = server.get("/metrics")?;
    body.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn fingerprints(answer: &Value) -> Vec<String> {
    answer["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fingerprint"].as_str().unwrap().to_owned())
        .collect()
}

// Requirement: ID-CACHE-1, ID-CACHE-3, RL-SESSION-3
#[test]
fn foreign_certificates_sessions_and_the_ladder() {
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    let mut a = TestServer::start_with(
        "a.test",
        None,
        &format!("127.0.0.1:{port_a}"),
        &["--resolve".to_owned(), format!("b.test={url_b}")],
    );
    let b_database = TestDatabase::for_test();
    if b_database.is_none() {
        eprintln!("b.test runs on SQLite instead of Postgres (Postgres unavailable)");
    }
    let mut b = TestServer::start_with(
        "b.test",
        b_database,
        &format!("127.0.0.1:{port_b}"),
        &["--resolve".to_owned(), format!("a.test={url_a}")],
    );
    let alice = Cli::for_server("alice", &a);
    let bob = Cli::for_server("bob", &b);
    let resolve_a = format!("--resolve=a.test={url_a}");
    let resolve_b = format!("--resolve=b.test={url_b}");
    alice.run(&[
        "register",
        "alice@a.test",
        "--server",
        &url_a,
        &resolve_a,
        &resolve_b,
    ]);
    bob.run(&[
        "register",
        "bob@b.test",
        "--server",
        &url_b,
        &resolve_a,
        &resolve_b,
    ]);

    // The cache on a.test: filled by the first request, serving the second.
    let first = alice.run(&["certificates", "bob@b.test"]);
    assert_eq!(first["source"], "own server", "{first}");
    assert_eq!(fingerprints(&first).len(), 1, "{first}");
    assert_eq!(metric(&a, "phoenix_idcert_cache_misses_total"), Some(1));
    assert_eq!(metric(&a, "phoenix_idcert_cache_hits_total"), Some(0));
    assert_eq!(metric(&a, "phoenix_idcert_cache_entries"), Some(1));
    let second = alice.run(&["certificates", "bob@b.test"]);
    assert_eq!(second["source"], "own server");
    assert_eq!(fingerprints(&second), fingerprints(&first));
    assert_eq!(metric(&a, "phoenix_idcert_cache_misses_total"), Some(1));
    assert_eq!(metric(&a, "phoenix_idcert_cache_hits_total"), Some(1));

    // alice acts on b.test (connection package, direct queue, key packages) with one
    // session she opened there; the conversation verifies both ways.
    alice.run(&["connect", "bob@b.test"]);
    let requests = bob.run(&["requests"]);
    assert_eq!(requests["requests"][0]["fid"], "alice@a.test", "{requests}");
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(WAIT, |e| {
        e["kind"] == "connected" && e["contact"] == "bob@b.test"
    });
    alice.run(&["group", "create", "team"]);
    // The key-package fetch on b.test's QS carries the session only when the user opts in
    // (it links alice's FID to bob's pseudonymous QS user in b.test's view).
    alice.run(&[
        "--remote-sessions=all",
        "group",
        "invite",
        "team",
        "bob@b.test",
    ]);
    bob.sync_until(WAIT, |e| e["kind"] == "joined" && e["group"] == "team");
    bob.run(&["send", "team", "hello alice"]);
    alice.sync_until(WAIT, |e| {
        e["kind"] == "message"
            && e["sender"] == "bob@b.test"
            && e["text"] == "hello alice"
            && e["verified"] == true
    });
    let opened = b.log().matches("opened a polyproto session").count();
    assert_eq!(opened, 1, "alice should hold exactly one session on b.test");

    // A session belongs to a certificate: after alice renews hers, her next request on
    // b.test's AS comes with a new session.
    let carol = Cli::for_server("carol", &b);
    carol.run(&[
        "register",
        "carol@b.test",
        "--server",
        &url_b,
        &resolve_a,
        &resolve_b,
    ]);
    alice.run(&["renew"]);
    alice.run(&["connect", "carol@b.test"]);
    let requests = carol.run(&["requests"]);
    assert_eq!(requests["requests"][0]["fid"], "alice@a.test", "{requests}");
    let opened = b.log().matches("opened a polyproto session").count();
    assert_eq!(opened, 2, "alice's renewed certificate needs a new session");

    // A token b.test no longer honours (its operator ended the session, say) is refused with
    // UNAUTHENTICATED: alice's client drops it, opens a new session and sends the request
    // once more, so the user sees nothing of it.
    replace_session_token(alice.home(), "b.test");
    let dave = Cli::for_server("dave", &b);
    dave.run(&[
        "register",
        "dave@b.test",
        "--server",
        &url_b,
        &resolve_a,
        &resolve_b,
    ]);
    alice.run(&["connect", "dave@b.test"]);
    let requests = dave.run(&["requests"]);
    assert_eq!(requests["requests"][0]["fid"], "alice@a.test", "{requests}");
    let opened = b.log().matches("opened a polyproto session").count();
    assert_eq!(opened, 3, "a refused token is replaced by a new session");

    // The ladder: a.test is down, so alice's client asks b.test itself ...
    a.pause();
    let third = alice.run(&["certificates", "bob@b.test"]);
    assert_eq!(third["source"], "issuing server", "{third}");
    assert_eq!(fingerprints(&third), fingerprints(&first));
    // ... and with b.test down too, it fails, saying why for each rung.
    b.pause();
    let out = alice.fail(&["certificates", "bob@b.test"]);
    assert!(
        out.stderr.contains("own server") && out.stderr.contains("issuing server"),
        "{}",
        out.stderr
    );
    a.start_again();
    b.start_again();
    let fourth = alice.run(&["certificates", "bob@b.test"]);
    assert_eq!(fourth["source"], "own server");
}
