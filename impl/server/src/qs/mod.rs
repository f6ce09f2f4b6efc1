//! The Queuing Service: pseudonymous user and client records, key packages, and per-client
//! message queues. It knows clients only by random QS ids and auth keys; nothing it stores
//! names an FID or a group member, and it never reads AS or DS state.

pub mod create_user;
pub mod delete_client;
pub mod dequeue;
pub mod enqueue;
pub mod fetch_key_packages;
pub mod key_package_status;
pub mod listen;
pub mod publish_key_packages;
pub mod push;
pub mod rekey_queue;
pub mod wakeup;

use openmls::prelude::KeyPackage;
use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::QsId;
use phoenix_types::messages::qs::{
    QUEUE_CONFIG_EXTENSION_TYPE, QueueConfig, QueueConfigKeyResponse, SealedQueueConfig,
};
use phoenix_types::messages::{Empty, qs};

use crate::auth::Request;
use crate::server::Server;

pub fn operation(name: &str) -> Option<&'static str> {
    [
        qs::QUEUE_CONFIG_KEY,
        qs::CREATE_USER,
        qs::PUBLISH_KEY_PACKAGES,
        qs::FETCH_KEY_PACKAGES,
        qs::DEQUEUE,
        qs::KEY_PACKAGE_STATUS,
        qs::REKEY_QUEUE,
        qs::SET_PUSH_ENDPOINT,
        qs::DELETE_CLIENT,
    ]
    .into_iter()
    .find(|op| *op == name)
}

pub async fn handle(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    // Requirement: ADV-REPLAY-3
    crate::replay::refuse_seen(server, request).await?;
    match request.operation {
        qs::QUEUE_CONFIG_KEY => {
            request.require_anonymous()?;
            let _: Empty = request.payload()?;
            codec::encode(&QueueConfigKeyResponse {
                public_key: VLBytes::new(server.queue_config_key.public.clone()),
            })
        }
        qs::CREATE_USER => create_user::create_user(server, request).await,
        qs::PUBLISH_KEY_PACKAGES => {
            publish_key_packages::publish_key_packages(server, request, now).await
        }
        qs::FETCH_KEY_PACKAGES => fetch_key_packages::fetch_key_packages(server, request).await,
        qs::DEQUEUE => dequeue::dequeue(server, request, now).await,
        qs::KEY_PACKAGE_STATUS => {
            key_package_status::key_package_status(server, request, now).await
        }
        qs::REKEY_QUEUE => rekey_queue::rekey_queue(server, request, now).await,
        qs::SET_PUSH_ENDPOINT => push::set_push_endpoint(server, request, now).await,
        qs::DELETE_CLIENT => delete_client::delete_client(server, request, now).await,
        _ => Err(WireError::new(ErrorCode::NotFound, "unknown QS operation")),
    }
}

/// The sealed queue config carried in a key package's queue config extension.
pub fn sealed_queue_config(key_package: &KeyPackage) -> Result<SealedQueueConfig, WireError> {
    let ext = key_package
        .extensions()
        .unknown(QUEUE_CONFIG_EXTENSION_TYPE)
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::MissingQueueConfig,
                "key package lacks the queue config extension",
            )
        })?;
    codec::decode(&ext.0, 1024).map_err(|e| {
        WireError::new(
            ErrorCode::MissingQueueConfig,
            format!("malformed queue config extension: {}", e.detail),
        )
    })
}

/// Queue configs this process opened: the SHA-256 of the sealed bytes to the client record
/// id. A sealed queue config always opens to the same id, and every member's config is
/// opened again on every message of its group: one X25519 operation per recipient per
/// message, about a fifth of the server's CPU in a 100-member fan-out before this cache
/// (PERF-QS-1). Bounded; emptied when full. In memory only: what it maps is what each
/// enqueue's handler sees anyway, and nothing of it reaches the database.
#[derive(Debug, Default)]
pub struct QueueConfigCache {
    opened: std::sync::Mutex<std::collections::HashMap<[u8; 32], QsId>>,
}

/// Most entries of [`QueueConfigCache`].
const QUEUE_CONFIG_CACHE_MAX: usize = 65_536;

impl QueueConfigCache {
    pub(crate) fn get(&self, digest: &[u8; 32]) -> Option<QsId> {
        self.opened.lock().ok()?.get(digest).copied()
    }

    fn insert(&self, digest: [u8; 32], id: QsId) {
        if let Ok(mut opened) = self.opened.lock() {
            if opened.len() >= QUEUE_CONFIG_CACHE_MAX {
                opened.clear();
            }
            opened.insert(digest, id);
        }
    }
}

// Requirement: PERF-QS-1
/// Open a sealed queue config addressed to this QS, giving the client record id.
pub fn open_queue_config(server: &Server, sealed: &SealedQueueConfig) -> Result<QsId, WireError> {
    if sealed.qs_domain != server.domain.as_str() {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            "queue config is addressed to another QS",
        ));
    }
    let digest = crypto::sha256(&codec::encode(sealed)?);
    if let Some(id) = server.queue_configs.get(&digest) {
        return Ok(id);
    }
    let id = open_sealed(server, sealed)?;
    server.queue_configs.insert(digest, id);
    Ok(id)
}

fn open_sealed(server: &Server, sealed: &SealedQueueConfig) -> Result<QsId, WireError> {
    let plain = crypto::hpke_open(
        &server.queue_config_key.private,
        hpke_info::QUEUE_CONFIG,
        sealed.qs_domain.as_bytes(),
        &sealed.sealed,
    )
    .map_err(|_| WireError::new(ErrorCode::UnknownQueue, "queue config does not decrypt"))?;
    let config: QueueConfig = codec::decode(&plain, 64)?;
    Ok(config.client_id)
}
