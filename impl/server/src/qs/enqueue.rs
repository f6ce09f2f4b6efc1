//! Enqueue from the DS (through the outbox): open each sealed queue config, and append the
//! payloads to the named client queues in one transaction. Entries whose queue config does
//! not open or whose client record is gone are reported back, not retried.

use phoenix_types::codec;
use phoenix_types::error::WireError;
use phoenix_types::messages::qs::SealedQueueConfig;

use crate::qs::open_queue_config;
use crate::server::Server;
use crate::store::{EnqueueEntry, OutboxEntry, QsStore, StoreError};

/// What happened to each outbox entry handed to [`enqueue_local`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Delivered(u64),
    /// Already delivered earlier (idempotent retry).
    Duplicate,
    /// The queue config is invalid or the client record no longer exists.
    Undeliverable(String),
}

// Requirement: QS-ENQ-1, QS-Q-1
/// Deliver outbox entries addressed to this QS.
pub async fn enqueue_local(
    server: &Server,
    entries: &[OutboxEntry],
) -> Result<Vec<EnqueueOutcome>, StoreError> {
    // The QS's own step, observed on its own even when it runs inline after a DS request.
    observe_request!(server, "qs", "enqueue", deliver(server, entries)).await
}

async fn deliver(
    server: &Server,
    entries: &[OutboxEntry],
) -> Result<Vec<EnqueueOutcome>, StoreError> {
    let mut outcomes: Vec<Option<EnqueueOutcome>> = Vec::with_capacity(entries.len());
    let mut batch = Vec::new();
    let mut batch_index = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match target(server, entry) {
            Ok(client_id) => {
                // Requirement: ADV-OP-1
                observe!(
                    [
                        Observed::QsClientId(client_id),
                        Observed::SealedQueueConfig(phoenix_types::crypto::sha256(
                            &entry.queue_config
                        )),
                    ]
                    .into_iter()
                    .chain(Observed::payload_group(&entry.payload))
                );
                batch.push(EnqueueEntry {
                    client_id,
                    payload: entry.payload.clone(),
                    dedup: Some(entry.dedup),
                });
                batch_index.push(i);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(EnqueueOutcome::Undeliverable(e.detail))),
        }
    }
    let results = server
        .store
        .enqueue(&batch, &server.limits.queue_sealer)
        .await?;
    let mut offline = Vec::new();
    for ((i, result), entry) in batch_index.into_iter().zip(results).zip(&batch) {
        let outcome = match result {
            Some(seq) => {
                // Requirement: QS-LISTEN-2 (after the commit)
                server.queue_wakeup.wake(&entry.client_id);
                // Requirement: QS-PUSH-4 (not for a message its sender asked to be silent)
                if entries.get(i).is_some_and(|e| e.notify)
                    && !server.queue_wakeup.is_listening(&entry.client_id)
                    && !offline.contains(&entry.client_id)
                {
                    offline.push(entry.client_id);
                }
                EnqueueOutcome::Delivered(seq)
            }
            // The store answers `None` both for a duplicate and for a client record that
            // does not exist (any more): only the first is a delivery (found by fuzzing:
            // entries for deleted clients were counted as delivered).
            None => match QsStore::client(&server.store, &entry.client_id).await? {
                Some(_) => EnqueueOutcome::Duplicate,
                None => EnqueueOutcome::Undeliverable("no such client record".into()),
            },
        };
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
    }
    // Requirement: QS-PUSH-2 (after the commit, to clients with no live stream here)
    server.pusher.notify(offline);
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(EnqueueOutcome::Undeliverable("not processed".into())))
        .collect())
}

fn target(server: &Server, entry: &OutboxEntry) -> Result<phoenix_types::ids::QsId, WireError> {
    let sealed: SealedQueueConfig = codec::decode(&entry.queue_config, 1024)?;
    open_queue_config(server, &sealed)
}

#[cfg(test)]
mod tests {
    use phoenix_types::crypto::{self, hpke_info};
    use phoenix_types::error::ErrorCode;
    use phoenix_types::ids::Domain;
    use phoenix_types::messages::qs::QueueConfig;

    use super::*;
    use crate::server::Limits;
    use crate::store::{QsClientRecord, QsUserRecord, Store};

    fn entry(server: &Server, client_id: [u8; 16], dedup: u8) -> OutboxEntry {
        let plain = codec::encode(&QueueConfig { client_id }).unwrap();
        let sealed = SealedQueueConfig {
            qs_domain: server.domain.to_string(),
            sealed: crypto::hpke_seal(
                &server.queue_config_key.public,
                hpke_info::QUEUE_CONFIG,
                server.domain.as_str().as_bytes(),
                &plain,
            )
            .unwrap(),
        };
        OutboxEntry {
            destination: server.domain.to_string(),
            queue_config: codec::encode(&sealed).unwrap(),
            payload: vec![dedup; 8],
            dedup: [dedup; 16],
            notify: true,
        }
    }

    /// Regression (fuzz target `stateful_qs`): an entry for a client record that does not
    /// exist is undeliverable, not a duplicate of an earlier delivery.
    #[tokio::test]
    async fn an_unknown_client_is_undeliverable_not_a_duplicate() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let server = Server::start(Domain::parse("a.test").unwrap(), store, Limits::default())
            .await
            .unwrap();
        let outcomes = enqueue_local(&server, &[entry(&server, [9; 16], 1)])
            .await
            .unwrap();
        assert!(
            matches!(outcomes.as_slice(), [EnqueueOutcome::Undeliverable(_)]),
            "{outcomes:?}"
        );

        let user = QsUserRecord {
            user_id: [1; 16],
            auth_key: [2; 32],
            friendship_token_hash: [3; 32],
        };
        let client = QsClientRecord {
            client_id: [9; 16],
            user_id: [1; 16],
            auth_key: [4; 32],
            queue: None,
        };
        QsStore::create_user(&server.store, &user, &client)
            .await
            .unwrap();
        let first = enqueue_local(&server, &[entry(&server, [9; 16], 1)])
            .await
            .unwrap();
        assert_eq!(first, vec![EnqueueOutcome::Delivered(0)]);
        let retry = enqueue_local(&server, &[entry(&server, [9; 16], 1)])
            .await
            .unwrap();
        assert_eq!(retry, vec![EnqueueOutcome::Duplicate]);
    }

    // Requirement: PERF-QS-1
    /// A sealed queue config is opened once: the second lookup is answered from the cache
    /// with the same id; one that does not open, or is for another QS, is refused every
    /// time and not cached.
    #[tokio::test]
    async fn queue_configs_are_opened_once_and_failures_are_not_cached() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let server = Server::start(Domain::parse("a.test").unwrap(), store, Limits::default())
            .await
            .unwrap();
        let good = entry(&server, [5; 16], 1);
        let sealed: SealedQueueConfig = codec::decode(&good.queue_config, 1024).unwrap();
        let digest = crypto::sha256(&good.queue_config);
        assert_eq!(server.queue_configs.get(&digest), None);
        assert_eq!(open_queue_config(&server, &sealed).unwrap(), [5; 16]);
        assert_eq!(server.queue_configs.get(&digest), Some([5; 16]));
        assert_eq!(open_queue_config(&server, &sealed).unwrap(), [5; 16]);

        let mut broken = sealed.clone();
        broken.sealed.ciphertext = vec![0u8; 40].into();
        for _ in 0..2 {
            let refused = open_queue_config(&server, &broken).unwrap_err();
            assert_eq!(refused.code, ErrorCode::UnknownQueue);
        }
        let mut elsewhere = sealed;
        elsewhere.qs_domain = "b.test".into();
        let refused = open_queue_config(&server, &elsewhere).unwrap_err();
        assert_eq!(refused.code, ErrorCode::WrongDomain);
    }
}
