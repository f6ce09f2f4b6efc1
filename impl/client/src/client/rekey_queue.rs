//! Re-keying our queue (QS-ENC-4): a new HPKE queue key and a new chain, from the entry the
//! QS names on. Done once by a client registered before queue encryption (its QS stored
//! its entries unsealed), and after the chain broke (a ratchet update that did not open:
//! nothing after it could be read).

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_types::crypto;
use phoenix_types::messages::qs;

use super::{Client, now, random32};
use crate::api::Signer;
use crate::error::{ClientError, usage};
use crate::store::Identity;

impl Client {
    // Requirement: QS-ENC-4
    /// Give our queue a new key and chain; stored once the QS answered where it starts.
    /// If the answer is lost, the QS has a chain we do not: what it stores until the next
    /// re-key does not open, and is reported as lost.
    pub(crate) async fn rekey_queue(&mut self, id: &Identity) -> Result<(), ClientError> {
        let queue_key = crypto::HpkeKeyPair::generate(&mut OsRng)
            .map_err(|e| usage(format!("cannot generate the queue key: {e}")))?;
        let secret = random32();
        let api = Self::api(id)?;
        let key = SigningKey::from_bytes(&id.qs_client_key);
        let answer: qs::RekeyQueueResponse = api
            .call(
                "qs",
                qs::REKEY_QUEUE,
                &qs::RekeyQueueRequest {
                    timestamp: now(),
                    queue_key: VLBytes::new(queue_key.public.clone()),
                    queue_ratchet_secret: secret,
                },
                Signer::QsClient {
                    id: id.qs_client_id,
                    key: &key,
                },
            )
            .await?;
        self.store
            .set_queue_chain(&queue_key.private, &secret, answer.chain_start)
            .await
    }
}
