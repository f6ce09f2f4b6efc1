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
    /// Most transitions per second against the server (Requirement: AUD-RATE-2); none:
    /// as fast as it answers.
    pub max_rate: Option<f64>,
    /// Longest wait the harness accepts when the server answers `RATE_LIMITED` while a
    /// case is set up (its `retry in N s`, the `Retry-After` value): it waits that long
    /// and sets the case up again; a longer wait is reported as rate-limited.
    pub max_wait: Duration,
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
            max_rate: None,
            max_wait: Duration::from_secs(120),
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
    /// The server refused the auditor's requests with `RATE_LIMITED` (not a divergence
    /// from the model: the model has no rate limits), and what it said (Requirement:
    /// AUD-RATE-1).
    pub rate_limited: Option<String>,
    pub fixture: Option<String>,
    /// Parts of the suite that did not run, and why (reported as not run, never as
    /// passed).
    pub not_run: Vec<String>,
}

impl SuiteReport {
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.rate_limited.is_none()
    }

    /// Whether the server diverged from the model (a rate limit is not a divergence).
    pub fn diverged(&self) -> bool {
        self.failure.is_some()
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

// Requirement: AUD-SEED-1
/// A seed as the auditor types it: the 64 hex digits a report prints (used as they are),
/// any other hex string (`0x` optional, odd lengths allowed; longer than 32 bytes:
/// hashed with SHA-256), or a decimal number (digits only, without `0x`). A string of
/// digits is read as decimal unless it has the 64 digits of a printed seed.
pub fn parse_seed(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let (hex_digits, forced_hex) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))
    {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    if hex_digits.is_empty() {
        return Err("--seed: empty; give a hex string (e.g. 5a05...) or a decimal number".into());
    }
    if !forced_hex && hex_digits.len() != 64 && hex_digits.bytes().all(|b| b.is_ascii_digit()) {
        let n: u128 = hex_digits.parse().map_err(|_| {
            format!("--seed: {hex_digits} is too large a decimal number (at most 2^128 - 1)")
        })?;
        let mut seed = [0u8; 32];
        for (slot, byte) in seed.iter_mut().zip(n.to_be_bytes()) {
            *slot = byte;
        }
        return Ok(seed);
    }
    if let Some(bad) = hex_digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "--seed: {bad:?} is not a hex digit; give a hex string or a decimal number"
        ));
    }
    let padded = if hex_digits.len() % 2 == 1 {
        format!("0{hex_digits}")
    } else {
        hex_digits.to_owned()
    };
    let bytes = hex::decode(&padded).map_err(|e| format!("--seed: {e}"))?;
    if bytes.len() > 32 {
        use sha2::Digest;
        return Ok(sha2::Sha256::digest(&bytes).into());
    }
    let mut seed = [0u8; 32];
    for (slot, byte) in seed.iter_mut().zip(bytes) {
        *slot = byte;
    }
    Ok(seed)
}

// Requirement: AUD-RATE-1
/// If `text` (an error or divergence) is the server's `RATE_LIMITED` answer: the wait it
/// asked for, in seconds, when it said (`retry in N s`, the `Retry-After` value).
pub fn rate_limited(text: &str) -> Option<Option<u64>> {
    if !(text.contains("RATE_LIMITED") || text.contains("RateLimited")) {
        return None;
    }
    let wait = text.split("retry in ").nth(1).and_then(|rest| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
    });
    Some(wait)
}

/// Spaces transitions to at most `max_rate` per second, over every case of a suite.
#[derive(Debug)]
struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(max_rate: Option<f64>) -> Self {
        let interval = max_rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64((1.0 / r).min(3600.0)));
        Self {
            interval,
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    // Requirement: AUD-RATE-2
    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next = Instant::now().max(*next) + interval;
    }
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
    let pacer = Arc::new(Pacer::new(config.max_rate));
    // Requirement: AUD-RATE-1 (once rate-limited, no further case and no shrinking: each
    // would only meet the limit again)
    let limited: Arc<Mutex<Option<String>>> = Arc::default();
    let result = {
        let stats = stats.clone();
        let target = target.clone();
        let handle = handle.clone();
        let limited = limited.clone();
        let max_wait = config.max_wait;
        runner.run(&strategy, move |(init, transitions, seen)| {
            if limited.lock().map(|l| l.is_some()).unwrap_or(false) {
                return Ok(());
            }
            let outcome = handle.block_on(run_case::<S>(
                &target,
                init,
                &transitions,
                seen.as_deref(),
                &stats,
                &pacer,
                max_wait,
            ));
            outcome.map_err(|e| {
                let text = e.to_string();
                if rate_limited(&text).is_some()
                    && let Ok(mut l) = limited.lock()
                {
                    *l = Some(text.clone());
                }
                TestCaseError::fail(text)
            })
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
        rate_limited: None,
        fixture: None,
        not_run: Vec::new(),
    };
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) if rate_limited(reason.message()).is_some() => {
            eprintln!(
                "phoenix-conformance: {}: the server rate-limited the auditor: {}",
                S::NAME,
                reason
            );
            report.rate_limited = Some(reason.to_string());
        }
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
        if report.passed() {
            "passed"
        } else if report.diverged() {
            "FAILED"
        } else {
            "RATE-LIMITED (not a divergence)"
        }
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
    handle.block_on(run_case::<S>(
        target,
        init,
        &transitions,
        None,
        &stats,
        &Pacer::new(None),
        Duration::ZERO,
    ))?;
    Ok(count)
}

/// One case: start the SUT, apply each transition to the model and the server, compare.
async fn run_case<S: Suite>(
    target: &Target,
    init: <S::Machine as ReferenceStateMachine>::State,
    transitions: &[<S::Machine as ReferenceStateMachine>::Transition],
    seen: Option<&AtomicUsize>,
    stats: &Mutex<Stats>,
    pacer: &Pacer,
    max_wait: Duration,
) -> Result<(), HarnessError> {
    // Requirement: AUD-RATE-2 (a setup refused with RATE_LIMITED changed nothing on the
    // server: wait as long as it says, within max_wait, and set the case up again)
    pacer.wait().await;
    // A setup makes several limited requests (registrations): each attempt waits twice
    // as long as the one before, from the server's Retry-After on, so that the server's
    // bucket refills for a whole setup, not only for its next request.
    let mut waited = Duration::ZERO;
    let mut factor = 1u64;
    let mut sut = loop {
        match S::start(target, &init).await {
            Ok(sut) => break sut,
            Err(e) => match rate_limited(&e.to_string()) {
                Some(Some(secs))
                    if waited + Duration::from_secs(secs.saturating_mul(factor)) <= max_wait =>
                {
                    let wait = Duration::from_secs(secs.saturating_mul(factor));
                    eprintln!(
                        "phoenix-conformance: {}: the server rate-limited the auditor while \
                         setting up a case (Retry-After {secs} s); waiting {} s",
                        S::NAME,
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    factor = factor.saturating_mul(2);
                }
                _ => return Err(e),
            },
        }
    };
    let mut state = init;
    if let Ok(mut s) = stats.lock() {
        s.cases += 1;
    }
    for (i, transition) in transitions.iter().enumerate() {
        pacer.wait().await;
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
