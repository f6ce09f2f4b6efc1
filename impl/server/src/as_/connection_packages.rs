//! `publish_connection_packages` and `fetch_connection_package`.
//!
//! A client publishes signed connection packages (each an HPKE key to encrypt a
//! connection establishment package to); publishing replaces the previous set, and exactly
//! one package must be last-resort. Anyone may fetch one package of a user: it is consumed
//! atomically, except the last-resort one, which is reused when no other is left. A
//! package is stored with the end of its signed validity and is never served (nor
//! consumed) from then on, the last-resort one included; the jobs loop purges it.

use phoenix_types::codec;
use phoenix_types::crypto::{self, label};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::Fid;
use phoenix_types::messages::Empty;
use phoenix_types::messages::as_::{
    ConnectionPackage, ConnectionPackagePayload, FetchConnectionPackageRequest,
    FetchConnectionPackageResponse, PublishConnectionPackagesRequest,
};
use tls_codec::VLBytes;

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::{AsStore, StoredConnectionPackage};

fn invalid(detail: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidConnectionPackage, detail)
}

// Requirement: AS-CP-1, AS-CP-2, AS-CP-5
pub async fn publish(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    let client = request.as_client(server, now).await?;
    let req: PublishConnectionPackagesRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let max = server.limits.max_connection_packages;
    if req.packages.is_empty() || req.packages.len() > max {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("between 1 and {max} connection packages per upload"),
        ));
    }
    let mut stored = Vec::with_capacity(req.packages.len());
    for package in &req.packages {
        let payload = verify_package(package, &client.public_key, now)?;
        if payload.fid != client.fid || payload.client_id != client.client_id {
            return Err(invalid("a connection package names another client"));
        }
        let package = codec::encode(package)?;
        // Requirement: ADV-OP-1
        observe!([Observed::connection_package(&package)]);
        stored.push(StoredConnectionPackage {
            package,
            last_resort: payload.last_resort == 1,
            not_after: payload.not_after,
        });
    }
    if stored.iter().filter(|p| p.last_resort).count() != 1 {
        return Err(WireError::new(
            ErrorCode::LastResortRequired,
            "exactly one connection package must be last-resort",
        ));
    }
    server
        .store
        .replace_connection_packages(
            &client.fid,
            &client.client_id,
            &stored,
            // Requirement: ADV-REPLAY-3, ADV-REPLAY-4 (no handed-out package comes back)
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?;
    codec::encode(&Empty {})
}

/// Check a connection package's signature with the owner's key, and its fields.
pub fn verify_package(
    package: &ConnectionPackage,
    owner_key: &[u8],
    now: u64,
) -> Result<ConnectionPackagePayload, WireError> {
    crypto::verify(
        owner_key,
        label::CONNECTION_PACKAGE,
        package.payload.as_slice(),
        package.signature.as_slice(),
    )
    .map_err(|_| invalid("connection package signature does not verify"))?;
    let payload: ConnectionPackagePayload = codec::decode(package.payload.as_slice(), 1024)?;
    if payload.encryption_key.as_slice().len() != 32 {
        return Err(invalid(
            "connection package key must be an X25519 public key",
        ));
    }
    if payload.not_after <= now {
        return Err(invalid("connection package has expired"));
    }
    if payload.last_resort > 1 {
        return Err(invalid("last_resort must be 0 or 1"));
    }
    Ok(payload)
}

// Requirement: AS-CP-3, AS-CP-4, AS-CP-6, AS-CP-7
pub async fn fetch(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: FetchConnectionPackageRequest = request.payload()?;
    let fid =
        Fid::parse(&req.fid).map_err(|e| WireError::new(ErrorCode::InvalidFid, e.to_string()))?;
    if fid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::WrongDomain,
            format!("{fid} is not a user of this server"),
        ));
    }
    let fid = fid.to_string();
    // Requirement: ADV-OP-1
    observe!([Observed::Fid(fid.clone())]);
    let (client_id, package) = server
        .store
        .take_connection_package(&fid, now)
        .await
        .map_err(server.internal())?
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::NoConnectionPackage,
                format!("{fid} has no connection package"),
            )
        })?;
    let client = server
        .store
        .client(&fid, &client_id)
        .await
        .map_err(server.internal())?
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "connection package without client"))?;
    observe!([
        Observed::AsClientId(client_id.clone()),
        Observed::certificate(&client.certificate),
        Observed::connection_package(&package),
    ]);
    let package: ConnectionPackage = codec::decode(&package, usize::MAX)?;
    codec::encode(&FetchConnectionPackageResponse {
        package,
        client_certificate: VLBytes::new(client.certificate),
    })
}
