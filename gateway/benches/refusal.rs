//! Cost of `Detector::detect` per response.
//!
//! `cargo bench -p gateway --bench refusal`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
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
    g.bench_function("text_100kb_window_4kb", |b| {
        b.iter(|| det.detect(black_box(&sig), black_box(&big)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
