//! The MLS working group's test vectors (`tests/vectors/mls/`, see its README) through the
//! server's own code paths:
//!
//! - `messages.json`: every message of every case is decoded by the decoder the DS or QS
//!   uses for that kind of structure (`ds::decode`, `qs::publish_key_packages`), with its
//!   size limit, and re-encodes to the same bytes; one more byte is refused, and so is an
//!   input over the limit. Bare proposals reach no route (they travel inside public
//!   messages), so they go through `phoenix_types::codec::decode` (our bounded, exact
//!   codec) into openmls's public types; a bare `Commit` goes through the DS's
//!   public-message decoder inside a public-message frame of our own, since openmls keeps
//!   its `Commit` type private; `GroupSecrets` is private to openmls and only ever
//!   decrypted inside a welcome, so it is counted as not run (the passive-client vectors
//!   of `impl/client/tests/mls_vectors.rs` decrypt it in every join).
//! - `tree-validation.json`: every tree of a cipher suite openmls_rust_crypto implements
//!   goes through the DS's group rebuilding (`create_group::rebuild_public_group`, what
//!   `create_group` runs), with a group info for the vector's group id and tree hash. The
//!   vectors carry no private keys, so no group info can be signed by a leaf of the tree:
//!   the verdict "valid tree" is that every tree-level check passes (leaf signatures with
//!   the group id, parent hashes, node types, unique keys, unmerged leaves) and the
//!   rebuild stops at the first check that needs the group info's signature. The same tree
//!   with one byte of a leaf signature flipped, and with one byte of a parent node flipped,
//!   is refused with the matching reason and `INVALID_GROUP_INFO` on the wire. openmls does
//!   not expose per-node tree hashes or resolutions, so the test computes them itself from
//!   the tree (RFC 9420, 4.1.1 and 7.8) and compares them with the vector's.
//! - `deserialization.json`: variable-length headers through `phoenix_types::codec`.
//!
//! Counts are printed (`cargo test -p phoenix-server --test mls_vectors -- --nocapture`)
//! and repeated in every assertion message; each test fails if fewer cases ran than the
//! vectors hold for the cipher suites openmls_rust_crypto implements.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use openmls::prelude::{
    AddProposalIn, Ciphersuite, ContentType, ExternalInitProposal, GroupContextExtensionProposalIn,
    MlsMessageBodyIn, MlsMessageIn, OpenMlsCrypto, PreSharedKeyProposal, ProtocolMessage,
    ProtocolVersion, ReInitProposal, RemoveProposal, UpdateProposalIn,
};
use openmls_rust_crypto::RustCrypto;
use serde::Deserialize;
use tls_codec::{
    Deserialize as _, Serialize, Size, TlsDeserialize, TlsSerialize, TlsSize, VLBytes,
};

use phoenix_server::ds::create_group::{RebuildGroupError, rebuild_public_group};
use phoenix_server::ds::decode::{self, MAX_MLS_MESSAGE};
use phoenix_server::qs::publish_key_packages::decode_key_package;
use phoenix_types::codec;
use phoenix_types::error::{ErrorCode, WireError};
use phoenix_types::messages::qs::MAX_KEY_PACKAGE_LEN;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/mls");

fn read_vectors<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{VECTORS}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex in a vector")
}

/// `MLSMessage` header: protocol version mls10.
fn mls10() -> Vec<u8> {
    ProtocolVersion::Mls10.tls_serialize_detached().unwrap()
}

/// Re-encode a decoded `MLSMessage` body with the mls10 header.
fn reencode(body: MlsMessageBodyIn) -> Vec<u8> {
    let mut out = mls10();
    out.extend(body.tls_serialize_detached().unwrap());
    out
}

// ---------------------------------------------------------------------------------------
// messages.json

/// One kind of structure of `messages.json`: how the project decodes it, with which limit,
/// and how it re-encodes.
struct Kind {
    field: &'static str,
    /// The limit the decoder applies (bytes).
    limit: usize,
    /// The code the decoder refuses malformed input with.
    malformed: ErrorCode,
    /// Decode and re-encode.
    roundtrip: fn(&[u8]) -> Result<Vec<u8>, WireError>,
}

/// A decode that succeeded but does not give back what the vector holds.
fn mismatch(detail: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Internal, detail)
}

fn welcome(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(reencode(MlsMessageBodyIn::Welcome(decode::welcome(bytes)?)))
}

fn group_info(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(reencode(MlsMessageBodyIn::GroupInfo(decode::group_info(
        bytes,
    )?)))
}

/// An `MLSMessage` holding a key package: the message through our codec with the DS's
/// message limit, the key package inside it through the QS's key package decoder (which
/// takes bare key packages, as clients upload them). Both must re-encode exactly.
fn key_package(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let message: MlsMessageIn = codec::decode(bytes, MAX_MLS_MESSAGE)?;
    let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
        return Err(WireError::new(ErrorCode::Malformed, "not a key package"));
    };
    let bare = kp.tls_serialize_detached().unwrap();
    let decoded = decode_key_package(&bare)?;
    if decoded.tls_serialize_detached().unwrap() != bare {
        return Err(mismatch(
            "the QS's key package decoder does not re-encode exactly",
        ));
    }
    Ok(reencode(MlsMessageBodyIn::KeyPackage(decoded)))
}

fn ratchet_tree(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(decode::ratchet_tree(bytes)?
        .tls_serialize_detached()
        .unwrap())
}

fn protocol_message(bytes: &[u8]) -> Result<(ProtocolMessage, Vec<u8>), WireError> {
    let message = decode::protocol_message(bytes)?;
    let body = match message.clone() {
        ProtocolMessage::PublicMessage(m) => MlsMessageBodyIn::PublicMessage(*m),
        ProtocolMessage::PrivateMessage(m) => MlsMessageBodyIn::PrivateMessage(m),
    };
    Ok((message, reencode(body)))
}

fn public_message(bytes: &[u8], content: ContentType) -> Result<Vec<u8>, WireError> {
    let (message, out) = protocol_message(bytes)?;
    if !matches!(message, ProtocolMessage::PublicMessage(_)) || message.content_type() != content {
        return Err(mismatch(format!("not a public {content:?} message")));
    }
    Ok(out)
}

fn public_application(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    public_message(bytes, ContentType::Application)
}

fn public_proposal(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    public_message(bytes, ContentType::Proposal)
}

fn public_commit(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    public_message(bytes, ContentType::Commit)
}

fn private_message(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let (message, out) = protocol_message(bytes)?;
    if !matches!(message, ProtocolMessage::PrivateMessage(_)) {
        return Err(mismatch("not a private message"));
    }
    Ok(out)
}

/// A bare `Commit`, framed by us as the content of a public message from member 0 (group
/// id `0xaa`, epoch 7, signature and tags of the right sizes), through the DS's
/// public-message decoder. The frame re-encodes exactly iff the commit does; the commit's
/// own bytes are returned.
fn commit(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut prefix = mls10();
    prefix.extend([0x00, 0x01]); // wire format: public message
    prefix.extend([0x01, 0xaa]); // group id <V>
    prefix.extend(7u64.to_be_bytes()); // epoch
    prefix.extend([0x01, 0, 0, 0, 0]); // sender: member, leaf 0
    prefix.push(0x00); // authenticated data <V>
    prefix.push(0x03); // content type: commit
    let mut suffix = vec![0x40, 0x40];
    suffix.extend([0x5a; 64]); // signature <V>
    suffix.push(0x20);
    suffix.extend([0x3c; 32]); // confirmation tag <V>
    suffix.push(0x20);
    suffix.extend([0x4b; 32]); // membership tag <V>
    let mut frame = prefix.clone();
    frame.extend_from_slice(bytes);
    frame.extend_from_slice(&suffix);
    let (message, out) = protocol_message(&frame)?;
    if message.content_type() != ContentType::Commit || out != frame {
        return Err(mismatch("the framed commit does not re-encode exactly"));
    }
    Ok(out[prefix.len()..out.len() - suffix.len()].to_vec())
}

fn bare<T: tls_codec::Deserialize + Serialize>(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    Ok(codec::decode::<T>(bytes, MAX_MLS_MESSAGE)?
        .tls_serialize_detached()
        .unwrap())
}

const GROUP_SECRETS: &str = "group_secrets";
const RE_INIT: &str = "re_init_proposal";

/// A `ReInit` proposal, as RFC 9420 encodes it, to see which extensions it carries.
#[derive(TlsDeserialize, TlsSize)]
struct RawReInit {
    _group_id: VLBytes,
    _version: u16,
    _cipher_suite: u16,
    extensions: Vec<RawExtension>,
}

#[derive(TlsDeserialize, TlsSize)]
struct RawExtension {
    extension_type: u16,
    _data: VLBytes,
}

/// Extension type `ratchet_tree` (RFC 9420, 17.3): allowed in a `GroupInfo` only.
const RATCHET_TREE_EXTENSION: u16 = 2;

/// Whether a `ReInit` proposal names a `ratchet_tree` among the extensions of the new
/// group's context, which RFC 9420 does not allow (11.2 with 17.3). Every `ReInit` of
/// `messages.json` does (mlswg/mls-implementations issue 198), and openmls refuses such a
/// proposal when decoding it: that refusal is the expected verdict.
fn reinit_with_ratchet_tree(bytes: &[u8]) -> bool {
    RawReInit::tls_deserialize_exact(bytes)
        .expect("the ReInit vector has the RFC's layout")
        .extensions
        .iter()
        .any(|e| e.extension_type == RATCHET_TREE_EXTENSION)
}

fn kinds() -> Vec<Kind> {
    let k = |field, limit, malformed, roundtrip| Kind {
        field,
        limit,
        malformed,
        roundtrip,
    };
    use ErrorCode::{InvalidGroupInfo, InvalidMlsMessage, Malformed};
    vec![
        k("mls_welcome", MAX_MLS_MESSAGE, InvalidMlsMessage, welcome),
        k(
            "mls_group_info",
            MAX_MLS_MESSAGE,
            InvalidGroupInfo,
            group_info,
        ),
        k("mls_key_package", MAX_MLS_MESSAGE, Malformed, key_package),
        k(
            "ratchet_tree",
            MAX_MLS_MESSAGE,
            InvalidMlsMessage,
            ratchet_tree,
        ),
        k(
            "add_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<AddProposalIn>,
        ),
        k(
            "update_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<UpdateProposalIn>,
        ),
        k(
            "remove_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<RemoveProposal>,
        ),
        k(
            "pre_shared_key_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<PreSharedKeyProposal>,
        ),
        k(
            "re_init_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<ReInitProposal>,
        ),
        k(
            "external_init_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<ExternalInitProposal>,
        ),
        k(
            "group_context_extensions_proposal",
            MAX_MLS_MESSAGE,
            Malformed,
            bare::<GroupContextExtensionProposalIn>,
        ),
        k("commit", MAX_MLS_MESSAGE, InvalidMlsMessage, commit),
        k(
            "public_message_application",
            MAX_MLS_MESSAGE,
            InvalidMlsMessage,
            public_application,
        ),
        k(
            "public_message_proposal",
            MAX_MLS_MESSAGE,
            InvalidMlsMessage,
            public_proposal,
        ),
        k(
            "public_message_commit",
            MAX_MLS_MESSAGE,
            InvalidMlsMessage,
            public_commit,
        ),
        k(
            "private_message",
            MAX_MLS_MESSAGE,
            InvalidMlsMessage,
            private_message,
        ),
    ]
}

// Requirement: VEC-1, WIRE-3
#[test]
fn messages_decode_and_reencode_exactly() {
    let cases: Vec<BTreeMap<String, String>> = read_vectors("messages.json");
    let kinds = kinds();
    let (mut run, mut passed, mut not_run, mut refused) = (0usize, 0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (field, value) in case {
            if field == GROUP_SECRETS {
                not_run += 1;
                continue;
            }
            let kind = kinds
                .iter()
                .find(|k| k.field == field)
                .unwrap_or_else(|| panic!("case {i}: unknown field {field}"));
            let bytes = unhex(value);
            run += 1;
            if field == RE_INIT && reinit_with_ratchet_tree(&bytes) {
                match (kind.roundtrip)(&bytes) {
                    Err(e) if e.code == ErrorCode::Malformed => refused += 1,
                    other => failures.push(format!(
                        "case {i} {field}: a ReInit with a ratchet_tree extension gave {other:?}"
                    )),
                }
                continue;
            }
            let verdict = (kind.roundtrip)(&bytes).and_then(|out| {
                if out != bytes {
                    return Err(mismatch("the re-encoding differs"));
                }
                // Exact decoding: one byte more is refused, with the decoder's code.
                let mut longer = bytes.clone();
                longer.push(0);
                match (kind.roundtrip)(&longer) {
                    Err(e) if e.code == kind.malformed => Ok(()),
                    other => Err(mismatch(format!("a trailing byte gave {other:?}"))),
                }
            });
            match verdict {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("case {i} {field}: {e}")),
            }
        }
    }
    // The limit: each decoder refuses an input one byte over it before parsing.
    for kind in &kinds {
        let over = vec![0u8; kind.limit + 1];
        let refused = (kind.roundtrip)(&over);
        assert!(
            matches!(&refused, Err(e) if e.code == ErrorCode::TooLarge),
            "{}: {} bytes gave {refused:?}",
            kind.field,
            kind.limit + 1
        );
    }
    let over_kp = vec![0u8; MAX_KEY_PACKAGE_LEN + 1];
    assert_eq!(
        decode_key_package(&over_kp).unwrap_err().code,
        ErrorCode::TooLarge
    );
    let summary = format!(
        "mls vectors: messages.json: {} cases, {run} messages run, {passed} decoded and \
         re-encoded exactly, {refused} refused as RFC 9420 requires ({RE_INIT} with a \
         ratchet_tree extension, mlswg/mls-implementations#198), {not_run} not run \
         ({GROUP_SECRETS}: no public decoder in openmls 0.9.2); {} size limits refuse one \
         byte more",
        cases.len(),
        kinds.len() + 1
    );
    println!("{summary}");
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    assert_eq!(cases.len(), 300, "{summary}");
    assert_eq!(run, 300 * kinds.len(), "{summary}");
    assert_eq!(passed + refused, run, "{summary}");
    assert!(passed >= 300 * (kinds.len() - 1), "{summary}");
}

// ---------------------------------------------------------------------------------------
// tree-validation.json

#[derive(Deserialize)]
struct TreeCase {
    cipher_suite: u16,
    tree: String,
    group_id: String,
    tree_hashes: Vec<String>,
    resolutions: Vec<Vec<u32>>,
}

/// The ratchet tree as RFC 9420 encodes it, with just enough structure for tree hashes,
/// resolutions and the position of each field: leaves keep their fields as opaque vectors.
#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct Tree(Vec<Option<Node>>);

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
enum Node {
    #[tls_codec(discriminant = 1)]
    Leaf(Box<Leaf>),
    #[tls_codec(discriminant = 2)]
    Parent(Parent),
}

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct Parent {
    encryption_key: VLBytes,
    parent_hash: VLBytes,
    unmerged_leaves: Vec<u32>,
}

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct Leaf {
    encryption_key: VLBytes,
    signature_key: VLBytes,
    credential_type: u16,
    /// The credential's content: one vector for both basic and X.509 credentials.
    credential: VLBytes,
    /// Capabilities: versions, cipher suites, extensions, proposals, credentials.
    versions: VLBytes,
    cipher_suites: VLBytes,
    extension_types: VLBytes,
    proposal_types: VLBytes,
    credential_types: VLBytes,
    source: LeafSource,
    extensions: VLBytes,
    signature: VLBytes,
}

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
enum LeafSource {
    #[tls_codec(discriminant = 1)]
    KeyPackage(Lifetime),
    #[tls_codec(discriminant = 2)]
    Update,
    #[tls_codec(discriminant = 3)]
    Commit(VLBytes),
}

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct Lifetime {
    not_before: u64,
    not_after: u64,
}

/// Tree math of RFC 9420, appendix C, on node indices of a tree of `width` nodes.
fn level(x: usize) -> u32 {
    x.trailing_ones()
}

fn children(x: usize) -> (usize, usize) {
    let k = level(x);
    (x ^ (1 << (k - 1)), x ^ (3 << (k - 1)))
}

fn node(tree: &Tree, x: usize) -> Option<&Node> {
    tree.0.get(x).and_then(Option::as_ref)
}

/// RFC 9420, 4.1.1.
fn resolution(tree: &Tree, x: usize) -> Vec<u32> {
    match node(tree, x) {
        Some(Node::Leaf(_)) => vec![x as u32],
        Some(Node::Parent(p)) => std::iter::once(x as u32)
            .chain(p.unmerged_leaves.iter().map(|l| 2 * l))
            .collect(),
        None if level(x) == 0 => Vec::new(),
        None => {
            let (l, r) = children(x);
            let mut out = resolution(tree, l);
            out.extend(resolution(tree, r));
            out
        }
    }
}

/// RFC 9420, 7.8: `TreeHashInput` of node `x`, hashed with the suite's hash.
fn tree_hash(tree: &Tree, suite: Ciphersuite, x: usize) -> Vec<u8> {
    let mut input = Vec::new();
    if level(x) == 0 {
        input.push(1);
        input.extend(((x / 2) as u32).to_be_bytes());
        push_optional(&mut input, node(tree, x));
    } else {
        let (l, r) = children(x);
        input.push(2);
        push_optional(&mut input, node(tree, x));
        VLBytes::new(tree_hash(tree, suite, l))
            .tls_serialize(&mut input)
            .unwrap();
        VLBytes::new(tree_hash(tree, suite, r))
            .tls_serialize(&mut input)
            .unwrap();
    }
    RustCrypto::default()
        .hash(suite.hash_algorithm(), &input)
        .unwrap()
}

/// `optional<LeafNode>` or `optional<ParentNode>`: the node without its type byte.
fn push_optional(out: &mut Vec<u8>, node: Option<&Node>) {
    match node {
        None => out.push(0),
        Some(Node::Leaf(leaf)) => {
            out.push(1);
            leaf.tls_serialize(out).unwrap();
        }
        Some(Node::Parent(parent)) => {
            out.push(1);
            parent.tls_serialize(out).unwrap();
        }
    }
}

/// Byte offset of node `x` (its `optional` presence byte) in the encoded tree.
fn offset_of(tree: &Tree, encoded_len: usize, x: usize) -> usize {
    let nodes: usize = tree.0.iter().map(Size::tls_serialized_len).sum();
    let header = encoded_len - nodes;
    header
        + tree.0[..x]
            .iter()
            .map(Size::tls_serialized_len)
            .sum::<usize>()
}

/// A `GroupInfo` (as an `MLSMessage`) for the vector's group and tree hash, claiming to be
/// signed by leaf `signer`; its signature is not a signature (nobody holds the leaves'
/// keys).
fn group_info_for(suite: Ciphersuite, group_id: &[u8], tree_hash: &[u8], signer: u32) -> Vec<u8> {
    let mut out = mls10();
    out.extend([0x00, 0x04]); // wire format: group info
    out.extend(ProtocolVersion::Mls10.tls_serialize_detached().unwrap());
    out.extend(u16::from(suite).to_be_bytes());
    VLBytes::new(group_id.to_vec())
        .tls_serialize(&mut out)
        .unwrap();
    out.extend(1u64.to_be_bytes()); // epoch
    VLBytes::new(tree_hash.to_vec())
        .tls_serialize(&mut out)
        .unwrap();
    VLBytes::new(vec![0x11; tree_hash.len()])
        .tls_serialize(&mut out)
        .unwrap(); // confirmed transcript hash
    out.push(0x00); // group context extensions
    out.push(0x00); // group info extensions
    VLBytes::new(vec![0x22; tree_hash.len()])
        .tls_serialize(&mut out)
        .unwrap(); // confirmation tag
    out.extend(signer.to_be_bytes());
    VLBytes::new(vec![0x33; 64])
        .tls_serialize(&mut out)
        .unwrap(); // "signature"
    out
}

fn rebuild(tree: &[u8], info: &[u8]) -> Result<(), RebuildGroupError> {
    let info = decode::group_info(info).expect("our group info decodes");
    rebuild_public_group(tree, info).map(|_| ())
}

// Requirement: VEC-2, DS-COMMIT-1
#[test]
fn trees_validate_through_the_ds() {
    let cases: Vec<TreeCase> = read_vectors("tree-validation.json");
    let crypto = RustCrypto::default();
    let mut run = 0usize;
    let mut passed = 0usize;
    let mut leaf_refused = 0usize;
    let mut parent_refused = 0usize;
    let mut no_parent = 0usize;
    let mut skipped: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let suite = Ciphersuite::try_from(case.cipher_suite).expect("a known cipher suite");
        if crypto.supports(suite).is_err() {
            *skipped.entry(case.cipher_suite).or_default() += 1;
            continue;
        }
        run += 1;
        let bytes = unhex(&case.tree);
        let group_id = unhex(&case.group_id);
        let tree = Tree::tls_deserialize_exact(bytes.as_slice()).expect("the tree decodes");
        assert_eq!(tree.tls_serialize_detached().unwrap(), bytes, "case {i}");

        // Tree hashes and resolutions of every node of the full-width tree.
        let width = case.tree_hashes.len();
        assert_eq!(case.resolutions.len(), width, "case {i}");
        let mut ok = true;
        for x in 0..width {
            if resolution(&tree, x) != case.resolutions[x] {
                failures.push(format!("case {i}: resolution of node {x}"));
                ok = false;
            }
            if tree_hash(&tree, suite, x) != unhex(&case.tree_hashes[x]) {
                failures.push(format!("case {i}: tree hash of node {x}"));
                ok = false;
            }
        }
        let root = (width - 1) / 2;
        let root_hash = unhex(&case.tree_hashes[root]);

        // The DS: every tree check passes; the rebuild stops at the group info signature.
        let signer = (0..tree.0.len())
            .step_by(2)
            .find(|x| node(&tree, *x).is_some())
            .expect("a tree has a leaf") as u32
            / 2;
        let info = group_info_for(suite, &group_id, &root_hash, signer);
        match rebuild(&bytes, &info) {
            Err(RebuildGroupError::GroupInfoSignature) => {}
            other => {
                failures.push(format!("case {i}: the DS gave {other:?}"));
                ok = false;
            }
        }

        // A flipped byte in the signer's leaf signature (its last byte).
        let leaf_x = 2 * signer as usize;
        let leaf_end = offset_of(&tree, bytes.len(), leaf_x + 1);
        let mut mutated = bytes.clone();
        mutated[leaf_end - 1] ^= 0x01;
        match rebuild(&mutated, &info) {
            Err(e @ RebuildGroupError::LeafSignature) => {
                assert_eq!(WireError::from(e).code, ErrorCode::InvalidGroupInfo);
                leaf_refused += 1;
            }
            other => {
                failures.push(format!("case {i}: a bad leaf signature gave {other:?}"));
                ok = false;
            }
        }

        // A flipped byte in a parent node: the first byte of its parent hash, or of its
        // encryption key for the root (whose parent hash is empty). Either breaks the
        // parent-hash chain that reaches it from a leaf.
        let parent = (1..tree.0.len())
            .step_by(2)
            .find_map(|x| match node(&tree, x) {
                Some(Node::Parent(p)) if !p.parent_hash.as_slice().is_empty() => Some((x, p, true)),
                _ => None,
            });
        let parent = parent.or_else(|| match node(&tree, root) {
            Some(Node::Parent(p)) => Some((root, p, false)),
            _ => None,
        });
        if let Some((x, p, in_parent_hash)) = parent {
            // presence byte, node type, then the encryption key <V>.
            let key_at = offset_of(&tree, bytes.len(), x) + 2;
            let key_len = p.encryption_key.tls_serialized_len();
            let at = if in_parent_hash {
                let hash_header =
                    p.parent_hash.tls_serialized_len() - p.parent_hash.as_slice().len();
                key_at + key_len + hash_header
            } else {
                key_at + key_len - p.encryption_key.as_slice().len()
            };
            let mut mutated = bytes.clone();
            mutated[at] ^= 0x01;
            match rebuild(&mutated, &info) {
                Err(e @ RebuildGroupError::ParentHash) => {
                    assert_eq!(WireError::from(e).code, ErrorCode::InvalidGroupInfo);
                    parent_refused += 1;
                }
                other => {
                    failures.push(format!("case {i}: a bad parent node {x} gave {other:?}"));
                    ok = false;
                }
            }
        } else {
            no_parent += 1;
        }
        if ok {
            passed += 1;
        }
    }
    let skipped_total: usize = skipped.values().sum();
    let summary = format!(
        "mls vectors: tree-validation.json: {} trees, {run} run, {passed} passed \
         (tree hashes and resolutions match; the DS's rebuild passes every tree check), \
         {leaf_refused} with a flipped leaf-signature byte refused, {parent_refused} with a \
         flipped parent-node byte refused ({no_parent} without a parent node), \
         {skipped_total} skipped (unsupported suites {skipped:?})",
        cases.len()
    );
    println!("{summary}");
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    // Suites 1 to 3 are what openmls_rust_crypto implements: 14 trees each.
    assert!(run >= 42, "{summary}");
    assert_eq!(passed, run, "{summary}");
    assert_eq!(leaf_refused, run, "{summary}");
    assert_eq!(parent_refused + no_parent, run, "{summary}");
    assert!(parent_refused >= run - 3, "{summary}");
}

// ---------------------------------------------------------------------------------------
// deserialization.json

#[derive(Deserialize)]
struct HeaderCase {
    vlbytes_header: String,
    length: usize,
}

// Requirement: VEC-1, WIRE-3
#[test]
fn variable_length_headers_through_our_codec() {
    let cases: Vec<HeaderCase> = read_vectors("deserialization.json");
    let (mut decoded, mut refused) = (0usize, 0usize);
    for case in &cases {
        let header = unhex(&case.vlbytes_header);
        if header.len() + case.length <= codec::MAX_BODY {
            let mut body = header.clone();
            body.resize(header.len() + case.length, 0x5a);
            let value: VLBytes = codec::decode(&body, codec::MAX_BODY).unwrap();
            assert_eq!(
                value.as_slice().len(),
                case.length,
                "{}",
                case.vlbytes_header
            );
            assert_eq!(value.tls_serialize_detached().unwrap(), body);
            // One byte short: the claimed length is not there.
            let short = codec::decode::<VLBytes>(&body[..body.len() - 1], codec::MAX_BODY);
            if case.length > 0 {
                assert_eq!(short.unwrap_err().code, ErrorCode::Malformed);
            }
            decoded += 1;
        } else {
            // Longer than any body we accept: a message claiming it is refused without
            // the bytes being there (and without allocating them).
            let claim = codec::decode::<VLBytes>(&header, codec::MAX_BODY);
            assert_eq!(claim.unwrap_err().code, ErrorCode::Malformed);
            refused += 1;
        }
    }
    let summary = format!(
        "mls vectors: deserialization.json: {} headers, {decoded} decoded and re-encoded \
         exactly, {refused} beyond our body limit refused",
        cases.len()
    );
    println!("{summary}");
    assert_eq!(decoded + refused, 14, "{summary}");
    assert!(decoded >= 13, "{summary}");
}
