//! One accepted connection, from its first byte to its end: the PROXY
//! header (when on), the write timeout, the TLS handshake (when `[http.tls]`
//! is set), then HTTP/1.1 (this crate's driver, [`super::http1`]), or HTTP/2
//! (hyper) when the client chose `h2` by ALPN, and what its end means for
//! the counters.
//!
//! HTTP/2 is offered over TLS only (browsers speak it nowhere else) and runs
//! with the limits of `[http.h2]`: concurrent streams, header list size, the
//! streams a client may reset before they are accepted (rapid reset,
//! CVE-2023-44487) and the streams the server resets for a client's errors;
//! a client past either reset limit gets a GOAWAY with ENHANCE_YOUR_CALM, and
//! its connection is counted in `beacond_h2_connections_closed_total`.
//!
//! Must never: serve HTTP before the PROXY header is read and trusted, wait
//! for a handshake longer than the header read timeout, let one connection's
//! flood reach another connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::http1::{self, conn::Http1Settings, io::Io};
use super::write_timeout::{is_write_timeout, is_write_timeout_io, WriteTimeout};
use super::{ConnectionClose, ConnectionRefusal, ListenerCounters, RequestBody};
use crate::config::H2Config;
use crate::metrics::{LabelSet, Metrics};
use crate::proxy_protocol::{self, PeerOrigin, ProxyError};
use crate::tls::ALPN_H2;

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// Not done within the header read timeout.
    Timeout,
    /// Anything the client sent that is not a TLS handshake we can finish
    /// (plain HTTP, no shared version or cipher, an alert from a client that
    /// does not trust the certificate).
    Refused,
}

impl LabelSet for HandshakeFailure {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[HandshakeFailure::Timeout, HandshakeFailure::Refused];
    fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Refused => "refused",
        }
    }
}

/// Why an HTTP/2 connection ended with an error, from the h2 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum H2Close {
    /// GOAWAY ENHANCE_YOUR_CALM: a reset flood (rapid reset, or too many
    /// streams reset for the client's errors).
    EnhanceYourCalm,
    /// A protocol error of the client's (bad frames, streams over the limit
    /// opened regardless, a header list over the limit...).
    ProtocolError,
    /// Flow control or frame size violated.
    FlowControl,
    /// Anything else (I/O errors included).
    Other,
}

impl LabelSet for H2Close {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        H2Close::EnhanceYourCalm,
        H2Close::ProtocolError,
        H2Close::FlowControl,
        H2Close::Other,
    ];
    fn as_str(self) -> &'static str {
        match self {
            H2Close::EnhanceYourCalm => "enhance_your_calm",
            H2Close::ProtocolError => "protocol_error",
            H2Close::FlowControl => "flow_control",
            H2Close::Other => "other",
        }
    }
}

impl H2Close {
    fn of(e: &hyper::Error) -> Self {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                return match h2.reason() {
                    Some(h2::Reason::ENHANCE_YOUR_CALM) => H2Close::EnhanceYourCalm,
                    Some(h2::Reason::PROTOCOL_ERROR | h2::Reason::COMPRESSION_ERROR) => {
                        H2Close::ProtocolError
                    }
                    Some(h2::Reason::FLOW_CONTROL_ERROR | h2::Reason::FRAME_SIZE_ERROR) => {
                        H2Close::FlowControl
                    }
                    _ => H2Close::Other,
                };
            }
            source = s.source();
        }
        H2Close::Other
    }
}

/// What every connection of a listener shares.
pub(super) struct ConnectionContext {
    /// HTTP/1.x: this crate's driver ([`super::http1`]).
    pub h1: Http1Settings,
    /// `Some` with TLS: HTTP/2 for the connections that choose it.
    pub h2: Option<http2::Builder<TokioExecutor>>,
    pub tls: Option<TlsAcceptor>,
    pub proxy_trusted: Option<Arc<[IpNet]>>,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub metrics: Option<Arc<Metrics>>,
    pub counters: Option<ListenerCounters>,
}

/// hyper's HTTP/2 server with the edge's limits.
pub(super) fn h2_builder(limits: &H2Config, max_header_list: u32) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_header_list_size(max_header_list);
    b
}

impl ConnectionContext {
    /// Serves one accepted connection until it ends. `shutdown` turns true
    /// when the listener stops (idle connections close, busy ones finish
    /// their request).
    pub async fn serve<H, F>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handler: H,
        mut shutdown: watch::Receiver<bool>,
    ) where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        if let Some(m) = &self.metrics {
            m.connections_accepted.inc();
        }
        let (stream, peer, origin) = match &self.proxy_trusted {
            None => (
                proxy_protocol::Prefixed::new(Vec::new(), stream),
                peer,
                PeerOrigin::Named,
            ),
            Some(trusted) => {
                let is_trusted = trusted
                    .iter()
                    .any(|n| n.contains(&peer.ip().to_canonical()));
                let accepted = Box::pin(proxy_protocol::accept(
                    stream,
                    peer,
                    is_trusted,
                    self.header_timeout,
                ))
                .await;
                match accepted {
                    Ok(accepted) => (accepted.stream, accepted.peer, accepted.origin),
                    Err(e) => {
                        if let (Some(c), false) = (&self.counters, e == ProxyError::Closed) {
                            c.refusals.inc(ConnectionRefusal::Proxy(e));
                        }
                        tracing::debug!(%peer, error = %e, "connection closed before HTTP");
                        return;
                    }
                }
            }
        };
        let stream = WriteTimeout::new(stream, self.write_timeout);
        match &self.tls {
            None => {
                self.serve_h1(Box::new(stream), peer, origin, &handler, &mut shutdown)
                    .await
            }
            // Boxed: the handshake's and HTTP/2's state is large, and plain
            // connections should not carry it.
            Some(acceptor) => {
                Box::pin(self.serve_tls(acceptor, stream, peer, origin, handler, shutdown)).await
            }
        }
    }

    async fn serve_tls<H, F>(
        &self,
        acceptor: &TlsAcceptor,
        stream: WriteTimeout<proxy_protocol::Prefixed<TcpStream>>,
        peer: SocketAddr,
        origin: PeerOrigin,
        handler: H,
        mut shutdown: watch::Receiver<bool>,
    ) where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handshake = tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.handshake_failed(peer, HandshakeFailure::Refused, &e),
            Err(_) => {
                let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return self.handshake_failed(peer, HandshakeFailure::Timeout, &e);
            }
        };
        let is_h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        match (&self.h2, is_h2) {
            (Some(h2), true) => {
                let service = service(handler, peer, origin);
                let conn = h2.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let open = OpenGauge::new(self.metrics.as_deref());
                let mut stopping = false;
                let result = loop {
                    tokio::select! {
                        result = conn.as_mut() => break result,
                        _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                            // GOAWAY: streams in flight finish, no new ones.
                            conn.as_mut().graceful_shutdown();
                            stopping = true;
                        }
                    }
                };
                drop(open);
                if let Err(e) = &result {
                    self.ended_with(peer, is_write_timeout(e), e, None);
                    if let Some(c) = &self.counters {
                        c.h2_closes.inc(H2Close::of(e));
                    }
                }
            }
            _ => {
                self.serve_h1(Box::new(stream), peer, origin, &handler, &mut shutdown)
                    .await
            }
        }
    }

    async fn serve_h1<H, F>(
        &self,
        io: Box<dyn Io>,
        peer: SocketAddr,
        origin: PeerOrigin,
        handler: &H,
        shutdown: &mut watch::Receiver<bool>,
    ) where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let open = OpenGauge::new(self.metrics.as_deref());
        let result = http1::conn::serve(io, peer, origin, handler, self.h1, shutdown).await;
        drop(open);
        if let Err(e) = &result {
            let write_timeout = e.io().is_some_and(is_write_timeout_io);
            self.ended_with(peer, write_timeout, e, e.answered());
        }
    }

    fn handshake_failed(&self, peer: SocketAddr, why: HandshakeFailure, e: &std::io::Error) {
        if let Some(c) = &self.counters {
            c.handshakes_failed.inc(why);
        }
        tracing::debug!(%peer, error = %e, "TLS handshake failed");
    }

    /// Counts a connection that ended with an error; `answered` is the
    /// status the listener wrote itself, if it did.
    fn ended_with(
        &self,
        peer: SocketAddr,
        write_timeout: bool,
        e: &dyn std::error::Error,
        answered: Option<StatusCode>,
    ) {
        if let Some(m) = &self.metrics {
            m.connection_errors.inc();
        }
        if let (Some(c), Some(status)) = (&self.counters, answered) {
            c.unparsed.count(status);
        }
        if write_timeout {
            if let Some(c) = &self.counters {
                c.closes.inc(ConnectionClose::WriteTimeout);
            }
            tracing::debug!(%peer, "response write made no progress: connection closed");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The hyper service of one HTTP/2 connection: the handler with the
/// connection's peer; when a trusted balancer's PROXY header named no
/// client, each request carries `PeerOrigin::Unnamed`, and the intake then
/// believes no forwarding header.
fn service<H, F>(
    handler: H,
    peer: SocketAddr,
    origin: PeerOrigin,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(RequestBody::Http2);
        if origin == PeerOrigin::Unnamed {
            req.extensions_mut().insert(origin);
        }
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        crate::metrics::check_label_set::<HandshakeFailure>().unwrap();
        crate::metrics::check_label_set::<H2Close>().unwrap();
    }
}
