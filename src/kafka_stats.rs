//! librdkafka's statistics as Prometheus metrics.
//!
//! Owns the `beacond_kafka_broker_*`, `beacond_kafka_topic_*` and
//! `beacond_kafka_stats_*` families and their mapping from the JSON document
//! librdkafka emits every `statistics.interval.ms` (its STATISTICS.md format;
//! beacond sets 10 s unless `[kafka.properties]` says otherwise). The
//! producer's context (`sink`) hands each document to [`KafkaStats::update`].
//!
//! Per broker: connection state (up, or being attempted or lost; no series
//! while librdkafka wants no connection to it), round-trip time (average and
//! p99 of librdkafka's rolling window), requests and messages waiting to be
//! sent (`outbuf`) and awaiting a response (`waitresp`), and librdkafka's
//! totals of transmit and receive errors, request timeouts, retries and
//! disconnects. Per topic: batch size in bytes and in messages (average and
//! p99). Series of a broker or topic that leaves the statistics are removed.
//!
//! Labels stay bounded: broker names come from the configured bootstrap list
//! and the cluster's metadata, topic names from the topics the producer was
//! given (which the sink only accepts when the cluster has them), never from
//! a request; and at most [`MAX_BROKERS`] brokers and [`MAX_TOPICS`] topics
//! are exported (the first seen keep their place; the rest are counted in
//! `beacond_kafka_stats_omitted{kind}`).
//!
//! Must never: fail or panic on a document it does not expect (every field
//! may be missing; an unparseable document is counted and logged), or take
//! long (it runs on the producer's polling thread, between delivery reports).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

use crate::metrics::{escape_label_value, Metrics};

/// Brokers exported at most (a cluster's brokers plus the bootstrap entries).
pub const MAX_BROKERS: usize = 32;
/// Topics exported at most (`kafka.topic`, the error topics, event topics).
pub const MAX_TOPICS: usize = 64;

/// A statistics document that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("librdkafka statistics are not the expected JSON: {0}")]
    Parse(#[from] serde_json::Error),
}

// The part of librdkafka's document used here. Every field is optional
// (`default`): a field librdkafka drops or renames reads as 0, not as a
// failed update.

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Document {
    brokers: HashMap<String, BrokerDoc>,
    topics: HashMap<String, TopicDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BrokerDoc {
    /// `learned`, `configured`, `internal`, `logical`.
    source: String,
    /// `INIT`, `DOWN`, `CONNECT`, ..., `UP`, `UPDATE`.
    state: String,
    outbuf_cnt: i64,
    outbuf_msg_cnt: i64,
    waitresp_cnt: i64,
    waitresp_msg_cnt: i64,
    txerrs: i64,
    rxerrs: i64,
    txretries: i64,
    req_timeouts: i64,
    disconnects: i64,
    /// Microseconds.
    rtt: Window,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TopicDoc {
    /// Bytes.
    batchsize: Window,
    /// Messages.
    batchcnt: Window,
}

/// A rolling window (an HDR histogram in librdkafka); all 0 when empty.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Window {
    avg: f64,
    p99: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The exported families, fed from librdkafka's statistics.
pub struct KafkaStats {
    broker_up: Family<BrokerLabels, Gauge>,
    rtt_avg: Family<BrokerLabels, FloatGauge>,
    rtt_p99: Family<BrokerLabels, FloatGauge>,
    outbuf_requests: Family<BrokerLabels, Gauge>,
    outbuf_messages: Family<BrokerLabels, Gauge>,
    waitresp_requests: Family<BrokerLabels, Gauge>,
    waitresp_messages: Family<BrokerLabels, Gauge>,
    tx_errors: Family<BrokerLabels, Counter>,
    rx_errors: Family<BrokerLabels, Counter>,
    tx_retries: Family<BrokerLabels, Counter>,
    request_timeouts: Family<BrokerLabels, Counter>,
    disconnects: Family<BrokerLabels, Counter>,
    batch_bytes_avg: Family<TopicLabels, FloatGauge>,
    batch_bytes_p99: Family<TopicLabels, FloatGauge>,
    batch_messages_avg: Family<TopicLabels, FloatGauge>,
    batch_messages_p99: Family<TopicLabels, FloatGauge>,
    updates: Counter,
    errors: Counter,
    omitted_brokers: Gauge,
    omitted_topics: Gauge,
    /// The brokers and topics exported now (escaped label values).
    exported: Mutex<Exported>,
}

#[derive(Debug, Default)]
struct Exported {
    brokers: HashSet<String>,
    topics: HashSet<String>,
}

impl std::fmt::Debug for KafkaStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStats").finish_non_exhaustive()
    }
}

impl KafkaStats {
    /// Registers every family in `metrics` (empty until the first document).
    pub fn new(metrics: &Metrics) -> Self {
        let omitted = Family::<KindLabels, Gauge>::default();
        let omitted_brokers = omitted
            .get_or_create(&KindLabels { kind: "broker" })
            .clone();
        let omitted_topics = omitted.get_or_create(&KindLabels { kind: "topic" }).clone();
        let this = Self {
            broker_up: Family::default(),
            rtt_avg: Family::default(),
            rtt_p99: Family::default(),
            outbuf_requests: Family::default(),
            outbuf_messages: Family::default(),
            waitresp_requests: Family::default(),
            waitresp_messages: Family::default(),
            tx_errors: Family::default(),
            rx_errors: Family::default(),
            tx_retries: Family::default(),
            request_timeouts: Family::default(),
            disconnects: Family::default(),
            batch_bytes_avg: Family::default(),
            batch_bytes_p99: Family::default(),
            batch_messages_avg: Family::default(),
            batch_messages_p99: Family::default(),
            updates: Counter::default(),
            errors: Counter::default(),
            omitted_brokers,
            omitted_topics,
            exported: Mutex::new(Exported::default()),
        };
        let m = metrics;
        m.register(
            "kafka_broker_up",
            "1 while librdkafka's connection to the broker is up (librdkafka statistics)",
            this.broker_up.clone(),
        );
        m.register(
            "kafka_broker_rtt_avg_seconds",
            "Broker round-trip time, average over librdkafka's window",
            this.rtt_avg.clone(),
        );
        m.register(
            "kafka_broker_rtt_p99_seconds",
            "Broker round-trip time, 99th percentile over librdkafka's window",
            this.rtt_p99.clone(),
        );
        m.register(
            "kafka_broker_outbuf_requests",
            "Requests waiting to be sent to the broker",
            this.outbuf_requests.clone(),
        );
        m.register(
            "kafka_broker_outbuf_messages",
            "Messages waiting to be sent to the broker",
            this.outbuf_messages.clone(),
        );
        m.register(
            "kafka_broker_waitresp_requests",
            "Requests sent to the broker awaiting a response",
            this.waitresp_requests.clone(),
        );
        m.register(
            "kafka_broker_waitresp_messages",
            "Messages sent to the broker awaiting a response",
            this.waitresp_messages.clone(),
        );
        m.register(
            "kafka_broker_tx_errors",
            "Transmit errors to the broker (librdkafka's total)",
            this.tx_errors.clone(),
        );
        m.register(
            "kafka_broker_rx_errors",
            "Receive errors from the broker (librdkafka's total)",
            this.rx_errors.clone(),
        );
        m.register(
            "kafka_broker_tx_retries",
            "Requests to the broker retried (librdkafka's total)",
            this.tx_retries.clone(),
        );
        m.register(
            "kafka_broker_request_timeouts",
            "Requests to the broker that timed out (librdkafka's total)",
            this.request_timeouts.clone(),
        );
        m.register(
            "kafka_broker_disconnects",
            "Disconnections from the broker (librdkafka's total)",
            this.disconnects.clone(),
        );
        m.register(
            "kafka_topic_batch_size_avg_bytes",
            "Produce batch size in bytes, average over librdkafka's window",
            this.batch_bytes_avg.clone(),
        );
        m.register(
            "kafka_topic_batch_size_p99_bytes",
            "Produce batch size in bytes, 99th percentile over librdkafka's window",
            this.batch_bytes_p99.clone(),
        );
        m.register(
            "kafka_topic_batch_messages_avg",
            "Messages per produce batch, average over librdkafka's window",
            this.batch_messages_avg.clone(),
        );
        m.register(
            "kafka_topic_batch_messages_p99",
            "Messages per produce batch, 99th percentile over librdkafka's window",
            this.batch_messages_p99.clone(),
        );
        m.register(
            "kafka_stats_updates",
            "librdkafka statistics documents applied",
            this.updates.clone(),
        );
        m.register(
            "kafka_stats_errors",
            "librdkafka statistics documents that could not be read",
            this.errors.clone(),
        );
        m.register(
            "kafka_stats_omitted",
            "Brokers or topics left out of the statistics metrics by the label cap",
            omitted,
        );
        this
    }

    /// Applies one statistics document (from librdkafka's `stats_cb`). A
    /// document that cannot be read is counted and logged; the metrics keep
    /// their last values.
    pub fn update(&self, json: &[u8]) {
        match self.try_update(json) {
            Ok(()) => {}
            Err(e) => {
                let n = self.errors.inc() + 1;
                // The 1st, 2nd, 4th, 8th...: a steady stream of bad documents
                // does not flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, errors = n, "librdkafka statistics ignored");
                }
            }
        }
    }

    fn try_update(&self, json: &[u8]) -> Result<(), StatsError> {
        let doc: Document = serde_json::from_slice(json)?;
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);

        let brokers: Vec<(String, &BrokerDoc)> = doc
            .brokers
            .iter()
            // librdkafka's internal pseudo-broker (`:0/internal`) is no broker.
            .filter(|(_, b)| b.source != "internal")
            .map(|(name, b)| (escape_label_value(name), b))
            .collect();
        let (admitted, omitted) = admit(
            &mut exported.brokers,
            brokers.iter().map(|(n, _)| n.as_str()),
            MAX_BROKERS,
            |gone| self.remove_broker(gone),
        );
        self.omitted_brokers.set(omitted as i64);
        for (name, b) in &brokers {
            if admitted.contains(name.as_str()) {
                self.set_broker(name, b);
            }
        }

        let topics: Vec<(String, &TopicDoc)> = doc
            .topics
            .iter()
            .map(|(name, t)| (escape_label_value(name), t))
            .collect();
        let (admitted, omitted) = admit(
            &mut exported.topics,
            topics.iter().map(|(n, _)| n.as_str()),
            MAX_TOPICS,
            |gone| self.remove_topic(gone),
        );
        self.omitted_topics.set(omitted as i64);
        for (name, t) in &topics {
            if admitted.contains(name.as_str()) {
                self.set_topic(name, t);
            }
        }
        self.updates.inc();
        Ok(())
    }

    fn set_broker(&self, name: &str, b: &BrokerDoc) {
        let l = BrokerLabels {
            broker: name.to_string(),
        };
        // INIT: librdkafka wants no connection to this broker (sparse
        // connections: it leads no partition the producer writes to, or an
        // idle connection was closed), so it is neither up nor down: no
        // series, and no alert. Every other state but UP is a connection
        // being attempted or lost.
        if b.state == "INIT" {
            self.broker_up.remove(&l);
        } else {
            let up = matches!(b.state.as_str(), "UP" | "UPDATE");
            // One statement per lookup: get_or_create's guard lives to the
            // end of its statement.
            self.broker_up.get_or_create(&l).set(i64::from(up));
        }
        self.rtt_avg.get_or_create(&l).set(micros(b.rtt.avg));
        self.rtt_p99.get_or_create(&l).set(micros(b.rtt.p99));
        self.outbuf_requests.get_or_create(&l).set(b.outbuf_cnt);
        self.outbuf_messages.get_or_create(&l).set(b.outbuf_msg_cnt);
        self.waitresp_requests.get_or_create(&l).set(b.waitresp_cnt);
        self.waitresp_messages
            .get_or_create(&l)
            .set(b.waitresp_msg_cnt);
        // librdkafka's totals, as they are (they only grow for one broker
        // handle; a broker that leaves and comes back is a new series).
        set_total(&self.tx_errors.get_or_create(&l), b.txerrs);
        set_total(&self.rx_errors.get_or_create(&l), b.rxerrs);
        set_total(&self.tx_retries.get_or_create(&l), b.txretries);
        set_total(&self.request_timeouts.get_or_create(&l), b.req_timeouts);
        set_total(&self.disconnects.get_or_create(&l), b.disconnects);
    }

    fn remove_broker(&self, name: &str) {
        let l = BrokerLabels {
            broker: name.to_string(),
        };
        self.broker_up.remove(&l);
        self.rtt_avg.remove(&l);
        self.rtt_p99.remove(&l);
        self.outbuf_requests.remove(&l);
        self.outbuf_messages.remove(&l);
        self.waitresp_requests.remove(&l);
        self.waitresp_messages.remove(&l);
        self.tx_errors.remove(&l);
        self.rx_errors.remove(&l);
        self.tx_retries.remove(&l);
        self.request_timeouts.remove(&l);
        self.disconnects.remove(&l);
    }

    fn set_topic(&self, name: &str, t: &TopicDoc) {
        let l = TopicLabels {
            topic: name.to_string(),
        };
        self.batch_bytes_avg.get_or_create(&l).set(t.batchsize.avg);
        self.batch_bytes_p99.get_or_create(&l).set(t.batchsize.p99);
        self.batch_messages_avg
            .get_or_create(&l)
            .set(t.batchcnt.avg);
        self.batch_messages_p99
            .get_or_create(&l)
            .set(t.batchcnt.p99);
    }

    fn remove_topic(&self, name: &str) {
        let l = TopicLabels {
            topic: name.to_string(),
        };
        self.batch_bytes_avg.remove(&l);
        self.batch_bytes_p99.remove(&l);
        self.batch_messages_avg.remove(&l);
        self.batch_messages_p99.remove(&l);
    }

    /// Documents applied so far (for tests and status lines).
    pub fn updates(&self) -> u64 {
        self.updates.get()
    }
}

/// Keeps `exported` to the names present now, under `cap`: names already
/// exported keep their place, new ones (in name order) fill what is free.
/// Calls `remove` for each name no longer exported. Returns the names
/// exported and how many present names were left out.
fn admit<'a>(
    exported: &mut HashSet<String>,
    present: impl Iterator<Item = &'a str>,
    cap: usize,
    mut remove: impl FnMut(&str),
) -> (HashSet<String>, usize) {
    let mut present: Vec<&str> = present.collect();
    present.sort_unstable();
    present.dedup();
    let now: HashSet<&str> = present.iter().copied().collect();
    exported.retain(|name| {
        let keep = now.contains(name.as_str());
        if !keep {
            remove(name);
        }
        keep
    });
    let mut omitted = 0;
    for name in present {
        if exported.contains(name) {
            continue;
        }
        if exported.len() < cap {
            exported.insert(name.to_string());
        } else {
            omitted += 1;
        }
    }
    (exported.clone(), omitted)
}

fn micros(us: f64) -> f64 {
    us / 1e6
}

fn set_total(counter: &Counter, total: i64) {
    counter
        .inner()
        .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document librdkafka 2.12 wrote for a producer on the mock cluster
    /// (`statistics.interval.ms=100`, three messages to `beacons`).
    const CAPTURED: &str = include_str!("../tests/fixtures/librdkafka-stats.json");

    fn series(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn captured_document_maps_to_every_family() {
        let m = Metrics::new();
        let stats = KafkaStats::new(&m);
        stats.update(CAPTURED.as_bytes());
        assert_eq!(stats.updates(), 1);
        assert_eq!(stats.errors.get(), 0);
        let text = m.render();
        for name in [
            "beacond_kafka_broker_up",
            "beacond_kafka_broker_rtt_avg_seconds",
            "beacond_kafka_broker_rtt_p99_seconds",
            "beacond_kafka_broker_outbuf_requests",
            "beacond_kafka_broker_outbuf_messages",
            "beacond_kafka_broker_waitresp_requests",
            "beacond_kafka_broker_waitresp_messages",
            "beacond_kafka_broker_tx_errors_total",
            "beacond_kafka_broker_rx_errors_total",
            "beacond_kafka_broker_tx_retries_total",
            "beacond_kafka_broker_request_timeouts_total",
            "beacond_kafka_broker_disconnects_total",
            "beacond_kafka_topic_batch_size_avg_bytes",
            "beacond_kafka_topic_batch_size_p99_bytes",
            "beacond_kafka_topic_batch_messages_avg",
            "beacond_kafka_topic_batch_messages_p99",
        ] {
            assert!(!series(&text, name).is_empty(), "{name} missing:\n{text}");
        }
        // The internal pseudo-broker is not exported.
        assert!(!text.contains("/internal"), "{text}");
        let up = series(&text, "beacond_kafka_broker_up");
        assert!(
            up.iter().any(|l| l.ends_with(" 1")),
            "a broker is up: {up:?}"
        );
        // Batches were produced to `beacons`: sizes in bytes, counts >= 1.
        let avg = series(&text, "beacond_kafka_topic_batch_size_avg_bytes");
        assert!(
            avg.iter().any(|l| l
                .starts_with("beacond_kafka_topic_batch_size_avg_bytes{topic=\"beacons\"}")
                && !l.ends_with(" 0.0")),
            "{avg:?}"
        );
        assert!(
            text.contains("beacond_kafka_stats_updates_total 1"),
            "{text}"
        );
        assert!(
            text.contains("beacond_kafka_stats_omitted{kind=\"broker\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn values_convert_units_and_states() {
        let m = Metrics::new();
        let stats = KafkaStats::new(&m);
        let doc = serde_json::json!({
            "brokers": {
                "b1:9092/1": {"source": "learned", "state": "UP", "outbuf_cnt": 3,
                    "outbuf_msg_cnt": 40, "waitresp_cnt": 2, "waitresp_msg_cnt": 17,
                    "txerrs": 5, "rxerrs": 6, "txretries": 7, "req_timeouts": 8,
                    "disconnects": 9, "rtt": {"avg": 1500, "p99": 250000}},
                "b2:9092/2": {"source": "learned", "state": "CONNECT"},
                "b3:9092/3": {"source": "learned", "state": "INIT", "txerrs": 1},
                ":0/internal": {"source": "internal", "state": "UP"}
            },
            "topics": {"t": {"batchsize": {"avg": 2048, "p99": 65536},
                             "batchcnt": {"avg": 12, "p99": 100}}}
        });
        stats.update(doc.to_string().as_bytes());
        let text = m.render();
        for line in [
            "beacond_kafka_broker_up{broker=\"b1:9092/1\"} 1",
            "beacond_kafka_broker_up{broker=\"b2:9092/2\"} 0",
            "beacond_kafka_broker_rtt_avg_seconds{broker=\"b1:9092/1\"} 0.0015",
            "beacond_kafka_broker_rtt_p99_seconds{broker=\"b1:9092/1\"} 0.25",
            "beacond_kafka_broker_outbuf_requests{broker=\"b1:9092/1\"} 3",
            "beacond_kafka_broker_outbuf_messages{broker=\"b1:9092/1\"} 40",
            "beacond_kafka_broker_waitresp_requests{broker=\"b1:9092/1\"} 2",
            "beacond_kafka_broker_waitresp_messages{broker=\"b1:9092/1\"} 17",
            "beacond_kafka_broker_tx_errors_total{broker=\"b1:9092/1\"} 5",
            "beacond_kafka_broker_rx_errors_total{broker=\"b1:9092/1\"} 6",
            "beacond_kafka_broker_tx_retries_total{broker=\"b1:9092/1\"} 7",
            "beacond_kafka_broker_request_timeouts_total{broker=\"b1:9092/1\"} 8",
            "beacond_kafka_broker_disconnects_total{broker=\"b1:9092/1\"} 9",
            "beacond_kafka_broker_tx_errors_total{broker=\"b2:9092/2\"} 0",
            "beacond_kafka_topic_batch_size_avg_bytes{topic=\"t\"} 2048.0",
            "beacond_kafka_topic_batch_size_p99_bytes{topic=\"t\"} 65536.0",
            "beacond_kafka_topic_batch_messages_avg{topic=\"t\"} 12.0",
            "beacond_kafka_topic_batch_messages_p99{topic=\"t\"} 100.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("internal"), "{text}");
        // A broker librdkafka has no reason to connect to: no up/down series,
        // the rest as usual.
        assert!(!text.contains("beacond_kafka_broker_up{broker=\"b3:9092/3\"}"));
        assert!(text.contains("beacond_kafka_broker_tx_errors_total{broker=\"b3:9092/3\"} 1"));
        stats.update(br#"{"brokers": {"b3:9092/3": {"state": "UP"}}}"#);
        assert!(m
            .render()
            .contains("beacond_kafka_broker_up{broker=\"b3:9092/3\"} 1"));
        stats.update(br#"{"brokers": {"b3:9092/3": {"state": "INIT"}}}"#);
        assert!(!m.render().contains("beacond_kafka_broker_up{"));
    }

    #[test]
    fn missing_fields_read_as_zero_and_garbage_is_counted() {
        let m = Metrics::new();
        let stats = KafkaStats::new(&m);
        // Families exist (HELP/TYPE) before any document.
        let text = m.render();
        assert!(
            text.contains("# TYPE beacond_kafka_broker_up gauge"),
            "{text}"
        );
        stats.update(br#"{"brokers": {"b:1/1": {}}, "topics": {"t": {"batchsize": {}}}}"#);
        stats.update(b"{}");
        stats.update(br#"{"name": "x", "unknown": [1, 2]}"#);
        assert_eq!(stats.updates(), 3);
        stats.update(b"not json");
        stats.update(br#"{"brokers": 7}"#);
        stats.update(b"");
        assert_eq!(stats.errors.get(), 3);
        assert_eq!(stats.updates(), 3);
        let text = m.render();
        assert!(
            text.contains("beacond_kafka_stats_errors_total 3"),
            "{text}"
        );
        // `{}` had no brokers: the broker's series were removed.
        assert!(
            series(&text, "beacond_kafka_broker_up").is_empty(),
            "{text}"
        );
    }

    #[test]
    fn brokers_and_topics_are_capped_and_leavers_removed() {
        let m = Metrics::new();
        let stats = KafkaStats::new(&m);
        let doc = |brokers: std::ops::Range<usize>, topics: std::ops::Range<usize>| {
            let b: serde_json::Map<_, _> = brokers
                .map(|i| {
                    (
                        format!("b{i:03}:9092/{i}"),
                        serde_json::json!({"state": "UP"}),
                    )
                })
                .collect();
            let t: serde_json::Map<_, _> = topics
                .map(|i| (format!("t{i:03}"), serde_json::json!({})))
                .collect();
            serde_json::json!({"brokers": b, "topics": t}).to_string()
        };
        stats.update(doc(0..MAX_BROKERS + 5, 0..MAX_TOPICS + 3).as_bytes());
        let text = m.render();
        assert_eq!(
            series(&text, "beacond_kafka_broker_up").len(),
            MAX_BROKERS,
            "{text}"
        );
        assert_eq!(
            series(&text, "beacond_kafka_topic_batch_messages_avg").len(),
            MAX_TOPICS
        );
        assert!(text.contains("beacond_kafka_stats_omitted{kind=\"broker\"} 5"));
        assert!(text.contains("beacond_kafka_stats_omitted{kind=\"topic\"} 3"));
        // The first in name order got the places.
        assert!(text.contains("broker=\"b000:9092/0\""));
        assert!(!text.contains(&format!("broker=\"b{:03}:", MAX_BROKERS)));

        // Broker 0 leaves: its series go, and the first one left out takes
        // the free place; the others keep theirs.
        stats.update(doc(1..MAX_BROKERS + 5, 0..1).as_bytes());
        let text = m.render();
        assert!(!text.contains("broker=\"b000:9092/0\""), "{text}");
        assert!(text.contains(&format!("broker=\"b{:03}:", MAX_BROKERS)));
        assert!(text.contains("broker=\"b001:9092/1\""));
        assert_eq!(series(&text, "beacond_kafka_broker_up").len(), MAX_BROKERS);
        assert_eq!(
            series(&text, "beacond_kafka_broker_disconnects_total").len(),
            MAX_BROKERS
        );
        assert!(text.contains("beacond_kafka_stats_omitted{kind=\"broker\"} 4"));
        assert_eq!(
            series(&text, "beacond_kafka_topic_batch_messages_avg").len(),
            1
        );
        assert!(text.contains("beacond_kafka_stats_omitted{kind=\"topic\"} 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let stats = KafkaStats::new(&m);
        stats.update(br#"{"brokers": {"we\"ird\\:1/1": {"state": "UP"}}}"#);
        let text = m.render();
        assert!(
            text.contains(r#"beacond_kafka_broker_up{broker="we\"ird\\:1/1"} 1"#),
            "{text}"
        );
    }
}
