//! Ready-made worlds: the configurations the model checker explores and the starting
//! points of the conformance suites. Each is built with the model's own operations, so it
//! is a reachable state.

use crate::adversary::{self, REMOTE_DOMAIN};
use crate::call::{Call, QsCall, Reply};
use crate::client::{self, ClientOp, ClientRef};
use crate::federation::{self, Policy};
use crate::ids::{DomainId, Fid, GroupId, KeyId, QsCid, Token};
use crate::queue::Queue;
use crate::state::{Config, Op, State, call_server, step};

/// The two homeservers of the federated worlds: a.test and b.test.
pub const A: DomainId = DomainId(0);
pub const B: DomainId = DomainId(1);

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

/// Two homeservers, a.test and b.test, both reachable, plus the malicious remote server
/// (`evil.test`, [`REMOTE_DOMAIN`]) with its own published key; a.test's policy blocks
/// evil.test, b.test's is open.
pub fn two_homeservers(config: Config) -> State {
    let mut state = State::new(config, 2);
    adversary::add_remote_server(&mut state);
    if let Some(a) = state.servers.get_mut(&A) {
        let mut blocked = std::collections::BTreeSet::new();
        blocked.insert(REMOTE_DOMAIN);
        a.fed.policy = Policy::Open { blocked };
    }
    state
}

/// A FID on `domain`.
pub fn fid_on(local: u8, domain: DomainId) -> Fid {
    Fid { local, domain }
}

/// Run a client operation, then let the network deliver everything federated.
fn run_flushed(state: State, op: ClientOp) -> State {
    let mut state = run(state, op);
    federation::flush(&mut state);
    state
}

/// The federated model checker's world: alice and carol on a.test, bob on b.test, all
/// contacts of each other; group 0 on a.test with alice, bob and carol (created by alice),
/// group 1 on b.test with bob and alice (created by bob). Everything delivered and
/// processed.
pub fn federated_world(config: Config) -> (State, GroupId, GroupId) {
    let mut state = two_homeservers(config);
    let _ = client::register(&mut state, ALICE, fid_on(ALICE.0, A));
    let _ = client::register(&mut state, BOB, fid_on(BOB.0, B));
    let _ = client::register(&mut state, CAROL, fid_on(CAROL.0, A));
    for (a, b) in [(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL)] {
        client::introduce(&mut state, a, b);
    }
    let g1 = client::create_group(&mut state, ALICE).unwrap_or(GroupId { domain: A, n: 0 });
    for invitee in [BOB, CAROL] {
        state = run_flushed(
            state,
            ClientOp::Add {
                client: ALICE,
                group: g1,
                invitee: fid_on(invitee.0, if invitee == BOB { B } else { A }),
            },
        );
    }
    state = run_flushed(state, ClientOp::Sync { client: BOB });
    let g2 = client::create_group(&mut state, BOB).unwrap_or(GroupId { domain: B, n: 0 });
    state = run_flushed(
        state,
        ClientOp::Add {
            client: BOB,
            group: g2,
            invitee: fid_on(ALICE.0, A),
        },
    );
    (settle(state), g1, g2)
}

/// The key and token of the victim queue the federation suite creates on `domain` (the
/// queue whose config the malicious remote server uses).
pub fn victim_keys(domain: DomainId) -> (KeyId, Token, KeyId) {
    let d = u32::from(domain.0);
    (
        KeyId(8_000u32.saturating_add(2 * d)),
        Token(200u8.saturating_add(domain.0)),
        KeyId(8_001u32.saturating_add(2 * d)),
    )
}

/// The conformance federation suite's world, as the suite sets it up on two real servers
/// with the client library: alice on a.test and bob on b.test, connected; group 0 on
/// a.test with alice and bob (bob joined across servers); on each server a bare QS user
/// (the "victim" queue the malicious remote server targets). Returns the world, the group
/// and the victims' client records on a.test and b.test.
pub fn federation_suite_world(config: Config) -> (State, GroupId, [QsCid; 2]) {
    let mut state = two_homeservers(config);
    let _ = client::register(&mut state, ALICE, fid_on(ALICE.0, A));
    let _ = client::register(&mut state, BOB, fid_on(BOB.0, B));
    client::introduce(&mut state, ALICE, BOB);
    let g = client::create_group(&mut state, ALICE).unwrap_or(GroupId { domain: A, n: 0 });
    state = run_flushed(
        state,
        ClientOp::Add {
            client: ALICE,
            group: g,
            invitee: fid_on(BOB.0, B),
        },
    );
    let mut victims = [QsCid(0), QsCid(0)];
    for (slot, domain) in victims.iter_mut().zip([A, B]) {
        let (user_key, token, client_key) = victim_keys(domain);
        if let Ok(Reply::QsUserCreated { client, .. }) = call_server(
            &mut state,
            domain,
            &Call::Qs(QsCall::CreateUser {
                user_key,
                token,
                client_key,
            }),
        ) {
            *slot = client;
        }
    }
    (settle(state), g, victims)
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
        let (state, g1, g2) = federated_world(Config::default());
        assert_eq!((g1.domain, g2.domain), (A, B));
        for c in [ALICE, BOB, CAROL] {
            assert_eq!(state.clients[&c].groups[&g1].epoch, 2, "{c:?}");
        }
        assert_eq!(state.clients[&ALICE].groups[&g2].epoch, 1);
        assert_eq!(state.servers[&A].ds.groups[&g1].members.len(), 3);
        assert!(federation::quiescent(&state));
        // Bob's welcome crossed from a.test to b.test, alice's from b.test to a.test.
        assert_eq!(state.ghost.fed.enqueued.len(), 3);
        for (name, ok) in invariants::all(&state) {
            assert!(ok, "{name}");
        }
        let (state, g, victims) = federation_suite_world(Config::default());
        assert_eq!(state.clients[&BOB].groups[&g].epoch, 1);
        assert_eq!(victims, [QsCid(1), QsCid(1001)]);
        for (name, ok) in invariants::all(&state) {
            assert!(ok, "{name}");
        }
    }
}
