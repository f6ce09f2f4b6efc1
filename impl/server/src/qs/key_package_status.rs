//! `key_package_status`: a client asks how its key packages stand: how many one-time
//! packages are left, whether a last-resort one is stored, and how often the last-resort
//! package was handed out because the pool was empty. Only the client itself (by its QS
//! client key) can ask; contacts that fetch packages learn nothing from it.

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::{KeyPackageStatusRequest, KeyPackageStatusResponse};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::QsStore;

pub async fn key_package_status(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.qs_client(server).await?;
    let req: KeyPackageStatusRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    let status = server
        .store
        .key_package_status(&client.client_id)
        .await
        .map_err(server.internal())?
        .ok_or_else(|| WireError::new(ErrorCode::UnknownClient, "no such QS client record"))?;
    codec::encode(&KeyPackageStatusResponse {
        one_time_remaining: status.one_time,
        has_last_resort: u8::from(status.last_resort),
        last_resort_served: status.last_resort_served,
    })
}
