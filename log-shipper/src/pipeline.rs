//! The pipeline: reader thread → bounded channel → sender task → checkpoint.
//!
//! ```text
//!  [reader thread]  tailer/stdin → parser → batcher ──(bounded channel, 2 batches)──▶
//!  [sender task]    encode → push with retry policy → on acceptance: commit positions
//! ```
//!
//! - **Bounded memory**: while Loki is failing, the sender keeps retrying one batch, the
//!   channel fills, and the reader blocks: nothing more is read. Memory is about four
//!   batches plus read buffers, whatever the backlog on disk.
//! - **At-least-once**: a batch carries the position (per file) just after its last line;
//!   positions are written only after Loki accepted (or definitively rejected, 400)
//!   the batch, in batch order. Before pushing a batch, the sender waits until the
//!   previous batch's positions are on disk, so a crash re-sends at most one batch.
//! - **Shutdown** (SIGTERM): 1. stop reading; 2. the reader hands over its open batch;
//!   3. the sender pushes what is queued, for up to the shutdown timeout;
//!   4. the last positions are written.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batcher::{Batch, Batcher, PosRef};
use crate::checkpoint::{Checkpointer, FileId};
use crate::config::{Config, read_secret};
use crate::loki::client::{Auth, ClientConfig, LokiClient};
use crate::loki::{encoder, rejection};
use crate::metrics::{self, SharedMetrics};
use crate::parser::{Parsed, Parser};
use crate::retry::{Decision, RetryPolicy, classify};
use crate::tailer::{LineInfo, LineSink, Stop, Tailer, TailerConfig};

/// Pipeline errors (start-up problems; delivery problems are retried, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Client(#[from] crate::loki::client::ClientError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid parser configuration: {0}")]
    Parser(#[from] crate::parser::ParserConfigError),
    #[error("reader thread failed: {0}")]
    Reader(String),
}

/// Batches queued between the reader and the sender.
const CHANNEL_BATCHES: usize = 2;
/// Longest line the reader keeps in memory (longer ones are cut and flagged).
const MIN_LINE_BUFFER: usize = 4 * 1024 * 1024;

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// State shared for the lag and pending-bytes gauges.
#[derive(Debug, Default)]
struct Progress {
    /// (oldest read time, input bytes) of batches handed to the sender, not yet settled.
    in_flight: Mutex<VecDeque<(i64, u64)>>,
    /// Oldest read time in the reader's open batch (0 = none).
    building_oldest_ns: AtomicI64,
    /// Input bytes in the reader's open batch.
    reader_pending: AtomicU64,
    /// Read progress of the open files.
    files: Mutex<Option<crate::tailer::SharedProgress>>,
}

impl Progress {
    fn push(&self, oldest: i64, bytes: u64) {
        if let Ok(mut q) = self.in_flight.lock() {
            q.push_back((oldest, bytes));
        }
    }
    fn pop(&self) {
        if let Ok(mut q) = self.in_flight.lock() {
            q.pop_front();
        }
    }
    fn update_gauges(&self, m: &metrics::Metrics) {
        let (oldest_in_flight, bytes_in_flight) = match self.in_flight.lock() {
            Ok(q) => (
                q.iter()
                    .map(|(o, _)| *o)
                    .filter(|o| *o > 0)
                    .min()
                    .unwrap_or(0),
                q.iter().map(|(_, b)| *b).sum::<u64>(),
            ),
            Err(_) => (0, 0),
        };
        let building = self.building_oldest_ns.load(Ordering::Relaxed);
        let oldest = [oldest_in_flight, building]
            .into_iter()
            .filter(|o| *o > 0)
            .min()
            .unwrap_or(0);
        let lag = if oldest > 0 {
            ((unix_ns() - oldest).max(0) as f64) / 1e9
        } else {
            0.0
        };
        m.lag_seconds.set(lag);
        let unread = match self.files.lock() {
            Ok(f) => f.as_ref().map_or(0, crate::tailer::unread_bytes),
            Err(_) => 0,
        };
        let pending = bytes_in_flight + self.reader_pending.load(Ordering::Relaxed) + unread;
        m.pending_bytes.set(pending as i64);
    }
}

/// Runs the shipper until the inputs end (`exit_on_eof`, stdin EOF) or `stop` fires.
/// `hard_stop` aborts pending pushes (fired by the caller when the shutdown budget is
/// spent). Dry-run batches go to `dry_run_out`.
pub async fn run(
    cfg: Config,
    metrics: SharedMetrics,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), PipelineError> {
    let parser = Parser::new(cfg.parser_config())?;
    let checkpointer = if cfg.dry_run {
        None
    } else {
        Some(Checkpointer::load(&cfg.positions_file)?)
    };
    let saved: Vec<_> = checkpointer
        .as_ref()
        .map(|c| c.positions().cloned().collect())
        .unwrap_or_default();
    let closed: Vec<_> = checkpointer
        .as_ref()
        .map(|c| c.closed_positions().cloned().collect())
        .unwrap_or_default();
    if !saved.is_empty() {
        tracing::info!(files = saved.len(), path = %cfg.positions_file.display(), "resuming from saved positions");
    }
    if !closed.is_empty() {
        tracing::info!(
            files = closed.len(),
            "remembering the positions of recently closed files"
        );
    }
    let client = if cfg.dry_run {
        None
    } else {
        let (push_url, ready_url) =
            crate::loki::endpoints(cfg.loki_url.as_deref().unwrap_or_default());
        let auth = match (
            &cfg.basic_auth_user,
            &cfg.basic_auth_password_file,
            &cfg.bearer_token_file,
        ) {
            (Some(user), Some(pw), _) => Auth::Basic {
                user: user.clone(),
                password: read_secret(pw)?,
            },
            (_, _, Some(tok)) => Auth::Bearer(read_secret(tok)?),
            _ => Auth::None,
        };
        let ca_pem = match &cfg.tls_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|source| PipelineError::Io {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        let client = LokiClient::new(ClientConfig {
            push_url,
            ready_url,
            tenant: cfg.tenant.clone(),
            auth,
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            ca_pem,
        })?;
        crate::loki::healthcheck::check(&client).await;
        Some(client)
    };

    let progress = Arc::new(Progress::default());
    let (tx, rx) = mpsc::channel::<Batch>(CHANNEL_BATCHES);

    // Gauges.
    let gauge_task = {
        let (p, m, s) = (
            Arc::clone(&progress),
            Arc::clone(&metrics),
            hard_stop.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => p.update_gauges(&m),
                    _ = s.cancelled() => break,
                }
            }
        })
    };

    // Reader thread.
    let reader = {
        let files: Vec<String> = cfg
            .inputs
            .iter()
            .filter(|i| i.as_str() != "-")
            .cloned()
            .collect();
        let use_stdin = cfg.inputs.iter().any(|i| i == "-");
        let max_open = cfg.effective_max_open_files();
        if max_open < cfg.max_open_files {
            tracing::info!(
                configured = cfg.max_open_files,
                used = max_open,
                "max_open_files lowered to fit the process's file descriptor limit"
            );
        }
        let tailer = (!files.is_empty()).then(|| {
            let mut t = Tailer::new(
                TailerConfig {
                    patterns: files,
                    discover_interval: cfg.poll_interval(),
                    rotate_wait: Duration::from_millis(cfg.rotate_wait_ms),
                    max_line_buffer: cfg.max_line_bytes.max(MIN_LINE_BUFFER),
                    read_budget: 4 * 1024 * 1024,
                    max_open_files: max_open,
                    metrics: metrics.tailer.clone(),
                },
                saved,
            );
            t.remember_closed(closed);
            t
        });
        if let (Some(t), Ok(mut f)) = (tailer.as_ref(), progress.files.lock()) {
            *f = Some(t.progress());
        }
        let ctx = ReaderCtx {
            parser,
            batcher: Batcher::new(
                cfg.batch_max_bytes,
                Duration::from_millis(cfg.batch_max_wait_ms),
            ),
            tx,
            handle: tokio::runtime::Handle::current(),
            hard_stop: hard_stop.clone(),
            metrics: Arc::clone(&metrics),
            progress: Arc::clone(&progress),
            read_ns: 0,
            now: Instant::now(),
            counts: LocalCounts::default(),
        };
        let stop = stop.clone();
        let poll = cfg.poll_interval();
        let exit_on_eof = cfg.exit_on_eof;
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || reader_loop(ctx, tailer, use_stdin, poll, exit_on_eof, stop))
            .map_err(|e| PipelineError::Reader(e.to_string()))?
    };

    let sender = Sender {
        client,
        metrics: Arc::clone(&metrics),
        progress: Arc::clone(&progress),
        policy: RetryPolicy {
            initial: Duration::from_millis(cfg.retry_initial_backoff_ms),
            max: Duration::from_millis(cfg.retry_max_backoff_ms),
        },
        hard_stop: hard_stop.clone(),
        rng: rand::rngs::SmallRng::from_os_rng(),
    };
    sender.run(rx, checkpointer).await;
    let joined = tokio::task::spawn_blocking(move || reader.join()).await;
    progress.update_gauges(&metrics);
    gauge_task.abort();
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(PipelineError::Reader("reader thread panicked".into())),
        Err(e) => Err(PipelineError::Reader(e.to_string())),
    }
}

#[derive(Debug, Default)]
struct LocalCounts {
    lines: u64,
    truncated: u64,
    too_long: u64,
    parse_errors: u64,
    ts_replaced: u64,
}

struct ReaderCtx {
    parser: Parser,
    batcher: Batcher,
    tx: mpsc::Sender<Batch>,
    handle: tokio::runtime::Handle,
    hard_stop: CancellationToken,
    metrics: SharedMetrics,
    progress: Arc<Progress>,
    read_ns: i64,
    now: Instant,
    counts: LocalCounts,
}

impl ReaderCtx {
    fn send(&mut self, batch: Batch) -> Result<(), Stop> {
        self.flush_counts();
        if batch.is_empty() {
            return Ok(());
        }
        self.progress.push(batch.oldest_read_ns, batch.source_bytes);
        let tx = self.tx.clone();
        let hard = self.hard_stop.clone();
        self.handle.block_on(async move {
            tokio::select! {
                r = tx.send(batch) => r.map_err(|_| Stop),
                _ = hard.cancelled() => Err(Stop),
            }
        })
    }

    fn flush_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let m = &self.metrics;
        m.lines_read.inc_by(c.lines);
        m.truncated.inc_by(c.truncated);
        m.parse_errors.inc_by(c.parse_errors);
        m.timestamps_replaced.inc_by(c.ts_replaced);
        if c.too_long > 0 {
            m.drop_entries(metrics::REASON_TOO_LONG, c.too_long);
        }
        let max = self.parser.config().max_label_values;
        for (label, n, first) in self.parser.take_capped() {
            if first {
                tracing::warn!(
                    label,
                    max,
                    "label field reached its limit of distinct values; new values are shipped as label value \"other\" (the line is unchanged); see --max-label-values"
                );
            }
            m.label_values_capped
                .get_or_create(&metrics::LabelLabels {
                    label: label.to_string(),
                })
                .inc_by(n);
        }
    }

    /// One line; `line_len` is its real length (more than `line.len()` when the reader
    /// cut it).
    fn handle_line(
        &mut self,
        line: &[u8],
        line_len: usize,
        pos: Option<PosRef<'_>>,
        source_bytes: u64,
    ) -> Result<(), Stop> {
        self.counts.lines += 1;
        match self.parser.parse(line, self.read_ns, line_len) {
            Parsed::Record(r) => {
                self.counts.truncated += u64::from(r.truncated);
                self.counts.parse_errors += u64::from(r.parse_error);
                self.counts.ts_replaced += u64::from(r.ts_from_read_time);
                if let Some(b) = self
                    .batcher
                    .push(r, pos, source_bytes, self.read_ns, self.now)
                {
                    self.send(b)?;
                }
            }
            Parsed::DroppedTooLong { len } => {
                tracing::warn!(len, "dropping a line longer than --max-line-bytes");
                self.counts.too_long += 1;
                self.batcher.skip(pos, source_bytes, self.read_ns, self.now);
            }
        }
        Ok(())
    }

    fn publish_progress(&self) {
        self.progress
            .building_oldest_ns
            .store(self.batcher.oldest_read_ns(), Ordering::Relaxed);
        self.progress
            .reader_pending
            .store(self.batcher.pending_source_bytes(), Ordering::Relaxed);
    }
}

impl LineSink for ReaderCtx {
    fn line(&mut self, info: LineInfo<'_>) -> Result<(), Stop> {
        let line_len = usize::try_from(info.line_len).unwrap_or(usize::MAX);
        self.handle_line(
            info.line,
            line_len.max(info.line.len()),
            Some(info.pos),
            info.source_bytes,
        )
    }
    fn closed(&mut self, id: FileId) -> Result<(), Stop> {
        self.batcher.forget(id, self.now);
        Ok(())
    }
    fn resumed(&mut self, pos: PosRef<'_>) -> Result<(), Stop> {
        self.batcher.skip(Some(pos), 0, self.read_ns, self.now);
        Ok(())
    }
}

/// Standard input, split into lines on the reader thread.
struct StdinSource {
    rx: std::sync::mpsc::Receiver<Option<Vec<u8>>>,
    partial: Vec<u8>,
    /// Real length of the incomplete line (`partial` keeps at most `cap` bytes of it).
    partial_len: usize,
    done: bool,
    cap: usize,
}

impl StdinSource {
    fn start(cap: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(4);
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                loop {
                    let mut buf = vec![0u8; 256 * 1024];
                    match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Some(buf)).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "reading stdin failed");
                            break;
                        }
                    }
                }
                let _ = tx.send(None);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the stdin thread");
        }
        Self {
            rx,
            partial: Vec::new(),
            partial_len: 0,
            done: false,
            cap,
        }
    }

    /// Processes one received message; returns bytes consumed.
    fn process(&mut self, msg: Option<Vec<u8>>, ctx: &mut ReaderCtx) -> Result<usize, Stop> {
        let Some(chunk) = msg else {
            self.done = true;
            if self.partial_len > 0 {
                let line = std::mem::take(&mut self.partial);
                let n = std::mem::take(&mut self.partial_len);
                ctx.handle_line(&line, n, None, n as u64)?;
            }
            return Ok(0);
        };
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &chunk) {
            let seg = &chunk[start..nl];
            if self.partial_len == 0 {
                let keep = seg.len().min(self.cap);
                ctx.handle_line(&seg[..keep], seg.len(), None, seg.len() as u64 + 1)?;
            } else {
                self.append(seg);
                let line = std::mem::take(&mut self.partial);
                let n = std::mem::take(&mut self.partial_len);
                ctx.handle_line(&line, n, None, n as u64 + 1)?;
            }
            start = nl + 1;
        }
        self.append(&chunk[start..]);
        Ok(chunk.len())
    }

    /// Adds to the incomplete line, keeping at most `cap` bytes (and counting all).
    fn append(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&data[..data.len().min(room)]);
        self.partial_len += data.len();
    }
}

fn reader_loop(
    mut ctx: ReaderCtx,
    mut tailer: Option<Tailer>,
    use_stdin: bool,
    poll: Duration,
    exit_on_eof: bool,
    stop: CancellationToken,
) {
    let mut stdin = use_stdin
        .then(|| StdinSource::start(ctx.parser.config().max_line_bytes.max(MIN_LINE_BUFFER)));
    let result: Result<(), Stop> = (|| {
        loop {
            ctx.now = Instant::now();
            ctx.read_ns = unix_ns();
            let mut progressed = 0usize;
            if let Some(t) = tailer.as_mut() {
                progressed += t.poll(ctx.now, &mut ctx)?;
            }
            if let Some(s) = stdin.as_mut() {
                for _ in 0..16 {
                    if s.done {
                        break;
                    }
                    match s.rx.try_recv() {
                        Ok(msg) => progressed += s.process(msg, &mut ctx)?,
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => s.done = true,
                    }
                }
            }
            ctx.publish_progress();
            ctx.flush_counts();
            if ctx.batcher.is_due(Instant::now())
                && let Some(b) = ctx.batcher.take()
            {
                ctx.send(b)?;
            }
            if stop.is_cancelled() {
                return Ok(());
            }
            let stdin_done = stdin.as_ref().is_none_or(|s| s.done);
            if progressed > 0 {
                continue;
            }
            if stdin_done && (exit_on_eof || tailer.is_none()) {
                if let Some(t) = tailer.as_mut() {
                    t.flush_partial_lines(&mut ctx)?;
                }
                return Ok(());
            }
            let now = Instant::now();
            let wait = ctx
                .batcher
                .due_at()
                .map_or(poll, |d| d.saturating_duration_since(now).min(poll));
            let wait = wait.max(Duration::from_millis(1));
            match stdin.as_mut() {
                Some(s) if tailer.is_none() && !s.done => match s.rx.recv_timeout(wait) {
                    Ok(msg) => {
                        s.process(msg, &mut ctx)?;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => s.done = true,
                },
                _ => {
                    let stop = stop.clone();
                    ctx.handle.block_on(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {},
                            _ = stop.cancelled() => {},
                        }
                    });
                }
            }
        }
    })();
    if result.is_ok() {
        ctx.now = Instant::now();
        if let Some(b) = ctx.batcher.take() {
            let _ = ctx.send(b);
        }
    }
    ctx.flush_counts();
    tracing::debug!("reader finished");
}

struct Sender {
    client: Option<LokiClient>,
    metrics: SharedMetrics,
    progress: Arc<Progress>,
    policy: RetryPolicy,
    hard_stop: CancellationToken,
    rng: rand::rngs::SmallRng,
}

/// Why a delivery ended without a verdict.
struct Aborted;

type CommitTask = tokio::task::JoinHandle<Checkpointer>;

async fn finish_commit(pending: &mut Option<CommitTask>, cp: &mut Option<Checkpointer>) {
    if let Some(h) = pending.take() {
        match h.await {
            Ok(c) => *cp = Some(c),
            Err(e) => tracing::error!(error = %e, "positions writer failed"),
        }
    }
}

fn start_commit(mut c: Checkpointer) -> CommitTask {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = c.write() {
            // Positions stay in memory and are written with the next batch; a restart
            // before then re-sends lines (duplicates, never losses).
            tracing::error!(error = %e, "cannot write positions");
        }
        c
    })
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>, mut checkpointer: Option<Checkpointer>) {
        let mut pending_commit: Option<CommitTask> = None;
        loop {
            let batch = tokio::select! {
                b = rx.recv() => b,
                _ = self.hard_stop.cancelled() => None,
            };
            let Some(batch) = batch else { break };
            let Batch {
                streams,
                positions,
                forget,
                entries,
                ..
            } = batch;
            if self.client.is_none() {
                // Dry run: print, never commit.
                let json = encoder::to_json(&Batch {
                    streams,
                    entries,
                    ..Default::default()
                });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{json}");
                let _ = out.flush();
                self.progress.pop();
                continue;
            }
            let req = if entries > 0 {
                Some(encoder::to_push_request(streams))
            } else {
                None
            };
            finish_commit(&mut pending_commit, &mut checkpointer).await;
            if let Some(req) = req
                && self.deliver(req).await.is_err()
            {
                tracing::warn!(
                    "shutdown timeout reached with a batch not accepted; it will be re-read on restart"
                );
                break;
            }
            self.progress.pop();
            if let Some(mut c) = checkpointer.take() {
                c.apply(positions, &forget);
                if c.is_dirty() {
                    pending_commit = Some(start_commit(c));
                } else {
                    checkpointer = Some(c);
                }
            }
        }
        finish_commit(&mut pending_commit, &mut checkpointer).await;
        if let Some(mut c) = checkpointer
            && c.is_dirty()
        {
            let _ = tokio::task::spawn_blocking(move || c.write()).await;
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), Aborted> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.hard_stop.cancelled() => Err(Aborted),
        }
    }

    /// Pushes until Loki settles the request (accepts or rejects it).
    async fn deliver(&mut self, req: encoder::PushRequestAlias) -> Result<(), Aborted> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let mut work = vec![req];
        while let Some(req) = work.pop() {
            let (n, bytes) = encoder::count(&req);
            let body = match encoder::encode(&req) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(error = %e, entries = n, "cannot compress a batch; dropping it");
                    self.metrics
                        .drop_entries(metrics::REASON_REJECTED, n as u64);
                    continue;
                }
            };
            let mut attempt: u32 = 0;
            loop {
                let res = tokio::select! {
                    r = client.push(body.clone()) => r,
                    _ = self.hard_stop.cancelled() => return Err(Aborted),
                };
                match classify(res.status) {
                    Decision::Accepted => {
                        self.metrics.batch(metrics::OUTCOME_SUCCESS);
                        self.metrics.entries_sent.inc_by(n as u64);
                        self.metrics.bytes_sent.inc_by(bytes as u64);
                        self.metrics.last_success.set(unix_ns() as f64 / 1e9);
                        if attempt > 0 {
                            tracing::info!(attempts = attempt + 1, "push accepted after retries");
                        }
                        break;
                    }
                    Decision::Split if n > 1 => {
                        tracing::warn!(entries = n, "Loki answered 413; splitting the batch");
                        if let Some((a, b)) = encoder::split(req) {
                            work.push(b);
                            work.push(a);
                        }
                        break;
                    }
                    Decision::Split => {
                        // One entry too large for Loki or a proxy: it was not stored.
                        self.metrics.batch(metrics::OUTCOME_REJECTED);
                        self.metrics
                            .drop_entries(metrics::REASON_REJECTED, n as u64);
                        tracing::error!(
                            status = res.status,
                            entries = n,
                            reason = %res.message,
                            "Loki answered 413 for a single entry; dropping it"
                        );
                        break;
                    }
                    Decision::Reject => {
                        let r = rejection::rejected_entries(&res.message, n, req.streams.len());
                        let stored = r.stored(n);
                        self.metrics.batch(metrics::OUTCOME_REJECTED);
                        self.metrics
                            .drop_entries(metrics::REASON_REJECTED, r.rejected as u64);
                        self.metrics.rejected_count_unknown.inc_by(r.unknown as u64);
                        self.metrics.entries_sent.inc_by(stored as u64);
                        if stored > 0 {
                            self.metrics.last_success.set(unix_ns() as f64 / 1e9);
                        }
                        tracing::error!(
                            status = res.status,
                            entries = n,
                            rejected = r.rejected,
                            unknown = r.unknown,
                            stored,
                            reason = %res.message,
                            "Loki rejected entries (400 is a partial success: valid entries were stored); not retrying"
                        );
                        break;
                    }
                    Decision::Retry => {
                        self.metrics.batch(metrics::OUTCOME_RETRYABLE);
                        self.metrics.retries.inc();
                        let d = match res.retry_after {
                            // Loki (or a proxy) said when to come back: not earlier,
                            // and never later than the longest backoff.
                            Some(ra) if matches!(res.status, Some(429 | 503)) => {
                                self.metrics.retry_after_honoured.inc();
                                ra.min(self.policy.max)
                            }
                            _ => self.policy.delay(attempt, &mut self.rng),
                        };
                        tracing::warn!(status = res.status, error = %res.message, attempt = attempt + 1, delay_ms = d.as_millis() as u64, retry_after_ms = res.retry_after.map(|r| r.as_millis() as u64), "push failed; retrying");
                        self.sleep(d).await?;
                        attempt = attempt.saturating_add(1);
                    }
                    Decision::Hold => {
                        self.metrics.batch(metrics::OUTCOME_RETRYABLE);
                        self.metrics.retries.inc();
                        let d = self.policy.hold_delay(&mut self.rng);
                        tracing::error!(status = res.status, error = %res.message, delay_ms = d.as_millis() as u64, "push refused (check URL and credentials); holding the batch and trying again");
                        self.sleep(d).await?;
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
        }
        Ok(())
    }
}
