//! The Authentication Service: the only service that knows users by their real identity
//! (FIDs). It is the CA of the home server, registers users, serves certificates, and
//! hosts the connection packages and direct queues used to establish connections.
//!
//! It never learns QS pseudonyms or group membership: nothing here reads QS or DS state.

pub mod certificates;
pub mod connection_packages;
pub mod direct_queue;
pub mod issue_group_tokens;
pub mod register;

use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{ClientId, Fid};
use phoenix_types::messages::{Auth, as_};

use crate::auth::Request;
use crate::server::Server;
use crate::store::AsStore;
use crate::store::sessions::SessionStore;

/// Resolve an operation name to its static name (for labels) or fail with 404.
pub fn operation(name: &str) -> Option<&'static str> {
    [
        as_::REGISTER,
        as_::PUBLISH_CONNECTION_PACKAGES,
        as_::FETCH_CONNECTION_PACKAGE,
        as_::ENQUEUE_CONNECTION,
        as_::DEQUEUE_CONNECTION,
        as_::CLIENT_CERTIFICATES,
        as_::SERVER_CERTIFICATE,
        as_::RENEW_CERTIFICATE,
        as_::DOMAIN_CERTIFICATES,
        as_::ISSUE_GROUP_TOKENS,
    ]
    .into_iter()
    .find(|op| *op == name)
}

/// Run one AS operation.
pub async fn handle(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    check_not_invalidated(server, request, now).await?;
    check_not_suspended(server, request).await?;
    // Requirement: ADV-REPLAY-3
    crate::replay::refuse_seen(server, request).await?;
    match request.operation {
        as_::REGISTER => register::register(server, request, now).await,
        as_::PUBLISH_CONNECTION_PACKAGES => {
            connection_packages::publish(server, request, now).await
        }
        as_::FETCH_CONNECTION_PACKAGE => connection_packages::fetch(server, request, now).await,
        as_::ENQUEUE_CONNECTION => direct_queue::enqueue(server, request, now).await,
        as_::DEQUEUE_CONNECTION => direct_queue::dequeue(server, request, now).await,
        as_::CLIENT_CERTIFICATES => certificates::client_certificates(server, request).await,
        as_::SERVER_CERTIFICATE => certificates::server_certificate(server, request).await,
        as_::RENEW_CERTIFICATE => register::renew_certificate(server, request, now).await,
        as_::DOMAIN_CERTIFICATES => certificates::domain_certificates(server, request).await,
        as_::ISSUE_GROUP_TOKENS => {
            issue_group_tokens::issue_group_tokens(server, request, now).await
        }
        _ => Err(WireError::new(ErrorCode::NotFound, "unknown AS operation")),
    }
}

// Requirement: OPS-ADMIN-2
/// A request signed as a client of a user the operator suspended (`phoenix-server admin
/// users suspend`) is refused with `USER_SUSPENDED`, before the operation looks at it. This
/// covers every AS operation signed by a client (the user's own requests); the QS and DS
/// do not know users (their clients are pseudonymous), so a suspended user's queues and
/// groups keep working until their certificates expire and cannot be renewed here.
async fn check_not_suspended(server: &Server, request: &Request) -> Result<(), WireError> {
    let Auth::AsClient(auth) = &request.auth else {
        return Ok(());
    };
    let Ok(fid) = Fid::parse(&auth.fid) else {
        return Ok(());
    };
    let suspended = crate::store::admin::AdminStore::suspended_at(&server.store, &fid.to_string())
        .await
        .map_err(server.internal())?;
    match suspended {
        Some(at) => Err(WireError::new(
            ErrorCode::UserSuspended,
            format!("user {fid} was suspended by this server's operator at {at}"),
        )),
        None => Ok(()),
    }
}

// Requirement: AS-AUTH-2
/// A request signed as a client whose current certificate was invalidated through
/// polyproto (`DELETE session`, `PUT session/idcert/extern`, recorded in `p2_certificates`)
/// is refused with `UNAUTHENTICATED` from the time of the invalidation, before the operation
/// looks at it: such a certificate authenticates nothing any more. (Whether the
/// invalidation is public is not a concern: `idcert/actor` serves it with `invalidatedAt`.)
/// Unknown clients and malformed names are left to the operation's own authentication.
async fn check_not_invalidated(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<(), WireError> {
    let Auth::AsClient(auth) = &request.auth else {
        return Ok(());
    };
    let Ok(fid) = Fid::parse(&auth.fid) else {
        return Ok(());
    };
    let Ok(client_id) = ClientId::parse(&auth.client_id) else {
        return Ok(());
    };
    let fid = fid.to_string();
    let Some(client) = AsStore::client(&server.store, &fid, client_id.as_str())
        .await
        .map_err(server.internal())?
    else {
        return Ok(());
    };
    let serial = hex::decode(&client.serial).map_err(|_| {
        tracing::error!("a stored certificate serial is not hex");
        WireError::new(ErrorCode::Internal, "a stored certificate is corrupt")
    })?;
    let invalidated = server
        .store
        .certificate(&fid, &crate::polyproto::decimal(&serial))
        .await
        .map_err(server.internal())?
        .and_then(|record| record.invalidated_at);
    match invalidated {
        Some(at) if at <= now => Err(WireError::new(
            ErrorCode::Unauthenticated,
            format!("the client's certificate was invalidated at {at}"),
        )),
        _ => Ok(()),
    }
}
