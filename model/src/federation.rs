//! Federation: several homeservers, the durable outbox of each, signed QS-to-QS
//! `FederatedEnqueue` messages over a network that drops, duplicates and reorders them, and
//! the receiving QS's checks.
//!
//! - Sending (the server's `outbox.rs` and `federation/send.rs`): a DS fan-out entry for a
//!   member whose queue config names another domain becomes an [`OutboxEntry`] of the
//!   sending homeserver, with a message id unique per sender ([`FedMsgId`], the entry's
//!   dedup key). The outbox worker's [`FedOp::Attempt`] checks the sender's own policy
//!   (refused: the entry is dropped for good), counts the attempt (durably: the attempt
//!   count survives restarts and drives the capped backoff, whose timing is not modelled),
//!   and puts a [`FederatedEnqueue`] signed with the sending QS's key on the wire. The entry
//!   stays until an answer says delivered (success, or `REPLAYED`: delivered before);
//!   transient answers keep it for a retry, any other refusal drops it (Requirement: FED-3).
//! - Receiving ([`receive`], the server's `federation/receive.rs`), in the server's order,
//!   each with the server's code: the policy allows the claimed sender
//!   (`FEDERATION_REFUSED`, Requirement: FED-4); the message and its queue config are for
//!   this server, which relays nothing (`MISADDRESSED`, Requirement: FED-1); the message
//!   does not claim to come from this server and its signature verifies with the key the
//!   claimed sender's discovery document publishes (`BAD_SIGNATURE`, `UNKNOWN_PEER` if there
//!   is none, Requirement: FED-2); the timestamp is fresh (`STALE_REQUEST`); the queue
//!   config opens (`UNKNOWN_QUEUE`); the message id was not seen from that sender before
//!   (`REPLAYED`), recorded in the same step as the enqueue, also when the queue turns out
//!   to be gone (`UNKNOWN_QUEUE`, as the server's transaction does) (Requirement: FED-3).
//! - The network ([`crate::network::FedPacket`]): requests and answers in flight, which the
//!   network adversary drops, duplicates and delivers in any order ([`FedOp`]).
//! - Restarts ([`FedOp::Restart`]): connections to and from the server die (their packets
//!   are lost) and its volatile peer cache is emptied; the outbox and the replay records are
//!   durable tables and stay.
//! - The malicious remote server is [`crate::adversary::AdvOp::RemoteSend`]: a domain with
//!   its own published QS key that forges (signs with its key, claiming another domain),
//!   replays (reuses a delivered message id) and misroutes (a destination or queue config
//!   of another domain) (Requirement: ADV-REMOTE-1).
//!
//! Cryptography stays symbolic: a federated enqueue is [`Signed`] by a key; a queue config
//! is [`Sealed`] to a QS key, and the domain named in clear next to it is the domain that
//! key belongs to ([`queue_config_domain`]).
//!
//! Not here: timing (backoff delays, request timeouts, the discovery cache's lifetime), the
//! peer cache's refetch-once-a-minute rule (it changes no outcome), batching, what the
//! operators of the two servers observe per request (see docs/model.md, findings).

use std::collections::{BTreeMap, BTreeSet};

use phoenix_types::error::ErrorCode;

use crate::call::{Outcome, Reply};
use crate::ids::{DomainId, Epoch, GroupId, KeyId, QsCid, Sealed, Signed, Time};
use crate::network::FedPacket;
use crate::queue::QueueItem;
use crate::state::{Homeserver, State};

/// A federated message id: unique per sender, the same on every retry of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FedMsgId(pub u32);

/// Which peers a homeserver federates with (the operator's `--federation-mode`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// Every peer except the blocked ones.
    Open { blocked: BTreeSet<DomainId> },
    /// Only the listed peers.
    Allowlist { allowed: BTreeSet<DomainId> },
}

impl Policy {
    pub fn open() -> Self {
        Policy::Open {
            blocked: BTreeSet::new(),
        }
    }

    pub fn allows(&self, domain: DomainId) -> bool {
        match self {
            Policy::Open { blocked } => !blocked.contains(&domain),
            Policy::Allowlist { allowed } => allowed.contains(&domain),
        }
    }
}

/// One durable outbox entry for another homeserver's QS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxEntry {
    pub destination: DomainId,
    pub queue_config: Sealed<QsCid>,
    pub item: QueueItem,
    /// Delivery attempts so far (durable: the backoff survives restarts).
    pub attempts: u32,
}

/// A homeserver's federation state: the QS signing key, the policy, the outbox, the
/// replay records (all durable), and the peer cache (volatile).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FedState {
    /// The key the QS signs federated messages with (its public half is in the discovery
    /// document).
    pub signing_key: KeyId,
    pub policy: Policy,
    pub outbox: BTreeMap<FedMsgId, OutboxEntry>,
    pub next_id: u32,
    /// (sender, message id) of every federated message received (`qs_federation_seen`).
    pub seen: BTreeSet<(DomainId, FedMsgId)>,
    /// Peers whose discovery document is cached (volatile: emptied by a restart).
    pub peer_cache: BTreeSet<DomainId>,
}

impl FedState {
    pub fn new(signing_key: KeyId) -> Self {
        Self {
            signing_key,
            policy: Policy::open(),
            outbox: BTreeMap::new(),
            next_id: 0,
            seen: BTreeSet::new(),
            peer_cache: BTreeSet::new(),
        }
    }
}

/// The signed part of a federated enqueue (`FederatedEnqueueTbs`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FedTbs {
    pub sender: DomainId,
    pub destination: DomainId,
    pub id: FedMsgId,
    pub timestamp: Time,
    pub queue_config: Sealed<QsCid>,
    pub item: QueueItem,
}

/// `FederatedEnqueue`: the signed part and the signing key (symbolically).
pub type FederatedEnqueue = Signed<FedTbs>;

/// What the network and the outbox worker do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FedOp {
    /// The outbox worker of `from` tries to deliver its entry `id`.
    Attempt { from: DomainId, id: FedMsgId },
    /// The federated packet in flight at `index` arrives (a request at its QS, an answer
    /// at the sender's outbox worker).
    Deliver { index: usize },
    /// The network loses the packet at `index`.
    Drop { index: usize },
    /// The network delivers the packet at `index` twice.
    Duplicate { index: usize },
    /// The homeserver of `domain` restarts.
    Restart { domain: DomainId },
}

/// A federated message a QS accepted (ghost: for the invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FedAccepted {
    /// The homeserver that enqueued it.
    pub at: DomainId,
    pub sender: DomainId,
    pub destination: DomainId,
    /// The domain of the QS its queue config is sealed to.
    pub queue_domain: Option<DomainId>,
    /// The key that signed it.
    pub signer: KeyId,
    pub id: FedMsgId,
}

/// What the DS fanned out with an outbox entry (ghost: the delivery record it becomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FanOutGhost {
    pub group: GroupId,
    pub epoch: Epoch,
    pub sender_record: Option<QsCid>,
    pub application: bool,
}

/// Federation facts for the invariants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FedGhost {
    /// Every outbox entry ever created, by (sender, id), with what it carries.
    pub created: BTreeMap<(DomainId, FedMsgId), (DomainId, Sealed<QsCid>, QueueItem)>,
    /// The fan-out record of each created entry.
    pub fan_out: BTreeMap<(DomainId, FedMsgId), FanOutGhost>,
    /// How often each (claimed sender, id) was enqueued at its destination.
    pub enqueued: BTreeMap<(DomainId, FedMsgId), u32>,
    /// Every accepted federated message.
    pub accepted: BTreeSet<FedAccepted>,
    /// Outbox entries dropped for good, with the refusal's code.
    pub refused: BTreeMap<(DomainId, FedMsgId), ErrorCode>,
    /// Every refusal a receiving QS answered (at, code): which checks were reached.
    pub refusals: BTreeSet<(DomainId, ErrorCode)>,
    /// The ids of the messages from `sender` that `destination` accepted, in the order
    /// it accepted them, by (sender, destination) (Requirement: FED-ORDER-1).
    pub accepted_order: BTreeMap<(DomainId, DomainId), Vec<FedMsgId>>,
}

/// The QS queue-config key of `domain` (homeservers' keys are named after their domain:
/// see [`crate::state::Homeserver::new`]).
pub fn queue_config_key(domain: DomainId) -> KeyId {
    KeyId(1001u32.saturating_add(2u32.saturating_mul(u32::from(domain.0))))
}

/// The QS signing key of `domain`.
pub fn qs_signing_key(domain: DomainId) -> KeyId {
    KeyId(1500u32.saturating_add(u32::from(domain.0)))
}

/// The domain named in clear next to a queue config sealed to `key` (the real
/// `SealedQueueConfig.qs_domain`), if `key` is a QS key.
pub fn queue_config_domain(key: KeyId) -> Option<DomainId> {
    let k = key.0;
    if k < 1001 || !(k - 1001).is_multiple_of(2) {
        return None;
    }
    let domain = u8::try_from((k - 1001) / 2).ok().map(DomainId);
    // Postcondition: the domain found is the one whose key it is.
    debug_assert!(
        domain.is_none_or(|d| queue_config_key(d) == key),
        "contract of queue_config_domain"
    );
    domain
}

/// Whether a refusal is transient (the outbox keeps the entry and retries), as
/// `federation/send.rs` decides.
pub fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited
            | ErrorCode::UnknownPeer
            | ErrorCode::Internal
            | ErrorCode::Unavailable
            | ErrorCode::StaleRequest
    )
}

/// Put a fan-out entry for another homeserver into `from`'s outbox.
pub fn enqueue_outbox(
    state: &mut State,
    from: DomainId,
    destination: DomainId,
    queue_config: &Sealed<QsCid>,
    item: &QueueItem,
    ghost: FanOutGhost,
) {
    let Some(server) = state.servers.get_mut(&from) else {
        return;
    };
    let id = FedMsgId(server.fed.next_id);
    server.fed.next_id = server.fed.next_id.saturating_add(1);
    server.fed.outbox.insert(
        id,
        OutboxEntry {
            destination,
            queue_config: queue_config.clone(),
            item: item.clone(),
            attempts: 0,
        },
    );
    state.ghost.fed.created.insert(
        (from, id),
        (destination, queue_config.clone(), item.clone()),
    );
    state.ghost.fed.fan_out.insert((from, id), ghost);
}

/// Run a network or outbox operation.
pub fn run(state: &mut State, op: &FedOp) -> Outcome {
    let outcome = run_inner(state, op);
    // In-flight packets are a multiset: keep them in a canonical order.
    state.network.federation.sort();
    outcome
}

fn run_inner(state: &mut State, op: &FedOp) -> Outcome {
    match op {
        FedOp::Attempt { from, id } => attempt(state, *from, *id),
        FedOp::Deliver { index } => {
            if *index >= state.network.federation.len() {
                return Err(ErrorCode::NotFound);
            }
            let packet = state.network.federation.remove(*index);
            match packet {
                FedPacket::Request {
                    origin,
                    to,
                    message,
                } => {
                    let answer = receive(state, to, &message);
                    state.network.federation.push(FedPacket::Answer {
                        from: to,
                        to: origin,
                        id: message.payload.id,
                        outcome: answer,
                    });
                    answer.map(|_| Reply::Empty)
                }
                FedPacket::Answer {
                    to, id, outcome, ..
                } => {
                    handle_answer(state, to, id, outcome);
                    Ok(Reply::Empty)
                }
            }
        }
        FedOp::Drop { index } => {
            if *index < state.network.federation.len() {
                state.network.federation.remove(*index);
            }
            Ok(Reply::Empty)
        }
        FedOp::Duplicate { index } => {
            if let Some(p) = state.network.federation.get(*index).cloned() {
                state.network.federation.push(p);
            }
            Ok(Reply::Empty)
        }
        FedOp::Restart { domain } => {
            restart(state, *domain);
            Ok(Reply::Empty)
        }
    }
}

/// The outbox worker of `from` tries to deliver entry `id` (Requirement: FED-3, FED-4).
fn attempt(state: &mut State, from: DomainId, id: FedMsgId) -> Outcome {
    let now = state.now;
    let Some(server) = state.servers.get_mut(&from) else {
        return Err(ErrorCode::Unavailable);
    };
    let Some(entry) = server.fed.outbox.get(&id).cloned() else {
        return Err(ErrorCode::NotFound);
    };
    // Requirement: FED-ORDER-1
    // In order per destination: only the oldest pending entry for a destination is sent
    // (the server's worker sends a destination's entries oldest first and stops at the
    // first failure, which postpones them all).
    if !is_next_for_destination(server, id, entry.destination) {
        return Err(ErrorCode::NotFound);
    }
    // Our own policy first: an entry for a refused peer is dropped for good.
    if !server.fed.policy.allows(entry.destination) {
        server.fed.outbox.remove(&id);
        state
            .ghost
            .fed
            .refused
            .insert((from, id), ErrorCode::FederationRefused);
        return Err(ErrorCode::FederationRefused);
    }
    let signing_key = server.fed.signing_key;
    if let Some(e) = server.fed.outbox.get_mut(&id) {
        e.attempts = e.attempts.saturating_add(1);
    }
    state.network.federation.push(FedPacket::Request {
        origin: from,
        to: entry.destination,
        message: Signed {
            by: signing_key,
            payload: FedTbs {
                sender: from,
                destination: entry.destination,
                id,
                timestamp: now,
                queue_config: entry.queue_config,
                item: entry.item,
            },
        },
    });
    Ok(Reply::Empty)
}

/// Whether `id` is the oldest entry of `server`'s outbox for `destination` (ids grow as
/// entries are created), the only one its worker may send (Requirement: FED-ORDER-1).
pub fn is_next_for_destination(server: &Homeserver, id: FedMsgId, destination: DomainId) -> bool {
    server
        .fed
        .outbox
        .iter()
        .find(|(_, e)| e.destination == destination)
        .is_some_and(|(oldest, _)| *oldest == id)
}

/// The sender's outbox worker reads the answer to an attempt: delivered (or `REPLAYED`:
/// delivered before) deletes the entry; a transient refusal keeps it for a retry; any
/// other refusal drops it for good (Requirement: FED-3).
fn handle_answer(state: &mut State, at: DomainId, id: FedMsgId, outcome: Result<(), ErrorCode>) {
    let Some(server) = state.servers.get_mut(&at) else {
        return;
    };
    if !server.fed.outbox.contains_key(&id) {
        // An answer to an earlier attempt of an entry already settled.
        return;
    }
    match outcome {
        Ok(()) | Err(ErrorCode::Replayed) => {
            server.fed.outbox.remove(&id);
        }
        Err(code) if is_transient(code) => {}
        Err(code) => {
            server.fed.outbox.remove(&id);
            state.ghost.fed.refused.insert((at, id), code);
        }
    }
}

/// A restart: connections to and from `domain` die, the peer cache is emptied; the outbox
/// and the replay records are in the database and stay.
fn restart(state: &mut State, domain: DomainId) {
    let mut kept = Vec::new();
    for p in state.network.federation.iter() {
        let involved = match p {
            FedPacket::Request { origin, to, .. } => *origin == domain || *to == domain,
            FedPacket::Answer { from, to, .. } => *from == domain || *to == domain,
        };
        if !involved {
            kept.push(p.clone());
        }
    }
    state.network.federation = kept;
    if let Some(server) = state.servers.get_mut(&domain) {
        server.fed.peer_cache = BTreeSet::new();
    }
}

/// `POST /phoenix/v1/federation/enqueue` at the homeserver of `at`: the checks in the
/// server's order, then the enqueue and the replay record in one step.
pub fn receive(
    state: &mut State,
    at: DomainId,
    message: &FederatedEnqueue,
) -> Result<(), ErrorCode> {
    let result = receive_inner(state, at, message);
    if let Err(code) = result {
        state.ghost.fed.refusals.insert((at, code));
    }
    result
}

fn receive_inner(
    state: &mut State,
    at: DomainId,
    message: &FederatedEnqueue,
) -> Result<(), ErrorCode> {
    let now = state.now;
    let skew = state.config.clock_skew;
    let published = state.directory.get(&message.payload.sender).copied();
    let Some(server) = state.servers.get_mut(&at) else {
        return Err(ErrorCode::Unavailable);
    };
    let tbs = &message.payload;
    // Requirement: FED-4
    if !server.fed.policy.allows(tbs.sender) {
        return Err(ErrorCode::FederationRefused);
    }
    // Requirement: FED-1
    if tbs.destination != at {
        return Err(ErrorCode::Misaddressed);
    }
    let queue_domain = queue_config_domain(tbs.queue_config.to);
    if queue_domain != Some(at) {
        return Err(ErrorCode::Misaddressed);
    }
    // Requirement: FED-2
    if tbs.sender == at {
        return Err(ErrorCode::BadSignature);
    }
    let Some(key) = published else {
        return Err(ErrorCode::UnknownPeer);
    };
    server.fed.peer_cache.insert(tbs.sender);
    if !message.verifies_with(key) {
        return Err(ErrorCode::BadSignature);
    }
    if now.abs_diff(tbs.timestamp) > skew {
        return Err(ErrorCode::StaleRequest);
    }
    let Some(recipient) = server.qs.open_queue_config(&tbs.queue_config) else {
        return Err(ErrorCode::UnknownQueue);
    };
    // Requirement: FED-3
    if !server.fed.seen.insert((tbs.sender, tbs.id)) {
        return Err(ErrorCode::Replayed);
    }
    let Some(record) = server.qs.clients.get_mut(&recipient) else {
        return Err(ErrorCode::UnknownQueue);
    };
    let (next, _) = crate::queue::enqueue(&record.queue, &tbs.item);
    record.queue = next;
    let key_of = (tbs.sender, tbs.id);
    let n = state.ghost.fed.enqueued.get(&key_of).copied().unwrap_or(0);
    state.ghost.fed.enqueued.insert(key_of, n.saturating_add(1));
    state
        .ghost
        .fed
        .accepted_order
        .entry((tbs.sender, tbs.destination))
        .or_default()
        .push(tbs.id);
    state.ghost.fed.accepted.insert(FedAccepted {
        at,
        sender: tbs.sender,
        destination: tbs.destination,
        queue_domain,
        signer: message.by,
        id: tbs.id,
    });
    if let Some(f) = state.ghost.fed.fan_out.get(&key_of).copied() {
        state.ghost.deliveries.insert((
            f.group,
            f.epoch,
            f.sender_record,
            recipient,
            f.application,
        ));
    }
    Ok(())
}

/// A reliable network: attempt every outbox entry and deliver every packet until nothing
/// is left (what loopback between two running servers does, eventually). Bounded rounds.
pub fn flush(state: &mut State) {
    for _ in 0..64 {
        let mut pending = Vec::new();
        for (domain, server) in state.servers.iter() {
            for id in server.fed.outbox.keys() {
                pending.push((*domain, *id));
            }
        }
        if pending.is_empty() && state.network.federation.is_empty() {
            return;
        }
        for (from, id) in pending.iter() {
            let _ = run(
                state,
                &FedOp::Attempt {
                    from: *from,
                    id: *id,
                },
            );
        }
        while !state.network.federation.is_empty() {
            let _ = run(state, &FedOp::Deliver { index: 0 });
        }
    }
}

/// Whether nothing federated is pending: every outbox is empty and nothing is in flight.
pub fn quiescent(state: &State) -> bool {
    state.network.federation.is_empty() && state.servers.values().all(|s| s.fed.outbox.is_empty())
}
