//! Throughput benchmark: ships a large pre-written file of realistic gateway events to
//! an in-process receiver that accepts everything (the Loki-faithful test peer with
//! recording off), and reports lines/s, MB/s (wall and per CPU-second of the shipper
//! process) and the shipper's peak RSS.
//!
//! `cargo bench -p log-shipper --bench throughput`; `BENCH_LINES` (default 600000)
//! sets the file size, `BENCH_PIN_CPU=0` pins the shipper to CPU 0 with `taskset`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use log_shipper::receiver::{self, ReceiverConfig};

fn event(i: usize, ts: &str) -> String {
    const MODELS: [&str; 3] = [
        "llama-3.1-8b-instruct",
        "qwen2.5-32b-instruct",
        "mistral-7b-instruct",
    ];
    const TENANTS: [&str; 4] = ["acme", "globex", "initech", "anonymous"];
    let status = if i.is_multiple_of(50) {
        502
    } else if i.is_multiple_of(20) {
        429
    } else {
        200
    };
    let level = if status >= 500 {
        "error"
    } else if status >= 400 {
        "warn"
    } else {
        "info"
    };
    let error_type = match status {
        502 => "\"upstream_unreachable\"",
        429 => "\"tenant_rate_limited\"",
        _ => "null",
    };
    let finish = if status == 200 { "\"stop\"" } else { "null" };
    format!(
        concat!(
            "{{\"ts\":\"{ts}\",\"level\":\"{level}\",\"event\":\"response\",\"request_id\":\"01JD{i:022}\",",
            "\"route\":\"/v1/chat/completions\",\"model\":\"{model}\",\"tenant\":\"{tenant}\",\"upstream\":\"pool-a\",",
            "\"endpoint\":\"10.0.3.17:8000\",\"stream\":{stream},\"status\":{status},\"finish_reason\":{finish},",
            "\"latency_ms\":{lat}.{frac},\"ttft_ms\":{ttft}.5,\"prompt_tokens\":{pt},\"completion_tokens\":{ct},",
            "\"refusal\":false,\"refusal_reason\":null,\"cost_usd\":0.000{cost},\"error_type\":{error_type},",
            "\"schema_version\":1}}\n"
        ),
        ts = ts,
        level = level,
        i = i,
        model = MODELS[i % 3],
        tenant = TENANTS[i % 4],
        stream = i.is_multiple_of(2),
        status = status,
        finish = finish,
        lat = 200 + i % 5000,
        frac = i % 1000,
        ttft = 20 + i % 300,
        pt = 10 + i % 2000,
        ct = i % 1000,
        cost = 100 + i % 900,
        error_type = error_type,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` discovery
    }
    let lines: usize = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600_000);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.log");
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let ts = format!("{}.123Z", &ts[..19]);
    {
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&log).unwrap());
        for i in 0..lines {
            f.write_all(event(i, &ts).as_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
    let bytes = std::fs::metadata(&log).unwrap().len();
    println!(
        "file: {lines} lines, {:.1} MB, {:.0} bytes/line",
        bytes as f64 / 1e6,
        bytes as f64 / lines as f64
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver::spawn(l, ReceiverConfig::default()).unwrap()
    });

    let mut cmd = match std::env::var("BENCH_PIN_CPU") {
        Ok(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu, env!("CARGO_BIN_EXE_log-shipper")]);
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_log-shipper")),
    };
    cmd.args(["--loki-url", &format!("http://{}", handle.addr), "--input"])
        .arg(&log)
        .arg("--positions")
        .arg(dir.path().join("positions.json"))
        .args(["--exit-on-eof", "--poll-interval-ms", "100"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut summary = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("stopped") {
            summary = line;
        }
    }
    let status = child.wait().unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(status.success(), "shipper failed: {status:?}");
    let stats = handle.state.stats();
    assert_eq!(
        stats.accepted_entries, lines as u64,
        "every line must arrive"
    );
    let field = |name: &str| -> f64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let cpu = field("cpu_seconds");
    let rss = field("peak_rss_bytes");
    println!(
        "wall: {wall:.2} s, shipper CPU: {cpu:.2} s, requests: {}",
        stats.requests
    );
    println!(
        "throughput (wall):    {:>10.0} lines/s  {:>7.1} MB/s",
        lines as f64 / wall,
        bytes as f64 / 1e6 / wall
    );
    if cpu > 0.0 {
        println!(
            "throughput (per CPU): {:>10.0} lines/s  {:>7.1} MB/s",
            lines as f64 / cpu,
            bytes as f64 / 1e6 / cpu
        );
    }
    println!("peak RSS: {:.1} MB", rss / 1e6);
    handle.stop.cancel();
}
