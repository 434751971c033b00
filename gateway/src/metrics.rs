//! Prometheus metrics. The only place metric names live.
//!
//! Label values are bounded: `route` is one of the fixed routes, `model` and
//! `tenant` are names from the configuration (or models the upstreams list),
//! else `other`; `finish_reason` is one of a fixed set, else `other`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::refusal::RefusalKind;

/// A label value shared between requests (cheap to clone).
pub type Label = Arc<String>;

/// vLLM `e2e_request_latency_seconds` buckets.
pub const REQUEST_DURATION_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM `time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Content type of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: Label,
    pub tenant: Label,
    pub status: u16,
    pub finish_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteModel {
    route: &'static str,
    model: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOnly {
    model: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTenant {
    model: Label,
    tenant: Label,
}

/// Refusals by model, tenant and kind (`full` or `partial`: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    model: Label,
    tenant: Label,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tokens {
    model: Label,
    tenant: Label,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamKind {
    upstream: Label,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamEndpoint {
    upstream: Label,
    endpoint: Label,
}

/// Endpoint picks by routing reason (one of [`crate::routing::reason::ALL`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PickLabels {
    upstream: Label,
    endpoint: Label,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

type Hist = Family<RouteModel, Histogram, fn() -> Histogram>;
type TtftHist = Family<ModelOnly, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}
fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}

/// Kinds of upstream errors (`llm_gateway_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Http5xx,
    Http4xx,
    Stream,
    /// A 2xx that is not what the route promises (not JSON, an error object,
    /// a stream without events).
    Invalid,
}

impl UpstreamErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Http5xx => "http_5xx",
            UpstreamErrorKind::Http4xx => "http_4xx",
            UpstreamErrorKind::Stream => "stream",
            UpstreamErrorKind::Invalid => "invalid_response",
        }
    }
}

/// Bounded `finish_reason` label value.
pub fn finish_reason_label(fr: Option<&str>) -> &'static str {
    match fr {
        None => "none",
        Some("stop") => "stop",
        Some("length") => "length",
        Some("tool_calls") => "tool_calls",
        Some("content_filter") => "content_filter",
        Some("function_call") => "function_call",
        Some("abort") => "abort",
        Some("error") => "error",
        Some("repetition") => "repetition",
        Some("client_disconnect") => "client_disconnect",
        Some("timeout") => "timeout",
        Some(_) => "other",
    }
}

/// All gateway metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Hist,
    ttft: TtftHist,
    tokens: Family<Tokens, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    cost: Family<ModelTenant, Counter<f64, AtomicU64>>,
    in_flight: Family<ModelOnly, Gauge>,
    upstream_errors: Family<UpstreamKind, Counter>,
    upstream_up: Family<UpstreamEndpoint, Gauge>,
    endpoint_picks: Family<PickLabels, Counter>,
    endpoint_waiting: Family<UpstreamEndpoint, Gauge<f64, AtomicU64>>,
    endpoint_kv_usage: Family<UpstreamEndpoint, Gauge<f64, AtomicU64>>,
    endpoint_scrape_errors: Family<UpstreamEndpoint, Counter>,
    events_written: Counter,
    events_dropped: Counter,
    open_connections: Gauge,
    connections_rejected: Family<Reason, Counter>,
    connections_timed_out: Family<Reason, Counter>,
}

/// Outcome of one request, recorded when it ends.
#[derive(Debug)]
pub struct Finished {
    pub labels: RequestLabels,
    pub duration_secs: f64,
    pub ttft_secs: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Full or partial refusal, if any.
    pub refusal: Option<RefusalKind>,
    pub cost_usd: Option<f64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Hist = Family::new_with_constructor(duration_histogram);
        let ttft: TtftHist = Family::new_with_constructor(ttft_histogram);
        let tokens = Family::<Tokens, Counter>::default();
        let refusals = Family::<RefusalLabels, Counter>::default();
        let cost = Family::<ModelTenant, Counter<f64, AtomicU64>>::default();
        let in_flight = Family::<ModelOnly, Gauge>::default();
        let upstream_errors = Family::<UpstreamKind, Counter>::default();
        let upstream_up = Family::<UpstreamEndpoint, Gauge>::default();
        let endpoint_picks = Family::<PickLabels, Counter>::default();
        let endpoint_waiting = Family::<UpstreamEndpoint, Gauge<f64, AtomicU64>>::default();
        let endpoint_kv_usage = Family::<UpstreamEndpoint, Gauge<f64, AtomicU64>>::default();
        let endpoint_scrape_errors = Family::<UpstreamEndpoint, Counter>::default();
        let events_written = Counter::default();
        let events_dropped = Counter::default();
        let open_connections = Gauge::default();
        let connections_rejected = Family::<Reason, Counter>::default();
        let connections_timed_out = Family::<Reason, Counter>::default();
        let build = Family::<Version, Gauge>::default();
        build
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        registry.register(
            "llm_gateway_requests",
            "Requests that reached a /v1 route, by outcome",
            requests.clone(),
        );
        registry.register(
            "llm_gateway_request_duration_seconds",
            "Request start to last byte",
            duration.clone(),
        );
        registry.register(
            "llm_gateway_time_to_first_token_seconds",
            "Request start to the first streamed chunk carrying content",
            ttft.clone(),
        );
        registry.register(
            "llm_gateway_tokens",
            "Tokens from upstream usage, by kind (prompt/completion)",
            tokens.clone(),
        );
        registry.register(
            "llm_gateway_refusals",
            "Responses detected as refusals, by kind: full (the event's refusal is true) or partial (a hedge)",
            refusals.clone(),
        );
        registry.register(
            "llm_gateway_cost_usd",
            "Cost from the price table, in USD",
            cost.clone(),
        );
        registry.register(
            "llm_gateway_in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        registry.register(
            "llm_gateway_upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "llm_gateway_upstream_up",
            "1 if the endpoint passes health checks, else 0",
            upstream_up.clone(),
        );
        registry.register(
            "llm_gateway_endpoint_picks",
            "Endpoint choices of the pools, by routing reason (round_robin, least_in_flight, load, affinity, affinity_fallback, retry, only_endpoint)",
            endpoint_picks.clone(),
        );
        registry.register(
            "llm_gateway_endpoint_queue_waiting",
            "Requests waiting in the endpoint's engine queue (vllm:num_requests_waiting, summed), as of the last good scrape; absent while scrapes fail",
            endpoint_waiting.clone(),
        );
        registry.register(
            "llm_gateway_endpoint_kv_cache_usage_ratio",
            "KV-cache usage 0-1 of the endpoint (vllm:kv_cache_usage_perc, or vllm:gpu_cache_usage_perc), as of the last good scrape; absent while scrapes fail",
            endpoint_kv_usage.clone(),
        );
        registry.register(
            "llm_gateway_endpoint_scrape_errors",
            "Failed scrapes of an endpoint's /metrics (connect, status, timeout, too large, no vLLM series)",
            endpoint_scrape_errors.clone(),
        );
        registry.register(
            "llm_gateway_events_written",
            "Event lines written",
            events_written.clone(),
        );
        registry.register(
            "llm_gateway_events_dropped",
            "Event lines that could not be written",
            events_dropped.clone(),
        );
        registry.register(
            "llm_gateway_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "llm_gateway_connections_rejected",
            "Client connections refused, by reason (limit: server.max_connections reached; accept_error: accepting failed, e.g. out of file descriptors)",
            connections_rejected.clone(),
        );
        registry.register(
            "llm_gateway_connections_timed_out",
            "Client connections closed by a timeout, by reason (header: request head not received in time; idle: keep-alive idle)",
            connections_timed_out.clone(),
        );
        registry.register(
            "llm_gateway_build_info",
            "Build information (always 1)",
            build,
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            refusals,
            cost,
            in_flight,
            upstream_errors,
            upstream_up,
            endpoint_picks,
            endpoint_waiting,
            endpoint_kv_usage,
            endpoint_scrape_errors,
            events_written,
            events_dropped,
            open_connections,
            connections_rejected,
            connections_timed_out,
        }
    }

    /// Records a finished request.
    pub fn finished(&self, f: &Finished) {
        let l = &f.labels;
        self.requests.get_or_create(l).inc();
        self.duration
            .get_or_create(&RouteModel {
                route: l.route,
                model: l.model.clone(),
            })
            .observe(f.duration_secs);
        if let Some(t) = f.ttft_secs {
            self.ttft
                .get_or_create(&ModelOnly {
                    model: l.model.clone(),
                })
                .observe(t);
        }
        for (kind, n) in [
            ("prompt", f.prompt_tokens),
            ("completion", f.completion_tokens),
        ] {
            if let Some(n) = n {
                self.tokens
                    .get_or_create(&Tokens {
                        model: l.model.clone(),
                        tenant: l.tenant.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        let mt = ModelTenant {
            model: l.model.clone(),
            tenant: l.tenant.clone(),
        };
        if let Some(kind) = f.refusal {
            self.refusals
                .get_or_create(&RefusalLabels {
                    model: l.model.clone(),
                    tenant: l.tenant.clone(),
                    kind: kind.as_str(),
                })
                .inc();
        }
        if let Some(c) = f.cost_usd {
            self.cost.get_or_create(&mt).inc_by(c);
        }
    }

    pub fn in_flight_add(&self, model: &Label, delta: i64) {
        self.in_flight
            .get_or_create(&ModelOnly {
                model: model.clone(),
            })
            .inc_by(delta);
    }

    pub fn upstream_error(&self, upstream: &Label, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamKind {
                upstream: upstream.clone(),
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn set_upstream_up(&self, upstream: &Label, endpoint: &Label, up: bool) {
        self.upstream_up
            .get_or_create(&UpstreamEndpoint {
                upstream: upstream.clone(),
                endpoint: endpoint.clone(),
            })
            .set(i64::from(up));
    }

    /// A pool chose `endpoint` for `reason` (a [`crate::routing::reason`] constant).
    pub fn endpoint_pick(&self, upstream: &Label, endpoint: &Label, reason: &'static str) {
        self.endpoint_picks
            .get_or_create(&PickLabels {
                upstream: upstream.clone(),
                endpoint: endpoint.clone(),
                reason,
            })
            .inc();
    }

    /// The scraped load of an endpoint (`None`: the scrape failed; the series are removed).
    pub fn set_endpoint_load(
        &self,
        upstream: &Label,
        endpoint: &Label,
        load: Option<crate::scrape::Load>,
    ) {
        let l = UpstreamEndpoint {
            upstream: upstream.clone(),
            endpoint: endpoint.clone(),
        };
        match load {
            Some(load) => {
                self.endpoint_waiting.get_or_create(&l).set(load.waiting);
                self.endpoint_kv_usage.get_or_create(&l).set(load.kv_usage);
            }
            None => {
                self.endpoint_waiting.remove(&l);
                self.endpoint_kv_usage.remove(&l);
            }
        }
    }

    /// Counts `n` failed scrapes of an endpoint (0 creates the series).
    pub fn scrape_error(&self, upstream: &Label, endpoint: &Label, n: u64) {
        self.endpoint_scrape_errors
            .get_or_create(&UpstreamEndpoint {
                upstream: upstream.clone(),
                endpoint: endpoint.clone(),
            })
            .inc_by(n);
    }

    /// A client connection opened (+1) or closed (-1).
    pub fn connections_add(&self, delta: i64) {
        self.open_connections.inc_by(delta);
    }

    /// A client connection was refused (`limit`, `accept_error`).
    pub fn connection_rejected(&self, reason: &'static str) {
        self.connections_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// A client connection was closed by a timeout (`header`, `idle`).
    pub fn connection_timed_out(&self, reason: &'static str) {
        self.connections_timed_out
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn events_written(&self, n: u64) {
        self.events_written.inc_by(n);
    }

    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    pub fn events_written_total(&self) -> u64 {
        self.events_written.get()
    }

    pub fn events_dropped_total(&self) -> u64 {
        self.events_dropped.get()
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Process metrics read from `/proc/self` at scrape time (Linux).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct ProcStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: u64,
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn read_proc() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime=14, stime=15, starttime=22.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start_ticks: f64 = f.get(19)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    Some(ProcStats {
        cpu_seconds: (utime + stime) / TICKS_PER_SEC,
        resident_bytes: status_kb(&status, "VmRSS:").unwrap_or(0),
        virtual_bytes: status_kb(&status, "VmSize:").unwrap_or(0),
        start_time_seconds: btime + start_ticks / TICKS_PER_SEC,
        open_fds,
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_proc() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_buckets_render() {
        let m = Metrics::new();
        let model: Label = Arc::new("m".into());
        let tenant: Label = Arc::new("anonymous".into());
        m.finished(&Finished {
            labels: RequestLabels {
                route: "/v1/chat/completions",
                model: model.clone(),
                tenant: tenant.clone(),
                status: 200,
                finish_reason: "stop",
            },
            duration_secs: 0.4,
            ttft_secs: Some(0.05),
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            refusal: Some(RefusalKind::Full),
            cost_usd: Some(0.5),
        });
        m.in_flight_add(&model, 1);
        m.upstream_error(&Arc::new("default".into()), UpstreamErrorKind::Connect);
        m.set_upstream_up(&Arc::new("default".into()), &Arc::new("h:1".into()), true);
        let (up, ep): (Label, Label) = (Arc::new("default".into()), Arc::new("h:1".into()));
        m.endpoint_pick(&up, &ep, crate::routing::reason::AFFINITY);
        m.scrape_error(&up, &ep, 2);
        m.set_endpoint_load(
            &up,
            &ep,
            Some(crate::scrape::Load {
                waiting: 3.0,
                kv_usage: 0.5,
            }),
        );
        let text = m.encode();
        for needle in [
            "llm_gateway_requests_total{route=\"/v1/chat/completions\",model=\"m\",tenant=\"anonymous\",status=\"200\",finish_reason=\"stop\"} 1",
            "llm_gateway_request_duration_seconds_bucket{le=\"0.5\",route=\"/v1/chat/completions\",model=\"m\"} 1",
            "llm_gateway_request_duration_seconds_bucket{le=\"7680.0\",",
            "llm_gateway_time_to_first_token_seconds_bucket{le=\"0.06\",model=\"m\"} 1",
            "llm_gateway_time_to_first_token_seconds_bucket{le=\"2560.0\",",
            "llm_gateway_tokens_total{model=\"m\",tenant=\"anonymous\",kind=\"completion\"} 4",
            "llm_gateway_refusals_total{model=\"m\",tenant=\"anonymous\",kind=\"full\"} 1",
            "llm_gateway_cost_usd_total{model=\"m\",tenant=\"anonymous\"} 0.5",
            "llm_gateway_in_flight_requests{model=\"m\"} 1",
            "llm_gateway_upstream_errors_total{upstream=\"default\",kind=\"connect\"} 1",
            "llm_gateway_upstream_up{upstream=\"default\",endpoint=\"h:1\"} 1",
            "llm_gateway_endpoint_picks_total{upstream=\"default\",endpoint=\"h:1\",reason=\"affinity\"} 1",
            "llm_gateway_endpoint_scrape_errors_total{upstream=\"default\",endpoint=\"h:1\"} 2",
            "llm_gateway_endpoint_queue_waiting{upstream=\"default\",endpoint=\"h:1\"} 3.0",
            "llm_gateway_endpoint_kv_cache_usage_ratio{upstream=\"default\",endpoint=\"h:1\"} 0.5",
            "llm_gateway_build_info{version=\"",
            "llm_gateway_events_dropped_total 0",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }

    #[test]
    fn finish_reason_labels_are_bounded() {
        assert_eq!(finish_reason_label(Some("stop")), "stop");
        assert_eq!(finish_reason_label(Some("whatever")), "other");
        assert_eq!(finish_reason_label(None), "none");
    }

    #[test]
    fn proc_is_readable() {
        let p = read_proc().unwrap();
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.start_time_seconds > 1_000_000_000.0);
    }
}
