//! Collected results and the end-of-run summary (human text or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx and a complete answer.
    Ok,
    /// Non-2xx HTTP status.
    Http(u16),
    /// 200, then an error event in the stream (or a stream cut without `[DONE]`).
    StreamError,
    /// Connection failure.
    Transport,
    /// No answer within the request timeout.
    Timeout,
}

impl Sample {
    /// A request not yet exchanged: outcome Ok until the exchange says otherwise.
    pub fn pending() -> Self {
        Self {
            outcome: Outcome::Ok,
            latency_s: 0.0,
            ttft_s: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            finish_reason: None,
            refusal: false,
        }
    }
}

impl Outcome {
    /// Key in `errors_by_status`.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Http(s) => s.to_string(),
            Outcome::StreamError => "stream_error".to_owned(),
            Outcome::Transport => "transport".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
        }
    }
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Outcome.
    pub outcome: Outcome,
    /// From scheduled start to the last byte, seconds.
    pub latency_s: f64,
    /// From scheduled start to the first content, seconds (streams).
    pub ttft_s: Option<f64>,
    /// Prompt tokens (usage).
    pub prompt_tokens: u64,
    /// Completion tokens (usage, or counted chunks).
    pub completion_tokens: u64,
    /// Finish reason of the (first) choice.
    pub finish_reason: Option<String>,
    /// The answer looked like a refusal.
    pub refusal: bool,
}

/// All samples of a run.
#[derive(Debug, Default)]
pub struct Collector {
    latencies: Vec<f64>,
    ttfts: Vec<f64>,
    /// Requests finished (any outcome).
    pub requests: u64,
    /// Requests with outcome Ok.
    pub ok: u64,
    errors: BTreeMap<String, u64>,
    finish: BTreeMap<String, u64>,
    refusals: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Collector {
    /// Record one request.
    pub fn add(&mut self, s: Sample) {
        self.requests += 1;
        if s.outcome == Outcome::Ok {
            self.ok += 1;
            self.latencies.push(s.latency_s);
            if let Some(t) = s.ttft_s {
                self.ttfts.push(t);
            }
        } else {
            *self.errors.entry(s.outcome.key()).or_default() += 1;
        }
        if let Some(f) = s.finish_reason {
            *self.finish.entry(f).or_default() += 1;
        }
        if s.refusal {
            self.refusals += 1;
        }
        self.prompt_tokens += s.prompt_tokens;
        self.completion_tokens += s.completion_tokens;
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Nearest-rank percentiles of seconds, reported in ms (None when empty).
#[must_use]
pub fn percentiles(values: &mut [f64]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let rank = |q: f64| -> f64 {
        let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        round3(values[idx] * 1000.0)
    };
    let mean = values.iter().sum::<f64>() / n as f64;
    Some(Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: round3(values[n - 1] * 1000.0),
        mean: round3(mean * 1000.0),
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Facts about a run that are not per-request samples.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Target base URL.
    pub target: String,
    /// Model used.
    pub model: String,
    /// Streaming requests.
    pub stream: bool,
    /// Wall time, seconds.
    pub duration_secs: f64,
    /// Requested rate (open loop).
    pub target_rps: Option<f64>,
    /// Open-loop requests skipped at the in-flight cap.
    pub skipped: u64,
    /// Requests cut at the end of the drain period.
    pub unfinished: u64,
}

/// The run summary (`--json` prints exactly this object).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Target base URL.
    pub target: String,
    /// Model used.
    pub model: String,
    /// Streaming requests.
    pub stream: bool,
    /// Wall time of the run, seconds.
    pub duration_secs: f64,
    /// Requests finished (any outcome).
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Failures by HTTP status or kind (`stream_error`, `transport`, `timeout`).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Answers that looked like refusals.
    pub refusals: u64,
    /// Finish reasons seen.
    pub finish_reasons: BTreeMap<String, u64>,
    /// Latency of successful requests (ms), from scheduled start to last byte.
    pub latency_ms: Option<Percentiles>,
    /// Time to first content of successful streams (ms).
    pub ttft_ms: Option<Percentiles>,
    /// Prompt tokens reported by usage.
    pub prompt_tokens: u64,
    /// Completion tokens reported by usage.
    pub completion_tokens: u64,
    /// Completion tokens per second of wall time.
    pub tokens_per_second: f64,
    /// Finished requests per second of wall time.
    pub achieved_rps: f64,
    /// Requested rate (open-loop scenarios).
    pub target_rps: Option<f64>,
    /// Open-loop requests not sent because `--concurrency` requests were already in flight.
    pub skipped: u64,
    /// Requests still in flight when the drain period ended (not in `requests`).
    pub unfinished: u64,
    /// The `sessions` scenario's conversations, prefix-cache hit rate and balance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<super::sessions::SessionStats>,
}

impl Summary {
    /// Build from a collector.
    #[must_use]
    pub fn build(c: Collector, run: RunInfo) -> Self {
        let mut c = c;
        let dur = run.duration_secs.max(1e-9);
        Summary {
            scenario: run.scenario,
            target: run.target,
            model: run.model,
            stream: run.stream,
            duration_secs: round3(run.duration_secs),
            requests: c.requests,
            ok: c.ok,
            errors: c.requests - c.ok,
            errors_by_status: std::mem::take(&mut c.errors),
            refusals: c.refusals,
            finish_reasons: std::mem::take(&mut c.finish),
            latency_ms: percentiles(&mut c.latencies),
            ttft_ms: percentiles(&mut c.ttfts),
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            tokens_per_second: round3(c.completion_tokens as f64 / dur),
            achieved_rps: round3(c.requests as f64 / dur),
            target_rps: run.target_rps,
            skipped: run.skipped,
            unfinished: run.unfinished,
            sessions: None,
        }
    }

    /// Human-readable report.
    #[must_use]
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario      {} -> {} (model {}, stream {})",
            self.scenario, self.target, self.model, self.stream
        );
        let _ = writeln!(s, "duration      {:.2} s", self.duration_secs);
        let _ = write!(
            s,
            "requests      {} ({} ok, {} errors",
            self.requests, self.ok, self.errors
        );
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped", self.skipped);
        }
        if self.unfinished > 0 {
            let _ = write!(s, ", {} unfinished", self.unfinished);
        }
        let _ = writeln!(s, ")");
        if !self.errors_by_status.is_empty() {
            let list: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "errors        {}", list.join(", "));
        }
        if !self.finish_reasons.is_empty() {
            let list: Vec<String> = self
                .finish_reasons
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "finish        {}", list.join(", "));
        }
        let _ = writeln!(s, "refusals      {}", self.refusals);
        let pct = |p: &Option<Percentiles>| match p {
            Some(p) => format!(
                "p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                p.p50, p.p95, p.p99, p.max
            ),
            None => "-".to_owned(),
        };
        let _ = writeln!(s, "latency       {}", pct(&self.latency_ms));
        let _ = writeln!(s, "ttft          {}", pct(&self.ttft_ms));
        let _ = writeln!(
            s,
            "tokens        {} prompt, {} completion",
            self.prompt_tokens, self.completion_tokens
        );
        let _ = writeln!(
            s,
            "throughput    {:.1} tokens/s, {:.1} req/s",
            self.tokens_per_second, self.achieved_rps
        );
        if let Some(r) = self.target_rps {
            let _ = writeln!(s, "target rate   {r:.1} req/s");
        }
        if let Some(st) = &self.sessions {
            let _ = writeln!(
                s,
                "sessions      {} started, {} completed, {} failed, {} unfinished ({} turns each)",
                st.started, st.completed, st.failed, st.unfinished, st.turns
            );
            if let Some(h) = st.prefix_cache_hit_rate {
                let _ = writeln!(s, "prefix cache  hit rate {:.1} %", h * 100.0);
            }
            if let Some(l) = st.load_max_over_mean {
                let counts: Vec<String> = st
                    .replicas
                    .iter()
                    .map(|r| format!("{}", r.requests))
                    .collect();
                let _ = writeln!(
                    s,
                    "balance       max/mean {l:.2} (requests per replica: {})",
                    counts.join(", ")
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(|i| f64::from(i) / 1000.0).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!(percentiles(&mut []).is_none());
        let mut one = [0.25];
        assert_eq!(percentiles(&mut one).unwrap().p99, 250.0);
    }

    #[test]
    fn summary_counts() {
        let mut c = Collector::default();
        let ok = Sample {
            outcome: Outcome::Ok,
            latency_s: 0.1,
            ttft_s: Some(0.01),
            prompt_tokens: 5,
            completion_tokens: 7,
            finish_reason: Some("stop".into()),
            refusal: false,
        };
        c.add(ok.clone());
        c.add(Sample {
            outcome: Outcome::Http(500),
            ttft_s: None,
            completion_tokens: 0,
            finish_reason: None,
            ..ok.clone()
        });
        c.add(Sample {
            outcome: Outcome::StreamError,
            refusal: true,
            ..ok
        });
        let run = RunInfo {
            scenario: "steady".into(),
            target: "http://x".into(),
            model: "m".into(),
            stream: true,
            duration_secs: 2.0,
            target_rps: Some(1.5),
            ..RunInfo::default()
        };
        let s = Summary::build(c, run);
        assert_eq!((s.requests, s.ok, s.errors, s.refusals), (3, 1, 2, 1));
        assert_eq!(s.errors_by_status.get("500"), Some(&1));
        assert_eq!(s.errors_by_status.get("stream_error"), Some(&1));
        assert_eq!(s.completion_tokens, 14);
        assert_eq!(s.tokens_per_second, 7.0);
        assert!(s.human().contains("500: 1"));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["latency_ms"]["p50"], 100.0);
    }
}
