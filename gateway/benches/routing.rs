//! Cost of choosing an endpoint (issue 18): the prefix-affinity key of a
//! request, and `Pool::pick` per policy, on a pool of 4 endpoints.
//!
//! `cargo bench -p gateway --bench routing`
//!
//! The key is computed from the body the gateway parsed for `model` anyway
//! (`proxy::parse_request` notes where `messages` is); what is measured here
//! is the extra work of a `prefix-affinity` pool: one pass over `messages`
//! as raw JSON values up to the first user message, and FNV-1a over the
//! system and first user message. Bodies: a first turn (~0.3 KB) and the
//! 20th turn of the same conversation (~13 KB of history). Results and
//! method: bench/results/routing-2026-12-07.md.

#![allow(clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::api::Api;
use gateway::config::RawConfig;
use gateway::metrics::Metrics;
use gateway::proxy::parse_request;
use gateway::routing::affinity_key;
use gateway::upstream::Upstreams;
use http::HeaderMap;
use serde_json::json;

fn chat_body(turns: usize) -> Bytes {
    let mut messages = vec![
        json!({"role":"system","content":"You are a helpful assistant. Answer briefly and cite sources when you can."}),
        json!({"role":"user","content":"I am planning a trip to Lisbon in May. What should I see?"}),
    ];
    for t in 0..turns {
        messages.push(json!({"role":"assistant","content":format!("{t}: {}", "Here is a detailed answer with several points. ".repeat(12))}));
        messages.push(json!({"role":"user","content":format!("follow-up question number {t}, about food and transport")}));
    }
    Bytes::from(json!({"model":"m","messages":messages,"stream":true,"max_tokens":128}).to_string())
}

fn pools() -> Upstreams {
    let mut text = String::new();
    for policy in [
        "round-robin",
        "least-in-flight",
        "load-aware",
        "prefix-affinity",
    ] {
        text.push_str(&format!(
            "[pools.{policy}]\nrouting = \"{policy}\"\nendpoints = [\"http://10.0.0.1:8000\", \"http://10.0.0.2:8000\", \"http://10.0.0.3:8000\", \"http://10.0.0.4:8000\"]\n"
        ));
    }
    text.push_str("[routing]\ndefault_pool = \"least-in-flight\"\n");
    let cfg = RawConfig::parse(&text)
        .expect("bench config parses")
        .validate()
        .expect("bench config is valid");
    Upstreams::new(&cfg, &Metrics::new()).expect("pools")
}

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let headers = HeaderMap::new();
    for (name, turns) in [("turn1", 0), ("turn20", 19)] {
        let body = chat_body(turns);
        let parsed = parse_request(body.clone(), Api::ChatCompletions).expect("valid body");
        eprintln!("{name}: body {} bytes", body.len());
        c.bench_function(&format!("parse_request/{name}"), |b| {
            b.iter(|| parse_request(black_box(body.clone()), Api::ChatCompletions))
        });
        c.bench_function(&format!("affinity_key/{name}"), |b| {
            b.iter(|| affinity_key(black_box(&headers), black_box(parsed.key_src.as_ref())))
        });
    }
    let up = pools();
    let key = Some(0x1234_5678_9abc_def0_u64);
    for pool in &up.pools {
        c.bench_function(&format!("pick/{}", pool.name), |b| {
            b.iter(|| black_box(pool.pick(black_box(&[]), key)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
