//! [`PushStore`] for both backends: the sealed push endpoint of a QS client record
//! (`qs_clients.push_endpoint`, migration `0016_push_endpoint`). The QS seals and opens the
//! endpoint ([`crate::qs::push`]); the store keeps only the sealed bytes.

use std::future::Future;

use phoenix_types::ids::QsId;

use super::{ReplayRecord, ReplayService, Store, StoreResult, fixed};

pub trait PushStore {
    // Requirement: QS-PUSH-1, ADV-REPLAY-3
    /// Set (`Some`) or clear (`None`) the client's sealed push endpoint, with the request's
    /// replay record, in one transaction. False if the client record does not exist.
    fn set_push_endpoint(
        &self,
        client_id: &QsId,
        sealed: Option<&[u8]>,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// The sealed push endpoints of those of `clients` that have one.
    fn push_endpoints(
        &self,
        clients: &[QsId],
    ) -> impl Future<Output = StoreResult<Vec<(QsId, Vec<u8>)>>> + Send;

    // Requirement: QS-PUSH-3
    /// Delete the client's push endpoint if it is still `sealed` (the push service said it
    /// is gone; a newer endpoint set meanwhile stays). True if it was deleted.
    fn forget_push_endpoint(
        &self,
        client_id: &QsId,
        sealed: &[u8],
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

mod sql {
    pub const SET: &str = "UPDATE qs_clients SET push_endpoint = $2 WHERE client_id = $1";
    pub const FORGET: &str =
        "UPDATE qs_clients SET push_endpoint = NULL WHERE client_id = $1 AND push_endpoint = $2";
    /// The ids as a JSON array of hex strings.
    pub const MANY_SQLITE: &str = "SELECT client_id, push_endpoint FROM qs_clients \
        WHERE client_id IN (SELECT unhex(value) FROM json_each($1)) \
        AND push_endpoint IS NOT NULL";
    pub const MANY: &str = "SELECT client_id, push_endpoint FROM qs_clients \
        WHERE client_id = ANY($1::bytea[]) AND push_endpoint IS NOT NULL";
}

impl PushStore for Store {
    async fn set_push_endpoint(
        &self,
        client_id: &QsId,
        sealed: Option<&[u8]>,
        replay: &ReplayRecord,
    ) -> StoreResult<bool> {
        match self {
            Store::Sqlite(store) => sqlite::set(store.pool(), client_id, sealed, replay).await,
            Store::Postgres(store) => postgres::set(store.pool(), client_id, sealed, replay).await,
        }
    }

    async fn push_endpoints(&self, clients: &[QsId]) -> StoreResult<Vec<(QsId, Vec<u8>)>> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>, Vec<u8>)> = match self {
            Store::Sqlite(store) => {
                let ids: Vec<String> = clients.iter().map(hex::encode).collect();
                let ids = serde_json::to_string(&ids)
                    .map_err(|_| super::StoreError::Corrupt("client ids as JSON"))?;
                sqlx::query_as(sql::MANY_SQLITE)
                    .bind(ids)
                    .fetch_all(store.pool())
                    .await?
            }
            Store::Postgres(store) => {
                let ids: Vec<&[u8]> = clients.iter().map(|c| c.as_slice()).collect();
                sqlx::query_as(sql::MANY)
                    .bind(&ids)
                    .fetch_all(store.pool())
                    .await?
            }
        };
        rows.into_iter()
            .map(|(id, sealed)| Ok((fixed::<16>(&id, "QS client id is not 16 bytes")?, sealed)))
            .collect()
    }

    async fn forget_push_endpoint(&self, client_id: &QsId, sealed: &[u8]) -> StoreResult<bool> {
        match self {
            Store::Sqlite(store) => sqlite::forget(store.pool(), client_id, sealed).await,
            Store::Postgres(store) => postgres::forget(store.pool(), client_id, sealed).await,
        }
    }
}

/// Both backends' `set` and `forget`, from one body.
macro_rules! backend {
    ($name:ident, $pool:ty, $begin:expr) => {
        mod $name {
            use super::*;

            pub(super) async fn set(
                pool: &$pool,
                client_id: &QsId,
                sealed: Option<&[u8]>,
                replay: &ReplayRecord,
            ) -> StoreResult<bool> {
                let mut tx = pool.begin_with($begin).await?;
                super::super::ephemeral::$name::record_request(&mut tx, ReplayService::Qs, replay)
                    .await?;
                let updated = sqlx::query(sql::SET)
                    .bind(client_id.as_slice())
                    .bind(sealed)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }

            pub(super) async fn forget(
                pool: &$pool,
                client_id: &QsId,
                sealed: &[u8],
            ) -> StoreResult<bool> {
                let done = sqlx::query(sql::FORGET)
                    .bind(client_id.as_slice())
                    .bind(sealed)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(done == 1)
            }
        }
    };
}

backend!(sqlite, sqlx::SqlitePool, "BEGIN IMMEDIATE");
backend!(postgres, sqlx::PgPool, "BEGIN");
