//! Seeded bugs: copies of the model's servers with one check removed each, so that the
//! model checker can be shown to catch a server that breaks an invariant (the vacuity
//! suite, `model/tests/model_check.rs` `vacuity_*`). [`ServerMutant::None`] is the model
//! itself; no real configuration sets anything else. The client's seeded bugs are
//! [`crate::recovery::ClientMutant`] and `HonestClient::skip_pin_check`.

/// Which check a broken server skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ServerMutant {
    /// The model's servers.
    #[default]
    None,
    /// The DS accepts a commit or message for any epoch (breaks `one_commit_per_epoch`;
    /// Requirement: DS-EPOCH-1).
    DsSkipsEpochCheck,
    /// The DS keeps no replay record of application messages (breaks
    /// `no_message_fanned_out_twice`; Requirement: ADV-REPLAY-2).
    DsSkipsMessageReplayRecord,
    /// The DS reserves a group id for a token its AS did not issue (breaks
    /// `groups_only_for_local_clients`; Requirement: DS-GID-3).
    DsTakesForgedTokens,
    /// The QS serves a one-time key package and keeps it (breaks
    /// `one_time_packages_served_once`; Requirement: QS-KP-3).
    QsKeepsServedPackages,
    /// The QS does not check the signature of a dequeue (breaks `only_owner_dequeues`;
    /// Requirement: QS-AUTH-1).
    QsSkipsDequeueSignature,
    /// The QS stores queue entries as the DS fanned them out, unsealed (breaks
    /// `snapshot_shows_no_queue_group`; Requirement: QS-ENC-1).
    QsStoresQueueUnsealed,
}

impl ServerMutant {
    /// Every seeded bug, with the invariant that must catch it.
    pub const ALL: [(ServerMutant, &'static str); 6] = [
        (ServerMutant::DsSkipsEpochCheck, "one_commit_per_epoch"),
        (
            ServerMutant::DsSkipsMessageReplayRecord,
            "no_message_fanned_out_twice",
        ),
        (
            ServerMutant::DsTakesForgedTokens,
            "groups_only_for_local_clients",
        ),
        (
            ServerMutant::QsKeepsServedPackages,
            "one_time_packages_served_once",
        ),
        (ServerMutant::QsSkipsDequeueSignature, "only_owner_dequeues"),
        (
            ServerMutant::QsStoresQueueUnsealed,
            "snapshot_shows_no_queue_group",
        ),
    ];
}
