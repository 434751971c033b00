//! loadgen against a real vllm-sim on loopback: short, bounded runs checking the JSON summary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Sim;
use serde_json::Value;

fn loadgen(args: &[&str]) -> Value {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let out = Command::new(bin).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn fast_sim() -> Sim {
    Sim::start(&[
        "--ttft-ms",
        "5",
        "--tokens-per-second",
        "1000",
        "--max-tokens-default",
        "8",
    ])
}

#[test]
fn steady_open_loop_counts() {
    let sim = fast_sim();
    let target = sim.url("");
    let s = loadgen(&[
        "steady",
        "--target",
        &target,
        "--rate",
        "25",
        "--duration-secs",
        "2",
        "--requests",
        "50",
        "--json",
        "-q",
    ]);
    assert_eq!(s["scenario"], "steady");
    assert_eq!(s["model"], "sim-model", "discovered from /v1/models");
    assert_eq!(s["requests"], 50);
    assert_eq!(s["ok"], 50);
    assert_eq!(s["errors"], 0);
    assert_eq!(s["finish_reasons"]["stop"], 50);
    assert_eq!(s["completion_tokens"], 400);
    assert_eq!(s["target_rps"], 25.0);
    assert!(s["prompt_tokens"].as_u64().unwrap() >= 50 * 80);
    let ttft = &s["ttft_ms"];
    assert!(ttft["p50"].as_f64().unwrap() >= 5.0);
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= ttft["p99"].as_f64().unwrap());
    let rps = s["achieved_rps"].as_f64().unwrap();
    assert!(rps > 10.0 && rps < 40.0, "achieved {rps}");
}

#[test]
fn error_storm_counts_by_status() {
    let sim = fast_sim();
    let target = format!("{}/v1", sim.url(""));
    let s = loadgen(&[
        "error-storm",
        "--target",
        &target,
        "--model",
        "sim-model",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--share",
        "0.25",
        "--duration-secs",
        "10",
        "--json",
        "-q",
    ]);
    assert_eq!(s["requests"], 40);
    assert_eq!(s["errors"], 10);
    assert_eq!(s["errors_by_status"]["500"], 10);
    assert_eq!(s["ok"], 30);
}

/// engine-death: the first request kills the engine, every one after it gets a 500, and
/// the simulator's /health says so.
#[test]
fn engine_death_first_request_kills_the_engine() {
    let sim = fast_sim();
    let target = format!("{}/v1", sim.url(""));
    let s = loadgen(&[
        "engine-death",
        "--target",
        &target,
        "--model",
        "sim-model",
        "--requests",
        "12",
        "--rate",
        "50",
        "--duration-secs",
        "10",
        "--json",
        "-q",
    ]);
    assert_eq!(s["scenario"], "engine-death");
    assert_eq!(s["requests"], 12);
    assert_eq!(s["errors_by_status"]["500"], 12);
    assert_eq!(s["ok"], 0);
    // GET /health by hand (these tests are synchronous): HTTP/1.1 503.
    use std::io::{Read as _, Write as _};
    let addr = sim.url("").trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    conn.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
}

#[test]
fn refusal_storm_non_stream_and_midstream_errors() {
    let sim = fast_sim();
    let target = sim.url("");
    let s = loadgen(&[
        "refusal-storm",
        "--target",
        &target,
        "--requests",
        "20",
        "--no-stream",
        "--duration-secs",
        "10",
        "--json",
        "-q",
    ]);
    assert_eq!(s["requests"], 20);
    assert_eq!(s["ok"], 20);
    assert_eq!(s["refusals"], 10);
    assert_eq!(s["stream"], false);
    assert!(s["ttft_ms"].is_null());
    // Headers reach the server: every request gets a mid-stream error.
    let s = loadgen(&[
        "steady",
        "--target",
        &target,
        "--rate",
        "50",
        "--requests",
        "5",
        "--duration-secs",
        "5",
        "--header",
        "x-sim-behavior: error-midstream",
        "--json",
        "-q",
    ]);
    assert_eq!(s["requests"], 5);
    assert_eq!(s["errors_by_status"]["stream_error"], 5);
}

#[test]
fn kv_cache_long_prompts_and_human_summary() {
    let sim = fast_sim();
    let target = sim.url("");
    let s = loadgen(&[
        "kv-cache",
        "--target",
        &target,
        "--max-tokens",
        "4",
        "--json",
        "-q",
    ]);
    assert_eq!(s["requests"], 10);
    assert_eq!(s["ok"], 10);
    let per = s["prompt_tokens"].as_u64().unwrap() / 10;
    assert!(
        (2500..=3500).contains(&per),
        "~3000 prompt tokens each, got {per}"
    );
    assert_eq!(s["finish_reasons"]["length"], 10);
    // Human output on stdout, progress on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "latency-spike",
            "--target",
            &target,
            "--requests",
            "3",
            "--concurrency",
            "1",
            "--max-tokens",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests      3 (3 ok, 0 errors)"), "{text}");
    assert!(text.contains("ttft          p50"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent 3 done 3"));
}

#[test]
fn unreachable_target_fails_cleanly() {
    // Bind then drop a listener to get a closed loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "steady",
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--duration-secs",
            "1",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("discovering the model"));
}
