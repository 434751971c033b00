//! Test helpers: the real `llm-gateway` binary on port 0, the simulator
//! in process, and a recording mock upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The simulator serving on a loopback port in this process.
pub struct Sim {
    pub addr: SocketAddr,
    pub url: String,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_sim(cfg: sim::SimConfig) -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = sim::serve(listener, cfg, async move { s.cancelled().await }).await;
    });
    Sim {
        addr,
        url: format!("http://{addr}"),
        stop,
    }
}

/// A fast simulator: one model `m`, short TTFT, quick decode.
pub fn fast_sim() -> sim::SimConfig {
    sim::SimConfig {
        models: vec!["m".to_owned()],
        ttft_ms: 5,
        tokens_per_second: 2000.0,
        max_tokens_default: 8,
        ..sim::SimConfig::default()
    }
}

/// Reads a metric value (first series whose line starts with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

pub async fn sim_metric(sim: &Sim, prefix: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", sim.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, prefix).unwrap_or(0.0)
}

/// A recorded upstream request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// A mock upstream: records requests and answers with `answer`.
pub struct Mock {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_mock<F>(answer: F) -> Mock
where
    F: Fn(&Seen) -> axum::response::Response + Send + Sync + 'static,
{
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let answer = Arc::new(answer);
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = s2.clone();
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let s = Seen {
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body,
            };
            let resp = answer(&s);
            seen.lock().unwrap().push(s);
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { st.cancelled().await })
            .await;
    });
    Mock {
        url: format!("http://{addr}"),
        seen,
        stop,
    }
}

/// A port with nothing listening.
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// The gateway binary, started on port 0 with events to a temp file.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub events_path: PathBuf,
    stderr: Arc<Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llm-gateway")
}

impl Gateway {
    /// `config`: TOML text written to a file and passed with `--config`.
    pub fn start(args: &[&str], config: Option<&str>) -> Gateway {
        Self::start_with(args, config, |_| {})
    }

    pub fn start_with(
        args: &[&str],
        config: Option<&str>,
        tweak: impl FnOnce(&mut Command),
    ) -> Gateway {
        Self::launch(Command::new(bin()), args, config, tweak)
    }

    /// Starts the gateway under a wrapper that execs it (`prlimit --nofile=256`),
    /// so the child's pid is the gateway's.
    pub fn start_under(wrapper: &[&str], args: &[&str], config: Option<&str>) -> Gateway {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(bin());
        Self::launch(cmd, args, config, |_| {})
    }

    fn launch(
        mut cmd: Command,
        args: &[&str],
        config: Option<&str>,
        tweak: impl FnOnce(&mut Command),
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let events_path = dir.path().join("events.log");
        cmd.arg("--listen").arg("127.0.0.1:0");
        if !args.contains(&"--events") {
            cmd.arg("--events").arg(&events_path);
        }
        if let Some(text) = config {
            let p = dir.path().join("gateway.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(p);
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("LLM_GATEWAY_CONFIG")
            .env_remove("LLM_GATEWAY_UPSTREAM")
            .env_remove("LLM_GATEWAY_EVENTS")
            .env_remove("LLM_GATEWAY_LISTEN")
            .env_remove("LLM_GATEWAY_DEMO")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not start: {:?} {:?}\nstderr:\n{}",
                    bin(),
                    args,
                    log.lock().unwrap()
                );
            }
        };
        let addr: SocketAddr = addr.parse().unwrap();
        Gateway {
            child,
            addr,
            url: format!("http://{addr}"),
            dir,
            events_path,
            stderr: log,
        }
    }

    /// The child's stdout (only if the `tweak` made it piped).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for the process to exit without blocking the async test.
    pub async fn exited(self, timeout: Duration) -> (Option<std::process::ExitStatus>, Gateway) {
        let mut gw = self;
        tokio::task::spawn_blocking(move || (gw.wait_exit(timeout), gw))
            .await
            .unwrap()
    }

    /// Events written so far.
    pub fn events(&self) -> Vec<Value> {
        read_events(&self.events_path)
    }

    /// Waits until at least `n` events are written, then returns them.
    pub async fn wait_events(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let ev = self.events();
            if ev.len() >= n || t0.elapsed() > Duration::from_secs(10) {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The single event of a request id (waits for it).
    pub async fn event_for(&self, request_id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let found: Vec<Value> = self
                .events()
                .into_iter()
                .filter(|e| e["request_id"] == request_id)
                .collect();
            if !found.is_empty() {
                assert_eq!(found.len(), 1, "one event per request: {found:?}");
                return found.into_iter().next().unwrap();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!(
                    "no event for {request_id}; events: {:?}\nstderr:\n{}",
                    self.events(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the gateway has at least `n` requests in flight (all
    /// models), so a test need not guess how long a request takes to arrive.
    pub async fn wait_in_flight(&self, n: f64) {
        self.wait_metric("llm_gateway_in_flight_requests", n).await;
    }

    /// Waits until the metric (all series starting with `prefix`, summed)
    /// reaches `at_least`.
    pub async fn wait_metric(&self, prefix: &str, at_least: f64) {
        let t0 = Instant::now();
        loop {
            let m = self.metrics().await;
            if metric(&m, prefix).unwrap_or(0.0) >= at_least {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{prefix} stayed below {at_least}:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.url)
    }

    /// Posts `body` to the chat endpoint with `x-request-id: id` and the
    /// extra `headers`, on a fresh connection.
    pub async fn post_chat(
        &self,
        id: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = client()
            .post(self.chat_url())
            .header("x-request-id", id)
            .json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_events(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

/// A chat request body.
pub fn chat(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

/// Asserts the OpenAI error shape and returns the error object.
pub fn assert_openai_error(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON: {body:?}: {e}"));
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no error key: {body}"));
    assert!(err["message"].is_string(), "message: {body}");
    assert!(err["type"].is_string(), "type: {body}");
    assert!(err.get("param").is_some(), "param: {body}");
    assert!(err.get("code").is_some(), "code: {body}");
    err.clone()
}

/// Reads an SSE response to the end; returns the data payloads.
pub async fn sse_payloads(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}
