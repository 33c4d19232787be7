//! The legacy beacon protocol: `GET`/`POST /beacon/event?<json>;`, answered
//! `204 No Content`, one message per beacon.
//!
//! Owns what is particular to beacons: the method rule (405 with `Allow`),
//! the empty-body drain (413/408), the synchronous [`BeaconIntake::accept`]
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
use crate::format::{write_error_record, OutputFormat, MAX_KEY_BYTES};
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
    #[test]
    fn reject_reasons_are_a_sound_label_set() {
        crate::metrics::check_label_set::<crate::decode::RejectReason>().unwrap();
        crate::metrics::check_label_set::<super::Conversion>().unwrap();
        crate::metrics::check_label_set::<crate::decode::AttestedField>().unwrap();
    }
}
