//! The Queuing Service driven in-process with arbitrary operation sequences: pseudonymous
//! user creation, key package uploads (valid MLS key packages with sealed queue configs,
//! or broken ones), friendship-token claims, fan-out enqueues as the DS's outbox makes
//! them, dequeues, and raw envelopes. Requests are signed inside the harness and then
//! possibly damaged.
//!
//! Checked: no panic; every error blames the caller; intact requests behave as a small
//! model predicts; a one-time key package is never handed out twice, the last-resort one
//! only when the pool is empty; queues return exactly what was enqueued, in order.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tls_codec::VLBytes;

use phoenix_fuzz::harness::{DOMAIN, Harness, Mutation, Signer, intact, key};
use phoenix_fuzz::mls::{self, Provider};
use phoenix_server::qs::enqueue::{EnqueueOutcome, enqueue_local};
use phoenix_server::server::now;
use phoenix_server::store::OutboxEntry;
use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::ErrorCode;
use phoenix_types::messages::qs::{self, *};
use phoenix_types::messages::{Auth, DequeueRequest, DequeueResponse, Empty, MAX_CLOCK_SKEW};

/// Where a key package's queue config points.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum QueueTarget {
    ThisClient,
    AnotherClient,
    AnotherDomain,
    Garbage,
    Missing,
}

#[derive(Debug, Arbitrary)]
enum Op {
    CreateUser {
        user_key: u8,
        client_key: u8,
        token: u8,
        weak_key: bool,
        mutation: Mutation,
    },
    PublishKeyPackages {
        client: u8,
        key: u8,
        count: u8,
        last_resort: u8,
        target: QueueTarget,
        skew: i16,
        mutation: Mutation,
    },
    FetchKeyPackages {
        token: u8,
        mutation: Mutation,
    },
    KeyPackageStatus {
        client: u8,
        key: u8,
        mutation: Mutation,
    },
    Dequeue {
        client: u8,
        key: u8,
        start: u8,
        max: u16,
        skew: i16,
        mutation: Mutation,
    },
    /// Fan-out as the outbox delivers it: entries sealed to a client, or not.
    Enqueue {
        entries: Vec<(u8, QueueTarget, Vec<u8>)>,
    },
    QueueConfigKey {
        mutation: Mutation,
    },
    Raw {
        operation: u8,
        auth: Auth,
        payload: Vec<u8>,
    },
}

const OPERATIONS: [&str; 6] = [
    qs::KEY_PACKAGE_STATUS,
    qs::QUEUE_CONFIG_KEY,
    qs::CREATE_USER,
    qs::PUBLISH_KEY_PACKAGES,
    qs::FETCH_KEY_PACKAGES,
    qs::DEQUEUE,
];

#[derive(Debug)]
struct Client {
    id: [u8; 16],
    key: u8,
    /// Sequence numbers in the queue.
    queue: BTreeSet<u64>,
    /// False once a damaged dequeue succeeded (it may have deleted anything).
    queue_known: bool,
    one_time: BTreeSet<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    served: BTreeSet<Vec<u8>>,
    /// Last-resort servings seen; `None` once a damaged upload made the model unsure.
    last_resort_served: Option<u64>,
}

struct Run<'a> {
    h: &'a Harness,
    ns: String,
    provider: Provider,
    /// By creation order.
    clients: Vec<Client>,
    tokens: BTreeMap<u8, usize>,
    /// The user auth key (its number) each taken token was created with.
    token_user_keys: BTreeMap<u8, u8>,
    /// A damaged create_user succeeded: which tokens are taken is no longer known.
    tokens_uncertain: bool,
    enqueues: u64,
}

impl Run<'_> {
    fn token(&self, n: u8) -> [u8; 32] {
        crypto::sha256(format!("{} token {}", self.ns, n % 4).as_bytes())
    }

    fn client(&self, n: u8) -> Option<&Client> {
        if self.clients.is_empty() {
            None
        } else {
            self.clients.get(usize::from(n) % self.clients.len())
        }
    }

    fn create_user(&mut self, user_key: u8, client_key: u8, token: u8, weak: bool, m: &Mutation) {
        let client_key_bytes = if weak {
            // The identity point: a weak key that must be refused.
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        } else {
            key(client_key % 8).verifying_key().to_bytes()
        };
        let result = self.h.send(
            "qs",
            qs::CREATE_USER,
            &CreateUserRequest {
                user_auth_key: VLBytes::new(key(user_key % 8).verifying_key().to_bytes().to_vec()),
                friendship_token: self.token(token),
                client_auth_key: VLBytes::new(client_key_bytes.to_vec()),
                queue_key: VLBytes::new(vec![9; 32]),
                queue_ratchet_secret: [7; 32],
            },
            &Signer::Anonymous,
            m,
        );
        let taken = self.tokens.contains_key(&(token % 4));
        // CL-AMBIG-2: the identical creation again gets the first one's ids.
        let repeat = (!weak && !self.tokens_uncertain)
            .then(|| {
                let index = *self.tokens.get(&(token % 4))?;
                let first = self.clients.get(index)?;
                (self.token_user_keys.get(&(token % 4)) == Some(&(user_key % 8))
                    && first.key == client_key % 8)
                    .then_some(first.id)
            })
            .flatten();
        match result {
            Ok(bytes) => {
                let response: CreateUserResponse =
                    codec::decode(&bytes, usize::MAX).expect("a create_user response");
                if intact(m)
                    && let Some(id) = repeat
                {
                    assert_eq!(
                        response.client_id, id,
                        "a repeated create_user got other ids"
                    );
                    return;
                }
                if intact(m) {
                    assert!(
                        self.tokens_uncertain || (!weak && !taken),
                        "create_user accepted unexpectedly"
                    );
                } else {
                    self.tokens_uncertain = true;
                }
                if self.clients.iter().any(|c| c.id == response.client_id) {
                    // CL-AMBIG-2: the server answers a copy of an earlier creation (the same
                    // token, user key and client key) with that creation's ids; a mutated
                    // request can still be such a copy where the mutation missed those
                    // fields. Only an intact request the oracle could predict must not
                    // get an existing id here.
                    assert!(
                        !intact(m) || self.tokens_uncertain,
                        "a QS client id was handed out twice"
                    );
                    return;
                }
                if intact(m) {
                    self.tokens.insert(token % 4, self.clients.len());
                    self.token_user_keys.insert(token % 4, user_key % 8);
                    self.clients.push(Client {
                        id: response.client_id,
                        key: client_key % 8,
                        queue: BTreeSet::new(),
                        queue_known: true,
                        one_time: BTreeSet::new(),
                        last_resort: None,
                        served: BTreeSet::new(),
                        last_resort_served: Some(0),
                    });
                }
            }
            Err(e) if intact(m) && !self.tokens_uncertain => {
                assert!(weak || taken, "create_user refused unexpectedly: {e}");
                assert!(repeat.is_none(), "a repeated create_user was refused: {e}");
                if !weak {
                    assert_eq!(e.code, ErrorCode::DuplicateFriendshipToken);
                }
            }
            Err(_) => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        client: u8,
        key_n: u8,
        count: u8,
        last_resort: u8,
        target: QueueTarget,
        skew: i16,
        m: &Mutation,
    ) {
        let Some(c) = self.client(client) else {
            return;
        };
        let (client_id, client_key) = (c.id, c.key);
        let qs_key = self.h.server.queue_config_key.public.clone();
        let count = usize::from(count % 5);
        let last_resort = usize::from(last_resort % 5);
        let mut add_packages = Vec::new();
        let mut refs = Vec::new();
        for n in 0..count {
            // Only the first package gets the broken target, so the rest stay valid.
            let target = if n == 0 {
                target
            } else {
                QueueTarget::ThisClient
            };
            let extension = match target {
                QueueTarget::ThisClient => Some(
                    codec::encode(&mls::seal_queue_config(&qs_key, DOMAIN, client_id))
                        .expect("sealed"),
                ),
                QueueTarget::AnotherClient => Some(
                    codec::encode(&mls::seal_queue_config(&qs_key, DOMAIN, [0xee; 16]))
                        .expect("sealed"),
                ),
                QueueTarget::AnotherDomain => Some(
                    codec::encode(&mls::seal_queue_config(&qs_key, "other.test", client_id))
                        .expect("sealed"),
                ),
                QueueTarget::Garbage => Some(vec![0xff; 7]),
                QueueTarget::Missing => None,
            };
            let (kp, _) = mls::key_package(&self.provider, extension, n == last_resort);
            let bytes = mls::encoded(&kp);
            refs.push((bytes.clone(), n == last_resort));
            add_packages.push(AddPackage {
                key_package: VLBytes::new(bytes),
                encrypted_client_info: VLBytes::new(vec![n as u8; 16]),
            });
        }
        let now = now();
        let timestamp = now.saturating_add_signed(i64::from(skew) * 4);
        let signing_key = key(key_n % 8);
        let result = self.h.send(
            "qs",
            qs::PUBLISH_KEY_PACKAGES,
            &PublishKeyPackagesRequest {
                timestamp,
                add_packages,
            },
            &Signer::QsClient {
                id: client_id,
                key: &signing_key,
            },
            m,
        );
        let c = self
            .clients
            .iter_mut()
            .find(|c| c.id == client_id)
            .expect("known client");
        if !intact(m) {
            if result.is_ok() {
                c.one_time.clear();
                c.last_resort = None;
                c.served.clear();
                c.last_resort_served = None;
            }
            return;
        }
        let expect_ok = key_n % 8 == client_key
            && timestamp.abs_diff(now) <= MAX_CLOCK_SKEW
            && count > 0
            && last_resort < count
            && (matches!(target, QueueTarget::ThisClient));
        match result {
            Ok(_) => {
                assert!(expect_ok, "publish accepted unexpectedly");
                c.one_time = refs.iter().filter(|r| !r.1).map(|r| r.0.clone()).collect();
                c.last_resort = refs.iter().find(|r| r.1).map(|r| r.0.clone());
            }
            Err(e) => assert!(!expect_ok, "publish refused unexpectedly: {e}"),
        }
    }

    fn fetch(&mut self, token: u8, m: &Mutation) {
        let result = self.h.send(
            "qs",
            qs::FETCH_KEY_PACKAGES,
            &FetchKeyPackagesRequest {
                friendship_token: self.token(token),
            },
            &Signer::Anonymous,
            m,
        );
        let owner = self.tokens.get(&(token % 4)).copied();
        match result {
            Ok(bytes) => {
                let response: FetchKeyPackagesResponse =
                    codec::decode(&bytes, usize::MAX).expect("a fetch response");
                // One client per user here: one package.
                assert_eq!(response.add_packages.len(), 1);
                let Some(c) = owner.and_then(|i| self.clients.get_mut(i)) else {
                    return;
                };
                let kp = response.add_packages[0].key_package.as_slice().to_vec();
                if c.last_resort.as_ref() == Some(&kp) {
                    assert!(
                        c.one_time.is_empty(),
                        "the last-resort key package was served while the pool was not empty"
                    );
                    c.last_resort_served = c.last_resort_served.map(|n| n + 1);
                } else if c.last_resort.is_some() || !c.one_time.is_empty() {
                    assert!(
                        c.served.insert(kp.clone()),
                        "a key package was served twice"
                    );
                    assert!(c.one_time.remove(&kp), "an unknown key package was served");
                }
            }
            Err(e) if intact(m) => {
                let has = owner
                    .and_then(|i| self.clients.get(i))
                    .is_some_and(|c| !c.one_time.is_empty() || c.last_resort.is_some());
                assert!(!has, "no key package although one is stored: {e}");
            }
            Err(_) => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dequeue(&mut self, client: u8, key_n: u8, start: u8, max: u16, skew: i16, m: &Mutation) {
        let Some(c) = self.client(client) else {
            return;
        };
        let (client_id, client_key) = (c.id, c.key);
        let now = now();
        let timestamp = now.saturating_add_signed(i64::from(skew) * 4);
        let start = u64::from(start % 8);
        let signing_key = key(key_n % 8);
        let result = self.h.send(
            "qs",
            qs::DEQUEUE,
            &DequeueRequest {
                timestamp,
                sequence_number_start: start,
                max,
            },
            &Signer::QsClient {
                id: client_id,
                key: &signing_key,
            },
            m,
        );
        let max_dequeue = self.h.server.limits.max_dequeue;
        let c = self
            .clients
            .iter_mut()
            .find(|c| c.id == client_id)
            .expect("known client");
        match result {
            Ok(bytes) => {
                let response: DequeueResponse =
                    codec::decode(&bytes, usize::MAX).expect("a dequeue response");
                if !intact(m) {
                    c.queue_known = false;
                    return;
                }
                if !c.queue_known {
                    return;
                }
                c.queue.retain(|s| *s >= start);
                let expected: Vec<u64> = c
                    .queue
                    .iter()
                    .copied()
                    .take(usize::from(max).min(max_dequeue as usize))
                    .collect();
                let got: Vec<u64> = response
                    .messages
                    .iter()
                    .map(|m| m.sequence_number)
                    .collect();
                assert_eq!(
                    got, expected,
                    "dequeue returned other messages than enqueued"
                );
                assert_eq!(
                    response.remaining,
                    (c.queue.len() - expected.len()) as u64,
                    "wrong remaining count"
                );
            }
            Err(e) if intact(m) => {
                let expect_ok =
                    key_n % 8 == client_key && timestamp.abs_diff(now) <= MAX_CLOCK_SKEW;
                assert!(!expect_ok, "dequeue refused unexpectedly: {e}");
            }
            Err(_) => {}
        }
    }

    fn status(&mut self, client: u8, key_n: u8, m: &Mutation) {
        let Some(c) = self.client(client) else {
            return;
        };
        let signing_key = key(key_n % 8);
        let result = self.h.send(
            "qs",
            qs::KEY_PACKAGE_STATUS,
            &KeyPackageStatusRequest { timestamp: now() },
            &Signer::QsClient {
                id: c.id,
                key: &signing_key,
            },
            m,
        );
        match result {
            Ok(bytes) => {
                let status: KeyPackageStatusResponse =
                    codec::decode(&bytes, usize::MAX).expect("a status response");
                if !intact(m) {
                    return;
                }
                assert_eq!(key_n % 8, c.key, "status answered to another key");
                if let Some(served) = c.last_resort_served {
                    assert_eq!(status.one_time_remaining, c.one_time.len() as u64);
                    assert_eq!(status.has_last_resort, u8::from(c.last_resort.is_some()));
                    assert_eq!(status.last_resort_served, served, "last-resort count");
                }
            }
            Err(e) if intact(m) => {
                assert_ne!(key_n % 8, c.key, "status refused to its owner: {e}");
                assert_eq!(e.code, ErrorCode::BadSignature);
            }
            Err(_) => {}
        }
    }

    // Requirement: QS-ENQ-1 (only the named record gets the entry; a config that does not
    // open, or names a missing record, is undeliverable, not retried and not delivered).
    fn enqueue(&mut self, entries: &[(u8, QueueTarget, Vec<u8>)]) {
        let qs_key = self.h.server.queue_config_key.public.clone();
        let mut outbox = Vec::new();
        let mut targets = Vec::new();
        for (client, target, payload) in entries.iter().take(8) {
            let client_id = self.client(*client).map_or([0xab; 16], |c| c.id);
            let config = match target {
                QueueTarget::ThisClient => {
                    codec::encode(&mls::seal_queue_config(&qs_key, DOMAIN, client_id))
                        .expect("sealed")
                }
                QueueTarget::AnotherClient => {
                    codec::encode(&mls::seal_queue_config(&qs_key, DOMAIN, [0xee; 16]))
                        .expect("sealed")
                }
                QueueTarget::AnotherDomain => {
                    codec::encode(&mls::seal_queue_config(&qs_key, "other.test", client_id))
                        .expect("sealed")
                }
                QueueTarget::Garbage | QueueTarget::Missing => payload.clone(),
            };
            self.enqueues += 1;
            let mut dedup = [0u8; 16];
            dedup.copy_from_slice(
                &crypto::sha256(format!("{} entry {}", self.ns, self.enqueues).as_bytes())[..16],
            );
            outbox.push(OutboxEntry {
                destination: DOMAIN.into(),
                queue_config: config,
                payload: payload.clone(),
                dedup,
                notify: true,
            });
            targets.push(
                matches!(target, QueueTarget::ThisClient)
                    .then(|| self.client(*client).map(|c| c.id))
                    .flatten(),
            );
        }
        let outcomes = self
            .h
            .runtime
            .block_on(enqueue_local(&self.h.server, &outbox))
            .expect("enqueue_local: storage works");
        assert_eq!(outcomes.len(), outbox.len());
        for (outcome, target) in outcomes.into_iter().zip(targets) {
            match (outcome, target) {
                (EnqueueOutcome::Delivered(seq), Some(id)) => {
                    let c = self
                        .clients
                        .iter_mut()
                        .find(|c| c.id == id)
                        .expect("client");
                    assert!(c.queue.insert(seq), "a sequence number was assigned twice");
                    assert!(
                        c.queue.iter().all(|s| *s <= seq),
                        "sequence numbers went backwards"
                    );
                }
                (EnqueueOutcome::Delivered(_), None) => {
                    panic!("an entry not sealed to a known client was delivered")
                }
                (EnqueueOutcome::Undeliverable(_), Some(_)) => {
                    panic!("an entry sealed to a known client was not delivered")
                }
                (EnqueueOutcome::Duplicate, _) => panic!("a fresh entry was taken as a duplicate"),
                (EnqueueOutcome::Undeliverable(_), None) => {}
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    Harness::with(|h| {
        let mut run = Run {
            ns: h.namespace(),
            h,
            provider: Provider::default(),
            clients: Vec::new(),
            tokens: BTreeMap::new(),
            token_user_keys: BTreeMap::new(),
            tokens_uncertain: false,
            enqueues: 0,
        };
        for op in ops.iter().take(12) {
            match op {
                Op::CreateUser {
                    user_key,
                    client_key,
                    token,
                    weak_key,
                    mutation,
                } => run.create_user(*user_key, *client_key, *token, *weak_key, mutation),
                Op::PublishKeyPackages {
                    client,
                    key,
                    count,
                    last_resort,
                    target,
                    skew,
                    mutation,
                } => run.publish(
                    *client,
                    *key,
                    *count,
                    *last_resort,
                    *target,
                    *skew,
                    mutation,
                ),
                Op::FetchKeyPackages { token, mutation } => run.fetch(*token, mutation),
                Op::KeyPackageStatus {
                    client,
                    key,
                    mutation,
                } => run.status(*client, *key, mutation),
                Op::Dequeue {
                    client,
                    key,
                    start,
                    max,
                    skew,
                    mutation,
                } => run.dequeue(*client, *key, *start, *max, *skew, mutation),
                Op::Enqueue { entries } => run.enqueue(entries),
                Op::QueueConfigKey { mutation } => {
                    let result = run.h.send(
                        "qs",
                        qs::QUEUE_CONFIG_KEY,
                        &Empty {},
                        &Signer::Anonymous,
                        mutation,
                    );
                    if intact(mutation) {
                        let response: QueueConfigKeyResponse =
                            codec::decode(&result.expect("queue_config_key"), usize::MAX)
                                .expect("response");
                        assert_eq!(
                            response.public_key.as_slice(),
                            run.h.server.queue_config_key.public.as_slice()
                        );
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
                    let _ = run.h.call("qs", operation, &body);
                }
            }
        }
    });
});
