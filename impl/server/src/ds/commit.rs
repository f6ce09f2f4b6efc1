//! The commit pipeline shared by every operation that changes a group's epoch: decode the
//! commit, check it targets this group's current epoch, validate it with openmls as a
//! receiving member would, let the operation inspect the staged commit, merge it, and
//! check the committer's new `GroupInfo` against the merged state.

use openmls::messages::group_info::{GroupInfo, VerifiableGroupInfo};
use openmls::prelude::{
    ContentType, LeafNodeIndex, OpenMlsSignaturePublicKey, ProcessedMessageContent,
    ProtocolMessage, Sender, StagedCommit, Verifiable,
};
use openmls_rust_crypto::RustCrypto;
use tls_codec::Serialize;

use phoenix_types::error::{ErrorCode, WireError};

use crate::ds::decode;
use crate::ds::group_state::LoadedGroup;

pub use crate::ds::decode::MAX_MLS_MESSAGE;

fn invalid(code: ErrorCode, detail: impl Into<String>) -> WireError {
    WireError::new(code, detail)
}

// Requirement: DS-EPOCH-1, DS-EPOCH-2
/// Decode a TLS-encoded `MlsMessage` carrying a public or private message of this group.
pub fn protocol_message(group: &LoadedGroup, bytes: &[u8]) -> Result<ProtocolMessage, WireError> {
    let protocol = decode::protocol_message(bytes)?;
    if protocol.group_id() != group.public_group.group_id() {
        return Err(invalid(
            ErrorCode::InvalidMlsMessage,
            "message is for another group",
        ));
    }
    // Requirement: ADV-REPLAY-1 (a replayed commit is for an epoch that is gone)
    if protocol.epoch() != group.public_group.group_context().epoch() {
        return Err(invalid(
            ErrorCode::WrongEpoch,
            format!(
                "message is for epoch {}, the group is at epoch {}",
                protocol.epoch().as_u64(),
                group.public_group.group_context().epoch().as_u64()
            ),
        ));
    }
    Ok(protocol)
}

/// A validated, not yet merged commit.
pub struct Staged {
    pub commit: StagedCommit,
    pub sender: Sender,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

// Requirement: DS-COMMIT-1
/// Validate a commit against the group's current state.
pub fn stage(group: &LoadedGroup, commit_bytes: &[u8]) -> Result<Staged, WireError> {
    let protocol = protocol_message(group, commit_bytes)?;
    if !matches!(protocol, ProtocolMessage::PublicMessage(_)) {
        return Err(invalid(
            ErrorCode::InvalidCommit,
            "commits must be sent as public messages",
        ));
    }
    if protocol.content_type() != ContentType::Commit {
        return Err(invalid(ErrorCode::InvalidCommit, "expected a commit"));
    }
    let processed = group
        .public_group
        .process_message(&RustCrypto::default(), protocol)
        .map_err(|e| invalid(ErrorCode::InvalidCommit, format!("commit rejected: {e}")))?;
    let sender = processed.sender().clone();
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(commit) => Ok(Staged {
            commit: *commit,
            sender,
        }),
        _ => Err(invalid(ErrorCode::InvalidCommit, "expected a commit")),
    }
}

/// Merge a staged commit into the group.
pub fn merge(group: &mut LoadedGroup, staged: Staged) -> Result<(), WireError> {
    group
        .public_group
        .merge_commit(&group.storage, staged.commit)
        .map_err(|_| invalid(ErrorCode::Internal, "merging the commit failed"))
}

/// The leaf index of the member whose signature key is `key`, in the current tree.
pub fn leaf_of_signature_key(group: &LoadedGroup, key: &[u8]) -> Option<u32> {
    group
        .public_group
        .members()
        .find(|m| m.signature_key == key)
        .map(|m| m.index.u32())
}

/// Check that `bytes` is a `GroupInfo` for the group's current (merged) state, signed by
/// the member at `signer`, and store it for external joiners.
pub fn accept_group_info(
    group: &mut LoadedGroup,
    bytes: &[u8],
    signer: u32,
) -> Result<(), WireError> {
    let info = decode::group_info(bytes)?;
    verify_group_info(group, info, signer)?;
    group.state.group_info = tls_codec::VLBytes::new(bytes.to_vec());
    Ok(())
}

fn verify_group_info(
    group: &LoadedGroup,
    info: VerifiableGroupInfo,
    signer: u32,
) -> Result<GroupInfo, WireError> {
    let ours = group
        .public_group
        .group_context()
        .tls_serialize_detached()
        .map_err(|_| invalid(ErrorCode::Internal, "encoding failed"))?;
    let theirs = info
        .group_context()
        .tls_serialize_detached()
        .map_err(|_| invalid(ErrorCode::InvalidGroupInfo, "malformed group context"))?;
    if ours != theirs {
        return Err(invalid(
            ErrorCode::InvalidGroupInfo,
            "group info does not match the group's new state",
        ));
    }
    if info.extensions().external_pub().is_none() {
        return Err(invalid(
            ErrorCode::InvalidGroupInfo,
            "group info lacks the external_pub extension",
        ));
    }
    let leaf = group
        .public_group
        .leaf(LeafNodeIndex::new(signer))
        .ok_or_else(|| {
            invalid(
                ErrorCode::InvalidGroupInfo,
                "group info signer is not a member",
            )
        })?;
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        leaf.signature_key().clone(),
        group.public_group.ciphersuite().signature_algorithm(),
    );
    info.verify(&RustCrypto::default(), &key).map_err(|_| {
        invalid(
            ErrorCode::InvalidGroupInfo,
            "group info signature does not verify with the committer's key",
        )
    })
}
