//! `publish_key_packages`: a client replaces its key packages. Every package must be a
//! valid MLS key package (openmls checks signature, lifetime, keys), carry the sealed
//! queue config extension addressed to this QS and to the publishing client, and exactly
//! one must be last-resort.

use openmls::prelude::{KeyPackageIn, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use tls_codec::Deserialize;

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::Empty;
use phoenix_types::messages::qs::{AddPackage, MAX_KEY_PACKAGE_LEN, PublishKeyPackagesRequest};

use crate::auth::{Request, check_fresh};
use crate::qs::{open_queue_config, sealed_queue_config};
use crate::server::Server;
use crate::store::{QsStore, StoredKeyPackage};

// Requirement: QS-KP-1, QS-KP-2, QS-KP-5
pub async fn publish_key_packages(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: PublishKeyPackagesRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let max = server.limits.max_key_packages;
    if req.add_packages.is_empty() || req.add_packages.len() > max {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("between 1 and {max} key packages per upload"),
        ));
    }
    let crypto = RustCrypto::default();
    let mut stored = Vec::with_capacity(req.add_packages.len());
    for add_package in &req.add_packages {
        let bytes = add_package.key_package.as_slice();
        let invalid = |detail: String| WireError::new(ErrorCode::InvalidKeyPackage, detail);
        let kp = decode_key_package(bytes)?
            .validate(&crypto, ProtocolVersion::Mls10)
            .map_err(|e| invalid(format!("invalid key package: {e}")))?;
        let sealed = sealed_queue_config(&kp)?;
        let target = open_queue_config(server, &sealed)?;
        // Requirement: ADV-OP-1
        observe!([
            Observed::key_package(bytes),
            Observed::sealed_queue_config(&sealed),
            Observed::QsClientId(target),
        ]);
        if target != client.client_id {
            return Err(invalid("the queue config names another client".into()));
        }
        stored.push(StoredKeyPackage {
            add_package: codec::encode::<AddPackage>(add_package)?,
            last_resort: kp.last_resort(),
        });
    }
    if stored.iter().filter(|p| p.last_resort).count() != 1 {
        return Err(WireError::new(
            ErrorCode::LastResortRequired,
            "exactly one key package must be last-resort",
        ));
    }
    server
        .store
        // Requirement: ADV-REPLAY-3, ADV-REPLAY-4 (no handed-out package comes back)
        .replace_key_packages(
            &client.client_id,
            &stored,
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?;
    codec::encode(&Empty {})
}

// Requirement: WIRE-3, VEC-1
/// Decode one uploaded key package (a bare `KeyPackage`, not wrapped in an `MLSMessage`):
/// at most [`MAX_KEY_PACKAGE_LEN`] bytes (`TOO_LARGE`), exact TLS decoding
/// (`INVALID_KEY_PACKAGE`). Its signature, lifetime and keys are checked by the caller.
pub fn decode_key_package(bytes: &[u8]) -> Result<KeyPackageIn, WireError> {
    if bytes.len() > MAX_KEY_PACKAGE_LEN {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            "key package is too large",
        ));
    }
    KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| {
        WireError::new(
            ErrorCode::InvalidKeyPackage,
            format!("malformed key package: {e}"),
        )
    })
}
