//! Metrics: every counter and gauge the service exports, in one registry.
//!
//! Owns the metric names (prefix `beacond_`), their label sets (all bounded:
//! status codes, reject reasons, topic roles), and the Prometheus text
//! rendering served by the admin listener.
//!
//! Must never: take a label value from request data (cardinality stays
//! bounded), or lock on the request path (hot counters are resolved once).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decode::RejectReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Which topic a Kafka counter is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TopicRole {
    /// `kafka.topic`: accepted beacons.
    Main,
    /// `kafka.error_topic`: records of rejected beacons.
    Error,
}

impl EncodeLabelValue for TopicRole {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            TopicRole::Main => "main",
            TopicRole::Error => "error",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: TopicRole,
}

/// Per-topic Kafka counters, resolved once.
#[derive(Clone, Debug)]
pub struct TopicCounters {
    /// Handed to the producer's queue.
    pub produced: Counter,
    /// Acknowledged by the broker.
    pub delivered: Counter,
    /// Delivery finally failed (after librdkafka's retries).
    pub delivery_failed: Counter,
    /// Not handed to the producer (queue full or refused).
    pub enqueue_failed: Counter,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    requests_204: Counter,
    rejected: Vec<Counter>,
    /// Valid beacons handed to the producer and answered 204.
    pub accepted: Counter,
    /// Valid beacons answered 503 because the producer's queue was full.
    pub refused_queue_full: Counter,
    pub main_topic: TopicCounters,
    pub error_topic: TopicCounters,
    /// Messages in the producer's queue or in flight to the broker.
    pub producer_queue_depth: Gauge,
    /// 1 while the last metadata probe reached the broker and found the topic.
    pub broker_reachable: Gauge,
    pub connections_accepted: Counter,
    pub connections_open: Gauge,
    /// Connections that ended with an HTTP protocol or I/O error.
    pub connection_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("beacond");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests on the beacon listener, by response status",
            requests.clone(),
        );
        let requests_204 = requests
            .get_or_create(&StatusLabels { status: 204 })
            .clone();

        let rejected_family = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "beacons_rejected",
            "Beacons refused with a 4xx, by reason",
            rejected_family.clone(),
        );
        let rejected = RejectReason::ALL
            .iter()
            .map(|r| {
                rejected_family
                    .get_or_create(&ReasonLabels { reason: r.as_str() })
                    .clone()
            })
            .collect();

        let accepted = Counter::default();
        registry.register(
            "beacons_accepted",
            "Beacons handed to the producer and answered 204",
            accepted.clone(),
        );

        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "beacons_refused",
            "Valid beacons answered 503 (not accepted), by reason",
            refused.clone(),
        );
        let refused_queue_full = refused
            .get_or_create(&ReasonLabels {
                reason: "producer_queue_full",
            })
            .clone();

        let topic_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<TopicLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let produced = topic_family(
            &mut registry,
            "kafka_produced",
            "Messages handed to the producer's queue",
        );
        let delivered = topic_family(
            &mut registry,
            "kafka_delivered",
            "Messages acknowledged by the broker",
        );
        let failed = topic_family(
            &mut registry,
            "kafka_delivery_failures",
            "Messages whose delivery finally failed",
        );
        let enqueue_failed = topic_family(
            &mut registry,
            "kafka_enqueue_failures",
            "Messages the producer's queue did not take",
        );
        let counters = |role: TopicRole| {
            let l = TopicLabels { topic: role };
            TopicCounters {
                produced: produced.get_or_create(&l).clone(),
                delivered: delivered.get_or_create(&l).clone(),
                delivery_failed: failed.get_or_create(&l).clone(),
                enqueue_failed: enqueue_failed.get_or_create(&l).clone(),
            }
        };
        let main_topic = counters(TopicRole::Main);
        let error_topic = counters(TopicRole::Error);

        let producer_queue_depth = Gauge::default();
        registry.register(
            "kafka_producer_queue_depth",
            "Messages queued in the producer or in flight",
            producer_queue_depth.clone(),
        );
        let broker_reachable = Gauge::default();
        registry.register(
            "kafka_broker_reachable",
            "1 while the broker answers and the topic exists",
            broker_reachable.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted on the beacon listener",
            connections_accepted.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Open connections on the beacon listener",
            connections_open.clone(),
        );
        let connection_errors = Counter::default();
        registry.register(
            "connection_errors",
            "Beacon connections ended by a protocol or I/O error",
            connection_errors.clone(),
        );

        Self {
            registry,
            requests,
            requests_204,
            rejected,
            accepted,
            refused_queue_full,
            main_topic,
            error_topic,
            producer_queue_depth,
            broker_reachable,
            connections_accepted,
            connections_open,
            connection_errors,
        }
    }

    /// Counts a response on the beacon listener.
    pub fn count_response(&self, status: http::StatusCode) {
        if status == http::StatusCode::NO_CONTENT {
            self.requests_204.inc();
        } else {
            self.requests
                .get_or_create(&StatusLabels {
                    status: status.as_u16(),
                })
                .inc();
        }
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let Some(c) = self.rejected.get(i) {
            c.inc();
        }
    }

    pub fn topic(&self, role: TopicRole) -> &TopicCounters {
        match role {
            TopicRole::Main => &self.main_topic,
            TopicRole::Error => &self.error_topic,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix_and_labels() {
        let m = Metrics::new();
        m.count_response(http::StatusCode::NO_CONTENT);
        m.count_response(http::StatusCode::BAD_REQUEST);
        m.count_rejected(RejectReason::InvalidJson);
        m.main_topic.delivered.inc();
        let text = m.render();
        assert!(
            text.contains("beacond_requests_total{status=\"204\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("beacond_requests_total{status=\"400\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("beacond_beacons_rejected_total{reason=\"invalid_json\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("beacond_beacons_rejected_total{reason=\"empty_query\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("beacond_kafka_delivered_total{topic=\"main\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
