//! Malicious AS: the home server of bob mints a second credential for bob (a new client
//! with a key the server holds) and uses it to approach alice, who already has bob as a
//! contact. Alice's client detects it: bob's clients are pinned in their connection group,
//! the request comes from an unpinned certificate, the fingerprint is reported, `accept`
//! refuses, and the CLI shows the warning.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_client::api::{Api, Signer};
use phoenix_threat_model_tests::{Backend, Homeserver, User, connect, listener};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info, label};
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::Empty;
use phoenix_types::messages::as_::{self, ConnectionPackagePayload};
use phoenix_types::messages::client::{
    ConnectionEstablishmentPackage, ConnectionEstablishmentTbs, FriendshipPackage,
};

/// a.test with alice and bob connected, and a certificate its AS minted for bob@a.test,
/// client "minted", for a key the AS holds.
struct Minted {
    a: Homeserver,
    alice: User,
    bob: User,
    minted_key: ed25519_dalek::SigningKey,
    minted: Vec<u8>,
    now: u64,
}

async fn minted_setup() -> Minted {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, l, &resolve)
        .await
        .unwrap();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    connect(&mut alice, &mut bob).await;

    let ca = a.server.ca();
    let minted_key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::verify_csr(
        &certs::create_csr(
            &Fid::parse("bob@a.test").unwrap(),
            &ClientId::parse("minted").unwrap(),
            &minted_key,
        )
        .unwrap(),
    )
    .unwrap();
    let now = phoenix_server::server::now();
    let minted = certs::issue_client_certificate(
        &csr,
        &ca.signing_key,
        &ca.certificate,
        &certs::random_serial(&mut OsRng),
        now - 60,
        now + 3600,
    )
    .unwrap();
    Minted {
        a,
        alice,
        bob,
        minted_key,
        minted,
        now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_second_credential_is_detected() {
    let Minted {
        a,
        mut alice,
        bob: _bob,
        minted_key,
        minted,
        now,
    } = minted_setup().await;
    let minted_fingerprint = hex::encode(ParsedCert::parse(&minted).unwrap().fingerprint());

    // ... and sends alice a perfectly signed connection request as "bob".
    let api = Api::new(&a.url).unwrap();
    let fetched: as_::FetchConnectionPackageResponse = api
        .call(
            "as",
            as_::FETCH_CONNECTION_PACKAGE,
            &as_::FetchConnectionPackageRequest {
                fid: "alice@a.test".into(),
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    let package: ConnectionPackagePayload =
        codec::decode(fetched.package.payload.as_slice(), 4096).unwrap();
    // The operator holds the server's group-token key too: it mints itself a token.
    let pending = phoenix_types::tokens::blind(&mut OsRng).unwrap();
    let (evaluated, proof) = a
        .server
        .group_token_key
        .issue(&mut OsRng, &[pending.blinded()])
        .unwrap();
    let token = phoenix_types::tokens::finalize(
        std::slice::from_ref(&pending),
        &[evaluated[0].as_slice()],
        &proof,
        a.server.group_token_key.public_key(),
    )
    .unwrap()
    .remove(0);
    let reserved: phoenix_types::messages::ds::RequestGroupIdResponse = api
        .call(
            "ds",
            phoenix_types::messages::ds::REQUEST_GROUP_ID,
            &phoenix_types::messages::ds::RequestGroupIdRequest {
                token: phoenix_types::messages::ds::GroupToken {
                    key_id: VLBytes::new(token.key_id.to_vec()),
                    input: VLBytes::new(token.input.to_vec()),
                    output: VLBytes::new(token.output),
                },
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    let tbs = codec::encode(&ConnectionEstablishmentTbs {
        sender_certificate: VLBytes::new(minted.clone()),
        recipient_fid: package.fid.clone(),
        recipient_client_id: package.client_id.clone(),
        timestamp: now,
        connection_group_id: reserved.group_id,
        ear_key: [1; 32],
        credential_key: [2; 32],
        friendship: FriendshipPackage {
            friendship_token: [3; 32],
            friendship_key: [4; 32],
            qs_domain: "a.test".into(),
        },
    })
    .unwrap();
    let cep = codec::encode(&ConnectionEstablishmentPackage {
        signature: VLBytes::new(
            crypto::sign(&minted_key, label::CONNECTION_ESTABLISHMENT, &tbs).to_vec(),
        ),
        tbs: VLBytes::new(tbs),
    })
    .unwrap();
    let mut aad = package.fid.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(package.client_id.as_bytes());
    let ciphertext = crypto::hpke_seal(
        package.encryption_key.as_slice(),
        hpke_info::CONNECTION_ESTABLISHMENT,
        &aad,
        &cep,
    )
    .unwrap();
    let _: Empty = api
        .call(
            "as",
            as_::ENQUEUE_CONNECTION,
            &as_::EnqueueConnectionRequest {
                fid: package.fid.clone(),
                client_id: package.client_id.clone(),
                ciphertext,
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();

    // Alice's client sees a request "from bob", verified up to a.test's CA — and flags it.
    let requests = alice.client.requests().await.unwrap();
    let request = requests
        .iter()
        .find(|r| r.fid == "bob@a.test")
        .expect("the minted request is listed");
    let warning = alice
        .client
        .request_warning(request)
        .await
        .unwrap()
        .expect("the minted request is flagged");
    assert!(
        warning.contains("not pinned") && warning.contains(&minted_fingerprint),
        "{warning}"
    );
    let refused = alice.client.accept("bob@a.test").await.unwrap_err();
    assert!(
        refused.to_string().contains("refusing to accept"),
        "{refused}"
    );
    // The genuine bob is still a connected contact with his one pinned client.
    let contacts = alice.client.contacts().await.unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].clients.len(), 1);
    assert!(!contacts[0].clients.contains(&minted_fingerprint));

    // The CLI shows it too, once the library's client has closed the state (one writer
    // per state directory).
    let User {
        client,
        home: alice_home,
        ..
    } = alice;
    drop(client);
    let output = std::process::Command::new(phoenix_e2e::binary("phoenix"))
        .arg("--home")
        .arg(alice_home.path())
        .arg("requests")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("WARNING") && text.contains(&minted_fingerprint),
        "{text}"
    );
}

// Requirement: ID-CONN-2
/// The minted credential, in the hands of someone who also holds bob's friendship secrets (a
/// copy of bob's device state: his contacts' friendship tokens and keys, but not his key),
/// invites alice into a group through the real client library. Everything checks out up to
/// a.test's CA and the invitation's attribution decrypts, but the inviting client is not the
/// one pinned in alice's connection group with bob: alice's client refuses the invitation and
/// does not join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_from_a_minted_credential_is_refused() {
    let Minted {
        a,
        mut alice,
        bob,
        minted_key,
        minted,
        now: _,
    } = minted_setup().await;
    // The malicious AS keeps the minted client like any other (so it is also issued
    // group-creation tokens).
    a.register_client_in_database("bob@a.test", &minted).await;

    // A copy of bob's device state with the minted identity in place of bob's.
    let evil_home = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bob.home()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), evil_home.path().join(entry.file_name())).unwrap();
        }
    }
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", evil_home.path().join("client.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE identity SET client_id = 'minted', certificate = ?, signing_key = ? WHERE id = 1",
        )
        .bind(minted.as_slice())
        .bind(minted_key.to_bytes().as_slice())
        .execute(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let mut evil = phoenix_client::Client::open(evil_home.path())
        .await
        .unwrap();
    evil.create_group("trap").await.unwrap();
    evil.invite("trap", "alice@a.test").await.unwrap();

    // Alice refuses: the inviting client is not pinned in her connection group with bob.
    let events = alice
        .sync_until(|e| e["kind"] == "invitation_refused" || e["kind"] == "joined")
        .await;
    let refused = events
        .iter()
        .find(|e| e["kind"] == "invitation_refused")
        .unwrap_or_else(|| panic!("the minted invitation was not refused: {events:?}"));
    assert_eq!(refused["invited_by"], "bob@a.test", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not in our connection group")),
        "{refused}"
    );
    assert!(events.iter().all(|e| e["kind"] != "joined"), "{events:?}");
    assert!(alice.client.group("trap").await.is_err());
}

// Requirement: AS-TOKEN-3
/// An operator who gave each client its own group-token key would recognise, at its DS,
/// whose token buys which group. The client pins the key its server first issued under and
/// refuses tokens under any other: here the server's key differs from alice's pin (as it
/// would if the operator switched her to a key of her own), and her next group creation,
/// which needs fresh tokens, is refused with the reason instead of spending them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_tokens_under_another_key_are_refused() {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, l, &resolve)
        .await
        .unwrap();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    alice.client.create_group("first").await.unwrap();
    let db = alice.home().join("client.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let pinned: Vec<u8> = sqlx::query_scalar("SELECT public_key FROM token_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pinned.as_slice(), a.server.group_token_key.public_key());
    sqlx::query("UPDATE token_keys SET public_key = ?")
        .bind(vec![7u8; 32])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM group_tokens")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let refused = alice.client.create_group("second").await.unwrap_err();
    assert!(
        refused.to_string().contains("under a key other"),
        "{refused}"
    );
    assert!(alice.client.group("second").await.is_err());
}
