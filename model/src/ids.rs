//! Identifiers and symbolic cryptography.
//!
//! Every name in the model is a small number: a homeserver's domain, a user's local part,
//! a key, a package, a message. The conformance suite maps them to real values (strings,
//! Ed25519 keys, random QS ids, group ids) and back; the model never sees bytes.
//!
//! Cryptography is symbolic: a [`Signed`] value is the fact "signed by key K", a [`Sealed`]
//! value can be opened only by naming the key it was sealed to. Keys are never derived or
//! guessed; who knows a key is part of the state (the honest clients' own keys, the
//! adversary's [`crate::state::Ghost::adversary_keys`]).
//!
//! Not here: the server's real encodings, or anything about key sizes and algorithms.

/// A homeserver, by index into the configuration. Domain 0 is the one the conformance
/// suite tests; others stand for "a domain this server does not serve".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainId(pub u8);

/// A Federation ID `local@domain`, with the local part as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Fid {
    pub local: u8,
    pub domain: DomainId,
}

/// What a request names as an FID: a well-formed one, or a string that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FidArg {
    Valid(Fid),
    Malformed,
}

/// A client id (the polyproto session id in the client's ID-Cert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClientName(pub u8);

/// A key pair; the public key is named by the same id. Whoever holds a `KeyId` in its
/// state knows the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyId(pub u32);

/// A connection package or a key package (the conformance suite tags the real package's
/// opaque bytes with it, so it can tell which one the server served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PkgId(pub u32);

/// An opaque message: a direct-queue ciphertext, an application message, a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MsgId(pub u32);

/// A QS user record pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QsUid(pub u32);

/// A QS client record pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QsCid(pub u32);

/// A group id, qualified with the domain of the DS that hosts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GroupId {
    pub domain: DomainId,
    pub n: u32,
}

/// A friendship token (the QS stores only its hash; the model compares tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Token(pub u8);

/// Seconds, abstractly: the model only compares times.
pub type Time = u64;
/// An MLS epoch.
pub type Epoch = u64;
/// A queue sequence number.
pub type Seq = u64;
/// An MLS leaf index.
pub type Leaf = u32;

/// The fact "`payload` was signed with the private key `by`".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Signed<T> {
    pub by: KeyId,
    pub payload: T,
}

impl<T> Signed<T> {
    /// Signature verification: true exactly when the signer's key is `key`.
    pub fn verifies_with(&self, key: KeyId) -> bool {
        self.by == key
    }
}

/// `payload` encrypted to the key `to` (HPKE or AEAD, symbolically). `nonce` makes two
/// encryptions of the same payload distinct values, as real randomized encryption does:
/// seeing equal ciphertexts links them, seeing equal payloads inside does not (without
/// the key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Sealed<T> {
    pub to: KeyId,
    pub nonce: u32,
    pub payload: T,
}

impl<T: Clone> Sealed<T> {
    /// Decryption: only with the key it was sealed to.
    pub fn open(&self, key: KeyId) -> Option<T> {
        if self.to == key {
            Some(self.payload.clone())
        } else {
            None
        }
    }
}
