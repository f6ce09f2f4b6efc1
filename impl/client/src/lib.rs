//! The Phoenix client library, and the `phoenix` CLI built on it.
//!
//! Layout:
//! - [`api`]: the HTTP API client: request envelopes, signing, problem documents.
//! - [`store`]: the client's local SQLite store (identity, contacts, groups, members,
//!   pending connection requests, undelivered events, and openmls's key-value storage).
//! - [`mls`]: the openmls provider over that store and the group settings Phoenix uses.
//! - [`verify`]: the authentication chain of a group member: leaf → encrypted leaf
//!   binding → ID-Cert → home server CA certificate.
//! - [`client`]: the operations a user performs (register, connect, accept, groups, send,
//!   sync), each a complete protocol flow against the server.
//!
//! The client trusts the server with nothing it can check: every certificate, every
//! member's credential and every connection request is verified before it is used, and
//! messages from members whose chain does not verify are reported as unverified, never
//! silently accepted.

pub mod api;
pub mod client;
pub mod error;
pub mod lock;
pub mod mls;
pub mod store;
pub mod verify;

pub use client::Client;
pub use error::ClientError;
