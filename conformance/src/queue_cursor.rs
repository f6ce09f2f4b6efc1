//! The harness's reading of a sealed QS queue (Requirement: QS-ENC-1): the server seals
//! every entry under the queue's chain, so to compare what a queue holds with the model the
//! harness follows the chain as the owner does, from the owner's position. Entries it
//! opened once are remembered (a peek reads the same entries again); entries the owner's
//! client processed in between are caught up with from the client's store. An entry that
//! does not open is a mismatch: the server forked or broke the chain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokio::sync::Mutex;

use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;
use phoenix_types::queue_ratchet::QueueReader;

use crate::HarnessError;

#[derive(Debug)]
pub(crate) struct QueueCursor {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    client_id: QsId,
    private_key: Vec<u8>,
    reader: QueueReader,
    /// Payloads opened, by sequence number.
    opened: BTreeMap<u64, Vec<u8>>,
    /// The owner's client home, whose store says how far the client itself has read.
    home: Option<PathBuf>,
}

impl QueueCursor {
    /// A queue the harness created itself, from its first entry.
    pub(crate) fn new(client_id: QsId, private_key: Vec<u8>, secret: [u8; 32]) -> Self {
        Self::at(client_id, private_key, 0, secret, None)
    }

    /// The queue of a client of the client library, from where it stands.
    pub(crate) fn of_client(
        id: &phoenix_client::store::Identity,
        home: PathBuf,
    ) -> Result<Self, HarnessError> {
        let (Some(key), Some(secret)) = (&id.queue_private_key, id.queue_ratchet) else {
            return Err(HarnessError::Setup(format!(
                "{} has no queue key (registered before queue encryption?)",
                id.fid
            )));
        };
        Ok(Self::at(
            id.qs_client_id,
            key.clone(),
            id.qs_next_seq,
            secret,
            Some(home),
        ))
    }

    fn at(
        client_id: QsId,
        private_key: Vec<u8>,
        next_seq: u64,
        secret: [u8; 32],
        home: Option<PathBuf>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                client_id,
                reader: QueueReader::new(client_id, private_key.clone(), next_seq, secret),
                private_key,
                opened: BTreeMap::new(),
                home,
            }),
        }
    }

    /// The payloads of `messages` (in sequence order, as a dequeue returns them).
    pub(crate) async fn open_all(
        &self,
        messages: &[QueueMessage],
    ) -> Result<Vec<Vec<u8>>, HarnessError> {
        let mut inner = self.inner.lock().await;
        if let Some(first) = messages.first() {
            inner.catch_up(first.sequence_number).await?;
        }
        messages.iter().map(|m| inner.open(m)).collect()
    }
}

impl Inner {
    /// The owner's client processed entries the harness never saw: move to where the
    /// client stands, if that is at or before `first`.
    async fn catch_up(&mut self, first: u64) -> Result<(), HarnessError> {
        let next_seq = self.reader.position().0;
        if first <= next_seq || self.opened.contains_key(&first) {
            return Ok(());
        }
        let Some(home) = &self.home else {
            return Ok(());
        };
        let store = phoenix_client::store::Store::open(home)
            .await
            .map_err(|e| HarnessError::Setup(format!("client store: {e}")))?;
        let Some(id) = store
            .identity()
            .await
            .map_err(|e| HarnessError::Setup(format!("client store: {e}")))?
        else {
            return Ok(());
        };
        if let Some(secret) = id.queue_ratchet
            && id.qs_next_seq > next_seq
            && id.qs_next_seq <= first
        {
            self.reader = QueueReader::new(
                self.client_id,
                self.private_key.clone(),
                id.qs_next_seq,
                secret,
            );
            let below = id.qs_next_seq;
            self.opened.retain(|seq, _| *seq >= below);
        }
        Ok(())
    }

    fn open(&mut self, m: &QueueMessage) -> Result<Vec<u8>, HarnessError> {
        let seq = m.sequence_number;
        if let Some(payload) = self.opened.get(&seq) {
            return Ok(payload.clone());
        }
        let payload = self.reader.open(seq, m.payload.as_slice()).map_err(|e| {
            HarnessError::Mismatch(format!(
                "{e} (QS-ENC-1: every entry sealed under the queue's chain)"
            ))
        })?;
        self.opened.insert(seq, payload.clone());
        Ok(payload)
    }
}
