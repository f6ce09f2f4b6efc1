//! Reports: the human table (requirement id, transitions, pass/fail), JSON, and JUnit XML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::{Coverage, SuiteReport};

/// Everything one run found, over all suites and servers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub suites: Vec<SuiteReport>,
}

/// One requirement's line in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequirementLine {
    pub requirement: String,
    pub transitions: u64,
    pub failures: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.suites.iter().all(SuiteReport::passed)
    }

    /// Whether a server diverged from the model (rate limits are not divergences).
    pub fn diverged(&self) -> bool {
        self.suites.iter().any(SuiteReport::diverged)
    }

    /// Whether a server rate-limited the auditor.
    pub fn rate_limited(&self) -> bool {
        self.suites.iter().any(|s| s.rate_limited.is_some())
    }

    pub fn transitions(&self) -> u64 {
        self.suites.iter().map(|s| s.transitions).sum()
    }

    /// Coverage per requirement, summed over suites.
    pub fn requirements(&self) -> Vec<RequirementLine> {
        let mut all: BTreeMap<String, Coverage> = BTreeMap::new();
        for suite in &self.suites {
            for (id, c) in &suite.requirements {
                let e = all.entry(id.clone()).or_default();
                e.transitions += c.transitions;
                e.failures += c.failures;
            }
        }
        all.into_iter()
            .map(|(requirement, c)| RequirementLine {
                requirement,
                transitions: c.transitions,
                failures: c.failures,
            })
            .collect()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Requirement: AUD-REPORT-1 (the column counts transitions, and says so)
        let _ = writeln!(out, "{:<16} {:>11}  result", "requirement", "transitions");
        let _ = writeln!(out, "{:-<16} {:->11}  {:-<6}", "", "", "");
        for line in self.requirements() {
            let verdict = if line.failures == 0 { "pass" } else { "FAIL" };
            let _ = writeln!(
                out,
                "{:<16} {:>11}  {verdict}",
                line.requirement, line.transitions
            );
        }
        let _ = writeln!(out);
        for s in &self.suites {
            let _ = writeln!(
                out,
                "suite {:<6} on {:<28} {:>5} cases {:>7} transitions {:>7.1}s  seed {}  {}",
                s.suite,
                format!("{} ({})", s.server, s.label),
                s.cases,
                s.transitions,
                s.seconds,
                s.seed,
                if s.passed() {
                    "pass"
                } else if s.diverged() {
                    "FAIL"
                } else {
                    "RATE-LIMITED"
                }
            );
            if let Some(what) = &s.rate_limited {
                let _ = writeln!(out, "  {}", rate_limit_advice(what));
            }
            if let Some(f) = &s.failure {
                let _ = writeln!(out, "  failure: {f}");
            }
            if let Some(path) = &s.fixture {
                let _ = writeln!(out, "  trace saved: {path}");
            }
            for what in &s.not_run {
                let _ = writeln!(out, "  NOT RUN: {what}");
            }
        }
        out
    }

    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            passed: bool,
            transitions: u64,
            requirements: Vec<RequirementLine>,
            suites: &'a [SuiteReport],
        }
        serde_json::to_string_pretty(&Out {
            passed: self.passed(),
            transitions: self.transitions(),
            requirements: self.requirements(),
            suites: &self.suites,
        })
        .unwrap_or_default()
    }

    /// JUnit XML: one test suite per suite run, one test case per requirement it covered.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
        for s in &self.suites {
            let failures = s.requirements.values().filter(|c| c.failures > 0).count()
                + usize::from(
                    s.failure.is_some() && s.requirements.values().all(|c| c.failures == 0),
                );
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
                // Requirement: AUD-REPORT-1 (names stable from run to run: no seed, time,
                // count or port in them; those are properties)
                xml(&format!("{} ({})", s.suite, s.label)),
                s.requirements.len().max(1),
                failures,
                s.seconds
            );
            let _ = writeln!(
                out,
                "    <properties><property name=\"seed\" value=\"{}\"/><property name=\"transitions\" value=\"{}\"/><property name=\"server\" value=\"{}\"/></properties>",
                xml(&s.seed),
                s.transitions,
                xml(&s.server)
            );
            for (id, c) in &s.requirements {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}\"",
                    xml(&s.suite),
                    xml(id),
                );
                if c.failures > 0 {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\"/>\n    </testcase>",
                        xml(s.failure.as_deref().unwrap_or("failed"))
                    );
                } else {
                    let _ = writeln!(out, "/>");
                }
            }
            for what in &s.not_run {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"{}\" name=\"not run\">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml(&s.suite),
                    xml(what)
                );
            }
            if let Some(what) = &s.rate_limited {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"{}\" name=\"rate limited\">\n      <error type=\"RATE_LIMITED\" message=\"{}\"/>\n    </testcase>",
                    xml(&s.suite),
                    xml(&rate_limit_advice(what))
                );
            }
            if s.failure.is_some() && s.requirements.values().all(|c| c.failures == 0) {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"{}\" name=\"run\">\n      <failure message=\"{}\"/>\n    </testcase>",
                    xml(&s.suite),
                    xml(s.failure.as_deref().unwrap_or(""))
                );
            }
            let _ = writeln!(out, "  </testsuite>");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

// Requirement: AUD-RATE-1
/// What the report says when the server rate-limited the auditor: not a divergence, and
/// what to do about it.
pub fn rate_limit_advice(what: &str) -> String {
    format!(
        "the server rate-limited the auditor (this is not a divergence from the model): \
         {what}. Run again with a lower --max-rate or fewer --cases/--ds-cases, or ask the \
         operator for an allowance for the auditor's address (higher --rate-* limits, or a \
         test deployment with --rate-limits off)"
    )
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
