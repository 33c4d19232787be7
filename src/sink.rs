//! Sinks: where formatted lines go once a beacon is accepted.
//!
//! Owns the [`BeaconSink`] seam between the request path and the outside
//! world, and its Kafka implementation: one librdkafka producer (with its own
//! polling thread) shared by every connection, delivery reports counted per
//! topic, a readiness probe, and the final flush.
//!
//! Must never: block the request path ([`BeaconSink::enqueue`] only copies the
//! line into librdkafka's queue, or fails at once when it is full), or drop a
//! producer without flushing it (dropping purges librdkafka's queue).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;

use crate::config::Config;
use crate::metrics::{Metrics, TopicRole};

/// Longest message key: the text of an IP address.
pub const MAX_KEY_BYTES: usize = 45;

/// Why a line was not taken. The request is answered 503; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("producer refused the message: {0}")]
    Refused(String),
}

/// Takes formatted lines off the request path.
pub trait BeaconSink: Send + Sync + 'static {
    /// Hands an accepted beacon's line over; returns at once.
    fn enqueue(&self, line: &[u8], key: Option<&[u8]>) -> Result<(), EnqueueError>;
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
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Opaque tag carried with each message to its delivery report.
const TAG_MAIN: usize = 0;
const TAG_ERROR: usize = 1;

impl KafkaSink {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let producer = producer_config(config)
            .create_with_context(DeliveryCounter {
                metrics: metrics.clone(),
                last_error_log: AtomicU64::new(0),
            })
            .map_err(SinkError::Create)?;
        Ok(Self {
            producer,
            topic: config.kafka.topic.clone(),
            error_topic: config.kafka.error_topic.clone(),
            metrics,
            broker_reachable: AtomicBool::new(false),
        })
    }

    /// Checks `[kafka.properties]` by building (and dropping) a producer; no
    /// connection is made.
    pub fn validate_properties(config: &Config) -> Result<(), SinkError> {
        let producer: ThreadedProducer<_> = producer_config(config)
            .create_with_context(DeliveryCounter {
                metrics: Arc::new(Metrics::new()),
                last_error_log: AtomicU64::new(0),
            })
            .map_err(SinkError::Create)?;
        drop(producer);
        Ok(())
    }

    /// True while the last probe reached the broker and found the topic.
    pub fn broker_reachable(&self) -> bool {
        self.broker_reachable.load(Ordering::Relaxed)
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

    /// Waits until every queued message is delivered or has failed, at most
    /// `timeout`. Blocking. Returns how many messages were still in flight.
    pub fn flush(&self, timeout: Duration) -> usize {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
        self.in_flight()
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
        let role = if tag == TAG_MAIN {
            TopicRole::Main
        } else {
            TopicRole::Error
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

impl BeaconSink for KafkaSink {
    fn enqueue(&self, line: &[u8], key: Option<&[u8]>) -> Result<(), EnqueueError> {
        self.send(&self.topic, TAG_MAIN, line, key)
    }

    fn report_rejection(&self, record: &[u8]) {
        if let Some(topic) = &self.error_topic {
            // Counted in kafka_enqueue_failures{topic="error"} when refused.
            let _ = self.send(topic, TAG_ERROR, record, None);
        }
    }
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

/// The producer's context: counts delivery reports and routes librdkafka's
/// logs into `tracing`. Runs on the producer's polling thread.
struct DeliveryCounter {
    metrics: Arc<Metrics>,
    /// Unix second of the last delivery-failure log line (one per second).
    last_error_log: AtomicU64,
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
        let role = if tag == TAG_MAIN {
            TopicRole::Main
        } else {
            TopicRole::Error
        };
        let counters = self.metrics.topic(role);
        match result {
            Ok(_) => {
                counters.delivered.inc();
            }
            Err((error, message)) => {
                counters.delivery_failed.inc();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if self.last_error_log.swap(now, Ordering::Relaxed) != now {
                    // ERROR: a beacon answered 204 did not reach Kafka.
                    tracing::error!(
                        topic = message.topic(),
                        error = %error,
                        "delivery failed; message lost (logged at most once a second, see beacond_kafka_delivery_failures_total)"
                    );
                }
            }
        }
    }
}
