//! The baselines of a run, measured on the same machine in the same run: an Ed25519 verify,
//! and the raw insert rates of the database (pgbench on Postgres; the same statements
//! through sqlx on SQLite).

use std::process::Command;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, Verifier};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

use phoenix_e2e::TestDatabase;

use crate::BenchResult;

/// Microseconds per Ed25519 verify of a 1 KiB message (the unit of the CPU budget).
pub fn ed25519_verify_us(n: u32) -> f64 {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let message = vec![0x42u8; 1024];
    let signature = key.sign(&message);
    let public = key.verifying_key();
    let started = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        if public
            .verify(std::hint::black_box(&message), &signature)
            .is_ok()
        {
            ok += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::hint::black_box(ok);
    elapsed * 1e6 / f64::from(n.max(1))
}

/// One 1 KiB row per transaction.
const ONE_ROW: &str =
    "INSERT INTO bench_rows (payload) VALUES (decode(repeat('ab', 1024), 'hex'));\n";
/// One transaction of 100 such rows.
const HUNDRED_ROWS: &str = "INSERT INTO bench_rows (payload) \
    SELECT decode(repeat('ab', 1024), 'hex') FROM generate_series(1, 100);\n";

/// pgbench on a fresh database: one 1 KiB row per transaction at `concurrency` clients,
/// and one 100-row transaction at one client, `seconds` each.
pub fn postgres(admin_url: &str, concurrency: usize, seconds: u32) -> BenchResult<Value> {
    let db = TestDatabase::create(admin_url)?;
    let create = Command::new("psql")
        .args([
            db.url.as_str(),
            "-q",
            "-c",
            "CREATE TABLE bench_rows (id BIGSERIAL PRIMARY KEY, payload BYTEA NOT NULL)",
        ])
        .output()
        .map_err(|e| format!("psql: {e} (the Postgres baseline needs psql and pgbench)"))?;
    if !create.status.success() {
        return Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&create.stderr).trim()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tps = |script: &str, clients: usize| -> BenchResult<f64> {
        let path = dir.path().join("script.sql");
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        let threads = clients.clamp(1, 2);
        let output = Command::new("pgbench")
            .args([
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                &threads.to_string(),
                "-T",
                &seconds.to_string(),
                "-f",
            ])
            .arg(&path)
            .arg(&db.url)
            .output()
            .map_err(|e| format!("pgbench: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("tps = ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .ok_or_else(|| {
                format!(
                    "pgbench printed no tps: {} {}",
                    text.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })
    };
    let one = tps(ONE_ROW, concurrency)?;
    let hundred = tps(HUNDRED_ROWS, 1)?;
    Ok(json!({
        "tool": "pgbench",
        "insert_1_row_tx_per_second": one,
        "insert_1_row_concurrency": concurrency,
        "insert_100_rows_tx_per_second": hundred,
        "insert_100_rows_per_tx_rows_per_second": hundred * 100.0,
        "seconds_each": seconds,
    }))
}

/// The same inserts on a fresh SQLite file with the server's settings (WAL), through sqlx,
/// one connection (SQLite has one writer at a time).
pub async fn sqlite(seconds: u32) -> BenchResult<Value> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("baseline.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .foreign_keys(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let db = |e: sqlx::Error| e.to_string();
    sqlx::query("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        .execute(&mut conn)
        .await
        .map_err(db)?;
    let one = rate(
        "INSERT INTO bench_rows (payload) VALUES (zeroblob(1024))",
        &mut conn,
        seconds,
    )
    .await?;
    let hundred = rate(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100) \
         INSERT INTO bench_rows (payload) SELECT zeroblob(1024) FROM s",
        &mut conn,
        seconds,
    )
    .await?;
    Ok(json!({
        "tool": "sqlx on SQLite (WAL), one connection",
        "insert_1_row_tx_per_second": one,
        "insert_1_row_concurrency": 1,
        "insert_100_rows_tx_per_second": hundred,
        "insert_100_rows_per_tx_rows_per_second": hundred * 100.0,
        "seconds_each": seconds,
    }))
}

/// Statements per second of `statement` on `conn`, for `seconds`.
async fn rate(
    statement: &'static str,
    conn: &mut sqlx::SqliteConnection,
    seconds: u32,
) -> BenchResult<f64> {
    let window = Duration::from_secs(u64::from(seconds));
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// What the machine is: CPU model, cores, memory, kernel, Postgres version.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0);
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "cpu": model,
        "cores": cores,
        "memory_gib": memory,
        "kernel": run("uname", &["-r"]),
        "postgres": run("psql", &["--version"]),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
