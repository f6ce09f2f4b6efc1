//! The DS's per-group state and its encryption at rest.
//!
//! The stored row holds only the group id, a version (for compare-and-swap) and the
//! sealed [`GroupState`] under the group's EAR key: `epoch (u64) || key check (32 bytes)
//! || AES-256-GCM(nonce || ciphertext)`. The associated data binds the format version,
//! the row's version, the MLS epoch and the group id, so a ciphertext cannot be replayed
//! under another group id nor, in the same group, at another version: a row rolled back
//! to an older ciphertext (a restored snapshot) is refused with `GROUP_STATE_INVALID`
//! instead of being taken for the current state. The key check (a hash of the key and the
//! group id) tells a client's wrong key (`WRONG_EAR_KEY`, the client's fault) apart from
//! a row that is not the one sealed for its version (the server's fault). The EAR key
//! arrives with each request, lives in a [`SymmetricKey`] that is zeroized on drop, and
//! is never stored.
//!
//! The MLS public group is persisted as the entries of openmls's storage provider, so
//! loading it is a decode, not a re-verification of every leaf (design: never rebuild or
//! re-verify an MLS tree on the hot path).

use std::collections::HashMap;
use std::sync::RwLock;

use openmls::prelude::{GroupId, PublicGroup};
use openmls_memory_storage::MemoryStorage;
use sha2::{Digest, Sha256};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};
use zeroize::Zeroize;

use phoenix_types::codec;
use phoenix_types::crypto::{self, SymmetricKey};
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::ids::QualifiedGroupId;
use phoenix_types::messages::ds::{LeafCredential, MemberInfo};

use crate::server::Server;
use crate::store::{DsStore, OutboxEntry, ReplayRecord};

/// Version of the sealed [`GroupState`] format; bound into the AEAD associated data.
/// Format 2 (version and epoch bound, key check) replaced format 1 (group id only); rows
/// of format 1 do not open (there are no deployments to migrate).
pub const GROUP_STATE_FORMAT: u16 = 2;

/// Length of the clear header of a sealed group state: the epoch and the key check.
const HEADER_LEN: usize = 8 + 32;

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

// Requirement: DS-EAR-3
/// The associated data of a sealed state: fixed-length fields first, the group id last.
fn aad(group_id: &[u8], version: u64, epoch: u64) -> Vec<u8> {
    let mut aad = b"phoenix-v1 group state ".to_vec();
    aad.extend_from_slice(&GROUP_STATE_FORMAT.to_be_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(group_id);
    aad
}

/// A commitment to the EAR key of a group: lets the DS tell a wrong key from a state that
/// does not open at its version. Reveals nothing of the key (SHA-256 preimage).
// Requirement: DS-EAR-1 (hashed in place: no heap copy of the key. A buffer built with
// `extend_from_slice` grew by reallocation, and a reallocation that moves leaves the key
// behind in freed memory.)
fn key_check(key: &SymmetricKey, group_id: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"phoenix-v1 group state key check\0")
        .chain_update(key.0)
        .chain_update(group_id)
        .finalize()
        .into()
}

// Requirement: DS-EAR-1, DS-EAR-3
/// Encrypt a group state for storage as the row's `version`, at MLS `epoch`.
// Requirement: ADV-SNAP-1 (group state at rest is ciphertext under the client-held EAR key)
pub fn seal(
    key: &SymmetricKey,
    group_id: &[u8],
    version: u64,
    epoch: u64,
    state: &GroupState,
) -> Result<Vec<u8>, WireError> {
    let mut plain = codec::encode(state)?;
    let sealed = crypto::seal_aead(
        key,
        &aad(group_id, version, epoch),
        &plain,
        &mut rand_core::OsRng,
    )
    .map_err(|_| WireError::new(ErrorCode::Internal, "group state encryption failed"));
    plain.zeroize();
    let sealed = sealed?;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&key_check(key, group_id));
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn not_this_version() -> WireError {
    WireError::new(
        ErrorCode::GroupStateInvalid,
        "the stored group state is not the one sealed for its version (rolled back or \
         altered in the server's storage); nothing was changed",
    )
}

// Requirement: DS-EAR-1, DS-EAR-3
/// Decrypt and decode the stored group state of row `version`; returns it with the epoch
/// it was sealed at. A wrong key is the caller's fault (`WRONG_EAR_KEY`); a ciphertext
/// that the right key does not open as this version is the server's
/// (`GROUP_STATE_INVALID`).
pub fn open(
    key: &SymmetricKey,
    group_id: &[u8],
    version: u64,
    sealed: &[u8],
) -> Result<(GroupState, u64), WireError> {
    if sealed.len() > MAX_GROUP_STATE {
        return Err(WireError::new(
            ErrorCode::Internal,
            "stored group state is too large",
        ));
    }
    let (Some(epoch), Some(check), Some(ciphertext)) = (
        sealed.get(..8),
        sealed.get(8..HEADER_LEN),
        sealed.get(HEADER_LEN..),
    ) else {
        return Err(not_this_version());
    };
    if !crypto::ct_eq(check, &key_check(key, group_id)) {
        return Err(WireError::new(
            ErrorCode::WrongEarKey,
            "the EAR key does not decrypt this group",
        ));
    }
    let mut epoch_bytes = [0u8; 8];
    epoch_bytes.copy_from_slice(epoch);
    let epoch = u64::from_be_bytes(epoch_bytes);
    let mut plain = crypto::open_aead(key, &aad(group_id, version, epoch), ciphertext)
        .map_err(|_| not_this_version())?;
    let state = codec::decode(&plain, MAX_GROUP_STATE)
        .map_err(|_| WireError::new(ErrorCode::Internal, "stored group state is corrupt"));
    plain.zeroize();
    Ok((state?, epoch))
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
        let (state, epoch) = open(&ear_key, group_id, stored.version, &stored.ciphertext)?;
        let storage = storage_from(&state.mls);
        let public_group = PublicGroup::load(&storage, &GroupId::from_slice(group_id))
            .map_err(|_| WireError::new(ErrorCode::Internal, "stored group state is corrupt"))?
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::Internal,
                    "stored group state lacks the MLS group",
                )
            })?;
        // Requirement: DS-EAR-3
        if public_group.group_context().epoch().as_u64() != epoch {
            return Err(not_this_version());
        }
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
    /// loaded, together with the fan-out in the outbox and the request's replay record
    /// (ADV-REPLAY-3: `REPLAYED` if it was recorded). A lost race is `WRONG_EPOCH`.
    pub async fn save(
        mut self,
        server: &Server,
        now: u64,
        outbox: &[OutboxEntry],
        replay: &ReplayRecord,
    ) -> Result<(), WireError> {
        self.state.mls = entries_of(&self.storage)?;
        // Requirement: DS-EAR-3 (sealed as the version the compare-and-swap writes)
        let next_version = self
            .version
            .checked_add(1)
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "group version overflow"))?;
        let ciphertext = seal(
            &self.ear_key,
            &self.group_id_bytes,
            next_version,
            self.public_group.group_context().epoch().as_u64(),
            &self.state,
        )?;
        let stored = server
            .store
            .update_group(
                &self.group_id_bytes,
                self.version,
                &ciphertext,
                now,
                outbox,
                replay,
            )
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test: a failure to set up is a test failure"
)]
mod tests {
    use super::*;

    fn state() -> GroupState {
        GroupState {
            mls: Vec::new(),
            group_info: VLBytes::new(b"info".to_vec()),
            members: Vec::new(),
        }
    }

    fn code(result: Result<(GroupState, u64), WireError>) -> ErrorCode {
        match result {
            Ok(_) => ErrorCode::Internal,
            Err(e) => e.code,
        }
    }

    // Requirement: DS-EAR-1, DS-EAR-3
    /// A sealed state opens only as the version and under the group id it was sealed for,
    /// with the epoch it was sealed at; a wrong key is told apart from a state of another
    /// version, and a tampered header does not open.
    #[test]
    fn sealed_state_binds_version_epoch_and_group() {
        let key = SymmetricKey([1; 32]);
        let sealed = seal(&key, b"group-a", 7, 3, &state()).unwrap();
        assert_eq!(open(&key, b"group-a", 7, &sealed).unwrap(), (state(), 3));
        // An older (or newer) row version: the server's fault.
        assert_eq!(
            code(open(&key, b"group-a", 8, &sealed)),
            ErrorCode::GroupStateInvalid
        );
        assert_eq!(
            code(open(&key, b"group-a", 6, &sealed)),
            ErrorCode::GroupStateInvalid
        );
        // Another key, or another group (whose key check differs): the caller's fault.
        assert_eq!(
            code(open(&SymmetricKey([2; 32]), b"group-a", 7, &sealed)),
            ErrorCode::WrongEarKey
        );
        assert_eq!(
            code(open(&key, b"group-b", 7, &sealed)),
            ErrorCode::WrongEarKey
        );
        // The epoch in the clear header is bound: changing it does not open.
        let mut other_epoch = sealed.clone();
        if let Some(byte) = other_epoch.get_mut(7) {
            *byte ^= 1;
        }
        assert_eq!(
            code(open(&key, b"group-a", 7, &other_epoch)),
            ErrorCode::GroupStateInvalid
        );
        // Too short to hold the header.
        assert_eq!(
            code(open(&key, b"group-a", 7, &sealed[..HEADER_LEN - 1])),
            ErrorCode::GroupStateInvalid
        );
    }
}
