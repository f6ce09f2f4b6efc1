//! Two users chat through one homeserver, driven only through the `phoenix` CLI against the
//! real `phoenix-server`: registration, connection establishment, a group, messages both
//! ways with verified senders, and a few errors a user will meet. Once per storage backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use serde_json::{Value, json};

use phoenix_e2e::{Cli, TestServer};

/// How long fan-out may take to reach a queue (the outbox worker delivers within a second).
const DELIVERY: Duration = Duration::from_secs(15);

#[test]
fn chat_on_sqlite() {
    let server = TestServer::sqlite("a.test");
    chat(&server);
    assert_graceful_stop(server);
}

#[test]
fn chat_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    chat(&server);
    assert_graceful_stop(server);
}

fn chat(server: &TestServer) {
    let url = server.url();
    let (health, _) = server.get("/health").expect("GET /health");
    assert_eq!(health, 200);

    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);

    // Registration.
    let registered = alice.run(&["register", "alice@a.test", "--server", url]);
    assert_eq!(registered["fid"], "alice@a.test", "{registered}");
    assert_eq!(
        registered["server"]
            .as_str()
            .map(|s| s.trim_end_matches('/')),
        Some(url)
    );
    assert!(is_nonempty_str(&registered["client_id"]), "{registered}");
    assert!(is_hex(&registered["ca_fingerprint"]), "{registered}");
    let registered_bob = bob.run(&["register", "bob@a.test", "--server", url]);
    assert_eq!(registered_bob["fid"], "bob@a.test", "{registered_bob}");
    assert_eq!(
        registered_bob["ca_fingerprint"], registered["ca_fingerprint"],
        "one server, one CA"
    );

    // The FID is taken: the server refuses a second registration from another device.
    let again =
        Cli::for_server("alice-again", server).fail(&["register", "alice@a.test", "--server", url]);
    assert_one_line_error(&again.stderr, &["USER_EXISTS", "already registered"]);

    // Connection: alice asks, bob sees the request and accepts, alice learns of it.
    let connect = alice.run(&["connect", "bob@a.test"]);
    assert_fields(
        &connect,
        json!({"contact": "bob@a.test", "status": "requested"}),
    );
    let requests = bob.run(&["requests"]);
    let request = requests["requests"]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["fid"] == "alice@a.test"))
        .unwrap_or_else(|| panic!("bob sees no request from alice: {requests}"));
    assert!(is_nonempty_str(&request["client_id"]), "{requests}");
    assert_eq!(request["client_id"], registered["client_id"], "{requests}");
    let accept = bob.run(&["accept", "alice@a.test"]);
    assert_fields(
        &accept,
        json!({"contact": "alice@a.test", "status": "connected"}),
    );
    alice.sync_until(DELIVERY, |e| {
        e["kind"] == "connected" && e["contact"] == "bob@a.test"
    });

    assert_connected(&alice, "bob@a.test");
    assert_connected(&bob, "alice@a.test");

    // A group: alice creates it and invites bob, who learns who invited him.
    let created = alice.run(&["group", "create", "team"]);
    assert_eq!(created["group"], "team", "{created}");
    assert!(is_hex(&created["group_id"]), "{created}");
    let invited = alice.run(&["group", "invite", "team", "bob@a.test"]);
    assert_fields(&invited, json!({"group": "team", "invited": "bob@a.test"}));
    bob.sync_until(DELIVERY, |e| {
        e["kind"] == "joined" && e["group"] == "team" && e["invited_by"] == "alice@a.test"
    });

    // Messages both ways, each with a sender verified through the whole chain.
    let sent = alice.run(&["send", "team", "hello bob"]);
    assert_fields(&sent, json!({"group": "team", "sent": true}));
    let events = bob.sync_until(DELIVERY, |e| {
        e["kind"] == "message" && e["text"] == "hello bob"
    });
    let message = find_message(&events, "hello bob");
    assert_eq!(message["group"], "team", "{message}");
    assert_eq!(message["sender"], "alice@a.test", "{message}");
    assert_eq!(message["verified"], true, "{message}");

    let sent = bob.run(&["send", "team", "hi alice"]);
    assert_fields(&sent, json!({"group": "team", "sent": true}));
    let events = alice.sync_until(DELIVERY, |e| {
        e["kind"] == "message" && e["text"] == "hi alice"
    });
    let message = find_message(&events, "hi alice");
    assert_eq!(message["group"], "team", "{message}");
    assert_eq!(message["sender"], "bob@a.test", "{message}");
    assert_eq!(message["verified"], true, "{message}");

    // Both see the same membership, every member verified.
    for cli in [&alice, &bob] {
        let members = cli.run(&["group", "members", "team"]);
        assert_eq!(members["group"], "team", "{members}");
        let list = members["members"]
            .as_array()
            .unwrap_or_else(|| panic!("{members}"));
        let mut fids: Vec<&str> = list.iter().filter_map(|m| m["fid"].as_str()).collect();
        fids.sort_unstable();
        assert_eq!(fids, ["alice@a.test", "bob@a.test"], "{members}");
        for member in list {
            assert_eq!(member["verified"], true, "{members}");
            assert!(member["leaf_index"].is_u64(), "{members}");
        }
    }

    // Requirement: ID-PIN-1, ID-OOB-1
    // Each sees the other as a contact's pinned client, itself as its own client.
    for (cli, own, other) in [
        (&alice, "alice@a.test", "bob@a.test"),
        (&bob, "bob@a.test", "alice@a.test"),
    ] {
        let members = cli.run(&["group", "members", "team"]);
        for member in members["members"].as_array().unwrap() {
            let expected = if member["fid"] == own {
                "own"
            } else {
                "pinned"
            };
            assert_eq!(member["pin"], expected, "{members}");
        }
        let text = human(cli, &["group", "members", "team"]);
        assert!(
            text.contains(&format!("{other} (verified, pinned)")),
            "{text}"
        );
    }
    // Out-of-band verification: alice's code for bob is the one bob's client shows.
    let theirs = alice.run(&["fingerprint", "bob@a.test"]);
    let own = bob.run(&["fingerprint"]);
    assert_eq!(theirs["code"], own["code"], "{theirs} {own}");
    assert_eq!(own["verification"], "own", "{own}");
    let code = own["code"].as_str().unwrap().to_owned();
    let groups: Vec<&str> = code.split(' ').collect();
    assert_eq!(groups.len(), 12, "{code}");
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit())),
        "{code}"
    );
    assert!(human(&bob, &["fingerprint"]).contains(&code));
    // A wrong code is refused with an error and a failing exit code; nothing is marked.
    let wrong = format!(
        "{}{}",
        if code.starts_with('0') { '1' } else { '0' },
        &code[1..]
    );
    let refused = alice.fail(&["verify", "bob@a.test", &wrong]);
    assert_eq!(refused.status.code(), Some(1));
    assert_one_line_error(&refused.stderr, &["does not match"]);
    let contacts = alice.run(&["contacts"]);
    assert_eq!(
        contacts["contacts"][0]["verification"], "unverified",
        "{contacts}"
    );
    let verified = alice.run(&["verify", "bob@a.test", &code]);
    assert_eq!(verified["verification"], "verified", "{verified}");
    let contacts = alice.run(&["contacts"]);
    assert_eq!(
        contacts["contacts"][0]["verification"], "verified",
        "{contacts}"
    );
    assert!(human(&alice, &["contacts"]).contains("[verified]"));

    // Inviting a member again is refused before anything is sent, and changes nothing.
    let again = alice.fail(&["group", "invite", "team", "bob@a.test"]);
    assert_one_line_error(&again.stderr, &["already a member"]);
    let members = alice.run(&["group", "members", "team"]);
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(2),
        "{members}"
    );

    // A group that does not exist.
    let missing = alice.fail(&["send", "nosuchgroup", "x"]);
    assert!(
        !missing.stderr.trim().is_empty(),
        "no error message for an unknown group"
    );
}

/// The human (non-JSON) output of a command that must succeed.
fn human(cli: &Cli, args: &[&str]) -> String {
    let output = std::process::Command::new(phoenix_e2e::binary("phoenix"))
        .arg("--home")
        .arg(cli.home())
        .args(args)
        .env_remove("PHOENIX_HOME")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`phoenix {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_connected(cli: &Cli, contact: &str) {
    let contacts = cli.run(&["contacts"]);
    let entry = contacts["contacts"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["fid"] == contact))
        .unwrap_or_else(|| panic!("{contact} is not among the contacts: {contacts}"));
    assert_eq!(entry["status"], "connected", "{contacts}");
    let clients = entry["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("{contacts}"));
    assert!(
        !clients.is_empty() && clients.iter().all(is_hex),
        "{contacts}"
    );
}

fn find_message<'a>(events: &'a [Value], text: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["kind"] == "message" && e["text"] == text)
        .unwrap_or_else(|| panic!("no message {text:?} in {events:?}"))
}

/// Every field of `expected` is in `actual` with the same value (extra fields are allowed).
fn assert_fields(actual: &Value, expected: Value) {
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&actual[key], value, "field {key:?} of {actual}");
    }
}

fn assert_one_line_error(stderr: &str, any_of: &[&str]) {
    let trimmed = stderr.trim();
    assert_eq!(
        trimmed.lines().count(),
        1,
        "expected a one-line error, got:\n{stderr}"
    );
    let lower = trimmed.to_lowercase();
    assert!(
        any_of
            .iter()
            .any(|needle| lower.contains(&needle.to_lowercase())),
        "expected an error mentioning one of {any_of:?}, got: {trimmed}"
    );
}

fn assert_graceful_stop(server: TestServer) {
    let status = server.stop().expect("the server was running");
    assert!(
        status.success(),
        "phoenix-server did not exit cleanly on SIGTERM: {status}"
    );
}

fn is_nonempty_str(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.is_empty())
}

fn is_hex(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What a new user meets: `accept` works without `requests` first, `group list` lists,
/// `send` and an empty `sync` say something, and an unreachable server's error names the
/// cause.
#[test]
fn a_new_user_meets_no_walls() {
    let server = TestServer::sqlite("a.test");
    let url = server.url();
    let alice = Cli::for_server("alice", &server);
    let bob = Cli::for_server("bob", &server);
    alice.run(&["register", "alice@a.test", "--server", url]);
    bob.run(&["register", "bob@a.test", "--server", url]);
    alice.run(&["connect", "bob@a.test"]);
    // `sync` shows the waiting request.
    let events = bob.run(&["sync"])["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "connection_request" && e["fid"] == "alice@a.test"),
        "{events}"
    );
    // No `bob requests` first.
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(DELIVERY, |e| e["kind"] == "connected");

    assert_eq!(alice.run(&["group", "list"])["groups"], json!([]));
    alice.run(&["group", "create", "team"]);
    alice.run(&["group", "invite", "team", "bob@a.test"]);
    let list = alice.run(&["group", "list"]);
    assert_eq!(
        list["groups"],
        json!([{"name": "team", "members": 2, "active": true, "unread": 0}]),
        "{list}"
    );

    let human = |cli: &Cli, args: &[&str]| {
        let out = std::process::Command::new(phoenix_e2e::binary("phoenix"))
            .arg("--home")
            .arg(cli.home())
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stdout, _) = human(&alice, &["send", "team", "hello"]);
    assert!(status.success());
    assert_eq!(stdout.trim(), "sent to team");
    let (status, stdout, _) = human(&alice, &["sync"]);
    assert!(status.success());
    assert_eq!(stdout.trim(), "nothing new");
    let (_, stdout, _) = human(&alice, &["group", "list"]);
    assert_eq!(stdout.trim(), "team (2 members, no unread messages)");

    let nowhere = Cli::new("nowhere");
    let (status, _, stderr) = human(
        &nowhere,
        &["register", "x@a.test", "--server", "http://127.0.0.1:9"],
    );
    assert!(!status.success());
    // Requirement: CLI-ERR-1
    assert!(
        stderr.contains("could not register x@a.test") && stderr.contains("connection refused"),
        "{stderr}"
    );
}

/// alice@a.test and bob@a.test registered on `server`, connected, both in alice's group
/// `group`.
fn alice_and_bob_in(server: &TestServer, group: &str) -> (Cli, Cli) {
    let url = server.url().to_owned();
    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);
    alice.run(&["register", "alice@a.test", "--server", &url]);
    bob.run(&["register", "bob@a.test", "--server", &url]);
    alice.run(&["connect", "bob@a.test"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(Duration::from_secs(30), |e| e["kind"] == "connected");
    alice.run(&["group", "create", group]);
    alice.run(&["group", "invite", group, "bob@a.test"]);
    bob.sync_until(Duration::from_secs(30), |e| e["kind"] == "joined");
    (alice, bob)
}

// Requirement: QS-LISTEN-1, QS-LISTEN-2, QS-LISTEN-3, CLI-LISTEN-1
/// `phoenix listen`: bob, connected to the live stream, gets alice's message without any
/// `sync` (the time it took is printed); the server restarts, the listener reconnects by
/// itself and gets the next one; Ctrl-C stops it cleanly (exit 0). Nothing is shown twice:
/// after the restart the first message is not delivered again.
fn listen_delivers_live_through_a_restart(mut server: TestServer) {
    let (alice, bob) = alice_and_bob_in(&server, "live");

    let mut listener = bob.listen();
    listener.wait_for(Duration::from_secs(30), |e| e["kind"] == "listening");
    let sent = std::time::Instant::now();
    alice.run(&["send", "live", "first, live"]);
    let event = listener.wait_for(Duration::from_secs(10), |e| e["kind"] == "message");
    let took = sent.elapsed();
    eprintln!("listen: the message arrived {took:?} after `phoenix send` began");
    assert_eq!(event["text"], "first, live", "{event}");
    assert_eq!(event["sender"], "alice@a.test", "{event}");
    assert_eq!(event["verified"], true, "{event}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    server.restart();
    listener.wait_for(Duration::from_secs(30), |e| e["kind"] == "listening");
    alice.run(&["send", "live", "after the restart"]);
    let event = listener.wait_for(Duration::from_secs(10), |e| e["kind"] == "message");
    assert_eq!(event["text"], "after the restart", "{event}");
    let status = listener.interrupt().expect("listen did not stop on Ctrl-C");
    assert!(status.success(), "{status:?}: {}", listener.stderr());
    // Everything was acknowledged: a sync finds nothing new.
    let after = bob.run(&["sync"]);
    assert!(
        after["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "message"),
        "{after}"
    );
}

#[test]
fn listen_delivers_live_through_a_restart_on_sqlite() {
    // A fixed port: the restarted server must be where the client knows it.
    let listen = format!("127.0.0.1:{}", phoenix_e2e::free_port());
    listen_delivers_live_through_a_restart(TestServer::start_with("a.test", None, &listen, &[]));
}

#[test]
fn listen_delivers_live_through_a_restart_on_postgres() {
    if let Some(database) = phoenix_e2e::TestDatabase::for_test() {
        let listen = format!("127.0.0.1:{}", phoenix_e2e::free_port());
        listen_delivers_live_through_a_restart(TestServer::start_with(
            "a.test",
            Some(database),
            &listen,
            &[],
        ));
    }
}

// Requirement: CLI-CHAT-1
/// `phoenix chat GROUP` in a real terminal (a pseudo-terminal made by `script`): it shows
/// the group's recent messages, then a message as it arrives, and sends each line typed;
/// Ctrl-D leaves it (exit 0).
#[test]
fn chat_mode_in_a_terminal() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let server = TestServer::sqlite("a.test");
    let (alice, bob) = alice_and_bob_in(&server, "team");
    alice.run(&["send", "team", "an earlier message"]);
    bob.sync_until(Duration::from_secs(30), |e| e["kind"] == "message");

    let command = format!(
        "{} --home {} chat team",
        phoenix_e2e::binary("phoenix").display(),
        bob.home().display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("NO_COLOR", "1")
        .env_remove("PHOENIX_HOME")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("`script` (util-linux) runs the chat in a pseudo-terminal");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = script.stdout.take().unwrap();
    let shown = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |text: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !screen.lock().unwrap().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} not shown; the screen:\n{}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("[team] alice@a.test: an earlier message");
    wait_for("chatting in team");
    alice.run(&["send", "team", "hello from alice"]);
    wait_for("[team] alice@a.test: hello from alice");
    let mut stdin = script.stdin.take().unwrap();
    stdin.write_all(b"hi alice, typed\n").unwrap();
    stdin.flush().unwrap();
    wait_for("[team] you: hi alice, typed");
    alice.sync_until(Duration::from_secs(30), |e| {
        e["kind"] == "message" && e["text"] == "hi alice, typed" && e["sender"] == "bob@a.test"
    });
    // Ctrl-D: the end of the input.
    stdin.write_all(b"\x04").unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chat did not end on Ctrl-D; the screen:\n{}",
            screen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status:?}; the screen:\n{}",
        screen.lock().unwrap()
    );
}

/// A Web Push receiver on loopback in a thread of its own, speaking plain HTTP/1.1 as a
/// push service would: each POST's request line, headers and body go to the channel, and
/// it answers `201 Created`.
fn push_receiver() -> (String, std::sync::mpsc::Receiver<(String, String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push_str(&line);
            }
            let mut body = vec![0u8; length.min(1 << 16)];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = stream.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send((request_line, headers, body));
        }
    });
    (url, rx)
}

// Requirement: QS-PUSH-1, QS-PUSH-2
/// `phoenix push set URL` registers an endpoint (keys generated by the CLI); alice's
/// message makes the server POST an encrypted notification there while bob is offline;
/// `phoenix push decrypt` opens it, and it says nothing (no group, no sender, no text);
/// `phoenix push clear` stops them.
#[test]
fn push_notifications_through_the_cli() {
    let server = TestServer::start_with(
        "a.test",
        None,
        "127.0.0.1:0",
        &["--push-allow-http".to_string()],
    );
    let (receiver, notifications) = push_receiver();
    let (alice, bob) = alice_and_bob_in(&server, "team");
    let set = bob.run(&["push", "set", &format!("{receiver}/up/bob")]);
    assert_eq!(set["decrypts_here"], true, "{set}");
    let shown = human(&bob, &["push", "show"]);
    assert!(shown.contains(&format!("{receiver}/up/bob")), "{shown}");

    alice.run(&["send", "team", "a secret"]);
    let (request_line, headers, body) = notifications
        .recv_timeout(Duration::from_secs(15))
        .expect("no push notification within 15 s");
    assert!(request_line.starts_with("POST /up/bob "), "{request_line}");
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("content-encoding: aes128gcm"), "{headers}");
    assert!(headers.contains("authorization: vapid t="), "{headers}");
    for secret in ["alice", "team", "a secret"] {
        assert!(!headers.contains(secret), "{secret} in {headers}");
    }
    let file = bob.home().join("notification.bin");
    std::fs::write(&file, &body).unwrap();
    let opened = human(&bob, &["push", "decrypt", file.to_str().unwrap()]);
    assert!(opened.contains("no content"), "{opened}");
    // Not bob's key: another client cannot open it.
    let carol = Cli::for_server("carol", &server);
    carol.run(&["register", "carol@a.test", "--server", server.url()]);
    carol.run(&["push", "set", &format!("{receiver}/up/carol")]);
    let other = carol.output(&["push", "decrypt", file.to_str().unwrap()]);
    assert!(
        !other.status.success(),
        "carol decrypted bob's notification"
    );

    bob.run(&["push", "clear"]);
    assert!(human(&bob, &["push", "show"]).contains("no push endpoint"));
    alice.run(&["send", "team", "again"]);
    assert!(
        notifications.recv_timeout(Duration::from_secs(3)).is_err(),
        "a cleared endpoint was notified"
    );
}

// Requirement: QS-LISTEN-4
/// Two `phoenix-server` processes of one domain sharing one Postgres database and one
/// key-encryption key, as behind a load balancer: alice talks to the first, bob to the
/// second. bob's `listen` (on the second) gets alice's message (sent through the first)
/// within seconds, woken through Postgres `LISTEN/NOTIFY`, not by its stream's 25-second
/// check.
#[test]
fn two_processes_on_one_database_deliver_live() {
    let Some(database) = phoenix_e2e::TestDatabase::for_test() else {
        return;
    };
    let url = database.url.clone();
    let kek_dir = tempfile::tempdir().unwrap();
    let kek = kek_dir.path().join("kek");
    std::fs::write(&kek, "11".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let kek_flag = [
        "--key-encryption-key-file".to_string(),
        kek.display().to_string(),
    ];
    let first = TestServer::start_with("a.test", Some(database), "127.0.0.1:0", &kek_flag);
    let mut second_flags = kek_flag.to_vec();
    second_flags.extend(["--database-url".to_string(), url]);
    let second = TestServer::start_with("a.test", None, "127.0.0.1:0", &second_flags);

    let alice = Cli::for_server("alice", &first);
    let bob = Cli::for_server("bob", &second);
    alice.run(&["register", "alice@a.test", "--server", first.url()]);
    bob.run(&["register", "bob@a.test", "--server", second.url()]);
    alice.run(&["connect", "bob@a.test"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(Duration::from_secs(30), |e| e["kind"] == "connected");
    alice.run(&["group", "create", "team"]);
    alice.run(&["group", "invite", "team", "bob@a.test"]);
    bob.sync_until(Duration::from_secs(30), |e| e["kind"] == "joined");

    let mut listener = bob.listen();
    listener.wait_for(Duration::from_secs(30), |e| e["kind"] == "listening");
    for text in ["through the first process", "and again"] {
        let sent = std::time::Instant::now();
        alice.run(&["send", "team", text]);
        let event = listener.wait_for(Duration::from_secs(20), |e| e["kind"] == "message");
        let took = sent.elapsed();
        eprintln!("two processes: {text:?} arrived {took:?} after `phoenix send` began");
        assert_eq!(event["text"], text, "{event}");
        assert!(
            took < Duration::from_secs(8),
            "took {took:?}: woken by the stream's own check, not by the other process"
        );
    }
    let status = listener.interrupt().expect("listen did not stop on Ctrl-C");
    assert!(status.success(), "{status:?}: {}", listener.stderr());
}
