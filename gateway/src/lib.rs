//! llm-gateway: an OpenAI-compatible reverse proxy in front of vLLM.
//!
//! Every request that reaches a `/v1/*` route produces exactly one JSON
//! `response` event ([`events`]) and updates the Prometheus metrics
//! ([`metrics`]).
//!
//! Modules: [`cli`] (flags) · [`config`] (TOML → validated [`config::Config`]) ·
//! [`routes`] (path → handler) · [`api`] (the route table) · [`proxy`] (admission, retry, relay of the
//! answer) · [`upstream`] (client, pools, health checks) · [`relay`] (SSE
//! framing and accumulation) · [`auth`] (API keys → tenants) · [`error`]
//! (OpenAI error shape) · [`events`] (the event writer) · [`metrics`] ·
//! [`routing`] (routing reasons, prefix-affinity keys) · [`scrape`] (endpoint
//! load from the upstreams' `/metrics`) ·
//! `refusal` (refusal detection).

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod metrics;
pub mod proxy;
pub mod refusal;
pub mod relay;
pub mod routes;
pub mod routing;
pub mod scrape;
pub mod server;
pub mod upstream;
