//! Streaming relay: chunks pass as they arrive, usage is always collected,
//! the usage chunk reaches only clients that asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_chunk_arrives_while_upstream_still_generates() {
    let sim = start_sim(sim::SimConfig {
        models: vec!["m".into()],
        ttft_ms: 10,
        tokens_per_second: 20.0,
        ..sim::SimConfig::default()
    })
    .await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let mut resp = client()
        .post(gw.chat_url())
        .header("x-sim-output-tokens", "30")
        .header("x-request-id", "stream-1")
        .json(&chat("m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(resp.headers()["x-request-id"], "stream-1");
    // Read until the first content chunk.
    let mut got = String::new();
    let has_content = |s: &str| {
        s.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|p| serde_json::from_str::<Value>(p).ok())
            .any(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
    };
    while !has_content(&got) {
        let c = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("stream ended early");
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    // The upstream is still generating (30 tokens at 20/s = 1.5 s).
    let running = sim_metric(&sim, "vllm:num_requests_running").await;
    assert_eq!(
        running, 1.0,
        "first chunk must arrive before the upstream finished"
    );
    assert!(!got.contains("[DONE]"));
    // Drain the rest.
    while let Some(c) = resp.chunk().await.unwrap() {
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert!(got.ends_with("data: [DONE]\n\n"), "{got}");
    let ev = gw.event_for("stream-1").await;
    assert_eq!(ev["stream"], true);
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["finish_reason"], "stop");
    assert_eq!(ev["completion_tokens"], 30);
    assert!(ev["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(ev["ttft_ms"].as_f64().unwrap() < ev["latency_ms"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_only_when_the_client_asked() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    for (id, body, want_usage) in [
        ("no-usage", chat("m", true), false),
        (
            "with-usage",
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}),
            true,
        ),
        (
            "usage-false",
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false}}),
            false,
        ),
    ] {
        let resp = gw.post_chat(id, &body, &[]).await;
        assert_eq!(resp.status(), 200);
        let payloads = sse_payloads(resp).await;
        assert_eq!(payloads.last().unwrap(), "[DONE]");
        let usage_chunks: Vec<&String> = payloads
            .iter()
            .filter(|p| p.contains("\"usage\":{"))
            .collect();
        if want_usage {
            assert_eq!(usage_chunks.len(), 1, "{id}: {payloads:?}");
            let v: Value = serde_json::from_str(usage_chunks[0]).unwrap();
            assert_eq!(v["choices"], json!([]));
        } else {
            assert!(usage_chunks.is_empty(), "{id}: {payloads:?}");
            assert!(!payloads.iter().any(|p| p.contains("\"choices\":[]")));
        }
        let ev = gw.event_for(id).await;
        assert!(ev["prompt_tokens"].as_u64().unwrap() > 0, "{ev}");
        assert_eq!(ev["completion_tokens"], 8, "{ev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_embeddings_pass_through() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let c = client();
    let resp = c
        .post(format!("{}/v1/completions", gw.url))
        .header("x-request-id", "cmpl-stream")
        .json(&json!({"model":"m","prompt":"Once upon","stream":true,"max_tokens":5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let payloads = sse_payloads(resp).await;
    assert!(payloads.iter().any(|p| p.contains("\"text_completion\"")));
    assert!(!payloads.iter().any(|p| p.contains("\"choices\":[]")));
    let ev = gw.event_for("cmpl-stream").await;
    assert_eq!(ev["route"], "/v1/completions");
    assert_eq!(ev["completion_tokens"], 5);

    let resp = c
        .post(format!("{}/v1/embeddings", gw.url))
        .header("x-request-id", "emb")
        .json(&json!({"model":"m","input":["a b c", "d"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let ev = gw.event_for("emb").await;
    assert_eq!(ev["route"], "/v1/embeddings");
    assert!(ev["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(ev["refusal"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_pass_byte_for_byte() {
    const ANSWER: &str = "{\"id\":\"x\",  \"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hé\",\"reasoning_content\":\"r\",\"reasoning\":\"r\"},\"finish_reason\":\"stop\",\"weird\":[1e3,null]}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5},\"vendor_extra\":{\"k\":true}}";
    let mock = start_mock(|_| {
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .header("x-upstream-extra", "1")
            .body(axum::body::Body::from(ANSWER))
            .unwrap()
    })
    .await;
    let gw = Gateway::start(&["--upstream", &mock.url], None);
    let sent = "{\"model\":\"m\", \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"unknown_field\":{\"nested\":[1,2,3]},\"temperature\":0.25}";
    let resp = client()
        .post(gw.chat_url())
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .header("x-custom", "kept")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream-extra"], "1");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), ANSWER);
    let seen = mock.seen.lock().unwrap().clone();
    let req = seen
        .iter()
        .find(|s| s.path == "/v1/chat/completions")
        .unwrap();
    assert_eq!(&req.body[..], sent.as_bytes(), "request body untouched");
    assert_eq!(req.headers["x-custom"], "kept");
    assert!(
        req.headers.get("authorization").is_none(),
        "client key never forwarded"
    );
    assert!(req.headers.contains_key("x-request-id"));
}
