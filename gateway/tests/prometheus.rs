//! `/metrics`: contract names, vLLM buckets, bounded labels, process metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() {
    let sim = start_sim(fast_sim()).await;
    let cfg = format!(
        "[pools.main]\nendpoints = [\"{}\"]\n[routing]\ndefault_pool = \"main\"\n[models.m]\nprompt_usd_per_million_tokens = 1.0\ncompletion_usd_per_million_tokens = 1.0\n",
        sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let c = client();
    for stream in [false, true, false, true] {
        let r = c
            .post(gw.chat_url())
            .json(&chat("m", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let r = c
        .post(gw.chat_url())
        .header("x-sim-behavior", "refuse")
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    r.text().await.unwrap();
    let r = c
        .post(gw.chat_url())
        .json(&chat("zzz-unknown", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.wait_events(6).await;

    let resp = c.get(format!("{}/metrics", gw.url)).send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let m = resp.text().await.unwrap();
    let expect = [
        (
            "llm_gateway_requests_total{route=\"/v1/chat/completions\",model=\"m\",tenant=\"anonymous\",status=\"200\",finish_reason=\"stop\"}",
            5.0,
        ),
        (
            "llm_gateway_requests_total{route=\"/v1/chat/completions\",model=\"other\",tenant=\"anonymous\",status=\"404\",finish_reason=\"none\"}",
            1.0,
        ),
        (
            "llm_gateway_request_duration_seconds_count{route=\"/v1/chat/completions\",model=\"m\"}",
            5.0,
        ),
        (
            "llm_gateway_time_to_first_token_seconds_count{model=\"m\"}",
            2.0,
        ),
        (
            "llm_gateway_refusals_total{model=\"m\",tenant=\"anonymous\",kind=\"full\"}",
            1.0,
        ),
        ("llm_gateway_in_flight_requests{model=\"m\"}", 0.0),
        (
            "llm_gateway_upstream_errors_total{upstream=\"main\",kind=\"http_4xx\"}",
            1.0,
        ),
        ("llm_gateway_events_written_total", 6.0),
        ("llm_gateway_events_dropped_total", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&m, series), Some(want), "{series}\n{m}");
    }
    let completion = metric(
        &m,
        "llm_gateway_tokens_total{model=\"m\",tenant=\"anonymous\",kind=\"completion\"}",
    )
    .unwrap();
    assert!(completion >= 40.0, "{completion}");
    let cost = metric(
        &m,
        "llm_gateway_cost_usd_total{model=\"m\",tenant=\"anonymous\"}",
    )
    .unwrap();
    assert!(cost > 0.0);
    let sim_label = sim.url.trim_start_matches("http://");
    assert_eq!(
        metric(
            &m,
            &format!("llm_gateway_upstream_up{{upstream=\"main\",endpoint=\"{sim_label}\"}}")
        ),
        Some(1.0)
    );
    // vLLM's buckets.
    assert!(m.contains("llm_gateway_time_to_first_token_seconds_bucket{le=\"0.001\",model=\"m\"}"));
    assert!(
        m.contains("llm_gateway_time_to_first_token_seconds_bucket{le=\"2560.0\",model=\"m\"}")
    );
    assert!(m.contains("llm_gateway_request_duration_seconds_bucket{le=\"0.3\",route=\"/v1/chat/completions\",model=\"m\"}"));
    assert!(m.contains("llm_gateway_request_duration_seconds_bucket{le=\"7680.0\",route=\"/v1/chat/completions\",model=\"m\"}"));
    assert!(m.contains("llm_gateway_build_info{version=\""));
    for p in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "process_max_fds",
    ] {
        assert!(metric(&m, p).unwrap() > 0.0, "{p}");
    }
    // No raw client-provided model names as labels.
    assert!(!m.contains("zzz-unknown"));
}
