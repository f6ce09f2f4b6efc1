//! The polyproto routes of a real server (in-process, over real HTTP on loopback), on
//! SQLite and on Postgres: `/.well-known/polyproto-core`, the certificate history as
//! byte-exact JCS cacheable ID-Certs (before and after a CA rotation), and foreign sessions:
//! a key trial answered with an ID-Cert key gives a token; a wrong signature, an expired
//! trial, an unknown FID or serial and a replay are each refused with their own code;
//! `DELETE session` ends the session and invalidates the certificate;
//! `PUT session/idcert/extern` moves a session to a renewed certificate or records a
//! revocation. Across two servers, a.test's user opens a session on b.test, which asks
//! a.test, also for a certificate issued before a.test rotated its CA. b.test caches
//! a.test's users' certificates for its clients within a.test's windows (and refuses a
//! hostile home server's forged answers); foreign sessions key b.test's rate limits; an
//! invalidated certificate no longer authenticates AS requests; ephemeral rows are bounded.
//!
//! The polyproto crate's own view of these routes is `tests/polyproto-interop`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use rand_core::OsRng;
use serde_json::Value;

use phoenix_server::federation::{FederationSettings, Policy};
use phoenix_server::polyproto::{self, decimal};
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::sessions::SessionStore;
use phoenix_server::store::{
    AsClientRecord, AsStore, CaRecord, CachedIdCerts, CreateUser, EnqueueEntry, EphemeralStore,
    FederatedEnqueue, QsStore, ReplayRecord, Store,
};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::discovery::Resolver;
use phoenix_types::error::Problem;
use phoenix_types::ids::{ClientId, Domain, Fid};
use support::{Backend, Storage, listen, on_both_backends, serve};

/// A store of `backend` for one test (Postgres schemas named `p2_...`).
async fn store(backend: Backend) -> Option<(Store, Storage)> {
    support::store(backend, "p2").await
}

/// A running server.
struct Running {
    server: Arc<Server>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _storage: Storage,
}

async fn run(
    domain: &str,
    storage: (Store, Storage),
    federation: FederationSettings,
    listening: (tokio::net::TcpListener, String),
) -> Running {
    run_with(domain, storage, federation, listening, Limits::default()).await
}

async fn run_with(
    domain: &str,
    (store, storage): (Store, Storage),
    federation: FederationSettings,
    (listener, url): (tokio::net::TcpListener, String),
    limits: Limits,
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
                signing_key: key.to_bytes().to_vec(),
                certificate,
                not_before,
                not_after,
            })
            .await
            .unwrap()
    );
    let server = Server::start_with(domain, store, limits, federation)
        .await
        .unwrap();
    Running {
        _shutdown: serve(server.clone(), listener),
        server,
        url,
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
        AsStore::create_user(&server.store, &record, now())
            .await
            .unwrap(),
        CreateUser::Created
    );
    (key, ParsedCert::parse(&record.certificate).unwrap())
}

/// The replay record of a renewal (one per certificate serial).
fn renewal(record: &AsClientRecord) -> ReplayRecord {
    ReplayRecord {
        digest: crypto::sha256(record.serial.as_bytes()),
        received_at: now(),
    }
}

/// Renew a client's certificate (new key) with the current CA.
async fn renew(server: &Server, fid: &str, client_id: &str) -> (SigningKey, ParsedCert) {
    let (key, record) = issue(server, fid, client_id);
    assert!(
        server
            .store
            .renew_client(&record, &renewal(&record))
            .await
            .unwrap()
    );
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

    /// The answer is a problem document with `status` and `code`.
    fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code().as_str()), (status, code));
    }

    /// The answer has `status`; a failure shows the body, which says why.
    fn assert_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
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

/// A time in a polyproto JSON object: UNIX seconds, as a decimal string.
fn seconds(object: &Value, name: &str) -> u64 {
    object[name].as_str().unwrap().parse().unwrap()
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
    let before = seconds(object, "cacheNotValidBefore");
    let after = seconds(object, "cacheNotValidAfter");
    assert!(before <= after && after <= cert.not_after.max(before));
    assert!(after - before <= 12 * 3600);
    cert
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
    foreign_certificates_are_cached_within_the_issuers_window,
    sessions_rate_limit_remote_operations,
    invalidated_certificates_do_not_authenticate_as_requests,
    cache_and_replay_records_are_bounded,
    forged_home_server_answers_are_not_cached,
    a_foreign_session_outliving_its_home_revocation_is_refused,
    a_foreign_session_is_verified_again_across_its_window,
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
    let window = seconds(&object, "cacheNotValidAfter") - seconds(&object, "cacheNotValidBefore");
    assert_eq!(window, polyproto::MIN_CACHE_TTL);

    // Nothing before the first CA; bad input.
    let before = first.certificate.not_before - 1;
    let answer = get(
        &a,
        &format!("/.p2/core/v1/idcert/server?timestamp={before}"),
    )
    .await;
    answer.assert_problem(404, "NOT_FOUND");
    let answer = get(&a, "/.p2/core/v1/idcert/server?timestamp=-5").await;
    answer.assert_problem(400, "MALFORMED");

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
    // Validity filters: overlapping [notBefore, notAfter]. The renewal may be issued a second
    // after the first certificate; both are valid at the later one's notBefore.
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
            second.not_before, second.not_before
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
    answer.assert_problem(404, "UNKNOWN_USER");
    // Another domain's user: asked of its home server, which cannot be reached here.
    let answer = get(&a, "/.p2/core/v1/idcert/actor/bob@b.test").await;
    answer.assert_problem(502, "UNKNOWN_PEER");
    let answer = get(&a, "/.p2/core/v1/idcert/actor/not-an-fid").await;
    answer.assert_problem(400, "INVALID_FID");
    let answer = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test?notBefore=x").await;
    answer.assert_problem(400, "MALFORMED");
}

/// GET a key trial from `server`.
async fn trial(server: &Running) -> String {
    let answer = get(server, "/.p2/core/v1/session/auth").await;
    answer.assert_status(200);
    answer.assert_jcs();
    let object = answer.json();
    let expires = seconds(&object, "expires");
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

/// A fresh key trial of `server`, and `key`'s signature of it.
async fn signed_trial(server: &Running, key: &SigningKey) -> (String, [u8; 64]) {
    let trial = trial(server).await;
    let signature = key.sign(trial.as_bytes()).to_bytes();
    (trial, signature)
}

/// Answer a fresh key trial of `server` as the holder of `key` and `cert` (without naming
/// the trial, as polyproto clients do).
async fn answer_trial(server: &Running, fid: &str, key: &SigningKey, cert: &ParsedCert) -> Answer {
    let (_, signature) = signed_trial(server, key).await;
    answer(server, fid, &decimal(&cert.serial), &signature, None).await
}

/// Open a session on `server` for the holder of `key` and `cert`.
async fn open_session(server: &Running, fid: &str, key: &SigningKey, cert: &ParsedCert) -> String {
    let response = answer_trial(server, fid, key, cert).await;
    response.assert_status(200);
    response.assert_jcs();
    let object = response.json();
    assert_eq!(object.as_object().unwrap().len(), 1);
    object["token"].as_str().unwrap().to_owned()
}

/// `DELETE session` on `server` with `token`.
async fn end_session(server: &Running, token: &str) -> Answer {
    request(
        reqwest::Method::DELETE,
        format!("{}/.p2/core/v1/session", server.url),
        Some(token),
        None,
    )
    .await
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
    let (trial, signature) = signed_trial(&a, &key).await;
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
    response.assert_problem(401, "UNAUTHENTICATED");
    let response = answer(&a, "alice@a.test", &serial, &[0; 64], Some("nope")).await;
    response.assert_problem(401, "UNAUTHENTICATED");

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
    response.assert_problem(401, "BAD_SIGNATURE");
    let response = answer(
        &a,
        "alice@a.test",
        &serial,
        &key.sign(t.as_bytes()).to_bytes(),
        Some(&t),
    )
    .await;
    response.assert_problem(401, "STALE_REQUEST");

    // Unknown FID, unknown serial.
    let (t, signature) = signed_trial(&a, &key).await;
    let response = answer(&a, "bob@a.test", &serial, &signature, Some(&t)).await;
    response.assert_problem(404, "UNKNOWN_USER");
    let (t, signature) = signed_trial(&a, &key).await;
    let response = answer(&a, "alice@a.test", "12345", &signature, Some(&t)).await;
    response.assert_problem(404, "UNKNOWN_CLIENT");

    // Malformed answers.
    for (fid, serial, signature, code) in [
        ("Not An Fid", serial.as_str(), vec![0u8; 64], "INVALID_FID"),
        ("alice@a.test", "0x12", vec![0u8; 64], "MALFORMED"),
        ("alice@a.test", "012", vec![0u8; 64], "MALFORMED"),
        ("alice@a.test", serial.as_str(), vec![0u8; 63], "MALFORMED"),
    ] {
        let response = answer(&a, fid, serial, &signature, None).await;
        response.assert_problem(400, code);
    }
    let response = request(
        reqwest::Method::POST,
        format!("{}/.p2/core/v1/session/auth", a.url),
        None,
        Some(br#"{"fid":"alice@a.test","serialNumber":1,"signature":""}"#.to_vec()),
    )
    .await;
    response.assert_problem(400, "MALFORMED");

    // A replay, with and without naming the trial.
    let (t, signature) = signed_trial(&a, &key).await;
    let response = answer(&a, "alice@a.test", &serial, &signature, None).await;
    assert_eq!(response.status, 200);
    for named in [None, Some(t.as_str())] {
        let response = answer(&a, "alice@a.test", &serial, &signature, named).await;
        response.assert_problem(409, "REPLAYED");
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
    limited.assert_problem(429, "RATE_LIMITED");
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
        response.assert_problem(401, "STALE_REQUEST");
    }
}

async fn delete_session_invalidates_the_certificate(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&a, "alice@a.test", &key, &cert).await;
    let delete = async |query: &str, token: Option<&str>| {
        let url = format!("{}/.p2/core/v1/session{query}", a.url);
        request(reqwest::Method::DELETE, url, token, None).await
    };

    let response = delete("", None).await;
    response.assert_problem(401, "UNAUTHENTICATED");
    let response = delete("?sessionId=phone", Some(&token)).await;
    response.assert_problem(403, "FORBIDDEN");
    let response = delete("?sessionId=laptop", Some(&token)).await;
    assert_eq!(response.status, 204);
    assert!(polyproto::session(&a.server, &token).await.is_none());
    let response = delete("", Some(&token)).await;
    assert_eq!(response.status, 401);

    // The home server now serves the certificate as invalidated (signed), and it cannot
    // open another session.
    let list = get(&a, "/.p2/core/v1/idcert/actor/alice@a.test")
        .await
        .json();
    let object = &list.as_array().unwrap()[0];
    let at = seconds(object, "invalidatedAt");
    assert!(at <= now());
    verify_cacheable(object, &a.server.ca().certificate.public_key);
    let response = answer_trial(&a, "alice@a.test", &key, &cert).await;
    response.assert_problem(403, "FORBIDDEN");
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
    response.assert_problem(403, "FORBIDDEN");
    let response = put(Some(token.clone()), b"\"not a pem\"".to_vec()).await;
    response.assert_problem(400, "INVALID_CERTIFICATE");

    // A renewed certificate (as polyproto 0.21 sends it: the JCS JSON string of the PEM)
    // becomes the session's.
    let (new_key, renewed) = renew(&a.server, "alice@a.test", "laptop").await;
    let response = put(Some(token.clone()), json_pem(&renewed)).await;
    response.assert_status(201);
    let session = polyproto::session(&a.server, &token).await.unwrap();
    assert_eq!(session.serial, decimal(&renewed.serial));

    // A certificate the home server does not know is refused.
    let (_, unknown) = issue(&a.server, "alice@a.test", "laptop");
    let unknown = ParsedCert::parse(&unknown.certificate).unwrap();
    let response = put(Some(token.clone()), json_pem(&unknown)).await;
    response.assert_problem(404, "UNKNOWN_CLIENT");

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
    let response = answer_trial(&a, "alice@a.test", &new_key, &renewed).await;
    response.assert_problem(403, "FORBIDDEN");
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
    let response = end_session(&b, &token).await;
    assert_eq!(response.status, 204);
    let response = answer_trial(&b, "alice@a.test", &key, &cert).await;
    response.assert_problem(403, "FORBIDDEN");
    open_session(&a, "alice@a.test", &key, &cert).await;

    // Unknown users and serials at the home server.
    let (t, signature) = signed_trial(&b, &key).await;
    let response = answer(&b, "zed@a.test", "1", &signature, Some(&t)).await;
    response.assert_problem(404, "UNKNOWN_USER");

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
    let response = answer_trial(&c, "alice@a.test", &key, &cert).await;
    response.assert_problem(403, "FEDERATION_REFUSED");
}

/// Two servers on loopback: a.test (SQLite) and b.test (`backend`), resolving each other;
/// a.test's certificate answers have a cache window of `ttl` seconds, b.test runs with
/// `b_limits`.
async fn pair(backend: Backend, ttl: u64, b_limits: Limits) -> Option<(Running, Running)> {
    let b_store = store(backend).await?;
    let a_store = store(Backend::Sqlite).await.unwrap();
    let (la, ua) = listen().await;
    let (lb, ub) = listen().await;
    let resolver = Resolver::parse(
        [
            format!("a.test={ua}"),
            format!("b.test={ub}"),
            // Nothing listens on port 9 of loopback.
            "c.test=http://127.0.0.1:9".to_owned(),
        ]
        .iter()
        .map(String::as_str),
    )
    .unwrap();
    let federation = |ttl: u64| FederationSettings {
        resolver: resolver.clone(),
        polyproto: polyproto::Settings {
            idcert_cache_ttl: ttl,
            ..polyproto::Settings::default()
        },
        ..FederationSettings::default()
    };
    let a = run("a.test", a_store, federation(ttl), (la, ua)).await;
    let b = run_with(
        "b.test",
        b_store,
        federation(polyproto::MIN_CACHE_TTL),
        (lb, ub),
        b_limits,
    )
    .await;
    Some((a, b))
}

fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(std::sync::atomic::Ordering::Relaxed)
}

/// `server`'s certificate cache lookups so far: (misses, hits).
fn cache_lookups(server: &Server) -> (u64, u64) {
    (
        counter(&server.metrics.idcert_cache_misses),
        counter(&server.metrics.idcert_cache_hits),
    )
}

/// `fid`'s certificates as cached in `store` at `at`.
async fn cached(store: &Store, fid: &str, at: u64) -> Option<CachedIdCerts> {
    store.cached_idcerts(fid, at).await.unwrap()
}

// Requirement: ID-CACHE-1, ID-CACHE-2
async fn foreign_certificates_are_cached_within_the_issuers_window(backend: Backend) {
    // a.test's windows last 3 s (below polyproto's hour, which only the configuration
    // enforces), so that the test sees one end.
    let mut limits = Limits::default();
    limits.rate_limits.remote_idcert = "8/hour".parse().unwrap();
    let Some((a, b)) = pair(backend, 3, limits).await else {
        return;
    };
    let (_, first) = user(&a.server, "alice@a.test", "laptop").await;
    let (_, second) = renew(&a.server, "alice@a.test", "laptop").await;
    let path = "/.p2/core/v1/idcert/actor/alice@a.test";

    // First lookup: fetched from a.test, verified, cached, served as a.test signed it.
    let answer = get(&b, path).await;
    answer.assert_status(200);
    answer.assert_jcs();
    let objects = answer.json();
    let objects = objects.as_array().unwrap();
    let a_key = a.server.ca().certificate.public_key;
    // (Both were issued within the same second, so their order is not defined.)
    let served: BTreeSet<Vec<u8>> = objects
        .iter()
        .map(|o| verify_cacheable(o, &a_key).der)
        .collect();
    assert_eq!(
        served,
        BTreeSet::from([first.der.clone(), second.der.clone()])
    );
    assert_eq!(cache_lookups(&b.server), (1, 0));
    let entry = cached(&b.server.store, "alice@a.test", now())
        .await
        .unwrap();
    let window_end = seconds(&objects[0], "cacheNotValidAfter");
    assert_eq!(entry.not_valid_after, window_end);

    // Second lookup: from the cache, byte for byte the same (a.test would sign a new
    // window now); filters apply to the cached answer.
    let again = get(&b, path).await;
    assert_eq!(again.body, answer.body);
    assert_eq!(cache_lookups(&b.server), (1, 1));
    let filtered = get(&b, &format!("{path}?sessionId=phone")).await;
    assert_eq!(filtered.json(), serde_json::json!([]));

    // After the window: evicted at read, fetched again with a new window.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert!(
        cached(&b.server.store, "alice@a.test", now())
            .await
            .is_none()
    );
    let refetched = get(&b, path).await;
    assert_eq!(refetched.status, 200);
    assert_ne!(refetched.body, answer.body);
    assert_eq!(counter(&b.server.metrics.idcert_cache_misses), 2);

    // Refusals, each with its code: a user a.test does not know, a home server that is
    // down, a malformed FID; then the per-address limit of such lookups.
    let unknown = get(&b, "/.p2/core/v1/idcert/actor/zed@a.test").await;
    unknown.assert_problem(404, "UNKNOWN_USER");
    let down = get(&b, "/.p2/core/v1/idcert/actor/carol@c.test").await;
    down.assert_problem(502, "UNKNOWN_PEER");
    let bad = get(&b, "/.p2/core/v1/idcert/actor/not-an-fid").await;
    bad.assert_problem(400, "INVALID_FID");
    let mut limited = None;
    for _ in 0..8 {
        let answer = get(&b, path).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the remote_idcert limit never applied");
    assert_eq!(limited.code(), "RATE_LIMITED");
    // Local users are not limited: their certificates need no peer.
    user(&b.server, "bob@b.test", "phone").await;
    assert_eq!(
        get(&b, "/.p2/core/v1/idcert/actor/bob@b.test").await.status,
        200
    );
}

/// A `qs/fetch_key_packages` request (anonymous), optionally with a bearer token.
async fn fetch_key_packages(server: &Running, token: Option<&str>) -> reqwest::Response {
    use tls_codec::Serialize;
    let payload =
        phoenix_types::codec::encode(&phoenix_types::messages::qs::FetchKeyPackagesRequest {
            friendship_token: [7; 32],
        })
        .unwrap();
    let body = phoenix_types::messages::RequestEnvelope {
        version: phoenix_types::PROTOCOL_VERSION,
        payload: tls_codec::VLBytes::new(payload),
        auth: phoenix_types::messages::Auth::None,
    }
    .tls_serialize_detached()
    .unwrap();
    let mut request = reqwest::Client::new()
        .post(format!("{}/phoenix/v1/qs/fetch_key_packages", server.url))
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    request.send().await.unwrap()
}

async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let problem: Problem = response.json().await.unwrap();
    (status, problem.code)
}

// Requirement: RL-SESSION-1, RL-SESSION-2
async fn sessions_rate_limit_remote_operations(backend: Backend) {
    let mut limits = Limits::default();
    limits.rate_limits.session_operations = "2/hour".parse().unwrap();
    limits.rate_limits.fetch_key_packages = "6/hour".parse().unwrap();
    let Some((a, b)) = pair(backend, polyproto::MIN_CACHE_TTL, limits).await else {
        return;
    };
    let (alice_key, alice_cert) = user(&a.server, "alice@a.test", "laptop").await;
    let (carol_key, carol_cert) = user(&a.server, "carol@a.test", "phone").await;
    let alice = open_session(&b, "alice@a.test", &alice_key, &alice_cert).await;
    let carol = open_session(&b, "carol@a.test", &carol_key, &carol_cert).await;
    let bearer = |token: &str| format!("Bearer {token}");

    // Alice's session: two fetches (the QS answers that it knows no such user), then her
    // session's quota is spent: 429 with Retry-After. The per-IP bucket has counted 2.
    for _ in 0..2 {
        let response = fetch_key_packages(&b, Some(&bearer(&alice))).await;
        assert_ne!(response.status().as_u16(), 429);
        assert_ne!(response.status().as_u16(), 401);
    }
    let response = fetch_key_packages(&b, Some(&bearer(&alice))).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    let status = response.status().as_u16();
    let problem: Problem = response.json().await.unwrap();
    assert_eq!((status, problem.code.as_str()), (429, "RATE_LIMITED"));
    assert!(
        problem.detail.contains("session_operations"),
        "{}",
        problem.detail
    );

    // Carol's session from the same address has its own quota (per-IP count: 3).
    let response = fetch_key_packages(&b, Some(&bearer(&carol))).await;
    assert_ne!(response.status().as_u16(), 429);

    // A bad token is refused, never ignored: unknown, malformed, another scheme; and a
    // session that was ended (its certificate invalidated) no longer counts.
    for header in [
        bearer(&"0".repeat(64)),
        bearer("not-a-token"),
        format!("Basic {alice}"),
        "Bearer".to_owned(),
    ] {
        assert_eq!(
            problem_code(fetch_key_packages(&b, Some(&header)).await).await,
            (401, "UNAUTHENTICATED".to_owned()),
            "{header}"
        );
    }
    let ended = end_session(&b, &carol).await;
    assert_eq!(ended.status, 204);
    assert_eq!(
        problem_code(fetch_key_packages(&b, Some(&bearer(&carol))).await).await,
        (401, "UNAUTHENTICATED".to_owned())
    );

    // Without a token: the per-IP limit (6/hour, 3 used above).
    for _ in 0..3 {
        let response = fetch_key_packages(&b, None).await;
        assert_ne!(response.status().as_u16(), 429);
    }
    let response = fetch_key_packages(&b, None).await;
    assert!(response.headers().contains_key("retry-after"));
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.code, "RATE_LIMITED");
    assert!(
        problem.detail.contains("fetch_key_packages"),
        "{}",
        problem.detail
    );
}

/// A signed `as/dequeue_connection` of `fid`'s client `client_id`.
async fn dequeue_connection(server: &Running, fid: &str, client_id: &str, key: &SigningKey) -> u16 {
    use tls_codec::Serialize;
    let payload = phoenix_types::codec::encode(&phoenix_types::messages::DequeueRequest {
        timestamp: now(),
        sequence_number_start: 0,
        max: 10,
    })
    .unwrap();
    let signature = crypto::sign(key, "as/dequeue_connection", &payload);
    let body = phoenix_types::messages::RequestEnvelope {
        version: phoenix_types::PROTOCOL_VERSION,
        payload: tls_codec::VLBytes::new(payload),
        auth: phoenix_types::messages::Auth::AsClient(phoenix_types::messages::AsClientAuth {
            fid: fid.to_owned(),
            client_id: client_id.to_owned(),
            signature: tls_codec::VLBytes::new(signature.to_vec()),
        }),
    }
    .tls_serialize_detached()
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/phoenix/v1/as/dequeue_connection", server.url))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        let problem: Problem = response.json().await.unwrap();
        assert_eq!(problem.code, "UNAUTHENTICATED", "{}", problem.detail);
    }
    status
}

// Requirement: AS-AUTH-2
async fn invalidated_certificates_do_not_authenticate_as_requests(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    assert_eq!(
        dequeue_connection(&a, "alice@a.test", "laptop", &key).await,
        200
    );
    // Alice ends a session on her own server: her certificate is invalidated there, and
    // from then on it authenticates no AS request.
    let token = open_session(&a, "alice@a.test", &key, &cert).await;
    let ended = end_session(&a, &token).await;
    assert_eq!(ended.status, 204);
    assert_eq!(
        dequeue_connection(&a, "alice@a.test", "laptop", &key).await,
        401
    );
    // Renewal is authenticated by the current certificate's key, which the invalidation
    // says is compromised: the real route refuses it (by design; account recovery is
    // another issue's), so a thief holding the key cannot renew past the invalidation.
    // Requirement: AS-AUTH-3
    let new_key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::create_csr(
        &Fid::parse("alice@a.test").unwrap(),
        &ClientId::parse("laptop").unwrap(),
        &new_key,
    )
    .unwrap();
    let payload =
        phoenix_types::codec::encode(&phoenix_types::messages::as_::RenewCertificateRequest {
            timestamp: now(),
            csr: tls_codec::VLBytes::new(csr),
        })
        .unwrap();
    let response = post_as_client(
        &a,
        "renew_certificate",
        "alice@a.test",
        "laptop",
        &key,
        payload,
    )
    .await;
    assert_eq!(
        problem_code(response).await,
        (401, "UNAUTHENTICATED".to_owned())
    );
    assert_eq!(
        dequeue_connection(&a, "alice@a.test", "laptop", &new_key).await,
        401,
        "nothing was renewed"
    );
}

/// POST `as/<operation>` with `payload`, signed by `fid`'s client `client_id` with `key`.
async fn post_as_client(
    server: &Running,
    operation: &str,
    fid: &str,
    client_id: &str,
    key: &SigningKey,
    payload: Vec<u8>,
) -> reqwest::Response {
    use tls_codec::Serialize;
    let signature = crypto::sign(key, &format!("as/{operation}"), &payload);
    let body = phoenix_types::messages::RequestEnvelope {
        version: phoenix_types::PROTOCOL_VERSION,
        payload: tls_codec::VLBytes::new(payload),
        auth: phoenix_types::messages::Auth::AsClient(phoenix_types::messages::AsClientAuth {
            fid: fid.to_owned(),
            client_id: client_id.to_owned(),
            signature: tls_codec::VLBytes::new(signature.to_vec()),
        }),
    }
    .tls_serialize_detached()
    .unwrap();
    reqwest::Client::new()
        .post(format!("{}/phoenix/v1/as/{operation}", server.url))
        .body(body)
        .send()
        .await
        .unwrap()
}

// Requirement: ID-CACHE-2, FED-5
async fn cache_and_replay_records_are_bounded(backend: Backend) {
    let Some(a) = single(backend, polyproto::Settings::default()).await else {
        return;
    };
    let store = &a.server.store;
    let now = now();
    // Cache an entry for `fid` whose window ends at `until`, in a cache of two entries.
    let put = async |fid: &str, until: u64| {
        let entry = CachedIdCerts {
            fid: fid.to_owned(),
            answer: "[]".to_owned(),
            not_valid_after: until,
            fetched_at: now,
        };
        store.put_cached_idcerts(&entry, now, 2).await.unwrap();
    };
    // At most two entries: the one whose window ends soonest makes room.
    put("x@c.test", now + 50).await;
    put("y@c.test", now + 10).await;
    put("z@c.test", now + 90).await;
    assert_eq!(store.idcert_cache_len().await.unwrap(), 2);
    assert!(cached(store, "y@c.test", now).await.is_none());
    // Replacing an entry does not evict another.
    put("z@c.test", now + 95).await;
    assert_eq!(store.idcert_cache_len().await.unwrap(), 2);
    // Never returned past its window; the purge deletes what ended.
    assert!(cached(store, "x@c.test", now + 50).await.is_none());
    assert_eq!(store.idcert_cache_len().await.unwrap(), 1);
    phoenix_server::jobs::purge_once(&a.server, now + 100).await;
    assert_eq!(store.idcert_cache_len().await.unwrap(), 0);
    assert_eq!(counter(&a.server.metrics.idcert_cache_purged), 1);

    // Replay records: kept while a replay could still be fresh, pruned after.
    let message_id = [9u8; 16];
    let entry = EnqueueEntry {
        client_id: [1; 16],
        payload: b"x".to_vec(),
        dedup: Some(message_id),
    };
    let enqueue = async || {
        store
            .enqueue_federated(
                "b.test",
                &message_id,
                now,
                &entry,
                &phoenix_server::store::queue_sealing::QueueSealer::default(),
            )
            .await
            .unwrap()
    };
    assert!(matches!(enqueue().await, FederatedEnqueue::Enqueued(_)));
    phoenix_server::jobs::purge_once(&a.server, now + 600).await;
    assert_eq!(enqueue().await, FederatedEnqueue::Replayed);
    phoenix_server::jobs::purge_once(
        &a.server,
        now + phoenix_server::jobs::FEDERATION_SEEN_RETENTION + 1,
    )
    .await;
    assert_eq!(counter(&a.server.metrics.federation_seen_pruned), 1);
    assert!(matches!(enqueue().await, FederatedEnqueue::Enqueued(_)));
}

/// How the hostile proxy in front of a home server changes `idcert/actor` answers.
const HONEST: u8 = 0;
const STRETCHED_WINDOW: u8 = 1;
const OTHER_ACTOR: u8 = 2;

/// A hostile home server: a proxy that forwards every GET and POST to the real server at
/// `real`, except that it rewrites `idcert/actor` answers as `mode` says (for
/// `OTHER_ACTOR`, it answers with `dave@d.test`'s certificates whatever was asked).
async fn hostile_proxy(real: String, mode: Arc<std::sync::atomic::AtomicU8>) -> String {
    use warp::Filter;
    let (listener, url) = listen().await;
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  body: bytes::Bytes| {
                let real = real.clone();
                let mode = mode.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    let mut path = path.as_str().to_owned();
                    let actor = path.starts_with("/.p2/core/v1/idcert/actor/");
                    if actor && mode == OTHER_ACTOR {
                        path = "/.p2/core/v1/idcert/actor/dave@d.test".to_owned();
                    }
                    let url = if query.is_empty() {
                        format!("{real}{path}")
                    } else {
                        format!("{real}{path}?{query}")
                    };
                    let response = reqwest::Client::new()
                        .request(method, url)
                        .header("content-type", "application/octet-stream")
                        .body(body.to_vec())
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let mut body = response.bytes().await.unwrap().to_vec();
                    if actor && mode == STRETCHED_WINDOW && status == 200 {
                        let mut objects: Vec<Value> = serde_json::from_slice(&body).unwrap();
                        for object in &mut objects {
                            let after = seconds(object, "cacheNotValidAfter");
                            object["cacheNotValidAfter"] = Value::String((after + 1).to_string());
                        }
                        body = serde_json::to_vec(&objects).unwrap();
                    }
                    warp::http::Response::builder()
                        .status(status)
                        .body(body)
                        .unwrap()
                }
            },
        );
    tokio::spawn(warp::serve(route).incoming(listener).run());
    url
}

// Requirement: ID-CACHE-1
async fn forged_home_server_answers_are_not_cached(backend: Backend) {
    // d.test is real; b.test reaches it only through the hostile proxy.
    let Some(b_store) = store(backend).await else {
        return;
    };
    let d_store = store(Backend::Sqlite).await.unwrap();
    let (ld, ud) = listen().await;
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(HONEST));
    let proxy = hostile_proxy(ud.clone(), mode.clone()).await;
    let resolver =
        |d: &str| Resolver::parse([format!("d.test={d}")].iter().map(String::as_str)).unwrap();
    let settings = |d: &str| FederationSettings {
        resolver: resolver(d),
        ..FederationSettings::default()
    };
    let d = run("d.test", d_store, settings(&ud), (ld, ud.clone())).await;
    let b = run("b.test", b_store, settings(&proxy), listen().await).await;
    user(&d.server, "carol@d.test", "phone").await;
    user(&d.server, "dave@d.test", "laptop").await;
    let path = "/.p2/core/v1/idcert/actor/carol@d.test";

    // A window the home server did not sign: refused, nothing cached.
    mode.store(STRETCHED_WINDOW, std::sync::atomic::Ordering::SeqCst);
    let answer = get(&b, path).await;
    answer.assert_problem(502, "UNKNOWN_PEER");
    // Another actor's (genuine) certificates for carol: refused too.
    mode.store(OTHER_ACTOR, std::sync::atomic::Ordering::SeqCst);
    let answer = get(&b, path).await;
    answer.assert_problem(502, "UNKNOWN_PEER");
    assert_eq!(b.server.store.idcert_cache_len().await.unwrap(), 0);

    // The same proxy, honest: carol's certificate is served and cached.
    mode.store(HONEST, std::sync::atomic::Ordering::SeqCst);
    let answer = get(&b, path).await;
    answer.assert_status(200);
    let objects = answer.json();
    let cert = verify_cacheable(&objects[0], &d.server.ca().certificate.public_key);
    assert_eq!(cert.actor.unwrap().fid.to_string(), "carol@d.test");
    assert_eq!(b.server.store.idcert_cache_len().await.unwrap(), 1);
}

/// Sleep until `now()` is past `at`.
async fn sleep_past(at: u64) {
    while now() <= at {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

// Requirement: P2-SESSION-4
async fn a_foreign_session_outliving_its_home_revocation_is_refused(backend: Backend) {
    // a.test (home, SQLite) answers with a 4-second cache window; the session is held by
    // b.test on `backend`.
    let Some((a, b)) = pair(backend, 4, Limits::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&b, "alice@a.test", &key, &cert).await;
    let bearer = format!("Bearer {token}");
    let verified_until = polyproto::session(&b.server, &token)
        .await
        .unwrap()
        .verified_until;
    assert!(verified_until <= now() + 4);

    // Alice's home server invalidates the certificate (she ends a session there).
    let home = open_session(&a, "alice@a.test", &key, &cert).await;
    assert_eq!(end_session(&a, &home).await.status, 204);

    // Within the window b.test relies on a.test's answer: the session still works.
    if now() <= verified_until {
        let response = fetch_key_packages(&b, Some(&bearer)).await;
        assert_ne!(response.status().as_u16(), 401);
        assert_ne!(response.status().as_u16(), 503);
    }

    // Past it, b.test asks a.test again: the session is refused and ended.
    sleep_past(verified_until).await;
    let (status, code) = problem_code(fetch_key_packages(&b, Some(&bearer)).await).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    assert!(polyproto::session(&b.server, &token).await.is_none());
    assert_eq!(end_session(&b, &token).await.status, 401);
    // The certificate cannot open another session on b.test either.
    let response = answer_trial(&b, "alice@a.test", &key, &cert).await;
    response.assert_problem(403, "FORBIDDEN");
}

// Requirement: P2-SESSION-4
async fn a_foreign_session_is_verified_again_across_its_window(backend: Backend) {
    let Some((a, b)) = pair(backend, 2, Limits::default()).await else {
        return;
    };
    let (key, cert) = user(&a.server, "alice@a.test", "laptop").await;
    let token = open_session(&b, "alice@a.test", &key, &cert).await;
    let bearer = format!("Bearer {token}");
    let first = polyproto::session(&b.server, &token)
        .await
        .unwrap()
        .verified_until;

    // Past the window, a still-valid certificate is vouched for again: the request goes
    // through and verified_until moves forward (stored).
    sleep_past(first).await;
    let response = fetch_key_packages(&b, Some(&bearer)).await;
    assert_ne!(response.status().as_u16(), 401);
    assert_ne!(response.status().as_u16(), 503);
    let second = polyproto::session(&b.server, &token)
        .await
        .unwrap()
        .verified_until;
    assert!(second > first, "{second} > {first}");

    // The home server unreachable: past the window the session is not trusted
    // (UNAVAILABLE) but kept.
    drop(a);
    sleep_past(second).await;
    let (status, code) = problem_code(fetch_key_packages(&b, Some(&bearer)).await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert!(polyproto::session(&b.server, &token).await.is_some());
}
