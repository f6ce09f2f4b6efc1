//! The DS suite: group traffic driven through the client library (which does the MLS
//! work), against the model's honest clients.
//!
//! Each case sets up alice, bob and carol on the server with the client library: alice is
//! connected with bob and with carol; group "g1" holds all three (epoch 2), "g2" alice
//! and bob (epoch 1); everyone has processed their queue. The model starts from the same
//! point ([`phoenix_model::world::ds_suite_world`]), with queue numbers relative to it.
//!
//! Transitions: application messages and update commits, with or without processing the
//! queue first (without, a client that missed a commit sends for a stale epoch and the DS
//! must answer `WRONG_EPOCH`); alice adding a contact to a group it is not in (key package
//! fetch from the QS, add commit, welcome) and members removing members (the removed
//! member hears of it), at the current or a stale epoch; syncs (every message from the
//! others arrives once, in order, from its verified sender; joins and removals are
//! processed); resyncs (a member rejoins by external commit with its own leaf's
//! credential); group info with the right and a wrong EAR key; raw reads of a client's QS
//! queue that delete nothing (sequence numbers, kinds, remaining). After every step each
//! client's queue on the server is compared with the model's, and at the end of a case
//! each group's epoch and member count.

use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tls_codec::{Deserialize as _, VLBytes};

use phoenix_client::api::{Api, Signer};
use phoenix_client::{Client, ClientError};
use phoenix_model::adversary::AdvOp;
use phoenix_model::call::{Call, DsCall, Outcome, QsCall, QsSigner};
use phoenix_model::client::{ClientOp, ClientRef};
use phoenix_model::ids::{GroupId, KeyId, MsgId};
use phoenix_model::queue::QueueItem;
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world;
use phoenix_types::codec;
use phoenix_types::messages::ds::{self as ds_msg, QueuePayload};
use phoenix_types::messages::qs;
use phoenix_types::messages::{DequeueRequest, DequeueResponse};

use crate::HarnessError;
use crate::names::Names;
use crate::observed::{self, Observed};
use crate::proxy::{self, RecordingProxy};
use crate::runner::StepFailure;
use crate::target::Target;

/// The group names of the suite, by model group index.
pub const GROUPS: [&str; 2] = ["g1", "g2"];
const CLIENTS: [ClientRef; 3] = [world::ALICE, world::BOB, world::CAROL];

/// One transition of the DS suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsStep {
    /// `client` sends a message in `group`, first processing its queue if `sync_first`.
    Send {
        client: u8,
        group: u8,
        sync_first: bool,
    },
    /// `client` commits a path update in `group`.
    Update {
        client: u8,
        group: u8,
        sync_first: bool,
    },
    /// Alice adds her contact `invitee` (a client index) to `group`.
    Add {
        group: u8,
        invitee: u8,
        sync_first: bool,
    },
    /// `client` removes the member `member` (a client index) from `group`.
    Remove {
        client: u8,
        group: u8,
        member: u8,
        sync_first: bool,
    },
    /// `client` processes its queue.
    Sync { client: u8 },
    /// Anyone asks for `group`'s info, with its EAR key or a wrong one.
    GroupInfo { group: u8, right_key: bool },
    /// `client` reads up to `max` of its queue without deleting anything.
    PeekQueue { client: u8, max: u16 },
    /// The network adversary sends the last DS request the server accepted again, byte
    /// for byte (the model's `AdvOp::ReplayDs`).
    Replay,
    /// `client` processes its queue, then rejoins `group` by external commit (a resync,
    /// replacing its leaf with one of the same credential).
    Resync { client: u8, group: u8 },
}

/// The model's world and, per client, how many accepted messages its syncs reported.
#[derive(Debug, Clone)]
pub struct RefState {
    pub model: State,
    pub groups: [GroupId; 2],
    pub reported: [usize; 3],
}

#[derive(Debug)]
pub struct DsMachine;

impl ReferenceStateMachine for DsMachine {
    type State = RefState;
    type Transition = DsStep;

    fn init_state() -> BoxedStrategy<RefState> {
        let (model, g1, g2) = world::ds_suite_world(Config::default());
        Just(RefState {
            model,
            groups: [g1, g2],
            reported: [0; 3],
        })
        .boxed()
    }

    fn transitions(state: &RefState) -> BoxedStrategy<DsStep> {
        // Members only (carol is not in g2 at first): the client library refuses the others
        // locally.
        let mut members = Vec::new();
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for (ci, c) in CLIENTS.iter().enumerate() {
            for (gi, g) in state.groups.iter().enumerate() {
                if !in_group(&state.model, *c, *g) {
                    continue;
                }
                members.push((ci as u8, gi as u8));
                // Members it knows of and the DS still has: removable.
                for (ti, t) in CLIENTS.iter().enumerate() {
                    if t != c
                        && in_group(&state.model, *t, *g)
                        && leaf_in_view(&state.model, *c, *g, *t).is_some()
                    {
                        removes.push((ci as u8, gi as u8, ti as u8));
                    }
                }
            }
        }
        // Alice adds contacts that were never in the group (a removed member is not
        // invited back: its client keeps the old group's record).
        for (gi, g) in state.groups.iter().enumerate() {
            if !in_group(&state.model, world::ALICE, *g) {
                continue;
            }
            for (ti, t) in CLIENTS.iter().enumerate().skip(1) {
                let never = state
                    .model
                    .clients
                    .get(t)
                    .is_some_and(|x| !x.groups.contains_key(g))
                    && !pending_welcome(&state.model, *t, *g);
                if never {
                    adds.push((gi as u8, ti as u8));
                }
            }
        }
        let send_members = members.clone();
        let resync_members = members.clone();
        let mut membership: Vec<(u32, BoxedStrategy<DsStep>)> = Vec::new();
        if !adds.is_empty() {
            membership.push((
                1,
                (any::<usize>(), prop::bool::weighted(0.7))
                    .prop_map(move |(i, sync_first)| {
                        let (group, invitee) =
                            adds.get(i % adds.len().max(1)).copied().unwrap_or((0, 1));
                        DsStep::Add {
                            group,
                            invitee,
                            sync_first,
                        }
                    })
                    .boxed(),
            ));
        }
        if !removes.is_empty() {
            membership.push((
                1,
                (any::<usize>(), prop::bool::weighted(0.7))
                    .prop_map(move |(i, sync_first)| {
                        let (client, group, member) = removes
                            .get(i % removes.len().max(1))
                            .copied()
                            .unwrap_or((0, 0, 1));
                        DsStep::Remove {
                            client,
                            group,
                            member,
                            sync_first,
                        }
                    })
                    .boxed(),
            ));
        }
        let traffic = prop_oneof![
            6 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(move |(i, sync_first)| {
                let (client, group) = send_members.get(i % send_members.len().max(1)).copied().unwrap_or((0, 0));
                DsStep::Send { client, group, sync_first }
            }),
            3 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(move |(i, sync_first)| {
                let (client, group) = members.get(i % members.len().max(1)).copied().unwrap_or((0, 0));
                DsStep::Update { client, group, sync_first }
            }),
            4 => (0u8..3).prop_map(|client| DsStep::Sync { client }),
            1 => (0u8..2, prop::bool::weighted(0.7)).prop_map(|(group, right_key)| DsStep::GroupInfo { group, right_key }),
            2 => (0u8..3, prop_oneof![Just(1u16), Just(2u16), Just(50u16)]).prop_map(|(client, max)| DsStep::PeekQueue { client, max }),
            1 => Just(DsStep::Replay),
            1 => any::<usize>().prop_map(move |i| {
                let (client, group) = resync_members.get(i % resync_members.len().max(1)).copied().unwrap_or((0, 0));
                DsStep::Resync { client, group }
            }),
        ];
        // Membership changes are rarer: each case stays mostly in its groups.
        let mut options: Vec<(u32, BoxedStrategy<DsStep>)> = vec![(16, traffic.boxed())];
        options.extend(membership);
        proptest::strategy::Union::new_weighted(options).boxed()
    }

    fn apply(state: RefState, t: &DsStep) -> RefState {
        let (model, _) = run_model(&state, t);
        let mut reported = state.reported;
        if let DsStep::Sync { client } = t
            && let Some(r) = reported.get_mut(usize::from(*client))
        {
            *r = accepted_messages(&model, client_ref(*client)).len();
        }
        RefState {
            model,
            groups: state.groups,
            reported,
        }
    }
}

fn client_ref(i: u8) -> ClientRef {
    CLIENTS.get(usize::from(i)).copied().unwrap_or(world::ALICE)
}

/// Whether `c` is a member of `g` as both its own view and the DS see it (active, and the
/// DS has its leaf with its key).
pub fn in_group(model: &State, c: ClientRef, g: GroupId) -> bool {
    let Some(view) = model
        .clients
        .get(&c)
        .and_then(|x| x.groups.get(&g))
        .filter(|v| v.active)
    else {
        return false;
    };
    model
        .server(g.domain)
        .and_then(|s| s.ds.groups.get(&g))
        .and_then(|group| group.members.get(&view.leaf))
        .is_some_and(|m| m.leaf_key == view.leaf_key)
}

/// The leaf at which `c`'s view of `g` shows `target` (by the FID of its credential).
pub fn leaf_in_view(
    model: &State,
    c: ClientRef,
    g: GroupId,
    target: ClientRef,
) -> Option<phoenix_model::ids::Leaf> {
    let fid = model.clients.get(&target)?.fid;
    let view = model.clients.get(&c)?.groups.get(&g)?;
    view.members
        .values()
        .find(|m| m.credential.payload.certificate.payload.fid == fid)
        .map(|m| m.leaf)
}

/// Whether `c` has a welcome into `g` in its queue that it has not processed yet.
fn pending_welcome(model: &State, c: ClientRef, g: GroupId) -> bool {
    let Some(x) = model.clients.get(&c) else {
        return false;
    };
    model
        .server(x.fid.domain)
        .and_then(|s| s.qs.clients.get(&x.qs_id))
        .is_some_and(|r| {
            r.queue.messages.iter().any(|(seq, item)| {
                *seq >= x.next_seq
                    && matches!(item, QueueItem::Welcome { group, .. } if *group == g)
            })
        })
}

fn group_of(state: &RefState, i: u8) -> GroupId {
    let first = state.groups.first().copied();
    state
        .groups
        .get(usize::from(i))
        .copied()
        .or(first)
        .unwrap_or(GroupId {
            domain: phoenix_model::ids::DomainId(0),
            n: 0,
        })
}

/// The model's effect of a step: the state after it and the outcome to compare.
fn run_model(state: &RefState, t: &DsStep) -> (State, Outcome) {
    let m = &state.model;
    match t {
        DsStep::Send {
            client,
            group,
            sync_first,
        }
        | DsStep::Update {
            client,
            group,
            sync_first,
        } => {
            let c = client_ref(*client);
            let g = group_of(state, *group);
            let mut m = m.clone();
            if *sync_first {
                m = step(&m, &Op::Client(ClientOp::Sync { client: c })).0;
            }
            let op = if matches!(t, DsStep::Send { .. }) {
                ClientOp::Send {
                    client: c,
                    group: g,
                }
            } else {
                ClientOp::Update {
                    client: c,
                    group: g,
                }
            };
            step(&m, &Op::Client(op))
        }
        DsStep::Add {
            group,
            invitee,
            sync_first,
        } => {
            let g = group_of(state, *group);
            let mut m = m.clone();
            if *sync_first {
                m = step(
                    &m,
                    &Op::Client(ClientOp::Sync {
                        client: world::ALICE,
                    }),
                )
                .0;
            }
            let invitee = m
                .clients
                .get(&client_ref(*invitee))
                .map(|x| x.fid)
                .unwrap_or(world::fid(1));
            step(
                &m,
                &Op::Client(ClientOp::Add {
                    client: world::ALICE,
                    group: g,
                    invitee,
                }),
            )
        }
        DsStep::Remove {
            client,
            group,
            member,
            sync_first,
        } => {
            let c = client_ref(*client);
            let g = group_of(state, *group);
            let mut m = m.clone();
            if *sync_first {
                m = step(&m, &Op::Client(ClientOp::Sync { client: c })).0;
            }
            let Some(leaf) = leaf_in_view(&m, c, g, client_ref(*member)) else {
                return (m, Err(phoenix_types::error::ErrorCode::UnknownSender));
            };
            step(
                &m,
                &Op::Client(ClientOp::Remove {
                    client: c,
                    group: g,
                    leaf,
                }),
            )
        }
        DsStep::Sync { client } => step(
            m,
            &Op::Client(ClientOp::Sync {
                client: client_ref(*client),
            }),
        ),
        DsStep::Replay => step(m, &Op::Adversary(AdvOp::ReplayDs)),
        DsStep::Resync { client, group } => {
            let c = client_ref(*client);
            let g = group_of(state, *group);
            let m = step(m, &Op::Client(ClientOp::Sync { client: c })).0;
            step(
                &m,
                &Op::Client(ClientOp::Resync {
                    client: c,
                    group: g,
                }),
            )
        }
        DsStep::GroupInfo { group, right_key } => {
            let g = group_of(state, *group);
            let ear = m
                .server(g.domain)
                .and_then(|s| s.ds.groups.get(&g))
                .map(|x| x.ear)
                .unwrap_or(KeyId(0));
            let ear = if *right_key { ear } else { KeyId(1) };
            step(
                m,
                &Op::Call {
                    to: g.domain,
                    call: Call::Ds(DsCall::ExternalCommitInfo { group: g, ear }),
                },
            )
        }
        DsStep::PeekQueue { client, max } => {
            let c = client_ref(*client);
            let Some(x) = m.clients.get(&c) else {
                return (
                    m.clone(),
                    Err(phoenix_types::error::ErrorCode::UnknownClient),
                );
            };
            let start = m
                .server(x.fid.domain)
                .and_then(|s| s.qs.clients.get(&x.qs_id))
                .map(|r| r.queue.deleted_below)
                .unwrap_or(0);
            step(
                m,
                &Op::Call {
                    to: x.fid.domain,
                    call: Call::Qs(QsCall::Dequeue {
                        signer: QsSigner::Client {
                            id: x.qs_id,
                            key: x.qs_key,
                        },
                        fresh: true,
                        start,
                        max: *max,
                    }),
                },
            )
        }
    }
}

/// The application messages `client` accepted, in the order it processed them.
pub(crate) fn accepted_messages(model: &State, client: ClientRef) -> Vec<MsgId> {
    let Some(c) = model.clients.get(&client) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (_, item) in c.received.iter() {
        if let QueueItem::Application { msg, .. } = item {
            let accepted = model
                .ghost
                .accepted
                .iter()
                .any(|a| a.receiver == client && a.msg == *msg);
            if accepted && !out.contains(msg) {
                out.push(*msg);
            }
        }
    }
    out
}

/// After a suite's setup: `client` (FID `fid`, state in `home`) processes what is left in
/// its queue, which must hold no error; then its identity as its store holds it (queue id
/// and key, next sequence number).
pub(crate) async fn settled_identity(
    client: &mut Client,
    home: &TempDir,
    fid: &str,
) -> Result<phoenix_client::store::Identity, HarnessError> {
    let events = client.sync().await.map_err(setup("sync"))?;
    if events.iter().any(|e| e["kind"] == "error") {
        return Err(HarnessError::Setup(format!("{fid}: {events:?}")));
    }
    let store = phoenix_client::store::Store::open(home.path())
        .await
        .map_err(setup("store"))?;
    store
        .identity()
        .await
        .map_err(setup("identity"))?
        .ok_or_else(|| HarnessError::Setup("no identity".into()))
}

/// The messages `client` reports at a sync, after the `from` it reported before, as the
/// model has it: (sender's FID, text), in order.
pub(crate) fn expected_messages(
    model: &State,
    client: ClientRef,
    from: usize,
    names: &Names,
) -> Vec<(String, String)> {
    accepted_messages(model, client)
        .into_iter()
        .skip(from)
        .map(|msg| {
            let sender = model
                .ghost
                .sent
                .get(&msg)
                .map(|s| names.fid(s.sender))
                .unwrap_or_default();
            (sender, format!("m{}", msg.0))
        })
        .collect()
}

/// Sync `client` (whose FID is `fid`): the verified messages it reports, as (sender's FID,
/// text). An unverified message or an error event is a mismatch: the model's clients
/// accept only what verifies.
pub(crate) async fn sync_messages(
    client: &mut Client,
    fid: &str,
) -> Result<Vec<(String, String)>, HarnessError> {
    let events = client
        .sync()
        .await
        .map_err(|e| HarnessError::Mismatch(format!("sync failed: {e}")))?;
    let mut received = Vec::new();
    for e in &events {
        match e["kind"].as_str() {
            Some("message") if e["verified"] == true => received.push((
                e["sender"].as_str().unwrap_or_default().to_owned(),
                e["text"].as_str().unwrap_or_default().to_owned(),
            )),
            Some("message") | Some("error") => {
                return Err(HarnessError::Mismatch(format!("{fid} reports {e}")));
            }
            _ => {}
        }
    }
    Ok(received)
}

/// The kind of a queue item, as the server's payload shows it.
pub(crate) fn kind(item: &QueueItem) -> &'static str {
    match item {
        QueueItem::Opaque(_) => "opaque",
        QueueItem::Commit { .. } => "commit",
        QueueItem::Application { .. } => "application",
        QueueItem::Welcome { .. } => "welcome",
    }
}

/// One client of the case: the library client, its home, and what the harness needs to
/// read its queue raw.
struct Member {
    client: Client,
    /// Kept for the client's lifetime (its state directory).
    #[allow(dead_code)]
    home: TempDir,
    fid: String,
    qs_id: [u8; 16],
    qs_key: ed25519_dalek::SigningKey,
    /// The server's sequence number that the model's 0 stands for.
    base: u64,
    /// Opens the sealed entries of its queue.
    cursor: crate::queue_cursor::QueueCursor,
}

/// The server under test for one case of the DS suite.
pub struct DsSut {
    api: Api,
    /// The server's URL, for the adversary's requests.
    server: String,
    /// The clients reach the server through it; it records their requests.
    proxy: RecordingProxy,
    names: Names,
    members: Vec<Member>,
}

impl std::fmt::Debug for DsSut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsSut")
            .field("prefix", &self.names.prefix)
            .finish_non_exhaustive()
    }
}

fn setup(what: &str) -> impl Fn(ClientError) -> HarnessError + '_ {
    move |e| HarnessError::Setup(format!("{what}: {e}"))
}

impl DsSut {
    pub async fn new(target: &Target) -> Result<Self, HarnessError> {
        let api = Api::new(&target.url).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let proxy = RecordingProxy::start(&target.url).await?;
        let names = Names::new(&target.domain);
        let mut clients = Vec::new();
        for c in CLIENTS {
            let home = tempfile::tempdir().map_err(|e| HarnessError::Setup(e.to_string()))?;
            let mut client = Client::open(home.path()).await.map_err(setup("open"))?;
            if !target.resolve.is_empty() {
                client
                    .add_resolve(&target.resolve)
                    .await
                    .map_err(setup("resolve"))?;
            }
            let fid = names.fid(world::fid(c.0));
            client
                .register(&fid, &proxy.url)
                .await
                .map_err(setup("register"))?;
            clients.push((client, home, fid));
        }
        let [(mut alice, ah, af), (mut bob, bh, bf), (mut carol, ch, cf)] =
            <[_; 3]>::try_from(clients).map_err(|_| HarnessError::Setup("three clients".into()))?;
        for (other, other_fid) in [(&mut bob, &bf), (&mut carol, &cf)] {
            alice.connect(other_fid).await.map_err(setup("connect"))?;
            other.requests().await.map_err(setup("requests"))?;
            other.accept(&af).await.map_err(setup("accept"))?;
            alice.sync().await.map_err(setup("sync"))?;
        }
        alice
            .create_group(GROUPS[0])
            .await
            .map_err(setup("create g1"))?;
        alice
            .invite(GROUPS[0], &bf)
            .await
            .map_err(setup("invite bob"))?;
        bob.sync().await.map_err(setup("sync"))?;
        alice
            .invite(GROUPS[0], &cf)
            .await
            .map_err(setup("invite carol"))?;
        carol.sync().await.map_err(setup("sync"))?;
        alice
            .create_group(GROUPS[1])
            .await
            .map_err(setup("create g2"))?;
        alice
            .invite(GROUPS[1], &bf)
            .await
            .map_err(setup("invite bob"))?;
        let mut members = Vec::new();
        for (mut client, home, fid) in [(alice, ah, af), (bob, bh, bf), (carol, ch, cf)] {
            let id = settled_identity(&mut client, &home, &fid).await?;
            let cursor =
                crate::queue_cursor::QueueCursor::of_client(&id, home.path().to_path_buf())?;
            members.push(Member {
                client,
                home,
                fid,
                qs_id: id.qs_client_id,
                qs_key: ed25519_dalek::SigningKey::from_bytes(&id.qs_client_key),
                base: id.qs_next_seq,
                cursor,
            });
        }
        let sut = Self {
            api,
            server: target.url.clone(),
            proxy,
            names,
            members,
        };
        // Everything processed is acknowledged: the queues restart at the model's 0.
        for i in 0..sut.members.len() {
            sut.dequeue(i, 0, 0).await?;
        }
        Ok(sut)
    }

    /// Send the last DS request the server accepted from a client again, as it was. As in
    /// the model, requests for a group id or a group's info do not count.
    async fn replay(&self) -> Result<Observed, HarnessError> {
        let last = self.proxy.last_accepted(|path| {
            path.strip_prefix("/phoenix/v1/ds/").is_some_and(|op| {
                op != ds_msg::REQUEST_GROUP_ID && op != ds_msg::EXTERNAL_COMMIT_INFO
            })
        });
        match last {
            Some(x) => proxy::post_raw(&self.server, &x.path, x.body).await,
            None => Ok(Observed::Error(
                phoenix_types::error::ErrorCode::NotFound
                    .as_str()
                    .to_owned(),
            )),
        }
    }

    fn member(&mut self, i: u8) -> Result<&mut Member, HarnessError> {
        self.members
            .get_mut(usize::from(i))
            .ok_or_else(|| HarnessError::Setup(format!("no client {i}")))
    }

    /// A raw dequeue of client `i`'s queue from the model's `start` (relative).
    async fn dequeue(
        &self,
        i: usize,
        start: u64,
        max: u16,
    ) -> Result<DequeueResponse, HarnessError> {
        let m = self
            .members
            .get(i)
            .ok_or_else(|| HarnessError::Setup(format!("no client {i}")))?;
        self.api
            .call(
                "qs",
                qs::DEQUEUE,
                &DequeueRequest {
                    timestamp: phoenix_client::client::now(),
                    sequence_number_start: m.base.saturating_add(start),
                    max,
                },
                Signer::QsClient {
                    id: m.qs_id,
                    key: &m.qs_key,
                },
            )
            .await
            .map_err(|e| HarnessError::Mismatch(format!("dequeue of {}: {e}", m.fid)))
    }

    /// Client `i`'s queue as (relative number, kind), and what remains.
    async fn queue(&self, i: usize, start: u64, max: u16) -> Result<Observed, HarnessError> {
        let member = self
            .members
            .get(i)
            .ok_or_else(|| HarnessError::Setup(format!("no client {i}")))?;
        let resp = self.dequeue(i, start, max).await?;
        let payloads = member.cursor.open_all(&resp.messages).await?;
        let mut messages = Vec::new();
        for (m, payload) in resp.messages.iter().zip(&payloads) {
            let kind = payload_kind(payload)?;
            messages.push((
                m.sequence_number.saturating_sub(member.base),
                kind.to_owned(),
            ));
        }
        Ok(Observed::Queue {
            items: messages,
            remaining: resp.remaining,
        })
    }

    async fn group_info(&self, group: u8, right_key: bool) -> Result<Observed, HarnessError> {
        let name = GROUPS.get(usize::from(group)).copied().unwrap_or("g1");
        let alice = self
            .members
            .first()
            .ok_or_else(|| HarnessError::Setup("no alice".into()))?;
        group_info_of(&self.api, &alice.client, name, right_key).await
    }
}

/// The epoch and member count of group `name` (as `client` knows it) that the DS at `api`
/// shows, asked with the group's EAR key or a wrong one.
pub(crate) async fn group_info_of(
    api: &Api,
    client: &Client,
    name: &str,
    right_key: bool,
) -> Result<Observed, HarnessError> {
    let record = client
        .group(name)
        .await
        .map_err(|e| HarnessError::Setup(e.to_string()))?;
    let mut ear = record.ear_key;
    if !right_key {
        ear[0] ^= 1;
    }
    let r = api
        .call::<_, ds_msg::ExternalCommitInfoResponse>(
            "ds",
            ds_msg::EXTERNAL_COMMIT_INFO,
            &ds_msg::ExternalCommitInfoRequest {
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: ear,
            },
            Signer::Anonymous,
        )
        .await;
    match r {
        Err(ClientError::Server(e)) => Ok(Observed::Error(e.code.as_str().to_owned())),
        Err(e) => Err(HarnessError::Transport(e.to_string())),
        Ok(resp) => {
            let message = MlsMessageIn::tls_deserialize_exact(resp.group_info.as_slice())
                .map_err(|e| HarnessError::Mismatch(format!("group info: {e}")))?;
            let MlsMessageBodyIn::GroupInfo(info) = message.extract() else {
                return Err(HarnessError::Mismatch("group info is no group info".into()));
            };
            Ok(Observed::GroupInfo {
                epoch: info.group_context().epoch().as_u64(),
                members: resp.credentials.len(),
            })
        }
    }
}

/// The kind of a queued payload as the server stores it: a welcome, or the MLS content
/// type of a group message.
pub(crate) fn payload_kind(payload: &[u8]) -> Result<&'static str, HarnessError> {
    let payload: QueuePayload = codec::decode(payload, 4 * 1024 * 1024)
        .map_err(|e| HarnessError::Mismatch(format!("queue payload: {}", e.detail)))?;
    Ok(match payload {
        QueuePayload::Welcome(_) => "welcome",
        QueuePayload::GroupMessage(g) => {
            let message = MlsMessageIn::tls_deserialize_exact(g.message.as_slice())
                .map_err(|e| HarnessError::Mismatch(format!("queued MLS message: {e}")))?;
            let protocol: ProtocolMessage = message
                .try_into_protocol_message()
                .map_err(|e| HarnessError::Mismatch(format!("queued MLS message: {e}")))?;
            match protocol.content_type() {
                ContentType::Commit => "commit",
                ContentType::Application => "application",
                ContentType::Proposal => "proposal",
            }
        }
    })
}

impl DsSut {
    /// Every client's queue on the server equals the model's (numbers and kinds), read
    /// from the model's low mark without deleting anything.
    async fn check_queues(&self, model: &State) -> Result<(), HarnessError> {
        for (i, c) in CLIENTS.iter().enumerate() {
            let Some(x) = model.clients.get(c) else {
                continue;
            };
            let Some(record) = model
                .server(x.fid.domain)
                .and_then(|s| s.qs.clients.get(&x.qs_id))
            else {
                continue;
            };
            let q = &record.queue;
            let expected = Observed::Queue {
                items: q
                    .messages
                    .iter()
                    .map(|(s, item)| (*s, kind(item).to_owned()))
                    .collect(),
                remaining: 0,
            };
            let actual = self.queue(i, q.deleted_below, 500).await?;
            if actual != expected {
                return Err(HarnessError::Mismatch(format!(
                    "invariant queues_well_formed (projected): the queue of {} holds {actual:?}, the model {expected:?}",
                    self.members.get(i).map_or("?", |m| m.fid.as_str())
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn client_outcome(r: Result<(), ClientError>) -> Result<Observed, HarnessError> {
    match r {
        Ok(()) => Ok(Observed::Empty),
        Err(ClientError::Server(e)) => Ok(Observed::Error(e.code.as_str().to_owned())),
        Err(e) => Err(HarnessError::Mismatch(format!(
            "the client library failed: {e}"
        ))),
    }
}

/// The requirements a step exercises.
fn requirements(t: &DsStep, outcome: &Outcome) -> Vec<&'static str> {
    let stale = outcome == &Err(phoenix_types::error::ErrorCode::WrongEpoch);
    match t {
        DsStep::Send { .. } if stale => vec!["DS-EPOCH-2"],
        DsStep::Send { .. } => vec!["DS-SEND-1", "DS-FAN-1", "DS-AUTH-1"],
        DsStep::Update { .. } if stale => vec!["DS-EPOCH-1"],
        DsStep::Update { .. } => vec!["DS-COMMIT-1", "DS-FAN-1", "DS-AUTH-1"],
        DsStep::Add { .. } | DsStep::Remove { .. } if stale => vec!["DS-EPOCH-1"],
        DsStep::Add { .. } => vec!["DS-ADD-1", "QS-KP-3", "DS-COMMIT-1", "DS-FAN-1"],
        DsStep::Remove { .. } => vec!["DS-COMMIT-1", "DS-FAN-1", "DS-FAN-2", "DS-AUTH-1"],
        DsStep::Sync { .. } => vec!["QS-Q-2", "ID-CHAIN-1", "ID-CHAIN-3", "DS-FAN-2"],
        DsStep::GroupInfo {
            right_key: false, ..
        } => vec!["DS-EAR-1"],
        DsStep::GroupInfo { .. } => vec!["DS-INFO-1"],
        DsStep::PeekQueue { .. } => {
            vec!["QS-DEQ-1", "QS-DEQ-2", "QS-DEQ-3", "QS-Q-1", "QS-ENC-1"]
        }
        DsStep::Replay if outcome == &Err(phoenix_types::error::ErrorCode::Replayed) => {
            vec!["ADV-REPLAY-1", "ADV-REPLAY-2", "ADV-REPLAY-3"]
        }
        DsStep::Replay => vec!["ADV-REPLAY-1"],
        DsStep::Resync { .. } => vec![
            "DS-RESYNC-1",
            "DS-RESYNC-2",
            "DS-RESYNC-3",
            "DS-COMMIT-1",
            "DS-FAN-1",
        ],
    }
}

/// The DS suite for the runner.
#[derive(Debug)]
pub struct Ds;

impl Ds {
    pub const NAME_STR: &'static str = "ds";
}

impl crate::runner::Suite for Ds {
    const NAME: &'static str = Self::NAME_STR;
    type Machine = DsMachine;
    type Sut = DsSut;

    fn model(state: &RefState) -> &State {
        &state.model
    }

    async fn start(target: &Target, _init: &RefState) -> Result<DsSut, HarnessError> {
        DsSut::new(target).await
    }

    async fn step(
        sut: &mut DsSut,
        before: &RefState,
        after: &RefState,
        t: &DsStep,
    ) -> Result<Vec<&'static str>, StepFailure> {
        let (_, outcome) = run_model(before, t);
        let requirements = requirements(t, &outcome);
        let fail = |error| StepFailure {
            requirements: requirements.clone(),
            error,
        };
        let (expected, actual) = match t {
            DsStep::Send {
                client,
                group,
                sync_first,
            } => {
                let sent: Vec<MsgId> = after
                    .model
                    .ghost
                    .sent
                    .keys()
                    .filter(|m| !before.model.ghost.sent.contains_key(m))
                    .copied()
                    .collect();
                let text = sent
                    .first()
                    .map_or("stale".to_owned(), |m| format!("m{}", m.0));
                let name = GROUPS.get(usize::from(*group)).copied().unwrap_or("g1");
                let m = sut.member(*client).map_err(fail)?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.send(name, &text).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            DsStep::Update {
                client,
                group,
                sync_first,
            } => {
                let name = GROUPS.get(usize::from(*group)).copied().unwrap_or("g1");
                let m = sut.member(*client).map_err(fail)?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.update(name).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            DsStep::Add {
                group,
                invitee,
                sync_first,
            } => {
                let name = GROUPS.get(usize::from(*group)).copied().unwrap_or("g1");
                let fid = sut
                    .members
                    .get(usize::from(*invitee))
                    .map(|m| m.fid.clone())
                    .unwrap_or_default();
                let m = sut.member(0).map_err(fail)?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.invite(name, &fid).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            DsStep::Remove {
                client,
                group,
                member,
                sync_first,
            } => {
                let name = GROUPS.get(usize::from(*group)).copied().unwrap_or("g1");
                let fid = sut
                    .members
                    .get(usize::from(*member))
                    .map(|m| m.fid.clone())
                    .unwrap_or_default();
                let m = sut.member(*client).map_err(fail)?;
                m.client.set_sync_before_commit(*sync_first);
                let r = m.client.remove(name, &fid).await;
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            DsStep::Sync { client } => {
                let from = before
                    .reported
                    .get(usize::from(*client))
                    .copied()
                    .unwrap_or(0);
                let expected =
                    expected_messages(&after.model, client_ref(*client), from, &sut.names);
                let m = sut.member(*client).map_err(fail)?;
                let received = sync_messages(&mut m.client, &m.fid).await.map_err(fail)?;
                (
                    Observed::Messages { received: expected },
                    Observed::Messages { received },
                )
            }
            DsStep::Resync { client, group } => {
                let name = GROUPS.get(usize::from(*group)).copied().unwrap_or("g1");
                let m = sut.member(*client).map_err(fail)?;
                m.client.set_sync_before_commit(true);
                let r = m.client.resync(name).await.map(|_| ());
                (
                    observed::expected(&outcome),
                    client_outcome(r).map_err(fail)?,
                )
            }
            DsStep::GroupInfo { group, right_key } => (
                observed::expected(&outcome),
                sut.group_info(*group, *right_key).await.map_err(fail)?,
            ),
            DsStep::Replay => (
                observed::expected(&outcome),
                sut.replay().await.map_err(fail)?,
            ),
            DsStep::PeekQueue { client, max } => {
                let expected = match &outcome {
                    Ok(phoenix_model::call::Reply::Dequeued {
                        messages,
                        remaining,
                    }) => Observed::Queue {
                        items: messages
                            .iter()
                            .map(|(s, i)| (*s, kind(i).to_owned()))
                            .collect(),
                        remaining: *remaining,
                    },
                    other => observed::expected(other),
                };
                let c = client_ref(*client);
                let start = before
                    .model
                    .clients
                    .get(&c)
                    .and_then(|x| {
                        before
                            .model
                            .server(x.fid.domain)
                            .and_then(|s| s.qs.clients.get(&x.qs_id))
                    })
                    .map_or(0, |r| r.queue.deleted_below);
                (
                    expected,
                    sut.queue(usize::from(*client), start, *max)
                        .await
                        .map_err(fail)?,
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
                requirements: vec!["QS-Q-1", "DS-FAN-1"],
                error: e,
            })?;
        Ok(requirements)
    }

    async fn finish(sut: &mut DsSut, state: &RefState) -> Result<(), HarnessError> {
        sut.check_queues(&state.model).await?;
        for (i, g) in state.groups.iter().enumerate() {
            let Some(group) = state
                .model
                .server(g.domain)
                .and_then(|s| s.ds.groups.get(g))
            else {
                continue;
            };
            let expected = Observed::GroupInfo {
                epoch: group.epoch,
                members: group.members.len(),
            };
            let actual = sut.group_info(i as u8, true).await?;
            if actual != expected {
                return Err(HarnessError::Mismatch(format!(
                    "group {}: the server shows {actual:?}, the model {expected:?}",
                    GROUPS.get(i).copied().unwrap_or("?")
                )));
            }
        }
        Ok(())
    }
}
