//! Snapshot adversary (seized disks, a database dump, the log files): after a realistic
//! workload — several users, a federated peer, groups, messages — the raw database and the
//! logs of the homeserver hold no message plaintext, no group name, no group key (EAR or
//! credential key), no friendship secret; the QS and DS tables hold no FID; and no table
//! links an FID to a QS pseudonym or to group membership.
//!
//! Requirement: ADV-SNAP-1, ADV-SNAP-2

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use phoenix_threat_model_tests::{Backend, Homeserver, Logs, User, connect, contains, listener};

async fn snapshot_reveals_nothing(backend: Backend) {
    let logs = Logs::capture();
    let (la, lb) = (listener().await, listener().await);
    let resolve = vec![format!("a.test={}", la.1), format!("b.test={}", lb.1)];
    let Some(a) = Homeserver::start("a.test", backend, la, &resolve).await else {
        return;
    };
    let b = Homeserver::start("b.test", Backend::Sqlite, lb, &resolve)
        .await
        .unwrap();

    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut carol = User::register("carol@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@b.test", &b.url, &resolve).await;
    connect(&mut alice, &mut carol).await;
    connect(&mut alice, &mut bob).await;

    let group_name = format!("secret-group-name-{}", hex::encode(rand_marker()));
    let texts: Vec<String> = (0..4)
        .map(|i| format!("plaintext-marker-{i}-{}", hex::encode(rand_marker())))
        .collect();
    alice.client.create_group(&group_name).await.unwrap();
    alice
        .client
        .invite(&group_name, "carol@a.test")
        .await
        .unwrap();
    alice
        .client
        .invite(&group_name, "bob@b.test")
        .await
        .unwrap();
    let g = group_name.clone();
    carol
        .sync_until(move |e| e["kind"] == "joined" && e["group"] == g.as_str())
        .await;
    let g = group_name.clone();
    bob.sync_until(move |e| e["kind"] == "joined" && e["group"] == g.as_str())
        .await;
    alice.client.send(&group_name, &texts[0]).await.unwrap();
    carol.client.send(&group_name, &texts[1]).await.unwrap();
    bob.client.send(&group_name, &texts[2]).await.unwrap();
    alice.client.update(&group_name).await.unwrap();
    alice.client.send(&group_name, &texts[3]).await.unwrap();
    let last = texts[3].clone();
    bob.sync_until(move |e| e["text"] == last.as_str()).await;
    let last = texts[3].clone();
    carol.sync_until(move |e| e["text"] == last.as_str()).await;
    // Leave some messages unread on the server, too.
    alice
        .client
        .send(&group_name, "unread-plaintext-marker")
        .await
        .unwrap();

    let snapshot = a.snapshot().await;
    let log = logs.bytes();
    assert!(snapshot.tables.contains_key("ds_groups") && snapshot.tables.contains_key("qs_queue"));
    // Positive controls: the snapshot does see what the AS legitimately keeps.
    assert!(
        !snapshot
            .tables_containing("as_users", b"alice@a.test")
            .is_empty()
    );
    assert!(contains(&snapshot.raw, b"carol@a.test"));

    // Secrets only the clients hold.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for text in texts
        .iter()
        .map(String::as_str)
        .chain(["unread-plaintext-marker"])
    {
        secrets.push((format!("message {text}"), text.as_bytes().to_vec()));
    }
    secrets.push(("group name".into(), group_name.as_bytes().to_vec()));
    for user in [&alice, &carol, &bob] {
        let local = user.local().await;
        for group in local.groups().await.unwrap() {
            secrets.push((
                format!("{}'s EAR key of {}", user.fid, group.name),
                group.ear_key.to_vec(),
            ));
            secrets.push((
                format!("{}'s EAR key of {} (hex)", user.fid, group.name),
                hex::encode(group.ear_key).into_bytes(),
            ));
            secrets.push((
                format!("{}'s credential key of {}", user.fid, group.name),
                group.credential_key.to_vec(),
            ));
        }
        let id = local.identity().await.unwrap().unwrap();
        secrets.push((
            format!("{}'s friendship token", user.fid),
            id.friendship_token.to_vec(),
        ));
        secrets.push((
            format!("{}'s friendship key", user.fid),
            id.friendship_key.to_vec(),
        ));
    }
    // Requirement: OPS-KEK-1
    // The server's own private keys: sealed under the key-encryption key, which is not in
    // the database (before keys were sealed, each of these was found in its table).
    secrets.push((
        "the CA signing key".into(),
        a.server.ca().signing_key.to_bytes().to_vec(),
    ));
    secrets.push((
        "the QS signing key".into(),
        a.server.qs_signing_key.to_bytes().to_vec(),
    ));
    secrets.push((
        "the queue-config private key".into(),
        a.server.queue_config_key.private.clone(),
    ));
    for (what, secret) in &secrets {
        assert!(
            !contains(&snapshot.raw, secret),
            "the database holds {what}"
        );
        assert!(!contains(&log, secret), "the logs hold {what}");
    }

    // QS and DS tables hold no FID (of local or remote users), no AS client id.
    let mut identities: Vec<Vec<u8>> = Vec::new();
    for user in [&alice, &carol, &bob] {
        identities.push(user.fid.as_bytes().to_vec());
        let id = user.local().await.identity().await.unwrap().unwrap();
        identities.push(id.client_id.as_bytes().to_vec());
    }
    for needle in &identities {
        let mut found = snapshot.tables_containing("qs_", needle);
        found.extend(snapshot.tables_containing("ds_", needle));
        assert!(
            found.is_empty(),
            "{} appears in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }

    // No AS table holds a QS pseudonym, and no DS table holds one in clear: nothing links
    // an FID to a QS record or to a group membership.
    for user in [&alice, &carol] {
        let id = user.local().await.identity().await.unwrap().unwrap();
        for pseudonym in [id.qs_user_id, id.qs_client_id] {
            let in_as = snapshot.tables_containing("as_", &pseudonym);
            let in_ds = snapshot.tables_containing("ds_", &pseudonym);
            assert!(
                in_as.is_empty() && in_ds.is_empty(),
                "{}'s QS pseudonym appears in {in_as:?} {in_ds:?}",
                user.fid
            );
        }
    }
    // Group ids are visible to the DS (and so in ds_ tables) but appear in no AS or QS table
    // in clear.
    let group_id = alice.client.group(&group_name).await.unwrap().group_id;
    assert!(
        !snapshot
            .tables_containing("ds_groups", &group_id)
            .is_empty()
    );
    // Requirement: QS-ENC-1
    // Every QS table, the queue included: its entries are sealed under each queue's chain,
    // so nothing links a queue pseudonym to a group. (Before queue encryption, `qs_queue`
    // held the fanned-out payload with the group id in clear, and was exempt here.)
    for prefix in ["as_", "qs_"] {
        assert!(
            snapshot.tables_containing(prefix, &group_id).is_empty(),
            "group id in {:?}",
            snapshot.tables_containing(prefix, &group_id)
        );
    }
    // The unread message is in bob's and carol's queues (sealed), and the QS's chain
    // secret for what comes next is in the snapshot; neither opens what is stored.
    for user in [&bob, &carol] {
        let id = user.local().await.identity().await.unwrap().unwrap();
        assert!(
            !contains(&snapshot.raw, id.queue_private_key.as_ref().unwrap()),
            "{}'s queue key is in the database",
            user.fid
        );
    }
    drop(b);
}

fn rand_marker() -> [u8; 8] {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_reveals_nothing() {
    snapshot_reveals_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshot_reveals_nothing() {
    snapshot_reveals_nothing(Backend::Postgres).await;
}
