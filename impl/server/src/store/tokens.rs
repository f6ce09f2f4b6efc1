//! [`TokenStore`] for both backends, written once: the AS's daily count of group-creation
//! tokens issued per client (`as_token_issuance`) and the DS's spent tokens with the
//! reservation each bought (`ds_spent_tokens`); migration `0011_group_tokens`.
//!
//! The statements use `$n` placeholders, which SQLite accepts too. Both operations are one
//! read-modify-write transaction: SQLite takes the write lock first (`BEGIN IMMEDIATE`);
//! on Postgres the primary keys decide between concurrent copies (the second insert of a
//! spent token waits for the first transaction and then does nothing).

use super::{ReplayRecord, ReplayService, Store, StoreResult, bound, to_db};

/// Outcome of [`TokenStore::reserve_with_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenReservation {
    /// The group id reserved for this token: the new one, or the one this token reserved
    /// before if that reservation is still unused and live (a retry after a lost reply).
    Reserved(Vec<u8>),
    /// The new group id is reserved or used already (the caller draws another).
    Collision,
    /// The token was spent on a reservation that has been used or has expired.
    Spent,
}

pub trait TokenStore {
    // Requirement: DS-GID-3
    /// Spend the token recorded as `digest` on reserving `group_id` until `expires_at`, in
    /// one transaction (see [`TokenReservation`]).
    fn reserve_with_token(
        &self,
        digest: &[u8; 32],
        group_id: &[u8],
        now: u64,
        expires_at: u64,
    ) -> impl Future<Output = StoreResult<TokenReservation>> + Send;

    // Requirement: AS-TOKEN-2
    /// Count `n` more tokens against the client's allowance of `limit` for `day`, with the
    /// request's replay record, in one transaction. False (and nothing changed) if the
    /// allowance would be exceeded; [`super::StoreError::Replayed`] if the request was
    /// recorded before.
    fn take_token_allowance(
        &self,
        fid: &str,
        client_id: &str,
        day: u64,
        n: u32,
        limit: u32,
        replay: &ReplayRecord,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// Calls the function of whichever backend is configured.
macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(store) => sqlite::$method(store.pool(), $($arg),*).await,
            Store::Postgres(store) => postgres::$method(store.pool(), $($arg),*).await,
        }
    };
}

impl TokenStore for Store {
    async fn reserve_with_token(
        &self,
        digest: &[u8; 32],
        group_id: &[u8],
        now: u64,
        expires_at: u64,
    ) -> StoreResult<TokenReservation> {
        delegate!(self, reserve_with_token(digest, group_id, now, expires_at))
    }

    async fn take_token_allowance(
        &self,
        fid: &str,
        client_id: &str,
        day: u64,
        n: u32,
        limit: u32,
        replay: &ReplayRecord,
    ) -> StoreResult<bool> {
        delegate!(
            self,
            take_token_allowance(fid, client_id, day, n, limit, replay)
        )
    }
}

mod sql {
    pub const SPENT: &str = "SELECT group_id FROM ds_spent_tokens WHERE digest = $1";
    pub const LIVE_RESERVATION: &str =
        "SELECT 1 FROM ds_reservations WHERE group_id = $1 AND expires_at > $2";
    pub const GROUP_EXISTS: &str = "SELECT 1 FROM ds_groups WHERE group_id = $1";
    pub const RESERVE: &str = "INSERT INTO ds_reservations (group_id, expires_at) VALUES ($1, $2) \
         ON CONFLICT (group_id) DO NOTHING";
    pub const SPEND: &str = "INSERT INTO ds_spent_tokens (digest, group_id, spent_at) \
         VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING";
    /// Adds `$4` to today's count if it stays within `$5`; a new day starts from `$4`.
    pub const TAKE_ALLOWANCE: &str = "INSERT INTO as_token_issuance (fid, client_id, day, issued) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (fid, client_id) DO UPDATE SET \
           issued = CASE WHEN as_token_issuance.day = excluded.day \
                    THEN as_token_issuance.issued + excluded.issued ELSE excluded.issued END, \
           day = excluded.day \
         WHERE as_token_issuance.day <> excluded.day \
            OR as_token_issuance.issued + excluded.issued <= $5";
}

/// Both backends' functions, from one body.
macro_rules! backend {
    ($name:ident, $db:ty, $pool:ty, $begin:expr, $one:ty) => {
        mod $name {
            use super::*;

            pub(super) async fn reserve_with_token(
                pool: &$pool,
                digest: &[u8; 32],
                group_id: &[u8],
                now: u64,
                expires_at: u64,
            ) -> StoreResult<TokenReservation> {
                let mut tx = pool.begin_with($begin).await?;
                let spent = sqlx::query_scalar::<_, Vec<u8>>(sql::SPENT)
                    .bind(digest.as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(previous) = spent {
                    let live = sqlx::query_scalar::<_, $one>(sql::LIVE_RESERVATION)
                        .bind(previous.as_slice())
                        .bind(bound(now))
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return Ok(match live {
                        Some(_) => TokenReservation::Reserved(previous),
                        None => TokenReservation::Spent,
                    });
                }
                let exists = sqlx::query_scalar::<_, $one>(sql::GROUP_EXISTS)
                    .bind(group_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let reserved = exists.is_none()
                    && sqlx::query(sql::RESERVE)
                        .bind(group_id)
                        .bind(to_db(expires_at)?)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                if !reserved {
                    tx.rollback().await?;
                    return Ok(TokenReservation::Collision);
                }
                let spent_now = sqlx::query(sql::SPEND)
                    .bind(digest.as_slice())
                    .bind(group_id)
                    .bind(bound(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if spent_now == 0 {
                    // A concurrent copy of this token committed first: answer as it did.
                    tx.rollback().await?;
                    return Box::pin(reserve_with_token(pool, digest, group_id, now, expires_at))
                        .await;
                }
                tx.commit().await?;
                Ok(TokenReservation::Reserved(group_id.to_vec()))
            }

            pub(super) async fn take_token_allowance(
                pool: &$pool,
                fid: &str,
                client_id: &str,
                day: u64,
                n: u32,
                limit: u32,
                replay: &ReplayRecord,
            ) -> StoreResult<bool> {
                if n > limit {
                    return Ok(false);
                }
                let mut tx = pool.begin_with($begin).await?;
                super::super::ephemeral::$name::record_request(&mut tx, ReplayService::As, replay)
                    .await?;
                let taken = sqlx::query(sql::TAKE_ALLOWANCE)
                    .bind(fid)
                    .bind(client_id)
                    .bind(to_db(day)?)
                    .bind(i64::from(n))
                    .bind(i64::from(limit))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if taken != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

backend!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    "BEGIN IMMEDIATE",
    i64
);
backend!(postgres, sqlx::Postgres, sqlx::PgPool, "BEGIN", i32);
