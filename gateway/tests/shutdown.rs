//! Graceful shutdown: in-flight requests finish, new ones are refused, events are flushed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_flushes_events() {
    let sim = start_sim(sim::SimConfig {
        tokens_per_second: 20.0,
        ..fast_sim()
    })
    .await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nshutdown_grace_secs = 10\n"),
    );
    let mut resp = gw
        .post_chat(
            "inflight",
            &chat("m", true),
            &[("x-sim-output-tokens", "15")],
        )
        .await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    gw.signal("TERM");
    // The stream still completes.
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let (st, gw) = gw.exited(Duration::from_secs(10)).await;
    assert!(
        st.expect("gateway did not exit").success(),
        "{}",
        gw.stderr()
    );
    let events = gw.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["request_id"], "inflight");
    assert_eq!(events[0]["finish_reason"], "stop");
    assert!(gw.stderr().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_over_cuts_streams_with_an_event() {
    let sim = start_sim(sim::SimConfig {
        tokens_per_second: 5.0,
        ..fast_sim()
    })
    .await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nshutdown_grace_secs = 1\n"),
    );
    let mut resp = gw
        .post_chat("cut", &chat("m", true), &[("x-sim-output-tokens", "100")])
        .await;
    resp.chunk().await.unwrap().unwrap();
    gw.signal("INT");
    let mut rest = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.contains("shutting_down"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"));
    let (st, gw) = gw.exited(Duration::from_secs(10)).await;
    assert!(st.expect("exit").success());
    let events = gw.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error_type"], "shutting_down");
    assert_eq!(events[0]["status"], 200);
}
