//! Test support: in-process servers over real HTTP on loopback, on SQLite and on Postgres
//! (a fresh schema per server), like `impl/server/tests/api.rs`; and running suites from
//! async tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test support: a failure to set up is a test failure"
)]

use rand_core::{OsRng, RngCore};
use tempfile::TempDir;

use phoenix_conformance::target::Target;
use phoenix_server::server::{Limits, Server};
use phoenix_server::store::Store;
use phoenix_server::store::postgres::PgStore;
use phoenix_types::ids::Domain;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A running in-process server.
pub struct TestServer {
    pub url: String,
    pub domain: String,
    _dir: TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    schema: Option<(String, String)>,
}

/// Which database a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Whether Postgres must be there (CI): then an unreachable one fails the test.
pub fn postgres_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("PHOENIX_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

impl TestServer {
    async fn start(store: Store, dir: TempDir, schema: Option<(String, String)>) -> Self {
        let domain = "a.test";
        // The suites send thousands of requests from one address: rate limits off (they
        // are tested on their own in the server's tests).
        let mut limits = Limits::default();
        limits.rate_limits.enabled = false;
        let server = Server::start(Domain::parse(domain).unwrap(), store, limits)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(phoenix_server::http::serve(server, listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            domain: domain.into(),
            _dir: dir,
            shutdown: Some(tx),
            schema,
        }
    }

    /// A server on `backend`; `None` if that is Postgres and it is unreachable (and not
    /// required: then the test says it skips).
    pub async fn on(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite().await),
            Backend::Postgres => Self::postgres().await,
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
        let store = Store::connect(&url).await.unwrap();
        Self::start(store, dir, None).await
    }

    pub async fn postgres() -> Option<Self> {
        let url = std::env::var("PHOENIX_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
        let mut bytes = [0u8; 8];
        OsRng.fill_bytes(&mut bytes);
        let schema = format!("conformance_{}", hex::encode(bytes));
        match PgStore::connect_with_schema(&url, &schema).await {
            Ok(pg) => Some(
                Self::start(
                    Store::Postgres(pg),
                    tempfile::tempdir().unwrap(),
                    Some((url, schema)),
                )
                .await,
            ),
            Err(e) => {
                if postgres_required() {
                    panic!(
                        "postgres is unreachable and required (CI=true or PHOENIX_TEST_REQUIRE_POSTGRES=1): {e}"
                    );
                }
                eprintln!("SKIPPING the Postgres conformance run: postgres is unreachable: {e}");
                None
            }
        }
    }

    pub fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            domain: self.domain.clone(),
            resolve: Vec::new(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((url, schema)) = self.schema.take() {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await;
            }
        }
    }
}

/// The seed for this run: `PHOENIX_CONFORMANCE_SEED` (hex) or random.
pub fn seed() -> Option<[u8; 32]> {
    std::env::var("PHOENIX_CONFORMANCE_SEED")
        .ok()
        .map(|s| phoenix_conformance::runner::parse_seed(&s).expect("PHOENIX_CONFORMANCE_SEED"))
}

/// Where failures are saved (the crate's fixtures directory).
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}
