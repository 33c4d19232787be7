//! The beacon endpoint: one HTTP request in, one response out.
//!
//! Owns the path a beacon takes inside the process: route and method checks,
//! the bounded body drain, decoding ([`crate::decode`]), client metadata
//! ([`crate::client_ip`], [`crate::meta`]), formatting ([`crate::format`]),
//! the hand-off to the sink, and the choice of status code. Every response is
//! counted by status, every refusal by reason.
//!
//! Must never: wait on Kafka (the sink's enqueue returns at once), answer 204
//! before the line is in the sink, or let request data reach a metric label.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

/// The error bound bodies need for [`Limited`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

use crate::client_ip::ClientIpResolver;
use crate::config::RateLimitExceeded;
use crate::config::{Config, Partitioning};
use crate::decode::{decode_beacon, RejectReason};
use crate::filter::BeaconFilter;
use crate::format::{write_error_record, OutputFormat};
use crate::meta::{BeaconMeta, ReceiveTime, SequenceCounter};
use crate::metrics::Metrics;
use crate::rate_limit::ClientRateLimiter;
use crate::sink::{EnqueueError, Enqueued, MessageSink, OutboundMessage};
use crate::spool::{AppendReply, SpoolError};

/// What became of a beacon.
#[derive(Debug)]
pub enum Outcome {
    /// In the sink; answered 204.
    Accepted,
    /// On its way to the spool; answered 204 once written, 503 if refused.
    Spooling(AppendReply),
    /// Malformed; answered 4xx.
    Rejected(RejectReason),
    /// Valid, but the sink could not take it; answered 503.
    Refused(EnqueueError),
    /// Over a rate limit (`rate_limit.exceeded = "429"`); answered 429 with
    /// `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// Dropped on purpose, not decoded; answered 204 all the same.
    Dropped(DropReason),
}

/// Why a beacon was dropped with a 204.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Over a rate limit, with `rate_limit.exceeded = "204"`.
    RateLimited,
    /// The user agent matched `filter.user_agent_exclude`.
    UserAgentExcluded,
}

/// The request limits of the beacon endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_query_bytes: usize,
    pub max_user_agent_bytes: usize,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

pub struct Intake<S> {
    routes: Vec<Box<str>>,
    limits: Limits,
    resolver: ClientIpResolver,
    format: OutputFormat,
    partitioning: Partitioning,
    hostname: Box<str>,
    seq: SequenceCounter,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
    rate_limiter: ClientRateLimiter,
    rate_limit_exceeded: RateLimitExceeded,
    filter: BeaconFilter,
}

/// Per-thread scratch space, reused by every beacon handled on the thread.
#[derive(Default)]
struct Scratch {
    decoded: Vec<u8>,
    line: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

const ALLOWED_METHODS: &str = "GET, HEAD, POST";
/// How long a request waits for the spool to confirm a write.
const SPOOL_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl<S: MessageSink> Intake<S> {
    /// Builds the endpoint from a config whose hostname is resolved.
    pub fn new(config: &Config, sink: Arc<S>, metrics: Arc<Metrics>) -> Self {
        let http = &config.http;
        Self {
            routes: http.routes.iter().map(|r| r.as_str().into()).collect(),
            limits: Limits {
                max_query_bytes: http.max_query_bytes,
                max_user_agent_bytes: http.max_user_agent_bytes,
                max_body_bytes: http.max_body_bytes,
                body_timeout: Duration::from_millis(http.header_read_timeout_ms),
            },
            resolver: ClientIpResolver::new(
                config.client_ip.trusted_proxies.clone(),
                // Validated by Config::parse.
                http::HeaderName::from_bytes(config.client_ip.header.as_bytes())
                    .unwrap_or(http::HeaderName::from_static("x-forwarded-for")),
            ),
            format: config.output.format,
            partitioning: config.kafka.partitioning,
            hostname: config
                .output
                .hostname
                .as_deref()
                .unwrap_or("localhost")
                .into(),
            seq: SequenceCounter::default(),
            sink,
            rate_limiter: {
                let limiter = ClientRateLimiter::new(
                    &config.rate_limit,
                    metrics.edge.rate_limit_keys.clone(),
                    metrics.edge.rate_limit_key_overflow.clone(),
                );
                limiter.spawn_housekeeping();
                limiter
            },
            rate_limit_exceeded: config.rate_limit.exceeded,
            filter: BeaconFilter::new(&config.filter, &config.privacy),
            metrics,
        }
    }

    /// Answers one HTTP request on the beacon listener.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let response = self.respond(req, peer).await;
        self.metrics.count_response(response.status());
        response
    }

    async fn respond<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path();
        if !self.routes.iter().any(|r| **r == *path) {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD | Method::POST) {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return r;
        }
        let (parts, body) = req.into_parts();
        if let Err(status) = self.drain_body(body).await {
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                return self.reject_response(RejectReason::BodyTooLarge);
            }
            return plain(status, "request body not received in time\n");
        }
        let outcome = self.accept(
            parts.uri.query(),
            &parts.headers,
            peer.ip(),
            ReceiveTime::now(),
        );
        let outcome = match outcome {
            Outcome::Spooling(reply) => self.spooled(reply).await,
            other => other,
        };
        match outcome {
            // Dropped on purpose (filter, silent rate limit) looks accepted.
            Outcome::Accepted | Outcome::Dropped(_) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Outcome::Rejected(reason) => self.reject_response(reason),
            Outcome::Refused(_) | Outcome::Spooling(_) => {
                let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later\n");
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            Outcome::RateLimited { retry_after_secs } => {
                let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                r
            }
        }
    }

    fn reject_response(&self, reason: RejectReason) -> Response<Full<Bytes>> {
        plain(reason.status(), reason.body())
    }

    /// Reads and discards a body (sendBeacon's is empty), so the connection
    /// can be reused; refuses one over `max_body_bytes` or too slow.
    async fn drain_body<B>(&self, body: B) -> Result<(), StatusCode>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(());
        }
        let max = self.limits.max_body_bytes;
        if body.size_hint().lower() > max as u64 {
            self.metrics.count_rejected(RejectReason::BodyTooLarge);
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Frames are dropped as they arrive: nothing is buffered.
        let discard = async {
            let mut body = std::pin::pin!(Limited::new(body, max));
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<(), BoxError>(())
        };
        match tokio::time::timeout(self.limits.body_timeout, discard).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.metrics.count_rejected(RejectReason::BodyTooLarge);
                Err(StatusCode::PAYLOAD_TOO_LARGE)
            }
            Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        }
    }

    /// The synchronous heart of the endpoint: validates a beacon, attaches its
    /// metadata, formats it and hands it to the sink.
    pub fn accept(
        &self,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        peer: IpAddr,
        received: ReceiveTime,
    ) -> Outcome {
        let raw_query = raw_query.unwrap_or("");
        let client_ip = self.resolver.resolve(peer, headers);
        let user_agent = headers
            .get(USER_AGENT)
            .map_or(&b""[..], HeaderValue::as_bytes);
        // Edge protection: limits on the real address, then filters; what
        // is written keeps only the network part when anonymizing.
        if let Err(limited) = self.rate_limiter.check(client_ip) {
            self.metrics.edge.count_rate_limited(limited.limit);
            return match self.rate_limit_exceeded {
                RateLimitExceeded::TooManyRequests => Outcome::RateLimited {
                    retry_after_secs: limited.retry_after_secs(),
                },
                RateLimitExceeded::SilentDrop => Outcome::Dropped(DropReason::RateLimited),
            };
        }
        if self.filter.excludes_user_agent(user_agent) {
            self.metrics.edge.filtered_user_agent.inc();
            return Outcome::Dropped(DropReason::UserAgentExcluded);
        }
        let client_ip = self.filter.output_ip(client_ip);
        let mut meta = BeaconMeta {
            received,
            seq: None,
            client_ip,
            user_agent,
            hostname: &self.hostname,
        };
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // Not reachable: nothing below re-enters. Fall back to fresh buffers.
                return self.accept_with(raw_query, &mut meta, &mut Scratch::default());
            };
            self.accept_with(raw_query, &mut meta, &mut scratch)
        })
    }

    fn accept_with(
        &self,
        raw_query: &str,
        meta: &mut BeaconMeta<'_>,
        scratch: &mut Scratch,
    ) -> Outcome {
        if meta.user_agent.len() > self.limits.max_user_agent_bytes {
            meta.user_agent = &meta.user_agent[..self.limits.max_user_agent_bytes];
            return self.reject(
                RejectReason::UserAgentTooLong,
                raw_query,
                meta,
                &mut scratch.line,
            );
        }
        let capsule =
            match decode_beacon(raw_query, self.limits.max_query_bytes, &mut scratch.decoded) {
                Ok(capsule) => capsule,
                Err(reason) => return self.reject(reason, raw_query, meta, &mut scratch.line),
            };
        meta.seq = Some(self.seq.next());
        scratch.line.clear();
        self.format
            .write_line(raw_query, capsule, meta, &mut scratch.line);
        let mut key_buf = [0u8; crate::sink::MAX_KEY_BYTES];
        let key = match self.partitioning {
            Partitioning::Random => None,
            Partitioning::ClientIp => Some(ip_text(meta.client_ip, &mut key_buf)),
        };
        match self
            .sink
            .enqueue(&OutboundMessage::beacon(&scratch.line, key))
        {
            Ok(Enqueued::Queued) => {
                self.metrics.accepted.inc();
                Outcome::Accepted
            }
            Ok(Enqueued::Spooling(reply)) => Outcome::Spooling(reply),
            Err(e) => self.refuse(e),
        }
    }

    /// Waits for the spool to confirm the write (the spool thread's group
    /// commit; no I/O here) before the beacon counts as accepted.
    async fn spooled(&self, reply: AppendReply) -> Outcome {
        // A stalled disk must not hold requests forever: answer 503 (the
        // line may still be written and delivered: at-least-once).
        match tokio::time::timeout(SPOOL_REPLY_TIMEOUT, reply).await {
            Ok(Ok(Ok(()))) => {
                self.metrics.accepted.inc();
                Outcome::Accepted
            }
            Ok(Ok(Err(e))) => self.refuse(e.into()),
            Ok(Err(_)) => self.refuse(SpoolError::Closed.into()),
            Err(_) => self.refuse(SpoolError::Busy.into()),
        }
    }

    fn refuse(&self, e: EnqueueError) -> Outcome {
        self.metrics.count_refused(&e);
        Outcome::Refused(e)
    }

    fn reject(
        &self,
        reason: RejectReason,
        raw_query: &str,
        meta: &BeaconMeta<'_>,
        line: &mut Vec<u8>,
    ) -> Outcome {
        self.metrics.count_rejected(reason);
        line.clear();
        write_error_record(reason, raw_query, meta, line);
        self.sink.report_rejection(line);
        Outcome::Rejected(reason)
    }
}

/// Writes an IP's text form into `buf` and returns it.
fn ip_text(ip: IpAddr, buf: &mut [u8; crate::sink::MAX_KEY_BYTES]) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    &buf[..len]
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
