//! Configuration: the example file parses and validates; `check-config`
//! prints the effective configuration; bad files fail with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use gateway::config::RawConfig;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.example.toml")
}

#[test]
fn example_config_parses_and_validates() {
    let raw = RawConfig::load(&example()).unwrap();
    let cfg = raw.validate().unwrap();
    assert_eq!(cfg.pools.len(), 2);
    assert!(cfg.long_context.is_some());
    assert_eq!(cfg.tenants.len(), 2);
    assert_eq!(cfg.prices.len(), 2);
    assert_eq!(cfg.listen.port(), 8080);
    // Every table of the example is documented with comments.
    let text = std::fs::read_to_string(example()).unwrap();
    for table in [
        "[server]",
        "[timeouts]",
        "[events]",
        "[routing]",
        "[health]",
        "[refusal]",
    ] {
        assert!(text.contains(table), "{table}");
    }
}

#[test]
fn refusal_judge_table_is_validated() {
    // The example documents the judge, switched off.
    let raw = RawConfig::load(&example()).unwrap();
    assert!(raw.validate().unwrap().judge.is_none());
    // Switched on, its keys validate.
    let text = std::fs::read_to_string(example()).unwrap();
    let on = text.replace(
        "[refusal.judge]\nenabled = false",
        "[refusal.judge]\nenabled = true",
    );
    assert_ne!(on, text);
    let mut raw = RawConfig::parse(&on).unwrap();
    raw.base_dir = example().parent().map(PathBuf::from);
    let cfg = raw.validate().unwrap();
    let j = cfg.judge.unwrap();
    assert_eq!(j.endpoint, "http://judge.internal:8000/v1/chat/completions");
    assert_eq!(j.model, "qwen2.5-1.5b-instruct");
    // The detector still gets its own rules next to the judge table.
    assert!(cfg.detector.scan_bytes() > 0);
    // Errors name the key, through the whole config.
    let pool = "[pools.a]\nendpoints = [\"http://h:1\"]\n";
    for (table, want) in [
        (
            "[refusal.judge]\nenabled = true\nmodel = \"j\"",
            "invalid configuration: refusal.judge.url is required",
        ),
        (
            "[refusal.judge]\nenabled = true\nurl = \"http://j:1\"\nmodel = \"j\"\nsample_rate = 2.0",
            "refusal.judge.sample_rate must be between 0 and 1, got 2",
        ),
        (
            "[refusal.judge]\nenabled = true\nurl = \"http://j:1\"\nmodel = \"j\"\nqueue = 3",
            "[refusal.judge]: unknown field `queue`",
        ),
        (
            "[refusal]\nscan_bytes = 1024\n[refusal.judge]\nenabled = true\nurl = \"http://j:1\"\nmodel = \"j\"\nconcurrency = 0",
            "refusal.judge.concurrency must be between 1 and 64, got 0",
        ),
    ] {
        let err = RawConfig::parse(&format!("{pool}{table}\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{table}: {err}");
    }
}

#[test]
fn check_config_prints_the_effective_config() {
    let out = Command::new(common::bin())
        .args(["check-config", "--config"])
        .arg(example())
        .args([
            "--upstream",
            "http://127.0.0.1:9000",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"));
    assert!(stdout.contains("listen = \"127.0.0.1:0\""), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:9000"), "{stdout}");
    assert!(
        stdout.contains("first_byte_ms = 300000"),
        "defaults are shown: {stdout}"
    );
    // The printed configuration is itself a valid config file.
    let again = RawConfig::parse(stdout.split_once('\n').unwrap().1).unwrap();
    assert!(again.validate().is_ok());
}

#[test]
fn bad_config_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    for (text, needle) in [
        ("[server]\nlisten_address = \"x\"\n", "unknown field"),
        ("[pools.a]\nendpoints = [\"ftp://x\"]\n", "http or https"),
        (
            "[pools.a]\nendpoints = [\"http://h:1\"]\n[refusal]\n[[refusal.rules]]\nid = \"x\"\npattern = \"(\"\n",
            "refusal",
        ),
    ] {
        std::fs::write(&p, text).unwrap();
        let out = Command::new(common::bin())
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
