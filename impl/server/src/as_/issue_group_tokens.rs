//! `issue_group_tokens`: a client of this server gets anonymous group-creation tokens
//! (phoenix-types `tokens`). The AS authenticates the client by its ID-Cert key, counts the
//! tokens against the client's daily allowance, and evaluates the blinded elements with the
//! server's token key; it never sees the tokens themselves, so the DS that later takes one
//! in `request_group_id` cannot tell whose it is.
//!
//! Only clients of this AS can be issued tokens (remote clients have no record here), which
//! is what restricts group creation to local clients (spec: `RequestGroupId` and
//! `CreateGroup`, "Local clients only").

use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::as_::{
    IssueGroupTokensRequest, IssueGroupTokensResponse, MAX_TOKENS_PER_REQUEST,
};
use phoenix_types::tokens::{self, TokenError};

use crate::auth::{Request, check_fresh};
use crate::server::Server;
use crate::store::tokens::TokenStore;

// Requirement: AS-TOKEN-1, AS-TOKEN-2
pub async fn issue_group_tokens(
    server: &Server,
    request: &Request,
    now: u64,
) -> Result<Vec<u8>, WireError> {
    let client = request.as_client(server, now).await?;
    let req: IssueGroupTokensRequest = request.payload()?;
    check_fresh(req.timestamp, now)?;
    if req.blinded.is_empty() || req.blinded.len() > MAX_TOKENS_PER_REQUEST {
        return Err(WireError::new(
            ErrorCode::Malformed,
            format!("ask for 1 to {MAX_TOKENS_PER_REQUEST} tokens at a time"),
        ));
    }
    let blinded: Vec<&[u8]> = req.blinded.iter().map(VLBytes::as_slice).collect();
    if blinded.iter().any(|b| b.len() != tokens::ELEMENT_LEN) {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "a blinded element is not a group element",
        ));
    }
    // Evaluate first (pure), count and record after: an invalid element costs no allowance.
    let (evaluated, proof) =
        server
            .group_token_key
            .issue(&mut OsRng, &blinded)
            .map_err(|e| match e {
                TokenError::Malformed => {
                    WireError::new(ErrorCode::Malformed, "a blinded element is not valid")
                }
                TokenError::Proof | TokenError::Count => {
                    WireError::new(ErrorCode::Internal, "token issuance failed")
                }
            })?;
    let n = u32::try_from(blinded.len()).unwrap_or(u32::MAX);
    let granted = server
        .store
        .take_token_allowance(
            &client.fid,
            &client.client_id,
            now / 86_400,
            n,
            server.limits.group_tokens_per_day,
            // Requirement: ADV-REPLAY-3 (a replay would only burn the client's allowance)
            &crate::replay::record(request, now)?,
        )
        .await
        .map_err(server.internal())?;
    if !granted {
        return Err(WireError::new(
            ErrorCode::TokenQuotaExceeded,
            format!(
                "this client may be issued {} group-creation tokens per day; try again tomorrow",
                server.limits.group_tokens_per_day
            ),
        ));
    }
    codec::encode(&IssueGroupTokensResponse {
        public_key: VLBytes::new(server.group_token_key.public_key().to_vec()),
        evaluated: evaluated.into_iter().map(VLBytes::new).collect(),
        proof: VLBytes::new(proof),
    })
}
