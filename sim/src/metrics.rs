//! vLLM-compatible Prometheus metrics, hand-rendered in the text exposition format 0.0.4
//! exactly as Python's `prometheus_client` writes it for vLLM (V1 engine):
//!
//! - names with the `vllm:` prefix; counters declared without `_total` and scraped with it,
//!   each followed by a `<name>_created` gauge family like `prometheus_client` emits;
//! - labels `model_name` then `engine="0"` (then `finished_reason` / `le`), in that order;
//! - every sample value and `le` rendered as a Python float (`1.0`, `0.001`, `+Inf`);
//! - vLLM's default histogram buckets (`vllm/v1/metrics/buckets.py`).
//!
//! The `vllm:` families follow `PrometheusStatLogger` in vLLM's `vllm/v1/metrics/loggers.py`
//! (names, help texts, label names and bucket lists; `vllm:num_requests_waiting_by_reason`,
//! `vllm:engine_sleep_state`, `vllm:prompt_tokens_cached` and `vllm:iteration_tokens_total`
//! as on vLLM main of 2026, `vllm:cache_config_info` from its `log_metrics_info`).
//! `http_requests_total{handler,method,status}` follows prometheus-fastapi-instrumentator's
//! default metric (`prometheus_fastapi_instrumentator/metrics.py`, `default()`: status codes
//! grouped as `2xx`/`4xx`/`5xx`, untemplated paths as handler `none`), which vLLM's OpenAI
//! server mounts with `/metrics`, `/health`, `/load`, `/ping`, `/version` and `/server_info`
//! excluded (`vllm/entrypoints/openai/api_server.py`).
//!
//! One sim-only family, `vllm_sim_aborted_requests_total`, counts client aborts (vLLM V1
//! itself records none, see the README).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Content-Type of the text format that Python `prometheus_client` serves by default.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `time_to_first_token` family.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// `inter_token_latency` family (ITL and per-request time per output token).
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// `request_latency` family (e2e, queue, inference, prefill, decode).
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// `request_params_n` family.
pub const PARAMS_N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
/// `iteration_tokens_total` (tokens per engine step).
pub const ITERATION_TOKENS_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// KV-cache block size reported in `vllm:cache_config_info` (vLLM's CUDA default).
pub const BLOCK_SIZE: u64 = 16;

/// 1-2-5 series capped at `max_model_len` (vLLM `build_1_2_5_buckets`).
#[must_use]
pub fn buckets_1_2_5(max_value: u32) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exponent: u32 = 0;
    'outer: loop {
        for m in [1u64, 2, 5] {
            let v = m.saturating_mul(10u64.saturating_pow(exponent));
            if v > u64::from(max_value) {
                break 'outer;
            }
            out.push(v as f64);
        }
        exponent += 1;
        if exponent > 18 {
            break;
        }
    }
    out
}

/// Finish reasons pre-created by vLLM for `request_success_total`, in enum order.
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// Index into [`FINISH_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Natural stop.
    Stop = 0,
    /// Capped by max_tokens.
    Length = 1,
    /// Aborted (never recorded, like vLLM V1; kept for completeness).
    Abort = 2,
    /// Request-level engine error (vLLM's `FinishReason.ERROR`), surfaced as HTTP 500
    /// "Internal server error" or an in-stream error. Engine death and HTTP-layer 500s
    /// never count here.
    Error = 3,
}

impl Finish {
    /// The OpenAI/vLLM `finish_reason` string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        FINISH_REASONS[self as usize]
    }
}

/// A histogram with fixed bounds (non-cumulative bucket counts, last = +Inf).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    #[must_use]
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Record one value.
    pub fn observe(&mut self, v: f64) {
        let idx = self.bounds.partition_point(|b| *b < v);
        self.counts[idx] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Add another histogram over the same bounds.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Everything observed when one request finishes (not for aborts: vLLM V1 records none).
#[derive(Debug, Clone)]
pub struct FinishedRequest {
    /// Finish reason of the request (first choice).
    pub finish: Finish,
    /// Arrival → first token.
    pub ttft_s: f64,
    /// Arrival → last token.
    pub e2e_s: f64,
    /// Waiting phase.
    pub queue_s: f64,
    /// Scheduled → first token.
    pub prefill_s: f64,
    /// First → last token.
    pub decode_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens over all choices.
    pub generation_tokens: u32,
    /// Max tokens generated by one choice.
    pub max_choice_tokens: u32,
    /// `max_tokens` parameter (resolved).
    pub params_max_tokens: u32,
    /// `n` parameter.
    pub n: u32,
}

#[derive(Clone)]
struct Hists {
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    prompt_tokens: Histogram,
    generation_tokens: Histogram,
    max_generation_tokens: Histogram,
    params_max_tokens: Histogram,
    params_n: Histogram,
    iteration_tokens: Histogram,
}

/// Metrics of one served model (one simulated engine).
pub struct ModelMetrics {
    model_name: String,
    created: f64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    preemptions: AtomicU64,
    prefix_queries: AtomicU64,
    prefix_hits: AtomicU64,
    aborted: AtomicU64,
    success: [AtomicU64; 5],
    hists: Mutex<Hists>,
}

/// Current values of the scheduler gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Requests running.
    pub running: usize,
    /// Requests waiting.
    pub waiting: usize,
    /// KV cache usage 0..=1.
    pub kv_usage: f64,
    /// Whether the engine is in sleep mode (never, in the simulator: always awake).
    pub asleep: bool,
}

impl ModelMetrics {
    /// Fresh metrics for `model_name`; `token_buckets` is the 1-2-5 series.
    #[must_use]
    pub fn new(model_name: &str, token_buckets: &'static [f64], created: f64) -> Self {
        Self {
            model_name: model_name.to_owned(),
            created,
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            success: Default::default(),
            hists: Mutex::new(Hists {
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                tpot: Histogram::new(ITL_BUCKETS),
                e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
                queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
                inference: Histogram::new(REQUEST_LATENCY_BUCKETS),
                prefill: Histogram::new(REQUEST_LATENCY_BUCKETS),
                decode: Histogram::new(REQUEST_LATENCY_BUCKETS),
                prompt_tokens: Histogram::new(token_buckets),
                generation_tokens: Histogram::new(token_buckets),
                max_generation_tokens: Histogram::new(token_buckets),
                params_max_tokens: Histogram::new(token_buckets),
                params_n: Histogram::new(PARAMS_N_BUCKETS),
                iteration_tokens: Histogram::new(ITERATION_TOKENS_BUCKETS),
            }),
        }
    }

    /// Prefill done: count prompt tokens (also for requests later aborted).
    pub fn add_prompt_tokens(&self, n: u32) {
        self.prompt_tokens
            .fetch_add(u64::from(n), Ordering::Relaxed);
    }

    /// Tokens generated in one engine step.
    pub fn add_generation_tokens(&self, n: u32) {
        self.generation_tokens
            .fetch_add(u64::from(n), Ordering::Relaxed);
    }

    /// A running request was preempted.
    pub fn add_preemption(&self) {
        self.preemptions.fetch_add(1, Ordering::Relaxed);
    }

    /// One prefix-cache lookup of a new request: `queries` prompt tokens looked up, `hits`
    /// of them found cached (vLLM `PrefixCacheStats.record(num_tokens, num_hits, False)`).
    pub fn add_prefix_lookup(&self, queries: u64, hits: u64) {
        self.prefix_queries.fetch_add(queries, Ordering::Relaxed);
        self.prefix_hits.fetch_add(hits, Ordering::Relaxed);
    }

    /// `(vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total)` (tests, logs).
    #[must_use]
    pub fn prefix_cache(&self) -> (u64, u64) {
        (
            self.prefix_queries.load(Ordering::Relaxed),
            self.prefix_hits.load(Ordering::Relaxed),
        )
    }

    /// A client disconnect aborted a request (sim-only counter).
    pub fn add_abort(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// Tokens scheduled in one engine step of one request (prefill or decode).
    ///
    /// vLLM observes the whole batch of a step; the simulator has no global step, so
    /// each request's step is observed on its own (smaller values than a busy vLLM).
    pub fn observe_iteration_tokens(&self, n: u32) {
        if n == 0 {
            return;
        }
        if let Ok(mut h) = self.hists.lock() {
            h.iteration_tokens.observe(f64::from(n));
        }
    }

    /// Count a request-level engine error (`finished_reason="error"`), not engine death
    /// and not an HTTP-layer 500.
    pub fn add_error(&self) {
        self.success[Finish::Error as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Record a finished request; `itl` holds its inter-token latencies.
    pub fn finish(&self, r: &FinishedRequest, itl: &Histogram) {
        self.success[r.finish as usize].fetch_add(1, Ordering::Relaxed);
        let tpot = if r.max_choice_tokens > 1 {
            r.decode_s / f64::from(r.max_choice_tokens - 1)
        } else {
            0.0
        };
        let Ok(mut h) = self.hists.lock() else { return };
        h.ttft.observe(r.ttft_s);
        h.itl.merge(itl);
        h.tpot.observe(tpot);
        h.e2e.observe(r.e2e_s);
        h.queue.observe(r.queue_s);
        h.inference.observe(r.prefill_s + r.decode_s);
        h.prefill.observe(r.prefill_s);
        h.decode.observe(r.decode_s);
        h.prompt_tokens.observe(f64::from(r.prompt_tokens));
        h.generation_tokens.observe(f64::from(r.generation_tokens));
        h.max_generation_tokens
            .observe(f64::from(r.max_choice_tokens));
        h.params_max_tokens.observe(f64::from(r.params_max_tokens));
        h.params_n.observe(f64::from(r.n));
    }

    /// Value of `vllm_sim_aborted_requests_total` (for tests and logs).
    #[must_use]
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }
}

/// `http_requests_total` of prometheus-fastapi-instrumentator, for the whole server.
#[derive(Debug)]
pub struct HttpMetrics {
    created: f64,
    counts: Mutex<std::collections::BTreeMap<(String, &'static str, &'static str), u64>>,
}

/// The instrumentator's grouped status label (`should_group_status_codes=True`).
#[must_use]
pub fn status_group(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Handlers vLLM excludes from the instrumentator.
pub const HTTP_EXCLUDED_HANDLERS: &[&str] = &[
    "/metrics",
    "/health",
    "/load",
    "/ping",
    "/version",
    "/server_info",
];

impl HttpMetrics {
    /// No requests yet; `created` is the server start (unix seconds).
    #[must_use]
    pub fn new(created: f64) -> Self {
        Self {
            created,
            counts: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// One response: `handler` is the route template (`none` for an unmatched path).
    pub fn observe(&self, handler: &str, method: &'static str, status: u16) {
        if HTTP_EXCLUDED_HANDLERS.contains(&handler) {
            return;
        }
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *c.entry((handler.to_owned(), method, status_group(status)))
            .or_insert(0) += 1;
    }

    /// Count for one label set (tests).
    #[must_use]
    pub fn get(&self, handler: &str, method: &str, status: &str) -> u64 {
        let c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.iter()
            .find(|((h, m, s), _)| h == handler && *m == method && *s == status)
            .map_or(0, |(_, v)| *v)
    }

    /// Append the family (only label sets seen so far, like the instrumentator).
    pub fn render(&self, out: &mut String) {
        let help = "Total number of requests by method, status and handler.";
        let c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        header(out, "http_requests_total", help, "counter");
        for ((h, m, st), v) in c.iter() {
            let _ = writeln!(
                out,
                "http_requests_total{{handler=\"{}\",method=\"{m}\",status=\"{st}\"}} {}",
                escape_label(h),
                u(*v)
            );
        }
        header(out, "http_requests_created", help, "gauge");
        for (h, m, st) in c.keys() {
            let _ = writeln!(
                out,
                "http_requests_created{{handler=\"{}\",method=\"{m}\",status=\"{st}\"}} {}",
                escape_label(h),
                go_float(self.created)
            );
        }
    }
}

/// `vllm:cache_config_info`: vLLM's info-style gauge (always 1) whose labels are the
/// engine's cache settings (`log_metrics_info("cache_config", ...)`; a subset of the
/// fields, with the values this simulator implies). It has no `model_name` label, like
/// vLLM's; one series for the whole simulator, whose engines share one configuration.
pub fn render_cache_config_info(
    out: &mut String,
    kv_cache_tokens: u64,
    block_size: u64,
    prefix_caching: bool,
) {
    header(
        out,
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        "gauge",
    );
    let _ = writeln!(
        out,
        "vllm:cache_config_info{{block_size=\"{block_size}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"{}\",engine=\"0\"}} 1.0",
        if prefix_caching { "True" } else { "False" },
        kv_cache_tokens / block_size.max(1)
    );
}

/// Python `prometheus_client.utils.floatToGoString`.
#[must_use]
pub fn go_float(v: f64) -> String {
    if v == f64::INFINITY {
        return "+Inf".to_owned();
    }
    if v == f64::NEG_INFINITY {
        return "-Inf".to_owned();
    }
    if v.is_nan() {
        return "NaN".to_owned();
    }
    let s = format!("{v:?}");
    if let Some(dot) = s.find('.')
        && v > 0.0
        && dot > 6
        && !s.contains('e')
    {
        let mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
        let mantissa = mantissa.trim_end_matches(['0', '.']);
        return format!("{mantissa}e+0{}", dot - 1);
    }
    s
}

fn u(v: u64) -> String {
    go_float(v as f64)
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

struct Family<'a> {
    models: &'a [(&'a ModelMetrics, Gauges)],
}

impl Family<'_> {
    fn gauge(&self, out: &mut String, name: &str, help: &str, get: impl Fn(&Gauges) -> f64) {
        header(out, name, help, "gauge");
        for (m, g) in self.models {
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{}\",engine=\"0\"}} {}",
                escape_label(&m.model_name),
                go_float(get(g))
            );
        }
    }

    fn counter(
        &self,
        out: &mut String,
        base: &str,
        help: &str,
        get: impl Fn(&ModelMetrics) -> u64,
    ) {
        header(out, &format!("{base}_total"), help, "counter");
        for (m, _) in self.models {
            let _ = writeln!(
                out,
                "{base}_total{{model_name=\"{}\",engine=\"0\"}} {}",
                escape_label(&m.model_name),
                u(get(m))
            );
        }
        header(out, &format!("{base}_created"), help, "gauge");
        for (m, _) in self.models {
            let _ = writeln!(
                out,
                "{base}_created{{model_name=\"{}\",engine=\"0\"}} {}",
                escape_label(&m.model_name),
                go_float(m.created)
            );
        }
    }

    fn histogram(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        hists: &[Hists],
        get: impl Fn(&Hists) -> &Histogram,
    ) {
        header(out, name, help, "histogram");
        for ((m, _), hs) in self.models.iter().zip(hists) {
            let h = get(hs);
            let labels = format!(
                "model_name=\"{}\",engine=\"0\"",
                escape_label(&m.model_name)
            );
            let mut cum = 0u64;
            for (i, b) in h.bounds.iter().enumerate() {
                cum += h.counts[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {}",
                    go_float(*b),
                    u(cum)
                );
            }
            cum += h.counts[h.bounds.len()];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", u(cum));
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", u(h.count));
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", go_float(h.sum));
        }
        let created = format!("{}_created", name);
        header(out, &created, help, "gauge");
        for (m, _) in self.models {
            let _ = writeln!(
                out,
                "{created}{{model_name=\"{}\",engine=\"0\"}} {}",
                escape_label(&m.model_name),
                go_float(m.created)
            );
        }
    }
}

fn snapshot(m: &ModelMetrics) -> Hists {
    // A poisoned lock still holds consistent histograms (updates never panic midway).
    m.hists
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Render the whole `/metrics` page for the given engines and their gauges.
#[must_use]
pub fn render(models: &[(&ModelMetrics, Gauges)]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let f = Family { models };
    let hists: Vec<Hists> = models.iter().map(|(m, _)| snapshot(m)).collect();

    f.gauge(
        &mut out,
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        |g| g.running as f64,
    );
    f.gauge(
        &mut out,
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        |g| g.waiting as f64,
    );
    // Waiting by reason: the simulator's only wait is for capacity (running slots or KV);
    // nothing is deferred (no LoRA, no KV transfer).
    let help = "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.";
    header(
        &mut out,
        "vllm:num_requests_waiting_by_reason",
        help,
        "gauge",
    );
    for (m, g) in models {
        for (reason, v) in [("capacity", g.waiting), ("deferred", 0)] {
            let _ = writeln!(
                out,
                "vllm:num_requests_waiting_by_reason{{model_name=\"{}\",engine=\"0\",reason=\"{reason}\"}} {}",
                escape_label(&m.model_name),
                go_float(v as f64)
            );
        }
    }
    let help = "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.";
    header(&mut out, "vllm:engine_sleep_state", help, "gauge");
    for (m, g) in models {
        for (state, v) in [
            ("awake", !g.asleep),
            ("weights_offloaded", g.asleep),
            ("discard_all", false),
        ] {
            let _ = writeln!(
                out,
                "vllm:engine_sleep_state{{model_name=\"{}\",engine=\"0\",sleep_state=\"{state}\"}} {}",
                escape_label(&m.model_name),
                go_float(if v { 1.0 } else { 0.0 })
            );
        }
    }
    f.gauge(
        &mut out,
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        |g| g.kv_usage,
    );
    f.counter(
        &mut out,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        |m| m.prefix_queries.load(Ordering::Relaxed),
    );
    f.counter(
        &mut out,
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        |m| m.prefix_hits.load(Ordering::Relaxed),
    );
    f.counter(
        &mut out,
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        |m| m.preemptions.load(Ordering::Relaxed),
    );
    f.counter(
        &mut out,
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        |m| m.prompt_tokens.load(Ordering::Relaxed),
    );
    // Local prefix-cache hits (no KV connector is simulated, so nothing external).
    f.counter(
        &mut out,
        "vllm:prompt_tokens_cached",
        "Number of cached prompt tokens (local + external).",
        |m| m.prefix_hits.load(Ordering::Relaxed),
    );
    f.counter(
        &mut out,
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        |m| m.generation_tokens.load(Ordering::Relaxed),
    );

    // request_success: one series per pre-created finish reason.
    let help = "Count of successfully processed requests.";
    header(&mut out, "vllm:request_success_total", help, "counter");
    for (m, _) in models {
        for (i, reason) in FINISH_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{model_name=\"{}\",engine=\"0\",finished_reason=\"{reason}\"}} {}",
                escape_label(&m.model_name),
                u(m.success[i].load(Ordering::Relaxed))
            );
        }
    }
    header(&mut out, "vllm:request_success_created", help, "gauge");
    for (m, _) in models {
        for reason in FINISH_REASONS {
            let _ = writeln!(
                out,
                "vllm:request_success_created{{model_name=\"{}\",engine=\"0\",finished_reason=\"{reason}\"}} {}",
                escape_label(&m.model_name),
                go_float(m.created)
            );
        }
    }

    let hs = &hists;
    f.histogram(
        &mut out,
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        hs,
        |h| &h.prompt_tokens,
    );
    f.histogram(
        &mut out,
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        hs,
        |h| &h.generation_tokens,
    );
    f.histogram(
        &mut out,
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        hs,
        |h| &h.iteration_tokens,
    );
    f.histogram(
        &mut out,
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        hs,
        |h| &h.max_generation_tokens,
    );
    f.histogram(
        &mut out,
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        hs,
        |h| &h.params_n,
    );
    f.histogram(
        &mut out,
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        hs,
        |h| &h.params_max_tokens,
    );
    f.histogram(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        hs,
        |h| &h.ttft,
    );
    f.histogram(
        &mut out,
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        hs,
        |h| &h.itl,
    );
    f.histogram(
        &mut out,
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        hs,
        |h| &h.tpot,
    );
    f.histogram(
        &mut out,
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        hs,
        |h| &h.e2e,
    );
    f.histogram(
        &mut out,
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        hs,
        |h| &h.queue,
    );
    f.histogram(
        &mut out,
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        hs,
        |h| &h.inference,
    );
    f.histogram(
        &mut out,
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        hs,
        |h| &h.prefill,
    );
    f.histogram(
        &mut out,
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        hs,
        |h| &h.decode,
    );

    header(
        &mut out,
        "vllm_sim_aborted_requests_total",
        "Simulator only: requests aborted because the client disconnected.",
        "counter",
    );
    for (m, _) in models {
        let _ = writeln!(
            out,
            "vllm_sim_aborted_requests_total{{model_name=\"{}\",engine=\"0\"}} {}",
            escape_label(&m.model_name),
            u(m.aborted())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_matches_python() {
        for (v, want) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (0.001, "0.001"),
            (2560.0, "2560.0"),
            (7680.0, "7680.0"),
            (3.0, "3.0"),
            (f64::INFINITY, "+Inf"),
            (1_786_650_747.5, "1.7866507475e+09"),
            (1_000_000.0, "1e+06"),
            (100_000.0, "100000.0"),
            (10_000_000.0, "1e+07"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn buckets_1_2_5_table() {
        assert_eq!(
            buckets_1_2_5(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        let b = buckets_1_2_5(32768);
        assert_eq!(b.first(), Some(&1.0));
        assert_eq!(b.last(), Some(&20000.0));
        assert_eq!(b.len(), 14);
    }

    #[test]
    fn histogram_buckets_are_le() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 2, 1]);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn render_has_vllm_shapes() {
        static TOK: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
        let tok = TOK.get_or_init(|| buckets_1_2_5(32768));
        let m = ModelMetrics::new("m\"x", tok, 1.5);
        m.add_prompt_tokens(7);
        let text = render(&[(
            &m,
            Gauges {
                running: 2,
                waiting: 1,
                kv_usage: 0.25,
                asleep: false,
            },
        )]);
        assert!(text.contains("# TYPE vllm:prompt_tokens_total counter\n"));
        assert!(
            text.contains("vllm:prompt_tokens_total{model_name=\"m\\\"x\",engine=\"0\"} 7.0\n")
        );
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"m\\\"x\",engine=\"0\"} 2.0\n")
        );
        assert!(
            text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"x\",engine=\"0\"} 0.25\n")
        );
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",engine=\"0\",le=\"1.0\"} 0.0\n"
        ));
        assert!(text.contains("finished_reason=\"abort\"} 0.0\n"));
    }
}
