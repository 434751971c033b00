//! Cost of SSE framing when one large upstream event arrives in small pieces.
//!
//! `cargo bench -p gateway --bench sse_framing`
//!
//! The same 1 / 4 MiB event is fed to `SseRelay` whole and in 512-byte pieces,
//! side by side. Framing is linear when the two cost about the same per byte
//! (a rescan of the pending buffer on every piece made the 4 MiB case cost
//! seconds).
//!
//! `chunks`: the per-event cost of reading a typical stream, one token per event as
//! vLLM sends it: a chat completion stream and a Responses API stream (issue 13 made
//! the same view read both), 1000 events each, fed one event per `feed`.
//! Measured on branch issue-13 (debug-info release build, the shared 2-core machine at
//! load average ~5): chat 0.70 µs per event (1.44 M events/s), Responses 0.63 µs per
//! event (1.58 M events/s): well under 0.1 % of a 10 ms inter-token interval.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::relay::SseRelay;

fn event(bytes: usize) -> Vec<u8> {
    let mut s = String::from(r#"data: {"choices":[{"index":0,"delta":{"content":""#);
    while s.len() < bytes {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.push_str("\"}}]}\n\n");
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_framing");
    g.sample_size(10);
    for mib in [1usize, 4] {
        let ev = event(mib << 20);
        g.throughput(Throughput::Bytes(ev.len() as u64));
        for piece in [ev.len(), 512] {
            let name = if piece == ev.len() { "whole" } else { "512B" };
            g.bench_with_input(
                BenchmarkId::new(name, format!("{mib}MiB")),
                &piece,
                |b, &p| {
                    b.iter(|| {
                        let mut r = SseRelay::new(false, 4096);
                        let mut n = 0;
                        for chunk in ev.chunks(p) {
                            n += r.feed(chunk).out.len();
                        }
                        black_box(n)
                    })
                },
            );
        }
    }
    g.finish();
}

/// A vLLM-like stream of `n` one-token events (`responses`: Responses API events).
fn stream(n: usize, responses: bool) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if responses {
                format!(
                    "event: response.output_text.delta\ndata: {{\"content_index\":0,\"delta\":\" token\",\"item_id\":\"msg_0123456789abcdef0123456789abcdef\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":{i},\"type\":\"response.output_text.delta\"}}\n\n"
                )
            } else {
                "data: {\"id\":\"chatcmpl-0123456789abcdef\",\"object\":\"chat.completion.chunk\",\"created\":1786650747,\"model\":\"llama-3.1-8b-instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n".to_owned()
            }
            .into_bytes()
        })
        .collect()
}

fn per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunks");
    for (name, responses) in [("chat", false), ("responses", true)] {
        let events = stream(1000, responses);
        g.throughput(Throughput::Elements(events.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut r = SseRelay::new(true, 4096);
                let mut n = 0;
                for ev in &events {
                    n += r.feed(ev).out.len();
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, per_event);
criterion_main!(benches);
