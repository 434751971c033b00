//! Simulated vLLM and load generator.
//!
//! - [`server`]: the simulated vLLM OpenAI-compatible server ([`SimConfig`], [`router`],
//!   [`serve`]) used by the `vllm-sim` binary and embedded by `llm-gateway --demo`.
//! - [`engine`]: the scheduler model (running set, FCFS queue, KV-cache budget, preemption,
//!   prefill lane).
//! - [`prefix`]: automatic prefix caching (approximate tokens, chained block hashes, LRU).
//! - [`metrics`]: vLLM's `vllm:` Prometheus metrics, rendered like Python `prometheus_client`.
//! - [`wire`]: byte-exact vLLM JSON / SSE shapes.
//! - [`text`]: deterministic text, token estimates and refusal phrasings.
//! - [`judge`]: one-word verdicts for llm-gateway's refusal-judge prompts.
//! - [`loadgen`]: traffic scenarios and statistics behind the `loadgen` binary.

mod embeddings;
pub mod engine;
mod features;
mod generate;
pub mod judge;
pub mod loadgen;
pub mod metrics;
mod pooling;
pub mod prefix;
mod responses;
pub mod server;
pub mod text;
pub mod wire;

pub use server::{SimConfig, router, serve};
