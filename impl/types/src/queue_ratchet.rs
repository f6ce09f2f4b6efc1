//! Queue encryption at rest (spec § Spec-QS, "Queue encryption at rest"): every entry of a
//! QS client queue is stored encrypted under a per-queue HKDF chain, so that a snapshot of
//! the QS shows ciphertext next to the queue's pseudonym, never the group id or the message
//! the DS fanned out (Requirement: QS-ENC-1).
//!
//! The chain: the client picks the first secret `S_0` and hands it to its QS when the
//! record is created, with an HPKE public key of its own (the queue key). The entry at
//! sequence number `n` is sealed as follows:
//!
//! - `C_n = S_n`, or, when the QS injects fresh randomness into this entry (every
//!   `interval` entries, the first one included), `C_n = HKDF-Extract(salt = S_n, ikm = r)`
//!   for 32 fresh random bytes `r` that travel HPKE-sealed to the queue key next to the
//!   ciphertext (Requirement: QS-ENC-3, post-compromise security: whoever read `S_n` in an
//!   earlier snapshot, but not the client's queue key, loses the chain here);
//! - the message key is `HKDF-Expand(C_n, "phoenix-v1 queue message key")` and the next
//!   secret `S_{n+1} = HKDF-Expand(C_n, "phoenix-v1 queue next secret")`;
//! - the payload is AES-256-GCM encrypted under the message key (nonce: the sequence
//!   number; every key seals exactly one entry), bound to the queue's id, the sequence
//!   number and whether an update is present;
//! - the QS then keeps only `S_{n+1}` (Requirement: QS-ENC-2, forward secrecy: a snapshot
//!   taken later opens none of the entries stored before it).
//!
//! The client follows the same chain as it processes its queue in order. This module does
//! no I/O and reads no clock; randomness comes from the caller.

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, CryptoError};
use crate::ids::QsId;

/// HPKE `info` of the fresh randomness in a ratchet update.
pub const UPDATE_INFO: &[u8] = b"phoenix-v1 queue ratchet update";
const MESSAGE_KEY_LABEL: &[u8] = b"phoenix-v1 queue message key";
const NEXT_SECRET_LABEL: &[u8] = b"phoenix-v1 queue next secret";
const AAD_LABEL: &[u8] = b"phoenix-v1 queue entry";

/// A queue entry as the QS stores and serves it (the `payload` of a
/// [`crate::messages::QueueMessage`] from the QS).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum QueueEntry {
    /// Stored before the queue had a ratchet (a client record created before queue
    /// encryption existed and not re-keyed since): the payload as the DS fanned it out. A
    /// client with a ratchet refuses these.
    #[tls_codec(discriminant = 0)]
    Clear(VLBytes),
    #[tls_codec(discriminant = 1)]
    Sealed(SealedQueueEntry),
}

/// One entry sealed under the queue's chain.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SealedQueueEntry {
    /// Fresh randomness mixed into the chain at this entry, HPKE-sealed to the client's
    /// queue key (info [`UPDATE_INFO`], aad: the queue id and the sequence number).
    #[cfg_attr(
        feature = "arbitrary",
        arbitrary(with = arbitrary_update)
    )]
    pub update: Option<openmls_traits::types::HpkeCiphertext>,
    /// AES-256-GCM ciphertext and tag of the payload.
    pub ciphertext: VLBytes,
}

#[cfg(feature = "arbitrary")]
fn arbitrary_update(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<Option<openmls_traits::types::HpkeCiphertext>> {
    if u.arbitrary()? {
        Ok(Some(crate::messages::qs::arbitrary_hpke_ciphertext(u)?))
    } else {
        Ok(None)
    }
}

/// The most missing entries a [`QueueReader`] moves the chain past (each costs two HMACs):
/// a larger gap is not an entry or two lost but a server serving nonsense.
pub const MAX_GAP: u64 = 100_000;

/// The owner's reading of its queue: the chain at the next sequence number, moved on entry
/// by entry in order. The caller persists [`QueueReader::position`] once an entry is
/// processed.
#[derive(Debug, Clone)]
pub struct QueueReader {
    queue: QsId,
    private_key: Vec<u8>,
    next_seq: u64,
    ratchet: QueueRatchet,
}

/// Why a [`QueueReader`] returned no payload for an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("queue entry {0} is below the position (processed already)")]
    Processed(u64),
    #[error("queue entry {0} came unsealed; refused")]
    Unsealed(u64),
    #[error("queue entry {seq} is {gap} entries past the position; not opened")]
    TooFar { seq: u64, gap: u64 },
    #[error("queue entry {0} is malformed")]
    Malformed(u64),
    #[error("queue entry {0}: {1}")]
    Open(u64, OpenError),
}

impl QueueReader {
    pub fn new(queue: QsId, private_key: Vec<u8>, next_seq: u64, secret: [u8; 32]) -> Self {
        Self {
            queue,
            private_key,
            next_seq,
            ratchet: QueueRatchet::from_secret(secret),
        }
    }

    /// The next sequence number and the chain's secret for it.
    pub fn position(&self) -> (u64, [u8; 32]) {
        (self.next_seq, *self.ratchet.secret())
    }

    /// Open the entry `seq` (an encoded [`QueueEntry`]) and move past it. Entries below the
    /// position are refused as processed and change nothing; missing entries before `seq`
    /// are skipped. An unsealed entry moves the position but not the chain (the QS did not
    /// seal it under the chain); one that does not open moves both, except after an
    /// update that does not open, where the chain cannot move.
    pub fn open(&mut self, seq: u64, entry: &[u8]) -> Result<Vec<u8>, ReadError> {
        if seq < self.next_seq {
            return Err(ReadError::Processed(seq));
        }
        let gap = seq - self.next_seq;
        if gap > MAX_GAP {
            return Err(ReadError::TooFar { seq, gap });
        }
        let mut ratchet = self.ratchet.clone();
        for _ in 0..gap {
            ratchet
                .skip()
                .map_err(|_| ReadError::Open(seq, OpenError::EntryUnreadable))?;
        }
        self.ratchet = ratchet;
        self.next_seq = seq.saturating_add(1);
        let entry = match crate::codec::decode::<QueueEntry>(entry, 4 * 1024 * 1024) {
            Ok(QueueEntry::Sealed(entry)) => entry,
            Ok(QueueEntry::Clear(_)) => return Err(ReadError::Unsealed(seq)),
            Err(_) => return Err(ReadError::Malformed(seq)),
        };
        self.ratchet
            .open(&self.queue, seq, &entry, &self.private_key)
            .map_err(|e| ReadError::Open(seq, e))
    }
}

/// Why an entry could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The entry's ratchet update does not open with our queue key: the chain cannot be
    /// followed past this entry (the QS, or whoever altered the entry, is at fault).
    #[error("the queue ratchet update does not open with this client's queue key")]
    UpdateUnreadable,
    /// The payload does not decrypt; the chain moved past it (only this entry is lost).
    #[error("the queue entry does not decrypt under the queue ratchet")]
    EntryUnreadable,
}

/// The secret of a queue's chain for the next sequence number. Zeroized on drop; the QS
/// and the client each persist it with the sequence number it belongs to.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct QueueRatchet([u8; 32]);

impl std::fmt::Debug for QueueRatchet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueRatchet(***)")
    }
}

impl QueueRatchet {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// A fresh first secret.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self(secret)
    }

    /// The secret, to persist.
    pub fn secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seal `payload` as the entry `seq` of `queue` and move the chain on. `update_to` is
    /// the owner's queue key when this entry carries a ratchet update.
    pub fn seal(
        &mut self,
        queue: &QsId,
        seq: u64,
        update_to: Option<&[u8]>,
        payload: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<SealedQueueEntry, CryptoError> {
        let (chain, update) = match update_to {
            Some(queue_key) => {
                let mut fresh = [0u8; 32];
                rng.fill_bytes(&mut fresh);
                let sealed =
                    crypto::hpke_seal(queue_key, UPDATE_INFO, &update_aad(queue, seq), &fresh)?;
                let chain = self.mixed(&fresh);
                fresh.zeroize();
                (chain, Some(sealed))
            }
            None => (self.0, None),
        };
        let (message_key, next) = expand(&chain)?;
        let ciphertext = crypto::seal_aead_with_nonce(
            &message_key,
            &nonce(seq),
            &entry_aad(queue, seq, update.is_some()),
            payload,
        )?;
        self.advance(next);
        Ok(SealedQueueEntry {
            update,
            ciphertext: ciphertext.into(),
        })
    }

    /// Open the entry `seq` of `queue` with the owner's queue private key, and move the
    /// chain on past it. On [`OpenError::EntryUnreadable`] the chain has moved on too; on
    /// [`OpenError::UpdateUnreadable`] it has not (it cannot).
    pub fn open(
        &mut self,
        queue: &QsId,
        seq: u64,
        entry: &SealedQueueEntry,
        queue_private_key: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let chain = match &entry.update {
            Some(sealed) => {
                let mut fresh = crypto::hpke_open(
                    queue_private_key,
                    UPDATE_INFO,
                    &update_aad(queue, seq),
                    sealed,
                )
                .map_err(|_| OpenError::UpdateUnreadable)?;
                if fresh.len() != 32 {
                    fresh.zeroize();
                    return Err(OpenError::UpdateUnreadable);
                }
                let chain = self.mixed(&fresh);
                fresh.zeroize();
                chain
            }
            None => self.0,
        };
        let (message_key, next) = expand(&chain).map_err(|_| OpenError::EntryUnreadable)?;
        self.advance(next);
        crypto::open_aead_with_nonce(
            &message_key,
            &nonce(seq),
            &entry_aad(queue, seq, entry.update.is_some()),
            entry.ciphertext.as_slice(),
        )
        .map_err(|_| OpenError::EntryUnreadable)
    }

    /// Move past an entry that is missing (a gap in the sequence numbers): right unless the
    /// missing entry carried an update, in which case the entries after it do not open.
    pub fn skip(&mut self) -> Result<(), CryptoError> {
        let (_, next) = expand(&self.0)?;
        self.advance(next);
        Ok(())
    }

    fn mixed(&self, fresh: &[u8]) -> [u8; 32] {
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&self.0), fresh);
        prk.into()
    }

    fn advance(&mut self, mut next: [u8; 32]) {
        self.0.zeroize();
        self.0 = next;
        next.zeroize();
    }
}

/// (message key, next secret) from the chain value of one entry.
fn expand(chain: &[u8; 32]) -> Result<(crypto::SymmetricKey, [u8; 32]), CryptoError> {
    // A 32-byte chain value is a valid PRK for HKDF-SHA256, and 32-byte outputs are far
    // below HKDF's limit: neither call fails in practice.
    let hkdf = Hkdf::<Sha256>::from_prk(chain).map_err(|_| CryptoError::Encrypt)?;
    let mut key = crypto::SymmetricKey([0u8; 32]);
    let mut next = [0u8; 32];
    hkdf.expand(MESSAGE_KEY_LABEL, &mut key.0)
        .map_err(|_| CryptoError::Encrypt)?;
    hkdf.expand(NEXT_SECRET_LABEL, &mut next)
        .map_err(|_| CryptoError::Encrypt)?;
    Ok((key, next))
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

fn update_aad(queue: &QsId, seq: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24);
    aad.extend_from_slice(queue);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

fn entry_aad(queue: &QsId, seq: u64, update: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 25);
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(queue);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.push(u8::from(update));
    aad
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand_core::OsRng;

    use super::*;
    use crate::crypto::HpkeKeyPair;

    // Requirement: QS-ENC-1
    /// The client follows the QS's chain through plain entries and updates; each message
    /// key is used once and the secrets differ from entry to entry.
    #[test]
    fn the_client_follows_the_chain_through_updates() {
        let queue_key = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let first = QueueRatchet::random(&mut OsRng);
        let (mut qs, mut client) = (first.clone(), first);
        let mut secrets = std::collections::BTreeSet::new();
        for seq in 0..10u64 {
            let update = (seq % 4 == 0).then_some(queue_key.public.as_slice());
            let payload = format!("entry {seq}");
            let sealed = qs
                .seal(&[7; 16], seq, update, payload.as_bytes(), &mut OsRng)
                .unwrap();
            assert_eq!(sealed.update.is_some(), seq % 4 == 0);
            assert!(
                !sealed
                    .ciphertext
                    .as_slice()
                    .windows(payload.len())
                    .any(|w| w == payload.as_bytes())
            );
            let opened = client
                .open(&[7; 16], seq, &sealed, &queue_key.private)
                .unwrap();
            assert_eq!(opened, payload.as_bytes());
            assert_eq!(qs, client);
            assert!(secrets.insert(*qs.secret()), "a secret repeated");
        }
    }

    // Requirement: QS-ENC-2, QS-ENC-3
    /// Forward secrecy: the secret the QS holds after an entry opens none of the entries
    /// before it. Post-compromise security: a secret read before an update opens nothing
    /// from the update on, for anyone without the queue key.
    #[test]
    fn a_stolen_secret_opens_neither_earlier_entries_nor_entries_after_an_update() {
        let queue_key = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let attacker_key = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let mut qs = QueueRatchet::random(&mut OsRng);
        let early = qs.seal(&[1; 16], 0, None, b"early", &mut OsRng).unwrap();
        let mut stolen = qs.clone();
        // Nothing derives the earlier entry's key from the later secret.
        let mut replay = stolen.clone();
        assert_eq!(
            replay.open(&[1; 16], 0, &early, &attacker_key.private),
            Err(OpenError::EntryUnreadable)
        );
        // Without an update, the thief reads the next entry (that is what the update is for).
        let next = qs.seal(&[1; 16], 1, None, b"next", &mut OsRng).unwrap();
        assert_eq!(
            stolen.open(&[1; 16], 1, &next, &attacker_key.private),
            Ok(b"next".to_vec())
        );
        let healed = qs
            .seal(
                &[1; 16],
                2,
                Some(queue_key.public.as_slice()),
                b"healed",
                &mut OsRng,
            )
            .unwrap();
        assert_eq!(
            stolen.open(&[1; 16], 2, &healed, &attacker_key.private),
            Err(OpenError::UpdateUnreadable)
        );
    }

    /// An entry moved to another queue or another number, or with its update stripped,
    /// does not open; a payload that does not decrypt still moves the chain on.
    #[test]
    fn entries_are_bound_to_their_queue_and_number() {
        let queue_key = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let first = QueueRatchet::random(&mut OsRng);
        let mut qs = first.clone();
        let sealed = qs.seal(&[1; 16], 0, None, b"payload", &mut OsRng).unwrap();
        for (queue, seq) in [([2; 16], 0), ([1; 16], 1)] {
            let mut client = first.clone();
            assert_eq!(
                client.open(&queue, seq, &sealed, &queue_key.private),
                Err(OpenError::EntryUnreadable)
            );
            assert_eq!(client, qs, "the chain moved on");
        }
        let mut qs = first.clone();
        let mut with_update = qs
            .seal(
                &[1; 16],
                0,
                Some(queue_key.public.as_slice()),
                b"payload",
                &mut OsRng,
            )
            .unwrap();
        with_update.update = None;
        let mut client = first;
        assert!(
            client
                .open(&[1; 16], 0, &with_update, &queue_key.private)
                .is_err()
        );
    }
}
