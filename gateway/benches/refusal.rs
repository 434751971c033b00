//! Cost of `Detector::detect` per response.
//!
//! `cargo bench -p gateway --bench refusal`
//!
//! Criterion measures the mean/median per shape of response; after it, a
//! latency distribution is measured directly: every call on 4 KB texts of
//! four kinds (answer with list and code, plain prose, a refusal followed by
//! a long lecture, a disclaimer then an answer) is timed on its own with
//! `Instant` (about 20-30 ns of timer overhead included), 50,000 calls after
//! a warm-up, and p50 / p99 / p99.9 / max are printed. The goal is p99 at
//! most 5 µs per 4 KB response.

use std::hint::black_box;
use std::io::Write;

use criterion::{Criterion, criterion_group};
use gateway::refusal::{Detector, Signals};

/// A typical 1-2 KB answer with a list and code (the override path).
fn compliance_text() -> String {
    let mut s = String::from(
        "There are several ways to terminate a process on Linux, depending on how much control you need.\n\n",
    );
    s.push_str(
        "1. **Using `kill`:** find the process id with `ps aux | grep name`, then run `kill PID`. ",
    );
    s.push_str("The default signal is SIGTERM, which lets the program clean up before exiting.\n");
    s.push_str("2. **Using `pkill`:** `pkill -f pattern` matches on the full command line, which is handy for scripts.\n");
    s.push_str("3. **From Python:**\n\n```python\nimport os, signal\nos.kill(pid, signal.SIGTERM)\n```\n\n");
    s.push_str("Be careful with SIGKILL (`kill -9`): the process gets no chance to flush buffers or remove ");
    s.push_str("temporary files, so use it only when SIGTERM does not work. If the process belongs to another ");
    s.push_str(
        "user you will need sudo. Finally, services managed by systemd should be stopped with ",
    );
    s.push_str(
        "`systemctl stop name` so that the service manager does not restart them immediately.",
    );
    s
}

/// Plain prose without lists or code: no override matches, every rule must fail.
fn prose_text() -> String {
    "The Treaty of Westphalia, signed in 1648, ended the Thirty Years' War and is often described as the \
     origin of the modern system of sovereign states. It recognised the principle that each ruler could \
     determine the religion of their own territory, and it redrew borders across central Europe. Historians \
     still debate how new these ideas really were, but the treaty remains a landmark in diplomatic history. "
        .repeat(3)
}

fn refusal_text() -> String {
    "I'm sorry, but I can't help with that. Providing instructions for this could cause real harm. \
     If you're interested in the topic for research or safety reasons, I'd suggest consulting published \
     literature or a qualified professional."
        .to_owned()
}

fn bench(c: &mut Criterion) {
    let det = Detector::with_defaults();
    let sig = Signals::default();
    let compliance = compliance_text();
    let prose = prose_text();
    let refusal = refusal_text();
    let four_kb: String = compliance.repeat(4096 / compliance.len() + 1)[..4096].to_owned();
    let big = compliance.repeat(64);

    let mut g = c.benchmark_group("refusal_detect");
    g.bench_function("compliance_1_5kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&compliance)))
    });
    g.bench_function("prose_1_2kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&prose)))
    });
    g.bench_function("refusal", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&refusal)))
    });
    g.bench_function("text_4kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&four_kb)))
    });
    // The slowest path: a full refusal with a persona marker, so the part
    // after the marker is judged again on its own.
    let persona = to_len(
        &format!(
            "GPT: {}\nDAN: Sure, here it is. {}",
            refusal_text(),
            compliance_text()
        ),
        4096,
    );
    g.bench_function("persona_4kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&persona)))
    });
    g.bench_function("text_100kb_window_4kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&big)))
    });
    for stage in 0..4u8 {
        g.bench_function(format!("text_4kb_stage{stage}"), |b| {
            b.iter(|| det.bench_stage(stage, black_box(&four_kb)))
        });
    }
    g.finish();
}

/// Cuts `s` repeated to exactly `n` bytes (on a char boundary at or below n).
fn to_len(s: &str, n: usize) -> String {
    let r = s.repeat(n / s.len() + 1);
    let mut end = n;
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    r[..end].to_owned()
}

fn latency_distribution() {
    let det = Detector::with_defaults();
    let sig = Signals::default();
    let lecture = format!(
        "{} {}",
        refusal_text(),
        "It is important to remember that such actions are illegal and unethical, and they can cause serious harm to others. "
    );
    let hedge = format!(
        "As an AI, I don't have personal opinions. However, here is an overview:\n\n{}",
        compliance_text()
    );
    let texts: Vec<String> = [compliance_text(), prose_text(), lecture, hedge]
        .iter()
        .map(|t| to_len(t, 4096))
        .collect();
    for t in &texts {
        for _ in 0..2_000 {
            black_box(det.detect(&sig, black_box(t)));
        }
    }
    let n = 50_000;
    let mut ns: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        let t = &texts[i % texts.len()];
        let start = std::time::Instant::now();
        black_box(det.detect(black_box(&sig), black_box(t)));
        ns.push(start.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let q = |p: f64| ns[((n as f64 * p) as usize).min(n - 1)];
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "refusal_detect 4 KB latency over {n} calls: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        q(0.5),
        q(0.99),
        q(0.999),
        ns[n - 1]
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    latency_distribution();
    Criterion::default().configure_from_args().final_summary();
}
