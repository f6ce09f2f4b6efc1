//! Exhaustive model checking (stateright, breadth-first) of federation: two homeservers
//! (a.test with alice and carol, b.test with bob), three clients, a group hosted on each
//! server with members on both, the durable outboxes between them, and a federated network
//! that drops, duplicates and reorders requests and answers; the servers restart; a
//! malicious remote server (evil.test, with its own published key; a.test blocks it) sends
//! honest, forged, replayed, misrouted and stale federated enqueues. Every invariant of
//! `phoenix_model::invariants` (exactly once, no loss, no open relay, no forged enqueue,
//! per-client queue order, the authentication chain ending at the sender's home CA, ...)
//! is checked in every reachable state; budgets bound the configuration so the search
//! terminates.
//!
//! Run with `cargo test -p phoenix-model --test federation_check -- --nocapture` to see
//! the state count; `PHOENIX_FED_BUDGET="sends=3,drops=2"` explores a bigger configuration.
//!
//! Requirement: MODEL-1, FED-1, FED-2, FED-3, FED-4, ADV-REMOTE-1, ADV-NET-1, QS-Q-2,
//! ID-CHAIN-1, ID-CHAIN-2

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use stateright::{Model, Property};

use phoenix_model::adversary::{AdvOp, NOWHERE_DOMAIN, REMOTE_DOMAIN, RemoteSend};
use phoenix_model::client::ClientOp;
use phoenix_model::federation::{self, FedMsgId, FedOp};
use phoenix_model::ids::{GroupId, MsgId};
use phoenix_model::invariants;
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world::{self, A, ALICE, B, BOB};
use phoenix_types::error::ErrorCode;

use common::{CLIENTS, Check};

/// The budget overrides (see `with_overrides`).
const OVERRIDES: &str = "PHOENIX_FED_BUDGET";

/// How much of each kind of action one path may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    /// Application messages sent.
    sends: u8,
    /// Update commits.
    commits: u8,
    /// Federated packets the network drops.
    drops: u8,
    /// Federated packets the network duplicates.
    duplicates: u8,
    /// Server restarts.
    restarts: u8,
    /// Federated enqueues of the malicious remote server.
    remote: u8,
    /// Federated packets in flight at once.
    in_flight: usize,
    /// Delivery attempts per outbox entry.
    attempts: u32,
}

type World = common::World<Budget>;

struct Federation {
    limits: Budget,
    init: State,
    groups: [GroupId; 2],
    /// The malicious remote server's repertoire.
    remote: Vec<RemoteSend>,
}

impl Federation {
    fn new(limits: Budget) -> Self {
        let (init, g1, g2) = world::federated_world(Config::default());
        let bob_queue = init.clients[&BOB].qs_id;
        let alice_queue = init.clients[&ALICE].qs_id;
        let send = |to, sender, destination, queue_domain, victim, id, stale, msg| RemoteSend {
            to,
            sender,
            destination,
            queue_domain,
            victim,
            id: FedMsgId(id),
            stale,
            msg: MsgId(msg),
        };
        let remote = vec![
            // Honest (its own name, its own key): b.test accepts it, a.test refuses it.
            send(B, REMOTE_DOMAIN, B, B, bob_queue, 0, false, 900_000),
            send(A, REMOTE_DOMAIN, A, A, alice_queue, 1, false, 900_001),
            // The same id again with another payload: a replay once the first arrived.
            send(B, REMOTE_DOMAIN, B, B, bob_queue, 0, false, 900_002),
            // Forged: claims to be a.test (and reuses an id a.test uses).
            send(B, A, B, B, bob_queue, 0, false, 900_003),
            // Misrouted: for c.test, or with a queue config of a.test.
            send(
                B,
                REMOTE_DOMAIN,
                NOWHERE_DOMAIN,
                B,
                bob_queue,
                2,
                false,
                900_004,
            ),
            send(B, REMOTE_DOMAIN, B, A, alice_queue, 3, false, 900_005),
            // Stale.
            send(B, REMOTE_DOMAIN, B, B, bob_queue, 4, true, 900_006),
        ];
        Self {
            limits,
            init,
            groups: [g1, g2],
            remote,
        }
    }
}

impl Model for Federation {
    type State = World;
    type Action = Op;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            state: self.init.clone(),
            used: NOTHING,
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Op>) {
        let (l, u, s) = (&self.limits, &w.used, &w.state);
        for c in CLIENTS {
            let Some(client) = s.clients.get(&c) else {
                continue;
            };
            for g in self.groups {
                if !client.groups.get(&g).is_some_and(|v| v.active) {
                    continue;
                }
                // Messages that cross servers: alice's in the group on a.test (to bob on
                // b.test, and locally to carol), bob's in the group on b.test (to alice on
                // a.test). (Local-only traffic is the other model check's.)
                let crosses =
                    (c == ALICE && g == self.groups[0]) || (c == BOB && g == self.groups[1]);
                if u.sends < l.sends && crosses {
                    actions.push(Op::Client(ClientOp::Send {
                        client: c,
                        group: g,
                    }));
                }
                if u.commits < l.commits {
                    actions.push(Op::Client(ClientOp::Update {
                        client: c,
                        group: g,
                    }));
                }
            }
            if common::has_queued(s, c) {
                actions.push(Op::Client(ClientOp::Sync { client: c }));
            }
        }
        let in_flight = s.network.federation.len();
        for (domain, server) in s.servers.iter() {
            for (id, entry) in server.fed.outbox.iter() {
                // Requirement: FED-ORDER-1 (only a destination's oldest entry is sent)
                if in_flight < l.in_flight
                    && entry.attempts < l.attempts
                    && federation::is_next_for_destination(server, *id, entry.destination)
                {
                    actions.push(Op::Fed(FedOp::Attempt {
                        from: *domain,
                        id: *id,
                    }));
                }
            }
        }
        for index in 0..in_flight {
            // Equal packets are interchangeable: deliver, drop or copy the first of a run.
            if index > 0 && s.network.federation[index - 1] == s.network.federation[index] {
                continue;
            }
            actions.push(Op::Fed(FedOp::Deliver { index }));
            if u.drops < l.drops {
                actions.push(Op::Fed(FedOp::Drop { index }));
            }
            if u.duplicates < l.duplicates && in_flight < l.in_flight {
                actions.push(Op::Fed(FedOp::Duplicate { index }));
            }
        }
        if u.restarts < l.restarts {
            for domain in [A, B] {
                actions.push(Op::Fed(FedOp::Restart { domain }));
            }
        }
        if u.remote < l.remote {
            for send in self.remote.iter() {
                actions.push(Op::Adversary(AdvOp::RemoteSend(send.clone())));
            }
        }
    }

    fn next_state(&self, w: &World, op: Op) -> Option<World> {
        let (state, _) = step(&w.state, &op);
        let mut used = w.used;
        match &op {
            Op::Client(ClientOp::Send { .. }) => used.sends += 1,
            Op::Client(ClientOp::Update { .. }) => used.commits += 1,
            Op::Fed(FedOp::Drop { .. }) => used.drops += 1,
            Op::Fed(FedOp::Duplicate { .. }) => used.duplicates += 1,
            Op::Fed(FedOp::Restart { .. }) => used.restarts += 1,
            Op::Adversary(AdvOp::RemoteSend(_)) => used.remote += 1,
            _ => {}
        }
        Some(World { state, used })
    }

    fn properties(&self) -> Vec<Property<Self>> {
        macro_rules! always {
            ($($f:ident),* $(,)?) => {
                vec![$(Property::<Self>::always(
                    stringify!($f),
                    |_, w: &World| invariants::$f(&w.state),
                )),*]
            };
        }
        macro_rules! refused {
            ($name:literal, $code:expr) => {
                Property::<Self>::sometimes($name, |_, w: &World| {
                    w.state.ghost.fed.refusals.iter().any(|(_, c)| *c == $code)
                })
            };
        }
        // Every invariant of the model, including the federation ones.
        let mut properties = always![
            inv_queues_well_formed,
            inv_client_receives_in_order,
            inv_only_owner_dequeues,
            inv_one_commit_per_epoch,
            inv_one_time_packages_served_once,
            inv_no_fan_out_to_non_members,
            inv_ds_cannot_link_pseudonyms,
            inv_snapshot_unlinkable,
            inv_operator_sees_no_identity_with_pseudonym,
            inv_accepted_chain_ends_at_home_ca,
            inv_no_minted_credential_trusted,
            inv_federated_exactly_once,
            inv_federated_no_loss,
            inv_no_open_relay,
            inv_no_forged_enqueue_accepted,
            // Requirement: FED-ORDER-1
            inv_federation_delivers_in_order_per_destination,
        ];
        // Reachability: the search does get to the interesting states.
        properties.extend([
            Property::sometimes(
                "a message crossed servers and was accepted",
                |_, w: &World| {
                    w.state.ghost.accepted.iter().any(|a| {
                        w.state.clients.get(&a.receiver).map(|c| c.fid.domain)
                            != Some(a.sender.domain)
                    })
                },
            ),
            Property::sometimes("delivered exactly once after a drop", |_, w: &World| {
                w.used.drops > 0
                    && federation::quiescent(&w.state)
                    && w.state.ghost.fed.created.len() > 3
            }),
            Property::sometimes("a duplicate was answered REPLAYED", |_, w: &World| {
                w.used.duplicates > 0
                    && w.state
                        .ghost
                        .fed
                        .refusals
                        .iter()
                        .any(|(_, c)| *c == ErrorCode::Replayed)
            }),
            Property::sometimes("an outbox entry outlived a restart", |_, w: &World| {
                w.used.restarts > 0 && w.state.servers.values().any(|s| !s.fed.outbox.is_empty())
            }),
            refused!("the remote forgery was refused", ErrorCode::BadSignature),
            refused!("the remote misroute was refused", ErrorCode::Misaddressed),
            refused!(
                "the remote server was refused by policy",
                ErrorCode::FederationRefused
            ),
            refused!("the stale message was refused", ErrorCode::StaleRequest),
            Property::sometimes(
                "the remote server's honest message was accepted",
                |_, w: &World| {
                    w.state
                        .ghost
                        .fed
                        .accepted
                        .iter()
                        .any(|a| a.sender == REMOTE_DOMAIN)
                },
            ),
        ]);
        properties
    }
}

const NOTHING: Budget = Budget {
    sends: 0,
    commits: 0,
    drops: 0,
    duplicates: 0,
    restarts: 0,
    remote: 0,
    in_flight: 0,
    attempts: 0,
};

/// `PHOENIX_FED_BUDGET="sends=3,drops=2"` overrides budgets (to explore a bigger
/// configuration by hand).
fn with_overrides(limits: Budget) -> Budget {
    common::with_overrides(OVERRIDES, limits, |b, name, n| match name {
        "sends" => b.sends = n,
        "commits" => b.commits = n,
        "drops" => b.drops = n,
        "duplicates" => b.duplicates = n,
        "restarts" => b.restarts = n,
        "remote" => b.remote = n,
        "in_flight" => b.in_flight = usize::from(n),
        "attempts" => b.attempts = u32::from(n),
        other => panic!("unknown budget {other}"),
    })
}

fn check(name: &str, limits: Budget, reachable: &[&'static str]) {
    let limits = with_overrides(limits);
    let check = Check {
        title: "federation model check",
        name,
        overrides: OVERRIDES,
        min_unique: 10_000,
        reachable,
    };
    common::check(Federation::new(limits), &limits, &check);
}

/// Two homeservers, three clients, two messages that cross servers (one each way) over a
/// federated network that drops one packet, duplicates one and reorders them (two in
/// flight, two attempts per outbox entry), and one restart of either server.
#[test]
fn two_homeservers_over_a_lossy_duplicating_reordering_network() {
    check(
        "network",
        Budget {
            sends: 2,
            commits: 0,
            drops: 1,
            duplicates: 1,
            restarts: 1,
            remote: 0,
            in_flight: 2,
            attempts: 2,
        },
        &[
            "a message crossed servers and was accepted",
            "delivered exactly once after a drop",
            "a duplicate was answered REPLAYED",
            "an outbox entry outlived a restart",
        ],
    );
}

/// The malicious remote server sends two of its repertoire (honest, refused by policy,
/// replayed, forged, misrouted twice, stale) while one message crosses servers over a
/// network that drops one packet and duplicates one.
#[test]
fn a_malicious_remote_server_forges_replays_and_misroutes() {
    check(
        "malicious peer",
        Budget {
            sends: 1,
            commits: 0,
            drops: 1,
            duplicates: 1,
            restarts: 0,
            remote: 2,
            in_flight: 2,
            attempts: 2,
        },
        &[
            "a message crossed servers and was accepted",
            "a duplicate was answered REPLAYED",
            "the remote forgery was refused",
            "the remote misroute was refused",
            "the remote server was refused by policy",
            "the stale message was refused",
            "the remote server's honest message was accepted",
        ],
    );
}
