//! Listener: accepts TCP connections and serves HTTP/1.1 on them (our own
//! driver, [`http1`]), and with `[http.tls]` TLS with HTTP/2 (hyper) for the
//! clients that choose it ([`connection`]). Handlers get one body type for
//! both, [`RequestBody`].
//!
//! Owns sockets and connection lifetimes: the accept loop (with a backoff
//! when `accept` fails), per-connection HTTP/1 settings (keep-alive, header
//! read timeout, head size, header count), the write timeout, connection
//! metrics, the answers the listener writes itself to heads it refuses
//! (400, 414, 431: counted under the route `none`), and shutdown (stop
//! accepting, tell every connection through a watch channel: idle ones close
//! at once, busy ones finish their request, HTTP/2 ones get a GOAWAY; after
//! the grace period end every connection task that is left). Used for both
//! the beacon and the admin listener; what a request means is the handler's
//! business.
//!
//! The beacon listener adds [`EdgeSettings`]: at most `http.max_connections`
//! open connections (one more is closed at once, before anything is allocated
//! for it), and the PROXY protocol rule ([`crate::proxy_protocol`]), applied
//! before HTTP sees a byte; the handler then gets the PROXY header's client
//! as the peer (or, when a trusted balancer's header named none, the balancer,
//! with a [`crate::proxy_protocol::PeerOrigin::Unnamed`] request extension).
//!
//! Pipelining: a connection's requests are served one at a time, and the
//! next is parsed only once the previous response is written to the socket;
//! the requests a client sends ahead wait in the kernel's receive buffer and
//! in the connection's read buffer (`max_buf_size` bytes at most). A client
//! that does not read its responses therefore gets at most what the socket
//! buffers hold answered, then the response write stops making progress and
//! [`ConnectionSettings::write_timeout`] closes the connection.
//!
//! Memory: an idle HTTP/1 keep-alive connection on plain TCP holds no read
//! or write buffer (see [`http1`]).
//!
//! Must never: stop accepting because one connection or one `accept` failed,
//! let a connection task outlive [`serve`] (nothing runs a handler after the
//! grace period), keep a connection whose response write makes no progress
//! for longer than the write timeout, or hold more than
//! `http.max_connections` beacon connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

mod connection;
pub mod http1;
mod request_body;
mod write_timeout;

use connection::ConnectionContext;
pub use connection::{H2Close, HandshakeFailure};
pub use request_body::{RequestBody, RequestBodyError};

use crate::config::{Config, H2Config};
use crate::metrics::{CounterSet, LabelSet, Metrics, RouteCounters};
use crate::proxy_protocol::ProxyError;
use crate::tls::TlsTerminator;

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

/// The route label of the answers the listener writes itself (the request
/// was never parsed far enough to have a route).
pub const UNPARSED_ROUTE: &str = "none";

/// The listener's own counters (the beacon listener's; the admin listener
/// counts nothing).
#[derive(Clone)]
pub(crate) struct ListenerCounters {
    refusals: CounterSet<ConnectionRefusal>,
    closes: CounterSet<ConnectionClose>,
    accept_failures: CounterSet<AcceptFailure>,
    unparsed: RouteCounters,
    handshakes_failed: CounterSet<HandshakeFailure>,
    h2_closes: CounterSet<H2Close>,
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
            handshakes_failed: metrics.counter_set(
                "tls_handshakes_failed",
                "TLS handshakes on the beacon listener that failed, by reason",
            ),
            h2_closes: metrics.counter_set(
                "h2_connections_closed",
                "HTTP/2 connections that ended with an error (reset storms included), by h2 reason",
            ),
        }
    }
}

/// The header count limit when none is set (hyper's).
const DEFAULT_MAX_HEADERS: usize = 100;

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
    /// The read buffer's limit, which bounds the request line plus headers
    /// (at least 8192, as hyper had it).
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
    /// Header lines per request at most (431 beyond); `None`: 100.
    pub max_headers: Option<usize>,
    /// `Some(trusted proxies)` when the PROXY protocol is on.
    pub proxy_protocol: Option<Arc<[IpNet]>>,
    /// TLS (`[http.tls]`), and with it HTTP/2 for clients that choose `h2`.
    pub tls: Option<TlsTerminator>,
    /// HTTP/2's limits (`[http.h2]`).
    pub h2: H2Config,
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
            tls: None,
            h2: http.h2.clone(),
        }
    }

    /// Serves TLS (and HTTP/2) with `tls`'s certificate.
    pub fn with_tls(mut self, tls: &TlsTerminator) -> Self {
        self.tls = Some(tls.clone());
        self
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
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
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
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let max_buf_size = settings.max_buf_size.max(8192);
    let h1 = http1::conn::Http1Settings {
        limits: http1::head::HeadLimits {
            max_headers: edge.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
            max_head_bytes: max_buf_size,
        },
        header_timeout: settings.header_read_timeout,
    };
    let slots = edge.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let counters = metrics.as_deref().map(ListenerCounters::new);
    let h2 = edge.tls.as_ref().map(|_| {
        let max_header_list = match edge.h2.max_header_list_bytes {
            0 => u32::try_from(max_buf_size).unwrap_or(u32::MAX),
            n => n,
        };
        connection::h2_builder(&edge.h2, max_header_list)
    });
    let context = Arc::new(ConnectionContext {
        h1,
        h2,
        tls: edge.tls.as_ref().map(|t| t.acceptor().clone()),
        proxy_trusted: edge.proxy_protocol.clone(),
        header_timeout: settings.header_read_timeout,
        write_timeout: settings.write_timeout,
        metrics: metrics.clone(),
        counters: counters.clone(),
    });
    // Turns true at shutdown: idle connections close, busy ones finish.
    let (stop, stopped) = watch::channel(false);
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
        let stopped = stopped.clone();
        let context = Arc::clone(&context);
        tasks.spawn(async move {
            let _slot = slot;
            context.serve(stream, peer, handler, stopped).await;
        });
    }
    drop(listener);
    stop.send_replace(true);
    let finished = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.shutdown_grace, finished)
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
}
