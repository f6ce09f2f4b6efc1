//! Crypto building blocks, all on the MLS mandatory-to-implement primitives:
//! - labelled Ed25519 signatures over exact bytes ([`sign`], [`verify`]); every signed
//!   structure has its own label so a signature can never be reused for another type;
//! - AES-256-GCM for data at rest and for client-to-client encrypted blobs, with the
//!   context bound as associated data ([`seal_aead`], [`open_aead`]);
//! - HPKE (X25519, HKDF-SHA256, AES-128-GCM) to seal queue configs and connection
//!   establishment packages to a public key ([`hpke_seal`], [`hpke_open`]).
//!
//! Keys are zeroized on drop; secrets are compared in constant time ([`ct_eq`]).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Crypto failures. None of them carries secret material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed public key")]
    BadPublicKey,
    #[error("decryption failed")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// Signature labels: one per signed structure.
pub mod label {
    // Requests are signed under their operation label, "<service>/<operation>"
    // (see `messages::operation_label`).
    pub const CONNECTION_PACKAGE: &str = "connection package";
    pub const CONNECTION_ESTABLISHMENT: &str = "connection establishment package";
    pub const LEAF_BINDING: &str = "leaf binding";
    pub const WELCOME_ATTRIBUTION: &str = "welcome attribution info";
}

const SIGNATURE_PREFIX: &[u8] = b"phoenix-v1 ";

/// The message a labelled signature is made over: `"phoenix-v1 " || label || 0x00 ||
/// payload`. Public so that signers held elsewhere (openmls key pairs) sign the same bytes.
pub fn labelled(label: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_PREFIX.len() + label.len() + 1 + payload.len());
    msg.extend_from_slice(SIGNATURE_PREFIX);
    msg.extend_from_slice(label.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

/// Sign `payload` under `label`.
pub fn sign(key: &SigningKey, label: &str, payload: &[u8]) -> [u8; 64] {
    key.sign(&labelled(label, payload)).to_bytes()
}

/// Verify a labelled signature with strict Ed25519 verification (no malleable signatures,
/// no weak keys).
pub fn verify(
    public_key: &[u8],
    label: &str,
    payload: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let key = verifying_key(public_key)?;
    let signature = Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
    key.verify_strict(&labelled(label, payload), &signature)
        .map_err(|_| CryptoError::BadSignature)
}

pub fn verifying_key(public_key: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let bytes: [u8; 32] = public_key
        .try_into()
        .map_err(|_| CryptoError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| CryptoError::BadPublicKey)?;
    if key.is_weak() {
        return Err(CryptoError::BadPublicKey);
    }
    Ok(key)
}

/// A fresh Ed25519 signing key.
pub fn generate_signing_key(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::generate(rng)
}

/// Constant-time equality for secrets of equal public length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A 256-bit symmetric key (group-state EAR key, credential encryption key, friendship
/// encryption key). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SymmetricKey(pub [u8; 32]);

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKey(***)")
    }
}

impl SymmetricKey {
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self(key)
    }
}

const NONCE_LEN: usize = 12;

/// AES-256-GCM with a random 96-bit nonce prepended to the ciphertext. `aad` binds the
/// ciphertext to its context (for the group state: the group id and the format version).
pub fn seal_aead(
    key: &SymmetricKey,
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| CryptoError::Encrypt)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Inverse of [`seal_aead`].
pub fn open_aead(key: &SymmetricKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| CryptoError::Decrypt)?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

/// AES-256-GCM under a key that seals exactly one message (so a fixed nonce is safe), the
/// nonce given by the caller; the output is ciphertext and tag only.
pub fn seal_aead_with_nonce(
    key: &SymmetricKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| CryptoError::Encrypt)?;
    cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)
}

/// Inverse of [`seal_aead_with_nonce`].
pub fn open_aead_with_nonce(
    key: &SymmetricKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(&key.0).map_err(|_| CryptoError::Decrypt)?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| CryptoError::Decrypt)
}

// Requirement: DS-EAR-1
// The AES key schedule inside every AES-GCM instance (whose first round keys are the key
// itself) is zeroized when the instance is dropped: this does not compile without the
// `zeroize` feature of `aes` (turned on in the workspace manifest, with those of `ghash` and
// `polyval` for the GHASH key, which have no marker trait to assert).
const _: fn() = || {
    fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
    zeroized_on_drop::<aes::Aes256>();
};

/// The HPKE suite used for everything Phoenix seals outside MLS.
pub const HPKE: HpkeConfig = HpkeConfig(
    HpkeKemType::DhKem25519,
    HpkeKdfType::HkdfSha256,
    HpkeAeadType::AesGcm128,
);

/// An X25519 HPKE key pair. The private half is zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HpkeKeyPair {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public", &hex::encode(&self.public))
            .finish()
    }
}

impl HpkeKeyPair {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, CryptoError> {
        let mut ikm = [0u8; 32];
        rng.fill_bytes(&mut ikm);
        let pair = RustCrypto::default()
            .derive_hpke_keypair(HPKE, &ikm)
            .map_err(|_| CryptoError::Encrypt)?;
        ikm.zeroize();
        Ok(Self {
            private: pair.private.to_vec(),
            public: pair.public,
        })
    }
}

/// HPKE base-mode seal. `info` names the purpose (domain separation), `aad` the context.
pub fn hpke_seal(
    public_key: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<HpkeCiphertext, CryptoError> {
    RustCrypto::default()
        .hpke_seal(HPKE, public_key, info, aad, plaintext)
        .map_err(|_| CryptoError::Encrypt)
}

/// HPKE base-mode open.
pub fn hpke_open(
    private_key: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &HpkeCiphertext,
) -> Result<Vec<u8>, CryptoError> {
    RustCrypto::default()
        .hpke_open(HPKE, ciphertext, private_key, info, aad)
        .map_err(|_| CryptoError::Decrypt)
}

/// HPKE `info` strings.
pub mod hpke_info {
    pub const QUEUE_CONFIG: &[u8] = b"phoenix-v1 sealed queue config";
    pub const CONNECTION_ESTABLISHMENT: &[u8] = b"phoenix-v1 connection establishment";
    /// A client's push endpoint, sealed by the QS to its own queue-config key (aad = the
    /// QS client id) before it is stored.
    pub const PUSH_ENDPOINT: &[u8] = b"phoenix-v1 push endpoint";
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;

    #[test]
    fn labels_separate_signatures() {
        let key = generate_signing_key(&mut OsRng);
        let pk = key.verifying_key().to_bytes();
        let sig = sign(&key, "as/register", b"payload");
        assert!(verify(&pk, "as/register", b"payload", &sig).is_ok());
        assert_eq!(
            verify(&pk, "ds/send_message", b"payload", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "as/register", b"payloaD", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&pk[..31], "as/register", b"payload", &sig),
            Err(CryptoError::BadPublicKey)
        );
    }

    #[test]
    fn aead_binds_aad() {
        let key = SymmetricKey::random(&mut OsRng);
        let sealed = seal_aead(&key, b"group-a", b"state", &mut OsRng).unwrap();
        assert_eq!(open_aead(&key, b"group-a", &sealed).unwrap(), b"state");
        assert_eq!(
            open_aead(&key, b"group-b", &sealed),
            Err(CryptoError::Decrypt)
        );
        let other = SymmetricKey::random(&mut OsRng);
        assert_eq!(
            open_aead(&other, b"group-a", &sealed),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            open_aead(&key, b"group-a", &sealed[..10]),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn hpke_roundtrip() {
        let pair = HpkeKeyPair::generate(&mut OsRng).unwrap();
        let ct = hpke_seal(&pair.public, hpke_info::QUEUE_CONFIG, b"aad", b"secret").unwrap();
        assert_eq!(
            hpke_open(&pair.private, hpke_info::QUEUE_CONFIG, b"aad", &ct).unwrap(),
            b"secret"
        );
        assert!(
            hpke_open(
                &pair.private,
                hpke_info::CONNECTION_ESTABLISHMENT,
                b"aad",
                &ct
            )
            .is_err()
        );
    }
}
