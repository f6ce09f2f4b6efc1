//! Forwarding an outbox entry to the QS of another homeserver: sign a
//! [`FederatedEnqueueTbs`] with this server's QS key and post it. The message id is the
//! entry's dedup key, the same on every retry, so the receiver delivers it at most once
//! and answers retries of a delivered message with `REPLAYED`, which ends them.

use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::crypto;
use phoenix_types::error::{ErrorCode, Problem, WireError};
use phoenix_types::ids::Domain;
use phoenix_types::messages::Notification;
use phoenix_types::messages::federation::{self, FederatedEnqueue, FederatedEnqueueTbs};

use crate::server::{Server, now};
use crate::store::OutboxEntry;

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The peer has the message (now, or from an earlier attempt).
    Delivered,
    /// Try again later (peer unreachable, overloaded, or failing on its side).
    Transient(String),
    /// The peer (or our policy) refuses it for good; retrying would not help.
    Permanent(WireError),
}

/// Build the signed federated enqueue for an outbox entry.
pub fn build(
    server: &Server,
    destination: &Domain,
    entry: &OutboxEntry,
    timestamp: u64,
) -> Result<Vec<u8>, WireError> {
    let tbs = codec::encode(&FederatedEnqueueTbs {
        sender: server.domain.to_string(),
        destination: destination.to_string(),
        message_id: entry.dedup,
        timestamp,
        queue_config: VLBytes::new(entry.queue_config.clone()),
        // Requirement: QS-PUSH-4
        notification: if entry.notify {
            Notification::Send
        } else {
            Notification::Suppress
        },
        payload: VLBytes::new(entry.payload.clone()),
    })?;
    let signature = crypto::sign(&server.qs_signing_key, federation::LABEL, &tbs);
    codec::encode(&FederatedEnqueue {
        tbs: VLBytes::new(tbs),
        signature: VLBytes::new(signature.to_vec()),
    })
}

/// Deliver one outbox entry to its destination's QS.
pub async fn send(server: &Server, entry: &OutboxEntry) -> SendOutcome {
    let destination = match Domain::parse(&entry.destination) {
        Ok(d) => d,
        Err(_) => {
            return SendOutcome::Permanent(WireError::new(
                ErrorCode::Malformed,
                "invalid destination domain",
            ));
        }
    };
    // Requirement: FED-4
    if let Err(e) = server.federation.policy.check(&destination) {
        return SendOutcome::Permanent(e);
    }
    let body = match build(server, &destination, entry, now()) {
        Ok(body) => body,
        Err(e) => return SendOutcome::Permanent(e),
    };
    let url = format!(
        "{}/phoenix/v1/federation/{}",
        server.peers.url(&destination),
        federation::ENQUEUE
    );
    let response = match server
        .peers
        .http()
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return SendOutcome::Transient(format!("{destination} unreachable: {e}")),
    };
    let status = response.status();
    if status.is_success() {
        return SendOutcome::Delivered;
    }
    let problem = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Problem>(b.as_ref()).ok());
    let error = problem.map(|p| p.to_error()).unwrap_or_else(|| {
        WireError::new(
            ErrorCode::Internal,
            format!("HTTP {status} without a problem document"),
        )
    });
    match error.code {
        // Requirement: FED-3
        ErrorCode::Replayed => SendOutcome::Delivered,
        // A stale answer means the two servers' clocks disagree by more than the skew
        // window (every attempt is signed afresh): an operational fault that gets fixed, so
        // the entry waits for it instead of being dropped (nothing lost).
        ErrorCode::RateLimited
        | ErrorCode::UnknownPeer
        | ErrorCode::Internal
        | ErrorCode::Unavailable
        | ErrorCode::StaleRequest => SendOutcome::Transient(format!("{destination}: {error}")),
        _ if status.is_server_error() => SendOutcome::Transient(format!("{destination}: {error}")),
        _ => SendOutcome::Permanent(error),
    }
}
