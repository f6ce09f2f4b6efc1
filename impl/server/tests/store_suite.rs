//! The storage test suite, written once against [`Store`] and run on both backends.
//!
//! Each test is an `async fn(&TestDb)`; the `suite!` macro generates one `#[tokio::test]`
//! per backend for it:
//!
//! - `sqlite::<test>` on a fresh database file in a temporary directory;
//! - `postgres::<test>` in a fresh schema `t_<random hex>` on the server at
//!   `PHOENIX_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   dropped afterwards. If that server is unreachable the Postgres tests print
//!   `skipping postgres: <reason>` and pass, unless `CI=true` or
//!   `PHOENIX_TEST_REQUIRE_POSTGRES=1`, where they fail.
//!
//! Besides the semantics of each method, the suite checks the atomicity the protocol
//! relies on by racing many tokio tasks against one store: packages are never handed
//! out twice, sequence numbers are unique and gapless, and of two compare-and-swap
//! updates exactly one wins.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, SqlitePool};
use tempfile::TempDir;

use phoenix_server::store::QueueKeys;
use phoenix_server::store::postgres::PgStore;
use phoenix_server::store::queue_sealing::QueueSealer;
use phoenix_server::store::{
    AsClientRecord, AsStore, CaRecord, CachedIdCerts, CreateGroup, CreateQsUser, CreateUser,
    DsStore, EnqueueEntry, EphemeralStore, OutboxEntry, QsClientRecord, QsStore, QsUserRecord,
    ReplayRecord, ReplayService, Store, StoreError, StoredConnectionPackage, StoredGroup,
    StoredKeyPackage,
};
use phoenix_types::crypto::HpkeKeyPair;
use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;
use phoenix_types::queue_ratchet::{QueueRatchet, QueueReader};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::sqlite().await;
                    super::$test(&db).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(db) = super::TestDb::postgres().await else {
                        return;
                    };
                    super::$test(&db).await;
                    db.drop_schema().await;
                }
            )*
        }
    };
}

suite! {
    ca_insert_first_is_insert_once,
    as_create_user_is_unique,
    as_certificates_are_kept,
    connection_packages_are_taken_once,
    connection_packages_race,
    expired_connection_packages_are_never_served_and_are_purged,
    direct_queue_semantics,
    direct_queue_race,
    qs_queue_config_key_is_insert_once,
    qs_create_user_rejects_duplicate_friendship_token,
    key_packages_are_replaced_and_taken_one_per_client,
    key_packages_race,
    enqueue_is_monotonic_and_gapless_under_concurrency,
    enqueue_dedup_is_a_no_op,
    dequeue_semantics,
    ds_reserve_and_create,
    ds_expired_reservations_are_purged,
    ds_update_group_is_compare_and_swap,
    ds_update_group_race,
    outbox_append_due_postpone_delete,
    outbox_claims_are_exclusive_and_in_order_per_destination,
    idcert_cache_cap_holds_under_concurrency,
    replayed_writes_change_nothing,
    failed_writes_record_no_replay,
    replayed_write_race,
    replay_records_are_pruned,
}

// Authentication Service --------------------------------------------------------------

async fn ca_insert_first_is_insert_once(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.ca().await.unwrap(), None);

    // Eight processes starting at once: exactly one CA wins and everyone reads it back.
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let ca = ca_record(i);
                let inserted = store.insert_first_ca(&ca).await.unwrap();
                (ca, inserted)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (ca, inserted) = task.await.unwrap();
        if inserted {
            winners.push(ca);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one first CA");
    let current = store.ca().await.unwrap().unwrap();
    assert_eq!(current, winners[0]);
    assert_eq!(current.signing_key, winners[0].signing_key);

    assert!(!store.insert_first_ca(&ca_record(99)).await.unwrap());
    assert_eq!(store.ca().await.unwrap().unwrap(), winners[0]);
}

async fn as_create_user_is_unique(db: &TestDb) {
    let store = &db.store;
    let alice = as_client("alice@example.org", "c1", "01");
    assert_eq!(
        AsStore::create_user(store, &alice, 1_000).await.unwrap(),
        CreateUser::Created
    );
    assert_eq!(
        AsStore::client(store, "alice@example.org", "c1")
            .await
            .unwrap(),
        Some(alice.clone())
    );

    // The FID is taken: nothing of the second attempt is stored.
    let again = as_client("alice@example.org", "c2", "02");
    assert_eq!(
        AsStore::create_user(store, &again, 1_001).await.unwrap(),
        CreateUser::UserExists
    );
    assert_eq!(
        AsStore::client(store, "alice@example.org", "c2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.user_clients("alice@example.org").await.unwrap(),
        vec![alice.clone()]
    );
    assert_eq!(
        store
            .user_certificates("alice@example.org")
            .await
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        AsStore::client(store, "bob@example.org", "c1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        AsStore::client(store, "alice@example.org", "c9")
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .user_clients("bob@example.org")
            .await
            .unwrap()
            .is_empty()
    );

    // A value that does not fit the database is an error and stores nothing.
    let mut too_big = as_client("carol@example.org", "c1", "03");
    too_big.not_after = u64::MAX;
    assert!(matches!(
        AsStore::create_user(store, &too_big, 1_002).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .user_clients("carol@example.org")
            .await
            .unwrap()
            .is_empty()
    );

    // Ten concurrent registrations of one FID: exactly one succeeds.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let client = as_client("dave@example.org", &format!("c{i}"), &format!("d{i:02}"));
                AsStore::create_user(&store, &client, 2_000).await.unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap() == CreateUser::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        store.user_clients("dave@example.org").await.unwrap().len(),
        1
    );
    assert_eq!(
        store
            .user_certificates("dave@example.org")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn as_certificates_are_kept(db: &TestDb) {
    let store = &db.store;
    let alice = as_client("alice@example.org", "c1", "0a");
    let bob = as_client("bob@example.org", "c1", "0b");
    AsStore::create_user(store, &alice, 1_000).await.unwrap();
    AsStore::create_user(store, &bob, 1_000).await.unwrap();

    assert_eq!(
        store.user_certificates("alice@example.org").await.unwrap(),
        vec![(
            "c1".to_owned(),
            alice.certificate.clone(),
            alice.not_before,
            alice.not_after
        )]
    );
    assert_eq!(
        store.user_certificates("bob@example.org").await.unwrap(),
        vec![(
            "c1".to_owned(),
            bob.certificate.clone(),
            bob.not_before,
            bob.not_after
        )]
    );
    assert!(
        store
            .user_certificates("carol@example.org")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn connection_packages_are_taken_once(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    assert_eq!(
        store.take_connection_package(fid, 1_000).await.unwrap(),
        None
    );

    store
        .replace_connection_packages(
            fid,
            "c1",
            &[
                connection_package(b"p1", false),
                connection_package(b"p2", false),
            ],
            &fresh(),
        )
        .await
        .unwrap();
    // Replacing throws the old ones away.
    store
        .replace_connection_packages(
            fid,
            "c1",
            &[
                connection_package(b"q1", false),
                connection_package(b"lr", true),
                connection_package(b"q2", false),
            ],
            &fresh(),
        )
        .await
        .unwrap();
    let take = || async { store.take_connection_package(fid, 1_000).await.unwrap() };
    assert_eq!(take().await, Some(("c1".to_owned(), b"q1".to_vec())));
    assert_eq!(take().await, Some(("c1".to_owned(), b"q2".to_vec())));
    // Only the last-resort package is left: it is handed out and kept.
    assert_eq!(take().await, Some(("c1".to_owned(), b"lr".to_vec())));
    assert_eq!(take().await, Some(("c1".to_owned(), b"lr".to_vec())));

    store
        .replace_connection_packages(fid, "c1", &[connection_package(b"r1", false)], &fresh())
        .await
        .unwrap();
    assert_eq!(take().await, Some(("c1".to_owned(), b"r1".to_vec())));
    assert_eq!(take().await, None);
    assert_eq!(
        store
            .take_connection_package("bob@example.org", 1_000)
            .await
            .unwrap(),
        None
    );
}

// Requirement: AS-CP-7
/// A package whose validity ended is neither served nor consumed, the last-resort one
/// included (the fetch finds nothing); the purge deletes exactly the expired ones, and a
/// package valid for longer stays servable.
async fn expired_connection_packages_are_never_served_and_are_purged(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    store
        .replace_connection_packages(
            fid,
            "c1",
            &[
                expiring_connection_package(b"soon", false, 2_000),
                expiring_connection_package(b"later", false, 5_000),
                expiring_connection_package(b"lr", true, 2_000),
                // A validity past what the database holds is clamped, not refused.
                expiring_connection_package(b"far", false, u64::MAX),
            ],
            &fresh(),
        )
        .await
        .unwrap();
    // At 2_000 "soon" and the last-resort package have expired: "later" and "far" are
    // served, then nothing, and the expired ones are not consumed either.
    let take = |now: u64| async move { store.take_connection_package(fid, now).await.unwrap() };
    assert_eq!(
        take(2_000).await,
        Some(("c1".to_owned(), b"later".to_vec()))
    );
    assert_eq!(take(2_000).await, Some(("c1".to_owned(), b"far".to_vec())));
    assert_eq!(take(2_000).await, None);
    assert_eq!(take(2_000).await, None);
    // Before expiry they were still there, untouched by the refused fetches.
    assert_eq!(take(1_999).await, Some(("c1".to_owned(), b"soon".to_vec())));
    assert_eq!(take(1_999).await, Some(("c1".to_owned(), b"lr".to_vec())));

    // The purge deletes the expired last-resort package and nothing valid.
    store
        .replace_connection_packages(
            fid,
            "c1",
            &[
                expiring_connection_package(b"old", false, 2_000),
                expiring_connection_package(b"lr", true, 2_000),
                expiring_connection_package(b"new", false, 9_000),
            ],
            &fresh(),
        )
        .await
        .unwrap();
    assert_eq!(store.purge_connection_packages(1_999).await.unwrap(), 0);
    assert_eq!(store.purge_connection_packages(2_000).await.unwrap(), 2);
    assert_eq!(store.purge_connection_packages(2_000).await.unwrap(), 0);
    // Only "new" is left, even for a clock that went back.
    assert_eq!(take(1_000).await, Some(("c1".to_owned(), b"new".to_vec())));
    assert_eq!(take(1_000).await, None);
}

async fn connection_packages_race(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    let mut packages: Vec<_> = (0..10)
        .map(|i| connection_package(format!("p{i}").as_bytes(), false))
        .collect();
    packages.push(connection_package(b"lr", true));
    store
        .replace_connection_packages(fid, "c1", &packages, &fresh())
        .await
        .unwrap();

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_connection_package(fid, 1_000).await.unwrap() })
        })
        .collect();
    let mut consumed = Vec::new();
    let mut last_resort = 0;
    for task in tasks {
        let (client, package) = task
            .await
            .unwrap()
            .expect("a package, the last-resort one at worst");
        assert_eq!(client, "c1");
        if package == b"lr" {
            last_resort += 1;
        } else {
            consumed.push(package);
        }
    }
    let distinct: BTreeSet<_> = consumed.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        consumed.len(),
        "a package was handed out twice"
    );
    assert_eq!(
        consumed.len(),
        10,
        "every package is handed out exactly once"
    );
    assert_eq!(last_resort, 40);
}

async fn direct_queue_semantics(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();

    for (i, payload) in [b"m0", b"m1", b"m2"].iter().enumerate() {
        assert_eq!(
            store
                .enqueue_direct(fid, "c1", *payload, &fresh())
                .await
                .unwrap(),
            Some(i as u64)
        );
    }
    assert_eq!(
        store
            .enqueue_direct(fid, "c2", b"x", &fresh())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .enqueue_direct("bob@example.org", "c1", b"x", &fresh())
            .await
            .unwrap(),
        None
    );

    let dequeue =
        |start, max| async move { store.dequeue_direct(fid, "c1", start, max).await.unwrap() };
    assert_eq!(dequeue(0, 0).await, (vec![], 3));
    assert_eq!(
        dequeue(0, 2).await,
        (vec![message(0, b"m0"), message(1, b"m1")], 1)
    );
    // Starting at 2 deletes 0 and 1.
    assert_eq!(dequeue(2, 10).await, (vec![message(2, b"m2")], 0));
    assert_eq!(dequeue(0, 10).await, (vec![message(2, b"m2")], 0));
    assert_eq!(dequeue(3, 10).await, (vec![], 0));
    assert_eq!(dequeue(u64::MAX, 10).await, (vec![], 0));
    // Numbers are never reused, even once the queue is empty.
    assert_eq!(
        store
            .enqueue_direct(fid, "c1", b"m3", &fresh())
            .await
            .unwrap(),
        Some(3)
    );
    assert_eq!(dequeue(0, 10).await, (vec![message(3, b"m3")], 0));
    // Requirement: CL-AMBIG-3
    // A recorded request again appends nothing: `Replayed`, and the next number is still 4.
    let once = fresh();
    assert_eq!(
        store.enqueue_direct(fid, "c1", b"m4", &once).await.unwrap(),
        Some(4)
    );
    assert!(matches!(
        store.enqueue_direct(fid, "c1", b"m4", &once).await,
        Err(StoreError::Replayed)
    ));
    assert_eq!(
        dequeue(3, 10).await,
        (vec![message(3, b"m3"), message(4, b"m4")], 0)
    );
    assert_eq!(
        store
            .dequeue_direct("bob@example.org", "c1", 0, 10)
            .await
            .unwrap(),
        (vec![], 0)
    );
}

async fn direct_queue_race(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let payload = i.to_be_bytes();
                (
                    payload,
                    store
                        .enqueue_direct(fid, "c1", &payload, &fresh())
                        .await
                        .unwrap()
                        .unwrap(),
                )
            })
        })
        .collect();
    let mut by_seq = BTreeMap::new();
    for task in tasks {
        let (payload, seq) = task.await.unwrap();
        assert!(
            by_seq.insert(seq, payload).is_none(),
            "sequence number {seq} assigned twice"
        );
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    let (messages, remaining) = store.dequeue_direct(fid, "c1", 0, 100).await.unwrap();
    assert_eq!(remaining, 0);
    let expected: Vec<_> = by_seq
        .iter()
        .map(|(seq, payload)| message(*seq, payload))
        .collect();
    assert_eq!(messages, expected);
}

// Queuing Service ---------------------------------------------------------------------

async fn qs_queue_config_key_is_insert_once(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.queue_config_key().await.unwrap(), None);
    assert!(
        store
            .insert_queue_config_key(b"private-1", b"public-1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert_queue_config_key(b"private-2", b"public-2")
            .await
            .unwrap()
    );
    assert_eq!(
        store.queue_config_key().await.unwrap(),
        Some((b"private-1".to_vec(), b"public-1".to_vec()))
    );
}

async fn qs_create_user_rejects_duplicate_friendship_token(db: &TestDb) {
    let store = &db.store;
    let (user, client) = qs_user(1, 1);
    assert_eq!(
        QsStore::create_user(store, &user, &client).await.unwrap(),
        CreateQsUser::Created
    );
    assert_eq!(store.user(&user.user_id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store
            .user_by_friendship_token_hash(&user.friendship_token_hash)
            .await
            .unwrap(),
        Some(user.clone())
    );
    // A read leaves out the queue's chain (only an enqueue, which locks it, reads it).
    assert_eq!(
        QsStore::client(store, &client.client_id).await.unwrap(),
        Some(QsClientRecord {
            queue: None,
            ..client.clone()
        })
    );

    // Same friendship token, different ids: rejected, and nothing of it is stored.
    let (mut other, other_client) = qs_user(2, 2);
    other.friendship_token_hash = user.friendship_token_hash;
    assert_eq!(
        QsStore::create_user(store, &other, &other_client)
            .await
            .unwrap(),
        CreateQsUser::DuplicateFriendshipToken
    );
    assert_eq!(store.user(&other.user_id).await.unwrap(), None);
    assert_eq!(
        QsStore::client(store, &other_client.client_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .user_by_friendship_token_hash(&user.friendship_token_hash)
            .await
            .unwrap(),
        Some(user)
    );

    assert_eq!(store.user(&[9; 16]).await.unwrap(), None);
    assert_eq!(
        store.user_by_friendship_token_hash(&[9; 32]).await.unwrap(),
        None
    );
    assert_eq!(QsStore::client(store, &[9; 16]).await.unwrap(), None);
}

async fn key_packages_are_replaced_and_taken_one_per_client(db: &TestDb) {
    let store = &db.store;
    let (user, c1) = qs_user(1, 1);
    QsStore::create_user(store, &user, &c1).await.unwrap();
    // The trait has no "add client" yet; the second and third clients go in directly.
    let c2 = db.add_qs_client(&user.user_id, 2).await;
    // A client without packages is left out of the result.
    db.add_qs_client(&user.user_id, 3).await;
    // Another user's packages are never taken.
    let (stranger, stranger_client) = qs_user(4, 4);
    QsStore::create_user(store, &stranger, &stranger_client)
        .await
        .unwrap();
    store
        .replace_key_packages(
            &stranger_client.client_id,
            &[key_package(b"s1", false)],
            &fresh(),
        )
        .await
        .unwrap();

    assert_eq!(
        store.take_key_packages(&user.user_id).await.unwrap(),
        vec![]
    );

    store
        .replace_key_packages(
            &c1.client_id,
            &[key_package(b"a1", false), key_package(b"a2", false)],
            &fresh(),
        )
        .await
        .unwrap();
    store
        .replace_key_packages(
            &c1.client_id,
            &[key_package(b"b1", false), key_package(b"blr", true)],
            &fresh(),
        )
        .await
        .unwrap();
    store
        .replace_key_packages(
            &c2,
            &[
                key_package(b"xlr", true),
                key_package(b"x1", false),
                key_package(b"x2", false),
            ],
            &fresh(),
        )
        .await
        .unwrap();

    let take = || async { store.take_key_packages(&user.user_id).await.unwrap() };
    assert_eq!(
        take().await,
        vec![(c1.client_id, b"b1".to_vec()), (c2, b"x1".to_vec())]
    );
    assert_eq!(
        take().await,
        vec![(c1.client_id, b"blr".to_vec()), (c2, b"x2".to_vec())]
    );
    assert_eq!(
        take().await,
        vec![(c1.client_id, b"blr".to_vec()), (c2, b"xlr".to_vec())]
    );
    assert_eq!(
        take().await,
        vec![(c1.client_id, b"blr".to_vec()), (c2, b"xlr".to_vec())]
    );

    store
        .replace_key_packages(&c1.client_id, &[], &fresh())
        .await
        .unwrap();
    assert_eq!(take().await, vec![(c2, b"xlr".to_vec())]);
    assert_eq!(
        store.take_key_packages(&stranger.user_id).await.unwrap(),
        vec![(stranger_client.client_id, b"s1".to_vec())]
    );
    assert_eq!(store.take_key_packages(&[9; 16]).await.unwrap(), vec![]);
}

async fn key_packages_race(db: &TestDb) {
    let store = &db.store;
    let (user, c1) = qs_user(1, 1);
    QsStore::create_user(store, &user, &c1).await.unwrap();
    let c2 = db.add_qs_client(&user.user_id, 2).await;
    let packages = |prefix: &str, n: usize| {
        let mut packages: Vec<_> = (0..n)
            .map(|i| key_package(format!("{prefix}{i}").as_bytes(), false))
            .collect();
        packages.push(key_package(format!("{prefix}lr").as_bytes(), true));
        packages
    };
    store
        .replace_key_packages(&c1.client_id, &packages("a", 30), &fresh())
        .await
        .unwrap();
    store
        .replace_key_packages(&c2, &packages("b", 10), &fresh())
        .await
        .unwrap();

    let user_id = user.user_id;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_key_packages(&user_id).await.unwrap() })
        })
        .collect();
    let mut consumed: BTreeMap<QsId, Vec<Vec<u8>>> = BTreeMap::new();
    let mut last_resort: BTreeMap<QsId, usize> = BTreeMap::new();
    for task in tasks {
        let taken = task.await.unwrap();
        let clients: Vec<_> = taken.iter().map(|(client, _)| *client).collect();
        assert_eq!(
            clients,
            vec![c1.client_id, c2],
            "one package per client, every time"
        );
        for (client, package) in taken {
            if package.ends_with(b"lr") {
                *last_resort.entry(client).or_default() += 1;
            } else {
                consumed.entry(client).or_default().push(package);
            }
        }
    }
    for (client, expected) in [(c1.client_id, 30), (c2, 10)] {
        let packages = consumed.remove(&client).unwrap_or_default();
        let distinct: BTreeSet<_> = packages.iter().collect();
        assert_eq!(
            distinct.len(),
            packages.len(),
            "a key package was handed out twice"
        );
        assert_eq!(
            packages.len(),
            expected,
            "every key package is handed out exactly once"
        );
        assert_eq!(
            last_resort.get(&client).copied().unwrap_or(0),
            100 - expected
        );
    }
}

async fn enqueue_is_monotonic_and_gapless_under_concurrency(db: &TestDb) {
    let store = &db.store;
    let mut clients = Vec::new();
    for n in 1..=4 {
        let (user, client) = qs_user(n, n);
        QsStore::create_user(store, &user, &client).await.unwrap();
        clients.push(client.client_id);
    }

    // Forty fan-outs over all four queues, each listing the clients in a different order
    // (so a backend that locked them in list order would deadlock), plus single enqueues.
    let tasks: Vec<_> = (0..40usize)
        .map(|i| {
            let store = store.clone();
            let mut order = clients.clone();
            order.rotate_left(i % 4);
            if i % 2 == 1 {
                order.reverse();
            }
            tokio::spawn(async move {
                let entries: Vec<_> = order
                    .iter()
                    .map(|client| EnqueueEntry {
                        client_id: *client,
                        payload: format!("fan-out {i}").into_bytes(),
                        dedup: None,
                    })
                    .collect();
                let seqs = store.enqueue(&entries, &CHAIN).await.unwrap();
                let single = EnqueueEntry {
                    client_id: order[0],
                    payload: format!("single {i}").into_bytes(),
                    dedup: None,
                };
                let single_seq = store
                    .enqueue(std::slice::from_ref(&single), &CHAIN)
                    .await
                    .unwrap();
                entries
                    .into_iter()
                    .chain([single])
                    .zip(seqs.into_iter().chain(single_seq))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_client: BTreeMap<QsId, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for task in tasks {
        for (entry, seq) in task.await.unwrap() {
            let seq = seq.expect("known client, no dedup");
            let previous = by_client
                .entry(entry.client_id)
                .or_default()
                .insert(seq, entry.payload);
            assert!(previous.is_none(), "sequence number {seq} assigned twice");
        }
    }
    let mut total = 0;
    for client in &clients {
        let assigned = by_client.remove(client).unwrap_or_default();
        let n = assigned.len() as u64;
        total += n;
        assert_eq!(
            assigned.keys().copied().collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>(),
            "gapless from 0"
        );
        let (messages, remaining) = db.read(client, 0, 1_000).await;
        assert_eq!(remaining, 0);
        let expected: Vec<_> = assigned
            .iter()
            .map(|(seq, payload)| message(*seq, payload))
            .collect();
        assert_eq!(
            messages, expected,
            "stored in order, with the payload each number was reported for"
        );
    }
    assert_eq!(total, 40 * 4 + 40);
}

async fn enqueue_dedup_is_a_no_op(db: &TestDb) {
    let store = &db.store;
    let (u1, c1) = qs_user(1, 1);
    let (u2, c2) = qs_user(2, 2);
    QsStore::create_user(store, &u1, &c1).await.unwrap();
    QsStore::create_user(store, &u2, &c2).await.unwrap();
    let (c1, c2) = (c1.client_id, c2.client_id);
    let entry = |client: QsId, payload: &[u8], dedup: Option<u8>| EnqueueEntry {
        client_id: client,
        payload: payload.to_vec(),
        dedup: dedup.map(|d| [d; 16]),
    };

    assert_eq!(store.enqueue(&[], &SEALER).await.unwrap(), vec![]);
    assert_eq!(
        store
            .enqueue(&[entry(c1, b"a", Some(1))], &SEALER)
            .await
            .unwrap(),
        vec![Some(0)]
    );
    // A repeated delivery is a no-op: no new number, no new message.
    assert_eq!(
        store
            .enqueue(&[entry(c1, b"a again", Some(1))], &SEALER)
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(
        store
            .enqueue(&[entry(c1, b"b", Some(2))], &SEALER)
            .await
            .unwrap(),
        vec![Some(1)]
    );
    // Keys are per queue.
    assert_eq!(
        store
            .enqueue(&[entry(c2, b"a", Some(1))], &SEALER)
            .await
            .unwrap(),
        vec![Some(0)]
    );
    // Within one batch too; unknown clients get None; entries without a key never collide.
    assert_eq!(
        store
            .enqueue(
                &[
                    entry(c1, b"c", Some(3)),
                    entry(c1, b"c again", Some(3)),
                    entry(c1, b"d", None),
                    entry([9; 16], b"lost", None),
                    entry(c1, b"e", None),
                    entry(c2, b"f", Some(2)),
                ],
                &SEALER,
            )
            .await
            .unwrap(),
        vec![Some(2), None, Some(3), None, Some(4), Some(1)]
    );
    assert_eq!(
        store
            .enqueue(&[entry([9; 16], b"lost", Some(4))], &SEALER)
            .await
            .unwrap(),
        vec![None]
    );

    let (messages, remaining) = db.read(&c1, 0, 100).await;
    assert_eq!(remaining, 0);
    assert_eq!(
        messages,
        vec![
            message(0, b"a"),
            message(1, b"b"),
            message(2, b"c"),
            message(3, b"d"),
            message(4, b"e")
        ]
    );
    assert_eq!(
        db.read(&c2, 0, 100).await,
        (vec![message(0, b"a"), message(1, b"f")], 0)
    );

    // Concurrent deliveries of one entry: exactly one is enqueued.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(&[entry(c2, b"once", Some(7))], &SEALER)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut enqueued = Vec::new();
    for task in tasks {
        enqueued.extend(task.await.unwrap().into_iter().flatten());
    }
    assert_eq!(enqueued, vec![2]);

    // Requirement: QS-DEDUP-1
    // The recipient acknowledges everything (the rows are deleted); the same entry
    // delivered again (an outbox entry whose delete was lost to a crash, claimed again
    // once its lease ran out) is still a duplicate. Before the QS kept its own records,
    // the check looked only at the queue rows, and this delivered the message twice.
    assert_eq!(db.read(&c2, 3, 100).await, (vec![], 0));
    assert_eq!(
        store
            .enqueue(
                &[entry(c2, b"once", Some(7)), entry(c2, b"new", Some(8))],
                &SEALER
            )
            .await
            .unwrap(),
        vec![None, Some(3)]
    );
    // The records are pruned after their retention, not before.
    let now = phoenix_server::server::now();
    assert_eq!(store.prune_qs_delivered(now - 3600).await.unwrap(), 0);
    assert!(store.prune_qs_delivered(now + 10).await.unwrap() >= 4);
}

async fn dequeue_semantics(db: &TestDb) {
    let store = &db.store;
    let (user, client) = qs_user(1, 1);
    QsStore::create_user(store, &user, &client).await.unwrap();
    let client = client.client_id;
    for i in 0..5u8 {
        let entry = EnqueueEntry {
            client_id: client,
            payload: vec![i],
            dedup: None,
        };
        assert_eq!(
            store.enqueue(&[entry], &SEALER).await.unwrap(),
            vec![Some(u64::from(i))]
        );
    }
    let dequeue = |start, max| async move { db.read(&client, start, max).await };
    assert_eq!(dequeue(0, 0).await, (vec![], 5));
    assert_eq!(
        dequeue(0, 2).await,
        (vec![message(0, &[0]), message(1, &[1])], 3)
    );
    // Re-reading from the same start returns the same page: nothing was acknowledged.
    assert_eq!(
        dequeue(0, 2).await,
        (vec![message(0, &[0]), message(1, &[1])], 3)
    );
    // Starting at 3 acknowledges (deletes) 0, 1 and 2.
    assert_eq!(dequeue(3, 1).await, (vec![message(3, &[3])], 1));
    assert_eq!(
        dequeue(0, 10).await,
        (vec![message(3, &[3]), message(4, &[4])], 0)
    );
    assert_eq!(dequeue(5, 10).await, (vec![], 0));
    assert_eq!(dequeue(u64::MAX, 10).await, (vec![], 0));
    let entry = EnqueueEntry {
        client_id: client,
        payload: vec![5],
        dedup: None,
    };
    assert_eq!(
        store.enqueue(&[entry], &SEALER).await.unwrap(),
        vec![Some(5)],
        "numbers are never reused"
    );
    assert_eq!(db.read(&[9; 16], 0, 10).await, (vec![], 0));
}

// Delivery Service ----------------------------------------------------------------------

/// 2026-11-15T00:00:00Z.
const NOW: u64 = 1_794_700_800;

// Requirement: DS-GID-1
async fn ds_reserve_and_create(db: &TestDb) {
    let store = &db.store;
    let (g1, g2) = (group_id(1), group_id(2));
    assert_eq!(
        store.create_group(&g1, b"ct", NOW, &fresh()).await.unwrap(),
        CreateGroup::NotReserved
    );

    assert!(store.reserve_group_id(&g1, NOW + 60).await.unwrap());
    assert!(
        !store.reserve_group_id(&g1, NOW + 120).await.unwrap(),
        "already reserved"
    );
    // Expired at `now` (expires_at <= now): not a reservation any more.
    assert_eq!(
        store
            .create_group(&g1, b"ct", NOW + 60, &fresh())
            .await
            .unwrap(),
        CreateGroup::NotReserved
    );
    assert_eq!(
        store
            .create_group(&g1, b"ct", NOW + 61, &fresh())
            .await
            .unwrap(),
        CreateGroup::NotReserved
    );
    assert_eq!(store.group(&g1).await.unwrap(), None);

    assert!(store.reserve_group_id(&g2, NOW + 60).await.unwrap());
    assert_eq!(
        store
            .create_group(&g2, b"state", NOW + 59, &fresh())
            .await
            .unwrap(),
        CreateGroup::Created
    );
    assert_eq!(
        store.group(&g2).await.unwrap(),
        Some(StoredGroup {
            ciphertext: b"state".to_vec(),
            version: 0
        })
    );
    assert_eq!(
        store
            .create_group(&g2, b"other", NOW, &fresh())
            .await
            .unwrap(),
        CreateGroup::Exists
    );
    assert!(
        !store.reserve_group_id(&g2, NOW + 60).await.unwrap(),
        "in use"
    );
    assert_eq!(
        store.group(&g2).await.unwrap().unwrap().ciphertext,
        b"state"
    );

    assert!(matches!(
        store.reserve_group_id(&group_id(3), u64::MAX).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.group(&group_id(3)).await.unwrap(), None);
}

// Requirement: DS-GID-2
/// The purge deletes exactly the reservations that expired unused: not a live one, not
/// one already used by its group (deleted then), and the group stays.
async fn ds_expired_reservations_are_purged(db: &TestDb) {
    let store = &db.store;
    let (g1, g2, g3) = (group_id(1), group_id(2), group_id(3));
    assert!(store.reserve_group_id(&g1, NOW + 60).await.unwrap());
    assert!(store.reserve_group_id(&g2, NOW + 120).await.unwrap());
    assert!(store.reserve_group_id(&g3, NOW + 120).await.unwrap());
    assert_eq!(
        store
            .create_group(&g3, b"state", NOW, &fresh())
            .await
            .unwrap(),
        CreateGroup::Created
    );
    assert_eq!(store.purge_group_reservations(NOW + 59).await.unwrap(), 0);
    assert_eq!(store.purge_group_reservations(NOW + 60).await.unwrap(), 1);
    assert_eq!(store.purge_group_reservations(NOW + 60).await.unwrap(), 0);
    // g2 is still reserved (a clock that went back may still use it); g1 is gone.
    assert_eq!(
        store
            .create_group(&g1, b"state", NOW, &fresh())
            .await
            .unwrap(),
        CreateGroup::NotReserved
    );
    assert_eq!(
        store
            .create_group(&g2, b"state", NOW + 61, &fresh())
            .await
            .unwrap(),
        CreateGroup::Created
    );
    assert_eq!(store.purge_group_reservations(u64::MAX).await.unwrap(), 0);
    assert_eq!(
        store.group(&g3).await.unwrap().unwrap().ciphertext,
        b"state"
    );
}

async fn ds_update_group_is_compare_and_swap(db: &TestDb) {
    let store = &db.store;
    let g = group_id(1);
    assert!(
        store
            .update_group(&g, 0, b"v1", NOW, &[outbox_entry(1)], &fresh())
            .await
            .unwrap()
            .is_none(),
        "no such group"
    );
    assert!(store.due_outbox(u64::MAX, 100).await.unwrap().is_empty());

    store.reserve_group_id(&g, NOW + 60).await.unwrap();
    store.create_group(&g, b"v0", NOW, &fresh()).await.unwrap();
    assert!(
        store
            .update_group(
                &g,
                0,
                b"v1",
                NOW,
                &[outbox_entry(1), outbox_entry(2)],
                &fresh()
            )
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.group(&g).await.unwrap(),
        Some(StoredGroup {
            ciphertext: b"v1".to_vec(),
            version: 1
        })
    );

    // A stale version changes nothing, outbox included.
    assert!(
        store
            .update_group(&g, 0, b"stale", NOW, &[outbox_entry(3)], &fresh())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.group(&g).await.unwrap(),
        Some(StoredGroup {
            ciphertext: b"v1".to_vec(),
            version: 1
        })
    );
    assert!(
        store
            .update_group(&g, 1, b"v2", NOW, &[], &fresh())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.group(&g).await.unwrap().unwrap().version, 2);

    let due: Vec<_> = store
        .due_outbox(u64::MAX, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry)
        .collect();
    assert_eq!(due, vec![outbox_entry(1), outbox_entry(2)]);
}

async fn ds_update_group_race(db: &TestDb) {
    let store = &db.store;
    for round in 0..5u8 {
        let g = group_id(round);
        store.reserve_group_id(&g, NOW + 60).await.unwrap();
        store.create_group(&g, b"v0", NOW, &fresh()).await.unwrap();
        let tasks: Vec<_> = (0..2u8)
            .map(|i| {
                let store = store.clone();
                let g = g.clone();
                tokio::spawn(async move {
                    let won = store
                        .update_group(&g, 0, &[i], NOW, &[outbox_entry(10 * round + i)], &fresh())
                        .await
                        .unwrap()
                        .is_some();
                    (i, won)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (i, won) = task.await.unwrap();
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one of two racing updates wins");
        let winner = winners[0];
        assert_eq!(
            store.group(&g).await.unwrap(),
            Some(StoredGroup {
                ciphertext: vec![winner],
                version: 1
            })
        );
        let due: Vec<_> = store.due_outbox(u64::MAX, 100).await.unwrap();
        assert_eq!(
            due.last().map(|(_, entry)| entry.clone()),
            Some(outbox_entry(10 * round + winner))
        );
        assert_eq!(
            due.len(),
            usize::from(round) + 1,
            "only the winner's outbox entries are kept"
        );
    }
}

async fn outbox_append_due_postpone_delete(db: &TestDb) {
    let store = &db.store;
    assert!(
        store
            .append_message_outbox(&[0; 32], NOW, &[])
            .await
            .unwrap()
            .is_some()
    );
    store.delete_outbox(&[]).await.unwrap();
    assert!(store.due_outbox(NOW, 10).await.unwrap().is_empty());

    assert!(
        store
            .append_message_outbox(
                &[1; 32],
                NOW,
                &[outbox_entry(1), outbox_entry(2), outbox_entry(3)]
            )
            .await
            .unwrap()
            .is_some()
    );
    let due = store.due_outbox(NOW, 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|(_, entry)| entry.clone())
            .collect::<Vec<_>>(),
        vec![outbox_entry(1), outbox_entry(2), outbox_entry(3)]
    );
    let ids: Vec<i64> = due.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "oldest first");
    assert_eq!(store.due_outbox(NOW, 2).await.unwrap(), due[..2].to_vec());
    assert_eq!(
        store.due_outbox(0, 10).await.unwrap(),
        due,
        "new entries are due at once"
    );

    // A failed attempt: the entry waits until its next attempt is due.
    store.postpone_outbox(ids[0], NOW + 30).await.unwrap();
    assert_eq!(store.due_outbox(NOW, 10).await.unwrap(), due[1..].to_vec());
    assert_eq!(
        store.due_outbox(NOW + 29, 10).await.unwrap(),
        due[1..].to_vec()
    );
    assert_eq!(store.due_outbox(NOW + 30, 10).await.unwrap(), due);
    assert!(matches!(
        store.postpone_outbox(ids[0], u64::MAX).await,
        Err(StoreError::Corrupt(_))
    ));

    store
        .delete_outbox(&[ids[1], ids[2], 123_456])
        .await
        .unwrap();
    assert_eq!(
        store.due_outbox(u64::MAX, 10).await.unwrap(),
        due[..1].to_vec()
    );
    // Requirement: ADV-REPLAY-2
    // A message recorded before (a replay) appends nothing, even with other entries.
    assert!(
        store
            .append_message_outbox(&[1; 32], NOW + 1, &[outbox_entry(5)])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .append_message_outbox(&[2; 32], NOW + 1, &[outbox_entry(4)])
            .await
            .unwrap()
            .is_some()
    );
    let due = store.due_outbox(u64::MAX, 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|(_, entry)| entry.clone())
            .collect::<Vec<_>>(),
        vec![outbox_entry(1), outbox_entry(4)]
    );
    store
        .delete_outbox(&due.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(store.due_outbox(u64::MAX, 10).await.unwrap().is_empty());

    // Replay records are pruned by age: only those received before the cut-off go, and a
    // pruned digest can be recorded again.
    assert_eq!(store.prune_ds_seen(NOW + 1).await.unwrap(), 2);
    assert!(
        store
            .append_message_outbox(&[0; 32], NOW, &[])
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .append_message_outbox(&[2; 32], NOW, &[])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.prune_ds_seen(u64::MAX).await.unwrap(), 2);
}

// Ephemeral rows ------------------------------------------------------------------------

// Requirement: ID-CACHE-2
/// Many servers' worth of concurrent cache fills (distinct FIDs) never leave more entries
/// than the cap.
async fn idcert_cache_cap_holds_under_concurrency(db: &TestDb) {
    const CAP: u64 = 5;
    let store = &db.store;
    for round in 0..4u64 {
        let tasks: Vec<_> = (0..24u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let entry = CachedIdCerts {
                        fid: format!("u{round}x{i}@c.test"),
                        answer: "[]".to_owned(),
                        not_valid_after: NOW + 1_000 + i,
                        fetched_at: NOW,
                    };
                    store.put_cached_idcerts(&entry, NOW, CAP).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let len = store.idcert_cache_len().await.unwrap();
        assert!(
            len <= CAP,
            "round {round}: {len} entries in a cache of {CAP}"
        );
    }
}

// Backend-independent checks ------------------------------------------------------------

#[tokio::test]
async fn store_connect_rejects_unknown_urls_and_names_backends() {
    assert!(matches!(
        Store::connect("mysql://localhost/db").await,
        Err(StoreError::UnsupportedUrl)
    ));
    assert!(matches!(
        Store::connect("").await,
        Err(StoreError::UnsupportedUrl)
    ));
    let db = TestDb::sqlite().await;
    assert_eq!(db.store.backend_name(), "sqlite");
    let memory = Store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(memory.backend_name(), "sqlite");
    assert!(memory.reserve_group_id(b"g", 1).await.unwrap());
}

#[tokio::test]
async fn postgres_schema_names_are_validated() {
    for bad in [
        "",
        "Upper",
        "1abc",
        "a-b",
        "a;drop",
        "a\"b",
        &"x".repeat(64),
    ] {
        assert!(
            PgStore::connect_with_schema(DEFAULT_POSTGRES_URL, bad)
                .await
                .is_err(),
            "{bad:?} accepted"
        );
    }
}

// Fixtures --------------------------------------------------------------------------------

/// A store under test, plus a second, raw connection to the same database for the few
/// set-up steps the traits do not offer.
struct TestDb {
    store: Store,
    raw: Raw,
    /// The owners' reading of the sealed QS queues (QS-ENC-1), by client.
    readers: std::sync::Mutex<BTreeMap<QsId, Reader>>,
    /// The SQLite file's directory, removed on drop.
    _dir: Option<TempDir>,
    /// The Postgres URL and schema, dropped by [`TestDb::drop_schema`].
    postgres: Option<(String, String)>,
}

enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.backend_name(), "sqlite");
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let raw = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        Self {
            store,
            raw: Raw::Sqlite(raw),
            readers: Default::default(),
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// `None` (after saying why) if no Postgres server is reachable, outside CI.
    async fn postgres() -> Option<Self> {
        let url = std::env::var("PHOENIX_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        // Tell "no server" apart from a failure of the code under test: only the first
        // is a reason to skip.
        match PgConnection::connect(&url).await {
            Ok(connection) => connection.close().await.unwrap(),
            Err(error) if postgres_required() => {
                panic!(
                    "postgres is required (CI=true or PHOENIX_TEST_REQUIRE_POSTGRES=1) \
                     but unreachable: {error}"
                )
            }
            Err(error) => {
                eprintln!("skipping postgres: {error}");
                return None;
            }
        }
        let schema = format!("t_{:016x}", OsRng.next_u64());
        let store = Store::Postgres(PgStore::connect_with_schema(&url, &schema).await.unwrap());
        assert_eq!(store.backend_name(), "postgres");
        let options = PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        let raw = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        Some(Self {
            store,
            raw: Raw::Postgres(raw),
            readers: Default::default(),
            _dir: None,
            postgres: Some((url, schema)),
        })
    }

    async fn drop_schema(self) {
        let Self {
            store,
            raw,
            postgres,
            ..
        } = self;
        let Some((url, schema)) = postgres else {
            return;
        };
        // Close our connections first so that nothing holds the schema's tables.
        if let Raw::Postgres(pool) = raw {
            pool.close().await;
        }
        drop(store);
        let mut connection = PgConnection::connect(&url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();
    }

    /// Add a QS client to an existing user; returns its id.
    async fn add_qs_client(&self, user_id: &QsId, n: u8) -> QsId {
        let client_id = [n; 16];
        let auth_key = [n; 32];
        match &self.raw {
            Raw::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO qs_clients (client_id, user_id, auth_key) VALUES (?, ?, ?)",
                )
                .bind(client_id.as_slice())
                .bind(user_id.as_slice())
                .bind(auth_key.as_slice())
                .execute(pool)
                .await
                .unwrap();
            }
            Raw::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO qs_clients (client_id, user_id, auth_key) VALUES ($1, $2, $3)",
                )
                .bind(client_id.as_slice())
                .bind(user_id.as_slice())
                .bind(auth_key.as_slice())
                .execute(pool)
                .await
                .unwrap();
            }
        }
        client_id
    }
}

/// Whether the Postgres tests must fail rather than skip when there is no server: on CI
/// (`CI=true`) or when asked to (`PHOENIX_TEST_REQUIRE_POSTGRES=1`), as in
/// `scripts/test.sh` and the end-to-end tests.
fn postgres_required() -> bool {
    let set = |name: &str| {
        std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
    };
    set("PHOENIX_TEST_REQUIRE_POSTGRES") || set("CI")
}

fn ca_record(n: u8) -> CaRecord {
    CaRecord {
        signing_key: vec![n; 32],
        certificate: vec![n; 100],
        not_before: 1_000,
        not_after: 2_000_000_000,
    }
}

fn as_client(fid: &str, client_id: &str, serial: &str) -> AsClientRecord {
    AsClientRecord {
        fid: fid.to_owned(),
        client_id: client_id.to_owned(),
        certificate: format!("certificate of {client_id} of {fid}").into_bytes(),
        public_key: [7; 32],
        serial: serial.to_owned(),
        not_before: 1_000,
        not_after: 2_000_000_000,
    }
}

fn connection_package(package: &[u8], last_resort: bool) -> StoredConnectionPackage {
    expiring_connection_package(package, last_resort, 2_000_000_000)
}

fn expiring_connection_package(
    package: &[u8],
    last_resort: bool,
    not_after: u64,
) -> StoredConnectionPackage {
    StoredConnectionPackage {
        package: package.to_vec(),
        last_resort,
        not_after,
    }
}

/// A QS user with id `[user; 16]` and its first client `[client; 16]`.
fn qs_user(user: u8, client: u8) -> (QsUserRecord, QsClientRecord) {
    (
        QsUserRecord {
            user_id: [user; 16],
            auth_key: [user; 32],
            friendship_token_hash: [user ^ 0x80; 32],
        },
        QsClientRecord {
            client_id: [client; 16],
            user_id: [user; 16],
            auth_key: [client ^ 0x40; 32],
            queue: Some(QueueKeys {
                queue_key: QUEUE_KEY.public.clone(),
                ratchet: QueueRatchet::from_secret([client; 32]),
            }),
        },
    )
}

/// The queue key of every test client record (its private half opens the ratchet updates).
static QUEUE_KEY: std::sync::LazyLock<HpkeKeyPair> =
    std::sync::LazyLock::new(|| HpkeKeyPair::generate(&mut OsRng).unwrap());

/// How the tests seal queue entries: the server's default.
const SEALER: QueueSealer = QueueSealer {
    update_interval: phoenix_server::store::queue_sealing::DEFAULT_UPDATE_INTERVAL,
};

/// A short interval, so that concurrent enqueues cross many ratchet updates.
const CHAIN: QueueSealer = QueueSealer { update_interval: 3 };

/// A test client's reading of its queue: the chain, and what it opened so far.
struct Reader {
    reader: QueueReader,
    opened: BTreeMap<u64, Vec<u8>>,
}

impl TestDb {
    // Requirement: QS-ENC-1
    /// A dequeue, with each entry opened as its owner would (entries read before are
    /// remembered: a dequeue may return them again). Every entry must open: a queue whose
    /// chain forked, or an entry stored unsealed, fails here.
    async fn read(&self, client: &QsId, start: u64, max: u32) -> (Vec<QueueMessage>, u64) {
        let (messages, remaining) = self.store.dequeue(client, start, max).await.unwrap();
        let mut readers = self.readers.lock().unwrap();
        let reader = readers.entry(*client).or_insert_with(|| Reader {
            reader: QueueReader::new(*client, QUEUE_KEY.private.clone(), 0, [client[0]; 32]),
            opened: BTreeMap::new(),
        });
        let mut opened = Vec::new();
        for m in messages {
            let seq = m.sequence_number;
            let payload = match reader.opened.get(&seq) {
                Some(payload) => payload.clone(),
                None => {
                    let payload = reader
                        .reader
                        .open(seq, m.payload.as_slice())
                        .unwrap_or_else(|e| panic!("entry {seq} of {client:?}: {e}"));
                    reader.opened.insert(seq, payload.clone());
                    payload
                }
            };
            opened.push(message(seq, &payload));
        }
        (opened, remaining)
    }
}

fn key_package(add_package: &[u8], last_resort: bool) -> StoredKeyPackage {
    StoredKeyPackage {
        add_package: add_package.to_vec(),
        last_resort,
    }
}

fn message(sequence_number: u64, payload: &[u8]) -> QueueMessage {
    QueueMessage {
        sequence_number,
        payload: payload.to_vec().into(),
    }
}

/// A group id as the DS uses them: 16 random bytes and the DS's domain.
fn group_id(n: u8) -> Vec<u8> {
    let mut id = vec![n; 16];
    id.extend_from_slice(b"example.org");
    id
}

/// A replay record no other write used (a random digest), received at [`NOW`].
fn fresh() -> ReplayRecord {
    let mut digest = [0u8; 32];
    OsRng.fill_bytes(&mut digest);
    ReplayRecord {
        digest,
        received_at: NOW,
    }
}

fn assert_replayed<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Replayed)),
        "expected Replayed, got {result:?}"
    );
}

// Requirement: DS-OUTBOX-2, FED-ORDER-1
async fn outbox_claims_are_exclusive_and_in_order_per_destination(db: &TestDb) {
    let store = &db.store;
    let to = |destination: &str, queue: u8, n: u8| OutboxEntry {
        destination: destination.into(),
        ..outbox_entry(n).with_queue(queue)
    };
    // Remote b.test: 1, 2 (queues 1, 2); local a.test: 3, 4 (queue 1), 5 (queue 2).
    let first = store
        .append_message_outbox(
            &[1; 32],
            NOW,
            &[to("b.test", 1, 1), to("b.test", 2, 2), to("a.test", 1, 3)],
        )
        .await
        .unwrap()
        .unwrap();
    let second = store
        .append_message_outbox(&[2; 32], NOW, &[to("a.test", 1, 4), to("a.test", 2, 5)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().chain(&second).is_sorted());

    // A request claims only its own local entries, and not one waiting behind an older
    // entry of its queue that is not its own: 4 waits for 3, 5 goes.
    let claimed = store
        .claim_outbox(&second, "a.test", NOW, NOW + 60)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![second[1]]
    );
    // Nobody takes a claimed entry again.
    assert!(
        store
            .claim_outbox(&second[1..], "a.test", NOW, NOW + 60)
            .await
            .unwrap()
            .is_empty()
    );
    // The worker takes the rest, oldest first (4 now behind 3, which it takes too).
    let worker = store
        .claim_due_outbox("a.test", NOW, NOW + 60, 100)
        .await
        .unwrap();
    assert_eq!(
        worker.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![first[0], first[1], first[2], second[0]]
    );
    assert!(
        store
            .claim_due_outbox("a.test", NOW, NOW + 60, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // A claim runs out: the entries can be taken again (a deliverer died).
    assert_eq!(
        store
            .claim_due_outbox("a.test", NOW + 60, NOW + 120, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    store.release_outbox(&first).await.unwrap();
    store.release_outbox(&second).await.unwrap();

    // b.test fails: its entries are postponed together, and a newer b.test entry (even
    // for another queue) waits behind them instead of overtaking.
    store
        .postpone_destination("b.test", first[0], NOW + 30)
        .await
        .unwrap();
    assert_eq!(store.outbox_attempts(first[0]).await.unwrap(), 1);
    assert_eq!(store.outbox_attempts(first[1]).await.unwrap(), 0);
    let third = store
        .append_message_outbox(&[3; 32], NOW, &[to("b.test", 3, 6)])
        .await
        .unwrap()
        .unwrap();
    let ids = |claimed: Vec<(i64, OutboxEntry)>| {
        claimed.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store
            .claim_due_outbox("a.test", NOW, NOW + 60, 100)
            .await
            .unwrap()),
        vec![first[2], second[0], second[1]]
    );
    assert_eq!(
        ids(store
            .claim_due_outbox("a.test", NOW + 30, NOW + 90, 100)
            .await
            .unwrap()),
        vec![first[0], first[1], third[0]]
    );
}

trait WithQueue {
    fn with_queue(self, queue: u8) -> Self;
}

impl WithQueue for OutboxEntry {
    fn with_queue(mut self, queue: u8) -> Self {
        self.queue_config = vec![queue; 40];
        self
    }
}

fn outbox_entry(n: u8) -> OutboxEntry {
    OutboxEntry {
        destination: format!("qs{n}.example.org"),
        queue_config: vec![n; 40],
        payload: vec![n; 200],
        dedup: [n; 16],
        // Both values, so that the column round-trips (QS-PUSH-4).
        notify: n.is_multiple_of(2),
    }
}

// Replay records of signed requests ---------------------------------------------------

// Requirement: ADV-REPLAY-3
/// Every write that takes a replay record records it with its effect; the same record
/// again fails with `Replayed` and changes nothing (in particular, packages handed out in
/// between are not restored). Each service has its own records.
async fn replayed_writes_change_nothing(db: &TestDb) {
    let store = &db.store;
    // AS: connection packages.
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    let publish = fresh();
    let packages = [
        connection_package(b"p1", false),
        connection_package(b"lr", true),
    ];
    store
        .replace_connection_packages(fid, "c1", &packages, &publish)
        .await
        .unwrap();
    assert!(
        store
            .request_seen(ReplayService::As, &publish.digest)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_seen(ReplayService::Qs, &publish.digest)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_seen(ReplayService::Ds, &publish.digest)
            .await
            .unwrap()
    );
    assert_eq!(
        store.take_connection_package(fid, NOW).await.unwrap(),
        Some(("c1".to_owned(), b"p1".to_vec()))
    );
    assert_replayed(
        store
            .replace_connection_packages(fid, "c1", &packages, &publish)
            .await,
    );
    // p1 stays taken: only the last-resort package is left.
    assert_eq!(
        store.take_connection_package(fid, NOW).await.unwrap(),
        Some(("c1".to_owned(), b"lr".to_vec()))
    );

    // AS: renewal.
    let renewal = fresh();
    let renewed = as_client(fid, "c1", "02");
    assert!(store.renew_client(&renewed, &renewal).await.unwrap());
    assert_replayed(
        store
            .renew_client(&as_client(fid, "c1", "03"), &renewal)
            .await,
    );
    assert_eq!(
        AsStore::client(store, fid, "c1")
            .await
            .unwrap()
            .unwrap()
            .serial,
        "02"
    );
    assert_eq!(store.user_certificates(fid).await.unwrap().len(), 2);

    // QS: key packages.
    let (user, client) = qs_user(1, 1);
    QsStore::create_user(store, &user, &client).await.unwrap();
    let publish = fresh();
    let packages = [key_package(b"k1", false), key_package(b"klr", true)];
    store
        .replace_key_packages(&client.client_id, &packages, &publish)
        .await
        .unwrap();
    assert_eq!(
        store.take_key_packages(&user.user_id).await.unwrap(),
        vec![(client.client_id, b"k1".to_vec())]
    );
    assert_replayed(
        store
            .replace_key_packages(&client.client_id, &packages, &publish)
            .await,
    );
    assert_eq!(
        store.take_key_packages(&user.user_id).await.unwrap(),
        vec![(client.client_id, b"klr".to_vec())]
    );

    // DS: creation and commits.
    let g = group_id(1);
    assert!(store.reserve_group_id(&g, NOW + 60).await.unwrap());
    let create = fresh();
    assert_eq!(
        store.create_group(&g, b"v0", NOW, &create).await.unwrap(),
        CreateGroup::Created
    );
    let commit = fresh();
    assert!(
        store
            .update_group(&g, 0, b"v1", NOW, &[outbox_entry(1)], &commit)
            .await
            .unwrap()
            .is_some()
    );
    assert_replayed(
        store
            .update_group(&g, 1, b"v2", NOW, &[outbox_entry(2)], &commit)
            .await,
    );
    // A replayed creation is refused by its record, before the group's existence.
    assert!(!store.reserve_group_id(&g, NOW + 60).await.unwrap());
    assert_replayed(store.create_group(&g, b"again", NOW, &create).await);
    assert_eq!(
        store.group(&g).await.unwrap(),
        Some(StoredGroup {
            ciphertext: b"v1".to_vec(),
            version: 1
        })
    );
    let due = store.due_outbox(u64::MAX, 100).await.unwrap();
    assert_eq!(due.len(), 1, "the replayed commit appended to the outbox");
    assert!(
        store
            .request_seen(ReplayService::Ds, &commit.digest)
            .await
            .unwrap()
    );
}

// Requirement: ADV-REPLAY-3
/// A write that fails records nothing, so the same request is processed when retried.
async fn failed_writes_record_no_replay(db: &TestDb) {
    let store = &db.store;
    let g = group_id(2);
    let create = fresh();
    assert_eq!(
        store.create_group(&g, b"v0", NOW, &create).await.unwrap(),
        CreateGroup::NotReserved
    );
    assert!(
        !store
            .request_seen(ReplayService::Ds, &create.digest)
            .await
            .unwrap()
    );
    assert!(store.reserve_group_id(&g, NOW + 60).await.unwrap());
    assert_eq!(
        store.create_group(&g, b"v0", NOW, &create).await.unwrap(),
        CreateGroup::Created
    );

    let commit = fresh();
    assert!(
        store
            .update_group(&g, 5, b"lost", NOW, &[outbox_entry(1)], &commit)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !store
            .request_seen(ReplayService::Ds, &commit.digest)
            .await
            .unwrap()
    );
    assert!(
        store
            .update_group(&g, 0, b"v1", NOW, &[outbox_entry(1)], &commit)
            .await
            .unwrap()
            .is_some()
    );

    let renewal = fresh();
    assert!(
        !store
            .renew_client(&as_client("nobody@example.org", "c1", "09"), &renewal)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_seen(ReplayService::As, &renewal.digest)
            .await
            .unwrap()
    );
}

// Requirement: ADV-REPLAY-3
/// Copies of one request racing: exactly one takes effect, every other gets `Replayed`.
async fn replayed_write_race(db: &TestDb) {
    let store = &db.store;
    let (user, client) = qs_user(3, 3);
    QsStore::create_user(store, &user, &client).await.unwrap();
    let g = group_id(3);
    assert!(store.reserve_group_id(&g, NOW + 60).await.unwrap());
    store.create_group(&g, b"v0", NOW, &fresh()).await.unwrap();
    for round in 0..5u8 {
        let publish = fresh();
        let commit = fresh();
        let version = u64::from(round);
        let tasks: Vec<_> = (0..6u8)
            .map(|i| {
                let store = store.clone();
                let g = g.clone();
                let client_id = client.client_id;
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        store
                            .replace_key_packages(
                                &client_id,
                                &[key_package(&[round, i], true)],
                                &publish,
                            )
                            .await
                            .map(|()| true)
                    } else {
                        store
                            .update_group(&g, version, &[round, i], NOW, &[], &commit)
                            .await
                            .map(|ids| ids.is_some())
                    }
                })
            })
            .collect();
        let mut accepted = [0, 0];
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(true) => accepted[i % 2] += 1,
                Ok(false) => panic!("a commit lost its compare-and-swap to a copy of itself"),
                Err(StoreError::Replayed) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted, [1, 1], "round {round}");
        assert_eq!(store.group(&g).await.unwrap().unwrap().version, version + 1);
        assert_eq!(
            store
                .key_package_status(&client.client_id)
                .await
                .unwrap()
                .unwrap()
                .one_time,
            0
        );
    }
}

// Requirement: ADV-REPLAY-3
/// Records received before the cut are deleted, in every service; later ones stay.
async fn replay_records_are_pruned(db: &TestDb) {
    let store = &db.store;
    let fid = "alice@example.org";
    AsStore::create_user(store, &as_client(fid, "c1", "01"), 1_000)
        .await
        .unwrap();
    let (user, client) = qs_user(1, 1);
    QsStore::create_user(store, &user, &client).await.unwrap();
    let old_as = ReplayRecord {
        received_at: NOW - 10,
        ..fresh()
    };
    let old_qs = ReplayRecord {
        received_at: NOW - 1,
        ..fresh()
    };
    let kept = ReplayRecord {
        received_at: NOW,
        ..fresh()
    };
    let packages = [connection_package(b"lr", true)];
    for record in [&old_as, &kept] {
        store
            .replace_connection_packages(fid, "c1", &packages, record)
            .await
            .unwrap();
    }
    store
        .replace_key_packages(&client.client_id, &[key_package(b"klr", true)], &old_qs)
        .await
        .unwrap();
    assert_eq!(store.prune_seen_requests(NOW).await.unwrap(), 2);
    assert!(
        !store
            .request_seen(ReplayService::As, &old_as.digest)
            .await
            .unwrap()
    );
    assert!(
        !store
            .request_seen(ReplayService::Qs, &old_qs.digest)
            .await
            .unwrap()
    );
    assert!(
        store
            .request_seen(ReplayService::As, &kept.digest)
            .await
            .unwrap()
    );
    assert_eq!(store.prune_seen_requests(NOW).await.unwrap(), 0);
}
