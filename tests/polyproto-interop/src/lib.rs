//! Interoperability of phoenix-server's polyproto routes with the `polyproto` crate 0.21,
//! an independent client written by the polyproto spec's author. Everything is in
//! `tests/interop.rs`; this library is empty.
//!
//! The test starts a server in-process on loopback (SQLite) and drives it with the crate's
//! `HttpClient` and `Session` (`get_well_known`, `get_server_id_cert` with and without a
//! timestamp, before and after a CA rotation, `get_actor_id_certs` with its filters,
//! `update_session_id_cert`, `delete_session`), parses every returned PEM with the crate's
//! certificate types and verifies it with the crate's own code (`CacheableIdCert::verify`
//! for the cache signature, `full_verify_home_server` and `IdCertActor::try_from_pem` for
//! the certificates), Ed25519 supplied through the crate's `Signature`, `PublicKey` and
//! `PrivateKey` traits with ed25519-dalek. The foreign-session login (`session/auth`),
//! which the crate has no method for, uses the crate's `KeyTrial` types over its reqwest
//! client.
