//! The auditor CLI against two real `phoenix-server` processes (started from the built
//! binary, on SQLite, rate limits off as an auditor's test deployment would run): it
//! passes, prints the requirement table and writes the JSON and JUnit reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use phoenix_e2e::TestServer;

fn server(domain: &str) -> TestServer {
    TestServer::start_with(
        domain,
        None,
        "127.0.0.1:0",
        &["--rate-limits".into(), "off".into()],
    )
}

#[test]
fn the_cli_passes_against_two_servers_and_writes_its_reports() {
    let a = server("a.test");
    let b = server("b.test");
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
    assert_eq!(suites.len(), 4, "two suites per server");
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
    assert_eq!(xml.matches("<testsuite ").count(), 4);
    assert!(!xml.contains("<failure"));
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
