//! llm-gateway: an OpenAI-compatible reverse proxy in front of vLLM.
//!
//! Every request that reaches a `/v1/*` route produces exactly one JSON
//! `response` event and updates the Prometheus metrics.

pub mod refusal;
