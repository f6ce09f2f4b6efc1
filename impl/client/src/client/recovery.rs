//! Requests whose answer was lost: the client never reuses what it sent, and settles
//! every request it is unsure about.
//!
//! When the answer to a DS request does not arrive (the server crashed between commit and
//! reply, a proxy timed out, the network dropped it), the client cannot tell whether the
//! server kept the request. Rolling the MLS state back, as the client used to, loses
//! messages for good: the next send reuses the ratchet generation the server already
//! accepted once, and every receiver refuses it. So, for `send_message` and for the
//! commits (`update`, `remove_users`, `add_users`):
//!
//! 1. Before sending, the request's exact bytes and the MLS state they lead to (the
//!    advanced ratchet, the pending commit) are saved in one transaction
//!    ([`crate::store::Store::save_mls_with_outgoing`]).
//! 2. On a transport failure or a 5xx, the identical bytes are sent again (a few times,
//!    with a short pause). The server accepts a signed request once and answers a copy
//!    with `REPLAYED`, which means "accepted before".
//! 3. A definite refusal on the first answer discards the request (a commit's pending
//!    commit is cleared; a message's generation stays used, never reused).
//! 4. For a commit whose outcome stays unknown (a refusal after an unanswered attempt, e.g.
//!    `WRONG_EPOCH` because the group moved on), the DS is asked for the group's current
//!    group info: if it is the one this commit uploaded, the commit won and is merged;
//!    otherwise it lost and is discarded.
//! 5. If the server cannot be reached at all, the request stays saved and the command
//!    fails saying so; the next command sends it again first ([`Client::flush_outgoing`]).
//!
//! Registration and the AS/QS requests settle their lost answers elsewhere
//! (`registration.rs`, `crate::api::Api::post_retrying`; CL-AMBIG-2).
//!
//! `join_connection_group` is settled the same way within the command that sends it
//! ([`Client::send_join_sealed`]), but not kept past it. Not covered here: `create_group`
//! (a lost answer leaves an orphan group on the server; the user creates the group again).
//! A client that fell behind anyway resyncs by external commit (`resync.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use openmls::prelude::MlsGroup;
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize as SerdeDeserialize, Serialize as SerdeSerialize};
use serde_json::json;
use tls_codec::VLBytes;

use phoenix_types::ids::QualifiedGroupId;
use phoenix_types::messages::ds::{self, ExternalCommitInfoRequest, ExternalCommitInfoResponse};

use super::{Client, leaf_keys, now};
use crate::api::{Signer, decode_answer};
use crate::error::{ClientError, mls_err, verification};
use crate::store::{Group, Identity, NewOutgoing, Outgoing};

/// Attempts at one request within one command, and the pauses between them.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

/// What a commit leaves to record once it is merged.
#[derive(Debug, Default, SerdeSerialize, SerdeDeserialize)]
pub(super) struct CommitAftermath {
    /// Our own new encrypted credential (a credential update), if any.
    pub own_credential: Option<String>,
    /// New members' encrypted credentials, by their leaf signature key (hex).
    pub members: Vec<(String, String)>,
}

/// How the server answered a request, as far as the client can tell.
#[derive(Debug)]
enum Outcome {
    /// Accepted now, or before (`REPLAYED`).
    Accepted,
    /// Refused; `after_silence` says whether an earlier attempt went unanswered (the
    /// refusal may then be of a copy of a request the server already kept).
    Refused {
        error: ClientError,
        after_silence: bool,
    },
    /// No answer at all.
    Unknown(ClientError),
}

impl Client {
    // Requirement: CL-AMBIG-1
    /// Send a sealed DS request, retrying the identical bytes while no answer comes.
    async fn deliver(
        &self,
        id: &Identity,
        group_id: &[u8],
        operation: &str,
        body: &[u8],
        attempts: usize,
    ) -> Outcome {
        let mut silence = false;
        let mut last = ClientError::Transport("not sent".into());
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                let pause = RETRY_PAUSES
                    .get(attempt - 1)
                    .copied()
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
            match self.post_ds(id, group_id, operation, body).await {
                Ok(_) => return Outcome::Accepted,
                Err(e) if e.code() == Some("REPLAYED") => return Outcome::Accepted,
                Err(
                    e @ (ClientError::Transport(_)
                    | ClientError::NotSent(_)
                    | ClientError::Server(_)),
                ) if is_unanswered(&e) => {
                    silence = true;
                    last = e;
                }
                Err(error) => {
                    return Outcome::Refused {
                        error,
                        after_silence: silence,
                    };
                }
            }
        }
        Outcome::Unknown(last)
    }

    // Requirement: CL-AMBIG-1
    /// Send a sealed `create_group`, retrying the identical bytes while no answer comes: a
    /// copy of an accepted creation is answered `REPLAYED`, which counts as created.
    pub(super) async fn deliver_create_group(
        &self,
        id: &Identity,
        group_id: &[u8],
        body: &[u8],
    ) -> Result<(), ClientError> {
        match self
            .deliver(id, group_id, ds::CREATE_GROUP, body, RETRY_PAUSES.len() + 1)
            .await
        {
            Outcome::Accepted => Ok(()),
            Outcome::Refused { error, .. } => Err(error),
            Outcome::Unknown(error) => Err(ClientError::Transport(format!(
                "the group was not confirmed created: {error}; run the command again when \
                 the server is reachable"
            ))),
        }
    }

    /// Post sealed bytes to the DS hosting `group_id`, with a foreign session where one
    /// is used (renewed once if the server refuses it).
    async fn post_ds(
        &self,
        id: &Identity,
        group_id: &[u8],
        operation: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let gid = QualifiedGroupId::parse(group_id).map_err(|e| verification(e.to_string()))?;
        let domain = gid.domain().as_str().to_owned();
        let api = self.api_for(id, &domain).await?;
        let token = self.session_token(id, &api, &domain, "ds", false).await;
        match api
            .post_sealed("ds", operation, body, token.as_deref())
            .await
        {
            Err(e) if token.is_some() && e.code() == Some("UNAUTHENTICATED") => {
                let token = self.session_token(id, &api, &domain, "ds", true).await;
                api.post_sealed("ds", operation, body, token.as_deref())
                    .await
            }
            other => other,
        }
    }

    /// Save `outgoing` with the MLS state it leads to (one transaction), then send it,
    /// retrying the identical bytes while no answer comes.
    async fn save_and_deliver(
        &self,
        id: &Identity,
        outgoing: &NewOutgoing<'_>,
    ) -> Result<(i64, Outcome), ClientError> {
        let oid = self
            .store
            .save_mls_with_outgoing(&self.provider.values()?, outgoing)
            .await?;
        let outcome = self
            .deliver(
                id,
                outgoing.group_id,
                outgoing.operation,
                outgoing.body,
                RETRY_PAUSES.len() + 1,
            )
            .await;
        Ok((oid, outcome))
    }

    /// Send an application message whose ratchet generation `self.provider` has just
    /// used: saved first, then sent, then settled.
    pub(super) async fn send_message_sealed(
        &mut self,
        id: &Identity,
        record: &Group,
        body: &[u8],
        text: &str,
    ) -> Result<(), ClientError> {
        let (oid, outcome) = self
            .save_and_deliver(
                id,
                &NewOutgoing {
                    group_id: &record.group_id,
                    operation: ds::SEND_MESSAGE,
                    body,
                    kind: "message",
                    detail: text,
                    group_info: None,
                    created_at: now(),
                },
            )
            .await?;
        match outcome {
            Outcome::Accepted => {
                // Requirement: CLI-HIST-1
                let own = self.own_message(record, text, now()).await?;
                self.store
                    .save_mls_settling_sent(&self.provider.values()?, oid, &own)
                    .await
            }
            Outcome::Refused {
                error,
                after_silence: false,
            } => {
                // Not sent. The generation stays used (saved above): never reused.
                self.store
                    .save_mls_settling(&self.provider.values()?, oid)
                    .await?;
                Err(error)
            }
            Outcome::Refused {
                error,
                after_silence: true,
            } => {
                self.store
                    .save_mls_settling(&self.provider.values()?, oid)
                    .await?;
                Err(ClientError::Transport(format!(
                    "the server did not answer, then refused the same message again ({error}): \
                     it may or may not have been delivered"
                )))
            }
            Outcome::Unknown(error) => Err(not_confirmed(&record.name, &error)),
        }
    }

    /// Send a commit (the group holds it as its pending commit): saved first, then sent,
    /// then merged or discarded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_commit_sealed(
        &mut self,
        id: &Identity,
        record: &Group,
        group: &mut MlsGroup,
        operation: &str,
        body: &[u8],
        group_info: &[u8],
        aftermath: &CommitAftermath,
    ) -> Result<(), ClientError> {
        let detail = serde_json::to_string(aftermath)
            .map_err(|e| ClientError::Store(format!("cannot record the commit: {e}")))?;
        let (oid, outcome) = self
            .save_and_deliver(
                id,
                &NewOutgoing {
                    group_id: &record.group_id,
                    operation,
                    body,
                    kind: "commit",
                    detail: &detail,
                    group_info: Some(group_info),
                    created_at: now(),
                },
            )
            .await?;
        self.settle_commit(id, record, group, oid, group_info, aftermath, outcome)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_commit(
        &mut self,
        id: &Identity,
        record: &Group,
        group: &mut MlsGroup,
        oid: i64,
        group_info: &[u8],
        aftermath: &CommitAftermath,
        outcome: Outcome,
    ) -> Result<(), ClientError> {
        let won = match outcome {
            Outcome::Accepted => true,
            Outcome::Refused {
                error,
                after_silence: false,
            } => {
                self.discard_commit(group, oid).await?;
                return Err(error);
            }
            Outcome::Refused {
                after_silence: true,
                ..
            } => match self.ds_group_info(id, record).await {
                Ok(current) => current == group_info,
                Err(error) => return Err(not_confirmed(&record.name, &error)),
            },
            Outcome::Unknown(error) => return Err(not_confirmed(&record.name, &error)),
        };
        if !won {
            self.discard_commit(group, oid).await?;
            return Err(ClientError::Transport(format!(
                "the server did not answer, and another member's commit to {} came first: \
                 your change was not made; try it again",
                record.name
            )));
        }
        self.complete_commit(record, group, aftermath).await?;
        self.store
            .save_mls_settling(&self.provider.values()?, oid)
            .await
    }

    async fn discard_commit(&mut self, group: &mut MlsGroup, oid: i64) -> Result<(), ClientError> {
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(mls_err)?;
        self.store
            .save_mls_settling(&self.provider.values()?, oid)
            .await
    }

    /// Merge our accepted pending commit and record what it changed.
    async fn complete_commit(
        &mut self,
        record: &Group,
        group: &mut MlsGroup,
        aftermath: &CommitAftermath,
    ) -> Result<(), ClientError> {
        let before: BTreeMap<u32, Vec<u8>> = leaf_keys(group);
        group
            .merge_pending_commit(&self.provider)
            .map_err(mls_err)?;
        let own_leaf = group.own_leaf_index().u32();
        let replaced = if aftermath.own_credential.is_some() {
            vec![own_leaf]
        } else {
            Vec::new()
        };
        self.archive_ended_epoch(record, &before, group, &replaced)
            .await?;
        if let Some(credential) = &aftermath.own_credential {
            self.store
                .set_member(&record.group_id, own_leaf, &unhex(credential)?)
                .await?;
        }
        for (key, credential) in &aftermath.members {
            let key = unhex(key)?;
            if let Some(member) = group.members().find(|m| m.signature_key == key) {
                self.store
                    .set_member(&record.group_id, member.index.u32(), &unhex(credential)?)
                    .await?;
            }
        }
        Ok(())
    }

    /// The DS's current group info of `record` (the one the last accepted commit uploaded).
    async fn ds_group_info(&self, id: &Identity, record: &Group) -> Result<Vec<u8>, ClientError> {
        let body = crate::api::seal(
            "ds",
            ds::EXTERNAL_COMMIT_INFO,
            &ExternalCommitInfoRequest {
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
            },
            Signer::Anonymous,
        )?;
        let answer = self
            .post_ds(id, &record.group_id, ds::EXTERNAL_COMMIT_INFO, &body)
            .await?;
        let info: ExternalCommitInfoResponse = decode_answer(&answer, ds::EXTERNAL_COMMIT_INFO)?;
        Ok(info.group_info.as_slice().to_vec())
    }

    // Requirement: CL-AMBIG-1
    /// Send again, byte for byte, every request whose outcome is unknown, oldest first,
    /// and settle those that get an answer. Returns the events to show (a message
    /// confirmed late, one that could not be confirmed, a commit merged or discarded).
    pub(super) async fn flush_outgoing(
        &mut self,
        id: &Identity,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut events = Vec::new();
        for pending in self.store.outgoing().await? {
            self.store.outgoing_attempted(pending.id).await?;
            let Some(record) = self.store.group_by_id(&pending.group_id).await? else {
                // The group is gone from this client: nothing to settle against.
                self.store
                    .save_mls_settling(&self.provider.values()?, pending.id)
                    .await?;
                continue;
            };
            let outcome = self
                .deliver(id, &pending.group_id, &pending.operation, &pending.body, 1)
                .await;
            if let Outcome::Unknown(_) = outcome {
                // Still no answer; kept for the next command.
                continue;
            }
            let event = match pending.kind.as_str() {
                "message" => {
                    self.settle_flushed_message(&record, &pending, outcome)
                        .await?
                }
                _ => {
                    self.settle_flushed_commit(id, &record, &pending, outcome)
                        .await?
                }
            };
            events.push(event);
        }
        Ok(events)
    }

    async fn settle_flushed_message(
        &mut self,
        record: &Group,
        pending: &Outgoing,
        outcome: Outcome,
    ) -> Result<serde_json::Value, ClientError> {
        if let Outcome::Accepted = outcome {
            // Requirement: CLI-HIST-1 (in the history at the time it was sent)
            let own = self
                .own_message(record, &pending.detail, pending.created_at)
                .await?;
            self.store
                .save_mls_settling_sent(&self.provider.values()?, pending.id, &own)
                .await?;
        } else {
            self.store
                .save_mls_settling(&self.provider.values()?, pending.id)
                .await?;
        }
        Ok(match outcome {
            Outcome::Accepted => json!({"kind": "sent", "group": record.name,
                "text": pending.detail, "late": true}),
            Outcome::Refused { error, .. } | Outcome::Unknown(error) => {
                json!({"kind": "error", "group": record.name, "detail": format!(
                    "your message {:?} could not be confirmed and may not have been delivered: {error}",
                    pending.detail)})
            }
        })
    }

    async fn settle_flushed_commit(
        &mut self,
        id: &Identity,
        record: &Group,
        pending: &Outgoing,
        outcome: Outcome,
    ) -> Result<serde_json::Value, ClientError> {
        let aftermath: CommitAftermath = serde_json::from_str(&pending.detail)
            .map_err(|e| ClientError::Store(format!("corrupt pending commit: {e}")))?;
        let mut group = self.load_group(&record.group_id)?;
        let group_info = pending.group_info.clone().unwrap_or_default();
        // An answer now, after the command that sent it got none: any refusal may be of a
        // copy, so it is settled against the DS's state.
        let outcome = match outcome {
            Outcome::Refused { error, .. } => Outcome::Refused {
                error,
                after_silence: true,
            },
            other => other,
        };
        match self
            .settle_commit(
                id,
                record,
                &mut group,
                pending.id,
                &group_info,
                &aftermath,
                outcome,
            )
            .await
        {
            Ok(()) => Ok(json!({"kind": "commit_confirmed", "group": record.name,
                "operation": pending.operation})),
            Err(e) => Ok(json!({"kind": "error", "group": record.name,
                "detail": format!("your {} in {} was not made: {e}", pending.operation, record.name)})),
        }
    }

    /// Send an external commit joining a group (`join_connection_group`) within this
    /// command: the identical bytes again while no answer comes, and a refusal after an
    /// unanswered attempt settled against the DS's current group info (the join is
    /// anonymous and refused once the group is full, so a copy of an accepted join is
    /// refused). Unlike the other commits it is not kept past the command: the caller
    /// keeps the connection request and the user can accept again.
    pub(super) async fn send_join_sealed(
        &self,
        id: &Identity,
        record: &Group,
        operation: &str,
        body: &[u8],
        group_info: &[u8],
    ) -> Result<(), ClientError> {
        match self
            .deliver(
                id,
                &record.group_id,
                operation,
                body,
                RETRY_PAUSES.len() + 1,
            )
            .await
        {
            Outcome::Accepted => Ok(()),
            Outcome::Refused {
                error,
                after_silence: false,
            } => Err(error),
            Outcome::Refused {
                error,
                after_silence: true,
            } => {
                if self.ds_group_info(id, record).await? == group_info {
                    Ok(())
                } else {
                    Err(error)
                }
            }
            Outcome::Unknown(error) => Err(error),
        }
    }

    /// Refuse to act on a group while a request in it is still unsettled.
    pub(super) async fn require_settled(&self, record: &Group) -> Result<(), ClientError> {
        if self
            .store
            .outgoing()
            .await?
            .iter()
            .any(|o| o.group_id == record.group_id)
        {
            return Err(ClientError::Transport(format!(
                "an earlier request in {} is not confirmed yet (its server did not answer); \
                 run `phoenix sync` when the server is reachable",
                record.name
            )));
        }
        Ok(())
    }
}

/// Whether an error means "no answer": the request may or may not have been kept.
fn is_unanswered(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(_) | ClientError::NotSent(_) => true,
        // A 5xx: the server's own fault (a store failure is rolled back, a proxy's 502/504
        // says nothing about the server's commit).
        ClientError::Server(e) => e.code.as_str() == "INTERNAL",
        _ => false,
    }
}

fn not_confirmed(group: &str, error: &ClientError) -> ClientError {
    ClientError::Transport(format!(
        "not confirmed: {error}; it is saved and will be sent again (unchanged) by the next \
         command, e.g. `phoenix sync` (group {group})"
    ))
}

fn unhex(s: &str) -> Result<Vec<u8>, ClientError> {
    hex::decode(s).map_err(|e| ClientError::Store(format!("corrupt pending commit: {e}")))
}
