//! `request_group_id`: hand out a fresh group id of this DS and reserve it (in the
//! database, so the reservation survives restarts and is shared between processes), in
//! exchange for one anonymous group-creation token issued by this server's AS
//! (`as/issue_group_tokens`, phoenix-types `tokens`): only clients of this server can have
//! one, and the token does not say which client it was issued to.
//!
//! The same token presented again gets the same reservation while it is unused and live
//! (a client whose reply was lost retries safely), and `INVALID_TOKEN` after.

use rand_core::{OsRng, RngCore};
use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::{GROUP_ID_RANDOM_LEN, QualifiedGroupId};
use phoenix_types::messages::ds::{RequestGroupIdRequest, RequestGroupIdResponse};
use phoenix_types::tokens;

use crate::auth::Request;
use crate::server::Server;
use crate::store::tokens::{TokenReservation, TokenStore};

// Requirement: DS-GID-1, DS-GID-3
pub async fn request_group_id(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    request.require_anonymous()?;
    let req: RequestGroupIdRequest = request.payload()?;
    let token = &req.token;
    let key = &server.group_token_key;
    if token.key_id.as_slice() != key.key_id().as_slice() {
        return Err(WireError::new(
            ErrorCode::InvalidToken,
            "the token was not issued by this server's current token key",
        ));
    }
    if !key.check(token.input.as_slice(), token.output.as_slice()) {
        return Err(WireError::new(
            ErrorCode::InvalidToken,
            "the group-creation token does not verify",
        ));
    }
    let digest = tokens::spent_digest(token.input.as_slice());
    // 128 random bits make a collision practically impossible; retry a few times anyway
    // rather than trust it.
    for _ in 0..4 {
        let mut random = [0u8; GROUP_ID_RANDOM_LEN];
        OsRng.fill_bytes(&mut random);
        let group_id = QualifiedGroupId::new(random, server.domain.clone()).to_bytes();
        let expires_at = now + server.limits.group_id_reservation;
        match server
            .store
            .reserve_with_token(&digest, &group_id, now, expires_at)
            .await
            .map_err(server.internal())?
        {
            TokenReservation::Reserved(group_id) => {
                // Requirement: ADV-OP-2
                observe!([Observed::GroupId(group_id.clone())]);
                return codec::encode(&RequestGroupIdResponse {
                    group_id: VLBytes::new(group_id),
                });
            }
            TokenReservation::Spent => {
                return Err(WireError::new(
                    ErrorCode::InvalidToken,
                    "this group-creation token was spent already",
                ));
            }
            TokenReservation::Collision => continue,
        }
    }
    Err(WireError::new(
        ErrorCode::Internal,
        "could not reserve a group id",
    ))
}
