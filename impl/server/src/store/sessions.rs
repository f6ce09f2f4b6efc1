//! Storage of polyproto foreign sessions ([`SessionStore`]): pending and completed key
//! trials, session tokens (only their SHA-256 hashes), and this server's view of the
//! certificates those sessions were opened with (including when each was invalidated).
//! Tables `p2_key_trials`, `p2_sessions`, `p2_certificates` (migration `0003_sessions`).
//!
//! Everything here lives in the database, so several server processes sharing one Postgres
//! agree on which trial was answered and which token is valid. Ephemeral rows are bounded:
//! pending trials per address and in total (checked in the inserting transaction), expired
//! trials and sessions purged on insert.

use std::future::Future;

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::rows::Columns;
use super::{Store, StoreResult, bound, from_db, to_db};

/// A key trial as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRecord {
    pub trial: String,
    /// The address (or IPv6 /64) it was issued to; empty once completed.
    pub ip: String,
    pub expires_at: u64,
    /// When it was answered; `None` while pending.
    pub completed_at: Option<u64>,
    /// The answer, once completed (polyproto makes completed trials public).
    pub completion: Option<TrialCompletion>,
}

impl TrialRecord {
    pub fn state(&self, now: u64) -> TrialState {
        if self.completed_at.is_some() {
            TrialState::Completed
        } else if self.expires_at < now {
            TrialState::Expired
        } else {
            TrialState::Pending
        }
    }
}

/// The lifecycle of a key trial: `Pending` → `Completed` (answered once) or `Expired`
/// (timed out, or ended by a wrong answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialState {
    Pending,
    Completed,
    Expired,
}

/// Who answered a key trial, with which certificate and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialCompletion {
    pub fid: String,
    /// Certificate serial, unsigned decimal.
    pub serial: String,
    /// Hex signature over the trial.
    pub signature: String,
}

/// A session token's record; the token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: [u8; 32],
    pub fid: String,
    /// The polyproto session id (the Phoenix client id).
    pub client_id: String,
    /// Serial (unsigned decimal) of the certificate the session was opened or last
    /// updated with.
    pub serial: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// Until when the home server's answer about the certificate may be relied on (its
    /// `cacheNotValidAfter`).
    pub verified_until: u64,
}

/// This server's record of an actor certificate used for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub fid: String,
    /// Unsigned decimal.
    pub serial: String,
    pub client_id: String,
    pub certificate: Vec<u8>,
    pub not_after: u64,
    pub invalidated_at: Option<u64>,
}

/// Outcome of [`SessionStore::insert_trial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertTrial {
    Inserted,
    /// The address has the most pending trials allowed.
    TooManyForAddress,
    /// The server has the most pending trials allowed.
    TooMany,
}

/// Outcome of [`SessionStore::complete_trial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteTrial {
    /// The trial is now completed and the session exists.
    Completed,
    Unknown,
    /// Answered before (by this or a concurrent request).
    Replayed,
    Expired,
    /// The certificate was invalidated in the meantime.
    Invalidated,
}

/// Limits [`SessionStore::insert_trial`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialLimits {
    pub per_address: u32,
    pub total: u32,
    /// Trials (pending or not) expired longer than this many seconds are deleted.
    pub retention: u64,
}

pub trait SessionStore {
    /// Store a pending trial unless `ip` or the whole server has reached its limit of
    /// pending trials; purges trials expired longer than the retention, in one transaction.
    fn insert_trial(
        &self,
        trial: &str,
        ip: &str,
        now: u64,
        expires_at: u64,
        limits: TrialLimits,
    ) -> impl Future<Output = StoreResult<InsertTrial>> + Send;
    fn trial(&self, trial: &str) -> impl Future<Output = StoreResult<Option<TrialRecord>>> + Send;
    /// The newest `limit` trials issued to `ip`, newest first.
    fn recent_trials(
        &self,
        ip: &str,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<TrialRecord>>> + Send;
    /// Whether a trial was completed with exactly this answer (a replay).
    fn completed_with(
        &self,
        completion: &TrialCompletion,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// End pending trials without an answer (after a wrong answer), so that each trial
    /// costs at most one certificate lookup.
    fn expire_trials(
        &self,
        trials: &[String],
        now: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// In one transaction: mark the pending, unexpired `trial` completed with `completion`;
    /// record `certificate` (keeping an existing invalidation, and refusing if there is
    /// one); replace any session of that certificate by `session` (one active token per
    /// certificate); purge expired sessions.
    fn complete_trial(
        &self,
        trial: &str,
        now: u64,
        completion: &TrialCompletion,
        certificate: &CertificateRecord,
        session: &SessionRecord,
    ) -> impl Future<Output = StoreResult<CompleteTrial>> + Send;
    /// The unexpired session with this token hash.
    fn session(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> impl Future<Output = StoreResult<Option<SessionRecord>>> + Send;
    /// Whether an unexpired session has this token hash. Reads nothing else of the row,
    /// so that a caller that only needs to know (the rate limiter) never holds the FID.
    fn session_is_live(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Record `certificate` (with its `invalidated_at`, keeping an earlier invalidation)
    /// and delete every session opened with it.
    fn invalidate_certificate(
        &self,
        certificate: &CertificateRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Move the session to a new certificate (renewal): record the certificate and set
    /// the session's serial and `verified_until`; any other session of the new
    /// certificate is replaced. False if the session is gone or the new certificate was
    /// invalidated.
    fn update_session_certificate(
        &self,
        token_hash: &[u8; 32],
        certificate: &CertificateRecord,
        verified_until: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    fn certificate(
        &self,
        fid: &str,
        serial: &str,
    ) -> impl Future<Output = StoreResult<Option<CertificateRecord>>> + Send;
    /// (serial, invalidated_at) of the invalidated certificates of `fid`.
    fn invalidations(
        &self,
        fid: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, u64)>>> + Send;
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

impl SessionStore for Store {
    async fn insert_trial(
        &self,
        trial: &str,
        ip: &str,
        now: u64,
        expires_at: u64,
        limits: TrialLimits,
    ) -> StoreResult<InsertTrial> {
        delegate!(self, insert_trial(trial, ip, now, expires_at, limits))
    }

    async fn trial(&self, trial: &str) -> StoreResult<Option<TrialRecord>> {
        delegate!(self, trial(trial))
    }

    async fn recent_trials(&self, ip: &str, limit: u32) -> StoreResult<Vec<TrialRecord>> {
        delegate!(self, recent_trials(ip, limit))
    }

    async fn completed_with(&self, completion: &TrialCompletion) -> StoreResult<bool> {
        delegate!(self, completed_with(completion))
    }

    async fn expire_trials(&self, trials: &[String], now: u64) -> StoreResult<()> {
        delegate!(self, expire_trials(trials, now))
    }

    async fn complete_trial(
        &self,
        trial: &str,
        now: u64,
        completion: &TrialCompletion,
        certificate: &CertificateRecord,
        session: &SessionRecord,
    ) -> StoreResult<CompleteTrial> {
        delegate!(
            self,
            complete_trial(trial, now, completion, certificate, session)
        )
    }

    async fn session(&self, token_hash: &[u8; 32], now: u64) -> StoreResult<Option<SessionRecord>> {
        delegate!(self, session(token_hash, now))
    }

    async fn session_is_live(&self, token_hash: &[u8; 32], now: u64) -> StoreResult<bool> {
        delegate!(self, session_is_live(token_hash, now))
    }

    async fn invalidate_certificate(&self, certificate: &CertificateRecord) -> StoreResult<()> {
        delegate!(self, invalidate_certificate(certificate))
    }

    async fn update_session_certificate(
        &self,
        token_hash: &[u8; 32],
        certificate: &CertificateRecord,
        verified_until: u64,
    ) -> StoreResult<bool> {
        delegate!(
            self,
            update_session_certificate(token_hash, certificate, verified_until)
        )
    }

    async fn certificate(&self, fid: &str, serial: &str) -> StoreResult<Option<CertificateRecord>> {
        delegate!(self, certificate(fid, serial))
    }

    async fn invalidations(&self, fid: &str) -> StoreResult<Vec<(String, u64)>> {
        delegate!(self, invalidations(fid))
    }
}

// Row decoding, shared by both backends (same column names).

/// Nullable columns, which the shared [`Columns`] does not read.
trait NullableColumns: Columns {
    fn optional_int(&self, column: &str) -> StoreResult<Option<i64>>;
    fn optional_text(&self, column: &str) -> StoreResult<Option<String>>;
}

macro_rules! impl_nullable_columns {
    ($row:ty) => {
        impl NullableColumns for $row {
            fn optional_int(&self, column: &str) -> StoreResult<Option<i64>> {
                Ok(self.try_get(column)?)
            }

            fn optional_text(&self, column: &str) -> StoreResult<Option<String>> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

impl_nullable_columns!(SqliteRow);
impl_nullable_columns!(PgRow);

fn optional_unsigned(row: &impl NullableColumns, column: &str) -> StoreResult<Option<u64>> {
    row.optional_int(column)?.map(from_db).transpose()
}

fn trial_record(row: &impl NullableColumns) -> StoreResult<TrialRecord> {
    let completion = match (
        row.optional_text("fid")?,
        row.optional_text("serial")?,
        row.optional_text("signature")?,
    ) {
        (Some(fid), Some(serial), Some(signature)) => Some(TrialCompletion {
            fid,
            serial,
            signature,
        }),
        _ => None,
    };
    Ok(TrialRecord {
        trial: row.text("trial")?,
        ip: row.text("ip")?,
        expires_at: row.unsigned("expires_at")?,
        completed_at: optional_unsigned(row, "completed_at")?,
        completion,
    })
}

fn session_record(row: &impl Columns) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        token_hash: row.array("token_hash", "session token hash is not 32 bytes")?,
        fid: row.text("fid")?,
        client_id: row.text("client_id")?,
        serial: row.text("serial")?,
        created_at: row.unsigned("created_at")?,
        expires_at: row.unsigned("expires_at")?,
        verified_until: row.unsigned("verified_until")?,
    })
}

fn certificate_record(row: &impl NullableColumns) -> StoreResult<CertificateRecord> {
    Ok(CertificateRecord {
        fid: row.text("fid")?,
        serial: row.text("serial")?,
        client_id: row.text("client_id")?,
        certificate: row.bytes("certificate")?,
        not_after: row.unsigned("not_after")?,
        invalidated_at: optional_unsigned(row, "invalidated_at")?,
    })
}

fn invalidation(row: &impl Columns) -> StoreResult<(String, u64)> {
    Ok((row.text("serial")?, row.unsigned("invalidated_at")?))
}

fn optional_db(value: Option<u64>) -> StoreResult<Option<i64>> {
    value.map(to_db).transpose()
}

/// The second before `now`, as stored: what an ended trial's expiry is set to.
fn just_expired(now: u64) -> StoreResult<i64> {
    to_db(now.saturating_sub(1))
}

/// The statements of both backends, written once: `$n` placeholders work in SQLite too.
mod sql {
    pub const TRIAL: &str = "SELECT trial, ip, expires_at, completed_at, fid, serial, signature \
         FROM p2_key_trials WHERE trial = $1";
    pub const RECENT_TRIALS: &str = "SELECT trial, ip, expires_at, completed_at, fid, serial, signature \
         FROM p2_key_trials WHERE ip = $1 ORDER BY created_at DESC, trial LIMIT $2";
    pub const COMPLETED_WITH: &str = "SELECT count(*) FROM p2_key_trials \
         WHERE signature = $1 AND fid = $2 AND serial = $3 AND completed_at IS NOT NULL";
    pub const PURGE_TRIALS: &str = "DELETE FROM p2_key_trials WHERE expires_at < $1";
    pub const PENDING_FOR_ADDRESS: &str = "SELECT count(*) FROM p2_key_trials \
         WHERE ip = $1 AND completed_at IS NULL AND expires_at >= $2";
    pub const PENDING: &str =
        "SELECT count(*) FROM p2_key_trials WHERE completed_at IS NULL AND expires_at >= $1";
    pub const INSERT_TRIAL: &str =
        "INSERT INTO p2_key_trials (trial, ip, created_at, expires_at) VALUES ($1, $2, $3, $4)";
    pub const EXPIRE_TRIAL: &str = "UPDATE p2_key_trials SET expires_at = $1 \
         WHERE trial = $2 AND completed_at IS NULL AND expires_at >= $3";
    /// Completing a trial forgets the address it was issued to, so that no stored row
    /// links an address to an FID.
    pub const COMPLETE_TRIAL: &str = "UPDATE p2_key_trials \
         SET completed_at = $1, fid = $2, serial = $3, signature = $4, ip = '' \
         WHERE trial = $5 AND completed_at IS NULL AND expires_at >= $6";
    /// Record a certificate; an earlier invalidation is kept (the earliest one wins).
    /// Returns the resulting `invalidated_at`. (`CASE`, because SQLite's `min` and
    /// Postgres's `LEAST` treat NULL differently.)
    pub const UPSERT_CERTIFICATE: &str = "INSERT INTO p2_certificates \
             (fid, serial, client_id, certificate, not_after, invalidated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (fid, serial) DO UPDATE SET invalidated_at = CASE \
             WHEN p2_certificates.invalidated_at IS NULL THEN excluded.invalidated_at \
             WHEN excluded.invalidated_at IS NULL THEN p2_certificates.invalidated_at \
             WHEN excluded.invalidated_at < p2_certificates.invalidated_at \
                 THEN excluded.invalidated_at \
             ELSE p2_certificates.invalidated_at END \
         RETURNING invalidated_at";
    pub const REPLACE_SESSIONS: &str =
        "DELETE FROM p2_sessions WHERE (fid = $1 AND serial = $2) OR expires_at < $3";
    pub const INSERT_SESSION: &str = "INSERT INTO p2_sessions \
         (token_hash, fid, client_id, serial, created_at, expires_at, verified_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub const SESSION: &str = "SELECT token_hash, fid, client_id, serial, created_at, \
         expires_at, verified_until FROM p2_sessions WHERE token_hash = $1 AND expires_at >= $2";
    pub const SESSION_IS_LIVE: &str =
        "SELECT count(*) FROM p2_sessions WHERE token_hash = $1 AND expires_at >= $2";
    pub const DELETE_CERTIFICATE_SESSIONS: &str =
        "DELETE FROM p2_sessions WHERE fid = $1 AND serial = $2";
    pub const DELETE_OTHER_SESSIONS: &str =
        "DELETE FROM p2_sessions WHERE fid = $1 AND serial = $2 AND token_hash <> $3";
    pub const MOVE_SESSION: &str =
        "UPDATE p2_sessions SET serial = $1, verified_until = $2 WHERE token_hash = $3";
    pub const CERTIFICATE: &str = "SELECT fid, serial, client_id, certificate, not_after, \
         invalidated_at FROM p2_certificates WHERE fid = $1 AND serial = $2";
    pub const INVALIDATIONS: &str = "SELECT serial, invalidated_at FROM p2_certificates \
         WHERE fid = $1 AND invalidated_at IS NOT NULL";
}

/// Both backends' functions, from one body: `$db` is the sqlx database, `$begin` opens a
/// read-modify-write transaction (SQLite takes the write lock first with `BEGIN
/// IMMEDIATE`, as in [`super::sqlite`]; Postgres serialises inserts of trials for one
/// address on an advisory lock, so the per-address bound is exact, and completes a trial
/// once because the completing `UPDATE` re-checks its `WHERE` after waiting for a
/// concurrent one).
macro_rules! backend {
    ($name:ident, $db:ty, $pool:ty, $begin:expr, $lock_address:expr) => {
        mod $name {
            use sqlx::Transaction;

            use super::*;

            type Tx = Transaction<'static, $db>;

            /// Serialises inserts of trials for one address (`$1`), if the backend needs it.
            const LOCK_ADDRESS: Option<&str> = $lock_address;

            async fn begin(pool: &$pool) -> StoreResult<Tx> {
                Ok(pool.begin_with($begin).await?)
            }

            pub(super) async fn insert_trial(
                pool: &$pool,
                trial: &str,
                ip: &str,
                now: u64,
                expires_at: u64,
                limits: TrialLimits,
            ) -> StoreResult<InsertTrial> {
                let mut tx = begin(pool).await?;
                if let Some(lock) = LOCK_ADDRESS {
                    sqlx::query(lock).bind(ip).execute(&mut *tx).await?;
                }
                sqlx::query(sql::PURGE_TRIALS)
                    .bind(bound(now.saturating_sub(limits.retention)))
                    .execute(&mut *tx)
                    .await?;
                let for_address: i64 = sqlx::query_scalar(sql::PENDING_FOR_ADDRESS)
                    .bind(ip)
                    .bind(bound(now))
                    .fetch_one(&mut *tx)
                    .await?;
                if from_db(for_address)? >= u64::from(limits.per_address) {
                    tx.rollback().await?;
                    return Ok(InsertTrial::TooManyForAddress);
                }
                // On Postgres concurrent inserts from different addresses may overshoot
                // the total by their number, which the connection pool bounds.
                let total: i64 = sqlx::query_scalar(sql::PENDING)
                    .bind(bound(now))
                    .fetch_one(&mut *tx)
                    .await?;
                if from_db(total)? >= u64::from(limits.total) {
                    tx.rollback().await?;
                    return Ok(InsertTrial::TooMany);
                }
                sqlx::query(sql::INSERT_TRIAL)
                    .bind(trial)
                    .bind(ip)
                    .bind(to_db(now)?)
                    .bind(to_db(expires_at)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(InsertTrial::Inserted)
            }

            pub(super) async fn trial(
                pool: &$pool,
                trial: &str,
            ) -> StoreResult<Option<TrialRecord>> {
                sqlx::query(sql::TRIAL)
                    .bind(trial)
                    .fetch_optional(pool)
                    .await?
                    .as_ref()
                    .map(trial_record)
                    .transpose()
            }

            pub(super) async fn recent_trials(
                pool: &$pool,
                ip: &str,
                limit: u32,
            ) -> StoreResult<Vec<TrialRecord>> {
                sqlx::query(sql::RECENT_TRIALS)
                    .bind(ip)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(trial_record)
                    .collect()
            }

            pub(super) async fn completed_with(
                pool: &$pool,
                completion: &TrialCompletion,
            ) -> StoreResult<bool> {
                let count: i64 = sqlx::query_scalar(sql::COMPLETED_WITH)
                    .bind(&completion.signature)
                    .bind(&completion.fid)
                    .bind(&completion.serial)
                    .fetch_one(pool)
                    .await?;
                Ok(count > 0)
            }

            pub(super) async fn expire_trials(
                pool: &$pool,
                trials: &[String],
                now: u64,
            ) -> StoreResult<()> {
                let mut tx = begin(pool).await?;
                for trial in trials {
                    sqlx::query(sql::EXPIRE_TRIAL)
                        .bind(just_expired(now)?)
                        .bind(trial)
                        .bind(bound(now))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn upsert_certificate(
                tx: &mut Tx,
                certificate: &CertificateRecord,
            ) -> StoreResult<Option<u64>> {
                let invalidated: Option<i64> = sqlx::query_scalar(sql::UPSERT_CERTIFICATE)
                    .bind(&certificate.fid)
                    .bind(&certificate.serial)
                    .bind(&certificate.client_id)
                    .bind(certificate.certificate.as_slice())
                    .bind(to_db(certificate.not_after)?)
                    .bind(optional_db(certificate.invalidated_at)?)
                    .fetch_one(&mut **tx)
                    .await?;
                invalidated.map(from_db).transpose()
            }

            pub(super) async fn complete_trial(
                pool: &$pool,
                trial: &str,
                now: u64,
                completion: &TrialCompletion,
                certificate: &CertificateRecord,
                session: &SessionRecord,
            ) -> StoreResult<CompleteTrial> {
                let mut tx = begin(pool).await?;
                let completed = sqlx::query(sql::COMPLETE_TRIAL)
                    .bind(to_db(now)?)
                    .bind(&completion.fid)
                    .bind(&completion.serial)
                    .bind(&completion.signature)
                    .bind(trial)
                    .bind(bound(now))
                    .execute(&mut *tx)
                    .await?;
                if completed.rows_affected() != 1 {
                    let existing = sqlx::query(sql::TRIAL)
                        .bind(trial)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return Ok(match existing.as_ref().map(trial_record).transpose()? {
                        None => CompleteTrial::Unknown,
                        Some(record) if record.completed_at.is_some() => CompleteTrial::Replayed,
                        Some(_) => CompleteTrial::Expired,
                    });
                }
                if upsert_certificate(&mut tx, certificate).await?.is_some() {
                    tx.rollback().await?;
                    return Ok(CompleteTrial::Invalidated);
                }
                sqlx::query(sql::REPLACE_SESSIONS)
                    .bind(&session.fid)
                    .bind(&session.serial)
                    .bind(bound(now))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_SESSION)
                    .bind(session.token_hash.as_slice())
                    .bind(&session.fid)
                    .bind(&session.client_id)
                    .bind(&session.serial)
                    .bind(to_db(session.created_at)?)
                    .bind(to_db(session.expires_at)?)
                    .bind(to_db(session.verified_until)?)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(CompleteTrial::Completed)
            }

            pub(super) async fn session(
                pool: &$pool,
                token_hash: &[u8; 32],
                now: u64,
            ) -> StoreResult<Option<SessionRecord>> {
                sqlx::query(sql::SESSION)
                    .bind(token_hash.as_slice())
                    .bind(bound(now))
                    .fetch_optional(pool)
                    .await?
                    .as_ref()
                    .map(session_record)
                    .transpose()
            }

            pub(super) async fn session_is_live(
                pool: &$pool,
                token_hash: &[u8; 32],
                now: u64,
            ) -> StoreResult<bool> {
                let count: i64 = sqlx::query_scalar(sql::SESSION_IS_LIVE)
                    .bind(token_hash.as_slice())
                    .bind(bound(now))
                    .fetch_one(pool)
                    .await?;
                Ok(count > 0)
            }

            pub(super) async fn invalidate_certificate(
                pool: &$pool,
                certificate: &CertificateRecord,
            ) -> StoreResult<()> {
                let mut tx = begin(pool).await?;
                upsert_certificate(&mut tx, certificate).await?;
                sqlx::query(sql::DELETE_CERTIFICATE_SESSIONS)
                    .bind(&certificate.fid)
                    .bind(&certificate.serial)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn update_session_certificate(
                pool: &$pool,
                token_hash: &[u8; 32],
                certificate: &CertificateRecord,
                verified_until: u64,
            ) -> StoreResult<bool> {
                let mut tx = begin(pool).await?;
                if upsert_certificate(&mut tx, certificate).await?.is_some() {
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query(sql::DELETE_OTHER_SESSIONS)
                    .bind(&certificate.fid)
                    .bind(&certificate.serial)
                    .bind(token_hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
                let moved = sqlx::query(sql::MOVE_SESSION)
                    .bind(&certificate.serial)
                    .bind(to_db(verified_until)?)
                    .bind(token_hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(moved.rows_affected() == 1)
            }

            pub(super) async fn certificate(
                pool: &$pool,
                fid: &str,
                serial: &str,
            ) -> StoreResult<Option<CertificateRecord>> {
                sqlx::query(sql::CERTIFICATE)
                    .bind(fid)
                    .bind(serial)
                    .fetch_optional(pool)
                    .await?
                    .as_ref()
                    .map(certificate_record)
                    .transpose()
            }

            pub(super) async fn invalidations(
                pool: &$pool,
                fid: &str,
            ) -> StoreResult<Vec<(String, u64)>> {
                sqlx::query(sql::INVALIDATIONS)
                    .bind(fid)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(invalidation)
                    .collect()
            }
        }
    };
}

backend!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    "BEGIN IMMEDIATE",
    None
);
backend!(
    postgres,
    sqlx::Postgres,
    sqlx::PgPool,
    "BEGIN",
    Some("SELECT pg_advisory_xact_lock(hashtextextended('p2_key_trials:' || $1, 0))")
);
