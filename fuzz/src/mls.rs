//! The client side of MLS for the stateful targets: Phoenix's group settings (as the
//! client library uses them), key packages with a sealed queue config, and sealing queue
//! configs to the in-process QS.

use openmls::prelude::{
    BasicCredential, CredentialWithKey, Extension, Extensions, KeyPackage, UnknownExtension,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tls_codec::Serialize;

use phoenix_types::codec;
use phoenix_types::crypto::{self, hpke_info};
use phoenix_types::messages::qs::{QUEUE_CONFIG_EXTENSION_TYPE, QueueConfig, SealedQueueConfig};

/// An openmls provider with in-memory storage.
pub type Provider = OpenMlsRustCrypto;

pub use phoenix_types::mls_profile::{CIPHERSUITE, capabilities, create_config, join_config};

/// A fresh leaf signature key (stored in the provider) and a pseudonymous credential.
pub fn new_leaf(provider: &Provider, pseudonym: &[u8]) -> (SignatureKeyPair, CredentialWithKey) {
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("a signature key");
    signer
        .store(openmls_traits::OpenMlsProvider::storage(provider))
        .expect("stored");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(pseudonym.to_vec()).into(),
        signature_key: signer.public().into(),
    };
    (signer, credential)
}

/// Seal a queue config naming `client_id` to the QS key `public_key` of `domain`.
pub fn seal_queue_config(
    public_key: &[u8],
    domain: &str,
    client_id: [u8; 16],
) -> SealedQueueConfig {
    let plain = codec::encode(&QueueConfig { client_id }).expect("queue config");
    SealedQueueConfig {
        qs_domain: domain.to_owned(),
        sealed: crypto::hpke_seal(
            public_key,
            hpke_info::QUEUE_CONFIG,
            domain.as_bytes(),
            &plain,
        )
        .expect("sealed"),
    }
}

/// A key package carrying `extension` (the encoded sealed queue config, or anything
/// else) in the queue config extension, optionally last-resort.
pub fn key_package(
    provider: &Provider,
    extension: Option<Vec<u8>>,
    last_resort: bool,
) -> (KeyPackage, SignatureKeyPair) {
    let (signer, credential) = new_leaf(provider, b"fuzz key package");
    let extensions = match extension {
        Some(bytes) => Extensions::single(Extension::Unknown(
            QUEUE_CONFIG_EXTENSION_TYPE,
            UnknownExtension(bytes),
        ))
        .expect("extensions"),
        None => Extensions::empty(),
    };
    let mut builder = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .key_package_extensions(extensions);
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(CIPHERSUITE, provider, &signer, credential)
        .expect("a key package");
    (bundle.key_package().clone(), signer)
}

/// The TLS encoding of an MLS value.
pub fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    value.tls_serialize_detached().expect("MLS values encode")
}
