//! The legacy beacon protocol: `GET`/`POST /beacon/event?<json>;`, answered
//! `204 No Content`, one message per beacon.
//!
//! Owns what is particular to beacons: the method rule (405 with `Allow`),
//! the empty-body drain (413, 408; 400 for a body cut short or with broken
//! framing, each with its reason), the synchronous [`BeaconIntake::accept`]
//! step (decode, metadata, format, hand-off), sequence numbers, the
//! rejection records, and the beacon counters. The shared plumbing (routes,
//! client gate, spool wait, status accounting) is in [`crate::intake`].
//!
//! Must never: answer 204 before the line is in the sink (or dropped on
//! purpose), or let request data reach a metric label.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;

use super::events::{EventIntake, EventOutcome};
use super::{
    closing, drain_body, empty, overloaded, plain, request_peer, spooled, too_many_requests,
    user_agent, Admission, BodyError, BoxError, ClientGate, RefusalReason,
};
use crate::client_ip::Peer;
use crate::config::{Config, Partitioning};
use crate::decode::{decode_beacon, AttestedField, RejectReason};
use crate::format::{
    user_agent_field_chars, write_error_record, OutputFormat, MAX_KEY_BYTES,
    PROCESSOR_MAX_USER_AGENT_FIELD_CHARS,
};
use crate::legacy_conversion::{convert, LegacyConverter};
use crate::meta::{BeaconMeta, ReceiveTime, SequenceCounter};
use crate::metrics::{CounterSet, LabelSet, Metrics};
use crate::sink::{EnqueueError, Enqueued, MessageSink, OutboundMessage};
use crate::spool::AppendReply;
use crate::validation::EventContext;

/// What became of a beacon.
#[derive(Debug)]
pub enum Outcome {
    /// In the sink; answered 204.
    Accepted,
    /// On its way to the spool (the line, the converted event, or both);
    /// answered 204 once every one is written, 503 if one is refused.
    Spooling(Vec<AppendReply>),
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

/// Why a beacon (or an events request) was dropped with a 2xx.
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

impl LabelSet for AttestedField {
    const NAME: &'static str = "field";
    const ALL: &'static [Self] = &AttestedField::ALL;
    fn as_str(self) -> &'static str {
        self.label()
    }
}

impl LabelSet for RejectReason {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &RejectReason::ALL;
    fn as_str(self) -> &'static str {
        RejectReason::as_str(self)
    }
}

/// What became of a beacon's conversion (`output.format = "event_platform"`),
/// for `beacond_beacons_converted_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversion {
    /// Valid, handed to the sink for its `eventlogging_<Schema>` stream.
    Accepted,
    /// Invalid: its error event went to the error stream; still 204.
    Invalid,
    /// Errored (stream not configured, title mismatch, not producible).
    Errored,
    /// No schema name, or no version of it known.
    UnknownSchema,
}

impl LabelSet for Conversion {
    const NAME: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        Conversion::Accepted,
        Conversion::Invalid,
        Conversion::Errored,
        Conversion::UnknownSchema,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Conversion::Accepted => "accepted",
            Conversion::Invalid => "invalid",
            Conversion::Errored => "errored",
            Conversion::UnknownSchema => "unknown_schema",
        }
    }
}

/// The beacon endpoint.
pub struct BeaconIntake<S> {
    limits: Limits,
    /// The line written to `kafka.topic`, if any.
    line: Option<OutputFormat>,
    /// Set when the converted event is written too (`event_platform`).
    converter: Option<LegacyConverter>,
    converted: CounterSet<Conversion>,
    partitioning: Partitioning,
    hostname: Box<str>,
    seq: SequenceCounter,
    sink: Arc<S>,
    accepted: Counter,
    rejected: CounterSet<RejectReason>,
    refused: CounterSet<RefusalReason>,
    /// Capsules setting a field beacond attests, by field.
    attested: CounterSet<AttestedField>,
    /// `output.refuse_attested_fields`.
    refuse_attested: bool,
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

impl<S: MessageSink> BeaconIntake<S> {
    /// Builds the endpoint from a config whose hostname is resolved.
    pub fn new(config: &Config, sink: Arc<S>, metrics: Arc<Metrics>) -> Self {
        let http = &config.http;
        Self {
            limits: Limits {
                max_query_bytes: http.max_query_bytes,
                max_user_agent_bytes: http.max_user_agent_bytes,
                max_body_bytes: http.max_body_bytes,
                body_timeout: Duration::from_millis(http.header_read_timeout_ms),
            },
            line: config.output.format.line(),
            converter: config
                .output
                .format
                .event_platform()
                .then(|| LegacyConverter::new(&config.events.legacy_schema_versions)),
            converted: metrics.counter_set(
                "beacons_converted",
                "Beacons converted to Event Platform events, by outcome",
            ),
            partitioning: config.kafka.partitioning,
            hostname: config
                .output
                .hostname
                .as_deref()
                .unwrap_or("localhost")
                .into(),
            seq: SequenceCounter::default(),
            sink,
            accepted: metrics.accepted.clone(),
            rejected: metrics
                .counter_set("beacons_rejected", "Beacons refused with a 4xx, by reason"),
            refused: metrics.counter_set(
                "beacons_refused",
                "Valid beacons answered 503 (not accepted), by reason",
            ),
            attested: metrics.counter_set(
                "beacons_attested_fields",
                "Capsules setting a top-level field beacond attests (its value wins in json and \
                 event_platform; refused with output.refuse_attested_fields), by field",
            ),
            refuse_attested: config.output.refuse_attested_fields,
        }
    }

    /// Answers one request on a beacon route.
    pub async fn respond<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        gate: &ClientGate,
        events: Option<&EventIntake<S>>,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if !matches!(*req.method(), Method::GET | Method::HEAD | Method::POST) {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return r;
        }
        let (parts, body) = req.into_parts();
        if let Err(e) = drain_body(body, self.limits.max_body_bytes, self.limits.body_timeout).await
        {
            let reason = RejectReason::from(e);
            self.rejected.inc(reason);
            let response = reject_response(reason);
            return match e {
                BodyError::Incomplete | BodyError::Malformed => closing(response),
                BodyError::TooLarge | BodyError::Timeout => response,
            };
        }
        let outcome = self.accept(
            parts.uri.query(),
            &parts.headers,
            request_peer(peer, &parts.extensions),
            ReceiveTime::now(),
            gate,
            events,
        );
        let outcome = match outcome {
            Outcome::Spooling(replies) => {
                let mut outcome = Outcome::Accepted;
                for reply in replies {
                    if let Err(e) = spooled(reply).await {
                        outcome = self.refuse(e);
                        break;
                    }
                }
                if matches!(outcome, Outcome::Accepted) {
                    self.accepted.inc();
                }
                outcome
            }
            other => other,
        };
        match outcome {
            // Dropped on purpose (filter, silent rate limit) looks accepted.
            Outcome::Accepted | Outcome::Dropped(_) => empty(StatusCode::NO_CONTENT),
            Outcome::Rejected(reason) => reject_response(reason),
            Outcome::Refused(_) | Outcome::Spooling(_) => overloaded(),
            Outcome::RateLimited { retry_after_secs } => too_many_requests(retry_after_secs),
        }
    }

    /// The synchronous heart of the endpoint: validates a beacon, attaches its
    /// metadata, formats it and hands it to the sink; with `event_platform`
    /// (and `events`, the events intake), converts it and hands the event over
    /// by the events' rules too.
    pub fn accept(
        &self,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        peer: Peer,
        received: ReceiveTime,
        gate: &ClientGate,
        events: Option<&EventIntake<S>>,
    ) -> Outcome {
        let raw_query = raw_query.unwrap_or("");
        let user_agent = user_agent(headers);
        let client_ip = match gate.admit(gate.client_ip(peer, headers), user_agent) {
            Admission::Admitted { client_ip } => client_ip,
            Admission::RateLimited { retry_after_secs } => {
                return Outcome::RateLimited { retry_after_secs }
            }
            Admission::Dropped(reason) => return Outcome::Dropped(reason),
        };
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
                return self.accept_with(
                    raw_query,
                    &mut meta,
                    &mut Scratch::default(),
                    events,
                    headers,
                );
            };
            self.accept_with(raw_query, &mut meta, &mut scratch, events, headers)
        })
    }

    fn accept_with(
        &self,
        raw_query: &str,
        meta: &mut BeaconMeta<'_>,
        scratch: &mut Scratch,
        events: Option<&EventIntake<S>>,
        headers: &HeaderMap,
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
        // A line the EventLogging processor cannot read would be lost after
        // the 204: refuse it while the client can still be told.
        if self.line == Some(OutputFormat::Varnishkafka)
            && meta.user_agent.len() * 4 + 2 > PROCESSOR_MAX_USER_AGENT_FIELD_CHARS
            && user_agent_field_chars(meta.user_agent) > PROCESSOR_MAX_USER_AGENT_FIELD_CHARS
        {
            return self.reject(
                RejectReason::UserAgentTooLongForProcessor,
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
        // Fields beacond vouches for: counted; beacond's value wins in the
        // json line and the converted event; in the varnishkafka line the
        // processor decides, unless they are refused here.
        if !capsule.attested.is_empty() {
            for field in capsule.attested.iter() {
                self.attested.inc(field);
            }
            if self.refuse_attested {
                return self.reject(
                    RejectReason::AttestedField,
                    raw_query,
                    meta,
                    &mut scratch.line,
                );
            }
        }
        let capsule = capsule.text;
        // The conversion's target first: a beacon refused for it gets no
        // sequence number. With a line written too, it is not refused.
        let mut conversion = None;
        if let (Some(converter), Some(events)) = (&self.converter, events) {
            let rules = events.current_rules();
            let parsed =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(capsule);
            let target = parsed.as_ref().ok().and_then(|capsule| {
                converter
                    .target(capsule, rules.validator.schema_repository())
                    .ok()
            });
            match (parsed, target) {
                (Ok(parsed), Some(target)) => conversion = Some((events, rules, parsed, target)),
                _ => {
                    self.converted.inc(Conversion::UnknownSchema);
                    if self.line.is_none() {
                        return self.reject(
                            RejectReason::UnknownLegacySchema,
                            raw_query,
                            meta,
                            &mut scratch.line,
                        );
                    }
                }
            }
        }
        if self.line.is_none() && conversion.is_none() && events.is_none() {
            // `event_platform` alone without the events intake: refused by the
            // config check; never answer 204 for a beacon written nowhere.
            return self.reject(
                RejectReason::LegacyEventErrored,
                raw_query,
                meta,
                &mut scratch.line,
            );
        }
        meta.seq = Some(self.seq.next());
        let mut replies = Vec::new();
        if let Some(format) = self.line {
            scratch.line.clear();
            format.write_line(raw_query, capsule, meta, &mut scratch.line);
            let mut key_buf = [0u8; MAX_KEY_BYTES];
            let key = match self.partitioning {
                Partitioning::Random => None,
                Partitioning::ClientIp => Some(ip_text(meta.client_ip, &mut key_buf)),
            };
            match self
                .sink
                .enqueue(&OutboundMessage::beacon(&scratch.line, key))
            {
                Ok(Enqueued::Queued) => {}
                Ok(Enqueued::Spooling(reply)) => replies.push(reply),
                Err(e) => return self.refuse(e),
            }
        }
        if let Some((events, rules, parsed, target)) = conversion {
            let event = convert(parsed, &target, meta);
            let received = time::OffsetDateTime::from_unix_timestamp(meta.received.unix_seconds())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                + time::Duration::milliseconds(i64::from(meta.received.millis()));
            let ctx = EventContext {
                received,
                request_id: headers
                    .get(&super::events::X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok()),
                user_agent: std::str::from_utf8(meta.user_agent)
                    .ok()
                    .filter(|s| !s.is_empty()),
                client_ip: Some(meta.client_ip),
            };
            // A refusal here after the line was taken makes the beacon a 503
            // all the same: a client retry may duplicate the line.
            match events.hand_off_converted(&rules, event, &ctx, &mut replies) {
                Ok(EventOutcome::Accepted) => self.converted.inc(Conversion::Accepted),
                // Still 204: the browser cannot act on it; its error event is
                // on its way to the error stream.
                Ok(EventOutcome::Invalid) => self.converted.inc(Conversion::Invalid),
                Ok(EventOutcome::Error) => {
                    self.converted.inc(Conversion::Errored);
                    if self.line.is_none() {
                        return self.reject(
                            RejectReason::LegacyEventErrored,
                            raw_query,
                            meta,
                            &mut scratch.line,
                        );
                    }
                }
                Err(e) => return self.refuse(e),
            }
        }
        if replies.is_empty() {
            self.accepted.inc();
            Outcome::Accepted
        } else {
            Outcome::Spooling(replies)
        }
    }

    fn refuse(&self, e: EnqueueError) -> Outcome {
        self.refused.inc(RefusalReason::from(&e));
        Outcome::Refused(e)
    }

    fn reject(
        &self,
        reason: RejectReason,
        raw_query: &str,
        meta: &BeaconMeta<'_>,
        line: &mut Vec<u8>,
    ) -> Outcome {
        self.rejected.inc(reason);
        line.clear();
        write_error_record(reason, raw_query, meta, line);
        self.sink.report_rejection(line);
        Outcome::Rejected(reason)
    }
}

impl From<BodyError> for RejectReason {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => RejectReason::BodyTooLarge,
            BodyError::Timeout => RejectReason::BodyTimeout,
            BodyError::Incomplete => RejectReason::BodyIncomplete,
            BodyError::Malformed => RejectReason::BodyMalformed,
        }
    }
}

fn reject_response(reason: RejectReason) -> Response<Full<Bytes>> {
    plain(reason.status(), reason.body())
}

/// Writes an IP's text form into `buf` and returns it.
fn ip_text(ip: IpAddr, buf: &mut [u8; MAX_KEY_BYTES]) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    //! `BeaconIntake::accept` and `respond` over a fake sink: every outcome
    //! and status, without sockets or a broker.

    use std::sync::Mutex;

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::config::RateLimitExceeded;
    use crate::format::OutputFormats;
    use crate::spool::SpoolError;

    #[test]
    fn reject_reasons_are_a_sound_label_set() {
        crate::metrics::check_label_set::<crate::decode::RejectReason>().unwrap();
        crate::metrics::check_label_set::<super::Conversion>().unwrap();
        crate::metrics::check_label_set::<crate::decode::AttestedField>().unwrap();
    }

    /// What the fake sink does with the next messages.
    #[derive(Debug, Clone, Copy)]
    enum Mode {
        Queue,
        /// Spooled; the spool's reply is this.
        Spool(Result<(), fn() -> SpoolError>),
        Refuse(fn() -> EnqueueError),
    }

    /// A message as the sink got it: key, payload.
    type Message = (Option<Vec<u8>>, Vec<u8>);

    /// A config change for one case.
    type Tweak = Box<dyn Fn(&mut Config)>;

    /// Records every message and rejection record; takes, spools or
    /// refuses as told.
    struct FakeSink {
        mode: Mutex<Mode>,
        messages: Mutex<Vec<Message>>,
        rejections: Mutex<Vec<Vec<u8>>>,
    }

    impl MessageSink for FakeSink {
        fn enqueue(&self, message: &OutboundMessage<'_>) -> Result<Enqueued, EnqueueError> {
            assert!(matches!(
                message.destination,
                crate::sink::Destination::Beacons
            ));
            let mode = *self.mode.lock().unwrap();
            match mode {
                Mode::Refuse(e) => return Err(e()),
                Mode::Queue | Mode::Spool(_) => {}
            }
            self.messages
                .lock()
                .unwrap()
                .push((message.key.map(<[u8]>::to_vec), message.payload.to_vec()));
            match mode {
                Mode::Spool(reply) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(reply.map_err(|e| e()));
                    Ok(Enqueued::Spooling(rx))
                }
                _ => Ok(Enqueued::Queued),
            }
        }

        fn report_rejection(&self, record: &[u8]) {
            self.rejections.lock().unwrap().push(record.to_vec());
        }
    }

    struct Fixture {
        intake: BeaconIntake<FakeSink>,
        gate: ClientGate,
        sink: Arc<FakeSink>,
        metrics: Arc<Metrics>,
    }

    fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let mut config = Config::default();
        config.output.hostname = Some("test-host".into());
        config.http.max_query_bytes = 200;
        config.http.max_user_agent_bytes = 20;
        config.http.max_body_bytes = 10;
        config.client_ip.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        tweak(&mut config);
        let metrics = Arc::new(Metrics::new());
        let sink = Arc::new(FakeSink {
            mode: Mutex::new(Mode::Queue),
            messages: Mutex::default(),
            rejections: Mutex::default(),
        });
        Fixture {
            intake: BeaconIntake::new(&config, sink.clone(), metrics.clone()),
            gate: ClientGate::new(&config, &metrics).unwrap(),
            sink,
            metrics,
        }
    }

    const OK: &str = "%7B%22schema%22%3A%22T%22%7D;";
    const UA: &str = "test-agent";

    impl Fixture {
        fn accept(&self, query: &str, ua: &str, peer: &str, xff: Option<&str>) -> Outcome {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::USER_AGENT, HeaderValue::from_str(ua).unwrap());
            if let Some(xff) = xff {
                headers.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
            }
            self.intake.accept(
                Some(query),
                &headers,
                Peer::from(peer.parse::<IpAddr>().unwrap()),
                ReceiveTime::from_unix_seconds(1_795_908_434),
                &self.gate,
                None,
            )
        }

        async fn respond(&self, req: Request<Full<Bytes>>) -> (StatusCode, Response<Full<Bytes>>) {
            let r = self
                .intake
                .respond(req, "198.51.100.7:1".parse().unwrap(), &self.gate, None)
                .await;
            (r.status(), r)
        }

        fn messages(&self) -> Vec<(Option<Vec<u8>>, String)> {
            self.sink
                .messages
                .lock()
                .unwrap()
                .iter()
                .map(|(k, m)| (k.clone(), String::from_utf8(m.clone()).unwrap()))
                .collect()
        }

        fn rejections(&self) -> Vec<serde_json::Value> {
            self.sink
                .rejections
                .lock()
                .unwrap()
                .iter()
                .map(|r| serde_json::from_slice(r).unwrap())
                .collect()
        }
    }

    fn get(query: &str) -> Request<Full<Bytes>> {
        Request::get(format!("/beacon/event?{query}"))
            .header(http::header::USER_AGENT, UA)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// The answer `respond` gives an outcome (for outcomes without a spool wait).
    fn status(outcome: &Outcome) -> StatusCode {
        match outcome {
            Outcome::Accepted | Outcome::Dropped(_) | Outcome::Spooling(_) => {
                StatusCode::NO_CONTENT
            }
            Outcome::Rejected(r) => r.status(),
            Outcome::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    #[test]
    fn every_rejection_of_accept_has_its_status_counter_and_error_record() {
        let long_query = format!("%7B%22a%22%3A%22{}%22%7D", "x".repeat(200));
        let deep = format!("%7B%22a%22:{}", "[".repeat(70));
        let processor_past = "u".repeat(799);
        let cases: Vec<(RejectReason, String, &str, Tweak)> = vec![
            (RejectReason::EmptyQuery, "".into(), UA, Box::new(|_| {})),
            (RejectReason::QueryTooLong, long_query, UA, Box::new(|_| {})),
            (
                RejectReason::BadPercentEncoding,
                "%7B%7".into(),
                UA,
                Box::new(|_| {}),
            ),
            (
                RejectReason::InvalidUtf8,
                "%7B%22%FF%22:1%7D".into(),
                UA,
                Box::new(|_| {}),
            ),
            (
                RejectReason::InvalidJson,
                "%7B%22a%22".into(),
                UA,
                Box::new(|_| {}),
            ),
            (
                RejectReason::NotAnObject,
                "%5B1%5D".into(),
                UA,
                Box::new(|_| {}),
            ),
            (RejectReason::JsonTooDeep, deep, UA, Box::new(|_| {})),
            (
                RejectReason::DuplicateKey,
                "%7B%22a%22:1,%22a%22:2%7D".into(),
                UA,
                Box::new(|_| {}),
            ),
            (
                RejectReason::AttestedField,
                "%7B%22ip%22:%226.6.6.6%22%7D".into(),
                UA,
                Box::new(|c: &mut Config| c.output.refuse_attested_fields = true),
            ),
            (
                RejectReason::UserAgentTooLong,
                OK.into(),
                "a-user-agent-longer-than-twenty",
                Box::new(|_| {}),
            ),
            (
                RejectReason::UserAgentTooLongForProcessor,
                OK.into(),
                &processor_past,
                Box::new(|c| c.http.max_user_agent_bytes = 2048),
            ),
            // `event_platform` alone without the events intake: written
            // nowhere, so never a 204 (the config check refuses this setup).
            (
                RejectReason::LegacyEventErrored,
                OK.into(),
                UA,
                Box::new(|c: &mut Config| {
                    c.output.format = OutputFormats::new(vec![OutputFormat::EventPlatform])
                }),
            ),
        ];
        for (reason, query, ua, tweak) in cases {
            let f = fixture(tweak);
            let outcome = f.accept(&query, ua, "198.51.100.7", None);
            assert!(
                matches!(outcome, Outcome::Rejected(r) if r == reason),
                "{reason:?}: {outcome:?}"
            );
            assert_eq!(status(&outcome), reason.status(), "{reason:?}");
            assert!(status(&outcome).is_client_error());
            assert_eq!(f.intake.rejected.get(reason), 1, "{reason:?} counted");
            assert_eq!(f.metrics.accepted.get(), 0);
            assert!(f.messages().is_empty(), "{reason:?}: nothing enqueued");
            let records = f.rejections();
            assert_eq!(records.len(), 1, "{reason:?}: one error record");
            assert_eq!(records[0]["reason"], reason.as_str());
            assert_eq!(records[0]["ip"], "198.51.100.7");
            // No sequence number was used: the next beacon gets the first, 0.
            f.sink.rejections.lock().unwrap().clear();
            let _ = f.accept(OK, UA, "198.51.100.7", None);
            if let Some((_, line)) = f.messages().first() {
                assert_eq!(line.split('\t').nth(2), Some("0"), "{reason:?}");
            }
        }
        let covered = [
            RejectReason::EmptyQuery,
            RejectReason::QueryTooLong,
            RejectReason::BadPercentEncoding,
            RejectReason::InvalidUtf8,
            RejectReason::InvalidJson,
            RejectReason::NotAnObject,
            RejectReason::JsonTooDeep,
            RejectReason::DuplicateKey,
            RejectReason::AttestedField,
            RejectReason::UserAgentTooLong,
            RejectReason::UserAgentTooLongForProcessor,
            RejectReason::LegacyEventErrored,
        ];
        // The body reasons are the POST drain's (`respond`, below); the
        // unknown legacy schema needs the events intake (tests/legacy_bridge).
        for reason in RejectReason::ALL {
            assert!(
                covered.contains(&reason)
                    || matches!(
                        reason,
                        RejectReason::BodyTooLarge
                            | RejectReason::BodyTimeout
                            | RejectReason::BodyIncomplete
                            | RejectReason::BodyMalformed
                            | RejectReason::UnknownLegacySchema
                    ),
                "{reason:?} has no case"
            );
        }
    }

    #[test]
    fn accepted_dropped_limited_refused_and_spooled() {
        // Accepted: one varnishkafka line with our metadata, sequence 0, 1.
        let f = fixture(|_| {});
        let outcome = f.accept(OK, UA, "10.0.0.1", Some("6.6.6.6, 203.0.113.9"));
        assert!(matches!(outcome, Outcome::Accepted), "{outcome:?}");
        assert_eq!(status(&outcome), StatusCode::NO_CONTENT);
        assert!(matches!(
            f.accept(OK, UA, "198.51.100.7", None),
            Outcome::Accepted
        ));
        let lines = f.messages();
        assert_eq!(
            lines[0],
            (
                None,
                format!("?{OK}\ttest-host\t0\t2026-11-28T23:27:14\t203.0.113.9\t\"{UA}\"")
            )
        );
        assert!(lines[1].1.contains("\t1\t") && lines[1].1.contains("\t198.51.100.7\t"));
        assert_eq!(f.metrics.accepted.get(), 2);
        assert!(f.rejections().is_empty());

        // Filtered user agent: 204, dropped, counted, nothing written.
        let f = fixture(|c| c.filter.user_agent_exclude = vec!["^Fuzz Faster U Fool".into()]);
        let outcome = f.accept(OK, "Fuzz Faster U Fool v2", "198.51.100.7", None);
        assert!(matches!(
            outcome,
            Outcome::Dropped(DropReason::UserAgentExcluded)
        ));
        assert_eq!(status(&outcome), StatusCode::NO_CONTENT);
        assert_eq!(f.metrics.edge.filtered_user_agent.get(), 1);
        assert!(f.messages().is_empty() && f.rejections().is_empty());
        assert_eq!(f.metrics.accepted.get(), 0);

        // Rate limited: 429 with Retry-After, or 204 and dropped.
        for (exceeded, want) in [
            (
                RateLimitExceeded::TooManyRequests,
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (RateLimitExceeded::SilentDrop, StatusCode::NO_CONTENT),
        ] {
            let f = fixture(|c| {
                c.rate_limit.per_client_per_second = 1;
                c.rate_limit.per_client_burst = 1;
                c.rate_limit.exceeded = exceeded;
            });
            assert!(matches!(
                f.accept(OK, UA, "198.51.100.7", None),
                Outcome::Accepted
            ));
            let outcome = f.accept(OK, UA, "198.51.100.7", None);
            match (&outcome, exceeded) {
                (Outcome::RateLimited { retry_after_secs }, RateLimitExceeded::TooManyRequests) => {
                    assert!(*retry_after_secs >= 1)
                }
                (Outcome::Dropped(DropReason::RateLimited), RateLimitExceeded::SilentDrop) => {}
                other => panic!("{exceeded:?}: {other:?}"),
            }
            assert_eq!(status(&outcome), want);
            assert_eq!(
                f.messages().len(),
                1,
                "{exceeded:?}: the second is not written"
            );
            assert_eq!(
                f.gate.rate_limited.get(crate::rate_limit::Limit::PerClient),
                1
            );
            // Another client has its own bucket.
            assert!(matches!(
                f.accept(OK, UA, "198.51.100.8", None),
                Outcome::Accepted
            ));
        }

        // The sink refuses: 503, counted by reason, no sequence number kept
        // for an accepted beacon.
        let refusals: [(fn() -> EnqueueError, RefusalReason); 4] = [
            (|| EnqueueError::QueueFull, RefusalReason::ProducerQueueFull),
            (
                || EnqueueError::Spool(SpoolError::Full),
                RefusalReason::SpoolFull,
            ),
            (
                || EnqueueError::Spool(SpoolError::Busy),
                RefusalReason::SpoolBusy,
            ),
            (
                || EnqueueError::Refused("x".into()),
                RefusalReason::ProducerError,
            ),
        ];
        for (error, reason) in refusals {
            let f = fixture(|_| {});
            *f.sink.mode.lock().unwrap() = Mode::Refuse(error);
            let outcome = f.accept(OK, UA, "198.51.100.7", None);
            assert!(
                matches!(outcome, Outcome::Refused(_)),
                "{reason:?}: {outcome:?}"
            );
            assert_eq!(status(&outcome), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(f.intake.refused.get(reason), 1, "{reason:?}");
            assert_eq!(f.metrics.accepted.get(), 0);
            assert!(f.rejections().is_empty());
        }

        // Spooled: the reply is awaited by `respond` (below), not counted yet.
        let f = fixture(|_| {});
        *f.sink.mode.lock().unwrap() = Mode::Spool(Ok(()));
        let outcome = f.accept(OK, UA, "198.51.100.7", None);
        assert!(
            matches!(&outcome, Outcome::Spooling(r) if r.len() == 1),
            "{outcome:?}"
        );
        assert_eq!(f.metrics.accepted.get(), 0);
        assert_eq!(f.messages().len(), 1);
    }

    /// The varnishkafka line's user agent field as written, quotes and
    /// escapes included, may be 800 characters (what the EventLogging
    /// processor reads); one more is a 431 with a reason of its own. The
    /// json line has no such limit.
    #[test]
    fn a_user_agent_the_processor_cannot_read_is_refused_on_the_varnishkafka_line() {
        let f = fixture(|c| c.http.max_user_agent_bytes = 2048);
        let at_limit = "u".repeat(798);
        let past = "u".repeat(799);
        // A tab is written as two characters: 797 + 1 tab = 800 as written.
        let tab_at_limit = format!("{}\t", "u".repeat(796));
        let tab_past = format!("{}\t", "u".repeat(797));
        for (ua, ok) in [
            (&at_limit, true),
            (&past, false),
            (&tab_at_limit, true),
            (&tab_past, false),
        ] {
            let outcome = f.accept(OK, ua, "198.51.100.7", None);
            if ok {
                assert!(matches!(outcome, Outcome::Accepted), "{}", ua.len());
            } else {
                assert!(
                    matches!(
                        outcome,
                        Outcome::Rejected(RejectReason::UserAgentTooLongForProcessor)
                    ),
                    "{}",
                    ua.len()
                );
                assert_eq!(
                    status(&outcome),
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                );
            }
        }
        assert_eq!(f.messages().len(), 2);
        for (_, line) in f.messages() {
            let field = line.rsplit('\t').next().unwrap();
            assert_eq!(field.chars().count(), 800, "{field}");
        }
        assert_eq!(
            f.intake
                .rejected
                .get(RejectReason::UserAgentTooLongForProcessor),
            2
        );
        // json: no processor reads the line; only http.max_user_agent_bytes.
        let f = fixture(|c| {
            c.http.max_user_agent_bytes = 2048;
            c.output.format = OutputFormat::Json.into();
        });
        assert!(matches!(
            f.accept(OK, &past, "198.51.100.7", None),
            Outcome::Accepted
        ));
    }

    #[test]
    fn what_the_line_says_follows_the_config() {
        // json: beacond's fields win over the capsule's, which is counted.
        let f = fixture(|c| c.output.format = OutputFormat::Json.into());
        let forged = "%7B%22ip%22%3A%226.6.6.6%22%2C%22seqId%22%3A9%2C%22event%22%3A%7B%7D%7D";
        assert!(matches!(
            f.accept(forged, UA, "198.51.100.7", None),
            Outcome::Accepted
        ));
        let (_, line) = &f.messages()[0];
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["ip"], "198.51.100.7");
        assert_eq!(v["seqId"], 0);
        assert_eq!(v["event"], serde_json::json!({}));
        assert_eq!(f.intake.attested.get(AttestedField::Ip), 1);
        assert_eq!(f.intake.attested.get(AttestedField::SeqId), 1);
        assert_eq!(f.intake.attested.get(AttestedField::Dt), 0);
        // varnishkafka: the query as sent, counted all the same.
        let f = fixture(|_| {});
        assert!(matches!(
            f.accept(forged, UA, "198.51.100.7", None),
            Outcome::Accepted
        ));
        assert!(f.messages()[0].1.starts_with(&format!("?{forged}\t")));
        assert_eq!(f.intake.attested.get(AttestedField::Ip), 1);
        // Anonymized address, and the client-IP key (the full address keys
        // the rate limit; the line keeps the network).
        let f = fixture(|c| {
            c.privacy.anonymize_ip = true;
            c.kafka.partitioning = Partitioning::ClientIp;
        });
        assert!(matches!(
            f.accept(OK, UA, "198.51.100.7", None),
            Outcome::Accepted
        ));
        let (key, line) = &f.messages()[0];
        assert!(line.contains("\t198.51.100.0\t"), "{line}");
        assert_eq!(key.as_deref(), Some(&b"198.51.100.0"[..]));
        // A PROXY header that named no client: the balancer is the client,
        // whatever X-Forwarded-For says.
        let f = fixture(|_| {});
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer = Peer {
            ip: "10.0.0.1".parse().unwrap(),
            origin: crate::client_ip::PeerOrigin::Unnamed,
        };
        let outcome = f.intake.accept(
            Some(OK),
            &headers,
            peer,
            ReceiveTime::from_unix_seconds(1_795_908_434),
            &f.gate,
            None,
        );
        assert!(matches!(outcome, Outcome::Accepted));
        assert!(f.messages()[0].1.contains("\t10.0.0.1\t"));
    }

    #[tokio::test]
    async fn respond_answers_every_outcome() {
        let f = fixture(|_| {});
        let (s, _) = f.respond(get(OK)).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, r) = f.respond(get("%5B%5D")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], RejectReason::NotAnObject.body().as_bytes());
        // 405 with Allow.
        let req = Request::put("/beacon/event?x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (s, r) = f.respond(req).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], ALLOWED_METHODS);
        // A POST body over the limit: 413, counted.
        let req = Request::post(format!("/beacon/event?{OK}"))
            .body(Full::new(Bytes::from_static(b"0123456789AB")))
            .unwrap();
        assert_eq!(f.respond(req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(f.intake.rejected.get(RejectReason::BodyTooLarge), 1);
        // A small POST body is drained: a beacon.
        let req = Request::post(format!("/beacon/event?{OK}"))
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        assert_eq!(f.respond(req).await.0, StatusCode::NO_CONTENT);
        // 429 with Retry-After.
        let f = fixture(|c| {
            c.rate_limit.per_client_per_second = 1;
            c.rate_limit.per_client_burst = 1;
        });
        assert_eq!(f.respond(get(OK)).await.0, StatusCode::NO_CONTENT);
        let (s, r) = f.respond(get(OK)).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().contains_key(http::header::RETRY_AFTER));
        // Sink full: 503 with Retry-After.
        let f = fixture(|_| {});
        *f.sink.mode.lock().unwrap() = Mode::Refuse(|| EnqueueError::QueueFull);
        let (s, r) = f.respond(get(OK)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        // Spooled and written: 204, accepted; the spool refuses: 503.
        *f.sink.mode.lock().unwrap() = Mode::Spool(Ok(()));
        assert_eq!(f.respond(get(OK)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(f.metrics.accepted.get(), 1);
        *f.sink.mode.lock().unwrap() = Mode::Spool(Err(|| SpoolError::Full));
        assert_eq!(f.respond(get(OK)).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(f.metrics.accepted.get(), 1);
        assert_eq!(f.intake.refused.get(RefusalReason::SpoolFull), 1);
    }

    /// A POST body that fails as hyper (HTTP/2) fails it.
    fn failing_post(
        kind: std::io::ErrorKind,
    ) -> Request<http_body_util::channel::Channel<Bytes, BoxError>> {
        let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        tx.abort(Box::new(std::io::Error::new(kind, "body error")));
        Request::post(format!("/beacon/event?{OK}"))
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn the_post_drain_tells_body_failures_apart() {
        let f = fixture(|_| {});
        let peer: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let cases = [
            (
                std::io::ErrorKind::UnexpectedEof,
                RejectReason::BodyIncomplete,
            ),
            (
                std::io::ErrorKind::ConnectionReset,
                RejectReason::BodyIncomplete,
            ),
            (std::io::ErrorKind::InvalidData, RejectReason::BodyMalformed),
            (
                std::io::ErrorKind::InvalidInput,
                RejectReason::BodyMalformed,
            ),
        ];
        for (kind, reason) in cases {
            let r = f
                .intake
                .respond(failing_post(kind), peer, &f.gate, None)
                .await;
            assert_eq!(r.status(), reason.status(), "{kind:?}");
            assert_eq!(r.headers()[http::header::CONNECTION], "close", "{kind:?}");
        }
        assert_eq!(f.intake.rejected.get(RejectReason::BodyIncomplete), 2);
        assert_eq!(f.intake.rejected.get(RejectReason::BodyMalformed), 2);
        assert_eq!(f.intake.rejected.get(RejectReason::BodyTooLarge), 0);
        assert!(f.messages().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_post_drain_times_out_with_408() {
        let f = fixture(|c| c.http.header_read_timeout_ms = 1000);
        let (_tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let req = Request::post(format!("/beacon/event?{OK}"))
            .body(body)
            .unwrap();
        let r = f
            .intake
            .respond(req, "198.51.100.7:1".parse().unwrap(), &f.gate, None)
            .await;
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(f.intake.rejected.get(RejectReason::BodyTimeout), 1);
    }
}
