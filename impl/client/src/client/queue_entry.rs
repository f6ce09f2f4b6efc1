//! Opening the entries of our QS queue (Requirement: QS-ENC-1): the QS seals each entry
//! under the queue's chain ([`phoenix_types::queue_ratchet`]); we follow the chain in
//! sequence order. Pure: the caller reads the position from the store, and persists the
//! chain returned with the next sequence number once the entry is processed.

use phoenix_types::codec;
use phoenix_types::messages::QueueMessage;
use phoenix_types::queue_ratchet::{OpenError, QueueEntry, QueueReader, ReadError};

use crate::store::Identity;

/// What an entry of our queue holds.
#[derive(Debug)]
pub(crate) enum Opened {
    /// The payload the DS fanned out.
    Payload(Vec<u8>),
    /// Below our position: processed already.
    Processed,
    /// The entry cannot be read; the reason, for the user.
    Lost(String),
    /// The chain broke at this entry (a ratchet update that does not open): nothing after
    /// it opens until the queue is re-keyed (QS-ENC-4).
    ChainBroken(String),
}

/// Open `message` at our position in the queue (`id.qs_next_seq`, `id.queue_ratchet`).
/// Returns what it holds and the chain's secret for the entry after it.
pub(crate) fn open(id: &Identity, message: &QueueMessage) -> (Opened, Option<[u8; 32]>) {
    let seq = message.sequence_number;
    let (Some(secret), Some(key)) = (id.queue_ratchet, &id.queue_private_key) else {
        // Registered before queue encryption: the QS stores our entries as they came.
        return match codec::decode::<QueueEntry>(message.payload.as_slice(), 4 * 1024 * 1024) {
            Ok(QueueEntry::Clear(payload)) => (Opened::Payload(payload.into()), None),
            _ => (
                Opened::Lost(format!(
                    "queue entry {seq} is sealed, but this client has no queue key"
                )),
                None,
            ),
        };
    };
    if seq < id.qs_next_seq {
        return (Opened::Processed, Some(secret));
    }
    if seq < id.queue_chain_start {
        // Stored before the queue was re-keyed (QS-ENC-4): unsealed if the record had no
        // chain then; under a chain this client no longer holds otherwise.
        return match codec::decode::<QueueEntry>(message.payload.as_slice(), 4 * 1024 * 1024) {
            Ok(QueueEntry::Clear(payload)) => (Opened::Payload(payload.into()), Some(secret)),
            _ => (
                Opened::Lost(format!(
                    "queue entry {seq} was sealed under the queue's previous chain; not opened"
                )),
                Some(secret),
            ),
        };
    }
    let mut reader = QueueReader::new(
        id.qs_client_id,
        key.clone(),
        id.qs_next_seq.max(id.queue_chain_start),
        secret,
    );
    let opened = match reader.open(seq, message.payload.as_slice()) {
        Ok(payload) => Opened::Payload(payload),
        Err(ReadError::Processed(_)) => Opened::Processed,
        Err(e @ ReadError::Open(_, OpenError::UpdateUnreadable)) => Opened::ChainBroken(format!(
            "{e}; the queue is re-keyed, and what the QS stored after it is lost (the QS is at fault)"
        )),
        Err(e) => Opened::Lost(e.to_string()),
    };
    (opened, Some(reader.position().1))
}

/// What each of `messages` (in order, from our position on) holds, without persisting
/// anything: for tools that read a queue as its owner would (the threat-model tests' server
/// adversary, which reads what it stored).
pub fn open_in_order(id: &Identity, messages: &[QueueMessage]) -> Vec<Result<Vec<u8>, String>> {
    let mut id = id.clone();
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let (opened, next) = open(&id, message);
        out.push(match opened {
            Opened::Payload(payload) => Ok(payload),
            Opened::Processed => Err(format!(
                "queue entry {} is below the position",
                message.sequence_number
            )),
            Opened::Lost(reason) | Opened::ChainBroken(reason) => Err(reason),
        });
        id.qs_next_seq = id
            .qs_next_seq
            .max(message.sequence_number.saturating_add(1));
        id.queue_ratchet = next;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand_core::OsRng;

    use phoenix_types::crypto::HpkeKeyPair;
    use phoenix_types::queue_ratchet::QueueRatchet;

    use super::*;

    fn identity(next: u64, secret: [u8; 32], key: &HpkeKeyPair) -> Identity {
        Identity {
            fid: "alice@a.test".into(),
            client_id: "c".into(),
            server_url: "http://127.0.0.1:1".into(),
            certificate: Vec::new(),
            signing_key: [0; 32],
            qs_user_id: [1; 16],
            qs_client_id: [2; 16],
            qs_user_key: [0; 32],
            qs_client_key: [0; 32],
            friendship_token: [0; 32],
            friendship_key: [0; 32],
            qs_domain: "a.test".into(),
            queue_config_key: Vec::new(),
            qs_next_seq: next,
            as_next_seq: 0,
            queue_private_key: Some(key.private.clone()),
            queue_ratchet: Some(secret),
            queue_chain_start: 0,
        }
    }

    fn sealed(qs: &mut QueueRatchet, seq: u64, update: Option<&[u8]>, text: &[u8]) -> QueueMessage {
        let entry = qs.seal(&[2; 16], seq, update, text, &mut OsRng).unwrap();
        QueueMessage {
            sequence_number: seq,
            payload: codec::encode(&QueueEntry::Sealed(entry)).unwrap().into(),
        }
    }

    /// In order, through an update and past a lost entry; an unsealed entry and one
    /// already processed are not payloads.
    #[test]
    fn entries_open_in_order_and_refusals_say_why() {
        let key = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let first = QueueRatchet::random(&mut OsRng);
        let mut qs = first.clone();
        let mut id = identity(0, *first.secret(), &key);
        let m0 = sealed(&mut qs, 0, Some(&key.public), b"zero");
        let m1 = sealed(&mut qs, 1, None, b"one");
        let _lost = sealed(&mut qs, 2, None, b"two");
        let m3 = sealed(&mut qs, 3, None, b"three");
        for (message, text) in [(&m0, b"zero".as_slice()), (&m1, b"one")] {
            let (opened, next) = open(&id, message);
            assert!(matches!(opened, Opened::Payload(p) if p == text));
            id.qs_next_seq = message.sequence_number + 1;
            id.queue_ratchet = next;
        }
        assert!(matches!(open(&id, &m1).0, Opened::Processed));
        let (opened, _) = open(&id, &m3);
        assert!(matches!(opened, Opened::Payload(p) if p == b"three"));

        let clear = QueueMessage {
            sequence_number: 2,
            payload: codec::encode(&QueueEntry::Clear(b"clear".to_vec().into()))
                .unwrap()
                .into(),
        };
        let (opened, next) = open(&id, &clear);
        assert!(matches!(opened, Opened::Lost(reason) if reason.contains("unsealed")));
        assert_eq!(next, id.queue_ratchet, "the chain did not move");
    }
}
