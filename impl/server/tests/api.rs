//! The HTTP API of a real server (in-process, over real HTTP on loopback), on SQLite and
//! on Postgres: bad input gets a 4xx problem document with a stable code and changes
//! nothing; authentication is checked over the exact bytes; connection packages are
//! consumed once and the last-resort one is reused; of two commits for the same epoch
//! exactly one wins and the other gets `WRONG_EPOCH`.
//!
//! Each test runs once per backend (`sqlite::<test>`, `postgres::<test>`). Postgres tests
//! use a fresh schema on `PHOENIX_TEST_POSTGRES_URL`; if that server is unreachable they
//! are skipped with a message, unless `CI=true` or `PHOENIX_TEST_REQUIRE_POSTGRES=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use rand_core::{OsRng, RngCore};
use tempfile::TempDir;
use tls_codec::{Serialize, VLBytes};

use phoenix_client::api::{Api, Signer};
use phoenix_client::{Client, ClientError};
use phoenix_server::server::{Limits, Server};
use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::Problem;
use phoenix_types::ids::{ClientId, Domain, Fid};
use phoenix_types::messages::as_::{self, ConnectionPackagePayload};
use phoenix_types::messages::{
    Auth, DequeueRequest, DequeueResponse, Empty, RequestEnvelope, ds, qs,
};
use support::{Backend, Storage};

/// A running server and its state.
struct TestServer {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _storage: Storage,
}

impl TestServer {
    /// Start a server on `backend`; `None` if Postgres is unavailable and not required.
    async fn start(backend: Backend) -> Option<Self> {
        let (store, storage) = support::store(backend, "api").await?;
        let server = Server::start(Domain::parse("a.test").unwrap(), store, Limits::default())
            .await
            .unwrap();
        let (listener, url) = support::listen().await;
        Some(Self {
            url,
            shutdown: Some(support::serve(server, listener)),
            _storage: storage,
        })
    }

    /// Stop serving; the store's schema is dropped with it.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn client(&self, fid: &str) -> (Client, TempDir) {
        let home = tempfile::tempdir().unwrap();
        let mut client = Client::open(home.path()).await.unwrap();
        client.register(fid, &self.url).await.unwrap();
        (client, home)
    }

    /// POST raw bytes to a route; returns status and the problem document if any.
    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Option<Problem>) {
        self.try_post_raw(path, body).await.unwrap()
    }

    async fn try_post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Option<Problem>), reqwest::Error> {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let is_problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("") == Problem::CONTENT_TYPE);
        let bytes = response.bytes().await?;
        let problem = if is_problem {
            Some(serde_json::from_slice(&bytes).unwrap())
        } else {
            None
        };
        Ok((status, problem))
    }

    async fn healthy(&self) -> bool {
        reqwest::get(format!("{}/health", self.url))
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("expected a server error code, got {e}")),
    }
}

/// Run each `async fn test(server: &TestServer)` named once per backend, on a server of
/// its own (unlike `support::on_both_backends`, whose tests start their servers).
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = super::TestServer::start(super::Backend::Sqlite).await.unwrap();
                    super::$test(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(server) = super::TestServer::start(super::Backend::Postgres).await else {
                        return;
                    };
                    super::$test(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}

on_both_backends!(
    bad_input_gets_a_problem_with_a_code,
    registration_is_validated,
    create_user_repeated_gets_the_same_ids,
    requests_are_authenticated_over_exact_bytes,
    connection_packages_are_consumed_once_and_last_resort_is_reused,
    of_two_commits_for_one_epoch_exactly_one_wins,
    ds_refuses_wrong_keys_and_foreign_groups,
    a_connection_request_pushes_nothing_before_accept,
    resync_is_only_for_the_leaf_owner_keeping_its_credential,
);

const ROUTES: &[(&str, &[&str])] = &[
    (
        "as",
        &[
            as_::REGISTER,
            as_::PUBLISH_CONNECTION_PACKAGES,
            as_::FETCH_CONNECTION_PACKAGE,
            as_::ENQUEUE_CONNECTION,
            as_::DEQUEUE_CONNECTION,
            as_::CLIENT_CERTIFICATES,
            as_::SERVER_CERTIFICATE,
            as_::ISSUE_GROUP_TOKENS,
        ],
    ),
    (
        "qs",
        &[
            qs::QUEUE_CONFIG_KEY,
            qs::CREATE_USER,
            qs::PUBLISH_KEY_PACKAGES,
            qs::FETCH_KEY_PACKAGES,
            qs::DEQUEUE,
        ],
    ),
    (
        "ds",
        &[
            ds::REQUEST_GROUP_ID,
            ds::CREATE_GROUP,
            ds::EXTERNAL_COMMIT_INFO,
            ds::JOIN_CONNECTION_GROUP,
            ds::ADD_USERS,
            ds::REMOVE_USERS,
            ds::UPDATE,
            ds::SEND_MESSAGE,
            ds::RESYNC,
        ],
    ),
];

fn envelope(payload: Vec<u8>, version: u16, auth: Auth) -> Vec<u8> {
    RequestEnvelope {
        version,
        payload: VLBytes::new(payload),
        auth,
    }
    .tls_serialize_detached()
    .unwrap()
}

// Requirement: WIRE-1, WIRE-2, WIRE-3, AUTH-ANON-1
async fn bad_input_gets_a_problem_with_a_code(server: &TestServer) {
    // Garbage, truncated and mutated bodies on every route: always a 4xx with a code.
    let valid_empty = envelope(Vec::new(), 1, Auth::None);
    for (service, operations) in ROUTES {
        for operation in *operations {
            let path = format!("/phoenix/v1/{service}/{operation}");
            let mut bodies = vec![
                Vec::new(),
                vec![0xff; 3],
                envelope(vec![0; 40], 1, Auth::None),
            ];
            // An empty payload is a valid request of the operations that take none.
            let takes_nothing = [as_::SERVER_CERTIFICATE, qs::QUEUE_CONFIG_KEY];
            if !takes_nothing.contains(operation) {
                bodies.push(valid_empty.clone());
            }
            for _ in 0..20 {
                let mut body = vec![0u8; (OsRng.next_u32() % 300) as usize];
                OsRng.fill_bytes(&mut body);
                bodies.push(body);
            }
            for body in bodies {
                let (status, problem) = server.post_raw(&path, body).await;
                let problem = problem.unwrap_or_else(|| {
                    panic!("{path}: status {status} without a problem document")
                });
                assert!(
                    (400..500).contains(&status),
                    "{path}: status {status} ({problem:?})"
                );
                assert_eq!(problem.status, status);
                assert!(!problem.code.is_empty());
            }
        }
    }
    // Wrong protocol version.
    let (status, problem) = server
        .post_raw(
            "/phoenix/v1/as/server_certificate",
            envelope(Vec::new(), 99, Auth::None),
        )
        .await;
    assert_eq!(
        (status, problem.unwrap().code.as_str()),
        (400, "VERSION_UNSUPPORTED")
    );
    // Unknown routes and methods, oversized bodies.
    let (status, problem) = server
        .post_raw("/phoenix/v1/as/nope", valid_empty.clone())
        .await;
    assert_eq!((status, problem.unwrap().code.as_str()), (404, "NOT_FOUND"));
    let (status, problem) = server
        .post_raw("/phoenix/v1/xx/register", valid_empty.clone())
        .await;
    assert_eq!((status, problem.unwrap().code.as_str()), (404, "NOT_FOUND"));
    // The server refuses an oversized body by its content-length before reading it and may
    // close the connection while the client is still sending; retry until the answer is read.
    let mut oversized = None;
    for _ in 0..10 {
        if let Ok(answer) = server
            .try_post_raw("/phoenix/v1/as/register", vec![0u8; 2 * 1024 * 1024])
            .await
        {
            oversized = Some(answer);
            break;
        }
    }
    let (status, problem) = oversized.expect("no answer to an oversized body");
    assert_eq!((status, problem.unwrap().code.as_str()), (413, "TOO_LARGE"));
    let response = reqwest::get(format!("{}/phoenix/v1/as/register", server.url))
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    // Authentication on anonymous routes is refused, not ignored.
    let (status, problem) = server
        .post_raw(
            "/phoenix/v1/as/server_certificate",
            envelope(
                codec::encode(&Empty {}).unwrap(),
                1,
                Auth::QsClient(phoenix_types::messages::QsAuth {
                    id: [0; 16],
                    signature: VLBytes::new(vec![0; 64]),
                }),
            ),
        )
        .await;
    assert_eq!((status, problem.unwrap().code.as_str()), (400, "MALFORMED"));
    // The server is still healthy and works.
    assert!(server.healthy().await);
    let (mut alice, _home) = server.client("alice@a.test").await;
    assert!(alice.sync().await.unwrap().is_empty());
}

async fn registration_is_validated(server: &TestServer) {
    let api = Api::new(&server.url).unwrap();
    let key = crypto::generate_signing_key(&mut OsRng);
    let register = |csr: Vec<u8>| {
        let api = api.clone();
        async move {
            api.call::<_, as_::RegisterResponse>(
                "as",
                as_::REGISTER,
                &as_::RegisterRequest {
                    csr: VLBytes::new(csr),
                },
                Signer::Anonymous,
            )
            .await
        }
    };
    let cid = ClientId::parse("c1").unwrap();
    let foreign = certs::create_csr(&Fid::parse("carol@b.test").unwrap(), &cid, &key).unwrap();
    assert_eq!(code(register(foreign).await), "WRONG_DOMAIN");
    let mut tampered = certs::create_csr(&Fid::parse("carol@a.test").unwrap(), &cid, &key).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert_eq!(code(register(tampered).await), "INVALID_CSR");
    assert_eq!(
        code(register(vec![0x30, 0x03, 0x02, 0x01, 0x01]).await),
        "INVALID_CSR"
    );
    let good = certs::create_csr(&Fid::parse("Carol@A.test").unwrap(), &cid, &key).unwrap();
    let issued = register(good.clone()).await.unwrap();
    let cert = certs::ParsedCert::parse(issued.client_certificate.as_slice()).unwrap();
    let ca = certs::ParsedCert::parse(issued.ca_certificate.as_slice()).unwrap();
    assert_eq!(
        cert.verify_issued_by(&ca, None).unwrap().fid.to_string(),
        "carol@a.test"
    );
    // The FID is taken now, whatever the case and whatever the key.
    let other_key = crypto::generate_signing_key(&mut OsRng);
    let again = certs::create_csr(
        &Fid::parse("CAROL@a.test").unwrap(),
        &ClientId::parse("c2").unwrap(),
        &other_key,
    )
    .unwrap();
    assert_eq!(code(register(again).await), "USER_EXISTS");
    // Requirement: CL-AMBIG-2
    // The same CSR again (a client whose answer was lost sends its bytes again) gets the
    // certificate issued then, and nothing new is issued; the same client id with another
    // key, or the same key under another client id, is still refused.
    let repeated = register(good.clone()).await.unwrap();
    assert_eq!(repeated.client_certificate, issued.client_certificate);
    let same_client_other_key =
        certs::create_csr(&Fid::parse("carol@a.test").unwrap(), &cid, &other_key).unwrap();
    assert_eq!(code(register(same_client_other_key).await), "USER_EXISTS");
    let same_key_other_client = certs::create_csr(
        &Fid::parse("carol@a.test").unwrap(),
        &ClientId::parse("c3").unwrap(),
        &key,
    )
    .unwrap();
    assert_eq!(code(register(same_key_other_client).await), "USER_EXISTS");
    // Every certificate is served.
    let certs: as_::ClientCertificatesResponse = api
        .call(
            "as",
            as_::CLIENT_CERTIFICATES,
            &as_::ClientCertificatesRequest {
                fid: "carol@a.test".into(),
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    assert_eq!(certs.certificates.len(), 1);
    let unknown = api
        .call::<_, as_::ClientCertificatesResponse>(
            "as",
            as_::CLIENT_CERTIFICATES,
            &as_::ClientCertificatesRequest {
                fid: "nobody@a.test".into(),
            },
            Signer::Anonymous,
        )
        .await;
    assert_eq!(code(unknown), "UNKNOWN_USER");
}

/// A repeated `qs/create_user` (its answer was lost) gets the same ids; the same
/// friendship token with any other auth key is still refused.
async fn create_user_repeated_gets_the_same_ids(server: &TestServer) {
    // Requirement: CL-AMBIG-2, QS-USER-2
    let api = Api::new(&server.url).unwrap();
    let user_key = crypto::generate_signing_key(&mut OsRng);
    let client_key = crypto::generate_signing_key(&mut OsRng);
    let other = crypto::generate_signing_key(&mut OsRng);
    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let create = |user: &ed25519_dalek::SigningKey, client: &ed25519_dalek::SigningKey| {
        let api = api.clone();
        let request = qs::CreateUserRequest {
            user_auth_key: VLBytes::new(user.verifying_key().to_bytes().to_vec()),
            friendship_token: token,
            client_auth_key: VLBytes::new(client.verifying_key().to_bytes().to_vec()),
            queue_key: VLBytes::new(vec![9; 32]),
            queue_ratchet_secret: [7; 32],
        };
        async move {
            api.call::<_, qs::CreateUserResponse>(
                "qs",
                qs::CREATE_USER,
                &request,
                Signer::Anonymous,
            )
            .await
        }
    };
    let first = create(&user_key, &client_key).await.unwrap();
    let again = create(&user_key, &client_key).await.unwrap();
    assert_eq!(
        (first.user_id, first.client_id),
        (again.user_id, again.client_id)
    );
    assert_eq!(
        code(create(&user_key, &other).await),
        "DUPLICATE_FRIENDSHIP_TOKEN"
    );
    assert_eq!(
        code(create(&other, &client_key).await),
        "DUPLICATE_FRIENDSHIP_TOKEN"
    );
}

async fn requests_are_authenticated_over_exact_bytes(server: &TestServer) {
    let api = Api::new(&server.url).unwrap();
    let key = crypto::generate_signing_key(&mut OsRng);
    let fid = Fid::parse("dave@a.test").unwrap();
    let cid = ClientId::parse("d1").unwrap();
    let csr = certs::create_csr(&fid, &cid, &key).unwrap();
    let _: as_::RegisterResponse = api
        .call(
            "as",
            as_::REGISTER,
            &as_::RegisterRequest {
                csr: VLBytes::new(csr),
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    let now = phoenix_server::server::now();
    let dequeue = |key: ed25519_dalek::SigningKey, fid: &'static str, timestamp: u64| {
        let api = api.clone();
        async move {
            api.call::<_, DequeueResponse>(
                "as",
                as_::DEQUEUE_CONNECTION,
                &DequeueRequest {
                    timestamp,
                    sequence_number_start: 0,
                    max: 10,
                },
                Signer::AsClient {
                    fid,
                    client_id: "d1",
                    key: &key,
                },
            )
            .await
        }
    };
    let ok = dequeue(key.clone(), "dave@a.test", now).await.unwrap();
    assert!(ok.messages.is_empty());
    let stranger = crypto::generate_signing_key(&mut OsRng);
    assert_eq!(
        code(dequeue(stranger, "dave@a.test", now).await),
        "BAD_SIGNATURE"
    );
    assert_eq!(
        code(dequeue(key.clone(), "erin@a.test", now).await),
        "UNKNOWN_CLIENT"
    );
    assert_eq!(
        code(dequeue(key.clone(), "dave@a.test", now - 3600).await),
        "STALE_REQUEST"
    );

    // A signature made for one operation does not authenticate another.
    let payload = codec::encode(&DequeueRequest {
        timestamp: now,
        sequence_number_start: 0,
        max: 10,
    })
    .unwrap();
    let signature = crypto::sign(&key, "qs/dequeue", &payload);
    let body = envelope(
        payload,
        1,
        Auth::AsClient(phoenix_types::messages::AsClientAuth {
            fid: "dave@a.test".into(),
            client_id: "d1".into(),
            signature: VLBytes::new(signature.to_vec()),
        }),
    );
    let (status, problem) = server
        .post_raw("/phoenix/v1/as/dequeue_connection", body)
        .await;
    assert_eq!(
        (status, problem.unwrap().code.as_str()),
        (401, "BAD_SIGNATURE")
    );

    // Unauthenticated calls to authenticated operations are refused.
    let anonymous = api
        .call::<_, DequeueResponse>(
            "as",
            as_::DEQUEUE_CONNECTION,
            &DequeueRequest {
                timestamp: now,
                sequence_number_start: 0,
                max: 10,
            },
            Signer::Anonymous,
        )
        .await;
    assert_eq!(code(anonymous), "UNAUTHENTICATED");
}

async fn connection_packages_are_consumed_once_and_last_resort_is_reused(server: &TestServer) {
    let (_bob, _home) = server.client("bob@a.test").await;
    let api = Api::new(&server.url).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut last_resort = Vec::new();
    for _ in 0..9 {
        let fetched: as_::FetchConnectionPackageResponse = api
            .call(
                "as",
                as_::FETCH_CONNECTION_PACKAGE,
                &as_::FetchConnectionPackageRequest {
                    fid: "BOB@a.test".into(),
                },
                Signer::Anonymous,
            )
            .await
            .unwrap();
        let payload: ConnectionPackagePayload =
            codec::decode(fetched.package.payload.as_slice(), 4096).unwrap();
        if payload.last_resort == 1 {
            last_resort.push(payload.encryption_key.as_slice().to_vec());
        } else {
            assert!(
                seen.insert(payload.encryption_key.as_slice().to_vec()),
                "a one-time package was served twice"
            );
        }
    }
    // The client publishes 5 one-time packages and one last-resort package.
    assert_eq!(seen.len(), 5);
    assert_eq!(last_resort.len(), 4);
    assert!(last_resort.windows(2).all(|w| w[0] == w[1]));
    let missing = api
        .call::<_, as_::FetchConnectionPackageResponse>(
            "as",
            as_::FETCH_CONNECTION_PACKAGE,
            &as_::FetchConnectionPackageRequest {
                fid: "nobody@a.test".into(),
            },
            Signer::Anonymous,
        )
        .await;
    assert_eq!(code(missing), "NO_CONNECTION_PACKAGE");
}

/// alice and bob connected and both in group `team`.
async fn two_members(server: &TestServer) -> ((Client, TempDir), (Client, TempDir)) {
    let (mut alice, alice_home) = server.client("alice@a.test").await;
    let (mut bob, bob_home) = server.client("bob@a.test").await;
    alice.connect("bob@a.test").await.unwrap();
    assert_eq!(bob.requests().await.unwrap().len(), 1);
    bob.accept("alice@a.test").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert_eq!(events[0]["kind"], "connected", "{events:?}");
    alice.create_group("team").await.unwrap();
    alice.invite("team", "bob@a.test").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(events[0]["kind"], "joined", "{events:?}");
    ((alice, alice_home), (bob, bob_home))
}

async fn of_two_commits_for_one_epoch_exactly_one_wins(server: &TestServer) {
    let ((mut alice, _ah), (mut bob, _bh)) = two_members(server).await;
    for round in 0..5 {
        // Neither processes the other's commit first: both commit for the same epoch.
        alice.set_sync_before_commit(false);
        bob.set_sync_before_commit(false);
        let (a, b) = tokio::join!(alice.update("team"), bob.update("team"));
        let outcomes = [a.is_ok(), b.is_ok()];
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {a:?} {b:?}"
        );
        let loser = if a.is_ok() { b } else { a };
        assert_eq!(code(loser), "WRONG_EPOCH");
        alice.set_sync_before_commit(true);
        bob.set_sync_before_commit(true);
        // Both catch up and the group still works.
        alice.send("team", &format!("round {round}")).await.unwrap();
        let events = bob.sync().await.unwrap();
        let texts: Vec<_> = events
            .iter()
            .filter(|e| e["kind"] == "message")
            .map(|e| e["text"].clone())
            .collect();
        assert_eq!(
            texts,
            vec![serde_json::json!(format!("round {round}"))],
            "{events:?}"
        );
        assert!(events.iter().all(|e| e["kind"] != "error"), "{events:?}");
        alice.sync().await.unwrap();
    }
}

async fn ds_refuses_wrong_keys_and_foreign_groups(server: &TestServer) {
    let ((alice, _ah), (_bob, _bh)) = two_members(server).await;
    let group = alice.group("team").await.unwrap();
    let api = Api::new(&server.url).unwrap();
    let info = |group_id: Vec<u8>, ear_key: [u8; 32]| {
        let api = api.clone();
        async move {
            api.call::<_, ds::ExternalCommitInfoResponse>(
                "ds",
                ds::EXTERNAL_COMMIT_INFO,
                &ds::ExternalCommitInfoRequest {
                    group_id: VLBytes::new(group_id),
                    ear_key,
                },
                Signer::Anonymous,
            )
            .await
        }
    };
    assert!(info(group.group_id.clone(), group.ear_key).await.is_ok());
    let mut wrong = group.ear_key;
    wrong[0] ^= 1;
    assert_eq!(
        code(info(group.group_id.clone(), wrong).await),
        "WRONG_EAR_KEY"
    );
    let mut unknown = group.group_id.clone();
    unknown[0] ^= 1;
    assert_eq!(code(info(unknown, group.ear_key).await), "UNKNOWN_GROUP");
    let mut foreign = group.group_id[..16].to_vec();
    foreign.extend_from_slice(b"b.test");
    assert_eq!(
        code(info(foreign, group.ear_key).await),
        "WRONG_GROUP_DOMAIN"
    );
    assert_eq!(code(info(vec![1, 2, 3], group.ear_key).await), "MALFORMED");
}

// Requirement: AS-CONN-1
/// Until bob accepts, alice's request is all she can put in front of him: she cannot invite
/// him (she holds no friendship token), the QS hands no key package to a guessed token, and
/// bob's queue stays empty. The request itself went into bob's direct queue anonymously
/// (`enqueue_connection` takes no authentication: `Auth::None`, checked by
/// `bad_input_gets_a_problem_with_a_code`), sealed to bob's connection package, so the
/// server does not learn who asked.
async fn a_connection_request_pushes_nothing_before_accept(server: &TestServer) {
    let (mut alice, _ah) = server.client("alice@a.test").await;
    let (mut bob, _bh) = server.client("bob@a.test").await;
    alice.connect("bob@a.test").await.unwrap();
    alice.create_group("early").await.unwrap();
    let refused = alice.invite("early", "bob@a.test").await.unwrap_err();
    assert!(
        refused.to_string().contains("not a connected contact"),
        "{refused}"
    );
    // A guessed friendship token gets no key package.
    let api = Api::new(&server.url).unwrap();
    let mut guess = [0u8; 32];
    OsRng.fill_bytes(&mut guess);
    let fetched = api
        .call::<_, qs::FetchKeyPackagesResponse>(
            "qs",
            qs::FETCH_KEY_PACKAGES,
            &qs::FetchKeyPackagesRequest {
                friendship_token: guess,
            },
            Signer::Anonymous,
        )
        .await;
    let code = code(fetched);
    assert!(code == "UNKNOWN_FRIENDSHIP_TOKEN", "{code}");
    // Bob sees the request, and nothing else has reached him.
    assert_eq!(bob.requests().await.unwrap().len(), 1);
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["kind"] != "joined" && e["kind"] != "message"),
        "{events:?}"
    );
    // Once he accepts, the invitation goes through.
    bob.accept("alice@a.test").await.unwrap();
    alice.sync().await.unwrap();
    alice.invite("early", "bob@a.test").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(events.iter().any(|e| e["kind"] == "joined"), "{events:?}");
}

/// The MLS state of a client's group and the signer of its leaf, read from its store (the
/// client is idle).
async fn member_state(
    home: &std::path::Path,
    group_id: &[u8],
) -> (
    openmls::prelude::MlsGroup,
    openmls_basic_credential::SignatureKeyPair,
) {
    let store = phoenix_client::store::Store::open(home).await.unwrap();
    let provider = phoenix_client::mls::Provider::from_values(store.load_mls().await.unwrap());
    let group = openmls::prelude::MlsGroup::load(
        openmls_traits::OpenMlsProvider::storage(&provider),
        &openmls::prelude::GroupId::from_slice(group_id),
    )
    .unwrap()
    .unwrap();
    let signer = phoenix_client::mls::own_signer(&provider, &group).unwrap();
    (group, signer)
}

/// An external commit into the group `info` describes, by `credential` signed with
/// `signer` (openmls adds a Remove of the leaf that has the same signature key, if any):
/// the encoded commit and the new group info.
fn external_commit(
    info: &ds::ExternalCommitInfoResponse,
    credential: openmls::prelude::CredentialWithKey,
    signer: &openmls_basic_credential::SignatureKeyPair,
) -> (Vec<u8>, Vec<u8>) {
    use openmls::prelude::{
        LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn,
    };
    use openmls_traits::OpenMlsProvider;
    use tls_codec::Deserialize;
    let provider = phoenix_client::mls::Provider::from_values(Default::default());
    let MlsMessageBodyIn::GroupInfo(group_info) =
        MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice())
            .unwrap()
            .extract()
    else {
        panic!("not a group info");
    };
    let tree = RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice()).unwrap();
    let (_, bundle) = MlsGroup::external_commit_builder()
        .with_ratchet_tree(tree)
        .with_config(phoenix_client::mls::join_config())
        .build_group(&provider, group_info, credential)
        .unwrap()
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(phoenix_client::mls::capabilities())
                .build(),
        )
        .load_psks(provider.storage())
        .unwrap()
        .create_group_info(true)
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .unwrap()
        .finalize(&provider)
        .unwrap();
    let (commit, _, group_info) = bundle.into_messages();
    (
        commit.tls_serialize_detached().unwrap(),
        group_info.unwrap().tls_serialize_detached().unwrap(),
    )
}

async fn resync_is_only_for_the_leaf_owner_keeping_its_credential(server: &TestServer) {
    // Requirement: DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3
    use openmls::prelude::{BasicCredential, CredentialWithKey};
    let ((mut alice, alice_home), (_bob, bob_home)) = two_members(server).await;
    let record = alice.group("team").await.unwrap();
    let api = Api::new(&server.url).unwrap();
    let info: ds::ExternalCommitInfoResponse = api
        .call(
            "ds",
            ds::EXTERNAL_COMMIT_INFO,
            &ds::ExternalCommitInfoRequest {
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    let (alice_group, alice_signer) = member_state(alice_home.path(), &record.group_id).await;
    let (bob_group, bob_signer) = member_state(bob_home.path(), &record.group_id).await;
    let bob_leaf = bob_group.own_leaf_index().u32();
    let alice_leaf = alice_group.own_leaf_index().u32();
    let bob_node = bob_group.own_leaf_node().unwrap();
    let bob_credential = CredentialWithKey {
        credential: bob_node.credential().clone(),
        signature_key: bob_node.signature_key().clone(),
    };
    // Bob's entry as his client makes it: his queue config sealed to his QS, and his
    // encrypted credential (the same leaf key, so the same binding).
    let bob_id = phoenix_client::store::Store::open(bob_home.path())
        .await
        .unwrap()
        .identity()
        .await
        .unwrap()
        .unwrap();
    let sealed = crypto::hpke_seal(
        &bob_id.queue_config_key,
        crypto::hpke_info::QUEUE_CONFIG,
        bob_id.qs_domain.as_bytes(),
        &codec::encode(&qs::QueueConfig {
            client_id: bob_id.qs_client_id,
        })
        .unwrap(),
    )
    .unwrap();
    let member = info
        .credentials
        .iter()
        .find(|c| c.leaf_index == bob_leaf)
        .map(|c| ds::MemberInfo {
            queue_config: qs::SealedQueueConfig {
                qs_domain: bob_id.qs_domain.clone(),
                sealed: sealed.clone(),
            },
            encrypted_credential: c.encrypted_credential.clone(),
        })
        .unwrap();
    let send = |commit: &(Vec<u8>, Vec<u8>),
                leaf_index: u32,
                key: &openmls_basic_credential::SignatureKeyPair| {
        phoenix_client::api::seal(
            "ds",
            ds::RESYNC,
            &ds::ResyncRequest {
                timestamp: phoenix_client::client::now(),
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                commit: VLBytes::new(commit.0.clone()),
                group_info: VLBytes::new(commit.1.clone()),
                member: member.clone(),
            },
            Signer::DsLeaf { leaf_index, key },
        )
        .unwrap()
    };
    let post = |body: Vec<u8>| {
        let api = &api;
        async move { api.post_sealed("ds", ds::RESYNC, &body, None).await }
    };
    let valid = external_commit(&info, bob_credential.clone(), &bob_signer);

    // Another credential on bob's key: refused (DS-RESYNC-2).
    let mut pseudonym = vec![0u8; 16];
    OsRng.fill_bytes(&mut pseudonym);
    let other = external_commit(
        &info,
        CredentialWithKey {
            credential: BasicCredential::new(pseudonym).into(),
            signature_key: bob_node.signature_key().clone(),
        },
        &bob_signer,
    );
    assert_eq!(
        code(post(send(&other, bob_leaf, &bob_signer)).await),
        "INVALID_COMMIT"
    );
    // Alice, signing as herself, removes bob's leaf: refused (DS-RESYNC-1).
    assert_eq!(
        code(post(send(&valid, alice_leaf, &alice_signer)).await),
        "INVALID_COMMIT"
    );
    // Someone else's key naming bob's leaf, and a leaf nobody holds (DS-RESYNC-1).
    let outsider = openmls_basic_credential::SignatureKeyPair::new(
        phoenix_client::mls::CIPHERSUITE.signature_algorithm(),
    )
    .unwrap();
    assert_eq!(
        code(post(send(&valid, bob_leaf, &outsider)).await),
        "BAD_SIGNATURE"
    );
    assert_eq!(
        code(post(send(&valid, 7, &outsider)).await),
        "UNKNOWN_SENDER"
    );
    // An outsider's external commit (it removes nobody), signed by bob: refused.
    let joiner = external_commit(
        &info,
        CredentialWithKey {
            credential: BasicCredential::new(vec![9u8; 16]).into(),
            signature_key: outsider.public().into(),
        },
        &outsider,
    );
    assert_eq!(
        code(post(send(&joiner, bob_leaf, &bob_signer)).await),
        "INVALID_COMMIT"
    );
    // Nothing changed so far; bob's own resync is accepted, once (DS-RESYNC-3).
    let body = send(&valid, bob_leaf, &bob_signer);
    post(body.clone()).await.unwrap();
    assert_eq!(code(post(body).await), "REPLAYED");
    let after: ds::ExternalCommitInfoResponse = api
        .call(
            "ds",
            ds::EXTERNAL_COMMIT_INFO,
            &ds::ExternalCommitInfoRequest {
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    assert_eq!(after.credentials.len(), 2, "bob is in exactly one leaf");
    // Alice hears of it and sees bob once, verified.
    let events = alice.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "member_resynced" && e["member"] == "bob@a.test"),
        "{events:?}"
    );
    let members = alice.members("team").await.unwrap();
    assert_eq!(
        members
            .iter()
            .filter(|m| m.fid.as_deref() == Some("bob@a.test") && m.verified)
            .count(),
        1,
        "{members:?}"
    );
}
