//! Sinks: where formatted messages go once a beacon or event is accepted.
//!
//! Owns the [`MessageSink`] seam between the request path and the outside
//! world, and its Kafka implementation: one librdkafka producer (with its own
//! polling thread) shared by every connection and both protocols, the routing
//! between producer and disk spool (`spool.mode`), delivery reports (counted
//! per topic role; a retriable failure goes to the spool, a permanent one to
//! the error topic), a readiness probe, the view of which topics the cluster
//! has, and the final flush.
//!
//! Must never: block the request path ([`MessageSink::enqueue`] copies the
//! message into librdkafka's queue, or hands it to the spool's thread, or
//! fails at once; [`MessageSink::topic_exists`] reads a view the probe thread
//! keeps), or drop a producer without flushing it (dropping purges its queue;
//! [`KafkaSink::flush_and_spool`] collects what is left).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::Message;

use crate::config::Config;
use crate::metrics::{Metrics, TopicRole};
use crate::spool::segment::{check_record, SpoolRecord};
pub use crate::spool::segment::{Destination, RecordError};
use crate::spool::{
    AppendReply, Dispatch, DispatchError, RecordLocation, SpoolError, SpoolHandle, SpoolMode,
    MAX_RECORD_OFFSET, MAX_SEGMENT_ID,
};

/// Longest message key a beacon has: the text of an IP address.
pub const MAX_KEY_BYTES: usize = 45;

/// How often the probe thread fetches the whole cluster's topic list.
pub const TOPIC_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// A lookup of a topic the view lacks asks for an early refresh, at most this often.
pub const TOPIC_REFRESH_MIN_GAP: Duration = Duration::from_secs(1);

/// One message for Kafka: where it goes, its key, its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundMessage<'a> {
    pub destination: Destination<'a>,
    /// Partitioning key; `None`: random partition.
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<'a> OutboundMessage<'a> {
    /// A beacon's line, for `kafka.topic`.
    pub fn beacon(payload: &'a [u8], key: Option<&'a [u8]>) -> Self {
        OutboundMessage {
            destination: Destination::Beacons,
            key,
            payload,
        }
    }
}

/// The refusal of an enqueue after [`KafkaSink::close`].
pub const SINK_CLOSED: &str = "the sink is closed (shutting down)";

/// Why a message was not taken. Nothing was sent; a beacon is answered 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("producer refused the message: {0}")]
    Refused(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The cluster has no such topic (as of the last metadata refresh):
    /// accepting it would only lose it later. Not worth retrying.
    #[error("the topic does not exist in the Kafka cluster")]
    UnknownTopic,
    /// The topic name or key does not fit (a bug or a bad stream config).
    #[error(transparent)]
    Invalid(#[from] RecordError),
}

/// Where an accepted message went.
#[derive(Debug)]
pub enum Enqueued {
    /// In the producer's queue.
    Queued,
    /// On its way to the spool: answer once the reply says it is written.
    Spooling(AppendReply),
}

/// Takes messages off the request path.
pub trait MessageSink: Send + Sync + 'static {
    /// Hands an accepted message over; returns at once.
    fn enqueue(&self, message: &OutboundMessage<'_>) -> Result<Enqueued, EnqueueError>;
    /// Hands a rejected beacon's record over for `kafka.error_topic`, best
    /// effort (counted when it cannot be taken; never fails the request,
    /// which is already a 4xx).
    fn report_rejection(&self, record: &[u8]);
    /// Whether the cluster has `topic`, from a view refreshed off the request
    /// path; never blocks. `None` while not known (the broker has not
    /// answered since start-up): accept, and let the spool hold it.
    fn topic_exists(&self, topic: &str) -> Option<bool> {
        let _ = topic;
        None
    }
}

/// The metric role of a destination.
pub fn role_of(destination: &Destination<'_>) -> TopicRole {
    match destination {
        Destination::Beacons => TopicRole::Main,
        Destination::Event { .. } => TopicRole::Event,
        Destination::EventError { .. } => TopicRole::EventError,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
}

/// The Kafka sink: a librdkafka producer for every topic.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    /// `kafka.topic`, where [`Destination::Beacons`] go.
    topic: String,
    error_topic: Option<String>,
    /// The topics readiness needs (probed every second).
    readiness_topics: Vec<String>,
    metrics: Arc<Metrics>,
    broker_reachable: AtomicBool,
    /// The cluster's topics as of the last full metadata answer; `None`
    /// before the first. Bounded by the cluster's topic count.
    known_topics: RwLock<Option<HashSet<String>>>,
    /// A lookup missed: the probe thread refreshes early.
    refresh_wanted: AtomicBool,
    spool: Option<SpoolHandle>,
    /// Spooled records in flight at most, so live traffic keeps room.
    dispatch_limit: usize,
    /// Set once shutdown flushes: every enqueue is refused from then on.
    closed: AtomicBool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .field("readiness_topics", &self.readiness_topics)
            .finish_non_exhaustive()
    }
}

// The delivery tag: librdkafka's opaque `usize`, carried with each message to
// its delivery report (no allocation per message). 64 bits:
//
//   bit 63      spooled flag
//   bits 61-62  topic role: 0 main, 1 error, 2 event, 3 event_error
//   bits 31-60  spooled: segment id (30 bits, at most MAX_SEGMENT_ID)
//   bits 0-30   spooled: record offset (31 bits, at most MAX_RECORD_OFFSET)
//
// A live message's tag is its role alone. The spool keeps segment ids and
// offsets within these bounds (see `spool::MAX_SEGMENT_ID`).
const _: () = assert!(usize::BITS == 64, "the delivery tag needs a 64-bit usize");
const TAG_SPOOLED: usize = 1 << 63;
const ROLE_SHIFT: u32 = 61;
const SEGMENT_SHIFT: u32 = 31;
const _: () = assert!(MAX_RECORD_OFFSET == (1 << SEGMENT_SHIFT) - 1);
const _: () = assert!(MAX_SEGMENT_ID == (1 << (ROLE_SHIFT - SEGMENT_SHIFT)) - 1);

fn role_bits(role: TopicRole) -> usize {
    match role {
        TopicRole::Main => 0,
        TopicRole::Error => 1,
        TopicRole::Event => 2,
        TopicRole::EventError => 3,
    }
}

fn tag_role(tag: usize) -> TopicRole {
    match (tag >> ROLE_SHIFT) & 0b11 {
        0 => TopicRole::Main,
        1 => TopicRole::Error,
        2 => TopicRole::Event,
        _ => TopicRole::EventError,
    }
}

fn live_tag(role: TopicRole) -> usize {
    role_bits(role) << ROLE_SHIFT
}

/// `None` when the location is out of the tag's range (the spool prevents it).
fn spooled_tag(role: TopicRole, at: RecordLocation) -> Option<usize> {
    if at.segment > MAX_SEGMENT_ID || at.offset > MAX_RECORD_OFFSET {
        return None;
    }
    Some(
        TAG_SPOOLED
            | role_bits(role) << ROLE_SHIFT
            | (at.segment as usize) << SEGMENT_SHIFT
            | at.offset as usize,
    )
}

fn spooled_location(tag: usize) -> Option<RecordLocation> {
    (tag & TAG_SPOOLED != 0).then_some(RecordLocation {
        segment: ((tag >> SEGMENT_SHIFT) as u64) & MAX_SEGMENT_ID,
        offset: tag as u64 & MAX_RECORD_OFFSET,
    })
}

impl KafkaSink {
    /// Creates the producer; readiness probes `kafka.topic`. With a spool,
    /// failed deliveries go to it and it is fed from here (start it with
    /// this sink as its [`Dispatch`]).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        spool: Option<SpoolHandle>,
    ) -> Result<Arc<Self>, SinkError> {
        Self::with_readiness_topics(config, metrics, spool, Vec::new())
    }

    /// As [`KafkaSink::new`], with readiness probing every topic of
    /// `readiness_topics` (e.g. `kafka.topic` and the event error topic;
    /// empty: `kafka.topic`).
    pub fn with_readiness_topics(
        config: &Config,
        metrics: Arc<Metrics>,
        spool: Option<SpoolHandle>,
        mut readiness_topics: Vec<String>,
    ) -> Result<Arc<Self>, SinkError> {
        if readiness_topics.is_empty() {
            readiness_topics.push(config.kafka.topic.clone());
        }
        let mut seen = HashSet::new();
        readiness_topics.retain(|t| seen.insert(t.clone()));
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
            readiness_topics,
            metrics,
            broker_reachable: AtomicBool::new(false),
            known_topics: RwLock::new(None),
            refresh_wanted: AtomicBool::new(false),
            spool,
            dispatch_limit: (queue_max / 2).max(1),
            closed: AtomicBool::new(false),
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

    /// True while the last probe reached the broker and found every
    /// readiness topic.
    pub fn broker_reachable(&self) -> bool {
        self.broker_reachable.load(Ordering::Relaxed)
    }

    /// The topics readiness probes.
    pub fn readiness_topics(&self) -> &[String] {
        &self.readiness_topics
    }

    /// The spool, when there is one.
    pub fn spool(&self) -> Option<&SpoolHandle> {
        self.spool.as_ref()
    }

    /// Messages queued in the producer or awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    /// Asks the broker for each readiness topic's metadata. Blocking: call
    /// off the request path (the probe thread does).
    pub fn probe(&self, timeout: Duration) -> bool {
        let ok = self
            .readiness_topics
            .iter()
            .all(|topic| self.probe_topic(topic, timeout));
        let was = self.broker_reachable.swap(ok, Ordering::Relaxed);
        if was != ok {
            let topics = self.readiness_topics.join(",");
            if ok {
                tracing::info!(%topics, "broker reachable, topics found");
            } else {
                tracing::warn!(%topics, "broker unreachable or a topic missing");
            }
        }
        self.metrics.broker_reachable.set(ok as i64);
        self.metrics
            .producer_queue_depth
            .set(self.in_flight() as i64);
        ok
    }

    fn probe_topic(&self, topic: &str, timeout: Duration) -> bool {
        match self.producer.client().fetch_metadata(Some(topic), timeout) {
            Ok(md) => md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
            Err(_) => false,
        }
    }

    /// Fetches the whole cluster's topic list and replaces the view
    /// [`MessageSink::topic_exists`] reads. Blocking: call off the request
    /// path (the probe thread does). On failure the old view stays.
    pub fn refresh_topics(&self, timeout: Duration) -> bool {
        let md = match self.producer.client().fetch_metadata(None, timeout) {
            Ok(md) => md,
            Err(e) => {
                tracing::debug!(error = %e, "cluster metadata refresh failed; keeping the last topic list");
                return false;
            }
        };
        let names: HashSet<String> = md
            .topics()
            .iter()
            .filter(|t| t.error() != Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART))
            .map(|t| t.name().to_owned())
            .collect();
        let old = {
            let mut view = self
                .known_topics
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            view.replace(names)
        };
        // The old set is freed outside the lock.
        drop(old);
        true
    }

    /// Runs [`KafkaSink::probe`] every `interval` and
    /// [`KafkaSink::refresh_topics`] every [`TOPIC_REFRESH_INTERVAL`] (every
    /// `interval` until it first succeeds or after a failure, and early,
    /// at most every [`TOPIC_REFRESH_MIN_GAP`], when a lookup missed) on its
    /// own thread until `stop` is set.
    pub fn spawn_probe(
        self: &Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let sink = Arc::clone(self);
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                let timeout = interval.max(Duration::from_millis(500)) * 2;
                let mut last_refresh: Option<(Instant, bool)> = None;
                let refresh_due = |last: Option<(Instant, bool)>, sink: &KafkaSink| match last {
                    None => true,
                    Some((at, ok)) => {
                        let since = at.elapsed();
                        since >= TOPIC_REFRESH_INTERVAL
                            || (!ok && since >= interval)
                            || (since >= TOPIC_REFRESH_MIN_GAP
                                && sink.refresh_wanted.load(Ordering::Relaxed))
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    // The topic list first: at start-up the spool replays
                    // only once the probe below says ready, by then the
                    // view is known.
                    if refresh_due(last_refresh, &sink) {
                        sink.refresh_wanted.store(false, Ordering::Relaxed);
                        let ok = sink.refresh_topics(timeout);
                        last_refresh = Some((Instant::now(), ok));
                    }
                    sink.probe(timeout);
                    let rest = interval.saturating_sub(started.elapsed());
                    // Sleep in small steps so shutdown (and a wanted
                    // refresh) is not held up.
                    let until = Instant::now() + rest;
                    while Instant::now() < until
                        && !stop.load(Ordering::Relaxed)
                        && !(sink.refresh_wanted.load(Ordering::Relaxed)
                            && refresh_due(last_refresh, &sink))
                    {
                        std::thread::sleep(Duration::from_millis(50).min(rest));
                    }
                }
            })
    }

    /// Shutdown: waits up to `timeout` for every queued message to be
    /// delivered; then purges what is left, whose failed delivery reports put
    /// live messages into the spool (spooled records stay in their segments).
    /// Blocking. Returns how many messages were still in the producer at the
    /// end (without a spool, those are lost).
    pub fn flush_and_spool(&self, timeout: Duration) -> usize {
        self.close();
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

    /// Refuses every enqueue from now on (shutdown, before the flush): a
    /// request that would hand a message over after the flush gets a 503,
    /// never a 2xx for a message nobody will deliver or spool.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Waits (blocking) until nothing is in flight, at most `limit`.
    fn wait_in_flight(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The topic a destination names (beacons: `kafka.topic`).
    fn topic_of<'a>(&'a self, destination: &Destination<'a>) -> &'a str {
        destination.topic().unwrap_or(&self.topic)
    }

    fn spool_message(
        &self,
        spool: &SpoolHandle,
        message: &OutboundMessage<'_>,
    ) -> Result<Enqueued, EnqueueError> {
        let record = SpoolRecord {
            appended_unix_ms: now_unix_ms(),
            destination: message.destination,
            key: message.key,
            payload: message.payload,
        };
        Ok(Enqueued::Spooling(spool.append(&record)?))
    }

    fn send(
        &self,
        topic: &str,
        tag: usize,
        payload: &[u8],
        key: Option<&[u8]>,
    ) -> Result<(), EnqueueError> {
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, tag).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        let counters = self.metrics.topic(tag_role(tag));
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
        let role = role_of(&message.destination);
        if self.closed.load(Ordering::Acquire) {
            self.metrics.topic(role).enqueue_failed.inc();
            return Err(EnqueueError::Refused(SINK_CLOSED.into()));
        }
        if let Err(e) = check_record(&message.destination, message.key) {
            self.metrics.topic(role).enqueue_failed.inc();
            return Err(e.into());
        }
        if let Some(topic) = message.destination.topic() {
            if self.topic_exists(topic) == Some(false) {
                self.metrics.topic(role).enqueue_failed.inc();
                return Err(EnqueueError::UnknownTopic);
            }
        }
        let topic = self.topic_of(&message.destination);
        let tag = live_tag(role);
        let Some(spool) = &self.spool else {
            return self
                .send(topic, tag, message.payload, message.key)
                .map(|()| Enqueued::Queued);
        };
        // Write-ahead, or keep order behind what is already spooled.
        if spool.mode() == SpoolMode::Always || spool.is_pending() {
            return self.spool_message(spool, message);
        }
        match self.send(topic, tag, message.payload, message.key) {
            Ok(()) => Ok(Enqueued::Queued),
            Err(EnqueueError::QueueFull) => self.spool_message(spool, message),
            Err(e) => Err(e),
        }
    }

    fn report_rejection(&self, record: &[u8]) {
        if let Some(topic) = &self.error_topic {
            // Counted in kafka_enqueue_failures{topic="error"} when refused.
            let _ = self.send(topic, live_tag(TopicRole::Error), record, None);
        }
    }

    fn topic_exists(&self, topic: &str) -> Option<bool> {
        let known = self
            .known_topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|names| names.contains(topic));
        if known == Some(false) {
            // Perhaps created since: the probe thread looks again soon.
            self.refresh_wanted.store(true, Ordering::Relaxed);
        }
        known
    }
}

impl Dispatch for KafkaSink {
    fn can_dispatch(&self) -> bool {
        self.broker_reachable() && self.in_flight() < self.dispatch_limit
    }

    fn broker_answers(&self) -> bool {
        self.broker_reachable()
    }

    fn dispatch(&self, record: &SpoolRecord<'_>, at: RecordLocation) -> Result<(), DispatchError> {
        let role = role_of(&record.destination);
        let topic = self.topic_of(&record.destination);
        let context = self.producer.context();
        let Some(tag) = spooled_tag(role, at) else {
            // The spool keeps locations in range; this is a bug, not data.
            tracing::error!(
                segment = at.segment,
                offset = at.offset,
                "spool location out of the delivery tag's range; record sent to the error topic"
            );
            self.metrics.topic(role).delivery_failed.inc();
            context.report_permanent(topic, record.payload, &"spool location out of range");
            return Err(DispatchError::Permanent);
        };
        if record.destination.topic().is_some() && self.topic_exists(topic) == Some(false) {
            // Deleted since it was spooled (or never existed, and spooled
            // before the view was known): it would fail forever.
            self.metrics.topic(role).delivery_failed.inc();
            context.log_failure(
                topic,
                &"unknown topic",
                "spooled message for a topic the cluster does not have; sent to the error topic",
            );
            context.report_permanent(topic, record.payload, &"topic does not exist");
            return Err(DispatchError::Permanent);
        }
        match self.send(topic, tag, record.payload, record.key) {
            Ok(()) => Ok(()),
            Err(EnqueueError::QueueFull) => Err(DispatchError::Busy),
            Err(e) => {
                // Refused outright (e.g. larger than a since-lowered
                // message.max.bytes): it would block the spool forever.
                tracing::error!(error = %e, "spooled message refused by the producer; sent to the error topic");
                context.report_permanent(topic, record.payload, &e);
                Err(DispatchError::Permanent)
            }
        }
    }
}

/// A delivery error that retrying will not fix: the message goes to the
/// error topic instead of round the spool forever.
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

/// The topic is missing (librdkafka reports this only after
/// `topic.metadata.propagation.max.ms`, or the broker said so).
fn is_unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
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
    /// librdkafka's statistics, exported (`statistics.interval.ms`).
    stats: crate::kafka_stats::KafkaStats,
}

impl DeliveryCounter {
    fn new(metrics: Arc<Metrics>, spool: Option<SpoolHandle>) -> Self {
        Self {
            last_error_log: AtomicU64::new(0),
            stats: crate::kafka_stats::KafkaStats::new(&metrics),
            metrics,
            spool,
            sink: OnceLock::new(),
        }
    }

    /// Logs a delivery failure at most once a second.
    fn log_failure(&self, topic: &str, error: &dyn std::fmt::Display, what: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_error_log.swap(now, Ordering::Relaxed) != now {
            tracing::error!(topic, error = %error, "{what} (logged at most once a second)");
        }
    }

    /// Writes a record of a permanently failed message to `kafka.error_topic`
    /// (events too: an error event needs the validation module).
    fn report_permanent(&self, topic: &str, payload: &[u8], error: &dyn std::fmt::Display) {
        let Some(sink) = self.sink() else {
            return;
        };
        let record = serde_json::json!({
            "reason": "delivery_failed",
            "message": error.to_string(),
            "topic": topic,
            "line": String::from_utf8_lossy(payload),
        });
        if let Ok(bytes) = serde_json::to_vec(&record) {
            sink.report_rejection(&bytes);
        }
    }
}

impl DeliveryCounter {
    fn sink(&self) -> Option<Arc<KafkaSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// Whether a failure to deliver to `topic` is permanent: by its error,
    /// or, for events, a missing topic the cluster's topic list confirms
    /// (else librdkafka may just be ahead of a topic being created: retry).
    fn permanent(&self, role: TopicRole, topic: &str, error: &KafkaError) -> bool {
        if is_permanent(error) {
            return true;
        }
        let event = matches!(role, TopicRole::Event | TopicRole::EventError);
        event
            && is_unknown_topic(error)
            && self.sink().and_then(|s| s.topic_exists(topic)) == Some(false)
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

    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.update(statistics);
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let role = tag_role(tag);
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
        let topic = message.topic();
        let destination = match role {
            TopicRole::Error => {
                counters.delivery_failed.inc();
                self.log_failure(topic, error, "error-topic record not delivered");
                return;
            }
            TopicRole::Main => Destination::Beacons,
            TopicRole::Event => Destination::Event { topic },
            TopicRole::EventError => Destination::EventError { topic },
        };
        let payload = message.payload().unwrap_or_default();
        if self.permanent(role, topic, error) {
            // Retrying cannot help: counted, reported, and (if spooled) dropped.
            counters.delivery_failed.inc();
            self.log_failure(
                topic,
                error,
                "permanent delivery failure; message sent to the error topic",
            );
            self.report_permanent(topic, payload, error);
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
                    destination,
                    key: message.key(),
                    payload,
                };
                if spool.append_undelivered(&record).is_err() {
                    counters.delivery_failed.inc();
                    self.log_failure(
                        topic,
                        error,
                        "delivery failed and the spool is stopped; message lost",
                    );
                }
            }
            (_, None) => {
                // ERROR: a message answered 2xx did not reach Kafka.
                counters.delivery_failed.inc();
                self.log_failure(topic, error, "delivery failed; message lost (no spool)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [TopicRole; 4] = [
        TopicRole::Main,
        TopicRole::Error,
        TopicRole::Event,
        TopicRole::EventError,
    ];

    #[test]
    fn live_tags_carry_their_role() {
        for role in ROLES {
            let tag = live_tag(role);
            assert_eq!(tag_role(tag), role);
            assert_eq!(spooled_location(tag), None);
        }
        assert_eq!(live_tag(TopicRole::Main), 0);
    }

    #[test]
    fn spooled_tags_round_trip() {
        let locations = [
            (1, 16),
            (42, 1 << 20),
            (MAX_SEGMENT_ID, MAX_RECORD_OFFSET),
            (MAX_SEGMENT_ID, 16),
            (1, MAX_RECORD_OFFSET),
            // The largest offset spool.segment_bytes (1 GiB at most) allows.
            (
                7,
                (1 << 30) + u64::from(crate::spool::segment::MAX_BODY_LEN),
            ),
        ];
        for (segment, offset) in locations {
            for role in ROLES {
                let at = RecordLocation { segment, offset };
                let tag = spooled_tag(role, at).expect("in range");
                assert_eq!(tag_role(tag), role);
                assert_eq!(spooled_location(tag), Some(at));
                for other in ROLES {
                    assert_ne!(tag, live_tag(other));
                }
            }
        }
    }

    #[test]
    fn spooled_tags_refuse_locations_out_of_range() {
        for (segment, offset) in [
            (MAX_SEGMENT_ID + 1, 16),
            (1, MAX_RECORD_OFFSET + 1),
            (u64::MAX, u64::MAX),
        ] {
            let at = RecordLocation { segment, offset };
            assert_eq!(spooled_tag(TopicRole::Event, at), None);
        }
    }

    #[test]
    fn destinations_map_to_roles() {
        assert_eq!(role_of(&Destination::Beacons), TopicRole::Main);
        assert_eq!(
            role_of(&Destination::Event { topic: "t" }),
            TopicRole::Event
        );
        assert_eq!(
            role_of(&Destination::EventError { topic: "t" }),
            TopicRole::EventError
        );
    }

    #[test]
    fn unknown_topic_errors_are_recognised() {
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            let e = KafkaError::MessageProduction(code);
            assert!(is_unknown_topic(&e));
            assert!(
                !is_permanent(&e),
                "permanent only once the topic list agrees"
            );
        }
        assert!(!is_unknown_topic(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
    }

    /// A sink whose broker does not exist: nothing here connects.
    fn offline_sink() -> Arc<KafkaSink> {
        let mut config = Config::default();
        config.kafka.brokers = "127.0.0.1:9".into();
        config.kafka.topic = "beacons".into();
        KafkaSink::with_readiness_topics(
            &config,
            Arc::new(Metrics::new()),
            None,
            vec!["beacons".into(), "errors".into(), "beacons".into()],
        )
        .unwrap()
    }

    #[test]
    fn topic_view_is_unknown_until_refreshed_then_exact() {
        let sink = offline_sink();
        assert_eq!(sink.readiness_topics(), ["beacons", "errors"]);
        assert_eq!(sink.topic_exists("anything"), None);
        assert!(!sink.refresh_wanted.load(Ordering::Relaxed));
        *sink.known_topics.write().unwrap() = Some(HashSet::from(["ev.a".to_string()]));
        assert_eq!(sink.topic_exists("ev.a"), Some(true));
        assert!(!sink.refresh_wanted.load(Ordering::Relaxed));
        assert_eq!(sink.topic_exists("ev.b"), Some(false));
        assert!(
            sink.refresh_wanted.load(Ordering::Relaxed),
            "a miss asks for a refresh"
        );
        // A failed refresh (no broker) keeps the view.
        assert!(!sink.refresh_topics(Duration::from_millis(100)));
        assert_eq!(sink.topic_exists("ev.a"), Some(true));
    }

    #[test]
    fn enqueue_refuses_unknown_topics_and_bad_messages_without_sending() {
        let sink = offline_sink();
        *sink.known_topics.write().unwrap() = Some(HashSet::from(["ev.a".to_string()]));
        let send = |destination, key: Option<&'static [u8]>| {
            sink.enqueue(&OutboundMessage {
                destination,
                key,
                payload: b"{}",
            })
        };
        assert!(matches!(
            send(Destination::Event { topic: "ev.b" }, None),
            Err(EnqueueError::UnknownTopic)
        ));
        let long = "t".repeat(250);
        assert!(matches!(
            send(
                Destination::EventError {
                    topic: Box::leak(long.into_boxed_str())
                },
                None
            ),
            Err(EnqueueError::Invalid(RecordError::TopicLength(250)))
        ));
        assert!(matches!(
            send(Destination::Event { topic: "ev.a" }, Some(b"k")),
            Ok(Enqueued::Queued)
        ));
        assert!(matches!(
            send(Destination::Beacons, None),
            Ok(Enqueued::Queued)
        ));
        let m = &sink.metrics;
        assert_eq!(m.topic(TopicRole::Event).produced.get(), 1);
        assert_eq!(m.topic(TopicRole::Event).enqueue_failed.get(), 1);
        assert_eq!(m.topic(TopicRole::EventError).enqueue_failed.get(), 1);
        assert_eq!(m.topic(TopicRole::Main).produced.get(), 1);
        // Purge so dropping the producer does not wait.
        sink.producer.purge(PurgeConfig::default().queue());
    }

    #[test]
    fn a_closed_sink_refuses_every_enqueue() {
        let sink = offline_sink();
        let beacon = OutboundMessage {
            destination: Destination::Beacons,
            key: None,
            payload: b"line",
        };
        assert!(matches!(sink.enqueue(&beacon), Ok(Enqueued::Queued)));
        sink.close();
        match sink.enqueue(&beacon) {
            Err(EnqueueError::Refused(why)) => assert_eq!(why, SINK_CLOSED),
            other => panic!("enqueue after close: {other:?}"),
        }
        assert_eq!(sink.metrics.topic(TopicRole::Main).produced.get(), 1);
        assert_eq!(sink.metrics.topic(TopicRole::Main).enqueue_failed.get(), 1);
        sink.producer.purge(PurgeConfig::default().queue());
    }
}
