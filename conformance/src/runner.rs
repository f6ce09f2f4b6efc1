//! Running a suite: proptest generates transition sequences from the reference state
//! machine (the model), each case runs them against a fresh namespace on the server, and
//! after every step the outcome and error code are compared with the model's, the model's
//! invariants are checked on its state, and the suite's projected invariants on the
//! server's. A failure is shrunk, saved as a JSON trace fixture, and reported.
//!
//! Requirement: MODEL-1, MODEL-2, MODEL-3 (seeds printed, shrunk failures saved as trace
//! fixtures).
//!
//! The runner is synchronous (proptest calls the test once per case); it drives the async
//! system under test through a tokio runtime handle, so it must run on a thread that is
//! not a runtime worker (`spawn_blocking`, or a plain thread).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use proptest_state_machine::ReferenceStateMachine;
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HarnessError;
use crate::fixtures::Fixture;
use crate::target::Target;

/// One suite: a reference state machine over the model and how to run its transitions
/// against a server.
pub trait Suite: 'static {
    const NAME: &'static str;
    type Machine: ReferenceStateMachine<
            State: Send + Sync,
            Transition: Serialize + DeserializeOwned + Send + Sync,
        >;
    type Sut: Send;

    /// The model inside the machine's state (for the invariants).
    fn model(
        state: &<Self::Machine as ReferenceStateMachine>::State,
    ) -> &phoenix_model::state::State;

    /// Set up a case on `target` (fresh users, in a fresh namespace).
    fn start(
        target: &Target,
        init: &<Self::Machine as ReferenceStateMachine>::State,
    ) -> impl Future<Output = Result<Self::Sut, HarnessError>>;

    /// Run one transition on the server and compare with the model (`before` → `after`).
    /// Returns the requirement ids it exercised.
    fn step(
        sut: &mut Self::Sut,
        before: &<Self::Machine as ReferenceStateMachine>::State,
        after: &<Self::Machine as ReferenceStateMachine>::State,
        transition: &<Self::Machine as ReferenceStateMachine>::Transition,
    ) -> impl Future<Output = Result<Vec<&'static str>, StepFailure>>;

    /// Projected invariants at the end of a case.
    fn finish(
        sut: &mut Self::Sut,
        state: &<Self::Machine as ReferenceStateMachine>::State,
    ) -> impl Future<Output = Result<(), HarnessError>>;
}

/// A step that did not do what the model says, with the requirements it was about.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub requirements: Vec<&'static str>,
    pub error: HarnessError,
}

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub cases: u32,
    /// Transitions per case (inclusive range).
    pub transitions: (usize, usize),
    /// The proptest seed; random (and printed) if not given.
    pub seed: Option<[u8; 32]>,
    /// Where to save a shrunk failure as a trace fixture.
    pub fixtures_dir: Option<PathBuf>,
    /// Bounds on shrinking a failure (each shrink step re-runs a case against the server).
    pub max_shrink_iters: u32,
    pub max_shrink_time: Duration,
    /// A label for the backend or server, used in fixture names and reports.
    pub label: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            cases: 10,
            transitions: (1, 40),
            seed: None,
            fixtures_dir: None,
            max_shrink_iters: 200,
            max_shrink_time: Duration::from_secs(120),
            label: "server".into(),
        }
    }
}

/// Per requirement: transitions that exercised it, and how many of those failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub transitions: u64,
    pub failures: u64,
}

/// What a suite run found.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub suite: String,
    pub label: String,
    pub server: String,
    pub seed: String,
    pub cases: u64,
    pub transitions: u64,
    pub seconds: f64,
    pub requirements: BTreeMap<String, Coverage>,
    pub failure: Option<String>,
    pub fixture: Option<String>,
    /// Parts of the suite that did not run, and why (reported as not run, never as
    /// passed).
    pub not_run: Vec<String>,
}

impl SuiteReport {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

#[derive(Default)]
struct Stats {
    cases: u64,
    transitions: u64,
    requirements: BTreeMap<String, Coverage>,
    /// The requirements of the last failing step (the shrunk one, at the end).
    failed: Vec<&'static str>,
}

/// A seed from its hex form.
pub fn parse_seed(hex_seed: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_seed).map_err(|e| format!("seed: {e}"))?;
    let mut seed = [0u8; 32];
    if bytes.is_empty() || bytes.len() > 32 {
        return Err("seed: 1 to 32 bytes of hex".into());
    }
    for (slot, byte) in seed.iter_mut().zip(bytes) {
        *slot = byte;
    }
    Ok(seed)
}

/// Run `S` against `target`.
pub fn run_suite<S: Suite>(
    handle: &tokio::runtime::Handle,
    target: &Target,
    config: &RunConfig,
) -> SuiteReport {
    let seed = config.seed.unwrap_or_else(|| {
        let mut s = [0u8; 32];
        OsRng.fill_bytes(&mut s);
        s
    });
    let seed_hex = hex::encode(seed);
    eprintln!(
        "phoenix-conformance: suite {} against {} ({}): {} cases, seed {seed_hex}",
        S::NAME,
        target.url,
        config.label,
        config.cases
    );
    let started = Instant::now();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let proptest_config = Config {
        cases: config.cases,
        max_shrink_iters: config.max_shrink_iters,
        max_shrink_time: u32::try_from(config.max_shrink_time.as_millis()).unwrap_or(u32::MAX),
        failure_persistence: None,
        max_local_rejects: 10_000,
        max_global_rejects: 10_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        proptest_config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let strategy = S::Machine::sequential_strategy(config.transitions.0..=config.transitions.1);
    let result = {
        let stats = stats.clone();
        let target = target.clone();
        let handle = handle.clone();
        runner.run(&strategy, move |(init, transitions, seen)| {
            let outcome = handle.block_on(run_case::<S>(
                &target,
                init,
                &transitions,
                seen.as_deref(),
                &stats,
            ));
            outcome.map_err(|e| TestCaseError::fail(e.to_string()))
        })
    };
    let stats = stats.lock().map(|s| {
        (
            s.cases,
            s.transitions,
            s.requirements.clone(),
            s.failed.clone(),
        )
    });
    let (cases, transitions, mut requirements, failed) = stats.unwrap_or_default();
    let mut report = SuiteReport {
        suite: S::NAME.into(),
        label: config.label.clone(),
        server: target.url.clone(),
        seed: seed_hex.clone(),
        cases,
        transitions,
        seconds: started.elapsed().as_secs_f64(),
        requirements: BTreeMap::new(),
        failure: None,
        fixture: None,
        not_run: Vec::new(),
    };
    match result {
        Ok(()) => {}
        Err(TestError::Abort(reason)) => {
            report.failure = Some(format!("aborted: {reason}"));
        }
        Err(TestError::Fail(reason, (_, transitions, _))) => {
            for r in failed.iter() {
                requirements.entry((*r).to_owned()).or_default().failures += 1;
            }
            let name = format!("{}-{}-{}", S::NAME, config.label, &seed_hex[..12]);
            let fixture = Fixture {
                name: name.clone(),
                suite: S::NAME.into(),
                seed: seed_hex,
                failure: reason.to_string(),
                transitions: transitions
                    .iter()
                    .filter_map(|t| serde_json::to_value(t).ok())
                    .collect(),
            };
            if let Some(dir) = &config.fixtures_dir {
                match fixture.save(dir) {
                    Ok(path) => report.fixture = Some(path.display().to_string()),
                    Err(e) => eprintln!("phoenix-conformance: could not save the fixture: {e}"),
                }
            }
            eprintln!(
                "phoenix-conformance: {} FAILED after shrinking to {} transitions: {reason}\n{}",
                S::NAME,
                transitions.len(),
                serde_json::to_string_pretty(&fixture.transitions).unwrap_or_default()
            );
            report.failure = Some(reason.to_string());
        }
    }
    report.requirements = requirements;
    eprintln!(
        "phoenix-conformance: suite {} ({}): {} cases, {} transitions in {:.1}s: {}",
        S::NAME,
        config.label,
        report.cases,
        report.transitions,
        report.seconds,
        if report.passed() { "passed" } else { "FAILED" }
    );
    report
}

/// Replay a fixture's transitions as one case. Returns the failure, if any.
pub fn replay<S: Suite>(
    handle: &tokio::runtime::Handle,
    target: &Target,
    fixture: &Fixture,
) -> Result<usize, HarnessError> {
    let mut transitions = Vec::new();
    for value in &fixture.transitions {
        let t: <S::Machine as ReferenceStateMachine>::Transition =
            serde_json::from_value(value.clone())
                .map_err(|e| HarnessError::Setup(format!("fixture {}: {e}", fixture.name)))?;
        transitions.push(t);
    }
    let mut runner = TestRunner::deterministic();
    let init = S::Machine::init_state()
        .new_tree(&mut runner)
        .map_err(|e| HarnessError::Setup(e.to_string()))?
        .current();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let count = transitions.len();
    handle.block_on(run_case::<S>(target, init, &transitions, None, &stats))?;
    Ok(count)
}

/// One case: start the SUT, apply each transition to the model and the server, compare.
async fn run_case<S: Suite>(
    target: &Target,
    init: <S::Machine as ReferenceStateMachine>::State,
    transitions: &[<S::Machine as ReferenceStateMachine>::Transition],
    seen: Option<&AtomicUsize>,
    stats: &Mutex<Stats>,
) -> Result<(), HarnessError> {
    let mut sut = S::start(target, &init).await?;
    let mut state = init;
    if let Ok(mut s) = stats.lock() {
        s.cases += 1;
    }
    for (i, transition) in transitions.iter().enumerate() {
        if let Some(seen) = seen {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let next = S::Machine::apply(state.clone(), transition);
        let step = S::step(&mut sut, &state, &next, transition).await;
        let failed = |reqs: &[&'static str]| {
            if let Ok(mut s) = stats.lock() {
                s.failed = reqs.to_vec();
            }
        };
        let requirements = match step {
            Ok(r) => r,
            Err(f) => {
                failed(&f.requirements);
                return Err(HarnessError::Mismatch(format!(
                    "step {} ({transition:?}): {}",
                    i + 1,
                    f.error
                )));
            }
        };
        for (name, ok) in phoenix_model::invariants::all(S::model(&next)) {
            if !ok {
                failed(&["MODEL-1"]);
                return Err(HarnessError::Mismatch(format!(
                    "step {} ({transition:?}): the model's invariant {name} fails",
                    i + 1
                )));
            }
        }
        if let Ok(mut s) = stats.lock() {
            s.transitions += 1;
            for r in requirements {
                s.requirements.entry(r.to_owned()).or_default().transitions += 1;
            }
        }
        state = next;
    }
    if let Err(e) = S::finish(&mut sut, &state).await {
        failed_all(stats);
        return Err(e);
    }
    Ok(())
}

fn failed_all(stats: &Mutex<Stats>) {
    if let Ok(mut s) = stats.lock() {
        s.failed = vec!["MODEL-2"];
    }
}
