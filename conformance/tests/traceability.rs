//! Requirement traceability runs in CI: `scripts/traceability.py` reads
//! docs/spec/requirements.md, finds the ids cited in the tree and reports, per requirement,
//! whether it is modelled, implemented and tested. This test runs it (writing its report to
//! a temporary file, so the tree stays clean) and prints the requirements without a test.
//! It fails only if the script fails (a malformed requirement list, duplicate ids).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

#[test]
fn traceability_report_is_generated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("traceability.md");
    let output = Command::new("python3")
        .arg(root.join("scripts/traceability.py"))
        .arg("--output")
        .arg(&report)
        .output()
        .expect("python3 is needed to run scripts/traceability.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "scripts/traceability.py failed");
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("| AS-REG-1 | MUST |"));
    // The requirements this crate's suites exercise are reported as tested.
    for id in ["AS-CP-3", "QS-KP-3", "DS-EPOCH-1", "QS-DEQ-1"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {id} |")))
            .unwrap_or_else(|| panic!("{id} missing from the report"));
        let tested = line
            .trim_end_matches('|')
            .trim_end()
            .rsplit('|')
            .next()
            .unwrap_or("");
        assert!(
            tested.trim().starts_with("yes"),
            "{id} is not tested: {line}"
        );
    }
    // Federation and the malicious remote server: modelled, implemented and tested.
    for id in ["FED-1", "FED-2", "FED-3", "FED-4", "ADV-REMOTE-1"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {id} |")))
            .unwrap_or_else(|| panic!("{id} missing from the report"));
        let columns: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", id, level, modelled, implemented, tested, ""
        for (column, what) in [(3, "modelled"), (4, "implemented"), (5, "tested")] {
            assert!(
                columns.get(column).is_some_and(|c| c.starts_with("yes")),
                "{id} is not {what}: {line}"
            );
        }
    }
}
