//! The Event Platform protocol: `POST /v1/events[?hasty=true]`, EventGate's
//! HTTP contract, with the events validated at the edge.
//!
//! Owns what is particular to events: the method and CORS rules, the content
//! types, the bounded body read (413/408), parsing (an object or an array of
//! objects, 400 otherwise), the per-request event cap (413), the hand-off of
//! each verdict of [`crate::validation`] to the sink (valid events to their
//! stream's topic, error events to the error stream), the wait for spool
//! writes, and the answer: 202 (hasty), 201, 207, 400, 500, 503.
//!
//! Must never: answer 2xx before every valid event of the request is in the
//! producer's queue or written to the spool; read a file (the rules are
//! loaded at start-up and on reload, off the request path); let a client's
//! stream name or schema URI reach a metric label.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ALLOW, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{
    closing, empty, overloaded, plain, read_body, request_peer, spooled, too_many_requests,
    user_agent, Admission, BodyError, BoxError, ClientGate, RefusalReason,
};
use crate::config::Config;
use crate::metrics::{CounterSet, LabelSet, Metrics};
use crate::sink::{Destination, EnqueueError, Enqueued, MessageSink, OutboundMessage};
use crate::validation::{
    errored_after_validation, Accepted, ErrorReason, EventContext, EventValidator, EventVerdict,
    InvalidReason,
};

const ALLOWED_METHODS: &str = "POST, OPTIONS";
const CORS_ALLOW_HEADERS: &str = "accept, x-requested-with, content-type, x-request-id";
/// Events validated per turn of the runtime before yielding.
const EVENTS_PER_TURN: usize = 64;

/// What librdkafka may add to a message's size before `message.max.bytes`.
const MESSAGE_OVERHEAD: usize = 512;
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why a whole request was refused before any event was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestRejection {
    UnsupportedContentType,
    BodyTooLarge,
    BodyTimeout,
    /// The client hung up (or the connection broke) before the body ended.
    BodyIncomplete,
    /// The body's framing is broken (bad chunked encoding).
    BodyMalformed,
    EmptyBody,
    MalformedJson,
    NotObjectOrArray,
    EmptyArray,
    TooManyEvents,
}

impl LabelSet for RequestRejection {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        RequestRejection::UnsupportedContentType,
        RequestRejection::BodyTooLarge,
        RequestRejection::BodyTimeout,
        RequestRejection::BodyIncomplete,
        RequestRejection::BodyMalformed,
        RequestRejection::EmptyBody,
        RequestRejection::MalformedJson,
        RequestRejection::NotObjectOrArray,
        RequestRejection::EmptyArray,
        RequestRejection::TooManyEvents,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RequestRejection::UnsupportedContentType => "unsupported_content_type",
            RequestRejection::BodyTooLarge => "body_too_large",
            RequestRejection::BodyTimeout => "body_timeout",
            RequestRejection::BodyIncomplete => "body_incomplete",
            RequestRejection::BodyMalformed => "body_malformed",
            RequestRejection::EmptyBody => "empty_body",
            RequestRejection::MalformedJson => "malformed_json",
            RequestRejection::NotObjectOrArray => "not_object_or_array",
            RequestRejection::EmptyArray => "empty_array",
            RequestRejection::TooManyEvents => "too_many_events",
        }
    }
}

impl RequestRejection {
    fn status(self) -> StatusCode {
        match self {
            RequestRejection::UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestRejection::BodyTooLarge | RequestRejection::TooManyEvents => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RequestRejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn body(self) -> &'static str {
        match self {
            RequestRejection::UnsupportedContentType => {
                "content type must be application/json, text/plain or application/reports+json\n"
            }
            RequestRejection::BodyTooLarge => "request body larger than events.max_body_bytes\n",
            RequestRejection::BodyTimeout => "request body not received in time\n",
            RequestRejection::BodyIncomplete => "request body cut short\n",
            RequestRejection::BodyMalformed => "malformed request body (chunked encoding)\n",
            RequestRejection::EmptyBody => "empty request body: send a JSON object or array\n",
            RequestRejection::MalformedJson => "request body is not valid JSON\n",
            RequestRejection::NotObjectOrArray => {
                "request body must be a JSON object or an array of objects\n"
            }
            RequestRejection::EmptyArray => "request body is an empty array\n",
            RequestRejection::TooManyEvents => {
                "more events in one request than events.max_events_per_request\n"
            }
        }
    }
}

/// The outcome of one event, for `beacond_events_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOutcome {
    Accepted,
    Invalid,
    Error,
}

impl EventOutcome {
    const ALL: [EventOutcome; 3] = [
        EventOutcome::Accepted,
        EventOutcome::Invalid,
        EventOutcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Invalid => "invalid",
            EventOutcome::Error => "error",
        }
    }
}

impl LabelSet for InvalidReason {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &InvalidReason::ALL;
    fn as_str(self) -> &'static str {
        InvalidReason::as_str(self)
    }
}

impl LabelSet for ErrorReason {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &ErrorReason::ALL;
    fn as_str(self) -> &'static str {
        ErrorReason::as_str(self)
    }
}

/// Events by outcome and stream-config key (a bounded label: keys come from
/// the config, never from the client), resolved once per config load so
/// the request path neither allocates nor locks for them.
#[derive(Debug)]
struct StreamCounters {
    by_key: HashMap<Arc<str>, [Counter; 3]>,
    /// Events whose stream is not in the config (or not known).
    unknown: [Counter; 3],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StreamLabels {
    outcome: &'static str,
    stream: String,
}

type StreamFamily = prometheus_client::metrics::family::Family<StreamLabels, Counter>;

impl StreamCounters {
    fn new<'a>(family: &StreamFamily, keys: impl Iterator<Item = &'a Arc<str>>) -> Self {
        let resolve = |stream: &str| {
            EventOutcome::ALL.map(|o| {
                family
                    .get_or_create(&StreamLabels {
                        outcome: o.as_str(),
                        stream: crate::metrics::escape_label_value(stream),
                    })
                    .clone()
            })
        };
        Self {
            by_key: keys.map(|k| (k.clone(), resolve(k))).collect(),
            unknown: resolve("unknown"),
        }
    }

    fn count(&self, key: Option<&str>, outcome: EventOutcome) {
        let counters = key
            .and_then(|k| self.by_key.get(k))
            .unwrap_or(&self.unknown);
        let i = EventOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        counters[i].inc();
    }
}

/// The rules in force: the validator and its stream counters, swapped as a
/// whole on reload.
pub struct EventRules {
    pub validator: EventValidator,
    counters: StreamCounters,
}

/// The event counters that do not depend on the rules.
#[derive(Debug)]
struct EventMetrics {
    stream_family: StreamFamily,
    requests_rejected: CounterSet<RequestRejection>,
    invalid: CounterSet<InvalidReason>,
    errored: CounterSet<ErrorReason>,
    refused: CounterSet<RefusalReason>,
    error_events_refused: Counter,
    validation_seconds: Histogram,
    schemas: Gauge,
    streams: Gauge,
}

impl EventMetrics {
    fn new(metrics: &Metrics) -> Self {
        let stream_family = StreamFamily::default();
        metrics.register(
            "events",
            "Events by outcome (accepted, invalid, error) and stream-config key",
            stream_family.clone(),
        );
        let validation_seconds = Histogram::new([
            0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
            0.025,
        ]);
        metrics.register(
            "event_validation_seconds",
            "Time to fill in, validate and serialize one event",
            validation_seconds.clone(),
        );
        let schemas = Gauge::default();
        metrics.register(
            "event_schemas",
            "Schemas loaded and compiled",
            schemas.clone(),
        );
        let streams = Gauge::default();
        metrics.register(
            "event_streams",
            "Keys in the stream config",
            streams.clone(),
        );
        let error_events_refused = Counter::default();
        metrics.register(
            "event_error_events_refused",
            "Error events the sink could not take (the invalid event is still counted)",
            error_events_refused.clone(),
        );
        Self {
            stream_family,
            requests_rejected: metrics.counter_set(
                "event_requests_rejected",
                "Events requests refused whole with a 4xx, by reason",
            ),
            invalid: metrics.counter_set("events_invalid", "Invalid events, by reason"),
            errored: metrics.counter_set(
                "events_errored",
                "Events that could not be processed (EventGate's `error`), by reason",
            ),
            refused: metrics.counter_set(
                "events_refused",
                "Valid events the sink could not take (request answered 503), by reason",
            ),
            error_events_refused,
            validation_seconds,
            schemas,
            streams,
        }
    }
}

/// Who may call from another origin.
#[derive(Debug, Clone)]
enum Cors {
    Off,
    Any,
    Origins(Vec<HeaderValue>),
}

impl Cors {
    fn new(origins: &[String]) -> Self {
        if origins.is_empty() {
            Cors::Off
        } else if origins.iter().any(|o| o == "*") {
            Cors::Any
        } else {
            Cors::Origins(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request, if allowed.
    fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        match self {
            Cors::Off => None,
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::Origins(list) => {
                let origin = headers.get(ORIGIN)?;
                list.iter().find(|o| *o == origin).cloned()
            }
        }
    }

    fn decorate(&self, request: &HeaderMap, response: &mut Response<Full<Bytes>>) {
        if let Some(origin) = self.allow_origin(request) {
            let h = response.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if matches!(self, Cors::Origins(_)) {
                h.insert(VARY, HeaderValue::from_static("origin"));
            }
        }
    }
}

/// The limits of the events endpoint.
#[derive(Debug, Clone, Copy)]
struct EventLimits {
    max_body_bytes: usize,
    max_message_bytes: usize,
    max_events: usize,
    body_timeout: Duration,
}

/// The events endpoint.
pub struct EventIntake<S> {
    routes: Vec<String>,
    limits: EventLimits,
    cors: Cors,
    rules: Arc<ArcSwap<EventRules>>,
    sink: Arc<S>,
    metrics: EventMetrics,
    /// Bytes of request bodies being read or processed at once.
    body_budget: Arc<tokio::sync::Semaphore>,
}

/// The rules of a running events intake, for reloads ([`EventIntake::rules_slot`]).
#[derive(Clone)]
pub struct RulesSlot {
    rules: Arc<ArcSwap<EventRules>>,
    stream_family: StreamFamily,
    schemas: Gauge,
    streams: Gauge,
}

impl RulesSlot {
    /// Puts new rules in force; requests in flight finish with the old ones.
    pub fn replace(&self, validator: EventValidator) {
        self.rules.store(Arc::new(make_rules(
            validator,
            &self.stream_family,
            &self.schemas,
            &self.streams,
        )));
    }

    /// The schema repositories in force (a stream config refresh keeps them).
    pub fn schemas(&self) -> Arc<crate::schema_repository::SchemaRepository> {
        self.rules.load().validator.schema_repository().clone()
    }
}

fn make_rules(
    validator: EventValidator,
    family: &StreamFamily,
    schemas: &Gauge,
    streams: &Gauge,
) -> EventRules {
    let keys: Vec<Arc<str>> = validator
        .stream_config()
        .entries()
        .iter()
        .map(|e| e.key.clone())
        .collect();
    schemas.set(validator.schema_repository().len() as i64);
    streams.set(keys.len() as i64);
    EventRules {
        counters: StreamCounters::new(family, keys.iter()),
        validator,
    }
}

/// Per-request bookkeeping: EventGate's response lists.
#[derive(Default)]
struct Tally {
    accepted: usize,
    invalid: Vec<serde_json::Value>,
    error: Vec<serde_json::Value>,
}

impl<S: MessageSink> EventIntake<S> {
    pub fn new(
        config: &Config,
        validator: EventValidator,
        sink: Arc<S>,
        metrics: &Metrics,
    ) -> Self {
        let events = &config.events;
        let event_metrics = EventMetrics::new(metrics);
        let rules = make_rules(
            validator,
            &event_metrics.stream_family,
            &event_metrics.schemas,
            &event_metrics.streams,
        );
        Self {
            routes: events.routes.clone(),
            limits: EventLimits {
                max_body_bytes: events.max_body_bytes,
                max_message_bytes: config.message_max_bytes(),
                max_events: events.max_events_per_request,
                body_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
            },
            cors: Cors::new(&events.cors_allowed_origins),
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            sink,
            metrics: event_metrics,
            body_budget: Arc::new(tokio::sync::Semaphore::new(events.max_buffered_bytes)),
        }
    }

    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    /// The handle a reload puts new rules through.
    pub fn rules_slot(&self) -> RulesSlot {
        RulesSlot {
            rules: self.rules.clone(),
            stream_family: self.metrics.stream_family.clone(),
            schemas: self.metrics.schemas.clone(),
            streams: self.metrics.streams.clone(),
        }
    }

    /// Answers one request on an events route.
    pub async fn respond<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        gate: &ClientGate,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let mut response = self.respond_parts(&parts, body, peer, gate).await;
        self.cors.decorate(&parts.headers, &mut response);
        response
    }

    async fn respond_parts<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
        peer: SocketAddr,
        gate: &ClientGate,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        match parts.method {
            Method::POST => {}
            Method::OPTIONS => return self.preflight(),
            _ => {
                let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
                return r;
            }
        }
        if !acceptable_content_type(&parts.headers) {
            return self.reject(RequestRejection::UnsupportedContentType);
        }
        let hasty = is_hasty(parts.uri.query());
        let user_agent = user_agent(&parts.headers);
        let client_ip = match gate.admit(
            gate.client_ip(request_peer(peer, &parts.extensions), &parts.headers),
            user_agent,
        ) {
            Admission::Admitted { client_ip } => client_ip,
            Admission::RateLimited { retry_after_secs } => {
                return too_many_requests(retry_after_secs)
            }
            // Dropped on purpose: answered as if accepted.
            Admission::Dropped(_) => {
                return empty(if hasty {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::CREATED
                })
            }
        };
        // Bodies held at once are capped in bytes (`events.max_buffered_bytes`):
        // the announced length, or the cap when it is not announced.
        let want = body
            .size_hint()
            .upper()
            .unwrap_or(self.limits.max_body_bytes as u64)
            .min(self.limits.max_body_bytes as u64) as u32;
        let Ok(budget) = self.body_budget.clone().try_acquire_many_owned(want.max(1)) else {
            self.metrics.refused.inc(RefusalReason::BodyBudget);
            return overloaded();
        };
        let body = match read_body(body, self.limits.max_body_bytes, self.limits.body_timeout).await
        {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return self.reject(RequestRejection::BodyTooLarge),
            Err(BodyError::Timeout) => return self.reject(RequestRejection::BodyTimeout),
            Err(BodyError::Incomplete) => {
                return closing(self.reject(RequestRejection::BodyIncomplete))
            }
            Err(BodyError::Malformed) => {
                return closing(self.reject(RequestRejection::BodyMalformed))
            }
        };
        let events = match parse_events(&body, self.limits.max_events) {
            Ok(events) => events,
            Err(rejection) => return self.reject(rejection),
        };
        drop(body);
        let ctx = EventContext {
            received: time::OffsetDateTime::now_utc(),
            request_id: parts
                .headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
            user_agent: std::str::from_utf8(user_agent)
                .ok()
                .filter(|s| !s.is_empty()),
            client_ip: Some(client_ip),
        };
        // Long arrays are handed over a slice at a time, yielding between,
        // so one request does not hold a runtime thread for long.
        let rules = self.rules.load_full();
        let mut tally = Tally::default();
        let mut pending = Vec::new();
        let mut events = events.into_iter();
        while events.len() > 0 {
            let turn = events.by_ref().take(EVENTS_PER_TURN);
            if let Err(e) = self.hand_off(&rules, turn, &ctx, &mut tally, &mut pending) {
                self.metrics.refused.inc(RefusalReason::from(&e));
                return overloaded();
            }
            if events.len() > 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(budget);
        for reply in pending {
            if let Err(e) = spooled(reply).await {
                self.metrics.refused.inc(RefusalReason::from(&e));
                return overloaded();
            }
        }
        if hasty {
            return with_reason(
                empty(StatusCode::ACCEPTED),
                format!(
                    "{} events hastily received.",
                    tally.accepted + tally.invalid.len() + tally.error.len()
                ),
            );
        }
        self.answer(tally)
    }

    /// The rules in force (the legacy bridge resolves schemas with them).
    pub fn current_rules(&self) -> Arc<EventRules> {
        self.rules.load_full()
    }

    /// The legacy bridge's hand-off: one converted beacon through `rules`
    /// and into the sink, exactly as an event of `POST /v1/events` (counted
    /// the same; an invalid one's error event to the error stream). A spool
    /// reply to await goes to `pending`; a valid event the sink refuses is
    /// the error.
    pub fn hand_off_converted(
        &self,
        rules: &EventRules,
        event: serde_json::Value,
        ctx: &EventContext<'_>,
        pending: &mut Vec<crate::spool::AppendReply>,
    ) -> Result<EventOutcome, EnqueueError> {
        let mut tally = Tally::default();
        self.hand_off(rules, std::iter::once(event), ctx, &mut tally, pending)?;
        Ok(if tally.accepted > 0 {
            EventOutcome::Accepted
        } else if !tally.invalid.is_empty() {
            EventOutcome::Invalid
        } else {
            EventOutcome::Error
        })
    }

    /// The synchronous part: each event through the rules and into the
    /// sink; the spool replies to await go to `pending`. Stops at the first
    /// valid event the sink refuses (the request is then answered 503).
    fn hand_off(
        &self,
        rules: &EventRules,
        events: impl Iterator<Item = serde_json::Value>,
        ctx: &EventContext<'_>,
        tally: &mut Tally,
        pending: &mut Vec<crate::spool::AppendReply>,
    ) -> Result<(), EnqueueError> {
        let mut out = Vec::with_capacity(1024);
        for event in events {
            out.clear();
            let started = Instant::now();
            let verdict = rules.validator.check(event, ctx, &mut out);
            self.metrics
                .validation_seconds
                .observe(started.elapsed().as_secs_f64());
            let verdict = match verdict {
                EventVerdict::Accepted(accepted) => match self.produce(&accepted, &out, pending)? {
                    Ok(()) => {
                        rules
                            .counters
                            .count(Some(&accepted.stream_key), EventOutcome::Accepted);
                        tally.accepted += 1;
                        continue;
                    }
                    Err((reason, message)) => {
                        errored_after_validation(reason, accepted.stream_key, &out, message)
                    }
                },
                other => other,
            };
            match verdict {
                EventVerdict::Accepted(_) => {}
                EventVerdict::Invalid(invalid) => {
                    self.metrics.invalid.inc(invalid.reason);
                    rules
                        .counters
                        .count(invalid.stream_key.as_deref(), EventOutcome::Invalid);
                    if let Some(error_event) = &invalid.error_event {
                        let message = OutboundMessage {
                            destination: Destination::EventError {
                                topic: &error_event.topic,
                            },
                            key: None,
                            payload: &out,
                        };
                        // On its way to the error stream; its fate does not
                        // change the answer (the event was invalid either way).
                        if self.sink.enqueue(&message).is_err() {
                            self.metrics.error_events_refused.inc();
                        }
                    }
                    tally.invalid.push(invalid.item);
                }
                EventVerdict::Error(errored) => {
                    self.metrics.errored.inc(errored.reason);
                    rules
                        .counters
                        .count(errored.stream_key.as_deref(), EventOutcome::Error);
                    tally.error.push(errored.item);
                }
            }
        }
        Ok(())
    }

    /// Hands a valid event to the sink; a spool reply to await goes to
    /// `pending`. `Ok(Err(..))`: it can never be produced, and becomes an
    /// *error* item: larger than the producer's `message.max.bytes`, or for a
    /// topic the cluster is known not to have (the sink's own check).
    /// `Err`: the sink cannot take it now (the request is answered 503).
    fn produce(
        &self,
        accepted: &Accepted,
        payload: &[u8],
        pending: &mut Vec<crate::spool::AppendReply>,
    ) -> Result<Result<(), (ErrorReason, String)>, EnqueueError> {
        // librdkafka counts the key and some framing against the limit too.
        let size = payload.len() + accepted.key.as_ref().map_or(0, Vec::len);
        if size + MESSAGE_OVERHEAD > self.limits.max_message_bytes {
            return Ok(Err((
                ErrorReason::MessageTooLarge,
                format!(
                    "event of {} bytes is larger than the producer's message.max.bytes ({})",
                    size, self.limits.max_message_bytes
                ),
            )));
        }
        let message = OutboundMessage {
            destination: Destination::Event {
                topic: &accepted.topic,
            },
            key: accepted.key.as_deref(),
            payload,
        };
        match self.sink.enqueue(&message) {
            Ok(Enqueued::Queued) => {}
            Ok(Enqueued::Spooling(reply)) => pending.push(reply),
            Err(EnqueueError::UnknownTopic) => {
                return Ok(Err((
                    ErrorReason::UnknownTopic,
                    format!("topic {} does not exist in Kafka", accepted.topic),
                )))
            }
            Err(e) => return Err(e),
        }
        Ok(Ok(()))
    }

    /// EventGate's answer for a processed request.
    fn answer(&self, tally: Tally) -> Response<Full<Bytes>> {
        let total = tally.accepted + tally.invalid.len() + tally.error.len();
        let (status, reason) = if tally.invalid.is_empty() && tally.error.is_empty() {
            return with_reason(
                empty(StatusCode::CREATED),
                format!("All {total} out of {total} events were accepted."),
            );
        } else if tally.accepted > 0 {
            (
                StatusCode::MULTI_STATUS,
                format!(
                    "{} out of {total} events were accepted, but {} failed validation and {} errored.",
                    tally.accepted,
                    tally.invalid.len(),
                    tally.error.len()
                ),
            )
        } else if tally.error.is_empty() {
            (
                StatusCode::BAD_REQUEST,
                format!(
                    "{} out of {total} events were invalid and not accepted.",
                    tally.invalid.len()
                ),
            )
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "0 out of {total} events were accepted: {} failed validation and {} errored.",
                    tally.invalid.len(),
                    tally.error.len()
                ),
            )
        };
        let body = serde_json::json!({ "invalid": tally.invalid, "error": tally.error });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut r = Response::new(Full::new(Bytes::from(bytes)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        with_reason(r, reason)
    }

    fn preflight(&self) -> Response<Full<Bytes>> {
        let mut r = empty(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        if !matches!(self.cors, Cors::Off) {
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        }
        r
    }

    fn reject(&self, rejection: RequestRejection) -> Response<Full<Bytes>> {
        self.metrics.requests_rejected.inc(rejection);
        plain(rejection.status(), rejection.body())
    }
}

/// EventGate's reason phrase (`201 All 1 out of 1 events were accepted.`),
/// for clients and logs that read it; the status code is what counts.
fn with_reason(mut r: Response<Full<Bytes>>, reason: String) -> Response<Full<Bytes>> {
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
        r.extensions_mut().insert(phrase);
    }
    r
}

/// `hasty` with any non-empty value other than `false` (EventGate: any
/// non-empty value).
fn is_hasty(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == "hasty" && !v.is_empty() && v != "false"
        })
    })
}

/// `application/json`, `text/plain` (what sendBeacon sends for a string) or
/// `application/reports+json` (the Reporting API), any parameters; no
/// content type at all is refused too.
fn acceptable_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    ["application/json", "text/plain", "application/reports+json"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
}

/// The body as a list of events: an object is a list of one; an array's
/// elements are checked one by one (a non-object is an invalid event).
fn parse_events(
    body: &[u8],
    max_events: usize,
) -> Result<Vec<serde_json::Value>, RequestRejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestRejection::EmptyBody);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| RequestRejection::MalformedJson)?;
    match value {
        serde_json::Value::Object(_) => Ok(vec![value]),
        serde_json::Value::Array(events) if events.is_empty() => Err(RequestRejection::EmptyArray),
        serde_json::Value::Array(events) if events.len() > max_events => {
            Err(RequestRejection::TooManyEvents)
        }
        serde_json::Value::Array(events) => Ok(events),
        _ => Err(RequestRejection::NotObjectOrArray),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_sound() {
        crate::metrics::check_label_set::<RequestRejection>().unwrap();
        crate::metrics::check_label_set::<InvalidReason>().unwrap();
        crate::metrics::check_label_set::<ErrorReason>().unwrap();
    }

    #[test]
    fn regex_stream_keys_are_escaped_in_labels() {
        let family = StreamFamily::default();
        let key: Arc<str> = r"/^product_metrics\.web_base(\..+)?$/".into();
        let counters = StreamCounters::new(&family, [key.clone()].iter());
        counters.count(Some(&key), EventOutcome::Accepted);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("events", "", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"events_total{outcome="accepted",stream="/^product_metrics\\.web_base(\\..+)?$/"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn hasty_values() {
        for (q, want) in [
            (None, false),
            (Some(""), false),
            (Some("hasty=true"), true),
            (Some("a=1&hasty=1"), true),
            (Some("hasty="), false),
            (Some("hasty"), false),
            (Some("hasty=false"), false),
            (Some("nothasty=true"), false),
        ] {
            assert_eq!(is_hasty(q), want, "{q:?}");
        }
    }

    #[test]
    fn content_types() {
        for (ct, want) in [
            (Some("application/json"), true),
            (Some("text/plain;charset=UTF-8"), true),
            (Some("TEXT/PLAIN; charset=iso-8859-1"), true),
            (Some("application/reports+json"), true),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("multipart/form-data; boundary=x"), false),
            (Some("application/jsonp"), false),
            (None, false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            assert_eq!(acceptable_content_type(&h), want, "{ct:?}");
        }
    }

    #[test]
    fn bodies() {
        use RequestRejection::*;
        assert_eq!(parse_events(b"", 10), Err(EmptyBody));
        assert_eq!(parse_events(b" \n", 10), Err(EmptyBody));
        assert_eq!(parse_events(b"{", 10), Err(MalformedJson));
        assert_eq!(parse_events(b"\"x\"", 10), Err(NotObjectOrArray));
        assert_eq!(parse_events(b"12", 10), Err(NotObjectOrArray));
        assert_eq!(parse_events(b"null", 10), Err(NotObjectOrArray));
        assert_eq!(parse_events(b"[]", 10), Err(EmptyArray));
        assert_eq!(parse_events(b"[{},{},{}]", 2), Err(TooManyEvents));
        assert_eq!(parse_events(b"{\"a\":1}", 10).unwrap().len(), 1);
        assert_eq!(parse_events(b"[{}, 1, \"x\"]", 10).unwrap().len(), 3);
        assert_eq!(parse_events(b"\xff\xfe", 10), Err(MalformedJson));
        // Numbers out of range and nesting beyond serde_json's limit are refused.
        assert_eq!(parse_events(b"{\"n\":1e400}", 10), Err(MalformedJson));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_events(deep.as_bytes(), 10), Err(MalformedJson));
    }

    #[test]
    fn cors_rules() {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://en.wikipedia.org"));
        assert!(Cors::new(&[]).allow_origin(&h).is_none());
        assert_eq!(Cors::new(&["*".into()]).allow_origin(&h).unwrap(), "*");
        let listed = Cors::new(&["https://en.wikipedia.org".into()]);
        assert_eq!(listed.allow_origin(&h).unwrap(), "https://en.wikipedia.org");
        let other = Cors::new(&["https://de.wikipedia.org".into()]);
        assert!(other.allow_origin(&h).is_none());
        assert!(listed.allow_origin(&HeaderMap::new()).is_none());
    }
}
