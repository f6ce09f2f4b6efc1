//! Model checking of a client's lost answers (Requirement: CL-AMBIG-1): alice and bob in
//! one group send messages and commit updates, some of whose answers are lost
//! (`RecoveryOp::SendUnanswered`, `UpdateUnanswered`), settle them (`Settle`) and sync, in
//! every order the budgets allow. Checked in every reachable state: no ratchet generation
//! is used twice, every acknowledged message was kept by the server, a client merges as
//! its own only a commit the DS accepted from it, one commit per epoch, in-order receipt.
//!
//! The checks are shown able to fail: the same search with the client that rolled its
//! state back on a lost answer (what `phoenix-client` did before) finds a reused
//! generation, and with a client that merges an unanswered commit blindly it finds a fork.
//!
//! Run with `cargo test -p phoenix-model --test recovery_check -- --nocapture` for the
//! state counts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use stateright::{Checker, Model, Property};

use phoenix_model::client::ClientOp;
use phoenix_model::ids::GroupId;
use phoenix_model::invariants;
use phoenix_model::recovery::{ClientMutant, RecoveryOp};
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world::{self, ALICE, BOB};

use common::Check;

const OVERRIDES: &str = "PHOENIX_RECOVERY_BUDGET";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    sends: u8,
    commits: u8,
    unanswered: u8,
}

type World = common::World<Budget>;

struct Recovery {
    limits: Budget,
    init: State,
    group: GroupId,
}

impl Recovery {
    fn new(limits: Budget, mutant: ClientMutant) -> Self {
        let config = Config {
            client_mutant: mutant,
            ..Config::default()
        };
        let (init, group, _) = world::checker_world(config);
        Self {
            limits,
            init,
            group,
        }
    }
}

impl Model for Recovery {
    type State = World;
    type Action = Op;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            state: self.init.clone(),
            used: Budget {
                sends: 0,
                commits: 0,
                unanswered: 0,
            },
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Op>) {
        let (l, u, s) = (&self.limits, &w.used, &w.state);
        let g = self.group;
        for c in [ALICE, BOB] {
            let Some(client) = s.clients.get(&c) else {
                continue;
            };
            let active = client.groups.get(&g).is_some_and(|v| v.active);
            let blocked = client.pending.iter().any(|p| p.group == g);
            if active && !blocked {
                if u.sends < l.sends {
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
                if u.unanswered < l.unanswered {
                    actions.push(Op::Recovery(RecoveryOp::SendUnanswered {
                        client: c,
                        group: g,
                    }));
                    actions.push(Op::Recovery(RecoveryOp::UpdateUnanswered {
                        client: c,
                        group: g,
                    }));
                }
            }
            if !client.pending.is_empty() {
                actions.push(Op::Recovery(RecoveryOp::Settle { client: c }));
            }
            if common::has_queued(s, c) {
                actions.push(Op::Client(ClientOp::Sync { client: c }));
            }
        }
    }

    fn next_state(&self, w: &World, op: Op) -> Option<World> {
        let (state, _) = step(&w.state, &op);
        let mut used = w.used;
        match &op {
            Op::Client(ClientOp::Send { .. }) => used.sends += 1,
            Op::Client(ClientOp::Update { .. }) => used.commits += 1,
            Op::Recovery(RecoveryOp::SendUnanswered { .. })
            | Op::Recovery(RecoveryOp::UpdateUnanswered { .. }) => used.unanswered += 1,
            _ => {}
        }
        Some(World { state, used })
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no_generation_reused", |_, w: &World| {
                invariants::inv_no_generation_reused(&w.state)
            }),
            Property::always("acknowledged_kept", |_, w: &World| {
                invariants::inv_acknowledged_kept(&w.state)
            }),
            Property::always("merged_commits_were_accepted", |_, w: &World| {
                invariants::inv_merged_commits_were_accepted(&w.state)
            }),
            Property::always("one_commit_per_epoch", |_, w: &World| {
                invariants::inv_one_commit_per_epoch(&w.state)
            }),
            Property::always("client_receives_in_order", |_, w: &World| {
                invariants::inv_client_receives_in_order(&w.state)
            }),
            Property::sometimes(
                "a message is acknowledged after its answer was lost",
                |_, w: &World| {
                    w.used.unanswered > 0
                        && w.state.ghost.acknowledged.iter().any(|m| {
                            w.state.ghost.sent.contains_key(m)
                                && w.state.clients.values().all(|c| c.pending.is_empty())
                        })
                },
            ),
            Property::sometimes(
                "a commit is merged after its answer was lost",
                |_, w: &World| !w.state.ghost.merged_own.is_empty(),
            ),
            Property::sometimes("a message is accepted", |_, w: &World| {
                !w.state.ghost.accepted.is_empty()
            }),
        ]
    }
}

const BUDGET: Budget = Budget {
    sends: 1,
    commits: 1,
    unanswered: 2,
};

fn with_overrides(limits: Budget) -> Budget {
    common::with_overrides(OVERRIDES, limits, |b, name, n| match name {
        "sends" => b.sends = n,
        "commits" => b.commits = n,
        "unanswered" => b.unanswered = n,
        other => panic!("unknown budget {other}"),
    })
}

/// The honest client: every invariant holds in every reachable state.
#[test]
fn lost_answers_are_settled_without_reuse_or_fork() {
    let limits = with_overrides(BUDGET);
    common::check(
        Recovery::new(limits, ClientMutant::None),
        &limits,
        &Check {
            title: "recovery check",
            name: "lost answers",
            overrides: OVERRIDES,
            min_unique: 100,
            reachable: &[
                "a message is acknowledged after its answer was lost",
                "a commit is merged after its answer was lost",
                "a message is accepted",
            ],
        },
    );
}

/// The check can fail: `property` is violated somewhere in the broken client's search.
fn caught(mutant: ClientMutant, property: &'static str) {
    let checker = Recovery::new(BUDGET, mutant)
        .checker()
        .threads(1)
        .spawn_bfs()
        .join();
    let path = checker.discovery(property);
    assert!(
        path.is_some(),
        "the {mutant:?} client should violate {property}, but the search found no violation"
    );
    println!(
        "recovery check: the {mutant:?} client violates {property}: {:?}",
        path.map(|p| p.into_actions())
    );
}

/// The client as it was (state rolled back on a lost answer) reuses a generation.
#[test]
fn a_client_that_rolls_back_on_a_lost_answer_is_caught() {
    caught(ClientMutant::RollBackOnLostAnswer, "no_generation_reused");
}

/// A client that merges an unanswered commit without asking the DS forks.
#[test]
fn a_client_that_merges_unanswered_commits_blindly_is_caught() {
    caught(
        ClientMutant::MergeUnansweredBlindly,
        "merged_commits_were_accepted",
    );
}

/// A registration whose answers are lost (Requirement: CL-AMBIG-2): the client sends the
/// identical `register` and `create_user` again and gets what the first ones created;
/// nothing else gets in through the same door (another key or client name for the FID,
/// other auth keys with the token).
#[test]
fn a_registration_whose_answers_were_lost_settles_by_sending_them_again() {
    // Requirement: CL-AMBIG-2
    use phoenix_model::call::{AsCall, Call, QsCall, Reply};
    use phoenix_model::ids::{ClientName, KeyId, Token};
    use phoenix_model::state::call_server;
    use phoenix_types::error::ErrorCode;

    let mut state = world::two_homeservers(Config::default());
    let fid = world::fid_on(7, world::A);
    let register = |client: u8, key: u32| {
        Call::As(AsCall::Register {
            fid,
            client: ClientName(client),
            key: KeyId(key),
            csr_valid: true,
        })
    };
    let first = call_server(&mut state, world::A, &register(0, 900));
    assert!(matches!(first, Ok(Reply::Registered { .. })), "{first:?}");
    // The answer is lost; the same request again gets the same certificate.
    assert_eq!(call_server(&mut state, world::A, &register(0, 900)), first);
    assert_eq!(
        call_server(&mut state, world::A, &register(0, 901)),
        Err(ErrorCode::UserExists)
    );
    assert_eq!(
        call_server(&mut state, world::A, &register(1, 900)),
        Err(ErrorCode::UserExists)
    );

    let create = |user: u32, client: u32| {
        Call::Qs(QsCall::CreateUser {
            user_key: KeyId(user),
            token: Token(77),
            client_key: KeyId(client),
        })
    };
    let created = call_server(&mut state, world::A, &create(910, 911));
    assert!(
        matches!(created, Ok(Reply::QsUserCreated { .. })),
        "{created:?}"
    );
    assert_eq!(
        call_server(&mut state, world::A, &create(910, 911)),
        created
    );
    for (user, client) in [(910, 912), (912, 911)] {
        assert_eq!(
            call_server(&mut state, world::A, &create(user, client)),
            Err(ErrorCode::DuplicateFriendshipToken)
        );
    }
}
