//! The auditor CLI against two real `phoenix-server` processes (started from the built
//! binary, on SQLite, rate limits off as an auditor's test deployment would run, federated
//! with each other and resolving the harness's malicious peer, which a.test blocks): it
//! passes, prints the requirement table and writes the JSON and JUnit reports; without the
//! malicious peer, the federation suite reports its malicious transitions as not run.
//!
//! Requirement: MODEL-2, FED-4, ADV-REMOTE-1

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use phoenix_e2e::{TestServer, free_port};

/// a.test and b.test, federated, resolving evil.test to 127.0.0.1:`evil_port`; a.test
/// blocks evil.test.
fn servers(evil_port: u16) -> (TestServer, TestServer) {
    let (pa, pb) = (free_port(), free_port());
    let mut args = vec!["--rate-limits".to_owned(), "off".to_owned()];
    for entry in [
        format!("a.test=http://127.0.0.1:{pa}"),
        format!("b.test=http://127.0.0.1:{pb}"),
        format!("evil.test=http://127.0.0.1:{evil_port}"),
    ] {
        args.push("--resolve".into());
        args.push(entry);
    }
    let mut a_args = args.clone();
    a_args.extend(["--federation-block".to_owned(), "evil.test".to_owned()]);
    let a = TestServer::start_with("a.test", None, &format!("127.0.0.1:{pa}"), &a_args);
    let b = TestServer::start_with("b.test", None, &format!("127.0.0.1:{pb}"), &args);
    (a, b)
}

#[test]
fn the_cli_passes_against_two_servers_and_writes_its_reports() {
    let evil_port = free_port();
    let (a, b) = servers(evil_port);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let junit = dir.path().join("report.xml");
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix-conformance"))
        .args([
            "--server",
            a.url(),
            "--server",
            b.url(),
            "--resolve",
            &format!("a.test={}", a.url()),
            "--resolve",
            &format!("b.test={}", b.url()),
            "--cases",
            "4",
            "--ds-cases",
            "1",
            "--max-transitions",
            "25",
            "--fed-cases",
            "1",
            "--fake-peer-listen",
            &format!("127.0.0.1:{evil_port}"),
        ])
        .arg("--report-json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(output.status.success(), "exit {:?}", output.status);
    assert!(stdout.contains("requirement") && stdout.contains("AS-REG-1"));
    assert!(stdout.contains("PASS"));
    assert!(stderr.contains("seed "), "the seed is printed");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let suites = report["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 5, "two suites per server, and federation");
    let federation = suites.iter().find(|s| s["suite"] == "federation").unwrap();
    assert_eq!(federation["not_run"].as_array().unwrap().len(), 0);
    assert!(federation["transitions"].as_u64().unwrap() > 0);
    for url in [a.url(), b.url()] {
        assert!(
            suites
                .iter()
                .any(|s| s["server"] == url && s["suite"] == "as_qs")
        );
        assert!(
            suites
                .iter()
                .any(|s| s["server"] == url && s["suite"] == "ds")
        );
    }
    assert!(report["transitions"].as_u64().unwrap() > 0);
    let requirements = report["requirements"].as_array().unwrap();
    for id in ["AS-REG-1", "DS-FAN-1"] {
        assert!(requirements.iter().any(|r| r["requirement"] == id), "{id}");
    }
    assert!(requirements.iter().all(|r| r["failures"] == 0));

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml"));
    assert_eq!(xml.matches("<testsuite ").count(), 5);
    assert!(!xml.contains("<failure"));
}

/// Without the malicious peer, the federation suite runs its honest transitions and says
/// that the malicious ones did not run (never that they passed).
#[test]
fn without_the_malicious_peer_its_transitions_are_reported_not_run() {
    let (a, b) = servers(free_port());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix-conformance"))
        .args([
            "--server",
            a.url(),
            "--server",
            b.url(),
            "--resolve",
            &format!("a.test={}", a.url()),
            "--resolve",
            &format!("b.test={}", b.url()),
            "--cases",
            "0",
            "--ds-cases",
            "0",
            "--fed-cases",
            "1",
            "--max-transitions",
            "10",
        ])
        .arg("--report-json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "exit {:?}", output.status);
    assert!(stdout.contains("NOT RUN: malicious remote server transitions"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let suites = report["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 1);
    assert_eq!(suites[0]["suite"], "federation");
    assert_eq!(suites[0]["not_run"].as_array().unwrap().len(), 1);
    let requirements = report["requirements"].as_array().unwrap();
    assert!(
        !requirements
            .iter()
            .any(|r| r["requirement"] == "ADV-REMOTE-1"),
        "ADV-REMOTE-1 is not claimed"
    );
}

#[test]
fn the_cli_fails_cleanly_on_an_unreachable_server() {
    let output = Command::new(env!("CARGO_BIN_EXE_phoenix-conformance"))
        .args(["--server", "http://127.0.0.1:9", "--cases", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("127.0.0.1:9"));
}
