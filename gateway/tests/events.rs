//! Events: exactly one per request whatever happens, the line format
//! (golden lines and the published JSON Schema), and the writer's
//! behaviour with logrotate, size rotation and an unwritable output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use gateway::events::{Event, SCHEMA_VERSION};
use serde_json::{Value, json};

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn base_event() -> Event {
    Event {
        ts: "2026-01-02T03:04:05.678Z".into(),
        level: "info",
        event: "response",
        request_id: "req-1".into(),
        route: "/v1/chat/completions",
        model: "llama-3.1-8b-instruct".into(),
        tenant: "acme".into(),
        upstream: Some("main".into()),
        stream: true,
        status: 200,
        finish_reason: Some("stop".into()),
        latency_ms: 1234.567,
        ttft_ms: Some(87.5),
        prompt_tokens: Some(42),
        completion_tokens: Some(128),
        refusal: false,
        refusal_reason: None,
        refusal_kind: None,
        cost_usd: Some(0.0000298),
        error_type: None,
        endpoint: Some("10.0.0.5:8000".into()),
        routing_reason: Some("affinity"),
        schema_version: SCHEMA_VERSION,
        refusal_excerpt: None,
        usage_source: None,
    }
}

fn representative() -> Vec<Event> {
    let ok = base_event();
    let refusal = Event {
        request_id: "req-2".into(),
        stream: false,
        ttft_ms: None,
        refusal: true,
        refusal_reason: Some("cannot_assist".into()),
        refusal_kind: Some("full"),
        refusal_excerpt: Some("I'm sorry, but I can".into()),
        ..base_event()
    };
    // A hedge: a refusal cue, then part of an answer.
    let partial = Event {
        request_id: "req-6".into(),
        refusal: false,
        refusal_reason: Some("as_an_ai_cannot".into()),
        refusal_kind: Some("partial"),
        ..base_event()
    };
    let disconnect = Event {
        request_id: "req-3".into(),
        level: "warn",
        status: 499,
        finish_reason: Some("client_disconnect".into()),
        error_type: Some("client_disconnect"),
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
        ..base_event()
    };
    let unauthorized = Event {
        request_id: "req-4".into(),
        level: "warn",
        tenant: "other".into(),
        model: "unknown".into(),
        upstream: None,
        endpoint: None,
        routing_reason: None,
        stream: false,
        status: 401,
        finish_reason: None,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
        error_type: Some("authentication"),
        ..base_event()
    };
    let upstream_down = Event {
        request_id: "req-5".into(),
        level: "error",
        status: 502,
        finish_reason: None,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
        error_type: Some("upstream_unreachable"),
        routing_reason: Some("retry"),
        ..base_event()
    };
    // A Responses API stream the client left: the gateway counted its tokens.
    let left = Event {
        request_id: "req-7".into(),
        level: "warn",
        route: "/v1/responses",
        finish_reason: Some("client_disconnect".into()),
        error_type: Some("client_disconnect"),
        prompt_tokens: Some(40),
        completion_tokens: Some(17),
        cost_usd: Some(0.0000374),
        usage_source: Some("counted"),
        ..base_event()
    };
    vec![
        ok,
        refusal,
        disconnect,
        unauthorized,
        upstream_down,
        partial,
        left,
    ]
}

#[test]
fn golden_lines() {
    let mut out = Vec::new();
    for e in representative() {
        e.to_line(&mut out);
    }
    let got = String::from_utf8(out).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        got, want,
        "event lines changed: update docs/events.md, the schema and (UPDATE_GOLDEN=1) the golden file"
    );
}

/// A small JSON Schema check: required, additionalProperties, type, enum, pattern prefix.
fn validate(schema: &Value, ev: &Value) -> Result<(), String> {
    let obj = ev.as_object().ok_or("not an object")?;
    let props = schema["properties"].as_object().unwrap();
    for r in schema["required"].as_array().unwrap() {
        let r = r.as_str().unwrap();
        if !obj.contains_key(r) {
            return Err(format!("missing {r}"));
        }
    }
    for (k, v) in obj {
        let Some(p) = props.get(k) else {
            return Err(format!("unexpected field {k}"));
        };
        let types: Vec<&str> = match &p["type"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{k}: {v} is not {types:?}"));
        }
        if let Some(en) = p["enum"].as_array()
            && !en.contains(v)
        {
            return Err(format!("{k}: {v} not in enum"));
        }
    }
    Ok(())
}

fn schema() -> Value {
    let text = std::fs::read_to_string(repo_file("docs/events.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn golden_events_match_the_schema() {
    let schema = schema();
    for e in representative() {
        let v = serde_json::to_value(&e).unwrap();
        validate(&schema, &v).unwrap_or_else(|err| panic!("{err}: {v}"));
    }
    // Field order is the contract's.
    let line = serde_json::to_string(&base_event()).unwrap();
    let order = [
        "ts",
        "level",
        "event",
        "request_id",
        "route",
        "model",
        "tenant",
        "upstream",
        "stream",
        "status",
        "finish_reason",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "refusal",
        "refusal_reason",
        "refusal_kind",
        "cost_usd",
        "error_type",
    ];
    let pos: Vec<usize> = order
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{line}");
}

/// N requests with random outcomes, client disconnects and upstream
/// failures: exactly N events, one per request id, all valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_event_per_request_under_load() {
    let sim = start_sim(sim::SimConfig {
        ttft_ms: 20,
        tokens_per_second: 400.0,
        max_tokens_default: 16,
        ..fast_sim()
    })
    .await;
    let dead = dead_url();
    let cfg = format!(
        "[routing]\ndefault_pool = \"main\"\n[pools.main]\nendpoints = [\"{}\"]\n[pools.dead]\nendpoints = [\"{dead}\"]\n[models.m]\npool = \"main\"\n[models.d]\npool = \"dead\"\n",
        sim.url
    );
    let gw = Gateway::start(&[], Some(&cfg));
    const N: usize = 96;
    let mut tasks = Vec::new();
    let mut ids = HashSet::new();
    let shared = client();
    for i in 0..N {
        let id = format!("load-{i}");
        ids.insert(id.clone());
        let url = gw.chat_url();
        let c = shared.clone();
        tasks.push(tokio::spawn(async move {
            let kind = (i * 7 + i / 8) % 8;
            let req = c.post(&url).header("x-request-id", &id);
            match kind {
                0 => drop(req.json(&chat("m", false)).send().await),
                1 => {
                    let r = req.json(&chat("m", true)).send().await.unwrap();
                    let _ = r.text().await;
                }
                2 => {
                    // Stream cut by the client after the first chunk.
                    let mut r = req.header("x-sim-tokens-per-second", "20").json(&chat("m", true)).send().await.unwrap();
                    let _ = r.chunk().await;
                    drop(r);
                }
                3 => {
                    // Client gives up before any byte (after the request was sent).
                    use tokio::io::AsyncWriteExt;
                    let body = serde_json::to_vec(&chat("m", false)).unwrap();
                    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_owned();
                    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let head = format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-sim-ttft-ms: 2000\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    sock.write_all(head.as_bytes()).await.unwrap();
                    sock.write_all(&body).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    drop(sock);
                }
                4 => drop(req.header("x-sim-behavior", "error").json(&chat("m", (i % 2) == 0)).send().await),
                5 => drop(req.header("content-type", "application/json").body("{oops").send().await),
                6 => drop(req.json(&chat("d", false)).send().await),
                _ => {
                    let r = req.header("x-sim-behavior", "error-midstream").json(&chat("m", true)).send().await.unwrap();
                    let _ = r.text().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = gw.wait_events(N).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let events_after = gw.events();
    let got_ids: HashSet<String> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = ids.difference(&got_ids).collect();
    assert_eq!(events.len(), N, "missing {missing:?}\n{}", gw.stderr());
    assert_eq!(events_after.len(), N, "no late duplicates");
    let got: HashSet<String> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids);
    let schema = schema();
    let mut statuses = HashSet::new();
    for e in &events {
        validate(&schema, e).unwrap_or_else(|err| panic!("{err}: {e}"));
        statuses.insert((
            e["status"].as_u64().unwrap(),
            e["error_type"].as_str().map(str::to_owned),
        ));
    }
    for want in [
        (200, None),
        (200, Some("client_disconnect".to_owned())),
        (499, Some("client_disconnect".to_owned())),
        (500, Some("upstream_error".to_owned())),
        (400, Some("invalid_request".to_owned())),
        (502, Some("upstream_unreachable".to_owned())),
        (200, Some("stream_error".to_owned())),
    ] {
        assert!(
            statuses.contains(&want),
            "missing outcome {want:?} in {statuses:?}"
        );
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "llm_gateway_requests_total{"), Some(N as f64));
    assert_eq!(
        metric(&m, "llm_gateway_events_written_total"),
        Some(N as f64)
    );
    assert_eq!(metric(&m, "llm_gateway_in_flight_requests{"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_and_size_rotation() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let c = client();
    let send = |id: String| {
        let c = c.clone();
        let url = gw.chat_url();
        async move {
            c.post(url)
                .header("x-request-id", id)
                .json(&chat("m", false))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
        }
    };
    send("before".into()).await;
    gw.event_for("before").await;
    // logrotate: rename, then SIGHUP.
    let rotated = gw.dir.path().join("events.log.old");
    std::fs::rename(&gw.events_path, &rotated).unwrap();
    gw.signal("HUP");
    let t0 = std::time::Instant::now();
    while !gw.stderr().contains("events file reopened") && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send("after".into()).await;
    let ev = gw.event_for("after").await;
    assert_eq!(ev["request_id"], "after");
    assert_eq!(read_events(&rotated).len(), 1);
    assert_eq!(gw.events().len(), 1);

    // Size-based rotation.
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[events]\nmax_file_bytes = 1500\nmax_files = 2\n"),
    );
    let c = client();
    for i in 0..12 {
        c.post(gw.chat_url())
            .header("x-request-id", format!("r{i}"))
            .json(&chat("m", false))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let one = PathBuf::from(format!("{}.1", gw.events_path.display()));
    let two = PathBuf::from(format!("{}.2", gw.events_path.display()));
    let three = PathBuf::from(format!("{}.3", gw.events_path.display()));
    let all_ids = || {
        [&gw.events_path, &one, &two]
            .iter()
            .flat_map(|p| read_events(p))
            .map(|e| e["request_id"].as_str().unwrap().to_owned())
            .collect::<HashSet<_>>()
    };
    let t0 = std::time::Instant::now();
    while !all_ids().contains("r11") && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(all_ids().contains("r11"));
    assert!(one.exists() && two.exists(), "rotated files");
    assert!(!three.exists(), "max_files = 2");
    assert!(std::fs::metadata(&one).unwrap().len() >= 1500);
    assert!(std::fs::metadata(&two).unwrap().len() >= 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_output_keeps_serving_and_counts_drops() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url, "--events", "/dev/full"], None);
    let c = client();
    for _ in 0..5 {
        let r = c
            .post(gw.chat_url())
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let t0 = std::time::Instant::now();
    loop {
        let m = gw.metrics().await;
        let dropped = metric(&m, "llm_gateway_events_dropped_total").unwrap_or(0.0);
        if dropped >= 5.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "drops not counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gw.stderr().contains("cannot write events"),
        "{}",
        gw.stderr()
    );
    // Warned once, not per event.
    assert_eq!(gw.stderr().matches("cannot write events").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_text_in_events_unless_audit_is_on() {
    let sim = start_sim(fast_sim()).await;
    let secret_prompt = "my-secret-prompt-text";
    let body = json!({"model":"m","messages":[{"role":"user","content":secret_prompt}]});
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let c = client();
    for (id, behavior) in [("plain", ""), ("refused", "refuse")] {
        let r = gw
            .post_chat(id, &body, &[("x-sim-behavior", behavior)])
            .await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let refused = gw.event_for("refused").await;
    assert_eq!(refused["refusal"], true, "{refused}");
    assert!(refused["refusal_reason"].is_string());
    assert_eq!(refused["refusal_kind"], "full", "{refused}");
    assert!(refused.get("refusal_excerpt").is_none());
    gw.event_for("plain").await;
    let raw = std::fs::read_to_string(&gw.events_path).unwrap();
    assert!(!raw.contains(secret_prompt));

    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[refusal]\naudit_excerpt_chars = 12\n"),
    );
    for (id, behavior) in [("plain", ""), ("refused", "refuse")] {
        c.post(gw.chat_url())
            .header("x-request-id", id)
            .header("x-sim-behavior", behavior)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let refused = gw.event_for("refused").await;
    let excerpt = refused["refusal_excerpt"].as_str().unwrap();
    assert!(
        !excerpt.is_empty() && excerpt.chars().count() <= 12,
        "{excerpt}"
    );
    let plain = gw.event_for("plain").await;
    assert!(plain.get("refusal_excerpt").is_none());
    let raw = std::fs::read_to_string(&gw.events_path).unwrap();
    assert!(!raw.contains(secret_prompt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_to_stdout_for_containers() {
    use std::io::BufRead;
    let sim = start_sim(fast_sim()).await;
    let mut gw = Gateway::start_with(&["--upstream", &sim.url, "--events", "-"], None, |c| {
        c.stdout(std::process::Stdio::piped());
    });
    let stdout = gw.take_stdout().unwrap();
    let r = gw.post_chat("to-stdout", &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["request_id"], "to-stdout");
    // Diagnostics never go to stdout.
    assert!(gw.stderr().contains("listening on"));
}
