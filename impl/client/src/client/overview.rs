//! What the CLI shows about the user's groups and own messages: the group list with
//! member and unread counts (`phoenix groups`), the read mark that `phoenix history`
//! moves, and the history entry of a message this client sent.

use openmls::prelude::MlsGroup;

use phoenix_types::ids::Fid;

use super::Client;
use crate::error::{ClientError, usage};
use crate::store::{Group, StoredMessage};

/// One of the user's groups as `phoenix groups` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSummary {
    pub name: String,
    /// Members (clients' leaves) in the group now, this client included.
    pub members: usize,
    /// False once this client was removed.
    pub active: bool,
    /// Messages received since the user last ran `phoenix history` for the group (own
    /// messages never count).
    pub unread: u64,
}

impl Client {
    // Requirement: CLI-GROUPS-1
    /// The user's groups (not the connection groups), sorted by name, with their member
    /// counts and unread counts.
    pub async fn groups_overview(&self) -> Result<Vec<GroupSummary>, ClientError> {
        let mut out = Vec::new();
        for (name, members, active) in self.group_list().await? {
            let record = self.user_group(&name).await?;
            out.push(GroupSummary {
                unread: self.store.unread(&record.group_id).await?,
                name,
                members,
                active,
            });
        }
        Ok(out)
    }

    // Requirement: CLI-GROUPS-1
    /// Mark every message of group `name` read (what `phoenix history` does after showing
    /// them).
    pub async fn mark_read(&self, name: &str) -> Result<(), ClientError> {
        let record = self.user_group(name).await?;
        self.store.mark_read(&record.group_id).await
    }

    // Requirement: CLI-HIST-1
    /// The history entry of a message this client sent in `record` at `at`: with its own
    /// leaf's key and credential, so that `history` verifies it like any other message.
    pub(super) async fn own_message(
        &self,
        record: &Group,
        text: &str,
        at: u64,
    ) -> Result<StoredMessage, ClientError> {
        let group: MlsGroup = self.load_group(&record.group_id)?;
        let leaf = group.own_leaf_index().u32();
        let (sender_leaf_key, encrypted_credential) = self
            .member_at(record, &group, leaf, group.epoch().as_u64())
            .await
            .unwrap_or_default();
        Ok(StoredMessage {
            group_id: record.group_id.clone(),
            received_at: at,
            sender_leaf: leaf,
            sender_leaf_key,
            encrypted_credential,
            text: text.to_owned(),
            own: true,
        })
    }
}

impl Client {
    // Requirement: CLI-ERR-2
    /// A connection request refused for want of a connection package: when `fid`'s home
    /// server does not know the user at all (its public `idcert/actor` route answers
    /// `UNKNOWN_USER`), say there is no such user.
    pub(super) async fn explain_connect_error(
        &self,
        fid: &str,
        result: Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let Err(error) = result else {
            return Ok(());
        };
        if error.code() != Some("NO_CONNECTION_PACKAGE") {
            return Err(error);
        }
        let Ok(target) = Fid::parse(fid) else {
            return Err(error);
        };
        let id = self.identity().await?;
        let Ok(api) = self.api_for(&id, target.domain().as_str()).await else {
            return Err(error);
        };
        match api
            .get_json(&format!("/.p2/core/v1/idcert/actor/{target}"))
            .await
        {
            Err(e) if e.code() == Some("UNKNOWN_USER") => Err(usage(format!(
                "there is no user {target}: the server of {} does not know them (check the \
                 spelling)",
                target.domain()
            ))),
            _ => Err(error),
        }
    }
}
