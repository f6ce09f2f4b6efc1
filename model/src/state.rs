//! The world: homeservers, honest clients, the network, and ghost facts for the
//! invariants; and [`step`], the one transition function.
//!
//! A step is a pure function of (state, operation): it returns the next state and the
//! outcome. Raw API calls ([`Op::Call`]) are what the conformance suite sends to a real
//! server; client operations ([`Op::Client`]) are what the honest client library does,
//! built from calls; network and adversary operations exist for model checking.
//!
//! Ghost state is bookkeeping no service reads: what was served, enqueued, accepted, seen.
//! The invariants in [`crate::invariants`] are stated over it.

use std::collections::{BTreeMap, BTreeSet};

use crate::adversary::{self, AdvOp, Observation};
use crate::call::{Call, DsCall, Outcome};
use crate::client::{self, ClientOp, ClientRef, HonestClient};
use crate::federation::{self, FanOutGhost, FedGhost, FedOp, FedState};
use crate::ids::{ClientName, DomainId, Epoch, Fid, GroupId, KeyId, MsgId, PkgId, QsCid, Time};
use crate::network::{self, NetOp, Network};
use crate::queue::QueueItem;
use crate::{as_, ds, qs};

/// Operator-tunable limits the outcome depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Config {
    /// Most messages one dequeue returns (the server's `max_dequeue`).
    pub max_dequeue: u32,
    /// Lifetime of an issued client certificate.
    pub cert_lifetime: Time,
    /// How far a federated message's timestamp may be from the receiver's clock.
    pub clock_skew: Time,
    /// A deliberately broken client, to show the recovery invariants can fail
    /// ([`crate::recovery::ClientMutant`]; `None` in every real configuration).
    pub client_mutant: crate::recovery::ClientMutant,
    /// Group-creation tokens one client may be issued (the server's
    /// `group_tokens_per_day`).
    pub group_tokens_per_day: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_dequeue: 500,
            cert_lifetime: 30 * 24 * 3600,
            clock_skew: 300,
            client_mutant: crate::recovery::ClientMutant::None,
            group_tokens_per_day: 100,
        }
    }
}

/// One homeserver: its three services and its federation state (outbox, replay
/// records, policy).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Homeserver {
    pub domain: DomainId,
    pub as_: as_::AsState,
    pub qs: qs::QsState,
    pub ds: ds::DsState,
    pub fed: FedState,
}

impl Homeserver {
    /// A fresh homeserver: its CA key, QS queue-config key and QS signing key are named
    /// after the domain (keys 1000 + 2d, 1001 + 2d and 1500 + d), so they never collide
    /// with client keys.
    pub fn new(domain: DomainId) -> Self {
        let base = 1000u32.saturating_add(2u32.saturating_mul(u32::from(domain.0)));
        Self {
            domain,
            as_: as_::AsState::new(domain, KeyId(base)),
            qs: qs::QsState::new(domain, federation::queue_config_key(domain)),
            ds: ds::DsState::new(domain),
            fed: FedState::new(federation::qs_signing_key(domain)),
        }
    }
}

/// A queue, named for the ghost record of who dequeued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueRef {
    Direct(Fid, ClientName),
    Qs(QsCid),
}

/// A message a client accepted as from a verified sender, with the chain it checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Accepted {
    pub receiver: ClientRef,
    pub msg: MsgId,
    /// The sender as the chain names it.
    pub sender: Fid,
    /// The serial of the certificate the chain went through.
    pub serial: u32,
    /// The key that signed that certificate.
    pub issuer_key: KeyId,
    pub verified_at: Time,
}

/// What an honest sender put in a message (ghost: the truth the chain must lead to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sent {
    pub sender: Fid,
    pub leaf_key: KeyId,
    pub at: Time,
}

/// Facts for the invariants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ghost {
    /// How often each connection package was served, and whether it is last-resort.
    pub served_connection_packages: BTreeMap<PkgId, (bool, u32)>,
    /// The same for key packages.
    pub served_key_packages: BTreeMap<PkgId, (bool, u32)>,
    /// Every accepted dequeue: which queue, signed by which key.
    pub dequeues: BTreeSet<(QueueRef, KeyId)>,
    /// How many commits were accepted per (group, epoch they were for).
    pub commits: BTreeMap<(GroupId, Epoch), u32>,
    /// Who was a member (by true QS client record) of each group at each epoch.
    pub members_at: BTreeMap<(GroupId, Epoch), BTreeSet<QsCid>>,
    /// Every fan-out delivery: (group, epoch the item is about, sender's record if any,
    /// recipient record).
    pub deliveries: BTreeSet<(GroupId, Epoch, Option<QsCid>, QsCid, bool)>,
    /// What each request showed its handler.
    pub observations: BTreeSet<Observation>,
    /// Group-creation tokens an AS issued: (its domain, the token's name) (Requirement:
    /// DS-GID-3).
    pub tokens_issued: BTreeSet<(DomainId, u32)>,
    /// Serials of certificates a malicious AS minted.
    pub minted: BTreeSet<u32>,
    /// Group members an honest client showed as a contact's pinned client: (client, FID,
    /// certificate serial) (Requirement: ID-PIN-1).
    pub shown_pinned: BTreeSet<(crate::client::ClientRef, Fid, u32)>,
    /// Keys the adversary knows.
    pub adversary_keys: BTreeSet<KeyId>,
    /// Leaf keys that come from last-resort key packages (reusable, hence linkable).
    pub last_resort_leaf_keys: BTreeSet<KeyId>,
    pub sent: BTreeMap<MsgId, Sent>,
    pub accepted: BTreeSet<Accepted>,
    /// How many distinct messages a client created under each message id, i.e. under each
    /// ratchet generation of its (Requirement: CL-AMBIG-1).
    pub created: BTreeMap<MsgId, u32>,
    /// Application messages a client was told were sent (an answer, or `REPLAYED` to a
    /// resent copy).
    pub acknowledged: BTreeSet<MsgId>,
    /// Commits a client merged as its own: (group, epoch it was for, the client's leaf).
    pub merged_own: BTreeSet<(GroupId, Epoch, u32)>,
    /// Who committed each accepted commit: (group, epoch it was for) → the signer's leaf.
    pub committers: BTreeMap<(GroupId, Epoch), u32>,
    /// Federation: created, enqueued, accepted and refused federated messages.
    pub fed: FedGhost,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct State {
    pub now: Time,
    pub config: Config,
    pub servers: BTreeMap<DomainId, Homeserver>,
    pub clients: BTreeMap<ClientRef, HonestClient>,
    pub network: Network,
    /// The QS verifying key each domain's discovery document publishes (honest
    /// homeservers and a malicious remote server alike).
    pub directory: BTreeMap<DomainId, KeyId>,
    pub ghost: Ghost,
}

impl State {
    /// `n` empty homeservers (domains 0..n) at time 0.
    pub fn new(config: Config, homeservers: u8) -> Self {
        let mut servers = BTreeMap::new();
        let mut directory = BTreeMap::new();
        for d in 0..homeservers {
            let server = Homeserver::new(DomainId(d));
            directory.insert(DomainId(d), server.fed.signing_key);
            servers.insert(DomainId(d), server);
        }
        Self {
            now: 0,
            config,
            servers,
            clients: BTreeMap::new(),
            network: Network::default(),
            directory,
            ghost: Ghost::default(),
        }
    }

    pub fn server(&self, domain: DomainId) -> Option<&Homeserver> {
        self.servers.get(&domain)
    }
}

/// Everything the world can do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// A raw API call to the homeserver of domain `to`.
    Call { to: DomainId, call: Call },
    /// An honest client does something (built from calls).
    Client(ClientOp),
    /// The network drops, duplicates or delivers something.
    Net(NetOp),
    /// Federation: an outbox attempt, or the network acting on a federated packet, or a
    /// restart.
    Fed(FedOp),
    /// An adversary acts.
    Adversary(AdvOp),
    /// A client request whose answer is lost, and the client settling it.
    Recovery(crate::recovery::RecoveryOp),
    /// Time passes.
    Tick,
}

/// The one transition function.
pub fn step(state: &State, op: &Op) -> (State, Outcome) {
    let mut next = state.clone();
    let outcome = match op {
        Op::Call { to, call } => call_server(&mut next, *to, call),
        Op::Client(op) => client::run(&mut next, op),
        Op::Net(op) => network::run(&mut next, op),
        Op::Fed(op) => federation::run(&mut next, op),
        Op::Adversary(op) => adversary::run(&mut next, op),
        Op::Recovery(op) => crate::recovery::run(&mut next, op),
        Op::Tick => {
            next.now = next.now.saturating_add(1);
            Ok(crate::call::Reply::Empty)
        }
    };
    (next, outcome)
}

/// The id the model gives the commit a DS call carries: unique per (group, epoch) (the
/// group's domain, up to 8, and number, up to 65,535, and the epoch modulo 4,096), which is
/// enough because only one commit per (group, epoch) is ever accepted.
pub fn commit_id(call: &DsCall) -> MsgId {
    let (group, epoch) = match call {
        DsCall::JoinConnectionGroup { group, epoch, .. }
        | DsCall::AddUsers { group, epoch, .. }
        | DsCall::RemoveUsers { group, epoch, .. }
        | DsCall::Update { group, epoch, .. }
        | DsCall::Resync { group, epoch, .. } => (*group, *epoch),
        _ => return MsgId(0),
    };
    let d = (u32::from(group.domain.0) & 0x7) << 28;
    let g = (group.n & 0xffff) << 12;
    let e = u32::try_from(epoch).unwrap_or(u32::MAX) & 0xfff;
    MsgId(0x8000_0000 | d | g | e)
}

/// Send `call` to the homeserver of `to`, apply the effects, record what it showed.
pub fn call_server(state: &mut State, to: DomainId, call: &Call) -> Outcome {
    state
        .ghost
        .observations
        .insert(adversary::observe(to, call));
    let now = state.now;
    let config = state.config;
    let Some(server) = state.servers.get_mut(&to) else {
        // No homeserver of that domain in this world: it cannot be reached.
        return Err(phoenix_types::error::ErrorCode::Unavailable);
    };
    match call {
        Call::As(c) => {
            let outcome = as_::handle(&mut server.as_, &mut state.ghost, &config, now, c);
            if outcome.is_ok() && as_::replay_protected(c) {
                state.network.last_as = Some((to, c.clone()));
            }
            outcome
        }
        Call::Qs(c) => {
            let outcome = qs::handle(&mut server.qs, &mut state.ghost, &config, c);
            if outcome.is_ok() && qs::replay_protected(c) {
                state.network.last_qs = Some((to, c.clone()));
            }
            outcome
        }
        Call::Ds(c) => {
            let before = epoch_of(&server.ds, c);
            let (outcome, effects) = ds::handle(&mut server.ds, c, commit_id(c));
            if outcome.is_ok() {
                record_ds_ghost(state, to, c, before);
                deliver(state, to, &effects);
                if !matches!(
                    c,
                    DsCall::RequestGroupId { .. } | DsCall::ExternalCommitInfo { .. }
                ) {
                    state.network.last_ds = Some((to, c.clone()));
                }
            }
            outcome
        }
    }
}

/// The group a DS call is about, with the epoch its commit names (the epoch a commit is
/// *for*, which the ghost counts commits by: counting by the DS's own epoch instead would
/// make `one_commit_per_epoch` true of any server) or, for other calls, the group's
/// current epoch.
fn epoch_of(ds: &ds::DsState, call: &DsCall) -> Option<(GroupId, Epoch)> {
    if let DsCall::JoinConnectionGroup { group, epoch, .. }
    | DsCall::AddUsers { group, epoch, .. }
    | DsCall::RemoveUsers { group, epoch, .. }
    | DsCall::Update { group, epoch, .. } = call
    {
        return Some((*group, *epoch));
    }
    let group = match call {
        DsCall::CreateGroup { group, .. }
        | DsCall::ExternalCommitInfo { group, .. }
        | DsCall::JoinConnectionGroup { group, .. }
        | DsCall::AddUsers { group, .. }
        | DsCall::RemoveUsers { group, .. }
        | DsCall::Update { group, .. }
        | DsCall::Resync { group, .. }
        | DsCall::SendMessage { group, .. } => *group,
        DsCall::RequestGroupId { .. } => return None,
    };
    Some((group, ds.groups.get(&group).map(|g| g.epoch).unwrap_or(0)))
}

/// Ghost: one more accepted commit for (group, epoch), and the membership of each epoch.
fn record_ds_ghost(
    state: &mut State,
    to: DomainId,
    call: &DsCall,
    before: Option<(GroupId, Epoch)>,
) {
    let is_commit = matches!(
        call,
        DsCall::JoinConnectionGroup { .. }
            | DsCall::AddUsers { .. }
            | DsCall::RemoveUsers { .. }
            | DsCall::Update { .. }
            | DsCall::Resync { .. }
    );
    if let (true, Some(key)) = (is_commit, before) {
        let n = state.ghost.commits.get(&key).copied().unwrap_or(0);
        state.ghost.commits.insert(key, n.saturating_add(1));
        if let DsCall::AddUsers { signer, .. }
        | DsCall::RemoveUsers { signer, .. }
        | DsCall::Update { signer, .. } = call
        {
            state.ghost.committers.insert(key, signer.leaf);
        }
    }
    let Some((group, _)) = before else { return };
    let Some(server) = state.servers.get(&to) else {
        return;
    };
    let Some(g) = server.ds.groups.get(&group) else {
        return;
    };
    let mut members = BTreeSet::new();
    for m in g.members.values() {
        if let Some(id) = queue_record_of(state, &m.queue_config) {
            members.insert(id);
        }
    }
    let epoch = g.epoch;
    state
        .ghost
        .members_at
        .entry((group, epoch))
        .or_insert(members);
}

/// The true client record a sealed queue config names (ghost: any homeserver's key).
fn queue_record_of(state: &State, sealed: &crate::ids::Sealed<QsCid>) -> Option<QsCid> {
    for server in state.servers.values() {
        if let Some(id) = server.qs.open_queue_config(sealed) {
            return Some(id);
        }
    }
    None
}

/// Deliver fan-out: local entries go to this server's QS right away (the server's outbox
/// delivers local entries before answering); entries for another domain's QS go into this
/// server's outbox, for [`federation`] to forward; a queue config that names no QS is
/// dropped.
fn deliver(state: &mut State, from: DomainId, effects: &[ds::FanOut]) {
    for effect in effects.iter() {
        let (group, epoch, sender) = match &effect.item {
            QueueItem::Commit {
                group,
                epoch,
                sender,
                ..
            }
            | QueueItem::Application {
                group,
                epoch,
                sender,
                ..
            } => (*group, *epoch, Some(*sender)),
            QueueItem::Welcome { group, epoch, .. } => (*group, *epoch, None),
            QueueItem::Opaque(_) => continue,
        };
        let is_app = matches!(effect.item, QueueItem::Application { .. });
        // The sender's own record, if it is a member at that epoch.
        let sender_record = sender.and_then(|leaf| {
            state
                .servers
                .get(&from)
                .and_then(|s| s.ds.groups.get(&group))
                .and_then(|g| g.members.get(&leaf))
                .map(|m| m.queue_config.clone())
                .and_then(|c| queue_record_of(state, &c))
        });
        let Some(server) = state.servers.get_mut(&from) else {
            continue;
        };
        if effect.queue_config.to != server.qs.queue_config_key {
            if let Some(destination) = federation::queue_config_domain(effect.queue_config.to)
                && destination != from
            {
                let ghost = FanOutGhost {
                    group,
                    epoch,
                    sender_record,
                    application: is_app,
                };
                federation::enqueue_outbox(
                    state,
                    from,
                    destination,
                    &effect.queue_config,
                    &effect.item,
                    ghost,
                );
            }
            continue;
        }
        if let Some(recipient) = qs::enqueue(&mut server.qs, &effect.queue_config, &effect.item) {
            state
                .ghost
                .deliveries
                .insert((group, epoch, sender_record, recipient, is_app));
        }
    }
}
