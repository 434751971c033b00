//! Faults a front door meets: slow and silent clients, fd shortage, a
//! SIGTERM during an upload, a full disk, and upstreams that answer badly.
//! Everything runs on loopback against the real binary and stops by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head for a chat whose body is `len` bytes, not all of it sent.
fn upload_head(id: &str, len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\nx-request-id: {id}\r\n\r\n{{\"model\": \"m\""
    )
}

/// Reads until the peer closes or `limit` passes. Returns what was read and
/// whether the peer closed.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a content-length body; returns the head
/// and the body.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("no complete response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_slot_and_time_out_with_408() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nmax_concurrent_requests = 1\nbody_read_timeout_ms = 1500\n"),
    );
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(upload_head(&format!("slow-{i}"), 400).as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    gw.wait_metric("llm_gateway_open_connections", 3.0).await;
    // With the only slot free while bodies upload, a normal request is served.
    let r = gw.post_chat("normal", &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for (i, s) in slow.iter_mut().enumerate() {
        let (text, closed) = read_to_close(s, Duration::from_secs(8)).await;
        assert!(closed, "slow-{i} still open: {text:?}");
        assert!(text.starts_with("HTTP/1.1 408"), "slow-{i}: {text:?}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
        let ev = gw.event_for(&format!("slow-{i}")).await;
        assert_eq!(ev["status"], 408, "{ev}");
        assert_eq!(ev["error_type"], "request_timeout", "{ev}");
    }
    assert_eq!(gw.event_for("normal").await["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_during_the_upload_is_499() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(&["--upstream", &sim.url], None);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upload_head("leaver", 500).as_bytes())
        .await
        .unwrap();
    gw.wait_metric("llm_gateway_open_connections", 1.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let ev = gw.event_for("leaver").await;
    assert_eq!(ev["status"], 499, "{ev}");
    assert_eq!(ev["error_type"], "client_disconnect", "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_header_and_idle_connections_are_closed() {
    let gw = Gateway::start(
        &["--upstream", &dead_url()],
        Some("[server]\nheader_read_timeout_ms = 300\nkeepalive_timeout_ms = 300\n"),
    );
    // Connects and says nothing.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Sends its head one byte at a time, never finishing in time.
    let dribbler = tokio::spawn({
        let addr = gw.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            for b in
                b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if s.write_all(&[*b]).await.is_err() {
                    return Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    });
    // Makes one request, then idles on the kept-alive connection.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut idle).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let (_, closed) = read_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection stayed open");
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection stayed open");
    let cut = dribbler.await.unwrap();
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(4)),
        "a slow head was not cut: {cut:?}"
    );
    let m = gw.metrics().await;
    let header = metric(
        &m,
        "llm_gateway_connections_timed_out_total{reason=\"header\"}",
    );
    let idle = metric(
        &m,
        "llm_gateway_connections_timed_out_total{reason=\"idle\"}",
    );
    assert!(header.unwrap_or(0.0) >= 2.0, "{m}");
    assert!(idle.unwrap_or(0.0) >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_fds_silent_connections_cannot_lock_out_requests() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start_under(
        &["prlimit", "--nofile=256"],
        &["--upstream", &sim.url],
        None,
    );
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let t0 = Instant::now();
    let c = client();
    loop {
        let r = c
            .get(format!("{}/healthz", gw.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if r.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "/healthz not answered while 300 connections are silent: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = gw.post_chat("amid-silence", &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.event_for("amid-silence").await["status"], 200);
    let m = gw.metrics().await;
    let limit = metric(
        &m,
        "llm_gateway_connections_rejected_total{reason=\"limit\"}",
    );
    let timed_out = metric(
        &m,
        "llm_gateway_connections_timed_out_total{reason=\"header\"}",
    );
    assert!(
        limit.unwrap_or(0.0) + timed_out.unwrap_or(0.0) >= 200.0,
        "the silent connections were neither refused nor timed out:\n{m}"
    );
    // A refused connection got a clear answer, not a reset.
    let (text, _) = read_to_close(silent.last_mut().unwrap(), Duration::from_secs(5)).await;
    assert!(
        text.is_empty() || text.contains("too_many_connections"),
        "{text:?}"
    );
    assert!(gw.stderr().contains("max_connections"), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upload_writes_its_503_event() {
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nshutdown_grace_secs = 1\n"),
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upload_head("uploading", 300).as_bytes())
        .await
        .unwrap();
    gw.wait_metric("llm_gateway_open_connections", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let (text, _) = read_to_close(&mut s, Duration::from_secs(8)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.contains("shutting_down"), "{text}");
    let (st, gw) = gw.exited(Duration::from_secs(15)).await;
    assert!(st.expect("no exit").success(), "{}", gw.stderr());
    let events = gw.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["request_id"], "uploading");
    assert_eq!(events[0]["status"], 503);
    assert_eq!(events[0]["error_type"], "shutting_down");
    let log = gw.stderr();
    assert!(
        log.contains("events_written=1") && log.contains("events_dropped=0"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_kept_alive_connection_during_the_drain_gets_503() {
    let sim = start_sim(sim::SimConfig {
        tokens_per_second: 20.0,
        ..fast_sim()
    })
    .await;
    let gw = Gateway::start(
        &["--upstream", &sim.url],
        Some("[server]\nshutdown_grace_secs = 10\n"),
    );
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut kept).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // A stream keeps the gateway draining for about two seconds.
    let mut stream = gw
        .post_chat(
            "inflight",
            &chat("m", true),
            &[("x-sim-output-tokens", "40")],
        )
        .await;
    assert!(!stream.chunk().await.unwrap().unwrap().is_empty());
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    kept.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             x-request-id: late\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut kept).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(assert_openai_error(&body)["code"], "shutting_down");
    while stream.chunk().await.unwrap().is_some() {}
    let (st, gw) = gw.exited(Duration::from_secs(15)).await;
    assert!(st.expect("no exit").success(), "{}", gw.stderr());
    let late = gw.event_for("late").await;
    assert_eq!(late["status"], 503, "{late}");
    assert_eq!(late["error_type"], "shutting_down");
    assert_eq!(gw.event_for("inflight").await["finish_reason"], "stop");
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_leaves_a_broken_event_line() {
    let Some(fs) = Tmpfs::mount("256k") else {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let events = fs.0.path().join("events.log");
    let sim = start_sim(fast_sim()).await;
    let gw = Gateway::start(
        &["--upstream", &sim.url, "--events", events.to_str().unwrap()],
        None,
    );
    let send = |ids: Vec<String>| {
        let gw = &gw;
        async move {
            for id in ids {
                let r = gw.post_chat(&id, &chat("m", false), &[]).await;
                assert_eq!(r.status(), 200);
            }
        }
    };
    send((0..2).map(|i| format!("before-{i}")).collect()).await;
    gw.wait_metric("llm_gateway_events_written_total", 2.0)
        .await;
    // Fill the disk.
    let filler = fs.0.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(b"x").is_ok() {}
    }
    send((0..20).map(|i| format!("full-{i}")).collect()).await;
    gw.wait_metric("llm_gateway_events_dropped_total", 1.0)
        .await;
    std::fs::remove_file(&filler).unwrap();
    send((0..3).map(|i| format!("after-{i}")).collect()).await;
    gw.wait_metric("llm_gateway_events_written_total", 5.0)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every line is one whole event (read_events fails on a broken line).
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(text.ends_with('\n'), "the file ends mid-line");
    let lines = read_events(&events);
    let ids: Vec<&str> = lines
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    for id in ["before-0", "before-1", "after-0", "after-1", "after-2"] {
        assert_eq!(ids.iter().filter(|x| **x == id).count(), 1, "{id}: {ids:?}");
    }
    let m = gw.metrics().await;
    let written = metric(&m, "llm_gateway_events_written_total").unwrap();
    let dropped = metric(&m, "llm_gateway_events_dropped_total").unwrap();
    assert_eq!(
        written as usize,
        lines.len(),
        "written counts only whole lines\n{m}"
    );
    assert_eq!(written + dropped, 25.0, "{m}");
    drop(gw);
}

/// What the misbehaving upstream answers, chosen by the request's model.
fn bad_upstream(seen: &Seen) -> axum::response::Response {
    let req: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let auth = seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let json_ct = [("content-type", "application/json")];
    match req["model"].as_str().unwrap_or("") {
        "busy" => (
            http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7"), ("content-type", "application/json")],
            r#"{"error":{"message":"busy","type":"rate_limit_error"}}"#,
        )
            .into_response(),
        "echo" => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            json_ct,
            json!({"error": {"message": format!("bad request, headers: Authorization: {auth}")}})
                .to_string(),
        )
            .into_response(),
        "huge" => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            vec![b'e'; 5_000_000],
        )
            .into_response(),
        "html" => (
            http::StatusCode::OK,
            [("content-type", "text/html")],
            "<html>proxy login</html>",
        )
            .into_response(),
        "errobj" => (
            http::StatusCode::OK,
            json_ct,
            r#"{"error":{"message":"engine overloaded","type":"server_error"}}"#,
        )
            .into_response(),
        "nosse" => (
            http::StatusCode::OK,
            [("content-type", "text/event-stream")],
            ": ping\n\n",
        )
            .into_response(),
        _ => http::StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_answers_are_relayed_truthfully_and_safely() {
    let mock = start_mock(bad_upstream).await;
    let cfg = format!(
        "[routing]\ndefault_pool = \"main\"\n[pools.main]\nendpoints = [\"{}\"]\napi_key_env = \"GW_HARDENING_KEY\"\n",
        mock.url
    );
    let gw = Gateway::start_with(&[], Some(&cfg), |c| {
        c.env("GW_HARDENING_KEY", "pool-secret-123");
    });

    let r = gw.post_chat("busy", &chat("busy", false), &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["retry-after"],
        "7",
        "upstream Retry-After relayed"
    );

    let r = gw.post_chat("echo", &chat("echo", false), &[]).await;
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("pool-secret-123"),
        "the pool key reached the client: {text}"
    );
    assert!(text.contains("[redacted]"), "{text}");
    assert_eq!(
        mock.seen.lock().unwrap()[1].headers["authorization"],
        "Bearer pool-secret-123",
        "the upstream did get the key"
    );

    let r = gw.post_chat("huge", &chat("huge", false), &[]).await;
    assert_eq!(r.status(), 500);
    let msg = assert_openai_error(&r.text().await.unwrap())["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("5000000 bytes"), "{msg}");

    let r = gw.post_chat("html", &chat("html", false), &[]).await;
    assert_eq!(r.status(), 502);
    let err = assert_openai_error(&r.text().await.unwrap());
    assert_eq!(err["code"], "upstream_invalid_response");
    let ev = gw.event_for("html").await;
    assert_eq!(ev["status"], 502, "{ev}");
    assert_eq!(ev["error_type"], "upstream_invalid_response");

    let r = gw.post_chat("errobj", &chat("errobj", false), &[]).await;
    assert_eq!(r.status(), 200, "relayed as the upstream sent it");
    assert!(r.text().await.unwrap().contains("engine overloaded"));
    let ev = gw.event_for("errobj").await;
    assert_eq!(ev["level"], "error", "{ev}");
    assert_eq!(ev["error_type"], "upstream_error", "{ev}");

    let r = gw.post_chat("nosse", &chat("nosse", true), &[]).await;
    assert_eq!(r.status(), 502);
    let err = assert_openai_error(&r.text().await.unwrap());
    assert_eq!(err["code"], "upstream_invalid_response");
    assert_eq!(gw.event_for("nosse").await["status"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_was_read_closes_the_connection() {
    let sim = start_sim(fast_sim()).await;
    let cfg = format!(
        "[routing]\ndefault_pool = \"main\"\n[pools.main]\nendpoints = [\"{}\"]\n[tenants.acme]\napi_key_sha256 = [\"{}\"]\n",
        sim.url,
        gateway::auth::hash_key_hex("sk-acme")
    );
    let gw = Gateway::start(&[], Some(&cfg));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let request = |key: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             authorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Served: the body was read, the connection stays open for the next request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request("sk-acme").as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // Refused before its body was read: the client is told not to reuse it.
    s.write_all(request("sk-wrong").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(assert_openai_error(&body)["type"], "authentication_error");
    let (rest, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
}
