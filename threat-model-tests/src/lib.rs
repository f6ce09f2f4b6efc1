//! Harness for the threat-model tests: real homeservers (in process, over real HTTP on
//! loopback, on SQLite or on Postgres), real clients (the `phoenix-client` library with its
//! own state directories), and the adversary's views of them: a snapshot of everything the
//! server persisted ([`Homeserver::snapshot`]), the server's logs ([`Logs`]), and the
//! server's own keys and storage for the adversaries that control it (a malicious AS or DS).
//!
//! One test module per adversary lives in `tests/`:
//! - `snapshot.rs`: a snapshot adversary reads the raw database and logs;
//! - `malicious_as.rs`: the AS mints a second credential for an existing user;
//! - `authentication_chain.rs`: forged or broken authentication chains;
//! - `malicious_ds.rs`: the DS injects a tampered message;
//! - `honest_but_curious.rs`: the operator reads what each request handler saw;
//! - `network.rs`: the network replays a client's request (through the conformance
//!   harness's recording proxy).
//!
//! Federation adversaries (forged, replayed, misrouted QS-to-QS messages) are tested against
//! the real server in `impl/server/tests/federation.rs`.

// Test-support code: a failed step must stop the test with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rand_core::{OsRng, RngCore};
use sqlx::{Connection, Row};
use tempfile::TempDir;

use phoenix_client::Client;
use phoenix_server::federation::FederationSettings;
use phoenix_server::server::{Limits, Server};
use phoenix_server::store::Store;
use phoenix_server::store::postgres::PgStore;
use phoenix_types::discovery::Resolver;
use phoenix_types::ids::Domain;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which database a homeserver runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a homeserver's data is, for the snapshot adversary.
#[derive(Debug, Clone)]
enum Location {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

/// A running homeserver.
pub struct Homeserver {
    pub server: Arc<Server>,
    pub url: String,
    location: Location,
    _dir: TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Homeserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Homeserver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn postgres_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("PHOENIX_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Reserve listeners first, so that servers can be told each other's URLs.
pub async fn listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

impl Homeserver {
    /// Start `domain` on `backend` on a listener from [`listener`], resolving peers with
    /// `resolve` (`DOMAIN=URL`). `None` if Postgres is unavailable and not required.
    pub async fn start(
        domain: &str,
        backend: Backend,
        listener: (tokio::net::TcpListener, String),
        resolve: &[String],
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (store, location) = match backend {
            Backend::Sqlite => {
                let path = dir.path().join("phoenix.db");
                let store = Store::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                (store, Location::Sqlite(path))
            }
            Backend::Postgres => {
                let url = std::env::var("PHOENIX_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
                let mut bytes = [0u8; 8];
                OsRng.fill_bytes(&mut bytes);
                let schema = format!("tm_{}", hex::encode(bytes));
                match PgStore::connect_with_schema(&url, &schema).await {
                    Ok(pg) => (Store::Postgres(pg), Location::Postgres { url, schema }),
                    Err(e) => {
                        assert!(
                            !postgres_required(),
                            "postgres is unreachable and required: {e}"
                        );
                        eprintln!("skipping postgres: {e}");
                        return None;
                    }
                }
            }
        };
        let federation = FederationSettings {
            resolver: Resolver::parse(resolve.iter().map(String::as_str)).unwrap(),
            ..FederationSettings::default()
        };
        let server = Server::start_with(
            Domain::parse(domain).unwrap(),
            store,
            Limits::default(),
            federation,
        )
        .await
        .unwrap();
        let (listener, url) = listener;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(phoenix_server::http::serve(
            server.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Some(Self {
            server,
            url,
            location,
            _dir: dir,
            _shutdown: tx,
        })
    }

    /// Everything the server persisted, as a snapshot adversary (a seized disk, a database
    /// dump) sees it: per table, every cell's bytes; plus, on SQLite, the raw bytes of the
    /// database files (including the write-ahead log).
    pub async fn snapshot(&self) -> Snapshot {
        match &self.location {
            Location::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                let tables: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                let mut snapshot = Snapshot::default();
                for table in tables {
                    let rows =
                        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{table}\"")))
                            .fetch_all(&mut conn)
                            .await
                            .unwrap();
                    let cells = snapshot.tables.entry(table).or_default();
                    for row in &rows {
                        for i in 0..row.columns().len() {
                            cells.extend(sqlite_cell(row, i));
                            cells.push(0);
                        }
                    }
                }
                for suffix in ["", "-wal", "-shm"] {
                    let file = PathBuf::from(format!("{}{suffix}", path.display()));
                    if let Ok(bytes) = std::fs::read(&file) {
                        snapshot.raw.extend(bytes);
                    }
                }
                snapshot
            }
            Location::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let tables: Vec<String> =
                    sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
                        .bind(schema)
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                let mut snapshot = Snapshot::default();
                for table in tables {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT * FROM {schema}.\"{table}\""
                    )))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                    let cells = snapshot.tables.entry(table).or_default();
                    for row in &rows {
                        for i in 0..row.columns().len() {
                            cells.extend(pg_cell(row, i));
                            cells.push(0);
                        }
                    }
                }
                snapshot.raw = snapshot.tables.values().flatten().copied().collect();
                snapshot
            }
        }
    }
}

/// The malicious operator's access to its own server's database: what it reads and writes
/// there with plain SQL, not through the server's code.
impl Homeserver {
    /// The current CA's signing key (32 bytes) and certificate DER, read from the `as_ca`
    /// row of the server's database and opened with the operator's key-encryption key
    /// (the operator has it: it is the server's own, here the in-process default).
    pub async fn ca_from_database(&self) -> ([u8; 32], Vec<u8>) {
        let query = |table: &str| {
            format!("SELECT signing_key, certificate FROM {table} ORDER BY id DESC LIMIT 1")
        };
        let (key, certificate): (Vec<u8>, Vec<u8>) = match &self.location {
            Location::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(query("as_ca")))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                (row.get(0), row.get(1))
            }
            Location::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(query(&format!("{schema}.as_ca"))))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                (row.get(0), row.get(1))
            }
        };
        let opened = phoenix_server::keys_at_rest::KeyEncryptionKey::default()
            .open("ca", &key)
            .unwrap();
        assert!(
            matches!(opened, phoenix_server::keys_at_rest::Opened::Sealed(_)),
            "the CA key is stored in the clear"
        );
        (opened.key().try_into().unwrap(), certificate)
    }

    /// Register `certificate` as a client of `fid` (an existing user) in the AS's tables,
    /// as the server would at registration: the AS then lists and vouches for it.
    pub async fn register_client_in_database(&self, fid: &str, certificate: &[u8]) {
        let cert = phoenix_types::certs::ParsedCert::parse(certificate).unwrap();
        let client_id = cert.actor.as_ref().unwrap().client_id.to_string();
        let serial = cert.serial_hex();
        let (nb, na) = (
            i64::try_from(cert.not_before).unwrap(),
            i64::try_from(cert.not_after).unwrap(),
        );
        let prefix = match &self.location {
            Location::Sqlite(_) => String::new(),
            Location::Postgres { schema, .. } => format!("{schema}."),
        };
        let clients = format!(
            "INSERT INTO {prefix}as_clients (fid, client_id, certificate, public_key, serial, not_before, not_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        let history = format!(
            "INSERT INTO {prefix}as_certificates (serial, fid, client_id, certificate, not_before, not_after) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        );
        macro_rules! run {
            ($conn:expr) => {
                sqlx::query(sqlx::AssertSqlSafe(clients.clone()))
                    .bind(fid)
                    .bind(&client_id)
                    .bind(certificate)
                    .bind(cert.public_key.to_vec())
                    .bind(&serial)
                    .bind(nb)
                    .bind(na)
                    .execute($conn)
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(history.clone()))
                    .bind(&serial)
                    .bind(fid)
                    .bind(&client_id)
                    .bind(certificate)
                    .bind(nb)
                    .bind(na)
                    .execute($conn)
                    .await
                    .unwrap();
            };
        }
        match &self.location {
            Location::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                run!(&mut conn);
            }
            Location::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                run!(&mut conn);
            }
        }
    }
}

fn sqlite_cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> Vec<u8> {
    if let Ok(Some(v)) = row.try_get::<Option<Vec<u8>>, _>(i) {
        return v;
    }
    if let Ok(Some(v)) = row.try_get::<Option<String>, _>(i) {
        return v.into_bytes();
    }
    if let Ok(Some(v)) = row.try_get::<Option<i64>, _>(i) {
        return v.to_string().into_bytes();
    }
    Vec::new()
}

fn pg_cell(row: &sqlx::postgres::PgRow, i: usize) -> Vec<u8> {
    if let Ok(Some(v)) = row.try_get::<Option<Vec<u8>>, _>(i) {
        return v;
    }
    if let Ok(Some(v)) = row.try_get::<Option<String>, _>(i) {
        return v.into_bytes();
    }
    if let Ok(Some(v)) = row.try_get::<Option<i64>, _>(i) {
        return v.to_string().into_bytes();
    }
    Vec::new()
}

/// What a snapshot adversary has.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Table name → the bytes of every cell, separated by zero bytes.
    pub tables: BTreeMap<String, Vec<u8>>,
    /// The raw database files (SQLite) or all cells (Postgres).
    pub raw: Vec<u8>,
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Snapshot {
    /// The tables whose name starts with `prefix` and that contain `needle`.
    pub fn tables_containing(&self, prefix: &str, needle: &[u8]) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(name, cells)| name.starts_with(prefix) && contains(cells, needle))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// A user: a client library instance with its own state directory.
pub struct User {
    pub client: Client,
    pub fid: String,
    pub home: TempDir,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("fid", &self.fid)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Run the `phoenix` CLI on this user's state directory (`phoenix --home HOME ARGS`).
    /// The library's client is closed meanwhile and opened again afterwards: one process
    /// at a time works on a state directory (CL-LOCK-1).
    pub async fn cli(&mut self, args: &[&str]) -> std::process::Output {
        let elsewhere = tempfile::tempdir().unwrap();
        let placeholder = Client::open(elsewhere.path()).await.unwrap();
        drop(std::mem::replace(&mut self.client, placeholder));
        let home = self.home.path().to_owned();
        let args = args_owned(args);
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(phoenix_e2e::binary("phoenix"))
                .arg("--home")
                .arg(home)
                .args(args)
                .output()
                .unwrap()
        });
        let output = output.await.unwrap();
        self.client = Client::open(self.home.path()).await.unwrap();
        output
    }

    /// Register `fid` at `server_url`, knowing where the other homeservers are.
    pub async fn register(fid: &str, server_url: &str, resolve: &[String]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let mut client = Client::open(home.path()).await.unwrap();
        client.add_resolve(resolve).await.unwrap();
        client.register(fid, server_url).await.unwrap();
        Self {
            client,
            fid: fid.to_owned(),
            home,
        }
    }

    /// The client's local store (what only the user has).
    pub async fn local(&self) -> phoenix_client::store::Store {
        phoenix_client::store::Store::open(self.home.path())
            .await
            .unwrap()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The id of this client's QS queue (its pseudonym at the QS).
    pub async fn qs_client_id(&self) -> [u8; 16] {
        self.local()
            .await
            .identity()
            .await
            .unwrap()
            .expect("a registered client")
            .qs_client_id
    }

    /// Sync until an event satisfying `wanted` arrives (fan-out across servers runs from the
    /// outbox a moment after the request), or panic after 30 s.
    pub async fn sync_until(
        &mut self,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut events = Vec::new();
        loop {
            events.extend(self.client.sync().await.unwrap());
            if events.iter().any(&wanted) {
                return events;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: event never arrived: {events:?}",
                self.fid
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `a` asks `b` to connect and `b` accepts.
pub async fn connect(a: &mut User, b: &mut User) {
    a.client.connect(&b.fid).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while b
        .client
        .requests()
        .await
        .unwrap()
        .iter()
        .all(|r| r.fid != a.fid)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection request never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.client.accept(&a.fid).await.unwrap();
    let b_fid = b.fid.clone();
    a.sync_until(move |e| e["kind"] == "connected" && e["contact"] == b_fid.as_str())
        .await;
}

/// `a` and `b` connected, and `b` in `a`'s new group `name`.
pub async fn group_of_two(a: &mut User, b: &mut User, name: &str) {
    connect(a, b).await;
    a.client.create_group(name).await.unwrap();
    a.client.invite(name, &b.fid).await.unwrap();
    b.sync_until(|e| e["kind"] == "joined").await;
}

/// The server's logs, captured for the whole test binary.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Install a global subscriber that records every log line of this process (the
    /// in-process servers') at DEBUG level; the same `Logs` on every call.
    pub fn capture() -> Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init();
            logs
        })
        .clone()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn args_owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}
