//! Helpers for the integration tests: run the real binaries against the Loki-faithful
//! test receiver on port 0, inject faults, count delivered lines by `request_id`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process whose stderr is collected (and printed if the test fails).
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        cmd.env("RUST_LOG", "info");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let buf = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                buf.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            stderr,
            name: name.to_string(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns the text after it.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                let i = l.find(needle).unwrap();
                return l[i + needle.len()..].trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.dump();
        panic!(
            "{}: no stderr line containing {needle:?} within {timeout:?}",
            self.name
        );
    }

    pub fn dump(&self) {
        let lines = self.stderr.lock().unwrap();
        eprintln!(
            "----- {} stderr ({} lines, last 60) -----",
            self.name,
            lines.len()
        );
        for l in lines.iter().rev().take(60).rev() {
            eprintln!("{l}");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM via the `kill` command (no unsafe code), then wait up to `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmHWM:") * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The test receiver binary.
pub struct Receiver {
    pub proc: Proc,
    pub addr: String,
    pub record: PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path) -> Receiver {
        let record = dir.join("received.jsonl");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loki-receiver"));
        cmd.args(["--listen", "127.0.0.1:0", "--record"])
            .arg(&record);
        let proc = Proc::spawn("loki-receiver", cmd);
        let addr = proc.wait_for_stderr("listening on ", Duration::from_secs(20));
        Receiver { proc, addr, record }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn control(&self, json: &str) {
        let (status, body) = http(&self.addr, "POST", "/control", json);
        assert_eq!(status, 200, "control {json}: {body}");
    }

    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = http(&self.addr, "GET", "/stats", "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Delivered lines per request_id (from the record file).
    pub fn counts(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return out;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(id) = v["structured_metadata"]["request_id"].as_str() {
                *out.entry(id.to_string()).or_default() += 1;
            }
        }
        out
    }

    /// Waits until every id in `0..n` was delivered; returns the counts.
    pub fn wait_all(
        &self,
        n: usize,
        timeout: Duration,
        ship: Option<&Proc>,
    ) -> HashMap<String, u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.counts();
            let have = (0..n).filter(|i| c.contains_key(&req_id(*i))).count();
            if have == n {
                return c;
            }
            if Instant::now() > deadline {
                if let Some(p) = ship {
                    p.dump();
                }
                self.proc.dump();
                let missing: Vec<usize> = (0..n)
                    .filter(|i| !c.contains_key(&req_id(*i)))
                    .take(20)
                    .collect();
                panic!(
                    "only {have}/{n} lines delivered within {timeout:?}; first missing: {missing:?}; stats {}",
                    self.stats()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Minimal HTTP/1.1 client (loopback only).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads one metric value from the shipper's /metrics (sum over matching series).
pub fn metric(addr: &str, prefix: &str) -> f64 {
    let (_, body) = http(addr, "GET", "/metrics", "");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn req_id(i: usize) -> String {
    format!("req-{i:07}")
}

/// A gateway-like event line (with newline).
pub fn event_line(i: usize, pad: usize) -> String {
    event_line_at(i, pad, time::OffsetDateTime::now_utc())
}

/// A gateway-like event line with the given event time.
pub fn event_line_at(i: usize, pad: usize, at: time::OffsetDateTime) -> String {
    let ts = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        "{{\"ts\":\"{ts}\",\"level\":\"info\",\"event\":\"response\",\"request_id\":\"{}\",\"route\":\"/v1/chat/completions\",\"model\":\"m{}\",\"tenant\":\"t\",\"status\":200,\"pad\":\"{}\"}}\n",
        req_id(i),
        i % 3,
        "x".repeat(pad)
    )
}

pub fn append_lines(path: &Path, range: std::ops::Range<usize>, pad: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for i in range {
        buf.push_str(&event_line(i, pad));
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// Starts the shipper with the common test settings plus `extra` args.
pub fn start_shipper(rx: &Receiver, dir: &Path, input: &str, extra: &[&str]) -> (Proc, String) {
    start_shipper_wrapped(rx, dir, input, extra, &[])
}

/// Like [`start_shipper`], run through `wrapper` (e.g. `prlimit --nofile=256 --`).
pub fn start_shipper_wrapped(
    rx: &Receiver,
    dir: &Path,
    input: &str,
    extra: &[&str],
    wrapper: &[&str],
) -> (Proc, String) {
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(env!("CARGO_BIN_EXE_log-shipper"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_log-shipper")),
    };
    cmd.args(["--loki-url", &rx.url(), "--input", input, "--positions"])
        .arg(dir.join("positions.json"))
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let defaults = [
        ("--poll-interval-ms", "50"),
        ("--batch-max-wait-ms", "100"),
        ("--retry-initial-backoff-ms", "20"),
        ("--retry-max-backoff-ms", "200"),
        ("--rotate-wait-ms", "500"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra);
    for (k, _) in std::env::vars() {
        if k.starts_with("LOG_SHIPPER_") {
            cmd.env_remove(k);
        }
    }
    let p = Proc::spawn("log-shipper", cmd);
    let addr = p.wait_for_stderr("metrics listening on ", Duration::from_secs(20));
    (p, addr)
}

/// Lines delivered more than once (sum of extra copies).
pub fn duplicates(counts: &HashMap<String, u32>) -> u64 {
    counts
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum()
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}
