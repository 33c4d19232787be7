//! Sinks: where formatted lines go once a beacon is accepted.
//!
//! Owns the [`BeaconSink`] seam between the request path and the outside
//! world, and its Kafka implementation: one librdkafka producer (with its own
//! polling thread) shared by every connection, the routing between producer
//! and disk spool (`spool.mode`), delivery reports (counted per topic; a
//! retriable failure goes to the spool, a permanent one to the error topic),
//! a readiness probe, and the final flush.
//!
//! Must never: block the request path ([`BeaconSink::enqueue`] copies the line
//! into librdkafka's queue, or hands it to the spool's thread, or fails at
//! once), or drop a producer without flushing it (dropping purges its queue;
//! [`KafkaSink::flush_and_spool`] collects what is left).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::Message;

use crate::config::Config;
use crate::metrics::{Metrics, TopicRole};
use crate::spool::segment::SpoolRecord;
use crate::spool::{
    AppendReply, Dispatch, DispatchError, RecordLocation, SpoolError, SpoolHandle, SpoolMode,
};

/// Longest message key: the text of an IP address.
pub const MAX_KEY_BYTES: usize = 45;

/// Why a line was not taken. The request is answered 503; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("producer refused the message: {0}")]
    Refused(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl EnqueueError {
    /// Every reason, for pre-registering metrics.
    pub const REASONS: [&'static str; 5] = [
        "producer_queue_full",
        "producer_error",
        "spool_full",
        "spool_busy",
        "spool_error",
    ];

    /// Stable snake_case name: the `reason` of `beacond_beacons_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EnqueueError::QueueFull => "producer_queue_full",
            EnqueueError::Refused(_) => "producer_error",
            EnqueueError::Spool(SpoolError::Full) => "spool_full",
            EnqueueError::Spool(SpoolError::Busy) => "spool_busy",
            EnqueueError::Spool(_) => "spool_error",
        }
    }
}

/// Where an accepted line went.
#[derive(Debug)]
pub enum Enqueued {
    /// In the producer's queue.
    Queued,
    /// On its way to the spool: answer once the reply says it is written.
    Spooling(AppendReply),
}

/// A message for Kafka.
#[derive(Debug, Clone, Copy)]
pub struct OutboundMessage<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<'a> OutboundMessage<'a> {
    /// An accepted beacon's line, for `kafka.topic`.
    pub fn beacon(payload: &'a [u8], key: Option<&'a [u8]>) -> Self {
        Self { key, payload }
    }
}

/// Takes formatted messages off the request path.
pub trait MessageSink: Send + Sync + 'static {
    /// Hands an accepted message over; returns at once.
    fn enqueue(&self, message: &OutboundMessage<'_>) -> Result<Enqueued, EnqueueError>;
    /// Hands a rejected beacon's record over, best effort (counted when it
    /// cannot be taken; never fails the request, which is already a 4xx).
    fn report_rejection(&self, record: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
}

/// The Kafka sink: a librdkafka producer for the main and error topics.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    error_topic: Option<String>,
    metrics: Arc<Metrics>,
    broker_reachable: AtomicBool,
    spool: Option<SpoolHandle>,
    /// Spooled records in flight at most, so live traffic keeps room.
    dispatch_limit: usize,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Opaque tag carried with each message to its delivery report: a live line,
/// an error record, or a spooled record (flag bit, segment id, offset).
const TAG_MAIN: usize = 0;
const TAG_ERROR: usize = 1;
const TAG_SPOOLED: usize = 1 << 63;

fn spooled_tag(at: RecordLocation) -> usize {
    TAG_SPOOLED | ((at.segment as usize & 0x7fff_ffff) << 32) | (at.offset as usize & 0xffff_ffff)
}

fn spooled_location(tag: usize) -> Option<RecordLocation> {
    (tag & TAG_SPOOLED != 0).then_some(RecordLocation {
        segment: ((tag >> 32) & 0x7fff_ffff) as u64,
        offset: (tag & 0xffff_ffff) as u64,
    })
}

impl KafkaSink {
    /// Creates the producer. With a spool, failed deliveries go to it and it
    /// is fed from here (start it with this sink as its [`Dispatch`]).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        spool: Option<SpoolHandle>,
    ) -> Result<Arc<Self>, SinkError> {
        let producer: ThreadedProducer<DeliveryCounter> = producer_config(config)
            .create_with_context(DeliveryCounter::new(metrics.clone(), spool.clone()))
            .map_err(SinkError::Create)?;
        let queue_max: usize = config
            .producer_properties()
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let sink = Arc::new(Self {
            producer,
            topic: config.kafka.topic.clone(),
            error_topic: config.kafka.error_topic.clone(),
            metrics,
            broker_reachable: AtomicBool::new(false),
            spool,
            dispatch_limit: (queue_max / 2).max(1),
        });
        let _ = sink.producer.context().sink.set(Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Checks `[kafka.properties]` by building (and dropping) a producer; no
    /// connection is made.
    pub fn validate_properties(config: &Config) -> Result<(), SinkError> {
        let producer: ThreadedProducer<_> = producer_config(config)
            .create_with_context(DeliveryCounter::new(Arc::new(Metrics::new()), None))
            .map_err(SinkError::Create)?;
        drop(producer);
        Ok(())
    }

    /// True while the last probe reached the broker and found the topic.
    pub fn broker_reachable(&self) -> bool {
        self.broker_reachable.load(Ordering::Relaxed)
    }

    /// The spool, when there is one.
    pub fn spool(&self) -> Option<&SpoolHandle> {
        self.spool.as_ref()
    }

    /// Messages queued in the producer or awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    /// Asks the broker for the topic's metadata. Blocking: call off the
    /// request path (the probe thread does).
    pub fn probe(&self, timeout: Duration) -> bool {
        let ok = match self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
        {
            Ok(md) => md.topics().iter().any(|t| {
                t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()
            }),
            Err(_) => false,
        };
        let was = self.broker_reachable.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(topic = %self.topic, "broker reachable, topic found");
            } else {
                tracing::warn!(topic = %self.topic, "broker unreachable or topic missing");
            }
        }
        self.metrics.broker_reachable.set(ok as i64);
        self.metrics
            .producer_queue_depth
            .set(self.in_flight() as i64);
        ok
    }

    /// Runs [`KafkaSink::probe`] every `interval` on its own thread until
    /// `stop` is set.
    pub fn spawn_probe(
        self: &Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let sink = Arc::clone(self);
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    sink.probe(interval.max(Duration::from_millis(500)) * 2);
                    let rest = interval.saturating_sub(started.elapsed());
                    // Sleep in small steps so shutdown is not held up.
                    let until = Instant::now() + rest;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50).min(rest));
                    }
                }
            })
    }

    /// Shutdown: waits up to `timeout` for every queued message to be
    /// delivered; then purges what is left, whose failed delivery reports put
    /// live lines into the spool (spooled records stay in their segments).
    /// Blocking. Returns how many messages were still in the producer at the
    /// end (without a spool, those are lost).
    pub fn flush_and_spool(&self, timeout: Duration) -> usize {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, in_flight = self.in_flight(), "producer flush did not complete");
        }
        if self.in_flight() > 0 && self.spool.is_some() {
            // First what was never sent: spooling it cannot duplicate.
            self.producer.purge(PurgeConfig::default().queue());
            self.wait_in_flight(Duration::from_secs(5));
            if self.in_flight() > 0 {
                // Requests still unanswered: their outcome is unknown, so
                // spooling them may duplicate (at-least-once), never lose.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                // librdkafka reports every purged message; the bound is a
                // safety net.
                self.wait_in_flight(Duration::from_secs(30));
            }
        }
        self.in_flight()
    }

    /// Waits (blocking) until nothing is in flight, at most `limit`.
    fn wait_in_flight(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spool_line(
        &self,
        spool: &SpoolHandle,
        line: &[u8],
        key: Option<&[u8]>,
    ) -> Result<Enqueued, EnqueueError> {
        let record = SpoolRecord {
            appended_unix_ms: now_unix_ms(),
            key,
            line,
        };
        Ok(Enqueued::Spooling(spool.append(&record)?))
    }

    fn send(
        &self,
        topic: &str,
        tag: usize,
        line: &[u8],
        key: Option<&[u8]>,
    ) -> Result<(), EnqueueError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, tag).payload(line);
        if let Some(key) = key {
            record = record.key(key);
        }
        let role = if tag == TAG_ERROR {
            TopicRole::Error
        } else {
            TopicRole::Main
        };
        let counters = self.metrics.topic(role);
        match self.producer.send(record) {
            Ok(()) => {
                counters.produced.inc();
                Ok(())
            }
            Err((e, _)) => {
                counters.enqueue_failed.inc();
                match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        Err(EnqueueError::QueueFull)
                    }
                    other => Err(EnqueueError::Refused(other.to_string())),
                }
            }
        }
    }
}

impl MessageSink for KafkaSink {
    fn enqueue(&self, message: &OutboundMessage<'_>) -> Result<Enqueued, EnqueueError> {
        let (line, key) = (message.payload, message.key);
        let Some(spool) = &self.spool else {
            return self
                .send(&self.topic, TAG_MAIN, line, key)
                .map(|()| Enqueued::Queued);
        };
        // Write-ahead, or keep order behind what is already spooled.
        if spool.mode() == SpoolMode::Always || spool.is_pending() {
            return self.spool_line(spool, line, key);
        }
        match self.send(&self.topic, TAG_MAIN, line, key) {
            Ok(()) => Ok(Enqueued::Queued),
            Err(EnqueueError::QueueFull) => self.spool_line(spool, line, key),
            Err(e) => Err(e),
        }
    }

    fn report_rejection(&self, record: &[u8]) {
        if let Some(topic) = &self.error_topic {
            // Counted in kafka_enqueue_failures{topic="error"} when refused.
            let _ = self.send(topic, TAG_ERROR, record, None);
        }
    }
}

impl Dispatch for KafkaSink {
    fn can_dispatch(&self) -> bool {
        self.broker_reachable() && self.in_flight() < self.dispatch_limit
    }

    fn dispatch(&self, record: &SpoolRecord<'_>, at: RecordLocation) -> Result<(), DispatchError> {
        match self.send(&self.topic, spooled_tag(at), record.line, record.key) {
            Ok(()) => Ok(()),
            Err(EnqueueError::QueueFull) => Err(DispatchError::Busy),
            Err(e) => {
                // Refused outright (e.g. larger than a since-lowered
                // message.max.bytes): it would block the spool forever.
                tracing::error!(error = %e, "spooled line refused by the producer; sent to the error topic");
                let error = KafkaError::MessageProduction(RDKafkaErrorCode::InvalidMessage);
                self.producer
                    .context()
                    .report_permanent(record.line, &error);
                Err(DispatchError::Permanent)
            }
        }
    }
}

/// A delivery error that retrying will not fix: the line goes to the error
/// topic instead of round the spool forever.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRequiredAcks
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn producer_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in config.producer_properties() {
        cc.set(k, v);
    }
    if !config.kafka.properties.contains_key("client.id") {
        let host = config.output.hostname.as_deref().unwrap_or("unknown");
        cc.set("client.id", format!("beacond-{host}"));
    }
    cc.set_log_level(RDKafkaLogLevel::Info);
    cc
}

/// The producer's context: counts delivery reports, routes failed lines to
/// the spool or the error topic, and routes librdkafka's logs into
/// `tracing`. Runs on the producer's polling thread.
struct DeliveryCounter {
    metrics: Arc<Metrics>,
    /// Unix second of the last delivery-failure log line (one per second).
    last_error_log: AtomicU64,
    spool: Option<SpoolHandle>,
    /// The sink, to report permanent failures to the error topic.
    sink: OnceLock<Weak<KafkaSink>>,
}

impl DeliveryCounter {
    fn new(metrics: Arc<Metrics>, spool: Option<SpoolHandle>) -> Self {
        Self {
            metrics,
            last_error_log: AtomicU64::new(0),
            spool,
            sink: OnceLock::new(),
        }
    }

    /// Logs a delivery failure at most once a second.
    fn log_failure(&self, topic: &str, error: &KafkaError, what: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_error_log.swap(now, Ordering::Relaxed) != now {
            tracing::error!(topic, error = %error, "{what} (logged at most once a second)");
        }
    }

    /// Writes a record of a permanently failed line to the error topic.
    fn report_permanent(&self, line: &[u8], error: &KafkaError) {
        let Some(sink) = self.sink.get().and_then(Weak::upgrade) else {
            return;
        };
        let record = serde_json::json!({
            "reason": "delivery_failed",
            "message": error.to_string(),
            "line": String::from_utf8_lossy(line),
        });
        if let Ok(bytes) = serde_json::to_vec(&record) {
            sink.report_rejection(&bytes);
        }
    }
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let role = if tag == TAG_ERROR {
            TopicRole::Error
        } else {
            TopicRole::Main
        };
        let counters = self.metrics.topic(role);
        let (error, message) = match result {
            Ok(_) => {
                counters.delivered.inc();
                if let (Some(at), Some(spool)) = (spooled_location(tag), &self.spool) {
                    spool.acked(at);
                }
                return;
            }
            Err((error, message)) => (error, message),
        };
        if tag == TAG_ERROR {
            counters.delivery_failed.inc();
            self.log_failure(message.topic(), error, "error-topic record not delivered");
            return;
        }
        let line = message.payload().unwrap_or_default();
        if is_permanent(error) {
            // Retrying cannot help: counted, reported, and (if spooled) dropped.
            counters.delivery_failed.inc();
            self.log_failure(
                message.topic(),
                error,
                "permanent delivery failure; line sent to the error topic",
            );
            self.report_permanent(line, error);
            if let (Some(at), Some(spool)) = (spooled_location(tag), &self.spool) {
                spool.failed(at, true);
            }
            return;
        }
        match (spooled_location(tag), &self.spool) {
            // Still in its segment: the spool sends it again later.
            (Some(at), Some(spool)) => spool.failed(at, false),
            (None, Some(spool)) => {
                let record = SpoolRecord {
                    appended_unix_ms: now_unix_ms(),
                    key: message.key(),
                    line,
                };
                if spool.append_undelivered(&record).is_err() {
                    counters.delivery_failed.inc();
                    self.log_failure(
                        message.topic(),
                        error,
                        "delivery failed and the spool is stopped; line lost",
                    );
                }
            }
            (_, None) => {
                // ERROR: a beacon answered 204 did not reach Kafka.
                counters.delivery_failed.inc();
                self.log_failure(
                    message.topic(),
                    error,
                    "delivery failed; line lost (no spool)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_tags_round_trip() {
        for (segment, offset) in [(1, 16), (0x7fff_ffff, 0xffff_ffff), (42, 1 << 20)] {
            let at = RecordLocation { segment, offset };
            let tag = spooled_tag(at);
            assert_ne!(tag, TAG_MAIN);
            assert_ne!(tag, TAG_ERROR);
            assert_eq!(spooled_location(tag), Some(at));
        }
        assert_eq!(spooled_location(TAG_MAIN), None);
        assert_eq!(spooled_location(TAG_ERROR), None);
    }

    #[test]
    fn refusal_reasons_are_listed() {
        for e in [
            EnqueueError::QueueFull,
            EnqueueError::Refused("x".into()),
            EnqueueError::Spool(SpoolError::Full),
            EnqueueError::Spool(SpoolError::Busy),
            EnqueueError::Spool(SpoolError::Closed),
        ] {
            assert!(EnqueueError::REASONS.contains(&e.reason()));
        }
    }
}
