//! The only place log-shipper metric names live (prefix `log_shipper_`), plus process
//! metrics read from `/proc/self`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// `outcome` label of `log_shipper_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// `reason` label of `log_shipper_dropped_entries_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `label` label of `log_shipper_label_values_capped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelLabels {
    pub label: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Batch outcome: Loki accepted the batch.
pub const OUTCOME_SUCCESS: &str = "success";
/// Batch outcome: a push attempt failed and will be retried.
pub const OUTCOME_RETRYABLE: &str = "retryable_error";
/// Batch outcome: Loki answered 400; the batch is not sent again.
pub const OUTCOME_REJECTED: &str = "rejected";
/// Drop reason: Loki rejected the entry (400).
pub const REASON_REJECTED: &str = "rejected_by_loki";
/// Drop reason: the line was over the maximum length and `line_too_long = "drop"`.
pub const REASON_TOO_LONG: &str = "line_too_long";

/// All metrics of the shipper.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub lines_read: Counter,
    pub entries_sent: Counter,
    pub bytes_sent: Counter,
    pub batches: Family<OutcomeLabels, Counter>,
    pub retries: Counter,
    pub dropped: Family<ReasonLabels, Counter>,
    pub truncated: Counter,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub pending_bytes: Gauge<i64, AtomicI64>,
    pub last_success: Gauge<f64, AtomicU64>,
    pub timestamps_replaced: Counter,
    pub parse_errors: Counter,
    pub label_values_capped: Family<LabelLabels, Counter>,
    /// Entries of batches Loki answered 400 without saying how many it rejected.
    pub rejected_count_unknown: Counter,
    /// Retries whose delay came from Loki's `Retry-After`.
    pub retry_after_honoured: Counter,
    /// Updated by the tailer: discovery errors, open and followed files, reopens.
    pub tailer: crate::tailer::TailerMetrics,
}

impl Metrics {
    /// Counts a batch outcome.
    pub fn batch(&self, outcome: &'static str) {
        self.batches.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts dropped entries.
    pub fn drop_entries(&self, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    /// A registry holding these metrics and the process metrics.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "log_shipper_lines_read",
            "Lines read from the inputs",
            self.lines_read.clone(),
        );
        r.register(
            "log_shipper_entries_sent",
            "Entries accepted by Loki",
            self.entries_sent.clone(),
        );
        r.register(
            "log_shipper_bytes_sent",
            "Uncompressed line bytes accepted by Loki",
            self.bytes_sent.clone(),
        );
        r.register(
            "log_shipper_batches",
            "Push attempts by outcome",
            self.batches.clone(),
        );
        r.register(
            "log_shipper_retries",
            "Push attempts that will be retried",
            self.retries.clone(),
        );
        r.register(
            "log_shipper_dropped_entries",
            "Entries not delivered, by reason",
            self.dropped.clone(),
        );
        r.register(
            "log_shipper_truncated_lines",
            "Lines cut to the maximum line length",
            self.truncated.clone(),
        );
        r.register(
            "log_shipper_lag_seconds",
            "Age of the oldest line read but not yet accepted by Loki (0 when caught up)",
            self.lag_seconds.clone(),
        );
        r.register(
            "log_shipper_pending_bytes",
            "Bytes in followed files not yet acknowledged by Loki",
            self.pending_bytes.clone(),
        );
        r.register(
            "log_shipper_last_success_timestamp_seconds",
            "Unix time of the last push Loki accepted",
            self.last_success.clone(),
        );
        r.register(
            "log_shipper_timestamps_replaced",
            "Entries whose timestamp was missing, unparsable or outside Loki's accepted window and was replaced by the read time",
            self.timestamps_replaced.clone(),
        );
        r.register(
            "log_shipper_label_values_capped",
            "Entries whose label value was replaced by \"other\" because the label field had reached --max-label-values distinct values",
            self.label_values_capped.clone(),
        );
        r.register(
            "log_shipper_parse_errors",
            "Lines that were not a JSON object (shipped with parse_error=\"true\")",
            self.parse_errors.clone(),
        );
        r.register(
            "log_shipper_entries_rejected_count_unknown",
            "Entries of batches Loki answered 400 (partial success) without saying how many it rejected: some were stored, some not",
            self.rejected_count_unknown.clone(),
        );
        r.register(
            "log_shipper_retry_after_honoured",
            "Retries (429/503) whose delay came from Loki's Retry-After header (capped at the longest backoff)",
            self.retry_after_honoured.clone(),
        );
        r.register(
            "log_shipper_discovery_errors",
            "Directory listings or stats of input paths that failed (not \"not found\"); followed files are kept and the listing retried",
            self.tailer.discovery_errors.clone(),
        );
        r.register(
            "log_shipper_open_files",
            "Input files open now (one file descriptor each, at most max_open_files)",
            self.tailer.open_files.clone(),
        );
        r.register(
            "log_shipper_followed_files",
            "Input files followed now, open or parked",
            self.tailer.followed_files.clone(),
        );
        r.register(
            "log_shipper_file_reopens",
            "Parked input files reopened by position",
            self.tailer.reopens.clone(),
        );
        r.register(
            "log_shipper_unread_bytes_lost",
            "Bytes of parked input files deleted before the shipper read them (no descriptor was held; raise max_open_files)",
            self.tailer.unread_bytes_lost.clone(),
        );
        let build: Family<VersionLabels, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("log_shipper_build_info", "Build information", build);
        for reason in [REASON_REJECTED, REASON_TOO_LONG] {
            let _ = self.dropped.get_or_create(&ReasonLabels { reason });
        }
        for outcome in [OUTCOME_SUCCESS, OUTCOME_RETRYABLE, OUTCOME_REJECTED] {
            let _ = self.batches.get_or_create(&OutcomeLabels { outcome });
        }
        r.register_collector(Box::new(ProcessCollector));
        r
    }
}

/// Renders a registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Process metrics from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector;

/// Peak and current resident memory of this process in bytes (`VmHWM`, `VmRSS`).
pub fn memory_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU time of this process in seconds.
pub fn cpu_seconds() -> f64 {
    cpu_and_start().map_or(0.0, |(c, _, _)| c)
}

fn cpu_and_start() -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is index 0, utime 11, stime 12, starttime 19, vsize 20.
    let ticks = 100.0;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start: f64 = f.get(19)?.parse().ok()?;
    let vsize: u64 = f.get(20)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let boot = now - uptime;
    Some(((utime + stime) / ticks, boot + start / ticks, vsize))
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (_, rss) = memory_bytes();
        let m = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(rss as i64).encode(m)?;
        if let Some((cpu, start, vsize)) = cpu_and_start() {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(start).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(vsize as i64).encode(m)?;
        }
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rd.count() as i64).encode(m)?;
        }
        Ok(())
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::default();
        m.lines_read.inc();
        m.batch(OUTCOME_SUCCESS);
        m.drop_entries(REASON_REJECTED, 3);
        let text = render(&m.registry());
        for want in [
            "log_shipper_lines_read_total 1",
            "log_shipper_batches_total{outcome=\"success\"} 1",
            "log_shipper_dropped_entries_total{reason=\"rejected_by_loki\"} 3",
            "log_shipper_dropped_entries_total{reason=\"line_too_long\"} 0",
            "log_shipper_lag_seconds",
            "log_shipper_pending_bytes",
            "log_shipper_last_success_timestamp_seconds",
            "log_shipper_build_info{version=",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "log_shipper_entries_rejected_count_unknown_total 0",
            "log_shipper_retry_after_honoured_total 0",
            "log_shipper_discovery_errors_total 0",
            "log_shipper_open_files 0",
            "log_shipper_followed_files 0",
            "log_shipper_file_reopens_total 0",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
