//! The polyproto routes of a real server (in-process, over real HTTP on loopback), on
//! SQLite and on Postgres: `/.well-known/polyproto-core`, the certificate history as
//! byte-exact JCS cacheable ID-Certs (before and after a CA rotation), and foreign sessions:
//! a key trial answered with an ID-Cert key gives a token; a wrong signature, an expired
//! trial, an unknown FID or serial and a replay are each refused with their own code;
//! `DELETE session` ends the session and invalidates the certificate;
//! `PUT session/idcert/extern` moves a session to a renewed certificate or records a
//! revocation. Across two servers, a.test's user opens a session on b.test, which asks
//! a.test, also for a certificate issued before a.test rotated its CA.
//!
//! The polyproto crate's own view of these routes is `tests/polyproto-interop`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tempfile::TempDir;

use phoenix_server::federation::{FederationSettings, Policy};
use phoenix_server::polyproto::{self, decimal};
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::postgres::PgStore;
use phoenix_server::store::sessions::SessionStore;
use phoenix_server::store::{AsClientRecord, AsStore, CaRecord, CreateUser, Store};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::discovery::Resolver;
use phoenix_types::error::Problem;
use phoenix_types::ids::{ClientId, Domain, Fid};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A running server.
struct Running {
    server: Arc<Server>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _storage: Storage,
}

/// What a test's database leaves behind: a temporary directory, and for Postgres a schema,
/// dropped when the test ends (also when it fails).
struct Storage {
    _dir: TempDir,
    schema: Option<(String, String)>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        let Some((url, schema)) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which must not block: use a thread with a
        // runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn store(backend: Backend) -> Option<(Store, Storage)> {
    let dir = tempfile::tempdir().unwrap();
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
            let storage = Storage {
                _dir: dir,
                schema: None,
            };
            Some((Store::connect(&url).await.unwrap(), storage))
        }
        Backend::Postgres => {
            let url = std::env::var("PHOENIX_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
            let mut bytes = [0u8; 8];
            OsRng.fill_bytes(&mut bytes);
            let schema = format!("p2_{}", hex::encode(bytes));
            match PgStore::connect_with_schema(&url, &schema).await {
                Ok(pg) => Some((
                    Store::Postgres(pg),
                    Storage {
                        _dir: dir,
                        schema: Some((url, schema)),
                    },
                )),
                Err(e) => {
                    let required = std::env::var("CI").is_ok_and(|v| v == "true")
                        || std::env::var("PHOENIX_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                    assert!(
                        !required,
                        "postgres is unreachable and required (CI=true or PHOENIX_TEST_REQUIRE_POSTGRES=1): {e}"
                    );
                    eprintln!("skipping postgres: {e}");
                    None
                }
            }
        }
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

async fn run(
    domain: &str,
    (store, storage): (Store, Storage),
    federation: FederationSettings,
    (listener, url): (tokio::net::TcpListener, String),
) -> Running {
    let domain = Domain::parse(domain).unwrap();
    // The first CA was created an hour ago, so that a CA rotated to in a test is told apart
    // from it by `idcert/server?timestamp=` (a new CA is back-dated by a minute).
    let key = crypto::generate_signing_key(&mut OsRng);
    let (not_before, not_after) = (now() - 3600, now() + 365 * 24 * 3600);
    let certificate = certs::create_ca_certificate(
        &domain,
        &key,
        &certs::random_serial(&mut OsRng),
        not_before,
        not_after,
    )
    .unwrap();
    assert!(
        store
            .insert_first_ca(&CaRecord {
                signing_key: key.to_bytes(),
                certificate,
                not_before,
                not_after,
            })
            .await
            .unwrap()
    );
    let server = Server::start_with(domain, store, Limits::default(), federation)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(phoenix_server::http::serve(
        server.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        server,
        url,
        _shutdown: tx,
        _storage: storage,
    }
}

/// One server `a.test` on `backend`.
async fn single(backend: Backend, settings: polyproto::Settings) -> Option<Running> {
    let store = store(backend).await?;
    let federation = FederationSettings {
        polyproto: settings,
        ..FederationSettings::default()
    };
    Some(run("a.test", store, federation, listen().await).await)
}

/// A user with one client, registered straight through the store with a certificate from
/// the server's current CA. Returns the client's key and the certificate.
async fn user(server: &Server, fid: &str, client_id: &str) -> (SigningKey, ParsedCert) {
    let (key, record) = issue(server, fid, client_id);
    assert_eq!(
        server.store.create_user(&record, now()).await.unwrap(),
        CreateUser::Created
    );
    (key, ParsedCert::parse(&record.certificate).unwrap())
}

/// Renew a client's certificate (new key) with the current CA.
async fn renew(server: &Server, fid: &str, client_id: &str) -> (SigningKey, ParsedCert) {
    let (key, record) = issue(server, fid, client_id);
    assert!(server.store.renew_client(&record).await.unwrap());
    (key, ParsedCert::parse(&record.certificate).unwrap())
}

fn issue(server: &Server, fid: &str, client_id: &str) -> (SigningKey, AsClientRecord) {
    let key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::create_csr(
        &Fid::parse(fid).unwrap(),
        &ClientId::parse(client_id).unwrap(),
        &key,
    )
    .unwrap();
    let csr = certs::verify_csr(&csr).unwrap();
    let ca = server.ca();
    let now = now();
    let der = certs::issue_client_certificate(
        &csr,
        &ca.signing_key,
        &ca.certificate,
        &certs::random_serial(&mut OsRng),
        now - 60,
        now + 30 * 24 * 3600,
    )
    .unwrap();
    let parsed = ParsedCert::parse(&der).unwrap();
    let record = AsClientRecord {
        fid: fid.to_owned(),
        client_id: client_id.to_owned(),
        certificate: der,
        public_key: parsed.public_key,
        serial: parsed.serial_hex(),
        not_before: parsed.not_before,
        not_after: parsed.not_after,
    };
    (key, record)
}

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn code(&self) -> String {
        let problem: Problem = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not a problem: {}", String::from_utf8_lossy(&self.body)));
        assert_eq!(problem.status, self.status);
        problem.code
    }

    /// The body is RFC 8785 canonical: parsing and re-serialising with sorted keys gives
    /// the same bytes (every value here is a string or an array of objects of strings).
    fn assert_jcs(&self) {
        let value: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(serde_json::to_vec(&value).unwrap(), self.body);
        assert!(!self.body.ends_with(b"\n"));
    }
}

async fn request(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    Answer {
        status,
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn get(server: &Running, path: &str) -> Answer {
    request(
        reqwest::Method::GET,
        format!("{}{path}", server.url),
        None,
        None,
    )
    .await
}

/// Verify a cacheable ID-Cert object with `ca_key` and return its certificate.
fn verify_cacheable(object: &Value, ca_key: &[u8; 32]) -> ParsedCert {
    let field = |name: &str| object[name].as_str().unwrap().to_owned();
    let cert = ParsedCert::parse(&certs::from_pem(&field("idCertPem")).unwrap()).unwrap();
    let mut signed = format!(
        "{} {} {}",
        decimal(&cert.serial),
        field("cacheNotValidBefore"),
        field("cacheNotValidAfter")
    );
    if let Some(at) = object.get("invalidatedAt") {
        signed.push_str(&format!(" {}", at.as_str().unwrap()));
    }
    let signature =
        ed25519_dalek::Signature::from_slice(&hex::decode(field("cacheSignature")).unwrap())
            .unwrap();
    crypto::verifying_key(ca_key)
        .unwrap()
        .verify_strict(signed.as_bytes(), &signature)
        .unwrap();
    let before: u64 = field("cacheNotValidBefore").parse().unwrap();
    let after: u64 = field("cacheNotValidAfter").parse().unwrap();
    assert!(before <= after && after <= cert.not_after.max(before));
    assert!(after - before <= 12 * 3600);
    cert
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    well_known_names_the_public_url,
    server_certificate_history_is_served_and_signed,
    actor_certificates_are_filtered,
    key_trial_gives_a_session,
    wrong_answers_are_refused_with_their_own_codes,
    expired_trials_are_refused,
    delete_session_invalidates_the_certificate,
    extern_certificate_updates,
    foreign_session_via_the_home_server,
);

async fn well_known_names_the_public_url(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let answer = get(&a, "/.well-known/polyproto-core").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        br#"{"api":"https://a.test","oidc_issuer":"https://a.test"}"#
    );
    let settings = polyproto::Settings {
        public_url: Some(polyproto::parse_public_url("http://127.0.0.1:9/").unwrap()),
        ..polyproto::Settings::default()
    };
    let Some(b) = single(backend, settings).await else {
        return;
    };
    let answer = get(&b, "/.well-known/polyproto-core").await;
    assert_eq!(
        answer.body,
        br#"{"api":"http://127.0.0.1:9","oidc_issuer":"http://127.0.0.1:9"}"#
    );
}

async fn server_certificate_history_is_served_and_signed(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let first = a.server.ca();
    let answer = get(&a, "/.p2/core/v1/idcert/server").await;
    assert_eq!(answer.status, 200);
    answer.assert_jcs();
    let object = answer.json();
    assert_eq!(
        object.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "cacheNotValidAfter",
            "cacheNotValidBefore",
            "cacheSignature",
            "idCertPem"
        ]
    );
    let served = verify_cacheable(&object, &first.certificate.public_key);
    assert_eq!(served.der, first.certificate.der);
    let window: u64 = object["cacheNotValidAfter"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - object["cacheNotValidBefore"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    assert_eq!(window, polyproto::MIN_CACHE_TTL);

    // Nothing before the first CA; bad input.
    let before = first.certificate.not_before - 1;
    let answer = get(
        &a,
        &format!("/.p2/core/v1/idcert/server?timestamp={before}"),
    )
    .await;
    assert_eq!((answer.status, answer.code().as_str()), (404, "NOT_FOUND"));
    let answer = get(&a, "/.p2/core/v1/idcert/server?timestamp=-5").await;
    assert_eq!((answer.status, answer.code().as_str()), (400, "MALFORMED"));

    // After a rotation: now gives the new CA, the first CA's start gives the first one,
    // and both answers are signed by the new (current) key.
    let second = a.server.rotate_ca().await.unwrap();
    let answer = get(&a, "/.p2/core/v1/idcert/server").await;
    let served = verify_cacheable(&answer.json(), &second.certificate.public_key);
    assert_eq!(served.der, second.certificate.der);
    let at = first.certificate.not_before + 60;
    let answer = get(&a, &format!("/.p2/core/v1/idcert/server?timestamp={at}")).await;
    assert_eq!(answer.status, 200);
    answer.assert_jcs();
    let served = verify_cacheable(&answer.json(), &second.certificate.public_key);
    assert_eq!(served.der, first.certificate.der);
}

async fn actor_certificates_are_filtered(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (_, first) = user(&a.server, "alice@a.test", "laptop").await;
    let (_, second) = renew(&a.server, "alice@a.test", "laptop").await;
    let ca = a.server.ca();
    let key = ca.certificate.public_key;

    let answer = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test").await;
    assert_eq!(answer.status, 200);
    answer.assert_jcs();
    let list = answer.json();
    let certs: Vec<ParsedCert> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|object| verify_cacheable(object, &key))
        .collect();
    // (Issued in the same second, so in either order.)
    assert_eq!(
        certs.iter().map(|c| c.der.clone()).collect::<BTreeSet<_>>(),
        BTreeSet::from([first.der.clone(), second.der.clone()])
    );
    for cert in &certs {
        cert.verify_issued_by(&ca.certificate, Some(now())).unwrap();
    }
    // `%40` for `@`, and the session id filter.
    let answer = get(
        &a,
        "/.p2/core/v1/idcert/actor/alice%40a.test?sessionId=laptop",
    )
    .await;
    assert_eq!(answer.json().as_array().unwrap().len(), 2);
    let answer = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test?sessionId=phone").await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, b"[]".as_slice())
    );
    // Validity filters: overlapping [notBefore, notAfter].
    let after_all = second.not_after + 1;
    let answer = get(
        &a,
        &format!("/.p2/core/v1/idcert/actor/alice@a.test?notBefore={after_all}"),
    )
    .await;
    assert_eq!(answer.body, b"[]");
    let answer = get(
        &a,
        &format!(
            "/.p2/core/v1/idcert/actor/alice@a.test?notBefore={}&notAfter={}",
            first.not_before, first.not_before
        ),
    )
    .await;
    assert_eq!(answer.json().as_array().unwrap().len(), 2);
    let answer = get(
        &a,
        &format!(
            "/.p2/core/v1/idcert/actor/alice@a.test?notAfter={}",
            first.not_before - 1
        ),
    )
    .await;
    assert_eq!(answer.body, b"[]");

    // Unknown users, other domains, bad input.
    let answer = get(&a, "/.p2/core/v1/idcert/actor/bob@a.test").await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (404, "UNKNOWN_USER")
    );
    let answer = get(&a, "/.p2/core/v1/idcert/actor/bob@b.test").await;
    assert_eq!((answer.status, answer.code().as_str()), (404, "NOT_FOUND"));
    let answer = get(&a, "/.p2/core/v1/idcert/actor/not-an-fid").await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (400, "INVALID_FID")
    );
    let answer = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test?notBefore=x").await;
    assert_eq!((answer.status, answer.code().as_str()), (400, "MALFORMED"));
}

/// GET a key trial from `server`.
async fn trial(server: &Running) -> String {
    let answer = get(server, "/.p2/core/v1/session/auth").await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.assert_jcs();
    let object = answer.json();
    let expires: u64 = object["expires"].as_str().unwrap().parse().unwrap();
    assert!(expires >= now());
    let trial = object["trial"].as_str().unwrap().to_owned();
    assert!(trial.len() >= 64);
    trial
}

/// POST an answer to `server`'s key trial.
async fn answer(
    server: &Running,
    fid: &str,
    serial: &str,
    signature: &[u8],
    trial: Option<&str>,
) -> Answer {
    let mut body = BTreeMap::from([
        ("fid", fid.to_owned()),
        ("serialNumber", serial.to_owned()),
        ("signature", hex::encode(signature)),
    ]);
    if let Some(trial) = trial {
        body.insert("trial", trial.to_owned());
    }
    request(
        reqwest::Method::POST,
        format!("{}/.p2/core/v1/session/auth", server.url),
        None,
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

/// Open a session on `server` for the holder of `key` and `cert`.
async fn open_session(server: &Running, fid: &str, key: &SigningKey, cert: &ParsedCert) -> String {
    let trial = trial(server).await;
    let signature = key.sign(trial.as_bytes()).to_bytes();
    let response = answer(server, fid, &decimal(&cert.serial), &signature, None).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.assert_jcs();
    let object = response.json();
    assert_eq!(object.as_object().unwrap().len(), 1);
    object["token"].as_str().unwrap().to_owned()
}

async fn key_trial_gives_a_session(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&a, "alice@a.test", &key, &cert).await;
    let session = polyproto::session(&a.server, &token).await.unwrap();
    assert_eq!(session.fid.to_string(), "alice@a.test");
    assert_eq!(session.client_id, "laptop");
    assert_eq!(session.serial, decimal(&cert.serial));
    assert!(session.expires_at <= cert.not_after);
    assert!(
        polyproto::session(&a.server, &"0".repeat(64))
            .await
            .is_none()
    );
    assert!(polyproto::session(&a.server, "short").await.is_none());

    // With the trial named explicitly, too; a new session for the same certificate
    // replaces the old token (one active token per certificate).
    let trial = trial(&a).await;
    let signature = key.sign(trial.as_bytes()).to_bytes();
    let response = answer(
        &a,
        "alice@a.test",
        &decimal(&cert.serial),
        &signature,
        Some(&trial),
    )
    .await;
    assert_eq!(response.status, 200);
    let second = response.json()["token"].as_str().unwrap().to_owned();
    // The completed trial keeps the answer (public in polyproto) but forgets the address.
    let record = a.server.store.trial(&trial).await.unwrap().unwrap();
    assert_eq!(record.ip, "");
    assert_eq!(record.completion.unwrap().fid, "alice@a.test");
    assert!(polyproto::session(&a.server, &second).await.is_some());
    assert!(polyproto::session(&a.server, &token).await.is_none());
}

async fn wrong_answers_are_refused_with_their_own_codes(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let serial = decimal(&cert.serial);

    // No trial at all.
    let response = answer(&a, "alice@a.test", &serial, &[0; 64], None).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "UNAUTHENTICATED")
    );
    let response = answer(&a, "alice@a.test", &serial, &[0; 64], Some("nope")).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "UNAUTHENTICATED")
    );

    // A wrong signature ends the trial.
    let t = trial(&a).await;
    let other = crypto::generate_signing_key(&mut OsRng);
    let response = answer(
        &a,
        "alice@a.test",
        &serial,
        &other.sign(t.as_bytes()).to_bytes(),
        None,
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "BAD_SIGNATURE")
    );
    let response = answer(
        &a,
        "alice@a.test",
        &serial,
        &key.sign(t.as_bytes()).to_bytes(),
        Some(&t),
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "STALE_REQUEST")
    );

    // Unknown FID, unknown serial.
    let t = trial(&a).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&a, "bob@a.test", &serial, &signature, Some(&t)).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (404, "UNKNOWN_USER")
    );
    let t = trial(&a).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&a, "alice@a.test", "12345", &signature, Some(&t)).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (404, "UNKNOWN_CLIENT")
    );

    // Malformed answers.
    for (fid, serial, signature, code) in [
        ("Not An Fid", serial.as_str(), vec![0u8; 64], "INVALID_FID"),
        ("alice@a.test", "0x12", vec![0u8; 64], "MALFORMED"),
        ("alice@a.test", "012", vec![0u8; 64], "MALFORMED"),
        ("alice@a.test", serial.as_str(), vec![0u8; 63], "MALFORMED"),
    ] {
        let response = answer(&a, fid, serial, &signature, None).await;
        assert_eq!((response.status, response.code()), (400, code.to_owned()));
    }
    let response = request(
        reqwest::Method::POST,
        format!("{}/.p2/core/v1/session/auth", a.url),
        None,
        Some(br#"{"fid":"alice@a.test","serialNumber":1,"signature":""}"#.to_vec()),
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (400, "MALFORMED")
    );

    // A replay, with and without naming the trial.
    let t = trial(&a).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&a, "alice@a.test", &serial, &signature, None).await;
    assert_eq!(response.status, 200);
    for named in [None, Some(t.as_str())] {
        let response = answer(&a, "alice@a.test", &serial, &signature, named).await;
        assert_eq!(
            (response.status, response.code().as_str()),
            (409, "REPLAYED")
        );
    }

    // Pending trials per address are bounded.
    let mut limited = None;
    for _ in 0..=polyproto::session::MAX_PENDING_PER_ADDRESS {
        let response = get(&a, "/.p2/core/v1/session/auth").await;
        if response.status != 200 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the per-address bound was not enforced");
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (429, "RATE_LIMITED")
    );
}

async fn expired_trials_are_refused(backend: Backend) {
    let settings = polyproto::Settings {
        key_trial_ttl: 0,
        ..polyproto::Settings::default()
    };
    let Some(a) = single(backend, settings).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let t = trial(&a).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    for named in [None, Some(t.as_str())] {
        let response = answer(
            &a,
            "alice@a.test",
            &decimal(&cert.serial),
            &signature,
            named,
        )
        .await;
        assert_eq!(
            (response.status, response.code().as_str()),
            (401, "STALE_REQUEST")
        );
    }
}

async fn delete_session_invalidates_the_certificate(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&a, "alice@a.test", &key, &cert).await;
    let url = format!("{}/.p2/core/v1/session", a.url);

    let response = request(reqwest::Method::DELETE, url.clone(), None, None).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "UNAUTHENTICATED")
    );
    let response = request(
        reqwest::Method::DELETE,
        format!("{url}?sessionId=phone"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FORBIDDEN")
    );
    let response = request(
        reqwest::Method::DELETE,
        format!("{url}?sessionId=laptop"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
    assert!(polyproto::session(&a.server, &token).await.is_none());
    let response = request(reqwest::Method::DELETE, url, Some(&token), None).await;
    assert_eq!(response.status, 401);

    // The home server now serves the certificate as invalidated (signed), and it cannot
    // open another session.
    let list = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test")
        .await
        .json();
    let object = &list.as_array().unwrap()[0];
    let at: u64 = object["invalidatedAt"].as_str().unwrap().parse().unwrap();
    assert!(at <= now());
    verify_cacheable(object, &a.server.ca().certificate.public_key);
    let t = trial(&a).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&a, "alice@a.test", &decimal(&cert.serial), &signature, None).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FORBIDDEN")
    );
}

async fn extern_certificate_updates(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let (_, other) = user(&a.server, "bob@a.test", "laptop").await;
    let token = open_session(&a, "alice@a.test", &key, &cert).await;
    let url = format!("{}/.p2/core/v1/session/idcert/extern", a.url);
    let put = |token: Option<String>, body: Vec<u8>| {
        let url = url.clone();
        async move { request(reqwest::Method::PUT, url, token.as_deref(), Some(body)).await }
    };
    let json_pem =
        |cert: &ParsedCert| serde_json::to_vec(&certs::to_pem(&cert.der).unwrap()).unwrap();

    // Authentication, and only the session's own actor and session id.
    let response = put(None, json_pem(&cert)).await;
    assert_eq!(response.status, 401);
    let response = put(Some(token.clone()), json_pem(&other)).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FORBIDDEN")
    );
    let response = put(Some(token.clone()), b"\"not a pem\"".to_vec()).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (400, "INVALID_CERTIFICATE")
    );

    // A renewed certificate (as polyproto 0.21 sends it: the JCS JSON string of the PEM)
    // becomes the session's.
    let (new_key, renewed) = renew(&a.server, "alice@a.test", "laptop").await;
    let response = put(Some(token.clone()), json_pem(&renewed)).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let session = polyproto::session(&a.server, &token).await.unwrap();
    assert_eq!(session.serial, decimal(&renewed.serial));

    // A certificate the home server does not know is refused.
    let (_, unknown) = issue(&a.server, "alice@a.test", "laptop");
    let unknown = ParsedCert::parse(&unknown.certificate).unwrap();
    let response = put(Some(token.clone()), json_pem(&unknown)).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (404, "UNKNOWN_CLIENT")
    );

    // A revocation, as an object with invalidatedAt: recorded, the session ends, the
    // certificate cannot open another one.
    let body = serde_json::to_vec(&BTreeMap::from([
        ("idCertPem", certs::to_pem(&renewed.der).unwrap()),
        ("invalidatedAt", now().to_string()),
    ]))
    .unwrap();
    let response = put(Some(token.clone()), body).await;
    assert_eq!(response.status, 201);
    assert!(polyproto::session(&a.server, &token).await.is_none());
    let t = trial(&a).await;
    let signature = new_key.sign(t.as_bytes()).to_bytes();
    let response = answer(
        &a,
        "alice@a.test",
        &decimal(&renewed.serial),
        &signature,
        None,
    )
    .await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FORBIDDEN")
    );
    let list = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test")
        .await
        .json();
    let invalidated: BTreeSet<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.get("invalidatedAt").is_some())
        .collect();
    assert_eq!(invalidated, BTreeSet::from([false, true]));
}

async fn foreign_session_via_the_home_server(backend: Backend) {
    // a.test on SQLite, b.test on `backend`; b.test resolves a.test to its loopback URL.
    let Some(b_store) = store(backend).await else {
        return;
    };
    let a_store = store(Backend::Sqlite).await.unwrap();
    let (la, ua) = listen().await;
    let (lb, ub) = listen().await;
    let resolver = Resolver::parse(
        [format!("a.test={ua}"), format!("b.test={ub}")]
            .iter()
            .map(String::as_str),
    )
    .unwrap();
    let settings = |policy: Policy| FederationSettings {
        resolver: resolver.clone(),
        policy,
        ..FederationSettings::default()
    };
    let a = run("a.test", a_store, settings(Policy::default()), (la, ua)).await;
    let b = run("b.test", b_store, settings(Policy::default()), (lb, ub)).await;

    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&b, "alice@a.test", &key, &cert).await;
    let session = polyproto::session(&b.server, &token).await.unwrap();
    assert_eq!(session.fid.to_string(), "alice@a.test");
    assert!(session.verified_until > now());
    assert!(polyproto::session(&a.server, &token).await.is_none());

    // a.test rotates its CA: the certificate issued by the old CA still opens a session on
    // b.test (b.test learns the old CA from a.test's idcert/server?timestamp=, vouched for
    // by the new key), and a certificate from the new CA does too.
    a.server.rotate_ca().await.unwrap();
    let token = open_session(&b, "alice@a.test", &key, &cert).await;
    assert!(polyproto::session(&b.server, &token).await.is_some());
    let (new_key, renewed) = user(&a.server, "carol@a.test", "phone").await;
    open_session(&b, "carol@a.test", &new_key, &renewed).await;

    // A session deleted on b.test invalidates the certificate in b.test's view only.
    let response = request(
        reqwest::Method::DELETE,
        format!("{}/.p2/core/v1/session", b.url),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(response.status, 204);
    let t = trial(&b).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&b, "alice@a.test", &decimal(&cert.serial), &signature, None).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FORBIDDEN")
    );
    open_session(&a, "alice@a.test", &key, &cert).await;

    // Unknown users and serials at the home server.
    let t = trial(&b).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&b, "zed@a.test", "1", &signature, Some(&t)).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (404, "UNKNOWN_USER")
    );

    // A home server b.test does not federate with.
    let c_store = store(Backend::Sqlite).await.unwrap();
    let c = run(
        "c.test",
        c_store,
        settings(Policy::Allowlist {
            allowed: BTreeSet::new(),
        }),
        listen().await,
    )
    .await;
    let t = trial(&c).await;
    let signature = key.sign(t.as_bytes()).to_bytes();
    let response = answer(&c, "alice@a.test", &decimal(&cert.serial), &signature, None).await;
    assert_eq!(
        (response.status, response.code().as_str()),
        (403, "FEDERATION_REFUSED")
    );
}
