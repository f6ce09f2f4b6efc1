//! A member that fell behind recovers by itself, through the real binaries on both
//! backends: bob's state directory is restored from a copy taken before alice's commit (a
//! backup restore), so his queue no longer holds that commit and his group state is an
//! epoch behind. Alice's next message is of a future epoch for him: his `phoenix sync`
//! resyncs by external commit (`ds/resync`), says so (a `resynced` event, and a gap in his
//! history for what he missed), and he receives alice's later messages; alice sees bob in
//! the group exactly once.
//!
//! Requirement: CL-RESYNC-1, DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3, CL-LOSS-1

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use phoenix_e2e::{Cli, TestServer};

const DELIVERY: Duration = Duration::from_secs(20);

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replace the contents of `home` with those of `backup`.
fn restore(home: &Path, backup: &Path) {
    for entry in fs::read_dir(home).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
    copy_dir(backup, home);
}

/// One `phoenix sync` whose events may report errors (exit code 3): its events.
fn sync_events(cli: &Cli) -> Vec<Value> {
    let out = cli.output(&["sync"]);
    let doc: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "sync printed no JSON ({e}): {}\nstderr: {}",
            out.stdout, out.stderr
        )
    });
    doc["events"].as_array().cloned().unwrap_or_default()
}

fn message_texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "message" && e["verified"] == true)
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_member_restored_from_a_backup_resyncs_by_itself_on_sqlite() {
    a_member_restored_from_a_backup_resyncs_by_itself(&TestServer::sqlite("a.test"));
}

#[test]
fn a_member_restored_from_a_backup_resyncs_by_itself_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    a_member_restored_from_a_backup_resyncs_by_itself(&server);
}

fn a_member_restored_from_a_backup_resyncs_by_itself(server: &TestServer) {
    // Requirement: CL-RESYNC-1, DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3, CL-LOSS-1
    let url = server.url();
    // bob reaches the server through a proxy that loses the answer to his resync.
    let proxy = phoenix_e2e::proxy::ReplyDroppingProxy::start(url);
    let alice = Cli::for_server("alice", server);
    let bob = Cli::for_server("bob", server);
    alice.run(&["register", "alice@a.test", "--server", url]);
    bob.run(&["register", "bob@a.test", "--server", &proxy.url]);
    alice.run(&["connect", "bob@a.test"]);
    bob.run(&["requests"]);
    bob.run(&["accept", "alice@a.test"]);
    alice.sync_until(DELIVERY, |e| e["kind"] == "connected");
    alice.run(&["group", "create", "g"]);
    alice.run(&["group", "invite", "g", "bob@a.test"]);
    bob.sync_until(DELIVERY, |e| e["kind"] == "joined");
    alice.run(&["send", "g", "before"]);
    bob.sync_until(DELIVERY, |e| e["text"] == "before");

    // A backup of bob's state, then alice commits and bob processes the commit.
    let backup = tempfile::tempdir().unwrap();
    copy_dir(bob.home(), backup.path());
    alice.run(&["group", "update", "g"]);
    alice.run(&["send", "g", "in-the-lost-epoch"]);
    bob.sync_until(DELIVERY, |e| e["text"] == "in-the-lost-epoch");
    // The next sync acknowledges them: the QS deletes them.
    bob.run(&["sync"]);

    // Bob's state is restored: the commit is gone from it and from his queue (he
    // acknowledged it).
    restore(bob.home(), backup.path());
    alice.run(&["send", "g", "after-restore"]);
    // Requirement: CL-AMBIG-1 (the identical resync again: `REPLAYED` settles it)
    proxy.drop_next_reply(&["/phoenix/v1/ds/resync"]);
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + DELIVERY;
    while !events.iter().any(|e: &Value| e["kind"] == "resynced") {
        assert!(
            std::time::Instant::now() < deadline,
            "bob did not resync by himself; events: {events:?}"
        );
        events.extend(sync_events(&bob));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bob's sync after the restore: {events:?}");
    assert!(
        proxy.armed().is_empty(),
        "the resync answer was not dropped: {:?}",
        proxy.armed()
    );
    let resynced = events.iter().find(|e| e["kind"] == "resynced").unwrap();
    assert_eq!(resynced["group"], "g");
    assert!(
        resynced["to_epoch"].as_u64() > resynced["from_epoch"].as_u64(),
        "{resynced}"
    );
    // What bob missed is reported, not silently dropped (CL-LOSS-1)...
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "error" && e["group"] == "g"),
        "{events:?}"
    );
    let history = bob.run(&["history", "g"]);
    let history = history["messages"]
        .as_array()
        .or_else(|| history.as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        history.iter().any(|m| m["gap"] == true),
        "no gap in bob's history: {history:?}"
    );
    // ...and his local history before the restore point is kept.
    assert!(history.iter().any(|m| m["text"] == "before"), "{history:?}");

    // Alice processes the resync and sees bob exactly once.
    let alice_events = alice.sync_until(DELIVERY, |e| e["kind"] == "member_resynced");
    assert!(
        alice_events
            .iter()
            .any(|e| e["kind"] == "member_resynced" && e["member"] == "bob@a.test"),
        "{alice_events:?}"
    );
    let members = alice.run(&["group", "members", "g"]);
    let bobs = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fid"] == "bob@a.test")
        .count();
    assert_eq!(bobs, 1, "bob must be in exactly one leaf: {members}");
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["verified"] == true),
        "{members}"
    );

    // Both directions work again.
    alice.run(&["send", "g", "after-resync"]);
    let events = bob.sync_until(DELIVERY, |e| e["text"] == "after-resync");
    assert_eq!(
        message_texts(&events),
        vec!["after-resync".to_owned()],
        "{events:?}"
    );
    bob.run(&["send", "g", "bob-is-back"]);
    let events = alice.sync_until(DELIVERY, |e| e["text"] == "bob-is-back");
    let from_bob = events.iter().find(|e| e["text"] == "bob-is-back").unwrap();
    assert_eq!(from_bob["sender"], "bob@a.test", "{from_bob}");
    assert_eq!(from_bob["verified"], true, "{from_bob}");
}

#[test]
fn a_member_restored_from_a_backup_resyncs_when_its_send_is_refused_on_sqlite() {
    restored_member_resyncs_when_refused(&TestServer::sqlite("a.test"), Refused::Send);
}

#[test]
fn a_member_restored_from_a_backup_resyncs_when_its_send_is_refused_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    restored_member_resyncs_when_refused(&server, Refused::Send);
}

#[test]
fn a_member_restored_from_a_backup_resyncs_when_its_commit_is_refused_on_sqlite() {
    restored_member_resyncs_when_refused(&TestServer::sqlite("a.test"), Refused::Commit);
}

#[test]
fn a_member_restored_from_a_backup_resyncs_when_its_commit_is_refused_on_postgres() {
    let Some(server) = TestServer::postgres("a.test") else {
        return;
    };
    restored_member_resyncs_when_refused(&server, Refused::Commit);
}

/// What bob does first after his state was restored.
#[derive(Clone, Copy)]
enum Refused {
    /// `phoenix send`: the DS answers `WRONG_EPOCH` to his message.
    Send,
    /// `phoenix group update`: the DS answers `WRONG_EPOCH` to his commit. Before the
    /// client resynced after a refused commit of its own, the command failed with
    /// `WRONG_EPOCH`, and so did every later one.
    Commit,
}

/// Bob is behind and nothing in his queue shows it (alice sent nothing after her commit):
/// his own send (or commit) gets `WRONG_EPOCH`; his client processes the queue, sees the
/// DS still at a later epoch, resyncs, and sends the message (builds the commit) again at
/// the new epoch. Alice receives it.
fn restored_member_resyncs_when_refused(server: &TestServer, refused: Refused) {
    // Requirement: CL-RESYNC-1, DS-RESYNC-1, DS-RESYNC-3
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
    bob.run(&["sync"]);
    let backup = tempfile::tempdir().unwrap();
    copy_dir(bob.home(), backup.path());
    alice.run(&["group", "update", "g"]);
    // Bob processes and acknowledges the commit, then his state is restored.
    std::thread::sleep(Duration::from_millis(500));
    bob.run(&["sync"]);
    bob.run(&["sync"]);
    restore(bob.home(), backup.path());

    match refused {
        Refused::Send => bob.run(&["send", "g", "from-behind"]),
        Refused::Commit => {
            bob.run(&["group", "update", "g"]);
            bob.run(&["send", "g", "from-behind"])
        }
    };
    let events = alice.sync_until(DELIVERY, |e| e["text"] == "from-behind");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "member_resynced" && e["member"] == "bob@a.test"),
        "{events:?}"
    );
    let from_bob = events.iter().find(|e| e["text"] == "from-behind").unwrap();
    assert_eq!(from_bob["sender"], "bob@a.test", "{from_bob}");
    assert_eq!(from_bob["verified"], true, "{from_bob}");
    // Bob's next sync says that he resynced.
    let bob_events = sync_events(&bob);
    assert!(
        bob_events
            .iter()
            .any(|e| e["kind"] == "resynced" && e["group"] == "g"),
        "{bob_events:?}"
    );
    // Both are at one epoch: alice's next message reaches bob.
    alice.run(&["send", "g", "to-bob"]);
    bob.sync_until(DELIVERY, |e| e["text"] == "to-bob" && e["verified"] == true);
}
