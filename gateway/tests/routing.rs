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
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let r = gw
            .post_chat(&format!("r{i}"), &chat("m", stream), &[])
            .await;
        assert_eq!(r.status(), 200, "request {i}");
        r.text().await.unwrap();
        let ev = gw.event_for(&format!("r{i}")).await;
        assert_eq!(ev["endpoint"], sim.url.trim_start_matches("http://"));
    }
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
