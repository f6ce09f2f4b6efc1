//! Resync: a group that fell behind recovers by itself (phoenix.md § Spec-DS, Resync).
//!
//! A client can fall behind a group although its queue delivers everything: its state
//! directory was restored from a backup, or the commit of an epoch never reached it (a
//! queue entry lost, or a commit the DS kept after the client gave it up). It notices when
//! a message of a future epoch arrives, which it cannot process. It then fetches the
//! group's current info (`ds/external_commit_info`, with the EAR key), rejoins by an
//! external commit that removes its own old leaf and adds a new one with the same leaf
//! credential and signature key (`ds/resync`, signed with that key; Requirement:
//! DS-RESYNC-1, DS-RESYNC-2), and continues at the new epoch. Its local history stays;
//! what it missed is recorded as a gap (Requirement: CL-LOSS-1) and `phoenix sync` reports a
//! `resynced` event (Requirement: CL-RESYNC-1). Every other member is verified as at any
//! join (its credential chain; the pinned client of a connection group).
//!
//! A `WRONG_EPOCH` answer to our own message or commit starts one too, once processing the
//! queue again leaves us behind the DS's epoch ([`Client::catch_up_or_resync`]); the
//! command then builds its commit (sends its message) once more at the new epoch. A lost
//! race (another member committed first) needs no resync: processing the queue catches up.
//!
//! Not here: pending proposals in the external-commit info (the DS keeps no proposal store
//! yet).

use openmls::prelude::{
    CredentialWithKey, LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn,
};
use openmls_traits::OpenMlsProvider;
use serde_json::json;
use tls_codec::{Deserialize, Serialize, VLBytes};

use phoenix_types::codec;
use phoenix_types::crypto::SymmetricKey;
use phoenix_types::messages::ds::{self, MemberInfo, QueuePayload};

use super::{Client, now};
use crate::api::Signer;
use crate::error::{ClientError, mls_err, verification};
use crate::mls;
use crate::store::{Group, Identity};
use crate::verify;

/// How often the queue is processed again before a group that the DS shows at a later
/// epoch is resynced, and the pause between (about a second in all).
const CATCH_UP_ATTEMPTS: u32 = 5;
const CATCH_UP_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

impl Client {
    /// Rejoin group `name` by external commit now (what `sync` does by itself when a group
    /// fell behind). Returns the `resynced` event.
    pub async fn resync(&mut self, name: &str) -> Result<serde_json::Value, ClientError> {
        let result = self.resync_inner(name).await;
        self.finish(result).await
    }

    async fn resync_inner(&mut self, name: &str) -> Result<serde_json::Value, ClientError> {
        let id = self.identity().await?;
        self.pull_into_events(&id).await?;
        let record = self.active_group(name).await?;
        self.require_settled(&record).await?;
        self.resync_group(&id, &record).await
    }

    /// If `payload` is a message of one of our groups from an epoch after the one we are
    /// at, the group (we fell behind it). Anything else (undecodable, another epoch, a
    /// group we are not in): `None`.
    pub(super) async fn behind_in(&self, payload: &[u8]) -> Option<Group> {
        let Ok(QueuePayload::GroupMessage(message)) =
            codec::decode::<QueuePayload>(payload, 4 * 1024 * 1024)
        else {
            return None;
        };
        let record = self
            .store
            .group_by_id(message.group_id.as_slice())
            .await
            .ok()
            .flatten()?;
        if !record.active {
            return None;
        }
        let group = self.load_group(&record.group_id).ok()?;
        let protocol = mls::protocol_message(message.message.as_slice()).ok()?;
        (protocol.epoch().as_u64() > group.epoch().as_u64()).then_some(record)
    }

    // Requirement: CL-RESYNC-1
    /// Whether `result`, of a commit of ours in group `name`, is a `WRONG_EPOCH` refusal
    /// after which catching up (or resyncing) moved the group to a later epoch: then the
    /// command builds its commit once more. Any failure on the way keeps the refusal.
    pub(super) async fn moved_on_after_refused_commit(
        &mut self,
        name: &str,
        result: &Result<(), ClientError>,
    ) -> bool {
        match result {
            Err(e) if e.code() == Some("WRONG_EPOCH") && self.sync_before_commit => {}
            _ => return false,
        }
        let moved = async {
            let id = self.identity().await?;
            let record = self.user_group(name).await?;
            let before = self.load_group(&record.group_id)?.epoch().as_u64();
            self.catch_up_or_resync(&id, &record).await?;
            let record = self.user_group(name).await?;
            Ok::<_, ClientError>(
                record.active && self.load_group(&record.group_id)?.epoch().as_u64() != before,
            )
        };
        match moved.await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::debug!(group = %name, error = %e, "no recovery after a refused commit");
                false
            }
        }
    }

    // Requirement: CL-RESYNC-1
    /// After the DS answered `WRONG_EPOCH` to our message: process the queue (a commit we
    /// had not seen yet), and if the DS is still at a later epoch than ours, nothing queued
    /// can bring us there: resync. The events go to the event store, for the next sync.
    pub(super) async fn catch_up_or_resync(
        &mut self,
        id: &Identity,
        record: &Group,
    ) -> Result<(), ClientError> {
        // The DS can be at a later epoch than our queue shows for a moment: another
        // member's commit is stored before its fan-out reaches our queue. So the queue is
        // processed again, a few times with a pause, before we conclude that nothing
        // queued can bring us there and resync (a needless resync under concurrent
        // commits costs the other members the messages of the epochs it skips).
        for attempt in 0..CATCH_UP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(CATCH_UP_PAUSE).await;
            }
            self.pull_into_events(id).await?;
            let Some(record) = self.store.group_by_id(&record.group_id).await? else {
                return Ok(());
            };
            if !record.active {
                return Ok(());
            }
            let ours = self.load_group(&record.group_id)?.epoch().as_u64();
            if self.ds_epoch(id, &record).await? <= ours {
                return Ok(());
            }
        }
        let Some(record) = self.store.group_by_id(&record.group_id).await? else {
            return Ok(());
        };
        let event = self.resync_group(id, &record).await?;
        self.store.push_event(&event).await?;
        Ok(())
    }

    /// The epoch of `record`'s group at the DS (its current group info).
    async fn ds_epoch(&self, id: &Identity, record: &Group) -> Result<u64, ClientError> {
        let info: ds::ExternalCommitInfoResponse = self
            .ds_call(
                id,
                &record.group_id,
                ds::EXTERNAL_COMMIT_INFO,
                &ds::ExternalCommitInfoRequest {
                    group_id: VLBytes::new(record.group_id.clone()),
                    ear_key: record.ear_key,
                },
                Signer::Anonymous,
            )
            .await?;
        let MlsMessageBodyIn::GroupInfo(group_info) =
            MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice())
                .map_err(mls_err)?
                .extract()
        else {
            return Err(verification(
                "the DS returned something other than a group info",
            ));
        };
        Ok(group_info.group_context().epoch().as_u64())
    }

    // Requirement: CL-RESYNC-1, DS-RESYNC-1, DS-RESYNC-2
    /// Rejoin `record`'s group by external commit with our own leaf's credential and key.
    /// Returns the `resynced` event.
    pub(super) async fn resync_group(
        &mut self,
        id: &Identity,
        record: &Group,
    ) -> Result<serde_json::Value, ClientError> {
        let old = self.load_group(&record.group_id)?;
        let from_epoch = old.epoch().as_u64();
        let signer = mls::own_signer(&self.provider, &old)?;
        let own_leaf = old
            .own_leaf_node()
            .ok_or_else(|| ClientError::Mls("we are not a member of this group".into()))?;
        let credential = CredentialWithKey {
            credential: own_leaf.credential().clone(),
            signature_key: own_leaf.signature_key().clone(),
        };
        let info: ds::ExternalCommitInfoResponse = self
            .ds_call(
                id,
                &record.group_id,
                ds::EXTERNAL_COMMIT_INFO,
                &ds::ExternalCommitInfoRequest {
                    group_id: VLBytes::new(record.group_id.clone()),
                    ear_key: record.ear_key,
                },
                Signer::Anonymous,
            )
            .await?;
        let message =
            MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice()).map_err(mls_err)?;
        let MlsMessageBodyIn::GroupInfo(group_info) = message.extract() else {
            return Err(verification(
                "the DS returned something other than a group info",
            ));
        };
        let tree =
            RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice()).map_err(mls_err)?;
        // Our leaf index does not move while we are a member. If we were removed meanwhile
        // the DS refuses the resync (no leaf of ours to replace), which is reported.
        let old_leaf = old.own_leaf_index().u32();
        // The old group's state gives way to the new one (same group id in the store).
        let mut old = old;
        old.delete(self.provider.storage()).map_err(mls_err)?;
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(mls::join_config())
            .build_group(&self.provider, group_info, credential)
            .map_err(mls_err)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(mls::capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(mls_err)?
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &signer,
                |_| true,
            )
            .map_err(mls_err)?
            .finalize(&self.provider)
            .map_err(mls_err)?;
        let (commit, _, new_info) = bundle.into_messages();
        let new_info =
            new_info.ok_or_else(|| ClientError::Mls("no group info for the new epoch".into()))?;
        let new_leaf = group.own_leaf_index().u32();
        // The members as the DS has them, each verified as at any join.
        let mut members = Vec::new();
        for member in group.members() {
            let leaf = member.index.u32();
            if leaf == new_leaf {
                continue;
            }
            let encrypted = info
                .credentials
                .iter()
                .find(|c| c.leaf_index == leaf)
                .ok_or_else(|| verification(format!("no credential is known for leaf {leaf}")))?;
            let credential_info = verify::decrypt_credential(
                &SymmetricKey(record.credential_key),
                &record.group_id,
                encrypted.encrypted_credential.as_slice(),
            )?;
            let verified = self
                .verify_info(&credential_info, &member.signature_key, now())
                .await?;
            if record.kind == "connection" {
                // Requirement: ID-PIN-1 (the contact's pinned client only)
                let contact = record.contact.clone().unwrap_or_default();
                let pinned = self.store.contact_clients(&contact).await?;
                if verified.fid != contact
                    || pinned.get(&verified.client_id) != Some(&verified.certificate)
                {
                    return Err(verification(format!(
                        "the connection group with {contact} holds {}, which is not {contact}'s pinned client",
                        verified.fid
                    )));
                }
            }
            members.push(verified.fid);
        }
        let encrypted_credential = Self::encrypt_credential(
            &SymmetricKey(record.credential_key),
            &record.group_id,
            &Self::credential_info(id, signer.public()),
        )?;
        let new_info = new_info.tls_serialize_detached().map_err(mls_err)?;
        let body = crate::api::seal(
            "ds",
            ds::RESYNC,
            &ds::ResyncRequest {
                timestamp: now(),
                group_id: VLBytes::new(record.group_id.clone()),
                ear_key: record.ear_key,
                commit: VLBytes::new(commit.tls_serialize_detached().map_err(mls_err)?),
                group_info: VLBytes::new(new_info.clone()),
                member: MemberInfo {
                    queue_config: Self::seal_queue_config(id)?,
                    encrypted_credential: VLBytes::new(encrypted_credential.clone()),
                },
            },
            Signer::DsLeaf {
                leaf_index: old_leaf,
                key: &signer,
            },
        )?;
        self.send_join_sealed(id, record, ds::RESYNC, &body, &new_info)
            .await?;
        for (leaf, _) in self.store.members(&record.group_id).await? {
            self.store.remove_member(&record.group_id, leaf).await?;
        }
        for c in info.credentials.iter().filter(|c| c.leaf_index != old_leaf) {
            self.store
                .set_member(
                    &record.group_id,
                    c.leaf_index,
                    c.encrypted_credential.as_slice(),
                )
                .await?;
        }
        self.store
            .set_member(&record.group_id, new_leaf, &encrypted_credential)
            .await?;
        let to_epoch = group.epoch().as_u64();
        // Requirement: CL-LOSS-1 (what was missed is a visible gap in the history)
        self.store
            .add_gap(
                &record.group_id,
                now(),
                &format!(
                    "resynced from epoch {from_epoch} into epoch {to_epoch}: messages of the epochs in between that had not arrived were missed"
                ),
            )
            .await?;
        self.save().await?;
        Ok(
            json!({"kind": "resynced", "group": super::display_name(record),
            "from_epoch": from_epoch, "to_epoch": to_epoch, "members": members}),
        )
    }
}
