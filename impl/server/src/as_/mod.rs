//! The Authentication Service: the only service that knows users by their real identity
//! (FIDs). It is the CA of the home server, registers users, serves certificates, and
//! hosts the connection packages and direct queues used to establish connections.
//!
//! It never learns QS pseudonyms or group membership: nothing here reads QS or DS state.

pub mod certificates;
pub mod connection_packages;
pub mod direct_queue;
pub mod register;

use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::as_;

use crate::auth::Request;
use crate::server::Server;

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
    ]
    .into_iter()
    .find(|op| *op == name)
}

/// Run one AS operation.
pub async fn handle(server: &Server, request: &Request, now: u64) -> Result<Vec<u8>, WireError> {
    match request.operation {
        as_::REGISTER => register::register(server, request, now).await,
        as_::PUBLISH_CONNECTION_PACKAGES => {
            connection_packages::publish(server, request, now).await
        }
        as_::FETCH_CONNECTION_PACKAGE => connection_packages::fetch(server, request, now).await,
        as_::ENQUEUE_CONNECTION => direct_queue::enqueue(server, request).await,
        as_::DEQUEUE_CONNECTION => direct_queue::dequeue(server, request, now).await,
        as_::CLIENT_CERTIFICATES => certificates::client_certificates(server, request).await,
        as_::SERVER_CERTIFICATE => certificates::server_certificate(server, request).await,
        as_::RENEW_CERTIFICATE => register::renew_certificate(server, request, now).await,
        as_::DOMAIN_CERTIFICATES => certificates::domain_certificates(server, request).await,
        _ => Err(WireError::new(ErrorCode::NotFound, "unknown AS operation")),
    }
}
