//! The AS/QS suite: registration, connection packages, direct queues, QS user records,
//! key packages and QS dequeue, as raw signed requests, including adversarial ones (wrong
//! owners, unknown clients, stale timestamps, bad packages, drained pools, duplicate
//! friendship tokens).
//!
//! The reference state machine is the model ([`phoenix_model::state::step`] on
//! [`Op::Call`]); transitions are generated from its state. The system under test is the
//! server at a [`Target`], reached through [`phoenix_client::api::Api`], which signs
//! envelopes with the keys [`Names`] derives.

use std::collections::BTreeMap;

use openmls::prelude::{Extension, Extensions, KeyPackage, UnknownExtension};
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use tls_codec::{Serialize as _, VLBytes};

use phoenix_client::ClientError;
use phoenix_client::api::{Api, Signer};
use phoenix_client::mls::{self, CIPHERSUITE, Provider};
use phoenix_model::adversary::AdvOp;
use phoenix_model::call::{
    AsCall, AsSigner, Call, ConnectionPackageArg, KeyPackageArg, Outcome, PackageDefect, PushArg,
    QsCall, QsSigner, Reply,
};
use phoenix_model::ids::{ClientName, DomainId, Fid, FidArg, KeyId, MsgId, PkgId, QsCid, Token};
use phoenix_model::state::{Config, Op, State, step};
use phoenix_types::certs;
use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info, label};
use phoenix_types::ids::{ClientId, QsId};
use phoenix_types::messages::as_::{self, ConnectionPackage, ConnectionPackagePayload};
use phoenix_types::messages::qs::{
    self, AddPackage, QUEUE_CONFIG_EXTENSION_TYPE, QueueConfig, SealedQueueConfig,
};
use phoenix_types::messages::{DequeueRequest, DequeueResponse, Empty};

use crate::HarnessError;
use crate::names::Names;
use crate::observed::{self, Observed};
use crate::proxy::{self, RecordingProxy};
use crate::target::Target;

/// The model's state plus a counter for fresh names.
#[derive(Debug, Clone)]
pub struct RefState {
    pub model: State,
    pub next: u32,
}

/// The model as a proptest reference state machine: a transition is one raw call.
#[derive(Debug)]
pub struct AsQsMachine;

/// The domain of the server under test in the model.
pub const HOME: DomainId = DomainId(0);

impl ReferenceStateMachine for AsQsMachine {
    type State = RefState;
    type Transition = Call;

    fn init_state() -> BoxedStrategy<RefState> {
        Just(RefState {
            model: State::new(Config::default(), 1),
            next: 100,
        })
        .boxed()
    }

    fn transitions(state: &RefState) -> BoxedStrategy<Call> {
        transitions(state)
    }

    fn apply(state: RefState, call: &Call) -> RefState {
        let (model, _) = step(
            &state.model,
            &Op::Call {
                to: HOME,
                call: call.clone(),
            },
        );
        RefState {
            model,
            next: state.next.saturating_add(16),
        }
    }
}

/// What the model state offers to pick from.
#[derive(Debug, Clone, Default)]
struct Pool {
    /// Registered clients: (fid, client, key).
    as_clients: Vec<(Fid, ClientName, KeyId)>,
    /// Direct queues: (fid, client) → (deleted_below, next_seq).
    queues: BTreeMap<(Fid, ClientName), (u64, u64)>,
    /// QS client records: (id, key, queue bounds).
    qs_clients: Vec<(QsCid, KeyId, u64, u64)>,
    /// Users with connection packages.
    with_packages: Vec<Fid>,
    /// Friendship tokens of QS users.
    tokens: Vec<Token>,
}

fn pool(state: &RefState) -> Pool {
    let mut p = Pool::default();
    if let Some(server) = state.model.server(HOME) {
        for (fid, user) in server.as_.users.iter() {
            for (name, client) in user.clients.iter() {
                p.as_clients
                    .push((*fid, *name, client.certificate.payload.key));
                p.queues.insert(
                    (*fid, *name),
                    (
                        client.direct_queue.deleted_below,
                        client.direct_queue.next_seq,
                    ),
                );
            }
        }
        for package in server.as_.packages.iter() {
            if !p.with_packages.contains(&package.fid) {
                p.with_packages.push(package.fid);
            }
        }
        for user in server.qs.users.values() {
            p.tokens.push(user.token);
        }
        for (id, client) in server.qs.clients.iter() {
            p.qs_clients.push((
                *id,
                client.auth_key,
                client.queue.deleted_below,
                client.queue.next_seq,
            ));
        }
    }
    p
}

fn pick<T: Clone>(items: &[T], i: usize) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        items.get(i % items.len()).cloned()
    }
}

/// A user of the home domain among the first few (so that some registrations collide).
fn local_fid(local: u8) -> Fid {
    Fid {
        local: local % 6,
        domain: HOME,
    }
}

/// Who signs an AS request: mostly a registered client with its key; sometimes a stranger's
/// key, an unknown client, a malformed FID, or nobody.
fn as_signer(p: &Pool, fresh: u32) -> BoxedStrategy<AsSigner> {
    let clients = p.as_clients.clone();
    prop_oneof![
        16 => any::<usize>().prop_map(move |i| match pick(&clients, i) {
            Some((fid, client, key)) => AsSigner::Client { fid: FidArg::Valid(fid), client, key },
            None => AsSigner::Anonymous,
        }),
        1 => any::<usize>().prop_map({
            let clients = p.as_clients.clone();
            move |i| match pick(&clients, i) {
                Some((fid, client, _)) => AsSigner::Client { fid: FidArg::Valid(fid), client, key: KeyId(fresh) },
                None => AsSigner::Anonymous,
            }
        }),
        1 => (0u8..8).prop_map(move |l| AsSigner::Client {
            fid: FidArg::Valid(local_fid(l)),
            client: ClientName(7),
            key: KeyId(fresh.saturating_add(1)),
        }),
        1 => Just(AsSigner::Client { fid: FidArg::Malformed, client: ClientName(0), key: KeyId(fresh) }),
        1 => Just(AsSigner::Anonymous),
    ]
    .boxed()
}

fn qs_signer(p: &Pool, fresh: u32) -> BoxedStrategy<QsSigner> {
    let clients = p.qs_clients.clone();
    let others = p.qs_clients.clone();
    prop_oneof![
        16 => any::<usize>().prop_map(move |i| match pick(&clients, i) {
            Some((id, key, _, _)) => QsSigner::Client { id, key },
            None => QsSigner::Anonymous,
        }),
        1 => any::<usize>().prop_map(move |i| match pick(&others, i) {
            Some((id, _, _, _)) => QsSigner::Client { id, key: KeyId(fresh) },
            None => QsSigner::Anonymous,
        }),
        1 => Just(QsSigner::Client { id: QsCid(900), key: KeyId(fresh) }),
        1 => Just(QsSigner::Anonymous),
    ]
    .boxed()
}

/// Which FID a lookup names.
fn fid_arg(p: &Pool) -> BoxedStrategy<FidArg> {
    let clients = p.as_clients.clone();
    let with_packages = p.with_packages.clone();
    prop_oneof![
        12 => any::<usize>().prop_map(move |i| match pick(&with_packages, i) {
            Some(fid) => FidArg::Valid(fid),
            None => FidArg::Valid(local_fid(0)),
        }),
        6 => any::<usize>().prop_map(move |i| match pick(&clients, i) {
            Some((fid, _, _)) => FidArg::Valid(fid),
            None => FidArg::Valid(local_fid(0)),
        }),
        2 => (0u8..8).prop_map(|l| FidArg::Valid(local_fid(l))),
        1 => (0u8..8).prop_map(|l| FidArg::Valid(Fid { local: l, domain: DomainId(1) })),
        1 => Just(FidArg::Malformed),
    ]
    .boxed()
}

/// 1 to 4 packages; usually exactly one last-resort; rarely a defective one.
fn cp_args(fresh: u32) -> BoxedStrategy<Vec<ConnectionPackageArg>> {
    (
        0usize..4,
        prop_oneof![8 => Just(None), 1 => Just(Some(0usize)), 1 => Just(Some(2usize))],
        prop_oneof![
            30 => Just(PackageDefect::None),
            1 => Just(PackageDefect::BadSignature),
            1 => Just(PackageDefect::NamesAnotherClient),
            1 => Just(PackageDefect::Expired),
        ],
    )
        .prop_map(move |(one_time, last_resort, defect)| {
            let lr = last_resort.unwrap_or(1);
            let mut out = Vec::new();
            for i in 0..one_time.saturating_add(lr) {
                let n = u32::try_from(i).unwrap_or(0);
                out.push(ConnectionPackageArg {
                    id: PkgId(fresh.saturating_add(n)),
                    last_resort: i >= one_time,
                    defect: if i == 0 { defect } else { PackageDefect::None },
                });
            }
            out
        })
        .boxed()
}

fn kp_args(p: &Pool, signer: &QsSigner, fresh: u32) -> BoxedStrategy<Vec<KeyPackageArg>> {
    let own = match signer {
        QsSigner::Client { id, .. } => *id,
        QsSigner::Anonymous => QsCid(900),
    };
    let others: Vec<QsCid> = p.qs_clients.iter().map(|(id, ..)| *id).collect();
    (
        0usize..4,
        prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)],
        prop_oneof![12 => Just(None), 1 => any::<usize>().prop_map(Some)],
    )
        .prop_map(move |(one_time, last_resort, foreign)| {
            let mut out = Vec::new();
            for i in 0..one_time.saturating_add(last_resort) {
                let n = u32::try_from(i).unwrap_or(0);
                let queue_of = match (i, foreign) {
                    (0, Some(j)) => pick(&others, j).unwrap_or(QsCid(901)),
                    _ => own,
                };
                out.push(KeyPackageArg {
                    id: PkgId(fresh.saturating_add(n)),
                    last_resort: i >= one_time,
                    leaf_key: KeyId(fresh.saturating_add(n)),
                    queue_of,
                    client_info: None,
                });
            }
            out
        })
        .boxed()
}

/// A dequeue start around the queue's live range, and a small batch size.
fn dequeue_window(p: &Pool, signer: &AsSigner) -> BoxedStrategy<(u64, u16)> {
    let (low, high) = match signer {
        AsSigner::Client {
            fid: FidArg::Valid(fid),
            client,
            ..
        } => p.queues.get(&(*fid, *client)).copied().unwrap_or((0, 0)),
        _ => (0, 0),
    };
    window(low, high)
}

fn window(low: u64, high: u64) -> BoxedStrategy<(u64, u16)> {
    (
        prop_oneof![
            6 => Just(low),
            3 => low..=high.saturating_add(1),
            1 => Just(low.saturating_sub(1)),
            1 => Just(high.saturating_add(3)),
        ],
        prop_oneof![8 => 1u16..5, 1 => Just(0u16), 1 => Just(100u16)],
    )
        .boxed()
}

fn transitions(state: &RefState) -> BoxedStrategy<Call> {
    let p = pool(state);
    let fresh = state.next;
    let register = (
        0u8..8,
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.95),
    )
        .prop_map(move |(local, home, csr_valid)| {
            let fid = Fid {
                local: local % 6,
                domain: if home { HOME } else { DomainId(1) },
            };
            Call::As(AsCall::Register {
                fid,
                client: ClientName(0),
                key: KeyId(fresh),
                csr_valid,
            })
        });
    let publish_cp = (
        as_signer(&p, fresh),
        prop::bool::weighted(0.95),
        cp_args(fresh.saturating_add(4)),
    )
        .prop_map(|(signer, fresh, packages)| {
            Call::As(AsCall::PublishConnectionPackages {
                signer,
                fresh,
                packages,
            })
        });
    let fetch_cp = fid_arg(&p).prop_map(|fid| Call::As(AsCall::FetchConnectionPackage { fid }));
    let targets = p.as_clients.clone();
    let enqueue = (
        prop_oneof![
            10 => any::<usize>().prop_map(move |i| match pick(&targets, i) {
                Some((fid, client, _)) => (FidArg::Valid(fid), client),
                None => (FidArg::Valid(local_fid(0)), ClientName(0)),
            }),
            1 => (0u8..8).prop_map(|l| (FidArg::Valid(local_fid(l)), ClientName(5))),
            1 => Just((FidArg::Malformed, ClientName(0))),
        ],
        0u32..4,
    )
        .prop_map(move |((fid, client), n)| {
            Call::As(AsCall::EnqueueConnection {
                fid,
                client,
                msg: MsgId(fresh.saturating_add(n)),
            })
        });
    let pool_for_dequeue = p.clone();
    let dequeue =
        (as_signer(&p, fresh), prop::bool::weighted(0.95)).prop_flat_map(move |(signer, fresh)| {
            dequeue_window(&pool_for_dequeue, &signer).prop_map(move |(start, max)| {
                Call::As(AsCall::DequeueConnection {
                    signer: signer.clone(),
                    fresh,
                    start,
                    max,
                })
            })
        });
    let certificates = fid_arg(&p).prop_map(|fid| Call::As(AsCall::ClientCertificates { fid }));
    // Requirement: AS-TOKEN-1, AS-TOKEN-2 (0 and 17 are malformed; 16 at a time reach the
    // allowance within a case)
    let issue_tokens = (
        as_signer(&p, fresh),
        prop::bool::weighted(0.95),
        prop_oneof![6 => 1u8..5, 2 => Just(16u8), 1 => Just(0u8), 1 => Just(17u8)],
    )
        .prop_map(move |(signer, fresh_ts, count)| {
            Call::As(AsCall::IssueGroupTokens {
                signer,
                fresh: fresh_ts,
                count,
                blinded: KeyId(fresh.saturating_add(7)),
            })
        });
    let create_user = (0u8..8).prop_map(move |t| {
        Call::Qs(QsCall::CreateUser {
            user_key: KeyId(fresh.saturating_add(1)),
            token: Token(t),
            client_key: KeyId(fresh.saturating_add(2)),
        })
    });
    let pool_for_kp = p.clone();
    let publish_kp = (qs_signer(&p, fresh), prop::bool::weighted(0.95)).prop_flat_map(
        move |(signer, fresh_ts)| {
            kp_args(&pool_for_kp, &signer, fresh.saturating_add(4)).prop_map(move |packages| {
                Call::Qs(QsCall::PublishKeyPackages {
                    signer: signer.clone(),
                    fresh: fresh_ts,
                    packages,
                })
            })
        },
    );
    let tokens = p.tokens.clone();
    let fetch_kp = prop_oneof![
        4 => any::<usize>().prop_map(move |i| pick(&tokens, i).unwrap_or(Token(0))),
        1 => (0u8..8).prop_map(Token),
    ]
    .prop_map(|token| Call::Qs(QsCall::FetchKeyPackages { token }));
    let pool_for_qs_dequeue = p.clone();
    let qs_dequeue =
        (qs_signer(&p, fresh), prop::bool::weighted(0.95)).prop_flat_map(move |(signer, fresh)| {
            let (low, high) = match &signer {
                QsSigner::Client { id, .. } => pool_for_qs_dequeue
                    .qs_clients
                    .iter()
                    .find(|(c, ..)| c == id)
                    .map(|(_, _, l, h)| (*l, *h))
                    .unwrap_or((0, 0)),
                QsSigner::Anonymous => (0, 0),
            };
            window(low, high).prop_map(move |(start, max)| {
                Call::Qs(QsCall::Dequeue {
                    signer: signer.clone(),
                    fresh,
                    start,
                    max,
                })
            })
        });
    // The signer of a signed QS request and whether it is fresh (mostly).
    let signed_qs = || (qs_signer(&p, fresh), prop::bool::weighted(0.9));
    // Requirement: QS-ENC-4
    let qs_rekey = signed_qs().prop_map(move |(signer, is_fresh)| {
        Call::Qs(QsCall::RekeyQueue {
            signer,
            fresh: is_fresh,
            queue_key: KeyId(fresh),
        })
    });
    // Requirement: QS-PUSH-1
    let qs_push = (
        signed_qs(),
        prop::option::weighted(0.8, prop::bool::weighted(0.8)),
    )
        .prop_map(move |((signer, is_fresh), endpoint)| {
            Call::Qs(QsCall::SetPushEndpoint {
                signer,
                fresh: is_fresh,
                endpoint: endpoint.map(|https| PushArg {
                    subscription: KeyId(fresh),
                    https,
                }),
                request: fresh,
            })
        });
    // Requirement: QS-REC-1
    let qs_delete = signed_qs().prop_map(move |(signer, is_fresh)| {
        Call::Qs(QsCall::DeleteClient {
            signer,
            fresh: is_fresh,
            request: fresh,
        })
    });
    // Requirement: QS-LISTEN-1, QS-LISTEN-2
    // A listen stream always names a client record (there is no anonymous stream): an
    // anonymous signer stands for an unknown record.
    let pool_for_qs_listen = p.clone();
    let qs_listen = qs_signer(&p, fresh).prop_flat_map(move |signer| {
        let signer = match signer {
            QsSigner::Anonymous => QsSigner::Client {
                id: QsCid(900),
                key: KeyId(fresh),
            },
            client => client,
        };
        let (low, high) = match &signer {
            QsSigner::Client { id, .. } => pool_for_qs_listen
                .qs_clients
                .iter()
                .find(|(c, ..)| c == id)
                .map(|(_, _, l, h)| (*l, *h))
                .unwrap_or((0, 0)),
            QsSigner::Anonymous => (0, 0),
        };
        window(low, high).prop_map(move |(start, _)| {
            Call::Qs(QsCall::Listen {
                signer: signer.clone(),
                start,
            })
        })
    });
    prop_oneof![
        3 => register,
        3 => publish_cp,
        5 => fetch_cp,
        5 => enqueue,
        5 => dequeue,
        1 => certificates,
        2 => issue_tokens,
        3 => create_user,
        3 => publish_kp,
        4 => fetch_kp,
        2 => qs_dequeue,
        2 => qs_listen,
        1 => qs_rekey,
        1 => qs_push,
        1 => qs_delete,
    ]
    .boxed()
}

/// The requirements a call exercises, given what the model says it does.
pub fn requirements(call: &Call, outcome: &Outcome) -> Vec<&'static str> {
    use phoenix_types::error::ErrorCode as E;
    let err = outcome.as_ref().err().copied();
    let mut out = Vec::new();
    if err.is_some() {
        out.push("WIRE-2");
    }
    if err == Some(E::BadSignature) {
        out.push("AUTH-SIG-1");
    }
    let auth = matches!(
        err,
        Some(E::Unauthenticated | E::UnknownClient | E::BadSignature | E::InvalidFid)
    );
    match call {
        Call::As(c) => match c {
            AsCall::Register { .. } => {
                out.push("AS-REG-1");
                match err {
                    Some(E::WrongDomain) => out.push("AS-REG-2"),
                    Some(E::UserExists) => out.push("AS-REG-3"),
                    Some(E::InvalidCsr) => out.push("AS-REG-4"),
                    _ => out.push("AS-CERT-1"),
                }
            }
            AsCall::IssueGroupTokens { .. } => {
                out.push(if auth { "AS-AUTH-1" } else { "AS-TOKEN-1" });
                match err {
                    Some(E::TokenQuotaExceeded) => out.push("AS-TOKEN-2"),
                    Some(E::StaleRequest) => out.push("AUTH-FRESH-1"),
                    _ => {}
                }
            }
            AsCall::PublishConnectionPackages { .. } => {
                out.push(if auth { "AS-AUTH-1" } else { "AS-CP-1" });
                match err {
                    Some(E::LastResortRequired) => out.push("AS-CP-2"),
                    Some(E::StaleRequest) => out.push("AUTH-FRESH-1"),
                    Some(E::InvalidConnectionPackage) => out.push("AS-CP-5"),
                    _ => {}
                }
            }
            AsCall::FetchConnectionPackage { .. } => match outcome {
                Ok(Reply::ConnectionPackage {
                    last_resort: true, ..
                }) => out.push("AS-CP-4"),
                Ok(_) => out.push("AS-CP-3"),
                Err(_) => out.push("AS-CP-6"),
            },
            AsCall::EnqueueConnection { .. } => out.push("AS-DQ-1"),
            AsCall::DequeueConnection { .. } => {
                out.push(if auth { "AS-AUTH-1" } else { "AS-DQ-2" });
                if err == Some(E::StaleRequest) {
                    out.push("AUTH-FRESH-1");
                }
            }
            AsCall::ClientCertificates { .. } => out.push("AS-CERT-2"),
        },
        Call::Qs(c) => match c {
            QsCall::CreateUser { .. } => {
                out.push("QS-USER-1");
                if err == Some(E::DuplicateFriendshipToken) {
                    out.push("QS-USER-2");
                }
            }
            QsCall::PublishKeyPackages { .. } => {
                out.push(if auth { "QS-AUTH-1" } else { "QS-KP-1" });
                match err {
                    Some(E::LastResortRequired) => out.push("QS-KP-2"),
                    Some(E::InvalidKeyPackage) => out.push("QS-KP-5"),
                    Some(E::StaleRequest) => out.push("AUTH-FRESH-1"),
                    _ => {}
                }
            }
            QsCall::FetchKeyPackages { .. } => match outcome {
                Ok(_) => out.extend(["QS-KP-3", "QS-KP-4"]),
                Err(_) => out.push("QS-KP-6"),
            },
            QsCall::Dequeue { .. } => {
                out.push(if auth { "QS-AUTH-1" } else { "QS-DEQ-1" });
                if err.is_none() {
                    out.extend(["QS-DEQ-2", "QS-DEQ-3"]);
                }
            }
            QsCall::RekeyQueue { .. } => {
                out.push(if auth { "QS-AUTH-1" } else { "QS-ENC-4" });
            }
            QsCall::SetPushEndpoint { .. } => {
                out.push(if auth { "QS-AUTH-1" } else { "QS-PUSH-1" });
            }
            QsCall::DeleteClient { .. } => {
                out.push(if auth { "QS-AUTH-1" } else { "QS-REC-1" });
            }
            QsCall::Listen { .. } => {
                out.push("QS-LISTEN-1");
                if err.is_none() {
                    out.extend(["QS-LISTEN-2", "QS-LISTEN-3"]);
                }
            }
        },
        Call::Ds(_) => {}
    }
    out
}

/// The server under test for one case of this suite.
pub struct AsQsSut {
    api: Api,
    /// The network adversary between the suite's clients and the server: what a replay
    /// resends (Requirement: ADV-REPLAY-3).
    proxy: RecordingProxy,
    /// The server itself, for the adversary's replays.
    server: String,
    pub names: Names,
    queue_config_key: Vec<u8>,
    provider: Provider,
    /// Real key packages by (the real client id their queue config names, last resort).
    key_packages: BTreeMap<(QsId, bool), Vec<u8>>,
    /// The group-token key the server issued under first (every later issuance must use
    /// the same: a key per client would let the server tell its clients apart).
    token_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AsQsSut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsQsSut")
            .field("prefix", &self.names.prefix)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    phoenix_client::client::now()
}

/// [`timestamp`] for a request the model tells apart by its number `request` although its
/// arguments may repeat (`SetPushEndpoint`, `DeleteClient`): a fresh one goes back
/// `request % 240` seconds (inside the 300-second window), so two such requests sent in
/// the same second are different bytes, not a replay, as they are two requests in the model.
fn numbered_timestamp(fresh: bool, request: u32) -> u64 {
    if fresh {
        now().saturating_sub(u64::from(request % 240))
    } else {
        timestamp(false)
    }
}

fn timestamp(fresh: bool) -> u64 {
    if fresh {
        now()
    } else {
        now().saturating_sub(3600)
    }
}

/// A server's answer: the response, or the code it refused with; anything else (transport
/// failures, answers without a problem document) is the harness's problem to report.
fn answer<T>(result: Result<T, ClientError>) -> Result<Result<T, String>, HarnessError> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(ClientError::Server(e)) => Ok(Err(e.code.as_str().to_owned())),
        Err(e) => Err(HarnessError::Transport(e.to_string())),
    }
}

impl AsQsSut {
    pub async fn new(target: &Target) -> Result<Self, HarnessError> {
        let proxy = RecordingProxy::start(&target.url).await?;
        let api = Api::new(&proxy.url).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let key: qs::QueueConfigKeyResponse = api
            .call("qs", qs::QUEUE_CONFIG_KEY, &Empty {}, Signer::Anonymous)
            .await
            .map_err(|e| HarnessError::Setup(format!("queue config key: {e}")))?;
        Ok(Self {
            api,
            proxy,
            server: target.url.clone(),
            names: Names::new(&target.domain),
            queue_config_key: key.public_key.as_slice().to_vec(),
            provider: Provider::from_values(Default::default()),
            key_packages: BTreeMap::new(),
            token_key: None,
        })
    }

    /// The network adversary sends the last accepted request to `path` again, byte for
    /// byte (the model's `AdvOp::ReplayAs` and `AdvOp::ReplayQs`).
    pub async fn replay(&self, path: &str) -> Result<Observed, HarnessError> {
        match self.proxy.last_accepted(|p| p == path) {
            Some(x) => proxy::post_raw(&self.server, &x.path, x.body).await,
            None => Err(HarnessError::Setup(format!(
                "no accepted {path} went through the proxy"
            ))),
        }
    }

    /// Perform `call` on the server; `expected` is the model's outcome (to learn which model
    /// ids the server's fresh QS ids stand for).
    pub async fn apply(
        &mut self,
        call: &Call,
        expected: &Outcome,
    ) -> Result<Observed, HarnessError> {
        match call {
            Call::As(c) => self.apply_as(c).await,
            Call::Qs(c) => self.apply_qs(c, expected).await,
            Call::Ds(_) => Err(HarnessError::Setup(
                "DS calls are not part of this suite".into(),
            )),
        }
    }

    fn as_signer<'a>(
        &self,
        signer: &AsSigner,
        key: &'a ed25519_dalek::SigningKey,
        fid: &'a str,
        client: &'a str,
    ) -> Signer<'a> {
        match signer {
            AsSigner::Anonymous => Signer::Anonymous,
            AsSigner::Client { .. } => Signer::AsClient {
                fid,
                client_id: client,
                key,
            },
        }
    }

    async fn apply_as(&mut self, call: &AsCall) -> Result<Observed, HarnessError> {
        let n = &self.names;
        match call {
            AsCall::Register {
                fid,
                client,
                key,
                csr_valid,
            } => {
                let fid_s = n.fid(*fid);
                let parsed = phoenix_types::ids::Fid::parse(&fid_s)
                    .map_err(|e| HarnessError::Setup(e.to_string()))?;
                let cid = ClientId::parse(&n.client(*client))
                    .map_err(|e| HarnessError::Setup(e.to_string()))?;
                let signing = n.key(*key);
                let mut csr = certs::create_csr(&parsed, &cid, &signing)
                    .map_err(|e| HarnessError::Setup(e.to_string()))?;
                if let (false, Some(last)) = (*csr_valid, csr.last_mut()) {
                    *last ^= 1;
                }
                let r = answer(
                    self.api
                        .call::<_, as_::RegisterResponse>(
                            "as",
                            as_::REGISTER,
                            &as_::RegisterRequest {
                                csr: VLBytes::new(csr),
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                Ok(match r {
                    Err(code) => Observed::Error(code),
                    Ok(resp) => {
                        let cert = certs::ParsedCert::parse(resp.client_certificate.as_slice())
                            .map_err(|e| {
                                HarnessError::Mismatch(format!("issued certificate: {e}"))
                            })?;
                        let ca = certs::ParsedCert::parse(resp.ca_certificate.as_slice())
                            .map_err(|e| HarnessError::Mismatch(format!("CA certificate: {e}")))?;
                        let subject = cert.verify_issued_by(&ca, Some(now())).map_err(|e| {
                            HarnessError::Mismatch(format!("issued certificate: {e}"))
                        })?;
                        if subject.fid.to_string() != fid_s
                            || subject.client_id.as_str() != cid.as_str()
                            || cert.public_key != signing.verifying_key().to_bytes()
                        {
                            return Err(HarnessError::Mismatch(
                                "the certificate names another identity or key".into(),
                            ));
                        }
                        Observed::Registered
                    }
                })
            }
            AsCall::PublishConnectionPackages {
                signer,
                fresh,
                packages,
            } => {
                let (fid, client, key) = self.signer_parts(signer);
                let mut built = Vec::new();
                for p in packages {
                    let (p_fid, p_client) = if p.defect == PackageDefect::NamesAnotherClient {
                        (fid.clone(), "c98".to_owned())
                    } else {
                        (fid.clone(), client.clone())
                    };
                    let payload = codec::encode(&ConnectionPackagePayload {
                        fid: p_fid,
                        client_id: p_client,
                        encryption_key: VLBytes::new(self.names.package_tag(p.id).to_vec()),
                        not_after: if p.defect == PackageDefect::Expired {
                            now().saturating_sub(10)
                        } else {
                            now() + 3600
                        },
                        last_resort: u8::from(p.last_resort),
                    })
                    .map_err(|e| HarnessError::Setup(e.detail))?;
                    let signing_key = if p.defect == PackageDefect::BadSignature {
                        self.names.key(KeyId(u32::MAX))
                    } else {
                        key.clone()
                    };
                    let signature = crypto::sign(&signing_key, label::CONNECTION_PACKAGE, &payload);
                    built.push(ConnectionPackage {
                        payload: VLBytes::new(payload),
                        signature: VLBytes::new(signature.to_vec()),
                    });
                }
                let signer = self.as_signer(signer, &key, &fid, &client);
                let r = answer(
                    self.api
                        .call::<_, Empty>(
                            "as",
                            as_::PUBLISH_CONNECTION_PACKAGES,
                            &as_::PublishConnectionPackagesRequest {
                                timestamp: timestamp(*fresh),
                                packages: built,
                            },
                            signer,
                        )
                        .await,
                )?;
                Ok(r.map_or_else(Observed::Error, |_| Observed::Empty))
            }
            AsCall::IssueGroupTokens {
                signer,
                fresh,
                count,
                ..
            } => {
                let (fid, client, key) = self.signer_parts(signer);
                let signer = self.as_signer(signer, &key, &fid, &client);
                let pending = (0..*count)
                    .map(|_| phoenix_types::tokens::blind(&mut rand_core::OsRng))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| HarnessError::Setup(e.to_string()))?;
                let r = answer(
                    self.api
                        .call::<_, as_::IssueGroupTokensResponse>(
                            "as",
                            as_::ISSUE_GROUP_TOKENS,
                            &as_::IssueGroupTokensRequest {
                                timestamp: timestamp(*fresh),
                                blinded: pending
                                    .iter()
                                    .map(|p| VLBytes::new(p.blinded().to_vec()))
                                    .collect(),
                            },
                            signer,
                        )
                        .await,
                )?;
                match r {
                    Err(code) => Ok(Observed::Error(code)),
                    Ok(resp) => {
                        // The tokens must verify under the key the server names (its DLEQ
                        // proof), and that key must be the one every client is given.
                        let evaluated: Vec<&[u8]> =
                            resp.evaluated.iter().map(|e| e.as_slice()).collect();
                        let tokens = phoenix_types::tokens::finalize(
                            &pending,
                            &evaluated,
                            resp.proof.as_slice(),
                            resp.public_key.as_slice(),
                        )
                        .map_err(|e| HarnessError::Mismatch(format!("issued tokens: {e}")))?;
                        let key = resp.public_key.as_slice().to_vec();
                        match &self.token_key {
                            Some(seen) if *seen != key => {
                                return Err(HarnessError::Mismatch(
                                    "the server issued tokens under two different keys".into(),
                                ));
                            }
                            _ => self.token_key = Some(key),
                        }
                        Ok(Observed::GroupTokens {
                            count: tokens.len(),
                        })
                    }
                }
            }
            AsCall::FetchConnectionPackage { fid } => {
                let r = answer(
                    self.api
                        .call::<_, as_::FetchConnectionPackageResponse>(
                            "as",
                            as_::FETCH_CONNECTION_PACKAGE,
                            &as_::FetchConnectionPackageRequest {
                                fid: n.fid_arg(*fid),
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                match r {
                    Err(code) => Ok(Observed::Error(code)),
                    Ok(resp) => {
                        let payload: ConnectionPackagePayload =
                            codec::decode(resp.package.payload.as_slice(), 4096)
                                .map_err(|e| HarnessError::Mismatch(e.detail))?;
                        let id = self
                            .names
                            .package_back(payload.encryption_key.as_slice())
                            .ok_or_else(|| {
                                HarnessError::Mismatch(
                                    "served a connection package this case never published".into(),
                                )
                            })?;
                        let client =
                            self.names.client_back(&payload.client_id).ok_or_else(|| {
                                HarnessError::Mismatch(format!(
                                    "served a package of client {:?}",
                                    payload.client_id
                                ))
                            })?;
                        Ok(Observed::ConnectionPackage {
                            client: client.0,
                            id: id.0,
                            last_resort: payload.last_resort == 1,
                        })
                    }
                }
            }
            AsCall::EnqueueConnection { fid, client, msg } => {
                let r = answer(
                    self.api
                        .call::<_, Empty>(
                            "as",
                            as_::ENQUEUE_CONNECTION,
                            &as_::EnqueueConnectionRequest {
                                fid: n.fid_arg(*fid),
                                client_id: n.client(*client),
                                ciphertext: openmls::prelude::HpkeCiphertext {
                                    kem_output: VLBytes::new(vec![9u8; 32]),
                                    ciphertext: VLBytes::new(n.message_tag(*msg).to_vec()),
                                },
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                Ok(r.map_or_else(Observed::Error, |_| Observed::Empty))
            }
            AsCall::DequeueConnection {
                signer,
                fresh,
                start,
                max,
            } => {
                let (fid, client, key) = self.signer_parts(signer);
                let signer = self.as_signer(signer, &key, &fid, &client);
                let r = answer(
                    self.api
                        .call::<_, DequeueResponse>(
                            "as",
                            as_::DEQUEUE_CONNECTION,
                            &DequeueRequest {
                                timestamp: timestamp(*fresh),
                                sequence_number_start: *start,
                                max: *max,
                            },
                            signer,
                        )
                        .await,
                )?;
                match r {
                    Err(code) => Ok(Observed::Error(code)),
                    Ok(resp) => {
                        let mut messages = Vec::new();
                        for m in resp.messages {
                            let ct: openmls::prelude::HpkeCiphertext =
                                codec::decode(m.payload.as_slice(), 64 * 1024)
                                    .map_err(|e| HarnessError::Mismatch(e.detail))?;
                            let id = self
                                .names
                                .message_back(ct.ciphertext.as_slice())
                                .map_or(u32::MAX, |m| m.0);
                            messages.push((m.sequence_number, id));
                        }
                        Ok(Observed::Dequeued {
                            messages,
                            remaining: resp.remaining,
                        })
                    }
                }
            }
            AsCall::ClientCertificates { fid } => {
                let r = answer(
                    self.api
                        .call::<_, as_::ClientCertificatesResponse>(
                            "as",
                            as_::CLIENT_CERTIFICATES,
                            &as_::ClientCertificatesRequest {
                                fid: n.fid_arg(*fid),
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                Ok(match r {
                    Err(code) => Observed::Error(code),
                    Ok(resp) => Observed::Certificates {
                        count: u32::try_from(resp.certificates.len()).unwrap_or(u32::MAX),
                    },
                })
            }
        }
    }

    /// The FID and client id strings and the key of an AS signer.
    fn signer_parts(&self, signer: &AsSigner) -> (String, String, ed25519_dalek::SigningKey) {
        match signer {
            AsSigner::Anonymous => (
                self.names.fid(Fid {
                    local: 0,
                    domain: HOME,
                }),
                "c0".into(),
                self.names.key(KeyId(u32::MAX - 1)),
            ),
            AsSigner::Client { fid, client, key } => (
                self.names.fid_arg(*fid),
                self.names.client(*client),
                self.names.key(*key),
            ),
        }
    }

    async fn apply_qs(
        &mut self,
        call: &QsCall,
        expected: &Outcome,
    ) -> Result<Observed, HarnessError> {
        match call {
            QsCall::CreateUser {
                user_key,
                token,
                client_key,
            } => {
                let r = answer(
                    self.api
                        .call::<_, qs::CreateUserResponse>(
                            "qs",
                            qs::CREATE_USER,
                            &qs::CreateUserRequest {
                                user_auth_key: VLBytes::new(
                                    self.names
                                        .key(*user_key)
                                        .verifying_key()
                                        .to_bytes()
                                        .to_vec(),
                                ),
                                friendship_token: self.names.token(*token),
                                client_auth_key: VLBytes::new(
                                    self.names
                                        .key(*client_key)
                                        .verifying_key()
                                        .to_bytes()
                                        .to_vec(),
                                ),
                                // The suite's queues stay empty (no DS fans out to them):
                                // one queue key serves every record.
                                queue_key: VLBytes::new(vec![9; 32]),
                                queue_ratchet_secret: [7; 32],
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                match r {
                    Err(code) => Ok(Observed::Error(code)),
                    Ok(resp) => {
                        if let Ok(Reply::QsUserCreated { user, client }) = expected {
                            self.names
                                .learn_qs_user(*user, *client, resp.user_id, resp.client_id);
                        }
                        Ok(Observed::QsUserCreated)
                    }
                }
            }
            QsCall::PublishKeyPackages {
                signer,
                fresh,
                packages,
            } => {
                let mut add_packages = Vec::new();
                for p in packages {
                    let owner = self.names.qs_client(p.queue_of);
                    let key_package = self.key_package(owner, p.last_resort)?;
                    add_packages.push(AddPackage {
                        key_package: VLBytes::new(key_package),
                        encrypted_client_info: VLBytes::new(self.names.package_tag(p.id).to_vec()),
                    });
                }
                let (id, key) = self.qs_signer_parts(signer);
                let request = qs::PublishKeyPackagesRequest {
                    timestamp: timestamp(*fresh),
                    add_packages,
                };
                let signer = signed_by(signer, id, &key);
                let r = answer(
                    self.api
                        .call::<_, Empty>("qs", qs::PUBLISH_KEY_PACKAGES, &request, signer)
                        .await,
                )?;
                Ok(r.map_or_else(Observed::Error, |_| Observed::Empty))
            }
            QsCall::FetchKeyPackages { token } => {
                let r = answer(
                    self.api
                        .call::<_, qs::FetchKeyPackagesResponse>(
                            "qs",
                            qs::FETCH_KEY_PACKAGES,
                            &qs::FetchKeyPackagesRequest {
                                friendship_token: self.names.token(*token),
                            },
                            Signer::Anonymous,
                        )
                        .await,
                )?;
                match r {
                    Err(code) => Ok(Observed::Error(code)),
                    Ok(resp) => {
                        let mut ids = Vec::new();
                        for p in resp.add_packages {
                            let id = self
                                .names
                                .package_back(p.encrypted_client_info.as_slice())
                                .ok_or_else(|| {
                                    HarnessError::Mismatch(
                                        "served a key package this case never published".into(),
                                    )
                                })?;
                            ids.push(id.0);
                        }
                        ids.sort_unstable();
                        Ok(Observed::KeyPackages { ids })
                    }
                }
            }
            QsCall::Dequeue {
                signer,
                fresh,
                start,
                max,
            } => {
                let (id, key) = self.qs_signer_parts(signer);
                let signer = signed_by(signer, id, &key);
                let r = answer(
                    self.api
                        .call::<_, DequeueResponse>(
                            "qs",
                            qs::DEQUEUE,
                            &DequeueRequest {
                                timestamp: timestamp(*fresh),
                                sequence_number_start: *start,
                                max: *max,
                            },
                            signer,
                        )
                        .await,
                )?;
                Ok(match r {
                    Err(code) => Observed::Error(code),
                    Ok(resp) => Observed::Dequeued {
                        messages: resp
                            .messages
                            .iter()
                            .map(|m| (m.sequence_number, 0))
                            .collect(),
                        remaining: resp.remaining,
                    },
                })
            }
            QsCall::Listen { signer, start } => {
                let (id, key) = self.qs_signer_parts(signer);
                Ok(self.listen(id, &key, *start).await)
            }
            QsCall::SetPushEndpoint {
                signer,
                fresh,
                endpoint,
                request,
            } => {
                self.set_push_endpoint(signer, *fresh, *endpoint, *request)
                    .await
            }
            QsCall::DeleteClient {
                signer,
                fresh,
                request,
            } => {
                let (id, key) = self.qs_signer_parts(signer);
                let signer = signed_by(signer, id, &key);
                let r = answer(
                    self.api
                        .call::<_, qs::DeleteClientResponse>(
                            "qs",
                            qs::DELETE_CLIENT,
                            &qs::DeleteClientRequest {
                                timestamp: numbered_timestamp(*fresh, *request),
                            },
                            signer,
                        )
                        .await,
                )?;
                Ok(match r {
                    Err(code) => Observed::Error(code),
                    Ok(resp) => Observed::ClientDeleted {
                        user: resp.user_deleted == 1,
                    },
                })
            }
            QsCall::RekeyQueue {
                signer,
                fresh,
                queue_key,
            } => {
                let (id, key) = self.qs_signer_parts(signer);
                let new_key = self.names.key(*queue_key).verifying_key().to_bytes();
                let signer = signed_by(signer, id, &key);
                let r = answer(
                    self.api
                        .call::<_, qs::RekeyQueueResponse>(
                            "qs",
                            qs::REKEY_QUEUE,
                            &qs::RekeyQueueRequest {
                                timestamp: timestamp(*fresh),
                                queue_key: VLBytes::new(new_key.to_vec()),
                                queue_ratchet_secret: crypto::sha256(&new_key),
                            },
                            signer,
                        )
                        .await,
                )?;
                Ok(match r {
                    Err(code) => Observed::Error(code),
                    Ok(resp) => Observed::ChainStart(resp.chain_start),
                })
            }
        }
    }

    // Requirement: QS-PUSH-1
    /// `qs/set_push_endpoint` with a subscription at a loopback port where nothing listens
    /// (what the QS sends there after an enqueue is refused at once and counted: traffic
    /// stays on this machine). `https: false` names a plain `http://` URL, which the
    /// server under test (default settings) refuses.
    async fn set_push_endpoint(
        &self,
        signer: &QsSigner,
        fresh: bool,
        endpoint: Option<PushArg>,
        request: u32,
    ) -> Result<Observed, HarnessError> {
        let (id, key) = self.qs_signer_parts(signer);
        let signer = signed_by(signer, id, &key);
        let endpoint = endpoint.map(|e| {
            let scheme = if e.https { "https" } else { "http" };
            qs::PushEndpoint {
                url: VLBytes::new(
                    format!("{scheme}://127.0.0.1:1/push/{}", e.subscription.0).into_bytes(),
                ),
                p256dh: VLBytes::new(P256_GENERATOR.to_vec()),
                auth: [e.subscription.0 as u8; 16],
            }
        });
        let r = answer(
            self.api
                .call::<_, Empty>(
                    "qs",
                    qs::SET_PUSH_ENDPOINT,
                    &qs::SetPushEndpointRequest {
                        timestamp: numbered_timestamp(fresh, request),
                        endpoint,
                    },
                    signer,
                )
                .await,
        )?;
        Ok(match r {
            Err(code) => Observed::Error(code),
            Ok(Empty {}) => Observed::Empty,
        })
    }

    // Requirement: QS-LISTEN-1, QS-LISTEN-2
    /// Open a `qs/listen` stream at `start` straight to the server (the recording proxy
    /// speaks plain HTTP requests only), read its first window and whether `Empty` follows,
    /// then close it.
    async fn listen(&self, id: QsId, key: &ed25519_dalek::SigningKey, start: u64) -> Observed {
        match crate::listen::first_window(&self.server, &self.names.domain, id, key, start).await {
            Ok(Ok((messages, drained))) => Observed::Streamed {
                messages: messages.iter().map(|m| (m.sequence_number, 0)).collect(),
                drained,
            },
            Ok(Err(code)) => Observed::Error(code),
            Err(e) => Observed::Error(format!("(harness: {e})")),
        }
    }

    fn qs_signer_parts(&self, signer: &QsSigner) -> (QsId, ed25519_dalek::SigningKey) {
        match signer {
            QsSigner::Anonymous => ([0; 16], self.names.key(KeyId(u32::MAX - 1))),
            QsSigner::Client { id, key } => (self.names.qs_client(*id), self.names.key(*key)),
        }
    }

    /// A real key package whose sealed queue config names `owner`, built once per owner
    /// and flag (the add packages that carry it differ by their client info, the tag).
    fn key_package(&mut self, owner: QsId, last_resort: bool) -> Result<Vec<u8>, HarnessError> {
        if let Some(kp) = self.key_packages.get(&(owner, last_resort)) {
            return Ok(kp.clone());
        }
        let setup = |e: String| HarnessError::Setup(format!("building a key package: {e}"));
        let plain =
            codec::encode(&QueueConfig { client_id: owner }).map_err(|e| setup(e.detail))?;
        let sealed = crypto::hpke_seal(
            &self.queue_config_key,
            hpke_info::QUEUE_CONFIG,
            self.names.domain.as_bytes(),
            &plain,
        )
        .map_err(|e| setup(e.to_string()))?;
        let sealed = codec::encode(&SealedQueueConfig {
            qs_domain: self.names.domain.clone(),
            sealed,
        })
        .map_err(|e| setup(e.detail))?;
        let extensions = Extensions::single(Extension::Unknown(
            QUEUE_CONFIG_EXTENSION_TYPE,
            UnknownExtension(sealed),
        ))
        .map_err(|e| setup(e.to_string()))?;
        let (signer, credential) =
            mls::new_leaf(&self.provider).map_err(|e| setup(e.to_string()))?;
        let mut builder = KeyPackage::builder()
            .leaf_node_capabilities(mls::capabilities())
            .key_package_extensions(extensions);
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, &self.provider, &signer, credential)
            .map_err(|e| setup(e.to_string()))?;
        let bytes = bundle
            .key_package()
            .tls_serialize_detached()
            .map_err(|e| setup(e.to_string()))?;
        self.key_packages
            .insert((owner, last_resort), bytes.clone());
        Ok(bytes)
    }

    /// The projected invariant on the real server: the direct queue of every registered
    /// client holds exactly what the model's does (order, numbers, no loss), read without
    /// deleting anything (a dequeue from the model's own start).
    pub async fn check_queues(
        &self,
        model: &State,
        only: Option<(Fid, ClientName)>,
    ) -> Result<(), HarnessError> {
        let Some(server) = model.server(HOME) else {
            return Ok(());
        };
        for (fid, user) in server.as_.users.iter() {
            for (name, client) in user.clients.iter() {
                if only.is_some_and(|o| o != (*fid, *name)) {
                    continue;
                }
                let q = &client.direct_queue;
                let signer = AsSigner::Client {
                    fid: FidArg::Valid(*fid),
                    client: *name,
                    key: client.certificate.payload.key,
                };
                let (fid_s, client_s, key) = self.signer_parts(&signer);
                let resp: DequeueResponse = self
                    .api
                    .call(
                        "as",
                        as_::DEQUEUE_CONNECTION,
                        &DequeueRequest {
                            timestamp: now(),
                            sequence_number_start: q.deleted_below,
                            max: 500,
                        },
                        Signer::AsClient {
                            fid: &fid_s,
                            client_id: &client_s,
                            key: &key,
                        },
                    )
                    .await
                    .map_err(|e| {
                        HarnessError::Mismatch(format!("reading the queue of {fid_s}: {e}"))
                    })?;
                let mut real = Vec::new();
                for m in resp.messages {
                    let ct: openmls::prelude::HpkeCiphertext =
                        codec::decode(m.payload.as_slice(), 64 * 1024)
                            .map_err(|e| HarnessError::Mismatch(e.detail))?;
                    real.push((
                        m.sequence_number,
                        self.names
                            .message_back(ct.ciphertext.as_slice())
                            .map_or(u32::MAX, |m| m.0),
                    ));
                }
                let expected: Vec<(u64, u32)> = q
                    .messages
                    .iter()
                    .map(|(s, item)| (*s, observed::message_id(item)))
                    .collect();
                if real != expected {
                    return Err(HarnessError::Mismatch(format!(
                        "invariant queues_well_formed (projected): the direct queue of {fid_s} holds {real:?}, the model {expected:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The AS/QS suite for the runner.
#[derive(Debug)]
pub struct AsQs;

impl AsQs {
    pub const NAME_STR: &'static str = "as_qs";
}

impl crate::runner::Suite for AsQs {
    const NAME: &'static str = Self::NAME_STR;
    type Machine = AsQsMachine;
    type Sut = AsQsSut;

    fn model(state: &RefState) -> &State {
        &state.model
    }

    async fn start(target: &Target, _init: &RefState) -> Result<AsQsSut, HarnessError> {
        AsQsSut::new(target).await
    }

    async fn step(
        sut: &mut AsQsSut,
        before: &RefState,
        after: &RefState,
        call: &Call,
    ) -> Result<Vec<&'static str>, crate::runner::StepFailure> {
        let (_, outcome) = step(
            &before.model,
            &Op::Call {
                to: HOME,
                call: call.clone(),
            },
        );
        let requirements = requirements(call, &outcome);
        let fail = |error| crate::runner::StepFailure {
            requirements: requirements.clone(),
            error,
        };
        let expected = observed::expected(&outcome);
        let actual = sut.apply(call, &outcome).await.map_err(fail)?;
        if actual != expected {
            return Err(fail(HarnessError::Mismatch(format!(
                "the server answered {actual:?}, the model {expected:?}"
            ))));
        }
        // The touched client's direct queue, projected, after every step that can change
        // one (all of them at the end of the case).
        let touched = match call {
            Call::As(AsCall::EnqueueConnection {
                fid: FidArg::Valid(fid),
                client,
                ..
            }) => Some((*fid, *client)),
            Call::As(AsCall::DequeueConnection {
                signer:
                    AsSigner::Client {
                        fid: FidArg::Valid(fid),
                        client,
                        ..
                    },
                ..
            }) => Some((*fid, *client)),
            _ => None,
        };
        // An accepted publication, replayed byte for byte by the network adversary: the
        // model and the server both refuse it (REPLAYED) and nothing changes
        // (Requirement: ADV-REPLAY-3, ADV-REPLAY-4).
        let replay = match call {
            Call::As(AsCall::PublishConnectionPackages { .. }) => Some((
                AdvOp::ReplayAs,
                "/phoenix/v1/as/publish_connection_packages",
            )),
            Call::Qs(QsCall::PublishKeyPackages { .. }) => {
                Some((AdvOp::ReplayQs, "/phoenix/v1/qs/publish_key_packages"))
            }
            // Requirement: CL-AMBIG-3
            Call::As(AsCall::EnqueueConnection { .. }) => {
                Some((AdvOp::ReplayAs, "/phoenix/v1/as/enqueue_connection"))
            }
            _ => None,
        };
        let mut requirements = requirements;
        if let (Some((op, path)), Ok(_)) = (replay, &outcome) {
            let (_, replayed) = step(&after.model, &Op::Adversary(op));
            let expected = observed::expected(&replayed);
            let actual = sut
                .replay(path)
                .await
                .map_err(|error| crate::runner::StepFailure {
                    requirements: vec!["ADV-REPLAY-3"],
                    error,
                })?;
            if actual != expected {
                return Err(crate::runner::StepFailure {
                    requirements: vec!["ADV-REPLAY-3"],
                    error: HarnessError::Mismatch(format!(
                        "the replayed {path}: the server answered {actual:?}, the model {expected:?}"
                    )),
                });
            }
            requirements.push("ADV-REPLAY-3");
        }
        if let (Some(touched), Ok(_)) = (touched, &outcome) {
            sut.check_queues(&after.model, Some(touched))
                .await
                .map_err(|e| crate::runner::StepFailure {
                    requirements: vec!["AS-DQ-1", "AS-DQ-2"],
                    error: e,
                })?;
        }
        Ok(requirements)
    }

    async fn finish(sut: &mut AsQsSut, state: &RefState) -> Result<(), HarnessError> {
        sut.check_queues(&state.model, None).await
    }
}

/// The base point of P-256, uncompressed: a valid `p256dh` for the endpoints this suite
/// sets (nobody decrypts what is sent to them).
const P256_GENERATOR: [u8; 65] = [
    0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
    0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2,
    0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
    0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51,
    0xf5,
];

/// The real signer of a model QS signer, given its record id and key
/// ([`AsQsSut::qs_signer_parts`]): anonymous, or the client record signing with the key.
fn signed_by<'a>(signer: &QsSigner, id: QsId, key: &'a ed25519_dalek::SigningKey) -> Signer<'a> {
    match signer {
        QsSigner::Anonymous => Signer::Anonymous,
        QsSigner::Client { .. } => Signer::QsClient { id, key },
    }
}
