//! [`EphemeralStore`] for both backends, written once: the cache of other servers' actors'
//! certificates (`p2_idcert_cache`, migration `0005_idcert_cache`), the pruning of
//! replay records (`qs_federation_seen`, `ds_seen_messages`, and the signed requests'
//! `as_seen_requests`, `qs_seen_requests`, `ds_seen_requests`: read and pruned here, and
//! written by `record_request`, also here, which the backends call inside the transaction
//! of each request's effect) and the purges of
//! expired connection packages (`as_connection_packages.not_after`) and of group id
//! reservations that expired unused (`ds_reservations`; migration `0010_expiry_purges`).
//!
//! The statements use `$n` placeholders, which SQLite accepts too; the one difference
//! between the backends is how a read-modify-write transaction excludes other writers
//! (SQLite takes the write lock first with `BEGIN IMMEDIATE`, as in [`super::sqlite`];
//! Postgres locks the cache table against other writers).

use super::rows::Columns;
use super::{
    CachedIdCerts, EphemeralStore, ReplayRecord, ReplayService, Store, StoreError, StoreResult,
    bound, from_db, to_db,
};

/// Calls the function of whichever backend is configured.
macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(store) => sqlite::$method(store.pool(), $($arg),*).await,
            Store::Postgres(store) => postgres::$method(store.pool(), $($arg),*).await,
        }
    };
}

impl EphemeralStore for Store {
    async fn cached_idcerts(&self, fid: &str, now: u64) -> StoreResult<Option<CachedIdCerts>> {
        delegate!(self, cached_idcerts(fid, now))
    }

    async fn put_cached_idcerts(
        &self,
        entry: &CachedIdCerts,
        now: u64,
        max_entries: u64,
    ) -> StoreResult<()> {
        delegate!(self, put_cached_idcerts(entry, now, max_entries))
    }

    async fn purge_idcert_cache(&self, now: u64) -> StoreResult<u64> {
        delegate!(self, purge_idcert_cache(now))
    }

    async fn idcert_cache_len(&self) -> StoreResult<u64> {
        delegate!(self, idcert_cache_len())
    }

    async fn prune_federation_seen(&self, before: u64) -> StoreResult<u64> {
        delegate!(self, prune_federation_seen(before))
    }

    async fn prune_ds_seen(&self, before: u64) -> StoreResult<u64> {
        delegate!(self, prune_ds_seen(before))
    }

    async fn prune_qs_delivered(&self, before: u64) -> StoreResult<u64> {
        delegate!(self, prune_qs_delivered(before))
    }

    async fn purge_connection_packages(&self, now: u64) -> StoreResult<u64> {
        delegate!(self, purge_connection_packages(now))
    }

    async fn purge_group_reservations(&self, now: u64) -> StoreResult<u64> {
        delegate!(self, purge_group_reservations(now))
    }

    async fn request_seen(&self, service: ReplayService, digest: &[u8; 32]) -> StoreResult<bool> {
        delegate!(self, request_seen(service, digest))
    }

    async fn prune_seen_requests(&self, before: u64) -> StoreResult<u64> {
        delegate!(self, prune_seen_requests(before))
    }
}

fn cached(row: &impl Columns) -> StoreResult<CachedIdCerts> {
    Ok(CachedIdCerts {
        fid: row.text("fid")?,
        answer: row.text("answer")?,
        not_valid_after: row.unsigned("not_valid_after")?,
        fetched_at: row.unsigned("fetched_at")?,
    })
}

mod sql {
    pub const CACHED: &str = "SELECT fid, answer, not_valid_after, fetched_at \
         FROM p2_idcert_cache WHERE fid = $1";
    pub const EVICT: &str = "DELETE FROM p2_idcert_cache WHERE fid = $1 AND not_valid_after <= $2";
    pub const PURGE: &str = "DELETE FROM p2_idcert_cache WHERE not_valid_after <= $1";
    pub const COUNT_OTHERS: &str = "SELECT count(*) FROM p2_idcert_cache WHERE fid <> $1";
    pub const EVICT_SOONEST: &str = "DELETE FROM p2_idcert_cache WHERE fid IN \
         (SELECT fid FROM p2_idcert_cache WHERE fid <> $1 \
          ORDER BY not_valid_after, fid LIMIT $2)";
    pub const UPSERT: &str = "INSERT INTO p2_idcert_cache \
         (fid, answer, not_valid_after, fetched_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (fid) DO UPDATE SET answer = excluded.answer, \
         not_valid_after = excluded.not_valid_after, fetched_at = excluded.fetched_at";
    pub const LEN: &str = "SELECT count(*) FROM p2_idcert_cache";
    pub const PRUNE_SEEN: &str = "DELETE FROM qs_federation_seen WHERE received_at < $1";
    pub const PRUNE_DS_SEEN: &str = "DELETE FROM ds_seen_messages WHERE received_at < $1";
    pub const PRUNE_QS_DELIVERED: &str = "DELETE FROM qs_delivered WHERE delivered_at < $1";
    pub const PURGE_CONNECTION_PACKAGES: &str =
        "DELETE FROM as_connection_packages WHERE not_after <= $1";
    pub const PURGE_GROUP_RESERVATIONS: &str = "DELETE FROM ds_reservations WHERE expires_at <= $1";
    pub const AS_REQUEST_SEEN: &str = "SELECT count(*) FROM as_seen_requests WHERE digest = $1";
    pub const QS_REQUEST_SEEN: &str = "SELECT count(*) FROM qs_seen_requests WHERE digest = $1";
    pub const DS_REQUEST_SEEN: &str = "SELECT count(*) FROM ds_seen_requests WHERE digest = $1";
    pub const RECORD_REQUEST: [&str; 3] = [
        "INSERT INTO as_seen_requests (digest, received_at) VALUES ($1, $2) \
         ON CONFLICT (digest) DO NOTHING",
        "INSERT INTO qs_seen_requests (digest, received_at) VALUES ($1, $2) \
         ON CONFLICT (digest) DO NOTHING",
        "INSERT INTO ds_seen_requests (digest, received_at) VALUES ($1, $2) \
         ON CONFLICT (digest) DO NOTHING",
    ];
    pub const PRUNE_SEEN_REQUESTS: [&str; 3] = [
        "DELETE FROM as_seen_requests WHERE received_at < $1",
        "DELETE FROM qs_seen_requests WHERE received_at < $1",
        "DELETE FROM ds_seen_requests WHERE received_at < $1",
    ];
}

/// Both backends' functions, from one body.
macro_rules! backend {
    ($name:ident, $db:ty, $pool:ty, $begin:expr, $serialize_cache_writes:expr) => {
        pub(super) mod $name {
            use super::*;

            // Requirement: ADV-REPLAY-3
            /// Write a request's replay record into `service`'s table inside `tx`, before
            /// the effect. If it was recorded before, [`StoreError::Replayed`]: the caller
            /// returns it and its transaction is dropped, i.e. rolled back, so nothing of
            /// the replay takes effect.
            pub(in crate::store) async fn record_request(
                tx: &mut sqlx::Transaction<'static, $db>,
                service: ReplayService,
                replay: &ReplayRecord,
            ) -> StoreResult<()> {
                let statement = match service {
                    ReplayService::As => sql::RECORD_REQUEST[0],
                    ReplayService::Qs => sql::RECORD_REQUEST[1],
                    ReplayService::Ds => sql::RECORD_REQUEST[2],
                };
                let recorded = sqlx::query(statement)
                    .bind(replay.digest.as_slice())
                    .bind(bound(replay.received_at))
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                if recorded == 0 {
                    return Err(StoreError::Replayed);
                }
                Ok(())
            }

            pub(super) async fn cached_idcerts(
                pool: &$pool,
                fid: &str,
                now: u64,
            ) -> StoreResult<Option<CachedIdCerts>> {
                let entry = sqlx::query(sql::CACHED)
                    .bind(fid)
                    .fetch_optional(pool)
                    .await?
                    .as_ref()
                    .map(cached)
                    .transpose()?;
                match entry {
                    Some(entry) if now < entry.not_valid_after => Ok(Some(entry)),
                    // Past its window: never returned, and evicted here (a hit writes
                    // nothing, so readers do not contend for SQLite's write lock).
                    Some(_) => {
                        sqlx::query(sql::EVICT)
                            .bind(fid)
                            .bind(bound(now))
                            .execute(pool)
                            .await?;
                        Ok(None)
                    }
                    None => Ok(None),
                }
            }

            pub(super) async fn put_cached_idcerts(
                pool: &$pool,
                entry: &CachedIdCerts,
                now: u64,
                max_entries: u64,
            ) -> StoreResult<()> {
                let mut tx = pool.begin_with($begin).await?;
                // Count and insert as one writer at a time, or concurrent fills each see
                // room and together overshoot the cap.
                if let Some(lock) = $serialize_cache_writes {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                sqlx::query(sql::PURGE)
                    .bind(bound(now))
                    .execute(&mut *tx)
                    .await?;
                let others: i64 = sqlx::query_scalar(sql::COUNT_OTHERS)
                    .bind(&entry.fid)
                    .fetch_one(&mut *tx)
                    .await?;
                let excess = from_db(others)?
                    .saturating_add(1)
                    .saturating_sub(max_entries);
                if excess > 0 {
                    sqlx::query(sql::EVICT_SOONEST)
                        .bind(&entry.fid)
                        .bind(to_db(excess)?)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(sql::UPSERT)
                    .bind(&entry.fid)
                    .bind(&entry.answer)
                    .bind(to_db(entry.not_valid_after)?)
                    .bind(to_db(entry.fetched_at)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn purge_idcert_cache(pool: &$pool, now: u64) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PURGE)
                    .bind(bound(now))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn idcert_cache_len(pool: &$pool) -> StoreResult<u64> {
                let len: i64 = sqlx::query_scalar(sql::LEN).fetch_one(pool).await?;
                from_db(len)
            }

            pub(super) async fn prune_federation_seen(
                pool: &$pool,
                before: u64,
            ) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PRUNE_SEEN)
                    .bind(bound(before))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn prune_qs_delivered(pool: &$pool, before: u64) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PRUNE_QS_DELIVERED)
                    .bind(bound(before))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn prune_ds_seen(pool: &$pool, before: u64) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PRUNE_DS_SEEN)
                    .bind(bound(before))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn purge_connection_packages(
                pool: &$pool,
                now: u64,
            ) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PURGE_CONNECTION_PACKAGES)
                    .bind(bound(now))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn purge_group_reservations(
                pool: &$pool,
                now: u64,
            ) -> StoreResult<u64> {
                Ok(sqlx::query(sql::PURGE_GROUP_RESERVATIONS)
                    .bind(bound(now))
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            pub(super) async fn request_seen(
                pool: &$pool,
                service: ReplayService,
                digest: &[u8; 32],
            ) -> StoreResult<bool> {
                let statement = match service {
                    ReplayService::As => sql::AS_REQUEST_SEEN,
                    ReplayService::Qs => sql::QS_REQUEST_SEEN,
                    ReplayService::Ds => sql::DS_REQUEST_SEEN,
                };
                let seen: i64 = sqlx::query_scalar(statement)
                    .bind(digest.as_slice())
                    .fetch_one(pool)
                    .await?;
                Ok(seen > 0)
            }

            pub(super) async fn prune_seen_requests(pool: &$pool, before: u64) -> StoreResult<u64> {
                let mut pruned = 0u64;
                for statement in sql::PRUNE_SEEN_REQUESTS {
                    pruned = pruned.saturating_add(
                        sqlx::query(statement)
                            .bind(bound(before))
                            .execute(pool)
                            .await?
                            .rows_affected(),
                    );
                }
                Ok(pruned)
            }
        }
    };
}

// SQLite: `BEGIN IMMEDIATE` already makes each writer wait for the others. Postgres: a
// table lock that excludes other writers of the cache (and not its readers).
backend!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    "BEGIN IMMEDIATE",
    None::<&str>
);
backend!(
    postgres,
    sqlx::Postgres,
    sqlx::PgPool,
    "BEGIN",
    Some("LOCK TABLE p2_idcert_cache IN SHARE ROW EXCLUSIVE MODE")
);
