//! The Delivery Service driven in-process with arbitrary operation sequences over real
//! MLS groups (see `ds_fixture`): commits and application messages made by openmls
//! clients, sent in any order, replayed, signed by the wrong member, with the wrong EAR
//! key, or with their MLS message or group info damaged before signing (so the damage
//! reaches openmls's validation behind the DS's authentication); group creation with
//! fresh openmls groups; external commit info; raw envelopes.
//!
//! Checked: no panic; every error blames the caller; intact requests succeed exactly when
//! the group is in the state they were made for (one commit per epoch, replays refused,
//! removed members locked out), and change the group's state as the client expected.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tls_codec::VLBytes;

use phoenix_fuzz::ds_fixture::{self, DsFixture, DsRequest, state};
use phoenix_fuzz::harness::{Harness, Mutation, Signer, intact};
use phoenix_fuzz::mls::Provider;
use phoenix_server::server::now;
use phoenix_server::store::DsStore;
use phoenix_types::codec;
use phoenix_types::error::ErrorCode;
use phoenix_types::ids::{Domain, QualifiedGroupId};
use phoenix_types::messages::ds::{self, ExternalCommitInfoRequest, ExternalCommitInfoResponse};
use phoenix_types::messages::{Auth, Empty};

#[derive(Debug, Arbitrary)]
enum Op {
    /// A precomputed request, possibly damaged after signing.
    Step {
        step: u8,
        mutation: Mutation,
    },
    /// A precomputed request whose MLS message (or group info) is damaged before signing.
    DamagedMls {
        step: u8,
        in_group_info: bool,
        flips: Vec<(u16, u8)>,
        truncate: Option<u16>,
        append: Vec<u8>,
    },
    /// A precomputed request signed by some member's key at some leaf index.
    OtherSigner {
        step: u8,
        leaf: u8,
        signer: u8,
    },
    /// A precomputed request with another EAR key.
    WrongEarKey {
        step: u8,
        byte: u8,
    },
    ExternalCommitInfo {
        group: u8,
        wrong_key: bool,
        mutation: Mutation,
    },
    RequestGroupId {
        mutation: Mutation,
    },
    CreateGroup {
        reserve: bool,
        foreign: bool,
        mutation: Mutation,
    },
    Raw {
        operation: u8,
        auth: Auth,
        payload: Vec<u8>,
    },
}

const OPERATIONS: [&str; 9] = [
    ds::REQUEST_GROUP_ID,
    ds::CREATE_GROUP,
    ds::EXTERNAL_COMMIT_INFO,
    ds::JOIN_CONNECTION_GROUP,
    ds::ADD_USERS,
    ds::REMOVE_USERS,
    ds::UPDATE,
    ds::SEND_MESSAGE,
    ds::RESYNC,
];

struct Run<'a> {
    h: &'a Harness,
    fixture: &'a DsFixture,
    states: [u8; 2],
    created: u64,
}

impl Run<'_> {
    /// Send `request` of `step`, signed as chosen; update and check the model. Returns
    /// the error code, if any.
    fn send(
        &mut self,
        step: usize,
        request: &DsRequest,
        signer: Option<(u32, usize)>,
        mutation: &Mutation,
        predictable: bool,
    ) -> Option<ErrorCode> {
        let fixture = self.fixture;
        let s = fixture.steps.get(step)?;
        let payload = request.payload(now());
        let signer = match signer {
            Some((leaf_index, n)) => Signer::DsLeaf {
                leaf_index,
                key: &fixture.signers[n % fixture.signers.len()],
            },
            None => Signer::Anonymous,
        };
        let body = phoenix_fuzz::harness::envelope("ds", s.operation, &payload, &signer, mutation);
        // The exact bytes of a commit accepted before (the same step within the same second,
        // or a join, which has no timestamp, in a later run): REPLAYED, checked by the
        // harness, and nothing changes (Requirement: ADV-REPLAY-3).
        let request_replay = self.h.is_replay("ds", s.operation, &body);
        let result = self.h.call("ds", s.operation, &body);
        let code = result.as_ref().err().map(|e| e.code);
        if request_replay {
            return code;
        }
        // An application message the DS accepted before (intact or damaged, by its bytes)
        // is refused from now on.
        let message = match request {
            DsRequest::Send(r) => Some(r.message.as_slice()),
            _ => None,
        };
        let replay = message.is_some_and(|m| self.h.ds_sent.borrow().contains(m));
        if let (Ok(_), Some(m)) = (&result, message) {
            self.h.ds_sent.borrow_mut().insert(m.to_vec());
        }
        let state = &mut self.states[s.group];
        if !predictable || *state == state::UNKNOWN {
            if result.is_ok() && s.to.is_some() {
                // A damaged commit was accepted; what the group looks like now is unknown.
                *state = state::UNKNOWN;
            }
            return code;
        }
        let expect_ok = match (s.to, s.signer) {
            // A commit applies to exactly the state it was made for.
            (Some(_), _) => *state == s.from,
            // The DS cannot read application messages: it checks the epoch and that the
            // sender is a member.
            (None, Some((leaf, _))) => {
                epoch(s.group, *state) == epoch(s.group, s.from)
                    && members(s.group, *state).contains(&leaf)
            }
            (None, None) => true,
        };
        match &result {
            Ok(bytes) => {
                assert!(
                    expect_ok,
                    "{:?} was accepted in state {state} (made for {})",
                    s.name, s.from
                );
                assert!(!replay, "{:?} was accepted again (a replay)", s.name);
                codec::decode::<Empty>(bytes, usize::MAX).expect("an empty response");
                if let Some(to) = s.to {
                    *state = to;
                }
            }
            Err(e) if expect_ok && replay => {
                assert_eq!(e.code, ErrorCode::Replayed, "{:?} replayed: {e}", s.name);
            }
            Err(e) => {
                assert!(!expect_ok, "{:?} was refused in state {state}: {e}", s.name);
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::WrongEpoch
                            | ErrorCode::UnknownSender
                            | ErrorCode::BadSignature
                            | ErrorCode::NotConnectionGroup
                            | ErrorCode::InvalidCommit
                            | ErrorCode::InvalidGroupInfo
                    ),
                    "{:?} in state {state}: unexpected {e}",
                    s.name
                );
            }
        }
        code
    }

    fn step(&self, n: u8) -> usize {
        usize::from(n) % self.fixture.steps.len()
    }

    fn create_group(&mut self, reserve: bool, foreign: bool, mutation: &Mutation) {
        self.created += 1;
        let gid = if reserve && !foreign {
            let result = self.h.send(
                "ds",
                ds::REQUEST_GROUP_ID,
                &ds::RequestGroupIdRequest {
                    token: phoenix_fuzz::ds_fixture::group_token(&self.h.server),
                },
                &Signer::Anonymous,
                &Mutation::None,
            );
            let response: ds::RequestGroupIdResponse =
                codec::decode(&result.expect("request_group_id"), usize::MAX).expect("response");
            response.group_id.as_slice().to_vec()
        } else {
            let mut random = [0u8; 16];
            random[..8].copy_from_slice(&self.h.runs.to_be_bytes());
            random[8..].copy_from_slice(&self.created.to_be_bytes());
            random[0] ^= 0x80;
            let domain = if foreign {
                "other.test"
            } else {
                phoenix_fuzz::harness::DOMAIN
            };
            QualifiedGroupId::new(random, Domain::parse(domain).expect("domain")).to_bytes()
        };
        let provider = Provider::default();
        let (group, signer) = ds_fixture::new_group(&provider, &gid, b"creator");
        let request =
            ds_fixture::create_group_request(self.h, &group, &provider, &signer, &gid, [9; 32]);
        let result = self.h.send(
            "ds",
            ds::CREATE_GROUP,
            &request,
            &Signer::DsLeaf {
                leaf_index: 0,
                key: &signer,
            },
            mutation,
        );
        if intact(mutation) {
            match (reserve, foreign) {
                (true, false) => {
                    result.expect("creating a group under a reserved id");
                    // It exists now; the same request again is a replay (REPLAYED,
                    // ADV-REPLAY-3, checked by the harness too).
                    let again = self.h.send(
                        "ds",
                        ds::CREATE_GROUP,
                        &request,
                        &Signer::DsLeaf {
                            leaf_index: 0,
                            key: &signer,
                        },
                        &Mutation::None,
                    );
                    assert_eq!(again.map_err(|e| e.code), Err(ErrorCode::Replayed));
                }
                (_, true) => {
                    assert_eq!(result.map_err(|e| e.code), Err(ErrorCode::WrongGroupDomain))
                }
                (false, false) => {
                    assert_eq!(
                        result.map_err(|e| e.code),
                        Err(ErrorCode::GroupIdNotReserved)
                    )
                }
            }
        }
    }
}

/// The epoch number of a group state.
fn epoch(group: usize, s: u8) -> u8 {
    match (group, s) {
        (0, state::E2_ALT) => 2,
        (0, state::E3) | (0, state::E3_ALT) => 3,
        (_, s) => s,
    }
}

/// The occupied leaves of a group state.
fn members(group: usize, s: u8) -> &'static [u32] {
    match (group, s) {
        (0, state::E0) | (0, state::E3) | (1, state::E0) => &[0],
        (0, state::E3_ALT) => &[0, 1, 2],
        _ => &[0, 1],
    }
}

fn damage(bytes: &mut VLBytes, flips: &[(u16, u8)], truncate: Option<u16>, append: &[u8]) {
    let mut v = bytes.as_slice().to_vec();
    for (at, bit) in flips.iter().take(8) {
        if !v.is_empty() {
            let len = v.len();
            v[usize::from(*at) % len] ^= 1 << (bit % 8);
        }
    }
    if let Some(keep) = truncate {
        v.truncate(usize::from(keep));
    }
    v.extend_from_slice(&append[..append.len().min(64)]);
    *bytes = VLBytes::new(v);
}

fuzz_target!(|ops: Vec<Op>| {
    Harness::with(|h| {
        h.ds_fixture();
        let h = &*h;
        let fixture = h.ds.as_deref().expect("built");
        fixture.reset(h);
        let mut run = Run {
            h,
            fixture,
            states: [state::E0; 2],
            created: 0,
        };
        for op in ops.iter().take(12) {
            match op {
                Op::Step { step, mutation } => {
                    let n = run.step(*step);
                    let s = &fixture.steps[n];
                    run.send(n, &s.request, s.signer, mutation, intact(mutation));
                }
                Op::DamagedMls {
                    step,
                    in_group_info,
                    flips,
                    truncate,
                    append,
                } => {
                    let n = run.step(*step);
                    let s = &fixture.steps[n];
                    let mut request = s.request.clone();
                    let target = match request.group_info_mut() {
                        Some(info) if *in_group_info => info,
                        _ => request.mls_message_mut(),
                    };
                    let before = target.clone();
                    damage(target, flips, *truncate, append);
                    let unchanged = *target == before;
                    run.send(n, &request, s.signer, &Mutation::None, unchanged);
                }
                Op::OtherSigner { step, leaf, signer } => {
                    let n = run.step(*step);
                    let s = &fixture.steps[n];
                    let chosen = (
                        u32::from(*leaf % 4),
                        usize::from(*signer) % fixture.signers.len(),
                    );
                    let same = s.signer == Some(chosen);
                    run.send(n, &s.request, Some(chosen), &Mutation::None, same);
                }
                Op::WrongEarKey { step, byte } => {
                    let n = run.step(*step);
                    let s = &fixture.steps[n];
                    let mut request = s.request.clone();
                    let ear = match &mut request {
                        DsRequest::AddUsers(r) => &mut r.ear_key,
                        DsRequest::Commit(r) => &mut r.ear_key,
                        DsRequest::Send(r) => &mut r.ear_key,
                        DsRequest::Join(r) => &mut r.ear_key,
                    };
                    ear[usize::from(*byte) % 32] ^= 1 | byte;
                    let code = run.send(n, &request, s.signer, &Mutation::None, false);
                    assert_eq!(code, Some(ErrorCode::WrongEarKey), "{:?}", s.name);
                }
                Op::ExternalCommitInfo {
                    group,
                    wrong_key,
                    mutation,
                } => {
                    let g = &fixture.groups[usize::from(*group) % fixture.groups.len()];
                    let mut ear_key = g.ear_key;
                    if *wrong_key {
                        ear_key[0] ^= 1;
                    }
                    let result = h.send(
                        "ds",
                        ds::EXTERNAL_COMMIT_INFO,
                        &ExternalCommitInfoRequest {
                            group_id: VLBytes::new(g.group_id.clone()),
                            ear_key,
                        },
                        &Signer::Anonymous,
                        mutation,
                    );
                    if let Ok(bytes) = &result {
                        let info: ExternalCommitInfoResponse =
                            codec::decode(bytes, usize::MAX).expect("a response");
                        assert!(!info.credentials.is_empty());
                    }
                    if intact(mutation) {
                        assert_eq!(
                            result.map(|_| ()).map_err(|e| e.code),
                            if *wrong_key {
                                Err(ErrorCode::WrongEarKey)
                            } else {
                                Ok(())
                            }
                        );
                    }
                }
                Op::RequestGroupId { mutation } => {
                    let result = h.send(
                        "ds",
                        ds::REQUEST_GROUP_ID,
                        &ds::RequestGroupIdRequest {
                            token: phoenix_fuzz::ds_fixture::group_token(&h.server),
                        },
                        &Signer::Anonymous,
                        mutation,
                    );
                    if let Ok(bytes) = result {
                        let response: ds::RequestGroupIdResponse =
                            codec::decode(&bytes, usize::MAX).expect("a response");
                        let gid = QualifiedGroupId::parse(response.group_id.as_slice())
                            .expect("a qualified group id");
                        assert_eq!(gid.domain().as_str(), phoenix_fuzz::harness::DOMAIN);
                        let stored = h
                            .runtime
                            .block_on(h.server.store.group(response.group_id.as_slice()))
                            .expect("storage");
                        assert!(stored.is_none(), "a fresh group id names an existing group");
                    }
                }
                Op::CreateGroup {
                    reserve,
                    foreign,
                    mutation,
                } => run.create_group(*reserve, *foreign, mutation),
                Op::Raw {
                    operation,
                    auth,
                    payload,
                } => {
                    let operation = OPERATIONS[usize::from(*operation) % OPERATIONS.len()];
                    let body = codec::encode(&phoenix_types::messages::RequestEnvelope {
                        version: phoenix_types::PROTOCOL_VERSION,
                        payload: VLBytes::new(payload.clone()),
                        auth: auth.clone(),
                    })
                    .expect("envelope");
                    let _ = h.call("ds", operation, &body);
                }
            }
        }
    });
});
