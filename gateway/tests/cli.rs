//! Command line: env vars, `hash-key`, `--demo`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn hash_key_prints_sha256_hex() {
    let mut child = Command::new(bin())
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"foo\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_come_from_env_vars() {
    let sim = start_sim(fast_sim()).await;
    let url = sim.url.clone();
    let gw = Gateway::start_with(&[], None, move |cmd| {
        cmd.env("LLM_GATEWAY_UPSTREAM", &url);
    });
    let r = client()
        .post(gw.chat_url())
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_with_no_setup() {
    let gw = Gateway::start(&["--demo"], None);
    let c = client();
    let models: serde_json::Value = c
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");
    let r = gw
        .post_chat(
            "demo",
            &chat(ids[0], false),
            &[("x-sim-output-tokens", "3")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let ev = gw.event_for("demo").await;
    assert!(
        ev["cost_usd"].as_f64().unwrap() > 0.0,
        "demo models have prices: {ev}"
    );
    let ready = c.get(format!("{}/readyz", gw.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[test]
fn refusal_check_and_eval_subcommands() {
    let mut child = Command::new(bin())
        .args(["refusal", "check"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"text\":\"I'm sorry, but I can't help with that.\"}\n{\"text\":\"Paris is the capital of France.\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["refusal"], true);
    assert_eq!(lines[1]["refusal"], false);

    let dir = tempfile::tempdir().unwrap();
    let labeled = dir.path().join("labeled.jsonl");
    std::fs::write(
        &labeled,
        "{\"text\":\"I can't help with that.\",\"label\":\"refusal\"}\n{\"text\":\"Sure, here it is.\",\"label\":\"compliance\"}\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["refusal", "eval", "--labeled"])
        .arg(&labeled)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("per source"), "{text}");
    // Without a source field, rows are grouped under the file name.
    assert!(text.contains("labeled.jsonl"), "{text}");
}
