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
    /// A stream's topic: valid events.
    Event,
    /// The error stream's topic: error events for invalid ones.
    EventError,
}

impl EncodeLabelValue for TopicRole {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            TopicRole::Main => "main",
            TopicRole::Error => "error",
            TopicRole::Event => "event",
            TopicRole::EventError => "event_error",
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

/// The disk spool's metrics (`beacond_spool_*`).
#[derive(Clone, Debug)]
pub struct SpoolMetrics {
    /// Bytes of segment files on disk.
    pub bytes: Gauge,
    /// Records not yet acknowledged by Kafka.
    pub records: Gauge,
    pub segments: Gauge,
    pub appended: Counter,
    /// Records handed from the spool to the producer (retries included).
    pub replayed: Counter,
    /// Appends refused because the spool was full (answered 503).
    pub refused_full: Counter,
    /// Lines answered 204 whose delivery failed while the spool was full: lost.
    pub dropped_full: Counter,
    /// Spooled lines dropped after a permanent delivery failure.
    pub dropped_permanent: Counter,
    /// Undelivered lines (already answered 204) a failed spool write lost.
    pub dropped_io: Counter,
    /// Segments found damaged (torn or corrupt tail, bad header).
    pub corrupt_segments: Counter,
    /// Bytes after the damage in damaged segments.
    pub corrupt_bytes: Counter,
    pub oldest_record_age_seconds: Gauge,
}

impl SpoolMetrics {
    fn new(registry: &mut Registry) -> Self {
        let dropped = Family::<ReasonLabels, Counter>::default();
        // One statement per lookup: get_or_create's guard lives to the end of
        // its statement, and a second lookup in it would deadlock.
        let dropped_full = dropped
            .get_or_create(&ReasonLabels {
                reason: "spool_full",
            })
            .clone();
        let dropped_permanent = dropped
            .get_or_create(&ReasonLabels {
                reason: "permanent_delivery_failure",
            })
            .clone();
        let dropped_io = dropped
            .get_or_create(&ReasonLabels { reason: "io_error" })
            .clone();
        let this = SpoolMetrics {
            bytes: Gauge::default(),
            records: Gauge::default(),
            segments: Gauge::default(),
            appended: Counter::default(),
            replayed: Counter::default(),
            refused_full: Counter::default(),
            dropped_full,
            dropped_permanent,
            dropped_io,
            corrupt_segments: Counter::default(),
            corrupt_bytes: Counter::default(),
            oldest_record_age_seconds: Gauge::default(),
        };
        this.register(registry, dropped);
        this
    }

    fn register(&self, registry: &mut Registry, dropped: Family<ReasonLabels, Counter>) {
        let r = registry.sub_registry_with_prefix("spool");
        r.register(
            "bytes",
            "Bytes of spool segment files on disk",
            self.bytes.clone(),
        );
        r.register(
            "records",
            "Spooled records not yet acknowledged by Kafka",
            self.records.clone(),
        );
        r.register("segments", "Spool segment files", self.segments.clone());
        r.register(
            "appended",
            "Records appended to the spool",
            self.appended.clone(),
        );
        r.register(
            "replayed",
            "Records sent from the spool to Kafka (retries included)",
            self.replayed.clone(),
        );
        r.register(
            "refused_full",
            "Appends refused because the spool was full (503)",
            self.refused_full.clone(),
        );
        r.register(
            "dropped",
            "Spooled or undelivered lines dropped, by reason",
            dropped,
        );
        r.register(
            "corrupt_segments",
            "Spool segments found damaged",
            self.corrupt_segments.clone(),
        );
        r.register(
            "corrupt_bytes",
            "Bytes lost after damage in spool segments",
            self.corrupt_bytes.clone(),
        );
        r.register(
            "oldest_record_age_seconds",
            "Age of the oldest unacknowledged spooled record",
            self.oldest_record_age_seconds.clone(),
        );
    }
}

pub struct Metrics {
    registry: Registry,
    pub spool: SpoolMetrics,
    pub edge: EdgeMetrics,
    requests: Family<StatusLabels, Counter>,
    requests_204: Counter,
    rejected: Vec<Counter>,
    /// Valid beacons handed to the producer and answered 204.
    pub accepted: Counter,
    /// Valid beacons answered 503, by [`crate::sink::EnqueueError::reason`].
    refused: Vec<(&'static str, Counter)>,
    pub main_topic: TopicCounters,
    pub error_topic: TopicCounters,
    pub event_topic: TopicCounters,
    pub event_error_topic: TopicCounters,
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
        let refused = crate::sink::EnqueueError::REASONS
            .iter()
            .map(|&reason| {
                (
                    reason,
                    refused.get_or_create(&ReasonLabels { reason }).clone(),
                )
            })
            .collect();

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
        let event_topic = counters(TopicRole::Event);
        let event_error_topic = counters(TopicRole::EventError);

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

        let spool = SpoolMetrics::new(&mut registry);
        let edge = EdgeMetrics::new(&mut registry);

        Self {
            registry,
            spool,
            edge,
            requests,
            requests_204,
            rejected,
            accepted,
            refused,
            main_topic,
            error_topic,
            event_topic,
            event_error_topic,
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

    /// Counts a valid beacon answered 503.
    pub fn count_refused(&self, error: &crate::sink::EnqueueError) {
        let reason = error.reason();
        if let Some((_, c)) = self.refused.iter().find(|(r, _)| *r == reason) {
            c.inc();
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
            TopicRole::Event => &self.event_topic,
            TopicRole::EventError => &self.event_error_topic,
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

/// Edge protection metrics: rate limits, filters, refused connections.
#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    rate_limited: Vec<Counter>,
    /// Clients held by the per-client rate limiter (bounded by `rate_limit.max_keys`).
    pub rate_limit_keys: Gauge,
    /// Checks of new clients that found the limiter full and shared its
    /// overflow state.
    pub rate_limit_key_overflow: Counter,
    /// Beacons dropped (answered 204) for a `filter.user_agent_exclude` match.
    pub filtered_user_agent: Counter,
    /// Connections closed at once because `http.max_connections` were open.
    pub connections_over_limit: Counter,
    proxy_rejected: Vec<Counter>,
}

impl EdgeMetrics {
    fn new(registry: &mut Registry) -> Self {
        use crate::proxy_protocol::ProxyError;
        use crate::rate_limit::Limit;

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct LimitLabels {
            limit: &'static str,
        }
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "beacons_rate_limited",
            "Beacons over a rate limit (answered 429, or 204 and dropped), by limit",
            limited.clone(),
        );
        let rate_limited = Limit::ALL
            .iter()
            .map(|l| {
                limited
                    .get_or_create(&LimitLabels { limit: l.as_str() })
                    .clone()
            })
            .collect();
        let rate_limit_keys = Gauge::default();
        registry.register(
            "rate_limit_keys",
            "Clients held by the per-client rate limiter",
            rate_limit_keys.clone(),
        );
        let rate_limit_key_overflow = Counter::default();
        registry.register(
            "rate_limit_key_overflow",
            "New clients that found the rate limiter full and shared its overflow state",
            rate_limit_key_overflow.clone(),
        );
        let filtered = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "beacons_filtered",
            "Beacons dropped on purpose (answered 204), by filter",
            filtered.clone(),
        );
        let filtered_user_agent = filtered
            .get_or_create(&ReasonLabels {
                reason: "user_agent",
            })
            .clone();
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_rejected",
            "Beacon connections closed before HTTP, by reason",
            rejected.clone(),
        );
        let connections_over_limit = rejected
            .get_or_create(&ReasonLabels {
                reason: "max_connections",
            })
            .clone();
        let proxy_rejected = ProxyError::COUNTED
            .iter()
            .map(|e| {
                rejected
                    .get_or_create(&ReasonLabels { reason: e.as_str() })
                    .clone()
            })
            .collect();
        Self {
            rate_limited,
            rate_limit_keys,
            rate_limit_key_overflow,
            filtered_user_agent,
            connections_over_limit,
            proxy_rejected,
        }
    }

    pub fn count_rate_limited(&self, limit: crate::rate_limit::Limit) {
        let i = crate::rate_limit::Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .unwrap_or(0);
        if let Some(c) = self.rate_limited.get(i) {
            c.inc();
        }
    }

    /// Counts a connection closed by the PROXY rule (not `Closed`).
    pub fn count_proxy_rejected(&self, error: crate::proxy_protocol::ProxyError) {
        if let Some(i) = crate::proxy_protocol::ProxyError::COUNTED
            .iter()
            .position(|e| *e == error)
        {
            self.proxy_rejected[i].inc();
        }
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
        for role in ["main", "error", "event", "event_error"] {
            assert!(
                text.contains(&format!(
                    "beacond_kafka_produced_total{{topic=\"{role}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
