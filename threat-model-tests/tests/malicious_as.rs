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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_second_credential_is_detected() {
    let l = listener().await;
    let resolve = vec![format!("a.test={}", l.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, l, &resolve)
        .await
        .unwrap();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    connect(&mut alice, &mut bob).await;

    // The AS mints a certificate for bob@a.test, client "minted", for a key it holds.
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
    let reserved: phoenix_types::messages::ds::RequestGroupIdResponse = api
        .call(
            "ds",
            phoenix_types::messages::ds::REQUEST_GROUP_ID,
            &Empty {},
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

    // The CLI shows it too.
    let output = std::process::Command::new(phoenix_e2e::binary("phoenix"))
        .arg("--home")
        .arg(alice.home())
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
