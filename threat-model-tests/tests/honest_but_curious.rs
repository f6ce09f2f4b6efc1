//! Honest-but-curious operator: an operator who reads everything each request handler has
//! in memory, but does not interfere (phoenix.md, Threat model: the "active observer",
//! renamed "honest-but-curious"; "actions use per-group pseudonyms, so the observer sees
//! metadata but cannot tie it to real identities").
//!
//! The server's test-only observation tap (`phoenix-server`'s `observe` feature, started at
//! run time on the in-process servers only) records, per request, the identifiers its
//! handler saw. After a realistic workload on two homeservers (`a.test` on the backend
//! under test, `b.test` on SQLite; users registering, connecting through connection
//! packages and direct queues, key packages published and fetched, groups created on both
//! servers, members added and removed, path updates, messages sent, fanned out locally and
//! across servers, and dequeued), the tests assert over every observation:
//!
//! (a) no single request shows its handler a real identity (FID, AS client id, client
//!     certificate or its serial, connection package, session token) together with a QS
//!     pseudonym (QS user or client id, QS auth key, friendship-token hash, key package)
//!     or a per-group pseudonym (group id, leaf key, leaf credential, sealed queue config,
//!     encrypted credential). Since every link an operator can draw from one request is
//!     between values of the same side, no chain of requests links an identity to a
//!     pseudonym either, except through the source address (c).
//!
//! (b) the DS sees exactly this, and nothing else: the group id; members' leaf indexes,
//!     leaf signature keys and the random pseudonyms in their basic credentials; their
//!     sealed queue configs (HPKE ciphertext to the QS key, opaque to the DS handler) and
//!     encrypted credentials (AEAD ciphertext under the group's credential key, opaque);
//!     and, in `add_users` only, the joiners' key packages (MLS Add proposals carry them,
//!     and the protocol has the DS check them: phoenix.md, Spec-QS, "KeyPackageBatch ...
//!     The DS verifies it"), which the QS saw when it handed them out. No FID, no
//!     certificate, no AS client id, no QS user or client id, no friendship token. Every
//!     per-group pseudonym the DS sees belongs to one group only: the same client's leaf
//!     keys, credentials, sealed queue configs and encrypted credentials in its different
//!     groups are different values, so the DS cannot link a client's groups (its one known
//!     limit, a reused last-resort key package, is shown by
//!     `last_resort_reuse_is_what_links_two_groups`).
//!
//! (c) the source IP address is the one thing every handler sees: it is recorded for every
//!     request, and it is the only value seen by AS, QS and DS handlers alike. Linking
//!     requests by address (or by timing) is traffic analysis, which the protocol leaves
//!     out of scope (phoenix.md, Threat model, "Explicitly out of scope or not mitigated":
//!     "Traffic analysis (the docs suggest combining with onion routing or mixnets ...)"):
//!     a client that wants its AS identity and its pseudonyms unlinkable for the operator
//!     has to reach the services over different connections, e.g. through Tor.
//!
//! What an operator who runs the QS and the DS together does learn, and the tests state:
//! the QS step that delivers fan-out messages opens sealed queue configs (it must, to find
//! the queue) and sees the group id in the queue payload, so it links a QS pseudonym to the
//! groups it receives messages for (docs/model.md, finding 2); the DS's `add_users` sees the
//! key packages the QS handed out. Neither reaches an FID.
//!
//! The tap itself is test-only and inert unless a test starts it:
//! `the_tap_records_nothing_unless_started`.
//!
//! Requirement: ADV-OP-1, ADV-OP-2, ADV-OP-3, DS-PRIV-1

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use phoenix_client::api::{Api, Signer};
use phoenix_server::observe::{Observation, Observed};
use phoenix_threat_model_tests::{Backend, Homeserver, User, connect, listener};
use phoenix_types::crypto::{SymmetricKey, sha256};
use phoenix_types::messages::qs;

/// What an identifier is, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Where a request came from.
    Network,
    /// Names a user or client for what it is (the AS's knowledge).
    Identity,
    /// A QS pseudonym.
    QsPseudonym,
    /// A per-group pseudonym (the DS's knowledge).
    GroupPseudonym,
    /// A position in a group's tree: meaningful only together with the group.
    Position,
}

/// Every variant, classified here and not in the server (exhaustive: a new variant must be
/// classified before this compiles).
fn class(o: &Observed) -> Class {
    match o {
        Observed::SourceIp(_) | Observed::PeerDomain(_) => Class::Network,
        Observed::Fid(_)
        | Observed::AsClientId(_)
        | Observed::ClientCertificate(_)
        | Observed::CertificateSerial(_)
        | Observed::ConnectionPackage(_)
        | Observed::SessionToken(_) => Class::Identity,
        Observed::QsUserId(_)
        | Observed::QsClientId(_)
        | Observed::QsAuthKey(_)
        | Observed::FriendshipTokenHash(_)
        | Observed::KeyPackage(_) => Class::QsPseudonym,
        Observed::GroupId(_)
        | Observed::LeafKey(_)
        | Observed::LeafCredential(_)
        | Observed::SealedQueueConfig(_)
        | Observed::EncryptedCredential(_) => Class::GroupPseudonym,
        Observed::LeafIndex(_) => Class::Position,
    }
}

/// The variant's name (what kind of value), for reports.
fn kind(o: &Observed) -> &'static str {
    match o {
        Observed::SourceIp(_) => "SourceIp",
        Observed::PeerDomain(_) => "PeerDomain",
        Observed::Fid(_) => "Fid",
        Observed::AsClientId(_) => "AsClientId",
        Observed::ClientCertificate(_) => "ClientCertificate",
        Observed::CertificateSerial(_) => "CertificateSerial",
        Observed::ConnectionPackage(_) => "ConnectionPackage",
        Observed::SessionToken(_) => "SessionToken",
        Observed::QsUserId(_) => "QsUserId",
        Observed::QsClientId(_) => "QsClientId",
        Observed::QsAuthKey(_) => "QsAuthKey",
        Observed::FriendshipTokenHash(_) => "FriendshipTokenHash",
        Observed::KeyPackage(_) => "KeyPackage",
        Observed::GroupId(_) => "GroupId",
        Observed::LeafIndex(_) => "LeafIndex",
        Observed::LeafKey(_) => "LeafKey",
        Observed::LeafCredential(_) => "LeafCredential",
        Observed::SealedQueueConfig(_) => "SealedQueueConfig",
        Observed::EncryptedCredential(_) => "EncryptedCredential",
    }
}

/// One observation with the domain of the server that made it.
#[derive(Debug)]
struct Seen {
    domain: &'static str,
    o: Observation,
}

impl Seen {
    fn op(&self) -> String {
        format!("{}/{}", self.o.service, self.o.operation)
    }

    fn has(&self, c: Class) -> bool {
        self.o.seen.iter().any(|x| class(x) == c)
    }

    fn groups(&self) -> BTreeSet<Vec<u8>> {
        self.o
            .seen
            .iter()
            .filter_map(|x| match x {
                Observed::GroupId(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }

    /// The server's own work (local delivery of fan-out), not a request.
    fn internal(&self) -> bool {
        self.op() == "qs/enqueue"
    }
}

fn collect(servers: &[(&'static str, &Homeserver)]) -> Vec<Seen> {
    servers
        .iter()
        .flat_map(|(domain, server)| {
            server
                .server
                .observations()
                .into_iter()
                .map(move |o| Seen { domain, o })
        })
        .collect()
}

/// Per-group pseudonyms (and key packages) the DS saw in more than one group: value →
/// groups. Empty when the DS cannot link anything across groups.
fn ds_cross_group_links(seen: &[Seen]) -> BTreeMap<Observed, BTreeSet<Vec<u8>>> {
    let mut groups_of: BTreeMap<Observed, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.o.service == "ds") {
        let groups = s.groups();
        for value in &s.o.seen {
            if matches!(class(value), Class::GroupPseudonym | Class::QsPseudonym)
                && !matches!(value, Observed::GroupId(_))
            {
                groups_of
                    .entry(value.clone())
                    .or_default()
                    .extend(groups.iter().cloned());
            }
        }
    }
    groups_of.retain(|_, groups| groups.len() > 1);
    groups_of
}

/// A user's own leaf in each of its groups, as only the user knows it: the leaf signature
/// key and the encrypted credential of the member entry whose credential (decrypted with
/// the group's credential key) is the user's certificate.
async fn own_leaves(user: &User) -> Vec<(String, Vec<u8>, Vec<u8>, [u8; 32])> {
    let local = user.local().await;
    let id = local.identity().await.unwrap().unwrap();
    let mut leaves = Vec::new();
    for group in local.groups().await.unwrap() {
        if !group.active {
            continue;
        }
        for (_, encrypted) in local.members(&group.group_id).await.unwrap() {
            let info = phoenix_client::verify::decrypt_credential(
                &SymmetricKey(group.credential_key),
                &group.group_id,
                &encrypted,
            )
            .unwrap();
            if info.client_certificate.as_slice() == id.certificate.as_slice() {
                leaves.push((
                    group.name.clone(),
                    group.group_id.clone(),
                    info.leaf_signature_key.as_slice().to_vec(),
                    sha256(&encrypted),
                ));
            }
        }
    }
    leaves
}

/// The polyproto routes as a client uses them: discovery, the user's certificates, a key
/// trial answered with the ID-Cert key (a session token), and the end of the session.
async fn polyproto_session(server: &Homeserver, user: &User) {
    use ed25519_dalek::{Signer as _, SigningKey};
    let id = user.local().await.identity().await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    for path in [
        "/.well-known/polyproto-core".to_owned(),
        format!("/.p2/core/v1/idcert/actor/{}", user.fid),
    ] {
        let response = http.get(url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let trial: serde_json::Value = http
        .get(url("/.p2/core/v1/session/auth"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trial = trial["trial"].as_str().unwrap().to_owned();
    let serial = phoenix_types::certs::ParsedCert::parse(&id.certificate)
        .unwrap()
        .serial;
    let signature = SigningKey::from_bytes(&id.signing_key).sign(trial.as_bytes());
    let answer = serde_json::json!({
        "fid": user.fid,
        "serialNumber": phoenix_server::polyproto::decimal(&serial),
        "signature": hex::encode(signature.to_bytes()),
    });
    let response = http
        .post(url("/.p2/core/v1/session/auth"))
        .json(&answer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token: serde_json::Value = response.json().await.unwrap();
    let token = token["token"].as_str().unwrap();
    let response = http
        .delete(url("/.p2/core/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

async fn sync_joined(user: &mut User, group: &str) {
    let g = group.to_owned();
    user.sync_until(move |e| e["kind"] == "joined" && e["group"] == g.as_str())
        .await;
}

async fn sync_text(user: &mut User, text: &str) {
    let t = text.to_owned();
    user.sync_until(move |e| e["text"] == t.as_str()).await;
}

async fn operator_learns_no_identity_with_a_pseudonym(backend: Backend) {
    let (la, lb) = (listener().await, listener().await);
    let resolve = vec![format!("a.test={}", la.1), format!("b.test={}", lb.1)];
    let Some(a) = Homeserver::start("a.test", backend, la, &resolve).await else {
        return;
    };
    let b = Homeserver::start("b.test", Backend::Sqlite, lb, &resolve)
        .await
        .unwrap();
    a.server.start_observing();
    b.server.start_observing();

    // The workload.
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut carol = User::register("carol@a.test", &a.url, &resolve).await;
    let mut dave = User::register("dave@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@b.test", &b.url, &resolve).await;
    connect(&mut alice, &mut carol).await;
    connect(&mut alice, &mut bob).await;
    connect(&mut alice, &mut dave).await;
    connect(&mut carol, &mut dave).await;
    // A foreign client acting on a.test's AS: bob opens a polyproto session there and
    // sends its token with his AS requests (the client's default).
    connect(&mut bob, &mut dave).await;

    alice.client.create_group("team").await.unwrap();
    for fid in ["carol@a.test", "bob@b.test", "dave@a.test"] {
        alice.client.invite("team", fid).await.unwrap();
    }
    sync_joined(&mut carol, "team").await;
    sync_joined(&mut bob, "team").await;
    sync_joined(&mut dave, "team").await;
    alice.client.send("team", "hello team").await.unwrap();
    carol.client.send("team", "hi from carol").await.unwrap();
    bob.client.send("team", "hi from bob").await.unwrap();
    sync_text(&mut dave, "hi from bob").await;
    alice.client.remove("team", "dave@a.test").await.unwrap();
    alice.client.update("team").await.unwrap();
    alice.client.send("team", "dave left").await.unwrap();
    sync_text(&mut carol, "dave left").await;
    sync_text(&mut bob, "dave left").await;

    carol.client.create_group("side").await.unwrap();
    carol.client.invite("side", "alice@a.test").await.unwrap();
    carol.client.invite("side", "dave@a.test").await.unwrap();
    sync_joined(&mut alice, "side").await;
    sync_joined(&mut dave, "side").await;
    alice.client.send("side", "psst").await.unwrap();
    sync_text(&mut dave, "psst").await;

    // A group hosted on b.test with a member on a.test: federated fan-out into a.test.
    bob.client.create_group("bside").await.unwrap();
    bob.client.invite("bside", "alice@a.test").await.unwrap();
    sync_joined(&mut alice, "bside").await;
    alice.client.send("bside", "over the border").await.unwrap();
    sync_text(&mut bob, "over the border").await;
    bob.client.send("bside", "and back").await.unwrap();
    sync_text(&mut alice, "and back").await;
    sync_text(&mut carol, "psst").await;

    // Last, as ending the session invalidates the certificate: alice opens a polyproto
    // session on her home server and ends it.
    polyproto_session(&a, &alice).await;

    let seen = collect(&[("a.test", &a), ("b.test", &b)]);

    // Positive controls: the tap saw the workload, every kind of operation of it, and
    // every kind of identifier.
    let ops: BTreeSet<String> = seen.iter().map(Seen::op).collect();
    for op in [
        "as/register",
        "as/publish_connection_packages",
        "as/fetch_connection_package",
        "as/enqueue_connection",
        "as/dequeue_connection",
        "as/issue_group_tokens",
        "qs/create_user",
        "qs/publish_key_packages",
        "qs/fetch_key_packages",
        "qs/dequeue",
        "qs/enqueue",
        "ds/request_group_id",
        "ds/create_group",
        "ds/external_commit_info",
        "ds/join_connection_group",
        "ds/add_users",
        "ds/remove_users",
        "ds/update",
        "ds/send_message",
        "federation/enqueue",
        "polyproto/well-known",
        "polyproto/idcert/actor",
        "polyproto/session/auth",
        "polyproto/session/answer",
        "polyproto/session/delete",
    ] {
        assert!(ops.contains(op), "no observation of {op}: {ops:?}");
    }
    let kinds: BTreeSet<&str> = seen
        .iter()
        .flat_map(|s| s.o.seen.iter().map(kind))
        .collect();
    for k in [
        "SourceIp",
        "PeerDomain",
        "Fid",
        "AsClientId",
        "ClientCertificate",
        "CertificateSerial",
        "ConnectionPackage",
        "SessionToken",
        "QsUserId",
        "QsClientId",
        "QsAuthKey",
        "FriendshipTokenHash",
        "KeyPackage",
        "GroupId",
        "LeafIndex",
        "LeafKey",
        "LeafCredential",
        "SealedQueueConfig",
        "EncryptedCredential",
    ] {
        assert!(kinds.contains(k), "no handler saw a {k}: {kinds:?}");
    }
    let alice_id = alice.local().await.identity().await.unwrap().unwrap();
    assert!(
        seen.iter()
            .any(|s| s.o.seen.contains(&Observed::Fid("alice@a.test".into()))),
        "the AS never saw alice's FID"
    );
    assert!(
        seen.iter().any(|s| s
            .o
            .seen
            .contains(&Observed::QsClientId(alice_id.qs_client_id))),
        "the QS never saw alice's client record"
    );

    // Foreign sessions: bob's token went with his AS requests on a.test, and with nothing
    // that shows a pseudonym.
    let with_session = |s: &&Seen| {
        s.o.seen
            .iter()
            .any(|x| matches!(x, Observed::SessionToken(_)))
    };
    assert!(
        seen.iter()
            .filter(with_session)
            .any(|s| s.domain == "a.test" && s.op() == "as/fetch_connection_package"),
        "bob's AS requests on a.test carried no session"
    );

    // (a) Requirement: ADV-OP-1. No request shows an identity with a pseudonym.
    for s in &seen {
        let mixed =
            s.has(Class::Identity) && (s.has(Class::QsPseudonym) || s.has(Class::GroupPseudonym));
        assert!(
            !mixed,
            "{} {} (request {}) saw a real identity together with a pseudonym: {:?}",
            s.domain,
            s.op(),
            s.o.request,
            s.o.seen
        );
    }

    // (b) Requirement: ADV-OP-2. What the DS sees, precisely.
    let mut ds_kinds = BTreeSet::new();
    for s in seen.iter().filter(|s| s.o.service == "ds") {
        for value in &s.o.seen {
            let allowed = match value {
                Observed::SourceIp(_)
                | Observed::GroupId(_)
                | Observed::LeafIndex(_)
                | Observed::LeafKey(_)
                | Observed::LeafCredential(_)
                | Observed::SealedQueueConfig(_)
                | Observed::EncryptedCredential(_) => true,
                // The joiners' key packages, in the Add proposals the DS validates.
                Observed::KeyPackage(_) => s.o.operation == "add_users",
                _ => false,
            };
            assert!(
                allowed,
                "{} {} (request {}) showed the DS a {}: {:?}",
                s.domain,
                s.op(),
                s.o.request,
                kind(value),
                s.o.seen
            );
            ds_kinds.insert(kind(value));
        }
        assert!(
            s.groups().len() <= 1,
            "a DS request concerned several groups: {:?}",
            s.o.seen
        );
    }
    assert_eq!(
        ds_kinds,
        BTreeSet::from([
            "SourceIp",
            "GroupId",
            "LeafIndex",
            "LeafKey",
            "LeafCredential",
            "SealedQueueConfig",
            "EncryptedCredential",
            "KeyPackage",
        ]),
        "what the DS saw"
    );
    // The key packages the DS saw in add_users are ones a QS handed out (the link the
    // protocol accepts between the QS and the DS view; it reaches no identity by (a)).
    let handed_out: BTreeSet<&Observed> = seen
        .iter()
        .filter(|s| s.op() == "qs/fetch_key_packages")
        .flat_map(|s| s.o.seen.iter())
        .filter(|x| matches!(x, Observed::KeyPackage(_)))
        .collect();
    for s in seen.iter().filter(|s| s.op() == "ds/add_users") {
        for kp in
            s.o.seen
                .iter()
                .filter(|x| matches!(x, Observed::KeyPackage(_)))
        {
            assert!(
                handed_out.contains(kp),
                "the DS saw a key package no QS handed out"
            );
        }
    }

    // (b) Requirement: DS-PRIV-1. Nothing the DS sees of a member links two
    // groups ...
    let links = ds_cross_group_links(&seen);
    assert!(
        links.is_empty(),
        "the DS saw the same pseudonym in several groups: {links:?}"
    );
    // ... and alice, in her six groups (three connection groups, team, side, bside), is
    // six different leaves, each of which the DS of its group saw, in that group only.
    let leaves = own_leaves(&alice).await;
    assert_eq!(leaves.len(), 6, "alice's groups: {leaves:?}");
    let keys: BTreeSet<&Vec<u8>> = leaves.iter().map(|(_, _, key, _)| key).collect();
    let credentials: BTreeSet<&[u8; 32]> = leaves.iter().map(|(_, _, _, c)| c).collect();
    assert_eq!(keys.len(), leaves.len(), "alice reuses a leaf key");
    assert_eq!(credentials.len(), leaves.len(), "alice reuses a credential");
    for (name, group_id, key, credential) in &leaves {
        let ds_groups: BTreeSet<Vec<u8>> = seen
            .iter()
            .filter(|s| s.o.service == "ds")
            .filter(|s| {
                s.o.seen.contains(&Observed::LeafKey(key.clone()))
                    || s.o
                        .seen
                        .contains(&Observed::EncryptedCredential(*credential))
            })
            .flat_map(|s| s.groups())
            .collect();
        assert_eq!(
            ds_groups,
            BTreeSet::from([group_id.clone()]),
            "alice's leaf in {name}"
        );
    }

    // What the QS's delivery step learns: a QS pseudonym with the groups it receives
    // messages for (docs/model.md, finding 2; no FID by (a)). If this changes, update
    // docs/threat-model.md.
    let team = alice.client.group("team").await.unwrap().group_id;
    let carol_id = carol.local().await.identity().await.unwrap().unwrap();
    assert!(
        seen.iter().any(|s| s.internal()
            && s.o
                .seen
                .contains(&Observed::QsClientId(carol_id.qs_client_id))
            && s.o.seen.contains(&Observed::GroupId(team.clone()))),
        "the QS delivery step no longer sees the group of what it delivers"
    );

    // (c) The source address: on every request, and the only value all services saw.
    let loopback = Observed::SourceIp(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for s in &seen {
        let sources: Vec<&Observed> =
            s.o.seen
                .iter()
                .filter(|x| matches!(x, Observed::SourceIp(_)))
                .collect();
        if s.internal() {
            assert!(sources.is_empty(), "{}: {:?}", s.op(), s.o.seen);
        } else {
            assert_eq!(sources, vec![&loopback], "{} {}", s.domain, s.op());
        }
    }
    let values_of = |service: &str| -> BTreeSet<Observed> {
        seen.iter()
            .filter(|s| s.o.service == service && !s.internal())
            .flat_map(|s| s.o.seen.iter().cloned())
            .collect()
    };
    let (as_, qs_, ds_) = (values_of("as"), values_of("qs"), values_of("ds"));
    let everywhere: BTreeSet<Observed> = as_
        .intersection(&qs_)
        .cloned()
        .collect::<BTreeSet<_>>()
        .intersection(&ds_)
        .cloned()
        .collect();
    assert_eq!(everywhere, BTreeSet::from([loopback.clone()]));
    let as_and_qs: BTreeSet<&Observed> = as_.intersection(&qs_).collect();
    let as_and_ds: BTreeSet<&Observed> = as_.intersection(&ds_).collect();
    assert_eq!(as_and_qs, BTreeSet::from([&loopback]), "AS and QS share");
    assert_eq!(as_and_ds, BTreeSet::from([&loopback]), "AS and DS share");
}

/// Fetch `user`'s key packages `n` times with their friendship token, as anyone holding it
/// can (a contact, or whoever learned it), without inviting them anywhere.
async fn drain_key_packages(server: &Homeserver, user: &User, n: u64) {
    let token = user
        .local()
        .await
        .identity()
        .await
        .unwrap()
        .unwrap()
        .friendship_token;
    let api = Api::new(&server.url).unwrap();
    for _ in 0..n {
        let _: qs::FetchKeyPackagesResponse = api
            .call(
                "qs",
                qs::FETCH_KEY_PACKAGES,
                &qs::FetchKeyPackagesRequest {
                    friendship_token: token,
                },
                Signer::Anonymous,
            )
            .await
            .unwrap();
    }
}

/// The one way the DS can link a client's groups (DS-PRIV-1's known limit; docs/model.md,
/// finding 1), and the proof that the cross-group check above can fail: once bob's
/// one-time key packages are drained by someone holding his friendship token, two invites
/// before bob republishes both use his last-resort key package, and the DS sees the same
/// leaf key, leaf credential and sealed queue config in two groups.
async fn last_resort_reuse_is_what_links_two_groups(backend: Backend) {
    let la = listener().await;
    let resolve = vec![format!("a.test={}", la.1)];
    let Some(a) = Homeserver::start("a.test", backend, la, &resolve).await else {
        return;
    };
    a.server.start_observing();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    connect(&mut alice, &mut bob).await;
    alice.client.create_group("one").await.unwrap();
    alice.client.create_group("two").await.unwrap();

    let seen = collect(&[("a.test", &a)]);
    assert!(ds_cross_group_links(&seen).is_empty());

    // Drain bob's one-time packages (the client publishes five and a last-resort one).
    drain_key_packages(&a, &bob, 5).await;
    alice.client.invite("one", "bob@a.test").await.unwrap();
    alice.client.invite("two", "bob@a.test").await.unwrap();

    let seen = collect(&[("a.test", &a)]);
    let links = ds_cross_group_links(&seen);
    let one = alice.client.group("one").await.unwrap().group_id;
    let two = alice.client.group("two").await.unwrap().group_id;
    let linked_kinds: BTreeSet<&str> = links
        .iter()
        .filter(|(_, groups)| **groups == BTreeSet::from([one.clone(), two.clone()]))
        .map(|(value, _)| kind(value))
        .collect();
    assert_eq!(
        linked_kinds,
        BTreeSet::from([
            "KeyPackage",
            "LeafCredential",
            "LeafKey",
            "SealedQueueConfig"
        ]),
        "{links:?}"
    );
    // Still no identity: the link is between pseudonyms.
    for s in &seen {
        assert!(!(s.has(Class::Identity) && s.has(Class::GroupPseudonym)));
    }
    // Both invites work: bob joins both groups with the one last-resort package.
    let mut events = Vec::new();
    for _ in 0..300 {
        events.extend(bob.client.sync().await.unwrap());
        let joined: BTreeSet<&str> = events
            .iter()
            .filter(|e| e["kind"] == "joined")
            .filter_map(|e| e["group"].as_str())
            .collect();
        if joined == BTreeSet::from(["one", "two"]) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("bob did not join both groups: {events:?}");
}

/// What narrows the window of the link above (CL-KP-1): once bob's one-time packages are
/// drained by someone holding his friendship token, bob's next `sync` sees how few are left
/// (`qs/key_package_status`) and publishes a fresh set, so invitations after it use fresh
/// one-time packages again. Before, a client republished only after joining a group: the
/// drained pool stayed empty and every invitation reused the last-resort package.
async fn drained_key_packages_are_published_again_by_the_next_sync(backend: Backend) {
    use phoenix_server::store::QsStore;
    let la = listener().await;
    let resolve = vec![format!("a.test={}", la.1)];
    let Some(a) = Homeserver::start("a.test", backend, la, &resolve).await else {
        return;
    };
    let mut bob = User::register("bob@a.test", &a.url, &resolve).await;
    let bob_qs = bob.qs_client_id().await;
    let one_time_left = || async {
        QsStore::key_package_status(&a.server.store, &bob_qs)
            .await
            .unwrap()
            .unwrap()
            .one_time
    };
    // A sync with a full pool publishes nothing.
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().all(|e| e["kind"] != "key_packages_published"),
        "{events:?}"
    );
    let full = one_time_left().await;
    assert_eq!(full, 5);

    drain_key_packages(&a, &bob, full).await;
    assert_eq!(one_time_left().await, 0);

    // Requirement: CL-KP-1
    let events = bob.client.sync().await.unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "key_packages_published"),
        "{events:?}"
    );
    assert_eq!(one_time_left().await, full);
}

/// The client's opt-in `RemoteSessions::All` sends a foreign client's session token with
/// its QS and DS requests on another server too, and that server's operator can then look
/// up whose pseudonyms and groups they are (docs/identity.md, "What a session tells the
/// remote server"): the tap shows exactly those requests as mixing an identity with a
/// pseudonym, so the check (a) above would catch any request that did so by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_foreign_sessions_are_the_requests_that_link() {
    let (la, lb) = (listener().await, listener().await);
    let resolve = vec![format!("a.test={}", la.1), format!("b.test={}", lb.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, la, &resolve)
        .await
        .unwrap();
    let b = Homeserver::start("b.test", Backend::Sqlite, lb, &resolve)
        .await
        .unwrap();
    a.server.start_observing();
    let mut alice = User::register("alice@a.test", &a.url, &resolve).await;
    let mut bob = User::register("bob@b.test", &b.url, &resolve).await;
    bob.client
        .set_remote_sessions(phoenix_client::client::RemoteSessions::All);
    connect(&mut alice, &mut bob).await;
    alice.client.create_group("team").await.unwrap();
    alice.client.invite("team", "bob@b.test").await.unwrap();
    sync_joined(&mut bob, "team").await;
    bob.client.send("team", "with my session").await.unwrap();
    sync_text(&mut alice, "with my session").await;

    let seen = collect(&[("a.test", &a)]);
    let linking: BTreeSet<String> = seen
        .iter()
        .filter(|s| {
            s.has(Class::Identity) && (s.has(Class::QsPseudonym) || s.has(Class::GroupPseudonym))
        })
        .map(Seen::op)
        .collect();
    // bob joined alice's connection group and sent into the team group on a.test's DS.
    assert!(
        linking.contains("ds/join_connection_group") && linking.contains("ds/send_message"),
        "{linking:?}"
    );
    assert!(
        linking
            .iter()
            .all(|op| op.starts_with("ds/") || op.starts_with("qs/")),
        "{linking:?}"
    );
    drop(b);
}

/// A server whose tap was not started records nothing, even in this build, where the
/// `observe` feature is compiled in (Requirement: ADV-OP-3); once started, it records the
/// same kind of request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_records_nothing_unless_started() {
    let la = listener().await;
    let resolve = vec![format!("a.test={}", la.1)];
    let a = Homeserver::start("a.test", Backend::Sqlite, la, &resolve)
        .await
        .unwrap();
    let _alice = User::register("alice@a.test", &a.url, &resolve).await;
    assert!(a.server.observations().is_empty());
    a.server.start_observing();
    let _bob = User::register("bob@a.test", &a.url, &resolve).await;
    let seen = a.server.observations();
    assert!(
        seen.iter().any(|o| o.service == "as"
            && o.operation == "register"
            && o.seen.contains(&Observed::Fid("bob@a.test".into()))),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|o| o.seen.contains(&Observed::Fid("alice@a.test".into()))),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_operator_learns_no_identity_with_a_pseudonym() {
    operator_learns_no_identity_with_a_pseudonym(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_operator_learns_no_identity_with_a_pseudonym() {
    operator_learns_no_identity_with_a_pseudonym(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_last_resort_reuse_is_what_links_two_groups() {
    last_resort_reuse_is_what_links_two_groups(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_drained_key_packages_are_published_again_by_the_next_sync() {
    drained_key_packages_are_published_again_by_the_next_sync(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_drained_key_packages_are_published_again_by_the_next_sync() {
    drained_key_packages_are_published_again_by_the_next_sync(Backend::Postgres).await;
}
