//! Authentication Service requests and responses (`/phoenix/v1/as/<operation>`).
//!
//! | operation | auth | request → response |
//! |---|---|---|
//! | `register` | none | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `publish_connection_packages` | AsClient | [`PublishConnectionPackagesRequest`] → `Empty` |
//! | `fetch_connection_package` | none | [`FetchConnectionPackageRequest`] → [`FetchConnectionPackageResponse`] |
//! | `enqueue_connection` | none | [`EnqueueConnectionRequest`] → `Empty` |
//! | `dequeue_connection` | AsClient | `DequeueRequest` → `DequeueResponse` |
//! | `client_certificates` | none | [`ClientCertificatesRequest`] → [`ClientCertificatesResponse`] |
//! | `server_certificate` | none | `Empty` → [`ServerCertificateResponse`] |
//! | `renew_certificate` | AsClient | [`RenewCertificateRequest`] → [`RegisterResponse`] |
//! | `domain_certificates` | none | [`DomainCertificatesRequest`] → [`ServerCertificateResponse`] |
//! | `issue_group_tokens` | AsClient (local clients only) | [`IssueGroupTokensRequest`] → [`IssueGroupTokensResponse`] |

use openmls_traits::types::HpkeCiphertext;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

pub const REGISTER: &str = "register";
pub const PUBLISH_CONNECTION_PACKAGES: &str = "publish_connection_packages";
pub const FETCH_CONNECTION_PACKAGE: &str = "fetch_connection_package";
pub const ENQUEUE_CONNECTION: &str = "enqueue_connection";
pub const DEQUEUE_CONNECTION: &str = "dequeue_connection";
pub const CLIENT_CERTIFICATES: &str = "client_certificates";
pub const SERVER_CERTIFICATE: &str = "server_certificate";
pub const RENEW_CERTIFICATE: &str = "renew_certificate";
pub const DOMAIN_CERTIFICATES: &str = "domain_certificates";
pub const ISSUE_GROUP_TOKENS: &str = "issue_group_tokens";

/// Most group-creation tokens one `issue_group_tokens` request may ask for.
pub const MAX_TOKENS_PER_REQUEST: usize = 16;

/// Most connection packages one upload may carry.
pub const MAX_CONNECTION_PACKAGES: usize = 100;
/// Largest encrypted connection establishment package (bytes).
pub const MAX_CONNECTION_CIPHERTEXT: usize = 16 * 1024;

/// Register a new user with its first client: the DER ID-CSR names the FID (its `UID`)
/// and the client id (its `uniqueIdentifier`).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegisterRequest {
    pub csr: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RegisterResponse {
    /// The client's ID-Cert (DER).
    pub client_certificate: VLBytes,
    /// The home server's CA certificate that issued it (DER).
    pub ca_certificate: VLBytes,
}

/// What a connection package offers: an HPKE key to encrypt a connection establishment
/// package to, valid until `not_after`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConnectionPackagePayload {
    pub fid: String,
    pub client_id: String,
    pub encryption_key: VLBytes,
    pub not_after: u64,
    /// 1 for the last-resort package (reused when no other is left), else 0.
    pub last_resort: u8,
}

/// A connection package: the encoded payload and the client's signature over it
/// (label [`crate::crypto::label::CONNECTION_PACKAGE`]) with its ID-Cert key.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConnectionPackage {
    pub payload: VLBytes,
    pub signature: VLBytes,
}

/// Replace the caller's connection packages. Exactly one must be last-resort.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PublishConnectionPackagesRequest {
    pub timestamp: u64,
    pub packages: Vec<ConnectionPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FetchConnectionPackageRequest {
    pub fid: String,
}

/// One connection package of one of the user's clients, consumed unless last-resort, with
/// that client's ID-Cert so the caller can check the chain.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FetchConnectionPackageResponse {
    pub package: ConnectionPackage,
    pub client_certificate: VLBytes,
}

/// Anonymous enqueue into a client's direct queue.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EnqueueConnectionRequest {
    pub fid: String,
    pub client_id: String,
    /// An HPKE-encrypted [`crate::messages::client::ConnectionEstablishmentPackage`].
    #[cfg_attr(
        feature = "arbitrary",
        arbitrary(with = crate::messages::qs::arbitrary_hpke_ciphertext)
    )]
    pub ciphertext: HpkeCiphertext,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientCertificatesRequest {
    pub fid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientCertificatesResponse {
    pub certificates: Vec<VLBytes>,
}

/// The CA certificate history of a homeserver: this server's own, or another server's as
/// this server cached it (fetched from that server, its current CA certificate vouched for
/// by that server's cache signature, kept until the cache window that server gave ends).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DomainCertificatesRequest {
    pub domain: String,
}

/// Renew the calling client's ID-Cert: a CSR for the same FID and client id, usually with
/// a new key. The previous certificate stays in the history (and valid until it expires).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RenewCertificateRequest {
    pub timestamp: u64,
    pub csr: VLBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServerCertificateResponse {
    /// The current CA certificate (DER).
    pub ca_certificate: VLBytes,
    /// Every CA certificate this server ever had, oldest first (the last is the current
    /// one): a certificate issued before a CA key rotation verifies against its issuer here.
    pub history: Vec<VLBytes>,
}

/// `issue_group_tokens`: a local client asks the AS to evaluate blinded token inputs
/// ([`crate::tokens`]); the AS counts them against the client's daily allowance but cannot
/// see the inputs, so the DS that later sees a token cannot tell whose it is.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IssueGroupTokensRequest {
    pub timestamp: u64,
    /// Blinded elements, [`crate::tokens::ELEMENT_LEN`] bytes each; 1 to
    /// [`MAX_TOKENS_PER_REQUEST`].
    pub blinded: Vec<VLBytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IssueGroupTokensResponse {
    /// The token key's public key ([`crate::tokens::ELEMENT_LEN`] bytes).
    pub public_key: VLBytes,
    /// One evaluated element per blinded element, in order.
    pub evaluated: Vec<VLBytes>,
    /// The batch DLEQ proof that every element was evaluated under `public_key`.
    pub proof: VLBytes,
}
