//! API keys → tenants, per-tenant limits, the pool's own key upstream, cost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use gateway::auth::hash_key_hex;

const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":2000,"total_tokens":3000}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tenants_limits_and_cost() {
    let mock = start_mock(|s| {
        let body = if s.path == "/v1/models" {
            r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#
        } else {
            ANSWER
        };
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    })
    .await;
    let sim = start_sim(sim::SimConfig {
        models: vec!["slow".into()],
        ..fast_sim()
    })
    .await;
    let cfg = format!(
        r#"
[pools.main]
endpoints = ["{}"]
api_key_env = "GW_TEST_POOL_KEY"
[pools.sim]
endpoints = ["{}"]
[models.m]
pool = "main"
prompt_usd_per_million_tokens = 1.0
completion_usd_per_million_tokens = 2.0
[models.slow]
pool = "sim"
[tenants.acme]
api_key_sha256 = ["{}"]
max_concurrent_requests = 1
[tenants.beta]
api_key_sha256 = ["{}"]
"#,
        mock.url,
        sim.url,
        hash_key_hex("sk-acme"),
        hash_key_hex("sk-beta")
    );
    let gw = Gateway::start_with(&[], Some(&cfg), |c| {
        c.env("GW_TEST_POOL_KEY", "pool-secret");
    });
    let c = client();
    // No key, wrong key, malformed header.
    for (id, auth) in [
        ("nokey", None),
        ("wrong", Some("Bearer sk-nope")),
        ("basic", Some("Basic Zm9v")),
    ] {
        let mut req = c
            .post(gw.chat_url())
            .header("x-request-id", id)
            .json(&chat("m", false));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{id}");
        let err = assert_openai_error(&r.text().await.unwrap());
        assert_eq!(err["type"], "authentication_error");
        let ev = gw.event_for(id).await;
        assert_eq!(ev["error_type"], "authentication");
        assert_eq!(ev["tenant"], "other");
    }
    let r = c.get(format!("{}/v1/models", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 401, "/v1/models needs a key too");

    // A good key.
    let r = gw
        .post_chat(
            "good",
            &chat("m", false),
            &[("authorization", "Bearer sk-acme")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), ANSWER);
    let ev = gw.event_for("good").await;
    assert_eq!(ev["tenant"], "acme");
    assert_eq!(ev["prompt_tokens"], 1000);
    assert_eq!(ev["completion_tokens"], 2000);
    assert!(
        (ev["cost_usd"].as_f64().unwrap() - 0.005).abs() < 1e-12,
        "{ev}"
    );
    {
        let seen = mock.seen.lock().unwrap();
        let req = seen
            .iter()
            .find(|s| s.path == "/v1/chat/completions")
            .unwrap();
        assert_eq!(req.headers["authorization"], "Bearer pool-secret");
    }
    let r = c
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth("sk-beta")
        .header("x-request-id", "models-beta")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.event_for("models-beta").await["tenant"], "beta");

    // Per-tenant concurrency: acme may run one request at a time; beta is not limited by it.
    let slow = tokio::spawn(
        c.post(gw.chat_url())
            .bearer_auth("sk-acme")
            .header("x-sim-ttft-ms", "2000")
            .json(&chat("slow", false))
            .send(),
    );
    gw.wait_in_flight(1.0).await;
    let r = gw
        .post_chat(
            "acme-2",
            &chat("m", false),
            &[("authorization", "Bearer sk-acme")],
        )
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_openai_error(&r.text().await.unwrap());
    assert_eq!(
        gw.event_for("acme-2").await["error_type"],
        "tenant_rate_limited"
    );
    let r = c
        .post(gw.chat_url())
        .bearer_auth("sk-beta")
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    // Metrics by tenant; keys never appear in events, metrics or logs.
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "llm_gateway_cost_usd_total{model=\"m\",tenant=\"acme\"}"
        ),
        Some(0.005),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "llm_gateway_tokens_total{model=\"m\",tenant=\"acme\",kind=\"prompt\"}"
        ),
        Some(1000.0)
    );
    let all = format!(
        "{}{}{}",
        std::fs::read_to_string(&gw.events_path).unwrap(),
        m,
        gw.stderr()
    );
    for secret in ["sk-acme", "sk-beta", "pool-secret"] {
        assert!(!all.contains(secret), "{secret} leaked");
    }
}
