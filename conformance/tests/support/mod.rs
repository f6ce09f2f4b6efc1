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

use phoenix_conformance::peer::{EVIL_DOMAIN, MaliciousPeer};
use phoenix_conformance::target::Target;
use phoenix_server::federation::{FederationSettings, Policy};
use phoenix_server::server::{Limits, Server};
use phoenix_server::store::Store;
use phoenix_server::store::postgres::PgStore;
use phoenix_types::discovery::Resolver;
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_with(
            "a.test",
            store,
            dir,
            schema,
            FederationSettings::default(),
            listener,
        )
        .await
    }

    async fn start_with(
        domain: &str,
        store: Store,
        dir: TempDir,
        schema: Option<(String, String)>,
        federation: FederationSettings,
        listener: tokio::net::TcpListener,
    ) -> Self {
        // The suites send thousands of requests from one address: rate limits off (they
        // are tested on their own in the server's tests).
        let mut limits = Limits::default();
        limits.rate_limits.enabled = false;
        let server = Server::start_with(Domain::parse(domain).unwrap(), store, limits, federation)
            .await
            .unwrap();
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
        let (store, dir) = sqlite_store().await;
        Self::start(store, dir, None).await
    }

    pub async fn postgres() -> Option<Self> {
        let (store, schema) = postgres_store().await?;
        Some(Self::start(store, tempfile::tempdir().unwrap(), Some(schema)).await)
    }
}

async fn sqlite_store() -> (Store, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// A Postgres store in a fresh schema (and the (url, schema) to drop it), or `None` if
/// Postgres is unreachable and not required.
async fn postgres_store() -> Option<(Store, (String, String))> {
    let url =
        std::env::var("PHOENIX_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let mut bytes = [0u8; 8];
    OsRng.fill_bytes(&mut bytes);
    let schema = format!("conformance_{}", hex::encode(bytes));
    match PgStore::connect_with_schema(&url, &schema).await {
        Ok(pg) => Some((Store::Postgres(pg), (url, schema))),
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

impl TestServer {
    pub fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            domain: self.domain.clone(),
            resolve: Vec::new(),
            peer: None,
            malicious: None,
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

/// Two federated homeservers over real HTTP on loopback, a.test on SQLite and b.test on
/// `b_backend` (SQLite if that is Postgres and it is unreachable and not required), each
/// resolving the other and the harness's malicious peer `evil.test`; a.test's policy
/// blocks evil.test, b.test's is open. Outbox backoff capped at 1 s.
pub struct Federated {
    pub a: TestServer,
    pub b: TestServer,
    pub peer: MaliciousPeer,
    /// The backends, as a label.
    pub label: String,
}

impl Federated {
    pub async fn start(b_backend: Backend) -> Self {
        let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = MaliciousPeer::start(peer_listener, EVIL_DOMAIN).unwrap();
        let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ua = format!("http://{}", la.local_addr().unwrap());
        let ub = format!("http://{}", lb.local_addr().unwrap());
        let entries = [
            format!("a.test={ua}"),
            format!("b.test={ub}"),
            format!("{EVIL_DOMAIN}={}", peer.info.url),
        ];
        let resolver = Resolver::parse(entries.iter().map(String::as_str)).unwrap();
        let settings = |policy: Policy| FederationSettings {
            resolver: resolver.clone(),
            policy,
            max_backoff: 1,
            ..FederationSettings::default()
        };
        let (a_store, a_dir) = sqlite_store().await;
        let a = TestServer::start_with(
            "a.test",
            a_store,
            a_dir,
            None,
            settings(Policy::Open {
                blocked: std::collections::BTreeSet::from([Domain::parse(EVIL_DOMAIN).unwrap()]),
            }),
            la,
        )
        .await;
        let pg = match b_backend {
            Backend::Postgres => postgres_store().await,
            Backend::Sqlite => None,
        };
        let (b, b_label) = match pg {
            Some((store, schema)) => (
                TestServer::start_with(
                    "b.test",
                    store,
                    tempfile::tempdir().unwrap(),
                    Some(schema),
                    settings(Policy::default()),
                    lb,
                )
                .await,
                "postgres",
            ),
            None => {
                let (store, dir) = sqlite_store().await;
                (
                    TestServer::start_with(
                        "b.test",
                        store,
                        dir,
                        None,
                        settings(Policy::default()),
                        lb,
                    )
                    .await,
                    "sqlite",
                )
            }
        };
        Self {
            a,
            b,
            peer,
            label: format!("a-sqlite-b-{b_label}"),
        }
    }

    /// a.test as the target, with b.test as its peer and the malicious peer.
    pub fn target(&self) -> Target {
        let resolve = vec![
            format!("a.test={}", self.a.url),
            format!("b.test={}", self.b.url),
        ];
        let mut b = self.b.target();
        b.resolve = resolve.clone();
        Target {
            url: self.a.url.clone(),
            domain: self.a.domain.clone(),
            resolve,
            peer: Some(Box::new(b)),
            malicious: Some(self.peer.info.clone()),
        }
    }

    pub async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}
