//! The optional refusal judge (`[refusal.judge]`), end to end on loopback:
//! the real gateway binary, vllm-sim as the upstream and vllm-sim (or a
//! recording mock) as the judge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A judge served by vllm-sim: model `judge`, quick.
async fn judge_sim(ttft_ms: u64) -> Sim {
    start_sim(sim::SimConfig {
        models: vec!["judge".to_owned()],
        ttft_ms,
        ..fast_sim()
    })
    .await
}

fn judge_cfg(url: &str, extra: &str) -> String {
    format!(
        "[refusal.judge]\nenabled = true\nurl = \"{url}\"\nmodel = \"judge\"\nsample_rate = 1.0\n{extra}"
    )
}

fn of_kind(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .cloned()
        .collect()
}

/// Waits until at least `n` `refusal_judgement` events are written.
async fn wait_judgements(gw: &Gateway, n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let j = of_kind(&gw.events(), "refusal_judgement");
        if j.len() >= n {
            return j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "only {} of {n} judgements: {:?}\nstderr:\n{}",
            j.len(),
            gw.events(),
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of the series of `name` whose line contains every one of `parts`.
fn series(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const JUDGED: &str = "llm_gateway_refusal_judgements_total{";
const SKIPPED: &str = "llm_gateway_refusal_judge_skipped_total{";

#[test]
fn the_sim_recognises_the_gateways_judge_prompt() {
    assert_eq!(gateway::judge::PROMPT_MARKER, sim::judge::MARKER);
    let prompt = format!(
        "{}\n{}\n",
        gateway::judge::SYSTEM_PROMPT,
        gateway::judge::user_prompt("I'm sorry, but I can't help with that request.")
    );
    assert_eq!(sim::judge::answer(&prompt), Some("refusal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_compliant_responses_each_get_one_judgement() {
    let up = start_sim(fast_sim()).await;
    let judge = judge_sim(5).await;
    let gw = Gateway::start(&["--upstream", &up.url], Some(&judge_cfg(&judge.url, "")));

    let ok = gw.post_chat("ok-1", &chat("m", false), &[]).await;
    assert_eq!(ok.status(), 200);
    let refused = gw
        .post_chat(
            "refused-1",
            &chat("m", false),
            &[("x-sim-behavior", "refuse")],
        )
        .await;
    assert_eq!(refused.status(), 200);
    // A stream is judged from the text the relay accumulated.
    let streamed = gw
        .post_chat(
            "refused-2",
            &chat("m", true),
            &[("x-sim-behavior", "refuse")],
        )
        .await;
    let payloads = sse_payloads(streamed).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));

    let judgements = wait_judgements(&gw, 3).await;
    let events = gw.events();
    for id in ["ok-1", "refused-1", "refused-2"] {
        let mine: Vec<&Value> = events.iter().filter(|e| e["request_id"] == id).collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:?}");
        // The response event comes first, then its judgement.
        assert_eq!(mine[0]["event"], "response", "{id}");
        assert_eq!(mine[1]["event"], "refusal_judgement", "{id}");
        assert_eq!(mine[1]["model"], mine[0]["model"]);
        assert_eq!(mine[1]["tenant"], mine[0]["tenant"]);
        assert_eq!(mine[1]["detector_kind"], mine[0]["refusal_kind"]);
    }
    let j = |id: &str| judgements.iter().find(|e| e["request_id"] == id).unwrap();
    assert_eq!(j("ok-1")["verdict"], "compliance");
    assert_eq!(j("ok-1")["agrees"], true);
    for id in ["refused-1", "refused-2"] {
        let e = j(id);
        assert_eq!(e["verdict"], "refusal", "{e}");
        assert_eq!(e["detector_kind"], "full", "{e}");
        assert_eq!(e["agrees"], true, "{e}");
        assert_eq!(e["judge_error"], Value::Null);
        assert_eq!(e["judge_status"], 200);
        assert_eq!(e["judge_model"], "judge");
        assert_eq!(e["level"], "info");
        assert!(e["text_bytes"].as_u64().unwrap() > 20, "{e}");
        assert_eq!(e["text_truncated"], false);
        assert!(e["judge_latency_ms"].as_f64().unwrap() > 0.0);
    }
    let m = gw.metrics().await;
    assert_eq!(
        series(&m, JUDGED, &["verdict=\"refusal\"", "agreement=\"agree\""]),
        2.0,
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            JUDGED,
            &["verdict=\"compliance\"", "agreement=\"agree\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(series(&m, SKIPPED, &[]), 0.0, "{m}");
    // The judge really was asked, three times.
    assert_eq!(sim_metric(&judge, "vllm:request_success_total").await, 3.0);
}

/// The request the judge gets, the API key, and a judge answering outside
/// the three words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_request_shape_and_a_strict_answer() {
    let up = start_sim(fast_sim()).await;
    let answer = |word: &'static str| {
        move |_: &Seen| {
            axum::Json(serde_json::json!({
                "id": "x", "object": "chat.completion", "model": "judge",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": word}}],
            }))
            .into_response()
        }
    };
    use axum::response::IntoResponse;
    let partial = start_mock(answer(" Partial.\n")).await;
    let chatty = start_mock(answer("The response is a refusal.")).await;
    for (mock, verdict, error) in [
        (&partial, Value::from("partial"), Value::Null),
        (&chatty, Value::Null, Value::from("invalid_answer")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("judge.key");
        std::fs::write(&key, "sk-judge\n").unwrap();
        let cfg = judge_cfg(
            &format!("{}/v1", mock.url),
            &format!(
                "api_key_file = \"{}\"\nmax_tokens = 5\nmax_text_bytes = 10\n",
                key.display()
            ),
        );
        let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
        let r = gw.post_chat("shape-1", &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        let j = wait_judgements(&gw, 1).await;
        assert_eq!(j[0]["verdict"], verdict, "{}", j[0]);
        assert_eq!(j[0]["judge_error"], error, "{}", j[0]);
        assert_eq!(j[0]["judge_status"], 200);
        let level = if error.is_null() { "info" } else { "warn" };
        assert_eq!(j[0]["level"], level);
        let seen = mock.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, "/v1/chat/completions");
        assert_eq!(seen[0].headers["authorization"], "Bearer sk-judge");
        let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(body["model"], "judge");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["stream"], false);
        let system = body["messages"][0]["content"].as_str().unwrap();
        assert!(system.starts_with(gateway::judge::PROMPT_MARKER));
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(
            user.contains("<<<RESPONSE\n") && user.contains("\nRESPONSE>>>"),
            "{user}"
        );
        // The text is cut to max_text_bytes, and the event says so.
        let start = user.find("<<<RESPONSE\n").unwrap() + "<<<RESPONSE\n".len();
        let sent = &user[start..user.find("\nRESPONSE>>>").unwrap()];
        assert!(!sent.is_empty() && sent.len() <= 10, "{sent:?}");
        assert_eq!(j[0]["text_bytes"], sent.len());
        assert_eq!(j[0]["text_truncated"], true);
        let m = gw.metrics().await;
        let want = if error.is_null() { "partial" } else { "error" };
        let agreement = if error.is_null() {
            "disagree"
        } else {
            "unknown"
        };
        assert_eq!(
            series(
                &m,
                JUDGED,
                &[
                    &format!("verdict=\"{want}\""),
                    &format!("agreement=\"{agreement}\"")
                ]
            ),
            1.0,
            "{m}"
        );
    }
}

/// A judge that is down or too slow changes nothing for clients: their
/// answers come at the upstream's pace, the judgement records the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_down_or_slow_leaves_clients_alone() {
    let up = start_sim(fast_sim()).await;
    let slow = judge_sim(5_000).await;
    let down = dead_url();
    for (url, error) in [(down.as_str(), "connect"), (slow.url.as_str(), "timeout")] {
        let cfg = judge_cfg(url, "timeout_ms = 1000\nconcurrency = 1\n");
        let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
        let mut worst = Duration::ZERO;
        for i in 0..4 {
            let t0 = Instant::now();
            let r = gw
                .post_chat(&format!("{error}-{i}"), &chat("m", i % 2 == 0), &[])
                .await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
            worst = worst.max(t0.elapsed());
        }
        // The judge (1 s timeout, one at a time) is never waited for.
        assert!(worst < Duration::from_millis(800), "{error}: {worst:?}");
        let j = wait_judgements(&gw, 4).await;
        for e in &j {
            assert_eq!(e["judge_error"], error, "{e}");
            assert_eq!(e["verdict"], Value::Null);
            assert_eq!(e["agrees"], Value::Null);
            assert_eq!(e["judge_status"], Value::Null);
            assert_eq!(e["level"], "warn");
            let ms = e["judge_latency_ms"].as_f64().unwrap();
            assert!(ms < 3_000.0, "{e}");
            if error == "timeout" {
                assert!(ms >= 990.0, "{e}");
            }
        }
        for e in of_kind(&gw.events(), "response") {
            assert_eq!(e["status"], 200);
            assert!(e["latency_ms"].as_f64().unwrap() < 800.0, "{e}");
        }
        let m = gw.metrics().await;
        assert_eq!(
            series(&m, JUDGED, &["verdict=\"error\"", "agreement=\"unknown\""]),
            4.0,
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_the_budget_are_counted_as_skipped() {
    let up = start_sim(fast_sim()).await;
    // Queue: one judgement in flight (slow judge), one queued, the rest skipped.
    let slow = judge_sim(10_000).await;
    let cfg = judge_cfg(
        &slow.url,
        "concurrency = 1\nqueue_capacity = 1\nmax_per_minute = 0\n",
    );
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    for i in 0..6 {
        let r = gw
            .post_chat(&format!("q-{i}"), &chat("m", false), &[])
            .await;
        assert_eq!(r.status(), 200);
        if i == 0 {
            // Let the worker take the first one.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    gw.wait_metric(SKIPPED, 4.0).await;
    let m = gw.metrics().await;
    assert_eq!(series(&m, SKIPPED, &["reason=\"queue_full\""]), 4.0, "{m}");
    assert_eq!(series(&m, SKIPPED, &["reason=\"budget\""]), 0.0, "{m}");
    drop(gw);

    // Budget: two per minute.
    let fast = judge_sim(5).await;
    let cfg = judge_cfg(&fast.url, "max_per_minute = 2\n");
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    for i in 0..5 {
        let r = gw
            .post_chat(&format!("b-{i}"), &chat("m", false), &[])
            .await;
        assert_eq!(r.status(), 200);
    }
    let j = wait_judgements(&gw, 2).await;
    assert_eq!(j.len(), 2);
    let m = gw.metrics().await;
    assert_eq!(series(&m, SKIPPED, &["reason=\"budget\""]), 3.0, "{m}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(of_kind(&gw.events(), "refusal_judgement").len(), 2);
    assert_eq!(of_kind(&gw.events(), "response").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_rate_and_eligibility_choose_what_is_judged() {
    let up = start_sim(fast_sim()).await;
    let judge = judge_sim(5).await;
    // sample_rate 0: nothing reaches the judge.
    let cfg = judge_cfg(&judge.url, "").replace("sample_rate = 1.0", "sample_rate = 0.0");
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    for i in 0..4 {
        let b = if i % 2 == 0 { "refuse" } else { "none" };
        let r = gw
            .post_chat(
                &format!("s-{i}"),
                &chat("m", false),
                &[("x-sim-behavior", b)],
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let ev = gw.wait_events(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        of_kind(&gw.events(), "refusal_judgement").len(),
        0,
        "{ev:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(series(&m, JUDGED, &[]), 0.0);
    assert_eq!(series(&m, SKIPPED, &[]), 0.0);
    assert_eq!(sim_metric(&judge, "vllm:request_success_total").await, 0.0);
    drop(gw);

    // eligible = "flagged": only what the detector flagged.
    let cfg = judge_cfg(&judge.url, "eligible = \"flagged\"\n");
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    for i in 0..4 {
        let b = if i % 2 == 0 { "refuse" } else { "none" };
        gw.post_chat(
            &format!("f-{i}"),
            &chat("m", false),
            &[("x-sim-behavior", b)],
        )
        .await;
    }
    let j = wait_judgements(&gw, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let j2 = of_kind(&gw.events(), "refusal_judgement");
    assert_eq!(j2.len(), 2, "{j:?}");
    for e in &j2 {
        assert!(
            ["f-0", "f-2"].contains(&e["request_id"].as_str().unwrap()),
            "{e}"
        );
    }

    // An error answer is never judged.
    let cfg = judge_cfg(&judge.url, "");
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    let r = gw
        .post_chat("err-1", &chat("m", false), &[("x-sim-behavior", "error")])
        .await;
    assert_eq!(r.status(), 500);
    gw.wait_events(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(of_kind(&gw.events(), "refusal_judgement").len(), 0);
}

/// SIGTERM with judgements waiting on a judge that takes 30 s: the gateway
/// exits after the short drain, counts what was left, and every response
/// event is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_pending_judgements_is_prompt() {
    let up = start_sim(fast_sim()).await;
    let stuck = judge_sim(30_000).await;
    let cfg = judge_cfg(
        &stuck.url,
        "timeout_ms = 60000\nconcurrency = 1\nshutdown_drain_ms = 300\n",
    );
    let gw = Gateway::start(&["--upstream", &up.url], Some(&cfg));
    for i in 0..4 {
        let r = gw
            .post_chat(&format!("p-{i}"), &chat("m", false), &[])
            .await;
        assert_eq!(r.status(), 200);
    }
    gw.wait_events(4).await;
    let t0 = Instant::now();
    gw.signal("TERM");
    let (status, gw) = gw.exited(Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        gw.stderr()
    );
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let events = gw.events();
    assert_eq!(of_kind(&events, "response").len(), 4);
    assert_eq!(of_kind(&events, "refusal_judgement").len(), 0);
    let log = gw.stderr();
    assert!(
        log.contains("refusal judge stopped") && log.contains("left=4"),
        "{log}"
    );
}
