//! The Delivery Service: groups as the DS sees them. It knows a group by its id, the EAR
//! key that opens its state (supplied with every request, never kept), its epoch and its
//! members, each a leaf with a per-group pseudonymous signature key, a sealed queue config
//! and an encrypted credential it cannot open.
//!
//! MLS validation is abstracted to what decides the outcome: the epoch a commit or message
//! is for, who signed it, and which leaves it adds or removes. One commit per (group,
//! epoch) is accepted (Requirement: DS-EPOCH-1): the first for the current epoch wins, any
//! later one for that epoch gets `WRONG_EPOCH`. Fan-out goes to every member except the
//! sender (Requirement: DS-FAN-1), and is enqueued right after the state change (the
//! server's outbox delivers local entries before it answers).
//!
//! Not here: MLS tree math, ciphertext formats, group-info signatures.

use std::collections::{BTreeMap, BTreeSet};

use phoenix_types::error::ErrorCode;

use crate::as_::Certificate;
use crate::call::{DsCall, LeafSigner, MemberArg, Outcome, Reply};
use crate::ids::{DomainId, Epoch, GroupId, KeyId, Leaf, MsgId, QsCid, Sealed, Signed};
use crate::mutants::ServerMutant;
use crate::queue::{CommitKind, MemberInfo, QueueItem};

/// What a member's encrypted credential holds (opened only by clients, with the group's
/// credential key): its client certificate and that certificate key's signature over the
/// leaf key (Requirement: ID-CHAIN-1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeafBinding {
    pub certificate: Certificate,
    pub binding: Signed<KeyId>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub leaf_key: KeyId,
    pub queue_config: Sealed<QsCid>,
    pub credential: Sealed<LeafBinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    /// The key the state is encrypted under; a request must present it.
    pub ear: KeyId,
    pub epoch: Epoch,
    pub members: BTreeMap<Leaf, Member>,
    /// Who committed into the current epoch (the signer of the group info the DS keeps and
    /// serves with `external_commit_info`); `None` at creation.
    pub committer: Option<Leaf>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DsState {
    pub domain: DomainId,
    pub reserved: BTreeSet<GroupId>,
    pub groups: BTreeMap<GroupId, Group>,
    pub next_group: u32,
    /// Spent group-creation tokens and the group id each reserved (Requirement:
    /// DS-GID-3).
    pub spent_tokens: BTreeMap<u32, GroupId>,
    /// A seeded bug ([`crate::mutants`]); `None` in the model itself.
    pub mutant: ServerMutant,
    /// Replay records: the application messages accepted (the server keeps a digest of
    /// each, with no group or member next to it) (Requirement: ADV-REPLAY-2).
    pub sent: BTreeSet<MsgId>,
    /// Replay records of the other signed state-changing requests (group creation and
    /// commits), as they were (the server keeps a digest of each) (Requirement:
    /// ADV-REPLAY-3).
    pub seen: BTreeSet<DsCall>,
}

impl DsState {
    pub fn new(domain: DomainId) -> Self {
        Self {
            domain,
            reserved: BTreeSet::new(),
            groups: BTreeMap::new(),
            next_group: 0,
            spent_tokens: BTreeMap::new(),
            mutant: ServerMutant::None,
            sent: BTreeSet::new(),
            seen: BTreeSet::new(),
        }
    }
}

/// One fan-out entry: the sealed queue config of the recipient and what to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FanOut {
    pub queue_config: Sealed<QsCid>,
    pub item: QueueItem,
}

/// A DS call's effect besides its reply: the fan-out to deliver.
pub type Effects = Vec<FanOut>;

/// Run one DS call. `fresh_msg` names the commit the call carries (the model's fresh
/// message id for it).
pub fn handle(state: &mut DsState, call: &DsCall, fresh_msg: MsgId) -> (Outcome, Effects) {
    // Requirement: ADV-REPLAY-3 (before the group is looked at: a replayed commit is
    // REPLAYED, not WRONG_EPOCH)
    let protected = replay_protected(call);
    if protected && state.seen.contains(call) {
        return (Err(ErrorCode::Replayed), Vec::new());
    }
    match handle_inner(state, call, fresh_msg) {
        Ok((reply, effects)) => {
            if protected {
                state.seen.insert(call.clone());
            }
            (Ok(reply), effects)
        }
        Err(code) => (Err(code), Vec::new()),
    }
}

/// Whether the server keeps replay records of `call` by the request (group creation and
/// commits; an application message has its own record, by the message, in
/// [`DsState::sent`]) (Requirement: ADV-REPLAY-3).
pub fn replay_protected(call: &DsCall) -> bool {
    matches!(
        call,
        DsCall::CreateGroup { .. }
            | DsCall::JoinConnectionGroup { .. }
            | DsCall::AddUsers { .. }
            | DsCall::RemoveUsers { .. }
            | DsCall::Update { .. }
            | DsCall::Resync { .. }
    )
}

fn handle_inner(
    state: &mut DsState,
    call: &DsCall,
    fresh_msg: MsgId,
) -> Result<(Reply, Effects), ErrorCode> {
    match call {
        // Requirement: DS-GID-1, DS-GID-3
        DsCall::RequestGroupId { token } => {
            let genuine = token.genuine || state.mutant == ServerMutant::DsTakesForgedTokens;
            if !genuine || token.domain != state.domain {
                return Err(ErrorCode::InvalidToken);
            }
            // The same token again: the reservation it bought, while unused.
            if let Some(group) = state.spent_tokens.get(&token.n) {
                return if state.reserved.contains(group) {
                    Ok((Reply::GroupId(*group), Vec::new()))
                } else {
                    Err(ErrorCode::InvalidToken)
                };
            }
            let group = GroupId {
                domain: state.domain,
                n: state.next_group,
            };
            state.next_group = state.next_group.saturating_add(1);
            state.reserved.insert(group);
            state.spent_tokens.insert(token.n, group);
            Ok((Reply::GroupId(group), Vec::new()))
        }
        DsCall::CreateGroup {
            group,
            ear,
            creator,
        } => {
            if group.domain != state.domain {
                return Err(ErrorCode::WrongGroupDomain);
            }
            if state.groups.contains_key(group) {
                return Err(ErrorCode::GroupExists);
            }
            if !state.reserved.contains(group) {
                return Err(ErrorCode::GroupIdNotReserved);
            }
            state.reserved.remove(group);
            let mut members = BTreeMap::new();
            members.insert(0, member_of(creator));
            state.groups.insert(
                *group,
                Group {
                    ear: *ear,
                    epoch: 0,
                    members,
                    committer: None,
                },
            );
            Ok((Reply::Empty, Vec::new()))
        }
        // Requirement: DS-INFO-1
        DsCall::ExternalCommitInfo { group, ear } => {
            let g = load(state, group, *ear)?;
            let mut leaves = Vec::new();
            for leaf in g.members.keys() {
                leaves.push(*leaf);
            }
            Ok((
                Reply::GroupInfo {
                    epoch: g.epoch,
                    leaves,
                    members: member_infos(&g.members),
                },
                Vec::new(),
            ))
        }
        DsCall::JoinConnectionGroup {
            group,
            ear,
            epoch,
            joiner,
        } => {
            let g = load(state, group, *ear)?.clone();
            if g.members.len() != 1 {
                return Err(ErrorCode::NotConnectionGroup);
            }
            check_epoch_of(state.mutant, &g, *epoch)?;
            let leaf = lowest_free_leaf(&g.members);
            let item = QueueItem::Commit {
                group: *group,
                epoch: g.epoch,
                sender: leaf,
                commit: fresh_msg,
                kind: CommitKind::ExternalJoin(MemberInfo {
                    leaf,
                    leaf_key: joiner.leaf_key,
                    credential: joiner.credential.clone(),
                }),
            };
            // The external committer is not yet a member: everyone else hears of it.
            let effects = fan_out(&g.members, None, &item);
            let mut next = g;
            next.members.insert(leaf, member_of(joiner));
            next.epoch = next.epoch.saturating_add(1);
            next.committer = Some(leaf);
            state.groups.insert(*group, next);
            Ok((Reply::Empty, effects))
        }
        // Requirement: DS-ADD-1, DS-COMMIT-1 (MLS validity abstracted to epoch, signer and
        // the leaves added or removed)
        DsCall::AddUsers {
            group,
            ear,
            signer,
            epoch,
            joiners,
        } => {
            let g = load(state, group, *ear)?.clone();
            authenticate_leaf(&g, signer)?;
            check_epoch_of(state.mutant, &g, *epoch)?;
            if joiners.is_empty() {
                return Err(ErrorCode::InvalidCommit);
            }
            let mut next = g.clone();
            let mut placed = Vec::new();
            for joiner in joiners.iter() {
                let leaf = lowest_free_leaf(&next.members);
                next.members.insert(leaf, member_of(&joiner.member));
                placed.push(MemberInfo {
                    leaf,
                    leaf_key: joiner.member.leaf_key,
                    credential: joiner.member.credential.clone(),
                });
            }
            next.epoch = next.epoch.saturating_add(1);
            next.committer = Some(signer.leaf);
            let item = QueueItem::Commit {
                group: *group,
                epoch: g.epoch,
                sender: signer.leaf,
                commit: fresh_msg,
                kind: CommitKind::Add(placed.clone()),
            };
            let mut effects = fan_out(&g.members, Some(signer.leaf), &item);
            let everyone = member_infos(&next.members);
            for (info, joiner) in placed.iter().zip(joiners.iter()) {
                effects.push(FanOut {
                    queue_config: joiner.member.queue_config.clone(),
                    item: QueueItem::Welcome {
                        group: *group,
                        epoch: next.epoch,
                        leaf: info.leaf,
                        members: everyone.clone(),
                        secrets: joiner.welcome.clone(),
                    },
                });
            }
            state.groups.insert(*group, next);
            Ok((Reply::Empty, effects))
        }
        DsCall::RemoveUsers {
            group,
            ear,
            signer,
            epoch,
            removed,
        } => {
            let g = load(state, group, *ear)?.clone();
            authenticate_leaf(&g, signer)?;
            check_epoch_of(state.mutant, &g, *epoch)?;
            if removed.is_empty() || removed.contains(&signer.leaf) {
                return Err(ErrorCode::InvalidCommit);
            }
            for leaf in removed.iter() {
                if !g.members.contains_key(leaf) {
                    return Err(ErrorCode::InvalidCommit);
                }
            }
            let item = QueueItem::Commit {
                group: *group,
                epoch: g.epoch,
                sender: signer.leaf,
                commit: fresh_msg,
                kind: CommitKind::Remove(removed.clone()),
            };
            // The removed members hear of their removal too (Requirement: DS-FAN-2).
            let effects = fan_out(&g.members, Some(signer.leaf), &item);
            let mut next = g;
            for leaf in removed.iter() {
                next.members.remove(leaf);
            }
            next.epoch = next.epoch.saturating_add(1);
            next.committer = Some(signer.leaf);
            state.groups.insert(*group, next);
            Ok((Reply::Empty, effects))
        }
        DsCall::Update {
            group,
            ear,
            signer,
            epoch,
        } => {
            let g = load(state, group, *ear)?.clone();
            authenticate_leaf(&g, signer)?;
            check_epoch_of(state.mutant, &g, *epoch)?;
            let item = QueueItem::Commit {
                group: *group,
                epoch: g.epoch,
                sender: signer.leaf,
                commit: fresh_msg,
                kind: CommitKind::Update,
            };
            let effects = fan_out(&g.members, Some(signer.leaf), &item);
            let mut next = g;
            next.epoch = next.epoch.saturating_add(1);
            next.committer = Some(signer.leaf);
            state.groups.insert(*group, next);
            Ok((Reply::Empty, effects))
        }
        // Requirement: DS-RESYNC-1, DS-RESYNC-2, DS-RESYNC-3
        DsCall::Resync {
            group,
            ear,
            signer,
            epoch,
            removed,
            member,
        } => {
            let g = load(state, group, *ear)?.clone();
            // Only a member, signing with the key of the leaf it replaces.
            authenticate_leaf(&g, signer)?;
            check_epoch(&g, *epoch)?;
            // The commit removes exactly the signer's own leaf...
            if *removed != signer.leaf {
                return Err(ErrorCode::InvalidCommit);
            }
            // ...and the new leaf keeps its credential (the leaf key is the model's
            // per-group pseudonym, which the real DS compares as the MLS credential).
            if g.members.get(removed).map(|m| m.leaf_key) != Some(member.leaf_key) {
                return Err(ErrorCode::InvalidCommit);
            }
            let mut next = g.clone();
            next.members.remove(removed);
            let leaf = lowest_free_leaf(&next.members);
            next.members.insert(leaf, member_of(member));
            let item = QueueItem::Commit {
                group: *group,
                epoch: g.epoch,
                sender: leaf,
                commit: fresh_msg,
                kind: CommitKind::Resync {
                    removed: *removed,
                    member: MemberInfo {
                        leaf,
                        leaf_key: member.leaf_key,
                        credential: member.credential.clone(),
                    },
                },
            };
            let effects = fan_out(&g.members, Some(*removed), &item);
            next.epoch = next.epoch.saturating_add(1);
            next.committer = Some(leaf);
            state.groups.insert(*group, next);
            Ok((Reply::Empty, effects))
        }
        // Requirement: DS-SEND-1, DS-EPOCH-2
        DsCall::SendMessage {
            group,
            ear,
            signer,
            epoch,
            msg,
        } => {
            let g = load(state, group, *ear)?;
            authenticate_leaf(g, signer)?;
            check_epoch_of(state.mutant, g, *epoch)?;
            let item = QueueItem::Application {
                group: *group,
                epoch: g.epoch,
                sender: signer.leaf,
                msg: *msg,
            };
            let effects = fan_out(&g.members, Some(signer.leaf), &item);
            // A replayed message is refused, not fanned out again (Requirement:
            // ADV-REPLAY-2).
            if !state.sent.insert(*msg) && state.mutant != ServerMutant::DsSkipsMessageReplayRecord
            {
                return Err(ErrorCode::Replayed);
            }
            Ok((Reply::Empty, effects))
        }
    }
}

/// Every member as clients see it, by leaf.
pub fn member_infos(members: &BTreeMap<Leaf, Member>) -> Vec<MemberInfo> {
    let mut out = Vec::new();
    for (leaf, m) in members.iter() {
        out.push(MemberInfo {
            leaf: *leaf,
            leaf_key: m.leaf_key,
            credential: m.credential.clone(),
        });
    }
    out
}

fn member_of(arg: &MemberArg) -> Member {
    Member {
        leaf_key: arg.leaf_key,
        queue_config: arg.queue_config.clone(),
        credential: arg.credential.clone(),
    }
}

/// Load a group: it must be hosted here, exist, and the EAR key must open it
/// (Requirement: DS-EAR-1).
pub fn load<'a>(state: &'a DsState, group: &GroupId, ear: KeyId) -> Result<&'a Group, ErrorCode> {
    if group.domain != state.domain {
        return Err(ErrorCode::WrongGroupDomain);
    }
    let Some(g) = state.groups.get(group) else {
        return Err(ErrorCode::UnknownGroup);
    };
    if g.ear != ear {
        return Err(ErrorCode::WrongEarKey);
    }
    Ok(g)
}

/// The request must be signed by the key of the leaf it names (Requirement: DS-AUTH-1).
pub fn authenticate_leaf(group: &Group, signer: &LeafSigner) -> Result<(), ErrorCode> {
    let Some(member) = group.members.get(&signer.leaf) else {
        return Err(ErrorCode::UnknownSender);
    };
    if member.leaf_key != signer.key {
        return Err(ErrorCode::BadSignature);
    }
    Ok(())
}

/// Commits and messages must be for the current epoch (Requirement: DS-EPOCH-1,
/// DS-EPOCH-2).
pub fn check_epoch(group: &Group, epoch: Epoch) -> Result<(), ErrorCode> {
    if epoch != group.epoch {
        return Err(ErrorCode::WrongEpoch);
    }
    Ok(())
}

/// [`check_epoch`], unless the seeded bug skips it.
fn check_epoch_of(mutant: ServerMutant, group: &Group, epoch: Epoch) -> Result<(), ErrorCode> {
    if mutant == ServerMutant::DsSkipsEpochCheck {
        return Ok(());
    }
    check_epoch(group, epoch)
}

/// The lowest leaf index not in use (MLS fills the leftmost blank leaf).
pub fn lowest_free_leaf(members: &BTreeMap<Leaf, Member>) -> Leaf {
    let mut leaf: Leaf = 0;
    for used in members.keys() {
        if *used == leaf {
            leaf = leaf.saturating_add(1);
        }
    }
    leaf
}

/// Fan-out to every member but `except` (Requirement: DS-FAN-1).
pub fn fan_out(
    members: &BTreeMap<Leaf, Member>,
    except: Option<Leaf>,
    item: &QueueItem,
) -> Effects {
    let mut out = Vec::new();
    for (leaf, member) in members.iter() {
        if Some(*leaf) != except {
            out.push(FanOut {
                queue_config: member.queue_config.clone(),
                item: item.clone(),
            });
        }
    }
    // Postcondition: one entry per member but the sender.
    debug_assert_eq!(
        out.len(),
        members.len() - usize::from(except.is_some_and(|l| members.contains_key(&l))),
        "contract of fan_out"
    );
    out
}
