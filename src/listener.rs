//! Listener: accepts TCP connections and serves HTTP/1.1 on them.
//!
//! Owns sockets and connection lifetimes: the accept loop, per-connection
//! hyper settings (keep-alive, header read timeout, buffer size), connection
//! metrics, and graceful shutdown (stop accepting, let in-flight requests
//! finish). Used for both the beacon and the admin listener; what a request
//! means is the handler's business.
//!
//! Must never: stop accepting because one connection or one `accept` failed,
//! or let a connection outlive shutdown's grace period.

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
use tokio::net::TcpListener;

use crate::metrics::Metrics;

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
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_buf_size.max(8192));
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Some(m) = &metrics {
                m.connections_accepted.inc();
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
