//! How a QS queue entry is written at rest (Requirement: QS-ENC-1, QS-ENC-2, QS-ENC-3):
//! given the locked chain state of the destination queues and the entries to append, the
//! rows to insert and the chain state after them. Pure: both backends lock the queues'
//! client rows, call [`plan`], and write what it returns in the same transaction, so
//! concurrent enqueues to one queue are serialised by the row lock and never fork the
//! chain.
//!
//! The chain itself is [`phoenix_types::queue_ratchet`]; the client follows it as it
//! processes its queue.

use std::collections::BTreeMap;

use rand_core::CryptoRngCore;

use phoenix_types::codec;
use phoenix_types::ids::QsId;
use phoenix_types::queue_ratchet::{QueueEntry, QueueRatchet};

use super::{EnqueueEntry, StoreError, StoreResult};

/// How often the QS mixes fresh randomness into a queue's chain, by default: the entries
/// whose sequence number is a multiple of this carry a ratchet update.
pub const DEFAULT_UPDATE_INTERVAL: u64 = 64;

/// The QS's policy for sealing queue entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSealer {
    /// Entries whose sequence number is a multiple of this carry a ratchet update
    /// (post-compromise security). At least 1.
    pub update_interval: u64,
}

impl Default for QueueSealer {
    fn default() -> Self {
        Self {
            update_interval: DEFAULT_UPDATE_INTERVAL,
        }
    }
}

/// A destination queue as locked for an enqueue: its next sequence number and its chain.
#[derive(Debug, Clone)]
pub struct QueueChain {
    pub next_seq: u64,
    /// `None` for a record created before queue encryption (its entries are stored as they
    /// came, marked unsealed).
    pub ratchet: Option<QueueRatchet>,
    /// The owner's HPKE public key, for ratchet updates.
    pub queue_key: Option<Vec<u8>>,
}

/// One row to insert into `qs_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub client_id: QsId,
    pub seq: u64,
    /// An encoded [`QueueEntry::Sealed`] when `sealed`, else the payload as it came.
    pub payload: Vec<u8>,
    pub sealed: bool,
    pub dedup: Option<[u8; 16]>,
}

// Requirement: QS-ENC-1, QS-ENC-2, QS-ENC-3
/// Number and seal `entries` in order. `fresh[i]` says whether entry `i` is to be appended
/// (false: a duplicate by its dedup key). Entries for queues missing from `chains` (unknown
/// clients) and duplicates get `None`. `chains` is left as the rows leave the queues.
pub fn plan(
    sealer: &QueueSealer,
    chains: &mut BTreeMap<QsId, QueueChain>,
    entries: &[EnqueueEntry],
    fresh: &[bool],
    rng: &mut impl CryptoRngCore,
) -> StoreResult<(Vec<Option<u64>>, Vec<QueueRow>)> {
    let interval = sealer.update_interval.max(1);
    let mut assigned = Vec::with_capacity(entries.len());
    let mut rows = Vec::with_capacity(entries.len());
    for (entry, fresh) in entries.iter().zip(fresh.iter().copied()) {
        let Some(chain) = chains.get_mut(&entry.client_id).filter(|_| fresh) else {
            assigned.push(None);
            continue;
        };
        let seq = chain.next_seq;
        let (payload, sealed) = match &mut chain.ratchet {
            Some(ratchet) => {
                let update_to = chain
                    .queue_key
                    .as_deref()
                    .filter(|_| seq.checked_rem(interval) == Some(0));
                let entry = ratchet
                    .seal(&entry.client_id, seq, update_to, &entry.payload, rng)
                    .map_err(|_| StoreError::Corrupt("a queue entry could not be sealed"))?;
                let encoded = codec::encode(&QueueEntry::Sealed(entry))
                    .map_err(|_| StoreError::Corrupt("a sealed queue entry does not encode"))?;
                (encoded, true)
            }
            None => (entry.payload.clone(), false),
        };
        chain.next_seq = seq
            .checked_add(1)
            .ok_or(StoreError::Corrupt("queue sequence number overflow"))?;
        rows.push(QueueRow {
            client_id: entry.client_id,
            seq,
            payload,
            sealed,
            dedup: entry.dedup,
        });
        assigned.push(Some(seq));
    }
    Ok((assigned, rows))
}

/// A stored row as the QS serves it: an encoded [`QueueEntry`] (rows stored unsealed are
/// wrapped as [`QueueEntry::Clear`]).
pub fn served(payload: Vec<u8>, sealed: bool) -> StoreResult<Vec<u8>> {
    if sealed {
        return Ok(payload);
    }
    codec::encode(&QueueEntry::Clear(payload.into()))
        .map_err(|_| StoreError::Corrupt("a queue entry does not encode"))
}

/// A 32-byte secret column.
pub fn ratchet_from_column(column: Option<Vec<u8>>) -> StoreResult<Option<QueueRatchet>> {
    column
        .map(|bytes| {
            <[u8; 32]>::try_from(bytes.as_slice())
                .map(QueueRatchet::from_secret)
                .map_err(|_| StoreError::Corrupt("queue ratchet secret is not 32 bytes"))
        })
        .transpose()
}
