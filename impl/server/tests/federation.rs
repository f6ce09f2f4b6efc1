//! QS-to-QS federation over real HTTP between two in-process servers, `a.test` and
//! `b.test` (on SQLite and on Postgres): a message signed by a.test's QS is accepted by
//! b.test once; a replay, a forgery, a misaddressed message and one from a peer b.test's
//! policy refuses are each rejected with their own error code and change nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use tls_codec::VLBytes;

use phoenix_client::api::{Api, Signer};
use phoenix_server::federation::{FederationSettings, Policy};
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::{OutboxEntry, Store};
use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info};
use phoenix_types::discovery::Resolver;
use phoenix_types::error::Problem;
use phoenix_types::ids::{Domain, QsId};
use phoenix_types::messages::federation::{self, FederatedEnqueue, FederatedEnqueueTbs};
use phoenix_types::messages::qs::{self, QueueConfig, SealedQueueConfig};
use phoenix_types::messages::{DequeueRequest, DequeueResponse};
use support::{Backend, Storage, listen};

struct Running {
    server: Arc<Server>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn run(
    domain: &str,
    store: Store,
    federation: FederationSettings,
    listener: tokio::net::TcpListener,
    url: String,
) -> Running {
    let mut limits = Limits::default();
    // The push receivers of these tests are plain HTTP on loopback.
    limits.push.allow_http = true;
    let server = Server::start_with(Domain::parse(domain).unwrap(), store, limits, federation)
        .await
        .unwrap();
    Running {
        _shutdown: support::serve(server.clone(), listener),
        server,
        url,
    }
}

/// A store of `backend` for one test (Postgres schemas named `fed_...`).
async fn store(backend: Backend) -> Option<(Store, Storage)> {
    support::store(backend, "fed").await
}

/// a.test and b.test, b.test refusing evil.test; plus evil.test itself (so that its key
/// could be fetched if b.test asked, which it must not).
struct Federation {
    a: Running,
    b: Running,
    evil: Running,
    _storage: Vec<Storage>,
}

async fn federation(b_store: Store) -> Federation {
    let (la, ua) = listen().await;
    let (lb, ub) = listen().await;
    let (le, ue) = listen().await;
    let resolver = Resolver::parse(
        [
            format!("a.test={ua}"),
            format!("b.test={ub}"),
            format!("evil.test={ue}"),
        ]
        .iter()
        .map(String::as_str),
    )
    .unwrap();
    let settings = |policy: Policy| FederationSettings {
        resolver: resolver.clone(),
        policy,
        ..FederationSettings::default()
    };
    let (a_store, da) = store(Backend::Sqlite).await.unwrap();
    let (e_store, de) = store(Backend::Sqlite).await.unwrap();
    let a = run("a.test", a_store, settings(Policy::default()), la, ua).await;
    let b = run(
        "b.test",
        b_store,
        settings(Policy::Open {
            blocked: BTreeSet::from([Domain::parse("evil.test").unwrap()]),
        }),
        lb,
        ub,
    )
    .await;
    let evil = run("evil.test", e_store, settings(Policy::default()), le, ue).await;
    Federation {
        a,
        b,
        evil,
        _storage: vec![da, de],
    }
}

/// The queue key and first chain secret of every QS user these tests create.
static QUEUE_KEY: std::sync::LazyLock<crypto::HpkeKeyPair> =
    std::sync::LazyLock::new(|| crypto::HpkeKeyPair::generate(&mut OsRng).unwrap());
const QUEUE_SECRET: [u8; 32] = [7; 32];

/// A QS user on b.test: its client id and auth key.
async fn queue_on(b: &Running) -> (QsId, ed25519_dalek::SigningKey) {
    let api = Api::new(&b.url).unwrap();
    let client_key = crypto::generate_signing_key(&mut OsRng);
    let user_key = crypto::generate_signing_key(&mut OsRng);
    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let created: qs::CreateUserResponse = api
        .call(
            "qs",
            qs::CREATE_USER,
            &qs::CreateUserRequest {
                user_auth_key: VLBytes::new(user_key.verifying_key().to_bytes().to_vec()),
                friendship_token: token,
                client_auth_key: VLBytes::new(client_key.verifying_key().to_bytes().to_vec()),
                queue_key: VLBytes::new(QUEUE_KEY.public.clone()),
                queue_ratchet_secret: QUEUE_SECRET,
            },
            Signer::Anonymous,
        )
        .await
        .unwrap();
    (created.client_id, client_key)
}

fn sealed_for(server: &Server, client_id: QsId) -> Vec<u8> {
    let plain = codec::encode(&QueueConfig { client_id }).unwrap();
    let sealed = crypto::hpke_seal(
        &server.queue_config_key.public,
        hpke_info::QUEUE_CONFIG,
        server.domain.as_str().as_bytes(),
        &plain,
    )
    .unwrap();
    codec::encode(&SealedQueueConfig {
        qs_domain: server.domain.to_string(),
        sealed,
    })
    .unwrap()
}

fn entry(destination: &str, queue_config: Vec<u8>, payload: &[u8]) -> OutboxEntry {
    let mut dedup = [0u8; 16];
    OsRng.fill_bytes(&mut dedup);
    OutboxEntry {
        destination: destination.into(),
        queue_config,
        payload: payload.to_vec(),
        dedup,
        notify: true,
    }
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("{url}/phoenix/v1/federation/enqueue"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let code = serde_json::from_slice::<Problem>(&bytes)
        .ok()
        .map(|p| p.code);
    (status, code)
}

async fn queue(b: &Running, client: QsId, key: &ed25519_dalek::SigningKey) -> Vec<Vec<u8>> {
    let response: DequeueResponse = Api::new(&b.url)
        .unwrap()
        .call(
            "qs",
            qs::DEQUEUE,
            &DequeueRequest {
                timestamp: now(),
                sequence_number_start: 0,
                max: 100,
            },
            Signer::QsClient { id: client, key },
        )
        .await
        .unwrap();
    // Requirement: QS-ENC-1 (sealed under the queue's chain; opened as the owner would)
    let mut reader = phoenix_types::queue_ratchet::QueueReader::new(
        client,
        QUEUE_KEY.private.clone(),
        0,
        QUEUE_SECRET,
    );
    response
        .messages
        .into_iter()
        .map(|m| {
            reader
                .open(m.sequence_number, m.payload.as_slice())
                .unwrap()
        })
        .collect()
}

async fn each_refusal_has_its_own_code(b_store: Store) {
    let f = federation(b_store).await;
    let (client, key) = queue_on(&f.b).await;
    let b_domain = Domain::parse("b.test").unwrap();

    // A genuine message from a.test is accepted, once.
    let genuine = entry("b.test", sealed_for(&f.b.server, client), b"payload 1");
    let body =
        phoenix_server::federation::send::build(&f.a.server, &b_domain, &genuine, now()).unwrap();
    assert_eq!(post(&f.b.url, body.clone()).await, (200, None));
    // Replayed: the same bytes again.
    assert_eq!(post(&f.b.url, body).await, (409, Some("REPLAYED".into())));
    // A retry of the same message (same id, fresh signature) is a replay too: delivered once.
    let retry =
        phoenix_server::federation::send::build(&f.a.server, &b_domain, &genuine, now() + 1)
            .unwrap();
    assert_eq!(post(&f.b.url, retry).await, (409, Some("REPLAYED".into())));

    // Forged: claims to come from a.test, signed by another key.
    let forged_entry = entry("b.test", sealed_for(&f.b.server, client), b"forged");
    let tbs = codec::encode(&FederatedEnqueueTbs {
        sender: "a.test".into(),
        destination: "b.test".into(),
        message_id: forged_entry.dedup,
        timestamp: now(),
        queue_config: VLBytes::new(forged_entry.queue_config.clone()),
        payload: VLBytes::new(forged_entry.payload.clone()),
        notification: phoenix_types::messages::Notification::Send,
    })
    .unwrap();
    let forger = crypto::generate_signing_key(&mut OsRng);
    let forged = codec::encode(&FederatedEnqueue {
        signature: VLBytes::new(crypto::sign(&forger, federation::LABEL, &tbs).to_vec()),
        tbs: VLBytes::new(tbs),
    })
    .unwrap();
    assert_eq!(
        post(&f.b.url, forged).await,
        (401, Some("BAD_SIGNATURE".into()))
    );

    // Misaddressed: signed by a.test but for c.test (no open relay) ...
    let elsewhere = entry("c.test", sealed_for(&f.b.server, client), b"relay me");
    let body = phoenix_server::federation::send::build(
        &f.a.server,
        &Domain::parse("c.test").unwrap(),
        &elsewhere,
        now(),
    )
    .unwrap();
    assert_eq!(
        post(&f.b.url, body).await,
        (421, Some("MISADDRESSED".into()))
    );
    // ... or addressed to b.test with a queue config for another QS.
    let other_qs = entry("b.test", sealed_for(&f.a.server, client), b"relay me too");
    let body =
        phoenix_server::federation::send::build(&f.a.server, &b_domain, &other_qs, now()).unwrap();
    assert_eq!(
        post(&f.b.url, body).await,
        (421, Some("MISADDRESSED".into()))
    );

    // Refused by policy: evil.test is blocked on b.test, however well it signs.
    let from_evil = entry("b.test", sealed_for(&f.b.server, client), b"spam");
    let body =
        phoenix_server::federation::send::build(&f.evil.server, &b_domain, &from_evil, now())
            .unwrap();
    assert_eq!(
        post(&f.b.url, body).await,
        (403, Some("FEDERATION_REFUSED".into()))
    );

    // Stale: a genuine signature on an old message.
    let old = entry("b.test", sealed_for(&f.b.server, client), b"old");
    let body = phoenix_server::federation::send::build(&f.a.server, &b_domain, &old, now() - 3600)
        .unwrap();
    assert_eq!(
        post(&f.b.url, body).await,
        (401, Some("STALE_REQUEST".into()))
    );

    // Garbage.
    assert_eq!(post(&f.b.url, vec![1, 2, 3]).await.0, 400);

    // Only the genuine message reached the queue.
    assert_eq!(queue(&f.b, client, &key).await, vec![b"payload 1".to_vec()]);
}

// Requirement: QS-PUSH-2, QS-PUSH-4
/// A message a.test fans out to a client of b.test makes b.test's QS notify the client's
/// push endpoint, unless the sender suppressed the notification: the choice travels in the
/// signed federated enqueue.
async fn push_follows_the_senders_choice_across_federation(b_store: Store) {
    let f = federation(b_store).await;
    let (client, key) = queue_on(&f.b).await;
    let mut receiver = support::push_receiver().await;
    let api = Api::new(&f.b.url).unwrap();
    let _: phoenix_types::messages::Empty = api
        .call(
            "qs",
            qs::SET_PUSH_ENDPOINT,
            &qs::SetPushEndpointRequest {
                timestamp: now(),
                endpoint: Some(qs::PushEndpoint {
                    url: VLBytes::new(format!("{}/push/b", receiver.url).into_bytes()),
                    p256dh: VLBytes::new(
                        hex::decode(
                            "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
                             4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
                        )
                        .unwrap(),
                    ),
                    auth: [1; 16],
                }),
            },
            Signer::QsClient {
                id: client,
                key: &key,
            },
        )
        .await
        .unwrap();
    let b_domain = Domain::parse("b.test").unwrap();
    let announced = entry("b.test", sealed_for(&f.b.server, client), b"announced");
    let body =
        phoenix_server::federation::send::build(&f.a.server, &b_domain, &announced, now()).unwrap();
    assert_eq!(post(&f.b.url, body).await, (200, None));
    let (path, _, _) = receiver.next().await;
    assert_eq!(path, "/push/b");
    let mut silent = entry("b.test", sealed_for(&f.b.server, client), b"silent");
    silent.notify = false;
    let body =
        phoenix_server::federation::send::build(&f.a.server, &b_domain, &silent, now()).unwrap();
    assert_eq!(post(&f.b.url, body).await, (200, None));
    assert!(
        receiver.quiet(2).await,
        "a suppressed message was announced"
    );
    assert_eq!(
        queue(&f.b, client, &key).await,
        vec![b"announced".to_vec(), b"silent".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_push_follows_the_senders_choice_across_federation() {
    let (store, _storage) = store(Backend::Sqlite).await.unwrap();
    push_follows_the_senders_choice_across_federation(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_push_follows_the_senders_choice_across_federation() {
    if let Some((store, _storage)) = store(Backend::Postgres).await {
        push_follows_the_senders_choice_across_federation(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_each_refusal_has_its_own_code() {
    let (store, _storage) = store(Backend::Sqlite).await.unwrap();
    each_refusal_has_its_own_code(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_each_refusal_has_its_own_code() {
    if let Some((store, _storage)) = store(Backend::Postgres).await {
        each_refusal_has_its_own_code(store).await;
    }
}

/// a.test caches b.test's CA certificates for its clients, within the cache window b.test
/// signed, and fetches them again once it is over (picking up a rotation); a refused peer's
/// certificates are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_ca_certificates_are_cached_within_the_issuers_window() {
    use phoenix_types::messages::as_;
    let (la, ua) = listen().await;
    let (lb, ub) = listen().await;
    let resolver = Resolver::parse(
        [format!("a.test={ua}"), format!("b.test={ub}")]
            .iter()
            .map(String::as_str),
    )
    .unwrap();
    let (a_store, _da) = store(Backend::Sqlite).await.unwrap();
    let (b_store, _db) = store(Backend::Sqlite).await.unwrap();
    let a = run(
        "a.test",
        a_store,
        FederationSettings {
            resolver: resolver.clone(),
            policy: Policy::Open {
                blocked: BTreeSet::from([Domain::parse("c.test").unwrap()]),
            },
            ..FederationSettings::default()
        },
        la,
        ua,
    )
    .await;
    let mut b_settings = FederationSettings {
        resolver,
        ..FederationSettings::default()
    };
    b_settings.polyproto.idcert_cache_ttl = 2;
    let b = run("b.test", b_store, b_settings, lb, ub).await;

    let api = Api::new(&a.url).unwrap();
    let ask = |domain: &'static str| {
        let api = api.clone();
        async move {
            api.call::<_, as_::ServerCertificateResponse>(
                "as",
                as_::DOMAIN_CERTIFICATES,
                &as_::DomainCertificatesRequest {
                    domain: domain.into(),
                },
                Signer::Anonymous,
            )
            .await
        }
    };
    let first = ask("b.test").await.unwrap();
    assert_eq!(
        first.ca_certificate.as_slice(),
        b.server.ca().certificate.der.as_slice()
    );
    // b.test rotates; within the window a.test still serves what it cached ...
    b.server.rotate_ca().await.unwrap();
    let cached = ask("b.test").await.unwrap();
    assert_eq!(cached.ca_certificate, first.ca_certificate);
    // ... and after it, the new CA and the history.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let fresh = ask("b.test").await.unwrap();
    assert_eq!(
        fresh.ca_certificate.as_slice(),
        b.server.ca().certificate.der.as_slice()
    );
    assert_eq!(fresh.history.len(), 2);
    // Our own domain is answered from our own history; a refused peer is refused.
    assert_eq!(
        ask("a.test").await.unwrap().ca_certificate.as_slice(),
        a.server.ca().certificate.der.as_slice()
    );
    let refused = ask("c.test").await.unwrap_err();
    assert_eq!(refused.code(), Some("FEDERATION_REFUSED"));
}

// Requirement: OPS-TLS-3
/// A peer is reached only at the URL configured for its domain: a redirect (here from a
/// `--resolve` URL to the real server) is not followed, so no answer can send this server to
/// a plain-HTTP URL nobody configured. With the URL itself, discovery works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_redirects_are_not_followed() {
    use phoenix_server::federation::Peers;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (lb, ub) = listen().await;
    let (b_store, _db) = store(Backend::Sqlite).await.unwrap();
    let _b = run(
        "b.test",
        b_store,
        FederationSettings::default(),
        lb,
        ub.clone(),
    )
    .await;
    // Every request to the redirector is sent on to b.test.
    let (redirector, ur) = listen().await;
    let target = ub.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = redirector.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let b = Domain::parse("b.test").unwrap();
    let via = |url: &str| FederationSettings {
        resolver: Resolver::parse([format!("b.test={url}")].iter().map(String::as_str)).unwrap(),
        ..FederationSettings::default()
    };
    let redirected = Peers::new(&via(&ur)).unwrap().peer(&b, false).await;
    let refused = redirected.expect_err("a redirect was followed");
    assert!(refused.detail.contains("HTTP 307"), "{}", refused.detail);
    let direct = Peers::new(&via(&ub)).unwrap().peer(&b, false).await;
    assert!(direct.is_ok(), "{direct:?}");
}
