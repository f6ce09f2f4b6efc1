//! `phoenix-conformance`: run the model-vs-server conformance suites against deployed
//! Phoenix homeservers, as an auditor would, and report per requirement.
//!
//! ```text
//! phoenix-conformance --server URL [--server URL ...] [--resolve DOMAIN=URL]
//!     [--cases N] [--ds-cases N] [--fed-cases N] [--fake-peer-listen ADDR]
//!     [--seed HEX|DECIMAL] [--max-rate N] [--max-wait SECS]
//!     [--report-json FILE] [--junit FILE] [--save-traces DIR]
//! ```
//!
//! For each server it reads the discovery document (its domain), then runs the AS/QS
//! suite (`--cases` cases of raw signed requests) and the DS suite (`--ds-cases` cases of
//! group traffic through the client library), each case with its own freshly registered
//! random test users. With two servers (federated with each other), it also runs the
//! federation suite (`--fed-cases`): users on both, a group on the first, messages across.
//! Its malicious-peer transitions need the harness's fake remote server
//! (`--fake-peer-listen ADDR`, domain `evil.test`) and servers that resolve `evil.test` to
//! it (started with `--resolve evil.test=http://ADDR`); the harness probes each server,
//! and if one does not reach the fake peer those transitions are reported as NOT RUN. It prints a table (requirement id, transitions run, pass/fail), writes the
//! JSON and JUnit reports if asked, and exits 0 if everything passed, 1 if the server
//! diverged from the model, 2 if it could not run (bad arguments, unreachable server, or
//! the server rate-limited the auditor: reported as such, never as a divergence).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use phoenix_conformance::as_qs::AsQs;
use phoenix_conformance::ds::Ds;
use phoenix_conformance::federation;
use phoenix_conformance::peer::{self, MaliciousPeer};
use phoenix_conformance::report::Report;
use phoenix_conformance::runner::{self, RunConfig};
use phoenix_conformance::target::Target;

#[derive(Debug, Parser)]
#[command(
    name = "phoenix-conformance",
    about = "Check deployed Phoenix homeservers against the executable model",
    version
)]
struct Args {
    /// Base URL of a server to test (repeatable), e.g. http://127.0.0.1:8080.
    #[arg(long = "server", required = true, value_name = "URL")]
    servers: Vec<String>,
    /// Where another domain's server is (`DOMAIN=URL`, repeatable), passed to the clients.
    #[arg(long = "resolve", value_name = "DOMAIN=URL")]
    resolve: Vec<String>,
    /// AS/QS cases per server (each registers its own users).
    #[arg(long, default_value_t = 20)]
    cases: u32,
    /// DS cases per server (each registers three users and builds two groups).
    #[arg(long, default_value_t = 2)]
    ds_cases: u32,
    /// Federation cases, with two servers (the first hosts the group; each case registers
    /// a user on each and connects them across).
    #[arg(long, default_value_t = 2)]
    fed_cases: u32,
    /// Run the harness's malicious remote server here (e.g. 127.0.0.1:8099); the servers
    /// must resolve its domain to it (`--resolve evil.test=http://ADDR`). Without it, the
    /// malicious-peer transitions are reported as not run.
    #[arg(long, value_name = "ADDR")]
    fake_peer_listen: Option<String>,
    /// The malicious remote server's domain.
    #[arg(long, default_value = peer::EVIL_DOMAIN, value_name = "DOMAIN")]
    fake_peer_domain: String,
    /// Transitions per case, at most (at least half as many).
    #[arg(long, default_value_t = 40)]
    max_transitions: usize,
    /// The seed, to reproduce a run: the 64 hex digits a report prints, any other hex
    /// string (`0x` optional) or a decimal number; random and printed if not given.
    #[arg(long, value_name = "HEX|DECIMAL")]
    seed: Option<String>,
    /// Most transitions per second against each server (each makes one to a few
    /// requests); 0: no limit. Servers publish no limits ahead (only `Retry-After` when
    /// they refuse), so keep it low against a production deployment.
    #[arg(long, value_name = "N", default_value_t = 0.0)]
    max_rate: f64,
    /// Longest wait accepted when a server answers RATE_LIMITED while a case is being set
    /// up (its Retry-After): the auditor waits and sets the case up again. A longer wait,
    /// or a limit met during a transition, ends the suite reported as rate-limited.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    max_wait: u64,
    /// Write the JSON report here (none by default).
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write a JUnit XML report here (none by default).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Save shrunk failing traces (JSON fixtures) in this directory (not saved by default).
    #[arg(long, value_name = "DIR")]
    save_traces: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for entry in &args.resolve {
        if !entry.contains('=') {
            eprintln!("phoenix-conformance: --resolve takes DOMAIN=URL, got {entry:?}");
            return ExitCode::from(2);
        }
    }
    let seed = match args.seed.as_deref().map(runner::parse_seed) {
        Some(Ok(seed)) => Some(seed),
        Some(Err(e)) => {
            eprintln!("phoenix-conformance: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phoenix-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let handle = runtime.handle().clone();
    let mut report = Report::default();
    let mut targets = Vec::new();
    for url in &args.servers {
        let target = match handle.block_on(Target::discover(url, &args.resolve)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("phoenix-conformance: could not start auditing {url}: {e}");
                return ExitCode::from(2);
            }
        };
        targets.push(target.clone());
        let config = |cases: u32, max: usize| RunConfig {
            cases,
            transitions: ((max / 2).max(1), max),
            seed,
            fixtures_dir: args.save_traces.clone(),
            label: target.domain.clone(),
            max_rate: (args.max_rate > 0.0).then_some(args.max_rate),
            max_wait: std::time::Duration::from_secs(args.max_wait),
            ..RunConfig::default()
        };
        if args.cases > 0 {
            report.suites.push(runner::run_suite::<AsQs>(
                &handle,
                &target,
                &config(args.cases, args.max_transitions),
            ));
        }
        if args.ds_cases > 0 {
            report.suites.push(runner::run_suite::<Ds>(
                &handle,
                &target,
                &config(args.ds_cases, args.max_transitions.min(30)),
            ));
        }
    }
    if let [a, b, ..] = targets.as_slice()
        && args.fed_cases > 0
    {
        let fake_peer = match &args.fake_peer_listen {
            None => None,
            Some(addr) => {
                let _guard = runtime.enter();
                match std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("--fake-peer-listen {addr}: {e}"))
                    .and_then(|l| {
                        MaliciousPeer::start(l, &args.fake_peer_domain).map_err(|e| e.to_string())
                    }) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("phoenix-conformance: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        };
        let mut target = a.clone();
        target.peer = Some(Box::new(b.clone()));
        target.malicious = fake_peer.as_ref().map(|p| p.info.clone());
        let (profile, not_run) = match handle.block_on(federation::probe(&target)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("phoenix-conformance: probing the servers: {e}");
                return ExitCode::from(2);
            }
        };
        if profile == federation::HONEST_ONLY {
            // Nothing to sign with: the suite must not pretend to have a malicious peer.
            target.malicious = None;
        }
        let config = RunConfig {
            cases: args.fed_cases,
            transitions: (
                (args.max_transitions.min(40) / 2).max(1),
                args.max_transitions.min(40),
            ),
            seed,
            fixtures_dir: args.save_traces.clone(),
            label: format!("{}+{}", a.domain, b.domain),
            max_rate: (args.max_rate > 0.0).then_some(args.max_rate),
            max_wait: std::time::Duration::from_secs(args.max_wait),
            ..RunConfig::default()
        };
        let mut suite = federation::run(&handle, &target, &config, profile);
        if let Some(why) = not_run {
            suite.not_run.push(format!(
                "malicious remote server transitions (forged, replayed, misrouted, stale, policy-refused federated enqueues; FED-1, FED-2, FED-4, ADV-REMOTE-1): {why}"
            ));
        }
        report.suites.push(suite);
        drop(fake_peer);
    }
    println!("{}", report.table());
    println!(
        "{} transitions in {} suite runs: {}",
        report.transitions(),
        report.suites.len(),
        if report.passed() {
            "PASS"
        } else if report.diverged() {
            "FAIL"
        } else {
            "RATE-LIMITED (the server rate-limited the auditor; no divergence found)"
        }
    );
    for (path, text) in [
        (&args.report_json, report.json()),
        (&args.junit, report.junit()),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::write(path, text)
        {
            eprintln!("phoenix-conformance: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else if report.diverged() {
        ExitCode::from(1)
    } else {
        // Requirement: AUD-RATE-1 (could not run fully; not a verdict on the server)
        ExitCode::from(2)
    }
}
