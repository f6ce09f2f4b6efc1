//! The SQLite backend, the embedded default: one database file, opened in WAL mode so
//! that readers never wait for the writer.
//!
//! SQLite has one writer at a time. Every read-modify-write transaction here starts with
//! `BEGIN IMMEDIATE`, which takes the write lock up front (waiting up to the busy timeout
//! for it). A deferred transaction would read first and then fail with `SQLITE_BUSY` when
//! it tried to upgrade after another writer committed; taking the lock first makes the
//! read and the write one atomic step, so concurrent callers never take the same package
//! or sequence number. Single statements run on their own and are atomic by themselves.
//!
//! This module is responsible for SQL and transactions only; the record types, the
//! integer conversions and row decoding are shared with the Postgres backend.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;

use super::queue_sealing::{self, QueueChain, QueueSealer};
use super::{
    AsClientRecord, AsStore, CaRecord, CreateGroup, CreateQsUser, CreateUser, DsStore,
    EnqueueEntry, FederatedEnqueue, KeyPackageStatus, OutboxEntry, OutboxSummary, QsClientRecord,
    QsStore, QsUserRecord, QueueKeys, ReplayRecord, ReplayService, StoreResult,
    StoredConnectionPackage, StoredGroup, StoredKeyPackage, after_page, bound, fixed, from_db,
    month, rows, to_db,
};

/// How long a writer waits for the write lock before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating it if missing) the database at `url` (`sqlite:path`, `sqlite://path`,
    /// `sqlite::memory:`) and run the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Requirement: QS-ENC-2 (a replaced queue ratchet secret, a deleted queue row
            // or key is overwritten in the file, not left in a free page)
            .pragma("secure_delete", "ON");
        let mut pool_options = SqlitePoolOptions::new();
        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database is shared between connections only through SQLite's
            // shared cache, whose table locks fail with SQLITE_LOCKED instead of waiting
            // for the busy timeout. One connection serialises everything instead.
            pool_options = pool_options.max_connections(1);
        }
        let pool = pool_options.connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool, for the other stores of this backend ([`super::sessions`]).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that holds the write lock from its first statement on.
    async fn write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl AsStore for SqliteStore {
    async fn ca(&self) -> StoreResult<Option<CaRecord>> {
        sqlx::query(
            "SELECT signing_key, certificate, not_before, not_after FROM as_ca ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::ca(&row))
        .transpose()
    }

    async fn insert_first_ca(&self, ca: &CaRecord) -> StoreResult<bool> {
        // Id 1 is the first CA: the primary key settles a race between two processes
        // starting at once; the NOT EXISTS keeps a later call from adding a row once
        // rotation has added others.
        let inserted = sqlx::query(
            "INSERT INTO as_ca (id, signing_key, certificate, not_before, not_after) \
             SELECT 1, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM as_ca) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ca.signing_key.as_slice())
        .bind(ca.certificate.as_slice())
        .bind(to_db(ca.not_before)?)
        .bind(to_db(ca.not_after)?)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn create_user(&self, client: &AsClientRecord, now: u64) -> StoreResult<CreateUser> {
        // Convert before the transaction starts, so a bad value changes nothing.
        let (now, not_before, not_after) = (
            to_db(now)?,
            to_db(client.not_before)?,
            to_db(client.not_after)?,
        );
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO as_users (fid, created_at) VALUES (?, ?) ON CONFLICT (fid) DO NOTHING",
        )
        .bind(&client.fid)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(CreateUser::UserExists);
        }
        sqlx::query(
            "INSERT INTO as_clients (fid, client_id, certificate, public_key, serial, not_before, not_after) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&client.fid)
        .bind(&client.client_id)
        .bind(client.certificate.as_slice())
        .bind(client.public_key.as_slice())
        .bind(&client.serial)
        .bind(not_before)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO as_certificates (serial, fid, client_id, certificate, not_before, not_after) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&client.serial)
        .bind(&client.fid)
        .bind(&client.client_id)
        .bind(client.certificate.as_slice())
        .bind(not_before)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CreateUser::Created)
    }

    async fn client(&self, fid: &str, client_id: &str) -> StoreResult<Option<AsClientRecord>> {
        sqlx::query(
            "SELECT fid, client_id, certificate, public_key, serial, not_before, not_after \
             FROM as_clients WHERE fid = ? AND client_id = ?",
        )
        .bind(fid)
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::as_client(&row))
        .transpose()
    }

    async fn user_clients(&self, fid: &str) -> StoreResult<Vec<AsClientRecord>> {
        sqlx::query(
            "SELECT fid, client_id, certificate, public_key, serial, not_before, not_after \
             FROM as_clients WHERE fid = ? ORDER BY client_id",
        )
        .bind(fid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::as_client)
        .collect()
    }

    async fn user_certificates(&self, fid: &str) -> StoreResult<Vec<(String, Vec<u8>, u64, u64)>> {
        sqlx::query(
            "SELECT client_id, certificate, not_before, not_after FROM as_certificates \
             WHERE fid = ? ORDER BY not_before, serial",
        )
        .bind(fid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::certificate)
        .collect()
    }

    async fn replace_connection_packages(
        &self,
        fid: &str,
        client_id: &str,
        packages: &[StoredConnectionPackage],
        replay: &ReplayRecord,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::As, replay).await?;
        sqlx::query("DELETE FROM as_connection_packages WHERE fid = ? AND client_id = ?")
            .bind(fid)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        for package in packages {
            sqlx::query(
                "INSERT INTO as_connection_packages (fid, client_id, package, last_resort, not_after) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(fid)
            .bind(client_id)
            .bind(package.package.as_slice())
            .bind(package.last_resort)
            .bind(bound(package.not_after))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_connection_package(
        &self,
        fid: &str,
        now: u64,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        let mut tx = self.write().await?;
        // Requirement: AS-CP-7
        let taken = sqlx::query_as::<_, (String, Vec<u8>)>(
            "DELETE FROM as_connection_packages WHERE id = (\
                 SELECT id FROM as_connection_packages WHERE fid = ? AND last_resort = 0 \
                 AND not_after > ? ORDER BY id LIMIT 1) \
             RETURNING client_id, package",
        )
        .bind(fid)
        .bind(bound(now))
        .fetch_optional(&mut *tx)
        .await?;
        let taken = match taken {
            Some(taken) => Some(taken),
            None => {
                sqlx::query_as(
                    "SELECT client_id, package FROM as_connection_packages \
                     WHERE fid = ? AND last_resort = 1 AND not_after > ? ORDER BY id LIMIT 1",
                )
                .bind(fid)
                .bind(bound(now))
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        Ok(taken)
    }

    async fn enqueue_direct(
        &self,
        fid: &str,
        client_id: &str,
        payload: &[u8],
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::As, replay).await?;
        // The counter row is created on a client's first message; selecting from
        // as_clients means an unknown client gets no row and no number.
        let seq: Option<i64> = sqlx::query_scalar(
            "INSERT INTO as_direct_queue_state (fid, client_id, next_seq) \
             SELECT fid, client_id, 1 FROM as_clients WHERE fid = ? AND client_id = ? \
             ON CONFLICT (fid, client_id) DO UPDATE \
                 SET next_seq = as_direct_queue_state.next_seq + 1 \
             RETURNING next_seq - 1",
        )
        .bind(fid)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO as_direct_queue (fid, client_id, seq, payload) VALUES (?, ?, ?, ?)",
        )
        .bind(fid)
        .bind(client_id)
        .bind(seq)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(from_db(seq)?))
    }

    async fn dequeue_direct(
        &self,
        fid: &str,
        client_id: &str,
        start: u64,
        max: u32,
    ) -> StoreResult<(Vec<QueueMessage>, u64)> {
        let start = bound(start);
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM as_direct_queue WHERE fid = ? AND client_id = ? AND seq < ?")
            .bind(fid)
            .bind(client_id)
            .bind(start)
            .execute(&mut *tx)
            .await?;
        let messages = sqlx::query(
            "SELECT seq, payload FROM as_direct_queue WHERE fid = ? AND client_id = ? AND seq >= ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(fid)
        .bind(client_id)
        .bind(start)
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::queue_message)
        .collect::<StoreResult<Vec<_>>>()?;
        let after = after_page(&messages, start)?;
        let remaining: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM as_direct_queue WHERE fid = ? AND client_id = ? AND seq >= ?",
        )
        .bind(fid)
        .bind(client_id)
        .bind(after)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((messages, from_db(remaining)?))
    }

    async fn ca_history(&self) -> StoreResult<Vec<CaRecord>> {
        sqlx::query("SELECT signing_key, certificate, not_before, not_after FROM as_ca ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::ca)
            .collect()
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO as_ca (id, signing_key, certificate, not_before, not_after) \
             SELECT COALESCE(MAX(id), 0) + 1, ?, ?, ?, ? FROM as_ca",
        )
        .bind(ca.signing_key.as_slice())
        .bind(ca.certificate.as_slice())
        .bind(to_db(ca.not_before)?)
        .bind(to_db(ca.not_after)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn renew_client(
        &self,
        client: &AsClientRecord,
        replay: &ReplayRecord,
    ) -> StoreResult<bool> {
        let (not_before, not_after) = (to_db(client.not_before)?, to_db(client.not_after)?);
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::As, replay).await?;
        let updated = sqlx::query(
            "UPDATE as_clients SET certificate = ?, public_key = ?, serial = ?, not_before = ?, \
             not_after = ? WHERE fid = ? AND client_id = ?",
        )
        .bind(client.certificate.as_slice())
        .bind(client.public_key.as_slice())
        .bind(&client.serial)
        .bind(not_before)
        .bind(not_after)
        .bind(&client.fid)
        .bind(&client.client_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO as_certificates (serial, fid, client_id, certificate, not_before, not_after) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&client.serial)
        .bind(&client.fid)
        .bind(&client.client_id)
        .bind(client.certificate.as_slice())
        .bind(not_before)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

impl QsStore for SqliteStore {
    async fn queue_config_key(&self) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT queue_config_private_key, queue_config_public_key FROM qs_config WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn insert_queue_config_key(&self, private: &[u8], public: &[u8]) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO qs_config (id, queue_config_private_key, queue_config_public_key) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(private)
        .bind(public)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn create_user(
        &self,
        user: &QsUserRecord,
        client: &QsClientRecord,
    ) -> StoreResult<CreateQsUser> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO qs_users (user_id, auth_key, friendship_token_hash) VALUES (?, ?, ?) \
             ON CONFLICT (friendship_token_hash) DO NOTHING",
        )
        .bind(user.user_id.as_slice())
        .bind(user.auth_key.as_slice())
        .bind(user.friendship_token_hash.as_slice())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(CreateQsUser::DuplicateFriendshipToken);
        }
        sqlx::query("INSERT INTO qs_clients (client_id, user_id, auth_key, queue_key, ratchet_secret) VALUES (?, ?, ?, ?, ?)")
            .bind(client.client_id.as_slice())
            .bind(client.user_id.as_slice())
            .bind(client.auth_key.as_slice())
            .bind(client.queue.as_ref().map(|q| q.queue_key.as_slice()))
            .bind(client.queue.as_ref().map(|q| q.ratchet.secret().as_slice()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(CreateQsUser::Created)
    }

    async fn user(&self, user_id: &QsId) -> StoreResult<Option<QsUserRecord>> {
        sqlx::query(
            "SELECT user_id, auth_key, friendship_token_hash FROM qs_users WHERE user_id = ?",
        )
        .bind(user_id.as_slice())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::qs_user(&row))
        .transpose()
    }

    async fn user_by_friendship_token_hash(
        &self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<QsUserRecord>> {
        sqlx::query("SELECT user_id, auth_key, friendship_token_hash FROM qs_users WHERE friendship_token_hash = ?")
            .bind(hash.as_slice())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::qs_user(&row))
            .transpose()
    }

    async fn clients_of_user(&self, user_id: &QsId) -> StoreResult<Vec<QsClientRecord>> {
        sqlx::query("SELECT client_id, user_id, auth_key FROM qs_clients WHERE user_id = ? ORDER BY client_id")
            .bind(user_id.as_slice())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::qs_client)
            .collect()
    }

    async fn client(&self, client_id: &QsId) -> StoreResult<Option<QsClientRecord>> {
        sqlx::query("SELECT client_id, user_id, auth_key FROM qs_clients WHERE client_id = ?")
            .bind(client_id.as_slice())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::qs_client(&row))
            .transpose()
    }

    async fn replace_key_packages(
        &self,
        client_id: &QsId,
        packages: &[StoredKeyPackage],
        replay: &ReplayRecord,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::Qs, replay).await?;
        sqlx::query("DELETE FROM qs_key_packages WHERE client_id = ?")
            .bind(client_id.as_slice())
            .execute(&mut *tx)
            .await?;
        for package in packages {
            sqlx::query("INSERT INTO qs_key_packages (client_id, add_package, last_resort) VALUES (?, ?, ?)")
                .bind(client_id.as_slice())
                .bind(package.add_package.as_slice())
                .bind(package.last_resort)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_key_packages(&self, user_id: &QsId) -> StoreResult<Vec<(QsId, Vec<u8>)>> {
        let mut tx = self.write().await?;
        let clients: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT client_id FROM qs_clients WHERE user_id = ? ORDER BY client_id",
        )
        .bind(user_id.as_slice())
        .fetch_all(&mut *tx)
        .await?;
        let mut taken = Vec::with_capacity(clients.len());
        for client in clients {
            let package: Option<Vec<u8>> = sqlx::query_scalar(
                "DELETE FROM qs_key_packages WHERE id = (\
                     SELECT id FROM qs_key_packages WHERE client_id = ? AND last_resort = 0 \
                     ORDER BY id LIMIT 1) \
                 RETURNING add_package",
            )
            .bind(client.as_slice())
            .fetch_optional(&mut *tx)
            .await?;
            let package = match package {
                Some(package) => Some(package),
                None => {
                    let last_resort: Option<Vec<u8>> = sqlx::query_scalar(
                        "SELECT add_package FROM qs_key_packages WHERE client_id = ? AND last_resort = 1 \
                         ORDER BY id LIMIT 1",
                    )
                    .bind(client.as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if last_resort.is_some() {
                        // The owner can see that its pool ran dry (`key_package_status`).
                        sqlx::query(
                            "UPDATE qs_clients SET last_resort_served = last_resort_served + 1 \
                             WHERE client_id = ?",
                        )
                        .bind(client.as_slice())
                        .execute(&mut *tx)
                        .await?;
                    }
                    last_resort
                }
            };
            if let Some(package) = package {
                taken.push((fixed(&client, "QS id is not 16 bytes")?, package));
            }
        }
        tx.commit().await?;
        Ok(taken)
    }

    async fn rekey_queue(
        &self,
        client_id: &QsId,
        keys: &QueueKeys,
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::Qs, replay).await?;
        // The UPDATE takes the record's row lock: an enqueue holding it finishes first.
        let next: Option<i64> = sqlx::query_scalar(
            "UPDATE qs_clients SET queue_key = ?, ratchet_secret = ? WHERE client_id = ? RETURNING next_seq",
        )
        .bind(keys.queue_key.as_slice())
        .bind(keys.ratchet.secret().as_slice())
        .bind(client_id.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(next) = next else {
            tx.rollback().await?;
            return Ok(None);
        };
        tx.commit().await?;
        Ok(Some(from_db(next)?))
    }

    async fn key_package_status(&self, client_id: &QsId) -> StoreResult<Option<KeyPackageStatus>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT \
                 (SELECT COUNT(*) FROM qs_key_packages k WHERE k.client_id = c.client_id AND k.last_resort = 0), \
                 (SELECT COUNT(*) FROM qs_key_packages k WHERE k.client_id = c.client_id AND k.last_resort = 1), \
                 c.last_resort_served \
             FROM qs_clients c WHERE c.client_id = ?",
        )
        .bind(client_id.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(one_time, last_resort, served)| {
            Ok(KeyPackageStatus {
                one_time: from_db(one_time)?,
                last_resort: last_resort > 0,
                last_resort_served: from_db(served)?,
            })
        })
        .transpose()
    }

    async fn enqueue(
        &self,
        entries: &[EnqueueEntry],
        sealer: &QueueSealer,
    ) -> StoreResult<Vec<Option<u64>>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction holding the write lock: no other enqueue can take a number,
        // move a chain or insert a dedup key between our read and our write. SQLite
        // statements are in-process calls, so one statement per entry costs no round trips.
        let mut tx = self.write().await?;
        let assigned = enqueue_in(&mut tx, entries, sealer).await?;
        tx.commit().await?;
        Ok(assigned)
    }

    async fn dequeue(
        &self,
        client_id: &QsId,
        start: u64,
        max: u32,
    ) -> StoreResult<(Vec<QueueMessage>, u64)> {
        let start = bound(start);
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM qs_queue WHERE client_id = ? AND seq < ?")
            .bind(client_id.as_slice())
            .bind(start)
            .execute(&mut *tx)
            .await?;
        let messages =
            sqlx::query("SELECT seq, payload, sealed FROM qs_queue WHERE client_id = ? AND seq >= ? ORDER BY seq LIMIT ?")
                .bind(client_id.as_slice())
                .bind(start)
                .bind(i64::from(max))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::qs_queue_message)
                .collect::<StoreResult<Vec<_>>>()?;
        let after = after_page(&messages, start)?;
        let remaining: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM qs_queue WHERE client_id = ? AND seq >= ?")
                .bind(client_id.as_slice())
                .bind(after)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((messages, from_db(remaining)?))
    }

    async fn server_key(&self, name: &str) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        let row = sqlx::query("SELECT private_key, public_key FROM server_keys WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("private_key")?, row.try_get("public_key")?)),
            None => None,
        })
    }

    async fn insert_server_key(
        &self,
        name: &str,
        private: &[u8],
        public: &[u8],
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO server_keys (name, private_key, public_key) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(private)
        .bind(public)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue_federated(
        &self,
        sender: &str,
        message_id: &[u8; 16],
        now: u64,
        entry: &EnqueueEntry,
        sealer: &QueueSealer,
    ) -> StoreResult<FederatedEnqueue> {
        let mut tx = self.write().await?;
        let recorded = sqlx::query(
            "INSERT INTO qs_federation_seen (sender, message_id, received_at) VALUES (?, ?, ?) \
             ON CONFLICT (sender, message_id) DO NOTHING",
        )
        .bind(sender)
        .bind(message_id.as_slice())
        .bind(to_db(now)?)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(FederatedEnqueue::Replayed);
        }
        let assigned = enqueue_in(&mut tx, std::slice::from_ref(entry), sealer)
            .await?
            .into_iter()
            .next()
            .flatten();
        tx.commit().await?;
        Ok(FederatedEnqueue::Enqueued(assigned))
    }
}

impl DsStore for SqliteStore {
    async fn reserve_group_id(&self, group_id: &[u8], expires_at: u64) -> StoreResult<bool> {
        // One statement, so atomic under SQLite's single writer.
        let inserted = sqlx::query(
            "INSERT INTO ds_reservations (group_id, expires_at) \
             SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM ds_groups WHERE group_id = ?1) \
             ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(group_id)
        .bind(to_db(expires_at)?)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn create_group(
        &self,
        group_id: &[u8],
        ciphertext: &[u8],
        now: u64,
        replay: &ReplayRecord,
    ) -> StoreResult<CreateGroup> {
        let last_active_month = month(now);
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::Ds, replay).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM ds_groups WHERE group_id = ?")
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            tx.rollback().await?;
            return Ok(CreateGroup::Exists);
        }
        // The reservation is used up by the creation; an expired one does not count.
        let reserved =
            sqlx::query("DELETE FROM ds_reservations WHERE group_id = ? AND expires_at > ?")
                .bind(group_id)
                .bind(bound(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if reserved == 0 {
            tx.rollback().await?;
            return Ok(CreateGroup::NotReserved);
        }
        sqlx::query("INSERT INTO ds_groups (group_id, ciphertext, version, last_active_month) VALUES (?, ?, 0, ?)")
            .bind(group_id)
            .bind(ciphertext)
            .bind(last_active_month)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(CreateGroup::Created)
    }

    async fn group(&self, group_id: &[u8]) -> StoreResult<Option<StoredGroup>> {
        sqlx::query("SELECT ciphertext, version FROM ds_groups WHERE group_id = ?")
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::group(&row))
            .transpose()
    }

    async fn update_group(
        &self,
        group_id: &[u8],
        expected_version: u64,
        ciphertext: &[u8],
        now: u64,
        outbox: &[OutboxEntry],
        replay: &ReplayRecord,
    ) -> StoreResult<Option<Vec<i64>>> {
        let mut tx = self.write().await?;
        super::ephemeral::sqlite::record_request(&mut tx, ReplayService::Ds, replay).await?;
        let updated = sqlx::query(
            "UPDATE ds_groups SET ciphertext = ?, version = version + 1, last_active_month = ? \
             WHERE group_id = ? AND version = ?",
        )
        .bind(ciphertext)
        .bind(month(now))
        .bind(group_id)
        .bind(to_db(expected_version)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let ids = insert_outbox(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(Some(ids))
    }

    async fn append_message_outbox(
        &self,
        digest: &[u8; 32],
        received_at: u64,
        outbox: &[OutboxEntry],
    ) -> StoreResult<Option<Vec<i64>>> {
        let mut tx = self.write().await?;
        let recorded = sqlx::query(
            "INSERT INTO ds_seen_messages (digest, received_at) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.as_slice())
        .bind(bound(received_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            return Ok(None);
        }
        let ids = insert_outbox(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(Some(ids))
    }

    async fn due_outbox(&self, now: u64, limit: u32) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        sqlx::query(
            "SELECT id, destination, queue_config, payload, dedup, notify FROM ds_outbox \
             WHERE next_attempt_at <= ? ORDER BY id LIMIT ?",
        )
        .bind(bound(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::outbox)
        .collect()
    }

    async fn delete_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for id in ids.iter().collect::<BTreeSet<_>>() {
            sqlx::query("DELETE FROM ds_outbox WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn postpone_outbox(&self, id: i64, next_attempt_at: u64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE ds_outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
        )
        .bind(to_db(next_attempt_at)?)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_attempts(&self, id: i64) -> StoreResult<u32> {
        let attempts: Option<i64> =
            sqlx::query_scalar("SELECT attempts FROM ds_outbox WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(u32::try_from(attempts.unwrap_or(0)).unwrap_or(u32::MAX))
    }

    async fn outbox_summary(&self, now: u64) -> StoreResult<Vec<OutboxSummary>> {
        let rows = sqlx::query(
            "SELECT destination, COUNT(*) AS pending, \
             SUM(CASE WHEN next_attempt_at <= ? THEN 1 ELSE 0 END) AS due, MAX(attempts) AS max_attempts \
             FROM ds_outbox GROUP BY destination ORDER BY destination",
        )
        .bind(to_db(now)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxSummary {
                    destination: row.try_get("destination")?,
                    pending: from_db(row.try_get("pending")?)?,
                    due: from_db(row.try_get("due")?)?,
                    max_attempts: from_db(row.try_get("max_attempts")?)?,
                })
            })
            .collect()
    }

    // Requirement: DS-OUTBOX-2, FED-ORDER-1
    async fn claim_outbox(
        &self,
        ids: &[i64],
        local: &str,
        now: u64,
        lease_until: u64,
    ) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite has one writer: the claim is atomic against every other deliverer.
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE ds_outbox SET claimed_until = ?1 WHERE id IN ( \
               SELECT d.id FROM ds_outbox d \
               WHERE d.id IN (SELECT value FROM json_each(?2)) AND d.destination = ?3 \
                 AND d.next_attempt_at <= ?4 AND d.claimed_until <= ?4 \
                 AND NOT EXISTS (SELECT 1 FROM ds_outbox o \
                   WHERE o.destination = d.destination AND o.queue_config = d.queue_config \
                     AND o.id < d.id \
                     AND (o.id NOT IN (SELECT value FROM json_each(?2)) \
                          OR o.next_attempt_at > ?4 OR o.claimed_until > ?4))) \
             RETURNING id, destination, queue_config, payload, dedup, notify",
        )
        .bind(bound(lease_until))
        .bind(id_list(ids))
        .bind(local)
        .bind(bound(now))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        claimed(&rows)
    }

    // Requirement: DS-OUTBOX-2, FED-ORDER-1
    async fn claim_due_outbox(
        &self,
        local: &str,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, OutboxEntry)>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE ds_outbox SET claimed_until = ?1 WHERE id IN ( \
               SELECT d.id FROM ds_outbox d \
               WHERE d.next_attempt_at <= ?2 AND d.claimed_until <= ?2 \
                 AND NOT EXISTS (SELECT 1 FROM ds_outbox o \
                   WHERE o.destination = d.destination AND o.id < d.id \
                     AND (d.destination <> ?3 OR o.queue_config = d.queue_config) \
                     AND (o.next_attempt_at > ?2 OR o.claimed_until > ?2)) \
               ORDER BY d.id LIMIT ?4) \
             RETURNING id, destination, queue_config, payload, dedup, notify",
        )
        .bind(bound(lease_until))
        .bind(bound(now))
        .bind(local)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        claimed(&rows)
    }

    async fn release_outbox(&self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE ds_outbox SET claimed_until = 0 WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(id_list(ids))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // Requirement: FED-ORDER-1
    async fn postpone_destination(
        &self,
        destination: &str,
        failed: i64,
        next_attempt_at: u64,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE ds_outbox SET next_attempt_at = ?, claimed_until = 0, \
             attempts = attempts + CASE WHEN id = ? THEN 1 ELSE 0 END WHERE destination = ?",
        )
        .bind(to_db(next_attempt_at)?)
        .bind(failed)
        .bind(destination)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Append outbox entries in the order given; returns their ids (Requirement: DS-OUTBOX-2).
async fn insert_outbox(
    tx: &mut Transaction<'static, Sqlite>,
    outbox: &[OutboxEntry],
) -> StoreResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(outbox.len());
    for entry in outbox {
        let id = sqlx::query(
            "INSERT INTO ds_outbox (destination, queue_config, payload, dedup, notify) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&entry.destination)
        .bind(entry.queue_config.as_slice())
        .bind(entry.payload.as_slice())
        .bind(entry.dedup.as_slice())
        .bind(entry.notify)
        .execute(&mut **tx)
        .await?
        .last_insert_rowid();
        ids.push(id);
    }
    Ok(ids)
}

/// Ids as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn id_list(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", list.join(","))
}

/// Claimed entries, oldest first (`RETURNING` does not promise an order).
fn claimed(rows: &[sqlx::sqlite::SqliteRow]) -> StoreResult<Vec<(i64, OutboxEntry)>> {
    let mut entries = rows
        .iter()
        .map(rows::outbox)
        .collect::<StoreResult<Vec<_>>>()?;
    entries.sort_by_key(|(id, _)| *id);
    Ok(entries)
}

// Requirement: QS-Q-1, QS-DEDUP-1, QS-ENC-1, QS-ENC-2, QS-ENC-3
/// Enqueue within `tx` (which holds the write lock): read the queues' chains, keep the
/// entries whose dedup keys are new, seal and number them ([`queue_sealing::plan`]),
/// append the rows and store the chains.
async fn enqueue_in(
    tx: &mut Transaction<'static, Sqlite>,
    entries: &[EnqueueEntry],
    sealer: &QueueSealer,
) -> StoreResult<Vec<Option<u64>>> {
    let mut chains = BTreeMap::new();
    for entry in entries {
        if chains.contains_key(&entry.client_id) {
            continue;
        }
        let row = sqlx::query(
            "SELECT next_seq, ratchet_secret, queue_key FROM qs_clients WHERE client_id = ?",
        )
        .bind(entry.client_id.as_slice())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            chains.insert(
                entry.client_id,
                QueueChain {
                    next_seq: from_db(row.try_get::<i64, _>("next_seq")?)?,
                    ratchet: queue_sealing::ratchet_from_column(row.try_get("ratchet_secret")?)?,
                    queue_key: row.try_get("queue_key")?,
                },
            );
        }
    }
    // Requirement: QS-DEDUP-1 (the key outlives the queue row: a delivery of the same entry
    // after the recipient acknowledged it is still a duplicate)
    let delivered_at = bound(crate::server::now());
    let mut fresh = Vec::with_capacity(entries.len());
    for entry in entries {
        let new =
            match (&entry.dedup, chains.contains_key(&entry.client_id)) {
                (Some(dedup), true) => sqlx::query(
                    "INSERT INTO qs_delivered (client_id, dedup, delivered_at) VALUES (?, ?, ?) \
                     ON CONFLICT (client_id, dedup) DO NOTHING",
                )
                .bind(entry.client_id.as_slice())
                .bind(dedup.as_slice())
                .bind(delivered_at)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1,
                _ => true,
            };
        fresh.push(new);
    }
    let (assigned, rows) =
        queue_sealing::plan(sealer, &mut chains, entries, &fresh, &mut rand_core::OsRng)?;
    for row in &rows {
        sqlx::query(
            "INSERT INTO qs_queue (client_id, seq, payload, dedup, sealed) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.client_id.as_slice())
        .bind(to_db(row.seq)?)
        .bind(row.payload.as_slice())
        .bind(row.dedup.as_ref().map(|dedup| dedup.as_slice()))
        .bind(row.sealed)
        .execute(&mut **tx)
        .await?;
    }
    for (client_id, chain) in &chains {
        sqlx::query("UPDATE qs_clients SET next_seq = ?, ratchet_secret = ? WHERE client_id = ?")
            .bind(to_db(chain.next_seq)?)
            .bind(chain.ratchet.as_ref().map(|r| r.secret().as_slice()))
            .bind(client_id.as_slice())
            .execute(&mut **tx)
            .await?;
    }
    Ok(assigned)
}
