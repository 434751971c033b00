//! Errors: the gateway's own in the OpenAI shape with the right status,
//! upstream errors relayed and normalised, mid-stream errors as one event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_input_gets_openai_errors() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nmax_body_bytes = 2048\n"),
    );
    let c = client();
    // A refused upload's answer says `Connection: close` (its body was not read),
    // so the pooled client opens a new connection for the next case.
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "bad-json",
            c.post(gw.chat_url())
                .header("content-type", "application/json")
                .body("{\"model\": "),
            400,
            "invalid_request",
        ),
        (
            "model-not-a-string",
            c.post(gw.chat_url())
                .json(&json!({"model": 5, "messages": []})),
            400,
            "invalid_request",
        ),
        (
            "array",
            c.post(gw.chat_url()).body("[1,2]"),
            400,
            "invalid_request",
        ),
        (
            "too-large",
            c.post(gw.chat_url()).json(
                &json!({"model":"m","messages":[{"role":"user","content":"x".repeat(5000)}]}),
            ),
            413,
            "request_too_large",
        ),
        (
            "too-large-chunked",
            c.post(gw.chat_url())
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    (0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])),
                ))),
            413,
            "request_too_large",
        ),
        // Unknown routes are relayed: the upstream's 404, not a model_not_found.
        (
            "unknown-route",
            c.post(format!("{}/v1/nope", gw.url)),
            404,
            "upstream_error",
        ),
        ("get-chat", c.get(gw.chat_url()), 405, "method_not_allowed"),
    ];
    for (id, req, status, error_type) in cases {
        let resp = req.header("x-request-id", id).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{id}");
        assert_eq!(resp.headers()["x-request-id"], id);
        assert_openai_error(&resp.text().await.unwrap());
        let ev = gw.event_for(id).await;
        assert_eq!(ev["status"], status, "{id}");
        assert_eq!(ev["error_type"], error_type, "{id}");
        assert_eq!(ev["level"], "warn", "{id}");
    }
    // Unknown model: the upstream's 404 is relayed as is; the event names the cause.
    let resp = gw
        .post_chat("unknown-model", &chat("no-such-model", false), &[])
        .await;
    assert_eq!(resp.status(), 404);
    let err = assert_openai_error(&resp.text().await.unwrap());
    assert_eq!(err["type"], "NotFoundError");
    let ev = gw.event_for("unknown-model").await;
    assert_eq!(ev["error_type"], "model_not_found");
    assert_eq!(ev["model"], "no-such-model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_not_in_any_pool_is_404() {
    let sim = start_sim(fast_sim()).await;
    let cfg = format!(
        "[pools.main]\nendpoints = [\"{}\"]\n[models.m]\npool = \"main\"\n",
        sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let resp = gw.post_chat("nf", &chat("other-model", false), &[]).await;
    assert_eq!(resp.status(), 404);
    let err = assert_openai_error(&resp.text().await.unwrap());
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(err["param"], "model");
    assert_eq!(gw.event_for("nf").await["error_type"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_timeout_is_504() {
    let dead = dead_url();
    let gw = Gateway::start(&["--upstream", &dead], None);
    for stream in [false, true] {
        let id = format!("down-{stream}");
        let resp = gw.post_chat(&id, &chat("m", stream), &[]).await;
        assert_eq!(resp.status(), 502);
        let err = assert_openai_error(&resp.text().await.unwrap());
        assert_eq!(err["code"], "upstream_unreachable");
        let ev = gw.event_for(&id).await;
        assert_eq!(ev["status"], 502);
        assert_eq!(ev["error_type"], "upstream_unreachable");
        assert_eq!(ev["level"], "error");
        assert_eq!(ev["upstream"], "default");
    }

    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[timeouts]\nfirst_byte_ms = 300\nidle_ms = 300\n"),
    );
    for stream in [false, true] {
        let id = format!("slow-{stream}");
        let resp = gw
            .post_chat(&id, &chat("m", stream), &[("x-sim-ttft-ms", "3000")])
            .await;
        assert_eq!(resp.status(), 504, "{id}");
        let err = assert_openai_error(&resp.text().await.unwrap());
        assert_eq!(err["code"], "upstream_timeout");
        let ev = gw.event_for(&id).await;
        assert_eq!(ev["error_type"], "upstream_timeout");
    }
    // Idle timeout after the stream started: one error event, then [DONE].
    let resp = gw
        .post_chat(
            "idle",
            &chat("m", true),
            &[
                ("x-sim-tokens-per-second", "1"),
                ("x-sim-output-tokens", "5"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let payloads = sse_payloads(resp).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let err = &payloads[payloads.len() - 2];
    assert_openai_error(err);
    let ev = gw.event_for("idle").await;
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["finish_reason"], "timeout");
    assert_eq!(ev["error_type"], "upstream_timeout");
    assert_eq!(ev["level"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_shapes_are_relayed_and_normalised() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    for (behavior, status, typ) in [
        ("error", 500, "InternalServerError"),
        ("error-flat", 500, "InternalServerError"),
        ("error-empty", 500, "server_error"),
        ("unauthorized", 401, "authentication_error"),
    ] {
        for stream in [false, true] {
            let id = format!("{behavior}-{stream}");
            let resp = gw
                .post_chat(&id, &chat("m", stream), &[("x-sim-behavior", behavior)])
                .await;
            assert_eq!(resp.status().as_u16(), status, "{id}");
            let err = assert_openai_error(&resp.text().await.unwrap());
            assert_eq!(err["type"], typ, "{id}");
            let ev = gw.event_for(&id).await;
            assert_eq!(ev["status"], status);
            let want = if status == 401 {
                "upstream_auth"
            } else {
                "upstream_error"
            };
            assert_eq!(ev["error_type"], want, "{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_error_is_one_event_then_done() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let resp = gw
        .post_chat(
            "mid",
            &chat("m", true),
            &[("x-sim-behavior", "error-midstream")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let payloads = sse_payloads(resp).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let errors: Vec<&String> = payloads
        .iter()
        .filter(|p| p.contains("\"error\""))
        .collect();
    assert_eq!(errors.len(), 1, "{payloads:?}");
    assert_openai_error(errors[0]);
    let ev = gw.event_for("mid").await;
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["error_type"], "stream_error");
    assert_eq!(ev["finish_reason"], "error");
    assert_eq!(ev["level"], "error");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "llm_gateway_upstream_errors_total{upstream=\"default\",kind=\"stream\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nmax_concurrent_requests = 1\nretry_after_secs = 3\n"),
    );
    let c = client();
    let slow = c
        .post(gw.chat_url())
        .header("x-sim-ttft-ms", "2000")
        .json(&chat("m", false))
        .send();
    let slow = tokio::spawn(slow);
    gw.wait_in_flight(1.0).await;
    let resp = gw.post_chat("over", &chat("m", false), &[]).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let err = assert_openai_error(&resp.text().await.unwrap());
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(gw.event_for("over").await["error_type"], "rate_limited");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}
