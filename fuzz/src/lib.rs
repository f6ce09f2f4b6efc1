//! Shared code of the Phoenix fuzz targets (`fuzz_targets/`).
//!
//! - [`check`]: the properties decoder and round-trip targets assert (canonical decoding,
//!   round trips, errors that blame the caller).
//! - [`harness`]: an in-process server on in-memory SQLite for the stateful targets, with
//!   deterministic keys and the signing side of a client; requests can be damaged after
//!   signing so that fuzzing covers both sides of every check.
//! - [`mls`]: the client side of MLS (Phoenix's group settings, key packages, sealed
//!   queue configs).
//! - [`ds_fixture`]: precomputed MLS groups and messages for the DS target, so a run can
//!   drive a group through several epochs without creating MLS material per run.
//!
//! Targets may panic: that is how they report a finding.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod check;
pub mod ds_fixture;
pub mod harness;
pub mod mls;
