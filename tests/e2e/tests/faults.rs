//! Faults a user or an operator meets, injected through the real binaries: several `phoenix`
//! processes on one state directory, and a client state directory that others can read.
//! Each test counts what was acknowledged and what arrived, and asserts nothing was lost
//! or duplicated.
//!
//! Requirement: CL-LOCK-1, CL-FILES-1

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::Value;

use phoenix_e2e::{Cli, TestServer};

const DELIVERY: Duration = Duration::from_secs(20);

/// alice and bob on `server`, connected, both in alice's group `g`.
fn pair_in_group(server: &TestServer) -> (Cli, Cli) {
    let url = server.url();
    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);
    alice.run(&["register", "alice@a.test", "--server", url]);
    bob.run(&["register", "bob@a.test", "--server", url]);
    alice.run(&["connect", "bob@a.test"]);
    bob.run(&["requests"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(DELIVERY, |e| e["kind"] == "connected");
    alice.run(&["group", "create", "g"]);
    alice.run(&["group", "invite", "g", "bob@a.test"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "joined");
    (alice, bob)
}

fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "message")
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect()
}

// ----- one writer per client state ----------------------------------------------------

#[test]
fn concurrent_cli_processes_on_one_home_on_sqlite() {
    concurrent_cli_processes_on_one_home(&TestServer::sqlite("a.test"));
}

#[test]
fn concurrent_cli_processes_on_one_home_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    concurrent_cli_processes_on_one_home(&server);
}

/// Four `phoenix send` processes at once on one home: before the state lock, all four
/// reported success while bob got one message and three decryption errors. Now they run
/// one after the other; all four are acknowledged and all four arrive, once each.
fn concurrent_cli_processes_on_one_home(server: &TestServer) {
    let (alice, bob) = pair_in_group(server);
    const N: usize = 4;
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let alice = &alice;
                scope.spawn(move || alice.output(&["send", "g", &format!("concurrent {i}")]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let acknowledged: Vec<String> = outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.status.success())
        .map(|(i, _)| format!("concurrent {i}"))
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "a concurrent send failed: {}", o.stderr);
    }

    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + DELIVERY;
    while texts(&events).len() < acknowledged.len() && std::time::Instant::now() < deadline {
        events.extend(bob.run(&["sync"])["events"].as_array().cloned().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let received = texts(&events);
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|t| !received.contains(t))
        .collect();
    let duplicated = received.len() - {
        let mut unique = received.clone();
        unique.sort();
        unique.dedup();
        unique.len()
    };
    let errors: Vec<_> = events.iter().filter(|e| e["kind"] == "error").collect();
    eprintln!(
        "concurrent sends: acknowledged {}, delivered {}, lost {}, duplicated {duplicated}, errors {}",
        acknowledged.len(),
        received.len(),
        lost.len(),
        errors.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}; events {events:?}");
    assert_eq!(duplicated, 0, "{events:?}");
    assert!(errors.is_empty(), "{errors:?}");
}

/// While another process holds the state, a command waits, then fails naming the holder.
#[test]
fn a_second_process_waits_then_names_the_holder() {
    let cli = Cli::new("held");
    // Create the state directory (and its lock file) with a first, finished command.
    cli.output(&["contacts"]);
    let lock_path = cli.home().join("state.lock");
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    holder.try_lock().unwrap();
    std::fs::write(&lock_path, "pid 4242 (phoenix sync)").unwrap();

    let started = std::time::Instant::now();
    let out = cli.output_with_env(&["contacts"], &[("PHOENIX_LOCK_WAIT_SECS", "1")]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        out.stderr.contains("in use by another phoenix process") && out.stderr.contains("pid 4242"),
        "{}",
        out.stderr
    );

    // Released: the next command runs.
    drop(holder);
    let out = cli.output(&["contacts"]);
    assert!(out.status.success(), "{}", out.stderr);
}

// ----- files ------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn client_state_is_private_and_a_readable_database_is_refused() {
    use std::os::unix::fs::PermissionsExt;

    let cli = Cli::new("files");
    cli.output(&["contacts"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(cli.home()), 0o700);
    let db = cli.home().join("client.db");
    assert_eq!(mode(&db), 0o600);
    for entry in std::fs::read_dir(cli.home()).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            mode(&path) & 0o077,
            0,
            "{} is readable by others",
            path.display()
        );
    }

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli.fail(&["contacts"]);
    assert!(
        out.stderr.contains("readable by other users") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
}
