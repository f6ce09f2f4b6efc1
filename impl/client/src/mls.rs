//! openmls glue: a provider whose storage is loaded from and saved to the local store,
//! and the group settings Phoenix uses.
//!
//! Phoenix settings: ciphersuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (the MTI
//! suite); handshake messages are sent as public messages so the DS can validate them,
//! application messages are always private; leaves carry a random pseudonym as a basic
//! credential and a fresh signature key per group, so the DS cannot link a client's leaves.

use std::collections::HashMap;
use std::sync::RwLock;

use openmls::group::LeafNodeLifetimePolicy;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, ProtocolMessage, RatchetTreeIn, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rand_core::{OsRng, RngCore};
use tls_codec::Deserialize;

use crate::error::{ClientError, mls_err, verification};

pub use phoenix_types::mls_profile::{CIPHERSUITE, MAX_PAST_EPOCHS};

/// An openmls provider over an in-memory copy of the stored openmls state.
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Provider")
    }
}

impl Provider {
    pub fn from_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: RwLock::new(values),
            },
        }
    }

    pub fn values(&self) -> Result<HashMap<Vec<u8>, Vec<u8>>, ClientError> {
        self.storage
            .values
            .read()
            .map(|v| v.clone())
            .map_err(|_| ClientError::Store("openmls storage lock poisoned".into()))
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

pub use phoenix_types::mls_profile::{
    capabilities, create_config, join_config, join_config_builder,
};

/// A fresh leaf signature key (stored in the provider so it can be found again by its
/// public key) and a pseudonymous credential for it.
pub fn new_leaf(provider: &Provider) -> Result<(SignatureKeyPair, CredentialWithKey), ClientError> {
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls_err)?;
    signer.store(provider.storage()).map_err(mls_err)?;
    let mut pseudonym = vec![0u8; 16];
    OsRng.fill_bytes(&mut pseudonym);
    let credential = CredentialWithKey {
        credential: BasicCredential::new(pseudonym).into(),
        signature_key: signer.public().into(),
    };
    Ok((signer, credential))
}

/// The signer of our own leaf in `group`.
pub fn own_signer(provider: &Provider, group: &MlsGroup) -> Result<SignatureKeyPair, ClientError> {
    let leaf = group
        .own_leaf_node()
        .ok_or_else(|| ClientError::Mls("we are not a member of this group".into()))?;
    SignatureKeyPair::read(
        provider.storage(),
        leaf.signature_key().as_slice(),
        CIPHERSUITE.signature_algorithm(),
    )
    .ok_or_else(|| ClientError::Mls("the key of our leaf is missing from the local store".into()))
}

// Requirement: VEC-3
/// Join a group from a `Welcome` (an encoded `MLSMessage`) with the key package whose
/// private keys are in `provider`'s storage: decrypt the group secrets, take the ratchet
/// tree from `ratchet_tree` (an encoded ratchet tree sent alongside, as the DS does) or
/// else from the group info's `ratchet_tree` extension, verify the tree and the group info
/// as openmls does, and return the group at the welcome's epoch. External PSKs the welcome
/// names must be in the provider's storage already.
///
/// `lifetimes` is [`LeafNodeLifetimePolicy::Verify`] for every invitation: leaves whose
/// lifetime has ended are refused. Only a replay of a recorded group (the MLS working
/// group's vectors, whose leaves expired after they were generated) skips that check.
///
/// The caller decides whether to trust the group (who invited us, with which attribution):
/// this is the MLS part only. The MLS working group's passive-client vectors join through
/// it (`tests/mls_vectors.rs`).
pub fn join_from_welcome(
    provider: &Provider,
    config: &MlsGroupJoinConfig,
    welcome: &[u8],
    ratchet_tree: Option<&[u8]>,
    lifetimes: LeafNodeLifetimePolicy,
) -> Result<MlsGroup, ClientError> {
    let welcome = match MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(mls_err)?
        .extract()
    {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => return Err(verification("the welcome bundle holds no welcome")),
    };
    let tree = ratchet_tree
        .map(RatchetTreeIn::tls_deserialize_exact)
        .transpose()
        .map_err(mls_err)?;
    let mut join = StagedWelcome::build_from_welcome(provider, config, welcome).map_err(mls_err)?;
    if let Some(tree) = tree {
        join = join.with_ratchet_tree(tree);
    }
    if lifetimes == LeafNodeLifetimePolicy::Skip {
        join = join.skip_lifetime_validation();
    }
    join.build()
        .map_err(mls_err)?
        .into_group(provider)
        .map_err(mls_err)
}

// Requirement: VEC-3
/// Decode an incoming `MLSMessage` that must be a public or private message of a group
/// (a commit, a proposal or an application message), for `MlsGroup::process_message`.
pub fn protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, ClientError> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(mls_err)?
        .try_into_protocol_message()
        .map_err(mls_err)
}
