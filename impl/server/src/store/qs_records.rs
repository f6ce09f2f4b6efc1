//! [`QsRecordStore`] for both backends: deleting QS records (QS-REC-1). The rows that hang
//! off a client record (queue, key packages) go by `ON DELETE CASCADE`; its delivery
//! records (`qs_delivered`, no foreign key) are deleted here.

use std::future::Future;

use phoenix_types::ids::QsId;

use super::{ReplayRecord, ReplayService, Store, StoreResult};

/// What [`QsRecordStore::delete_client`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The client record is gone; `user` says whether its user record went with it.
    Client { user: bool },
    /// There was no such client record.
    Unknown,
}

pub trait QsRecordStore {
    // Requirement: QS-REC-1, ADV-REPLAY-3
    /// Delete the client record with its queue, key packages and delivery records, and its
    /// user record if no other client is left, with the request's replay record, in one
    /// transaction.
    fn delete_client(
        &self,
        client_id: &QsId,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<Deleted>> + Send;
}

mod sql {
    pub const USER_OF: &str = "SELECT user_id FROM qs_clients WHERE client_id = $1";
    pub const DELIVERED: &str = "DELETE FROM qs_delivered WHERE client_id = $1";
    pub const CLIENT: &str = "DELETE FROM qs_clients WHERE client_id = $1";
    pub const LONELY_USER: &str = "DELETE FROM qs_users WHERE user_id = $1 \
        AND NOT EXISTS (SELECT 1 FROM qs_clients WHERE user_id = $1)";
}

impl QsRecordStore for Store {
    async fn delete_client(&self, client_id: &QsId, replay: &ReplayRecord) -> StoreResult<Deleted> {
        match self {
            Store::Sqlite(store) => sqlite::delete_client(store.pool(), client_id, replay).await,
            Store::Postgres(store) => {
                postgres::delete_client(store.pool(), client_id, replay).await
            }
        }
    }
}

/// Both backends' functions, from one body.
macro_rules! backend {
    ($name:ident, $pool:ty, $begin:expr) => {
        mod $name {
            use super::*;

            pub(super) async fn delete_client(
                pool: &$pool,
                client_id: &QsId,
                replay: &ReplayRecord,
            ) -> StoreResult<Deleted> {
                let mut tx = pool.begin_with($begin).await?;
                super::super::ephemeral::$name::record_request(&mut tx, ReplayService::Qs, replay)
                    .await?;
                let user: Option<Vec<u8>> = sqlx::query_scalar(sql::USER_OF)
                    .bind(client_id.as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(user) = user else {
                    tx.rollback().await?;
                    return Ok(Deleted::Unknown);
                };
                sqlx::query(sql::DELIVERED)
                    .bind(client_id.as_slice())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::CLIENT)
                    .bind(client_id.as_slice())
                    .execute(&mut *tx)
                    .await?;
                let user_deleted = sqlx::query(sql::LONELY_USER)
                    .bind(user.as_slice())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(Deleted::Client { user: user_deleted })
            }
        }
    };
}

backend!(sqlite, sqlx::SqlitePool, "BEGIN IMMEDIATE");
backend!(postgres, sqlx::PgPool, "BEGIN");
