//! Generate the committed seed corpus (`fuzz/corpus/<target>/`): valid encodings of every
//! type each decoder target reads, real certificates and CSRs, real DS group states, and a
//! few random inputs for the round-trip and stateful targets (whose inputs are
//! `Arbitrary` byte streams, not encodings).
//!
//!   cd fuzz && CARGO_TARGET_DIR=../target cargo run --example gen_corpus
//!
//! (Reusing the main workspace's target directory reuses its compiled dependencies.)
//! The seeds are small: a few KiB per target.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use tls_codec::{Serialize, VLBytes};

use phoenix_fuzz::ds_fixture::DsFixture;
use phoenix_fuzz::harness::{DOMAIN, Harness, NOW, fixed_ca, key};
use phoenix_fuzz::mls::{self, Provider};
use phoenix_server::ds::group_state;
use phoenix_server::store::DsStore;
use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::crypto::{self, SymmetricKey, hpke_info};
use phoenix_types::ids::{ClientId, Domain, Fid};
use phoenix_types::messages::as_::*;
use phoenix_types::messages::client::*;
use phoenix_types::messages::ds::*;
use phoenix_types::messages::federation::{FederatedEnqueue, FederatedEnqueueTbs};
use phoenix_types::messages::qs::*;
use phoenix_types::messages::*;

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// A seed for a `dispatch` target: the selector byte, then the encoding.
    fn select<T: Serialize>(&self, target: &str, selector: u8, name: &str, value: &T) {
        let mut bytes = vec![selector];
        bytes.extend(value.tls_serialize_detached().unwrap());
        self.put(target, name, &bytes);
    }

    fn random(&self, target: &str, sizes: &[usize]) {
        for size in sizes {
            let mut bytes = vec![0u8; *size];
            OsRng.fill_bytes(&mut bytes);
            self.put(target, &format!("random-{size}"), &bytes);
        }
    }
}

fn b(bytes: &[u8]) -> VLBytes {
    VLBytes::new(bytes.to_vec())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let c = Corpus { root };

    // Real certificates: the fixed CA of the certificate target and an ID-Cert it issued.
    let ca = fixed_ca();
    let fid = Fid::parse(&format!("alice@{DOMAIN}")).unwrap();
    let client_id = ClientId::parse("laptop").unwrap();
    let csr = certs::create_csr(&fid, &client_id, &key(1)).unwrap();
    let verified = certs::verify_csr(&csr).unwrap();
    let cert = certs::issue_client_certificate(
        &verified,
        &key(255),
        ca,
        &[2; 16],
        NOW - 60,
        NOW + 30 * 24 * 3600,
    )
    .unwrap();
    c.put("csr", "alice", &csr);
    let other_csr = certs::create_csr(
        &Fid::parse("bob.b+x@sub.example.org").unwrap(),
        &ClientId::parse("A-b_9").unwrap(),
        &key(2),
    )
    .unwrap();
    c.put("csr", "bob", &other_csr);
    c.put("certificate", "ca", &ca.der);
    c.put("certificate", "alice", &cert);

    let hpke = crypto::HpkeKeyPair::generate(&mut OsRng).unwrap();
    let ciphertext = crypto::hpke_seal(
        &hpke.public,
        hpke_info::CONNECTION_ESTABLISHMENT,
        b"",
        b"hello",
    )
    .unwrap();
    let sealed = mls::seal_queue_config(&hpke.public, DOMAIN, [7; 16]);
    let payload = ConnectionPackagePayload {
        fid: fid.to_string(),
        client_id: client_id.to_string(),
        encryption_key: b(&hpke.public),
        not_after: NOW + 3600,
        last_resort: 1,
    };
    let payload_bytes = codec::encode(&payload).unwrap();
    let package = ConnectionPackage {
        signature: b(&crypto::sign(
            &key(0),
            crypto::label::CONNECTION_PACKAGE,
            &payload_bytes,
        )),
        payload: b(&payload_bytes),
    };

    // decode_envelope: one envelope per kind of authentication.
    for (name, auth) in [
        ("none", Auth::None),
        (
            "as-client",
            Auth::AsClient(AsClientAuth {
                fid: fid.to_string(),
                client_id: client_id.to_string(),
                signature: b(&[1; 64]),
            }),
        ),
        (
            "qs-user",
            Auth::QsUser(QsAuth {
                id: [3; 16],
                signature: b(&[2; 64]),
            }),
        ),
        (
            "qs-client",
            Auth::QsClient(QsAuth {
                id: [4; 16],
                signature: b(&[3; 64]),
            }),
        ),
        (
            "ds-leaf",
            Auth::DsLeaf(DsLeafAuth {
                leaf_index: 1,
                signature: b(&[4; 64]),
            }),
        ),
    ] {
        let envelope = RequestEnvelope {
            version: phoenix_types::PROTOCOL_VERSION,
            payload: b(&codec::encode(&DequeueRequest {
                timestamp: NOW,
                sequence_number_start: 3,
                max: 10,
            })
            .unwrap()),
            auth,
        };
        c.put("decode_envelope", name, &codec::encode(&envelope).unwrap());
    }

    // decode_as: the selector is the index in the target's table.
    let t = "decode_as";
    c.select(t, 0, "register", &RegisterRequest { csr: b(&csr) });
    c.select(
        t,
        1,
        "register-response",
        &RegisterResponse {
            client_certificate: b(&cert),
            ca_certificate: b(&ca.der),
        },
    );
    c.select(t, 2, "package-payload", &payload);
    c.select(t, 3, "package", &package);
    c.select(
        t,
        4,
        "publish",
        &PublishConnectionPackagesRequest {
            timestamp: NOW,
            packages: vec![package.clone(), package.clone()],
        },
    );
    c.select(
        t,
        5,
        "fetch",
        &FetchConnectionPackageRequest {
            fid: fid.to_string(),
        },
    );
    c.select(
        t,
        6,
        "fetch-response",
        &FetchConnectionPackageResponse {
            package: package.clone(),
            client_certificate: b(&cert),
        },
    );
    c.select(
        t,
        7,
        "enqueue",
        &EnqueueConnectionRequest {
            fid: fid.to_string(),
            client_id: client_id.to_string(),
            ciphertext: ciphertext.clone(),
        },
    );
    c.select(
        t,
        8,
        "certificates",
        &ClientCertificatesRequest {
            fid: fid.to_string(),
        },
    );
    c.select(
        t,
        9,
        "certificates-response",
        &ClientCertificatesResponse {
            certificates: vec![b(&cert), b(&cert)],
        },
    );
    c.select(
        t,
        10,
        "renew",
        &RenewCertificateRequest {
            timestamp: NOW,
            csr: b(&csr),
        },
    );
    c.select(
        t,
        11,
        "server-certificate",
        &ServerCertificateResponse {
            ca_certificate: b(&ca.der),
            history: vec![b(&ca.der)],
        },
    );
    let dequeue = DequeueRequest {
        timestamp: NOW,
        sequence_number_start: 0,
        max: 100,
    };
    let dequeue_response = DequeueResponse {
        messages: vec![
            QueueMessage {
                sequence_number: 4,
                payload: b(&[1, 2, 3]),
            },
            QueueMessage {
                sequence_number: 5,
                payload: b(&ciphertext.ciphertext.as_slice()[..8]),
            },
        ],
        remaining: 7,
    };
    c.select(t, 12, "dequeue", &dequeue);
    c.select(t, 13, "dequeue-response", &dequeue_response);
    // Real VOPRF issuance under the fuzz target's fixed key (decode_as.rs).
    let token_key = phoenix_types::tokens::TokenKey::from_private(&[7u8; 32]).unwrap();
    let pending: Vec<_> = (0..2)
        .map(|_| phoenix_types::tokens::blind(&mut rand_core::OsRng).unwrap())
        .collect();
    let blinded: Vec<&[u8]> = pending.iter().map(|p| p.blinded()).collect();
    let (evaluated, proof) = token_key.issue(&mut rand_core::OsRng, &blinded).unwrap();
    c.select(
        t,
        15,
        "issue-tokens",
        &IssueGroupTokensRequest {
            timestamp: NOW,
            blinded: blinded.iter().map(|x| b(x)).collect(),
        },
    );
    c.select(
        t,
        16,
        "issued-tokens",
        &IssueGroupTokensResponse {
            public_key: b(token_key.public_key()),
            evaluated: evaluated.iter().map(|x| b(x)).collect(),
            proof: b(&proof),
        },
    );

    // decode_qs
    let t = "decode_qs";
    let provider = Provider::default();
    let (kp, _) = mls::key_package(&provider, Some(codec::encode(&sealed).unwrap()), true);
    let add_package = AddPackage {
        key_package: b(&mls::encoded(&kp)),
        encrypted_client_info: b(&[9; 40]),
    };
    c.select(
        t,
        0,
        "queue-config-key",
        &QueueConfigKeyResponse {
            public_key: b(&hpke.public),
        },
    );
    c.select(
        t,
        1,
        "create-user",
        &CreateUserRequest {
            user_auth_key: b(&key(3).verifying_key().to_bytes()),
            friendship_token: [5; 32],
            client_auth_key: b(&key(4).verifying_key().to_bytes()),
            queue_key: b(&[9; 32]),
            queue_ratchet_secret: [7; 32],
        },
    );
    c.select(
        t,
        2,
        "create-user-response",
        &CreateUserResponse {
            user_id: [1; 16],
            client_id: [2; 16],
        },
    );
    c.select(t, 3, "queue-config", &QueueConfig { client_id: [7; 16] });
    c.select(t, 4, "add-package", &add_package);
    c.select(
        t,
        5,
        "publish",
        &PublishKeyPackagesRequest {
            timestamp: NOW,
            add_packages: vec![add_package.clone()],
        },
    );
    c.select(
        t,
        6,
        "fetch",
        &FetchKeyPackagesRequest {
            friendship_token: [5; 32],
        },
    );
    c.select(
        t,
        7,
        "fetch-response",
        &FetchKeyPackagesResponse {
            add_packages: vec![add_package.clone()],
        },
    );
    c.select(t, 8, "dequeue", &dequeue);
    c.select(t, 9, "dequeue-response", &dequeue_response);
    c.select(t, 10, "queue-message", &dequeue_response.messages[0]);
    c.select(t, 11, "status", &KeyPackageStatusRequest { timestamp: NOW });
    c.select(
        t,
        12,
        "status-response",
        &KeyPackageStatusResponse {
            one_time_remaining: 3,
            has_last_resort: 1,
            last_resort_served: 2,
        },
    );

    // decode_sealed_queue_config: one sealed to the fuzz server's key would need the
    // server; these exercise decoding and a failing open.
    c.put(
        "decode_sealed_queue_config",
        "sealed",
        &codec::encode(&sealed).unwrap(),
    );
    c.put(
        "decode_sealed_queue_config",
        "queue-config",
        &codec::encode(&QueueConfig { client_id: [7; 16] }).unwrap(),
    );

    // The DS: real requests and group states from the DS target's fixture.
    let (fixture_requests, group_states) = Harness::with(|h| {
        h.ds_fixture();
        let h = &*h;
        let fixture: &DsFixture = h.ds.as_deref().unwrap();
        let requests: Vec<(String, Vec<u8>)> = fixture
            .steps
            .iter()
            .map(|s| (s.name.replace([' ', '\''], "-"), s.request.payload(NOW)))
            .collect();
        let mut states = Vec::new();
        for g in &fixture.groups {
            let stored = h
                .runtime
                .block_on(h.server.store.group(&g.group_id))
                .unwrap()
                .unwrap();
            let (state, _epoch) = group_state::open(
                &SymmetricKey(g.ear_key),
                &g.group_id,
                stored.version,
                &stored.ciphertext,
            )
            .unwrap();
            states.push(state);
        }
        (requests, states)
    });
    let t = "decode_ds";
    let member = MemberInfo {
        queue_config: sealed.clone(),
        encrypted_credential: b(&[3; 48]),
    };
    let gid = phoenix_types::ids::QualifiedGroupId::new([1; 16], Domain::parse(DOMAIN).unwrap())
        .to_bytes();
    c.select(
        t,
        0,
        "group-id",
        &RequestGroupIdResponse { group_id: b(&gid) },
    );
    c.select(t, 1, "member-info", &member);
    c.select(
        t,
        11,
        "request-group-id",
        &RequestGroupIdRequest {
            token: GroupToken {
                key_id: b(&token_key.key_id()),
                input: b(&[5; 32]),
                output: b(&[6; 64]),
            },
        },
    );
    c.select(
        t,
        2,
        "leaf-credential",
        &LeafCredential {
            leaf_index: 2,
            encrypted_credential: b(&[4; 48]),
        },
    );
    c.select(
        t,
        4,
        "external-commit-info",
        &ExternalCommitInfoRequest {
            group_id: b(&gid),
            ear_key: [6; 32],
        },
    );
    for (name, payload) in &fixture_requests {
        // The selector of the request's type in the table.
        let selector = if name.contains("adds") {
            8
        } else if name.contains("message") {
            10
        } else if name.contains("joins") {
            6
        } else {
            9
        };
        let mut bytes = vec![selector];
        bytes.extend_from_slice(payload);
        c.put(t, name, &bytes);
    }

    // decode_queue_payload
    let t = "decode_queue_payload";
    let message = GroupMessage {
        group_id: b(&gid),
        message: b(&[1; 40]),
        new_credentials: vec![LeafCredential {
            leaf_index: 1,
            encrypted_credential: b(&[2; 40]),
        }],
    };
    let welcome = WelcomeBundle {
        group_id: b(&gid),
        welcome: b(&[3; 60]),
        ratchet_tree: b(&[4; 60]),
        credentials: vec![LeafCredential {
            leaf_index: 0,
            encrypted_credential: b(&[5; 40]),
        }],
        welcome_info: b(&[6; 40]),
    };
    c.select(
        t,
        0,
        "group-message",
        &QueuePayload::GroupMessage(message.clone()),
    );
    c.select(t, 0, "welcome", &QueuePayload::Welcome(welcome.clone()));
    c.select(t, 1, "group-message-bare", &message);
    c.select(t, 2, "welcome-bare", &welcome);
    c.select(t, 3, "queue-message", &dequeue_response.messages[1]);

    // decode_client
    let t = "decode_client";
    let friendship = FriendshipPackage {
        friendship_token: [1; 32],
        friendship_key: [2; 32],
        qs_domain: DOMAIN.into(),
    };
    let tbs = ConnectionEstablishmentTbs {
        sender_certificate: b(&cert),
        recipient_fid: "bob@fuzz.test".into(),
        recipient_client_id: "phone".into(),
        timestamp: NOW,
        connection_group_id: b(&gid),
        ear_key: [3; 32],
        credential_key: [4; 32],
        friendship: friendship.clone(),
    };
    let tbs_bytes = codec::encode(&tbs).unwrap();
    c.select(
        t,
        0,
        "credential-info",
        &ClientCredentialInfo {
            client_certificate: b(&cert),
            leaf_signature_key: b(&key(5).verifying_key().to_bytes()),
            binding_signature: b(&[7; 64]),
        },
    );
    c.select(t, 1, "friendship", &friendship);
    c.select(t, 2, "establishment-tbs", &tbs);
    c.select(
        t,
        3,
        "establishment",
        &ConnectionEstablishmentPackage {
            signature: b(&crypto::sign(
                &key(1),
                crypto::label::CONNECTION_ESTABLISHMENT,
                &tbs_bytes,
            )),
            tbs: b(&tbs_bytes),
        },
    );
    let wai = WelcomeAttributionTbs {
        sender_certificate: b(&cert),
        group_id: b(&gid),
        group_name: "team".into(),
        ear_key: [8; 32],
        credential_key: [9; 32],
        timestamp: NOW,
    };
    c.select(t, 4, "welcome-attribution-tbs", &wai);
    c.select(
        t,
        5,
        "welcome-attribution",
        &WelcomeAttributionInfo {
            tbs: b(&codec::encode(&wai).unwrap()),
            signature: b(&[1; 64]),
        },
    );
    c.select(t, 6, "text", &ApplicationPayload::Text("hello 👋".into()));
    c.select(
        t,
        6,
        "friendship-payload",
        &ApplicationPayload::Friendship(friendship),
    );

    // decode_federation
    let fed_tbs = FederatedEnqueueTbs {
        sender: "b.test".into(),
        destination: DOMAIN.into(),
        message_id: [1; 16],
        timestamp: NOW,
        queue_config: b(&codec::encode(&sealed).unwrap()),
        payload: b(&codec::encode(&QueuePayload::GroupMessage(message)).unwrap()),
        notification: phoenix_types::messages::Notification::Send,
    };
    let fed_tbs_bytes = codec::encode(&fed_tbs).unwrap();
    c.select(
        "decode_federation",
        0,
        "enqueue",
        &FederatedEnqueue {
            signature: b(&crypto::sign(&key(6), "federation/enqueue", &fed_tbs_bytes)),
            tbs: b(&fed_tbs_bytes),
        },
    );
    c.select("decode_federation", 1, "tbs", &fed_tbs);

    // group_state: real plaintext states, and one sealed the way the target opens it.
    for (n, state) in group_states.iter().enumerate() {
        c.put(
            "group_state",
            &format!("state-{n}"),
            &codec::encode(state).unwrap(),
        );
    }
    // Sealed as version 1 at epoch 0, the version the target opens it as.
    let sealed_state = group_state::seal(
        &SymmetricKey([7; 32]),
        b"0123456789abcdeffuzz.test",
        1,
        0,
        &group_states[0],
    )
    .unwrap();
    c.put("group_state", "sealed", &sealed_state);

    // Round-trip and stateful targets read `Arbitrary` byte streams: random seeds.
    for target in [
        "roundtrip_as",
        "roundtrip_qs",
        "roundtrip_ds",
        "roundtrip_client",
        "roundtrip_envelope",
    ] {
        c.random(target, &[16, 64, 256, 1024]);
    }
    for target in ["stateful_as", "stateful_qs", "stateful_ds"] {
        c.random(target, &[32, 128, 512, 2048]);
    }
    println!("corpus written to {}", c.root.display());
}
