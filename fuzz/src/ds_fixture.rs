//! Precomputed MLS material for the DS target, built once per harness server.
//!
//! Two groups are created on the server through `ds/create_group`, and their stored
//! (encrypted) state right after creation is kept, so each run starts them from epoch 0
//! again by writing that state back (a compare-and-swap on the stored row; the DS cannot
//! tell the difference). The requests below were made by real openmls clients against
//! that epoch-0 state, so a run can drive the groups through several epochs without
//! creating MLS material per run:
//!
//! - `team` (alice at leaf 0): epoch 0 → add bob → 1 → bob's update → 2 → alice removes
//!   bob → 3, with alternatives that conflict (alice's own update at epoch 1, adding carol
//!   at epoch 2) and an application message per epoch;
//! - `conn` (alice at leaf 0, a connection group): dave joins by external commit → 1, then
//!   sends an application message.
//!
//! Each [`Step`] names the state it applies to and the state it leads to, so the target
//! can predict the outcome of an intact request.

use openmls::prelude::{
    GroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProcessedMessageContent, RatchetTreeIn, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, VLBytes};

use phoenix_server::ds::group_state;
use phoenix_server::server::{Server, now};
use phoenix_server::store::{DsStore, ReplayRecord};
use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::ids::{Domain, QualifiedGroupId};
use phoenix_types::messages::ds::{
    self, AddUsersRequest, AddedMember, CommitRequest, CreateGroupRequest,
    JoinConnectionGroupRequest, MemberInfo, SendMessageRequest,
};
use phoenix_types::messages::qs::SealedQueueConfig;

use crate::harness::{DOMAIN, Harness, Mutation, Signer};
use crate::mls::{self, Provider, encoded};

/// The states of the `team` group (index 0) and the `conn` group (index 1).
pub mod state {
    pub const E0: u8 = 0;
    pub const E1: u8 = 1;
    /// After bob's update at epoch 1.
    pub const E2: u8 = 2;
    /// After alice's update at epoch 1 (the alternative to bob's).
    pub const E2_ALT: u8 = 3;
    /// After alice removed bob at epoch 2.
    pub const E3: u8 = 4;
    /// After alice added carol at epoch 2 (the alternative to the removal).
    pub const E3_ALT: u8 = 5;
    /// A damaged request was accepted: the target stops predicting.
    pub const UNKNOWN: u8 = 255;
}

/// A request as made by a client, without its timestamp (set when it is sent).
#[derive(Debug, Clone)]
pub enum DsRequest {
    AddUsers(AddUsersRequest),
    Commit(CommitRequest),
    Send(SendMessageRequest),
    Join(JoinConnectionGroupRequest),
}

impl DsRequest {
    /// The encoded payload with a fresh timestamp.
    pub fn payload(&self, timestamp: u64) -> Vec<u8> {
        match self {
            Self::AddUsers(r) => codec::encode(&AddUsersRequest {
                timestamp,
                ..r.clone()
            }),
            Self::Commit(r) => codec::encode(&CommitRequest {
                timestamp,
                ..r.clone()
            }),
            Self::Send(r) => codec::encode(&SendMessageRequest {
                timestamp,
                ..r.clone()
            }),
            Self::Join(r) => codec::encode(r),
        }
        .expect("requests encode")
    }

    /// The MLS message the request carries (commit or application message), for
    /// mutation before signing.
    pub fn mls_message_mut(&mut self) -> &mut VLBytes {
        match self {
            Self::AddUsers(r) => &mut r.commit,
            Self::Commit(r) => &mut r.commit,
            Self::Send(r) => &mut r.message,
            Self::Join(r) => &mut r.commit,
        }
    }

    /// The group info the request carries, if any.
    pub fn group_info_mut(&mut self) -> Option<&mut VLBytes> {
        match self {
            Self::AddUsers(r) => Some(&mut r.group_info),
            Self::Commit(r) => Some(&mut r.group_info),
            Self::Join(r) => Some(&mut r.group_info),
            Self::Send(_) => None,
        }
    }
}

/// One precomputed request.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub operation: &'static str,
    /// 0 = team, 1 = conn.
    pub group: usize,
    pub request: DsRequest,
    /// The signing member: (leaf index, index into [`DsFixture::signers`]); `None` for
    /// anonymous requests.
    pub signer: Option<(u32, usize)>,
    pub from: u8,
    /// The state after success; `None` for application messages (no state change).
    pub to: Option<u8>,
}

/// A group created at fixture time.
#[derive(Debug)]
pub struct GroupFixture {
    pub group_id: Vec<u8>,
    pub ear_key: [u8; 32],
    /// The stored ciphertext right after creation (epoch 0).
    pub initial: Vec<u8>,
}

pub struct DsFixture {
    pub groups: Vec<GroupFixture>,
    pub steps: Vec<Step>,
    pub signers: Vec<SignatureKeyPair>,
}

impl std::fmt::Debug for DsFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsFixture")
            .field("steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

/// A member entry whose queue config is sealed to the server's QS (for a client record
/// that does not exist: fan-out to it is dropped as undeliverable).
pub fn member_info(server: &Server, n: u8) -> MemberInfo {
    MemberInfo {
        queue_config: sealed(server, [n; 16]),
        encrypted_credential: VLBytes::new(vec![n; 64]),
    }
}

pub fn sealed(server: &Server, client: [u8; 16]) -> SealedQueueConfig {
    mls::seal_queue_config(&server.queue_config_key.public, DOMAIN, client)
}

/// A group id of the server's domain with the given random part.
/// A replay record for a write the fixture makes itself (not a request): random, so that
/// no two collide.
fn reset_record() -> ReplayRecord {
    let mut digest = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut digest);
    ReplayRecord {
        digest,
        received_at: now(),
    }
}

pub fn group_id(random: u8) -> Vec<u8> {
    QualifiedGroupId::new([random; 16], Domain::parse(DOMAIN).expect("a valid domain")).to_bytes()
}

fn message_in(out: &MlsMessageOut) -> MlsMessageBodyIn {
    MlsMessageIn::tls_deserialize_exact(encoded(out))
        .expect("our message decodes")
        .extract()
}

fn tree_in(group: &MlsGroup) -> RatchetTreeIn {
    RatchetTreeIn::tls_deserialize_exact(encoded(&group.export_ratchet_tree()))
        .expect("our tree decodes")
}

fn app_message(
    group: &mut MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    gid: &[u8],
    ear: [u8; 32],
    text: &str,
) -> DsRequest {
    let message = group
        .create_message(provider, signer, text.as_bytes())
        .expect("an application message");
    DsRequest::Send(SendMessageRequest {
        timestamp: 0,
        group_id: VLBytes::new(gid.to_vec()),
        ear_key: ear,
        message: VLBytes::new(encoded(&message)),
        notification: phoenix_types::messages::Notification::Send,
    })
}

fn commit_request(
    gid: &[u8],
    ear: [u8; 32],
    bundle: openmls::group::CommitMessageBundle,
) -> CommitRequest {
    let (commit, _, group_info) = bundle.into_messages();
    CommitRequest {
        timestamp: 0,
        group_id: VLBytes::new(gid.to_vec()),
        ear_key: ear,
        commit: VLBytes::new(encoded(&commit)),
        group_info: VLBytes::new(encoded(&group_info.expect("a group info"))),
        new_encrypted_credential: None,
    }
}

/// A staged commit of `group` adding the owner of `key_package`, and the `add_users`
/// request for it (the added member's encrypted credential and welcome info are filler
/// bytes of value `tag`); returns the welcome too, for the joiner.
fn add_member(
    group: &mut MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    gid: &[u8],
    ear: [u8; 32],
    key_package: KeyPackage,
    tag: u8,
) -> (DsRequest, MlsMessageOut) {
    let bundle = group
        .commit_builder()
        .propose_adds([key_package])
        .load_psks(provider.storage())
        .expect("psks")
        .create_group_info(true)
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .expect("add commit")
        .stage_commit(provider)
        .expect("staged");
    let (commit, welcome, group_info) = bundle.into_messages();
    let welcome = welcome.expect("a welcome");
    let request = DsRequest::AddUsers(AddUsersRequest {
        timestamp: 0,
        group_id: VLBytes::new(gid.to_vec()),
        ear_key: ear,
        commit: VLBytes::new(encoded(&commit)),
        welcome: VLBytes::new(encoded(&welcome)),
        group_info: VLBytes::new(encoded(&group_info.expect("a group info"))),
        added: vec![AddedMember {
            encrypted_credential: VLBytes::new(vec![tag; 64]),
            welcome_info: VLBytes::new(vec![tag; 32]),
        }],
    });
    (request, welcome)
}

fn self_update(
    group: &mut MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
) -> openmls::group::CommitMessageBundle {
    group
        .commit_builder()
        .force_self_update(true)
        .consume_proposal_store(false)
        .load_psks(provider.storage())
        .expect("psks")
        .create_group_info(true)
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .expect("an update commit")
        .stage_commit(provider)
        .expect("staged")
}

/// Create a group on the server from a fresh openmls group; returns the stored initial
/// ciphertext.
fn create_on_server(
    harness: &Harness,
    group: &MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    gid: &[u8],
    ear: [u8; 32],
) -> Vec<u8> {
    let server = &harness.server;
    harness
        .runtime
        .block_on(server.store.reserve_group_id(gid, now() + 365 * 24 * 3600))
        .expect("reservation");
    let request = create_group_request(harness, group, provider, signer, gid, ear);
    harness
        .send(
            "ds",
            ds::CREATE_GROUP,
            &request,
            &Signer::DsLeaf {
                leaf_index: 0,
                key: signer,
            },
            &Mutation::None,
        )
        .expect("the fixture group is created");
    harness
        .runtime
        .block_on(server.store.group(gid))
        .expect("storage")
        .expect("the group exists")
        .ciphertext
}

/// The `create_group` request for a fresh one-member openmls group.
pub fn create_group_request(
    harness: &Harness,
    group: &MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    gid: &[u8],
    ear: [u8; 32],
) -> CreateGroupRequest {
    CreateGroupRequest {
        timestamp: now(),
        group_id: VLBytes::new(gid.to_vec()),
        ear_key: ear,
        group_info: VLBytes::new(encoded(
            &group
                .export_group_info(provider.crypto(), signer, false)
                .expect("group info"),
        )),
        ratchet_tree: VLBytes::new(encoded(&group.export_ratchet_tree())),
        creator: member_info(&harness.server, 1),
    }
}

/// A fresh one-member group with id `gid`.
pub fn new_group(
    provider: &Provider,
    gid: &[u8],
    pseudonym: &[u8],
) -> (MlsGroup, SignatureKeyPair) {
    let (signer, credential) = mls::new_leaf(provider, pseudonym);
    let group = MlsGroup::new_with_group_id(
        provider,
        &signer,
        &mls::create_config(),
        GroupId::from_slice(gid),
        credential,
    )
    .expect("a group");
    (group, signer)
}

impl DsFixture {
    /// Build the fixture on `harness`'s server (its groups are created there).
    pub fn build(harness: &Harness) -> Self {
        use state::*;
        let server = &harness.server;
        let mut steps = Vec::new();

        // --- team ----------------------------------------------------------------------
        let team = group_id(0x01);
        let team_ear = [0x11; 32];
        let pa = Provider::default();
        let (mut ga, sa) = new_group(&pa, &team, b"alice");
        let team_initial = create_on_server(harness, &ga, &pa, &sa, &team, team_ear);
        steps.push(Step {
            name: "alice's message at epoch 0",
            operation: ds::SEND_MESSAGE,
            group: 0,
            request: app_message(&mut ga, &pa, &sa, &team, team_ear, "epoch 0"),
            signer: Some((0, 0)),
            from: E0,
            to: None,
        });

        // alice adds bob: epoch 0 -> 1.
        let pb = Provider::default();
        let bob_config = codec::encode(&sealed(server, [2; 16])).expect("sealed");
        let (kb, sb) = mls::key_package(&pb, Some(bob_config), false);
        let (request, welcome) = add_member(&mut ga, &pa, &sa, &team, team_ear, kb, 2);
        steps.push(Step {
            name: "alice adds bob",
            operation: ds::ADD_USERS,
            group: 0,
            request,
            signer: Some((0, 0)),
            from: E0,
            to: Some(E1),
        });
        ga.merge_pending_commit(&pa).expect("merge");
        let MlsMessageBodyIn::Welcome(welcome) = message_in(&welcome) else {
            panic!("not a welcome");
        };
        let mut gb =
            StagedWelcome::new_from_welcome(&pb, &mls::join_config(), welcome, Some(tree_in(&ga)))
                .expect("staged welcome")
                .into_group(&pb)
                .expect("bob joins");

        // Epoch 1: alice's message; alice's update (alternative); bob's update.
        steps.push(Step {
            name: "alice's message at epoch 1",
            operation: ds::SEND_MESSAGE,
            group: 0,
            request: app_message(&mut ga, &pa, &sa, &team, team_ear, "epoch 1"),
            signer: Some((0, 0)),
            from: E1,
            to: None,
        });
        let bundle = self_update(&mut ga, &pa, &sa);
        steps.push(Step {
            name: "alice's update at epoch 1",
            operation: ds::UPDATE,
            group: 0,
            request: DsRequest::Commit(commit_request(&team, team_ear, bundle)),
            signer: Some((0, 0)),
            from: E1,
            to: Some(E2_ALT),
        });
        ga.clear_pending_commit(pa.storage()).expect("cleared");
        let bundle = self_update(&mut gb, &pb, &sb);
        let bob_update = commit_request(&team, team_ear, bundle);
        steps.push(Step {
            name: "bob's update at epoch 1",
            operation: ds::UPDATE,
            group: 0,
            request: DsRequest::Commit(bob_update.clone()),
            signer: Some((1, 1)),
            from: E1,
            to: Some(E2),
        });
        gb.merge_pending_commit(&pb).expect("merge");
        let protocol = MlsMessageIn::tls_deserialize_exact(bob_update.commit.as_slice())
            .expect("commit")
            .try_into_protocol_message()
            .expect("protocol message");
        let processed = ga.process_message(&pa, protocol).expect("alice processes");
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("not a commit");
        };
        ga.merge_staged_commit(&pa, *staged).expect("merge");

        // Epoch 2: bob's message; alice adds carol (alternative); alice removes bob.
        steps.push(Step {
            name: "bob's message at epoch 2",
            operation: ds::SEND_MESSAGE,
            group: 0,
            request: app_message(&mut gb, &pb, &sb, &team, team_ear, "epoch 2"),
            signer: Some((1, 1)),
            from: E2,
            to: None,
        });
        let pc = Provider::default();
        let carol_config = codec::encode(&sealed(server, [3; 16])).expect("sealed");
        let (kc, _) = mls::key_package(&pc, Some(carol_config), false);
        let (request, _) = add_member(&mut ga, &pa, &sa, &team, team_ear, kc, 3);
        steps.push(Step {
            name: "alice adds carol at epoch 2",
            operation: ds::ADD_USERS,
            group: 0,
            request,
            signer: Some((0, 0)),
            from: E2,
            to: Some(E3_ALT),
        });
        ga.clear_pending_commit(pa.storage()).expect("cleared");
        let bundle = ga
            .commit_builder()
            .propose_removals([LeafNodeIndex::new(1)])
            .consume_proposal_store(false)
            .load_psks(pa.storage())
            .expect("psks")
            .create_group_info(true)
            .build(pa.rand(), pa.crypto(), &sa, |_| true)
            .expect("remove commit")
            .stage_commit(&pa)
            .expect("staged");
        steps.push(Step {
            name: "alice removes bob at epoch 2",
            operation: ds::REMOVE_USERS,
            group: 0,
            request: DsRequest::Commit(commit_request(&team, team_ear, bundle)),
            signer: Some((0, 0)),
            from: E2,
            to: Some(E3),
        });
        ga.merge_pending_commit(&pa).expect("merge");
        steps.push(Step {
            name: "alice's message at epoch 3",
            operation: ds::SEND_MESSAGE,
            group: 0,
            request: app_message(&mut ga, &pa, &sa, &team, team_ear, "epoch 3"),
            signer: Some((0, 0)),
            from: E3,
            to: None,
        });

        // --- conn ----------------------------------------------------------------------
        let conn = group_id(0x02);
        let conn_ear = [0x22; 32];
        let pe = Provider::default();
        let (ge, se) = new_group(&pe, &conn, b"alice in conn");
        let conn_initial = create_on_server(harness, &ge, &pe, &se, &conn, conn_ear);
        let pd = Provider::default();
        let (sd, cd) = mls::new_leaf(&pd, b"dave");
        let MlsMessageBodyIn::GroupInfo(info) = message_in(
            &ge.export_group_info(pe.crypto(), &se, false)
                .expect("group info"),
        ) else {
            panic!("not a group info");
        };
        let (mut gd, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree_in(&ge))
            .with_config(mls::join_config())
            .build_group(&pd, info, cd)
            .expect("external commit builder")
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(mls::capabilities())
                    .build(),
            )
            .load_psks(pd.storage())
            .expect("psks")
            .create_group_info(true)
            .build(pd.rand(), pd.crypto(), &sd, |_| true)
            .expect("external commit")
            .finalize(&pd)
            .expect("finalized");
        let (commit, _, group_info) = bundle.into_messages();
        steps.push(Step {
            name: "dave joins the connection group",
            operation: ds::JOIN_CONNECTION_GROUP,
            group: 1,
            request: DsRequest::Join(JoinConnectionGroupRequest {
                group_id: VLBytes::new(conn.clone()),
                ear_key: conn_ear,
                commit: VLBytes::new(encoded(&commit)),
                group_info: VLBytes::new(encoded(&group_info.expect("a group info"))),
                joiner: member_info(server, 4),
            }),
            signer: None,
            from: E0,
            to: Some(E1),
        });
        steps.push(Step {
            name: "dave's message in the connection group",
            operation: ds::SEND_MESSAGE,
            group: 1,
            request: app_message(&mut gd, &pd, &sd, &conn, conn_ear, "hello alice"),
            signer: Some((gd.own_leaf_index().u32(), 2)),
            from: E1,
            to: None,
        });

        Self {
            groups: vec![
                GroupFixture {
                    group_id: team,
                    ear_key: team_ear,
                    initial: team_initial,
                },
                GroupFixture {
                    group_id: conn,
                    ear_key: conn_ear,
                    initial: conn_initial,
                },
            ],
            steps,
            signers: vec![sa, sb, sd],
        }
    }

    /// Put every group back to its epoch-0 state.
    pub fn reset(&self, harness: &Harness) {
        let store = &harness.server.store;
        for group in &self.groups {
            harness.runtime.block_on(async {
                let stored = store
                    .group(&group.group_id)
                    .await
                    .expect("storage")
                    .expect("the fixture group exists");
                // The state is bound to its row version (DS-EAR-3): the initial state is
                // sealed again for the version the reset writes, as the DS would.
                let key = SymmetricKey(group.ear_key);
                let (state, epoch) = group_state::open(&key, &group.group_id, 0, &group.initial)
                    .expect("the fixture's initial state opens as version 0");
                let resealed =
                    group_state::seal(&key, &group.group_id, stored.version + 1, epoch, &state)
                        .expect("sealing the fixture's initial state");
                let reset = store
                    .update_group(
                        &group.group_id,
                        stored.version,
                        &resealed,
                        now(),
                        &[],
                        &reset_record(),
                    )
                    .await
                    .expect("storage")
                    .is_some();
                assert!(reset, "the fixture group changed concurrently");
            });
        }
    }
}

/// A group-creation token for `server`, evaluated with its token key as its AS would
/// issue it (the AS path is the AS target's; the DS target needs one per reservation).
pub fn group_token(server: &Server) -> phoenix_types::messages::ds::GroupToken {
    use phoenix_types::tokens;
    let key = &server.group_token_key;
    let pending = tokens::blind(&mut rand_core::OsRng).expect("blinding");
    let (evaluated, proof) = key
        .issue(&mut rand_core::OsRng, &[pending.blinded()])
        .expect("issuance");
    let evaluated: Vec<&[u8]> = evaluated.iter().map(Vec::as_slice).collect();
    let token = tokens::finalize(
        std::slice::from_ref(&pending),
        &evaluated,
        &proof,
        key.public_key(),
    )
    .expect("a token")
    .remove(0);
    phoenix_types::messages::ds::GroupToken {
        key_id: VLBytes::new(token.key_id.to_vec()),
        input: VLBytes::new(token.input.to_vec()),
        output: VLBytes::new(token.output),
    }
}
