//! A client that goes away mid-request: the upstream request is dropped at
//! once (vLLM aborts it and frees its KV cache) and the event says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn slow_sim() -> sim::SimConfig {
    sim::SimConfig {
        models: vec!["m".into()],
        ttft_ms: 10,
        tokens_per_second: 10.0,
        max_tokens_default: 100,
        ..sim::SimConfig::default()
    }
}

async fn wait_for(sim: &Sim, prefix: &str, want: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = sim_metric(sim, prefix).await;
        if v >= want || t0.elapsed() > Duration::from_secs(5) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_disconnect_aborts_upstream() {
    let sim = start_sim(slow_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let mut resp = gw.post_chat("cut", &chat("m", true), &[]).await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(sim_metric(&sim, "vllm:num_requests_running").await, 1.0);
    drop(resp);
    // 100 tokens at 10/s would take 10 s; the abort must come long before.
    let aborted = wait_for(&sim, "vllm_sim_aborted_requests_total", 1.0).await;
    assert_eq!(aborted, 1.0, "upstream request was not aborted");
    assert_eq!(sim_metric(&sim, "vllm:num_requests_running").await, 0.0);
    let ev = gw.event_for("cut").await;
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["finish_reason"], "client_disconnect");
    assert_eq!(ev["error_type"], "client_disconnect");
    assert_eq!(ev["level"], "warn");
    assert!(ev["latency_ms"].as_f64().unwrap() < 5000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_disconnect_aborts_upstream() {
    let sim = start_sim(slow_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let body = serde_json::to_vec(&chat("m", false)).unwrap();
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-request-id: gone\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body).await.unwrap();
    assert_eq!(wait_for(&sim, "vllm:num_requests_running", 1.0).await, 1.0);
    sock.shutdown().await.unwrap();
    drop(sock);
    let aborted = wait_for(&sim, "vllm_sim_aborted_requests_total", 1.0).await;
    assert_eq!(aborted, 1.0, "upstream request was not aborted");
    let ev = gw.event_for("gone").await;
    assert_eq!(ev["status"], 499);
    assert_eq!(ev["error_type"], "client_disconnect");
    assert_eq!(ev["finish_reason"], "client_disconnect");
    // The gateway still serves.
    let mut s2 = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s2.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s2.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
}
