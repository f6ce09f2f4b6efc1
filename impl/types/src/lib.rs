//! Shared vocabulary of the Phoenix homeserver.
//!
//! Layout:
//! - [`ids`]: Federation IDs, domains, client ids, QS pseudonyms, qualified group ids.
//! - [`error`]: stable wire error codes and the RFC 9457 problem document.
//! - [`codec`]: bounded, exact TLS-codec decoding of untrusted bytes.
//! - [`crypto`]: labelled Ed25519 signatures, AEAD for data at rest (group-state EAR,
//!   credential encryption), HPKE sealing (queue configs, connection establishment).
//! - [`queue_ratchet`]: queue encryption at rest, the HKDF chain the QS seals each queue
//!   entry under and the client follows.
//! - [`certs`]: the X.509 PKI: the home server's CA certificate, client CSRs and ID-Certs.
//! - [`cacheable`]: polyproto cacheable ID-Certs (a certificate with its home server's
//!   signed cache window), as servers serve and cache them and clients verify them.
//! - [`discovery`]: the discovery document and the domain → URL resolver.
//! - [`mls_profile`]: the MLS settings of Phoenix groups (ciphersuite, capabilities,
//!   group configs), shared by the client library and the fuzz harness.
//! - [`messages`]: every request and response body of the AS, QS and DS, the request
//!   envelope with its authentication, and the payloads clients exchange through the server.
//!
//! Design: the server and the client (and later the model) share these types and nothing
//! else. Every input type is decoded from bytes through [`codec::decode`], which bounds the
//! input and refuses trailing data; signatures are always checked over the exact bytes that
//! were received, never over a re-encoding. This crate does no I/O and reads no clock: the
//! caller passes `now` and a random number generator.

pub mod cacheable;
pub mod certs;
pub mod codec;
pub mod crypto;
pub mod discovery;
pub mod error;
pub mod ids;
pub mod messages;
pub mod mls_profile;
pub mod queue_ratchet;
pub mod tokens;

/// The protocol version spoken on every Phoenix route; carried in every request envelope
/// and advertised in discovery.
pub const PROTOCOL_VERSION: u16 = 1;

/// Seconds since the Unix epoch. Passed in by the caller; this crate never reads a clock.
pub type UnixTime = u64;
