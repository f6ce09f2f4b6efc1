//! The Authentication Service driven in-process with arbitrary operation sequences:
//! registrations, connection package uploads and claims, direct-queue enqueues and
//! dequeues, certificate lookups, and raw envelopes. Requests are signed inside the
//! harness (so fuzzing reaches past authentication) and then possibly damaged.
//!
//! Checked: no panic; every error blames the caller (4xx); intact requests succeed or fail
//! exactly as a small model predicts; a one-time connection package is never served twice,
//! and the last-resort one only when no one-time package is left.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tls_codec::VLBytes;

use phoenix_fuzz::harness::{DOMAIN, Harness, Mutation, Signer, intact, key};
use phoenix_server::server::now;
use phoenix_types::certs::{self, ParsedCert};
use phoenix_types::codec;
use phoenix_types::crypto::{self, label};
use phoenix_types::error::ErrorCode;
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::as_::{self, *};
use phoenix_types::messages::{Auth, DequeueRequest, DequeueResponse, Empty};

#[derive(Debug, Arbitrary)]
enum Op {
    Register {
        user: u8,
        client: u8,
        key: u8,
        mutation: Mutation,
    },
    /// A CSR for a user of another domain.
    RegisterForeign {
        user: u8,
        key: u8,
    },
    PublishConnectionPackages {
        user: u8,
        key: u8,
        count: u8,
        last_resort: u8,
        expired: Option<u8>,
        for_another_client: bool,
        skew: i16,
        mutation: Mutation,
    },
    FetchConnectionPackage {
        user: u8,
        mutation: Mutation,
    },
    EnqueueConnection {
        user: u8,
        client: u8,
        kem_output_len: u8,
        ciphertext_len: u16,
        mutation: Mutation,
    },
    DequeueConnection {
        user: u8,
        key: u8,
        start: u8,
        max: u16,
        skew: i16,
        mutation: Mutation,
    },
    ClientCertificates {
        user: u8,
        mutation: Mutation,
    },
    ServerCertificate {
        mutation: Mutation,
    },
    /// Any payload under any authentication on any AS operation.
    Raw {
        operation: u8,
        auth: Auth,
        payload: Vec<u8>,
    },
}

const OPERATIONS: [&str; 8] = [
    as_::REGISTER,
    as_::RENEW_CERTIFICATE,
    as_::PUBLISH_CONNECTION_PACKAGES,
    as_::FETCH_CONNECTION_PACKAGE,
    as_::ENQUEUE_CONNECTION,
    as_::DEQUEUE_CONNECTION,
    as_::CLIENT_CERTIFICATES,
    as_::SERVER_CERTIFICATE,
];

/// What the model knows of one user.
#[derive(Debug, Default)]
struct User {
    client_id: String,
    key: u8,
    /// Registered by a damaged request: its client id and key are not known for sure.
    uncertain: bool,
    /// Encryption keys of unserved one-time packages, and of the last-resort package.
    one_time: BTreeSet<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    /// Every one-time key ever served.
    served: BTreeSet<Vec<u8>>,
    queued: u64,
}

struct Run<'a> {
    h: &'a Harness,
    ns: String,
    users: BTreeMap<u8, User>,
    /// Publications so far: part of each package key, so that no two publications of a
    /// run are the same bytes (an identical one is a replay, refused with `REPLAYED`).
    publications: u64,
    /// Connection requests accepted so far (fid, client, kem length, ciphertext length):
    /// the same bytes again are `REPLAYED` (CL-AMBIG-3).
    enqueued: BTreeSet<(String, String, u8, u16)>,
}

impl Run<'_> {
    fn fid(&self, user: u8) -> String {
        format!("u{}{}@{DOMAIN}", user % 4, self.ns)
    }

    fn register(&mut self, user: u8, client: u8, key_n: u8, mutation: &Mutation) {
        let fid = self.fid(user);
        let client_id = format!("c{}", client % 3);
        let key = key(key_n % 8);
        let csr = certs::create_csr(
            &Fid::parse(&fid).expect("valid fid"),
            &ClientId::parse(&client_id).expect("valid client id"),
            &key,
        )
        .expect("a CSR");
        let result = self.h.send(
            "as",
            as_::REGISTER,
            &RegisterRequest {
                csr: VLBytes::new(csr),
            },
            &Signer::Anonymous,
            mutation,
        );
        if !intact(mutation) {
            if let Ok(bytes) = &result {
                // A damaged request that still registered: remember it if it decodes.
                if codec::decode::<RegisterResponse>(bytes, usize::MAX).is_ok() {
                    self.users.entry(user % 4).or_insert(User {
                        client_id,
                        key: key_n % 8,
                        uncertain: true,
                        ..User::default()
                    });
                }
            }
            return;
        }
        let exists = self.users.contains_key(&(user % 4));
        // CL-AMBIG-2: the same client id and key again is answered with its certificate.
        let repeat = self
            .users
            .get(&(user % 4))
            .is_some_and(|u| u.client_id == client_id && u.key == key_n % 8);
        let uncertain = self.users.get(&(user % 4)).is_some_and(|u| u.uncertain);
        match result {
            Ok(bytes) => {
                assert!(!exists || repeat || uncertain, "registered {fid} twice");
                let response: RegisterResponse =
                    codec::decode(&bytes, usize::MAX).expect("a register response");
                let ca = ParsedCert::parse(response.ca_certificate.as_slice()).expect("CA");
                let cert = ParsedCert::parse(response.client_certificate.as_slice())
                    .expect("client certificate");
                let subject = cert
                    .verify_issued_by(&ca, Some(now()))
                    .expect("issued by the CA");
                assert_eq!(subject.fid.to_string(), fid);
                assert_eq!(cert.public_key, key.verifying_key().to_bytes());
                if exists {
                    return;
                }
                self.users.insert(
                    user % 4,
                    User {
                        client_id,
                        key: key_n % 8,
                        ..User::default()
                    },
                );
            }
            Err(e) => {
                assert!(exists, "registration of a new user failed: {e}");
                assert!(
                    !repeat || uncertain,
                    "a repeated registration was refused: {e}"
                );
                assert_eq!(e.code, ErrorCode::UserExists);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        user: u8,
        key_n: u8,
        count: u8,
        last_resort: u8,
        expired: Option<u8>,
        for_another_client: bool,
        skew: i16,
        mutation: &Mutation,
    ) {
        let fid = self.fid(user);
        let registered = self.users.get(&(user % 4));
        let client_id = registered
            .map(|u| u.client_id.clone())
            .unwrap_or_else(|| "c0".into());
        let now = now();
        let count = usize::from(count % 8);
        let mut packages = Vec::new();
        let mut keys = Vec::new();
        let signing_key = key(key_n % 8);
        for n in 0..count {
            let mut encryption_key = [0u8; 32];
            encryption_key[..8].copy_from_slice(&(n as u64).to_be_bytes());
            encryption_key[8..16].copy_from_slice(&now.to_be_bytes());
            encryption_key[16] = user;
            encryption_key[17] = self.ns.len() as u8;
            encryption_key[18..26].copy_from_slice(&self.publications.to_be_bytes());
            let payload = ConnectionPackagePayload {
                fid: fid.clone(),
                client_id: if for_another_client && n == 0 {
                    "other".into()
                } else {
                    client_id.clone()
                },
                encryption_key: VLBytes::new(encryption_key.to_vec()),
                not_after: if expired == Some(n as u8) {
                    now - 1
                } else {
                    now + 3600
                },
                last_resort: u8::from(usize::from(last_resort) % 8 == n),
            };
            let payload = codec::encode(&payload).expect("payload");
            let signature = crypto::sign(&signing_key, label::CONNECTION_PACKAGE, &payload);
            packages.push(ConnectionPackage {
                payload: VLBytes::new(payload),
                signature: VLBytes::new(signature.to_vec()),
            });
            keys.push((encryption_key.to_vec(), usize::from(last_resort) % 8 == n));
        }
        self.publications += 1;
        let timestamp = now.saturating_add_signed(i64::from(skew) * 4);
        let result = self.h.send(
            "as",
            as_::PUBLISH_CONNECTION_PACKAGES,
            &PublishConnectionPackagesRequest {
                timestamp,
                packages,
            },
            &Signer::AsClient {
                fid: &fid,
                client_id: &client_id,
                key: &signing_key,
            },
            mutation,
        );
        if !intact(mutation) {
            if result.is_ok() {
                // Damaged but accepted (the damage did not matter): the model no longer
                // knows which packages are stored.
                if let Some(u) = self.users.get_mut(&(user % 4)) {
                    u.one_time.clear();
                    u.last_resort = None;
                    u.served.clear();
                }
            }
            return;
        }
        let expect_ok = registered.is_some_and(|u| u.key == key_n % 8)
            && timestamp.abs_diff(now) <= phoenix_types::messages::MAX_CLOCK_SKEW
            && count > 0
            && usize::from(last_resort) % 8 < count
            && expired.is_none_or(|e| usize::from(e) >= count)
            && !for_another_client;
        match result {
            Ok(_) => {
                assert!(expect_ok, "publish accepted unexpectedly");
                let u = self.users.get_mut(&(user % 4)).expect("registered");
                u.one_time = keys
                    .iter()
                    .filter(|(_, lr)| !lr)
                    .map(|(k, _)| k.clone())
                    .collect();
                u.last_resort = keys.iter().find(|(_, lr)| *lr).map(|(k, _)| k.clone());
            }
            Err(e) => assert!(!expect_ok, "publish refused unexpectedly: {e}"),
        }
    }

    fn fetch(&mut self, user: u8, mutation: &Mutation) {
        let fid = self.fid(user).to_uppercase();
        let result = self.h.send(
            "as",
            as_::FETCH_CONNECTION_PACKAGE,
            &FetchConnectionPackageRequest { fid },
            &Signer::Anonymous,
            mutation,
        );
        let Ok(bytes) = result else {
            if intact(mutation) {
                let u = self.users.get(&(user % 4));
                assert!(
                    u.is_none_or(|u| u.one_time.is_empty() && u.last_resort.is_none()),
                    "no package served although one is stored: {result:?}"
                );
            }
            return;
        };
        let response: FetchConnectionPackageResponse =
            codec::decode(&bytes, usize::MAX).expect("a fetch response");
        let payload: ConnectionPackagePayload =
            codec::decode(response.package.payload.as_slice(), usize::MAX).expect("payload");
        let cert = ParsedCert::parse(response.client_certificate.as_slice()).expect("cert");
        crypto::verify(
            &cert.public_key,
            label::CONNECTION_PACKAGE,
            response.package.payload.as_slice(),
            response.package.signature.as_slice(),
        )
        .expect("a served package verifies with the served certificate");
        let encryption_key = payload.encryption_key.as_slice().to_vec();
        let Some(u) = self.users.get_mut(&(user % 4)) else {
            return;
        };
        if payload.last_resort == 1 {
            if u.last_resort.is_some() {
                assert!(
                    u.one_time.is_empty(),
                    "the last-resort package was served while one-time packages remained"
                );
            }
        } else {
            assert!(
                u.served.insert(encryption_key.clone()),
                "a one-time connection package was served twice"
            );
            u.one_time.remove(&encryption_key);
        }
    }

    fn enqueue(
        &mut self,
        user: u8,
        client: u8,
        kem_output_len: u8,
        ciphertext_len: u16,
        mutation: &Mutation,
    ) {
        let fid = self.fid(user);
        let client_id = format!("c{}", client % 3);
        let result = self.h.send(
            "as",
            as_::ENQUEUE_CONNECTION,
            &EnqueueConnectionRequest {
                fid,
                client_id: client_id.clone(),
                ciphertext: openmls_traits::types::HpkeCiphertext {
                    kem_output: VLBytes::new(vec![1; usize::from(kem_output_len % 40)]),
                    ciphertext: VLBytes::new(vec![2; usize::from(ciphertext_len) % 20_000]),
                },
            },
            &Signer::Anonymous,
            mutation,
        );
        if let (Ok(_), Some(u)) = (&result, self.users.get_mut(&(user % 4)))
            && u.client_id == client_id
        {
            u.queued += 1;
        }
        if intact(mutation) {
            let expect_ok = self
                .users
                .get(&(user % 4))
                .is_some_and(|u| u.client_id == client_id)
                && kem_output_len % 40 == 32
                && usize::from(ciphertext_len) % 20_000 <= MAX_CONNECTION_CIPHERTEXT;
            let copy = (
                self.fid(user),
                client_id.clone(),
                kem_output_len % 40,
                ciphertext_len % 20_000,
            );
            let replayed = matches!(&result, Err(e) if e.code == ErrorCode::Replayed);
            if expect_ok && self.enqueued.contains(&copy) {
                // CL-AMBIG-3: an accepted request again appends nothing.
                assert!(replayed, "a copy of an accepted enqueue: {result:?}");
            } else if replayed {
                // A mutated request the server accepted can be these very bytes.
                assert!(
                    expect_ok,
                    "REPLAYED for a request never accepted: {result:?}"
                );
            } else {
                assert_eq!(result.is_ok(), expect_ok, "enqueue: {result:?}");
            }
            if result.is_ok() {
                self.enqueued.insert(copy);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dequeue(
        &mut self,
        user: u8,
        key_n: u8,
        start: u8,
        max: u16,
        skew: i16,
        mutation: &Mutation,
    ) {
        let fid = self.fid(user);
        let client_id = self
            .users
            .get(&(user % 4))
            .map(|u| u.client_id.clone())
            .unwrap_or_else(|| "c0".into());
        let now = now();
        let timestamp = now.saturating_add_signed(i64::from(skew) * 4);
        let signing_key = key(key_n % 8);
        let result = self.h.send(
            "as",
            as_::DEQUEUE_CONNECTION,
            &DequeueRequest {
                timestamp,
                sequence_number_start: u64::from(start % 16),
                max,
            },
            &Signer::AsClient {
                fid: &fid,
                client_id: &client_id,
                key: &signing_key,
            },
            mutation,
        );
        if let Ok(bytes) = &result {
            let response: DequeueResponse =
                codec::decode(bytes, usize::MAX).expect("a dequeue response");
            assert!(response.messages.len() <= usize::from(max));
            assert!(
                response
                    .messages
                    .windows(2)
                    .all(|w| w[0].sequence_number < w[1].sequence_number)
            );
            assert!(
                response
                    .messages
                    .iter()
                    .all(|m| m.sequence_number >= u64::from(start % 16))
            );
        }
        if intact(mutation) {
            let expect_ok = self
                .users
                .get(&(user % 4))
                .is_some_and(|u| u.key == key_n % 8)
                && timestamp.abs_diff(now) <= phoenix_types::messages::MAX_CLOCK_SKEW;
            assert_eq!(result.is_ok(), expect_ok, "dequeue: {result:?}");
        }
    }

    fn certificates(&mut self, user: u8, mutation: &Mutation) {
        let result = self.h.send(
            "as",
            as_::CLIENT_CERTIFICATES,
            &ClientCertificatesRequest {
                fid: self.fid(user),
            },
            &Signer::Anonymous,
            mutation,
        );
        if let Ok(bytes) = &result {
            let response: ClientCertificatesResponse =
                codec::decode(bytes, usize::MAX).expect("a certificates response");
            for cert in &response.certificates {
                ParsedCert::parse(cert.as_slice()).expect("a served certificate parses");
            }
        }
        if intact(mutation) {
            assert_eq!(result.is_ok(), self.users.contains_key(&(user % 4)));
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    Harness::with(|h| {
        let mut run = Run {
            ns: h.namespace(),
            h,
            users: BTreeMap::new(),
            publications: 0,
            enqueued: BTreeSet::new(),
        };
        for op in ops.iter().take(16) {
            match op {
                Op::Register {
                    user,
                    client,
                    key,
                    mutation,
                } => run.register(*user, *client, *key, mutation),
                Op::RegisterForeign { user, key: key_n } => {
                    let fid = Fid::parse(&format!("u{user}@elsewhere.test")).expect("fid");
                    let csr = certs::create_csr(
                        &fid,
                        &ClientId::parse("c0").expect("client id"),
                        &key(*key_n % 8),
                    )
                    .expect("a CSR");
                    let result = run.h.send(
                        "as",
                        as_::REGISTER,
                        &RegisterRequest {
                            csr: VLBytes::new(csr),
                        },
                        &Signer::Anonymous,
                        &Mutation::None,
                    );
                    assert_eq!(result.map_err(|e| e.code), Err(ErrorCode::WrongDomain));
                }
                Op::PublishConnectionPackages {
                    user,
                    key,
                    count,
                    last_resort,
                    expired,
                    for_another_client,
                    skew,
                    mutation,
                } => run.publish(
                    *user,
                    *key,
                    *count,
                    *last_resort,
                    *expired,
                    *for_another_client,
                    *skew,
                    mutation,
                ),
                Op::FetchConnectionPackage { user, mutation } => run.fetch(*user, mutation),
                Op::EnqueueConnection {
                    user,
                    client,
                    kem_output_len,
                    ciphertext_len,
                    mutation,
                } => run.enqueue(*user, *client, *kem_output_len, *ciphertext_len, mutation),
                Op::DequeueConnection {
                    user,
                    key,
                    start,
                    max,
                    skew,
                    mutation,
                } => run.dequeue(*user, *key, *start, *max, *skew, mutation),
                Op::ClientCertificates { user, mutation } => run.certificates(*user, mutation),
                Op::ServerCertificate { mutation } => {
                    let result = run.h.send(
                        "as",
                        as_::SERVER_CERTIFICATE,
                        &Empty {},
                        &Signer::Anonymous,
                        mutation,
                    );
                    if intact(mutation) {
                        let bytes = result.expect("server_certificate");
                        let response: ServerCertificateResponse =
                            codec::decode(&bytes, usize::MAX).expect("response");
                        ParsedCert::parse(response.ca_certificate.as_slice()).expect("CA");
                    }
                }
                Op::Raw {
                    operation,
                    auth,
                    payload,
                } => {
                    let operation = OPERATIONS[usize::from(*operation) % OPERATIONS.len()];
                    let body = codec::encode(&phoenix_types::messages::RequestEnvelope {
                        version: phoenix_types::PROTOCOL_VERSION,
                        payload: VLBytes::new(payload.clone()),
                        auth: auth.clone(),
                    })
                    .expect("envelope");
                    let _ = run.h.call("as", operation, &body);
                }
            }
        }
    });
});
