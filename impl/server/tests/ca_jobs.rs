//! The CA jobs of a serving server ([`Server::run_ca_jobs`], started by `http::serve`): a
//! CA that reaches the configured age is rotated by the schedule while the server runs,
//! and what the server serves and signs follows at once. The check interval is set to
//! one second (`ca_check_interval_secs`) so that the rotation happens within seconds.
//! Both backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use rand_core::OsRng;

use phoenix_server::server::{Limits, Server, now};
use phoenix_server::store::{AsStore, CaRecord, QsStore};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto;
use phoenix_types::ids::Domain;
use support::{Backend, listen, on_both_backends, serve};

/// The CA's `not_before` is `age` seconds ago.
fn aged_ca(domain: &Domain, age: u64) -> CaRecord {
    let key = crypto::generate_signing_key(&mut OsRng);
    let not_before = now() - age;
    let not_after = now() + 365 * 24 * 3600;
    let der = certs::create_ca_certificate(
        domain,
        &key,
        &certs::random_serial(&mut OsRng),
        not_before,
        not_after,
    )
    .unwrap();
    CaRecord {
        // Sealed as a process sharing the database seals it (the in-process default KEK).
        signing_key: phoenix_server::keys_at_rest::KeyEncryptionKey::default()
            .seal("ca", &key.to_bytes())
            .unwrap(),
        certificate: der,
        not_before,
        not_after,
    }
}

/// `GET /.p2/core/v1/idcert/server` on `url`: the served CA certificate's DER, and the
/// cache signature checked with that CA's key (so the server signs with the CA it serves).
async fn served_ca(url: &str) -> Vec<u8> {
    let body = reqwest::get(format!("{url}/.p2/core/v1/idcert/server"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let cacheable: phoenix_types::cacheable::CacheableIdCertIn =
        serde_json::from_slice(&body).unwrap();
    let (cert, _, _, _) = cacheable.parse().unwrap();
    cacheable
        .verify(&cert.public_key)
        .expect("the served CA's cache signature verifies with the served CA's key");
    cert.der
}

// Requirement: AS-CA-ROT-2
async fn scheduled_ca_rotation_never_runs(backend: Backend) {
    let Some((store, _storage)) = support::store(backend, "ca_jobs").await else {
        return;
    };
    let domain = Domain::parse("a.test").unwrap();
    // Rotation every day; the CA turns one day old three seconds from now.
    let old = aged_ca(&domain, 24 * 3600 - 3);
    assert!(store.insert_first_ca(&old).await.unwrap());
    let limits = Limits {
        ca_rotation: Some(24 * 3600),
        ca_check_interval: 1,
        ..Limits::default()
    };
    let server = Server::start(domain.clone(), store, limits).await.unwrap();
    let (listener, url) = listen().await;
    let _stop = serve(server.clone(), listener);
    assert_eq!(served_ca(&url).await, old.certificate, "not due yet");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while server.store.ca_history().await.unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scheduled rotation did not happen within 15 s of being due"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly one rotation: the new CA is young again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = server.store.ca_history().await.unwrap();
    assert_eq!(history.len(), 2, "one rotation, not one per check");
    let new = &history[1];
    assert_ne!(new.certificate, old.certificate);
    // The running server serves the new CA, signs with it, and issues under it.
    assert_eq!(server.ca().certificate.der, new.certificate);
    assert_eq!(served_ca(&url).await, new.certificate);
    let new_ca = ParsedCert::parse(&new.certificate).unwrap();
    new_ca.verify_self_signed_ca(&domain).unwrap();
}

// Requirement: OPS-KEK-1
/// A database whose keys an earlier version stored in the clear (a CA and the QS signing
/// key): the first start seals them in place under the key-encryption key and uses the same
/// keys; a start under another key-encryption key is refused, saying so.
async fn keys_stored_in_the_clear_are_sealed_at_start(backend: Backend) {
    use phoenix_server::keys_at_rest::{KeyEncryptionKey, is_sealed};
    let Some((store, _storage)) = support::store(backend, "kek").await else {
        return;
    };
    let domain = Domain::parse("a.test").unwrap();
    let key = crypto::generate_signing_key(&mut OsRng);
    let (not_before, not_after) = (now() - 60, now() + 365 * 24 * 3600);
    let certificate = certs::create_ca_certificate(
        &domain,
        &key,
        &certs::random_serial(&mut OsRng),
        not_before,
        not_after,
    )
    .unwrap();
    let clear = CaRecord {
        signing_key: key.to_bytes().to_vec(),
        certificate,
        not_before,
        not_after,
    };
    assert!(store.insert_first_ca(&clear).await.unwrap());
    let qs_key = crypto::generate_signing_key(&mut OsRng);
    store
        .insert_server_key(
            "qs_signing",
            &qs_key.to_bytes(),
            &qs_key.verifying_key().to_bytes(),
        )
        .await
        .unwrap();
    let kek = KeyEncryptionKey::from_bytes([42; 32]);
    let limits = Limits {
        key_encryption: kek.clone(),
        ..Limits::default()
    };
    let server = Server::start(domain.clone(), store.clone(), limits)
        .await
        .unwrap();
    // The same keys, now sealed.
    assert_eq!(server.ca().signing_key.to_bytes(), key.to_bytes());
    assert_eq!(server.qs_signing_key.to_bytes(), qs_key.to_bytes());
    let stored_ca = store.ca().await.unwrap().unwrap();
    assert!(
        is_sealed(&stored_ca.signing_key),
        "the CA key is still clear"
    );
    let (stored_qs, _) = store.server_key("qs_signing").await.unwrap().unwrap();
    assert!(is_sealed(&stored_qs), "the QS key is still clear");
    assert!(!stored_qs.windows(32).any(|w| w == qs_key.to_bytes()));
    // Another key-encryption key does not open them: no start.
    let other = Limits {
        key_encryption: KeyEncryptionKey::from_bytes([43; 32]),
        ..Limits::default()
    };
    let refused = Server::start(domain, store, other).await.err().unwrap();
    assert!(
        refused.to_string().contains("does not open the stored"),
        "{refused}"
    );
}

on_both_backends!(
    scheduled_ca_rotation_never_runs,
    keys_stored_in_the_clear_are_sealed_at_start
);
