//! The request path: admission (limits, auth, body, model), pool choice,
//! the upstream call with retry, and the relay of the answer (buffered JSON
//! or SSE passed on chunk by chunk). One path for every relayed route; what
//! differs per route is data in [`crate::api`].

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Config;
use crate::error::{
    GatewayError, names_model_param, normalize_upstream_error, scrub_secrets, sse_error_event,
    upstream_error_body,
};
use crate::events::{EventGuard, Recorder, RefusalOutcome};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::refusal::{RefusalKind, Signals};
use crate::relay::{BodyShape, SseRelay, Summary, inspect_body};
use crate::upstream::{Endpoint, InFlight, Pool, Upstreams};

/// Shared state of the server.
#[derive(Debug)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub recorder: Arc<Recorder>,
    pub auth: Auth,
    pub global: Arc<Semaphore>,
    /// Set on SIGTERM/SIGINT: new requests get 503, `/readyz` fails.
    pub draining: AtomicBool,
    /// Cancelled when the shutdown grace period is over: cut what is left.
    pub hard_stop: CancellationToken,
}

pub use crate::api::{Api, Route};

/// Request id: the client's `x-request-id` if sane, else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id")
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_graphic())
    {
        return s.to_owned();
    }
    uuid::Uuid::now_v7().to_string()
}

fn set_request_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

/// Starts the event guard of a `/v1/*` request.
pub fn start_guard(state: &AppState, headers: &HeaderMap, route: &'static str) -> EventGuard {
    EventGuard::start(
        state.recorder.clone(),
        request_id(headers),
        route,
        state.auth.unauthenticated_label(),
        state.upstreams.models.label(""),
    )
}

/// Admission at the request head: draining, auth, and a cheap early 429 when
/// no slot is free now (so an overloaded gateway reads no body it would
/// refuse). Takes no slot: see [`take_slots`].
pub fn check_head(
    state: &AppState,
    headers: &HeaderMap,
    guard: &mut EventGuard,
) -> Result<Option<Arc<Semaphore>>, GatewayError> {
    let retry_after_secs = state.cfg.retry_after_secs;
    if state.draining.load(Ordering::Relaxed) {
        return Err(GatewayError::ShuttingDown { retry_after_secs });
    }
    if state.global.available_permits() == 0 {
        return Err(GatewayError::Overloaded { retry_after_secs });
    }
    let tenant = state
        .auth
        .authenticate(headers)
        .ok_or(GatewayError::Unauthorized)?;
    guard.tenant = tenant.name.clone();
    if let Some(limit) = &tenant.limit
        && limit.available_permits() == 0
    {
        return Err(GatewayError::TenantOverloaded { retry_after_secs });
    }
    Ok(tenant.limit.clone())
}

/// Takes the global and the tenant concurrency slots, held until the request
/// ends. Taken once the body is in, so slow uploads hold no slot.
pub fn take_slots(
    state: &AppState,
    tenant_limit: Option<Arc<Semaphore>>,
    guard: &mut EventGuard,
) -> Result<(), GatewayError> {
    let retry_after_secs = state.cfg.retry_after_secs;
    let permit = state
        .global
        .clone()
        .try_acquire_owned()
        .map_err(|_| GatewayError::Overloaded { retry_after_secs })?;
    guard.hold(permit);
    if let Some(limit) = tenant_limit {
        let permit = limit
            .try_acquire_owned()
            .map_err(|_| GatewayError::TenantOverloaded { retry_after_secs })?;
        guard.hold(permit);
    }
    Ok(())
}

/// Admission of a request without a body: [`check_head`], then [`take_slots`].
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    guard: &mut EventGuard,
) -> Result<(), GatewayError> {
    let limit = check_head(state, headers, guard)?;
    take_slots(state, limit, guard)
}

/// Ends a request with a gateway error.
pub fn reject(mut guard: EventGuard, err: GatewayError) -> Response {
    let id = guard.request_id.clone();
    guard.fail(err.status_code().as_u16(), err.event_error_type());
    guard.finish();
    let mut resp = err.into_response();
    set_request_id(&mut resp, &id);
    resp
}

// ---------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------

fn raw_even_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The few request fields the gateway reads; the rest stays opaque.
#[derive(Deserialize)]
struct RequestHead<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// Read for `prefix-affinity` pools only (see [`crate::routing::affinity_key`]).
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    /// Responses API: the stored response this one continues.
    #[serde(borrow, default)]
    previous_response_id: Option<Cow<'a, str>>,
}

/// What the gateway learnt from a request body.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// `None`: the request names no model (vLLM then serves its one model).
    pub model: Option<String>,
    pub stream: bool,
    /// JSON bytes of `messages` / `prompt` / `input`.
    pub prompt_bytes: usize,
    /// Body to send upstream.
    pub body: Bytes,
    /// The gateway added usage to the stream: remove the usage chunk.
    pub strip_usage: bool,
    /// Where the prefix-affinity key is in the body (JSON bodies only).
    pub key_src: Option<crate::routing::KeySource>,
    /// The prefix-affinity key, computed once the pool is known to want it.
    pub affinity_key: Option<u64>,
    /// The stored Responses API response a request continues
    /// (`previous_response_id`), as [`crate::routing::response_key`]: sent to
    /// the endpoint that created it (as `/v1/responses/{id}` requests are).
    pub owner_key: Option<u64>,
}

fn offset_in(body: &[u8], raw: &RawValue) -> usize {
    raw.get().as_ptr() as usize - body.as_ptr() as usize
}

fn splice(body: &Bytes, at: std::ops::Range<usize>, with: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + with.len());
    out.extend_from_slice(&body[..at.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[at.end..]);
    out.freeze()
}

/// Parses the request and, for chat and completion streams whose client did
/// not ask for usage, asks the upstream for it (the one change made to a
/// request body). A missing or empty `model` is allowed: vLLM serves its one
/// model then (`OpenAIServing._is_model_supported`: no name is the served model).
pub fn parse_request(body: Bytes, api: Api) -> Result<Parsed, GatewayError> {
    let head: RequestHead = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::InvalidJson(format!("the body is not a valid JSON object: {e}"))
    })?;
    let model = match head.model {
        Some(m) if !m.is_empty() => Some(m.into_owned()),
        _ => None,
    };
    let stream = head.stream.unwrap_or(false);
    let owner_key = head
        .previous_response_id
        .as_deref()
        .filter(|id| api == Api::Responses && !id.is_empty())
        .map(crate::routing::response_key);
    let range = |r: Option<&RawValue>| {
        r.map(|r| {
            let at = offset_in(&body, r);
            at..at + r.get().len()
        })
    };
    let key_src = crate::routing::KeySource {
        body: body.clone(),
        user: range(head.user),
        messages: range(head.messages),
        prompt: range(head.prompt),
        input: range(head.input),
    };
    let prompt_bytes = [head.messages, head.prompt, head.input]
        .iter()
        .flatten()
        .map(|r| r.get().len())
        .sum();
    const WITH_USAGE: &[u8] = br#"{"include_usage":true}"#;
    let (new_body, strip_usage) = if !stream || !api.injects_stream_usage() {
        (None, false)
    } else {
        match head.stream_options {
            None => {
                // Insert before the closing brace of the top-level object.
                let end = body
                    .iter()
                    .rposition(|&b| b == b'}')
                    .ok_or_else(|| GatewayError::InvalidJson("not an object".to_owned()))?;
                let mut ins = Vec::with_capacity(48);
                ins.extend_from_slice(b",\"stream_options\":");
                ins.extend_from_slice(WITH_USAGE);
                (Some(splice(&body, end..end, &ins)), true)
            }
            Some(raw) => {
                let at = offset_in(&body, raw);
                let range = at..at + raw.get().len();
                match serde_json::from_str::<Option<serde_json::Map<String, serde_json::Value>>>(
                    raw.get(),
                ) {
                    Ok(None) => (Some(splice(&body, range, WITH_USAGE)), true),
                    Ok(Some(mut obj)) => {
                        // vLLM: include_usage defaults to true once stream_options is present.
                        if obj.get("include_usage").and_then(|v| v.as_bool()) == Some(false) {
                            obj.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
                            // vLLM sends continuous usage only with include_usage
                            // (`serving_chat.py`: `include_continuous_usage =
                            // include_usage and continuous_usage_stats`): the
                            // client asked for none, so it must not get any.
                            if obj.contains_key("continuous_usage_stats") {
                                obj.insert(
                                    "continuous_usage_stats".to_owned(),
                                    serde_json::Value::Bool(false),
                                );
                            }
                            let v =
                                serde_json::to_vec(&obj).unwrap_or_else(|_| WITH_USAGE.to_vec());
                            (Some(splice(&body, range, &v)), true)
                        } else {
                            (None, false)
                        }
                    }
                    Err(_) => (None, false),
                }
            }
        }
    };
    Ok(Parsed {
        model,
        stream,
        prompt_bytes,
        body: new_body.unwrap_or(body),
        strip_usage,
        key_src: Some(key_src),
        affinity_key: None,
        owner_key,
    })
}

/// Limits of a request body upload.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// The whole body must arrive within this time from the request head.
    pub timeout: Duration,
    /// After [`MIN_RATE_GRACE`], the average upload rate must stay above this
    /// (0 = no minimum).
    pub min_bytes_per_sec: u64,
}

impl BodyLimits {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            max_bytes: cfg.max_body_bytes,
            timeout: cfg.body_read_timeout,
            min_bytes_per_sec: cfg.body_min_bytes_per_sec,
        }
    }

    /// When the upload must have progressed past `received` bytes.
    fn deadline(&self, started: Instant, received: usize) -> Instant {
        let whole = started + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return whole;
        }
        let needed = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        whole.min(started + MIN_RATE_GRACE.max(needed))
    }
}

/// Time an upload gets before its average rate is checked (Kestrel's
/// `MinRequestBodyDataRate` grace period).
pub const MIN_RATE_GRACE: Duration = Duration::from_secs(5);

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Answer with this error.
    Reject(GatewayError),
    /// The client closed the connection during the upload: nobody to answer.
    ClientGone,
}

/// Reads the request body within the size limit, the whole-body timeout and
/// the minimum rate. `started` is when the request head arrived.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: BodyLimits,
    started: Instant,
) -> Result<Bytes, BodyError> {
    let declared = check_declared_length(headers, limits)?;
    let mut body = body;
    let mut buf =
        BytesMut::with_capacity(declared.unwrap_or(0).min(limits.max_bytes as u64) as usize);
    while let Some(data) = next_frame(&mut body, limits, started, buf.len()).await? {
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// A declared `content-length` over the limit is refused before any byte is read.
fn check_declared_length(
    headers: &HeaderMap,
    limits: BodyLimits,
) -> Result<Option<u64>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_bytes as u64) {
        return Err(BodyError::Reject(GatewayError::BodyTooLarge {
            limit: limits.max_bytes,
        }));
    }
    Ok(declared)
}

/// Reads the next data frame of a request body within the upload bounds
/// (`received` bytes so far): the size limit, the whole-body timeout and the
/// minimum rate. `None` at the end of the body. Used by [`read_body`] and by
/// uploads streamed through ([`start_upload`]).
async fn next_frame(
    body: &mut Body,
    limits: BodyLimits,
    started: Instant,
    received: usize,
) -> Result<Option<Bytes>, BodyError> {
    use http_body_util::BodyExt;
    loop {
        let until = limits.deadline(started, received);
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => {
                let secs = started.elapsed().as_secs_f64();
                let msg = if started + limits.timeout <= Instant::now() {
                    format!(
                        "the request body did not arrive within {} ms",
                        limits.timeout.as_millis()
                    )
                } else {
                    format!(
                        "the request body arrives too slowly ({received} bytes in {secs:.1} s; at least {} bytes/s needed)",
                        limits.min_bytes_per_sec
                    )
                };
                return Err(BodyError::Reject(GatewayError::RequestTimeout(msg)));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(classify_body_error(&e)),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if received + data.len() > limits.max_bytes {
                return Err(BodyError::Reject(GatewayError::BodyTooLarge {
                    limit: limits.max_bytes,
                }));
            }
            return Ok(Some(data));
        }
    }
}

/// A malformed body (bad chunked encoding) is the client's error (400); a
/// body cut short means the client went away.
fn classify_body_error(e: &axum::Error) -> BodyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return BodyError::Reject(GatewayError::InvalidRequest(format!(
                    "malformed request body: {h}"
                )));
            }
            return BodyError::ClientGone;
        }
        source = err.source();
    }
    BodyError::ClientGone
}

/// The pool of a request: its model's pool, else the default pool (also for
/// a request naming no model, and for routes the gateway does not know).
fn choose_pool(cfg: &Config, api: Api, parsed: &Parsed) -> Result<usize, GatewayError> {
    let mapped = parsed
        .model
        .as_ref()
        .and_then(|m| cfg.model_pools.get(m).copied());
    let base = match (mapped.or(cfg.default_pool), &parsed.model) {
        (Some(p), _) => p,
        (None, _) if api == Api::Other => return Err(GatewayError::RouteNotFound),
        (None, Some(m)) => return Err(GatewayError::ModelNotFound(m.clone())),
        (None, None) => {
            return Err(GatewayError::InvalidRequest(
                "you must provide a model parameter (there is no default pool)".to_owned(),
            ));
        }
    };
    if let Some((long, min_bytes)) = cfg.long_context
        && api.generates()
        && parsed.prompt_bytes >= min_bytes
        && (mapped.is_none() || mapped == cfg.default_pool)
    {
        return Ok(long);
    }
    Ok(base)
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Client headers forwarded upstream: all end-to-end headers except the
/// client's credentials and `accept-encoding` (the gateway reads the body).
fn upstream_headers(
    client: &HeaderMap,
    request_id: &str,
    pool: &Pool,
    has_body: bool,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(client.len() + 2);
    for (k, v) in client {
        if is_hop_by_hop(k)
            || matches!(
                k.as_str(),
                "authorization"
                    | "proxy-authorization"
                    | "api-key"
                    | "x-api-key"
                    | "cookie"
                    | "accept-encoding"
                    | "x-request-id"
            )
        {
            continue;
        }
        h.append(k.clone(), v.clone());
    }
    if has_body && !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(a) = &pool.auth {
        h.insert(header::AUTHORIZATION, a.clone());
    }
    h
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if is_hop_by_hop(k) || k.as_str() == "x-request-id" {
            continue;
        }
        to.append(k.clone(), v.clone());
    }
}

// ---------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------

/// Handles a relayed request (every route of [`crate::api`]).
pub async fn handle(state: Arc<AppState>, route: Route, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let guard = start_guard(&state, &parts.headers, route.label);
    let id = guard.request_id.clone();
    let hard_stop = state.hard_stop.clone();
    let target = Target {
        route,
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
    };
    let mut resp = tokio::select! {
        r = serve(state, target, parts.headers, body, guard) => r,
        // The guard inside `serve` is dropped here and records the cut.
        _ = hard_stop.cancelled() => GatewayError::ShuttingDown { retry_after_secs: 1 }.into_response(),
    };
    set_request_id(&mut resp, &id);
    resp
}

/// Where a request goes: its route, method and path (with the query).
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Route,
    pub method: Method,
    pub path_and_query: String,
}

impl Target {
    fn api(&self) -> Api {
        self.route.api
    }

    fn url(&self, ep: &Endpoint) -> Result<reqwest::Url, GatewayError> {
        Ok(match self.route.label {
            "/v1/chat/completions" => ep.chat_url.clone(),
            "/v1/completions" => ep.completions_url.clone(),
            "/v1/embeddings" => ep.embeddings_url.clone(),
            _ => reqwest::Url::parse(&format!("{}{}", ep.base, self.path_and_query)).map_err(
                |e| GatewayError::InvalidRequest(format!("cannot relay this path: {e}")),
            )?,
        })
    }
}

/// The body sent upstream: bytes read in full (JSON routes; can be resent to
/// another endpoint) or a stream relayed as it arrives (multipart uploads,
/// unknown routes; sent once).
enum UpBody {
    Whole(Bytes),
    Streamed(
        Option<reqwest::Body>,
        Arc<std::sync::Mutex<Option<BodyError>>>,
    ),
}

/// Largest multipart prefix read to find the `model` field before the
/// upload is streamed on.
const MULTIPART_PREFIX_BYTES: usize = 64 * 1024;

async fn serve(
    state: Arc<AppState>,
    target: Target,
    headers: HeaderMap,
    body: Body,
    mut guard: EventGuard,
) -> Response {
    let route = target.route;
    // HEAD is served wherever GET is (Starlette adds it to GET routes).
    let method_ok = route.methods.is_empty()
        || route.methods.contains(&target.method)
        || (target.method == Method::HEAD && route.methods.contains(&Method::GET));
    if !method_ok {
        return reject(
            guard,
            GatewayError::MethodNotAllowed {
                allow: crate::api::allow_header(route.methods),
            },
        );
    }
    let tenant_limit = match check_head(&state, &headers, &mut guard) {
        Ok(l) => l,
        Err(e) => return reject(guard, e),
    };
    let started = Instant::from_std(guard.started());
    let limits = BodyLimits::from_config(&state.cfg);
    let api = route.api;
    // A request without a body (a GET, most often) is sent without one.
    let no_body = http_body::Body::is_end_stream(&body);
    let (parsed, up_body) = if api.json_request() || no_body {
        let body = match read_body(body, &headers, limits, started).await {
            Ok(b) => b,
            Err(BodyError::Reject(e)) => return reject(guard, e),
            Err(BodyError::ClientGone) => {
                // The guard's initial state is the client's disconnect (499).
                guard.finish();
                return StatusCode::BAD_REQUEST.into_response();
            }
        };
        // vLLM's `cancel_responses(response_id, raw_request)` reads no body
        // (the openai client sends none).
        let bodiless = matches!(target.method, Method::GET | Method::HEAD | Method::DELETE)
            || target.route.label == "/v1/responses/{id}/cancel";
        if body.is_empty() && (!api.json_request() || bodiless) {
            let parsed = Parsed {
                model: model_of_path(api, &target),
                stream: false,
                prompt_bytes: 0,
                body: Bytes::new(),
                strip_usage: false,
                key_src: None,
                affinity_key: None,
                owner_key: None,
            };
            (parsed, UpBody::Whole(Bytes::new()))
        } else {
            let parsed = match parse_request(body, api) {
                Ok(p) => p,
                Err(e) => return reject(guard, e),
            };
            let b = parsed.body.clone();
            (parsed, UpBody::Whole(b))
        }
    } else {
        // Streamed through: only a prefix is read (a multipart upload's `model` field).
        let multipart = api == Api::Multipart;
        let upload = match start_upload(body, &headers, limits, started, multipart).await {
            Ok(u) => u,
            Err(BodyError::Reject(e)) => return reject(guard, e),
            Err(BodyError::ClientGone) => {
                guard.finish();
                return StatusCode::BAD_REQUEST.into_response();
            }
        };
        let parsed = Parsed {
            model: model_of_path(api, &target).or(upload.model),
            stream: upload.stream,
            prompt_bytes: 0,
            body: Bytes::new(),
            strip_usage: false,
            key_src: None,
            affinity_key: None,
            owner_key: None,
        };
        (parsed, UpBody::Streamed(Some(upload.body), upload.cut))
    };
    if let Err(e) = take_slots(&state, tenant_limit, &mut guard) {
        return reject(guard, e);
    }
    if let Some(m) = &parsed.model {
        let label = state.upstreams.models.label(m);
        guard.set_model(m.clone(), label);
    }
    guard.stream = parsed.stream;
    let pool_idx = match choose_pool(&state.cfg, api, &parsed) {
        Ok(p) => p,
        Err(e) => return reject(guard, e),
    };
    let pool = state.upstreams.pools[pool_idx].clone();
    guard.upstream = Some(pool.name.clone());
    let mut parsed = parsed;
    // Taken either way: it holds the body as received (kept no longer than needed).
    let key_src = parsed.key_src.take();
    if pool.routing == crate::config::RoutingPolicy::PrefixAffinity {
        parsed.affinity_key = crate::routing::affinity_key(&headers, key_src.as_ref());
    }
    forward(state, target, pool, headers, parsed, up_body, guard).await
}

/// `/v1/responses/{id}` and `/v1/responses/{id}/cancel` name a stored response.
fn response_id_of_path(target: &Target) -> Option<&str> {
    if !target.route.label.starts_with("/v1/responses/") {
        return None;
    }
    let path = target.path_and_query.split('?').next()?;
    let rest = path.strip_prefix("/v1/responses/")?;
    let id = rest.strip_suffix("/cancel").unwrap_or(rest);
    (!id.is_empty()).then_some(id)
}

/// `GET /v1/models/{id}` names its model in the path.
fn model_of_path(api: Api, target: &Target) -> Option<String> {
    if api != Api::ModelInfo {
        return None;
    }
    target
        .path_and_query
        .split('?')
        .next()
        .and_then(|p| p.strip_prefix("/v1/models/"))
        .map(str::to_owned)
}

/// A streamed upload: its body for reqwest, what was found in its prefix,
/// and where the pump leaves the reason it stopped early.
struct Upload {
    body: reqwest::Body,
    model: Option<String>,
    stream: bool,
    cut: Arc<std::sync::Mutex<Option<BodyError>>>,
}

/// The value of a multipart form field, if its part is complete in `buf`.
fn multipart_field<'a>(buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let needle = format!("name=\"{name}\"");
    let at = memchr::memmem::find(buf, needle.as_bytes())?;
    let rest = &buf[at + needle.len()..];
    let start = memchr::memmem::find(rest, b"\r\n\r\n")? + 4;
    let value = &rest[start..];
    let end = memchr::memmem::find(value, b"\r\n--")?;
    Some(&value[..end])
}

/// Starts relaying an upload: reads a prefix (for a multipart body, until its
/// `model` field is complete, at most [`MULTIPART_PREFIX_BYTES`]), then
/// streams the rest through a small channel, within the same bounds as
/// [`read_body`] (size, whole-body time, minimum rate). Never buffers it whole.
async fn start_upload(
    mut body: Body,
    headers: &HeaderMap,
    limits: BodyLimits,
    started: Instant,
    multipart: bool,
) -> Result<Upload, BodyError> {
    check_declared_length(headers, limits)?;
    let mut prefix = BytesMut::new();
    let mut eof = false;
    let mut model = None;
    if multipart {
        while prefix.len() < MULTIPART_PREFIX_BYTES {
            match next_frame(&mut body, limits, started, prefix.len()).await? {
                None => {
                    eof = true;
                    break;
                }
                Some(d) => prefix.extend_from_slice(&d),
            }
            if let Some(m) = multipart_field(&prefix, "model") {
                model = std::str::from_utf8(m)
                    .ok()
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty());
                break;
            }
        }
    }
    let stream = multipart_field(&prefix, "stream").is_some_and(|v| v.trim_ascii() == b"true");
    let received = prefix.len();
    let cut = Arc::new(std::sync::Mutex::new(None));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    if !prefix.is_empty() {
        let _ = tx.try_send(Ok(prefix.freeze()));
    }
    if !eof {
        let cut = cut.clone();
        tokio::spawn(async move {
            let mut received = received;
            loop {
                match next_frame(&mut body, limits, started, received).await {
                    Ok(None) => break,
                    Ok(Some(d)) => {
                        received += d.len();
                        if tx.send(Ok(d)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if let Ok(mut c) = cut.lock() {
                            *c = Some(e);
                        }
                        let _ = tx
                            .send(Err(std::io::Error::other("request body cut")))
                            .await;
                        break;
                    }
                }
            }
        });
    }
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Upload {
        body,
        model,
        stream,
        cut,
    })
}

enum Attempt {
    Got(reqwest::Response, InFlight),
    Failed(GatewayError),
    /// The client went away during a streamed upload.
    ClientGone,
}

/// Sends the request, retrying on another endpoint after a connect error or
/// a 502/503 (nothing has reached the client yet; a streamed upload is sent once).
#[allow(clippy::too_many_arguments)]
async fn send_with_retry(
    state: &AppState,
    target: &Target,
    pool: &Pool,
    headers: &HeaderMap,
    body: &mut UpBody,
    guard: &mut EventGuard,
    deadline: Instant,
    affinity_key: Option<u64>,
    owner_key: Option<u64>,
) -> Attempt {
    let cfg = &state.cfg;
    let resendable = matches!(body, UpBody::Whole(_));
    let max_attempts = if resendable {
        (cfg.retries as usize + 1).min(pool.endpoints.len()).max(1)
    } else {
        1
    };
    let mut tried = Vec::with_capacity(max_attempts);
    let mut last = GatewayError::UpstreamUnreachable("no endpoint available".to_owned());
    while tried.len() < max_attempts {
        // A stored response is only on the endpoint that created it.
        let owner = owner_key
            .filter(|_| tried.is_empty())
            .and_then(|k| pool.pick_owner(k));
        let Some((idx, inflight, why)) = owner.or_else(|| pool.pick(&tried, affinity_key)) else {
            break;
        };
        tried.push(idx);
        let ep = inflight.endpoint().clone();
        guard.endpoint = Some(ep.label.clone());
        guard.routing_reason = Some(why);
        state.metrics.endpoint_pick(&pool.name, &ep.label, why);
        let url = match target.url(&ep) {
            Ok(u) => u,
            Err(e) => return Attempt::Failed(e),
        };
        let has_body = match body {
            UpBody::Whole(b) => !b.is_empty(),
            UpBody::Streamed(..) => true,
        };
        let mut req = state
            .upstreams
            .client
            .request(target.method.clone(), url)
            .headers(upstream_headers(headers, &guard.request_id, pool, has_body));
        match body {
            UpBody::Whole(b) => {
                let bodiless = matches!(target.method, Method::GET | Method::HEAD | Method::DELETE);
                if !b.is_empty() || !bodiless {
                    req = req.body(b.clone());
                }
            }
            UpBody::Streamed(b, _) => {
                if let Some(b) = b.take() {
                    req = req.body(b);
                }
            }
        }
        let until = deadline.min(Instant::now() + cfg.first_byte_timeout);
        match tokio::time::timeout_at(until, req.send()).await {
            Err(_) => {
                state
                    .metrics
                    .upstream_error(&pool.name, UpstreamErrorKind::Timeout);
                return Attempt::Failed(GatewayError::UpstreamTimeout(format!(
                    "no response from {} within {} ms",
                    ep.label,
                    (until.into_std() - guard.started()).as_millis()
                )));
            }
            Ok(Err(e)) => {
                if let UpBody::Streamed(_, cut) = body
                    && let Some(cause) = cut.lock().ok().and_then(|mut c| c.take())
                {
                    // The upload failed (too slow, too large, client gone), not the upstream.
                    return match cause {
                        BodyError::Reject(e) => Attempt::Failed(e),
                        BodyError::ClientGone => Attempt::ClientGone,
                    };
                }
                let kind = if e.is_timeout() {
                    UpstreamErrorKind::Timeout
                } else {
                    UpstreamErrorKind::Connect
                };
                state.metrics.upstream_error(&pool.name, kind);
                if e.is_connect() {
                    pool.mark_down(idx, &state.metrics);
                }
                tracing::warn!(pool = %pool.name, endpoint = %ep.label, error = %e, "upstream request failed");
                last = if kind == UpstreamErrorKind::Timeout {
                    GatewayError::UpstreamTimeout(format!("connecting to {} timed out", ep.label))
                } else {
                    GatewayError::UpstreamUnreachable(format!("cannot reach {}", ep.label))
                };
                if kind == UpstreamErrorKind::Timeout && !e.is_connect() {
                    return Attempt::Failed(last);
                }
            }
            Ok(Ok(resp)) => {
                let s = resp.status().as_u16();
                if (s == 502 || s == 503) && tried.len() < max_attempts {
                    state
                        .metrics
                        .upstream_error(&pool.name, UpstreamErrorKind::Http5xx);
                    tracing::warn!(pool = %pool.name, endpoint = %ep.label, status = s, "retrying on another endpoint");
                    continue;
                }
                return Attempt::Got(resp, inflight);
            }
        }
    }
    Attempt::Failed(last)
}

/// An upstream body read in full, or found too large.
enum UpstreamBody {
    Whole(Bytes),
    /// Larger than the limit: `seen` bytes read (and discarded) in all,
    /// `complete` if that was the whole body.
    TooLarge {
        seen: u64,
        complete: bool,
    },
}

/// Reads a whole upstream body within the idle and total limits. Past `max`
/// bytes, up to `measure` bytes are read and discarded to learn the size.
async fn read_upstream_body(
    resp: &mut reqwest::Response,
    idle: Duration,
    deadline: Instant,
    max: usize,
    measure: u64,
) -> Result<UpstreamBody, UpstreamErrorKind> {
    let mut buf = BytesMut::new();
    let mut seen: u64 = 0;
    loop {
        let until = deadline.min(Instant::now() + idle);
        match tokio::time::timeout_at(until, resp.chunk()).await {
            Err(_) => return Err(UpstreamErrorKind::Timeout),
            Ok(Err(_)) => return Err(UpstreamErrorKind::Stream),
            Ok(Ok(None)) if seen > max as u64 => {
                return Ok(UpstreamBody::TooLarge {
                    seen,
                    complete: true,
                });
            }
            Ok(Ok(None)) => return Ok(UpstreamBody::Whole(buf.freeze())),
            Ok(Ok(Some(c))) => {
                seen += c.len() as u64;
                if seen <= max as u64 {
                    buf.extend_from_slice(&c);
                } else {
                    buf = BytesMut::new();
                    if seen > measure {
                        return Ok(UpstreamBody::TooLarge {
                            seen,
                            complete: false,
                        });
                    }
                }
            }
        }
    }
}

/// Largest upstream body buffered for a non-streaming answer.
const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;
/// Largest upstream error body relayed (after scrubbing); larger ones are
/// described, not relayed.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// How much of a too-large error body is read to report its size.
const MEASURE_ERROR_BODY: u64 = 64 * 1024 * 1024;

/// The pool's upstream key, to be scrubbed from what upstreams answer.
fn pool_secret(pool: &Pool) -> Option<&str> {
    let v = pool.auth.as_ref()?.to_str().ok()?;
    Some(v.strip_prefix("Bearer ").unwrap_or(v))
}

/// Copies the upstream's `Retry-After` of a 429 or 503.
fn relay_retry_after(status: StatusCode, from: &HeaderMap, to: &mut HeaderMap) {
    if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
        && let Some(v) = from.get(header::RETRY_AFTER)
    {
        to.insert(header::RETRY_AFTER, v.clone());
    }
}

async fn forward(
    state: Arc<AppState>,
    target: Target,
    pool: Arc<Pool>,
    headers: HeaderMap,
    parsed: Parsed,
    mut body: UpBody,
    mut guard: EventGuard,
) -> Response {
    let api = target.api();
    // A request to a stored response names it in the path.
    let retrieved = response_id_of_path(&target).map(crate::routing::response_key);
    let cfg = state.cfg.clone();
    let deadline = Instant::from_std(guard.started()) + cfg.total_timeout;
    let (mut resp, inflight) = match send_with_retry(
        &state,
        &target,
        &pool,
        &headers,
        &mut body,
        &mut guard,
        deadline,
        parsed.affinity_key,
        parsed.owner_key.or(retrieved),
    )
    .await
    {
        Attempt::Got(r, i) => (r, i),
        Attempt::Failed(e) => return reject(guard, e),
        Attempt::ClientGone => {
            guard.finish();
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if status.as_u16() >= 400 {
        let kind = if status.is_server_error() {
            UpstreamErrorKind::Http5xx
        } else {
            UpstreamErrorKind::Http4xx
        };
        state.metrics.upstream_error(&pool.name, kind);
        let code = status.as_u16();
        let out = match read_upstream_body(
            &mut resp,
            cfg.idle_timeout,
            deadline,
            MAX_ERROR_BODY,
            MEASURE_ERROR_BODY,
        )
        .await
        {
            Ok(UpstreamBody::Whole(body)) => {
                let secrets: Vec<&str> = pool_secret(&pool).into_iter().collect();
                normalize_upstream_error(code, &scrub_secrets(&body, &secrets))
            }
            Ok(UpstreamBody::TooLarge { seen, complete }) => upstream_error_body(
                code,
                &format!(
                    "upstream returned HTTP {code} with a body of {}{seen} bytes (not relayed: larger than {MAX_ERROR_BODY} bytes)",
                    if complete { "" } else { "more than " }
                ),
            ),
            Err(k) => upstream_error_body(
                code,
                &format!(
                    "upstream returned HTTP {code}; its body could not be read ({})",
                    if k == UpstreamErrorKind::Timeout {
                        "timeout"
                    } else {
                        "connection failed"
                    }
                ),
            ),
        };
        // vLLM answers an unknown model with 404 `param: "model"`: the same cause as the
        // gateway's own `model_not_found`, whichever of the two noticed it.
        let error_type = if status == StatusCode::NOT_FOUND && names_model_param(&out) {
            "model_not_found"
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The upstream refused the gateway's key (vLLM `--api-key`): relayed
            // as what it is, not as "unreachable".
            "upstream_auth"
        } else {
            "upstream_error"
        };
        guard.fail(code, error_type);
        guard.finish();
        let mut r = (status, out).into_response();
        relay_retry_after(status, resp.headers(), r.headers_mut());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }

    // Routes other than the OpenAI generation/embedding ones say "stream" in
    // ways the gateway does not parse (a form field, `?stream=true` on
    // `GET /v1/responses/{id}`, ...): their SSE answers are streams.
    let openai_body = matches!(
        api,
        Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses | Api::Messages
    );
    let streaming = is_sse && (parsed.stream || !openai_body);
    if !streaming {
        let body =
            match read_upstream_body(&mut resp, cfg.idle_timeout, deadline, MAX_UPSTREAM_BODY, 0)
                .await
            {
                Ok(UpstreamBody::Whole(b)) => b,
                Ok(UpstreamBody::TooLarge { .. }) => {
                    state
                        .metrics
                        .upstream_error(&pool.name, UpstreamErrorKind::Invalid);
                    return reject(
                        guard,
                        GatewayError::UpstreamInvalid(format!(
                            "the upstream response is larger than {MAX_UPSTREAM_BODY} bytes"
                        )),
                    );
                }
                Err(kind) => {
                    state.metrics.upstream_error(&pool.name, kind);
                    let e = if kind == UpstreamErrorKind::Timeout {
                        GatewayError::UpstreamTimeout(
                            "the upstream response did not complete in time".to_owned(),
                        )
                    } else {
                        GatewayError::UpstreamUnreachable(
                            "the upstream connection failed while reading the response".to_owned(),
                        )
                    };
                    return reject(guard, e);
                }
            };
        let summary = inspect_body(&body, state.cfg.detector.scan_bytes());
        if summary.shape == BodyShape::NotJson && api.json_response() {
            // Nothing a client can use: say what happened instead.
            state
                .metrics
                .upstream_error(&pool.name, UpstreamErrorKind::Invalid);
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            return reject(
                guard,
                GatewayError::UpstreamInvalid(format!(
                    "the upstream answered {} with a body that is not JSON ({} bytes, content-type {ct})",
                    status.as_u16(),
                    body.len()
                )),
            );
        }
        let upstream_headers = resp.headers().clone();
        drop(resp);
        if api == Api::Responses {
            remember_response(&pool, &inflight, &summary);
        }
        drop(inflight);
        guard.usage = summary.usage;
        usage_of_retrieval(&pool, retrieved, &mut guard);
        learn_model(&state, &mut guard, &summary);
        guard.refusal = if api.generates() {
            refusal_of(&state.cfg, &summary)
        } else {
            None
        };
        if api.generates() {
            pick_for_judge(&state, &mut guard, &summary);
        }
        // A 2xx carrying an error object (or JSON that is no object) is relayed
        // as the upstream sent it (scrubbed), and recorded as an upstream error.
        let failed = summary.error.is_some()
            || (api.json_response() && summary.shape == BodyShape::OtherJson);
        let body = if failed {
            state
                .metrics
                .upstream_error(&pool.name, UpstreamErrorKind::Invalid);
            guard.succeed(status.as_u16(), Some("error".to_owned()));
            guard.error_type = Some("upstream_error");
            let secrets: Vec<&str> = pool_secret(&pool).into_iter().collect();
            Bytes::from(scrub_secrets(&body, &secrets).into_owned())
        } else {
            guard.succeed(status.as_u16(), summary.finish_reason.clone());
            body
        };
        guard.finish();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        copy_response_headers(&upstream_headers, r.headers_mut());
        return r;
    }

    // Streaming: wait for the first event with data before answering, so
    // that a timeout, a failure or a stream without any data (comments only,
    // or nothing) can still become a proper HTTP error.
    let mut relay = SseRelay::new(parsed.strip_usage, state.cfg.detector.scan_bytes());
    let until = deadline.min(Instant::now() + cfg.first_byte_timeout);
    let mut pending = BytesMut::new();
    let mut eof = false;
    while relay.summary.data_events == 0 && !eof {
        match tokio::time::timeout_at(until, resp.chunk()).await {
            Err(_) => {
                state
                    .metrics
                    .upstream_error(&pool.name, UpstreamErrorKind::Timeout);
                return reject(
                    guard,
                    GatewayError::UpstreamTimeout(
                        "no stream data from the upstream in time".to_owned(),
                    ),
                );
            }
            Ok(Err(_)) => {
                state
                    .metrics
                    .upstream_error(&pool.name, UpstreamErrorKind::Stream);
                return reject(
                    guard,
                    GatewayError::UpstreamUnreachable("the upstream closed the stream".to_owned()),
                );
            }
            Ok(Ok(None)) => eof = true,
            Ok(Ok(Some(chunk))) => {
                let fed = relay.feed_bytes(chunk);
                if fed.content && guard.ttft.is_none() {
                    guard.ttft = Some(guard.elapsed());
                }
                if retrieved.is_none() {
                    track_usage(&mut guard, &relay.summary, parsed.prompt_bytes);
                }
                pending.extend_from_slice(&fed.out);
            }
        }
    }
    if eof {
        // An unterminated last event still counts; no data at all is an
        // invalid answer.
        pending.extend_from_slice(&relay.finish());
        if relay.summary.data_events == 0 {
            state
                .metrics
                .upstream_error(&pool.name, UpstreamErrorKind::Invalid);
            return reject(
                guard,
                GatewayError::UpstreamInvalid(
                    "the upstream ended the stream without sending any data".to_owned(),
                ),
            );
        }
    }
    let pending = pending.freeze();
    guard.stream_started();
    let upstream_headers = resp.headers().clone();
    let now = Instant::now();
    let st = StreamState {
        api,
        retrieved,
        prompt_bytes: parsed.prompt_bytes,
        state: state.clone(),
        pool,
        inflight,
        relay,
        guard: Some(guard),
        deadline,
        idle: cfg.idle_timeout,
        pending: Some(pending),
        eof,
        finished: false,
    };
    let body = RelayBody {
        upstream: Box::pin(resp.bytes_stream()),
        sleep: Box::pin(tokio::time::sleep_until(
            deadline.min(now + cfg.idle_timeout),
        )),
        last_chunk: now,
        stop: Box::pin(state.hard_stop.clone().cancelled_owned()),
        s: st,
    };
    let mut r = Response::new(Body::new(body));
    *r.status_mut() = StatusCode::OK;
    copy_response_headers(&upstream_headers, r.headers_mut());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A Responses API response the upstream created (and may have stored): later
/// requests naming it go to the same endpoint.
fn remember_response(pool: &Pool, inflight: &InFlight, s: &Summary) {
    if let Some(id) = &s.response_id {
        pool.remember_response(id, inflight.endpoint(), s.usage.is_some());
    }
}

/// The event of a request to a stored response (`/v1/responses/{id}`,
/// `/cancel`; `retrieved` is its key) keeps the usage the answer repeats only
/// if no event has counted it yet: a background response's usage is first
/// seen on a retrieval, while polling a finished one does no work and must
/// not count its tokens and cost again.
///
/// Only the upstream's usage counts (a replayed stream's deltas are no work);
/// while such a stream runs its event has no usage.
fn usage_of_retrieval(pool: &Pool, retrieved: Option<u64>, g: &mut EventGuard) {
    if let Some(k) = retrieved {
        let upstream = g.usage.is_some() && g.usage_source.is_none();
        if !(upstream && pool.claim_response_usage(k)) {
            g.usage = None;
            g.usage_source = None;
        }
    }
}

/// The request named no model: the answer's `model` says which one served it.
fn learn_model(state: &AppState, guard: &mut EventGuard, s: &Summary) {
    if guard.model.is_none()
        && let Some(m) = &s.model
    {
        let label = state.upstreams.models.label(m);
        guard.learn_model(m.clone(), label);
    }
}

/// The usage of a stream so far: the upstream's when it reported it; else,
/// once output was relayed, counted by the gateway (`usage_source:
/// "counted"`): completion tokens = output deltas relayed (vLLM sends one
/// token per delta), prompt tokens = the prompt's JSON bytes / 4. So a stream
/// the client leaves mid-way still has its GPU time costed.
fn track_usage(g: &mut EventGuard, s: &Summary, prompt_bytes: usize) {
    if let Some(u) = s.usage {
        g.usage = Some(u);
        g.usage_source = None;
    } else if s.output_events > 0 {
        g.usage = Some(crate::relay::Usage {
            prompt_tokens: (prompt_bytes > 0).then(|| prompt_bytes.div_ceil(4) as u64),
            completion_tokens: Some(s.output_events),
        });
        g.usage_source = Some("counted");
    }
}

/// Keeps the response text for the optional refusal judge when the response
/// is eligible and sampled (`crate::judge`); it is offered to the judge
/// after the event is written.
fn pick_for_judge(state: &AppState, g: &mut EventGuard, s: &Summary) {
    if let Some(j) = &state.recorder.judge {
        g.judge_text = j.pick(&g.request_id, g.refusal.as_ref().map(|r| r.kind), &s.texts);
    }
}

/// Applies the refusal detector to a response summary.
pub fn refusal_of(cfg: &Config, s: &Summary) -> Option<RefusalOutcome> {
    let signals = Signals {
        upstream_refusal: s.upstream_refusal,
        content_filter: s.content_filter,
    };
    let det = &cfg.detector;
    let mut texts: Vec<&str> = s.texts.iter().map(String::as_str).collect();
    if texts.is_empty() {
        texts.push("");
    }
    // A full refusal in any choice wins; else the first partial one.
    let mut partial = None;
    for t in texts {
        let v = det.detect(&signals, t);
        match v.kind {
            Some(RefusalKind::Full) => {
                let excerpt = det.audit_excerpt(t).map(str::to_owned);
                return Some(RefusalOutcome {
                    rule: v.rule,
                    excerpt,
                    kind: RefusalKind::Full,
                });
            }
            Some(RefusalKind::Partial) if partial.is_none() => {
                partial = Some(RefusalOutcome {
                    rule: v.rule,
                    excerpt: None,
                    kind: RefusalKind::Partial,
                });
            }
            _ => {}
        }
    }
    partial
}

struct StreamState {
    api: Api,
    /// The stored response a `/v1/responses/{id}` request names (its key).
    retrieved: Option<u64>,
    prompt_bytes: usize,
    state: Arc<AppState>,
    pool: Arc<Pool>,
    inflight: InFlight,
    relay: SseRelay,
    guard: Option<EventGuard>,
    deadline: Instant,
    idle: Duration,
    pending: Option<Bytes>,
    eof: bool,
    finished: bool,
}

enum Cut {
    Timeout,
    Transport,
    Shutdown,
}

impl StreamState {
    /// The upstream ended normally.
    fn finish_ok(&mut self) -> Bytes {
        self.finished = true;
        let mut out = BytesMut::from(&self.relay.finish()[..]);
        let s = &self.relay.summary;
        let truncated =
            self.api.generates() && !s.done && s.finish_reason.is_none() && s.error.is_none();
        let Some(mut g) = self.guard.take() else {
            return out.freeze();
        };
        track_usage(&mut g, s, self.prompt_bytes);
        usage_of_retrieval(&self.pool, self.retrieved, &mut g);
        learn_model(&self.state, &mut g, s);
        if self.api == Api::Responses {
            remember_response(&self.pool, &self.inflight, s);
        }
        if let Some(_msg) = &s.error {
            self.state
                .metrics
                .upstream_error(&self.pool.name, UpstreamErrorKind::Stream);
            g.succeed(200, Some("error".to_owned()));
            g.error_type = Some("stream_error");
        } else if truncated {
            self.state
                .metrics
                .upstream_error(&self.pool.name, UpstreamErrorKind::Stream);
            out.extend_from_slice(
                &self.error_event("the upstream ended the stream early", "stream_error"),
            );
            g.succeed(200, Some("error".to_owned()));
            g.error_type = Some("stream_error");
        } else {
            g.succeed(200, s.finish_reason.clone());
        }
        if self.api.generates() {
            g.refusal = refusal_of(&self.state.cfg, s);
            pick_for_judge(&self.state, &mut g, s);
        }
        g.finish();
        out.freeze()
    }

    /// The SSE event that tells the client its stream failed: the Responses
    /// API's `error` event (`ResponseErrorEvent`: type, code, message, param,
    /// sequence_number) on `/v1/responses`, else vLLM's
    /// `data: {"error": {...}}` followed by `data: [DONE]`.
    fn error_event(&self, msg: &str, code: &str) -> Bytes {
        if self.api == Api::Responses {
            let v = serde_json::json!({
                "type": "error",
                "code": code,
                "message": msg,
                "param": null,
                "sequence_number": self.relay.summary.next_sequence,
            });
            return Bytes::from(format!("event: error\ndata: {v}\n\n"));
        }
        sse_error_event(msg, "server_error", code)
    }

    /// The stream is cut by the gateway: one error event, then `[DONE]`.
    fn finish_cut(&mut self, cut: Cut) -> Bytes {
        self.finished = true;
        self.relay.discard();
        let (msg, code, fr, et, kind) = match cut {
            Cut::Timeout => (
                "the upstream stopped sending data (timeout)",
                "upstream_timeout",
                "timeout",
                "upstream_timeout",
                Some(UpstreamErrorKind::Timeout),
            ),
            Cut::Transport => (
                "the upstream connection failed during the stream",
                "stream_error",
                "error",
                "stream_error",
                Some(UpstreamErrorKind::Stream),
            ),
            Cut::Shutdown => (
                "the gateway is shutting down",
                "shutting_down",
                "abort",
                "shutting_down",
                None,
            ),
        };
        if let Some(k) = kind {
            self.state.metrics.upstream_error(&self.pool.name, k);
        }
        if let Some(mut g) = self.guard.take() {
            track_usage(&mut g, &self.relay.summary, self.prompt_bytes);
            usage_of_retrieval(&self.pool, self.retrieved, &mut g);
            g.succeed(200, Some(fr.to_owned()));
            g.error_type = Some(et);
            g.finish();
        }
        self.error_event(msg, code)
    }
}

/// The response body of a stream: polls the upstream body directly in the
/// client connection's task (no channel, no task of its own), passes each
/// chunk's complete events on as they came (a slice of the upstream bytes),
/// and keeps one idle timer and one shutdown wait for the whole stream
/// instead of arming a new timer per chunk: the timer is moved only when it
/// fires before the stream is really idle.
struct RelayBody {
    s: StreamState,
    upstream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + 'static>,
    >,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When the last upstream chunk came (the idle timeout counts from it).
    last_chunk: Instant,
    stop: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl RelayBody {
    fn frame(out: Bytes) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(if out.is_empty() {
            None
        } else {
            Some(Ok(http_body::Frame::data(out)))
        })
    }
}

impl http_body::Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        let this = &mut *self;
        let s = &mut this.s;
        if let Some(p) = s.pending.take()
            && !p.is_empty()
        {
            return Poll::Ready(Some(Ok(http_body::Frame::data(p))));
        }
        if s.finished {
            return Poll::Ready(None);
        }
        if s.eof {
            return Self::frame(s.finish_ok());
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.last_chunk = Instant::now();
                    let fed = s.relay.feed_bytes(chunk);
                    if let Some(g) = s.guard.as_mut() {
                        if fed.content && g.ttft.is_none() {
                            g.ttft = Some(g.elapsed());
                        }
                        if s.retrieved.is_none() {
                            track_usage(g, &s.relay.summary, s.prompt_bytes);
                        }
                    }
                    if fed.out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(fed.out))));
                }
                Poll::Ready(None) => return Self::frame(s.finish_ok()),
                Poll::Ready(Some(Err(_))) => return Self::frame(s.finish_cut(Cut::Transport)),
                Poll::Pending => break,
            }
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            return Self::frame(s.finish_cut(Cut::Shutdown));
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let due = s.deadline.min(this.last_chunk + s.idle);
            if due <= Instant::now() {
                return Self::frame(s.finish_cut(Cut::Timeout));
            }
            this.sleep.as_mut().reset(due);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.s.finished && self.s.pending.as_ref().is_none_or(Bytes::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Parsed {
        parse_request(Bytes::from(s.to_owned()), Api::ChatCompletions).unwrap()
    }

    #[test]
    fn non_stream_body_is_untouched() {
        let s =
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x_unknown":{"a":[1,2]}}"#;
        let got = p(s);
        assert_eq!(&got.body[..], s.as_bytes());
        assert!(!got.stream && !got.strip_usage);
        assert_eq!(got.model.as_deref(), Some("m"));
        assert_eq!(
            got.prompt_bytes,
            r#"[{"role":"user","content":"hi"}]"#.len()
        );
    }

    #[test]
    fn stream_gets_usage_added_by_splice() {
        let table = [
            (
                r#"{"model":"m","stream":true,"z":1}"#,
                r#"{"model":"m","stream":true,"z":1,"stream_options":{"include_usage":true}}"#,
                true,
            ),
            (
                "{\"model\":\"m\",\"stream\":true}\n  ",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n  ",
                true,
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":null,"z":1}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"z":1}"#,
                true,
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"z":1}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"z":1}"#,
                true,
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                false,
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
                r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
                false,
            ),
            // vLLM sends no usage at all here: neither may the client get any.
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}"#,
                r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false,"include_usage":true}}"#,
                true,
            ),
        ];
        for (input, want, strip) in table {
            let got = p(input);
            assert_eq!(std::str::from_utf8(&got.body).unwrap(), want);
            assert_eq!(got.strip_usage, strip, "{input}");
            assert!(got.stream);
            let _: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        }
    }

    #[test]
    fn bad_bodies_are_rejected() {
        for (s, status) in [
            ("{not json", 400),
            ("[1,2]", 400),
            (r#"{"model":5}"#, 400),
            (r#"{"model":"m","stream":"yes"}"#, 400),
        ] {
            let e = parse_request(Bytes::from(s), Api::ChatCompletions).unwrap_err();
            assert_eq!(e.status_code().as_u16(), status, "{s}");
        }
        // No model: vLLM serves its one model.
        for s in ["{}", r#"{"model":""}"#] {
            assert_eq!(p(s).model, None, "{s}");
        }
        // Only chat and completions get usage added.
        let r = parse_request(
            Bytes::from(r#"{"model":"m","stream":true,"input":"x"}"#),
            Api::Responses,
        )
        .unwrap();
        assert!(!r.strip_usage);
        assert_eq!(&r.body[..], br#"{"model":"m","stream":true,"input":"x"}"#);
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 36);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }
}
