//! The router: path → thin handler. The gateway's own paths (`/healthz`,
//! `/readyz`, `/metrics`, `/health`, the aggregated `GET /v1/models`) are
//! answered here; every other path goes through [`proxy::handle`] with its
//! entry of the route table ([`crate::api`]). CORS is answered before routing
//! (see [`cors`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use bytes::Bytes;

use crate::error::{GatewayError, normalize_upstream_error, scrub_secrets};
use crate::metrics::CONTENT_TYPE;
use crate::proxy::{self, AppState};
use crate::upstream::ListError;

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", any(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/metrics", get(metrics))
        .fallback(relayed)
        // CORS inside the request id layer: a preflight answer carries x-request-id too.
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(axum::middleware::from_fn(ensure_request_id))
        .with_state(state)
}

/// CORS as vLLM does it (FastAPI `CORSMiddleware` with `--allowed-origins`,
/// default `["*"]`, methods and headers `*`, no credentials): a preflight
/// (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
/// here with 200 and no event; other requests from an allowed origin get
/// `Access-Control-Allow-Origin`. A preflight from an origin not allowed
/// gets 400, like Starlette's ("Disallowed CORS origin"), also without event.
/// With CORS on, the upstream's own `Access-Control-*` headers are replaced.
async fn cors(
    State(s): State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let origins = &s.cfg.cors_allowed_origins;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let Some(origin) = origin.filter(|_| !origins.is_empty()) else {
        return next.run(req).await;
    };
    let any = origins.iter().any(|o| o == "*");
    let allowed = any
        || origin
            .to_str()
            .is_ok_and(|o| origins.iter().any(|a| a == o));
    let allow_value = if any {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = if allowed {
            (StatusCode::OK, "OK").into_response()
        } else {
            (StatusCode::BAD_REQUEST, "Disallowed CORS origin").into_response()
        };
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        if let Some(v) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value);
        }
        if !any {
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        return resp;
    }
    let mut resp = next.run(req).await;
    // The gateway owns the CORS policy: an upstream's own CORS headers (vLLM
    // allows every origin by default) are not relayed.
    let upstream_cors: Vec<_> = resp
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in upstream_cors {
        resp.headers_mut().remove(k);
    }
    if allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value);
        if !any {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    resp
}

/// Every response carries `x-request-id` (the `/v1` handlers set it themselves).
async fn ensure_request_id(req: Request<Body>, next: axum::middleware::Next) -> Response {
    let client_id = req.headers().get("x-request-id").cloned();
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-request-id") {
        let mut h = axum::http::HeaderMap::new();
        if let Some(v) = client_id {
            h.insert("x-request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&proxy::request_id(&h)) {
            resp.headers_mut().insert("x-request-id", v);
        }
    }
    resp
}

/// Every relayed route: looked up in the route table, then the one proxy path.
async fn relayed(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let route = crate::api::lookup(req.uri().path());
    proxy::handle(s, route, req).await
}

async fn models(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let mut guard = proxy::start_guard(&s, req.headers(), "/v1/models");
    if req.method() != Method::GET {
        return proxy::reject(
            guard,
            GatewayError::MethodNotAllowed {
                allow: crate::api::allow_header(&[Method::GET]),
            },
        );
    }
    if let Err(e) = proxy::admit(&s, req.headers(), &mut guard) {
        return proxy::reject(guard, e);
    }
    let id = guard.request_id.clone();
    let timeout = s.cfg.first_byte_timeout.min(s.cfg.total_timeout);
    let lookups = s.upstreams.pools.iter().map(|pool| {
        let s = s.clone();
        let pool = pool.clone();
        async move {
            let mut tried = Vec::new();
            let mut answered = None;
            while let Some((i, inflight, _)) = pool.pick(&tried, None) {
                tried.push(i);
                let ep = inflight.endpoint().clone();
                match s.upstreams.list_models(&pool, &ep, timeout).await {
                    Ok(list) => return Ok(list),
                    Err(ListError::Status(code, body)) => {
                        let secret = pool
                            .auth
                            .as_ref()
                            .and_then(|a| a.to_str().ok())
                            .map(|a| a.strip_prefix("Bearer ").unwrap_or(a).to_owned());
                        let secrets: Vec<&str> = secret.as_deref().into_iter().collect();
                        answered = Some((
                            code,
                            Bytes::from(scrub_secrets(&body, &secrets).into_owned()),
                        ));
                    }
                    Err(ListError::Transport(_)) => {}
                }
            }
            Err(answered)
        }
    });
    let results = futures_util::future::join_all(lookups).await;
    if results.iter().all(Result::is_err) {
        // An upstream that answered (401: the gateway's upstream key is missing
        // or wrong) is relayed as what it said, not as "unreachable".
        if let Some((code, body)) = results
            .iter()
            .find_map(|r| r.as_ref().err().cloned().flatten())
        {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let error_type = if code == 401 || code == 403 {
                "upstream_auth"
            } else {
                "upstream_error"
            };
            guard.fail(code, error_type);
            guard.finish();
            let mut resp = (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                normalize_upstream_error(code, &body),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            return resp;
        }
        return proxy::reject(
            guard,
            GatewayError::UpstreamUnreachable("no upstream answered /v1/models".to_owned()),
        );
    }
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for card in results.into_iter().flatten().flatten() {
        let id = card.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(id) = id
            && seen.insert(id)
        {
            data.push(card);
        }
    }
    guard.succeed(200, None);
    guard.finish();
    let body = serde_json::json!({"object": "list", "data": data}).to_string();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// vLLM's `GET /health` (and SageMaker's `/ping`), answered by the gateway
/// for the upstreams behind it: 200 with an empty body when an upstream is
/// healthy (what a vLLM probe expects), 503 when none is or while draining.
/// No event, like `/healthz`: probes are not traffic.
async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::Relaxed) || !s.upstreams.any_healthy() {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if s.upstreams.any_healthy() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}
