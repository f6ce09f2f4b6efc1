//! `phoenix-bench`: the benchmark of the homeserver.
//!
//! It starts the real `phoenix-server` binary (the one built next to this one) on a fresh
//! SQLite or Postgres database, and drives it over HTTP with real clients
//! (`phoenix_client::Client`, each with its own state directory): registration, connection,
//! groups of growing size, invitations, self-update commits, application messages sent one
//! after another, and messages sent concurrently from many 2-member groups. In the same run
//! it measures the baselines the budget in `design.md` is stated against: an Ed25519 verify,
//! `pgbench` (one 1 KiB row per transaction at the same concurrency; one 100-row
//! transaction) on Postgres, and the same raw inserts through sqlx on SQLite. It prints the
//! ratios and writes them as JSON, with an SVG plot, into the results folder.
//!
//! CPU is read from `/proc` (the server process; every `postgres` process for the
//! database's share; this process for the client's share), at the kernel's clock-tick
//! resolution: figures from a few operations (`--quick`) are rough by construction.
//!
//! `--quick` runs in a few seconds in the README's test command: it checks that every step
//! works and asserts no timing. The full mode is `phoenix-bench` (docs/performance.md).
//!
//! Not measured yet (visibly missing from the JSON as `null`): openmls `PublicGroup`
//! validate+merge of the same commit with no server around it, live listeners, and
//! instruction counts (callgrind).

// Reading the JSON figures with `value["field"]`: `serde_json::Value`'s shared indexing
// never panics (a missing field, or a value of another kind, reads as `Null`).
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};

use phoenix_client::client::Client;
use phoenix_e2e::{TestDatabase, TestServer};

mod baseline;
mod listeners;
mod plot;

const DOMAIN: &str = "bench.test";

#[derive(Debug, Parser)]
#[command(
    name = "phoenix-bench",
    about = "Benchmark the homeserver over HTTP with real clients, against baselines taken in the same run"
)]
struct Args {
    /// A few seconds: check that the benchmark works end to end (no timing is asserted).
    #[arg(long)]
    quick: bool,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Group sizes (members, the sender included), comma-separated.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Application messages sent one after another in each group.
    #[arg(long)]
    messages: Option<usize>,
    /// Concurrent senders (each in its own 2-member group).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Postgres server for the Postgres backend and pgbench (a database is created per run).
    #[arg(
        long,
        env = "PHOENIX_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Where the JSON and SVG results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

/// What one run does.
#[derive(Debug, Clone)]
struct Plan {
    mode: &'static str,
    sizes: Vec<usize>,
    messages: usize,
    commits: usize,
    concurrency: usize,
    concurrent_messages: usize,
    /// Idle live listeners opened at the end of the run.
    listeners: usize,
    baseline_seconds: u32,
    verifies: u32,
}

impl Plan {
    fn from(args: &Args) -> Self {
        let mut plan = if args.quick {
            Plan {
                mode: "quick",
                sizes: vec![2, 3],
                messages: 5,
                commits: 2,
                concurrency: 2,
                concurrent_messages: 3,
                listeners: 10,
                baseline_seconds: 1,
                verifies: 200,
            }
        } else {
            Plan {
                mode: "full",
                sizes: vec![2, 10, 50, 100],
                messages: 100,
                commits: 5,
                concurrency: 16,
                concurrent_messages: 20,
                listeners: 1_000,
                baseline_seconds: 10,
                verifies: 5_000,
            }
        };
        if let Some(sizes) = &args.sizes {
            plan.sizes = sizes.iter().copied().filter(|n| *n >= 2).collect();
        }
        if let Some(n) = args.messages {
            plan.messages = n.max(1);
        }
        if let Some(n) = args.concurrency {
            plan.concurrency = n.max(1);
        }
        plan
    }

    /// Users needed: the largest group, and one sender per concurrent 2-member group.
    fn users(&self) -> usize {
        let largest = self.sizes.iter().copied().max().unwrap_or(2);
        largest.max(self.concurrency + 1)
    }
}

type BenchResult<T> = Result<T, String>;

fn fail(what: &str) -> impl Fn(phoenix_client::error::ClientError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A user of the benchmark: a real client with its own state directory.
struct User {
    fid: String,
    client: Client,
    _home: tempfile::TempDir,
}

impl User {
    async fn register(fid: String, url: &str) -> BenchResult<Self> {
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut client = Client::open(home.path())
            .await
            .map_err(fail("open a client"))?;
        client.register(&fid, url).await.map_err(fail("register"))?;
        Ok(Self {
            fid,
            client,
            _home: home,
        })
    }
}

/// CPU seconds (user + system) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32, tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    ticks_of(&stat) / tick
}

fn ticks_of(stat: &str) -> f64 {
    // The command name may contain spaces: the fields after it start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the whole line, 11 and 12 after the name.
    field(11) + field(12)
}

/// CPU seconds of every `postgres` process (the database's share of the work).
fn postgres_cpu_seconds(tick: f64) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && stat.contains("(postgres)")
        {
            total += ticks_of(&stat);
        }
    }
    total / tick
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU of the server, the database and this process (the clients), sampled together.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    server: f64,
    database: f64,
    client: f64,
    wall: Instant,
}

struct Meter {
    server_pid: u32,
    postgres: bool,
    tick: f64,
}

impl Meter {
    fn sample(&self) -> Cpu {
        Cpu {
            server: cpu_seconds(self.server_pid, self.tick),
            database: if self.postgres {
                postgres_cpu_seconds(self.tick)
            } else {
                0.0
            },
            client: cpu_seconds(std::process::id(), self.tick),
            wall: Instant::now(),
        }
    }
}

/// Per-operation figures between two samples, for `n` operations.
fn per_op(before: Cpu, after: Cpu, n: usize) -> Value {
    let n = n.max(1) as f64;
    let wall = after.wall.duration_since(before.wall).as_secs_f64();
    json!({
        "operations": n,
        "wall_seconds": wall,
        "per_second": n / wall.max(1e-9),
        "server_cpu_ms": (after.server - before.server) * 1000.0 / n,
        "database_cpu_ms": (after.database - before.database) * 1000.0 / n,
        "client_cpu_ms": (after.client - before.client) * 1000.0 / n,
    })
}

/// p50, p95 and mean of `samples` (milliseconds).
fn latency(samples: &mut [f64]) -> Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return Value::Null;
        }
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples.get(i).copied().map_or(Value::Null, Value::from)
    };
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    json!({ "p50_ms": at(0.5), "p95_ms": at(0.95), "mean_ms": mean, "samples": samples.len() })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The server of a run, on a fresh database. Started and stopped outside the async
/// runtime (the harness creates and drops the Postgres database with blocking calls).
fn start_server(backend: &str, postgres_url: &str) -> BenchResult<TestServer> {
    let database = match backend {
        "postgres" => Some(TestDatabase::create(postgres_url)?),
        _ => None,
    };
    Ok(TestServer::start_with(
        DOMAIN,
        database,
        "127.0.0.1:0",
        // The benchmark's alice connects to and creates groups with every user: no rate
        // limits, and a daily group allowance above what one run uses.
        &[
            "--rate-limits".into(),
            "off".into(),
            "--group-tokens-per-day".into(),
            "1000000".into(),
            // The idle listeners all come from this machine.
            "--max-connections".into(),
            "4096".into(),
            "--max-connections-per-ip".into(),
            "4096".into(),
        ],
    ))
}

/// The benchmark on one backend.
async fn run_backend(
    server: &TestServer,
    backend: &str,
    plan: &Plan,
    verify_us: f64,
) -> BenchResult<Value> {
    let meter = Meter {
        server_pid: server.pid().ok_or("the server is not running")?,
        postgres: backend == "postgres",
        tick: clock_tick(),
    };
    let url = server.url().to_owned();
    eprintln!("phoenix-bench: {backend}: server at {url}");

    // Registration.
    let mut registration = Vec::new();
    let before = meter.sample();
    let started = Instant::now();
    let mut alice = User::register(format!("alice@{DOMAIN}"), &url).await?;
    registration.push(ms(started));
    let mut members = Vec::new();
    for i in 1..plan.users() {
        let started = Instant::now();
        members.push(User::register(format!("m{i}@{DOMAIN}"), &url).await?);
        registration.push(ms(started));
    }
    let registered = per_op(before, meter.sample(), plan.users());

    // Connections: alice asks everyone; each accepts; alice learns them in one sync.
    let mut connect_ms = Vec::new();
    for m in &members {
        let started = Instant::now();
        alice
            .client
            .connect(&m.fid)
            .await
            .map_err(fail("connect"))?;
        connect_ms.push(ms(started));
    }
    for m in &mut members {
        m.client.requests().await.map_err(fail("requests"))?;
        m.client.accept(&alice.fid).await.map_err(fail("accept"))?;
    }
    let started = Instant::now();
    let events = alice.client.sync().await.map_err(fail("sync"))?;
    let learn_ms = ms(started);
    let mut learned = events.iter().filter(|e| e["kind"] == "connected").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while learned < members.len() {
        if Instant::now() > deadline {
            return Err(format!(
                "alice learned {learned} of {} connections",
                members.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let events = alice.client.sync().await.map_err(fail("sync"))?;
        learned += events.iter().filter(|e| e["kind"] == "connected").count();
    }
    let connections = json!({
        "connect": latency(&mut connect_ms),
        "first_sync_ms": learn_ms,
        "connections_in_first_sync": events.iter().filter(|e| e["kind"] == "connected").count(),
    });

    // Groups of growing size: invitations, self-updates, messages.
    let mut groups = Vec::new();
    for &size in &plan.sizes {
        let name = format!("g{size}");
        alice
            .client
            .create_group(&name)
            .await
            .map_err(fail("create a group"))?;
        let mut invite_ms = Vec::new();
        for m in members.iter().take(size - 1) {
            let started = Instant::now();
            alice
                .client
                .invite(&name, &m.fid)
                .await
                .map_err(fail("invite"))?;
            invite_ms.push(ms(started));
        }
        let last_invite_ms = invite_ms.last().copied();

        let mut update_ms = Vec::new();
        let before = meter.sample();
        for _ in 0..plan.commits {
            let started = Instant::now();
            alice.client.update(&name).await.map_err(fail("update"))?;
            update_ms.push(ms(started));
        }
        let commits = per_op(before, meter.sample(), plan.commits);

        let mut send_ms = Vec::new();
        let before = meter.sample();
        for i in 0..plan.messages {
            let started = Instant::now();
            alice
                .client
                .send(&name, &format!("message {i} to {size}"))
                .await
                .map_err(fail("send"))?;
            send_ms.push(ms(started));
        }
        let sends = per_op(before, meter.sample(), plan.messages);
        // Queue rows per second as the one sequential sender reached them (bounded by the
        // client's own cost per send), and per CPU-second of the server and the database
        // (what the server side could sustain: the budget's figure).
        let fanout_rows_per_second =
            sends["per_second"].as_f64().unwrap_or(0.0) * (size - 1) as f64;
        let server_side_ms = sends["server_cpu_ms"].as_f64().unwrap_or(0.0)
            + sends["database_cpu_ms"].as_f64().unwrap_or(0.0);
        let fanout_rows_per_cpu_second =
            (server_side_ms > 0.0).then(|| (size - 1) as f64 * 1000.0 / server_side_ms);
        groups.push(json!({
            "size": size,
            "invite": latency(&mut invite_ms),
            "invite_at_size_ms": last_invite_ms,
            "self_update": latency(&mut update_ms),
            "self_update_cpu": commits,
            "send": latency(&mut send_ms),
            "send_cpu": sends,
            "fanout_rows_per_second": fanout_rows_per_second,
            "fanout_rows_per_cpu_second": fanout_rows_per_cpu_second,
            "server_cpu_per_message_in_verifies": sends["server_cpu_ms"].as_f64().map(|c| c * 1000.0 / verify_us),
        }));
        eprintln!("phoenix-bench: {backend}: group of {size} done");
    }

    // Concurrent senders, each in a 2-member group with alice.
    let senders = &mut members[..plan.concurrency.min(plan.users() - 1)];
    for (i, m) in senders.iter_mut().enumerate() {
        let name = format!("pair{i}");
        m.client
            .create_group(&name)
            .await
            .map_err(fail("create a pair group"))?;
        m.client
            .invite(&name, &alice.fid)
            .await
            .map_err(fail("invite alice"))?;
    }
    let before = meter.sample();
    let per_sender = plan.concurrent_messages;
    let results =
        futures_util::future::join_all(senders.iter_mut().enumerate().map(|(i, m)| async move {
            for j in 0..per_sender {
                m.client
                    .send(&format!("pair{i}"), &format!("concurrent {j}"))
                    .await
                    .map_err(fail("concurrent send"))?;
            }
            Ok::<_, String>(())
        }))
        .await;
    let after = meter.sample();
    for r in results {
        r?;
    }
    let concurrent = per_op(before, after, senders.len() * per_sender);

    // Everything alice was sent arrives (a check, not a timing).
    let mut received = 0;
    let expected = senders.len() * per_sender;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received < expected {
        if Instant::now() > deadline {
            return Err(format!(
                "alice received {received} of {expected} concurrent messages"
            ));
        }
        let events = alice.client.sync().await.map_err(fail("sync"))?;
        received += events
            .iter()
            .filter(|e| {
                e["kind"] == "message"
                    && e["text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("concurrent "))
            })
            .count();
    }

    let rss = rss_kib(meter.server_pid);
    let sender_count = senders.len();

    // Idle live listeners (QS-LISTEN-1): streams spread over the users, each drained and
    // then left idle; the server's RSS before and after.
    let mut who = Vec::new();
    for user in std::iter::once(&alice).chain(members.iter()) {
        let id = phoenix_client::store::Store::open(user._home.path())
            .await
            .map_err(fail("open a client store"))?
            .identity()
            .await
            .map_err(fail("read an identity"))?
            .ok_or("a user without an identity")?;
        who.push(listeners::Listener {
            client_id: id.qs_client_id,
            key: ed25519_dalek::SigningKey::from_bytes(&id.qs_client_key),
            start: id.qs_next_seq,
        });
    }
    let rss_before_listeners = rss_kib(meter.server_pid);
    let mut streams = Vec::with_capacity(plan.listeners);
    for i in 0..plan.listeners {
        let listener = who.get(i % who.len()).ok_or("no users")?;
        streams.push(listeners::open(&url, DOMAIN, listener).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with_listeners = rss_kib(meter.server_pid);
    drop(streams);
    let listener_kib = match (rss_before_listeners, rss_with_listeners) {
        (Some(before), Some(after)) if plan.listeners > 0 => {
            Some((after - before) / plan.listeners as f64)
        }
        _ => None,
    };
    Ok(json!({
        "backend": backend,
        "registration": { "latency": latency(&mut registration), "cpu": registered },
        "connections": connections,
        "groups": groups,
        "concurrent": {
            "senders": sender_count,
            "messages_each": per_sender,
            "cpu": concurrent,
        },
        "server_rss_mib_at_end": rss.map(|kb| kb / 1024.0),
        "listeners": {
            "idle_streams": plan.listeners,
            "server_rss_mib_before": rss_before_listeners.map(|kb| kb / 1024.0),
            "server_rss_mib_with_streams": rss_with_listeners.map(|kb| kb / 1024.0),
            "kib_per_idle_stream": listener_kib,
        },
    }))
}

/// The resident set of process `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The ratios against the budget in design.md, from one backend's figures and baselines.
fn ratios(result: &Value, baselines: &Value, verify_us: f64) -> Value {
    let largest = result["groups"]
        .as_array()
        .and_then(|g| g.last())
        .cloned()
        .unwrap_or(Value::Null);
    let rows_tx = baselines["insert_100_rows_per_tx_rows_per_second"].as_f64();
    let one_row_tx = baselines["insert_1_row_tx_per_second"].as_f64();
    let fanout = largest["fanout_rows_per_cpu_second"].as_f64();
    let fanout_sequential = largest["fanout_rows_per_second"].as_f64();
    // Messages per second the concurrent senders reached (bounded by the clients, which
    // share this machine's two cores with the server), and per CPU-second of the server
    // and the database.
    let enqueue_reached = result["concurrent"]["cpu"]["per_second"].as_f64();
    let concurrent = &result["concurrent"]["cpu"];
    let server_side_ms = concurrent["server_cpu_ms"].as_f64().unwrap_or(0.0)
        + concurrent["database_cpu_ms"].as_f64().unwrap_or(0.0);
    let enqueue = (server_side_ms > 0.0).then(|| 1000.0 / server_side_ms);
    let divide = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    json!({
        "server_cpu_per_message_in_verifies_at_largest_group": largest["server_cpu_per_message_in_verifies"],
        "budget_server_cpu_per_message_in_verifies": "<= 2 (plus one batched write)",
        "fanout_rows_per_cpu_second_over_baseline": divide(fanout, rows_tx),
        "fanout_rows_per_second_one_sequential_sender_over_baseline": divide(fanout_sequential, rows_tx),
        "budget_fanout": ">= 0.7",
        "concurrent_messages_per_cpu_second_over_baseline": divide(enqueue, one_row_tx),
        "concurrent_messages_per_second_reached_over_baseline": divide(enqueue_reached, one_row_tx),
        "budget_concurrent": ">= 0.7",
        "kib_per_idle_listener": result["listeners"]["kib_per_idle_stream"],
        "budget_idle_listener": "<= 5 KiB",
        "commit_over_public_group_validate": Value::Null,
        "commit_over_public_group_validate_note": "not measured yet: the bare openmls PublicGroup baseline is missing",
        "verify_us": verify_us,
    })
}

fn print_summary(backend: &str, result: &Value, ratios: &Value) {
    println!("== {backend}");
    println!(
        "{:>6} {:>12} {:>12} {:>14} {:>14} {:>14} {:>12}",
        "size",
        "send p50 ms",
        "send p95 ms",
        "server cpu ms",
        "db cpu ms",
        "client cpu ms",
        "update ms"
    );
    for g in result["groups"].as_array().into_iter().flatten() {
        let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "{:>6} {:>12} {:>12} {:>14} {:>14} {:>14} {:>12}",
            g["size"],
            f(&g["send"]["p50_ms"]),
            f(&g["send"]["p95_ms"]),
            f(&g["send_cpu"]["server_cpu_ms"]),
            f(&g["send_cpu"]["database_cpu_ms"]),
            f(&g["send_cpu"]["client_cpu_ms"]),
            f(&g["self_update"]["p50_ms"]),
        );
    }
    println!(
        "concurrent: {} senders, {:.1} msg/s, server cpu {:.2} ms/msg",
        result["concurrent"]["senders"],
        result["concurrent"]["cpu"]["per_second"]
            .as_f64()
            .unwrap_or(0.0),
        result["concurrent"]["cpu"]["server_cpu_ms"]
            .as_f64()
            .unwrap_or(0.0),
    );
    println!(
        "listeners: {} idle streams, server RSS {:.1} -> {:.1} MiB, {:.2} KiB each",
        result["listeners"]["idle_streams"],
        result["listeners"]["server_rss_mib_before"]
            .as_f64()
            .unwrap_or(0.0),
        result["listeners"]["server_rss_mib_with_streams"]
            .as_f64()
            .unwrap_or(0.0),
        result["listeners"]["kib_per_idle_stream"]
            .as_f64()
            .unwrap_or(0.0),
    );
    println!(
        "ratios: {}",
        serde_json::to_string_pretty(ratios).unwrap_or_default()
    );
}

fn write(out: &Path, name: &str, contents: &str) -> BenchResult<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join(name);
    std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn run(args: Args, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let plan = Plan::from(&args);
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => {
            return Err(format!(
                "--backend {other}: expected sqlite, postgres or both"
            ));
        }
    };
    let verify_us = baseline::ed25519_verify_us(plan.verifies);
    eprintln!(
        "phoenix-bench: {} mode; Ed25519 verify {verify_us:.1} µs",
        plan.mode
    );
    let stamp = unix_now();
    for backend in backends {
        let baselines = match backend {
            "postgres" => {
                baseline::postgres(&args.postgres_url, plan.concurrency, plan.baseline_seconds)?
            }
            _ => runtime.block_on(baseline::sqlite(plan.baseline_seconds))?,
        };
        let server = start_server(backend, &args.postgres_url)?;
        let result = runtime.block_on(run_backend(&server, backend, &plan, verify_us));
        drop(server);
        let result = result?;
        let ratios = ratios(&result, &baselines, verify_us);
        print_summary(backend, &result, &ratios);
        let document = json!({
            "mode": plan.mode,
            "unix_time": stamp,
            "machine": baseline::machine(),
            "plan": {
                "sizes": plan.sizes,
                "messages": plan.messages,
                "commits": plan.commits,
                "concurrency": plan.concurrency,
                "concurrent_messages": plan.concurrent_messages,
            },
            "baselines": baselines,
            "result": result,
            "ratios": ratios,
        });
        let base = format!("{backend}-{}-{stamp}", plan.mode);
        let json_path = write(
            &args.out,
            &format!("{base}.json"),
            &serde_json::to_string_pretty(&document).unwrap_or_default(),
        )?;
        let svg_path = write(&args.out, &format!("{base}.svg"), &plot::groups(&document))?;
        println!("wrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("phoenix-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(args, &runtime) {
        eprintln!("phoenix-bench: {e}");
        std::process::exit(1);
    }
}
