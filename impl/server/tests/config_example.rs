//! The example configuration (`packaging/phoenix-server.toml`) parses with the server's own
//! configuration code, sets what it says, and `check-config` names each value's source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use phoenix_server::config::{Args, Settings, Source, explain};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging/phoenix-server.toml")
}

#[test]
fn the_example_configuration_parses_with_the_real_config_code() {
    // Requirement: OPS-CONFIG-1
    let args = Args {
        config: Some(example()),
        ..Args::default()
    };
    let settings = Settings::resolve(args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.domain.to_string(), "example.org");
    assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.limits.max_body, 1_048_576);
    assert_eq!(settings.limits.group_tokens_per_day, 100);
    assert_eq!(settings.limits.edge.max_connections_per_ip, 32);
    // Every key of the file is one `check-config` knows (and vice versa, but the
    // commented-out examples).
    let text = std::fs::read_to_string(example()).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    for key in table.keys() {
        assert!(
            phoenix_server::config::KEYS.contains(&key.as_str()),
            "{key} is not listed by check-config"
        );
    }
    for key in phoenix_server::config::KEYS {
        assert!(
            table.contains_key(*key) || text.contains(&format!("# {key} = ")),
            "{key} is not documented in the example"
        );
    }
}

#[test]
fn check_config_names_flag_env_file_and_default() {
    // Requirement: OPS-CONFIG-1
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "domain = \"a.test\"\nmax_dequeue = 7\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let argv: Vec<String> = [
        "phoenix-server",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:2",
        "--database-url=postgres://u:hunter2@db/x",
        "check-config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = |name: &str| (name == "PHOENIX_MAX_GROUP_SIZE").then(|| "9".to_string());
    let args = Args {
        config: Some(file.clone()),
        listen: Some("127.0.0.1:2".into()),
        database_url: Some("postgres://u:hunter2@db/x".into()),
        max_group_size: Some(9),
        ..Args::default()
    };
    let settings = Settings::resolve(args).unwrap();
    let lines = explain(&argv, &env, &settings).unwrap();
    let find = |key: &str| lines.iter().find(|(k, _, _)| k == key).unwrap().clone();
    assert_eq!(find("listen").1, "127.0.0.1:2");
    assert_eq!(find("listen").2, Source::Flag);
    assert_eq!(
        find("max_group_size"),
        ("max_group_size".into(), "9".into(), Source::Env)
    );
    assert_eq!(
        find("max_dequeue"),
        ("max_dequeue".into(), "7".into(), Source::File)
    );
    assert_eq!(find("domain").2, Source::File);
    assert_eq!(
        find("max_body_bytes"),
        ("max_body_bytes".into(), "1048576".into(), Source::Default)
    );
    let url = find("database_url");
    assert_eq!(url.2, Source::Flag);
    assert!(!url.1.contains("hunter2"), "{}", url.1);
    assert!(lines.iter().all(|(_, v, _)| !v.contains("hunter2")));
}
