//! What the model checks share: the checked world (the model's state and the budgets
//! spent to reach it), budgets overridden from the environment, and one breadth-first
//! run of the checker with its report and verdicts.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use stateright::{Checker, Expectation, Model};

use phoenix_model::client::ClientRef;
use phoenix_model::state::State;
use phoenix_model::world::{ALICE, BOB, CAROL};

// Not every check drives all three (the recovery check uses alice and bob).
#[allow(dead_code)]
pub const CLIENTS: [ClientRef; 3] = [ALICE, BOB, CAROL];

/// Whether `c` has something new in its QS queue (an atomic sync would change something).
pub fn has_queued(s: &State, c: ClientRef) -> bool {
    let Some(client) = s.clients.get(&c) else {
        return false;
    };
    s.server(client.fid.domain)
        .and_then(|server| server.qs.clients.get(&client.qs_id))
        .is_some_and(|record| record.queue.next_seq != client.next_seq)
}

/// A state of the model and the budgets the path to it used (so that a path cannot go
/// beyond the configuration's budgets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct World<B> {
    pub state: State,
    pub used: B,
}

/// `budget` with the overrides in the environment variable `variable`
/// (`"sends=3,ticks=1"`), each applied by `set`: a bigger configuration, explored by hand.
pub fn with_overrides<B>(variable: &str, mut budget: B, set: impl Fn(&mut B, &str, u8)) -> B {
    let spec = std::env::var(variable).unwrap_or_default();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').expect("name=value");
        let n: u8 = value.parse().expect("a number");
        set(&mut budget, name, n);
    }
    budget
}

/// How one configuration is reported and judged.
pub struct Check<'a> {
    /// The report's name for the model ("model check").
    pub title: &'a str,
    /// The report's name for the configuration.
    pub name: &'a str,
    /// The variable of the budget overrides: when it is set, the configuration is one
    /// explored by hand, which need not reach the `reachable` examples.
    pub overrides: &'a str,
    /// Fewer unique states than this: the configuration is too small to mean much.
    pub min_unique: usize,
    /// `sometimes` properties that must be reached: the search is not vacuous.
    pub reachable: &'a [&'static str],
}

/// Check every `always` property of `model` in every reachable state (breadth-first, on
/// one thread, so that the state counts are reproducible), print the state counts and
/// every property's verdict, and judge as `check` says. `limits` are the configuration's
/// budgets, for the report.
pub fn check<M>(model: M, limits: &dyn Debug, check: &Check<'_>)
where
    M: Model + Send + Sync + 'static,
    M::State: Debug + Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Debug + Clone + PartialEq,
{
    let Check { title, name, .. } = check;
    let started = Instant::now();
    let checker = model.checker().threads(1).spawn_bfs().join();
    let unique = checker.unique_state_count();
    println!(
        "{title} [{name}]: {} states explored, {unique} unique, max depth {}, {:.1?}\n  budgets: {limits:?}",
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    for property in checker.model().properties() {
        let found = checker.discovery(property.name).is_some();
        let (kind, verdict) = match (&property.expectation, found) {
            (Expectation::Always, false) => ("always", "holds"),
            (Expectation::Always, true) => ("always", "VIOLATED"),
            (_, true) => ("sometimes", "reached"),
            (_, false) => ("sometimes", "not reached"),
        };
        println!("  [{name}] {kind:<9} {:<50} {verdict}", property.name);
    }
    for property in checker.model().properties() {
        if let Expectation::Always = property.expectation {
            checker.assert_no_discovery(property.name);
        }
    }
    assert!(
        unique > check.min_unique,
        "{unique} unique states: the configuration is too small to mean much"
    );
    if std::env::var(check.overrides).is_err() {
        for example in check.reachable {
            checker.assert_any_discovery(example);
        }
    }
}
