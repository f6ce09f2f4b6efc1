//! Malicious AS, the credential it mints put to use: bob's home server (its operator, with
//! the CA key read from the server's own database) mints a second certificate for bob,
//! registers it as a client of bob in the AS's tables, and runs a device with it. A third
//! user, carol, connects to that impostor "bob" and puts it into a group with alice, who has
//! the real bob as a contact. Alice's client must not show the impostor as bob: the member is
//! not one of bob's clients pinned in alice's connection group with him, so its messages are
//! not verified (the reason names the fingerprint) and `group members` shows it unpinned.
//!
//! Also the out-of-band check of pinned clients: `fingerprint` / `verify`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use rand_core::OsRng;

use phoenix_threat_model_tests::{Backend, Homeserver, User, connect, listener};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::ids::{ClientId, Fid};

/// What the malicious operator does with its database: read the CA key, mint a certificate
/// for `fid` client `client_id` with a fresh key it holds, and register it in the AS's
/// tables. Returns (key, certificate DER).
async fn mint_through_database(
    server: &Homeserver,
    fid: &str,
    client_id: &str,
) -> (ed25519_dalek::SigningKey, Vec<u8>) {
    let (ca_key, ca_der) = server.ca_from_database().await;
    let ca_key = ed25519_dalek::SigningKey::from_bytes(&ca_key);
    let ca = ParsedCert::parse(&ca_der).unwrap();
    let key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::verify_csr(
        &certs::create_csr(
            &Fid::parse(fid).unwrap(),
            &ClientId::parse(client_id).unwrap(),
            &key,
        )
        .unwrap(),
    )
    .unwrap();
    let now = phoenix_server::server::now();
    let minted = certs::issue_client_certificate(
        &csr,
        &ca_key,
        &ca,
        &certs::random_serial(&mut OsRng),
        now - 60,
        now + 24 * 3600,
    )
    .unwrap();
    server.register_client_in_database(fid, &minted).await;
    (key, minted)
}

/// The operator's device for the minted identity: the QS records (pseudonymous, they name no
/// FID) come from an ordinary registration under a throwaway name; then the minted identity
/// takes its place in the device's state and the device publishes key packages bound to it.
async fn impostor_device(
    server: &Homeserver,
    resolve: &[String],
    fid: &str,
    key: &ed25519_dalek::SigningKey,
    minted: &[u8],
) -> User {
    let throwaway = User::register("throwaway@a.test", &server.url, resolve).await;
    let client_id = ParsedCert::parse(minted)
        .unwrap()
        .actor
        .unwrap()
        .client_id
        .to_string();
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", throwaway.home().join("client.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE identity SET fid = ?, client_id = ?, certificate = ?, signing_key = ? WHERE id = 1",
        )
        .bind(fid)
        .bind(&client_id)
        .bind(minted)
        .bind(key.to_bytes().as_slice())
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    // The throwaway client closes the state before the impostor's opens it (one writer).
    let User {
        home,
        client: throwaway_client,
        ..
    } = throwaway;
    drop(throwaway_client);
    let mut client = phoenix_client::Client::open(home.path()).await.unwrap();
    client.refresh_key_packages().await.unwrap();
    User {
        client,
        fid: fid.to_owned(),
        home,
    }
}

// Requirement: ID-PIN-1, ADV-AS-1
async fn a_minted_credential_is_not_trusted_in_a_group(backend: Backend) {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let Some(a) = Homeserver::start("a.test", backend, l, &resolve).await else {
        return;
    };
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    let mut carol = User::register("carol@a.test", &a.url, &resolve).await;
    connect(&mut alice, &mut bob).await;
    connect(&mut carol, &mut alice).await;

    // The operator mints "bob" from its database and runs a device with it.
    let (key, minted) = mint_through_database(&a, "bob@a.test", "minted").await;
    let minted_fingerprint = hex::encode(crypto::sha256(&minted));
    let mut impostor = impostor_device(&a, &resolve, "bob@a.test", &key, &minted).await;

    // Carol (who has never met bob) connects with the impostor.
    impostor.client.connect("carol@a.test").await.unwrap();
    connect_accept(&mut carol, "bob@a.test").await;
    impostor
        .sync_until(|e| e["kind"] == "connected" && e["contact"] == "carol@a.test")
        .await;

    // Carol's group: alice, then the impostor.
    carol.client.create_group("trap").await.unwrap();
    carol.client.invite("trap", "alice@a.test").await.unwrap();
    alice.sync_until(|e| e["kind"] == "joined").await;
    carol.client.invite("trap", "bob@a.test").await.unwrap();
    let events = alice.sync_until(|e| e["kind"] == "members_added").await;
    let added = events
        .iter()
        .find(|e| e["kind"] == "members_added")
        .unwrap();
    let warnings = added["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w["fid"] == "bob@a.test"
            && w["pin"] == "unpinned"
            && w["problem"]
                .as_str()
                .is_some_and(|p| p.contains("not a pinned client of bob@a.test")
                    && p.contains(&minted_fingerprint))),
        "the impostor's arrival was not flagged: {added}"
    );

    // The impostor speaks as bob.
    impostor.sync_until(|e| e["kind"] == "joined").await;
    impostor
        .client
        .send("trap", "hi alice, it's bob")
        .await
        .unwrap();
    let events = alice.sync_until(|e| e["kind"] == "message").await;
    let message = events.iter().find(|e| e["kind"] == "message").unwrap();
    assert_eq!(message["text"], "hi alice, it's bob");
    assert_eq!(
        message["verified"], false,
        "alice's client shows the minted credential's message as verified: {message}"
    );
    let problem = message["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("not a pinned client of bob@a.test")
            && problem.contains(&minted_fingerprint),
        "{message}"
    );
    assert_ne!(message["sender"], "bob@a.test", "{message}");

    // `group members`: the impostor is bob's FID on an unpinned client; carol, a contact,
    // is on her pinned client.
    let members: Vec<serde_json::Value> = alice
        .client
        .members("trap")
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    let bob_member = members
        .iter()
        .find(|m| m["fingerprint"] == minted_fingerprint.as_str())
        .unwrap_or_else(|| panic!("{members:?}"));
    assert_eq!(bob_member["pin"], "unpinned", "{bob_member}");
    assert_eq!(bob_member["verified"], false, "{bob_member}");
    let carol_member = members
        .iter()
        .find(|m| m["fid"] == "carol@a.test")
        .unwrap_or_else(|| panic!("{members:?}"));
    assert_eq!(carol_member["pin"], "pinned", "{carol_member}");

    // The CLI says it plainly.
    let output = alice.cli(&["group", "members", "trap"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("bob@a.test UNPINNED, NOT VERIFIED") && text.contains(&minted_fingerprint),
        "{text}"
    );
    // `history` re-checks the stored message: still not verified, with the reason.
    let output = alice.cli(&["history", "trap"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("UNVERIFIED (")
            && text.contains("not a pinned client of bob@a.test")
            && text.contains("hi alice, it's bob"),
        "{text}"
    );
    // And the human output of `sync` says it plainly for a new message.
    impostor.client.send("trap", "it's me, bob").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("it's me, bob") {
        assert!(std::time::Instant::now() < deadline, "{seen}");
        let output = alice.cli(&["sync"]).await;
        seen.push_str(&String::from_utf8_lossy(&output.stdout));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen.contains("[trap] UNVERIFIED SENDER (")
            && seen.contains("not a pinned client of bob@a.test")
            && seen.contains(&minted_fingerprint),
        "{seen}"
    );
    drop(bob);
}

/// Carol waits for the request from `fid` and accepts it.
async fn connect_accept(user: &mut User, fid: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while user
        .client
        .requests()
        .await
        .unwrap()
        .iter()
        .all(|r| r.fid != fid)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no request from {fid}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    user.client.accept(fid).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_credential_is_not_trusted_in_a_group_sqlite() {
    a_minted_credential_is_not_trusted_in_a_group(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_credential_is_not_trusted_in_a_group_postgres() {
    a_minted_credential_is_not_trusted_in_a_group(Backend::Postgres).await;
}

// Requirement: ID-OOB-1
/// Both sides compute the same code over bob's pinned client; a wrong code is refused and
/// marks nothing; the right one marks bob verified; when bob's clients change afterwards (a
/// renewal announced in the connection group), alice's sync says so and `contacts` shows
/// the contact as changed.
async fn fingerprints_match_and_a_change_after_verify_is_reported(backend: Backend) {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let Some(a) = Homeserver::start("a.test", backend, l, &resolve).await else {
        return;
    };
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    connect(&mut alice, &mut bob).await;

    let seen_by_alice = alice.client.fingerprint(Some("bob@a.test")).await.unwrap();
    let bobs_own = bob.client.fingerprint(None).await.unwrap();
    assert_eq!(seen_by_alice.code, bobs_own.code);
    assert_eq!(seen_by_alice.code.split(' ').count(), 12);
    assert_eq!(
        bob.client
            .fingerprint(Some("alice@a.test"))
            .await
            .unwrap()
            .code,
        alice.client.fingerprint(None).await.unwrap().code
    );
    assert_eq!(seen_by_alice.verification, "unverified");

    // A wrong code: refused, nothing marked.
    let mut wrong: Vec<char> = bobs_own.code.chars().collect();
    wrong[0] = if wrong[0] == '0' { '1' } else { '0' };
    let wrong: String = wrong.into_iter().collect();
    let refused = alice
        .client
        .verify_contact("bob@a.test", &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, phoenix_client::ClientError::Verification(_))
            && refused.to_string().contains("does not match"),
        "{refused}"
    );
    assert_eq!(
        alice.client.contacts().await.unwrap()[0].verification,
        "unverified"
    );

    // The right code, typed without spaces.
    let verified = alice
        .client
        .verify_contact("bob@a.test", &bobs_own.code.replace(' ', ""))
        .await
        .unwrap();
    assert_eq!(verified.verification, "verified");
    assert_eq!(
        alice.client.contacts().await.unwrap()[0].verification,
        "verified"
    );

    // Bob's client changes (a renewal, announced in the connection group).
    bob.client.renew().await.unwrap();
    let events = alice
        .sync_until(|e| e["kind"] == "contact_certificate_renewed")
        .await;
    let renewed = events
        .iter()
        .find(|e| e["kind"] == "contact_certificate_renewed")
        .unwrap();
    assert_eq!(renewed["verified_contact_changed"], true, "{renewed}");
    assert_eq!(renewed["verification"], "changed", "{renewed}");
    assert_eq!(
        alice.client.contacts().await.unwrap()[0].verification,
        "changed"
    );
    // The human output says it loudly.
    let output = alice.cli(&["contacts"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("CHANGED"), "{text}");
    // The new code matches bob's again, and can be verified anew.
    let bobs_new = bob.client.fingerprint(None).await.unwrap();
    assert_ne!(bobs_new.code, bobs_own.code);
    let again = alice
        .client
        .verify_contact("bob@a.test", &bobs_new.code)
        .await
        .unwrap();
    assert_eq!(again.verification, "verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_match_and_a_change_after_verify_is_reported_sqlite() {
    fingerprints_match_and_a_change_after_verify_is_reported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_match_and_a_change_after_verify_is_reported_postgres() {
    fingerprints_match_and_a_change_after_verify_is_reported(Backend::Postgres).await;
}

// Requirement: ID-PIN-2
/// Trust on first use for a member who is not a contact: alice meets dave (not her contact)
/// in carol's group; dave is removed, and the operator's minted "dave", connected with erin
/// (who is in the group too), is added back by erin. Alice's client reports dave's changed
/// certificate instead of accepting it silently.
async fn a_non_contacts_changed_certificate_is_reported(backend: Backend) {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let Some(a) = Homeserver::start("a.test", backend, l, &resolve).await else {
        return;
    };
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut carol = User::register("carol@a.test", &a.url, &resolve).await;
    let mut dave = User::register("dave@a.test", &a.url, &resolve).await;
    let mut erin = User::register("erin@a.test", &a.url, &resolve).await;
    connect(&mut carol, &mut alice).await;
    connect(&mut carol, &mut dave).await;
    connect(&mut carol, &mut erin).await;
    carol.client.create_group("club").await.unwrap();
    for fid in ["alice@a.test", "dave@a.test", "erin@a.test"] {
        carol.client.invite("club", fid).await.unwrap();
    }
    alice.sync_until(|e| e["kind"] == "joined").await;
    erin.sync_until(|e| e["kind"] == "joined").await;
    // Alice has seen dave's real certificate: unknown (first use), no warning.
    let members: Vec<serde_json::Value> = alice
        .client
        .members("club")
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    let real_dave = members.iter().find(|m| m["fid"] == "dave@a.test").unwrap();
    assert_eq!(real_dave["pin"], "unknown", "{members:?}");

    let (key, minted) = mint_through_database(&a, "dave@a.test", "minted").await;
    let minted_fingerprint = hex::encode(crypto::sha256(&minted));
    let mut impostor = impostor_device(&a, &resolve, "dave@a.test", &key, &minted).await;
    impostor.client.connect("erin@a.test").await.unwrap();
    connect_accept(&mut erin, "dave@a.test").await;
    impostor
        .sync_until(|e| e["kind"] == "connected" && e["contact"] == "erin@a.test")
        .await;
    // Dave leaves the group (carol removes him); erin adds "dave" back: the impostor.
    carol.client.remove("club", "dave@a.test").await.unwrap();
    erin.client.sync().await.unwrap();
    erin.client.invite("club", "dave@a.test").await.unwrap();
    let events = alice.sync_until(|e| e["kind"] == "members_added").await;
    let added = events
        .iter()
        .find(|e| e["kind"] == "members_added")
        .unwrap();
    let warnings = added["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w["fid"] == "dave@a.test"
            && w["pin"] == "changed"
            && w["problem"]
                .as_str()
                .is_some_and(|p| p.contains(&minted_fingerprint))),
        "dave's new certificate was accepted silently: {added}"
    );
    let members: Vec<serde_json::Value> = alice
        .client
        .members("club")
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    let minted_dave = members
        .iter()
        .find(|m| m["fingerprint"] == minted_fingerprint.as_str())
        .unwrap();
    assert_eq!(minted_dave["pin"], "changed", "{members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_contacts_changed_certificate_is_reported_sqlite() {
    a_non_contacts_changed_certificate_is_reported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_contacts_changed_certificate_is_reported_postgres() {
    a_non_contacts_changed_certificate_is_reported(Backend::Postgres).await;
}
