//! The `phoenix` CLI as an everyday user meets it, through the real binary against the
//! real server: `groups` with member and unread counts, one's own messages in `history`,
//! dates in text output, fingerprint codes in `contacts`, "nothing new", errors that name
//! the operation and the cause in words, and help text on every argument and option.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;

use phoenix_e2e::{Cli, TestServer, binary};

/// How long fan-out may take to reach a queue.
const DELIVERY: Duration = Duration::from_secs(15);

#[test]
fn everyday_use_on_sqlite() {
    let server = TestServer::sqlite("a.test");
    everyday_use(&server);
}

#[test]
fn everyday_use_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    everyday_use(&server);
}

/// `phoenix ARGS` in text mode (no `--json`): exit success, stdout, stderr.
fn human(cli: &Cli, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(binary("phoenix"))
        .arg("--home")
        .arg(cli.home())
        .args(args)
        .env_remove("PHOENIX_HOME")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn human_ok(cli: &Cli, args: &[&str]) -> String {
    let (ok, stdout, stderr) = human(cli, args);
    assert!(ok, "`phoenix {}` failed: {stderr}", args.join(" "));
    stdout
}

/// Text-mode `sync` until its output contains `wanted`.
fn human_sync_until(cli: &Cli, wanted: &str) -> String {
    let deadline = Instant::now() + DELIVERY;
    let mut seen = String::new();
    loop {
        let out = human_ok(cli, &["sync"]);
        seen.push_str(&out);
        if seen.contains(wanted) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "`phoenix sync` never printed {wanted:?}; it printed:\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn group<'a>(groups: &'a Value, name: &str) -> &'a Value {
    groups["groups"]
        .as_array()
        .and_then(|l| l.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no group {name} in {groups}"))
}

/// A `YYYY-MM-DD HH:MM:SS UTC` date somewhere in `line`.
fn has_date(line: &str) -> bool {
    line.as_bytes().windows(23).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 | 19 => *c == b' ',
            13 | 16 => *c == b':',
            20..=22 => *c == b"UTC"[i - 20],
            _ => c.is_ascii_digit(),
        })
    })
}

fn everyday_use(server: &TestServer) {
    let url = server.url();
    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);
    alice.run(&["register", "alice@a.test", "--server", url]);
    bob.run(&["register", "bob@a.test", "--server", url]);

    // Requirement: CLI-ERR-2
    // A connection request to a user the server does not know says so, and names the
    // operation the user asked for.
    let (ok, _, stderr) = human(&alice, &["connect", "nosuch@a.test"]);
    assert!(!ok);
    assert!(
        stderr.contains("could not connect to nosuch@a.test")
            && stderr.contains("there is no user nosuch@a.test"),
        "{stderr}"
    );
    let failed = alice.fail(&["connect", "nosuch@a.test"]);
    let error: Value = serde_json::from_str(failed.stderr.trim()).unwrap();
    assert_eq!(error["operation"], "connect to nosuch@a.test", "{error}");

    // `sync` shows the connection request, with the command that accepts it.
    alice.run(&["connect", "bob@a.test"]);
    human_sync_until(
        &bob,
        "alice@a.test wants to connect: `phoenix accept alice@a.test` to accept",
    );
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(DELIVERY, |e| e["kind"] == "connected");

    // Requirement: CLI-SYNC-1
    // An empty sync says so in text and prints an empty list in JSON.
    let deadline = Instant::now() + DELIVERY;
    while human_ok(&alice, &["sync"]).trim() != "nothing new" {
        assert!(Instant::now() < deadline, "sync never came up empty");
    }
    assert_eq!(alice.run(&["sync"])["events"], Value::Array(vec![]));

    // Requirement: CLI-FMT-1
    // `contacts` shows the contact's fingerprint code, as `fingerprint FID` prints it.
    let code = alice.run(&["fingerprint", "bob@a.test"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code.split(' ').count(), 12, "{code}");
    let contacts = human_ok(&alice, &["contacts"]);
    assert!(
        contacts.contains(&format!("fingerprint: {code}")),
        "{contacts}"
    );
    let contacts = alice.run(&["contacts"]);
    assert_eq!(contacts["contacts"][0]["code"], code.as_str(), "{contacts}");

    // Requirement: CLI-GROUPS-1
    // `groups` lists members and unread messages: up with each message received, down to
    // zero after `history`; one's own messages never count.
    assert_eq!(
        human_ok(&alice, &["groups"]).trim(),
        "no groups (create one with `phoenix group create NAME`)"
    );
    alice.run(&["group", "create", "team"]);
    alice.run(&["group", "invite", "team", "bob@a.test"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "joined");
    let groups = bob.run(&["groups"]);
    assert_eq!(group(&groups, "team")["members"], 2, "{groups}");
    assert_eq!(group(&groups, "team")["unread"], 0, "{groups}");

    alice.run(&["send", "team", "one"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "message" && e["text"] == "one");
    assert_eq!(group(&bob.run(&["groups"]), "team")["unread"], 1);
    assert_eq!(
        human_ok(&bob, &["groups"]).trim(),
        "team (2 members, 1 unread message)"
    );
    alice.run(&["send", "team", "two"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "message" && e["text"] == "two");
    assert_eq!(group(&bob.run(&["groups"]), "team")["unread"], 2);
    // `group list` is the same list.
    assert_eq!(
        group(&bob.run(&["group", "list"]), "team")["unread"],
        2,
        "group list"
    );
    bob.run(&["send", "team", "three"]);
    assert_eq!(
        group(&bob.run(&["groups"]), "team")["unread"],
        2,
        "own messages are not unread"
    );

    // Requirement: CLI-HIST-1, CLI-FMT-2
    // `history` shows the user's own messages, marked as theirs, in order, with dates.
    let history = bob.run(&["history", "team"]);
    let messages = history["messages"].as_array().unwrap();
    let seen: Vec<(&str, &str, bool)> = messages
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap_or("?"),
                m["text"].as_str().unwrap_or("?"),
                m["own"] == true,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alice@a.test", "one", false),
            ("alice@a.test", "two", false),
            ("bob@a.test", "three", true)
        ],
        "{history}"
    );
    for m in messages {
        assert_eq!(m["verified"], true, "{m}");
        assert!(m["received_at"].is_u64(), "JSON keeps its numbers: {m}");
        assert!(
            m["received_at_rfc3339"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z')),
            "{m}"
        );
    }
    assert_eq!(group(&bob.run(&["groups"]), "team")["unread"], 0);
    let text = human_ok(&bob, &["history", "team"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| has_date(l)), "{text}");
    assert!(lines[2].ends_with("bob@a.test (you): three"), "{text}");
    assert!(lines[0].ends_with("alice@a.test: one"), "{text}");
    assert_eq!(
        human_ok(&bob, &["groups"]).trim(),
        "team (2 members, no unread messages)"
    );

    // The sender's side: both of alice's messages, then bob's, in order.
    alice.sync_until(DELIVERY, |e| e["kind"] == "message" && e["text"] == "three");
    let history = alice.run(&["history", "team"]);
    let seen: Vec<(&str, bool)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["text"].as_str().unwrap_or("?"), m["own"] == true))
        .collect();
    assert_eq!(
        seen,
        [("one", true), ("two", true), ("three", false)],
        "{history}"
    );

    // Requirement: CLI-FMT-2
    // Connection requests and certificates show dates too.
    let certificates = human_ok(&alice, &["certificates", "bob@a.test"]);
    assert!(
        certificates.lines().next().is_some_and(has_date),
        "{certificates}"
    );
}

// Requirement: CLI-ERR-1
/// Errors name the operation the user asked for and the cause in words: connection
/// refused, name not found, TLS failure.
#[test]
fn errors_say_the_operation_and_the_cause() {
    let user = Cli::new("carol");
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cases: [(String, &str); 3] = [
        (format!("http://127.0.0.1:{closed}"), "connection refused"),
        ("http://nosuch.invalid".to_owned(), "name not found"),
        // A plain-HTTP server spoken to over TLS.
        (String::new(), "TLS failure"),
    ];
    let server = TestServer::sqlite("a.test");
    let tls_to_plain = server.url().replace("http://", "https://");
    for (url, cause) in cases {
        let url = if url.is_empty() {
            tls_to_plain.clone()
        } else {
            url
        };
        let (ok, _, stderr) = human(&user, &["register", "carol@a.test", "--server", &url]);
        assert!(!ok);
        assert!(
            stderr.starts_with("phoenix: could not register carol@a.test: ")
                && stderr.contains(cause),
            "{url}: {stderr}"
        );
        assert!(
            !stderr.contains("/phoenix/v1/") && !stderr.contains("error sending request"),
            "no internal step: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

// Requirement: CLI-HELP-1
/// Every argument and option of every subcommand has help text, and defaults are shown.
#[test]
fn every_argument_and_option_has_help() {
    let help = |args: &[&str]| {
        let output = std::process::Command::new(binary("phoenix"))
            .arg("help")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "phoenix help {args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let section = |text: &str, title: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| *l != title)
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let commands = |text: &str| -> Vec<String> {
        section(text, "Commands:")
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top = help(&[]);
    let mut pages: Vec<(String, String)> = vec![("phoenix".to_owned(), top.clone())];
    let top_commands = commands(&top);
    assert!(top_commands.len() >= 14, "{top}");
    for command in &top_commands {
        let page = help(&[command]);
        for sub in commands(&page) {
            pages.push((format!("{command} {sub}"), help(&[command, &sub])));
        }
        pages.push((command.clone(), page));
    }
    let mut checked = 0;
    for (name, page) in &pages {
        for title in ["Arguments:", "Options:"] {
            for entry in section(page, title) {
                let entry = entry.trim_start();
                let described = entry
                    .split_once("  ")
                    .is_some_and(|(_, text)| !text.trim().is_empty());
                assert!(described, "`phoenix help {name}`: {entry:?} has no help");
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "{checked}");
    assert!(top.contains("[default: as]"), "{top}");
    assert!(top.contains("[default: the user's data dir"), "{top}");
    assert!(
        help(&["groups"]).contains("unread"),
        "the unread count is explained"
    );
}
