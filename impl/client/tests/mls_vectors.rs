//! The MLS working group's passive-client vectors (`tests/vectors/mls/`, see its README),
//! followed by the client library: `passive-client-welcome.json` (join by welcome, with
//! or without the ratchet tree alongside, with external PSKs) and
//! `passive-client-handling-commit.json` (join, then follow a scripted history of
//! proposals and commits).
//!
//! For every case of a cipher suite openmls_rust_crypto implements (1, 2 and 3; 4 to 7
//! are counted as skipped), a fresh client [`Provider`] gets the vector's key package with
//! its three private keys and the external PSKs; the client joins through
//! [`mls::join_from_welcome`] (the function the client's invitation handling runs) with
//! the client's own join configuration (keeping resumption PSKs of past epochs, which some
//! of the vectors' commits inject and Phoenix's groups never do) and must reach the
//! vector's epoch authenticator. The vectors' leaves and key packages were made in 2024 and
//! 2025 and their lifetimes have ended since: the join skips the lifetime check (the
//! client's invitations never do) and the key package is imported without validation, as
//! a client's own.
//! Then every epoch's proposals and commit are decoded with [`mls::protocol_message`] and
//! processed by the group as the client's `sync` does (`MlsGroup::process_message`, then
//! `merge_staged_commit`; proposals, which Phoenix's DS never relays, are stored as
//! pending), and after each commit the epoch authenticator must be the vector's.
//!
//! Counts are printed (`cargo test -p phoenix-client --test mls_vectors -- --nocapture`)
//! and repeated in every assertion message; each test fails if fewer cases ran than the
//! vectors hold for the cipher suites openmls_rust_crypto implements.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};

use openmls::group::LeafNodeLifetimePolicy;
use openmls::prelude::{
    Ciphersuite, KeyPackage, KeyPackageBundle, MlsGroup, MlsMessageBodyIn, MlsMessageIn,
    OpenMlsCrypto, ProcessedMessageContent,
};
use openmls::schedule::psk::PreSharedKeyId;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::StorageProvider;
use openmls_traits::types::HpkePrivateKey;
use serde::Deserialize;
use tls_codec::{Deserialize as _, Serialize as _};

use phoenix_client::mls::{self, Provider};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/mls");

#[derive(Deserialize)]
struct Case {
    cipher_suite: u16,
    external_psks: Vec<ExternalPsk>,
    key_package: String,
    signature_priv: String,
    encryption_priv: String,
    init_priv: String,
    welcome: String,
    ratchet_tree: Option<String>,
    initial_epoch_authenticator: String,
    epochs: Vec<Epoch>,
}

#[derive(Deserialize)]
struct ExternalPsk {
    psk_id: String,
    psk: String,
}

#[derive(Deserialize)]
struct Epoch {
    proposals: Vec<String>,
    commit: String,
    epoch_authenticator: String,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex in a vector")
}

/// Put the vector's key package and its private keys into the client's openmls storage,
/// where openmls's `KeyPackage::builder()` would have left a key package the client made
/// itself: a `KeyPackageBundle` under the key package's hash reference (the welcome names
/// the key package by that reference; the bundle holds the init and encryption private
/// keys), and the leaf's signature key pair the way the client stores its leaf keys
/// (`SignatureKeyPair::store`, found again by `mls::own_signer`).
///
/// openmls 0.9.2 constructs a `KeyPackageBundle` from existing keys (and a `KeyPackage`
/// from an unvalidated `KeyPackageIn`) only with its
/// `test-utils` feature (`KeyPackageBundle::new`), which we do not enable: it is meant for
/// openmls's own tests and would build test-only code into the client's openmls. The
/// bundle has a public serde representation instead (the one openmls's storage providers
/// persist), so it is deserialised from that representation, assembled from the public
/// types' own serde forms (`KeyPackage` after validation, `HpkePrivateKey`), and written
/// through the `StorageProvider` trait with openmls's own key and value types.
fn import_key_package(provider: &Provider, case: &Case) -> Result<(), String> {
    let message = MlsMessageIn::tls_deserialize_exact(unhex(&case.key_package).as_slice())
        .map_err(|e| format!("key package: {e}"))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err("the key package vector holds no key package".into());
    };
    // The client's own key package: a client never validates its own (and this one's
    // lifetime ended after the vectors were made), so it goes from its incoming form to
    // openmls's `KeyPackage` through their common serde representation, and must encode
    // to the same bytes (the welcome names it by the hash of those bytes).
    let bare = key_package
        .tls_serialize_detached()
        .map_err(|e| e.to_string())?;
    let key_package: KeyPackage = serde_json::to_value(&key_package)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("key package: {e}"))?;
    if key_package
        .tls_serialize_detached()
        .map_err(|e| e.to_string())?
        != bare
    {
        return Err("the key package changed in the conversion".into());
    }
    let bundle: KeyPackageBundle = serde_json::from_value(serde_json::json!({
        "key_package": key_package,
        "private_init_key": HpkePrivateKey::from(unhex(&case.init_priv)),
        "private_encryption_key": { "key": HpkePrivateKey::from(unhex(&case.encryption_priv)) },
    }))
    .map_err(|e| format!("key package bundle: {e}"))?;
    let hash_ref = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| format!("hash reference: {e}"))?;
    provider
        .storage()
        .write_key_package(&hash_ref, &bundle)
        .map_err(|e| format!("storing the key package: {e}"))?;
    let scheme = key_package.ciphersuite().signature_algorithm();
    SignatureKeyPair::from_raw(
        scheme,
        unhex(&case.signature_priv),
        key_package.leaf_node().signature_key().as_slice().to_vec(),
    )
    .store(provider.storage())
    .map_err(|e| format!("storing the signature key: {e}"))
}

/// Process one handshake message as the client does, storing proposals as pending.
fn process(provider: &Provider, group: &mut MlsGroup, bytes: &[u8]) -> Result<bool, String> {
    let message = mls::protocol_message(bytes).map_err(|e| e.to_string())?;
    let processed = group
        .process_message(provider, message)
        .map_err(|e| e.to_string())?;
    match processed.into_content() {
        ProcessedMessageContent::ProposalMessage(proposal) => {
            group
                .store_pending_proposal(provider.storage(), *proposal)
                .map_err(|e| e.to_string())?;
            Ok(false)
        }
        ProcessedMessageContent::StagedCommitMessage(commit) => {
            group
                .merge_staged_commit(provider, *commit)
                .map_err(|e| e.to_string())?;
            Ok(true)
        }
        _ => Err("neither a proposal nor a commit".into()),
    }
}

/// How many past epochs' resumption PSKs the replaying client keeps.
const RESUMPTION_PSKS: usize = 16;

/// The client's join configuration ([`mls::join_config`]), keeping the resumption PSKs of
/// the last [`RESUMPTION_PSKS`] epochs: some of the vectors' commits inject the resumption
/// PSK of an earlier epoch, which a Phoenix client, whose groups never do, does not keep.
fn join_config() -> openmls::prelude::MlsGroupJoinConfig {
    mls::join_config_builder()
        .number_of_resumption_psks(RESUMPTION_PSKS)
        .build()
}

/// Follow one case; returns the number of epochs checked after the join.
fn follow(case: &Case) -> Result<usize, String> {
    let provider = Provider::from_values(HashMap::new());
    for psk in &case.external_psks {
        PreSharedKeyId::external(unhex(&psk.psk_id), Vec::new())
            .store(&provider, &unhex(&psk.psk))
            .map_err(|e| format!("storing an external PSK: {e}"))?;
    }
    import_key_package(&provider, case)?;
    let tree = case.ratchet_tree.as_deref().map(unhex);
    let mut group = mls::join_from_welcome(
        &provider,
        &join_config(),
        &unhex(&case.welcome),
        tree.as_deref(),
        LeafNodeLifetimePolicy::Skip,
    )
    .map_err(|e| format!("join: {e}"))?;
    if group.epoch_authenticator().as_slice() != unhex(&case.initial_epoch_authenticator) {
        return Err("the epoch authenticator after the join differs".into());
    }
    for (n, epoch) in case.epochs.iter().enumerate() {
        for proposal in &epoch.proposals {
            if process(&provider, &mut group, &unhex(proposal))
                .map_err(|e| format!("epoch {n}, proposal: {e}"))?
            {
                return Err(format!("epoch {n}: a proposal message was a commit"));
            }
        }
        if !process(&provider, &mut group, &unhex(&epoch.commit))
            .map_err(|e| format!("epoch {n}, commit: {e}"))?
        {
            return Err(format!("epoch {n}: the commit message was a proposal"));
        }
        if group.epoch_authenticator().as_slice() != unhex(&epoch.epoch_authenticator) {
            return Err(format!("epoch {n}: the epoch authenticator differs"));
        }
    }
    Ok(case.epochs.len())
}

/// Run a file; returns the summary line after asserting that every supported case passed
/// and at least `min_run` ran.
fn run_file(name: &str, min_run: usize) -> String {
    let path = format!("{VECTORS}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let mut per_suite: BTreeMap<u16, (usize, usize, usize)> = BTreeMap::new();
    let mut skipped: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let suite = Ciphersuite::try_from(case.cipher_suite).expect("a known cipher suite");
        if crypto.supports(suite).is_err() {
            *skipped.entry(case.cipher_suite).or_default() += 1;
            continue;
        }
        let entry = per_suite.entry(case.cipher_suite).or_default();
        entry.0 += 1;
        match follow(case) {
            Ok(epochs) => {
                entry.1 += 1;
                entry.2 += epochs;
            }
            Err(e) => failures.push(format!("case {i} (suite {}): {e}", case.cipher_suite)),
        }
    }
    let run: usize = per_suite.values().map(|s| s.0).sum();
    let passed: usize = per_suite.values().map(|s| s.1).sum();
    let suites: Vec<String> = per_suite
        .iter()
        .map(|(suite, (run, passed, epochs))| {
            format!("suite {suite}: {run} run, {passed} passed, {epochs} epochs after the join")
        })
        .collect();
    let summary = format!(
        "mls vectors: {name}: {}; {} skipped (unsupported suites {skipped:?})",
        suites.join("; "),
        skipped.values().sum::<usize>()
    );
    println!("{summary}");
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    assert!(run >= min_run, "{summary}");
    assert!(per_suite.contains_key(&1), "{summary}");
    assert_eq!(passed, run, "{summary}");
    summary
}

// Requirement: VEC-3
#[test]
fn passive_client_joins_by_welcome() {
    // 8 cases for each of suites 1 to 3.
    run_file("passive-client-welcome.json", 24);
}

// Requirement: VEC-3
#[test]
fn passive_client_follows_commits() {
    // 13 cases for each of suites 1 to 3, two epochs each.
    run_file("passive-client-handling-commit.json", 39);
}

// ----- Phoenix's MLS profile: out-of-order tolerance ------------------------------------

mod reordering {
    use std::collections::HashMap;

    use openmls::group::LeafNodeLifetimePolicy;
    use openmls::prelude::{KeyPackage, MlsGroup, ProcessedMessageContent};
    use tls_codec::Serialize;

    use phoenix_client::mls::{
        CIPHERSUITE, Provider, capabilities, create_config, join_config, join_from_welcome,
        new_leaf, protocol_message,
    };
    use phoenix_types::mls_profile::OUT_OF_ORDER_TOLERANCE;

    // Requirement: CL-ORDER-1
    /// A receiver decrypts a sender's messages that arrive out of order within
    /// [`OUT_OF_ORDER_TOLERANCE`] generations of the newest one it has seen (openmls's
    /// default, 5, dropped everything older), and refuses, with an error it can report,
    /// those further back.
    #[test]
    fn receiver_tolerates_the_configured_reordering() {
        let alice = Provider::from_values(HashMap::new());
        let bob = Provider::from_values(HashMap::new());
        let (alice_signer, alice_credential) = new_leaf(&alice).unwrap();
        let (bob_signer, bob_credential) = new_leaf(&bob).unwrap();
        let bob_package = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(CIPHERSUITE, &bob, &bob_signer, bob_credential)
            .unwrap();
        let mut group =
            MlsGroup::new(&alice, &alice_signer, &create_config(), alice_credential).unwrap();
        let (_, welcome, _) = group
            .add_members(&alice, &alice_signer, &[bob_package.key_package().clone()])
            .unwrap();
        group.merge_pending_commit(&alice).unwrap();
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap();
        let mut bob_group = join_from_welcome(
            &bob,
            &join_config(),
            &welcome.tls_serialize_detached().unwrap(),
            Some(&tree),
            LeafNodeLifetimePolicy::Verify,
        )
        .unwrap();

        let window = OUT_OF_ORDER_TOLERANCE as usize;
        let messages: Vec<Vec<u8>> = (0..window + 3)
            .map(|i| {
                group
                    .create_message(&alice, &alice_signer, format!("m{i}").as_bytes())
                    .unwrap()
                    .tls_serialize_detached()
                    .unwrap()
            })
            .collect();
        let mut open = |bytes: &[u8]| -> Result<Vec<u8>, String> {
            let processed = bob_group
                .process_message(&bob, protocol_message(bytes).unwrap())
                .map_err(|e| e.to_string())?;
            match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(m) => Ok(m.into_bytes()),
                other => Err(format!("not an application message: {other:?}")),
            }
        };
        let newest = messages.len() - 1;
        assert_eq!(
            open(&messages[newest]).unwrap(),
            format!("m{newest}").into_bytes()
        );
        // Every generation within the window behind the newest (the newest and the
        // `window - 1` before it) still opens, in any order.
        for i in (newest + 1 - window..newest).rev() {
            assert_eq!(
                open(&messages[i]).unwrap(),
                format!("m{i}").into_bytes(),
                "m{i}"
            );
        }
        // Further back is refused (and the caller reports it), not silently skipped.
        assert!(open(&messages[0]).is_err());
    }
}
