//! [`AdminStore`] for both backends, written once: what `phoenix-server admin` reads and
//! changes (migration `0013_admin`), and the database check of `/health`.
//!
//! The statements use `$n` placeholders, which SQLite accepts too. Each method is one
//! statement or one transaction. Lists are bounded ([`MAX_ROWS`]).

use super::{Store, StoreResult, from_db, to_db};

/// Most rows one admin listing returns.
pub const MAX_ROWS: i64 = 10_000;

/// A user as `admin users list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserSummary {
    pub fid: String,
    pub created_at: u64,
    pub clients: u64,
    pub suspended_at: Option<u64>,
}

/// A certificate issued to one of a user's clients (`as_certificates`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssuedCertificate {
    /// Hex, as stored (the polyproto routes print it in decimal).
    pub serial: String,
    pub fid: String,
    pub client_id: String,
    #[serde(skip)]
    pub certificate: Vec<u8>,
    pub not_before: u64,
    pub not_after: u64,
}

/// One outbox destination as `admin outbox list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxDestination {
    pub destination: String,
    pub pending: u64,
    /// When the oldest pending entry was written (unix seconds).
    pub oldest_created_at: u64,
    /// The earliest next delivery attempt (unix seconds; 0: due since it was written).
    pub next_attempt_at: u64,
    pub max_attempts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

pub trait AdminStore {
    /// A trivial query: the database answers (`/health`).
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;
    fn list_users(&self) -> impl Future<Output = StoreResult<Vec<UserSummary>>> + Send;
    fn user_summary(
        &self,
        fid: &str,
    ) -> impl Future<Output = StoreResult<Option<UserSummary>>> + Send;
    /// Every certificate issued to the user's clients, oldest first.
    fn issued_certificates(
        &self,
        fid: &str,
    ) -> impl Future<Output = StoreResult<Vec<IssuedCertificate>>> + Send;
    fn issued_certificate(
        &self,
        serial_hex: &str,
    ) -> impl Future<Output = StoreResult<Option<IssuedCertificate>>> + Send;
    // Requirement: OPS-ADMIN-2
    /// Suspend (`Some(at)`) or unsuspend (`None`) a user. False if there is no such user.
    fn set_suspended(
        &self,
        fid: &str,
        at: Option<u64>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    fn suspended_at(&self, fid: &str) -> impl Future<Output = StoreResult<Option<u64>>> + Send;
    /// Delete the user, their clients, connection packages and direct queues. The issued
    /// certificates stay in `as_certificates` (history). False if there was no such user.
    fn delete_user(&self, fid: &str) -> impl Future<Output = StoreResult<bool>> + Send;
    // Requirement: OPS-ADMIN-4
    fn outbox_destinations(
        &self,
    ) -> impl Future<Output = StoreResult<Vec<OutboxDestination>>> + Send;
    /// Make the pending entries (of one destination, or all) due now; how many.
    fn retry_outbox(
        &self,
        destination: Option<&str>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Remember the last delivery failure of a destination (`None`: it went through).
    fn record_outbox_error(
        &self,
        destination: &str,
        error: Option<&str>,
        at: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Foreign actors' cached certificates per peer domain: (domain, entries, latest
    /// cache window end).
    fn cached_peers(&self) -> impl Future<Output = StoreResult<Vec<(String, u64, u64)>>> + Send;
    // Requirement: OPS-KEK-1
    /// Replace a stored private key (a CA signing key, a server key or the queue-config
    /// key) whose stored bytes are `old` with `new` (the same key, sealed); how many rows.
    fn reseal_private_key(
        &self,
        old: &[u8],
        new: &[u8],
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    // Requirement: OPS-KEK-2
    /// [`AdminStore::reseal_private_key`] for every (old, new) pair, in one transaction:
    /// all of them or none.
    fn reseal_private_keys(
        &self,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Every stored private key as (the name it is sealed under, the stored bytes): the CA
    /// signing keys (current and retired), the server keys, the queue-config key.
    fn stored_private_keys(
        &self,
    ) -> impl Future<Output = StoreResult<Vec<(String, Vec<u8>)>>> + Send;
}

use std::future::Future;

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(store) => sqlite::$method(store.pool(), $($arg),*).await,
            Store::Postgres(store) => postgres::$method(store.pool(), $($arg),*).await,
        }
    };
}

impl AdminStore for Store {
    async fn ping(&self) -> StoreResult<()> {
        delegate!(self, ping())
    }
    async fn list_users(&self) -> StoreResult<Vec<UserSummary>> {
        delegate!(self, list_users(None))
    }
    async fn user_summary(&self, fid: &str) -> StoreResult<Option<UserSummary>> {
        let mut users = delegate!(self, list_users(Some(fid)))?;
        Ok(users.pop())
    }
    async fn issued_certificates(&self, fid: &str) -> StoreResult<Vec<IssuedCertificate>> {
        delegate!(self, issued_certificates(sql::CERTS_OF_USER, fid))
    }
    async fn issued_certificate(&self, serial_hex: &str) -> StoreResult<Option<IssuedCertificate>> {
        let mut certs = delegate!(self, issued_certificates(sql::CERT_BY_SERIAL, serial_hex))?;
        Ok(certs.pop())
    }
    async fn set_suspended(&self, fid: &str, at: Option<u64>) -> StoreResult<bool> {
        delegate!(self, set_suspended(fid, at))
    }
    async fn suspended_at(&self, fid: &str) -> StoreResult<Option<u64>> {
        delegate!(self, suspended_at(fid))
    }
    async fn delete_user(&self, fid: &str) -> StoreResult<bool> {
        delegate!(self, delete_user(fid))
    }
    async fn outbox_destinations(&self) -> StoreResult<Vec<OutboxDestination>> {
        delegate!(self, outbox_destinations())
    }
    async fn retry_outbox(&self, destination: Option<&str>) -> StoreResult<u64> {
        delegate!(self, retry_outbox(destination))
    }
    async fn record_outbox_error(
        &self,
        destination: &str,
        error: Option<&str>,
        at: u64,
    ) -> StoreResult<()> {
        delegate!(self, record_outbox_error(destination, error, at))
    }
    async fn reseal_private_key(&self, old: &[u8], new: &[u8]) -> StoreResult<u64> {
        self.reseal_private_keys(&[(old.to_vec(), new.to_vec())])
            .await
    }
    async fn reseal_private_keys(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> StoreResult<u64> {
        delegate!(self, reseal_private_keys(pairs))
    }
    async fn stored_private_keys(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut keys = Vec::new();
        for key in delegate!(self, stored_ca_keys())? {
            keys.push((crate::server::CA_KEY.to_owned(), key));
        }
        keys.extend(delegate!(self, stored_server_keys())?);
        for key in delegate!(self, stored_queue_config_keys())? {
            keys.push((crate::server::QUEUE_CONFIG_KEY.to_owned(), key));
        }
        Ok(keys)
    }
    async fn cached_peers(&self) -> StoreResult<Vec<(String, u64, u64)>> {
        let rows = delegate!(self, cached_fids())?;
        let mut peers: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (fid, not_valid_after) in rows {
            let domain = fid.rsplit_once('@').map(|(_, d)| d).unwrap_or(&fid);
            let entry = peers.entry(domain.to_string()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(from_db(not_valid_after)?);
        }
        Ok(peers
            .into_iter()
            .map(|(domain, (n, until))| (domain, n, until))
            .collect())
    }
}

mod sql {
    pub const USERS: &str = "SELECT u.fid, u.created_at, \
         CAST((SELECT COUNT(*) FROM as_clients c WHERE c.fid = u.fid) AS BIGINT), \
         s.suspended_at \
         FROM as_users u LEFT JOIN as_suspensions s ON s.fid = u.fid \
         WHERE (CAST($1 AS TEXT) IS NULL OR u.fid = $1) ORDER BY u.fid LIMIT $2";
    pub const CERTS_OF_USER: &str = "SELECT serial, fid, client_id, certificate, not_before, \
         not_after FROM as_certificates WHERE fid = $1 ORDER BY not_before, serial LIMIT $2";
    pub const CERT_BY_SERIAL: &str = "SELECT serial, fid, client_id, certificate, not_before, \
         not_after FROM as_certificates WHERE serial = $1 LIMIT $2";
    pub const USER_EXISTS: &str = "SELECT fid FROM as_users WHERE fid = $1";
    pub const SUSPEND: &str = "INSERT INTO as_suspensions (fid, suspended_at) VALUES ($1, $2) \
         ON CONFLICT (fid) DO NOTHING";
    pub const UNSUSPEND: &str = "DELETE FROM as_suspensions WHERE fid = $1";
    pub const SUSPENDED_AT: &str = "SELECT suspended_at FROM as_suspensions WHERE fid = $1";
    pub const DELETE_USER: &str = "DELETE FROM as_users WHERE fid = $1";
    pub const OUTBOX: &str = "SELECT o.destination, CAST(COUNT(*) AS BIGINT), \
         CAST(MIN(o.created_at) AS BIGINT), CAST(MIN(o.next_attempt_at) AS BIGINT), \
         CAST(MAX(o.attempts) AS BIGINT), MAX(e.error), MAX(e.failed_at) \
         FROM ds_outbox o LEFT JOIN ds_outbox_errors e ON e.destination = o.destination \
         GROUP BY o.destination ORDER BY o.destination LIMIT $1";
    pub const RETRY_ALL: &str = "UPDATE ds_outbox SET next_attempt_at = 0, claimed_until = 0";
    pub const RETRY_ONE: &str =
        "UPDATE ds_outbox SET next_attempt_at = 0, claimed_until = 0 WHERE destination = $1";
    pub const RECORD_ERROR: &str = "INSERT INTO ds_outbox_errors (destination, error, failed_at) \
         VALUES ($1, $2, $3) ON CONFLICT (destination) DO UPDATE SET \
         error = excluded.error, failed_at = excluded.failed_at";
    pub const CLEAR_ERROR: &str = "DELETE FROM ds_outbox_errors WHERE destination = $1";
    pub const CA_KEYS: &str = "SELECT signing_key FROM as_ca ORDER BY id";
    pub const SERVER_KEYS: &str = "SELECT name, private_key FROM server_keys ORDER BY name";
    pub const QUEUE_CONFIG_KEYS: &str = "SELECT queue_config_private_key FROM qs_config";
    pub const RESEAL: [&str; 3] = [
        "UPDATE as_ca SET signing_key = $1 WHERE signing_key = $2",
        "UPDATE server_keys SET private_key = $1 WHERE private_key = $2",
        "UPDATE qs_config SET queue_config_private_key = $1 WHERE queue_config_private_key = $2",
    ];
    pub const CACHED_FIDS: &str =
        "SELECT fid, not_valid_after FROM p2_idcert_cache ORDER BY fid LIMIT $1";
}

/// Both backends' functions, from one body.
macro_rules! backend {
    ($name:ident, $pool:ty, $begin:expr) => {
        mod $name {
            use super::*;

            pub(super) async fn ping(pool: &$pool) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(pool).await?;
                Ok(())
            }

            pub(super) async fn list_users(
                pool: &$pool,
                fid: Option<&str>,
            ) -> StoreResult<Vec<UserSummary>> {
                let rows = sqlx::query_as::<_, (String, i64, i64, Option<i64>)>(sql::USERS)
                    .bind(fid)
                    .bind(MAX_ROWS)
                    .fetch_all(pool)
                    .await?;
                rows.into_iter()
                    .map(|(fid, created_at, clients, suspended_at)| {
                        Ok(UserSummary {
                            fid,
                            created_at: from_db(created_at)?,
                            clients: from_db(clients)?,
                            suspended_at: suspended_at.map(from_db).transpose()?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn issued_certificates(
                pool: &$pool,
                query: &'static str,
                key: &str,
            ) -> StoreResult<Vec<IssuedCertificate>> {
                let rows = sqlx::query_as::<_, (String, String, String, Vec<u8>, i64, i64)>(query)
                    .bind(key)
                    .bind(MAX_ROWS)
                    .fetch_all(pool)
                    .await?;
                rows.into_iter()
                    .map(
                        |(serial, fid, client_id, certificate, not_before, not_after)| {
                            Ok(IssuedCertificate {
                                serial,
                                fid,
                                client_id,
                                certificate,
                                not_before: from_db(not_before)?,
                                not_after: from_db(not_after)?,
                            })
                        },
                    )
                    .collect()
            }

            pub(super) async fn set_suspended(
                pool: &$pool,
                fid: &str,
                at: Option<u64>,
            ) -> StoreResult<bool> {
                let mut tx = pool.begin_with($begin).await?;
                let exists = sqlx::query_scalar::<_, String>(sql::USER_EXISTS)
                    .bind(fid)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if exists {
                    match at {
                        Some(at) => {
                            sqlx::query(sql::SUSPEND)
                                .bind(fid)
                                .bind(to_db(at)?)
                                .execute(&mut *tx)
                                .await?;
                        }
                        None => {
                            sqlx::query(sql::UNSUSPEND)
                                .bind(fid)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(exists)
            }

            pub(super) async fn suspended_at(pool: &$pool, fid: &str) -> StoreResult<Option<u64>> {
                sqlx::query_scalar::<_, i64>(sql::SUSPENDED_AT)
                    .bind(fid)
                    .fetch_optional(pool)
                    .await?
                    .map(from_db)
                    .transpose()
            }

            pub(super) async fn reseal_private_keys(
                pool: &$pool,
                pairs: &[(Vec<u8>, Vec<u8>)],
            ) -> StoreResult<u64> {
                let mut tx = pool.begin_with($begin).await?;
                let mut rows = 0;
                for (old, new) in pairs {
                    for statement in sql::RESEAL {
                        rows += sqlx::query(statement)
                            .bind(new.as_slice())
                            .bind(old.as_slice())
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                }
                tx.commit().await?;
                Ok(rows)
            }

            pub(super) async fn stored_ca_keys(pool: &$pool) -> StoreResult<Vec<Vec<u8>>> {
                Ok(sqlx::query_scalar(sql::CA_KEYS).fetch_all(pool).await?)
            }

            pub(super) async fn stored_server_keys(
                pool: &$pool,
            ) -> StoreResult<Vec<(String, Vec<u8>)>> {
                Ok(sqlx::query_as(sql::SERVER_KEYS).fetch_all(pool).await?)
            }

            pub(super) async fn stored_queue_config_keys(
                pool: &$pool,
            ) -> StoreResult<Vec<Vec<u8>>> {
                Ok(sqlx::query_scalar(sql::QUEUE_CONFIG_KEYS)
                    .fetch_all(pool)
                    .await?)
            }

            pub(super) async fn delete_user(pool: &$pool, fid: &str) -> StoreResult<bool> {
                let deleted = sqlx::query(sql::DELETE_USER)
                    .bind(fid)
                    .execute(pool)
                    .await?
                    .rows_affected();
                Ok(deleted > 0)
            }

            pub(super) async fn outbox_destinations(
                pool: &$pool,
            ) -> StoreResult<Vec<OutboxDestination>> {
                let rows = sqlx::query_as::<
                    _,
                    (String, i64, i64, i64, i64, Option<String>, Option<i64>),
                >(sql::OUTBOX)
                .bind(MAX_ROWS)
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(
                        |(destination, pending, oldest, next, attempts, error, at)| {
                            Ok(OutboxDestination {
                                destination,
                                pending: from_db(pending)?,
                                oldest_created_at: from_db(oldest)?,
                                next_attempt_at: from_db(next)?,
                                max_attempts: from_db(attempts)?,
                                last_error: error,
                                last_error_at: at.map(from_db).transpose()?,
                            })
                        },
                    )
                    .collect()
            }

            pub(super) async fn retry_outbox(
                pool: &$pool,
                destination: Option<&str>,
            ) -> StoreResult<u64> {
                let done = match destination {
                    None => sqlx::query(sql::RETRY_ALL).execute(pool).await?,
                    Some(d) => sqlx::query(sql::RETRY_ONE).bind(d).execute(pool).await?,
                };
                Ok(done.rows_affected())
            }

            pub(super) async fn record_outbox_error(
                pool: &$pool,
                destination: &str,
                error: Option<&str>,
                at: u64,
            ) -> StoreResult<()> {
                match error {
                    Some(error) => {
                        sqlx::query(sql::RECORD_ERROR)
                            .bind(destination)
                            .bind(error)
                            .bind(to_db(at)?)
                            .execute(pool)
                            .await?;
                    }
                    None => {
                        sqlx::query(sql::CLEAR_ERROR)
                            .bind(destination)
                            .execute(pool)
                            .await?;
                    }
                }
                Ok(())
            }

            pub(super) async fn cached_fids(pool: &$pool) -> StoreResult<Vec<(String, i64)>> {
                Ok(sqlx::query_as::<_, (String, i64)>(sql::CACHED_FIDS)
                    .bind(MAX_ROWS)
                    .fetch_all(pool)
                    .await?)
            }
        }
    };
}

backend!(sqlite, sqlx::SqlitePool, "BEGIN IMMEDIATE");
backend!(postgres, sqlx::PgPool, "BEGIN");

/// Longest wait for a pooled connection of the server's database.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait for the first connection at start-up.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

// Requirement: OPS-LOG-3
/// Open and close one connection to Postgres, within [`CONNECT_TIMEOUT`], so that a start
/// against an unreachable database fails at once with the cause.
pub(super) async fn probe_postgres(options: &sqlx::postgres::PgConnectOptions) -> StoreResult<()> {
    use sqlx::Connection;
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(super::StoreError::Database(sqlx::Error::PoolTimedOut)),
    }
}

// Requirement: OPS-LOG-3
/// A storage error in words for operators: the cause of a failed connection (connection
/// refused, authentication failed, unknown database, no answer), the database's own
/// message otherwise, never source locations.
pub fn describe(e: &super::StoreError) -> String {
    use super::StoreError;
    let StoreError::Database(db) = e else {
        return e.to_string();
    };
    match db {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the database running and listening there?)".into()
            }
            std::io::ErrorKind::NotFound => format!("not found: {io}"),
            std::io::ErrorKind::PermissionDenied => format!("permission denied: {io}"),
            _ => format!("network error: {io}"),
        },
        sqlx::Error::PoolTimedOut => format!(
            "no answer from the database within {} s (unreachable, or overloaded)",
            CONNECT_TIMEOUT.as_secs()
        ),
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "28P01" | "28000" => format!("authentication failed: {}", d.message()),
                "3D000" => format!("unknown database: {}", d.message()),
                _ if code.is_empty() => d.message().to_string(),
                _ => format!("{} (code {code})", d.message()),
            }
        }
        sqlx::Error::Tls(t) => format!("TLS error: {t}"),
        other => other.to_string(),
    }
}
