//! The router: path → thin handler.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::error::GatewayError;
use crate::metrics::CONTENT_TYPE;
use crate::proxy::{self, Api, AppState};

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", any(chat))
        .route("/v1/completions", any(completions))
        .route("/v1/embeddings", any(embeddings))
        .route("/v1/models", any(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(axum::middleware::from_fn(ensure_request_id))
        .with_state(state)
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

async fn chat(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    post_only(s, Api::ChatCompletions, req).await
}

async fn completions(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    post_only(s, Api::Completions, req).await
}

async fn embeddings(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    post_only(s, Api::Embeddings, req).await
}

async fn post_only(s: Arc<AppState>, api: Api, req: Request<Body>) -> Response {
    if req.method() != Method::POST {
        let guard = proxy::start_guard(&s, req.headers(), api.path());
        return proxy::reject(
            guard,
            GatewayError::InvalidRequest(format!("{} accepts POST only", api.path())),
        );
    }
    proxy::handle(s, api, req).await
}

async fn models(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let mut guard = proxy::start_guard(&s, req.headers(), "/v1/models");
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
            while let Some((i, inflight)) = pool.pick(&tried) {
                tried.push(i);
                let ep = inflight.endpoint().clone();
                if let Ok(list) = s.upstreams.list_models(&pool, &ep, timeout).await {
                    return Some(list);
                }
            }
            None
        }
    });
    let results = futures_util::future::join_all(lookups).await;
    if results.iter().all(Option::is_none) {
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

async fn fallback(State(s): State<Arc<AppState>>, req: Request<Body>) -> Response {
    if req.uri().path().starts_with("/v1/") {
        let guard = proxy::start_guard(&s, req.headers(), "other");
        return proxy::reject(guard, GatewayError::RouteNotFound);
    }
    GatewayError::RouteNotFound.into_response()
}
