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

use openmls::prelude::{
    Capabilities, Ciphersuite, ExtensionType, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsGroupJoinConfigBuilder,
};

use crate::messages::qs::QUEUE_CONFIG_EXTENSION_TYPE;

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member can still decrypt messages of.
pub const MAX_PAST_EPOCHS: usize = 5;

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
}
