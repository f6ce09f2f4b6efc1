//! Replay protection of signed state-changing requests: each is accepted once; the same
//! bytes again get `REPLAYED` and change nothing.
//!
//! A request's replay record ([`ReplayRecord`]) is a domain-separated SHA-256 over the
//! operation label, the request's authentication (the signer it claims and its signature)
//! and the exact payload bytes, with the time it was received. The store writes it in the
//! same transaction as the request's effect (a failed request records nothing, so a
//! legitimate retry after a failure is processed; a crash never leaves a record without its
//! effect). Before an operation looks at a protected request, [`refuse_seen`] answers
//! `REPLAYED` if its record exists: the request took effect before. This check comes first
//! so that a replayed DS commit, whose epoch is gone, gets `REPLAYED` and not
//! `WRONG_EPOCH` (a client that resends the identical bytes after a lost reply reads
//! `REPLAYED` as "it was accepted"). Concurrent copies of one request are decided by the
//! records' primary key inside the transactions: one commits, the other gets `REPLAYED`.
//!
//! Records are kept for [`crate::jobs::FEDERATION_SEEN_RETENTION`] (`2 × MAX_CLOCK_SKEW`
//! and an hour's margin) and then pruned by [`crate::jobs`]; a replay that old fails the
//! freshness check (`STALE_REQUEST`).
//!
//! Which requests are protected here ([`protected`]), every route classified:
//!
//! - AS `publish_connection_packages`, `renew_certificate`, `issue_group_tokens`,
//!   `enqueue_connection` (unsigned, but its sealed bytes are a client's one request:
//!   a copy is the client retrying after a lost answer or a replay, CL-AMBIG-3); QS
//!   `publish_key_packages`, `rekey_queue`, `set_push_endpoint`, `delete_client` (refused
//!   before authentication: a replayed deletion is `REPLAYED`, not `UNKNOWN_CLIENT`);
//!   DS `create_group`, `join_connection_group`, `add_users`, `remove_users`, `update`:
//!   protected here.
//! - DS `send_message`: its own record, by the MLS message (`ds_seen_messages`,
//!   [`crate::ds::send_message`]), which also refuses the same message in a re-signed
//!   request.
//! - Federation `enqueue`: its own record, by (sender, message id)
//!   ([`crate::federation::receive`]).
//! - polyproto session routes: not signed requests. `POST session/auth` answers a key
//!   trial, which is used up by its first answer (its own state); `DELETE session` and
//!   `PUT session/idcert/extern` carry a bearer token, and their effects repeat to the same
//!   state (the certificate invalidated at the earliest time given; the session moved to
//!   the same certificate).
//! - AS `dequeue_connection`, QS `dequeue`: signed, but a replay deletes nothing the
//!   original did not (it acknowledges the same start) and returns what is still queued
//!   from there; they stay repeatable so that a client can fetch a page again.
//! - Unsigned requests (AS `register`, `fetch_connection_package`;
//!   QS `create_user`, `fetch_key_packages`, `queue_config_key`; DS `external_commit_info`) and signed reads (AS certificate lookups, QS
//!   `key_package_status`): no signature to replay. A repeated `register` or `create_user`
//!   is decided by its own state: the identical registration again (same FID, client id and
//!   key; same token and auth keys) gets the first result, so that a client whose answer
//!   was lost can settle it (CL-AMBIG-2); any other gets `USER_EXISTS`,
//!   `DUPLICATE_FRIENDSHIP_TOKEN`.
//! - DS `request_group_id`: unsigned, but it spends a group-creation token, recorded with
//!   the reservation it bought (`ds_spent_tokens`): the same token again gets the same
//!   unused reservation back, and `INVALID_TOKEN` once it is used or expired.

use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::{as_, ds, qs};

use crate::auth::Request;
use crate::server::Server;
use crate::store::{EphemeralStore, ReplayRecord, ReplayService};

/// The domain separation of a request's replay digest.
const DIGEST_LABEL: &[u8] = b"phoenix request replay record v1";

// Requirement: ADV-REPLAY-3
/// The service whose replay records protect `service/operation`, or `None` if the
/// operation is not protected here (see the module documentation for why).
pub fn protected(service: &str, operation: &str) -> Option<ReplayService> {
    match (service, operation) {
        (
            "as",
            as_::PUBLISH_CONNECTION_PACKAGES
            | as_::RENEW_CERTIFICATE
            | as_::ISSUE_GROUP_TOKENS
            | as_::ENQUEUE_CONNECTION,
        ) => Some(ReplayService::As),
        (
            "qs",
            qs::PUBLISH_KEY_PACKAGES | qs::REKEY_QUEUE | qs::SET_PUSH_ENDPOINT | qs::DELETE_CLIENT,
        ) => Some(ReplayService::Qs),
        (
            "ds",
            ds::CREATE_GROUP
            | ds::JOIN_CONNECTION_GROUP
            | ds::ADD_USERS
            | ds::REMOVE_USERS
            | ds::UPDATE
            | ds::RESYNC,
        ) => Some(ReplayService::Ds),
        _ => None,
    }
}

// Requirement: ADV-REPLAY-3
/// The replay record of `request`, received at `now`.
pub fn record(request: &Request, now: u64) -> Result<ReplayRecord, WireError> {
    Ok(ReplayRecord {
        digest: digest(request)?,
        received_at: now,
    })
}

/// SHA-256 over the label, then each part with a length prefix: the operation label, the
/// encoded authentication, the payload.
fn digest(request: &Request) -> Result<[u8; 32], WireError> {
    let auth = codec::encode(&request.auth)?;
    let label = request.label();
    let mut hash = Sha256::new();
    hash.update(DIGEST_LABEL);
    for part in [
        label.as_bytes(),
        auth.as_slice(),
        request.payload.as_slice(),
    ] {
        hash.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(part);
    }
    Ok(hash.finalize().into())
}

// Requirement: ADV-REPLAY-3
/// `REPLAYED` if `request` is protected and was accepted before. Runs before the
/// operation decodes or authenticates anything: a record exists only for a request that
/// took effect, so its exact bytes need no further look.
pub async fn refuse_seen(server: &Server, request: &Request) -> Result<(), WireError> {
    let Some(service) = protected(request.service, request.operation) else {
        return Ok(());
    };
    let seen = server
        .store
        .request_seen(service, &digest(request)?)
        .await
        .map_err(server.internal())?;
    if seen {
        return Err(replayed(server));
    }
    Ok(())
}

/// The refusal of a replayed request (counted in the metrics).
pub fn replayed(server: &Server) -> WireError {
    server
        .metrics
        .request_replays_refused
        .fetch_add(1, Ordering::Relaxed);
    WireError::new(
        ErrorCode::Replayed,
        "this request was accepted before; its exact bytes are not accepted again",
    )
}
