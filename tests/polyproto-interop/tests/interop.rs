//! The `polyproto` crate 0.21 as an independent client of a phoenix-server (in-process, on
//! loopback, SQLite): it fetches `/.well-known/polyproto-core`, the server's CA
//! certificates (now, and at a time before a CA rotation) and an actor's certificates
//! through its own `HttpClient`, which insists on status 200 and byte-exact JCS, and
//! verifies every answer with its own code: the cache signature (`CacheableIdCert::verify`)
//! and the certificates (`IdCertHs::full_verify_home_server`, `IdCertActor::try_from_pem`,
//! which re-encode the certificate with the crate's own types, so any departure from
//! polyproto's layout fails). A foreign session is opened with the crate's `KeyTrial`
//! types, and the crate's `Session` then announces a renewed certificate
//! (`update_session_id_cert`) and ends the session (`delete_session`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use der::asn1::BitString;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use polyproto::api::cacheable_cert::CacheableIdCert;
use polyproto::api::{HttpClient, Session};
use polyproto::certs::PublicKeyInfo;
use polyproto::certs::idcert::{IdCertActor, IdCertBehaviors, IdCertHs};
use polyproto::errors::{CertificateConversionError, InvalidInput, PublicKeyError, RequestError};
use polyproto::key::{PrivateKey, PublicKey};
use polyproto::signature::Signature;
use polyproto::types::{FederationId, KeyTrial, SessionId};
use polyproto::url::Url;
use rand_core::OsRng;
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SignatureBitStringEncoding};
use tempfile::TempDir;

use phoenix_server::federation::FederationSettings;
use phoenix_server::polyproto::{self as p2, decimal};
use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::{AsClientRecord, AsStore, CaRecord, CreateUser, ReplayRecord, Store};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::ids::{ClientId, Domain, Fid};

// Ed25519 for the crate, through its traits (it provides no cryptography itself).

const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ed25519Signature(ed25519_dalek::Signature);

impl std::fmt::Display for Ed25519Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl Signature for Ed25519Signature {
    type Signature = ed25519_dalek::Signature;

    fn as_signature(&self) -> &Self::Signature {
        &self.0
    }

    fn algorithm_identifier() -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: ED25519,
            parameters: None,
        }
    }

    fn from_bytes(signature: &[u8]) -> Result<Self, InvalidInput> {
        ed25519_dalek::Signature::from_slice(signature)
            .map(Self)
            .map_err(|e| InvalidInput::Malformed(e.to_string()))
    }

    fn as_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
}

impl SignatureBitStringEncoding for Ed25519Signature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0.to_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ed25519PublicKey(VerifyingKey);

impl PublicKey<Ed25519Signature> for Ed25519PublicKey {
    fn verify_signature(
        &self,
        signature: &Ed25519Signature,
        data: &[u8],
    ) -> Result<(), PublicKeyError> {
        self.0
            .verify_strict(data, &signature.0)
            .map_err(|_| PublicKeyError::BadSignature)
    }

    fn public_key_info(&self) -> Result<PublicKeyInfo, PublicKeyError> {
        Ok(PublicKeyInfo {
            algorithm: Ed25519Signature::algorithm_identifier(),
            public_key_bitstring: BitString::from_bytes(self.0.as_bytes())
                .map_err(|_| PublicKeyError::BadPublicKeyInfo)?,
        })
    }

    fn try_from_public_key_info(info: PublicKeyInfo) -> Result<Self, CertificateConversionError> {
        let malformed = |detail: String| {
            CertificateConversionError::InvalidInput(InvalidInput::Malformed(detail))
        };
        let bytes: [u8; 32] = info
            .public_key_bitstring
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("not a 32-byte Ed25519 key".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ed25519PrivateKey(SigningKey);

impl PrivateKey<Ed25519Signature> for Ed25519PrivateKey {
    type PublicKey = Ed25519PublicKey;

    fn pubkey(&self) -> Ed25519PublicKey {
        Ed25519PublicKey(self.0.verifying_key())
    }

    fn sign(&self, data: &[u8]) -> Ed25519Signature {
        Ed25519Signature(self.0.sign(data))
    }
}

type Hs = IdCertHs<Ed25519Signature, Ed25519PublicKey>;
type Actor = IdCertActor<Ed25519Signature, Ed25519PublicKey>;

fn public_key(key: &[u8; 32]) -> Ed25519PublicKey {
    Ed25519PublicKey(VerifyingKey::from_bytes(key).unwrap())
}

// The server.

struct Running {
    server: Arc<Server>,
    url: Url,
    _dir: TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// a.test on SQLite, its first CA created an hour ago (so that a CA rotated to in the test
/// is told apart from it by time), its public URL the loopback address.
async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("phoenix.db").display()
    ))
    .await
    .unwrap();
    let domain = Domain::parse("a.test").unwrap();
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
    store
        .insert_first_ca(&CaRecord {
            signing_key: key.to_bytes().to_vec(),
            certificate,
            not_before,
            not_after,
        })
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let federation = FederationSettings {
        polyproto: p2::Settings {
            public_url: Some(p2::parse_public_url(&url).unwrap()),
            ..p2::Settings::default()
        },
        ..FederationSettings::default()
    };
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
        url: Url::parse(&url).unwrap(),
        _dir: dir,
        _shutdown: tx,
    }
}

/// Issue a certificate for `fid`/`client_id` with the current CA; `renew` replaces the
/// client's current certificate, otherwise the user is created.
async fn issue(server: &Server, fid: &str, client_id: &str, renew: bool) -> Ed25519PrivateKey {
    let key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::create_csr(
        &Fid::parse(fid).unwrap(),
        &ClientId::parse(client_id).unwrap(),
        &key,
    )
    .unwrap();
    let csr = certs::verify_csr(&csr).unwrap();
    let ca = server.ca();
    let der = certs::issue_client_certificate(
        &csr,
        &ca.signing_key,
        &ca.certificate,
        &certs::random_serial(&mut OsRng),
        now() - 60,
        now() + 30 * 24 * 3600,
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
    if renew {
        assert!(
            server
                .store
                .renew_client(
                    &record,
                    &ReplayRecord {
                        digest: phoenix_types::crypto::sha256(record.serial.as_bytes()),
                        received_at: now(),
                    },
                )
                .await
                .unwrap()
        );
    } else {
        assert_eq!(
            server.store.create_user(&record, now()).await.unwrap(),
            CreateUser::Created
        );
    }
    Ed25519PrivateKey(key)
}

fn client() -> HttpClient {
    // The workspace enables both of rustls's crypto providers, so none is picked by
    // default; the crate's client builds a rustls configuration even for plain HTTP.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    HttpClient::new().unwrap()
}

/// Verify a server certificate answer with the crate: the certificate is a valid
/// self-signed home-server ID-Cert, and the cache signature verifies with `current_key`.
fn verify_server_answer(answer: &CacheableIdCert, current_key: &Ed25519PublicKey) -> Hs {
    answer
        .verify::<Ed25519Signature, Ed25519PublicKey>(current_key)
        .unwrap();
    let cert = Hs::from_pem_unchecked(&answer.cert).unwrap();
    cert.full_verify_home_server(now()).unwrap();
    assert!(answer.cache_not_valid_before <= now());
    assert!(answer.cache_not_valid_after > now());
    cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polyproto_client_fetches_and_verifies_certificates() {
    let a = start().await;
    let client = client();

    // .well-known: both URLs, as absolute URLs.
    let well_known = client.get_well_known(&a.url).await.unwrap();
    assert_eq!(well_known.api(), &a.url);
    assert_eq!(well_known.oidc_issuer(), &a.url);

    // The current server certificate, verified by the crate, equals the server's CA.
    let first = a.server.ca();
    let first_key = public_key(&first.certificate.public_key);
    let answer = client.get_server_id_cert(None, &a.url).await.unwrap();
    assert_eq!(answer.invalidated_at, None);
    let hs = verify_server_answer(&answer, &first_key);
    assert_eq!(hs.id_cert_tbs.subject_public_key, first_key);
    assert_eq!(
        Hs::try_from_pem(&answer.cert, now(), &first_key)
            .unwrap()
            .id_cert_tbs
            .issuer
            .domain_name
            .to_string(),
        "a.test"
    );
    assert_eq!(
        answer.algorithm_identifier().unwrap().oid,
        ED25519,
        "Ed25519 certificates"
    );

    // An actor's certificates: the crate parses and fully validates them against the CA.
    let alice = issue(&a.server, "alice@a.test", "laptop", false).await;
    let fid = FederationId::new("alice@a.test").unwrap();
    let answers = client
        .get_actor_id_certs(&fid, None, None, None, &a.url)
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    answers[0]
        .verify::<Ed25519Signature, Ed25519PublicKey>(&first_key)
        .unwrap();
    let cert = Actor::try_from_pem(&answers[0].cert, now(), &first_key).unwrap();
    assert_eq!(cert.id_cert_tbs.subject_public_key, alice.pubkey());
    assert_eq!(
        cert.id_cert_tbs.subject.federation_id.to_string(),
        "alice@a.test"
    );
    assert_eq!(cert.id_cert_tbs.subject.session_id.to_string(), "laptop");
    assert!(
        answers[0]
            .try_to_actor_idcert::<Ed25519Signature, Ed25519PublicKey>(now(), &first_key)
            .is_ok()
    );
    // A wrong key is refused by the crate (the test's verifier is not vacuous).
    let stranger = Ed25519PrivateKey(crypto::generate_signing_key(&mut OsRng)).pubkey();
    assert!(
        answers[0]
            .verify::<Ed25519Signature, Ed25519PublicKey>(&stranger)
            .is_err()
    );
    assert!(Actor::try_from_pem(&answers[0].cert, now(), &stranger).is_err());

    // Filters; an empty answer is `[]` with 200, which the crate accepts.
    let laptop = SessionId::new_validated("laptop").unwrap();
    let phone = SessionId::new_validated("phone").unwrap();
    let n = now();
    let some = client
        .get_actor_id_certs(&fid, Some(n), Some(n), Some(&laptop), &a.url)
        .await
        .unwrap();
    assert_eq!(some.len(), 1);
    let none = client
        .get_actor_id_certs(&fid, None, None, Some(&phone), &a.url)
        .await
        .unwrap();
    assert!(none.is_empty());
    let none = client
        .get_actor_id_certs(&fid, Some(n + 365 * 24 * 3600), None, None, &a.url)
        .await
        .unwrap();
    assert!(none.is_empty());
    // An unknown actor is a 404.
    let unknown = client
        .get_actor_id_certs(
            &FederationId::new("bob@a.test").unwrap(),
            None,
            None,
            None,
            &a.url,
        )
        .await;
    assert!(
        matches!(unknown, Err(RequestError::StatusCode { received, .. }) if received.as_u16() == 404)
    );

    // CA rotation: now gives the new CA; a time before the rotation gives the first CA;
    // both answers carry a cache signature by the new (current) key. Alice's certificate,
    // issued by the first CA, still validates against it, with a cache signature by the
    // new key.
    let second = a.server.rotate_ca().await.unwrap();
    let second_key = public_key(&second.certificate.public_key);
    let answer = client.get_server_id_cert(None, &a.url).await.unwrap();
    let hs = verify_server_answer(&answer, &second_key);
    assert_eq!(hs.id_cert_tbs.subject_public_key, second_key);
    let before = first.certificate.not_before + 60;
    let answer = client
        .get_server_id_cert(Some(before), &a.url)
        .await
        .unwrap();
    let hs = verify_server_answer(&answer, &second_key);
    assert_eq!(hs.id_cert_tbs.subject_public_key, first_key);
    assert!(
        answer
            .verify::<Ed25519Signature, Ed25519PublicKey>(&first_key)
            .is_err(),
        "cache signatures are by the current key"
    );
    let answers = client
        .get_actor_id_certs(&fid, None, None, None, &a.url)
        .await
        .unwrap();
    answers[0]
        .verify::<Ed25519Signature, Ed25519PublicKey>(&second_key)
        .unwrap();
    Actor::try_from_pem(&answers[0].cert, now(), &first_key).unwrap();

    // A time before any CA: 404.
    let none = client
        .get_server_id_cert(Some(first.certificate.not_before - 10), &a.url)
        .await;
    assert!(
        matches!(none, Err(RequestError::StatusCode { received, .. }) if received.as_u16() == 404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polyproto_session_renews_and_ends() {
    let a = start().await;
    let client = client();
    let alice = issue(&a.server, "alice@a.test", "laptop", false).await;
    let fid = FederationId::new("alice@a.test").unwrap();
    let ca_key = public_key(&a.server.ca().certificate.public_key);
    let answers = client
        .get_actor_id_certs(&fid, None, None, None, &a.url)
        .await
        .unwrap();
    let cert = Actor::try_from_pem(&answers[0].cert, now(), &ca_key).unwrap();

    // The key trial in the crate's `KeyTrial` shape (u64 `expires` as a string), answered
    // with the crate's `into_response` (hex signature, the serial as a decimal string).
    let http = &client.client;
    let trial_url = a.url.join("/.p2/core/v1/session/auth").unwrap();
    let body = http
        .get(trial_url.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(polyproto::is_canonicalized_json(&body));
    let trial: KeyTrial = serde_json::from_str(&body).unwrap();
    assert!(trial.expires > now() && trial.trial.len() >= 64);
    let response = trial.into_response(alice.clone(), &cert).unwrap();
    let serial = response.serial_number.to_string();
    assert_eq!(
        serial,
        decimal(
            &ParsedCert::parse(&certs::from_pem(&answers[0].cert).unwrap())
                .unwrap()
                .serial
        )
    );
    let body = serde_json::json!({
        "fid": fid.to_string(),
        "serialNumber": serial,
        "signature": response.signature,
    });
    let answer = http
        .post(trial_url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let token: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();

    // The crate's Session announces a renewed certificate (PUT session/idcert/extern, 201).
    let session: Session<Ed25519Signature, Ed25519PrivateKey> =
        Session::new(&client, &token, a.url.clone(), None);
    let renewed_key = issue(&a.server, "alice@a.test", "laptop", true).await;
    let answers = client
        .get_actor_id_certs(&fid, None, None, None, &a.url)
        .await
        .unwrap();
    let renewed = answers
        .iter()
        .map(|answer| Actor::try_from_pem(&answer.cert, now(), &ca_key).unwrap())
        .find(|cert| cert.id_cert_tbs.subject_public_key == renewed_key.pubkey())
        .unwrap();
    session.update_session_id_cert(renewed).await.unwrap();
    let record = p2::session(&a.server, &token).await.unwrap();
    assert_ne!(record.serial, serial);

    // The crate's Session ends the session (DELETE session?sessionId=, 204); the home
    // server then serves the certificate with `invalidatedAt`, and the crate verifies the
    // cache signature over it.
    let laptop = SessionId::new_validated("laptop").unwrap();
    session.delete_session(&laptop, "unused").await.unwrap();
    assert!(p2::session(&a.server, &token).await.is_none());
    let answers = client
        .get_actor_id_certs(&fid, None, None, Some(&laptop), &a.url)
        .await
        .unwrap();
    let invalidated: Vec<&CacheableIdCert> = answers
        .iter()
        .filter(|answer| answer.invalidated_at.is_some())
        .collect();
    assert_eq!(invalidated.len(), 1);
    invalidated[0]
        .verify::<Ed25519Signature, Ed25519PublicKey>(&ca_key)
        .unwrap();
    assert!(invalidated[0].invalidated_at.unwrap() <= now());
}
