//! Listener: accepts TCP connections and serves HTTP/1.1 on them.
//!
//! Owns sockets and connection lifetimes: the accept loop (with a backoff
//! when `accept` fails), per-connection hyper settings (keep-alive, header
//! read timeout, buffer size, header count), the write timeout, connection
//! metrics, the answers hyper writes itself (counted), and shutdown (stop
//! accepting, let in-flight requests finish for the grace period, then end
//! every connection task that is left). Used for both the beacon and the
//! admin listener; what a request means is the handler's business.
//!
//! The beacon listener adds [`EdgeSettings`]: at most `http.max_connections`
//! open connections (one more is closed at once, before anything is allocated
//! for it), and the PROXY protocol rule ([`crate::proxy_protocol`]), applied
//! before hyper sees a byte; the handler then gets the PROXY header's client
//! as the peer.
//!
//! Pipelining: hyper serves one request of a connection at a time and parses
//! the next only once the previous response is written to the socket; the
//! requests a client sends ahead wait in the kernel's receive buffer and in
//! hyper's read buffer (`max_buf_size` bytes at most). A client that does not
//! read its responses therefore gets at most what the socket buffers hold
//! answered, then the response write stops making progress and
//! [`ConnectionSettings::write_timeout`] closes the connection.
//!
//! Must never: stop accepting because one connection or one `accept` failed,
//! let a connection task outlive [`serve`] (nothing runs a handler after the
//! grace period), keep a connection whose response write makes no progress
//! for longer than the write timeout, or hold more than
//! `http.max_connections` beacon connections.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::{CounterSet, LabelSet, Metrics, RouteCounters};
use crate::proxy_protocol::{self, ProxyError};

/// Why a beacon connection was closed before HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionRefusal {
    /// `http.max_connections` were open.
    MaxConnections,
    /// The PROXY protocol rule refused it.
    Proxy(ProxyError),
}

impl LabelSet for ConnectionRefusal {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        ConnectionRefusal::MaxConnections,
        ConnectionRefusal::Proxy(ProxyError::COUNTED[0]),
        ConnectionRefusal::Proxy(ProxyError::COUNTED[1]),
        ConnectionRefusal::Proxy(ProxyError::COUNTED[2]),
        ConnectionRefusal::Proxy(ProxyError::COUNTED[3]),
    ];
    fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::MaxConnections => "max_connections",
            ConnectionRefusal::Proxy(e) => e.as_str(),
        }
    }
}

fn refusal_counters(metrics: &Metrics) -> CounterSet<ConnectionRefusal> {
    metrics.counter_set(
        "connections_rejected",
        "Beacon connections closed before HTTP, by reason",
    )
}

/// Why the listener closed an open connection itself (other than the end of
/// keep-alive, the client closing, or a protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionClose {
    /// A response write made no progress for `http.write_timeout_ms`.
    WriteTimeout,
    /// Still open when the shutdown grace period ended: its task was ended.
    ShutdownGrace,
}

impl LabelSet for ConnectionClose {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        ConnectionClose::WriteTimeout,
        ConnectionClose::ShutdownGrace,
    ];
    fn as_str(self) -> &'static str {
        match self {
            ConnectionClose::WriteTimeout => "write_timeout",
            ConnectionClose::ShutdownGrace => "shutdown_grace",
        }
    }
}

/// Why `accept` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcceptFailure {
    /// EMFILE or ENFILE: out of file descriptors.
    FileLimit,
    /// That one connection was aborted or reset before it was accepted
    /// (ECONNABORTED...): nothing wrong with the listener, no backoff.
    ConnectionAborted,
    /// Anything else (ENOBUFS, ENOMEM, ...).
    Other,
}

impl AcceptFailure {
    fn of(e: &io::Error) -> Self {
        use io::ErrorKind as K;
        // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
        match (e.raw_os_error(), e.kind()) {
            (Some(23 | 24), _) => AcceptFailure::FileLimit,
            (_, K::ConnectionAborted | K::ConnectionReset | K::Interrupted) => {
                AcceptFailure::ConnectionAborted
            }
            _ => AcceptFailure::Other,
        }
    }
}

impl LabelSet for AcceptFailure {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        AcceptFailure::FileLimit,
        AcceptFailure::ConnectionAborted,
        AcceptFailure::Other,
    ];
    fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::FileLimit => "file_limit",
            AcceptFailure::ConnectionAborted => "connection_aborted",
            AcceptFailure::Other => "other",
        }
    }
}

/// The route label of answers hyper writes itself (the request was never
/// parsed far enough to have a route).
pub const UNPARSED_ROUTE: &str = "none";

/// The listener's own counters (the beacon listener's; the admin listener
/// counts nothing).
#[derive(Clone)]
struct ListenerCounters {
    refusals: CounterSet<ConnectionRefusal>,
    closes: CounterSet<ConnectionClose>,
    accept_failures: CounterSet<AcceptFailure>,
    unparsed: RouteCounters,
}

impl ListenerCounters {
    fn new(metrics: &Metrics) -> Self {
        Self {
            refusals: refusal_counters(metrics),
            closes: metrics.counter_set(
                "connections_closed",
                "Beacon connections the listener closed itself, by reason",
            ),
            accept_failures: metrics.counter_set(
                "accept_errors",
                "Failed accept calls on the beacon listener, by reason",
            ),
            unparsed: metrics.route(UNPARSED_ROUTE),
        }
    }
}

/// hyper's own header count limit; kept on the stack when unchanged.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The first wait after a failed `accept`, doubled per failure up to
/// [`ACCEPT_BACKOFF_MAX`], back to this after a success.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Per-connection HTTP settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Time allowed for a request's headers to arrive; also ends idle
    /// keep-alive connections.
    pub header_read_timeout: Duration,
    /// hyper's read buffer, which bounds the request line plus headers.
    pub max_buf_size: usize,
    /// How long a write (or flush) may stay pending without the socket
    /// taking a byte before the connection is closed.
    pub write_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown; then
    /// every connection task left is ended.
    pub shutdown_grace: Duration,
}

/// The edge limits of the beacon listener; the default (the admin listener's)
/// has none.
#[derive(Debug, Clone, Default)]
pub struct EdgeSettings {
    /// Open connections at most; `None`: no limit.
    pub max_connections: Option<usize>,
    /// Header lines per request at most (431 beyond); `None`: hyper's 100.
    pub max_headers: Option<usize>,
    /// `Some(trusted proxies)` when the PROXY protocol is on.
    pub proxy_protocol: Option<Arc<[IpNet]>>,
}

impl EdgeSettings {
    /// The beacon listener's limits from `[http]` and `[client_ip]`.
    pub fn from_config(config: &Config) -> Self {
        let http = &config.http;
        Self {
            max_connections: Some(http.max_connections),
            max_headers: Some(http.max_headers),
            proxy_protocol: http
                .proxy_protocol
                .then(|| config.client_ip.trusted_proxies.clone().into()),
        }
    }
}

/// The listen backlog (what `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// Binds a listening socket; with `send_buffer`, its `SO_SNDBUF`, which
/// accepted connections inherit (and which turns the kernel's send buffer
/// autotuning off for them): the bound on the responses a connection holds
/// answered but unread by its client.
pub fn bind(addr: SocketAddr, send_buffer: Option<usize>) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if let Some(bytes) = send_buffer {
        socket.set_send_buffer_size(u32::try_from(bytes).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `handler` on `listener` until `shutdown` resolves, then stops
/// accepting, waits (up to the grace period) for open connections to finish
/// their current request, and ends the rest: when this returns, no
/// connection task is left.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    settings: ConnectionSettings,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_with_edge(
        listener,
        handler,
        settings,
        EdgeSettings::default(),
        metrics,
        shutdown,
    )
    .await
}

/// The accept loop's failure state: an exponential backoff, and one log line
/// per burst of failures (and one when it ends).
struct AcceptBackoff {
    next: Duration,
    burst: Option<(Instant, u64)>,
}

impl AcceptBackoff {
    fn new() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
            burst: None,
        }
    }

    /// A failure: logs the first of a burst; returns how long to wait.
    fn failed(&mut self, e: &io::Error) -> Duration {
        match &mut self.burst {
            None => {
                tracing::warn!(
                    error = %e,
                    "accept failed; backing off (logged once per burst, counted in beacond_accept_errors_total)"
                );
                self.burst = Some((Instant::now(), 1));
            }
            Some((_, n)) => *n += 1,
        }
        let wait = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    /// A success: ends a burst (logged).
    fn succeeded(&mut self) {
        if let Some((since, failures)) = self.burst.take() {
            tracing::info!(
                failures,
                elapsed_ms = since.elapsed().as_millis() as u64,
                "accepting again"
            );
        }
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// [`serve`] with the beacon listener's edge limits.
pub async fn serve_with_edge<H, F>(
    listener: TcpListener,
    handler: H,
    settings: ConnectionSettings,
    edge: EdgeSettings,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_buf_size.max(8192));
    if let Some(n) = edge.max_headers.filter(|n| *n != HYPER_DEFAULT_MAX_HEADERS) {
        // Moves hyper's header array from the stack to the heap: only when asked.
        builder.max_headers(n);
    }
    let builder = Arc::new(builder);
    let slots = edge.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let counters = metrics.as_deref().map(ListenerCounters::new);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    tokio::pin!(shutdown);
    loop {
        // Finished connection tasks leave the set here, so it holds the open
        // ones only.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.succeeded();
                    conn
                }
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog; wait longer each time, keep serving the
                    // connections we have, and stop waiting at shutdown.
                    let failure = AcceptFailure::of(&e);
                    if let Some(c) = &counters {
                        c.accept_failures.inc(failure);
                    }
                    if failure == AcceptFailure::ConnectionAborted {
                        tracing::debug!(error = %e, "connection gone before accept");
                        continue;
                    }
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        let slot = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    // Full: close at once, so the balancer can go elsewhere.
                    if let Some(c) = &counters {
                        c.refusals.inc(ConnectionRefusal::MaxConnections);
                    }
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let watcher = graceful.watcher();
        let builder = Arc::clone(&builder);
        let proxy_trusted = edge.proxy_protocol.clone();
        let header_timeout = settings.header_read_timeout;
        let write_timeout = settings.write_timeout;
        let metrics = metrics.clone();
        let counters = counters.clone();
        tasks.spawn(async move {
            let _slot = slot;
            if let Some(m) = &metrics {
                m.connections_accepted.inc();
            }
            let (stream, peer) = match proxy_trusted {
                None => (proxy_protocol::Prefixed::new(Vec::new(), stream), peer),
                Some(trusted) => {
                    let is_trusted = trusted
                        .iter()
                        .any(|n| n.contains(&peer.ip().to_canonical()));
                    match proxy_protocol::accept(stream, peer, is_trusted, header_timeout).await {
                        Ok(accepted) => (accepted.stream, accepted.peer),
                        Err(e) => {
                            if let (Some(c), false) = (&counters, e == ProxyError::Closed) {
                                c.refusals.inc(ConnectionRefusal::Proxy(e));
                            }
                            tracing::debug!(%peer, error = %e, "connection closed before HTTP");
                            return;
                        }
                    }
                }
            };
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, peer).await) }
            });
            let stream = WriteTimeout::new(stream, write_timeout);
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            let open = OpenGauge::new(metrics.as_deref());
            let result = conn.await;
            drop(open);
            if let Err(e) = &result {
                if let Some(m) = &metrics {
                    m.connection_errors.inc();
                }
                if let (Some(c), Some(status)) = (&counters, hyper_answer(e)) {
                    c.unparsed.count(status);
                }
                if is_write_timeout(e) {
                    if let Some(c) = &counters {
                        c.closes.inc(ConnectionClose::WriteTimeout);
                    }
                    tracing::debug!(%peer, "response write made no progress: connection closed");
                } else {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        // A request still in progress now may finish after the producer was
        // flushed: it must not be answered. Ending its task drops the
        // request (the client gets no answer and may retry).
        let left = tasks.len();
        tasks.abort_all();
        tracing::warn!(
            connections = left,
            "connections still open after the shutdown grace period; closed without an answer"
        );
    }
    // Wait for every task to be gone, so that no handler runs once this
    // returns.
    while let Some(ended) = tasks.join_next().await {
        if matches!(&ended, Err(e) if e.is_cancelled()) {
            if let Some(c) = &counters {
                c.closes.inc(ConnectionClose::ShutdownGrace);
            }
        }
    }
}

/// `beacond_connections_open`, decremented however the task ends (aborted
/// at the end of the grace period included).
struct OpenGauge<'a>(Option<&'a Metrics>);

impl<'a> OpenGauge<'a> {
    fn new(metrics: Option<&'a Metrics>) -> Self {
        if let Some(m) = metrics {
            m.connections_open.inc();
        }
        Self(metrics)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.connections_open.dec();
        }
    }
}

/// The status of the answer hyper wrote itself before returning `e`, if it
/// wrote one (a request it could not parse: hyper's `on_error` in its h1
/// server role).
fn hyper_answer(e: &hyper::Error) -> Option<StatusCode> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    let text = e.to_string();
    if text.contains("internal error") {
        return None;
    }
    if text.contains("URI too long") {
        return Some(StatusCode::URI_TOO_LONG);
    }
    if e.is_parse_too_large() {
        return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    Some(StatusCode::BAD_REQUEST)
}

/// Whether hyper ended the connection because [`WriteTimeout`] failed a write.
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut
                && io.get_ref().is_some_and(|inner| inner.is::<WriteStalled>());
        }
        source = s.source();
    }
    false
}

/// The error a stalled write ends with.
#[derive(Debug, thiserror::Error)]
#[error("response write made no progress for the write timeout")]
struct WriteStalled;

/// A stream whose writes fail once one has stayed pending (the socket taking
/// no byte) for longer than `timeout`. hyper has no write timeout of its own.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write, flush or shutdown is pending; disarmed by any
    /// progress.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
        }
    }

    /// After a write-side poll: `Pending` arms the deadline (or fails once
    /// it passed), anything else disarms it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteStalled)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_cover_every_counted_proxy_error() {
        crate::metrics::check_label_set::<ConnectionRefusal>().unwrap();
        assert_eq!(ConnectionRefusal::ALL.len(), ProxyError::COUNTED.len() + 1);
    }

    #[test]
    fn close_and_accept_labels_are_a_label_set() {
        crate::metrics::check_label_set::<ConnectionClose>().unwrap();
        crate::metrics::check_label_set::<AcceptFailure>().unwrap();
        assert_eq!(
            AcceptFailure::of(&io::Error::from_raw_os_error(24)),
            AcceptFailure::FileLimit
        );
        assert_eq!(
            AcceptFailure::of(&io::Error::from_raw_os_error(105)),
            AcceptFailure::Other
        );
        assert_eq!(
            AcceptFailure::of(&io::Error::from(io::ErrorKind::ConnectionAborted)),
            AcceptFailure::ConnectionAborted
        );
    }

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_resets_after_a_success() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::from_raw_os_error(24);
        let waits: Vec<_> = (0..10).map(|_| b.failed(&e)).collect();
        assert_eq!(waits[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(waits[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), ACCEPT_BACKOFF_MAX);
        assert_eq!(b.burst.map(|(_, n)| n), Some(10));
        b.succeeded();
        assert!(b.burst.is_none());
        assert_eq!(b.failed(&e), ACCEPT_BACKOFF_MIN);
    }

    /// A writer that never takes a byte.
    struct Stuck;
    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let mut w = WriteTimeout::new(Stuck, Duration::from_millis(500));
        let started = tokio::time::Instant::now();
        let e = w
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.get_ref().is_some_and(|i| i.is::<WriteStalled>()));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_write_that_progresses_is_not_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A reader taking 4 KiB every 50 ms: each write waits, none for 200 ms.
        let (a, mut b) = tokio::io::duplex(4096);
        let mut w = WriteTimeout::new(a, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        w.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 64 * 1024);
    }
}
