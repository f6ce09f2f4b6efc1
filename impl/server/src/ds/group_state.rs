//! The DS's per-group state and its encryption at rest.
//!
//! The stored row holds only the group id, a version (for compare-and-swap) and the
//! ciphertext of [`GroupState`] under the group's EAR key (AES-256-GCM, with the format
//! version and the group id bound as associated data, so a ciphertext cannot be replayed
//! under another group id). The EAR key arrives with each request, lives in a
//! [`SymmetricKey`] that is zeroized on drop, and is never stored.
//!
//! The MLS public group is persisted as the entries of openmls's storage provider, so
//! loading it is a decode, not a re-verification of every leaf (design: never rebuild or
//! re-verify an MLS tree on the hot path).

use std::collections::HashMap;
use std::sync::RwLock;

use openmls::prelude::{GroupId, PublicGroup};
use openmls_memory_storage::MemoryStorage;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use phoenix_types::codec;
use phoenix_types::crypto::{self, SymmetricKey};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::QualifiedGroupId;
use phoenix_types::messages::ds::{LeafCredential, MemberInfo};

use crate::server::Server;
use crate::store::{DsStore, OutboxEntry};

/// Version of the [`GroupState`] format; bound into the AEAD associated data.
pub const GROUP_STATE_FORMAT: u16 = 1;

/// Largest group state we decrypt and decode (bytes).
pub const MAX_GROUP_STATE: usize = 16 * 1024 * 1024;

/// The plaintext group state.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GroupState {
    /// openmls storage entries of the public group, sorted by key.
    pub mls: Vec<StorageEntry>,
    /// The latest `GroupInfo` (an encoded `MlsMessage`) uploaded by a committer.
    pub group_info: VLBytes,
    /// Members by leaf index, sorted.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StorageEntry {
    pub key: VLBytes,
    pub value: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Member {
    pub leaf_index: u32,
    pub info: MemberInfo,
}

fn aad(group_id: &[u8]) -> Vec<u8> {
    let mut aad = b"phoenix-v1 group state ".to_vec();
    aad.extend_from_slice(&GROUP_STATE_FORMAT.to_be_bytes());
    aad.extend_from_slice(group_id);
    aad
}

// Requirement: DS-EAR-1
/// Encrypt a group state for storage.
// Requirement: ADV-SNAP-1 (group state at rest is ciphertext under the client-held EAR key)
pub fn seal(key: &SymmetricKey, group_id: &[u8], state: &GroupState) -> Result<Vec<u8>, WireError> {
    let plain = codec::encode(state)?;
    crypto::seal_aead(key, &aad(group_id), &plain, &mut rand_core::OsRng)
        .map_err(|_| WireError::new(ErrorCode::Internal, "group state encryption failed"))
}

/// Decrypt and decode a stored group state. A wrong key is the caller's fault.
pub fn open(
    key: &SymmetricKey,
    group_id: &[u8],
    ciphertext: &[u8],
) -> Result<GroupState, WireError> {
    if ciphertext.len() > MAX_GROUP_STATE {
        return Err(WireError::new(
            ErrorCode::Internal,
            "stored group state is too large",
        ));
    }
    let plain = crypto::open_aead(key, &aad(group_id), ciphertext).map_err(|_| {
        WireError::new(
            ErrorCode::WrongEarKey,
            "the EAR key does not decrypt this group",
        )
    })?;
    codec::decode(&plain, MAX_GROUP_STATE)
        .map_err(|_| WireError::new(ErrorCode::Internal, "stored group state is corrupt"))
}

/// Put storage entries into a fresh openmls memory storage.
pub fn storage_from(entries: &[StorageEntry]) -> MemoryStorage {
    let map: HashMap<Vec<u8>, Vec<u8>> = entries
        .iter()
        .map(|e| (e.key.as_slice().to_vec(), e.value.as_slice().to_vec()))
        .collect();
    MemoryStorage {
        values: RwLock::new(map),
    }
}

/// Dump a memory storage's entries, sorted by key (deterministic ciphertext length and
/// content for equal states).
pub fn entries_of(storage: &MemoryStorage) -> Result<Vec<StorageEntry>, WireError> {
    let map = storage
        .values
        .read()
        .map_err(|_| WireError::new(ErrorCode::Internal, "storage lock poisoned"))?;
    let mut entries: Vec<StorageEntry> = map
        .iter()
        .map(|(k, v)| StorageEntry {
            key: VLBytes::new(k.clone()),
            value: VLBytes::new(v.clone()),
        })
        .collect();
    entries.sort_by(|a, b| a.key.as_slice().cmp(b.key.as_slice()));
    Ok(entries)
}

/// A group loaded for one request.
pub struct LoadedGroup {
    pub qualified_id: QualifiedGroupId,
    pub group_id_bytes: Vec<u8>,
    pub version: u64,
    pub ear_key: SymmetricKey,
    pub state: GroupState,
    pub storage: MemoryStorage,
    pub public_group: PublicGroup,
}

impl std::fmt::Debug for LoadedGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGroup")
            .field("group", &self.qualified_id.to_hex())
            .finish_non_exhaustive()
    }
}

/// Parse a group id from a request and check that this DS hosts it.
pub fn local_group_id(server: &Server, bytes: &[u8]) -> Result<QualifiedGroupId, WireError> {
    let gid = QualifiedGroupId::parse(bytes)
        .map_err(|e| WireError::new(ErrorCode::Malformed, e.to_string()))?;
    if gid.domain() != &server.domain {
        return Err(WireError::new(
            ErrorCode::WrongGroupDomain,
            format!(
                "the group is hosted by {}, not by this server",
                gid.domain()
            ),
        ));
    }
    Ok(gid)
}

impl LoadedGroup {
    /// Load and decrypt a group.
    pub async fn load(
        server: &Server,
        group_id: &[u8],
        ear_key: SymmetricKey,
    ) -> Result<Self, WireError> {
        let qualified_id = local_group_id(server, group_id)?;
        let stored = server
            .store
            .group(group_id)
            .await
            .map_err(server.internal())?
            .ok_or_else(|| WireError::new(ErrorCode::UnknownGroup, "no such group"))?;
        let state = open(&ear_key, group_id, &stored.ciphertext)?;
        let storage = storage_from(&state.mls);
        let public_group = PublicGroup::load(&storage, &GroupId::from_slice(group_id))
            .map_err(|_| WireError::new(ErrorCode::Internal, "stored group state is corrupt"))?
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::Internal,
                    "stored group state lacks the MLS group",
                )
            })?;
        // What loading shows the DS: the group and its members' per-group pseudonyms.
        // Requirement: ADV-OP-2
        observe!(
            std::iter::once(Observed::GroupId(group_id.to_vec()))
                .chain(state.members.iter().flat_map(|m| {
                    [
                        Observed::LeafIndex(m.leaf_index),
                        Observed::sealed_queue_config(&m.info.queue_config),
                        Observed::encrypted_credential(m.info.encrypted_credential.as_slice()),
                    ]
                }))
                .chain(
                    public_group
                        .members()
                        .flat_map(|m| Observed::leaf(&m.signature_key, &m.credential))
                )
        );
        Ok(Self {
            qualified_id,
            group_id_bytes: group_id.to_vec(),
            version: stored.version,
            ear_key,
            state,
            storage,
            public_group,
        })
    }

    // Requirement: DS-EPOCH-1, DS-FAN-1
    /// Re-encrypt and store the state if nobody else changed the group since it was
    /// loaded, together with the fan-out in the outbox. A lost race is `WRONG_EPOCH`.
    pub async fn save(
        mut self,
        server: &Server,
        now: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), WireError> {
        self.state.mls = entries_of(&self.storage)?;
        let ciphertext = seal(&self.ear_key, &self.group_id_bytes, &self.state)?;
        let stored = server
            .store
            .update_group(&self.group_id_bytes, self.version, &ciphertext, now, outbox)
            .await
            .map_err(server.internal())?;
        let Some(outbox_ids) = stored else {
            return Err(WireError::new(
                ErrorCode::WrongEpoch,
                "the group moved to a newer epoch concurrently; fetch the latest messages and retry",
            ));
        };
        crate::outbox::deliver_now(server, &outbox_ids).await;
        Ok(())
    }

    pub fn member(&self, leaf_index: u32) -> Option<&Member> {
        self.state
            .members
            .iter()
            .find(|m| m.leaf_index == leaf_index)
    }

    /// Every member's encrypted credential.
    pub fn credentials(&self) -> Vec<LeafCredential> {
        self.state
            .members
            .iter()
            .map(|m| LeafCredential {
                leaf_index: m.leaf_index,
                encrypted_credential: m.info.encrypted_credential.clone(),
            })
            .collect()
    }

    /// Replace or insert a member entry, keeping the list sorted by leaf index.
    pub fn set_member(&mut self, leaf_index: u32, info: MemberInfo) {
        self.state.members.retain(|m| m.leaf_index != leaf_index);
        self.state.members.push(Member { leaf_index, info });
        self.state.members.sort_by_key(|m| m.leaf_index);
    }
}
