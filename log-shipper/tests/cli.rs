//! The binary's outward behaviour: dry-run, stdin, SIGTERM flush, metrics endpoints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn shipper() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_log-shipper"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LOG_SHIPPER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn dry_run_prints_loki_json_and_writes_no_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, 0..3, 5);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"plain text\n")
        .unwrap();
    let positions = dir.path().join("pos.json");
    let out = shipper()
        .args(["--dry-run", "--exit-on-eof", "--input"])
        .arg(&log)
        .arg("--positions")
        .arg(&positions)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let batches: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut entries = 0;
    let mut parse_errors = 0;
    for b in &batches {
        for s in b["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["app"], "llm-gateway");
            if s["stream"]["parse_error"] == "true" {
                parse_errors += s["values"].as_array().unwrap().len();
            } else {
                assert_eq!(s["stream"]["event"], "response");
                assert_eq!(s["stream"]["level"], "info");
                assert!(
                    s["values"][0][2]["request_id"]
                        .as_str()
                        .unwrap()
                        .starts_with("req-")
                );
            }
            entries += s["values"].as_array().unwrap().len();
        }
    }
    assert_eq!((entries, parse_errors), (4, 1), "{stdout}");
    assert!(!positions.exists(), "dry-run must not write positions");
}

#[test]
fn label_values_beyond_the_limit_become_other_and_lines_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut text = String::new();
    for i in 0..12 {
        text.push_str(&format!(
            "{{\"event\":\"response\",\"level\":\"info\",\"model\":\"m{}\",\"request_id\":\"r{i}\"}}\n",
            i % 6
        ));
    }
    std::fs::write(&log, &text).unwrap();
    let out = shipper()
        .args([
            "--dry-run",
            "--exit-on-eof",
            "--max-label-values",
            "3",
            "--input",
        ])
        .arg(&log)
        .arg("--positions")
        .arg(dir.path().join("pos.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("label=\"model\"") && stderr.contains("limit of distinct values"),
        "{stderr}"
    );
    let mut by_label: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        let b: serde_json::Value = serde_json::from_str(l).unwrap();
        for s in b["streams"].as_array().unwrap() {
            let label = s["stream"]["model"].as_str().unwrap().to_string();
            for v in s["values"].as_array().unwrap() {
                let line: serde_json::Value = serde_json::from_str(v[1].as_str().unwrap()).unwrap();
                by_label
                    .entry(label.clone())
                    .or_default()
                    .push(line["model"].as_str().unwrap().to_string());
            }
        }
    }
    let labels: Vec<&str> = by_label.keys().map(String::as_str).collect();
    assert_eq!(labels, ["m0", "m1", "m2", "other"]);
    let mut other = by_label["other"].clone();
    other.sort();
    assert_eq!(other, ["m3", "m3", "m4", "m4", "m5", "m5"]);
    assert_eq!(by_label.values().map(Vec::len).sum::<usize>(), 12);
}

#[test]
fn stdin_is_shipped_until_eof() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let mut child = shipper()
        .args(["--loki-url", &rx.url(), "--input", "-", "--positions"])
        .arg(dir.path().join("p.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..200 {
            stdin.write_all(event_line(i, 10).as_bytes()).unwrap();
        }
        stdin
            .write_all(event_line(200, 10).trim_end().as_bytes())
            .unwrap(); // no final newline
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    rx.wait_all(201, Duration::from_secs(20), None);
}

#[test]
fn sigterm_flushes_and_commits_positions() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let log = dir.path().join("app.log");
    append_lines(&log, 0..300, 10);
    // A long batch age: only the shutdown flush can push these lines.
    let (mut ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        log.to_str().unwrap(),
        &["--batch-max-wait-ms", "600000"],
    );
    wait_until("lines read", Duration::from_secs(20), || {
        metric(&maddr, "log_shipper_lines_read_total") >= 300.0
    });
    let (code, body) = http(&maddr, "GET", "/healthz", "");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (_, metrics) = http(&maddr, "GET", "/metrics", "");
    assert!(
        metrics.contains("log_shipper_build_info{version="),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes"));
    assert_eq!(rx.stats()["accepted_entries"], 0);
    let status = ship
        .terminate(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    rx.wait_all(300, Duration::from_secs(5), None);
    let pos: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("positions.json")).unwrap())
            .unwrap();
    let size = std::fs::metadata(&log).unwrap().len();
    assert_eq!(pos["files"][0]["offset"], size, "{pos}");
    // A restart ships nothing again.
    let before = rx.stats()["accepted_entries"].as_u64().unwrap();
    let (mut ship, maddr) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &[]);
    append_lines(&log, 300..310, 10);
    rx.wait_all(310, Duration::from_secs(20), Some(&ship));
    wait_until("entries sent", Duration::from_secs(10), || {
        metric(&maddr, "log_shipper_entries_sent_total") >= 10.0
    });
    assert_eq!(
        rx.stats()["accepted_entries"].as_u64().unwrap(),
        before + 10
    );
    ship.terminate(Duration::from_secs(20)).unwrap();
}
