//! openmls glue: a provider whose storage is loaded from and saved to the local store,
//! and the group settings Phoenix uses.
//!
//! Phoenix settings: ciphersuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (the MTI
//! suite); handshake messages are sent as public messages so the DS can validate them,
//! application messages are always private; leaves carry a random pseudonym as a basic
//! credential and a fresh signature key per group, so the DS cannot link a client's leaves.

use std::collections::HashMap;
use std::sync::RwLock;

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rand_core::{OsRng, RngCore};

use phoenix_types::messages::qs::QUEUE_CONFIG_EXTENSION_TYPE;

use crate::error::{ClientError, mls_err};

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member can still decrypt messages of (messages sent just before
/// a commit arrive after it).
const MAX_PAST_EPOCHS: usize = 5;

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

/// Leaf capabilities: the Phoenix queue config extension and last-resort key packages.
pub fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(QUEUE_CONFIG_EXTENSION_TYPE),
            ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .capabilities(capabilities())
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

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
