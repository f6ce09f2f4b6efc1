//! Decoding database rows into the store's records, shared by both backends: the two
//! schemas use the same column names, so only reading one column is backend-specific.
//!
//! Every unsigned or fixed-size value is checked here, so corrupt data becomes
//! [`StoreError::Corrupt`](super::StoreError::Corrupt), never a panic or a silently wrapped number. This module does
//! not run queries.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use tls_codec::VLBytes;

use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;

use super::{
    AsClientRecord, CaRecord, OutboxEntry, QsClientRecord, QsUserRecord, StoreResult, StoredGroup,
    fixed, from_db,
};

/// Reading one typed column of a row, by name.
pub(super) trait Columns {
    fn bytes(&self, column: &str) -> StoreResult<Vec<u8>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn text(&self, column: &str) -> StoreResult<String>;
    fn flag(&self, column: &str) -> StoreResult<bool>;

    fn unsigned(&self, column: &str) -> StoreResult<u64> {
        from_db(self.int(column)?)
    }

    fn array<const N: usize>(&self, column: &str, what: &'static str) -> StoreResult<[u8; N]> {
        fixed(&self.bytes(column)?, what)
    }

    fn qs_id(&self, column: &str) -> StoreResult<QsId> {
        self.array(column, "QS id is not 16 bytes")
    }
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn bytes(&self, column: &str) -> StoreResult<Vec<u8>> {
                Ok(self.try_get(column)?)
            }

            fn int(&self, column: &str) -> StoreResult<i64> {
                Ok(self.try_get(column)?)
            }

            fn text(&self, column: &str) -> StoreResult<String> {
                Ok(self.try_get(column)?)
            }

            fn flag(&self, column: &str) -> StoreResult<bool> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

impl_columns!(SqliteRow);
impl_columns!(PgRow);

/// Columns: signing_key, certificate, not_before, not_after.
pub(super) fn ca(row: &impl Columns) -> StoreResult<CaRecord> {
    Ok(CaRecord {
        // Sealed (see `keys_at_rest`); opened and checked at start-up.
        signing_key: row.bytes("signing_key")?,
        certificate: row.bytes("certificate")?,
        not_before: row.unsigned("not_before")?,
        not_after: row.unsigned("not_after")?,
    })
}

/// Columns: fid, client_id, certificate, public_key, serial, not_before, not_after.
pub(super) fn as_client(row: &impl Columns) -> StoreResult<AsClientRecord> {
    Ok(AsClientRecord {
        fid: row.text("fid")?,
        client_id: row.text("client_id")?,
        certificate: row.bytes("certificate")?,
        public_key: row.array("public_key", "client public key is not 32 bytes")?,
        serial: row.text("serial")?,
        not_before: row.unsigned("not_before")?,
        not_after: row.unsigned("not_after")?,
    })
}

/// Columns: client_id, certificate, not_before, not_after.
pub(super) fn certificate(row: &impl Columns) -> StoreResult<(String, Vec<u8>, u64, u64)> {
    Ok((
        row.text("client_id")?,
        row.bytes("certificate")?,
        row.unsigned("not_before")?,
        row.unsigned("not_after")?,
    ))
}

/// Columns: seq, payload.
pub(super) fn queue_message(row: &impl Columns) -> StoreResult<QueueMessage> {
    Ok(QueueMessage {
        sequence_number: row.unsigned("seq")?,
        payload: VLBytes::new(row.bytes("payload")?),
    })
}

/// Columns: seq, payload, sealed (of `qs_queue`): the payload as the QS serves it, an
/// encoded `QueueEntry`.
pub(super) fn qs_queue_message(row: &impl Columns) -> StoreResult<QueueMessage> {
    Ok(QueueMessage {
        sequence_number: row.unsigned("seq")?,
        payload: VLBytes::new(super::queue_sealing::served(
            row.bytes("payload")?,
            row.flag("sealed")?,
        )?),
    })
}

/// Columns: user_id, auth_key, friendship_token_hash.
pub(super) fn qs_user(row: &impl Columns) -> StoreResult<QsUserRecord> {
    Ok(QsUserRecord {
        user_id: row.qs_id("user_id")?,
        auth_key: row.array("auth_key", "QS user auth key is not 32 bytes")?,
        friendship_token_hash: row.array(
            "friendship_token_hash",
            "friendship token hash is not 32 bytes",
        )?,
    })
}

/// Columns: client_id, user_id, auth_key.
pub(super) fn qs_client(row: &impl Columns) -> StoreResult<QsClientRecord> {
    Ok(QsClientRecord {
        client_id: row.qs_id("client_id")?,
        user_id: row.qs_id("user_id")?,
        auth_key: row.array("auth_key", "QS client auth key is not 32 bytes")?,
        queue: None,
    })
}

/// Columns: ciphertext, version.
pub(super) fn group(row: &impl Columns) -> StoreResult<StoredGroup> {
    Ok(StoredGroup {
        ciphertext: row.bytes("ciphertext")?,
        version: row.unsigned("version")?,
    })
}

/// Columns: id, destination, queue_config, payload, dedup, notify.
pub(super) fn outbox(row: &impl Columns) -> StoreResult<(i64, OutboxEntry)> {
    Ok((
        row.int("id")?,
        OutboxEntry {
            destination: row.text("destination")?,
            queue_config: row.bytes("queue_config")?,
            payload: row.bytes("payload")?,
            dedup: row.array("dedup", "outbox dedup key is not 16 bytes")?,
            notify: row.flag("notify")?,
        },
    ))
}
