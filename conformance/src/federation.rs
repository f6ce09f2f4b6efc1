//! The federation suite: two real federated homeservers (a.test and b.test, each told
//! where the other is) and the harness's malicious remote server ([`crate::peer`],
//! `evil.test`), against the model's federation ([`phoenix_model::federation`]).
//!
//! Each case sets up, with the client library, alice on a.test and bob on b.test,
//! connected across the servers, in group "fed" hosted on a.test (bob joined across
//! servers: his welcome went through a.test's outbox to b.test's QS); and on each server a
//! bare QS user, the "victim" queue whose queue config the malicious server uses. The
//! model starts from the same point ([`phoenix_model::world::federation_suite_world`]).
//!
//! Transitions:
//! - honest traffic through the client library: alice's and bob's messages and update
//!   commits in the group on a.test (alice's reach bob through a.test's outbox and a signed
//!   federated enqueue to b.test; bob's client talks to a.test's DS directly), with or
//!   without processing the queue first; syncs (each message arrives once, in order, with
//!   its sender verified up to the home CA of the other server). The model lets a reliable
//!   network deliver every outbox entry after each step; the harness waits (bounded) until
//!   the real queues show what the model's show, and fails on anything more.
//! - the malicious remote server, signing with its own key: honest messages, forged ones
//!   (claiming to be a.test or b.test), replays (a message id it used before, with a fresh
//!   signature and timestamp), misrouted ones (for c.test, or with a queue config of the
//!   other server), stale ones, and combinations (which check comes first is the model's
//!   order). The server's error code is compared with the model's.
//!
//! After every step each queue (alice's, bob's, both victims') on the server is compared
//! with the model's; at the end of a case, also the group's epoch and members.
//!
//! Which server refuses the malicious peer by policy is a parameter of the suite
//! ([`Federation`]'s `PROFILE`); the callers learn it with [`crate::peer::probe`]. Without
//! a reachable malicious peer (a deployment not started with `--resolve evil.test=...`),
//! the profile [`HONEST_ONLY`] runs the honest transitions only, and the malicious ones
//! are reported as not run.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tls_codec::VLBytes;

use phoenix_client::api::{Api, Signer};
use phoenix_client::{Client, ClientError};
use phoenix_model::adversary::{AdvOp, NOWHERE_DOMAIN, REMOTE_DOMAIN, RemoteSend};
use phoenix_model::call::Outcome;
use phoenix_model::client::{ClientOp, ClientRef};
use phoenix_model::federation::{self, FedMsgId, Policy};
use phoenix_model::ids::{DomainId, GroupId, MsgId, QsCid};
use phoenix_model::queue::QueueItem;
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world::{self, A, B};
use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info};
use phoenix_types::error::ErrorCode;
use phoenix_types::ids::QsId;
use phoenix_types::messages::federation::FederatedEnqueueTbs;
use phoenix_types::messages::qs::{self, QueueConfig, SealedQueueConfig};
use phoenix_types::messages::{DequeueRequest, DequeueResponse};

use crate::HarnessError;
use crate::ds::{
    accepted_messages, client_outcome, expected_messages, group_info_of, kind, payload_kind,
    settled_identity, sync_messages,
};
use crate::names::Names;
use crate::observed::{self, Observed};
use crate::peer::{self, PeerInfo, Reach};
use crate::runner::{RunConfig, StepFailure, SuiteReport};
use crate::target::Target;

/// The group of the suite (hosted on a.test).
pub const GROUP: &str = "fed";
const CLIENTS: [ClientRef; 2] = [world::ALICE, world::BOB];

/// Profile bits: the malicious peer's transitions run.
pub const MALICIOUS: u8 = 1;
/// Profile bit: a.test's policy refuses the malicious peer.
pub const A_REFUSES: u8 = 2;
/// Profile bit: b.test's policy refuses the malicious peer.
pub const B_REFUSES: u8 = 4;
/// Honest federation only.
pub const HONEST_ONLY: u8 = 0;
/// The test configuration: a.test blocks evil.test, b.test is open.
pub const TEST_PROFILE: u8 = MALICIOUS | A_REFUSES;

/// Who a malicious message says sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claim {
    /// The malicious server itself (an honestly signed message).
    Itself,
    /// a.test (forged).
    A,
    /// b.test (forged).
    B,
}

/// Where a malicious message says it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// The server it is sent to.
    Receiver,
    /// The other server (misrouted).
    Other,
    /// c.test, which nobody serves (misrouted).
    Nowhere,
}

/// One transition of the federation suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedStep {
    /// `client` (0 alice on a.test, 1 bob on b.test) sends a message in the group.
    Send { client: u8, sync_first: bool },
    /// `client` commits a path update in the group.
    Update { client: u8, sync_first: bool },
    /// `client` processes its queue.
    Sync { client: u8 },
    /// The malicious remote server sends a federated enqueue to server `to` (0 a.test, 1
    /// b.test), signed with its own key.
    Remote {
        to: u8,
        claim: Claim,
        destination: Destination,
        /// The queue config is of the other server's victim queue (misrouted).
        other_queue: bool,
        /// The message id (per case; reusing one is a replay).
        id: u32,
        stale: bool,
        /// The payload's id.
        msg: u32,
    },
}

/// The model's world, what each client's syncs reported, and the malicious server's ids.
#[derive(Debug, Clone)]
pub struct RefState {
    pub model: State,
    pub group: GroupId,
    /// The victim queues on a.test and b.test.
    pub victims: [QsCid; 2],
    pub reported: [usize; 2],
    /// Message ids the malicious server used.
    pub remote_ids: Vec<u32>,
    pub next_remote: u32,
}

/// The reference state machine of profile `PROFILE`.
#[derive(Debug)]
pub struct FedMachine<const PROFILE: u8>;

/// The model world of the suite for `profile`.
pub fn init_model(profile: u8) -> RefState {
    let (mut model, group, victims) = world::federation_suite_world(Config::default());
    for (domain, bit) in [(A, A_REFUSES), (B, B_REFUSES)] {
        if let Some(server) = model.servers.get_mut(&domain) {
            let mut blocked = std::collections::BTreeSet::new();
            if profile & bit != 0 {
                blocked.insert(REMOTE_DOMAIN);
            }
            server.fed.policy = Policy::Open { blocked };
        }
    }
    RefState {
        model,
        group,
        victims,
        reported: [0; 2],
        remote_ids: Vec::new(),
        next_remote: 0,
    }
}

impl<const PROFILE: u8> ReferenceStateMachine for FedMachine<PROFILE> {
    type State = RefState;
    type Transition = FedStep;

    fn init_state() -> BoxedStrategy<RefState> {
        Just(init_model(PROFILE)).boxed()
    }

    fn transitions(state: &RefState) -> BoxedStrategy<FedStep> {
        let mut members = Vec::new();
        for (ci, c) in CLIENTS.iter().enumerate() {
            if crate::ds::in_group(&state.model, *c, state.group) {
                members.push(ci as u8);
            }
        }
        let commit_members = members.clone();
        let fresh = state.next_remote;
        let used = state.remote_ids.clone();
        let honest = prop_oneof![
            5 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(move |(i, sync_first)| {
                let client = members.get(i % members.len().max(1)).copied().unwrap_or(0);
                FedStep::Send { client, sync_first }
            }),
            2 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(move |(i, sync_first)| {
                let client = commit_members.get(i % commit_members.len().max(1)).copied().unwrap_or(0);
                FedStep::Update { client, sync_first }
            }),
            4 => (0u8..2).prop_map(|client| FedStep::Sync { client }),
        ];
        if PROFILE & MALICIOUS == 0 {
            return honest.boxed();
        }
        prop_oneof![
            11 => honest,
            6 => (
                0u8..2,
                prop_oneof![4 => Just(Claim::Itself), 1 => Just(Claim::A), 1 => Just(Claim::B)],
                prop_oneof![4 => Just(Destination::Receiver), 1 => Just(Destination::Other), 1 => Just(Destination::Nowhere)],
                prop::bool::weighted(0.15),
                prop::bool::weighted(0.3),
                any::<usize>(),
                prop::bool::weighted(0.15),
            )
                .prop_map(move |(to, claim, destination, other_queue, replay, pick, stale)| {
                    let id = if replay && !used.is_empty() {
                        used.get(pick % used.len()).copied().unwrap_or(fresh)
                    } else {
                        fresh
                    };
                    FedStep::Remote { to, claim, destination, other_queue, id, stale, msg: fresh }
                }),
        ]
        .boxed()
    }

    fn apply(state: RefState, t: &FedStep) -> RefState {
        let (model, _) = run_model(&state, t);
        let mut next = RefState { model, ..state };
        match t {
            FedStep::Sync { client } => {
                if let Some(r) = next.reported.get_mut(usize::from(*client)) {
                    *r = accepted_messages(&next.model, client_ref(*client)).len();
                }
            }
            FedStep::Remote { id, msg, .. } => {
                if !next.remote_ids.contains(id) {
                    next.remote_ids.push(*id);
                }
                next.next_remote = next
                    .next_remote
                    .max(id.saturating_add(1))
                    .max(msg.saturating_add(1));
            }
            _ => {}
        }
        next
    }
}

fn client_ref(i: u8) -> ClientRef {
    CLIENTS.get(usize::from(i)).copied().unwrap_or(world::ALICE)
}

fn domain(i: u8) -> DomainId {
    if i == 0 { A } else { B }
}

/// The malicious send a `Remote` step stands for in the model.
fn remote_send(state: &RefState, t: &FedStep) -> Option<RemoteSend> {
    let FedStep::Remote {
        to,
        claim,
        destination,
        other_queue,
        id,
        stale,
        msg,
    } = t
    else {
        return None;
    };
    let to_domain = domain(*to);
    let other = domain(1 - (*to).min(1));
    let queue_domain = if *other_queue { other } else { to_domain };
    Some(RemoteSend {
        to: to_domain,
        sender: match claim {
            Claim::Itself => REMOTE_DOMAIN,
            Claim::A => A,
            Claim::B => B,
        },
        destination: match destination {
            Destination::Receiver => to_domain,
            Destination::Other => other,
            Destination::Nowhere => NOWHERE_DOMAIN,
        },
        queue_domain,
        victim: state
            .victims
            .get(usize::from(queue_domain.0))
            .copied()
            .unwrap_or(QsCid(0)),
        id: FedMsgId(*id),
        stale: *stale,
        msg: MsgId(900_000u32.saturating_add(*msg)),
    })
}

/// The model's effect of a step: the state after it (with every federated message
/// delivered by a reliable network) and the outcome to compare.
fn run_model(state: &RefState, t: &FedStep) -> (State, Outcome) {
    let m = &state.model;
    let (mut next, outcome) = match t {
        FedStep::Send { client, sync_first } | FedStep::Update { client, sync_first } => {
            let c = client_ref(*client);
            let mut m = m.clone();
            if *sync_first {
                m = step(&m, &Op::Client(ClientOp::Sync { client: c })).0;
            }
            let group = state.group;
            let op = if matches!(t, FedStep::Send { .. }) {
                ClientOp::Send { client: c, group }
            } else {
                ClientOp::Update { client: c, group }
            };
            step(&m, &Op::Client(op))
        }
        FedStep::Sync { client } => step(
            m,
            &Op::Client(ClientOp::Sync {
                client: client_ref(*client),
            }),
        ),
        FedStep::Remote { .. } => match remote_send(state, t) {
            Some(send) => step(m, &Op::Adversary(AdvOp::RemoteSend(send))),
            None => (m.clone(), Err(ErrorCode::Internal)),
        },
    };
    federation::flush(&mut next);
    (next, outcome)
}

/// The requirements a step exercises.
fn requirements(t: &FedStep, outcome: &Outcome) -> Vec<&'static str> {
    let stale = outcome == &Err(ErrorCode::WrongEpoch);
    match (t, outcome) {
        (FedStep::Send { .. }, _) if stale => vec!["DS-EPOCH-2"],
        (FedStep::Update { .. }, _) if stale => vec!["DS-EPOCH-1"],
        (FedStep::Send { client: 0, .. }, _) => vec!["DS-SEND-1", "DS-FAN-1", "FED-2", "FED-3"],
        (FedStep::Send { .. }, _) => vec!["DS-SEND-1", "DS-FAN-1"],
        (FedStep::Update { .. }, _) => vec!["DS-COMMIT-1", "DS-FAN-1", "FED-3"],
        (FedStep::Sync { .. }, _) => vec!["QS-Q-2", "ID-CHAIN-1", "FED-3"],
        (FedStep::Remote { .. }, Err(ErrorCode::FederationRefused)) => {
            vec!["FED-4", "ADV-REMOTE-1"]
        }
        (FedStep::Remote { .. }, Err(ErrorCode::Misaddressed)) => vec!["FED-1", "ADV-REMOTE-1"],
        (FedStep::Remote { .. }, Err(ErrorCode::Replayed)) => vec!["FED-3", "ADV-REMOTE-1"],
        (FedStep::Remote { .. }, _) => vec!["FED-2", "ADV-REMOTE-1"],
    }
}

/// A queue of the case: whose, on which server, and where the model's 0 is.
struct QueueRef {
    what: String,
    url: String,
    id: QsId,
    key: ed25519_dalek::SigningKey,
    /// The model's client record.
    model: QsCid,
    /// The server's sequence number that the model's 0 stands for.
    base: u64,
    /// Opens the sealed entries of the queue.
    cursor: crate::queue_cursor::QueueCursor,
}

struct Member {
    client: Client,
    /// Kept for the client's lifetime (its state directory).
    #[allow(dead_code)]
    home: TempDir,
    fid: String,
}

/// The servers under test for one case of the federation suite.
pub struct FedSut {
    names: Names,
    http: reqwest::Client,
    /// a.test's and b.test's URLs.
    urls: [String; 2],
    /// Their QS queue-config keys (from their discovery documents).
    queue_config_keys: [Vec<u8>; 2],
    members: Vec<Member>,
    /// alice's, bob's, and the victims' queues on a.test and b.test.
    queues: Vec<QueueRef>,
    /// The real ids of the victim queues on a.test and b.test.
    victims: [QsId; 2],
    peer: Option<PeerInfo>,
    a_api: Api,
}

impl std::fmt::Debug for FedSut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FedSut")
            .field("prefix", &self.names.prefix)
            .finish_non_exhaustive()
    }
}

fn setup(what: &str) -> impl Fn(ClientError) -> HarnessError + '_ {
    move |e| HarnessError::Setup(format!("{what}: {e}"))
}

/// How long the harness waits for federated delivery before calling it a loss.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);

#[derive(Deserialize)]
struct DiscoveryKeys {
    queue_config_key: String,
}

/// Sync `client` until an event satisfies `done` (federated delivery is asynchronous).
async fn sync_until(
    client: &mut Client,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + DELIVERY_WAIT;
    loop {
        let events = client.sync().await.map_err(setup(what))?;
        if let Some(e) = events.iter().find(|e| e["kind"] == "error") {
            return Err(HarnessError::Setup(format!("{what}: {e}")));
        }
        if events.iter().any(&done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Setup(format!("{what}: timed out")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl FedSut {
    pub async fn new(target: &Target, init: &RefState) -> Result<Self, HarnessError> {
        let b = target
            .peer
            .as_deref()
            .ok_or_else(|| HarnessError::Setup("the federation suite needs two servers".into()))?;
        let peer_domain = target
            .malicious
            .as_ref()
            .map_or(peer::EVIL_DOMAIN.to_owned(), |p| p.domain.clone());
        let names = Names::with_domains(&[
            target.domain.clone(),
            b.domain.clone(),
            peer_domain,
            peer::NOWHERE_DOMAIN.to_owned(),
        ]);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut queue_config_keys = [Vec::new(), Vec::new()];
        for (slot, url) in queue_config_keys.iter_mut().zip([&target.url, &b.url]) {
            let d: DiscoveryKeys = http
                .get(format!("{url}/.well-known/phoenix"))
                .send()
                .await
                .map_err(|e| HarnessError::Setup(format!("{url}: {e}")))?
                .json()
                .await
                .map_err(|e| HarnessError::Setup(format!("{url}: {e}")))?;
            *slot = hex::decode(&d.queue_config_key)
                .map_err(|e| HarnessError::Setup(format!("{url}: queue config key: {e}")))?;
        }
        // alice on a.test, bob on b.test, connected across the servers.
        let mut clients = Vec::new();
        for (c, url) in CLIENTS.iter().zip([&target.url, &b.url]) {
            let home = tempfile::tempdir().map_err(|e| HarnessError::Setup(e.to_string()))?;
            let client = Client::open(home.path()).await.map_err(setup("open"))?;
            client
                .add_resolve(&target.resolve)
                .await
                .map_err(setup("resolve"))?;
            let model = init
                .model
                .clients
                .get(c)
                .ok_or_else(|| HarnessError::Setup("no such client in the model".into()))?;
            let fid = names.fid(model.fid);
            let mut client = client;
            client
                .register(&fid, url)
                .await
                .map_err(setup("register"))?;
            clients.push((client, home, fid));
        }
        let [(mut alice, ah, af), (mut bob, bh, bf)] =
            <[_; 2]>::try_from(clients).map_err(|_| HarnessError::Setup("two clients".into()))?;
        alice.connect(&bf).await.map_err(setup("connect"))?;
        bob.requests().await.map_err(setup("requests"))?;
        bob.accept(&af).await.map_err(setup("accept"))?;
        sync_until(&mut alice, "alice learns bob accepted", |e| {
            e["kind"] == "connected"
        })
        .await?;
        alice.create_group(GROUP).await.map_err(setup("create"))?;
        alice
            .invite(GROUP, &bf)
            .await
            .map_err(setup("invite bob"))?;
        sync_until(&mut bob, "bob joins across servers", |e| {
            e["kind"] == "joined" && e["group"] == GROUP
        })
        .await?;
        let mut members = Vec::new();
        let mut queues = Vec::new();
        for ((mut client, home, fid), (c, url)) in [(alice, ah, af), (bob, bh, bf)]
            .into_iter()
            .zip(CLIENTS.iter().zip([&target.url, &b.url]))
        {
            let id = settled_identity(&mut client, &home, &fid).await?;
            let model = init.model.clients.get(c).map_or(QsCid(0), |x| x.qs_id);
            queues.push(QueueRef {
                what: fid.clone(),
                url: url.clone(),
                id: id.qs_client_id,
                key: ed25519_dalek::SigningKey::from_bytes(&id.qs_client_key),
                model,
                base: id.qs_next_seq,
                cursor: crate::queue_cursor::QueueCursor::of_client(
                    &id,
                    home.path().to_path_buf(),
                )?,
            });
            members.push(Member { client, home, fid });
        }
        // The victim queues: bare QS users on each server.
        let mut victims = [[0u8; 16]; 2];
        for (i, (url, d)) in [&target.url, &b.url].into_iter().zip([A, B]).enumerate() {
            let (user_key, token, client_key) = world::victim_keys(d);
            let api = Api::new(url).map_err(|e| HarnessError::Setup(e.to_string()))?;
            let queue_key = phoenix_types::crypto::HpkeKeyPair::generate(&mut rand_core::OsRng)
                .map_err(|e| HarnessError::Setup(format!("queue key: {e}")))?;
            let secret = phoenix_types::queue_ratchet::QueueRatchet::random(&mut rand_core::OsRng);
            let created: qs::CreateUserResponse = api
                .call(
                    "qs",
                    qs::CREATE_USER,
                    &qs::CreateUserRequest {
                        user_auth_key: VLBytes::new(
                            names.key(user_key).verifying_key().to_bytes().to_vec(),
                        ),
                        friendship_token: names.token(token),
                        client_auth_key: VLBytes::new(
                            names.key(client_key).verifying_key().to_bytes().to_vec(),
                        ),
                        queue_key: VLBytes::new(queue_key.public.clone()),
                        queue_ratchet_secret: *secret.secret(),
                    },
                    Signer::Anonymous,
                )
                .await
                .map_err(setup("victim queue"))?;
            if let Some(slot) = victims.get_mut(i) {
                *slot = created.client_id;
            }
            queues.push(QueueRef {
                what: format!("the victim queue on {}", names.domain_of(d)),
                url: url.clone(),
                id: created.client_id,
                key: names.key(client_key),
                model: init.victims.get(i).copied().unwrap_or(QsCid(0)),
                base: 0,
                cursor: crate::queue_cursor::QueueCursor::new(
                    created.client_id,
                    queue_key.private.clone(),
                    *secret.secret(),
                ),
            });
        }
        let sut = Self {
            a_api: Api::new(&target.url).map_err(|e| HarnessError::Setup(e.to_string()))?,
            names,
            http,
            urls: [target.url.clone(), b.url.clone()],
            queue_config_keys,
            members,
            queues,
            victims,
            peer: target.malicious.clone(),
        };
        // Everything processed is acknowledged: the queues restart at the model's 0.
        for q in &sut.queues {
            sut.dequeue(q, 0, 0).await?;
        }
        Ok(sut)
    }

    async fn dequeue(
        &self,
        q: &QueueRef,
        start: u64,
        max: u16,
    ) -> Result<DequeueResponse, HarnessError> {
        Api::new(&q.url)
            .map_err(|e| HarnessError::Setup(e.to_string()))?
            .call(
                "qs",
                qs::DEQUEUE,
                &DequeueRequest {
                    timestamp: phoenix_client::client::now(),
                    sequence_number_start: q.base.saturating_add(start),
                    max,
                },
                Signer::QsClient {
                    id: q.id,
                    key: &q.key,
                },
            )
            .await
            .map_err(|e| HarnessError::Mismatch(format!("dequeue of {}: {e}", q.what)))
    }

    /// A queue as (relative number, kind), read from `start` without deleting anything.
    async fn queue(&self, q: &QueueRef, start: u64) -> Result<Vec<(u64, String)>, HarnessError> {
        let resp = self.dequeue(q, start, 500).await?;
        let payloads = q.cursor.open_all(&resp.messages).await?;
        let mut items = Vec::new();
        for (m, bytes) in resp.messages.iter().zip(&payloads) {
            let kind = match self.names.message_back(bytes) {
                Some(id) => format!("opaque:{}", id.0),
                None => payload_kind(bytes)?.to_owned(),
            };
            items.push((m.sequence_number.saturating_sub(q.base), kind));
        }
        Ok(items)
    }

    /// Every queue on the servers equals the model's: waits (bounded) for federated
    /// deliveries still on their way, fails at once on anything the model does not have.
    async fn check_queues(&self, model: &State) -> Result<(), HarnessError> {
        let deadline = Instant::now() + DELIVERY_WAIT;
        for q in &self.queues {
            let Some(record) = model
                .servers
                .values()
                .find_map(|s| s.qs.clients.get(&q.model))
            else {
                continue;
            };
            let expected: Vec<(u64, String)> = record
                .queue
                .messages
                .iter()
                .map(|(s, item)| (*s, item_kind(item)))
                .collect();
            loop {
                let actual = self.queue(q, record.queue.deleted_below).await?;
                if actual == expected {
                    break;
                }
                let prefix = actual.len() < expected.len()
                    && expected.get(..actual.len()) == Some(actual.as_slice());
                if !prefix || Instant::now() > deadline {
                    return Err(HarnessError::Mismatch(format!(
                        "the queue of {} holds {actual:?}, the model {expected:?}",
                        q.what
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The sealed queue config of the victim queue on server `i`.
    fn victim_config(&self, i: usize) -> Result<Vec<u8>, HarnessError> {
        let domain = self.names.domain_of(domain(i as u8)).to_owned();
        let client_id = self.victims.get(i).copied().unwrap_or_default();
        let key = self
            .queue_config_keys
            .get(i)
            .ok_or_else(|| HarnessError::Setup("no queue config key".into()))?;
        let plain =
            codec::encode(&QueueConfig { client_id }).map_err(|e| HarnessError::Setup(e.detail))?;
        let sealed = crypto::hpke_seal(key, hpke_info::QUEUE_CONFIG, domain.as_bytes(), &plain)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        codec::encode(&SealedQueueConfig {
            qs_domain: domain,
            sealed,
        })
        .map_err(|e| HarnessError::Setup(e.detail))
    }

    /// The malicious server's federated enqueue, over real HTTP.
    async fn remote(&self, send: &RemoteSend) -> Result<Observed, HarnessError> {
        let peer = self.peer.as_ref().ok_or_else(|| {
            HarnessError::Setup("no malicious peer: the profile should not generate this".into())
        })?;
        let now = phoenix_client::client::now();
        let tbs = FederatedEnqueueTbs {
            sender: self.names.domain_of(send.sender).to_owned(),
            destination: self.names.domain_of(send.destination).to_owned(),
            message_id: self.names.fed_id(send.id.0),
            timestamp: if send.stale {
                now.saturating_sub(3600)
            } else {
                now
            },
            queue_config: VLBytes::new(self.victim_config(usize::from(send.queue_domain.0))?),
            payload: VLBytes::new(self.names.message_tag(send.msg).to_vec()),
            notification: phoenix_types::messages::Notification::Send,
        };
        let body = peer.sign(&tbs)?;
        let url = self
            .urls
            .get(usize::from(send.to.0))
            .ok_or_else(|| HarnessError::Setup("no such server".into()))?;
        Ok(match peer::post(&self.http, url, body).await? {
            Ok(()) => Observed::Empty,
            Err(code) => Observed::Error(code),
        })
    }
}

fn item_kind(item: &QueueItem) -> String {
    match item {
        QueueItem::Opaque(id) => format!("opaque:{}", id.0),
        other => kind(other).to_owned(),
    }
}

/// The federation suite of profile `PROFILE` for the runner.
#[derive(Debug)]
pub struct Federation<const PROFILE: u8>;

impl Federation<0> {
    pub const NAME_STR: &'static str = "federation";
}

impl<const PROFILE: u8> crate::runner::Suite for Federation<PROFILE> {
    const NAME: &'static str = Federation::<0>::NAME_STR;
    type Machine = FedMachine<PROFILE>;
    type Sut = FedSut;

    fn model(state: &RefState) -> &State {
        &state.model
    }

    async fn start(target: &Target, init: &RefState) -> Result<FedSut, HarnessError> {
        FedSut::new(target, init).await
    }

    async fn step(
        sut: &mut FedSut,
        before: &RefState,
        after: &RefState,
        t: &FedStep,
    ) -> Result<Vec<&'static str>, StepFailure> {
        let (_, outcome) = run_model(before, t);
        let requirements = requirements(t, &outcome);
        let fail = |error| StepFailure {
            requirements: requirements.clone(),
            error,
        };
        let (expected, actual) = match t {
            FedStep::Send { client, sync_first } => {
                let text = after
                    .model
                    .ghost
                    .sent
                    .keys()
                    .find(|m| !before.model.ghost.sent.contains_key(m))
                    .map_or("stale".to_owned(), |m| format!("m{}", m.0));
                let m = sut
                    .members
                    .get_mut(usize::from(*client))
                    .ok_or_else(|| fail(HarnessError::Setup("no such client".into())))?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.send(GROUP, &text).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            FedStep::Update { client, sync_first } => {
                let m = sut
                    .members
                    .get_mut(usize::from(*client))
                    .ok_or_else(|| fail(HarnessError::Setup("no such client".into())))?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.update(GROUP).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            FedStep::Sync { client } => {
                let from = before
                    .reported
                    .get(usize::from(*client))
                    .copied()
                    .unwrap_or(0);
                let expected =
                    expected_messages(&after.model, client_ref(*client), from, &sut.names);
                let m = sut
                    .members
                    .get_mut(usize::from(*client))
                    .ok_or_else(|| fail(HarnessError::Setup("no such client".into())))?;
                let received = sync_messages(&mut m.client, &m.fid).await.map_err(fail)?;
                (
                    Observed::Messages { received: expected },
                    Observed::Messages { received },
                )
            }
            FedStep::Remote { .. } => {
                let send = remote_send(before, t)
                    .ok_or_else(|| fail(HarnessError::Setup("not a remote step".into())))?;
                (
                    observed::expected(&outcome),
                    sut.remote(&send).await.map_err(fail)?,
                )
            }
        };
        if actual != expected {
            return Err(fail(HarnessError::Mismatch(format!(
                "the server answered {actual:?}, the model {expected:?}"
            ))));
        }
        sut.check_queues(&after.model)
            .await
            .map_err(|e| StepFailure {
                requirements: vec!["FED-3", "QS-Q-1", "ADV-REMOTE-1"],
                error: e,
            })?;
        Ok(requirements)
    }

    async fn finish(sut: &mut FedSut, state: &RefState) -> Result<(), HarnessError> {
        // Late duplicates would show here.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sut.check_queues(&state.model).await?;
        let Some(group) = state
            .model
            .server(state.group.domain)
            .and_then(|s| s.ds.groups.get(&state.group))
        else {
            return Ok(());
        };
        let expected = Observed::GroupInfo {
            epoch: group.epoch,
            members: group.members.len(),
        };
        let alice = sut
            .members
            .first()
            .ok_or_else(|| HarnessError::Setup("no alice".into()))?;
        let actual = group_info_of(&sut.a_api, &alice.client, GROUP, true).await?;
        if actual != expected {
            return Err(HarnessError::Mismatch(format!(
                "group {GROUP}: the server shows {actual:?}, the model {expected:?}"
            )));
        }
        Ok(())
    }
}

/// The profile for servers that stand to the malicious peer as `reach` says (a.test's,
/// b.test's), and why the malicious transitions do not run, if they do not.
pub fn profile(reach: &[Reach; 2]) -> (u8, Option<String>) {
    let mut profile = MALICIOUS;
    for (r, bit) in reach.iter().zip([A_REFUSES, B_REFUSES]) {
        match r {
            Reach::Reaches => {}
            Reach::Refuses => profile |= bit,
            Reach::Unreachable(why) => return (HONEST_ONLY, Some(why.clone())),
        }
    }
    (profile, None)
}

/// Probe both servers of `target` with the malicious peer: the profile to run.
pub async fn probe(target: &Target) -> Result<(u8, Option<String>), HarnessError> {
    let Some(peer_info) = &target.malicious else {
        return Ok((
            HONEST_ONLY,
            Some("no malicious peer (start one with --fake-peer-listen)".into()),
        ));
    };
    let b = target
        .peer
        .as_deref()
        .ok_or_else(|| HarnessError::Setup("the federation suite needs two servers".into()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| HarnessError::Setup(e.to_string()))?;
    let mut reach = Vec::new();
    for t in [target, b] {
        let d: DiscoveryKeys = http
            .get(format!("{}/.well-known/phoenix", t.url))
            .send()
            .await
            .map_err(|e| HarnessError::Setup(format!("{}: {e}", t.url)))?
            .json()
            .await
            .map_err(|e| HarnessError::Setup(format!("{}: {e}", t.url)))?;
        let key = hex::decode(&d.queue_config_key)
            .map_err(|e| HarnessError::Setup(format!("{}: {e}", t.url)))?;
        let plain = codec::encode(&QueueConfig {
            client_id: [0u8; 16],
        })
        .map_err(|e| HarnessError::Setup(e.detail))?;
        let sealed = crypto::hpke_seal(&key, hpke_info::QUEUE_CONFIG, t.domain.as_bytes(), &plain)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let config = codec::encode(&SealedQueueConfig {
            qs_domain: t.domain.clone(),
            sealed,
        })
        .map_err(|e| HarnessError::Setup(e.detail))?;
        reach.push(peer::probe(&http, &t.url, &t.domain, config, peer_info).await?);
    }
    let reach: [Reach; 2] = reach
        .try_into()
        .map_err(|_| HarnessError::Setup("two servers".into()))?;
    Ok(profile(&reach))
}

/// Run the federation suite of `profile` (one of [`HONEST_ONLY`], and [`MALICIOUS`] with
/// any of [`A_REFUSES`], [`B_REFUSES`]).
pub fn run(
    handle: &tokio::runtime::Handle,
    target: &Target,
    config: &RunConfig,
    profile: u8,
) -> SuiteReport {
    use crate::runner::run_suite;
    match profile {
        1 => run_suite::<Federation<1>>(handle, target, config),
        3 => run_suite::<Federation<3>>(handle, target, config),
        5 => run_suite::<Federation<5>>(handle, target, config),
        7 => run_suite::<Federation<7>>(handle, target, config),
        _ => run_suite::<Federation<0>>(handle, target, config),
    }
}
