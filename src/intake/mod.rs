//! Intake: one HTTP request in, one response out, for both protocols.
//!
//! Owns the request plumbing the two protocols share: the route table (404),
//! the edge checks on the client ([`ClientGate`]: rate limits on the full
//! address, the user-agent filter, anonymization), bounded and timed body
//! reading, the wait for a spool write, the 503/429 answers, and status
//! accounting by route. Each protocol is a file of its own:
//!
//! - [`legacy`]: EventLogging beacons, `GET`/`POST /beacon/event?<json>;`,
//!   answered 204, one varnishkafka (or json) line per beacon;
//! - [`events`]: Event Platform events, `POST /v1/events`, EventGate's
//!   contract (201/202/207/400/500), validated against JSONSchemas.
//!
//! Must never: wait on Kafka (the sink's enqueue returns at once), answer a
//! 2xx before what was accepted is in the sink, or let request data reach a
//! metric label.

pub mod events;
pub mod legacy;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;

use crate::client_ip::{ClientIpResolver, Peer, PeerOrigin};
use crate::config::{Config, RateLimitExceeded};
use crate::filter::BeaconFilter;
use crate::listener::http1::BodyError as Http1BodyError;
use crate::metrics::{CounterSet, LabelSet, Metrics, RouteCounters};
use crate::rate_limit::{ClientRateLimiter, Limit};
use crate::sink::{EnqueueError, MessageSink};
use crate::spool::{AppendReply, SpoolError};

pub use legacy::{BeaconIntake, DropReason, Limits, Outcome};

/// The error bound bodies need for [`Limited`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a request waits for the spool to confirm a write.
const SPOOL_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("filter.user_agent_exclude: {0}")]
    Filter(String),
    #[error("client_ip.header: {0:?} is not a header name")]
    ClientIpHeader(String),
}

/// The protocol a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Beacon,
    Events,
}

struct Route {
    path: Box<str>,
    protocol: Protocol,
    counters: RouteCounters,
}

/// The beacon listener's request handler: routes to a protocol.
pub struct Intake<S> {
    routes: Vec<Route>,
    unrouted: RouteCounters,
    gate: ClientGate,
    beacons: BeaconIntake<S>,
    events: Option<events::EventIntake<S>>,
}

impl<S: MessageSink> Intake<S> {
    /// The beacon routes of a config whose hostname is resolved; the events
    /// routes are added with [`Intake::with_events`].
    pub fn new(config: &Config, sink: Arc<S>, metrics: Arc<Metrics>) -> Result<Self, IntakeError> {
        let routes = config
            .http
            .routes
            .iter()
            .map(|path| Route {
                path: path.as_str().into(),
                protocol: Protocol::Beacon,
                counters: metrics.route(path),
            })
            .collect();
        Ok(Self {
            routes,
            unrouted: metrics.route("other"),
            gate: ClientGate::new(config, &metrics)?,
            beacons: BeaconIntake::new(config, sink, metrics),
            events: None,
        })
    }

    /// Serves the Event Platform intake on `events.routes` too.
    pub fn with_events(mut self, events: events::EventIntake<S>, metrics: &Metrics) -> Self {
        for path in events.routes() {
            self.routes.push(Route {
                path: path.as_str().into(),
                protocol: Protocol::Events,
                counters: metrics.route(path),
            });
        }
        self.events = Some(events);
        self
    }

    /// Answers one HTTP request on the beacon listener.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path();
        let Some(route) = self.routes.iter().find(|r| *r.path == *path) else {
            self.unrouted.count(StatusCode::NOT_FOUND);
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let response = match (route.protocol, &self.events) {
            (Protocol::Events, Some(events)) => events.respond(req, peer, &self.gate).await,
            _ => {
                self.beacons
                    .respond(req, peer, &self.gate, self.events.as_ref())
                    .await
            }
        };
        route.counters.count(response.status());
        response
    }

    /// The synchronous beacon step (see [`BeaconIntake::accept`]), for a
    /// peer whose address the connection named.
    pub fn accept(
        &self,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        peer: IpAddr,
        received: crate::meta::ReceiveTime,
    ) -> Outcome {
        self.beacons.accept(
            raw_query,
            headers,
            Peer::from(peer),
            received,
            &self.gate,
            self.events.as_ref(),
        )
    }
}

/// What the edge checks decided about a client.
#[derive(Debug, Clone, Copy)]
pub enum Admission {
    /// Go on. `client_ip` is the address to write (anonymized when asked).
    Admitted { client_ip: IpAddr },
    /// Over a rate limit with `rate_limit.exceeded = "429"`.
    RateLimited { retry_after_secs: u64 },
    /// Dropped on purpose; answered as if accepted.
    Dropped(DropReason),
}

/// The edge checks on a client, shared by both protocols: who the client is
/// (trusted-proxy rule), rate limits on its full address, the user-agent
/// filter, and what is kept of its address.
pub struct ClientGate {
    resolver: ClientIpResolver,
    rate_limiter: ClientRateLimiter,
    rate_limit_exceeded: RateLimitExceeded,
    filter: BeaconFilter,
    rate_limited: CounterSet<Limit>,
    filtered_user_agent: Counter,
}

impl LabelSet for Limit {
    const NAME: &'static str = "limit";
    const ALL: &'static [Self] = &Limit::ALL;
    fn as_str(self) -> &'static str {
        Limit::as_str(self)
    }
}

impl ClientGate {
    fn new(config: &Config, metrics: &Metrics) -> Result<Self, IntakeError> {
        let header = http::HeaderName::from_bytes(config.client_ip.header.as_bytes())
            .map_err(|_| IntakeError::ClientIpHeader(config.client_ip.header.clone()))?;
        let rate_limiter = ClientRateLimiter::new(
            &config.rate_limit,
            metrics.edge.rate_limit_keys.clone(),
            metrics.edge.rate_limit_key_overflow.clone(),
        );
        rate_limiter.spawn_housekeeping();
        Ok(Self {
            resolver: ClientIpResolver::new(config.client_ip.trusted_proxies.clone(), header),
            rate_limiter,
            rate_limit_exceeded: config.rate_limit.exceeded,
            filter: BeaconFilter::new(&config.filter, &config.privacy)
                .map_err(IntakeError::Filter)?,
            rate_limited: metrics.counter_set(
                "beacons_rate_limited",
                "Requests over a rate limit (answered 429, or 2xx and dropped), by limit",
            ),
            filtered_user_agent: metrics.edge.filtered_user_agent.clone(),
        })
    }

    /// The client's address by the trusted-proxy rule (full, not anonymized).
    /// `peer.origin`: what the connection said of the peer (the request's
    /// [`PeerOrigin`] extension, see [`request_peer`]).
    pub fn client_ip(&self, peer: Peer, headers: &HeaderMap) -> IpAddr {
        self.resolver.resolve_from(peer.origin, peer.ip, headers)
    }

    /// Edge protection, in order: limits on the real address, then the
    /// user-agent filter; what is written keeps only the network part when
    /// anonymizing.
    pub fn admit(&self, client_ip: IpAddr, user_agent: &[u8]) -> Admission {
        if let Err(limited) = self.rate_limiter.check(client_ip) {
            self.rate_limited.inc(limited.limit);
            return match self.rate_limit_exceeded {
                RateLimitExceeded::TooManyRequests => Admission::RateLimited {
                    retry_after_secs: limited.retry_after_secs(),
                },
                RateLimitExceeded::SilentDrop => Admission::Dropped(DropReason::RateLimited),
            };
        }
        if self.filter.excludes_user_agent(user_agent) {
            self.filtered_user_agent.inc();
            return Admission::Dropped(DropReason::UserAgentExcluded);
        }
        Admission::Admitted {
            client_ip: self.filter.output_ip(client_ip),
        }
    }
}

/// The request's peer as the listener gave it: its origin is
/// [`PeerOrigin::Unnamed`] when the connection's PROXY header named no client
/// (the listener puts that on the request as an extension), else named.
pub fn request_peer(peer: SocketAddr, extensions: &http::Extensions) -> Peer {
    Peer {
        ip: peer.ip(),
        origin: extensions.get::<PeerOrigin>().copied().unwrap_or_default(),
    }
}

/// The user agent's bytes, empty when absent.
pub fn user_agent(headers: &HeaderMap) -> &[u8] {
    headers
        .get(USER_AGENT)
        .map_or(&b""[..], HeaderValue::as_bytes)
}

/// Why a valid message was not taken (answered 503), for
/// `beacond_*_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    ProducerQueueFull,
    ProducerError,
    SpoolFull,
    SpoolBusy,
    SpoolError,
    UnknownTopic,
    InvalidMessage,
    /// `events.max_buffered_bytes` of request bodies were held already.
    BodyBudget,
}

impl LabelSet for RefusalReason {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        RefusalReason::ProducerQueueFull,
        RefusalReason::ProducerError,
        RefusalReason::SpoolFull,
        RefusalReason::SpoolBusy,
        RefusalReason::SpoolError,
        RefusalReason::UnknownTopic,
        RefusalReason::InvalidMessage,
        RefusalReason::BodyBudget,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RefusalReason::ProducerQueueFull => "producer_queue_full",
            RefusalReason::ProducerError => "producer_error",
            RefusalReason::SpoolFull => "spool_full",
            RefusalReason::SpoolBusy => "spool_busy",
            RefusalReason::SpoolError => "spool_error",
            RefusalReason::UnknownTopic => "unknown_topic",
            RefusalReason::InvalidMessage => "invalid_message",
            RefusalReason::BodyBudget => "body_budget",
        }
    }
}

impl From<&EnqueueError> for RefusalReason {
    fn from(e: &EnqueueError) -> Self {
        match e {
            EnqueueError::QueueFull => RefusalReason::ProducerQueueFull,
            EnqueueError::Refused(_) => RefusalReason::ProducerError,
            EnqueueError::Spool(SpoolError::Full) => RefusalReason::SpoolFull,
            EnqueueError::Spool(SpoolError::Busy) => RefusalReason::SpoolBusy,
            EnqueueError::Spool(_) => RefusalReason::SpoolError,
            EnqueueError::UnknownTopic => RefusalReason::UnknownTopic,
            EnqueueError::Invalid(_) => RefusalReason::InvalidMessage,
        }
    }
}

/// Waits for the spool to confirm a write (the spool thread's group commit;
/// no I/O here). A stalled disk must not hold requests forever: after
/// [`SPOOL_REPLY_TIMEOUT`] the answer is 503 (the line may still be written
/// and delivered: at-least-once).
pub async fn spooled(reply: AppendReply) -> Result<(), EnqueueError> {
    match tokio::time::timeout(SPOOL_REPLY_TIMEOUT, reply).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_)) => Err(SpoolError::Closed.into()),
        Err(_) => Err(SpoolError::Busy.into()),
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the limit, announced (`Content-Length`) or as read: 413.
    #[error("request body larger than allowed")]
    TooLarge,
    /// Not all there within the body timeout: 408.
    #[error("request body not received in time")]
    Timeout,
    /// The client closed (or the connection broke) before the body ended:
    /// nobody is left to read an answer; counted on its own, answered 400
    /// with `Connection: close` for the record.
    #[error("connection closed before the request body ended")]
    Incomplete,
    /// The body's framing is broken (bad chunked encoding): 400, and the
    /// connection is closed (its next request cannot be found).
    #[error("malformed request body framing")]
    Malformed,
}

/// Reads a whole body, at most `max` bytes, within `timeout`.
pub async fn read_body<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let hint = body.size_hint();
    if hint.lower() > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut body = std::pin::pin!(Limited::new(body, max));
        // One frame (the usual case): no copy.
        let mut first: Option<Bytes> = None;
        let mut rest: Option<BytesMut> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(classify)?;
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            // Zero-copy for hyper's `Bytes` frames.
            let data = data.copy_to_bytes(data.remaining());
            match (&mut first, &mut rest) {
                (None, _) => first = Some(data),
                (Some(f), None) => {
                    let mut buf = BytesMut::with_capacity(
                        (f.len() + data.len()).max(hint.lower() as usize).min(max),
                    );
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&data);
                    rest = Some(buf);
                }
                (Some(_), Some(buf)) => buf.extend_from_slice(&data),
            }
        }
        Ok(match (first, rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout)?
}

/// Reads and discards a body (sendBeacon's is empty), so the connection can
/// be reused; nothing is buffered.
pub async fn drain_body<B>(body: B, max: usize, timeout: Duration) -> Result<(), BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(());
    }
    if body.size_hint().lower() > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let discard = async {
        let mut body = std::pin::pin!(Limited::new(body, max));
        while let Some(frame) = body.frame().await {
            frame.map_err(classify)?;
        }
        Ok(())
    };
    tokio::time::timeout(timeout, discard)
        .await
        .map_err(|_| BodyError::Timeout)?
}

/// What a body error means. The listener's HTTP/1 driver says so itself
/// ([`Http1BodyError`]: malformed chunked framing, or cut short). hyper
/// (HTTP/2) reports a body cut short by the peer as `UnexpectedEof` (or an
/// incomplete message, or a reset), and broken framing as
/// `InvalidData`/`InvalidInput`, an `io::Error` in the source chain.
fn classify(e: BoxError) -> BodyError {
    if e.is::<http_body_util::LengthLimitError>() {
        return BodyError::TooLarge;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cause {
        if let Some(h1) = err.downcast_ref::<Http1BodyError>() {
            return match h1 {
                Http1BodyError::Malformed(_) => BodyError::Malformed,
                Http1BodyError::Incomplete | Http1BodyError::Io(_) => BodyError::Incomplete,
            };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    BodyError::Malformed
                }
                _ => BodyError::Incomplete,
            };
        }
        cause = err.source();
    }
    BodyError::Incomplete
}

/// An answer that also closes the connection: its framing cannot be trusted.
pub fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A plain-text answer.
pub fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 503 with `Retry-After: 1`: the sink could not take what was sent.
pub fn overloaded() -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n");
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// 429 with `Retry-After` in seconds.
pub fn too_many_requests(retry_after_secs: u64) -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// An empty answer with `status`.
pub fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_sound() {
        crate::metrics::check_label_set::<Limit>().unwrap();
        crate::metrics::check_label_set::<RefusalReason>().unwrap();
        for e in [
            EnqueueError::QueueFull,
            EnqueueError::Refused("x".into()),
            EnqueueError::Spool(SpoolError::Full),
            EnqueueError::Spool(SpoolError::Busy),
            EnqueueError::Spool(SpoolError::Closed),
            EnqueueError::UnknownTopic,
            EnqueueError::Invalid(crate::sink::RecordError::TopicLength(0)),
        ] {
            assert!(RefusalReason::ALL.contains(&RefusalReason::from(&e)));
        }
    }

    #[tokio::test]
    async fn bodies_are_read_whole_within_bounds() {
        let t = Duration::from_secs(1);
        let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(read_body(body, 100, t).await.unwrap(), &b"{\"a\":1}"[..]);
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(read_body(body, 9, t).await, Err(BodyError::TooLarge));
        let body = Full::new(Bytes::new());
        assert_eq!(read_body(body, 9, t).await.unwrap(), Bytes::new());
        // Several frames are joined.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"[1,")).await;
            let _ = tx.send_data(Bytes::from_static(b"2]")).await;
        });
        assert_eq!(read_body(body, 100, t).await.unwrap(), &b"[1,2]"[..]);
    }

    #[test]
    fn body_errors_are_told_apart() {
        use std::io::{Error, ErrorKind};
        let boxed = |e: Error| -> BoxError { Box::new(e) };
        // (TooLarge, from `Limited`: bodies_are_read_whole_within_bounds.)
        assert_eq!(
            classify(boxed(Error::new(ErrorKind::UnexpectedEof, "eof"))),
            BodyError::Incomplete
        );
        assert_eq!(
            classify(boxed(Error::new(ErrorKind::ConnectionReset, "reset"))),
            BodyError::Incomplete
        );
        assert_eq!(
            classify(boxed(Error::new(ErrorKind::InvalidInput, "bad chunk size"))),
            BodyError::Malformed
        );
        assert_eq!(
            classify(boxed(Error::new(ErrorKind::InvalidData, "bad chunk"))),
            BodyError::Malformed
        );
        // Wrapped, as hyper wraps its decoder's io::Error.
        #[derive(Debug, thiserror::Error)]
        #[error("body error")]
        struct Wrapper(#[source] Error);
        assert_eq!(
            classify(Box::new(Wrapper(Error::new(ErrorKind::InvalidData, "x")))),
            BodyError::Malformed
        );
        assert_eq!(classify("connection error".into()), BodyError::Incomplete);
        // The HTTP/1 driver's own errors, wrapped or not.
        use crate::listener::http1::chunked::ChunkedError;
        assert_eq!(
            classify(Box::new(Http1BodyError::Malformed(ChunkedError::Size))),
            BodyError::Malformed
        );
        assert_eq!(
            classify(Box::new(Http1BodyError::Incomplete)),
            BodyError::Incomplete
        );
        // A reset is a client gone, even though it is an io::Error inside.
        assert_eq!(
            classify(Box::new(Http1BodyError::Io(Error::new(
                ErrorKind::InvalidData,
                "x"
            )))),
            BodyError::Incomplete
        );
    }

    #[tokio::test]
    async fn a_body_whose_sender_fails_is_incomplete() {
        let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        tx.abort(Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "client gone",
        )));
        let got = read_body(body, 100, Duration::from_secs(1)).await;
        assert_eq!(got, Err(BodyError::Incomplete));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_times_out() {
        let (_tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let got = read_body(body, 100, Duration::from_secs(5)).await;
        assert_eq!(got, Err(BodyError::Timeout));
    }
}
