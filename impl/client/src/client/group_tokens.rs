//! Group-creation tokens (phoenix-types `tokens`): the client keeps a few anonymous tokens
//! from its home AS and spends one on each `ds/request_group_id`, so that its DS learns
//! that a client of its own server creates a group, never which one.

use rand_core::OsRng;
use tls_codec::VLBytes;

use phoenix_types::messages::{as_, ds};
use phoenix_types::tokens::{self, Token};

use super::{Client, now};
use crate::api::Signer;
use crate::error::{ClientError, verification};
use crate::store::Identity;

/// Tokens asked for at a time (the server's daily allowance is 100 by default).
const BATCH: usize = 4;

/// `phoenix sync` fetches a batch when fewer tokens than this are left.
const LOW: u64 = 2;

/// How often a `request_group_id` with the same token is sent again while no answer comes
/// (the DS answers a repeated token with the reservation it bought).
const ATTEMPTS: usize = 3;

impl Client {
    // Requirement: DS-GID-3, AS-TOKEN-3
    /// Reserve a group id at the home DS with one group-creation token. Returns the group
    /// id and the token, which the caller forgets once the group is created.
    pub(super) async fn reserve_group_id(
        &self,
        id: &Identity,
    ) -> Result<(Vec<u8>, Token), ClientError> {
        let api = Self::api(id)?;
        // A token the DS reports spent (its group was created, or its reservation expired)
        // is dropped and the next one tried; a fresh batch is fetched when none is left.
        for _ in 0..=BATCH {
            let token = match self.store.group_token(&id.qs_domain).await? {
                Some(token) => token,
                None => {
                    self.fetch_group_tokens(id).await?;
                    self.store
                        .group_token(&id.qs_domain)
                        .await?
                        .ok_or_else(|| verification("the server issued no group token"))?
                }
            };
            let request = ds::RequestGroupIdRequest {
                token: ds::GroupToken {
                    key_id: VLBytes::new(token.key_id.to_vec()),
                    input: VLBytes::new(token.input.to_vec()),
                    output: VLBytes::new(token.output.clone()),
                },
            };
            let mut last = None;
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
                }
                let answer: Result<ds::RequestGroupIdResponse, _> = api
                    .call("ds", ds::REQUEST_GROUP_ID, &request, Signer::Anonymous)
                    .await;
                match answer {
                    Ok(reserved) => return Ok((reserved.group_id.as_slice().to_vec(), token)),
                    Err(e @ (ClientError::Transport(_) | ClientError::NotSent(_))) => {
                        last = Some(e)
                    }
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            match last {
                Some(e) if e.code() == Some("INVALID_TOKEN") => {
                    self.store.delete_group_token(&token.input).await?;
                }
                Some(e) => return Err(e),
                None => return Err(verification("no answer to request_group_id")),
            }
        }
        Err(verification(
            "the server refused every group-creation token it issued",
        ))
    }

    /// Fetch a batch of tokens if fewer than [`LOW`] are left, so that a group creation
    /// rarely needs to ask the AS right before it asks the DS (the two requests close
    /// together in time are what an operator could correlate).
    pub(super) async fn top_up_group_tokens(&self, id: &Identity) -> Result<(), ClientError> {
        if self.store.group_token_count(&id.qs_domain).await? < LOW {
            self.fetch_group_tokens(id).await?;
        }
        Ok(())
    }

    /// Ask the home AS for a batch of tokens, check its proof against the pinned token
    /// key (pinning it at first use), and keep the tokens.
    async fn fetch_group_tokens(&self, id: &Identity) -> Result<(), ClientError> {
        let api = Self::api(id)?;
        let key = Self::signing_key(id);
        let pending = (0..BATCH)
            .map(|_| tokens::blind(&mut OsRng))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Mls(format!("blinding a token: {e}")))?;
        let response: as_::IssueGroupTokensResponse = api
            .call(
                "as",
                as_::ISSUE_GROUP_TOKENS,
                &as_::IssueGroupTokensRequest {
                    timestamp: now(),
                    blinded: pending
                        .iter()
                        .map(|p| VLBytes::new(p.blinded().to_vec()))
                        .collect(),
                },
                Self::as_signer(id, &key),
            )
            .await?;
        let public_key = response.public_key.as_slice();
        let pinned = self.store.token_key(&id.qs_domain).await?;
        if pinned.is_some_and(|pinned| pinned.as_slice() != public_key) {
            return Err(verification(format!(
                "{} issued group tokens under a key other than the one it used before: a \
                 server that gives clients different keys can tell them apart, so these \
                 tokens are refused",
                id.qs_domain
            )));
        }
        let evaluated: Vec<&[u8]> = response.evaluated.iter().map(VLBytes::as_slice).collect();
        let issued = tokens::finalize(&pending, &evaluated, response.proof.as_slice(), public_key)
            .map_err(|e| verification(format!("group tokens from {}: {e}", id.qs_domain)))?;
        self.store
            .put_group_tokens(&id.qs_domain, public_key, &issued, now())
            .await
    }
}
