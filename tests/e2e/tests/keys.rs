//! Keys, certificates and files at rest, end to end with the real binaries:
//!
//! - **CA rotation by another process.** `phoenix-server rotate-ca-key`, run against the
//!   database of a running `b.test`, takes effect in that running server at once: what it
//!   serves as its CA and what it signs with agree, so a.test (its peer) and alice's client
//!   verify bob's certificate issued before the rotation, and a registration right after
//!   gets a certificate under the new CA, which a.test verifies too, without a restart.
//! - **Client certificate lifetime.** A configuration above polyproto's 60 days is
//!   refused at start-up, with the reason.
//! - **Files.** The data directory is created 0700 and the SQLite database (and its
//!   `-wal`/`-shm` files) 0600; a database file readable by others refuses the start,
//!   naming the file and the fix.
//!
//! The scheduled rotation is shown by the server's own test (`impl/server/tests/ca_jobs.rs`),
//! where the CA can be created already old.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use phoenix_e2e::{Cli, TestDatabase, TestServer, binary, free_port};

fn fingerprints(answer: &Value) -> Vec<String> {
    answer["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fingerprint"].as_str().unwrap().to_owned())
        .collect()
}

/// `rotated the CA of D: new certificate NEW (previous OLD); ...` → (NEW, OLD).
fn rotated(output: &str) -> (String, String) {
    let new = output
        .split("new certificate ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let old = output
        .split("(previous ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap();
    (new.to_owned(), old.to_owned())
}

// Requirement: AS-CA-ROT-1
#[test]
fn running_server_signs_with_old_ca_after_rotate_ca_key() {
    let (port_a, port_b) = (free_port(), free_port());
    let url_a = format!("http://127.0.0.1:{port_a}");
    let url_b = format!("http://127.0.0.1:{port_b}");
    let a = TestServer::start_with(
        "a.test",
        None,
        &format!("127.0.0.1:{port_a}"),
        &["--resolve".to_owned(), format!("b.test={url_b}")],
    );
    let b_database = TestDatabase::for_test();
    if b_database.is_none() {
        eprintln!("b.test runs on SQLite instead of Postgres (Postgres unavailable)");
    }
    let b = TestServer::start_with(
        "b.test",
        b_database,
        &format!("127.0.0.1:{port_b}"),
        &["--resolve".to_owned(), format!("a.test={url_a}")],
    );
    let resolve_a = format!("--resolve=a.test={url_a}");
    let resolve_b = format!("--resolve=b.test={url_b}");
    let register = |name: &str, fid: &str, server: &TestServer, url: &str| {
        let cli = Cli::for_server(name, server);
        let out = cli.run(&["register", fid, "--server", url, &resolve_a, &resolve_b]);
        (cli, out["ca_fingerprint"].as_str().unwrap().to_owned())
    };
    let (alice, _) = register("alice", "alice@a.test", &a, &url_a);
    let (_bob, bob_ca) = register("bob", "bob@b.test", &b, &url_b);

    // Another process rotates b.test's CA while b.test runs.
    let (new_ca, old_ca) = rotated(&b.command("rotate-ca-key"));
    assert_eq!(old_ca, bob_ca);
    assert_ne!(new_ca, old_ca);

    // At once, without a restart: a.test fetches b.test's CA history and bob's certificate
    // (issued under the old CA), and both verify: b.test serves the new CA as current and
    // signs with its key.
    let bob_certs = alice.run(&["certificates", "bob@b.test"]);
    assert_eq!(bob_certs["source"], "own server", "{bob_certs}");
    assert_eq!(fingerprints(&bob_certs).len(), 1, "{bob_certs}");

    // A registration right after gets a certificate issued under the new CA (the client
    // checks the chain against the CA the server returns), and a.test verifies it too.
    let (_carol, carol_ca) = register("carol", "carol@b.test", &b, &url_b);
    assert_eq!(carol_ca, new_ca);
    let carol_certs = alice.run(&["certificates", "carol@b.test"]);
    assert_eq!(carol_certs["source"], "own server", "{carol_certs}");
    assert_eq!(fingerprints(&carol_certs).len(), 1, "{carol_certs}");

    // The discovery document names the new CA too.
    let (status, body) = b.get("/.well-known/phoenix").unwrap();
    assert_eq!(status, 200);
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["ca_fingerprint"], new_ca.as_str(), "{discovery}");
}

/// Run `phoenix-server` with `args` until it exits (it must: these configurations are
/// refused before it listens), returning (success, stderr). A server still running after
/// 30 s is killed and reported as a failure to refuse.
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(binary("phoenix-server"))
        .args(args)
        .env_remove("PHOENIX_CLIENT_CERT_LIFETIME_DAYS")
        .env_remove("PHOENIX_DATABASE_URL")
        .env_remove("PHOENIX_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "phoenix-server {args:?} did not refuse to start (still running after 30 s): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

// Requirement: AS-CERT-LIFE-1
#[test]
fn client_cert_lifetime_not_capped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let (ok, stderr) = run_to_exit(&[
        "--domain",
        "a.test",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--client-cert-lifetime-days",
        "61",
    ]);
    assert!(!ok, "a 61-day client certificate lifetime must be refused");
    assert!(
        stderr.contains("client_cert_lifetime_days is 61") && stderr.contains("at most 60 days"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before anything is created"
    );
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// Requirement: OPS-FILES-1
#[test]
fn data_dir_and_database_readable_by_others() {
    let mut server = TestServer::sqlite("a.test");
    let data = server.data_dir();
    let db = data.join("phoenix.db");
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&db), 0o600, "database file");
    for suffix in ["-wal", "-shm"] {
        let file = data.join(format!("phoenix.db{suffix}"));
        assert!(file.exists(), "{} exists in WAL mode", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Stopped, its data directory kept.
    assert!(server.pause().is_some());

    // A database that others may read (restored from a backup with the default umask, say)
    // refuses the start, naming the file and the fix.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, stderr) = run_to_exit(&[
        "--domain",
        "a.test",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert!(!ok, "a 0644 database must refuse the start");
    assert!(
        stderr.contains(&format!("chmod 600 {}", db.display())) && stderr.contains("0644"),
        "{stderr}"
    );
}
