//! The Postgres backend, for deployments where several server processes share one
//! database.
//!
//! Transactions run at Postgres's default READ COMMITTED isolation, and every
//! read-modify-write is made safe by row locks:
//!
//! - taking a package deletes a row picked with `FOR UPDATE SKIP LOCKED`, so concurrent
//!   takers pick different rows and none waits for another;
//! - a sequence number is assigned while the queue's counter row is locked (by the
//!   upsert of the counter for a direct queue; for a fan-out by `SELECT ... FOR NO KEY
//!   UPDATE` in client id order, so that two fan-outs over overlapping clients cannot
//!   deadlock);
//! - compare-and-swap updates re-check their `WHERE` clause after waiting for a
//!   concurrent writer, so only one of two racing updates matches.
//!
//! A fan-out passes its entries as arrays (`UNNEST`), so its statements are as many
//! whatever its size: lock the queues, record the dedup keys, append the sealed rows (see
//! `store::queue_sealing`; the sealing runs in between, while the queues are locked).
//!
//! This module is responsible for SQL and transactions only; the record types, the
//! integer conversions and row decoding are shared with the SQLite backend.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Row, Transaction};

use phoenix_types::ids::QsId;
use phoenix_types::messages::QueueMessage;

use super::queue_sealing::{self, QueueChain, QueueSealer};
use super::{
    AsClientRecord, AsStore, CaRecord, CreateGroup, CreateQsUser, CreateUser, DsStore,
    EnqueueEntry, FederatedEnqueue, KeyPackageStatus, OutboxEntry, OutboxSummary, QsClientRecord,
    QsStore, QsUserRecord, QueueKeys, ReplayRecord, ReplayService, StoreError, StoreResult,
    StoredConnectionPackage, StoredGroup, StoredKeyPackage, after_page, bound, fixed, from_db,
    month, rows, to_db,
};

/// Pool size for [`PgStore::connect_with_schema`]: it serves tests, many of which run
/// at once against one server, so each takes few connections.
const SCHEMA_POOL_CONNECTIONS: u32 = 4;

/// Lock the destination queues' client rows in client id order (two fan-outs over
/// overlapping clients cannot deadlock) and read their chains. `FOR NO KEY UPDATE` waits for
/// a concurrent enqueue and then returns the row as that one committed it.
const LOCK_QUEUES: &str = "SELECT client_id, next_seq, ratchet_secret, queue_key FROM qs_clients \
    WHERE client_id = ANY($1::bytea[]) ORDER BY client_id FOR NO KEY UPDATE";

/// Record the dedup keys of the entries (Requirement: QS-DEDUP-1); returns those that were
/// new. Run while the queues are locked: a concurrent delivery of the same entry has
/// committed its key by then (or waits for ours), and `ON CONFLICT` sees committed keys
/// whatever the statement's snapshot; a key repeated within the batch is new only once.
const RECORD_DEDUPS: &str = "INSERT INTO qs_delivered (client_id, dedup, delivered_at) \
    SELECT client_id, dedup, $3::bigint FROM UNNEST($1::bytea[], $2::bytea[]) AS e(client_id, dedup) \
    ON CONFLICT (client_id, dedup) DO NOTHING RETURNING client_id, dedup";

/// Append the sealed rows and move each queue's counter and chain on, in one statement.
const APPEND_ROWS: &str = "WITH inserted AS (\
        INSERT INTO qs_queue (client_id, seq, payload, dedup, sealed) \
        SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bytea[], $4::bytea[], $5::boolean[])) \
    UPDATE qs_clients SET next_seq = n.next_seq, ratchet_secret = n.ratchet_secret \
    FROM UNNEST($6::bytea[], $7::bigint[], $8::bytea[]) AS n(client_id, next_seq, ratchet_secret) \
    WHERE qs_clients.client_id = n.client_id";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to `postgres://...` and run the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        // Requirement: OPS-LOG-3 (one direct connection first, so that an unreachable or
        // refusing database is reported with its cause within seconds, not as a pool
        // timeout; then bounded waits for pooled connections)
        super::admin::probe_postgres(&options).await?;
        Self::connect_with(
            options,
            PgPoolOptions::new().acquire_timeout(super::admin::ACQUIRE_TIMEOUT),
        )
        .await
    }

    /// Connect with every pooled connection's `search_path` set to `schema`, creating the
    /// schema if needed, and run the migrations there. This gives each test (or each
    /// conformance run) a database of its own on a shared server.
    ///
    /// `schema` must be a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63
    /// bytes), since it is spliced into SQL.
    pub async fn connect_with_schema(url: &str, schema: &str) -> StoreResult<Self> {
        if !is_plain_identifier(schema) {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                format!("schema name {schema:?} is not a plain lowercase identifier").into(),
            )));
        }
        let options = PgConnectOptions::from_str(url)?;
        let mut connection = PgConnection::connect_with(&options).await?;
        // Validated above: the name is only lowercase letters, digits and underscores.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&mut connection)
        .await?;
        connection.close().await?;
        let options = options.options([("search_path", schema)]);
        Self::connect_with(
            options,
            PgPoolOptions::new().max_connections(SCHEMA_POOL_CONNECTIONS),
        )
        .await
    }

    async fn connect_with(
        options: PgConnectOptions,
        pool_options: PgPoolOptions,
    ) -> StoreResult<Self> {
        // Every statement here is a key lookup whose best plan does not depend on the
        // bound values. By default Postgres re-plans prepared statements with array
        // parameters on each call, and planning the fan-out enqueue costs about as much as
        // running it: generic plans almost double enqueue throughput.
        let options = options.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = pool_options.connect_with(options).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool, for the other stores of this backend ([`super::sessions`]).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

impl AsStore for PgStore {
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
        // starting at once (the loser waits for the winner's commit, then does nothing);
        // the NOT EXISTS keeps a later call from adding a row once rotation has added
        // others.
        let inserted = sqlx::query(
            "INSERT INTO as_ca (id, signing_key, certificate, not_before, not_after) \
             SELECT 1, $1::bytea, $2::bytea, $3::bigint, $4::bigint WHERE NOT EXISTS (SELECT 1 FROM as_ca) \
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
        let mut tx = self.begin().await?;
        // A concurrent insert of the same FID waits for ours to commit, then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO as_users (fid, created_at) VALUES ($1, $2) ON CONFLICT (fid) DO NOTHING",
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             FROM as_clients WHERE fid = $1 AND client_id = $2",
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
             FROM as_clients WHERE fid = $1 ORDER BY client_id",
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
             WHERE fid = $1 ORDER BY not_before, serial",
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
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::As, replay).await?;
        sqlx::query("DELETE FROM as_connection_packages WHERE fid = $1 AND client_id = $2")
            .bind(fid)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        let (contents, last_resort): (Vec<&[u8]>, Vec<bool>) = packages
            .iter()
            .map(|package| (package.package.as_slice(), package.last_resort))
            .unzip();
        let not_after: Vec<i64> = packages.iter().map(|p| bound(p.not_after)).collect();
        sqlx::query(
            "INSERT INTO as_connection_packages (fid, client_id, package, last_resort, not_after) \
             SELECT $1, $2, package, last_resort, not_after \
             FROM UNNEST($3::bytea[], $4::boolean[], $5::bigint[]) \
             WITH ORDINALITY AS p(package, last_resort, not_after, n) \
             ORDER BY n",
        )
        .bind(fid)
        .bind(client_id)
        .bind(contents)
        .bind(last_resort)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_connection_package(
        &self,
        fid: &str,
        now: u64,
    ) -> StoreResult<Option<(String, Vec<u8>)>> {
        // SKIP LOCKED: a package locked by a concurrent taker is as good as gone, so take
        // the next one instead of waiting.
        // Requirement: AS-CP-7
        let taken = sqlx::query_as(
            "DELETE FROM as_connection_packages WHERE id = (\
                 SELECT id FROM as_connection_packages WHERE fid = $1 AND NOT last_resort \
                 AND not_after > $2 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING client_id, package",
        )
        .bind(fid)
        .bind(bound(now))
        .fetch_optional(&self.pool)
        .await?;
        if taken.is_some() {
            return Ok(taken);
        }
        Ok(sqlx::query_as(
            "SELECT client_id, package FROM as_connection_packages \
             WHERE fid = $1 AND last_resort AND not_after > $2 ORDER BY id LIMIT 1",
        )
        .bind(fid)
        .bind(bound(now))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn enqueue_direct(
        &self,
        fid: &str,
        client_id: &str,
        payload: &[u8],
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::As, replay).await?;
        // The counter row is created on a client's first message (selecting from
        // as_clients means an unknown client gets no row and no number); the upsert locks
        // it until commit, so concurrent enqueues take numbers one by one.
        let seq: Option<i64> = sqlx::query_scalar(
            "WITH counter AS (\
                 INSERT INTO as_direct_queue_state (fid, client_id, next_seq) \
                 SELECT fid, client_id, 1 FROM as_clients WHERE fid = $1 AND client_id = $2 \
                 ON CONFLICT (fid, client_id) DO UPDATE \
                     SET next_seq = as_direct_queue_state.next_seq + 1 \
                 RETURNING next_seq - 1 AS seq) \
             INSERT INTO as_direct_queue (fid, client_id, seq, payload) \
             SELECT $1, $2, seq, $3 FROM counter \
             RETURNING seq",
        )
        .bind(fid)
        .bind(client_id)
        .bind(payload)
        .fetch_optional(&mut *tx)
        .await?;
        if seq.is_none() {
            // An unknown client: no replay record either (a later enqueue to it, once it
            // exists, is not a replay of this one).
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        seq.map(from_db).transpose()
    }

    async fn dequeue_direct(
        &self,
        fid: &str,
        client_id: &str,
        start: u64,
        max: u32,
    ) -> StoreResult<(Vec<QueueMessage>, u64)> {
        let start = bound(start);
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM as_direct_queue WHERE fid = $1 AND client_id = $2 AND seq < $3")
            .bind(fid)
            .bind(client_id)
            .bind(start)
            .execute(&mut *tx)
            .await?;
        let messages = sqlx::query(
            "SELECT seq, payload FROM as_direct_queue WHERE fid = $1 AND client_id = $2 AND seq >= $3 \
             ORDER BY seq LIMIT $4",
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
            "SELECT COUNT(*) FROM as_direct_queue WHERE fid = $1 AND client_id = $2 AND seq >= $3",
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
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4 FROM as_ca",
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
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::As, replay).await?;
        let updated = sqlx::query(
            "UPDATE as_clients SET certificate = $1, public_key = $2, serial = $3, not_before = $4, \
             not_after = $5 WHERE fid = $6 AND client_id = $7",
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
             VALUES ($1, $2, $3, $4, $5, $6)",
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

impl QsStore for PgStore {
    async fn queue_config_key(&self) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT queue_config_private_key, queue_config_public_key FROM qs_config WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn insert_queue_config_key(&self, private: &[u8], public: &[u8]) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO qs_config (id, queue_config_private_key, queue_config_public_key) VALUES (1, $1, $2) \
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
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO qs_users (user_id, auth_key, friendship_token_hash) VALUES ($1, $2, $3) \
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
        sqlx::query("INSERT INTO qs_clients (client_id, user_id, auth_key, queue_key, ratchet_secret) VALUES ($1, $2, $3, $4, $5)")
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
            "SELECT user_id, auth_key, friendship_token_hash FROM qs_users WHERE user_id = $1",
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
        sqlx::query("SELECT user_id, auth_key, friendship_token_hash FROM qs_users WHERE friendship_token_hash = $1")
            .bind(hash.as_slice())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::qs_user(&row))
            .transpose()
    }

    async fn clients_of_user(&self, user_id: &QsId) -> StoreResult<Vec<QsClientRecord>> {
        sqlx::query("SELECT client_id, user_id, auth_key FROM qs_clients WHERE user_id = $1 ORDER BY client_id")
            .bind(user_id.as_slice())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::qs_client)
            .collect()
    }

    async fn client(&self, client_id: &QsId) -> StoreResult<Option<QsClientRecord>> {
        sqlx::query("SELECT client_id, user_id, auth_key FROM qs_clients WHERE client_id = $1")
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
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::Qs, replay).await?;
        sqlx::query("DELETE FROM qs_key_packages WHERE client_id = $1")
            .bind(client_id.as_slice())
            .execute(&mut *tx)
            .await?;
        let (contents, last_resort): (Vec<&[u8]>, Vec<bool>) = packages
            .iter()
            .map(|package| (package.add_package.as_slice(), package.last_resort))
            .unzip();
        sqlx::query(
            "INSERT INTO qs_key_packages (client_id, add_package, last_resort) \
             SELECT $1, add_package, last_resort \
             FROM UNNEST($2::bytea[], $3::boolean[]) WITH ORDINALITY AS p(add_package, last_resort, n) \
             ORDER BY n",
        )
        .bind(client_id.as_slice())
        .bind(contents)
        .bind(last_resort)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_key_packages(&self, user_id: &QsId) -> StoreResult<Vec<(QsId, Vec<u8>)>> {
        // Each client's oldest unlocked non-last-resort package, locked (SKIP LOCKED: one
        // locked by a concurrent taker is as good as gone) and deleted in one statement.
        // MATERIALIZED makes the picking run exactly once.
        let consumed: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "WITH picked AS MATERIALIZED (\
                 SELECT p.id FROM qs_clients c \
                 CROSS JOIN LATERAL (\
                     SELECT k.id FROM qs_key_packages k \
                     WHERE k.client_id = c.client_id AND NOT k.last_resort \
                     ORDER BY k.id LIMIT 1 FOR UPDATE SKIP LOCKED) p \
                 WHERE c.user_id = $1) \
             DELETE FROM qs_key_packages k USING picked WHERE k.id = picked.id \
             RETURNING k.client_id, k.add_package",
        )
        .bind(user_id.as_slice())
        .fetch_all(&self.pool)
        .await?;
        let served: Vec<&[u8]> = consumed
            .iter()
            .map(|(client, _)| client.as_slice())
            .collect();
        // The clients that had none get their last-resort package, which is kept, and
        // their count of last-resort servings goes up (the owner sees it in
        // `key_package_status`).
        let last_resort: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "WITH picked AS (\
                 SELECT DISTINCT ON (k.client_id) k.client_id, k.add_package \
                 FROM qs_key_packages k JOIN qs_clients c ON c.client_id = k.client_id \
                 WHERE c.user_id = $1 AND k.last_resort AND k.client_id <> ALL($2::bytea[]) \
                 ORDER BY k.client_id, k.id), \
             counted AS (\
                 UPDATE qs_clients c SET last_resort_served = c.last_resort_served + 1 \
                 FROM picked WHERE c.client_id = picked.client_id) \
             SELECT client_id, add_package FROM picked",
        )
        .bind(user_id.as_slice())
        .bind(&served)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = BTreeMap::new();
        for (client, package) in consumed.into_iter().chain(last_resort) {
            taken.insert(fixed::<16>(&client, "QS id is not 16 bytes")?, package);
        }
        Ok(taken.into_iter().collect())
    }

    async fn rekey_queue(
        &self,
        client_id: &QsId,
        keys: &QueueKeys,
        replay: &ReplayRecord,
    ) -> StoreResult<Option<u64>> {
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::Qs, replay).await?;
        // The UPDATE takes the record's row lock: an enqueue holding it finishes first.
        let next: Option<i64> = sqlx::query_scalar(
            "UPDATE qs_clients SET queue_key = $1, ratchet_secret = $2 WHERE client_id = $3 RETURNING next_seq",
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
                 (SELECT COUNT(*) FROM qs_key_packages k WHERE k.client_id = c.client_id AND NOT k.last_resort), \
                 (SELECT COUNT(*) FROM qs_key_packages k WHERE k.client_id = c.client_id AND k.last_resort), \
                 c.last_resort_served \
             FROM qs_clients c WHERE c.client_id = $1",
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
        let mut tx = self.begin().await?;
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
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM qs_queue WHERE client_id = $1 AND seq < $2")
            .bind(client_id.as_slice())
            .bind(start)
            .execute(&mut *tx)
            .await?;
        let messages =
            sqlx::query("SELECT seq, payload, sealed FROM qs_queue WHERE client_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3")
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
            sqlx::query_scalar("SELECT COUNT(*) FROM qs_queue WHERE client_id = $1 AND seq >= $2")
                .bind(client_id.as_slice())
                .bind(after)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((messages, from_db(remaining)?))
    }

    async fn server_key(&self, name: &str) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        let row = sqlx::query("SELECT private_key, public_key FROM server_keys WHERE name = $1")
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
            "INSERT INTO server_keys (name, private_key, public_key) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
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
        let mut tx = self.begin().await?;
        // A concurrent delivery of the same message waits on this row and then sees it.
        let recorded = sqlx::query(
            "INSERT INTO qs_federation_seen (sender, message_id, received_at) VALUES ($1, $2, $3) \
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

impl DsStore for PgStore {
    async fn reserve_group_id(&self, group_id: &[u8], expires_at: u64) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO ds_reservations (group_id, expires_at) \
             SELECT $1::bytea, $2::bigint WHERE NOT EXISTS (SELECT 1 FROM ds_groups WHERE group_id = $1) \
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
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::Ds, replay).await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM ds_groups WHERE group_id = $1")
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            tx.rollback().await?;
            return Ok(CreateGroup::Exists);
        }
        // The reservation is used up by the creation; an expired one does not count. Of
        // two concurrent creations, the second waits on the row lock and then finds the
        // reservation gone.
        let reserved =
            sqlx::query("DELETE FROM ds_reservations WHERE group_id = $1 AND expires_at > $2")
                .bind(group_id)
                .bind(bound(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if reserved == 0 {
            tx.rollback().await?;
            return Ok(CreateGroup::NotReserved);
        }
        let inserted = sqlx::query(
            "INSERT INTO ds_groups (group_id, ciphertext, version, last_active_month) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(group_id)
        .bind(ciphertext)
        .bind(last_active_month)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(CreateGroup::Exists);
        }
        tx.commit().await?;
        Ok(CreateGroup::Created)
    }

    async fn group(&self, group_id: &[u8]) -> StoreResult<Option<StoredGroup>> {
        sqlx::query("SELECT ciphertext, version FROM ds_groups WHERE group_id = $1")
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
        let mut tx = self.begin().await?;
        super::ephemeral::postgres::record_request(&mut tx, ReplayService::Ds, replay).await?;
        // Of two racing updates, the second waits for the first's row lock and then
        // re-checks the version, which has moved on.
        let updated = sqlx::query(
            "UPDATE ds_groups SET ciphertext = $1, version = version + 1, last_active_month = $2 \
             WHERE group_id = $3 AND version = $4",
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
        let mut tx = self.begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO ds_seen_messages (digest, received_at) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
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
             WHERE next_attempt_at <= $1 ORDER BY id LIMIT $2",
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
        sqlx::query("DELETE FROM ds_outbox WHERE id = ANY($1::bigint[])")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn postpone_outbox(&self, id: i64, next_attempt_at: u64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE ds_outbox SET attempts = attempts + 1, next_attempt_at = $1 WHERE id = $2",
        )
        .bind(to_db(next_attempt_at)?)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_attempts(&self, id: i64) -> StoreResult<u32> {
        let attempts: Option<i64> =
            sqlx::query_scalar("SELECT attempts FROM ds_outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(u32::try_from(attempts.unwrap_or(0)).unwrap_or(u32::MAX))
    }

    async fn outbox_summary(&self, now: u64) -> StoreResult<Vec<OutboxSummary>> {
        let rows = sqlx::query(
            "SELECT destination, COUNT(*)::BIGINT AS pending, \
             SUM(CASE WHEN next_attempt_at <= $1 THEN 1 ELSE 0 END)::BIGINT AS due, MAX(attempts)::BIGINT AS max_attempts \
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
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(OUTBOX_CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        // Rows another transaction holds (being delivered or postponed) are skipped,
        // never waited for.
        let rows = sqlx::query(
            "UPDATE ds_outbox SET claimed_until = $1 WHERE id IN ( \
               SELECT d.id FROM ds_outbox d \
               WHERE d.id = ANY($2::bigint[]) AND d.destination = $3 \
                 AND d.next_attempt_at <= $4 AND d.claimed_until <= $4 \
                 AND NOT EXISTS (SELECT 1 FROM ds_outbox o \
                   WHERE o.destination = d.destination AND o.queue_config = d.queue_config \
                     AND o.id < d.id \
                     AND (o.id <> ALL($2::bigint[]) OR o.next_attempt_at > $4 OR o.claimed_until > $4)) \
               ORDER BY d.id FOR UPDATE OF d SKIP LOCKED) \
             RETURNING id, destination, queue_config, payload, dedup, notify",
        )
        .bind(bound(lease_until))
        .bind(ids)
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
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(OUTBOX_CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "UPDATE ds_outbox SET claimed_until = $1 WHERE id IN ( \
               SELECT d.id FROM ds_outbox d \
               WHERE d.next_attempt_at <= $2 AND d.claimed_until <= $2 \
                 AND NOT EXISTS (SELECT 1 FROM ds_outbox o \
                   WHERE o.destination = d.destination AND o.id < d.id \
                     AND (d.destination <> $3 OR o.queue_config = d.queue_config) \
                     AND (o.next_attempt_at > $2 OR o.claimed_until > $2)) \
               ORDER BY d.id LIMIT $4 FOR UPDATE OF d SKIP LOCKED) \
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
        sqlx::query("UPDATE ds_outbox SET claimed_until = 0 WHERE id = ANY($1::bigint[])")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // Requirement: FED-ORDER-1
    async fn postpone_destination(
        &self,
        destination: &str,
        failed: i64,
        next_attempt_at: u64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE ds_outbox SET next_attempt_at = $1, claimed_until = 0, \
             attempts = attempts + CASE WHEN id = $2 THEN 1 ELSE 0 END WHERE destination = $3",
        )
        .bind(to_db(next_attempt_at)?)
        .bind(failed)
        .bind(destination)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Append outbox entries in one statement, keeping their order (ids increase in the
/// order given, and `due_outbox` returns them by id). Returns their ids in that order
/// (Requirement: DS-OUTBOX-2).
async fn insert_outbox(
    tx: &mut Transaction<'static, Postgres>,
    outbox: &[OutboxEntry],
) -> StoreResult<Vec<i64>> {
    if outbox.is_empty() {
        return Ok(Vec::new());
    }
    let destinations: Vec<&str> = outbox
        .iter()
        .map(|entry| entry.destination.as_str())
        .collect();
    let queue_configs: Vec<&[u8]> = outbox
        .iter()
        .map(|entry| entry.queue_config.as_slice())
        .collect();
    let payloads: Vec<&[u8]> = outbox
        .iter()
        .map(|entry| entry.payload.as_slice())
        .collect();
    let dedups: Vec<&[u8]> = outbox.iter().map(|entry| entry.dedup.as_slice()).collect();
    let notify: Vec<bool> = outbox.iter().map(|entry| entry.notify).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO ds_outbox (destination, queue_config, payload, dedup, notify) \
         SELECT destination, queue_config, payload, dedup, notify \
         FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::bytea[], $5::boolean[]) \
             WITH ORDINALITY AS o(destination, queue_config, payload, dedup, notify, n) \
         ORDER BY n \
         RETURNING id",
    )
    .bind(&destinations)
    .bind(&queue_configs)
    .bind(&payloads)
    .bind(&dedups)
    .bind(&notify)
    .fetch_all(&mut **tx)
    .await?;
    // RETURNING promises no order; the ids were drawn in insertion order.
    let mut ids: Vec<i64> = ids;
    ids.sort_unstable();
    Ok(ids)
}

/// The transaction-level advisory lock every outbox claim takes first, so that claims
/// (from any process sharing the database) see each other's results: without it, two
/// claims running at once could both find an older entry unclaimed and one of them take
/// a newer entry of the same destination (Requirement: FED-ORDER-1). A claim is one short
/// statement; nothing waits on this lock while holding outbox rows.
const OUTBOX_CLAIM_LOCK: i64 = 0x7068_6f65_6e69_7801;

/// Claimed entries, oldest first (`RETURNING` does not promise an order).
fn claimed(rows: &[sqlx::postgres::PgRow]) -> StoreResult<Vec<(i64, OutboxEntry)>> {
    let mut entries = rows
        .iter()
        .map(rows::outbox)
        .collect::<StoreResult<Vec<_>>>()?;
    entries.sort_by_key(|(id, _)| *id);
    Ok(entries)
}

/// A name that is safe to splice into SQL unquoted: `[a-z_][a-z0-9_]*`, at most 63 bytes
/// (Postgres's identifier limit).
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

// Requirement: QS-Q-1, QS-DEDUP-1, QS-ENC-1, QS-ENC-2, QS-ENC-3
/// Enqueue within `tx`: lock the queues, keep the entries whose dedup keys are new, seal
/// and number them ([`queue_sealing::plan`]), append the rows and store the chains.
async fn enqueue_in(
    tx: &mut Transaction<'static, Postgres>,
    entries: &[EnqueueEntry],
    sealer: &QueueSealer,
) -> StoreResult<Vec<Option<u64>>> {
    let client_ids: Vec<&[u8]> = entries.iter().map(|e| e.client_id.as_slice()).collect();
    let mut chains = BTreeMap::new();
    for row in sqlx::query(LOCK_QUEUES)
        .bind(&client_ids)
        .fetch_all(&mut **tx)
        .await?
    {
        let client_id: Vec<u8> = row.try_get("client_id")?;
        chains.insert(
            fixed::<16>(&client_id, "QS client id is not 16 bytes")?,
            QueueChain {
                next_seq: from_db(row.try_get::<i64, _>("next_seq")?)?,
                ratchet: queue_sealing::ratchet_from_column(row.try_get("ratchet_secret")?)?,
                queue_key: row.try_get("queue_key")?,
            },
        );
    }
    // Dedup keys of entries for known queues only: nothing is recorded for an unknown one.
    let keyed: Vec<(&[u8], &[u8])> = entries
        .iter()
        .filter(|e| chains.contains_key(&e.client_id))
        .filter_map(|e| {
            e.dedup
                .as_ref()
                .map(|d| (e.client_id.as_slice(), d.as_slice()))
        })
        .collect();
    let mut new_keys = std::collections::BTreeSet::new();
    if !keyed.is_empty() {
        let (ids, keys): (Vec<&[u8]>, Vec<&[u8]>) = keyed.into_iter().unzip();
        for (client_id, dedup) in sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(RECORD_DEDUPS)
            .bind(&ids)
            .bind(&keys)
            .bind(bound(crate::server::now()))
            .fetch_all(&mut **tx)
            .await?
        {
            new_keys.insert((client_id, dedup));
        }
    }
    let fresh: Vec<bool> = entries
        .iter()
        .map(|e| match &e.dedup {
            None => true,
            // The first entry with a new key takes it; repeats within the batch do not.
            Some(dedup) => new_keys.remove(&(e.client_id.to_vec(), dedup.to_vec())),
        })
        .collect();
    let (assigned, rows) =
        queue_sealing::plan(sealer, &mut chains, entries, &fresh, &mut rand_core::OsRng)?;
    if rows.is_empty() {
        return Ok(assigned);
    }
    let mut seqs = Vec::with_capacity(rows.len());
    for row in &rows {
        seqs.push(to_db(row.seq)?);
    }
    let moved: Vec<(&QsId, &QueueChain)> = chains.iter().collect();
    let mut next_seqs = Vec::with_capacity(moved.len());
    for (_, chain) in &moved {
        next_seqs.push(to_db(chain.next_seq)?);
    }
    sqlx::query(APPEND_ROWS)
        .bind(
            rows.iter()
                .map(|r| r.client_id.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(&seqs)
        .bind(
            rows.iter()
                .map(|r| r.payload.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.dedup.as_ref().map(|d| d.as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.sealed).collect::<Vec<_>>())
        .bind(
            moved
                .iter()
                .map(|(id, _)| id.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(&next_seqs)
        .bind(
            moved
                .iter()
                .map(|(_, chain)| chain.ratchet.as_ref().map(|r| r.secret().as_slice()))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    Ok(assigned)
}
