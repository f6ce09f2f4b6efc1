//! The Queuing Service: pseudonymous user and client records, key packages, and per-client
//! message queues. It knows clients only by random QS ids and auth keys; nothing it stores
//! names an FID or a group member, and it never reads AS or DS state.

pub mod create_user;
pub mod dequeue;
pub mod enqueue;
pub mod fetch_key_packages;
pub mod key_package_status;
pub mod publish_key_packages;

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

/// Open a sealed queue config addressed to this QS, giving the client record id.
pub fn open_queue_config(server: &Server, sealed: &SealedQueueConfig) -> Result<QsId, WireError> {
    if sealed.qs_domain != server.domain.as_str() {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            "queue config is addressed to another QS",
        ));
    }
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
