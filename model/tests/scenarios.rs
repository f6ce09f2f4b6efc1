//! Scripted scenarios through the model: the contracts of the queue transitions checked
//! exhaustively over small queues, and the findings the model makes visible (each is also
//! described in docs/model.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use phoenix_model::call::{Call, QsCall};
use phoenix_model::client::{self, ClientOp};
use phoenix_model::ids::{DomainId, MsgId, Token};
use phoenix_model::invariants;
use phoenix_model::queue::{self, Queue, QueueItem};
use phoenix_model::state::{Config, Op, State, step};
use phoenix_model::world::{self, ALICE, BOB, CAROL};
use phoenix_types::error::ErrorCode;

fn run(state: State, op: Op) -> (State, phoenix_model::call::Outcome) {
    step(&state, &op)
}

fn assert_invariants(state: &State) {
    for (name, ok) in invariants::all(state) {
        assert!(ok, "invariant {name} fails");
    }
}

/// `post_enqueue` and `post_dequeue` hold for every queue built from up to four enqueues
/// and one earlier dequeue, and every start, max and cap in a small range
/// (Requirement: QS-DEQ-1, QS-DEQ-2, QS-DEQ-3, QS-Q-1).
#[test]
fn queue_contracts_hold_exhaustively() {
    let mut checked = 0u32;
    for n in 0..=4u32 {
        for first_start in 0..=5u64 {
            let mut q = Queue::new();
            for i in 0..n {
                let item = QueueItem::Opaque(MsgId(i));
                let result = queue::enqueue(&q, &item);
                assert!(queue::post_enqueue(&q, &item, &result));
                q = result.0;
            }
            q = queue::dequeue(&q, first_start, 0, 500).queue;
            assert!(queue::well_formed(&q));
            for start in 0..=6u64 {
                for max in 0..=4u32 {
                    for cap in 0..=3u32 {
                        let d = queue::dequeue(&q, start, max, cap);
                        assert!(queue::post_dequeue(&q, start, max, cap, &d));
                        assert!(queue::well_formed(&d.queue));
                        checked += 1;
                    }
                }
            }
        }
    }
    eprintln!("queue contracts: {checked} dequeues checked");
    // The contracts can fail: a wrong sequence number, a dequeue that returns more than
    // asked, and a package "taken" without leaving the pool are rejected.
    let q = queue::enqueue(&Queue::new(), &QueueItem::Opaque(MsgId(1))).0;
    let (next, seq) = queue::enqueue(&q, &QueueItem::Opaque(MsgId(2)));
    assert!(!queue::post_enqueue(
        &q,
        &QueueItem::Opaque(MsgId(2)),
        &(next.clone(), seq + 1)
    ));
    let all = queue::dequeue(&next, 0, 2, 500);
    assert!(!queue::post_dequeue(&next, 0, 1, 500, &all));
    use phoenix_model::qs::{StoredKeyPackage, post_take_one};
    let package = |id, last_resort| StoredKeyPackage {
        id: phoenix_model::ids::PkgId(id),
        last_resort,
        leaf_key: phoenix_model::ids::KeyId(id),
        queue_config: phoenix_model::ids::Sealed {
            to: phoenix_model::ids::KeyId(0),
            nonce: id,
            payload: phoenix_model::ids::QsCid(0),
        },
        client_info: None,
    };
    let pool = vec![package(1, false), package(2, true)];
    assert!(post_take_one(&pool, &phoenix_model::qs::take_one(&pool)));
    assert!(!post_take_one(
        &pool,
        &(pool.clone(), Some(package(1, false)))
    ));
}

/// Two members commit for the same epoch: the first wins, the second gets WRONG_EPOCH;
/// after syncing, the loser commits at the new epoch (Requirement: DS-EPOCH-1).
#[test]
fn of_two_commits_for_one_epoch_one_wins() {
    let (state, g1, _) = world::checker_world(Config::default());
    let (state, a) = run(
        state,
        Op::Client(ClientOp::Update {
            client: ALICE,
            group: g1,
        }),
    );
    let (state, b) = run(
        state,
        Op::Client(ClientOp::Update {
            client: BOB,
            group: g1,
        }),
    );
    assert!(a.is_ok());
    assert_eq!(b, Err(ErrorCode::WrongEpoch));
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: BOB }));
    let (state, b) = run(
        state,
        Op::Client(ClientOp::Update {
            client: BOB,
            group: g1,
        }),
    );
    assert!(b.is_ok());
    assert_invariants(&state);
}

/// Finding: a user whose one-time key packages were drained (anyone holding its friendship
/// token can do it) joins two groups through its reusable last-resort package, and the DS
/// sees the same leaf key and the same sealed queue config in both: it can link them
/// (Requirement: DS-PRIV-1, QS-KP-4).
#[test]
fn last_resort_reuse_lets_the_ds_link_two_groups() {
    let mut state = world::three_users(Config::default(), &[(ALICE, BOB), (ALICE, CAROL)]);
    // A contact of bob (here: alice's client, raw) drains bob's one-time package.
    let bob_token = Token(BOB.0);
    let (next, drained) = run(
        state,
        Op::Call {
            to: DomainId(0),
            call: Call::Qs(QsCall::FetchKeyPackages { token: bob_token }),
        },
    );
    assert!(drained.is_ok());
    state = next;
    let g1 = client::create_group(&mut state, ALICE).unwrap();
    let g2 = client::create_group(&mut state, ALICE).unwrap();
    for g in [g1, g2] {
        let (next, added) = run(
            state,
            Op::Client(ClientOp::Add {
                client: ALICE,
                group: g,
                invitee: world::fid(BOB.0),
            }),
        );
        assert!(added.is_ok(), "{added:?}");
        state = next;
    }
    assert!(invariants::ds_links_some_pseudonym(&state));
    // The invariant states the exception explicitly; everything else still holds.
    assert_invariants(&state);
}

/// Finding 2, fixed: the QS stored what the DS fans out with the group id in clear next
/// to the recipient's client record, so a snapshot of the QS queue table linked a QS
/// pseudonym to its groups. Entries are now sealed under the queue's chain: after a send,
/// the queue holds the message and the snapshot shows no group next to it (Requirement:
/// QS-ENC-1, ADV-SNAP-2).
#[test]
fn qs_queue_table_shows_no_group() {
    let (state, g1, _) = world::checker_world(Config::default());
    let (state, sent) = run(
        state,
        Op::Client(ClientOp::Send {
            client: ALICE,
            group: g1,
        }),
    );
    assert!(sent.is_ok());
    let queued = state
        .servers
        .values()
        .flat_map(|s| s.qs.clients.values())
        .any(|c| !c.queue.messages.is_empty());
    assert!(queued, "the send left entries in the queues");
    assert!(invariants::inv_snapshot_shows_no_queue_group(&state));
    assert!(invariants::inv_snapshot_unlinkable(&state));
}

/// A malicious AS mints a credential for bob: the client that pinned bob's certificate
/// notices when it checks bob's certificates; messages still verify only through pinned,
/// honestly issued certificates (Requirement: ADV-AS-1, ID-CONN-1).
#[test]
fn a_minted_credential_is_noticed() {
    let (state, g1, _) = world::checker_world(Config::default());
    let (state, _) = run(
        state,
        Op::Adversary(phoenix_model::adversary::AdvOp::MintCredential {
            fid: world::fid(BOB.0),
        }),
    );
    let (state, _) = run(
        state,
        Op::Client(ClientOp::Send {
            client: BOB,
            group: g1,
        }),
    );
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: ALICE }));
    assert!(!invariants::some_alert_raised(&state));
    let (state, _) = run(
        state,
        Op::Client(ClientOp::CheckContact {
            client: ALICE,
            contact: world::fid(BOB.0),
        }),
    );
    assert!(invariants::some_alert_raised(&state));
    assert_eq!(state.ghost.accepted.len(), 1);
    assert_invariants(&state);
}

/// The network adversary replays every kind of signed state-changing request: a replayed
/// publication of key packages or connection packages is refused (`REPLAYED`) and does not
/// restore the one-time package handed out in between (it is never handed out again), and
/// a replayed commit is `REPLAYED`, not `WRONG_EPOCH` (Requirement: ADV-REPLAY-3,
/// ADV-REPLAY-4, ADV-REPLAY-1).
#[test]
fn replayed_publications_do_not_restore_served_packages() {
    use phoenix_model::adversary::AdvOp;
    use phoenix_model::call::{AsCall, AsSigner, ConnectionPackageArg, PackageDefect, Reply};
    use phoenix_model::ids::{FidArg, PkgId};

    let (state, g1, _) = world::checker_world(Config::default());
    let home = DomainId(0);

    // Key packages: the last publication the network saw, one package handed out, the
    // publication replayed.
    let (_, QsCall::PublishKeyPackages { signer, .. }) = state.network.last_qs.clone().unwrap()
    else {
        panic!("the last QS request recorded is a publication");
    };
    let publisher = state
        .clients
        .values()
        .find(
            |c| matches!(signer, phoenix_model::call::QsSigner::Client { id, .. } if id == c.qs_id),
        )
        .unwrap()
        .clone();
    let fetch = Op::Call {
        to: home,
        call: Call::Qs(QsCall::FetchKeyPackages {
            token: publisher.token,
        }),
    };
    let (state, first) = run(state, fetch.clone());
    let Ok(Reply::KeyPackages { packages: first }) = first else {
        panic!("{first:?}");
    };
    let (state, replayed) = run(state, Op::Adversary(AdvOp::ReplayQs));
    assert_eq!(replayed, Err(ErrorCode::Replayed));
    let (state, second) = run(state, fetch);
    let Ok(Reply::KeyPackages { packages: second }) = second else {
        panic!("{second:?}");
    };
    assert_ne!(first, second, "the one-time package was handed out again");
    assert_invariants(&state);

    // Connection packages: the same with the AS, after alice publishes a set.
    let alice = state.clients.get(&ALICE).unwrap().clone();
    let (state, published) = run(
        state,
        Op::Call {
            to: home,
            call: Call::As(AsCall::PublishConnectionPackages {
                signer: AsSigner::Client {
                    fid: FidArg::Valid(alice.fid),
                    client: alice.name,
                    key: alice.as_key,
                },
                fresh: true,
                packages: vec![
                    ConnectionPackageArg {
                        id: PkgId(7_001),
                        last_resort: false,
                        defect: PackageDefect::None,
                    },
                    ConnectionPackageArg {
                        id: PkgId(7_002),
                        last_resort: true,
                        defect: PackageDefect::None,
                    },
                ],
            }),
        },
    );
    assert_eq!(published, Ok(Reply::Empty));
    let fid = alice.fid;
    let fetch = Op::Call {
        to: home,
        call: Call::As(AsCall::FetchConnectionPackage {
            fid: FidArg::Valid(fid),
        }),
    };
    let (state, first) = run(state, fetch.clone());
    assert!(
        matches!(
            first,
            Ok(Reply::ConnectionPackage {
                last_resort: false,
                ..
            })
        ),
        "{first:?}"
    );
    let (state, replayed) = run(state, Op::Adversary(AdvOp::ReplayAs));
    assert_eq!(replayed, Err(ErrorCode::Replayed));
    let (state, second) = run(state, fetch);
    assert_ne!(first, second, "the one-time package was handed out again");
    assert!(
        matches!(
            second,
            Ok(Reply::ConnectionPackage {
                last_resort: true,
                ..
            })
        ),
        "{second:?}"
    );
    assert_invariants(&state);

    // A commit, replayed after it was accepted: REPLAYED.
    let (state, update) = run(
        state,
        Op::Client(ClientOp::Update {
            client: ALICE,
            group: g1,
        }),
    );
    assert!(update.is_ok(), "{update:?}");
    let (state, replayed) = run(state, Op::Adversary(AdvOp::ReplayDs));
    assert_eq!(replayed, Err(ErrorCode::Replayed));
    assert_invariants(&state);
}

/// Group ids only for clients of the server, one per token (Requirement: DS-GID-3,
/// AS-TOKEN-1, AS-TOKEN-2): a forged token is refused; an issued one buys one id, the same
/// id again while it is unused, and nothing once used; the allowance ends issuance; and the
/// invariant fails on a DS that took a token its AS never issued.
#[test]
fn group_ids_cost_a_token_of_the_home_as() {
    use phoenix_model::adversary::AdvOp;
    use phoenix_model::call::{AsCall, AsSigner, DsCall, GroupToken, Reply};
    use phoenix_model::ids::FidArg;

    let config = Config {
        group_tokens_per_day: 2,
        ..Config::default()
    };
    let (state, _, _) = world::checker_world(config);
    let home = DomainId(0);
    let (state, forged) = run(
        state,
        Op::Adversary(AdvOp::ForgeGroupToken { domain: home }),
    );
    assert_eq!(forged, Err(ErrorCode::InvalidToken));

    let carol = state.clients.get(&CAROL).unwrap().clone();
    let issue = |count, n: u32| Op::Call {
        to: home,
        call: Call::As(AsCall::IssueGroupTokens {
            signer: AsSigner::Client {
                fid: FidArg::Valid(carol.fid),
                client: carol.name,
                key: carol.as_key,
            },
            fresh: true,
            count,
            blinded: phoenix_model::ids::KeyId(900_000 + n),
        }),
    };
    let (state, issued) = run(state, issue(1, 0));
    let (_, replayed) = run(state.clone(), issue(1, 0));
    assert_eq!(replayed, Err(ErrorCode::Replayed));
    let Ok(Reply::GroupTokens { tokens }) = issued else {
        panic!("{issued:?}");
    };
    let token = tokens[0];
    let ask = |token: GroupToken| Op::Call {
        to: home,
        call: Call::Ds(DsCall::RequestGroupId { token }),
    };
    let (state, first) = run(state, ask(token));
    let (state, again) = run(state, ask(token));
    assert!(matches!(first, Ok(Reply::GroupId(_))), "{first:?}");
    assert_eq!(first, again, "a retried token gets its reservation back");
    // Another server's token: refused.
    let elsewhere = GroupToken {
        domain: DomainId(1),
        ..token
    };
    let (state, other) = run(state, ask(elsewhere));
    assert_eq!(other, Err(ErrorCode::InvalidToken));
    // The allowance: a checker-world client may have been issued tokens already.
    let (state, _) = run(state, issue(2, 1));
    let (state, over) = run(state, issue(2, 2));
    assert_eq!(over, Err(ErrorCode::TokenQuotaExceeded));
    assert_invariants(&state);

    // A DS that accepted a forged token breaks the invariant.
    let mut broken = state.clone();
    broken
        .servers
        .get_mut(&home)
        .unwrap()
        .ds
        .spent_tokens
        .insert(
            u32::MAX,
            phoenix_model::ids::GroupId {
                domain: home,
                n: 999,
            },
        );
    assert!(!invariants::inv_groups_only_for_local_clients(&broken));
}

/// Bob falls behind in g1 (his state of it is restored from before a commit), so he cannot
/// read alice's next message; he resyncs by external commit (one Remove of his own leaf,
/// one new leaf with the same credential), alice processes the resync commit, and her next
/// message reaches him. Bob is in exactly one leaf throughout. Refused: a resync signed by
/// another member's key, one removing a leaf that is not the signer's, one by a non-member
/// leaf, and one that changes the leaf credential (Requirement: DS-RESYNC-1, DS-RESYNC-2,
/// DS-RESYNC-3, CL-RESYNC-1).
#[test]
fn a_member_that_fell_behind_resyncs_into_one_leaf() {
    use phoenix_model::call::{DsCall, LeafSigner, MemberArg};
    use phoenix_model::ids::{KeyId, Sealed};

    let (state, g1, _) = world::ds_suite_world(Config::default());
    // A copy of bob's state of g1 (a backup).
    let backup = state.clients[&BOB].groups[&g1].clone();
    let (state, a) = run(
        state,
        Op::Client(ClientOp::Update {
            client: ALICE,
            group: g1,
        }),
    );
    assert!(a.is_ok());
    let (mut state, _) = run(state, Op::Client(ClientOp::Sync { client: BOB }));
    // Bob's state of g1 is restored from the backup: the update is gone from it.
    state
        .clients
        .get_mut(&BOB)
        .unwrap()
        .groups
        .insert(g1, backup);
    let (state, s) = run(
        state,
        Op::Client(ClientOp::Send {
            client: ALICE,
            group: g1,
        }),
    );
    assert!(s.is_ok());
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: BOB }));
    let behind = state.clients[&BOB].groups[&g1].epoch;
    let ds_epoch = state.servers[&g1.domain].ds.groups[&g1].epoch;
    assert!(behind < ds_epoch, "bob is behind");
    let missed = state
        .ghost
        .accepted
        .iter()
        .filter(|x| x.receiver == BOB)
        .count();

    // The refusals, each against the group as it is.
    let g = state.servers[&g1.domain].ds.groups[&g1].clone();
    let bob_view = state.clients[&BOB].groups[&g1].clone();
    let carol_view = state.clients[&CAROL].groups[&g1].clone();
    let bob_member = MemberArg {
        leaf_key: bob_view.leaf_key,
        queue_config: g.members[&bob_view.leaf].queue_config.clone(),
        credential: g.members[&bob_view.leaf].credential.clone(),
    };
    let resync = |signer: LeafSigner, removed, member: MemberArg| Op::Call {
        to: g1.domain,
        call: Call::Ds(DsCall::Resync {
            group: g1,
            ear: g.ear,
            signer,
            epoch: g.epoch,
            removed,
            member,
        }),
    };
    // Carol signs for bob's leaf with her own key.
    let (_, r) = run(
        state.clone(),
        resync(
            LeafSigner {
                leaf: bob_view.leaf,
                key: carol_view.leaf_key,
            },
            bob_view.leaf,
            bob_member.clone(),
        ),
    );
    assert_eq!(r, Err(ErrorCode::BadSignature));
    // Carol, signing as herself, removes bob's leaf.
    let (_, r) = run(
        state.clone(),
        resync(
            LeafSigner {
                leaf: carol_view.leaf,
                key: carol_view.leaf_key,
            },
            bob_view.leaf,
            bob_member.clone(),
        ),
    );
    assert_eq!(r, Err(ErrorCode::InvalidCommit));
    // A leaf nobody holds.
    let (_, r) = run(
        state.clone(),
        resync(
            LeafSigner {
                leaf: 9,
                key: KeyId(424_242),
            },
            9,
            bob_member.clone(),
        ),
    );
    assert_eq!(r, Err(ErrorCode::UnknownSender));
    // Bob with carol's leaf credential.
    let (_, r) = run(
        state.clone(),
        resync(
            LeafSigner {
                leaf: bob_view.leaf,
                key: bob_view.leaf_key,
            },
            bob_view.leaf,
            MemberArg {
                leaf_key: carol_view.leaf_key,
                queue_config: Sealed {
                    to: bob_member.queue_config.to,
                    nonce: 7,
                    payload: bob_member.queue_config.payload,
                },
                credential: g.members[&carol_view.leaf].credential.clone(),
            },
        ),
    );
    assert_eq!(r, Err(ErrorCode::InvalidCommit));

    // Bob resyncs by himself.
    let (state, r) = run(
        state,
        Op::Client(ClientOp::Resync {
            client: BOB,
            group: g1,
        }),
    );
    assert_eq!(r, Ok(phoenix_model::call::Reply::Empty));
    let after = state.servers[&g1.domain].ds.groups[&g1].clone();
    assert_eq!(after.members.len(), g.members.len(), "one leaf out, one in");
    assert_eq!(state.clients[&BOB].groups[&g1].epoch, after.epoch);
    assert!(invariants::inv_member_in_one_leaf(&state));
    assert_invariants(&state);
    // The resync commit reaches alice and carol; alice's next message reaches bob.
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: ALICE }));
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: CAROL }));
    assert_eq!(
        state.clients[&ALICE].groups[&g1].epoch, after.epoch,
        "alice merged the resync commit"
    );
    let (state, s) = run(
        state,
        Op::Client(ClientOp::Send {
            client: ALICE,
            group: g1,
        }),
    );
    assert!(s.is_ok());
    let (state, _) = run(state, Op::Client(ClientOp::Sync { client: BOB }));
    let now = state
        .ghost
        .accepted
        .iter()
        .filter(|x| x.receiver == BOB)
        .count();
    assert_eq!(
        now,
        missed + 1,
        "bob reads alice's message after the resync"
    );
    assert_invariants(&state);

    // The invariant catches a DS that keeps the old leaf besides the new one.
    let mut broken = state.clone();
    let group = broken
        .servers
        .get_mut(&g1.domain)
        .unwrap()
        .ds
        .groups
        .get_mut(&g1)
        .unwrap();
    let bob_leaf = state.clients[&BOB].groups[&g1].leaf;
    let copy = group.members[&bob_leaf].clone();
    group.members.insert(40, copy);
    assert!(!invariants::inv_member_in_one_leaf(&broken));
}
