//! The conformance suites against in-process servers over real HTTP, on SQLite and on
//! Postgres (a fresh schema), and the replay of every trace fixture.
//!
//! Requirement: MODEL-2, MODEL-3
//!
//! Sizes: `PHOENIX_CONFORMANCE_CASES` overrides the number of AS/QS cases per backend;
//! `PHOENIX_CONFORMANCE_SEED` (hex) reproduces a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use phoenix_conformance::as_qs::AsQs;
use phoenix_conformance::ds::Ds;
use phoenix_conformance::fixtures::Fixture;
use phoenix_conformance::runner::{self, RunConfig, SuiteReport};
use support::{Backend, TestServer};

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn as_qs_on(backend: Backend) -> Option<SuiteReport> {
    let server = TestServer::on(backend).await?;
    let target = server.target();
    let config = RunConfig {
        // 100 cases of 30 to 80 transitions: about 5,500 transitions per backend, so the
        // two backends together run over 10,000 (Requirement: MODEL-3).
        cases: cases("PHOENIX_CONFORMANCE_CASES", 100),
        transitions: (30, 80),
        seed: support::seed(),
        fixtures_dir: Some(support::fixtures_dir()),
        max_shrink_iters: 300,
        max_shrink_time: Duration::from_secs(180),
        label: backend.label().into(),
    };
    let handle = tokio::runtime::Handle::current();
    let report =
        tokio::task::spawn_blocking(move || runner::run_suite::<AsQs>(&handle, &target, &config))
            .await
            .unwrap();
    server.stop().await;
    Some(report)
}

async fn ds_on(backend: Backend) -> Option<SuiteReport> {
    let server = TestServer::on(backend).await?;
    let target = server.target();
    let config = RunConfig {
        cases: cases("PHOENIX_CONFORMANCE_DS_CASES", 4),
        transitions: (15, 30),
        seed: support::seed(),
        fixtures_dir: Some(support::fixtures_dir()),
        max_shrink_iters: 60,
        max_shrink_time: Duration::from_secs(240),
        label: backend.label().into(),
    };
    let handle = tokio::runtime::Handle::current();
    let report =
        tokio::task::spawn_blocking(move || runner::run_suite::<Ds>(&handle, &target, &config))
            .await
            .unwrap();
    server.stop().await;
    Some(report)
}

/// At least 5,000 AS/QS transitions per backend when run with the default sizes, so both
/// backends together run at least 10,000 (Requirement: MODEL-3).
fn check_size(report: &SuiteReport) {
    if std::env::var("PHOENIX_CONFORMANCE_CASES").is_err() {
        assert!(
            report.transitions >= 5_000,
            "only {} transitions on {}",
            report.transitions,
            report.label
        );
    }
}

fn check(report: &SuiteReport) {
    let table = phoenix_conformance::report::Report {
        suites: vec![report.clone()],
    }
    .table();
    eprintln!("{table}");
    assert!(
        report.passed(),
        "{} on {}: {} (seed {}, trace {:?})",
        report.suite,
        report.label,
        report.failure.as_deref().unwrap_or(""),
        report.seed,
        report.fixture
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_qs_suite_on_sqlite() {
    let report = as_qs_on(Backend::Sqlite).await.unwrap();
    check(&report);
    check_size(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_qs_suite_on_postgres() {
    if let Some(report) = as_qs_on(Backend::Postgres).await {
        check(&report);
        check_size(&report);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ds_suite_on_sqlite() {
    let report = ds_on(Backend::Sqlite).await.unwrap();
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ds_suite_on_postgres() {
    if let Some(report) = ds_on(Backend::Postgres).await {
        check(&report);
    }
}

/// Every fixture in `conformance/fixtures/` replays without a failure, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_replays() {
    let fixtures = Fixture::load_all(&support::fixtures_dir()).unwrap();
    assert!(!fixtures.is_empty(), "no fixtures found");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(server) = TestServer::on(backend).await else {
            continue;
        };
        let target = server.target();
        let handle = tokio::runtime::Handle::current();
        let fixtures = fixtures.clone();
        tokio::task::spawn_blocking(move || {
            for fixture in &fixtures {
                let replayed = match fixture.suite.as_str() {
                    "as_qs" => runner::replay::<AsQs>(&handle, &target, fixture),
                    "ds" => runner::replay::<Ds>(&handle, &target, fixture),
                    other => panic!("fixture {}: unknown suite {other}", fixture.name),
                };
                match replayed {
                    Ok(n) => eprintln!(
                        "fixture {} ({}): {n} transitions replayed",
                        fixture.name,
                        backend.label()
                    ),
                    Err(e) => panic!("fixture {} on {}: {e}", fixture.name, backend.label()),
                }
            }
        })
        .await
        .unwrap();
        server.stop().await;
    }
}
