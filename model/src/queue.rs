//! The queue lifecycle shared by the AS direct queues and the QS client queues: messages
//! numbered by a per-queue counter that only grows, dequeued by sequence number.
//!
//! Dequeue semantics (Requirement: QS-DEQ-1, QS-DEQ-2, QS-DEQ-3, AS-DQ-2): a dequeue from
//! `start` first deletes every message below `start` (the owner says it has processed
//! them), then returns up to `min(max, cap)` messages from `start` on, in order, and says
//! how many remain after them. Nothing else ever deletes a message, so a lost response
//! loses nothing: the owner asks again from the same `start`.
//!
//! Not here: who may dequeue (the services authenticate the owner first), encryption at
//! rest.

use std::collections::BTreeMap;

use crate::client::GroupSecrets;
use crate::ds::LeafBinding;
use crate::ids::{GroupId, KeyId, Leaf, MsgId, Sealed, Seq};

/// What a queue holds. Direct-queue entries are opaque to the server; QS entries are what
/// the DS fans out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QueueItem {
    /// An HPKE-sealed connection establishment package (or any ciphertext an anonymous
    /// sender enqueues): the server sees only its identity.
    Opaque(MsgId),
    /// A commit of `group` that moved it from `epoch` to `epoch + 1`, sent by `sender`.
    Commit {
        group: GroupId,
        epoch: u64,
        sender: Leaf,
        commit: MsgId,
        kind: CommitKind,
    },
    /// An application message of `group` at `epoch`, signed by the sender's leaf key.
    Application {
        group: GroupId,
        epoch: u64,
        sender: Leaf,
        msg: MsgId,
    },
    /// A welcome into `group` at `epoch` (the epoch the joiner starts in), for the joiner
    /// at `leaf`: the members (tree and encrypted credentials) and the group's secrets,
    /// sealed to the joiner's friendship key by the inviter (opaque to the server).
    Welcome {
        group: GroupId,
        epoch: u64,
        leaf: Leaf,
        members: Vec<MemberInfo>,
        secrets: Sealed<GroupSecrets>,
    },
}

/// A member as a commit or welcome shows it to clients: its leaf, leaf key and encrypted
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberInfo {
    pub leaf: Leaf,
    pub leaf_key: KeyId,
    pub credential: Sealed<LeafBinding>,
}

/// What a commit did, as far as the DS and members are concerned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CommitKind {
    /// A path update of the sender's own leaf (its signature key stays: the client library
    /// rotates only the leaf's encryption key).
    Update,
    Add(Vec<MemberInfo>),
    Remove(Vec<Leaf>),
    ExternalJoin(MemberInfo),
    /// A resync (Requirement: DS-RESYNC-1): the member at `removed` rejoined as `member`.
    Resync {
        removed: Leaf,
        member: MemberInfo,
    },
}

/// A queue: the next sequence number, the messages held, and (ghost, for the invariants
/// only; no service reads it) everything ever enqueued, by sequence number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Queue {
    pub next_seq: Seq,
    /// Every sequence number below this was deleted by the owner's dequeue (clamped to
    /// `next_seq`: numbers not yet assigned cannot have been deleted).
    pub deleted_below: Seq,
    pub messages: BTreeMap<Seq, QueueItem>,
    /// Ghost: what was enqueued under each number, never deleted.
    pub history: Vec<QueueItem>,
}

/// The result of a dequeue: the queue after it, the messages returned, how many remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued {
    pub queue: Queue,
    pub messages: Vec<(Seq, QueueItem)>,
    pub remaining: u64,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages held from `start` on, in order.
    pub fn from(&self, start: Seq) -> Vec<(Seq, QueueItem)> {
        let mut out = Vec::new();
        for (seq, item) in self.messages.iter() {
            if *seq >= start {
                out.push((*seq, item.clone()));
            }
        }
        out
    }
}

/// Append `item`; it gets the next number, which is never reused
/// (Requirement: QS-Q-1, AS-DQ-1).
pub fn enqueue(queue: &Queue, item: &QueueItem) -> (Queue, Seq) {
    let mut q = queue.clone();
    let seq = q.next_seq;
    q.messages.insert(seq, item.clone());
    q.history.push(item.clone());
    q.next_seq = seq.saturating_add(1);
    let result = (q, seq);
    debug_assert!(post_enqueue(queue, item, &result), "contract of enqueue");
    result
}

/// The contract of [`enqueue`]: the item is held under the old counter, the counter grew
/// by one, nothing else changed.
pub fn post_enqueue(queue: &Queue, item: &QueueItem, result: &(Queue, Seq)) -> bool {
    let (q, seq) = result;
    let mut expected = queue.messages.clone();
    expected.insert(queue.next_seq, item.clone());
    *seq == queue.next_seq
        && q.next_seq == queue.next_seq.saturating_add(1)
        && q.messages == expected
        && q.deleted_below == queue.deleted_below
}

/// Dequeue from `start`, at most `min(max, cap)` messages (Requirement: QS-DEQ-1,
/// QS-DEQ-2, QS-DEQ-3).
pub fn dequeue(queue: &Queue, start: Seq, max: u32, cap: u32) -> Dequeued {
    let mut q = queue.clone();
    let mut kept = BTreeMap::new();
    for (seq, item) in queue.messages.iter() {
        if *seq >= start {
            kept.insert(*seq, item.clone());
        }
    }
    q.messages = kept;
    let clamped = if start < q.next_seq {
        start
    } else {
        q.next_seq
    };
    if clamped > q.deleted_below {
        q.deleted_below = clamped;
    }
    let limit = if max < cap { max } else { cap };
    let mut messages = Vec::new();
    for (seq, item) in q.messages.iter() {
        if (messages.len() as u64) < u64::from(limit) {
            messages.push((*seq, item.clone()));
        }
    }
    let remaining = (q.messages.len() as u64).saturating_sub(messages.len() as u64);
    let result = Dequeued {
        queue: q,
        messages,
        remaining,
    };
    debug_assert!(
        post_dequeue(queue, start, max, cap, &result),
        "contract of dequeue"
    );
    result
}

/// The contract of [`dequeue`].
pub fn post_dequeue(queue: &Queue, start: Seq, max: u32, cap: u32, result: &Dequeued) -> bool {
    let held = queue.from(start);
    let limit = u64::from(if max < cap { max } else { cap });
    let mut first = Vec::new();
    for entry in held.iter() {
        if (first.len() as u64) < limit {
            first.push(entry.clone());
        }
    }
    // Below `start` everything is gone; from `start` on nothing is.
    result.queue.from(0) == held
        && result.messages == first
        && result.remaining == (held.len() as u64).saturating_sub(first.len() as u64)
        && result.queue.next_seq == queue.next_seq
        && result.queue.history == queue.history
}

/// No loss, no reordering: the queue holds exactly the numbers from `deleted_below` up to
/// `next_seq`, each with what was enqueued under it.
pub fn well_formed(queue: &Queue) -> bool {
    if queue.deleted_below > queue.next_seq || queue.history.len() as u64 != queue.next_seq {
        return false;
    }
    let expected = queue.next_seq.saturating_sub(queue.deleted_below);
    if queue.messages.len() as u64 != expected {
        return false;
    }
    for (seq, item) in queue.messages.iter() {
        if *seq < queue.deleted_below || *seq >= queue.next_seq {
            return false;
        }
        match usize::try_from(*seq)
            .ok()
            .and_then(|i| queue.history.get(i))
        {
            Some(h) if h == item => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> QueueItem {
        QueueItem::Opaque(MsgId(n))
    }

    #[test]
    fn dequeue_deletes_below_start_and_bounds_the_batch() {
        let mut q = Queue::new();
        for n in 0..5 {
            let (next, seq) = enqueue(&q, &item(n));
            assert!(post_enqueue(&q, &item(n), &(next.clone(), seq)));
            assert_eq!(seq, u64::from(n));
            q = next;
        }
        let d = dequeue(&q, 2, 2, 500);
        assert!(post_dequeue(&q, 2, 2, 500, &d));
        assert_eq!(d.messages, vec![(2, item(2)), (3, item(3))]);
        assert_eq!(d.remaining, 1);
        assert_eq!(d.queue.deleted_below, 2);
        assert!(well_formed(&d.queue));
        // A start beyond the counter deletes everything and no more.
        let d = dequeue(&d.queue, 99, 10, 500);
        assert!(d.messages.is_empty() && d.remaining == 0);
        assert_eq!(d.queue.deleted_below, 5);
        let (q, seq) = enqueue(&d.queue, &item(9));
        assert_eq!(seq, 5);
        assert!(well_formed(&q));
        // The cap bounds the batch below the requested max.
        let d = dequeue(&q, 0, 10, 0);
        assert!(d.messages.is_empty() && d.remaining == 1);
    }
}
