//! The operator's side, through the real binaries: `phoenix-server admin` (users, suspension,
//! certificate revocation, the outbox with a peer down), `/health` while the database goes
//! away and comes back (Postgres behind a TCP proxy that is switched off), `/ready` and
//! `/metrics` per operation.
//!
//! SQLite has no such failure to inject into a running server: its connections hold the
//! file open, so taking the file's permissions away or moving it changes nothing for them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use phoenix_e2e::tcp_proxy::TcpProxy;
use phoenix_e2e::{Cli, TestDatabase, TestServer, free_port};

const WAIT: Duration = Duration::from_secs(30);

fn admin_json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = server.admin(&all);
    assert_eq!(code, 0, "admin {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("admin {args:?}: {e}: {out}"))
}

fn users_suspend_revoke_and_metrics(server: TestServer) {
    // Requirement: OPS-ADMIN-1, OPS-ADMIN-2, OPS-ADMIN-3, OPS-METRICS-1
    let url = server.url().to_owned();
    let alice = Cli::for_server("alice", &server);
    let bob = Cli::for_server("bob", &server);
    alice.run(&["register", "alice@a.test", "--server", &url]);
    bob.run(&["register", "bob@a.test", "--server", &url]);

    let users = admin_json(&server, &["users", "list"]);
    let fids: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["fid"].as_str().unwrap())
        .collect();
    assert_eq!(fids, ["alice@a.test", "bob@a.test"], "{users}");
    let shown = admin_json(&server, &["users", "show", "alice@a.test"]);
    assert_eq!(shown["clients"], 1, "{shown}");
    let certs = shown["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{shown}");
    assert!(certs[0]["revoked_at"].is_null(), "{shown}");

    // Unknown user: one line, exit code 3.
    let (code, out, err) = server.admin(&["users", "show", "nobody@a.test"]);
    assert_eq!(code, 3, "{out} {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Suspended: alice's AS requests are refused with USER_SUSPENDED; bob is not affected.
    admin_json(&server, &["users", "suspend", "alice@a.test"]);
    let listed = admin_json(&server, &["users", "list"]);
    assert!(listed[0]["suspended_at"].is_u64(), "{listed}");
    let refused = alice.fail(&["requests"]);
    assert!(
        refused.stderr.contains("USER_SUSPENDED") || refused.stderr.contains("suspended"),
        "{}",
        refused.stderr
    );
    bob.run(&["sync"]);
    admin_json(&server, &["users", "unsuspend", "alice@a.test"]);
    alice.run(&["requests"]);

    // Revoked: the polyproto route reports it, and alice's certificate authenticates
    // nothing any more.
    let serial = certs[0]["serial"].as_str().unwrap().to_owned();
    let decimal = certs[0]["serial_decimal"].as_str().unwrap().to_owned();
    // By the decimal serial the polyproto routes use; reported with the stored hex one.
    let revoked = admin_json(&server, &["certs", "revoke", &decimal]);
    assert!(revoked["revoked_at"].is_u64(), "{revoked}");
    assert_eq!(revoked["serial"], serial.as_str(), "{revoked}");
    let shown = admin_json(&server, &["users", "show", "alice@a.test"]);
    assert!(shown["certificates"][0]["revoked_at"].is_u64(), "{shown}");
    let (status, body) = server
        .get("/.p2/core/v1/idcert/actor/alice@a.test")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("invalidatedAt"), "{body}");
    let refused = alice.fail(&["requests"]);
    assert!(refused.stderr.contains("invalidated"), "{}", refused.stderr);
    let (code, _, err) = server.admin(&["certs", "revoke", "999999999999"]);
    assert_eq!(code, 3, "{err}");

    // Metrics per operation: counts by outcome code and latency buckets.
    let (_, metrics) = server.get("/metrics").unwrap();
    assert!(
        metrics.contains("phoenix_requests_total{operation=\"as/register\",code=\"OK\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("code=\"USER_SUSPENDED\""), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("phoenix_request_duration_seconds_bucket")
                && l.contains("operation=\"as/register\"")
                && l.contains("le=\"+Inf\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    assert!(metrics.contains("phoenix_build_info{version="), "{metrics}");
    assert!(metrics.contains("phoenix_uptime_seconds "), "{metrics}");
    let (status, ready) = server.get("/ready").unwrap();
    assert_eq!(status, 200, "{ready}");
    // Requirement: OPS-LOG-2
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("operation=as/register")
            && l.contains("outcome=OK")
            && l.contains("latency_ms=")
            && l.contains("client=127.0.0.1")),
        "{log}"
    );
    // Requirement: OPS-LOG-1 (stderr is a file here: no colour codes)
    assert!(!log.contains('\u{1b}'), "colour codes in the log");

    // Deleted: gone from the list; bob stays.
    admin_json(&server, &["users", "delete", "alice@a.test"]);
    let users = admin_json(&server, &["users", "list"]);
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    let (code, _, _) = server.admin(&["users", "delete", "alice@a.test"]);
    assert_eq!(code, 3);
}

mod sqlite {
    #[test]
    fn admin_users_suspend_revoke_and_metrics() {
        super::users_suspend_revoke_and_metrics(super::TestServer::sqlite("a.test"));
    }
}

mod postgres {
    #[test]
    fn admin_users_suspend_revoke_and_metrics() {
        if let Some(server) = super::TestServer::postgres("a.test") {
            super::users_suspend_revoke_and_metrics(server);
        }
    }
}

#[test]
fn admin_outbox_list_and_retry_with_a_peer_down() {
    // Requirement: OPS-ADMIN-4
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    // A long backoff: after the first failure only `admin outbox retry` brings the retry
    // forward.
    let peers = |other: &str, url: &str| {
        vec![
            "--resolve".to_owned(),
            format!("{other}={url}"),
            "--outbox-max-backoff-secs".to_owned(),
            "600".to_owned(),
        ]
    };
    let a = TestServer::start_with(
        "a.test",
        TestDatabase::for_test(),
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
    alice.run(&["group", "create", "g"]);
    alice.run(&["group", "invite", "g", "bob@b.test"]);
    bob.sync_until(WAIT, |e| e["kind"] == "joined");

    let empty = admin_json(&a, &["outbox", "list"]);
    assert_eq!(empty, serde_json::json!([]), "{empty}");

    b.pause();
    alice.run(&["send", "g", "while b.test is down"]);
    // The first attempt fails and is recorded with its error.
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let listed = admin_json(&a, &["outbox", "list"]);
        if listed[0]["last_error"].is_string() {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "no failure recorded: {listed}\n{}",
            a.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed[0]["destination"], "b.test", "{listed}");
    assert_eq!(listed[0]["pending"], 1, "{listed}");
    assert!(listed[0]["max_attempts"].as_u64().unwrap() >= 1, "{listed}");
    assert!(
        listed[0]["oldest_created_at"].as_u64().unwrap() > 0,
        "{listed}"
    );
    let (code, text, _) = a.admin(&["outbox", "list"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("b.test") && text.contains("last error"),
        "{text}"
    );
    let peers_listed = admin_json(&a, &["peers", "list"]);
    assert!(
        peers_listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["domain"] == "b.test" && p["outbox_pending"] == 1),
        "{peers_listed}"
    );

    // b.test is back; the backoff would wait minutes, the operator makes it due now.
    b.start_again();
    let (code, _, err) = a.admin(&["outbox", "retry", "nowhere.test"]);
    assert_eq!(code, 3, "{err}");
    let retried = admin_json(&a, &["outbox", "retry", "b.test"]);
    assert_eq!(retried["due_now"], 1, "{retried}");
    bob.sync_until(WAIT, |e| {
        e["kind"] == "message" && e["text"] == "while b.test is down"
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = admin_json(&a, &["outbox", "list"]);
        if listed == serde_json::json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "outbox never drained: {listed}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn health_fails_while_postgres_is_away_and_recovers() {
    // Requirement: OPS-HEALTH-1
    let Some(database) = TestDatabase::for_test() else {
        return;
    };
    let upstream = database
        .url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').nth(1))
        .and_then(|hostport| hostport.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = TcpProxy::start(upstream.parse().unwrap());
    let proxied = database.url.replace(&upstream, &proxy.addr.to_string());
    let server = TestServer::start_with(
        "a.test",
        Some(database.reached_at(proxied)),
        "127.0.0.1:0",
        &[],
    );
    let (status, body) = server.get("/health").unwrap();
    assert_eq!(status, 200, "{body}");

    proxy.stop();
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = server.get("/health").unwrap();
        if status != 200 || started.elapsed() > WAIT {
            break (status, body);
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "failing", "{body}");
    assert_eq!(body["checks"][0]["name"], "database", "{body}");
    assert!(body["checks"][0]["error"].is_string(), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    proxy.resume();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.get("/health").unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_unreachable_database_is_reported_with_its_cause_within_seconds() {
    // Requirement: OPS-LOG-3
    let closed = free_port();
    let admin_url = phoenix_e2e::postgres_url();
    let cases = vec![
        (
            format!("postgres://postgres@127.0.0.1:{closed}/phoenix"),
            "connection refused",
        ),
        (
            admin_url
                .rsplit_once('/')
                .map(|(server, _)| format!("{server}/phoenix_no_such_database"))
                .unwrap(),
            "unknown database",
        ),
    ];
    let reachable = TestDatabase::for_test().is_some();
    for (url, cause) in cases {
        if cause != "connection refused" && !reachable {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let binary = phoenix_e2e::binary("phoenix-server");
        let started = Instant::now();
        let output = std::process::Command::new(binary)
            .args([
                "--domain",
                "a.test",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(["--database-url", &url])
            .env_remove("PHOENIX_LOG")
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(cause), "{cause}: {stderr}");
        assert!(!stderr.contains(".rs:"), "source locations: {stderr}");
        assert!(elapsed < Duration::from_secs(8), "{elapsed:?}: {stderr}");
    }
}

/// The private-key columns of a server's SQLite database: (what, stored bytes).
fn stored_private_keys(server: &TestServer) -> Vec<(String, Vec<u8>)> {
    let path = server.data_dir().join("phoenix.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mut keys = Vec::new();
        for (what, query) in [
            ("CA signing key", "SELECT signing_key FROM as_ca"),
            (
                "server key",
                "SELECT name || ' ' || hex(private_key), private_key FROM server_keys",
            ),
            (
                "queue-config key",
                "SELECT queue_config_private_key FROM qs_config",
            ),
        ] {
            for row in sqlx::query(query).fetch_all(&mut conn).await.unwrap() {
                let bytes: Vec<u8> = row.get(row.len() - 1);
                keys.push((what.to_owned(), bytes));
            }
        }
        keys
    })
}

// Requirement: OPS-TLS-1, OPS-TLS-2, OPS-TLS-3, OPS-KEK-1
/// Two servers serve HTTPS on certificates of a test CA and federate over it (each reaches
/// the other at an `https://` URL), users chat across them over HTTPS; the private keys in
/// the database are sealed under the key-encryption key, and the server refuses to start
/// under another one; the certificate is reloaded on SIGHUP (a client that trusts only the
/// new certificate's CA gets through afterwards, one that trusts only the old CA does not);
/// a client that does not trust the CA is told it is a TLS failure.
#[test]
fn two_servers_federate_over_tls_with_keys_sealed_at_rest() {
    let ca = phoenix_e2e::tls::TestCa::new("Phoenix e2e CA");
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("https://127.0.0.1:{port_a}");
    let url_b = format!("https://127.0.0.1:{port_b}");
    let peer = |other: &str, url: &str| vec!["--resolve".to_owned(), format!("{other}={url}")];
    let a = TestServer::start_tls(
        "a.test",
        None,
        &format!("127.0.0.1:{port_a}"),
        &peer("b.test", &url_b),
        &ca,
    );
    let b = TestServer::start_tls(
        "b.test",
        TestDatabase::for_test(),
        &format!("127.0.0.1:{port_b}"),
        &peer("a.test", &url_a),
        &ca,
    );
    assert!(a.url().starts_with("https://"), "{}", a.url());

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
    alice.run(&["connect", "bob@b.test"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(WAIT, |e| {
        e["kind"] == "connected" && e["contact"] == "bob@b.test"
    });
    alice.run(&["group", "create", "tls"]);
    alice.run(&["group", "invite", "tls", "bob@b.test"]);
    bob.sync_until(WAIT, |e| e["kind"] == "joined" && e["group"] == "tls");
    // Requirement: QS-LISTEN-2, CLI-LISTEN-1
    // bob listens on b.test (a WebSocket over TLS) and gets alice's message from a.test,
    // forwarded QS to QS, as soon as it is enqueued.
    let mut listener = bob.listen();
    listener.wait_for(WAIT, |e| e["kind"] == "listening");
    let sent = Instant::now();
    alice.run(&["send", "tls", "over https, across servers"]);
    let event = listener.wait_for(WAIT, |e| e["kind"] == "message");
    eprintln!(
        "listen across servers over TLS: {:?} after `send` began",
        sent.elapsed()
    );
    assert_eq!(event["text"], "over https, across servers", "{event}");
    assert_eq!(event["verified"], true, "{event}");
    let stopped = listener.interrupt().expect("listen did not stop");
    assert!(stopped.success(), "{}", listener.stderr());

    // A client that does not trust the test CA: a TLS failure, said so.
    let stranger = Cli::new("stranger");
    let refused = stranger.fail(&["register", "carol@a.test", "--server", &url_a]);
    assert!(refused.stderr.contains("TLS failure"), "{}", refused.stderr);
    // Plain HTTP to the HTTPS port: no answer.
    let plain = Cli::new("plain");
    plain.fail(&[
        "register",
        "dave@a.test",
        "--server",
        &format!("http://127.0.0.1:{port_a}"),
    ]);

    // Keys at rest: every private key column holds a sealed key, none a bare 32-byte key.
    let keys = stored_private_keys(&a);
    assert!(
        keys.len() >= 4,
        "{:?}",
        keys.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    for (what, bytes) in &keys {
        assert!(bytes.starts_with(b"phxkek1\0"), "{what} is not sealed");
        assert_eq!(bytes.len(), 8 + 12 + 32 + 16, "{what}");
    }
    // Under another key-encryption key the server refuses to start, and says why.
    let wrong = std::process::Command::new(phoenix_e2e::binary("phoenix-server"))
        .args(a.args())
        .arg("rotate-ca-key")
        .env("PHOENIX_KEY_ENCRYPTION_KEY", "11".repeat(32))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(err.contains("key-encryption key does not open"), "{err}");
    // The CA rotated with the right key (the default file in the data directory) is sealed.
    a.command("rotate-ca-key");
    assert!(
        stored_private_keys(&a)
            .iter()
            .all(|(_, bytes)| bytes.starts_with(b"phxkek1\0"))
    );

    // SIGHUP: the certificate files are replaced by ones from another CA and reloaded.
    let other_ca = phoenix_e2e::tls::TestCa::new("Phoenix e2e CA, renewed");
    let (cert, key) = other_ca.issue("a.test");
    let flag = |name: &str| {
        let args = a.args();
        let i = args.iter().position(|a| a == name).unwrap();
        PathBuf::from(&args[i + 1])
    };
    std::fs::copy(&cert, flag("--tls-cert")).unwrap();
    std::fs::copy(&key, flag("--tls-key")).unwrap();
    a.signal("HUP");
    let deadline = Instant::now() + WAIT;
    loop {
        if phoenix_e2e::tls::https_get(a.url(), "/health", &other_ca.ca_file()).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {}", a.log());
        thread::sleep(Duration::from_millis(100));
    }
    let old = phoenix_e2e::tls::https_get(a.url(), "/health", &ca.ca_file());
    assert!(old.is_err(), "the old certificate is still served");
    assert!(
        a.log().contains("reloaded the TLS certificate"),
        "{}",
        a.log()
    );
    // A reload that fails (a key that does not go with the certificate) keeps the one in use.
    std::fs::copy(ca.issue("a.test").1, flag("--tls-key")).unwrap();
    a.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while !a.log().contains("TLS reload failed") {
        assert!(Instant::now() < deadline, "{}", a.log());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(phoenix_e2e::tls::https_get(a.url(), "/health", &other_ca.ca_file()).is_ok());
}

// Requirement: OPS-KEK-2
/// The operator changes the key-encryption key with the server stopped: `admin keys
/// change-kek` re-seals every private key under the new key, in one transaction. The old
/// key then opens nothing (the server refuses to start with it), the new one starts the
/// server with the same CA and keys, and alice and bob, connected before, still talk. A new
/// key file that others can read is refused, and nothing changes.
#[test]
fn the_key_encryption_key_is_changed_with_the_server_stopped() {
    use std::os::unix::fs::PermissionsExt;
    // A fixed port: the clients find the server at the same address after the restart.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut a = TestServer::start_with("a.test", None, &listen, &[]);
    let url = a.url().to_owned();
    let alice = Cli::for_server("alice", &a);
    let bob = Cli::for_server("bob", &a);
    alice.run(&["register", "alice@a.test", "--server", &url]);
    bob.run(&["register", "bob@a.test", "--server", &url]);
    alice.run(&["connect", "bob@a.test"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(WAIT, |e| e["kind"] == "connected");
    alice.run(&["group", "create", "team"]);
    alice.run(&["group", "invite", "team", "bob@a.test"]);
    bob.sync_until(WAIT, |e| e["kind"] == "joined");
    let ca_before = a.get("/.well-known/phoenix").unwrap().1;
    let before = stored_private_keys(&a);
    a.pause();

    let dir = tempfile::tempdir().unwrap();
    let new_key = dir.path().join("new-kek");
    std::fs::write(&new_key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = new_key.display().to_string();
    let (code, _, err) = a.admin(&["keys", "change-kek", "--new-key-file", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(stored_private_keys(&a), before, "nothing changed");

    std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = a.admin(&["keys", "change-kek", "--new-key-file", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("re-sealed {} private keys", before.len())),
        "{out}"
    );
    let after = stored_private_keys(&a);
    assert_eq!(after.len(), before.len());
    for ((what, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{what} was not re-sealed");
        assert!(new.starts_with(b"phxkek1\0"), "{what}");
    }
    // The old key (the data directory's default file) opens nothing any more.
    let refused = std::process::Command::new(phoenix_e2e::binary("phoenix-server"))
        .args(a.args())
        .arg("rotate-ca-key")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("key-encryption key does not open"), "{err}");
    // Running it again with the old key configured fails the same way, changing nothing.
    let (code, _, err) = a.admin(&["keys", "change-kek", "--new-key-file", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(stored_private_keys(&a), after);

    // The operator configures the new key: the server starts, with the same CA.
    let default = a.data_dir().join("key-encryption-key");
    std::fs::copy(&new_key, &default).unwrap();
    std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o600)).unwrap();
    a.start_again();
    assert_eq!(a.get("/.well-known/phoenix").unwrap().1, ca_before);
    alice.run(&["send", "team", "after the new key"]);
    bob.sync_until(WAIT, |e| {
        e["kind"] == "message" && e["text"] == "after the new key" && e["verified"] == true
    });
}
