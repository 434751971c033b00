//! Endpoint load from the upstreams' own Prometheus metrics.
//!
//! One task per endpoint (of the pools whose `metrics_scrape_interval_ms` is
//! not 0) fetches `GET base/metrics` at that interval, with a timeout of one
//! interval (at most 2 s) and a body bound of [`MAX_BODY_BYTES`], and keeps
//! two numbers (vLLM V1 engine metrics, `vllm/v1/metrics/loggers.py`):
//!
//! - waiting: `vllm:num_requests_waiting` (gauge, requests waiting to be
//!   scheduled), summed over its label sets (`model_name`, `engine`: a
//!   data-parallel replica exports one series per engine);
//! - KV-cache usage: `vllm:kv_cache_usage_perc` (gauge, a fraction 0–1
//!   despite its name), or the older name `vllm:gpu_cache_usage_perc`
//!   (deprecated in vLLM 0.9.2, removed in 0.12) when the new one is absent;
//!   the largest value over the label sets (a ratio is not summed).
//!
//! A scrape that fails (connect, status, timeout, too large, neither series
//! present) is counted in `llm_gateway_endpoint_scrape_errors_total` and
//! forgets the previous sample; a sample older than [`STALE_INTERVALS`]
//! intervals is not used ([`Scraped::fresh`]): routing then falls back to the
//! gateway's own in-flight counts.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::upstream::{Endpoint, Pool};

/// Largest `/metrics` body read (a vLLM replica with several models and all
/// its histograms answers with a few hundred KB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A sample older than this many scrape intervals is not trusted.
pub const STALE_INTERVALS: u32 = 3;
/// Longest wait for one scrape.
const MAX_TIMEOUT: Duration = Duration::from_secs(2);

/// `vllm:num_requests_waiting`
pub const WAITING: &str = "vllm:num_requests_waiting";
/// `vllm:kv_cache_usage_perc` (vLLM >= 0.9.2)
pub const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// `vllm:gpu_cache_usage_perc` (vLLM < 0.12, deprecated since 0.9.2)
pub const KV_USAGE_OLD: &str = "vllm:gpu_cache_usage_perc";

/// What one scrape found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Requests waiting in the engine's queue (0 if the series is absent).
    pub waiting: f64,
    /// KV-cache usage 0–1 (0 if the series is absent).
    pub kv_usage: f64,
}

/// The last good sample of an endpoint.
#[derive(Debug, Default)]
pub struct Scraped {
    last: Mutex<Option<(Instant, Load)>>,
}

impl Scraped {
    /// The last sample if it is younger than `max_age`.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> Option<Load> {
        let g = self.last.lock().ok()?;
        let (at, load) = (*g)?;
        (now.saturating_duration_since(at) <= max_age).then_some(load)
    }

    pub(crate) fn set(&self, v: Option<(Instant, Load)>) {
        if let Ok(mut g) = self.last.lock() {
            *g = v;
        }
    }
}

/// The series a metric line belongs to and its value: `None` for comments,
/// blank lines and lines that are not `name[{labels}] value [timestamp]`.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        // Skip the label set; label values are quoted and may hold `}`, `"` (escaped) or spaces.
        let bytes = rest.as_bytes();
        let mut i = 1;
        let mut in_str = false;
        loop {
            match bytes.get(i)? {
                b'\\' if in_str => i += 1,
                b'"' => in_str = !in_str,
                b'}' if !in_str => break,
                _ => {}
            }
            i += 1;
        }
        rest = &rest[i + 1..];
    }
    let value = rest.split_ascii_whitespace().next()?;
    // Prometheus spells NaN and infinities `NaN`, `+Inf`, `-Inf`; Rust parses them.
    let v: f64 = value.parse().ok()?;
    Some((name, v))
}

/// Reads waiting requests and KV-cache usage from a Prometheus text
/// exposition (or OpenMetrics). `None` if neither series is there. NaN and
/// negative values are ignored; KV usage is clamped to 0–1.
pub fn parse(text: &str) -> Option<Load> {
    let mut waiting: Option<f64> = None;
    let mut kv: Option<f64> = None;
    let mut kv_old: Option<f64> = None;
    for line in text.lines() {
        // Cheap filter first: most lines of a vLLM exposition are other series.
        if !line.starts_with("vllm:") {
            continue;
        }
        let Some((name, v)) = sample(line) else {
            continue;
        };
        if !(v.is_finite() && v >= 0.0) {
            continue;
        }
        match name {
            WAITING => *waiting.get_or_insert(0.0) += v,
            KV_USAGE => kv = Some(kv.map_or(v, |k: f64| k.max(v))),
            KV_USAGE_OLD => kv_old = Some(kv_old.map_or(v, |k: f64| k.max(v))),
            _ => {}
        }
    }
    let kv = kv.or(kv_old);
    if waiting.is_none() && kv.is_none() {
        return None;
    }
    Some(Load {
        waiting: waiting.unwrap_or(0.0),
        kv_usage: kv.unwrap_or(0.0).clamp(0.0, 1.0),
    })
}

/// Fetches and parses one endpoint's `/metrics`.
async fn scrape_once(
    client: &reqwest::Client,
    pool: &Pool,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<Load, String> {
    let mut req = client.get(ep.metrics_url.clone()).timeout(timeout);
    if let Some(a) = &pool.auth {
        req = req.header(http::header::AUTHORIZATION, a.clone());
    }
    let mut resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    parse(&text).ok_or_else(|| format!("no {WAITING} nor {KV_USAGE} series"))
}

/// Starts one scrape task per endpoint of every pool with a scrape interval;
/// they stop on `stop`.
pub fn spawn(
    pools: &[Arc<Pool>],
    client: &reqwest::Client,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    for pool in pools {
        let Some(interval) = pool.scrape_interval else {
            continue;
        };
        let timeout = interval.min(MAX_TIMEOUT);
        for ep in &pool.endpoints {
            metrics.scrape_error(&pool.name, &ep.label, 0);
            let pool = pool.clone();
            let ep = ep.clone();
            let client = client.clone();
            let metrics = metrics.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut failing = false;
                loop {
                    let r = tokio::select! {
                        _ = stop.cancelled() => break,
                        r = scrape_once(&client, &pool, &ep, timeout) => r,
                    };
                    match r {
                        Ok(load) => {
                            if failing {
                                tracing::info!(pool = %pool.name, endpoint = %ep.label, "metrics scrape works again");
                                failing = false;
                            }
                            ep.scraped.set(Some((Instant::now(), load)));
                            metrics.set_endpoint_load(&pool.name, &ep.label, Some(load));
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(pool = %pool.name, endpoint = %ep.label, error = %e, "metrics scrape failed; routing uses in-flight counts for this pool until it works");
                                failing = true;
                            }
                            ep.scraped.set(None);
                            metrics.scrape_error(&pool.name, &ep.label, 1);
                            metrics.set_endpoint_load(&pool.name, &ep.label, None);
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as vLLM V1 (0.11) exposes them (`prometheus_client` Python text format).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12345.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
"#;

    #[test]
    fn reads_vllm_v1_exposition() {
        let l = parse(VLLM).unwrap();
        assert_eq!(l.waiting, 7.0, "summed over engines");
        assert_eq!(l.kv_usage, 0.5, "largest ratio, not the sum");
    }

    #[test]
    fn older_name_without_labels_and_with_timestamps() {
        let text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.75 1700000000000\nvllm:num_requests_waiting 2\n";
        assert_eq!(
            parse(text),
            Some(Load {
                waiting: 2.0,
                kv_usage: 0.75
            })
        );
        // Both names (vLLM 0.9.2 – 0.11 export both): the current one wins.
        let both = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.1\n";
        assert_eq!(parse(both).unwrap().kv_usage, 0.1);
    }

    #[test]
    fn missing_series_nan_and_odd_labels() {
        // Only KV usage: waiting counts as 0.
        assert_eq!(
            parse("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.3\n"),
            Some(Load {
                waiting: 0.0,
                kv_usage: 0.3
            })
        );
        // Neither series: not a vLLM exposition.
        assert_eq!(parse("# HELP x y\nprocess_open_fds 12\n"), None);
        assert_eq!(parse(""), None);
        // NaN, infinities and negative values are ignored, not summed.
        let text = "vllm:num_requests_waiting{engine=\"0\"} NaN\nvllm:num_requests_waiting{engine=\"1\"} 5\nvllm:num_requests_waiting{engine=\"2\"} +Inf\nvllm:num_requests_waiting{engine=\"3\"} -1\n";
        assert_eq!(parse(text).unwrap().waiting, 5.0);
        // A label value holding `}`, a quote and spaces.
        let text = "vllm:num_requests_waiting{model_name=\"a} \\\"b\\\" c\",engine=\"0\"} 4\n";
        assert_eq!(parse(text).unwrap().waiting, 4.0);
        // A series whose name only starts like ours is another series.
        let text = "vllm:num_requests_waiting_by_reason{reason=\"capacity\"} 9\nvllm:num_requests_waiting 1\n";
        assert_eq!(parse(text).unwrap().waiting, 1.0);
        // Out-of-range KV usage is clamped; a cut line is skipped.
        let text = "vllm:kv_cache_usage_perc 1.5\nvllm:num_requests_waiting{engine=\"0\"\n";
        assert_eq!(
            parse(text),
            Some(Load {
                waiting: 0.0,
                kv_usage: 1.0
            })
        );
    }

    #[test]
    fn stale_samples_are_not_used() {
        let s = Scraped::default();
        let now = Instant::now();
        assert_eq!(s.fresh(now, Duration::from_secs(3)), None);
        let load = Load {
            waiting: 1.0,
            kv_usage: 0.0,
        };
        s.set(Some((now, load)));
        assert_eq!(s.fresh(now, Duration::from_secs(3)), Some(load));
        assert_eq!(
            s.fresh(now + Duration::from_secs(4), Duration::from_secs(3)),
            None
        );
    }
}
