//! What the server's HTTP suites share: a fresh store on SQLite or on Postgres (a schema of
//! its own, dropped when the test ends), loopback listeners, serving a server until the
//! test ends, and running a test once per backend.
//!
//! Postgres is `PHOENIX_TEST_POSTGRES_URL` (trust auth); when it is unreachable the
//! Postgres tests are skipped with a message, unless `CI=true` or
//! `PHOENIX_TEST_REQUIRE_POSTGRES=1`.

#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test support: a failure to set up is a test failure; each suite uses a part"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use phoenix_server::server::Server;
use phoenix_server::store::Store;
use phoenix_server::store::postgres::PgStore;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which database a test's server runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What a test's store leaves behind: a temporary directory, and for Postgres a schema,
/// dropped when the test ends (also when it fails).
pub struct Storage {
    _dir: TempDir,
    schema: Option<(String, String)>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        let Some((url, schema)) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which must not block: use a thread with a
        // runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

impl Storage {
    /// Another connection pool on the same Postgres schema, as a second server process
    /// sharing the database would have (`None` for SQLite).
    #[allow(dead_code)]
    pub async fn another_store(&self) -> Option<Store> {
        let (url, schema) = self.schema.as_ref()?;
        Some(Store::Postgres(
            PgStore::connect_with_schema(url, schema).await.unwrap(),
        ))
    }

    /// Run `sql` on the test's database directly, as an operator (or an older version of
    /// the server) would: the test's SQLite file, or its Postgres schema.
    #[allow(dead_code)]
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match &self.schema {
            None => {
                let url = format!("sqlite://{}", self._dir.path().join("phoenix.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Some((url, schema)) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

/// A fresh store on `backend`: SQLite in a temporary directory, or a new Postgres schema
/// named `prefix` and random hex (the suites run in parallel on one database). `None` if
/// Postgres is unreachable and not required.
pub async fn store(backend: Backend, prefix: &str) -> Option<(Store, Storage)> {
    let dir = tempfile::tempdir().unwrap();
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
            let storage = Storage {
                _dir: dir,
                schema: None,
            };
            Some((Store::connect(&url).await.unwrap(), storage))
        }
        Backend::Postgres => {
            let url = std::env::var("PHOENIX_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
            let mut bytes = [0u8; 8];
            OsRng.fill_bytes(&mut bytes);
            let schema = format!("{prefix}_{}", hex::encode(bytes));
            match PgStore::connect_with_schema(&url, &schema).await {
                Ok(pg) => Some((
                    Store::Postgres(pg),
                    Storage {
                        _dir: dir,
                        schema: Some((url, schema)),
                    },
                )),
                Err(e) => {
                    let required = std::env::var("CI").is_ok_and(|v| v == "true")
                        || std::env::var("PHOENIX_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                    assert!(
                        !required,
                        "postgres is unreachable and required (CI=true or PHOENIX_TEST_REQUIRE_POSTGRES=1): {e}"
                    );
                    eprintln!("skipping postgres: {e}");
                    None
                }
            }
        }
    }
}

/// A listener on a free loopback port, and its URL (known before the server starts, for
/// the resolvers of a federation).
pub async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Serve `server` over HTTP on `listener` until the returned sender is used or dropped.
pub fn serve(server: Arc<Server>, listener: TcpListener) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(phoenix_server::http::serve(server, listener, async move {
        let _ = rx.await;
    }));
    tx
}

/// Run each `async fn test(backend: Backend)` named once per backend, as `sqlite::test`
/// and `postgres::test`.
#[allow(unused_macros, reason = "not every suite runs its tests this way")]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::Backend::Postgres).await;
                }
            )*
        }
    };
}

#[allow(unused_imports, reason = "not every suite runs its tests this way")]
pub(crate) use on_both_backends;

/// A Web Push receiver on loopback, as a push service: records each POST (path, headers,
/// body) and answers 201, or 410 on paths under `/gone/`.
#[allow(dead_code, reason = "not every suite sends push notifications")]
pub struct PushReceiver {
    pub url: String,
    got: tokio::sync::mpsc::UnboundedReceiver<(String, BTreeMap<String, String>, Vec<u8>)>,
}

#[allow(dead_code, reason = "not every suite sends push notifications")]
pub async fn push_receiver() -> PushReceiver {
    use warp::Filter;
    let (tx, got) = tokio::sync::mpsc::unbounded_channel();
    let route = warp::post()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            move |path: warp::path::FullPath,
                  headers: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let _ = tx.send((path.as_str().to_owned(), headers, body.to_vec()));
                let status = if path.as_str().starts_with("/gone/") {
                    warp::http::StatusCode::GONE
                } else {
                    warp::http::StatusCode::CREATED
                };
                warp::reply::with_status("", status)
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());
    PushReceiver { url, got }
}

#[allow(dead_code, reason = "not every suite sends push notifications")]
impl PushReceiver {
    pub async fn next(&mut self) -> (String, BTreeMap<String, String>, Vec<u8>) {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.got.recv())
            .await
            .expect("no push notification within 10 s")
            .unwrap()
    }

    /// Nothing arrives within `secs`.
    pub async fn quiet(&mut self, secs: u64) -> bool {
        tokio::time::timeout(std::time::Duration::from_secs(secs), self.got.recv())
            .await
            .is_err()
    }
}
