//! A Loki-faithful **test peer** — not a Loki.
//!
//! It speaks Loki's push wire format and applies Loki's default validation rules, so
//! the shipper can be tested end to end without a Loki: `POST /loki/api/v1/push` with
//! raw-snappy protobuf (`logproto.PushRequest`, decoded with the same generated types)
//! or JSON; validation of label syntax and limits, line size, timestamps too old or too
//! far in the future, and structured-metadata limits. Like Loki it answers 204 when
//! everything was accepted, and 400 as a *partial success* (valid entries are stored,
//! invalid ones are not) with **Loki 3.4's exact body** (see [`loki_400_body`]): the
//! validation messages of grafana/loki `pkg/validation/validate.go` grouped the way
//! `util.GroupedErrors` groups them, which carries no "total ignored" count. The
//! stream labels in those messages include the `service_name` Loki 3.x discovers
//! (see [`with_service_name`]); entries are recorded with the labels as pushed.
//!
//! Every accepted entry is recorded as one JSON line
//! `{"labels":{..},"ts_ns":"..","line":"..","structured_metadata":{..}}` (to the
//! `--record` file), so tests can count what was delivered. Unlike Loki it does not
//! deduplicate identical entries: duplicates stay visible to the tests.
//!
//! Fault injection through `POST /control` (JSON, fields optional):
//! - `{"mode":"ok"}`: normal behaviour (clears the other modes);
//! - `{"mode":"fail","status":503,"count":N,"retry_after":"5"}`: answer the next N
//!   pushes (all pushes if `count` is absent) with `status` (default 503), storing
//!   nothing; `retry_after` (optional) is sent as the `Retry-After` header;
//! - `{"mode":"reject","count":N}`: answer the next N pushes with 400, every entry
//!   ignored, in the older ingester wording that ends with `total ignored: N out of M`;
//! - `{"delay_ms":M}`: delay every push answer by M ms (slow Loki; combine with a mode).
//!
//! `GET /stats` returns counters as JSON; `GET /ready` answers 200 `ready`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::loki::encoder;
use crate::loki::proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};

/// Validation limits (Loki's defaults).
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Where accepted entries are recorded (JSON lines); `None` = only count them.
    pub record: Option<PathBuf>,
    /// `max_line_size` (256 KB = 256,000 bytes).
    pub max_line_bytes: usize,
    /// `reject_old_samples_max_age` (7 days).
    pub max_age: Duration,
    /// `creation_grace_period` (10 minutes).
    pub creation_grace: Duration,
    /// `max_label_names_per_series` (15).
    pub max_labels: usize,
    /// `max_label_name_length` (1024).
    pub max_label_name: usize,
    /// `max_label_value_length` (2048).
    pub max_label_value: usize,
    /// `max_structured_metadata_size` (64 KB).
    pub max_metadata_bytes: usize,
    /// `max_structured_metadata_entries_count` (128).
    pub max_metadata_entries: usize,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            record: None,
            max_line_bytes: 256_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            creation_grace: Duration::from_secs(600),
            max_labels: 15,
            max_label_name: 1024,
            max_label_value: 2048,
            max_metadata_bytes: 64 * 1024,
            max_metadata_entries: 128,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A control request (`POST /control`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// `ok`, `fail` or `reject`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Status for `fail` (default 503).
    #[serde(default)]
    pub status: Option<u16>,
    /// How many pushes the mode applies to (absent: until changed).
    #[serde(default)]
    pub count: Option<u64>,
    /// Delay before every push answer, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// `Retry-After` header value sent with injected failures.
    #[serde(default)]
    pub retry_after: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Fault {
    mode: String,
    status: u16,
    remaining: Option<u64>,
    delay_ms: u64,
    retry_after: Option<String>,
}

/// Counters served by `GET /stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Push requests received.
    pub requests: u64,
    /// Requests answered 204.
    pub accepted_requests: u64,
    /// Requests answered 400 by validation (partial success) or the `reject` mode.
    pub rejected_requests: u64,
    /// Requests answered with an injected failure status.
    pub failed_requests: u64,
    /// Requests that could not be decoded.
    pub invalid_requests: u64,
    /// Entries stored.
    pub accepted_entries: u64,
    /// Entries ignored by validation or rejection.
    pub rejected_entries: u64,
    /// Line bytes stored.
    pub accepted_line_bytes: u64,
    /// Compressed body bytes received.
    pub body_bytes: u64,
}

/// Shared receiver state.
#[derive(Debug)]
pub struct ReceiverState {
    cfg: ReceiverConfig,
    fault: Mutex<Fault>,
    stats: Mutex<Stats>,
    record: Mutex<Option<BufWriter<File>>>,
}

impl ReceiverState {
    /// Creates the state (opens the record file for appending).
    pub fn new(cfg: ReceiverConfig) -> std::io::Result<Arc<Self>> {
        let record = match &cfg.record {
            Some(p) => Some(BufWriter::with_capacity(
                1 << 20,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Arc::new(Self {
            cfg,
            fault: Mutex::new(Fault::default()),
            stats: Mutex::new(Stats::default()),
            record: Mutex::new(record),
        }))
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Applies a control request.
    pub fn control(&self, c: &Control) -> Result<(), String> {
        let mut f = self.fault.lock().map_err(|e| e.to_string())?;
        if let Some(mode) = &c.mode {
            match mode.as_str() {
                "ok" => {
                    *f = Fault {
                        delay_ms: f.delay_ms,
                        ..Fault::default()
                    }
                }
                "fail" | "reject" => {
                    f.mode = mode.clone();
                    f.status = c.status.unwrap_or(if mode == "fail" { 503 } else { 400 });
                    f.remaining = c.count;
                    f.retry_after.clone_from(&c.retry_after);
                }
                other => return Err(format!("unknown mode {other:?} (ok, fail, reject)")),
            }
        }
        if let Some(d) = c.delay_ms {
            f.delay_ms = d;
        }
        Ok(())
    }

    fn bump(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
}

/// Builds the router.
pub fn router(state: Arc<ReceiverState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/stats", get(stats))
        .route("/control", post(control))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A running in-process receiver.
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
    pub stop: CancellationToken,
}

/// Starts a receiver on `listener` in the current runtime.
pub fn spawn(listener: tokio::net::TcpListener, cfg: ReceiverConfig) -> std::io::Result<Handle> {
    let addr = listener.local_addr()?;
    let state = ReceiverState::new(cfg)?;
    let stop = CancellationToken::new();
    let (s, st) = (Arc::clone(&state), stop.clone());
    tokio::spawn(async move {
        let r = axum::serve(listener, router(s))
            .with_graceful_shutdown(async move { st.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "receiver stopped");
        }
    });
    Ok(Handle { addr, state, stop })
}

async fn stats(State(st): State<Arc<ReceiverState>>) -> Response {
    axum::Json(st.stats()).into_response()
}

async fn control(State(st): State<Arc<ReceiverState>>, body: Bytes) -> Response {
    let c: Control = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad control request: {e}\n"),
            )
                .into_response();
        }
    };
    match st.control(&c) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[derive(Deserialize)]
struct JsonPush {
    streams: Vec<JsonStream>,
}

#[derive(Deserialize)]
struct JsonStream {
    stream: BTreeMap<String, String>,
    values: Vec<Vec<serde_json::Value>>,
}

fn from_json(body: &[u8]) -> Result<PushRequest, String> {
    let p: JsonPush = serde_json::from_slice(body).map_err(|e| format!("json: {e}"))?;
    let mut req = PushRequest::default();
    for s in p.streams {
        let mut labels = String::from("{");
        for (i, (k, v)) in s.stream.iter().enumerate() {
            if i > 0 {
                labels.push(',');
            }
            labels.push_str(k);
            labels.push_str("=\"");
            crate::parser::escape_label_value_into(&mut labels, v);
            labels.push('"');
        }
        labels.push('}');
        let mut entries = Vec::new();
        for v in s.values {
            let ts: i64 = v
                .first()
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse().ok())
                .ok_or("bad timestamp (want a string of Unix ns)")?;
            let line = v
                .get(1)
                .and_then(|l| l.as_str())
                .ok_or("bad line")?
                .to_string();
            let mut sm = Vec::new();
            if let Some(obj) = v.get(2).and_then(|m| m.as_object()) {
                for (k, val) in obj {
                    sm.push(LabelPairAdapter {
                        name: k.clone(),
                        value: val.as_str().unwrap_or_default().to_string(),
                    });
                }
            }
            entries.push(EntryAdapter {
                timestamp: Some(prost_types::Timestamp {
                    seconds: ts.div_euclid(1_000_000_000),
                    nanos: ts.rem_euclid(1_000_000_000) as i32,
                }),
                line,
                structured_metadata: sm,
                parsed: vec![],
            });
        }
        req.streams.push(StreamAdapter {
            labels,
            entries,
            hash: 0,
        });
    }
    Ok(req)
}

/// A label set the way Prometheus' `labels.Labels.String()` prints it (Loki's
/// validation messages use it): `{a="b", c="d"}`, names sorted, values quoted like Go's
/// `strconv.Quote`.
pub fn prometheus_labels_string(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut out = String::from("{");
    for (i, (n, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
        out.push('=');
        go_quote_into(&mut out, v);
    }
    out.push('}');
    out
}

fn go_quote_into(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Loki's default `discover_service_name` list (`pkg/validation/limits.go`): the first
/// of these labels with a value becomes `service_name`.
const DISCOVER_SERVICE_NAME: &[&str] = &[
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
];

/// The labels Loki 3.x validates and names in its messages: the pushed ones plus a
/// discovered `service_name` (`pkg/loghttp/push/push.go`, `ParseLokiRequest`, sets
/// `s.Labels` with it; `unknown_service` when no listed label has a value). The
/// receiver records entries with the labels as pushed.
pub fn with_service_name(pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = pairs.to_vec();
    if !pairs.iter().any(|(n, _)| n == "service_name") {
        let v = DISCOVER_SERVICE_NAME
            .iter()
            .find_map(|want| {
                pairs
                    .iter()
                    .find(|(n, v)| n == want && !v.is_empty())
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "unknown_service".to_string());
        out.push(("service_name".to_string(), v));
    }
    out
}

/// Go's `time.Time.Format(time.RFC3339)` for a UTC time: whole seconds, `Z`.
pub fn rfc3339_seconds(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(1_000_000_000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Validates a stream's labels like Loki; returns them parsed or the discard reason
/// (Loki 3.4's wording: `pkg/validation/validate.go` and the distributor's
/// `parseStreamLabels`; `raw` is the label string as sent).
pub fn validate_labels(
    cfg: &ReceiverConfig,
    labels: &str,
) -> Result<Vec<(String, String)>, String> {
    let pairs = encoder::parse_labels(labels)
        .map_err(|e| format!("Error parsing labels '{labels}' with error: {e}"))?;
    if pairs.is_empty() {
        return Err("error at least one label pair is required per stream".into());
    }
    for (n, _) in &pairs {
        let mut ch = n.chars();
        let ok = matches!(ch.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && ch.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "Error parsing labels '{labels}' with error: invalid label name {n:?}"
            ));
        }
    }
    if pairs.len() > cfg.max_labels {
        return Err(format!(
            "entry for stream '{labels}' has {} label names; limit {}",
            pairs.len(),
            cfg.max_labels
        ));
    }
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut last = "";
    for (n, v) in sorted {
        if n.len() > cfg.max_label_name {
            return Err(format!("stream '{labels}' has label name too long: '{n}'"));
        }
        if v.len() > cfg.max_label_value {
            return Err(format!("stream '{labels}' has label value too long: '{v}'"));
        }
        if n == last {
            return Err(format!("stream '{labels}' has duplicate label name: '{n}'"));
        }
        last = n;
    }
    Ok(pairs)
}

fn entry_ts_ns(e: &EntryAdapter) -> i64 {
    e.timestamp.as_ref().map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

/// Validates one entry like Loki 3.4's `Validator.ValidateEntry`
/// (`pkg/distributor/validator.go`: too old, too new, line too long, structured
/// metadata, in that order); `Err` holds Loki's message. `stream` is the stream's
/// labels as [`prometheus_labels_string`] prints them.
pub fn validate_entry(
    cfg: &ReceiverConfig,
    stream: &str,
    e: &EntryAdapter,
    now: i64,
) -> Result<(), String> {
    let ts = entry_ts_ns(e);
    let oldest = now - cfg.max_age.as_nanos() as i64;
    if ts < oldest {
        return Err(format!(
            "entry for stream '{stream}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
            rfc3339_seconds(ts),
            rfc3339_seconds(oldest)
        ));
    }
    if ts > now + cfg.creation_grace.as_nanos() as i64 {
        return Err(format!(
            "entry for stream '{stream}' has timestamp too new: {}",
            rfc3339_seconds(ts)
        ));
    }
    if e.line.len() > cfg.max_line_bytes {
        return Err(format!(
            "Max entry size '{}' bytes exceeded for stream '{stream}' while adding an entry with length '{}' bytes",
            cfg.max_line_bytes,
            e.line.len()
        ));
    }
    if !e.structured_metadata.is_empty() {
        let sm: usize = e
            .structured_metadata
            .iter()
            .map(|p| p.name.len() + p.value.len())
            .sum();
        if sm > cfg.max_metadata_bytes {
            return Err(format!(
                "stream '{stream}' has structured metadata too large: '{sm}' bytes, limit: '{}' bytes. Please see `limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it.",
                cfg.max_metadata_bytes
            ));
        }
        if e.structured_metadata.len() > cfg.max_metadata_entries {
            return Err(format!(
                "stream '{stream}' has too many structured metadata labels: '{}', limit: '{}'. Please see `limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to increase it.",
                e.structured_metadata.len(),
                cfg.max_metadata_entries
            ));
        }
    }
    Ok(())
}

/// The body of Loki 3.4's 400 for a push with invalid entries, from the list of
/// validation errors (one per rejected entry, one per rejected stream).
///
/// Where the format comes from (grafana/loki, release 3.4):
/// - `pkg/distributor/distributor.go`, `Distributor.Push`: every failed
///   `parseStreamLabels` / `ValidateEntry` does `validationErrors.Add(err)` on a
///   `util.GroupedErrors`; the answer is
///   `httpgrpc.Errorf(http.StatusBadRequest, "%s", validationErrors.Error())`.
/// - `pkg/util/errors.go`, `GroupedErrors.Error()`: counts identical messages, joins
///   the distinct ones with `"; "`, and writes `"%d errors like: "` before each when
///   there is more than one distinct message or the message occurred more than once
///   (Go map order, so the order of the groups varies; here: first seen first).
/// - `pkg/distributor/http.go` writes the text with `http.Error`, which appends `"\n"`
///   (`Content-Type: text/plain; charset=utf-8`, `X-Content-Type-Options: nosniff`).
///
/// Nothing in it says "total ignored": that wording is the ingester's (older format).
pub fn loki_400_body(errors: &[String]) -> String {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for e in errors {
        match groups.iter_mut().find(|(m, _)| *m == e.as_str()) {
            Some(g) => g.1 += 1,
            None => groups.push((e.as_str(), 1)),
        }
    }
    let unique = groups.len();
    let mut out = String::new();
    for (i, (msg, n)) in groups.into_iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        if unique > 1 || n > 1 {
            out.push_str(&format!("{n} errors like: "));
        }
        out.push_str(msg);
    }
    out.push('\n');
    out
}

#[derive(Serialize)]
struct Recorded<'a> {
    labels: BTreeMap<&'a str, &'a str>,
    ts_ns: String,
    line: &'a str,
    structured_metadata: BTreeMap<&'a str, &'a str>,
}

async fn push(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    st.bump(|s| {
        s.requests += 1;
        s.body_bytes += body.len() as u64;
    });
    // Fault injection.
    let (mode, status, delay, retry_after) = {
        let Ok(mut f) = st.fault.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let mode = f.mode.clone();
        let status = f.status;
        let retry_after = f.retry_after.clone();
        if !mode.is_empty()
            && let Some(r) = f.remaining.as_mut()
        {
            *r = r.saturating_sub(1);
            if *r == 0 {
                *f = Fault {
                    delay_ms: f.delay_ms,
                    ..Fault::default()
                };
            }
        }
        (mode, status, f.delay_ms, retry_after)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if mode == "fail" {
        st.bump(|s| s.failed_requests += 1);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = (code, "injected failure\n").into_response();
        if let Some(v) = retry_after.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }

    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cenc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(cenc.is_empty() || cenc == "snappy") {
        st.bump(|s| s.invalid_requests += 1);
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {cenc:?} is not supported by this test receiver\n"),
        )
            .into_response();
    }
    let decoded = if ctype.starts_with("application/json") {
        from_json(&body)
    } else {
        encoder::decode(&body)
    };
    let req = match decoded {
        Ok(r) => r,
        Err(e) => {
            st.bump(|s| s.invalid_requests += 1);
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let total: usize = req.streams.iter().map(|s| s.entries.len()).sum();
    if mode == "reject" {
        st.bump(|s| {
            s.rejected_requests += 1;
            s.rejected_entries += total as u64;
        });
        return (
            StatusCode::BAD_REQUEST,
            format!("injected rejection, total ignored: {total} out of {total}\n"),
        )
            .into_response();
    }

    let now = now_ns();
    let mut errors: Vec<String> = Vec::new();
    let mut ignored = 0usize;
    let mut accepted = 0u64;
    let mut accepted_bytes = 0u64;
    let mut out = Vec::new();
    for s in &req.streams {
        if s.entries.is_empty() {
            continue;
        }
        let pairs = match validate_labels(&st.cfg, &s.labels) {
            Ok(p) => p,
            Err(e) => {
                ignored += s.entries.len();
                errors.push(e);
                continue;
            }
        };
        let stream = prometheus_labels_string(&with_service_name(&pairs));
        for e in &s.entries {
            if let Err(reason) = validate_entry(&st.cfg, &stream, e, now) {
                ignored += 1;
                errors.push(reason);
                continue;
            }
            accepted += 1;
            accepted_bytes += e.line.len() as u64;
            if st.cfg.record.is_some() {
                let rec = Recorded {
                    labels: pairs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect(),
                    ts_ns: entry_ts_ns(e).to_string(),
                    line: &e.line,
                    structured_metadata: e
                        .structured_metadata
                        .iter()
                        .map(|p| (p.name.as_str(), p.value.as_str()))
                        .collect(),
                };
                if serde_json::to_writer(&mut out, &rec).is_ok() {
                    out.push(b'\n');
                }
            }
        }
    }
    if !out.is_empty()
        && let Ok(mut guard) = st.record.lock()
        && let Some(w) = guard.as_mut()
        && let Err(e) = w.write_all(&out).and_then(|()| w.flush())
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("recording failed: {e}\n"),
        )
            .into_response();
    }
    st.bump(|s| {
        s.accepted_entries += accepted;
        s.accepted_line_bytes += accepted_bytes;
        s.rejected_entries += ignored as u64;
        if ignored == 0 {
            s.accepted_requests += 1;
        } else {
            s.rejected_requests += 1;
        }
    });
    if ignored == 0 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            loki_400_body(&errors),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, line: &str) -> EntryAdapter {
        EntryAdapter {
            timestamp: Some(prost_types::Timestamp {
                seconds: ts / 1_000_000_000,
                nanos: (ts % 1_000_000_000) as i32,
            }),
            line: line.into(),
            structured_metadata: vec![],
            parsed: vec![],
        }
    }

    #[test]
    fn label_validation_table() {
        let c = ReceiverConfig::default();
        let cases: &[(&str, bool)] = &[
            (r#"{app="x"}"#, true),
            (r#"{app="x", b="y\"z"}"#, true),
            ("{}", false),
            (r#"{1app="x"}"#, false),
            (r#"{app="x",app="y"}"#, false),
            (r#"app="x""#, false),
            (r#"{app=x}"#, false),
        ];
        for (l, ok) in cases {
            assert_eq!(validate_labels(&c, l).is_ok(), *ok, "{l}");
        }
        let many = format!(
            "{{{}}}",
            (0..16)
                .map(|i| format!("l{i}=\"v\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            validate_labels(&c, &many)
                .unwrap_err()
                .contains("label names; limit 15")
        );
        let long = format!("{{a=\"{}\"}}", "v".repeat(2049));
        assert!(
            validate_labels(&c, &long)
                .unwrap_err()
                .contains("has label value too long")
        );
    }

    #[test]
    fn entry_validation_table() {
        let c = ReceiverConfig {
            max_line_bytes: 10,
            ..Default::default()
        };
        let now = 1_800_000_000_000_000_000;
        let st = r#"{app="x"}"#;
        assert!(validate_entry(&c, st, &entry(now, "ok"), now).is_ok());
        assert_eq!(
            validate_entry(&c, st, &entry(now, "01234567890"), now).unwrap_err(),
            r#"Max entry size '10' bytes exceeded for stream '{app="x"}' while adding an entry with length '11' bytes"#
        );
        // 1_800_000_000 s = 2027-01-15T08:00:00Z
        assert_eq!(
            validate_entry(&c, st, &entry(now - 8 * 86_400 * 1_000_000_000, "x"), now).unwrap_err(),
            r#"entry for stream '{app="x"}' has timestamp too old: 2027-01-07T08:00:00Z, oldest acceptable timestamp is: 2027-01-08T08:00:00Z"#
        );
        assert_eq!(
            validate_entry(&c, st, &entry(now + 11 * 60 * 1_000_000_000, "x"), now).unwrap_err(),
            r#"entry for stream '{app="x"}' has timestamp too new: 2027-01-15T08:11:00Z"#
        );
        let mut e = entry(now, "x");
        e.structured_metadata = vec![LabelPairAdapter {
            name: "a".into(),
            value: "b".repeat(70_000),
        }];
        assert!(
            validate_entry(&c, st, &e, now)
                .unwrap_err()
                .contains("has structured metadata too large: '70001' bytes, limit: '65536' bytes")
        );
    }

    #[test]
    fn loki_3_4_400_bodies() {
        let old = |s: &str| {
            format!(
                "entry for stream '{{app=\"x\", level=\"info\"}}' has timestamp too old: {s}, oldest acceptable timestamp is: 2027-01-08T08:00:00Z"
            )
        };
        // One error alone: bare.
        assert_eq!(
            loki_400_body(&[old("2027-01-01T00:00:00Z")]),
            format!("{}\n", old("2027-01-01T00:00:00Z"))
        );
        // The same error 100 times: "100 errors like: ".
        let same = vec![old("2027-01-01T00:00:00Z"); 100];
        assert_eq!(
            loki_400_body(&same),
            format!("100 errors like: {}\n", old("2027-01-01T00:00:00Z"))
        );
        // Distinct errors: every group counted, joined with "; ".
        let mixed = vec![
            old("2027-01-01T00:00:00Z"),
            old("2027-01-01T00:00:01Z"),
            old("2027-01-01T00:00:00Z"),
        ];
        assert_eq!(
            loki_400_body(&mixed),
            format!(
                "2 errors like: {}; 1 errors like: {}\n",
                old("2027-01-01T00:00:00Z"),
                old("2027-01-01T00:00:01Z")
            )
        );
        assert!(!loki_400_body(&mixed).contains("total ignored"));
        assert_eq!(
            prometheus_labels_string(&with_service_name(&[
                ("app".into(), "llm-gateway".into()),
                ("level".into(), "info".into())
            ])),
            r#"{app="llm-gateway", level="info", service_name="llm-gateway"}"#
        );
        assert_eq!(
            prometheus_labels_string(&with_service_name(&[("x".into(), "1".into())])),
            r#"{service_name="unknown_service", x="1"}"#
        );
        assert_eq!(
            prometheus_labels_string(&[("z".into(), "a\"b\\".into()), ("a".into(), "1".into())]),
            r#"{a="1", z="a\"b\\"}"#
        );
        // And the shipper reads these bodies back exactly.
        let r = crate::loki::rejection::rejected_entries(&loki_400_body(&mixed), 10, 1);
        assert_eq!((r.rejected, r.unknown), (3, 0));
    }

    #[test]
    fn control_modes() {
        let st = ReceiverState::new(ReceiverConfig::default()).unwrap();
        assert!(
            st.control(&Control {
                mode: Some("bogus".into()),
                ..Default::default()
            })
            .is_err()
        );
        st.control(&Control {
            mode: Some("fail".into()),
            status: Some(429),
            count: Some(2),
            delay_ms: Some(5),
            retry_after: None,
        })
        .unwrap();
        let f = st.fault.lock().unwrap().clone();
        assert_eq!(
            (f.mode.as_str(), f.status, f.remaining, f.delay_ms),
            ("fail", 429, Some(2), 5)
        );
        st.control(&Control {
            mode: Some("ok".into()),
            ..Default::default()
        })
        .unwrap();
        let f = st.fault.lock().unwrap().clone();
        assert_eq!((f.mode.as_str(), f.delay_ms), ("", 5));
    }
}
