//! Cost of SSE framing when one large upstream event arrives in small pieces.
//!
//! `cargo bench -p gateway --bench sse_framing`
//!
//! The same 1 / 4 MiB event is fed to `SseRelay` whole and in 512-byte pieces,
//! side by side. Framing is linear when the two cost about the same per byte
//! (a rescan of the pending buffer on every piece made the 4 MiB case cost
//! seconds).

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

criterion_group!(benches, bench);
criterion_main!(benches);
