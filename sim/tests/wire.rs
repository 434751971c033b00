//! Wire format of vllm-sim, checked byte by byte against vLLM's shapes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Sim, client, get, post, sse_events};
use serde_json::Value;

const CHAT: &str = "/v1/chat/completions";
const COMPL: &str = "/v1/completions";

fn fast() -> Sim {
    Sim::start(&[
        "--ttft-ms",
        "5",
        "--tokens-per-second",
        "1000",
        "--max-tokens-default",
        "6",
    ])
}

fn j(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Strip the per-response id/created so chunks can be compared literally.
fn normalize(ev: &str) -> String {
    let v = j(ev);
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let created = v["created"].to_string();
    ev.replace(&id, "ID")
        .replace(&format!("\"created\":{created},"), "\"created\":T,")
}

#[tokio::test]
async fn chat_stream_order_and_bytes() {
    let sim = fast();
    let c = client();
    let body = r#"{"model":"sim-model","messages":[{"role":"user","content":"Hello"}],"stream":true,"max_tokens":3}"#;
    let (status, ct, text) = post(&c, &sim.url(CHAT), body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(ct, "text/event-stream; charset=utf-8");
    let evs = sse_events(&text);
    assert_eq!(evs.len(), 5, "role + 3 content + [DONE]: {text}");
    let n: Vec<String> = evs.iter().take(4).map(|e| normalize(e)).collect();
    assert_eq!(
        n[0],
        r#"{"id":"ID","object":"chat.completion.chunk","created":T,"model":"sim-model","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}"#
    );
    let mut content = String::new();
    for (i, ev) in evs[1..4].iter().enumerate() {
        let v = j(ev);
        assert_eq!(v["object"], "chat.completion.chunk");
        assert!(
            v.get("usage").is_none(),
            "no usage key without stream_options: {ev}"
        );
        let ch = &v["choices"][0];
        let piece = ch["delta"]["content"].as_str().unwrap();
        assert!(!piece.is_empty());
        content.push_str(piece);
        let want_tail = if i == 2 {
            r#","logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}"#
        } else {
            r#","logprobs":null,"finish_reason":null,"token_ids":null}]}"#
        };
        assert!(ev.ends_with(want_tail), "chunk {i}: {ev}");
        assert!(ev.starts_with(r#"{"id":"chatcmpl-"#), "{ev}");
    }
    assert!(
        !content.starts_with(' '),
        "chat text starts without a space: {content:?}"
    );
    assert_eq!(evs[4], "[DONE]");
    // All chunks share one id and one created.
    let ids: std::collections::HashSet<_> =
        evs[..4].iter().map(|e| j(e)["id"].to_string()).collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn chat_stream_usage_only_with_stream_options() {
    let sim = fast();
    let c = client();
    // stream_options present => include_usage defaults to true (vLLM).
    let body = r#"{"messages":[{"role":"user","content":"Hello there"}],"stream":true,"stream_options":{}}"#;
    let (_, _, text) = post(&c, &sim.url(CHAT), body, &[]).await;
    let evs = sse_events(&text);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let usage = j(&evs[evs.len() - 2]);
    assert_eq!(usage["choices"], serde_json::json!([]));
    let u = &usage["usage"];
    assert_eq!(u["completion_tokens"], 6);
    let p = u["prompt_tokens"].as_u64().unwrap();
    assert!(p > 0);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + 6);
    assert_eq!(
        normalize(&evs[evs.len() - 2]),
        format!(
            r#"{{"id":"ID","object":"chat.completion.chunk","created":T,"model":"sim-model","choices":[],"usage":{{"prompt_tokens":{p},"total_tokens":{},"completion_tokens":6}}}}"#,
            p + 6
        )
    );
    // Finish chunk is the one before the usage chunk and carries text.
    let fin = j(&evs[evs.len() - 3]);
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    assert!(
        !fin["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    // include_usage false => no usage chunk.
    let body = r#"{"messages":[{"role":"user","content":"Hello"}],"stream":true,"stream_options":{"include_usage":false}}"#;
    let (_, _, text) = post(&c, &sim.url(CHAT), body, &[]).await;
    assert!(!text.contains("\"usage\""), "{text}");
    // continuous_usage_stats => every chunk carries usage.
    let body = r#"{"messages":[{"role":"user","content":"Hello"}],"stream":true,"stream_options":{"continuous_usage_stats":true}}"#;
    let (_, _, text) = post(&c, &sim.url(CHAT), body, &[]).await;
    let evs = sse_events(&text);
    for ev in &evs[..evs.len() - 1] {
        assert!(j(ev)["usage"]["prompt_tokens"].as_u64().is_some(), "{ev}");
    }
}

#[tokio::test]
async fn completions_stream_every_field() {
    let sim = fast();
    let c = client();
    let body = r#"{"model":"sim-model","prompt":"Once upon a time","stream":true,"max_tokens":2,"stream_options":{"include_usage":true}}"#;
    let (status, _, text) = post(&c, &sim.url(COMPL), body, &[]).await;
    assert_eq!(status, 200);
    let evs = sse_events(&text);
    assert_eq!(evs.len(), 4, "{text}");
    let first = normalize(&evs[0]);
    let text0 = j(&evs[0])["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text0.starts_with(' '));
    assert_eq!(
        first,
        format!(
            r#"{{"id":"ID","object":"text_completion","created":T,"model":"sim-model","choices":[{{"index":0,"text":{},"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}}],"usage":null}}"#,
            serde_json::to_string(&text0).unwrap()
        )
    );
    assert_eq!(j(&evs[1])["choices"][0]["finish_reason"], "length");
    assert!(j(&evs[0])["id"].as_str().unwrap().starts_with("cmpl-"));
    let u = j(&evs[2]);
    assert_eq!(u["choices"], serde_json::json!([]));
    assert_eq!(u["usage"]["completion_tokens"], 2);
    assert_eq!(evs[3], "[DONE]");
}

#[tokio::test]
async fn non_stream_shapes() {
    let sim = fast();
    let c = client();
    let (status, ct, text) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"What is 17*23?"}]}]}"#,
        &[],
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v = j(&text);
    assert_eq!(v["object"], "chat.completion");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "service_tier",
        "system_fingerprint",
        "usage",
        "prompt_logprobs",
        "prompt_token_ids",
        "kv_transfer_params",
    ] {
        assert!(keys.contains(&k), "missing {k}: {text}");
    }
    let m = &v["choices"][0]["message"];
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["refusal"], Value::Null);
    assert_eq!(m["tool_calls"], serde_json::json!([]));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["usage"]["prompt_tokens_details"], Value::Null);
    assert!(text.contains(r#""message":{"role":"assistant","content":"#));

    let (status, _, text) = post(
        &c,
        &sim.url(COMPL),
        r#"{"model":"sim-model","prompt":["a","b"],"n":2}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let v = j(&text);
    assert_eq!(v["object"], "text_completion");
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(v["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn n_greater_than_one_streams_interleaved() {
    let sim = fast();
    let c = client();
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"n":2,"max_tokens":3,"stream_options":{}}"#;
    let (_, _, text) = post(&c, &sim.url(CHAT), body, &[]).await;
    let evs = sse_events(&text);
    // 2 role chunks + 2*3 content + usage + DONE
    assert_eq!(evs.len(), 10, "{text}");
    let mut finished = [false; 2];
    for ev in &evs[..8] {
        let v = j(ev);
        let ch = v["choices"].as_array().unwrap();
        assert_eq!(ch.len(), 1, "one choice per chunk");
        let i = ch[0]["index"].as_u64().unwrap() as usize;
        if ch[0]["finish_reason"] == "length" {
            finished[i] = true;
        }
    }
    assert_eq!(finished, [true, true]);
    assert_eq!(j(&evs[0])["choices"][0]["index"], 0);
    assert_eq!(j(&evs[1])["choices"][0]["index"], 1);
    assert_eq!(j(&evs[8])["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn errors_have_vllm_shapes() {
    let sim = fast();
    let c = client();
    let (s, ct, t) = post(
        &c,
        &sim.url(CHAT),
        r#"{"model":"nope","messages":[],"stream":true}"#,
        &[],
    )
    .await;
    assert_eq!((s, ct.as_str()), (404, "application/json"));
    assert_eq!(
        t,
        r#"{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
    );
    let (s, _, t) = post(&c, &sim.url(CHAT), "{not json", &[]).await;
    assert_eq!(s, 400);
    assert_eq!(j(&t)["error"]["code"], 400);
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
        &[],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        j(&t)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream=True")
    );
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":40000}"#,
        &[],
    )
    .await;
    assert_eq!(s, 400);
    assert!(t.contains("maximum context length is 32768 tokens"), "{t}");

    let msg = r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#;
    let (s, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-sim-behavior", "error")]).await;
    assert_eq!(s, 500);
    assert_eq!(
        t,
        r#"{"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}"#
    );
    let (s, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-sim-behavior", "error-flat")]).await;
    assert_eq!(s, 500);
    assert_eq!(j(&t)["object"], "error");
    assert_eq!(j(&t)["code"], 500);
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        msg,
        &[("x-sim-behavior", "error-empty")],
    )
    .await;
    assert_eq!((s, t.as_str()), (500, ""));
    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        msg,
        &[("x-sim-behavior", "unauthorized")],
    )
    .await;
    assert_eq!((s, t.as_str()), (401, r#"{"error":"Unauthorized"}"#));

    let (s, _, t) = post(
        &c,
        &sim.url(CHAT),
        msg,
        &[("x-sim-behavior", "error-midstream")],
    )
    .await;
    assert_eq!(s, 200);
    let evs = sse_events(&t);
    let n = evs.len();
    assert!(n >= 4, "{t}");
    assert_eq!(evs[n - 1], "[DONE]");
    assert_eq!(
        evs[n - 2],
        r#"{"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}"#
    );
    assert!(j(&evs[1])["choices"][0]["delta"]["content"].is_string());
    assert!(!t.contains("finish_reason\":\"stop"));

    let (s, _, t) = get(&c, &sim.url("/nope")).await;
    assert_eq!((s, t.as_str()), (404, r#"{"detail":"Not Found"}"#));
}

#[tokio::test]
async fn behaviours_refuse_length_and_overrides() {
    let sim = fast();
    let c = client();
    let msg = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    let (_, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-sim-behavior", "refuse")]).await;
    let content = j(&t)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        content.contains("sorry")
            || content.contains("can't")
            || content.contains("cannot")
            || content.contains("unable"),
        "{content}"
    );
    assert_eq!(j(&t)["choices"][0]["finish_reason"], "stop");
    let (_, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-sim-behavior", "length")]).await;
    assert_eq!(j(&t)["choices"][0]["finish_reason"], "length");
    let (_, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-sim-output-tokens", "11")]).await;
    assert_eq!(j(&t)["usage"]["completion_tokens"], 11);
    let (_, _, t) = post(&c, &sim.url(CHAT), msg, &[("x-request-id", "abc123")]).await;
    assert_eq!(j(&t)["id"], "chatcmpl-abc123");
    // slow: TTFT x10 (at least 500 ms).
    let start = std::time::Instant::now();
    let (s, _, _) = post(
        &c,
        &sim.url(CHAT),
        msg,
        &[("x-sim-behavior", "slow"), ("x-sim-ttft-ms", "60")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn deterministic_with_seed() {
    let a = Sim::start(&["--ttft-ms", "0", "--tokens-per-second", "0", "--seed", "7"]);
    let b = Sim::start(&["--ttft-ms", "0", "--tokens-per-second", "0", "--seed", "7"]);
    let d = Sim::start(&["--ttft-ms", "0", "--tokens-per-second", "0", "--seed", "8"]);
    let c = client();
    let msg = r#"{"messages":[{"role":"user","content":"Tell me a story"}]}"#;
    let text = |t: &str| {
        j(t)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ta = text(&post(&c, &a.url(CHAT), msg, &[]).await.2);
    let tb = text(&post(&c, &b.url(CHAT), msg, &[]).await.2);
    let td = text(&post(&c, &d.url(CHAT), msg, &[]).await.2);
    assert_eq!(ta, tb);
    assert_ne!(ta, td);
    // Streaming yields the same text as non-streaming.
    let (_, _, st) = post(
        &c,
        &a.url(CHAT),
        r#"{"messages":[{"role":"user","content":"Tell me a story"}],"stream":true}"#,
        &[],
    )
    .await;
    let streamed: String = sse_events(&st)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            j(e)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, ta);
}

#[tokio::test]
async fn models_health_version_embeddings() {
    let sim = Sim::start(&["--model", "alpha", "--model", "beta"]);
    let c = client();
    let (s, _, t) = get(&c, &sim.url("/v1/models")).await;
    assert_eq!(s, 200);
    let v = j(&t);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["alpha", "beta"]);
    let m = &v["data"][0];
    assert_eq!(m["owned_by"], "vllm");
    assert_eq!(m["max_model_len"], 32768);
    assert_eq!(m["permission"][0]["object"], "model_permission");
    assert!(
        t.starts_with(r#"{"object":"list","data":[{"id":"alpha","object":"model","created":"#),
        "{t}"
    );
    let (s, _, t) = get(&c, &sim.url("/health")).await;
    assert_eq!((s, t.as_str()), (200, ""));
    let (s, _, t) = get(&c, &sim.url("/version")).await;
    assert_eq!(s, 200);
    assert!(j(&t)["version"].is_string());
    let (s, _, t) = post(
        &c,
        &sim.url("/v1/embeddings"),
        r#"{"model":"beta","input":["hello","world"]}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    let v = j(&t);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let (_, _, t2) = post(
        &c,
        &sim.url("/v1/embeddings"),
        r#"{"model":"beta","input":["hello","world"]}"#,
        &[],
    )
    .await;
    assert_eq!(j(&t2)["data"], v["data"], "deterministic vectors");
}

#[tokio::test]
async fn api_key_only_on_v1() {
    let sim = Sim::start(&[
        "--api-key",
        "s3cret",
        "--ttft-ms",
        "0",
        "--tokens-per-second",
        "0",
    ]);
    let c = client();
    let msg = r#"{"messages":[{"role":"user","content":"x"}]}"#;
    let (s, _, t) = post(&c, &sim.url(CHAT), msg, &[]).await;
    assert_eq!((s, t.as_str()), (401, r#"{"error":"Unauthorized"}"#));
    let (s, _, _) = post(
        &c,
        &sim.url(CHAT),
        msg,
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(get(&c, &sim.url("/health")).await.0, 200);
    assert_eq!(get(&c, &sim.url("/metrics")).await.0, 200);
    assert_eq!(get(&c, &sim.url("/v1/models")).await.0, 401);
}
