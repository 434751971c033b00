//! The HTTP server around the router: the accept loop, the connection limit,
//! per-connection timeouts, HTTP/1 and HTTP/2 limits, and the drain on
//! shutdown.
//!
//! Connection timeouts are enforced here rather than with hyper's
//! `header_read_timeout`, whose start has changed between hyper versions and
//! which does not cover hyper-util's HTTP/1-or-2 detection (a connection that
//! never sends a byte would be held open):
//! * a new connection must complete its first request head within
//!   `header_read_timeout`;
//! * between requests, a keep-alive connection may stay silent for
//!   `keepalive_timeout`; once the next request's first byte arrives, its head
//!   must be complete within `header_read_timeout` (HTTP/2 connections, which
//!   are idle between streams by design, have only the idle timeout);
//! * while a request is being served (upload, generation, stream), the
//!   connection has no timeout of its own: the request's timeouts apply.
//!
//! Under pressure (90 % of `max_connections` open) both timeouts become 1 s,
//! as Envoy's overload manager scales its timeouts, so silent connections
//! cannot hold the door. Beyond `max_connections`, a new connection gets one
//! `503` (OpenAI error shape, `Retry-After`) and is closed, so the process
//! never runs out of file descriptors for the connections it serves.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Config;
use crate::metrics::Metrics;

/// Timeouts while more than this share of `max_connections` is open.
const PRESSURE_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection told to close gets this long to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Largest header block of an HTTP/2 request.
const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// File descriptors kept for everything but client connections.
const FD_RESERVE: u64 = 64;
/// Upper bound of the derived connection limit.
const MAX_AUTO_CONNECTIONS: u64 = 65_536;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
}

impl Limits {
    /// From the configuration; `max_connections = 0` is derived from the
    /// open-files limit `nofile`: half of it less a reserve (each proxied
    /// request also holds an upstream socket).
    pub fn new(cfg: &Config, nofile: u64) -> Self {
        let max_connections = if cfg.max_connections > 0 {
            cfg.max_connections
        } else {
            (nofile.saturating_sub(FD_RESERVE) / 2).clamp(16, MAX_AUTO_CONNECTIONS) as usize
        };
        Self {
            max_connections,
            header_read_timeout: cfg.header_read_timeout,
            keepalive_timeout: cfg.keepalive_timeout,
            max_header_bytes: cfg.max_header_bytes,
            http2_max_concurrent_streams: cfg.http2_max_concurrent_streams,
        }
    }
}

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). tokio's default of 1,024 overflows when a thousand
/// clients reconnect at once, and an overflowing queue drops SYNs, which
/// costs each dropped client a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with `SO_REUSEADDR` and a deep backlog.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft open-files limit to the hard one (as Go and nginx's
/// `worker_rlimit_nofile` do) and returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// Signals from the shutdown sequence to the server.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Stop accepting (the listener is closed).
    pub stop_accepting: CancellationToken,
    /// Draining: HTTP/1 answers carry `Connection: close`.
    pub draining: CancellationToken,
    /// Close every connection once its request in progress is answered.
    pub close_idle: CancellationToken,
    /// Drop every connection now.
    pub force_close: CancellationToken,
}

/// Serves `router` on `listener` until `ctl.stop_accepting`; connection
/// tasks run on `tracker` and outlive this call until closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    ctl: Control,
    tracker: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes)
        .header_read_timeout(None);
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES);
    let shared = Arc::new(Shared {
        router,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        metrics,
        ctl,
        refusals: Arc::new(Semaphore::new(64)),
        pressure: AtomicBool::new(false),
        pressure_changed: Notify::new(),
        builder,
    });
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shared.ctl.stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors (or memory): back off instead of spinning.
                shared.metrics.connection_rejected("accept_error");
                if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::error!(error = %e, "cannot accept connections; retrying");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = shared.ctl.stop_accepting.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            shared.metrics.connection_rejected("limit");
            shared.refuse(tcp);
            continue;
        };
        shared.metrics.connections_add(1);
        shared.update_pressure();
        let s = shared.clone();
        tracker.spawn(async move {
            s.connection(tcp).await;
            drop(slot);
            s.metrics.connections_add(-1);
            s.update_pressure();
        });
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

struct Shared {
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    ctl: Control,
    slots: Arc<Semaphore>,
    /// Bounds the tasks answering refused connections.
    refusals: Arc<Semaphore>,
    pressure: AtomicBool,
    pressure_changed: Notify,
    /// HTTP/1.1, and HTTP/2 with prior knowledge.
    builder: auto::Builder<TokioExecutor>,
}

/// The answer of a connection beyond `max_connections`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 143\r\n\r\n\
{\"error\":{\"message\":\"the gateway has too many open connections, retry later\",\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

impl Shared {
    /// Answers a connection beyond the limit with one 503 and closes it,
    /// reading what the client sent meanwhile so the close is not a reset.
    fn refuse(&self, mut tcp: TcpStream) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                tcp.write_all(REFUSAL).await?;
                tcp.shutdown().await?;
                let mut sink = [0u8; 4096];
                while tcp.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }

    fn update_pressure(&self) {
        let max = self.limits.max_connections;
        let open = max - self.slots.available_permits().min(max);
        let was = self.pressure.load(Ordering::Relaxed);
        let now = if was {
            open * 10 >= max * 8
        } else {
            open * 10 >= max * 9
        };
        if now != was {
            self.pressure.store(now, Ordering::Relaxed);
            self.pressure_changed.notify_waiters();
            if now {
                tracing::warn!(
                    open,
                    max_connections = max,
                    "many open connections: idle and header timeouts shortened to 1 s"
                );
            } else {
                tracing::info!(open, "open connections back to normal");
            }
        }
    }

    fn timeouts(&self) -> (Duration, Duration) {
        if self.pressure.load(Ordering::Relaxed) {
            (
                self.limits.header_read_timeout.min(PRESSURE_TIMEOUT),
                self.limits.keepalive_timeout.min(PRESSURE_TIMEOUT),
            )
        } else {
            (
                self.limits.header_read_timeout,
                self.limits.keepalive_timeout,
            )
        }
    }

    async fn connection(self: &Arc<Self>, tcp: TcpStream) {
        let st = Arc::new(ConnState::new());
        // A connection that has sent nothing costs no HTTP state until its
        // first byte (hyper allocates its read buffer on the first read), so
        // a flood of silent connections stays cheap.
        loop {
            let (header_timeout, _) = self.timeouts();
            tokio::select! {
                r = tcp.readable() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(st.base + header_timeout) => {
                    self.metrics.connection_timed_out("header");
                    return;
                }
                _ = self.pressure_changed.notified() => {}
                _ = self.ctl.close_idle.cancelled() => return,
            }
        }
        let io = TokioIo::new(Watched {
            io: tcp,
            st: st.clone(),
        });
        let svc = {
            let st = st.clone();
            let router = self.router.clone();
            let draining = self.ctl.draining.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let active = ActiveRequest::begin(st.clone());
                let router = router.clone();
                let draining = draining.is_cancelled();
                let body_read =
                    Arc::new(AtomicBool::new(http_body::Body::is_end_stream(req.body())));
                let req = req.map(|inner| ReadTracked {
                    inner,
                    done: body_read.clone(),
                });
                async move {
                    let h1 = req.version() < Version::HTTP_2;
                    let mut resp = match router.oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    // An answer given before the request body was read (401, 413,
                    // 429, ...) ends the connection: hyper cannot reuse it with
                    // unread body bytes in it, so the client must not either.
                    if h1 && (draining || !body_read.load(Ordering::Relaxed)) {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<Response<Body>, Infallible>(resp.map(|inner| {
                        Body::new(Tracked {
                            inner,
                            _active: active,
                        })
                    }))
                }
            })
        };
        let conn = self.builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let mut closing: Option<Instant> = None;
        loop {
            let (header_timeout, idle_timeout) = self.timeouts();
            let deadline = match closing {
                Some(t) => Some((t + CLOSE_GRACE, None)),
                None => st.deadline(header_timeout, idle_timeout),
            };
            let wake = async {
                match deadline {
                    Some((t, _)) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = self.ctl.force_close.cancelled() => return,
                _ = self.ctl.close_idle.cancelled(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                _ = st.changed.notified() => {}
                _ = self.pressure_changed.notified() => {}
                _ = wake => {
                    let Some((_, reason)) = deadline else { continue };
                    let Some(reason) = reason else {
                        // Told to close and still open after the grace.
                        return;
                    };
                    // Still due after the wake-up (no request started meanwhile)?
                    let (h, i) = self.timeouts();
                    if st.deadline(h, i).is_some_and(|(t, _)| t <= Instant::now()) {
                        self.metrics.connection_timed_out(reason);
                        if reason == "header" {
                            // A half-sent request head: nothing to answer.
                            return;
                        }
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// What the timeouts of one connection look at.
struct ConnState {
    base: Instant,
    /// Requests being served on the connection.
    active: AtomicUsize,
    /// Milliseconds since `base` + 1 when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `base` + 1 of the first byte of the next request
    /// head (0 = none yet).
    head_started: AtomicU64,
    served_any: AtomicBool,
    /// The client speaks HTTP/2 (the connection preface was seen).
    h2: AtomicBool,
    sniffed: AtomicBool,
    changed: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, stamp: u64) -> Instant {
        self.base + Duration::from_millis(stamp.saturating_sub(1))
    }

    /// When the connection times out, and why (`header` or `idle`); `None`
    /// while a request is being served.
    fn deadline(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Option<&'static str>)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire));
        if self.h2.load(Ordering::Relaxed) {
            return Some((idle + idle_timeout, Some("idle")));
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 {
            return Some((self.at(head) + header_timeout, Some("header")));
        }
        if !self.served_any.load(Ordering::Relaxed) {
            return Some((idle + header_timeout, Some("header")));
        }
        Some((idle + idle_timeout, Some("idle")))
    }

    fn on_read(&self, bytes: &[u8]) {
        if !self.sniffed.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI ") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// A request being served on a connection (from its head to the end of its
/// response body).
struct ActiveRequest(Arc<ConnState>);

impl ActiveRequest {
    fn begin(st: Arc<ConnState>) -> Self {
        st.active.fetch_add(1, Ordering::AcqRel);
        st.head_started.store(0, Ordering::Release);
        st.served_any.store(true, Ordering::Relaxed);
        st.changed.notify_one();
        Self(st)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let st = &self.0;
        st.idle_since.store(st.now(), Ordering::Release);
        if st.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            st.changed.notify_one();
        }
    }
}

/// A response body that marks its request finished when it is dropped (sent
/// whole, or the connection closed).
struct Tracked {
    inner: Body,
    _active: ActiveRequest,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that notes when it has been read to its end.
struct ReadTracked {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl http_body::Body for ReadTracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, noting when bytes of a new request head arrive.
struct Watched {
    io: TcpStream,
    st: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r
            && buf.filled().len() > before
        {
            self.st.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_complete_http_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let h = Duration::from_secs(10);
        let i = Duration::from_secs(75);
        let st = ConnState::new();
        let t0 = st.base;
        // New connection: the head of the first request is due within h.
        let (t, why) = st.deadline(h, i).unwrap();
        assert_eq!((t - t0, why), (h, Some("header")));
        // A request in progress: no connection timeout.
        let st = Arc::new(st);
        let req = ActiveRequest::begin(st.clone());
        assert!(st.deadline(h, i).is_none());
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(req);
        // Keep-alive idle: i from the end of the answer.
        let (t, why) = st.deadline(h, i).unwrap();
        assert_eq!((t - t0, why), (Duration::from_secs(100) + i, Some("idle")));
        // First byte of the next head: h from that byte.
        tokio::time::advance(Duration::from_secs(5)).await;
        st.on_read(b"POST /v1");
        let (t, why) = st.deadline(h, i).unwrap();
        assert_eq!(
            (t - t0, why),
            (Duration::from_secs(105) + h, Some("header"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_have_only_the_idle_timeout() {
        let st = ConnState::new();
        st.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (_, why) = st
            .deadline(Duration::from_secs(1), Duration::from_secs(9))
            .unwrap();
        assert_eq!(why, Some("idle"));
    }
}
