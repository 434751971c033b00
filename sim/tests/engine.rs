//! /metrics exposition, queueing, KV cache, aborts and shutdown of vllm-sim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Sim, client, get, metric, post};
use futures_util::StreamExt;

const CHAT: &str = "/v1/chat/completions";
const L: &str = "{model_name=\"sim-model\",engine=\"0\"}";

fn series(name: &str) -> String {
    format!("{name}{L}")
}

async fn scrape(c: &reqwest::Client, sim: &Sim) -> String {
    get(c, &sim.url("/metrics")).await.2
}

/// Poll /metrics until `pred` holds (bounded).
async fn wait_for(
    c: &reqwest::Client,
    sim: &Sim,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(c, sim).await;
        if pred(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last page:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_names_types_labels_buckets() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "5",
        "--tokens-per-second",
        "1000",
        "--max-tokens-default",
        "6",
    ]);
    let c = client();
    let r = c.get(sim.url("/metrics")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (s, _, _) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hello world"}]}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    let page = scrape(&c, &sim).await;
    for (name, kind) in [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:num_preemptions_total", "counter"),
        ("vllm:prompt_tokens_total", "counter"),
        ("vllm:generation_tokens_total", "counter"),
        ("vllm:request_success_total", "counter"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
        ("vllm:time_to_first_token_seconds", "histogram"),
        ("vllm:inter_token_latency_seconds", "histogram"),
        ("vllm:request_time_per_output_token_seconds", "histogram"),
        ("vllm:e2e_request_latency_seconds", "histogram"),
        ("vllm:request_queue_time_seconds", "histogram"),
        ("vllm:request_inference_time_seconds", "histogram"),
        ("vllm:request_prefill_time_seconds", "histogram"),
        ("vllm:request_decode_time_seconds", "histogram"),
        ("vllm:request_prompt_tokens", "histogram"),
        ("vllm:request_generation_tokens", "histogram"),
        ("vllm:request_params_n", "histogram"),
        ("vllm:request_params_max_tokens", "histogram"),
        ("vllm_sim_aborted_requests_total", "counter"),
        ("vllm:num_requests_waiting_by_reason", "gauge"),
        ("vllm:engine_sleep_state", "gauge"),
        ("vllm:prompt_tokens_cached_total", "counter"),
        ("vllm:iteration_tokens_total", "histogram"),
        ("vllm:cache_config_info", "gauge"),
        ("http_requests_total", "counter"),
    ] {
        assert!(
            page.contains(&format!("\n# TYPE {name} {kind}\n")),
            "missing TYPE of {name}\n{page}"
        );
    }
    // Every sample line: name{labels} float; vllm: series label model_name then engine
    // (but vllm:cache_config_info, whose labels are the cache settings, as in vLLM), and
    // http_requests_* carry the instrumentator's handler, method, status.
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        assert!(
            value.contains('.') || value.contains('e') || value.contains("Inf"),
            "python float: {line}"
        );
        if series.starts_with("http_requests_") {
            assert!(series.contains("{handler=\""), "{line}");
        } else if !series.starts_with("vllm:cache_config_info{") {
            assert!(
                series.contains("{model_name=\"sim-model\",engine=\"0\""),
                "{line}"
            );
        }
    }
    let les = |name: &str| -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
            .map(|l| {
                l.split("le=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        les("vllm:time_to_first_token_seconds").join(","),
        "0.001,0.005,0.01,0.02,0.04,0.06,0.08,0.1,0.25,0.5,0.75,1.0,2.5,5.0,7.5,10.0,20.0,40.0,80.0,160.0,640.0,2560.0,+Inf"
    );
    assert_eq!(
        les("vllm:inter_token_latency_seconds").join(","),
        "0.01,0.025,0.05,0.075,0.1,0.15,0.2,0.3,0.4,0.5,0.75,1.0,2.5,5.0,7.5,10.0,20.0,40.0,80.0,+Inf"
    );
    assert_eq!(
        les("vllm:e2e_request_latency_seconds").join(","),
        "0.3,0.5,0.8,1.0,1.5,2.0,2.5,5.0,10.0,15.0,20.0,30.0,40.0,50.0,60.0,120.0,240.0,480.0,960.0,1920.0,7680.0,+Inf"
    );
    assert_eq!(
        les("vllm:request_queue_time_seconds"),
        les("vllm:e2e_request_latency_seconds")
    );
    assert_eq!(
        les("vllm:request_prompt_tokens").join(","),
        "1.0,2.0,5.0,10.0,20.0,50.0,100.0,200.0,500.0,1000.0,2000.0,5000.0,10000.0,20000.0,+Inf"
    );
    assert_eq!(
        les("vllm:request_params_n").join(","),
        "1.0,2.0,5.0,10.0,20.0,+Inf"
    );
    // Values after one request of 6 tokens.
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"stop\"}"
        ),
        Some(1.0)
    );
    for reason in ["length", "abort", "error", "repetition"] {
        let s = format!(
            "vllm:request_success_total{{model_name=\"sim-model\",engine=\"0\",finished_reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&page, &s), Some(0.0), "{s}");
    }
    assert_eq!(
        metric(&page, &series("vllm:generation_tokens_total")),
        Some(6.0)
    );
    assert!(metric(&page, &series("vllm:prompt_tokens_total")).unwrap() >= 5.0);
    assert_eq!(
        metric(&page, &series("vllm:e2e_request_latency_seconds_count")),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:time_to_first_token_seconds_count")),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:inter_token_latency_seconds_count")),
        Some(5.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:request_generation_tokens_sum")),
        Some(6.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:num_requests_running")),
        Some(0.0)
    );
    let ttft_sum = metric(&page, &series("vllm:time_to_first_token_seconds_sum")).unwrap();
    assert!(ttft_sum >= 0.005, "ttft {ttft_sum}");
    // The families added after vLLM 0.11 (vllm/v1/metrics/loggers.py) and the HTTP layer.
    assert!(page.contains("# TYPE vllm:num_requests_waiting_by_reason gauge\n"));
    assert_eq!(
        metric(
            &page,
            "vllm:num_requests_waiting_by_reason{model_name=\"sim-model\",engine=\"0\",reason=\"capacity\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &page,
            "vllm:num_requests_waiting_by_reason{model_name=\"sim-model\",engine=\"0\",reason=\"deferred\"}"
        ),
        Some(0.0)
    );
    for (state, v) in [
        ("awake", 1.0),
        ("weights_offloaded", 0.0),
        ("discard_all", 0.0),
    ] {
        let s = format!(
            "vllm:engine_sleep_state{{model_name=\"sim-model\",engine=\"0\",sleep_state=\"{state}\"}}"
        );
        assert_eq!(metric(&page, &s), Some(v), "{s}");
    }
    assert_eq!(
        metric(&page, &series("vllm:prompt_tokens_cached_total")),
        Some(0.0)
    );
    assert!(page.contains("# TYPE vllm:prompt_tokens_cached_total counter\n"));
    assert!(page.contains("# TYPE vllm:iteration_tokens_total histogram\n"));
    assert_eq!(
        les("vllm:iteration_tokens_total").join(","),
        "1.0,8.0,16.0,32.0,64.0,128.0,256.0,512.0,1024.0,2048.0,4096.0,8192.0,16384.0,+Inf"
    );
    // One prefill step plus five decode steps of one token.
    assert_eq!(
        metric(&page, &series("vllm:iteration_tokens_total_count")),
        Some(6.0)
    );
    assert!(page.contains(
        "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"4096\",engine=\"0\"} 1.0\n"
    ));
    assert_eq!(
        metric(
            &page,
            "http_requests_total{handler=\"/v1/chat/completions\",method=\"POST\",status=\"2xx\"}"
        ),
        Some(1.0)
    );
    // vLLM excludes /metrics and /health from the instrumentator.
    assert!(!page.contains("handler=\"/metrics\""));
    // An unknown path is counted under handler "none" (never the raw path).
    let (s, _, _) = get(&c, &sim.url("/no/such/route")).await;
    assert_eq!(s, 404);
    let page2 = scrape(&c, &sim).await;
    assert_eq!(
        metric(
            &page2,
            "http_requests_total{handler=\"none\",method=\"GET\",status=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert!(!page2.contains("/no/such/route"));
    // A request-level engine error (vLLM's GenerationError, "Internal server error") counts
    // as finished_reason="error".
    let (s, _, _) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        &[("x-sim-behavior", "error")],
    )
    .await;
    assert_eq!(s, 500);
    let page = scrape(&c, &sim).await;
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"error\"}"
        ),
        Some(1.0)
    );
    // A bare 500 from the HTTP layer (vLLM's handler for EngineDeadError / RuntimeError)
    // is not a finished request: request_success stays, http_requests_total counts a 5xx.
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        &[("x-sim-behavior", "error-empty")],
    )
    .await;
    assert_eq!((s, t.as_str()), (500, ""));
    let page = scrape(&c, &sim).await;
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"error\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "http_requests_total{handler=\"/v1/chat/completions\",method=\"POST\",status=\"5xx\"}"
        ),
        Some(2.0)
    );
}

/// `x-sim-behavior: engine-death` kills the engine: that request and every later one get
/// vLLM's bare 500, `/health` answers 503, nothing counts as finished (not even as
/// finished_reason="error"), and only http_requests_total{status="5xx"} grows.
#[tokio::test]
async fn engine_death_fails_requests_and_health_but_counts_no_finished_request() {
    let sim = Sim::start(&["--ttft-ms", "1", "--tokens-per-second", "0"]);
    let c = client();
    let body = r#"{"messages":[{"role":"user","content":"hello"}]}"#;
    let (s, _, _) = post(&c, &sim.url(CHAT), body, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(get(&c, &sim.url("/health")).await.0, 200);
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        body,
        &[("x-sim-behavior", "engine-death")],
    )
    .await;
    assert_eq!((s, t.as_str()), (500, ""));
    assert_eq!(get(&c, &sim.url("/health")).await.0, 503);
    for stream in [false, true] {
        let b =
            format!(r#"{{"messages":[{{"role":"user","content":"again"}}],"stream":{stream}}}"#);
        let (s, _, t) = post(&c, &sim.url(CHAT), &b, &[]).await;
        assert_eq!((s, t.as_str()), (500, ""), "stream={stream}");
    }
    // Validation still answers before the engine is asked (as in vLLM).
    let (s, _, _) = post(&c, &sim.url(CHAT), r#"{"model":"nope","messages":[]}"#, &[]).await;
    assert_eq!(s, 404);
    // /v1/models does not need the engine.
    assert_eq!(get(&c, &sim.url("/v1/models")).await.0, 200);
    let page = scrape(&c, &sim).await;
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"stop\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"error\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &page,
            "http_requests_total{handler=\"/v1/chat/completions\",method=\"POST\",status=\"5xx\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &page,
            "http_requests_total{handler=\"/v1/chat/completions\",method=\"POST\",status=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "http_requests_total{handler=\"/v1/models\",method=\"GET\",status=\"2xx\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn max_concurrency_queues_the_rest() {
    let sim = Sim::start(&[
        "--max-concurrency",
        "1",
        "--ttft-ms",
        "300",
        "--tokens-per-second",
        "0",
        "--max-tokens-default",
        "2",
    ]);
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        let url = sim.url(CHAT);
        tasks.push(tokio::spawn(async move {
            post(
                &c,
                &url,
                r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
                &[],
            )
            .await
            .0
        }));
    }
    let running = series("vllm:num_requests_running");
    let waiting = series("vllm:num_requests_waiting");
    wait_for(&c, &sim, "1 running and 2 waiting", |p| {
        metric(p, &running) == Some(1.0) && metric(p, &waiting) == Some(2.0)
    })
    .await;
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap(),
            200
        );
    }
    let page = scrape(&c, &sim).await;
    assert_eq!(metric(&page, &running), Some(0.0));
    assert_eq!(metric(&page, &waiting), Some(0.0));
    assert_eq!(
        metric(&page, &series("vllm:request_queue_time_seconds_count")),
        Some(3.0)
    );
    // Queue times are about 0, 0.3 and 0.6 s.
    let q = metric(&page, &series("vllm:request_queue_time_seconds_sum")).unwrap();
    assert!(q >= 0.8, "queue time sum {q}");
    let ttft_over_half = metric(
        &page,
        "vllm:time_to_first_token_seconds_bucket{model_name=\"sim-model\",engine=\"0\",le=\"0.5\"}",
    )
    .unwrap();
    assert!(ttft_over_half <= 2.0, "the third request waited > 0.5 s");
}

#[tokio::test]
async fn kv_cache_usage_and_preemption() {
    // Prompt ~5 tokens each, 60 output tokens each, budget 70 tokens: they cannot all grow.
    let sim = Sim::start(&[
        "--kv-cache-tokens",
        "70",
        "--ttft-ms",
        "10",
        "--tokens-per-second",
        "200",
        "--max-tokens-default",
        "60",
    ]);
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..2 {
        let c = c.clone();
        let url = sim.url(CHAT);
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"hi {i}"}}]}}"#);
            post(&c, &url, &body, &[]).await
        }));
    }
    let kv = series("vllm:kv_cache_usage_perc");
    wait_for(&c, &sim, "kv usage > 0.3", |p| {
        metric(p, &kv).unwrap_or(0.0) > 0.3
    })
    .await;
    for t in tasks {
        let (s, _, body) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, 200);
        assert!(body.contains("\"completion_tokens\":60"), "{body}");
    }
    let page = scrape(&c, &sim).await;
    assert!(
        metric(&page, &series("vllm:num_preemptions_total")).unwrap() >= 1.0,
        "{page}"
    );
    assert_eq!(metric(&page, &kv), Some(0.0));
}

#[tokio::test]
async fn client_disconnect_aborts() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "10",
        "--tokens-per-second",
        "20",
        "--max-tokens-default",
        "200",
    ]);
    let c = client();
    let r = c
        .post(sim.url(CHAT))
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"tell me everything"}],"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: "));
    let running = series("vllm:num_requests_running");
    assert_eq!(metric(&scrape(&c, &sim).await, &running), Some(1.0));
    drop(body);
    let aborted = series("vllm_sim_aborted_requests_total");
    let page = wait_for(&c, &sim, "abort", |p| {
        metric(p, &aborted) == Some(1.0) && metric(p, &running) == Some(0.0)
    })
    .await;
    // vLLM V1 does not record aborts in request_success nor the histograms ...
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total{model_name=\"sim-model\",engine=\"0\",finished_reason=\"abort\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:e2e_request_latency_seconds_count")),
        Some(0.0)
    );
    // ... but the prefill was counted.
    assert!(metric(&page, &series("vllm:prompt_tokens_total")).unwrap() > 0.0);
    // The generation really stopped.
    let g1 = metric(&page, &series("vllm:generation_tokens_total")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g2 = metric(
        &scrape(&c, &sim).await,
        &series("vllm:generation_tokens_total"),
    )
    .unwrap();
    assert_eq!(g1, g2);
    assert!(g1 < 200.0);

    // A non-streaming request cut by the client is aborted too.
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        c.post(sim.url(CHAT))
            .body(r#"{"messages":[{"role":"user","content":"x"}]}"#)
            .send(),
    )
    .await;
    assert!(r.is_err(), "should still be generating");
    wait_for(&c, &sim, "second abort", |p| {
        metric(p, &aborted) == Some(2.0) && metric(p, &running) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_then_exits() {
    let mut sim = Sim::start(&[
        "--ttft-ms",
        "10",
        "--tokens-per-second",
        "50",
        "--max-tokens-default",
        "20",
    ]);
    let c = client();
    let r = c
        .post(sim.url(CHAT))
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#)
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = Vec::new();
    text.extend_from_slice(&body.next().await.unwrap().unwrap());
    let st = std::process::Command::new("kill")
        .args(["-TERM", &sim.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The stream in flight still completes ...
    while let Some(part) = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
    {
        text.extend_from_slice(&part.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // ... then the process exits cleanly by itself.
    let status = tokio::task::spawn_blocking(move || {
        let s = sim.wait_exit(Duration::from_secs(10));
        (s, sim.stderr.lock().unwrap().clone())
    })
    .await
    .unwrap();
    let (status, log) = status;
    let status = status.expect("vllm-sim did not exit on SIGTERM");
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn env_vars_configure_flags() {
    let bin = env!("CARGO_BIN_EXE_vllm-sim");
    let out = std::process::Command::new(bin)
        .env("VLLM_SIM_ERROR_RATIO", "1.5")
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--error-ratio must be between 0 and 1"),
        "{err}"
    );
}

/// Automatic prefix caching: the counters count tokens like vLLM (queries = prompt tokens,
/// hits = whole cached blocks, at most prompt - 1 tokens), only a shared *prefix* hits,
/// and prefill time follows the uncached tokens (`--prefill-tokens-per-second`).
#[tokio::test]
async fn prefix_cache_counters_and_prefill_timing() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "0",
        "--tokens-per-second",
        "0",
        "--prefill-tokens-per-second",
        "4000",
        "--max-tokens-default",
        "1",
    ]);
    let c = client();
    // ~4000 tokens of system prompt: 16000 characters.
    let system: String = "abcd".repeat(4000);
    let body = |sys: &str, user: &str| {
        serde_json::json!({"messages": [
            {"role": "system", "content": sys},
            {"role": "user", "content": user},
        ]})
        .to_string()
    };
    let q = series("vllm:prefix_cache_queries_total");
    let h = series("vllm:prefix_cache_hits_total");
    let cached = series("vllm:prompt_tokens_cached_total");

    let t = Instant::now();
    let (s, _, b1) = post(&c, &sim.url(CHAT), &body(&system, "first question"), &[]).await;
    let cold = t.elapsed();
    assert_eq!(s, 200, "{b1}");
    let v: serde_json::Value = serde_json::from_str(&b1).unwrap();
    let p1 = v["usage"]["prompt_tokens"].as_u64().unwrap();
    // 3 + (4 + 4000) + (4 + 4) tokens.
    assert_eq!(p1, 4015);
    // Nothing cached yet: the whole prompt is prefilled at 4000 tokens/s.
    assert!(
        cold >= Duration::from_millis(950),
        "cold prefill took {cold:?}"
    );
    let page = scrape(&c, &sim).await;
    assert_eq!(metric(&page, &q), Some(4015.0));
    assert_eq!(metric(&page, &h), Some(0.0));

    // Same system prompt, another question: every full block of the shared prefix hits.
    let t = Instant::now();
    let (s, _, b2) = post(&c, &sim.url(CHAT), &body(&system, "second question!"), &[]).await;
    let warm = t.elapsed();
    assert_eq!(s, 200, "{b2}");
    let page = scrape(&c, &sim).await;
    let p2 = 4015.0;
    assert_eq!(metric(&page, &q), Some(4015.0 + p2));
    // The system message ends at token 3 + 3 + 4000 + 1 = 4007: 250 whole blocks (4000
    // tokens) are shared; block 251 holds the end marker and the user message header.
    let hits = metric(&page, &h).unwrap();
    assert_eq!(hits, 4000.0, "{page}");
    assert_eq!(metric(&page, &cached), Some(hits));
    assert!(
        warm < cold / 2,
        "warm request ({warm:?}) should prefill ~15 tokens, cold took {cold:?}"
    );

    // A different first block: nothing hits, although the rest is the same.
    let mut other = system.clone();
    other.replace_range(0..4, "zzzz");
    let (s, _, _) = post(&c, &sim.url(CHAT), &body(&other, "first question"), &[]).await;
    assert_eq!(s, 200);
    let page = scrape(&c, &sim).await;
    assert_eq!(metric(&page, &h), Some(4000.0));
    assert_eq!(metric(&page, &q), Some(3.0 * 4015.0));
    // Idle engine: cached blocks are free (evictable), so the usage is 0 like vLLM's.
    assert_eq!(
        metric(&page, &series("vllm:kv_cache_usage_perc")),
        Some(0.0)
    );
}

/// The next turn of a conversation resends the answer: it hits the blocks of the previous
/// prompt *and* answer. Turning caching off keeps both counters at 0 (like vLLM).
#[tokio::test]
async fn next_turn_hits_prompt_and_answer() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "0",
        "--tokens-per-second",
        "0",
        "--max-tokens-default",
        "200",
    ]);
    let off = Sim::start(&[
        "--ttft-ms",
        "0",
        "--tokens-per-second",
        "0",
        "--no-enable-prefix-caching",
    ]);
    let c = client();
    let first = serde_json::json!({"messages": [
        {"role": "system", "content": "x".repeat(400)},
        {"role": "user", "content": "tell me a story"},
    ]});
    let (s, _, b) = post(&c, &sim.url(CHAT), &first.to_string(), &[]).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    let p1 = v["usage"]["prompt_tokens"].as_f64().unwrap();
    let mut msgs = first["messages"].as_array().unwrap().clone();
    msgs.push(serde_json::json!({"role": "assistant", "content": answer}));
    msgs.push(serde_json::json!({"role": "user", "content": "and then?"}));
    let second = serde_json::json!({ "messages": msgs }).to_string();
    let (s, _, b) = post(&c, &sim.url(CHAT), &second, &[]).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let p2 = v["usage"]["prompt_tokens"].as_f64().unwrap();
    let page = scrape(&c, &sim).await;
    let hits = metric(&page, &series("vllm:prefix_cache_hits_total")).unwrap();
    // More than the first prompt hit: the answer's blocks were cached too.
    assert!(hits > p1, "hits {hits}, first prompt {p1}");
    assert!(
        hits <= p2 - 1.0 && hits % 16.0 == 0.0,
        "hits {hits}, prompt {p2}"
    );

    for _ in 0..2 {
        let (s, _, _) = post(&c, &off.url(CHAT), &first.to_string(), &[]).await;
        assert_eq!(s, 200);
    }
    let page = scrape(&c, &off).await;
    assert_eq!(
        metric(&page, &series("vllm:prefix_cache_queries_total")),
        Some(0.0)
    );
    assert_eq!(
        metric(&page, &series("vllm:prefix_cache_hits_total")),
        Some(0.0)
    );
    assert!(page.contains("enable_prefix_caching=\"False\""));
}

/// `--speed-factor 0.5`: the same request takes about twice as long.
#[tokio::test]
async fn speed_factor_slows_decode_and_prefill() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "100",
        "--tokens-per-second",
        "100",
        "--max-tokens-default",
        "20",
        "--speed-factor",
        "0.5",
    ]);
    let c = client();
    let t = Instant::now();
    let (s, _, _) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    // Full speed: 100 ms + 19 steps of 10 ms = 290 ms; half speed: 580 ms.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(560), "took {took:?}");
}
