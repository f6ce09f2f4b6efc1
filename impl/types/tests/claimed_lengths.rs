//! A claimed length is not an allocation: decoding a tiny body whose length prefix claims
//! a huge vector fails without allocating memory proportional to the claim.
//!
//! tls_codec 0.5 (which phoenix-types and openmls 0.9 decode with) reads a vector's
//! length prefix and then grows the vector only as bytes actually arrive (`VLBytes` and
//! `String` pre-allocate at most 4 KiB, `Vec<T>` nothing); with the `mls` feature a
//! length prefix is at most 2^30 - 1 and must be minimally encoded. This test pins that
//! behaviour for our wire types, so a dependency update that starts trusting claimed
//! lengths fails here instead of in production.
//!
//! One test function only: the counts are process-wide. The test binary counts every byte allocated through a capped global allocator, with a
//! cap far below the claims: an allocation of the claimed size would abort the process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;

use cap::Cap;
use tls_codec::Deserialize;

use phoenix_types::codec;
use phoenix_types::messages::as_::{ClientCertificatesResponse, RegisterRequest};
use phoenix_types::messages::ds::{GroupMessage, WelcomeBundle};
use phoenix_types::messages::qs::{FetchKeyPackagesResponse, PublishKeyPackagesRequest};
use phoenix_types::messages::{DequeueResponse, RequestEnvelope};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// A 4-byte QUIC-style varint claiming 2^30 - 1 bytes (1 GiB), the largest length the
/// `mls` codec accepts.
const CLAIM_1GIB: [u8; 4] = [0xbf, 0xff, 0xff, 0xff];

/// How many bytes one decode may allocate in total, whatever it claims.
const BUDGET: usize = 64 * 1024;

fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATOR.total_allocated();
    let out = f();
    (out, ALLOCATOR.total_allocated() - before)
}

fn check<T: Deserialize + std::fmt::Debug>(what: &str, body: &[u8]) {
    let (result, bytes) = allocated_by(|| codec::decode::<T>(body, codec::MAX_BODY));
    assert!(
        result.is_err(),
        "{what}: a truncated body decoded: {result:?}"
    );
    assert!(
        bytes < BUDGET,
        "{what}: decoding {} bytes allocated {bytes} bytes",
        body.len()
    );
}

#[test]
fn a_tiny_body_claiming_a_gigabyte_allocates_nothing_like_it() {
    // Any allocation of the claimed size aborts the test binary.
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + 256 * 1024 * 1024)
        .unwrap();

    // The counter works: a real 100 KiB vector is counted.
    let real = codec::encode(&RegisterRequest {
        csr: tls_codec::VLBytes::new(vec![7; 100 * 1024]),
    })
    .unwrap();
    let (decoded, bytes) =
        allocated_by(|| codec::decode::<RegisterRequest>(&real, codec::MAX_BODY));
    assert!(decoded.is_ok());
    assert!(bytes >= 100 * 1024, "the allocator did not count: {bytes}");

    // A 4-byte body: one byte vector claiming 1 GiB.
    check::<RegisterRequest>("RegisterRequest", &CLAIM_1GIB);
    // The envelope's payload.
    let mut envelope = 1u16.to_be_bytes().to_vec();
    envelope.extend_from_slice(&CLAIM_1GIB);
    check::<RequestEnvelope>("RequestEnvelope", &envelope);
    // Vectors of structs.
    check::<ClientCertificatesResponse>("ClientCertificatesResponse", &CLAIM_1GIB);
    check::<FetchKeyPackagesResponse>("FetchKeyPackagesResponse", &CLAIM_1GIB);
    let mut publish = 1_790_000_000u64.to_be_bytes().to_vec();
    publish.extend_from_slice(&CLAIM_1GIB);
    check::<PublishKeyPackagesRequest>("PublishKeyPackagesRequest", &publish);
    check::<DequeueResponse>("DequeueResponse", &CLAIM_1GIB);
    // A vector inside a vector: a valid outer length, an inner claim.
    let mut nested = vec![0x00]; // group_id: empty
    nested.extend_from_slice(&[0x00]); // message: empty
    nested.extend_from_slice(&[0x08]); // new_credentials: 8 bytes follow
    nested.extend_from_slice(&[0, 0, 0, 1]); // leaf_index
    nested.extend_from_slice(&CLAIM_1GIB); // encrypted_credential claims 1 GiB
    check::<GroupMessage>("GroupMessage", &nested);
    check::<WelcomeBundle>("WelcomeBundle", &CLAIM_1GIB);

    // openmls decodes MLS messages with the same codec: an MlsMessage (version 1, a
    // public message) whose group id claims 1 GiB.
    let mut mls = vec![0x00, 0x01, 0x00, 0x01];
    mls.extend_from_slice(&CLAIM_1GIB);
    let (result, bytes) =
        allocated_by(|| openmls::prelude::MlsMessageIn::tls_deserialize_exact(&mls));
    assert!(result.is_err());
    assert!(bytes < BUDGET, "MlsMessageIn: allocated {bytes} bytes");

    // Non-minimal length encodings are refused (canonical encoding: re-encoding gives the
    // received bytes back).
    check::<RegisterRequest>("non-minimal length", &[0x40, 0x01, 0xaa]);

    // Bodies over the limit are refused before parsing.
    let body = vec![0u8; 2048];
    let (result, bytes) = allocated_by(|| codec::decode::<RegisterRequest>(&body, 1024));
    assert_eq!(
        result.unwrap_err().code,
        phoenix_types::error::ErrorCode::TooLarge
    );
    assert!(bytes < 1024);
}
