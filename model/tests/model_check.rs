//! Exhaustive model checking (stateright, breadth-first) of the model's invariants over a
//! small configuration: one homeserver, three clients (alice, bob, carol, all contacts of
//! each other), two groups (alice+bob, alice+carol), and a lossy, duplicating, reordering
//! network between the clients and their queue. Clients send, commit updates, add and
//! remove members, dequeue through the network; the adversary replays DS requests and
//! publications of key packages (ADV-REPLAY-3: a replay restores no handed-out package,
//! `one_time_packages_served_once`), forges dequeues, and a malicious AS mints a second
//! credential for bob. A second configuration has the malicious AS use it: its client
//! connects with carol (who never met bob), carol invites it into her group with alice
//! (bob's contact), and it sends there; the same configuration against a client that
//! skips the pin check must violate `no_minted_credential_trusted`. Every invariant of
//! `phoenix_model::invariants` is checked in every reachable state; budgets bound the
//! configuration so the search terminates.
//!
//! Run with `cargo test -p phoenix-model --test model_check -- --nocapture` to see the
//! state counts.
//!
//! Requirement: MODEL-1, QS-Q-1, QS-Q-2, QS-DEQ-1, ADV-NET-1, QS-AUTH-1, AS-AUTH-1,
//! DS-EPOCH-1, DS-EPOCH-2, AS-CP-3, QS-KP-3, DS-FAN-1, DS-FAN-2, DS-ADD-1, DS-PRIV-1,
//! ADV-SNAP-2, ADV-OP-1, ADV-OP-2, ID-CHAIN-1, ID-CHAIN-2, ID-CONN-1, ADV-AS-1, ADV-REPLAY-1,
//! ID-PIN-1, ADV-REPLAY-3, ADV-REPLAY-4

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use stateright::{Checker, Model, Property};

use phoenix_model::adversary::AdvOp;
use phoenix_model::client::{ClientOp, ClientRef};
use phoenix_model::ids::{DomainId, GroupId};
use phoenix_model::invariants;
use phoenix_model::mutants::ServerMutant;
use phoenix_model::network::{NetOp, Packet};
use phoenix_model::queue::QueueItem;
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world::{self, ALICE, BOB, CAROL};

use common::{CLIENTS, Check};

/// The budget overrides (see `with_overrides`).
const OVERRIDES: &str = "PHOENIX_MODEL_BUDGET";

/// How much of each kind of action one path may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    sends: u8,
    commits: u8,
    /// Resyncs by external commit (Requirement: DS-RESYNC-1).
    resyncs: u8,
    adds: u8,
    removes: u8,
    drops: u8,
    duplicates: u8,
    replays: u8,
    /// Of the replays, those of publications (AS or QS); counted, never limited.
    publication_replays: u8,
    mints: u8,
    checks: u8,
    ticks: u8,
    /// Packets in flight at once; 0: no network, clients sync atomically instead.
    in_flight: usize,
}

type World = common::World<Budget>;

struct Phoenix {
    limits: Budget,
    init: State,
    groups: [GroupId; 2],
}

impl Phoenix {
    fn new(limits: Budget) -> Self {
        // Certificates live 2 time units: a tick or two makes them expire, so validity
        // windows matter.
        let config = Config {
            max_dequeue: 500,
            cert_lifetime: 2,
            ..Config::default()
        };
        let (init, g1, g2) = world::checker_world(config);
        Self {
            limits,
            init,
            groups: [g1, g2],
        }
    }
}

impl Model for Phoenix {
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
                let Some(view) = client.groups.get(&g) else {
                    continue;
                };
                if !view.active {
                    continue;
                }
                if u.sends < l.sends {
                    actions.push(Op::Client(ClientOp::Send {
                        client: c,
                        group: g,
                    }));
                }
                if u.resyncs < l.resyncs {
                    actions.push(Op::Client(ClientOp::Resync {
                        client: c,
                        group: g,
                    }));
                }
                if u.commits < l.commits {
                    actions.push(Op::Client(ClientOp::Update {
                        client: c,
                        group: g,
                    }));
                    if u.adds < l.adds {
                        // Honest clients invite contacts that are not already members.
                        for invitee in CLIENTS {
                            let Some(other) = s.clients.get(&invitee) else {
                                continue;
                            };
                            let member = other.groups.get(&g).is_some_and(|v| v.active);
                            if invitee != c && !member && client.contacts.contains_key(&other.fid) {
                                actions.push(Op::Client(ClientOp::Add {
                                    client: c,
                                    group: g,
                                    invitee: other.fid,
                                }));
                            }
                        }
                    }
                    if u.removes < l.removes {
                        for leaf in view.members.keys() {
                            if *leaf != view.leaf {
                                actions.push(Op::Client(ClientOp::Remove {
                                    client: c,
                                    group: g,
                                    leaf: *leaf,
                                }));
                            }
                        }
                    }
                }
            }
            if l.in_flight == 0 {
                if common::has_queued(s, c) {
                    actions.push(Op::Client(ClientOp::Sync { client: c }));
                }
            } else if s.network.in_flight.len() < l.in_flight && common::has_queued(s, c) {
                // (A dequeue of an empty queue changes nothing but the network.)
                actions.push(Op::Net(NetOp::SendDequeue { client: c }));
            }
        }
        for (index, packet) in s.network.in_flight.iter().enumerate() {
            match packet {
                Packet::Dequeue { .. } => actions.push(Op::Net(NetOp::Serve { index, max: 2 })),
                Packet::Dequeued { .. } => actions.push(Op::Net(NetOp::Receive { index })),
            }
            if u.drops < l.drops {
                actions.push(Op::Net(NetOp::Drop { index }));
            }
            if u.duplicates < l.duplicates && s.network.in_flight.len() < l.in_flight + 1 {
                actions.push(Op::Net(NetOp::Duplicate { index }));
            }
        }
        if u.replays < l.replays && s.network.last_ds.is_some() {
            actions.push(Op::Adversary(AdvOp::ReplayDs));
        }
        // Replays of the signed AS and QS requests (publications of packages; clients
        // publish key packages when they join a group) (Requirement: ADV-REPLAY-3).
        if u.replays < l.replays && s.network.last_qs.is_some() {
            actions.push(Op::Adversary(AdvOp::ReplayQs));
        }
        if u.replays < l.replays && s.network.last_as.is_some() {
            actions.push(Op::Adversary(AdvOp::ReplayAs));
        }
        if u.mints < l.mints {
            actions.push(Op::Adversary(AdvOp::MintCredential {
                fid: world::fid(BOB.0),
            }));
        }
        if u.checks < l.checks {
            actions.push(Op::Client(ClientOp::CheckContact {
                client: ALICE,
                contact: world::fid(BOB.0),
            }));
        }
        if let Some(carol) = s.clients.get(&CAROL) {
            // A forged dequeue of carol's queue and of her direct queue (always refused;
            // the invariants check that nothing was handed out).
            actions.push(Op::Adversary(AdvOp::ForgeDequeue {
                victim: carol.qs_id,
                domain: DomainId(0),
            }));
            actions.push(Op::Adversary(AdvOp::ForgeDirectDequeue {
                victim: carol.fid,
            }));
            // A group id asked for with a token the AS did not issue (always refused).
            actions.push(Op::Adversary(AdvOp::ForgeGroupToken {
                domain: DomainId(0),
            }));
        }
        if u.ticks < l.ticks {
            actions.push(Op::Tick);
        }
    }

    fn next_state(&self, w: &World, op: Op) -> Option<World> {
        let (state, _) = step(&w.state, &op);
        let mut used = w.used;
        match &op {
            Op::Client(ClientOp::Send { .. }) => used.sends += 1,
            Op::Client(ClientOp::Update { .. }) => used.commits += 1,
            Op::Client(ClientOp::Resync { .. }) => used.resyncs += 1,
            Op::Client(ClientOp::Add { .. }) => {
                used.commits += 1;
                used.adds += 1;
            }
            Op::Client(ClientOp::Remove { .. }) => {
                used.commits += 1;
                used.removes += 1;
            }
            Op::Client(ClientOp::CheckContact { .. }) => used.checks += 1,
            Op::Net(NetOp::Drop { .. }) => used.drops += 1,
            Op::Net(NetOp::Duplicate { .. }) => used.duplicates += 1,
            Op::Adversary(AdvOp::ReplayDs) => used.replays += 1,
            Op::Adversary(AdvOp::ReplayAs | AdvOp::ReplayQs) => {
                used.replays += 1;
                used.publication_replays += 1;
            }
            Op::Adversary(AdvOp::MintCredential { .. }) => used.mints += 1,
            Op::Tick => used.ticks += 1,
            _ => {}
        }
        Some(World { state, used })
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("queues_well_formed", |_, w: &World| {
                invariants::inv_queues_well_formed(&w.state)
            }),
            Property::always("client_receives_in_order", |_, w: &World| {
                invariants::inv_client_receives_in_order(&w.state)
            }),
            Property::always("only_owner_dequeues", |_, w: &World| {
                invariants::inv_only_owner_dequeues(&w.state)
            }),
            Property::always("one_commit_per_epoch", |_, w: &World| {
                invariants::inv_one_commit_per_epoch(&w.state)
            }),
            Property::always("one_time_packages_served_once", |_, w: &World| {
                invariants::inv_one_time_packages_served_once(&w.state)
            }),
            Property::always("no_fan_out_to_non_members", |_, w: &World| {
                invariants::inv_no_fan_out_to_non_members(&w.state)
            }),
            Property::always("ds_cannot_link_pseudonyms", |_, w: &World| {
                invariants::inv_ds_cannot_link_pseudonyms(&w.state)
            }),
            Property::always("snapshot_unlinkable", |_, w: &World| {
                invariants::inv_snapshot_unlinkable(&w.state)
            }),
            Property::always("snapshot_shows_no_queue_group", |_, w: &World| {
                invariants::inv_snapshot_shows_no_queue_group(&w.state)
            }),
            Property::always(
                "operator_sees_no_identity_with_pseudonym",
                |_, w: &World| invariants::inv_operator_sees_no_identity_with_pseudonym(&w.state),
            ),
            Property::always("accepted_chain_ends_at_home_ca", |_, w: &World| {
                invariants::inv_accepted_chain_ends_at_home_ca(&w.state)
            }),
            Property::always("no_minted_credential_trusted", |_, w: &World| {
                invariants::inv_no_minted_credential_trusted(&w.state)
            }),
            // Reachability: the search does get to the interesting states.
            Property::sometimes("a message is accepted", |_, w: &World| {
                !w.state.ghost.accepted.is_empty()
            }),
            Property::always("no_message_fanned_out_twice", |_, w: &World| {
                invariants::inv_no_message_fanned_out_twice(&w.state)
            }),
            // Requirement: DS-GID-3
            Property::always("groups_only_for_local_clients", |_, w: &World| {
                invariants::inv_groups_only_for_local_clients(&w.state)
            }),
            // Requirement: DS-RESYNC-2
            Property::always("member_in_one_leaf", |_, w: &World| {
                invariants::inv_member_in_one_leaf(&w.state)
            }),
            Property::sometimes("a member resynced", |_, w: &World| {
                matches!(
                    w.state.network.last_ds,
                    Some((_, phoenix_model::call::DsCall::Resync { .. }))
                )
            }),
            Property::sometimes("a DS request is replayed", |_, w: &World| {
                w.used.replays > w.used.publication_replays
            }),
            Property::sometimes(
                "a publication is replayed after a package was handed out",
                |_, w: &World| {
                    w.used.publication_replays > 0
                        && w.state
                            .ghost
                            .served_key_packages
                            .values()
                            .any(|(last_resort, _)| !last_resort)
                },
            ),
            Property::sometimes(
                "the malicious AS's credential is noticed",
                |_, w: &World| invariants::some_alert_raised(&w.state),
            ),
            Property::sometimes("a removed member is out", |_, w: &World| {
                w.state
                    .clients
                    .values()
                    .any(|c| c.groups.values().any(|v| !v.active))
            }),
        ]
    }
}

const NOTHING: Budget = Budget {
    sends: 0,
    commits: 0,
    resyncs: 0,
    adds: 0,
    removes: 0,
    drops: 0,
    duplicates: 0,
    replays: 0,
    publication_replays: 0,
    mints: 0,
    checks: 0,
    ticks: 0,
    in_flight: 0,
};

/// `PHOENIX_MODEL_BUDGET="sends=3,ticks=1"` overrides some budgets of every configuration
/// (to explore a bigger one by hand).
fn with_overrides(limits: Budget) -> Budget {
    common::with_overrides(OVERRIDES, limits, |b, name, n| match name {
        "sends" => b.sends = n,
        "commits" => b.commits = n,
        "resyncs" => b.resyncs = n,
        "adds" => b.adds = n,
        "removes" => b.removes = n,
        "drops" => b.drops = n,
        "duplicates" => b.duplicates = n,
        "replays" => b.replays = n,
        "mints" => b.mints = n,
        "checks" => b.checks = n,
        "ticks" => b.ticks = n,
        "in_flight" => b.in_flight = usize::from(n),
        other => panic!("unknown budget {other}"),
    })
}

/// Check every invariant in every reachable state of the configuration `limits`; the
/// `sometimes` properties named in `reachable` must be reached (the search is not
/// vacuous).
fn check(name: &str, limits: Budget, reachable: &[&'static str]) {
    let limits = with_overrides(limits);
    let check = Check {
        title: "model check",
        name,
        overrides: OVERRIDES,
        min_unique: 1_000,
        reachable,
    };
    common::check(Phoenix::new(limits), &limits, &check);
}

/// Queue delivery through a lossy, duplicating, reordering network: a message and a
/// commit fan out while dequeue requests and responses are dropped, duplicated and
/// delivered out of order.
#[test]
fn network_drops_duplicates_and_reorders() {
    check(
        "network",
        Budget {
            sends: 1,
            commits: 1,
            drops: 1,
            duplicates: 1,
            in_flight: 2,
            ..NOTHING
        },
        &["a message is accepted"],
    );
}

/// Group life: messages, racing commits at stale epochs, an add (key package fetch,
/// welcome, fresh key packages published by the joiner), a removal.
#[test]
fn groups_commits_adds_removes_and_replays() {
    check(
        "groups",
        Budget {
            sends: 1,
            commits: 2,
            adds: 1,
            removes: 1,
            ..NOTHING
        },
        &["a message is accepted", "a removed member is out"],
    );
}

/// Resyncs among messages, commits and a removal: a member rejoins by external commit
/// (possibly while behind, or after its removal, which the DS refuses), and every member
/// stays in exactly one leaf (Requirement: DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3).
#[test]
fn resyncs_among_commits_and_removals() {
    check(
        "resyncs",
        Budget {
            sends: 1,
            commits: 1,
            resyncs: 1,
            removes: 1,
            ..NOTHING
        },
        &["a message is accepted", "a member resynced"],
    );
}

/// Adversaries: a malicious AS mints a credential for bob and alice checks bob's
/// certificates; a replayed DS request; forged dequeues; time passing (certificates
/// expire: messages sent after that are not accepted).
#[test]
fn adversaries_mint_replay_and_forge() {
    check(
        "adversaries",
        Budget {
            sends: 2,
            replays: 1,
            mints: 1,
            checks: 1,
            ticks: 1,
            ..NOTHING
        },
        &[
            "a message is accepted",
            "a DS request is replayed",
            "the malicious AS's credential is noticed",
        ],
    );
}

// ----- The malicious AS's minted credential, put to use -------------------------------

/// The malicious AS's client on the credential it minted for bob.
const IMPOSTOR: ClientRef = ClientRef(3);

/// How much of each kind of action one path of the impostor configuration may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ImpostorBudget {
    sends: u8,
    mints: u8,
    uses: u8,
    adds: u8,
}

const IMPOSTOR_NOTHING: ImpostorBudget = ImpostorBudget {
    sends: 0,
    mints: 0,
    uses: 0,
    adds: 0,
};

/// alice has bob as a contact (pinned in their connection); carol knows alice but not bob,
/// and has a group with alice. The adversary mints a credential for bob, runs a client on
/// it and connects it with carol; carol invites "bob" (the impostor) into her group with
/// alice; the impostor, carol and alice send, sync and receive.
struct Impostor {
    limits: ImpostorBudget,
    init: State,
    group: GroupId,
}

impl Impostor {
    /// `broken`: alice's client skips the pin check (the variant that must be caught).
    fn new(limits: ImpostorBudget, broken: bool) -> Self {
        let config = Config {
            max_dequeue: 500,
            cert_lifetime: 100,
            ..Config::default()
        };
        let mut state = world::three_users(config, &[(ALICE, BOB), (ALICE, CAROL)]);
        if let Some(alice) = state.clients.get_mut(&ALICE) {
            alice.skip_pin_check = broken;
        }
        let group = phoenix_model::client::create_group(&mut state, CAROL).unwrap();
        for op in [
            ClientOp::Add {
                client: CAROL,
                group,
                invitee: world::fid(ALICE.0),
            },
            ClientOp::Sync { client: ALICE },
        ] {
            let (next, outcome) = step(&state, &Op::Client(op));
            assert!(outcome.is_ok(), "{outcome:?}");
            state = next;
        }
        Self {
            limits,
            init: state,
            group,
        }
    }
}

impl Model for Impostor {
    type State = common::World<ImpostorBudget>;
    type Action = Op;

    fn init_states(&self) -> Vec<Self::State> {
        vec![common::World {
            state: self.init.clone(),
            used: IMPOSTOR_NOTHING,
        }]
    }

    fn actions(&self, w: &Self::State, actions: &mut Vec<Op>) {
        let (l, u, s) = (&self.limits, &w.used, &w.state);
        let bob = world::fid(BOB.0);
        if u.mints < l.mints {
            actions.push(Op::Adversary(AdvOp::MintCredential { fid: bob }));
        }
        if u.uses < l.uses && !s.ghost.minted.is_empty() && !s.clients.contains_key(&IMPOSTOR) {
            actions.push(Op::Adversary(AdvOp::UseMinted {
                fid: bob,
                impostor: IMPOSTOR,
                contact: CAROL,
            }));
        }
        let carol_knows_bob = s
            .clients
            .get(&CAROL)
            .is_some_and(|c| c.contacts.contains_key(&bob));
        if u.adds < l.adds && carol_knows_bob {
            actions.push(Op::Client(ClientOp::Add {
                client: CAROL,
                group: self.group,
                invitee: bob,
            }));
        }
        for c in [ALICE, CAROL, IMPOSTOR] {
            let Some(client) = s.clients.get(&c) else {
                continue;
            };
            if common::has_queued(s, c) {
                actions.push(Op::Client(ClientOp::Sync { client: c }));
            }
            if u.sends < l.sends && client.groups.get(&self.group).is_some_and(|v| v.active) {
                actions.push(Op::Client(ClientOp::Send {
                    client: c,
                    group: self.group,
                }));
            }
        }
    }

    fn next_state(&self, w: &Self::State, op: Op) -> Option<Self::State> {
        let (state, _) = step(&w.state, &op);
        let mut used = w.used;
        match &op {
            Op::Client(ClientOp::Send { .. }) => used.sends += 1,
            Op::Client(ClientOp::Add { .. }) => used.adds += 1,
            Op::Adversary(AdvOp::MintCredential { .. }) => used.mints += 1,
            Op::Adversary(AdvOp::UseMinted { .. }) => used.uses += 1,
            _ => {}
        }
        Some(common::World { state, used })
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no_minted_credential_trusted", |_, w: &Self::State| {
                invariants::inv_no_minted_credential_trusted(&w.state)
            }),
            Property::always("every other invariant", |_, w: &Self::State| {
                invariants::all(&w.state)
                    .iter()
                    .all(|(name, ok)| *ok || *name == "no_minted_credential_trusted")
            }),
            Property::sometimes(
                "the impostor joined alice's group",
                |m: &Self, w: &Self::State| {
                    w.state
                        .clients
                        .get(&IMPOSTOR)
                        .is_some_and(|c| c.groups.contains_key(&m.group))
                },
            ),
            Property::sometimes(
                "alice flags the impostor's message",
                |_, w: &Self::State| {
                    let bob = world::fid(BOB.0);
                    w.state.clients.get(&ALICE).is_some_and(|alice| {
                        alice.alerts.contains(&bob)
                            && alice.received.iter().any(|(_, item)| {
                                matches!(item, QueueItem::Application { msg, .. }
                                    if w.state.ghost.sent.get(msg).is_some_and(|s| s.sender == bob))
                            })
                    })
                },
            ),
            Property::sometimes(
                "carol accepts the impostor's message",
                |_, w: &Self::State| {
                    w.state
                        .ghost
                        .accepted
                        .iter()
                        .any(|a| a.receiver == CAROL && a.sender == world::fid(BOB.0))
                },
            ),
        ]
    }
}

const IMPOSTOR_LIMITS: ImpostorBudget = ImpostorBudget {
    sends: 2,
    mints: 1,
    uses: 1,
    adds: 1,
};

// Requirement: ADV-AS-1, ID-PIN-1
/// The malicious AS mints a credential for bob and uses it: its client connects with carol,
/// who invites it into her group with alice, and it sends there. alice, who pinned bob's
/// genuine client, never accepts its messages nor shows it as bob's pinned client; carol,
/// who never met bob, does (nothing in the protocol can tell her).
#[test]
fn a_minted_credential_used_in_a_group_is_not_trusted() {
    let limits = IMPOSTOR_LIMITS;
    let check = Check {
        title: "model check",
        name: "impostor",
        overrides: OVERRIDES,
        min_unique: 100,
        reachable: &[
            "the impostor joined alice's group",
            "alice flags the impostor's message",
            "carol accepts the impostor's message",
        ],
    };
    common::check(Impostor::new(limits, false), &limits, &check);
}

// Requirement: ADV-AS-1, ID-PIN-1
/// The same moves against a deliberately broken alice that skips the pin check: the checker
/// finds the violation of `no_minted_credential_trusted` (the invariant can fail).
#[test]
fn the_pin_check_is_what_keeps_a_minted_credential_out() {
    let checker = Impostor::new(IMPOSTOR_LIMITS, true)
        .checker()
        .threads(1)
        .spawn_bfs()
        .join();
    assert!(
        checker.discovery("no_minted_credential_trusted").is_some(),
        "a client without the pin check trusted no minted credential: the invariant cannot fail"
    );
    assert!(checker.discovery("every other invariant").is_none());
}

/// Replays of publications: key packages are handed out (invitations, also at stale
/// epochs, whose commits then fail) before and after the adversary replays the last
/// publication of key packages; no one-time package is handed out twice (Requirement:
/// ADV-REPLAY-3, ADV-REPLAY-4, QS-KP-3).
#[test]
fn replayed_publications_restore_no_package() {
    check(
        "publication replays",
        Budget {
            commits: 2,
            adds: 2,
            replays: 1,
            ..NOTHING
        },
        &["a publication is replayed after a package was handed out"],
    );
}

// ----- vacuity: every seeded server bug is caught ---------------------------------------

/// The budget under which a seeded bug ([`ServerMutant`]) shows: racing commits for the
/// epoch check, a replayed message for the replay record, two adds for a key package
/// served twice; the forged token and the forged dequeue are adversary moves the checker
/// always has.
fn vacuity_budget(mutant: ServerMutant) -> Budget {
    match mutant {
        ServerMutant::DsSkipsEpochCheck => Budget {
            commits: 2,
            ..NOTHING
        },
        ServerMutant::DsSkipsMessageReplayRecord => Budget {
            sends: 1,
            replays: 1,
            ..NOTHING
        },
        ServerMutant::QsKeepsServedPackages => Budget {
            adds: 2,
            commits: 2,
            ..NOTHING
        },
        ServerMutant::QsStoresQueueUnsealed => Budget {
            sends: 1,
            ..NOTHING
        },
        _ => NOTHING,
    }
}

/// Issue 14 ("every check shown able to fail"): for each seeded server bug, the model
/// checker, run on the broken copy of the model, finds a state that violates the invariant
/// named for it; and the same search on the model itself finds none. Requirement: MODEL-1.
#[test]
fn vacuity_every_seeded_server_bug_is_caught() {
    for (mutant, property) in ServerMutant::ALL {
        let limits = vacuity_budget(mutant);
        let broken = |mutant: ServerMutant| {
            let mut model = Phoenix::new(limits);
            for server in model.init.servers.values_mut() {
                server.ds.mutant = mutant;
                server.qs.mutant = mutant;
            }
            model
        };
        let checker = broken(mutant).checker().threads(1).spawn_bfs().join();
        let path = checker.discovery(property);
        assert!(
            path.is_some(),
            "the {mutant:?} server should violate {property}, but the search found no violation"
        );
        println!(
            "vacuity: {mutant:?} violates {property} ({} states): {:?}",
            checker.unique_state_count(),
            path.map(|p| p.into_actions())
        );
        let sound = broken(ServerMutant::None)
            .checker()
            .threads(1)
            .spawn_bfs()
            .join();
        assert!(
            sound.discovery(property).is_none(),
            "the model itself violates {property} under {limits:?}"
        );
    }
}
