//! The Phoenix homeserver: Authentication Service, Queuing Service and Delivery Service
//! behind one HTTP endpoint, on SQLite (embedded default) or Postgres.
//!
//! Layout:
//! - [`config`]: command line, TOML file and `PHOENIX_*` environment settings.
//! - [`server`]: the [`server::Server`] context every operation runs in (domain, store,
//!   keys, limits) and start-up (migrations, first-start key generation).
//! - [`auth`]: request envelopes, signature checks over exact bytes, freshness.
//! - [`as_`], [`qs`], [`ds`]: one module per service, one file per spec operation. Each
//!   operation is a function of (server, request bytes, now) that returns response bytes or
//!   a [`phoenix_types::error::WireError`]; HTTP stays out of them.
//! - [`federation`]: peers (discovery, policy, key cache) and QS-to-QS forwarding.
//! - [`polyproto`]: the polyproto core routes (`/.well-known/polyproto-core`,
//!   `/.p2/core/v1/`): certificate history as cacheable ID-Certs, foreign sessions.
//! - [`files`]: modes of the data directory and the SQLite database files (private keys at
//!   rest).
//! - [`jobs`]: periodic purges of ephemeral rows (the cache of foreign certificates,
//!   replay records of federated messages).
//! - [`outbox`]: delivery of fan-out messages after the state change that produced them
//!   committed, retried with backoff until delivered.
//! - [`store`]: storage traits and the SQLite and Postgres backends.
//! - [`http`]: the warp routes: the one place where errors become HTTP responses.
//! - [`edge`]: the accept loop: connection caps and timeouts, bodies read under their limit.
//! - [`observe`]: the test-only observation tap (cargo feature `observe`, never in release
//!   builds): which identifiers each request handler saw.
//!
//! Design: operations are sans-IO in the sense of the design document: they read the
//! clock and randomness only from their arguments and the server context, and write
//! effects (fan-out) to the durable outbox in the same transaction as the state change.

// The unit tests' allocator: it reports secrets left in freed memory (see
// `edge::tests::no_copy_of_the_ear_key_is_freed_unzeroized`). Test builds only.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: phoenix_freed_memory::Watch = phoenix_freed_memory::Watch;

// First, so that its macros are visible in every module below.
#[macro_use]
pub mod observe;

pub mod admin;
pub mod as_;
pub mod auth;
pub mod config;
pub mod ds;
pub mod edge;
pub mod federation;
pub mod files;
pub mod http;
pub mod jobs;
pub mod keys_at_rest;
pub mod ops;
pub mod outbox;
pub mod polyproto;
pub mod qs;
pub mod ratelimit;
pub mod replay;
pub mod server;
pub mod store;
pub mod tls;
