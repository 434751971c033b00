//! Pools: model map, long-context rule, least-in-flight balancing, health
//! checks, retry on another endpoint, merged /v1/models, readiness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn sim_with(models: &[&str]) -> sim::SimConfig {
    sim::SimConfig {
        models: models.iter().map(|m| m.to_string()).collect(),
        ..fast_sim()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_map_long_context_and_merged_models() {
    let fast = start_sim(sim_with(&["m"])).await;
    let long = start_sim(sim_with(&["m", "big"])).await;
    let cfg = format!(
        r#"
[routing]
default_pool = "fast"
long_context_pool = "long"
long_context_min_prompt_bytes = 2000
[pools.fast]
endpoints = ["{}"]
[pools.long]
endpoints = ["{}"]
[models.big]
pool = "long"
"#,
        fast.url, long.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let c = client();
    let cases = [
        (
            "short",
            json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
            "fast",
        ),
        (
            "long",
            json!({"model":"m","messages":[{"role":"user","content":"word ".repeat(600)}]}),
            "long",
        ),
        (
            "long-completion",
            json!({"model":"m","prompt":"word ".repeat(600),"max_tokens":2}),
            "long",
        ),
        (
            "mapped",
            json!({"model":"big","messages":[{"role":"user","content":"hi"}]}),
            "long",
        ),
    ];
    for (id, body, pool) in cases {
        let url = if body.get("prompt").is_some() {
            format!("{}/v1/completions", gw.url)
        } else {
            gw.chat_url()
        };
        let r = c
            .post(url)
            .header("x-request-id", id)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        let ev = gw.event_for(id).await;
        assert_eq!(ev["upstream"], pool, "{id}: {ev}");
    }
    let want_long = format!("127.0.0.1:{}", long.addr.port());
    assert_eq!(gw.event_for("long").await["endpoint"], want_long.as_str());

    let models: serde_json::Value = c
        .get(format!("{}/v1/models", gw.url))
        .header("x-request-id", "models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["big", "m"], "merged and de-duplicated");
    assert_eq!(models["object"], "list");
    assert_eq!(gw.event_for("models").await["route"], "/v1/models");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_spreads_concurrent_requests() {
    let a = start_sim(sim_with(&["m"])).await;
    let b = start_sim(sim_with(&["m"])).await;
    let gw = Gateway::start(&["--upstream", &a.url, "--upstream", &b.url], None);
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let req = c
            .post(gw.chat_url())
            .header("x-request-id", format!("lb-{i}"))
            .header("x-sim-ttft-ms", "400")
            .json(&chat("m", false));
        tasks.push(tokio::spawn(req.send()));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    let mut per_endpoint = std::collections::HashMap::new();
    for i in 0..4 {
        let ev = gw.event_for(&format!("lb-{i}")).await;
        *per_endpoint
            .entry(ev["endpoint"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_endpoint.len(), 2, "{per_endpoint:?}");
    assert!(per_endpoint.values().all(|&n| n == 2), "{per_endpoint:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_dead_endpoints_out_and_readyz_follows() {
    let sim = start_sim(fast_sim()).await;
    let dead = dead_url();
    let cfg = format!(
        "[routing]\ndefault_pool = \"main\"\n[health]\ninterval_ms = 100\nunhealthy_threshold = 1\n[pools.main]\nendpoints = [\"{dead}\", \"{}\"]\n[pools.gone]\nendpoints = [\"{}\"]\n",
        sim.url,
        dead_url()
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let dead_label = dead.trim_start_matches("http://").to_owned();
    let t0 = Instant::now();
    loop {
        let m = gw.metrics().await;
        let line =
            format!("llm_gateway_upstream_up{{upstream=\"main\",endpoint=\"{dead_label}\"}}");
        if metric(&m, &line) == Some(0.0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "dead endpoint still up: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = client();
    for i in 0..6 {
        let r = gw.post_chat(&format!("h{i}"), &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "llm_gateway_upstream_errors_total{upstream=\"main\",kind=\"connect\"}"
        ),
        None,
        "no request went to the dead endpoint: {m}"
    );
    let sim_label = sim.url.trim_start_matches("http://");
    assert_eq!(
        metric(
            &m,
            &format!("llm_gateway_upstream_up{{upstream=\"main\",endpoint=\"{sim_label}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        c.get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Only dead endpoints: not ready.
    let gw = Gateway::start(
        &["--upstream", &dead_url()],
        Some("[health]\ninterval_ms = 100\nunhealthy_threshold = 1\n"),
    );
    let t0 = Instant::now();
    loop {
        let s = c
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status();
        if s == 503 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retries_on_another_endpoint() {
    let sim = start_sim(fast_sim()).await;
    let dead = dead_url();
    // Health checks too rare to notice: the retry must do the work.
    let cfg = format!(
        "[health]\ninterval_ms = 60000\n[pools.main]\nendpoints = [\"{dead}\", \"{}\"]\n",
        sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let mut reasons = Vec::new();
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let r = gw
            .post_chat(&format!("r{i}"), &chat("m", stream), &[])
            .await;
        assert_eq!(r.status(), 200, "request {i}");
        r.text().await.unwrap();
        let ev = gw.event_for(&format!("r{i}")).await;
        assert_eq!(ev["endpoint"], sim.url.trim_start_matches("http://"));
        reasons.push(ev["routing_reason"].as_str().unwrap().to_owned());
    }
    // The request that met the dead endpoint first was served by its retry.
    assert!(reasons.iter().any(|r| r == "retry"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r == "retry" || r == "least_in_flight"),
        "{reasons:?}"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "llm_gateway_upstream_errors_total{upstream=\"main\",kind=\"connect\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// Routing policies (issue 18)
// ---------------------------------------------------------------------------

fn label(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// A chat turn of conversation `conv`: a shared system prompt, the
/// conversation's first user message, then `turn` more exchanges.
fn turn(conv: usize, turn: usize) -> serde_json::Value {
    let mut messages = vec![
        json!({"role":"system","content":"You are a helpful assistant. Be brief."}),
        json!({"role":"user","content":format!("conversation {conv}: hello")}),
    ];
    for t in 0..turn {
        messages.push(json!({"role":"assistant","content":format!("answer {t}")}));
        messages.push(json!({"role":"user","content":format!("follow-up {t}")}));
    }
    json!({"model":"m","messages":messages,"max_tokens":2})
}

/// The endpoint and routing reason of each request id.
async fn routed(gw: &Gateway, ids: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for id in ids {
        let ev = gw.event_for(id).await;
        out.push((
            ev["endpoint"].as_str().unwrap_or("").to_owned(),
            ev["routing_reason"].as_str().unwrap_or("").to_owned(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns_whatever_the_load() {
    let a = start_sim(fast_sim()).await;
    let b = start_sim(fast_sim()).await;
    let cfg = format!(
        "[pools.main]\nrouting = \"round-robin\"\nendpoints = [\"{}\", \"{}\"]\n",
        a.url, b.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    // One slow request holds an endpoint: least in-flight would send every
    // other request to the idle one; round-robin keeps taking turns.
    let slow = client()
        .post(gw.chat_url())
        .header("x-request-id", "slow")
        .header("x-sim-ttft-ms", "1500")
        .json(&chat("m", false))
        .send();
    let slow = tokio::spawn(slow);
    gw.wait_in_flight(1.0).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = format!("rr-{i}");
        let r = gw.post_chat(&id, &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        ids.push(id);
    }
    let got = routed(&gw, &ids).await;
    let on_a = got.iter().filter(|(e, _)| *e == label(&a.url)).count();
    assert_eq!(on_a, 3, "{got:?}");
    assert!(got.iter().all(|(_, why)| why == "round_robin"), "{got:?}");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "llm_gateway_endpoint_picks_total{{upstream=\"main\",endpoint=\"{}\",reason=\"round_robin\"}}",
                label(&a.url)
            )
        ),
        Some(
            on_a as f64
                + f64::from(u8::from(
                    gw.event_for("slow").await["endpoint"] == label(&a.url).as_str()
                ))
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_conversations_together_and_spreads_them() {
    let sims = [
        start_sim(fast_sim()).await,
        start_sim(fast_sim()).await,
        start_sim(fast_sim()).await,
    ];
    let cfg = format!(
        "[pools.main]\nrouting = \"prefix-affinity\"\nendpoints = [{}]\n",
        sims.iter()
            .map(|s| format!("\"{}\"", s.url))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let mut homes = std::collections::HashMap::new();
    // Ports (so endpoint hashes) differ per run: 30 conversations miss one
    // of 3 endpoints with probability 3 × (2/3)^30 ≈ 2e-5 (12 would: 2 %).
    for t in 0..3 {
        for conv in 0..30 {
            let id = format!("c{conv}-t{t}");
            let r = gw.post_chat(&id, &turn(conv, t), &[]).await;
            assert_eq!(r.status(), 200);
            let (ep, why) = routed(&gw, std::slice::from_ref(&id)).await.remove(0);
            assert_eq!(why, "affinity", "{id}");
            let home = homes.entry(conv).or_insert_with(|| ep.clone());
            assert_eq!(*home, ep, "conversation {conv} moved at turn {t}");
        }
    }
    let used: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(
        used.len(),
        3,
        "12 conversations over 3 endpoints: {homes:?}"
    );

    // A session header wins over the body: different conversations, one endpoint.
    let mut eps = std::collections::HashSet::new();
    for conv in 0..6 {
        let id = format!("s-{conv}");
        let r = gw
            .post_chat(&id, &turn(100 + conv, 0), &[("x-session-id", "sess-42")])
            .await;
        assert_eq!(r.status(), 200);
        eps.insert(gw.event_for(&id).await["endpoint"].clone());
    }
    assert_eq!(eps.len(), 1, "{eps:?}");

    // Completions: the prompt's beginning is the key.
    let c = client();
    let mut eps = std::collections::HashSet::new();
    for i in 0..4 {
        let id = format!("p-{i}");
        let body = json!({"model":"m","prompt":format!("{} question {i}", "shared document ".repeat(40)),"max_tokens":2});
        let r = c
            .post(format!("{}/v1/completions", gw.url))
            .header("x-request-id", &id)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ev = gw.event_for(&id).await;
        assert_eq!(ev["routing_reason"], "affinity");
        eps.insert(ev["endpoint"].clone());
    }
    assert_eq!(eps.len(), 1, "same first 512 bytes, same endpoint: {eps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_falls_back_when_its_endpoint_is_busy() {
    let a = start_sim(fast_sim()).await;
    let b = start_sim(fast_sim()).await;
    let cfg = format!(
        "[pools.main]\nrouting = \"prefix-affinity\"\naffinity_max_load_factor = 1.25\nendpoints = [\"{}\", \"{}\"]\n",
        a.url, b.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    // One conversation, several slow turns at once: its home takes
    // ceil(1.25 × (in flight + 1) / 2); past that the conversation moves to
    // the other endpoint and stays there (its newest blocks are there).
    let mut tasks = Vec::new();
    for i in 0..4 {
        let req = client()
            .post(gw.chat_url())
            .header("x-request-id", format!("busy-{i}"))
            .header("x-sim-ttft-ms", "1500")
            .json(&turn(7, 0))
            .send();
        tasks.push(tokio::spawn(req));
        gw.wait_in_flight(f64::from(i + 1)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    // Then one more turn on an idle pool.
    let later = client()
        .post(gw.chat_url())
        .header("x-request-id", "busy-4")
        .json(&turn(7, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(later.status(), 200);
    let ids: Vec<String> = (0..5).map(|i| format!("busy-{i}")).collect();
    let got = routed(&gw, &ids).await;
    // 1st: home (0 in flight < cap 1). 2nd: home (1 < cap 2). 3rd: home at
    // cap 2 → the other one. 4th: the other one (1 < cap 3). 5th: still there.
    let reasons: Vec<&str> = got.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(
        reasons,
        vec![
            "affinity",
            "affinity",
            "affinity_fallback",
            "affinity",
            "affinity"
        ],
        "{got:?}"
    );
    let home = &got[0].0;
    assert_eq!(&got[1].0, home);
    let moved = &got[2].0;
    assert_ne!(moved, home);
    assert_eq!((&got[3].0, &got[4].0), (moved, moved));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "llm_gateway_endpoint_picks_total{upstream=\"main\",endpoint=\""
        ),
        Some(5.0),
        "{m}"
    );
}

/// A vLLM-like upstream with a long queue: `/metrics` reports 50 waiting
/// requests (real vLLM exposition lines), the other routes answer a chat completion.
async fn queued_upstream() -> Mock {
    start_mock(|seen| {
        use axum::response::IntoResponse;
        if seen.path == "/metrics" {
            return (
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 50.0\n# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.97\n",
            )
                .into_response();
        }
        axum::Json(json!({
            "id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}
        }))
        .into_response()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_avoids_the_endpoint_with_a_long_queue() {
    avoids_the_endpoint_with_a_long_queue("load-aware").await;
}

/// Prefix-affinity's load bound counts the scraped queue: conversations whose
/// home is the queued endpoint go elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_avoids_the_endpoint_with_a_long_queue() {
    avoids_the_endpoint_with_a_long_queue("prefix-affinity").await;
}

/// 16 requests (prefix-affinity: 16 conversations) to a pool of a sim and an
/// upstream whose `/metrics` reports 50 waiting: none reaches the queued one.
async fn avoids_the_endpoint_with_a_long_queue(routing: &str) {
    let queued = queued_upstream().await;
    let sim = start_sim(fast_sim()).await;
    let cfg = format!(
        "[pools.main]\nrouting = \"{routing}\"\nmetrics_scrape_interval_ms = 100\nendpoints = [\"{}\", \"{}\"]\n",
        queued.url, sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let q = label(&queued.url);
    gw.wait_metric(
        &format!("llm_gateway_endpoint_queue_waiting{{upstream=\"main\",endpoint=\"{q}\"}}"),
        50.0,
    )
    .await;
    // The sim's own scrape too (its queue is empty).
    gw.wait_metric(
        &format!(
            "llm_gateway_endpoint_kv_cache_usage_ratio{{upstream=\"main\",endpoint=\"{}\"}}",
            label(&sim.url)
        ),
        0.0,
    )
    .await;
    let ids: Vec<String> = (0..16).map(|i| format!("q-{i}")).collect();
    for id in &ids {
        let session = [("x-session-id", id.as_str())];
        let resp = gw.post_chat(id, &chat("m", false), &session).await;
        assert_eq!(resp.status(), 200);
    }
    let got = routed(&gw, &ids).await;
    assert!(got.iter().all(|(e, _)| *e == label(&sim.url)), "{got:?}");
    let reasons: std::collections::HashSet<&str> = got.iter().map(|(_, w)| w.as_str()).collect();
    let expected: &[&str] = match routing {
        "load-aware" => &["load"],
        // Half the conversations hash to the queued endpoint (all 16 on the
        // sim by chance: 2^-16).
        _ => &["affinity", "affinity_fallback"],
    };
    assert_eq!(reasons, expected.iter().copied().collect(), "{got:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "llm_gateway_endpoint_kv_cache_usage_ratio{{upstream=\"main\",endpoint=\"{q}\"}}"
            )
        ),
        Some(0.97),
        "{m}"
    );
    assert!(
        queued
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.path != "/v1/chat/completions"),
        "no chat request reached the queued endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_failures_are_counted_and_harmless() {
    // An upstream without /metrics (404) and one that is not there at all.
    let no_metrics = start_mock(|seen| {
        use axum::response::IntoResponse;
        if seen.path == "/metrics" {
            return http::StatusCode::NOT_FOUND.into_response();
        }
        axum::Json(json!({
            "id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}
        }))
        .into_response()
    })
    .await;
    let sim = start_sim(fast_sim()).await;
    let dead = dead_url();
    let cfg = format!(
        "[routing]\ndefault_pool = \"main\"\n[health]\ninterval_ms = 60000\n[pools.main]\nrouting = \"load-aware\"\nmetrics_scrape_interval_ms = 100\nendpoints = [\"{}\", \"{}\"]\n[pools.gone]\nrouting = \"load-aware\"\nmetrics_scrape_interval_ms = 100\nendpoints = [\"{dead}\"]\n",
        no_metrics.url, sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let nm = label(&no_metrics.url);
    gw.wait_metric(
        &format!("llm_gateway_endpoint_scrape_errors_total{{upstream=\"main\",endpoint=\"{nm}\"}}"),
        2.0,
    )
    .await;
    gw.wait_metric(
        &format!(
            "llm_gateway_endpoint_scrape_errors_total{{upstream=\"gone\",endpoint=\"{}\"}}",
            label(&dead)
        ),
        2.0,
    )
    .await;
    let ids: Vec<String> = (0..4).map(|i| format!("sf-{i}")).collect();
    for id in &ids {
        assert_eq!(gw.post_chat(id, &chat("m", false), &[]).await.status(), 200);
    }
    // Not every endpoint has a fresh scrape: plain least in-flight, both used.
    let got = routed(&gw, &ids).await;
    assert!(
        got.iter().all(|(_, why)| why == "least_in_flight"),
        "{got:?}"
    );
    let used: std::collections::HashSet<&String> = got.iter().map(|(e, _)| e).collect();
    assert_eq!(used.len(), 2, "{got:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("llm_gateway_endpoint_queue_waiting{{upstream=\"main\",endpoint=\"{nm}\"}}")
        ),
        None,
        "no value without a good scrape: {m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "llm_gateway_endpoint_scrape_errors_total{{upstream=\"main\",endpoint=\"{}\"}}",
                label(&sim.url)
            )
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        gw.stderr().contains("metrics scrape failed"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn bad_routing_settings_are_refused_at_start() {
    for (cfg, want) in [
        (
            "[pools.a]\nendpoints = [\"http://127.0.0.1:1\"]\nrouting = \"random\"\n",
            "unknown variant `random`",
        ),
        (
            "[pools.a]\nendpoints = [\"http://127.0.0.1:1\"]\nrouting = \"prefix-affinity\"\naffinity_max_load_factor = 0.5\n",
            "affinity_max_load_factor must be a number >= 1.0",
        ),
        (
            "[routing]\nmetrics_scrape_interval_ms = 10\n[pools.a]\nendpoints = [\"http://127.0.0.1:1\"]\n",
            "metrics_scrape_interval_ms must be 0 (off) or at least 50",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cfg}");
        assert!(stderr.contains(want), "{cfg}: {stderr}");
    }
}
