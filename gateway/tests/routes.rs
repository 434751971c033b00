//! Routes beyond chat/completions/embeddings: relayed as they are (method, path, query,
//! body) through the same admission as the others: a multipart upload streams through
//! within the same size, time and rate bounds, each request has one event with its
//! bounded `route` label.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::response::IntoResponse;
use common::*;
use serde_json::{Value, json};

fn multipart(model: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "gw-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn ok_json() -> axum::response::Response {
    (
        [("content-type", "application/json")],
        r#"{"text":"ok","usage":{"type":"duration","seconds":1}}"#,
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_streams_through_with_its_model() {
    let mock = start_mock(|_| ok_json()).await;
    let gw = Gateway::start(&["--upstream", &mock.url], None);
    let file: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (ct, body) = multipart("whisper-large", &file);
    // Sent in pieces with no content-length: the gateway cannot buffer by size up front.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(format!("{}/v1/audio/transcriptions?x=1", gw.url))
        .header("content-type", ct)
        .header("x-request-id", "mp-1")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"text":"ok","usage":{"type":"duration","seconds":1}}"#
    );
    {
        let seen = mock.seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.path, "/v1/audio/transcriptions");
        assert_eq!(
            last.body.len(),
            body.len(),
            "the whole upload reached the upstream"
        );
        assert!(last.body[..] == body[..]);
    }
    let ev = gw.event_for("mp-1").await;
    assert_eq!(ev["route"], "/v1/audio/transcriptions");
    assert_eq!(ev["model"], "whisper-large");
    assert_eq!(ev["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_upload_keeps_the_body_bounds() {
    let mock = start_mock(|_| ok_json()).await;
    let gw = Gateway::start(
        &["--upstream", &mock.url],
        Some("[server]\nmax_body_bytes = 100000\nbody_read_timeout_ms = 800\n"),
    );
    // Too large, without content-length: cut at the limit, 413 and its event.
    let (ct, body) = multipart("m", &vec![7u8; 300_000]);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(format!("{}/v1/audio/translations", gw.url))
        .header("content-type", ct.clone())
        .header("x-request-id", "mp-big")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_openai_error(&resp.text().await.unwrap());
    let ev = gw.event_for("mp-big").await;
    assert_eq!(ev["status"], 413);
    assert_eq!(ev["error_type"], "request_too_large");
    assert_eq!(ev["route"], "/v1/audio/translations");

    // Too slow: the model field arrives, then the upload stalls past the body timeout.
    let (ct, body) = multipart("m", &[1u8; 1000]);
    let (head, tail) = body.split_at(200);
    let (head, tail) = (head.to_vec(), tail.to_vec());
    let slow = futures_util::stream::unfold(0, move |i| {
        let (head, tail) = (head.clone(), tail.clone());
        async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(head), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Some((Ok(tail), 2))
                }
                _ => None,
            }
        }
    });
    let resp = client()
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .header("content-type", ct)
        .header("x-request-id", "mp-slow")
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    let ev = gw.event_for("mp-slow").await;
    assert_eq!(ev["error_type"], "request_timeout");
    assert_eq!(ev["model"], "m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_routes_keep_method_path_and_query() {
    let mock = start_mock(|s| {
        if s.path == "/v1/responses" {
            // A background response: queued, no usage yet.
            ([("content-type", "application/json")], r#"{"id":"resp_2","object":"response","model":"m","status":"queued","background":true,"output":[],"usage":null}"#).into_response()
        } else if s.path == "/v1/responses/resp_2" {
            // `GET /v1/responses/{id}?stream=true`: vLLM replays the events.
            ([("content-type", "text/event-stream")], "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":0,\"response\":{\"object\":\"response\",\"model\":\"m\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":1,\"output_tokens\":4}}}\n\n").into_response()
        } else if s.path == "/v1/responses/resp_1" {
            ([("content-type", "application/json")], r#"{"id":"resp_1","object":"response","model":"m","status":"completed","output":[],"usage":{"input_tokens":1,"output_tokens":2}}"#).into_response()
        } else {
            (axum::http::StatusCode::NOT_FOUND, [("content-type", "application/json")], r#"{"detail":"Not Found"}"#).into_response()
        }
    })
    .await;
    let gw = Gateway::start(&["--upstream", &mock.url], None);
    let c = client();
    let r = c
        .get(format!("{}/v1/responses/resp_1?stream=false", gw.url))
        .header("x-request-id", "get-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = gw.event_for("get-1").await;
    assert_eq!(ev["route"], "/v1/responses/{id}");
    assert_eq!(ev["model"], "m", "learnt from the answer");
    assert_eq!(
        ev["completion_tokens"],
        Value::Null,
        "a response this gateway did not see made: its usage is not this request's work"
    );
    // A background response: made without usage, which comes with the first
    // retrieval that has it, once, however often the client polls.
    let r = c
        .post(format!("{}/v1/responses", gw.url))
        .header("x-request-id", "bg")
        .json(&json!({"model": "m", "input": "hi", "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.event_for("bg").await["completion_tokens"], Value::Null);
    for (i, want) in [(0, json!(4)), (1, Value::Null)] {
        let id = format!("get-sse-{i}");
        let r = c
            .get(format!("{}/v1/responses/resp_2?stream=true", gw.url))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .starts_with("event: response.completed\n")
        );
        let ev = gw.event_for(&id).await;
        assert_eq!(
            ev["status"], 200,
            "an SSE answer of a GET route is relayed as a stream"
        );
        assert_eq!(ev["completion_tokens"], want, "{id}");
    }
    let r = c
        .get(format!("{}/v1/models/some-model", gw.url))
        .header("x-request-id", "get-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the upstream's 404, relayed");
    let ev = gw.event_for("get-2").await;
    assert_eq!(ev["route"], "/v1/models/{id}");
    assert_eq!(ev["model"], "some-model");
    assert_eq!(ev["error_type"], "upstream_error");
    // POST on a GET route: 405 from the gateway, upstream not asked.
    let r = c
        .post(format!("{}/version", gw.url))
        .header("x-request-id", "post-version")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, OPTIONS");
    let seen = mock.seen.lock().unwrap();
    assert!(!seen.iter().any(|s| s.path == "/version"));
    assert!(seen.iter().any(|s| s.path == "/v1/models/some-model"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_routes_share_slots_and_the_drain() {
    let sim = start_sim(sim::SimConfig {
        tokens_per_second: 20.0,
        ..fast_sim()
    })
    .await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nmax_concurrent_requests = 1\nshutdown_grace_secs = 10\n"),
    );
    let c = client();
    // A Responses stream holds the only slot.
    let mut hold = c
        .post(format!("{}/v1/responses", gw.url))
        .header("x-request-id", "hold")
        .header("x-sim-output-tokens", "30")
        .json(&serde_json::json!({"model": "m", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(hold.status(), 200);
    assert!(!hold.chunk().await.unwrap().unwrap().is_empty());
    let r = c
        .post(format!("{}/tokenize", gw.url))
        .header("x-request-id", "no-slot")
        .json(&serde_json::json!({"model": "m", "prompt": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // That answer came before its body was read, so its connection closes; a
    // bodiless request leaves one kept alive in the client's pool.
    assert_eq!(r.headers()["connection"], "close");
    let r = c.get(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Draining: a request on an open keep-alive connection gets 503 and its event.
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .post(format!("{}/v1/rerank", gw.url))
        .header("x-request-id", "draining")
        .json(&serde_json::json!({"model": "m", "query": "q", "documents": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), hold.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("event: response.completed"));
    let (st, gw) = gw.exited(Duration::from_secs(10)).await;
    assert!(
        st.expect("gateway did not exit").success(),
        "{}",
        gw.stderr()
    );
    let events = gw.events();
    let by_id = |id: &str| {
        let mine: Vec<_> = events.iter().filter(|e| e["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "one event for {id}: {events:?}");
        mine[0].clone()
    };
    let e = by_id("hold");
    assert_eq!(
        (e["route"].as_str(), e["finish_reason"].as_str()),
        (Some("/v1/responses"), Some("stop"))
    );
    assert_eq!(e["completion_tokens"], 30);
    let e = by_id("no-slot");
    assert_eq!(
        (e["status"].as_u64(), e["error_type"].as_str()),
        (Some(429), Some("rate_limited"))
    );
    assert_eq!(e["route"], "/tokenize");
    let e = by_id("draining");
    assert_eq!(
        (e["status"].as_u64(), e["error_type"].as_str()),
        (Some(503), Some("shutting_down"))
    );
    assert_eq!(e["route"], "/v1/rerank");
    assert_eq!(events.len(), 3, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_with_listed_origins() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\ncors_allowed_origins = [\"https://app.example\"]\n"),
    );
    let c = client();
    let preflight = |origin: &'static str, id: &'static str| {
        c.request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", gw.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("x-request-id", id)
        .send()
    };
    let ok = preflight("https://app.example", "pf-ok").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers()["vary"], "Origin");
    assert_eq!(ok.headers()["x-request-id"], "pf-ok");
    let bad = preflight("https://evil.example", "pf-bad").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(!bad.headers().contains_key("access-control-allow-origin"));
    // An actual request from a listed origin gets the header; from another, not.
    let r = gw
        .post_chat(
            "cors-1",
            &chat("m", false),
            &[("origin", "https://app.example")],
        )
        .await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = gw
        .post_chat(
            "cors-2",
            &chat("m", false),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // Preflights write no event; the two requests one each.
    gw.event_for("cors-2").await;
    let events = gw.events();
    assert!(
        events
            .iter()
            .all(|e| e["request_id"] != "pf-ok" && e["request_id"] != "pf-bad")
    );
    assert_eq!(events.len(), 2, "{events:?}");
}
