//! The gateway's own errors, in the OpenAI error shape, and normalisation of
//! upstream error bodies into that shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

/// Every error the gateway answers by itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("not found")]
    RouteNotFound,
    #[error("method not allowed (allowed: {allow})")]
    MethodNotAllowed { allow: String },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("the gateway is overloaded, retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("too many concurrent requests for this API key, retry later")]
    TenantOverloaded { retry_after_secs: u64 },
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    #[error("invalid upstream response: {0}")]
    UpstreamInvalid(String),
    #[error("the gateway is shutting down")]
    ShuttingDown { retry_after_secs: u64 },
}

impl GatewayError {
    /// HTTP status of the error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            GatewayError::InvalidJson(_) | GatewayError::InvalidRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::ModelNotFound(_) | GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Overloaded { .. } | GatewayError::TenantOverloaded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::UpstreamUnreachable(_) | GatewayError::UpstreamInvalid(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The event's `error_type`.
    pub fn event_error_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) | GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Unauthorized => "authentication",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::Overloaded { .. } => "rate_limited",
            GatewayError::TenantOverloaded { .. } => "tenant_rate_limited",
            GatewayError::UpstreamUnreachable(_) => "upstream_unreachable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamInvalid(_) => "upstream_invalid_response",
            GatewayError::ShuttingDown { .. } => "shutting_down",
        }
    }

    /// OpenAI `error.type`.
    fn openai_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidRequest(_)
            | GatewayError::ModelNotFound(_)
            | GatewayError::RouteNotFound
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::RequestTimeout(_) => "invalid_request_error",
            GatewayError::Unauthorized => "authentication_error",
            GatewayError::Overloaded { .. } | GatewayError::TenantOverloaded { .. } => {
                "rate_limit_error"
            }
            GatewayError::UpstreamUnreachable(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::UpstreamInvalid(_)
            | GatewayError::ShuttingDown { .. } => "server_error",
        }
    }

    /// OpenAI `error.code`.
    fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::Unauthorized => "invalid_api_key",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::RouteNotFound => "unknown_url",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::Overloaded { .. } => "rate_limit_exceeded",
            GatewayError::TenantOverloaded { .. } => "tenant_rate_limit_exceeded",
            GatewayError::UpstreamUnreachable(_) => "upstream_unreachable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamInvalid(_) => "upstream_invalid_response",
            GatewayError::ShuttingDown { .. } => "shutting_down",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::Overloaded { retry_after_secs }
            | GatewayError::TenantOverloaded { retry_after_secs }
            | GatewayError::ShuttingDown { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The OpenAI error JSON of this error.
    pub fn body(&self) -> Bytes {
        openai_error_body(
            &self.to_string(),
            self.openai_type(),
            self.param(),
            self.code(),
        )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut resp = (self.status_code(), self.body()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let GatewayError::MethodNotAllowed { allow } = &self
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            h.insert(header::ALLOW, v);
        }
        resp
    }
}

/// `{"error":{"message":..,"type":..,"param":..,"code":..}}`
pub fn openai_error_body(message: &str, typ: &str, param: Option<&str>, code: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": typ, "param": param, "code": code}});
    Bytes::from(v.to_string())
}

/// The SSE event sent when a stream fails after it started.
pub fn sse_error_event(message: &str, typ: &str, code: &str) -> Bytes {
    let body = openai_error_body(message, typ, None, code);
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

#[derive(Deserialize)]
struct AnyError<'a> {
    #[serde(borrow, default)]
    error: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    object: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(rename = "type", default)]
    typ: Option<serde_json::Value>,
    #[serde(default)]
    param: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

fn type_for_status(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 409 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Brings an upstream error body into the OpenAI shape. A body already in the
/// True when an OpenAI-shaped error body names the `model` parameter (vLLM's unknown-model 404).
pub fn names_model_param(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/param")?.as_str().map(|p| p == "model"))
        .unwrap_or(false)
}

/// Brings an upstream error body into the OpenAI shape. A body already in the
/// nested shape (`{"error":{...}}`) is returned unchanged.
pub fn normalize_upstream_error(status: u16, body: &[u8]) -> Bytes {
    let code_str = format!("upstream_http_{status}");
    let parsed: Option<AnyError> = serde_json::from_slice(body).ok();
    if let Some(e) = parsed {
        if let Some(raw) = e.error {
            if raw.get().trim_start().starts_with('{') {
                return Bytes::copy_from_slice(body);
            }
            // {"error":"Unauthorized"}
            let msg = serde_json::from_str::<serde_json::Value>(raw.get())
                .map(|v| value_text(&v))
                .unwrap_or_default();
            return openai_error_body(&msg, type_for_status(status), None, &code_str);
        }
        if e.object.as_deref() == Some("error") || e.message.is_some() {
            // vLLM < 0.10.1 flat shape
            let msg = e.message.as_ref().map(value_text).unwrap_or_default();
            let typ = e
                .typ
                .as_ref()
                .map(value_text)
                .unwrap_or_else(|| type_for_status(status).to_owned());
            let param = e.param.as_ref().and_then(|p| p.as_str());
            // vLLM's `code` is the HTTP status as an integer: it stays one
            // (JSON types are the upstream's; only the nesting changes).
            let code = match e.code {
                Some(serde_json::Value::Null) | None => serde_json::Value::String(code_str),
                Some(c) => c,
            };
            let v = json!({"error": {"message": msg, "type": typ, "param": param, "code": code}});
            return Bytes::from(v.to_string());
        }
        if let Some(d) = &e.detail {
            return openai_error_body(&value_text(d), type_for_status(status), None, &code_str);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let msg = if text.is_empty() {
        format!("upstream returned HTTP {status} with an empty body")
    } else {
        let cut: String = text.chars().take(200).collect();
        format!("upstream returned HTTP {status}: {cut}")
    };
    openai_error_body(&msg, type_for_status(status), None, &code_str)
}

/// An OpenAI error for an upstream answer of `status` described by `message`.
pub fn upstream_error_body(status: u16, message: &str) -> Bytes {
    openai_error_body(
        message,
        type_for_status(status),
        None,
        &format!("upstream_http_{status}"),
    )
}

const REDACTED: &[u8] = b"[redacted]";

/// Removes credentials from an upstream body before a client sees it: every
/// occurrence of the `secrets` (the pool's upstream key) and the token of
/// every `Bearer <token>` (an upstream that echoes its request headers).
pub fn scrub_secrets<'a>(body: &'a [u8], secrets: &[&str]) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    let mut out: Cow<'a, [u8]> = Cow::Borrowed(body);
    for secret in secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| s.len() >= 4)
    {
        if memchr::memmem::find(&out, secret).is_some() {
            let mut v = Vec::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(i) = memchr::memmem::find(rest, secret) {
                v.extend_from_slice(&rest[..i]);
                v.extend_from_slice(REDACTED);
                rest = &rest[i + secret.len()..];
            }
            v.extend_from_slice(rest);
            out = Cow::Owned(v);
        }
    }
    let lower = out.to_ascii_lowercase();
    if memchr::memmem::find(&lower, b"bearer ").is_none() {
        return out;
    }
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    let mut v = Vec::with_capacity(out.len());
    let mut at = 0;
    for i in memchr::memmem::find_iter(&lower, b"bearer ") {
        if i < at {
            continue;
        }
        let start = i + 7;
        let end = start + out[start..].iter().take_while(|&&b| is_token(b)).count();
        v.extend_from_slice(&out[at..start]);
        if end > start && &out[start..end] != REDACTED {
            v.extend_from_slice(REDACTED);
        } else {
            v.extend_from_slice(&out[start..end]);
        }
        at = end;
    }
    v.extend_from_slice(&out[at..]);
    Cow::Owned(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn statuses_and_shapes() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::InvalidJson("x".into()), 400, "invalid_json"),
            (GatewayError::Unauthorized, 401, "invalid_api_key"),
            (
                GatewayError::ModelNotFound("m".into()),
                404,
                "model_not_found",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                GatewayError::Overloaded {
                    retry_after_secs: 1,
                },
                429,
                "rate_limit_exceeded",
            ),
            (
                GatewayError::UpstreamUnreachable("x".into()),
                502,
                "upstream_unreachable",
            ),
            (
                GatewayError::UpstreamTimeout("x".into()),
                504,
                "upstream_timeout",
            ),
            (
                GatewayError::ShuttingDown {
                    retry_after_secs: 1,
                },
                503,
                "shutting_down",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status_code().as_u16(), status);
            let v = parse(&err.body());
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["type"].is_string());
            assert!(v["error"].get("param").is_some());
        }
    }

    #[test]
    fn unknown_model_errors_are_recognised() {
        let vllm = br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#;
        assert!(names_model_param(vllm));
        assert!(!names_model_param(
            br#"{"error":{"message":"no","param":null}}"#
        ));
        assert!(!names_model_param(b"not json"));
    }

    #[test]
    fn upstream_error_shapes_are_normalised() {
        let nested = br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#;
        assert_eq!(&normalize_upstream_error(404, nested)[..], &nested[..]);

        let flat = br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#;
        let v = parse(&normalize_upstream_error(400, flat));
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "BadRequestError");
        assert_eq!(v["error"]["code"], 400, "the integer stays an integer");

        let v = parse(&normalize_upstream_error(
            401,
            br#"{"error":"Unauthorized"}"#,
        ));
        assert_eq!(v["error"]["message"], "Unauthorized");
        assert_eq!(v["error"]["type"], "authentication_error");

        let v = parse(&normalize_upstream_error(
            422,
            br#"{"detail":[{"loc":["body"]}]}"#,
        ));
        assert!(v["error"]["message"].as_str().unwrap().contains("loc"));

        let v = parse(&normalize_upstream_error(500, b""));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("empty body")
        );
        assert_eq!(v["error"]["type"], "server_error");

        let v = parse(&normalize_upstream_error(502, b"<html>bad gateway</html>"));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bad gateway")
        );
    }

    #[test]
    fn secrets_are_scrubbed() {
        let body = br#"{"error":{"message":"bad request; headers: {'authorization': 'Bearer sk-pool-123', 'api-key': 'sk-pool-123', 'x': 'BEARER abc.def'}"}}"#;
        let out = scrub_secrets(body, &["sk-pool-123"]);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("sk-pool-123"), "{text}");
        assert!(!text.contains("abc.def"), "{text}");
        assert_eq!(text.matches("[redacted]").count(), 3, "{text}");
        let _: serde_json::Value = serde_json::from_slice(&out).unwrap();
        // Nothing to scrub: the body is borrowed as it is.
        let clean = br#"{"error":{"message":"no"}}"#;
        assert!(matches!(
            scrub_secrets(clean, &["sk-pool-123"]),
            std::borrow::Cow::Borrowed(_)
        ));
        // Short secrets are not scrubbed blindly; "Bearer" alone is kept.
        assert_eq!(&scrub_secrets(b"a Bearer  b", &["ab"])[..], b"a Bearer  b");
    }

    #[test]
    fn sse_error_event_is_one_event_then_done() {
        let b = sse_error_event("boom", "server_error", "stream_error");
        let s = std::str::from_utf8(&b).unwrap();
        assert!(s.starts_with("data: {\"error\":"));
        assert!(s.ends_with("\n\ndata: [DONE]\n\n"));
    }
}
