//! Faults a user or an operator meets, injected through the real binaries: several `phoenix`
//! processes on one state directory, and a client state directory that others can read.
//! Each test counts what was acknowledged and what arrived, and asserts nothing was lost
//! or duplicated.
//!
//! Requirement: CL-LOCK-1, CL-FILES-1, CL-AMBIG-1, CL-AMBIG-2

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

/// Count what arrived against what was acknowledged, print the counts under `label`, and
/// assert that nothing acknowledged was lost, nothing arrived twice and no event reported
/// an error.
fn assert_nothing_lost(label: &str, acknowledged: &[String], events: &[Value]) {
    let received = texts(events);
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|t| !received.contains(t))
        .collect();
    let duplicated = received.len()
        - received
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    let errors: Vec<_> = events.iter().filter(|e| e["kind"] == "error").collect();
    eprintln!(
        "{label}: acknowledged {}, delivered {}, lost {}, duplicated {duplicated}, errors {}",
        acknowledged.len(),
        received.len(),
        lost.len(),
        errors.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}; events {events:?}");
    assert_eq!(duplicated, 0, "{received:?}");
    assert!(errors.is_empty(), "{errors:?}");
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
    assert_nothing_lost("concurrent sends", &acknowledged, &events);
}

/// While another process holds the state, a command waits, then fails naming the holder.
#[test]
fn a_second_process_waits_then_names_the_holder() {
    let cli = Cli::new("held");
    // Create the state directory (and its lock file) with a first, finished command.
    cli.output(&["group", "list"]);
    let lock_path = cli.home().join("state.lock");
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    holder.try_lock().unwrap();
    std::fs::write(&lock_path, "pid 4242 (phoenix sync)").unwrap();

    let started = std::time::Instant::now();
    let out = cli.output_with_env(&["group", "list"], &[("PHOENIX_LOCK_WAIT_SECS", "1")]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        out.stderr.contains("in use by another phoenix process") && out.stderr.contains("pid 4242"),
        "{}",
        out.stderr
    );

    // Released: the next command runs.
    drop(holder);
    let out = cli.output(&["group", "list"]);
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

// ----- lost answers -----------------------------------------------------------------

#[test]
fn lost_replies_on_ds_and_qs_operations_on_sqlite() {
    lost_replies_on_ds_and_qs_operations(&TestServer::sqlite("a.test"));
}

#[test]
fn lost_replies_on_ds_and_qs_operations_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    lost_replies_on_ds_and_qs_operations(&server);
}

/// alice reaches the server through a proxy that throws away the server's answer to the
/// next request of a given operation: the server did the work, alice's client never hears
/// of it. Before the client settled such requests, the lost answer to `send_message` made
/// it roll back and reuse the ratchet generation (its next message was refused by every
/// receiver: "The requested secret was deleted to preserve forward secrecy"), and a lost
/// answer to a commit left it an epoch behind for good (`WRONG_EPOCH` on every send). Now
/// every command whose answer was dropped still succeeds (the identical bytes are sent
/// again; the server's `REPLAYED` or the DS's current group info settles it), and bob
/// receives every acknowledged message exactly once.
///
/// Requirement: CL-AMBIG-1, DS-GID-3
fn lost_replies_on_ds_and_qs_operations(server: &TestServer) {
    use phoenix_e2e::proxy::ReplyDroppingProxy;

    let proxy = ReplyDroppingProxy::start(server.url());
    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);
    let carol = Cli::for_server("carol", server);
    alice.run(&["register", "alice@a.test", "--server", &proxy.url]);
    bob.run(&["register", "bob@a.test", "--server", server.url()]);
    // carol too goes through the proxy: her accept's external commit loses its answer.
    carol.run(&["register", "carol@a.test", "--server", &proxy.url]);
    for (contact, fid) in [(&bob, "bob@a.test"), (&carol, "carol@a.test")] {
        alice.run(&["connect", fid]);
        contact.run(&["requests"]);
        if fid == "carol@a.test" {
            proxy.drop_next_reply(&["/phoenix/v1/ds/join_connection_group"]);
        }
        contact.run(&["accept", "alice@a.test"]);
        alice.sync_until(DELIVERY, |e| {
            e["kind"] == "connected" && e["contact"] == fid
        });
    }
    // A lost answer to the group id request (the same token is sent again and gets the
    // same reservation), then to the group creation itself (the identical bytes again:
    // `REPLAYED` counts as created).
    proxy.drop_next_reply(&["/phoenix/v1/ds/request_group_id"]);
    alice.run(&["group", "create", "g"]);
    proxy.drop_next_reply(&["/phoenix/v1/ds/create_group"]);
    alice.run(&["group", "create", "spare"]);
    let groups = alice.run(&["group", "list"]);
    for name in ["g", "spare"] {
        assert!(groups.to_string().contains(name), "{groups}");
    }

    let mut acknowledged = Vec::new();
    let mut send = |text: &str| {
        alice.run(&["send", "g", text]);
        acknowledged.push(text.to_owned());
    };

    proxy.drop_next_reply(&["/phoenix/v1/ds/add_users"]);
    alice.run(&["group", "invite", "g", "bob@a.test"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "joined");

    proxy.drop_next_reply(&["/phoenix/v1/ds/send_message"]);
    send("after a lost answer");
    send("the next one");

    proxy.drop_next_reply(&["/phoenix/v1/ds/update"]);
    alice.run(&["group", "update", "g"]);
    send("after a lost update answer");

    proxy.drop_next_reply(&["/phoenix/v1/ds/add_users"]);
    alice.run(&["group", "invite", "g", "carol@a.test"]);
    carol.sync_until(DELIVERY, |e| e["kind"] == "joined");
    proxy.drop_next_reply(&["/phoenix/v1/ds/remove_users"]);
    alice.run(&["group", "remove", "g", "carol@a.test"]);
    send("after a lost remove answer");

    // bob answers; alice's dequeue answer is dropped once.
    bob.run(&["send", "g", "hi alice"]);
    // Requirement: CL-KP-1 (each sync asks how alice's key packages stand)
    proxy.drop_next_reply(&[
        "/phoenix/v1/qs/dequeue",
        "/phoenix/v1/qs/key_package_status",
    ]);
    let alice_events = alice.sync_until(DELIVERY, |e| e["text"] == "hi alice");

    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + DELIVERY;
    while !texts(&events).contains(acknowledged.last().unwrap())
        && std::time::Instant::now() < deadline
    {
        events.extend(bob.run(&["sync"])["events"].as_array().cloned().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        proxy.armed().is_empty(),
        "drops not met: {:?}",
        proxy.armed()
    );
    let mut all = events.clone();
    all.extend(
        alice_events
            .iter()
            .filter(|e| e["kind"] == "error")
            .cloned(),
    );
    assert_nothing_lost(
        &format!("lost answers {:?}", proxy.dropped()),
        &acknowledged,
        &all,
    );
    // Every message bob got is verified from alice: the retried bytes are the original.
    for e in events.iter().filter(|e| e["kind"] == "message") {
        assert_eq!(e["verified"], true, "{e}");
        assert_eq!(e["sender"], "alice@a.test", "{e}");
    }
}

#[test]
fn lost_replies_on_registration_and_the_connection_path_on_sqlite() {
    lost_replies_on_registration_and_the_connection_path(&TestServer::sqlite("a.test"));
}

#[test]
fn lost_replies_on_registration_and_the_connection_path_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    lost_replies_on_registration_and_the_connection_path(&server);
}

/// The AS and QS operations of registration and of connecting, each losing its answer
/// through the reply-dropping proxy. Before registration settled lost answers, a lost
/// answer to `as/register` or `qs/create_user` wedged the user: the retry (or a second
/// `phoenix register`) got `USER_EXISTS` / `DUPLICATE_FRIENDSHIP_TOKEN` for an account
/// whose keys nobody held. Now every command whose answer was dropped still succeeds (or,
/// when every attempt's answer is lost, fails and finishes when run again), a different
/// CSR for a taken FID is still refused, and the connections, the invitation and the
/// messages after them complete once each.
///
/// Requirement: CL-AMBIG-2
fn lost_replies_on_registration_and_the_connection_path(server: &TestServer) {
    use phoenix_e2e::proxy::ReplyDroppingProxy;
    const REGISTER: &str = "/phoenix/v1/as/register";
    const CREATE_USER: &str = "/phoenix/v1/qs/create_user";

    let proxy = ReplyDroppingProxy::start(server.url());
    // Requirement: CL-AMBIG-2
    // Every request of a registration loses its first answer once: it still succeeds.
    let alice = Cli::for_server("alice", server);
    proxy.drop_next_reply(&[
        REGISTER,
        "/phoenix/v1/qs/queue_config_key",
        CREATE_USER,
        "/phoenix/v1/as/publish_connection_packages",
        "/phoenix/v1/qs/publish_key_packages",
    ]);
    alice.run(&["register", "alice@a.test", "--server", &proxy.url]);
    assert!(
        proxy.armed().is_empty(),
        "drops not met: {:?}",
        proxy.armed()
    );

    // Every attempt at `as/register` loses its answer, then every attempt at
    // `qs/create_user`: each run fails saying the registration is saved, and the next
    // run on the same home finishes it.
    let dave = Cli::for_server("dave", server);
    proxy.drop_next_reply(&[REGISTER, REGISTER, REGISTER]);
    let out = dave.fail(&["register", "dave@a.test", "--server", &proxy.url]);
    assert!(
        out.stderr.contains("run the same `phoenix register` again"),
        "{}",
        out.stderr
    );
    proxy.drop_next_reply(&[CREATE_USER, CREATE_USER, CREATE_USER]);
    let out = dave.fail(&["register", "dave@a.test", "--server", &proxy.url]);
    assert!(
        out.stderr.contains("run the same `phoenix register` again"),
        "{}",
        out.stderr
    );
    assert!(
        proxy.armed().is_empty(),
        "drops not met: {:?}",
        proxy.armed()
    );
    // Another FID on the home with an unfinished registration is refused.
    let out = dave.fail(&["register", "other@a.test", "--server", &proxy.url]);
    assert!(
        out.stderr
            .contains("unfinished registration of dave@a.test"),
        "{}",
        out.stderr
    );
    dave.run(&["register", "dave@a.test", "--server", &proxy.url]);
    let out = dave.fail(&["register", "dave@a.test", "--server", &proxy.url]);
    assert!(
        out.stderr.contains("already holds the identity"),
        "{}",
        out.stderr
    );
    // The hole stays closed: another device's CSR for a taken FID is refused.
    let mallory = Cli::for_server("mallory", server);
    for fid in ["alice@a.test", "dave@a.test"] {
        let out = mallory.fail(&["register", fid, "--server", server.url()]);
        assert!(out.stderr.contains("USER_EXISTS"), "{}", out.stderr);
    }
    // A definite refusal leaves nothing pending: that home registers another FID.
    mallory.run(&["register", "mallory@a.test", "--server", server.url()]);

    // Connecting, with a lost answer on each AS, QS and DS read on the way.
    // Requirement: CL-AMBIG-3
    // Every attempt's answer to a connection request is lost: `phoenix connect` fails
    // saying so, and run again it sends the same request (`REPLAYED`): erin gets one.
    const ENQUEUE_CONNECTION: &str = "/phoenix/v1/as/enqueue_connection";
    let erin = Cli::for_server("erin", server);
    erin.run(&["register", "erin@a.test", "--server", server.url()]);
    proxy.drop_next_reply(&[ENQUEUE_CONNECTION, ENQUEUE_CONNECTION, ENQUEUE_CONNECTION]);
    let out = alice.fail(&["connect", "erin@a.test"]);
    assert!(
        out.stderr
            .contains("run `phoenix connect erin@a.test` again"),
        "{}",
        out.stderr
    );
    alice.run(&["connect", "erin@a.test"]);
    let requests = erin.run(&["requests"]);
    assert_eq!(
        requests["requests"].as_array().map(Vec::len),
        Some(1),
        "one connection request, not two: {requests}"
    );
    erin.run(&["accept", "alice@a.test"]);
    alice.sync_until(DELIVERY, |e| {
        e["kind"] == "connected" && e["contact"] == "erin@a.test"
    });

    let bob = Cli::for_server("bob", server);
    bob.run(&["register", "bob@a.test", "--server", server.url()]);
    // Requirement: CL-AMBIG-3
    // The answer to the connection request itself is lost: the identical bytes again are
    // `REPLAYED`, and dave has the one request.
    proxy.drop_next_reply(&[
        "/phoenix/v1/as/fetch_connection_package",
        "/phoenix/v1/as/enqueue_connection",
    ]);
    alice.run(&["connect", "dave@a.test"]);
    proxy.drop_next_reply(&["/phoenix/v1/as/dequeue_connection"]);
    let requests = dave.run(&["requests"]);
    assert_eq!(
        requests["requests"].as_array().map(Vec::len),
        Some(1),
        "one connection request, not two: {requests}"
    );
    proxy.drop_next_reply(&["/phoenix/v1/ds/external_commit_info"]);
    dave.run(&["accept", "alice@a.test"]);
    proxy.drop_next_reply(&["/phoenix/v1/qs/dequeue"]);
    let mut alice_events = alice.sync_until(DELIVERY, |e| {
        e["kind"] == "connected" && e["contact"] == "dave@a.test"
    });
    bob.run(&["connect", "alice@a.test"]);
    proxy.drop_next_reply(&["/phoenix/v1/as/dequeue_connection"]);
    alice.run(&["requests"]);
    alice.run(&["accept", "bob@a.test"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "connected");
    alice.run(&["group", "create", "g"]);
    // alice fetches dave's and bob's key packages; the answers are lost once each.
    proxy.drop_next_reply(&["/phoenix/v1/qs/fetch_key_packages"]);
    alice.run(&["group", "invite", "g", "dave@a.test"]);
    proxy.drop_next_reply(&["/phoenix/v1/qs/fetch_key_packages"]);
    alice.run(&["group", "invite", "g", "bob@a.test"]);
    let mut dave_events = dave.sync_until(DELIVERY, |e| e["kind"] == "joined");
    let mut bob_events = bob.sync_until(DELIVERY, |e| e["kind"] == "joined");
    assert!(
        proxy.armed().is_empty(),
        "drops not met: {:?}",
        proxy.armed()
    );

    let acknowledged = vec!["one".to_owned(), "two".to_owned()];
    for text in &acknowledged {
        alice.run(&["send", "g", text]);
    }
    dave.run(&["send", "g", "from dave"]);
    let deadline = std::time::Instant::now() + DELIVERY;
    while (!texts(&dave_events).contains(&"two".to_owned())
        || !texts(&bob_events).contains(&"from dave".to_owned())
        || !texts(&alice_events).contains(&"from dave".to_owned()))
        && std::time::Instant::now() < deadline
    {
        dave_events.extend(dave.run(&["sync"])["events"].as_array().cloned().unwrap());
        bob_events.extend(bob.run(&["sync"])["events"].as_array().cloned().unwrap());
        alice_events.extend(alice.run(&["sync"])["events"].as_array().cloned().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let label = format!("lost answers {:?}", proxy.dropped());
    assert_nothing_lost(&format!("dave, {label}"), &acknowledged, &dave_events);
    let mut with_dave = acknowledged.clone();
    with_dave.push("from dave".to_owned());
    assert_nothing_lost(&format!("bob, {label}"), &with_dave, &bob_events);
    assert_nothing_lost("alice", &["from dave".to_owned()], &alice_events);
    // Each connection and each join happened once.
    let count = |events: &[Value], kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count(&dave_events, "joined"), 1, "{dave_events:?}");
    assert_eq!(count(&bob_events, "joined"), 1, "{bob_events:?}");
    assert_eq!(count(&alice_events, "connected"), 1, "{alice_events:?}");
    let contacts = alice.run(&["contacts"]);
    eprintln!("alice's contacts: {contacts}");
    for e in dave_events
        .iter()
        .chain(&bob_events)
        .filter(|e| e["kind"] == "message")
    {
        assert_eq!(e["verified"], true, "{e}");
    }
}

// ----- kill -9 under load -----------------------------------------------------------

/// A server on a fixed port, so that it comes back where the clients expect it.
fn restartable(database: Option<phoenix_e2e::TestDatabase>) -> TestServer {
    let listen = format!("127.0.0.1:{}", phoenix_e2e::free_port());
    TestServer::start_with("a.test", database, &listen, &[])
}

#[test]
fn kill_9_loop_under_concurrent_senders_on_sqlite() {
    kill_9_loop_under_concurrent_senders(restartable(None));
}

#[test]
fn kill_9_loop_under_concurrent_senders_on_postgres() {
    let Some(db) = phoenix_e2e::TestDatabase::for_test() else {
        return;
    };
    kill_9_loop_under_concurrent_senders(restartable(Some(db)));
}

/// Three senders send to one group while the server is killed with SIGKILL and started
/// again, over and over. A send that the CLI acknowledged (exit 0) must reach the reader
/// exactly once; a send that failed (the server was down, or died before answering) may
/// arrive later (the client sends it again with the next command) but never twice.
///
/// Requirement: CL-AMBIG-1, DS-OUTBOX-1
fn kill_9_loop_under_concurrent_senders(mut server: TestServer) {
    const SENDERS: [&str; 3] = ["s0", "s1", "s2"];
    const PER_SENDER: usize = 12;
    const CRASHES: usize = 6;
    let url = server.url().to_owned();
    let reader = Cli::for_server("reader", &server);
    reader.run(&["register", "reader@a.test", "--server", &url]);
    reader.run(&["group", "create", "g"]);
    let senders: Vec<Cli> = SENDERS
        .iter()
        .map(|name| {
            let cli = Cli::for_server(name, &server);
            let fid = format!("{name}@a.test");
            cli.run(&["register", &fid, "--server", &url]);
            cli.run(&["connect", "reader@a.test"]);
            reader.run(&["requests"]);
            reader.run(&["accept", &fid]);
            cli.sync_until(DELIVERY, |e| e["kind"] == "connected");
            reader.run(&["group", "invite", "g", &fid]);
            cli.sync_until(DELIVERY, |e| e["kind"] == "joined");
            cli
        })
        .collect();

    let done = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Vec<(String, bool)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = senders
            .iter()
            .zip(SENDERS)
            .map(|(cli, name)| {
                scope.spawn(move || {
                    (0..PER_SENDER)
                        .map(|i| {
                            let text = format!("{name}-{i}");
                            let ok = cli.output(&["send", "g", &text]).status.success();
                            std::thread::sleep(Duration::from_millis(100));
                            (text, ok)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let killer = scope.spawn(|| {
            for _ in 0..CRASHES {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(700));
                server.crash();
                std::thread::sleep(Duration::from_millis(300));
                server.start_again();
            }
        });
        let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        killer.join().unwrap();
        results
    });

    // Whatever a sender could not settle while the server was down, it sends now.
    for cli in &senders {
        let out = cli.output(&["sync"]);
        assert!(out.status.success(), "{}", out.stderr);
    }
    let acknowledged: Vec<String> = results
        .iter()
        .flatten()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| t.clone())
        .collect();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.iter().any(|t| !texts(&events).contains(t))
        && std::time::Instant::now() < deadline
    {
        let out = reader.output(&["sync"]);
        if let Ok(v) = serde_json::from_str::<Value>(out.stdout.trim()) {
            events.extend(v["events"].as_array().cloned().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        acknowledged.len() >= PER_SENDER,
        "too few sends succeeded to mean anything"
    );
    assert_nothing_lost(
        &format!(
            "kill -9 x{CRASHES} under {} senders, {} sent",
            SENDERS.len(),
            SENDERS.len() * PER_SENDER
        ),
        &acknowledged,
        &events,
    );
}
