//! Broken authentication chains are each refused by the client with a clear reason: a leaf
//! not signed by the client's certificate, a certificate from another CA, an expired
//! certificate, a certificate outside its issuer's validity. (A forged message signature is
//! in `malicious_ds.rs`: it never reaches the chain.) These are the checks the client runs
//! on every received message and every member (`phoenix_client::verify`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_client::verify::{check_binding, verify_chain};
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::crypto::{self, label};
use phoenix_types::ids::{ClientId, Domain, Fid};
use phoenix_types::messages::client::ClientCredentialInfo;

const NOW: u64 = 1_800_000_000;

struct Ca {
    key: SigningKey,
    cert: ParsedCert,
}

fn ca(domain: &str, not_before: u64, not_after: u64) -> Ca {
    let key = crypto::generate_signing_key(&mut OsRng);
    let der = certs::create_ca_certificate(
        &Domain::parse(domain).unwrap(),
        &key,
        &certs::random_serial(&mut OsRng),
        not_before,
        not_after,
    )
    .unwrap();
    Ca {
        key,
        cert: ParsedCert::parse(&der).unwrap(),
    }
}

/// A client certificate for alice@a.test issued by `ca` for [not_before, not_after].
fn client_cert(ca: &Ca, not_before: u64, not_after: u64) -> (SigningKey, ParsedCert) {
    let key = crypto::generate_signing_key(&mut OsRng);
    let csr = certs::verify_csr(
        &certs::create_csr(
            &Fid::parse("alice@a.test").unwrap(),
            &ClientId::parse("c1").unwrap(),
            &key,
        )
        .unwrap(),
    )
    .unwrap();
    let der = certs::issue_client_certificate(
        &csr,
        &ca.key,
        &ca.cert,
        &certs::random_serial(&mut OsRng),
        not_before,
        not_after,
    )
    .unwrap();
    (key, ParsedCert::parse(&der).unwrap())
}

fn info(cert: &ParsedCert, leaf_key: &[u8], binder: &SigningKey) -> ClientCredentialInfo {
    ClientCredentialInfo {
        client_certificate: VLBytes::new(cert.der.clone()),
        leaf_signature_key: VLBytes::new(leaf_key.to_vec()),
        binding_signature: VLBytes::new(
            crypto::sign(binder, label::LEAF_BINDING, leaf_key).to_vec(),
        ),
    }
}

#[test]
fn a_sound_chain_verifies() {
    let ca = ca("a.test", NOW - 100, NOW + 10_000);
    let (key, cert) = client_cert(&ca, NOW - 10, NOW + 1000);
    let leaf = crypto::generate_signing_key(&mut OsRng)
        .verifying_key()
        .to_bytes();
    let bound = check_binding(&info(&cert, &leaf, &key), &leaf).unwrap();
    let subject = verify_chain(&bound, std::slice::from_ref(&ca.cert.der), NOW).unwrap();
    assert_eq!(subject.fid.to_string(), "alice@a.test");
}

#[test]
fn a_leaf_not_signed_by_the_certificate_is_refused() {
    let ca = ca("a.test", NOW - 100, NOW + 10_000);
    let (_, cert) = client_cert(&ca, NOW - 10, NOW + 1000);
    let leaf = crypto::generate_signing_key(&mut OsRng)
        .verifying_key()
        .to_bytes();
    let impostor = crypto::generate_signing_key(&mut OsRng);
    let err = check_binding(&info(&cert, &leaf, &impostor), &leaf)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not signed by the client's certificate key"),
        "{err}"
    );
    // Nor may a binding for one leaf be used for another.
    let (key, cert) = client_cert(&ca, NOW - 10, NOW + 1000);
    let other_leaf = crypto::generate_signing_key(&mut OsRng)
        .verifying_key()
        .to_bytes();
    let err = check_binding(&info(&cert, &leaf, &key), &other_leaf)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bound to another leaf key"), "{err}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let genuine = ca("a.test", NOW - 100, NOW + 10_000);
    let rogue = ca("a.test", NOW - 100, NOW + 10_000);
    let (_, cert) = client_cert(&rogue, NOW - 10, NOW + 1000);
    let err = verify_chain(&cert, std::slice::from_ref(&genuine.cert.der), NOW)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not issued by any known CA certificate of a.test"),
        "{err}"
    );
    // A CA certificate of another domain does not help either.
    let other_domain = ca("b.test", NOW - 100, NOW + 10_000);
    let err = verify_chain(&cert, std::slice::from_ref(&other_domain.cert.der), NOW)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not issued by any known CA"), "{err}");
}

#[test]
fn an_expired_certificate_is_refused_now_but_verifies_as_it_was() {
    let ca = ca("a.test", NOW - 100, NOW + 10_000);
    let (_, cert) = client_cert(&ca, NOW - 10, NOW + 100);
    let err = verify_chain(&cert, std::slice::from_ref(&ca.cert.der), NOW + 101)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid at the given time"), "{err}");
    // A message received while it was valid still verifies as of its arrival.
    assert!(verify_chain(&cert, std::slice::from_ref(&ca.cert.der), NOW + 50).is_ok());
}

#[test]
fn a_certificate_outside_its_issuers_validity_is_refused() {
    // Two CA certificates for the same key: one valid for a short time, one for long. A
    // certificate issued under the long one outlives the short one: against the short
    // one it does not nest.
    let short = ca("a.test", NOW - 100, NOW + 500);
    let long_der = certs::create_ca_certificate(
        &Domain::parse("a.test").unwrap(),
        &short.key,
        &certs::random_serial(&mut OsRng),
        NOW - 100,
        NOW + 10_000,
    )
    .unwrap();
    let long = Ca {
        key: short.key.clone(),
        cert: ParsedCert::parse(&long_der).unwrap(),
    };
    let (_, cert) = client_cert(&long, NOW - 10, NOW + 5000);
    let err = verify_chain(&cert, std::slice::from_ref(&short.cert.der), NOW)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("validity is not inside the issuer's validity"),
        "{err}"
    );
}
