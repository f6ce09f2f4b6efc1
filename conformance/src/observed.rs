//! What a step's outcome looks like from outside the server: the comparable projection of
//! the model's outcome and of the server's HTTP answer.
//!
//! Values only the server knows (certificate serials, random QS ids) are projected away
//! after the harness checked what can be checked about them (an issued certificate names
//! the right FID and key; QS ids are learned and mapped back).

use serde::{Deserialize, Serialize};

use phoenix_model::call::{Outcome, Reply};
use phoenix_model::queue::QueueItem;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observed {
    /// A refusal with this stable code.
    Error(String),
    Empty,
    Registered,
    ConnectionPackage {
        client: u8,
        id: u32,
        last_resort: bool,
    },
    /// Dequeued messages as (sequence number, message id) and how many remain.
    Dequeued {
        messages: Vec<(u64, u32)>,
        remaining: u64,
    },
    /// The first window of a listen stream as (sequence number, message id), and whether
    /// the stream said it was everything (`Empty`).
    Streamed {
        messages: Vec<(u64, u32)>,
        drained: bool,
    },
    Certificates {
        count: u32,
    },
    /// Where a re-keyed queue's new chain starts.
    ChainStart(u64),
    ClientDeleted {
        user: bool,
    },
    QsUserCreated,
    /// The packages served, by id, sorted.
    KeyPackages {
        ids: Vec<u32>,
    },
    GroupId,
    /// Group-creation tokens issued (and their issuance proof verified): how many.
    GroupTokens {
        count: usize,
    },
    GroupInfo {
        epoch: u64,
        members: usize,
    },
    /// Verified application messages a sync reported: (sender FID, text), in order.
    Messages {
        received: Vec<(String, String)>,
    },
    /// A QS queue as (sequence number relative to the case's start, kind), and how many
    /// remain.
    Queue {
        items: Vec<(u64, String)>,
        remaining: u64,
    },
}

/// The projection of the model's outcome.
pub fn expected(outcome: &Outcome) -> Observed {
    match outcome {
        Err(code) => Observed::Error(code.as_str().to_owned()),
        Ok(reply) => match reply {
            Reply::Empty => Observed::Empty,
            Reply::Registered { .. } => Observed::Registered,
            Reply::ConnectionPackage {
                client,
                id,
                last_resort,
            } => Observed::ConnectionPackage {
                client: client.0,
                id: id.0,
                last_resort: *last_resort,
            },
            Reply::Dequeued {
                messages,
                remaining,
            } => Observed::Dequeued {
                messages: messages
                    .iter()
                    .map(|(seq, item)| (*seq, message_id(item)))
                    .collect(),
                remaining: *remaining,
            },
            Reply::Streamed { messages, drained } => Observed::Streamed {
                messages: messages
                    .iter()
                    .map(|(seq, item)| (*seq, message_id(item)))
                    .collect(),
                drained: *drained,
            },
            Reply::Certificates { count } => Observed::Certificates { count: *count },
            Reply::ChainStart(seq) => Observed::ChainStart(*seq),
            Reply::ClientDeleted { user } => Observed::ClientDeleted { user: *user },
            Reply::QsUserCreated { .. } => Observed::QsUserCreated,
            Reply::KeyPackages { packages } => {
                let mut ids: Vec<u32> = packages.iter().map(|(_, id)| id.0).collect();
                ids.sort_unstable();
                Observed::KeyPackages { ids }
            }
            Reply::GroupId(_) => Observed::GroupId,
            Reply::GroupTokens { tokens } => Observed::GroupTokens {
                count: tokens.len(),
            },
            Reply::GroupInfo { epoch, leaves, .. } => Observed::GroupInfo {
                epoch: *epoch,
                members: leaves.len(),
            },
        },
    }
}

/// The id of an opaque queue item (0 for what the DS fans out: the AS/QS suite has none).
pub fn message_id(item: &QueueItem) -> u32 {
    match item {
        QueueItem::Opaque(id) => id.0,
        _ => 0,
    }
}
