//! Payloads that clients exchange through the server and that the server cannot read or
//! cannot link: they travel encrypted (under HPKE, the friendship key or the group's
//! credential key) or inside MLS application messages.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Binds a pseudonymous MLS leaf to a client's ID-Cert: the cert's key signs the leaf's
/// signature key (label [`crate::crypto::label::LEAF_BINDING`]). Always encrypted, so the
/// DS cannot link a client's leaves across groups.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientCredentialInfo {
    /// DER ID-Cert of the client.
    pub client_certificate: VLBytes,
    /// The leaf's Ed25519 signature public key.
    pub leaf_signature_key: VLBytes,
    pub binding_signature: VLBytes,
}

/// The secrets a user hands to each contact: the token to fetch its key packages and the
/// key its add packages' credentials and welcome attribution infos are encrypted under.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FriendshipPackage {
    pub friendship_token: [u8; 32],
    pub friendship_key: [u8; 32],
    /// The domain of the user's QS (where its key packages are fetched).
    pub qs_domain: String,
}

/// Signed part of a connection establishment package.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConnectionEstablishmentTbs {
    pub sender_certificate: VLBytes,
    pub recipient_fid: String,
    pub recipient_client_id: String,
    pub timestamp: u64,
    pub connection_group_id: VLBytes,
    pub ear_key: [u8; 32],
    pub credential_key: [u8; 32],
    pub friendship: FriendshipPackage,
}

/// Sent by a connection's initiator to the responder's direct queue, HPKE-encrypted to the
/// responder's connection package key. Signed with the initiator's ID-Cert key (label
/// [`crate::crypto::label::CONNECTION_ESTABLISHMENT`]).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConnectionEstablishmentPackage {
    pub tbs: VLBytes,
    pub signature: VLBytes,
}

/// Signed part of a welcome attribution info.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct WelcomeAttributionTbs {
    pub sender_certificate: VLBytes,
    pub group_id: VLBytes,
    pub group_name: String,
    pub ear_key: [u8; 32],
    pub credential_key: [u8; 32],
    pub timestamp: u64,
}

/// Tells a joiner who invited it and hands it the group's keys. Signed with the inviter's
/// ID-Cert key (label [`crate::crypto::label::WELCOME_ATTRIBUTION`]) and encrypted under
/// the joiner's friendship key (AEAD, aad = group id).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct WelcomeAttributionInfo {
    pub tbs: VLBytes,
    pub signature: VLBytes,
}

/// The plaintext of an MLS application message.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum ApplicationPayload {
    /// A chat message.
    #[tls_codec(discriminant = 1)]
    Text(String),
    /// In a connection group: the responder's friendship package, sent after joining.
    #[tls_codec(discriminant = 2)]
    Friendship(FriendshipPackage),
}

/// AEAD associated data for encrypted client infos in add packages.
pub const ADD_PACKAGE_AAD: &[u8] = b"phoenix-v1 add package client info";
