//! Harness for the end-to-end tests: it runs the real `phoenix-server` and `phoenix`
//! binaries as processes, over loopback, exactly as an operator and a user would.
//!
//! Layout:
//! - [`binary`]: find the binaries in the workspace target directory (building them once if
//!   they are missing or older than the sources).
//! - [`TestServer`]: a `phoenix-server` on a free port, on a fresh SQLite data directory or a
//!   fresh Postgres database ([`TestDatabase`]), killed (SIGTERM, then SIGKILL) on drop.
//! - [`Cli`]: one user's `phoenix --home <dir> --json ...`, returning the parsed JSON output.
//!
//! Postgres: the tests read `PHOENIX_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates its own database
//! `phoenix_e2e_<random>` there and drops it afterwards. If Postgres is unreachable, a test
//! fails when `PHOENIX_TEST_REQUIRE_POSTGRES=1` or `CI=true`, and is otherwise skipped with a
//! message on stderr.
//!
//! This crate links none of the crates it tests: what the tests check is only what a user
//! can observe (exit status, JSON on stdout, errors on stderr).

// Test-support code: a failed step must stop the test with a message, which is what
// unwrap/expect/panic do here. Nothing in this crate is reachable from untrusted input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

pub mod proxy;
pub mod tcp_proxy;
pub mod tls;

/// The Postgres server the tests use when `PHOENIX_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long the server may take to print its listening line and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one CLI command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped server may take to finish in-flight requests.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of a workspace binary (`phoenix-server` or `phoenix`).
///
/// The binaries are looked up next to the running test executable (which cargo puts in
/// `<target>/<profile>/deps/`), then in `CARGO_TARGET_DIR`, then in the workspace's
/// `target/`. If a binary is missing or older than the workspace sources, `cargo build
/// --workspace --bins` runs once per test process (cargo's own lock serialises concurrent
/// builds, and cargo releases it before it runs tests, so this cannot deadlock).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(ensure_built)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} does not exist after building",
        path.display()
    );
    path
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const BINARIES: [&str; 2] = ["phoenix-server", "phoenix"];

/// The directory holding the binaries, built if needed.
fn ensure_built() -> Result<PathBuf, String> {
    let dir = binary_dir();
    let newest_source = newest_mtime(&workspace_root());
    let fresh = BINARIES.iter().all(|name| {
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        match fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(built) => newest_source.is_none_or(|source| built >= source),
            Err(_) => false,
        }
    });
    if fresh {
        return Ok(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    // The same command as scripts/test.sh: another package selection would unify
    // dependency features differently and rebuild half the dependency tree.
    command
        .current_dir(workspace_root())
        .args(["build", "--workspace", "--bins"]);
    if dir.file_name().is_some_and(|profile| profile == "release") {
        command.arg("--release");
    }
    if let Some(target) = dir.parent() {
        command.env("CARGO_TARGET_DIR", target);
    }
    eprintln!(
        "e2e: building the binaries ({cargo} build --workspace --bins) into {}",
        dir.display()
    );
    let status = command
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building the binaries failed ({status})"));
    }
    Ok(dir)
}

/// `<target>/<profile>`: where cargo puts the binaries of the profile this test was built with.
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    // A test executable lives in `<target>/<profile>/deps/`; a workspace binary that uses
    // this harness (`phoenix-bench`) in `<target>/<profile>/` itself.
    let candidates = [
        exe.as_deref()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf())),
        exe.as_deref()
            .and_then(|exe| Some(exe.parent()?.to_path_buf())),
    ];
    if let Some(dir) = candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join(".fingerprint").is_dir())
    {
        return dir;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// The newest modification time of the sources the binaries are built from.
fn newest_mtime(root: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut visit = |path: &Path| {
        if let Ok(modified) = fs::metadata(path).and_then(|m| m.modified()) {
            newest = newest.max(Some(modified));
        }
    };
    visit(&root.join("Cargo.toml"));
    visit(&root.join("Cargo.lock"));
    let mut stack: Vec<PathBuf> = ["impl/types", "impl/server", "impl/client"]
        .iter()
        .map(|krate| root.join(krate))
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                visit(&path);
            }
        }
    }
    newest
}

/// Whether Postgres tests must run (fail instead of skipping when Postgres is unreachable).
pub fn postgres_required() -> bool {
    let set = |name: &str| {
        std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
    };
    set("PHOENIX_TEST_REQUIRE_POSTGRES") || set("CI")
}

/// The Postgres server URL for tests.
pub fn postgres_url() -> String {
    std::env::var("PHOENIX_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.into())
}

/// A fresh random-enough suffix for names (databases).
fn random_suffix() -> String {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// A database created for one test on the Postgres server, dropped on drop.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl TestDatabase {
    /// Create `phoenix_e2e_<random>` on the server at `admin_url`.
    pub fn create(admin_url: &str) -> Result<Self, String> {
        let name = format!("phoenix_e2e_{}", random_suffix());
        let url = with_database(admin_url, &name)?;
        admin(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// The Postgres database for a test: `Ok(None)` means "skip" (Postgres is unreachable
    /// and not required; the reason was printed).
    pub fn for_test() -> Option<Self> {
        let url = postgres_url();
        match Self::create(&url) {
            Ok(db) => Some(db),
            Err(e) if postgres_required() => panic!(
                "Postgres is required (PHOENIX_TEST_REQUIRE_POSTGRES=1 or CI=true) but {e}; \
                 start Postgres on 127.0.0.1:5432 with trust auth or set PHOENIX_TEST_POSTGRES_URL"
            ),
            Err(e) => {
                eprintln!(
                    "skipping postgres: {e} (set PHOENIX_TEST_POSTGRES_URL to test on Postgres)"
                );
                None
            }
        }
    }
}

impl TestDatabase {
    /// The same database reached at `url` instead (e.g. through a [`tcp_proxy::TcpProxy`]);
    /// it is still dropped through the original server address.
    pub fn reached_at(mut self, url: String) -> Self {
        self.url = url;
        self
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(&self.admin_url, &sql) {
            eprintln!("e2e: could not drop test database {}: {e}", self.name);
        }
    }
}

/// Run one statement on the Postgres server (database administration only).
fn admin(url: &str, sql: &str) -> Result<(), String> {
    admin_query(url, sql).map(|_| ())
}

/// Run one statement on the Postgres server and return how many rows it returned.
fn admin_query(url: &str, sql: &str) -> Result<usize, String> {
    use sqlx::Connection;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let connect = sqlx::PgConnection::connect(url);
        let mut conn = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| format!("connecting to {} timed out", redact(url)))?
            .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| format!("{sql:?} failed: {e}"))?;
        conn.close().await.map_err(|e| e.to_string())?;
        Ok(rows.len())
    })
}

/// `url` with its database name replaced by `name` (query parameters are kept).
fn with_database(url: &str, name: &str) -> Result<String, String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| format!("not a postgres URL: {}", redact(url)))?;
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    Ok(match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    })
}

/// A URL with any password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => match url[start + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// A running `phoenix-server`.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    url: String,
    log: PathBuf,
    /// The command line, kept to restart the server the same way.
    args: Vec<String>,
    /// The CA that issued the server's TLS certificate (HTTPS servers only).
    ca_file: Option<PathBuf>,
    // Dropped after the process is stopped (fields drop in declaration order, after `drop`).
    _database: Option<TestDatabase>,
    _dir: TempDir,
}

impl TestServer {
    /// A server for `domain` on a fresh embedded SQLite database.
    pub fn sqlite(domain: &str) -> Self {
        Self::start(domain, None)
    }

    /// A server for `domain` on a fresh Postgres database, or `None` if Postgres tests are
    /// skipped (see [`TestDatabase::for_test`]).
    pub fn postgres(domain: &str) -> Option<Self> {
        TestDatabase::for_test().map(|db| Self::start(domain, Some(db)))
    }

    fn start(domain: &str, database: Option<TestDatabase>) -> Self {
        Self::start_with(domain, database, "127.0.0.1:0", &[])
    }

    /// A server for `domain` listening on `listen` (e.g. `127.0.0.1:0`, or a port from
    /// [`free_port`] when peers must know it in advance), with `extra` flags (e.g.
    /// `--resolve`), on `database` (`None`: a fresh SQLite data directory).
    pub fn start_with(
        domain: &str,
        database: Option<TestDatabase>,
        listen: &str,
        extra: &[String],
    ) -> Self {
        Self::launch(domain, database, listen, extra, None)
    }

    fn launch(
        domain: &str,
        database: Option<TestDatabase>,
        listen: &str,
        extra: &[String],
        ca_file: Option<PathBuf>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("phoenix-e2e-server-")
            .tempdir()
            .unwrap();
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut args: Vec<String> = vec![
            "--domain".into(),
            domain.into(),
            "--listen".into(),
            listen.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if let Some(db) = &database {
            args.extend(["--database-url".into(), db.url.clone()]);
        }
        args.extend(extra.iter().cloned());
        let mut server = Self {
            child: None,
            url: String::new(),
            log,
            args,
            ca_file,
            _database: database,
            _dir: dir,
        };
        server.spawn();
        server
    }

    /// [`TestServer::start_with`] serving HTTPS with a certificate `ca` issues for `domain`,
    /// `localhost` and `127.0.0.1` (the server trusts `ca` for its peers too).
    pub fn start_tls(
        domain: &str,
        database: Option<TestDatabase>,
        listen: &str,
        extra: &[String],
        ca: &tls::TestCa,
    ) -> Self {
        let (cert, key) = ca.issue(domain);
        let mut flags = vec![
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            "--tls-ca-file".to_owned(),
            ca.ca_file().display().to_string(),
        ];
        flags.extend(extra.iter().cloned());
        Self::launch(domain, database, listen, &flags, Some(ca.ca_file()))
    }

    /// The flags the server runs with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Send the server a signal (`HUP`, `TERM`, ...) by name.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -{name} {}", child.id())])
                .status();
        }
    }

    /// Run `phoenix-server <same flags> <subcommand>` (e.g. `rotate-ca-key`) against this
    /// server's database and return its output; panics if it fails.
    pub fn command(&self, subcommand: &str) -> String {
        let output = Command::new(binary("phoenix-server"))
            .args(&self.args)
            .arg(subcommand)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "phoenix-server {subcommand} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Run `phoenix-server <same flags> admin <args...>` against this server's database:
    /// (exit code, stdout, stderr), whatever the outcome.
    pub fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(binary("phoenix-server"))
            .args(&self.args)
            .arg("admin")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Stop the server (SIGTERM) and start it again on the same database, address and flags.
    pub fn restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    /// Stop the server (SIGTERM) but keep its database, to [`TestServer::start_again`] later.
    pub fn pause(&mut self) -> Option<ExitStatus> {
        self.terminate()
    }

    /// Kill the server with SIGKILL (no graceful shutdown: whatever was in flight is cut
    /// off), keeping its database, to [`TestServer::start_again`] later.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server (SIGKILL: no shutdown, as in a crash) and start it again on the same
    /// database, address and flags.
    pub fn crash_restart(&mut self) {
        self.crash();
        self.spawn();
    }

    /// Start a paused server again.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(binary("phoenix-server"));
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // Only the flags above configure the server, whatever the caller's environment holds.
        for var in [
            "PHOENIX_DOMAIN",
            "PHOENIX_LISTEN",
            "PHOENIX_DATABASE_URL",
            "PHOENIX_DATA_DIR",
            "PHOENIX_CONFIG",
            "PHOENIX_RESOLVE",
            "PHOENIX_FEDERATION_MODE",
            "PHOENIX_FEDERATION_ALLOW",
            "PHOENIX_FEDERATION_BLOCK",
            "PHOENIX_TLS_CERT",
            "PHOENIX_TLS_KEY",
            "PHOENIX_TLS_CA_FILE",
            "PHOENIX_ALLOW_PLAIN_HTTP",
            "PHOENIX_KEY_ENCRYPTION_KEY",
            "PHOENIX_KEY_ENCRYPTION_KEY_FILE",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary("phoenix-server").display()));

        // The first stdout line names the bound address; a thread keeps draining stdout so
        // that a later write never fails on a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        self.child = Some(child);
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        self.url = parse_listening_line(&line).unwrap_or_else(|| {
            panic!(
                "phoenix-server did not print its listening line (got {line:?}); its log:\n{}",
                self.log()
            )
        });
        self.wait_healthy();
    }

    /// The server's data directory (`--data-dir`; holds the embedded SQLite database).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    /// The server process's id, while it runs (the benchmark reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the server has logged so far (its stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.get("/health").is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("phoenix-server exited ({status}); its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "phoenix-server never answered GET /health; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the server: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        match &self.ca_file {
            Some(ca) => tls::https_get(&self.url, path, ca).ok(),
            None => http_get(&self.url, path),
        }
    }

    /// The CA file that issued this server's TLS certificate (HTTPS servers).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Stop the server the way an operator does (SIGTERM) and return its exit status; it is
    /// killed if it does not stop within 10 s.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // The shell's `kill` builtin: no libc binding (and no unsafe code) needed.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", child.id())])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "e2e: phoenix-server did not stop on SIGTERM within {STOP_TIMEOUT:?}; killing it"
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `phoenix-server listening on http://127.0.0.1:PORT (domain ..., ...)` → the URL.
fn parse_listening_line(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("phoenix-server listening on ")?;
    let url = rest.split_whitespace().next()?;
    (url.starts_with("http://") || url.starts_with("https://")).then(|| url.to_owned())
}

/// A minimal HTTP/1.1 GET over loopback (no client library needed): (status, body).
fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    let authority = base.strip_prefix("http://")?.trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A free TCP port on loopback (bound and released: good enough for tests that must tell
/// a server its peers' addresses before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One user of the `phoenix` CLI, with its own home directory.
#[derive(Debug)]
pub struct Cli {
    name: String,
    home: TempDir,
    /// The server's log, appended to failure messages.
    server_log: Option<PathBuf>,
    /// `--ca-cert` for every command (users of HTTPS servers with a test CA).
    ca_cert: Option<PathBuf>,
}

/// A running `phoenix listen` ([`Cli::listen`]); interrupted (SIGINT) on drop.
pub struct Listener {
    name: String,
    child: Option<Child>,
    /// stdout lines (`Ok`) and stderr lines (`Err`), as they are printed.
    lines: mpsc::Receiver<Result<String, String>>,
    stderr: Vec<String>,
}

impl Listener {
    /// The first event printed from now on that matches `wanted`, within `timeout`
    /// (earlier events are skipped); panics with what was printed meanwhile.
    pub fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Ok(line)) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("{}: `phoenix listen` printed {line:?}: {e}", self.name)
                    });
                    if wanted(&event) {
                        return event;
                    }
                    seen.push(event);
                }
                Ok(Err(line)) => self.stderr.push(line),
                Err(_) => panic!(
                    "{}: the expected event did not arrive within {timeout:?}; events: {}; stderr: {}",
                    self.name,
                    Value::Array(seen),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// What `phoenix listen` wrote to stderr so far.
    pub fn stderr(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            if let Err(line) = line {
                self.stderr.push(line);
            }
        }
        self.stderr.join("\n")
    }

    /// Stop it as a user does (Ctrl-C, SIGINT) and return its exit status.
    pub fn interrupt(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", child.id())])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok();
        None
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// A finished CLI command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    /// A user named `name` (used only in messages) with a fresh home directory.
    pub fn new(name: &str) -> Self {
        let home = tempfile::Builder::new()
            .prefix(&format!("phoenix-e2e-{name}-"))
            .tempdir()
            .unwrap();
        Self {
            name: name.to_owned(),
            home,
            server_log: None,
            ca_cert: None,
        }
    }

    /// Trust `ca_file` for servers' HTTPS (`PHOENIX_CA_CERT` on every command).
    pub fn trusting(mut self, ca_file: &Path) -> Self {
        self.ca_cert = Some(ca_file.to_owned());
        self
    }

    /// A user whose failure messages include `server`'s log.
    pub fn for_server(name: &str, server: &TestServer) -> Self {
        let mut cli = Self::new(name);
        cli.server_log = Some(server.log.clone());
        cli.ca_cert = server.ca_file.clone();
        cli
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Run `phoenix --home <home> --json <args...>` and return its exit status and output.
    pub fn output(&self, args: &[&str]) -> Output {
        self.output_with_env(args, &[])
    }

    /// [`Cli::output`] with extra environment variables for the command.
    pub fn output_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        // Output goes to files, not pipes: no pipe can fill up and block the child while
        // this thread waits for it with a timeout.
        let out_dir = tempfile::tempdir().unwrap();
        let stdout_path = out_dir.path().join("stdout");
        let stderr_path = out_dir.path().join("stderr");
        let mut child = Command::new(binary("phoenix"))
            .arg("--home")
            .arg(self.home.path())
            .arg("--json")
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("PHOENIX_HOME")
            .env_remove("PHOENIX_CA_CERT")
            .envs(
                self.ca_cert
                    .iter()
                    .map(|p| ("PHOENIX_CA_CERT", p.as_os_str())),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary("phoenix").display()));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: `phoenix {}` did not finish within {COMMAND_TIMEOUT:?}{}",
                    self.name,
                    args.join(" "),
                    self.server_log_tail()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
        }
    }

    /// Start `phoenix --home <home> --json listen` in the background: each event it prints
    /// is read as it comes ([`Listener::wait_for`]).
    pub fn listen(&self) -> Listener {
        let mut child = Command::new(binary("phoenix"))
            .arg("--home")
            .arg(self.home.path())
            .arg("--json")
            .arg("listen")
            .env("NO_COLOR", "1")
            .env_remove("PHOENIX_HOME")
            .env_remove("PHOENIX_CA_CERT")
            .envs(
                self.ca_cert
                    .iter()
                    .map(|p| ("PHOENIX_CA_CERT", p.as_os_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary("phoenix").display()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let events = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if events.send(Ok(line)).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(Err(line)).is_err() {
                    break;
                }
            }
        });
        Listener {
            name: self.name.clone(),
            child: Some(child),
            lines: rx,
            stderr: Vec::new(),
        }
    }

    /// Run a command that must succeed and print one JSON document; return it.
    pub fn run(&self, args: &[&str]) -> Value {
        let out = self.output(args);
        let command = format!("{}: `phoenix {}`", self.name, args.join(" "));
        if !out.status.success() {
            panic!(
                "{command} failed ({})\nstderr:\n{}\nstdout:\n{}{}",
                out.status,
                out.stderr,
                out.stdout,
                self.server_log_tail()
            );
        }
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{command} printed no JSON document ({e})\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )
        })
    }

    /// Run a command that must fail; return its output.
    pub fn fail(&self, args: &[&str]) -> Output {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "{}: `phoenix {}` succeeded but should have failed\nstdout:\n{}",
            self.name,
            args.join(" "),
            out.stdout
        );
        out
    }

    /// `sync` until an event matching `wanted` arrives (fan-out is delivered by the server's
    /// outbox worker shortly after the request that caused it), within `timeout`. Returns
    /// every event received, in order; panics with them if none matched.
    pub fn sync_until(&self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let answer = self.run(&["sync"]);
            let batch = answer["events"].as_array().cloned().unwrap_or_else(|| {
                panic!(
                    "{}: `phoenix sync` printed no events array: {answer}",
                    self.name
                )
            });
            events.extend(batch);
            if events.iter().any(&wanted) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: the expected event did not arrive within {timeout:?}; events: {}{}",
                    self.name,
                    Value::Array(events),
                    self.server_log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn server_log_tail(&self) -> String {
        let Some(path) = &self.server_log else {
            return String::new();
        };
        let log = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("\nserver log (last 40 lines):\n{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h", "x").unwrap(),
            "postgresql://h/x"
        );
        assert!(with_database("nonsense", "x").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn test_databases_are_created_and_dropped() {
        let Some(db) = TestDatabase::for_test() else {
            return;
        };
        let exists = |name: &str| {
            let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{name}'");
            admin_query(&postgres_url(), &sql).unwrap() == 1
        };
        let name = db.name.clone();
        assert!(name.starts_with("phoenix_e2e_"));
        assert!(exists(&name));
        admin(&db.url, "CREATE TABLE t (x INT)").unwrap();
        drop(db);
        assert!(!exists(&name));
    }

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening_line(
                "phoenix-server listening on http://127.0.0.1:4321 (domain a.test, sqlite)\n"
            )
            .as_deref(),
            Some("http://127.0.0.1:4321")
        );
        assert_eq!(parse_listening_line(""), None);
    }
}
