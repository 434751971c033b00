//! The simulated vLLM HTTP server: configuration, routes and the generation loop.
//!
//! Each served model is its own simulated engine ([`crate::engine::Engine`]) with its own
//! scheduler and metric series, as if several vLLM instances shared one port.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::features;
use crate::generate::{Aborted, ChoicePlan, Out, Plan, run, total_tokens};
use crate::metrics::{self, Finish, HttpMetrics, ModelMetrics};
use crate::responses::ResponsesMeta;
use crate::text;
use crate::wire::{self, FinalChoice, Kind, Usage};

/// vLLM version reported by `GET /version`.
pub const VLLM_VERSION: &str = "0.11.0";

/// Simulator settings (flags of `vllm-sim`; per-request headers override some of them).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Served model names; each one is a separate simulated engine.
    pub models: Vec<String>,
    /// Prefill time: from scheduling to the first token, in milliseconds.
    pub ttft_ms: u64,
    /// Decode speed per request; `0` means instant.
    pub tokens_per_second: f64,
    /// Output length when the request sets no smaller `max_tokens`.
    pub max_tokens_default: u32,
    /// Requests running at once; the rest wait in a FCFS queue.
    pub max_concurrency: usize,
    /// KV-cache budget in tokens (prompt + generated of running requests).
    pub kv_cache_tokens: u64,
    /// Share of requests answered with HTTP 500 (0..=1).
    pub error_ratio: f64,
    /// Share of requests answered with a refusal text (0..=1).
    pub refusal_ratio: f64,
    /// Seed of every deterministic choice (text, ratios).
    pub seed: u64,
    /// Like vLLM `--api-key`: when set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Context window reported in `/v1/models` and enforced on requests.
    pub max_model_len: u32,
    /// Prefill compute per engine in prompt tokens per second: each request's *uncached*
    /// prompt tokens take `tokens / rate` of a FCFS lane, on top of `ttft_ms`. `0` = prefill
    /// time does not depend on the prompt (only `ttft_ms`).
    pub prefill_tokens_per_second: f64,
    /// Speed of this replica relative to the flags: decode and prefill rates are
    /// multiplied by it, `ttft_ms` divided by it (0.5 = half as fast).
    pub speed_factor: f64,
    /// KV-cache block size in tokens (vLLM `--block-size`, default 16).
    pub block_size: u64,
    /// Automatic prefix caching (vLLM V1's default; `--no-enable-prefix-caching` turns it off).
    pub prefix_caching: bool,
    /// The Responses API store (vLLM: `VLLM_ENABLE_RESPONSES_API_STORE=1`; off by default).
    pub responses_store: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            models: vec!["sim-model".to_owned()],
            ttft_ms: 50,
            tokens_per_second: 200.0,
            max_tokens_default: 64,
            max_concurrency: 64,
            kv_cache_tokens: 65536,
            error_ratio: 0.0,
            refusal_ratio: 0.0,
            seed: 42,
            api_key: None,
            max_model_len: 32768,
            prefill_tokens_per_second: 0.0,
            speed_factor: 1.0,
            block_size: metrics::BLOCK_SIZE,
            prefix_caching: true,
            responses_store: false,
        }
    }
}

pub(crate) struct Sim {
    pub(crate) cfg: SimConfig,
    engines: Vec<(String, Arc<Engine>)>,
    counter: AtomicU64,
    started: u64,
    http: HttpMetrics,
    /// Stored Responses API responses (with `responses_store`).
    pub(crate) store: Option<Arc<crate::responses::ResponseStore>>,
}

impl Sim {
    pub(crate) fn engine(&self, model: &str) -> Option<&Arc<Engine>> {
        self.engines
            .iter()
            .find(|(n, _)| n == model)
            .map(|(_, e)| e)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The simulator's routes (no listener): `/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings`, `/v1/models`, `/health`, `/metrics`, `/version`.
pub fn router(cfg: SimConfig) -> Router {
    let mut cfg = cfg;
    if cfg.models.is_empty() {
        cfg.models.push("sim-model".to_owned());
    }
    let token_buckets: &'static [f64] =
        Box::leak(metrics::buckets_1_2_5(cfg.max_model_len).into_boxed_slice());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let engines = cfg
        .models
        .iter()
        .map(|m| {
            let metrics = ModelMetrics::new(m, token_buckets, created);
            (
                m.clone(),
                Arc::new(Engine::with_cache(
                    metrics,
                    cfg.max_concurrency,
                    cfg.kv_cache_tokens,
                    cfg.block_size,
                    cfg.prefix_caching,
                )),
            )
        })
        .collect();
    let cfg_store = cfg.responses_store;
    let sim = Arc::new(Sim {
        cfg,
        engines,
        counter: AtomicU64::new(0),
        started: unix_now(),
        http: HttpMetrics::new(created),
        store: cfg_store.then(Default::default),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/responses", post(responses_api))
        .route("/v1/responses/{id}", get(crate::responses::retrieve))
        .route("/v1/responses/{id}/cancel", post(crate::responses::cancel))
        .route("/tokenize", post(crate::pooling::tokenize))
        .route("/detokenize", post(crate::pooling::detokenize))
        .route("/v1/rerank", post(crate::pooling::rerank))
        .route("/rerank", post(crate::pooling::rerank))
        .route("/v2/rerank", post(crate::pooling::rerank))
        .route("/v1/score", post(crate::pooling::score))
        .route("/score", post(crate::pooling::score))
        .route("/pooling", post(crate::pooling::pooling))
        .route("/classify", post(crate::pooling::classify))
        .route(
            "/v1/audio/transcriptions",
            post(crate::pooling::transcription),
        )
        .route(
            "/v1/audio/translations",
            post(crate::pooling::transcription),
        )
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .route("/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&sim), auth))
        .layer(middleware::from_fn_with_state(Arc::clone(&sim), instrument))
        .layer(middleware::from_fn(cors))
        .with_state(sim)
}

/// Serve the simulator on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Like uvicorn: TCP_NODELAY, so small SSE writes are not held back by Nagle + delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(cfg))
        .with_graceful_shutdown(shutdown)
        .await
}

// ---------------------------------------------------------------------------------------
// Small responses

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn vllm_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
) -> Response {
    json_response(
        status,
        wire::error_body(message, kind, param, status.as_u16()),
    )
}

fn unauthorized() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        b"{\"error\":\"Unauthorized\"}".to_vec(),
    )
}

async fn auth(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    if let Some(key) = &sim.cfg.api_key
        && req.uri().path().starts_with("/v1")
    {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key);
        if !ok {
            return unauthorized();
        }
    }
    next.run(req).await
}

/// `http_requests_total` like prometheus-fastapi-instrumentator: the route template as
/// `handler` (`none` when no route matched, the instrumentator's `should_group_untemplated`),
/// the method, the grouped status of the response head (a stream that fails after its 200
/// head counts as 2xx, as in vLLM).
async fn instrument(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let handler = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "none".to_owned(), |m| m.as_str().to_owned());
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::PATCH => "PATCH",
        _ => "OTHER",
    };
    let resp = next.run(req).await;
    sim.http.observe(&handler, method, resp.status().as_u16());
    resp
}

/// CORS as vLLM sets it up: Starlette's `CORSMiddleware` with `--allowed-origins`,
/// `--allowed-methods` and `--allowed-headers` at their defaults (`["*"]`, no credentials).
/// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
/// before routing and authentication: 200 `OK`, `Access-Control-Allow-Origin: *`, every
/// method, the requested headers, max age 600. Other requests with an `Origin` get
/// `Access-Control-Allow-Origin: *`.
async fn cors(req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::ORIGIN) {
        return next.run(req).await;
    }
    if req.method() == axum::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut r = Response::new(Body::from("OK"));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        if let Some(v) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        return r;
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        b"{\"detail\":\"Not Found\"}".to_vec(),
    )
}

/// vLLM's `/health`: 200, or 503 once the engine is dead (`EngineDeadError`,
/// `vllm/entrypoints/openai/api_server.py`). With several simulated engines, one dead
/// engine fails the whole server's health, as one vLLM process would.
async fn health(State(sim): State<Arc<Sim>>) -> Response {
    if sim.engines.iter().any(|(_, e)| e.is_dead()) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    StatusCode::OK.into_response()
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        format!("{{\"version\":\"{VLLM_VERSION}\"}}").into_bytes(),
    )
}

async fn metrics_page(State(sim): State<Arc<Sim>>) -> Response {
    let list: Vec<_> = sim
        .engines
        .iter()
        .map(|(_, e)| (&e.metrics, e.gauges()))
        .collect();
    let mut body = metrics::render(&list);
    metrics::render_cache_config_info(
        &mut body,
        sim.cfg.kv_cache_tokens,
        sim.cfg.block_size,
        sim.cfg.prefix_caching,
    );
    sim.http.render(&mut body);
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

async fn models(State(sim): State<Arc<Sim>>) -> Response {
    use std::io::Write as _;
    let created = sim.started;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, m) in sim.cfg.models.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let h = text::mix64(sim.cfg.seed ^ (i as u64));
        out.extend_from_slice(b"{\"id\":");
        wire::json_str(&mut out, m);
        let _ = write!(
            out,
            ",\"object\":\"model\",\"created\":{created},\"owned_by\":\"vllm\",\"root\":"
        );
        wire::json_str(&mut out, m);
        let _ = write!(
            out,
            ",\"parent\":null,\"max_model_len\":{},\"permission\":[{{\"id\":\"modelperm-{:016x}{:016x}\",\"object\":\"model_permission\",\"created\":{created},\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,\"is_blocking\":false}}]}}",
            sim.cfg.max_model_len,
            h,
            text::mix64(h)
        );
    }
    out.extend_from_slice(b"]}");
    json_response(StatusCode::OK, out)
}

// ---------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
    continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Message {
    /// Any JSON; only a string role is used (for the simulated chat template).
    #[serde(default)]
    role: Option<serde_json::Value>,
    #[serde(default)]
    content: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct GenRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
    /// Responses API: the input (a string or a list of items).
    #[serde(default)]
    input: Option<serde_json::Value>,
    /// Responses API.
    #[serde(default)]
    instructions: Option<String>,
    /// Responses API: continue a stored response (404 if this server has none).
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Responses API: store the response (default true; only with the store enabled).
    #[serde(default)]
    store: Option<bool>,
    /// Responses API.
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    /// Chat: `true` for logprobs (then `top_logprobs` alternatives).
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    stop: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<serde_json::Value>,
}

/// Per-request behaviours forced by `x-sim-behavior` (or drawn from the ratios).
#[derive(Debug, Default, Clone, Copy)]
struct Behavior {
    refuse: bool,
    error: bool,
    error_midstream: bool,
    error_flat: bool,
    error_empty: bool,
    engine_death: bool,
    unauthorized: bool,
    slow: bool,
    length: bool,
}

impl Behavior {
    fn parse(headers: &HeaderMap) -> Self {
        let mut b = Self::default();
        for v in headers.get_all("x-sim-behavior") {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                match item.trim().to_ascii_lowercase().as_str() {
                    "refuse" | "refusal" => b.refuse = true,
                    "error" => b.error = true,
                    "error-midstream" => b.error_midstream = true,
                    "error-flat" => b.error_flat = true,
                    "error-empty" => b.error_empty = true,
                    "engine-death" => b.engine_death = true,
                    "unauthorized" => b.unauthorized = true,
                    "slow" => b.slow = true,
                    "length" => b.length = true,
                    _ => {}
                }
            }
        }
        b
    }
}

fn header_parse<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Text of a chat message content (a string or a list of parts).
fn content_text(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// One prompt: its hashable text and its token count.
pub(crate) struct Prompt {
    pub(crate) hash: u64,
    pub(crate) tokens: u32,
}

pub(crate) fn completion_prompts(
    v: &serde_json::Value,
    seed: u64,
) -> Result<Vec<Prompt>, &'static str> {
    use serde_json::Value;
    let one = |v: &Value| -> Result<Prompt, &'static str> {
        match v {
            Value::String(s) => Ok(Prompt {
                hash: text::hash_bytes(seed, s.as_bytes()),
                tokens: text::estimate_tokens(s) + 1,
            }),
            Value::Array(ids) if ids.iter().all(Value::is_u64) => Ok(Prompt {
                hash: text::hash_bytes(seed, v.to_string().as_bytes()),
                tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            }),
            _ => Err("prompt must be a string, an array of strings, or token ids"),
        }
    };
    match v {
        Value::Array(items) if !items.is_empty() && !items.iter().all(Value::is_u64) => {
            items.iter().map(one).collect()
        }
        Value::Array(items) if items.is_empty() => Err("Prompt cannot be empty"),
        other => Ok(vec![one(other)?]),
    }
}

async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(sim, Kind::Chat, false, headers, body).await
}

async fn completions(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(sim, Kind::Completion, false, headers, body).await
}

/// `POST /v1/responses`: generated like a chat answer, written as the Responses API.
async fn responses_api(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(sim, Kind::Chat, true, headers, body).await
}

pub(crate) fn bad_request(msg: &str) -> Response {
    vllm_error(StatusCode::BAD_REQUEST, msg, "BadRequestError", None)
}

async fn generate(
    sim: Arc<Sim>,
    kind: Kind,
    responses: bool,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Instant::now();
    // FastAPI request validation failures (bad JSON, wrong types) → 400 "Bad Request".
    let req: GenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("JSON decode error: {e}");
            return vllm_error(StatusCode::BAD_REQUEST, &msg, "Bad Request", None);
        }
    };
    let cfg = &sim.cfg;
    let model = match req.model.as_deref() {
        None | Some("") => cfg.models[0].clone(),
        Some(m) => m.to_owned(),
    };
    let Some(engine) = sim.engine(&model).cloned() else {
        let msg = format!("The model `{model}` does not exist.");
        return vllm_error(StatusCode::NOT_FOUND, &msg, "NotFoundError", Some("model"));
    };
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream && !responses {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "Stream options can only be defined when `stream=True`.",
            "Bad Request",
            None,
        );
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > 128 {
        return bad_request(&format!("n must be between 1 and 128, got {n}."));
    }
    let max_tokens = if responses {
        req.max_output_tokens
    } else {
        req.max_completion_tokens.or(req.max_tokens)
    };
    if max_tokens == Some(0) {
        return bad_request("max_tokens must be at least 1, got 0.");
    }
    let seed = cfg.seed ^ req.seed.map_or(0, text::mix64);
    // A refusal-judge prompt of llm-gateway gets a one-word verdict (crate::judge).
    let mut judge_verdict = None;
    // Token ids of a single prompt, for the prefix cache (approximate, see `prefix`).
    let prompt_ids: Option<Vec<u64>>;
    // Responses API: the conversation so far, kept with a stored response.
    let mut responses_history = String::new();
    let prompts = match kind {
        Kind::Chat if responses => {
            let Some(input) = &req.input else {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    "Field required: input",
                    "Bad Request",
                    None,
                );
            };
            // vLLM `_construct_input_messages`: the new instructions, then the
            // previous response's input (without its instructions) and output,
            // then the new input.
            let mut history = String::new();
            if let Some(prev) = &req.previous_response_id {
                match sim.store.as_ref().and_then(|s| s.history(prev)) {
                    Some(h) => history = h,
                    None => return crate::responses::not_found(prev),
                }
            }
            match input {
                serde_json::Value::String(s) => history.push_str(s),
                serde_json::Value::Array(items) => {
                    for item in items {
                        if let Some(c) = item.get("content") {
                            content_text(c, &mut history);
                        }
                    }
                }
                _ => return bad_request("input must be a string or a list of input items"),
            }
            let mut all = req.instructions.clone().unwrap_or_default();
            all.push_str(&history);
            responses_history = history;
            let mut ids = Vec::new();
            crate::prefix::push_text(&mut ids, &all);
            ids.extend_from_slice(&crate::prefix::chat_tokens(std::iter::empty()));
            prompt_ids = Some(ids);
            vec![Prompt {
                hash: text::hash_bytes(seed, all.as_bytes()),
                tokens: text::CHAT_PROMPT_OVERHEAD.saturating_add(text::estimate_tokens(&all)),
            }]
        }
        Kind::Chat => {
            let Some(messages) = &req.messages else {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    "Field required: messages",
                    "Bad Request",
                    None,
                );
            };
            let mut all = String::new();
            let mut tokens = text::CHAT_PROMPT_OVERHEAD;
            let mut spans = Vec::with_capacity(messages.len());
            for m in messages {
                let start = all.len();
                if let Some(c) = &m.content {
                    content_text(c, &mut all);
                }
                spans.push((start, all.len()));
                tokens = tokens
                    .saturating_add(text::estimate_tokens(&all[start..]))
                    .saturating_add(text::CHAT_MESSAGE_OVERHEAD);
                all.push('\n');
            }
            judge_verdict = crate::judge::answer(&all);
            prompt_ids = Some(crate::prefix::chat_tokens(messages.iter().zip(&spans).map(
                |(m, (a, b))| {
                    let role = m
                        .role
                        .as_ref()
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("user");
                    (role, &all[*a..*b])
                },
            )));
            vec![Prompt {
                hash: text::hash_bytes(seed, all.as_bytes()),
                tokens,
            }]
        }
        Kind::Completion => {
            let Some(p) = &req.prompt else {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    "Field required: prompt",
                    "Bad Request",
                    None,
                );
            };
            match completion_prompts(p, seed) {
                Ok(v) => {
                    prompt_ids = match p {
                        serde_json::Value::String(s) => Some(crate::prefix::completion_tokens(s)),
                        serde_json::Value::Array(ids)
                            if ids.iter().all(serde_json::Value::is_u64) =>
                        {
                            Some(ids.iter().filter_map(serde_json::Value::as_u64).collect())
                        }
                        _ => None,
                    };
                    v
                }
                Err(msg) => return bad_request(msg),
            }
        }
    };
    let prompt_tokens: u32 = prompts
        .iter()
        .map(|p| p.tokens)
        .fold(0, u32::saturating_add);
    let longest_prompt = prompts.iter().map(|p| p.tokens).max().unwrap_or(0);
    let limit = cfg.max_model_len;
    let requested = longest_prompt.saturating_add(max_tokens.unwrap_or(0));
    if longest_prompt >= limit || requested > limit {
        let msg = format!(
            "This model's maximum context length is {limit} tokens. However, you requested {requested} tokens ({longest_prompt} in the messages, {} in the completion). Please reduce the length of the messages or completion.",
            max_tokens.unwrap_or(0)
        );
        return bad_request(&msg);
    }

    // Behaviour of this request.
    let mut b = Behavior::parse(&headers);
    let ticket = sim.counter.fetch_add(1, Ordering::Relaxed);
    if cfg.error_ratio > 0.0
        && text::unit_f64(text::mix64(cfg.seed ^ ticket.wrapping_mul(2))) < cfg.error_ratio
    {
        b.error = true;
    }
    if cfg.refusal_ratio > 0.0
        && text::unit_f64(text::mix64(
            cfg.seed ^ ticket.wrapping_mul(2).wrapping_add(1),
        )) < cfg.refusal_ratio
    {
        b.refuse = true;
    }
    if b.unauthorized {
        return unauthorized();
    }
    // Engine death (vLLM V1: the EngineCore process is gone, AsyncLLM raises EngineDeadError;
    // `vllm/entrypoints/launcher.py` answers it with a bare 500, no body). This request
    // kills the engine; every later one meets the dead engine. Nothing is counted in
    // `vllm:request_success_total`: the request never finishes in the engine.
    if b.engine_death {
        engine.kill();
    }
    if engine.is_dead() || b.error_empty {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if b.error_flat {
        engine.metrics.add_error();
        let body = wire::flat_error_body("Internal server error", "InternalServerError", 500);
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, body);
    }
    if b.error {
        engine.metrics.add_error();
        return vllm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal server error",
            "InternalServerError",
            None,
        );
    }

    // Output plan.
    let tool_call = if kind == Kind::Chat && !responses {
        features::tool_call(req.tools.as_deref(), req.tool_choice.as_ref())
    } else {
        None
    };
    let json_output = features::json_format(req.response_format.as_ref());
    let stops = features::stop_strings(req.stop.as_ref());
    let logprobs = match kind {
        Kind::Chat if !responses && req.logprobs == Some(true) => {
            Some(req.top_logprobs.unwrap_or(0))
        }
        _ => None,
    };
    let target =
        header_parse::<u32>(&headers, "x-sim-output-tokens").unwrap_or(cfg.max_tokens_default);
    let mut choices = Vec::with_capacity(prompts.len() * n as usize);
    for (pi, p) in prompts.iter().enumerate() {
        for i in 0..n {
            let index = u32::try_from(pi)
                .unwrap_or(0)
                .saturating_mul(n)
                .saturating_add(i);
            let h = text::mix64(p.hash ^ u64::from(i).wrapping_mul(0x9E37));
            let mut words = Vec::new();
            let mut tool = None;
            let mut tokens: Vec<Cow<'static, str>> = if let Some(v) = judge_verdict {
                features::pieces(v)
            } else if b.refuse {
                text::split_tokens(text::refusal_text(h), &mut words);
                words.into_iter().map(Cow::Borrowed).collect()
            } else if let Some((name, schema)) = &tool_call {
                // `tool_choice` required / named: the output is the call's arguments.
                tool = Some((
                    format!("chatcmpl-tool-{:016x}{:016x}", h, text::mix64(h)),
                    name.clone(),
                ));
                features::pieces(&features::json_for_schema(schema.as_ref(), h))
            } else if let Some(schema) = &json_output {
                features::pieces(&features::json_for_schema(Some(schema), h))
            } else {
                text::word_tokens(h, target as usize, &mut words);
                if kind == Kind::Chat
                    && let Some(first) = words.first_mut()
                {
                    *first = first.trim_start();
                }
                words.into_iter().map(Cow::Borrowed).collect()
            };
            let want = tokens.len();
            let mut finish = if b.length {
                Finish::Length
            } else {
                Finish::Stop
            };
            let mut stop_reason = None;
            if tool.is_none() {
                stop_reason = features::apply_stop(&mut tokens, &stops);
            }
            if let Some(m) = max_tokens
                && (m as usize) < tokens.len().min(want)
            {
                tokens.truncate(m as usize);
                finish = Finish::Length;
                stop_reason = None;
            }
            let api_finish = match (finish, &tool) {
                (Finish::Stop, Some(_)) => "tool_calls",
                (f, _) => f.as_str(),
            };
            choices.push(ChoicePlan {
                index,
                tokens,
                finish,
                api_finish,
                tool,
                stop_reason,
                lp_seed: h,
            });
        }
    }
    let mut ttft_ms = header_parse::<u64>(&headers, "x-sim-ttft-ms").unwrap_or(cfg.ttft_ms);
    if b.slow {
        ttft_ms = ttft_ms.saturating_mul(10).max(500);
    }
    let tps =
        header_parse::<f64>(&headers, "x-sim-tokens-per-second").unwrap_or(cfg.tokens_per_second);
    let speed = if cfg.speed_factor.is_finite() && cfg.speed_factor > 0.0 {
        cfg.speed_factor
    } else {
        1.0
    };
    let bs = usize::try_from(engine.block_size()).unwrap_or(16);
    let prompt_hashes: std::sync::Arc<[u64]> = match (&prompt_ids, engine.caching()) {
        (Some(ids), true) => crate::prefix::block_hashes(ids, bs).into(),
        _ => std::sync::Arc::from(Vec::new()),
    };
    // The answer's blocks are cached for chat text answers (resent as an assistant
    // message in the next turn); tool calls and the Responses API keep only the prompt.
    let cache_answer = kind == Kind::Chat
        && !responses
        && tool_call.is_none()
        && engine.caching()
        && prompt_ids.is_some();
    let prompt_ids = if engine.caching() { prompt_ids } else { None };
    let base_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{base_id}"),
        Kind::Completion => format!("cmpl-{base_id}"),
    };
    let (include_usage, continuous_usage) = match &req.stream_options {
        Some(o) => {
            let inc = o.include_usage.unwrap_or(true);
            (inc, inc && o.continuous_usage_stats.unwrap_or(false))
        }
        None => (false, false),
    };
    let params_max_tokens = max_tokens.unwrap_or(limit.saturating_sub(longest_prompt));
    let responses = responses.then(|| ResponsesMeta {
        id: format!("resp_{base_id}"),
        created_at: unix_now(),
        model: model.clone(),
        instructions: req.instructions.clone(),
        previous_response_id: req.previous_response_id.clone(),
        store: sim
            .store
            .clone()
            .filter(|_| req.store != Some(false))
            .map(|s| (s, std::mem::take(&mut responses_history))),
        max_output_tokens: params_max_tokens,
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
    });
    let plan = Plan {
        kind,
        id,
        created: unix_now(),
        model,
        engine,
        prompt_tokens,
        choices,
        n,
        include_usage,
        continuous_usage,
        prefill: Duration::from_secs_f64(ttft_ms as f64 / 1000.0 / speed),
        tokens_per_second: if tps.is_finite() && tps > 0.0 {
            tps * speed
        } else {
            0.0
        },
        prefill_tokens_per_second: if cfg.prefill_tokens_per_second.is_finite()
            && cfg.prefill_tokens_per_second > 0.0
        {
            cfg.prefill_tokens_per_second * speed
        } else {
            0.0
        },
        midstream_error: b.error_midstream,
        params_max_tokens,
        responses,
        logprobs,
        prompt_ids,
        prompt_hashes,
        cache_answer,
    };
    let instant = plan.prefill.is_zero()
        && plan.tokens_per_second == 0.0
        && plan.prefill_tokens_per_second == 0.0;

    if !stream {
        let mut out = Out::collect(plan.choices.len());
        return match run(&plan, &mut out, arrival).await {
            Ok(()) if plan.midstream_error => vllm_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
                "InternalServerError",
                None,
            ),
            Ok(()) if plan.responses.is_some() => {
                let usage = Usage {
                    prompt: plan.prompt_tokens,
                    completion: total_tokens(&plan),
                };
                let status = match plan.choices.first().map(|c| c.finish) {
                    Some(Finish::Length) => "incomplete",
                    _ => "completed",
                };
                let mut body = Vec::with_capacity(1024);
                if let Some(meta) = &plan.responses {
                    let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                    let text = out.texts.first().map_or("", String::as_str);
                    crate::responses::write_response(
                        &mut body,
                        meta,
                        status,
                        Some(crate::responses::Message { id: &msg_id, text }),
                        Some(usage),
                    );
                    meta.keep(&body, text);
                }
                json_response(StatusCode::OK, body)
            }
            Ok(()) => {
                let finals: Vec<FinalChoice> = plan
                    .choices
                    .iter()
                    .zip(out.texts)
                    .map(|(c, text)| FinalChoice {
                        index: c.index,
                        text,
                        finish_reason: c.api_finish,
                        logprobs: plan
                            .logprobs
                            .map(|top| wire::chat_logprobs(&c.tokens, top, c.lp_seed)),
                        stop_reason: c.stop_reason.clone(),
                        tool: c.tool.clone(),
                    })
                    .collect();
                let usage = Usage {
                    prompt: plan.prompt_tokens,
                    completion: total_tokens(&plan),
                };
                json_response(
                    StatusCode::OK,
                    wire::full_response(
                        plan.kind,
                        &plan.id,
                        plan.created,
                        &plan.model,
                        &finals,
                        usage,
                    ),
                )
            }
            Err(Aborted) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
    }
    if instant {
        let mut out = Out::buffer();
        // Cannot be aborted except by dropping this future.
        let _ = run(&plan, &mut out, arrival).await;
        return sse_response(Body::from(out.buf));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut out = Out::channel(tx);
        let _ = run(&plan, &mut out, arrival).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures_util::StreamExt::map(stream, Ok::<Bytes, Infallible>);
    sse_response(Body::from_stream(stream))
}

fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behavior_parse_list() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-sim-behavior",
            HeaderValue::from_static("refuse, Slow,unknown"),
        );
        let b = Behavior::parse(&h);
        assert!(b.refuse && b.slow && !b.error);
    }

    #[test]
    fn completion_prompt_shapes() {
        let p = completion_prompts(&serde_json::json!("abcdefgh"), 1).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].tokens, 3);
        let p = completion_prompts(&serde_json::json!(["a", "b"]), 1).unwrap();
        assert_eq!(p.len(), 2);
        let p = completion_prompts(&serde_json::json!([1, 2, 3]), 1).unwrap();
        assert_eq!((p.len(), p[0].tokens), (1, 3));
        let p = completion_prompts(&serde_json::json!([[1, 2], [3]]), 1).unwrap();
        assert_eq!(p.len(), 2);
        assert!(completion_prompts(&serde_json::json!(5), 1).is_err());
        assert!(completion_prompts(&serde_json::json!([]), 1).is_err());
    }
}
