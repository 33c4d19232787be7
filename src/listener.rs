//! Listener: accepts TCP connections and serves HTTP/1.1 on them.
//!
//! Owns sockets and connection lifetimes: the accept loop, per-connection
//! hyper settings (keep-alive, header read timeout, buffer size, header
//! count), connection metrics, and graceful shutdown (stop accepting, let
//! in-flight requests finish). Used for both the beacon and the admin
//! listener; what a request means is the handler's business.
//!
//! The beacon listener adds [`EdgeSettings`]: at most `http.max_connections`
//! open connections (one more is closed at once, before anything is allocated
//! for it), and the PROXY protocol rule ([`crate::proxy_protocol`]), applied
//! before hyper sees a byte; the handler then gets the PROXY header's client
//! as the peer (or, when a trusted balancer's header named none, the balancer,
//! with a [`proxy_protocol::PeerOrigin::Unnamed`] request extension).
//!
//! Must never: stop accepting because one connection or one `accept` failed,
//! let a connection outlive shutdown's grace period, or hold more than
//! `http.max_connections` beacon connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::{CounterSet, LabelSet, Metrics};
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

/// hyper's own header count limit; kept on the stack when unchanged.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Per-connection HTTP settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Time allowed for a request's headers to arrive; also ends idle
    /// keep-alive connections.
    pub header_read_timeout: Duration,
    /// hyper's read buffer, which bounds the request line plus headers.
    pub max_buf_size: usize,
    /// How long in-flight requests may take to finish at shutdown.
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

/// Serves `handler` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (up to the grace period) for open connections to
/// finish their current request.
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
    let refusals = metrics.as_deref().map(refusal_counters);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
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
                    if let Some(r) = &refusals {
                        r.inc(ConnectionRefusal::MaxConnections);
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
        let metrics = metrics.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(m) = &metrics {
                m.connections_accepted.inc();
            }
            let (stream, peer, origin) = match proxy_trusted {
                None => (
                    proxy_protocol::Prefixed::new(Vec::new(), stream),
                    peer,
                    proxy_protocol::PeerOrigin::Named,
                ),
                Some(trusted) => {
                    let is_trusted = trusted
                        .iter()
                        .any(|n| n.contains(&peer.ip().to_canonical()));
                    match proxy_protocol::accept(stream, peer, is_trusted, header_timeout).await {
                        Ok(accepted) => (accepted.stream, accepted.peer, accepted.origin),
                        Err(e) => {
                            if let (Some(r), false) = (&refusals, e == ProxyError::Closed) {
                                r.inc(ConnectionRefusal::Proxy(e));
                            }
                            tracing::debug!(%peer, error = %e, "connection closed before HTTP");
                            return;
                        }
                    }
                }
            };
            let service = service_fn(move |mut req: Request<Incoming>| {
                if origin == proxy_protocol::PeerOrigin::Unnamed {
                    // No client named: the intake believes no forwarding header.
                    req.extensions_mut().insert(origin);
                }
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, peer).await) }
            });
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Some(m) = &metrics {
                m.connections_open.inc();
            }
            let result = conn.await;
            if let Some(m) = &metrics {
                m.connections_open.dec();
                if let Err(e) = &result {
                    m.connection_errors.inc();
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
        tracing::warn!("connections still open after the shutdown grace period; closing them");
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
}
