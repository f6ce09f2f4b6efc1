//! Ready-made worlds: the configurations the model checker explores and the starting
//! points of the conformance suites. Each is built with the model's own operations, so it
//! is a reachable state.

use crate::client::{self, ClientOp, ClientRef};
use crate::ids::{DomainId, Fid, GroupId};
use crate::queue::Queue;
use crate::state::{Config, Op, State, step};

/// Alice, bob and carol: clients 0, 1, 2, users 0, 1, 2 of domain 0.
pub const ALICE: ClientRef = ClientRef(0);
pub const BOB: ClientRef = ClientRef(1);
pub const CAROL: ClientRef = ClientRef(2);

/// The FID of user `local` on domain 0.
pub fn fid(local: u8) -> Fid {
    Fid {
        local,
        domain: DomainId(0),
    }
}

/// One homeserver with alice, bob and carol registered (each with one one-time and one
/// last-resort key package) and introduced to each other as contacts as `pairs` says.
pub fn three_users(config: Config, pairs: &[(ClientRef, ClientRef)]) -> State {
    let mut state = State::new(config, 1);
    for c in [ALICE, BOB, CAROL] {
        let _ = client::register(&mut state, c, fid(c.0));
    }
    for (a, b) in pairs.iter() {
        client::introduce(&mut state, *a, *b);
    }
    state
}

/// Run a client operation, ignoring its outcome (builders only use ones that succeed).
fn run(state: State, op: ClientOp) -> State {
    step(&state, &Op::Client(op)).0
}

/// Every client processes its queue, then every QS queue and every client's position
/// restart from 0: sequence numbers become relative to this point (the conformance suite
/// maps them to the server's by the offset it reads at the same point).
pub fn settle(mut state: State) -> State {
    let clients: Vec<ClientRef> = state.clients.keys().copied().collect();
    for c in clients.iter() {
        state = run(state, ClientOp::Sync { client: *c });
    }
    for server in state.servers.values_mut() {
        for record in server.qs.clients.values_mut() {
            record.queue = Queue::new();
        }
    }
    for client in state.clients.values_mut() {
        client.next_seq = 0;
        client.received = Vec::new();
    }
    state
}

/// The model checker's world: alice, bob and carol all contacts of each other; group 0
/// with alice and bob, group 1 with alice and carol, both created by alice.
pub fn checker_world(config: Config) -> (State, GroupId, GroupId) {
    let mut state = three_users(config, &[(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL)]);
    let g1 = client::create_group(&mut state, ALICE).unwrap_or(GroupId {
        domain: DomainId(0),
        n: 0,
    });
    state = run(
        state,
        ClientOp::Add {
            client: ALICE,
            group: g1,
            invitee: fid(BOB.0),
        },
    );
    let g2 = client::create_group(&mut state, ALICE).unwrap_or(GroupId {
        domain: DomainId(0),
        n: 1,
    });
    state = run(
        state,
        ClientOp::Add {
            client: ALICE,
            group: g2,
            invitee: fid(CAROL.0),
        },
    );
    (settle(state), g1, g2)
}

/// The conformance DS suite's world, as the suite sets it up on the server with the
/// client library: alice connected with bob and with carol; "g1" (group 0) with alice,
/// bob, carol at leaves 0, 1, 2 and epoch 2; "g2" (group 1) with alice and bob at epoch 1.
pub fn ds_suite_world(config: Config) -> (State, GroupId, GroupId) {
    let mut state = three_users(config, &[(ALICE, BOB), (ALICE, CAROL)]);
    let g1 = client::create_group(&mut state, ALICE).unwrap_or(GroupId {
        domain: DomainId(0),
        n: 0,
    });
    for invitee in [BOB, CAROL] {
        state = run(
            state,
            ClientOp::Add {
                client: ALICE,
                group: g1,
                invitee: fid(invitee.0),
            },
        );
        state = run(state, ClientOp::Sync { client: invitee });
    }
    let g2 = client::create_group(&mut state, ALICE).unwrap_or(GroupId {
        domain: DomainId(0),
        n: 1,
    });
    state = run(
        state,
        ClientOp::Add {
            client: ALICE,
            group: g2,
            invitee: fid(BOB.0),
        },
    );
    (settle(state), g1, g2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants;

    #[test]
    fn worlds_are_what_they_say() {
        let (state, g1, g2) = ds_suite_world(Config::default());
        let ds = &state.servers[&DomainId(0)].ds;
        assert_eq!(ds.groups[&g1].epoch, 2);
        assert_eq!(ds.groups[&g1].members.len(), 3);
        assert_eq!(ds.groups[&g2].epoch, 1);
        assert_eq!(ds.groups[&g2].members.len(), 2);
        for c in [ALICE, BOB, CAROL] {
            assert_eq!(state.clients[&c].groups[&g1].epoch, 2, "{c:?}");
        }
        assert_eq!(state.clients[&BOB].groups[&g2].epoch, 1);
        for (name, ok) in invariants::all(&state) {
            assert!(ok, "{name}");
        }
        let (state, g1, g2) = checker_world(Config::default());
        assert_eq!(state.clients[&BOB].groups[&g1].epoch, 1);
        assert_eq!(state.clients[&CAROL].groups[&g2].epoch, 1);
        for (name, ok) in invariants::all(&state) {
            assert!(ok, "{name}");
        }
    }
}
