//! `phoenix-conformance`: the model-vs-server conformance harness.
//!
//! Layout:
//! - [`runner`]: runs a [`runner::Suite`]: proptest-state-machine generates transition
//!   sequences from the reference state machine (the model, `phoenix-model`), each case
//!   runs them against the real server over HTTP, compares every outcome and error code,
//!   checks the model's invariants and the projected ones on the server, shrinks and
//!   saves failures as trace fixtures.
//! - [`as_qs`]: the AS/QS suite (raw signed requests through the client library's API
//!   client): registration, connection packages, direct queues, QS records, key packages,
//!   QS dequeue, with adversarial variants.
//! - [`ds`]: the DS suite (the client library drives MLS): application messages and
//!   commits at current and stale epochs, adding and removing members, syncs, wrong EAR
//!   keys, QS queue reads.
//! - [`federation`]: the federation suite over two federated homeservers: cross-server
//!   messages and commits through the client library, and the harness's malicious remote
//!   server ([`peer`]) sending honest, forged, replayed, misrouted, stale and
//!   policy-refused federated enqueues.
//! - [`names`]: per-case mapping between the model's names and real values.
//! - [`observed`]: the comparable projection of outcomes.
//! - [`fixtures`], [`report`]: trace fixtures; the table, JSON and JUnit reports.
//! - [`target`]: a server under test, found by its discovery document (for the
//!   federation suite: with its federated peer and the malicious peer).
//! - `main.rs`: the `phoenix-conformance` CLI for auditors.
//!
//! Design: the model and the server share only vocabulary (`phoenix-types`); the harness
//! never reads the server's database or calls its code, so what passes here passes
//! against any deployment reachable over HTTP.

pub mod as_qs;
pub mod ds;
pub mod federation;
pub mod fixtures;
pub mod listen;
pub mod names;
pub mod observed;
pub mod peer;
pub mod proxy;
mod queue_cursor;
pub mod report;
pub mod runner;
pub mod target;

use thiserror::Error;

/// Why a case did not pass.
#[derive(Debug, Clone, Error)]
pub enum HarnessError {
    /// The harness could not set up or reach the server (not a conformance verdict).
    #[error("setup: {0}")]
    Setup(String),
    #[error("transport: {0}")]
    Transport(String),
    /// The server did something else than the model.
    #[error("{0}")]
    Mismatch(String),
}

/// The suites by name.
pub const SUITES: &[&str] = &[
    as_qs::AsQs::NAME_STR,
    ds::Ds::NAME_STR,
    federation::Federation::<0>::NAME_STR,
];
