//! Requests whose answer is lost, and how the honest client settles them (Requirement:
//! CL-AMBIG-1): the model's statement of `impl/client/src/client/recovery.rs`.
//!
//! [`RecoveryOp::SendUnanswered`] and [`RecoveryOp::UpdateUnanswered`] are a client's
//! `send_message` and `update` whose request the DS handles (it may accept or refuse it)
//! and whose answer never reaches the client. The client has saved the request and the
//! state it leads to before sending: the message's ratchet generation stays used (a fresh
//! message id is never issued twice), the commit stays pending, and the group takes no new
//! request until [`RecoveryOp::Settle`] has sent the identical request again:
//! - an answer, or `REPLAYED`, settles it as accepted (the message is acknowledged; the
//!   commit is merged);
//! - a refusal of a message leaves it unacknowledged (reported, never resent as new);
//! - a refusal of a commit is settled against the DS's state, as `external_commit_info`
//!   shows it: merged if the DS's current epoch is the commit's and was committed by our
//!   leaf, discarded otherwise.
//!
//! [`ClientMutant`] are the two broken clients the checks are shown to catch: the one
//! that rolled its state back on a lost answer (it reused the generation), and one that
//! would merge an unanswered commit without asking.

use phoenix_types::error::ErrorCode;

use crate::call::{Call, DsCall, LeafSigner, Outcome, Reply};
use crate::client::{ClientRef, advance, member_view};
use crate::ids::{GroupId, MsgId};
use crate::state::{Sent, State, call_server};

/// A deliberately broken client (for the checks that must fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ClientMutant {
    /// The honest client.
    #[default]
    None,
    /// Rolls its state back when the answer is lost (what the client did before).
    RollBackOnLostAnswer,
    /// Merges a commit whose answer was lost as if it had been accepted.
    MergeUnansweredBlindly,
}

/// A request the client sent and got no answer to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pending {
    pub group: GroupId,
    /// The request, to be sent again unchanged.
    pub call: DsCall,
    /// For an application message: its id.
    pub msg: Option<MsgId>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RecoveryOp {
    /// `client` sends an application message in `group`; the answer is lost.
    SendUnanswered { client: ClientRef, group: GroupId },
    /// `client` commits an update in `group`; the answer is lost.
    UpdateUnanswered { client: ClientRef, group: GroupId },
    /// `client` sends its unanswered requests again and settles each.
    Settle { client: ClientRef },
}

/// Ghost: one more message created under `msg` (its sender's ratchet generation).
pub fn note_created(state: &mut State, msg: MsgId) {
    let n = state.ghost.created.get(&msg).copied().unwrap_or(0);
    state.ghost.created.insert(msg, n.saturating_add(1));
}

pub fn run(state: &mut State, op: &RecoveryOp) -> Outcome {
    match op {
        RecoveryOp::SendUnanswered { client, group } => send_unanswered(state, *client, *group),
        RecoveryOp::UpdateUnanswered { client, group } => update_unanswered(state, *client, *group),
        RecoveryOp::Settle { client } => settle(state, *client),
    }
}

fn send_unanswered(state: &mut State, client: ClientRef, group: GroupId) -> Outcome {
    let (mut me, view) = member_view(state, client, group)?;
    let before = me.counter;
    me.counter = me.counter.saturating_add(1);
    let msg = MsgId(
        u32::from(client.0)
            .saturating_mul(100_000)
            .saturating_add(me.counter),
    );
    let (at, fid) = (state.now, me.fid);
    state.clients.insert(client, me);
    note_created(state, msg);
    let call = DsCall::SendMessage {
        group,
        ear: view.ear,
        signer: LeafSigner {
            leaf: view.leaf,
            key: view.leaf_key,
        },
        epoch: view.epoch,
        msg,
    };
    if call_server(state, group.domain, &Call::Ds(call.clone())).is_ok() {
        // The server kept it (the ghost truth receivers' chains lead to).
        state.ghost.sent.insert(
            msg,
            Sent {
                sender: fid,
                leaf_key: view.leaf_key,
                at,
            },
        );
    }
    let mutant = state.config.client_mutant;
    if let Some(me) = state.clients.get_mut(&client) {
        if mutant == ClientMutant::RollBackOnLostAnswer {
            // The old client: back to the state before the send (the generation is
            // free again, and the next message reuses it).
            me.counter = before;
        } else {
            me.pending.push(Pending {
                group,
                call,
                msg: Some(msg),
            });
        }
    }
    // The client saw no answer.
    Ok(Reply::Empty)
}

fn update_unanswered(state: &mut State, client: ClientRef, group: GroupId) -> Outcome {
    let (_, view) = member_view(state, client, group)?;
    let call = DsCall::Update {
        group,
        ear: view.ear,
        signer: LeafSigner {
            leaf: view.leaf,
            key: view.leaf_key,
        },
        epoch: view.epoch,
    };
    let _ = call_server(state, group.domain, &Call::Ds(call.clone()));
    if state.config.client_mutant == ClientMutant::MergeUnansweredBlindly {
        merge_own(state, client, group, view.epoch);
    } else if let Some(me) = state.clients.get_mut(&client) {
        me.pending.push(Pending {
            group,
            call,
            msg: None,
        });
    }
    Ok(Reply::Empty)
}

fn settle(state: &mut State, client: ClientRef) -> Outcome {
    let Some(me) = state.clients.get_mut(&client) else {
        return Err(ErrorCode::UnknownClient);
    };
    let pending = std::mem::take(&mut me.pending);
    for p in pending.iter() {
        // The identical request again.
        let outcome = call_server(state, p.group.domain, &Call::Ds(p.call.clone()));
        let accepted = matches!(outcome, Ok(_) | Err(ErrorCode::Replayed));
        match p.msg {
            Some(msg) => {
                if accepted {
                    state.ghost.acknowledged.insert(msg);
                }
                // Refused: reported as not confirmed; its generation is never reused.
            }
            None => {
                let DsCall::Update { signer, epoch, .. } = &p.call else {
                    continue;
                };
                if accepted || ds_shows_ours(state, p.group, *epoch, signer) {
                    merge_own(state, client, p.group, *epoch);
                }
                // Otherwise another commit won: discarded; the client syncs that one.
            }
        }
    }
    Ok(Reply::Empty)
}

/// What `external_commit_info` tells the client: whether the DS's current epoch is the
/// one after `epoch` and was committed by our leaf.
fn ds_shows_ours(state: &State, group: GroupId, epoch: u64, signer: &LeafSigner) -> bool {
    state
        .server(group.domain)
        .and_then(|s| s.ds.groups.get(&group))
        .is_some_and(|g| g.epoch == epoch.saturating_add(1) && g.committer == Some(signer.leaf))
}

/// The client merges its own commit for `epoch` (ghost: recorded with its leaf).
fn merge_own(state: &mut State, client: ClientRef, group: GroupId, epoch: u64) {
    let leaf = state
        .clients
        .get(&client)
        .and_then(|c| c.groups.get(&group))
        .map(|v| v.leaf);
    if let Some(leaf) = leaf {
        state.ghost.merged_own.insert((group, epoch, leaf));
    }
    advance(state, client, group, |_| {});
}
