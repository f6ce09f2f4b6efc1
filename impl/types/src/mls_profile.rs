//! Phoenix's MLS profile: the settings every Phoenix client uses for its groups, in one
//! place for the client library and the fuzz harness (which builds groups as clients do).
//!
//! - Ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519` (the MTI suite).
//! - Leaves advertise the Phoenix queue-config extension and last-resort key packages.
//! - Handshake messages are public messages (the DS validates commits), application
//!   messages private (the wire-format policy allows both).
//! - No ratchet tree extension: the tree travels next to the GroupInfo.
//! - Members keep [`MAX_PAST_EPOCHS`] past epochs, so messages sent just before a commit
//!   still decrypt after it.
//! - Within an epoch, a receiver decrypts a sender's messages out of order up to
//!   [`OUT_OF_ORDER_TOLERANCE`] generations back, and skips at most
//!   [`MAXIMUM_FORWARD_DISTANCE`] generations ahead ([`sender_ratchet`]).

use openmls::prelude::{
    Capabilities, Ciphersuite, ExtensionType, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsGroupJoinConfigBuilder,
    SenderRatchetConfiguration,
};

use crate::messages::qs::QUEUE_CONFIG_EXTENSION_TYPE;

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member can still decrypt messages of.
pub const MAX_PAST_EPOCHS: usize = 5;

// Requirement: CL-ORDER-1
/// How many generations behind the newest one a receiver still decrypts (openmls keeps the
/// keys of skipped generations up to this many; its default is 5). Queues deliver in order
/// (the DS's outbox per destination queue, one writer per client state), so reordering
/// comes only from faults: a federation retry racing a newer entry, a second server
/// process delivering. 5 was too few under such faults (a receiver dropped every message
/// more than 5 generations behind the newest it had seen, "Generation is too old to be
/// processed"); each kept key is a small loss of forward secrecy, for at most the rest of
/// the epoch, so the window stays bounded rather than generous.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 32;

/// How many generations ahead of the last one received a message may be (the receiver
/// derives every key in between): openmls's default, which bounds the work one message
/// can cost a receiver.
pub const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

/// The sender-ratchet settings of every Phoenix group (see [`OUT_OF_ORDER_TOLERANCE`]).
pub fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

/// Leaf capabilities: the Phoenix queue config extension and last-resort key packages.
pub fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(QUEUE_CONFIG_EXTENSION_TYPE),
            ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

/// The settings a group is created with.
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .capabilities(capabilities())
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .build()
}

/// The settings a group is joined with.
pub fn join_config() -> MlsGroupJoinConfig {
    join_config_builder().build()
}

/// [`join_config`]'s settings, for callers that need one more.
pub fn join_config_builder() -> MlsGroupJoinConfigBuilder {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
}
