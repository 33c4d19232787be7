//! Metrics: every counter and gauge the service exports, in one registry.
//!
//! Owns the registry (prefix `beacond_`), the metrics that need no domain
//! vocabulary (requests by route and status, connections, Kafka per topic
//! role, the spool), one mechanism for every bounded label set
//! ([`LabelSet`], [`CounterSet`]: the domain modules name their reasons, this
//! module counts them), and the Prometheus text rendering.
//!
//! A leaf: imports no other module of the crate. Must never: take a label
//! value from request data (cardinality stays bounded), or lock on the
//! request path for a hot counter (those are resolved once).

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A bounded set of label values, such as the reasons a beacon is refused:
/// a fieldless enum that lists every value. Implemented by the module that
/// owns the vocabulary; counted by a [`CounterSet`].
pub trait LabelSet: Copy + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {
    /// The label's name, e.g. `reason`.
    const NAME: &'static str;
    /// Every value, each once.
    const ALL: &'static [Self];
    /// The label's value: stable snake_case.
    fn as_str(self) -> &'static str;
}

/// Checks a [`LabelSet`]: values distinct, labels distinct, non-empty and
/// snake_case. For each implementation's tests.
pub fn check_label_set<L: LabelSet>() -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, v) in L::ALL.iter().enumerate() {
        if L::ALL[..i].contains(v) {
            return Err(format!("{v:?} is listed twice"));
        }
        let label = v.as_str();
        let snake = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !snake || !seen.insert(label) {
            return Err(format!(
                "{v:?}: label {label:?} is empty, not snake_case or taken"
            ));
        }
    }
    Ok(())
}

/// One counter per value of `L`, all registered up front (so a reason that
/// never happened shows as 0, not as a missing series).
pub struct CounterSet<L: LabelSet> {
    counters: Arc<[Counter]>,
    _label: PhantomData<L>,
}

impl<L: LabelSet> Clone for CounterSet<L> {
    fn clone(&self) -> Self {
        Self {
            counters: self.counters.clone(),
            _label: PhantomData,
        }
    }
}

impl<L: LabelSet> std::fmt::Debug for CounterSet<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterSet")
            .field("label", &L::NAME)
            .finish_non_exhaustive()
    }
}

impl<L: LabelSet> CounterSet<L> {
    fn position(value: L) -> usize {
        let i = L::ALL.iter().position(|v| *v == value);
        debug_assert!(i.is_some(), "{value:?} is missing from its LabelSet::ALL");
        i.unwrap_or(usize::MAX)
    }

    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    pub fn inc_by(&self, value: L, n: u64) {
        if let Some(c) = self.counters.get(Self::position(value)) {
            c.inc_by(n);
        }
    }

    /// The counter's value (for tests and status lines).
    pub fn get(&self, value: L) -> u64 {
        self.counters
            .get(Self::position(value))
            .map_or(0, Counter::get)
    }
}

/// The label set of a [`CounterSet`] family.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Labeled<L>(L);

impl<L: LabelSet> EncodeLabelSet for Labeled<L> {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        (L::NAME, self.0.as_str()).encode(encoder.encode_label())
    }
}

/// A label value from the config (a route, a stream-config key such as
/// `/^product_metrics\.web_base(\..+)?$/`) escaped as the text format
/// requires (`\` `"` and line feed as `\\` `\"` `\n`): `prometheus-client`
/// writes label values as given (prometheus/client_rust#151), and an
/// unescaped `"` makes the whole scrape unparseable.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Requests by route and status; `route` is a configured path (bounded by
/// the config) or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    route: String,
    status: u16,
}

/// The response counters of one route, with the hot statuses resolved once.
#[derive(Clone, Debug)]
pub struct RouteCounters {
    route: String,
    family: Family<RouteStatusLabels, Counter>,
    hot: [(u16, Counter); 3],
}

impl RouteCounters {
    /// Counts a response on this route.
    pub fn count(&self, status: http::StatusCode) {
        let code = status.as_u16();
        match self.hot.iter().find(|(s, _)| *s == code) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.family
                    .get_or_create(&RouteStatusLabels {
                        route: self.route.clone(),
                        status: code,
                    })
                    .inc();
            }
        }
    }
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
    /// 1 while the spool can write, 0 after a failed create, write or fsync
    /// until one succeeds again (`/readyz` is 503 meanwhile).
    pub writable: Gauge,
    /// Failed file operations on segments (create, write, fsync).
    pub io_errors: Counter,
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
            writable: Gauge::default(),
            io_errors: Counter::default(),
        };
        this.writable.set(1);
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
        r.register(
            "writable",
            "1 while the spool can write; 0 after a failed segment create, write or fsync until one succeeds",
            self.writable.clone(),
        );
        r.register(
            "io_errors",
            "Failed file operations on spool segments (create, write, fsync)",
            self.io_errors.clone(),
        );
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Counter sets registered by name, so a second request for one returns
    /// the same counters.
    sets: Mutex<HashMap<&'static str, Box<dyn Any + Send>>>,
    pub spool: SpoolMetrics,
    pub edge: EdgeMetrics,
    requests: Family<RouteStatusLabels, Counter>,
    /// Valid beacons handed to the producer and answered 204.
    pub accepted: Counter,
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
        let requests = Family::<RouteStatusLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests on the beacon listener, by route and response status",
            requests.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "beacons_accepted",
            "Beacons handed to the producer and answered 204",
            accepted.clone(),
        );

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
            registry: Mutex::new(registry),
            sets: Mutex::new(HashMap::new()),
            spool,
            edge,
            requests,
            accepted,
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

    /// The response counters of a route (`other` for unrouted requests).
    pub fn route(&self, route: &str) -> RouteCounters {
        let route = escape_label_value(route);
        let hot = [204u16, 202, 201].map(|status| {
            let labels = RouteStatusLabels {
                route: route.clone(),
                status,
            };
            (status, self.requests.get_or_create(&labels).clone())
        });
        RouteCounters {
            route,
            family: self.requests.clone(),
            hot,
        }
    }

    /// Registers (once per name) a counter family labelled by `L`, with
    /// every value at 0.
    pub fn counter_set<L: LabelSet>(&self, name: &'static str, help: &str) -> CounterSet<L> {
        let mut sets = lock(&self.sets);
        if let Some(set) = sets
            .get(name)
            .and_then(|s| s.downcast_ref::<CounterSet<L>>())
        {
            return set.clone();
        }
        let family = Family::<Labeled<L>, Counter>::default();
        let counters: Arc<[Counter]> = L::ALL
            .iter()
            .map(|v| family.get_or_create(&Labeled(*v)).clone())
            .collect();
        lock(&self.registry).register(name, help, family);
        let set = CounterSet {
            counters,
            _label: PhantomData,
        };
        sets.insert(name, Box::new(set.clone()));
        set
    }

    /// Registers a metric that needs no label set, e.g. a histogram.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        lock(&self.registry).register(name, help, metric);
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
        let _ = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry));
        out
    }
}

/// A poisoned lock only means a panic elsewhere; the counters are still good.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Edge protection metrics that need no domain vocabulary (the rate limit
/// and connection refusal reasons are [`CounterSet`]s of their modules).
#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    /// Clients held by the per-client rate limiter (bounded by `rate_limit.max_keys`).
    pub rate_limit_keys: Gauge,
    /// Checks of new clients that found the limiter full and shared its
    /// overflow state.
    pub rate_limit_key_overflow: Counter,
    /// Beacons dropped (answered 204) for a `filter.user_agent_exclude` match.
    pub filtered_user_agent: Counter,
}

impl EdgeMetrics {
    fn new(registry: &mut Registry) -> Self {
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
        Self {
            rate_limit_keys,
            rate_limit_key_overflow,
            filtered_user_agent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Color {
        Red,
        Dark,
    }

    impl LabelSet for Color {
        const NAME: &'static str = "color";
        const ALL: &'static [Self] = &[Color::Red, Color::Dark];
        fn as_str(self) -> &'static str {
            match self {
                Color::Red => "red",
                Color::Dark => "dark_blue",
            }
        }
    }

    #[test]
    fn label_values_from_the_config_are_escaped() {
        assert_eq!(escape_label_value("/v1/events"), "/v1/events");
        assert_eq!(escape_label_value(r"/^a\.b(\..+)?$/"), r"/^a\\.b(\\..+)?$/");
        assert_eq!(escape_label_value("a\"b\nc"), r#"a\"b\nc"#);
        let m = Metrics::new();
        m.route("/odd\"route\\").count(http::StatusCode::NO_CONTENT);
        let text = m.render();
        assert!(
            text.contains(r#"beacond_requests_total{route="/odd\"route\\",status="204"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn renders_with_prefix_and_labels() {
        let m = Metrics::new();
        let beacon = m.route("/beacon/event");
        beacon.count(http::StatusCode::NO_CONTENT);
        beacon.count(http::StatusCode::BAD_REQUEST);
        let colors = m.counter_set::<Color>("colors", "Test colors");
        colors.inc(Color::Dark);
        // A second registration under the same name shares the counters.
        m.counter_set::<Color>("colors", "Test colors")
            .inc(Color::Dark);
        m.main_topic.delivered.inc();
        let text = m.render();
        for line in [
            "beacond_requests_total{route=\"/beacon/event\",status=\"204\"} 1",
            "beacond_requests_total{route=\"/beacon/event\",status=\"400\"} 1",
            "beacond_requests_total{route=\"/beacon/event\",status=\"202\"} 0",
            "beacond_colors_total{color=\"dark_blue\"} 2",
            "beacond_colors_total{color=\"red\"} 0",
            "beacond_kafka_delivered_total{topic=\"main\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(text.matches("# TYPE beacond_colors counter").count(), 1);
        assert_eq!(colors.get(Color::Dark), 2);
        for role in ["main", "error", "event", "event_error"] {
            assert!(
                text.contains(&format!(
                    "beacond_kafka_produced_total{{topic=\"{role}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(check_label_set::<Color>().is_ok());
    }
}
