//! Response events: the [`Event`] line format, the [`EventGuard`] that makes
//! sure every request produces exactly one event, and the writer thread (the
//! only writer of event lines).
//!
//! Requests hand finished events to a bounded queue; a dedicated thread
//! serialises them (one JSON object per line) to stdout or a file. When the
//! queue is full the request path does not block and does not drop: the event
//! is handed to a task that waits for room (backpressure without loss). When
//! the output cannot be written (disk full, ...), the gateway keeps serving,
//! counts `llm_gateway_events_dropped_total` and says so on stderr, at most
//! every ten seconds. The events file only ever holds whole lines: a write
//! that fails part-way is cut back to its last complete line (the rest of the
//! batch is counted as dropped), and a partial line left by a crash is
//! removed when the file is opened.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::config::Price;
use crate::metrics::{Finished, Label, Metrics, RequestLabels, finish_reason_label};
use crate::refusal::RefusalKind;
use crate::relay::Usage;

/// Version of the event line format (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// One `response` event. Fields are serialised in this order (the
/// contract's order, then the extras).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub ts: String,
    pub level: &'static str,
    pub event: &'static str,
    pub request_id: String,
    pub route: &'static str,
    pub model: String,
    pub tenant: String,
    pub upstream: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub finish_reason: Option<String>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub refusal: bool,
    pub refusal_reason: Option<String>,
    /// `full` (with `refusal: true`), `partial` (a hedge: `refusal: false`)
    /// or `None`.
    pub refusal_kind: Option<&'static str>,
    pub cost_usd: Option<f64>,
    pub error_type: Option<&'static str>,
    pub endpoint: Option<String>,
    /// Why the pool chose `endpoint` (one of [`crate::routing::reason::ALL`]).
    pub routing_reason: Option<&'static str>,
    pub schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal_excerpt: Option<String>,
    /// `counted` when the token counts are the gateway's own (a stream cut
    /// before the upstream reported usage); absent when they are the upstream's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_source: Option<&'static str>,
}

impl Event {
    /// The line written for this event (with the trailing newline).
    pub fn to_line(&self, out: &mut Vec<u8>) {
        if serde_json::to_writer(&mut *out, self).is_ok() {
            out.push(b'\n');
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `level` from the outcome.
pub fn level_for(status: u16, error_type: Option<&str>) -> &'static str {
    match (status, error_type) {
        (s, _) if s >= 500 => "error",
        (s, _) if s >= 400 => "warn",
        (_, Some("client_disconnect")) => "warn",
        (_, Some(_)) => "error",
        _ => "info",
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

enum Msg {
    Event(Box<Event>),
    Reopen,
    Shutdown,
}

/// Where events go.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate at this size (0 = never).
        max_file_bytes: u64,
        /// Rotated files kept.
        max_files: u32,
    },
}

/// Handle for requests: queue an event.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    /// Queues an event without blocking and without dropping it.
    pub fn emit(&self, ev: Event) {
        match self.tx.try_send(Msg::Event(Box::new(ev))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                let metrics = self.metrics.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        h.spawn(async move {
                            if tx.send(msg).await.is_err() {
                                metrics.events_dropped(1);
                            }
                        });
                    }
                    Err(_) => self.metrics.events_dropped(1),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.events_dropped(1),
        }
    }

    /// Asks the writer to reopen its file (SIGHUP, after logrotate).
    pub fn reopen(&self) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Msg::Reopen).await;
        });
    }
}

/// The writer thread; [`WriterHandle::shutdown`] flushes and stops it.
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    thread: std::thread::JoinHandle<()>,
}

impl WriterHandle {
    /// Writes every event queued so far, then stops the thread. Waits at
    /// most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.tx.send(Msg::Shutdown)).await;
        let thread = self.thread;
        let join = tokio::task::spawn_blocking(move || thread.join());
        let _ = tokio::time::timeout(timeout, join).await;
    }
}

struct Writer {
    output: Output,
    file: Option<File>,
    file_bytes: u64,
    metrics: Arc<Metrics>,
    last_warn: Option<Instant>,
    dropped_since_warn: u64,
}

/// Opens the events file for appending and removes a partial last line
/// (left by a crash or a failed write), so that appends start on a line.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let cut = repair_tail(&mut f)?;
    if cut > 0 {
        tracing::warn!(
            path = %path.display(),
            bytes = cut,
            "removed a partial event line at the end of the events file"
        );
    }
    Ok(f)
}

/// The file operations the writer needs; a trait so that tests can inject
/// write failures.
trait LineFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    fn len(&self) -> std::io::Result<u64>;
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl LineFile for File {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Write::write(self, buf)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Cuts the file back to just after its last `\n`; returns the bytes removed.
fn repair_tail(f: &mut impl LineFile) -> std::io::Result<u64> {
    let len = f.len()?;
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let want = (end - start) as usize;
        let mut got = 0;
        while got < want {
            let n = f.read_at(&mut block[got..want], start + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if let Some(i) = memchr::memrchr(b'\n', &block[..got]) {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.truncate(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    if len > 0 {
        f.truncate(0)?;
    }
    Ok(len)
}

/// A write of whole lines that failed part-way.
#[derive(Debug)]
struct PartialWrite {
    error: std::io::Error,
    /// Lines of the batch that are in the file, whole.
    lines_kept: u64,
    /// The file could not be cut back: close it (the next open repairs it).
    poisoned: bool,
}

/// Appends `buf` (whole lines). On a failure, cuts the file back to the last
/// complete line written, so no partial line stays.
fn append_lines(f: &mut impl LineFile, buf: &[u8]) -> Result<(), PartialWrite> {
    let start = f.len().map_err(|error| PartialWrite {
        error,
        lines_kept: 0,
        poisoned: false,
    })?;
    let mut written = 0;
    while written < buf.len() {
        match f.write(&buf[written..]) {
            Ok(0) => {
                return Err(cut_back(
                    f,
                    buf,
                    start,
                    written,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut_back(f, buf, start, written, e)),
        }
    }
    Ok(())
}

fn cut_back(
    f: &mut impl LineFile,
    buf: &[u8],
    start: u64,
    written: usize,
    error: std::io::Error,
) -> PartialWrite {
    let keep = memchr::memrchr(b'\n', &buf[..written]).map_or(0, |i| i + 1);
    let lines_kept = memchr::memchr_iter(b'\n', &buf[..keep]).count() as u64;
    let poisoned = written > keep && f.truncate(start + keep as u64).is_err();
    PartialWrite {
        error,
        lines_kept,
        poisoned,
    }
}

/// Opens the output (so start-up fails on a bad path) and starts the writer thread.
pub fn start(
    output: Output,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(EventSink, WriterHandle)> {
    let (file, file_bytes) = match &output {
        Output::Stdout => (None, 0),
        Output::File { path, .. } => {
            let f = open_append(path)?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            (Some(f), len)
        }
    };
    let (tx, rx) = mpsc::channel(capacity);
    let mut w = Writer {
        output,
        file,
        file_bytes,
        metrics: metrics.clone(),
        last_warn: None,
        dropped_since_warn: 0,
    };
    let thread = std::thread::Builder::new()
        .name("event-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((
        EventSink {
            tx: tx.clone(),
            metrics,
        },
        WriterHandle { tx, thread },
    ))
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(512);
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut shutdown = false;
        while !shutdown {
            if rx.blocking_recv_many(&mut batch, 512) == 0 {
                break;
            }
            let mut count = 0u64;
            for msg in batch.drain(..) {
                match msg {
                    Msg::Event(ev) => {
                        ev.to_line(&mut buf);
                        count += 1;
                    }
                    Msg::Reopen => {
                        self.write(&mut buf, &mut count);
                        self.reopen();
                    }
                    Msg::Shutdown => shutdown = true,
                }
            }
            self.write(&mut buf, &mut count);
        }
        // Anything queued after the shutdown request is still written.
        rx.close();
        let mut count = 0;
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Event(ev) = msg {
                ev.to_line(&mut buf);
                count += 1;
            }
        }
        self.write(&mut buf, &mut count);
    }

    fn write(&mut self, buf: &mut Vec<u8>, count: &mut u64) {
        if *count == 0 {
            buf.clear();
            return;
        }
        let res = match &self.output {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)
                    .and_then(|_| out.flush())
                    .map_err(|error| PartialWrite {
                        error,
                        lines_kept: 0,
                        poisoned: false,
                    })
            }
            Output::File { path, .. } => {
                if self.file.is_none() {
                    match open_append(path) {
                        Ok(f) => {
                            self.file_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
                            self.file = Some(f);
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot open the events file"),
                    }
                }
                match &mut self.file {
                    Some(f) => append_lines(f, buf),
                    None => Err(PartialWrite {
                        error: std::io::Error::other("events file is not open"),
                        lines_kept: 0,
                        poisoned: false,
                    }),
                }
            }
        };
        match res {
            Ok(()) => {
                self.metrics.events_written(*count);
                self.file_bytes += buf.len() as u64;
                self.maybe_rotate();
            }
            Err(p) => {
                if p.poisoned {
                    self.file = None;
                }
                let dropped = count.saturating_sub(p.lines_kept);
                self.metrics.events_written(p.lines_kept);
                self.metrics.events_dropped(dropped);
                self.dropped_since_warn += dropped;
                let now = Instant::now();
                if self
                    .last_warn
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    tracing::error!(
                        error = %p.error,
                        dropped = self.dropped_since_warn,
                        "cannot write events; dropping them and continuing to serve"
                    );
                    self.last_warn = Some(now);
                    self.dropped_since_warn = 0;
                }
            }
        }
        buf.clear();
        *count = 0;
    }

    fn reopen(&mut self) {
        if let Output::File { path, .. } = &self.output {
            match open_append(path) {
                Ok(f) => {
                    self.file_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                    tracing::info!(path = %path.display(), "events file reopened");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen events file");
                    self.file = None;
                }
            }
        }
    }

    fn maybe_rotate(&mut self) {
        let Output::File {
            path,
            max_file_bytes,
            max_files,
        } = &self.output
        else {
            return;
        };
        if *max_file_bytes == 0 || self.file_bytes < *max_file_bytes {
            return;
        }
        let rotated = |n: u32| {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        let keep = (*max_files).max(1);
        let _ = std::fs::remove_file(rotated(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(rotated(n), rotated(n + 1));
        }
        if let Err(e) = std::fs::rename(path, rotated(1)) {
            tracing::error!(error = %e, "cannot rotate events file");
        }
        self.reopen();
    }
}

// ---------------------------------------------------------------------------
// The per-request guard
// ---------------------------------------------------------------------------

/// What the guard needs to finish a request.
#[derive(Debug)]
pub struct Recorder {
    pub sink: EventSink,
    pub metrics: Arc<Metrics>,
    pub prices: std::collections::HashMap<String, Price>,
    /// Cancelled when the shutdown grace period is over.
    pub hard_stop: tokio_util::sync::CancellationToken,
    /// Requests whose event is not written yet.
    pub live: LiveRequests,
}

/// Counts the requests in progress (guards not yet finished), so the
/// shutdown can wait for them.
#[derive(Debug, Default)]
pub struct LiveRequests {
    count: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl LiveRequests {
    fn inc(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn dec(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.none_left.notify_waiters();
        }
    }

    /// Requests in progress now.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once no request is in progress.
    pub async fn wait_none(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Refusal outcome of a response.
#[derive(Debug, Clone)]
pub struct RefusalOutcome {
    pub rule: Option<String>,
    pub excerpt: Option<String>,
    /// Full refusal or a partial one (hedge).
    pub kind: RefusalKind,
}

/// Created when a request reaches a `/v1/*` route. Its state starts as
/// "client went away" and is updated as the request progresses; the event is
/// emitted by [`EventGuard::finish`] or, on any other path (client
/// disconnect, panic, cancelled future), by `Drop`. So every request yields
/// exactly one event.
#[derive(Debug)]
pub struct EventGuard {
    rec: Arc<Recorder>,
    start: Instant,
    pub request_id: String,
    pub route: &'static str,
    /// Model named by the client.
    pub model: Option<String>,
    model_label: Label,
    in_flight: bool,
    pub tenant: Label,
    pub upstream: Option<Label>,
    pub endpoint: Option<Label>,
    pub routing_reason: Option<&'static str>,
    pub stream: bool,
    pub status: u16,
    pub finish_reason: Option<String>,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    /// `Some("counted")` when `usage` was counted by the gateway.
    pub usage_source: Option<&'static str>,
    pub refusal: Option<RefusalOutcome>,
    pub error_type: Option<&'static str>,
    permits: Vec<OwnedSemaphorePermit>,
    done: bool,
}

impl EventGuard {
    pub fn start(
        rec: Arc<Recorder>,
        request_id: String,
        route: &'static str,
        tenant: Label,
        other: Label,
    ) -> Self {
        rec.live.inc();
        Self {
            rec,
            start: Instant::now(),
            request_id,
            route,
            model: None,
            model_label: other,
            in_flight: false,
            tenant,
            upstream: None,
            endpoint: None,
            routing_reason: None,
            stream: false,
            status: 499,
            finish_reason: Some("client_disconnect".to_owned()),
            ttft: None,
            usage: None,
            usage_source: None,
            refusal: None,
            error_type: Some("client_disconnect"),
            permits: Vec::new(),
            done: false,
        }
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Sets the model and counts the request as in flight for it.
    pub fn set_model(&mut self, model: String, label: Label) {
        let model: String = model.chars().take(256).collect();
        self.model = Some(model);
        self.model_label = label;
        self.rec.metrics.in_flight_add(&self.model_label, 1);
        self.in_flight = true;
    }

    /// Sets the model learnt from the answer (the request named none); the
    /// request is not counted in flight for it.
    pub fn learn_model(&mut self, model: String, label: Label) {
        if self.in_flight {
            return;
        }
        self.model = Some(model.chars().take(256).collect());
        self.model_label = label;
    }

    pub fn model_label(&self) -> &Label {
        &self.model_label
    }

    /// Keeps a concurrency permit until the request ends.
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.permits.push(permit);
    }

    /// Records a failure answered with `status`.
    pub fn fail(&mut self, status: u16, error_type: &'static str) {
        self.status = status;
        self.error_type = Some(error_type);
        self.finish_reason = None;
    }

    /// Headers of a stream were sent: a later disconnect keeps status 200.
    pub fn stream_started(&mut self) {
        self.status = 200;
    }

    /// Records a normal end with `status`.
    pub fn succeed(&mut self, status: u16, finish_reason: Option<String>) {
        self.status = status;
        self.error_type = None;
        self.finish_reason = finish_reason;
    }

    /// Emits the event now.
    pub fn finish(mut self) {
        self.emit();
    }

    fn emit(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if self.status == 499 && self.rec.hard_stop.is_cancelled() {
            // Cut by the end of the shutdown grace period, not by the client.
            self.status = 503;
            self.error_type = Some("shutting_down");
            self.finish_reason = None;
        }
        let latency = self.start.elapsed();
        let (prompt_tokens, completion_tokens) = match self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (None, None),
        };
        let cost_usd = match (&self.model, self.usage) {
            (Some(m), Some(_)) => self
                .rec
                .prices
                .get(m)
                .map(|p| p.cost(prompt_tokens, completion_tokens)),
            _ => None,
        };
        let refusal = self.refusal.take();
        let ttft_secs = self.ttft.map(|t| t.as_secs_f64());
        if self.in_flight {
            self.rec.metrics.in_flight_add(&self.model_label, -1);
            self.in_flight = false;
        }
        self.rec.metrics.finished(&Finished {
            labels: RequestLabels {
                route: self.route,
                model: self.model_label.clone(),
                tenant: self.tenant.clone(),
                status: self.status,
                finish_reason: finish_reason_label(self.finish_reason.as_deref()),
            },
            duration_secs: latency.as_secs_f64(),
            ttft_secs,
            prompt_tokens,
            completion_tokens,
            refusal: refusal.as_ref().map(|r| r.kind),
            cost_usd,
        });
        let (refusal_reason, refusal_excerpt) = match &refusal {
            Some(r) => (r.rule.clone(), r.excerpt.clone()),
            None => (None, None),
        };
        let refusal_kind = refusal.as_ref().map(|r| r.kind.as_str());
        let is_refusal = refusal
            .as_ref()
            .is_some_and(|r| r.kind == RefusalKind::Full);
        let ev = Event {
            ts: format_ts(time::OffsetDateTime::now_utc()),
            level: level_for(self.status, self.error_type),
            event: "response",
            request_id: std::mem::take(&mut self.request_id),
            route: self.route,
            model: self.model.take().unwrap_or_else(|| "unknown".to_owned()),
            tenant: self.tenant.as_str().to_owned(),
            upstream: self.upstream.as_ref().map(|u| u.as_str().to_owned()),
            stream: self.stream,
            status: self.status,
            finish_reason: self.finish_reason.take(),
            latency_ms: round3(latency.as_secs_f64() * 1000.0),
            ttft_ms: ttft_secs.map(|t| round3(t * 1000.0)),
            prompt_tokens,
            completion_tokens,
            refusal: is_refusal,
            refusal_reason,
            refusal_kind,
            cost_usd,
            error_type: self.error_type,
            endpoint: self.endpoint.as_ref().map(|u| u.as_str().to_owned()),
            routing_reason: self.routing_reason,
            schema_version: SCHEMA_VERSION,
            refusal_excerpt,
            usage_source: self.usage_source,
        };
        self.rec.sink.emit(ev);
        self.permits.clear();
        self.rec.live.dec();
    }
}

impl Drop for EventGuard {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_format() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.678901 UTC);
        assert_eq!(format_ts(t), "2026-01-02T03:04:05.678Z");
    }

    /// A file that accepts `room` more bytes, then fails like a full disk
    /// (after a short write), until `room` is raised again.
    struct FullDisk {
        data: Vec<u8>,
        room: usize,
        fail_truncate: bool,
    }

    impl LineFile for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.data.len() as u64)
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            if self.fail_truncate {
                return Err(std::io::Error::other("no"));
            }
            let freed = self.data.len() - len as usize;
            self.data.truncate(len as usize);
            self.room += freed;
            Ok(())
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let src = self.data.get(offset as usize..).unwrap_or(&[]);
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok(n)
        }
    }

    fn lines_of(data: &[u8]) -> Vec<serde_json::Value> {
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "partial line left"
        );
        data.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_failed_write_leaves_only_whole_lines() {
        let batch = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";
        // Room ends inside the second line: the first stays, the rest is cut.
        let mut f = FullDisk {
            data: b"{\"old\":0}\n".to_vec(),
            room: 12,
            fail_truncate: false,
        };
        let err = append_lines(&mut f, batch).unwrap_err();
        assert_eq!(err.lines_kept, 1);
        assert!(!err.poisoned);
        assert_eq!(lines_of(&f.data).len(), 2);
        // Space returns: the next batch lands on a line boundary.
        f.room = 1 << 20;
        append_lines(&mut f, b"{\"d\":4}\n").unwrap();
        let got = lines_of(&f.data);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2]["d"], 4);
    }

    #[test]
    fn a_partial_tail_is_repaired_on_open() {
        for (data, want, cut) in [
            (&b""[..], &b""[..], 0),
            (b"{\"a\":1}\n", b"{\"a\":1}\n", 0),
            (b"{\"a\":1}\n{\"b\":", b"{\"a\":1}\n", 5),
            (b"{\"b\":", b"", 5),
        ] {
            let mut f = FullDisk {
                data: data.to_vec(),
                room: 0,
                fail_truncate: false,
            };
            assert_eq!(repair_tail(&mut f).unwrap(), cut);
            assert_eq!(f.data, want);
        }
        // Longer than one read block.
        let mut data = b"{\"a\":1}\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 200_000));
        let mut f = FullDisk {
            data,
            room: 0,
            fail_truncate: false,
        };
        assert_eq!(repair_tail(&mut f).unwrap(), 200_000);
        assert_eq!(f.data, b"{\"a\":1}\n");
    }

    #[test]
    fn an_uncuttable_file_is_marked_for_reopening() {
        let mut f = FullDisk {
            data: Vec::new(),
            room: 3,
            fail_truncate: true,
        };
        let err = append_lines(&mut f, b"{\"a\":1}\n").unwrap_err();
        assert!(err.poisoned);
        assert_eq!(err.lines_kept, 0);
    }

    #[test]
    fn levels() {
        assert_eq!(level_for(200, None), "info");
        assert_eq!(level_for(404, Some("model_not_found")), "warn");
        assert_eq!(level_for(499, Some("client_disconnect")), "warn");
        assert_eq!(level_for(200, Some("client_disconnect")), "warn");
        assert_eq!(level_for(200, Some("stream_error")), "error");
        assert_eq!(level_for(502, Some("upstream_unreachable")), "error");
    }
}
