//! End-to-end verification: read the collector's topics and match ids.
//!
//! Beacons: one topic; the id is `event.loadtest_id`. Events (`/v1/events`):
//! every stream's topic and the error topic; the id is `meta.id` (of the
//! event itself, or of the `raw_event` an error event carries), see
//! [`crate::events`]. Valid events are expected on their stream's topic,
//! deliberately invalid ones on the error topic; one on the wrong side is
//! counted `misrouted` (and so missing where it belonged).
//!
//! The reader assigns every partition directly, from the end offsets at the
//! start of the run (no consumer group: a group join takes ~25 s on the test
//! broker), in a thread of its own. It keeps, per beacon of this run, how
//! many copies arrived, the Kafka timestamp of the first, and whether each copy
//! matches what was sent (capsule, client IP, user agent), recomputed from the
//! beacon number (see `corpus`). When the load is over, [`KafkaWatch::finish`]
//! hands it the acknowledged beacons and it reads on until all are in or the
//! drain timeout passes.

use crate::corpus::{Corpus, USER_AGENTS};
use crate::encode::canonical_json;
use crate::events::{parse_event_id, run_hex, split_key, EventCorpus};
use crate::lines::{self, Format};
use crate::rng::Fnv;
use crate::verify::{Expected, Observed};
use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub brokers: String,
    /// Every topic to read (for events: the streams' and the error topic).
    pub topics: Vec<String>,
    /// Events: the topic of error events (one of `topics`).
    pub error_topic: Option<String>,
    /// Bound on connecting and reading metadata at the start.
    pub connect_timeout: Duration,
    /// Read the topic from the beginning instead of its end offsets.
    pub from_beginning: bool,
    /// Take the end offsets at start but read only after the load, so the
    /// reader does not compete with the generator for CPU during the run
    /// (`read_latency_ms` then means nothing).
    pub read_after: bool,
}

/// What the reader saw besides the per-beacon observations.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReaderCounts {
    pub messages: u64,
    pub varnishkafka: u64,
    pub json: u64,
    /// Events read from stream topics, and error events from the error topic.
    pub events: u64,
    pub error_events: u64,
    /// Events of this run on the wrong side: a valid one on the error topic,
    /// or an invalid one on a stream topic.
    pub misrouted: u64,
    /// Error events whose `raw_event` was cut (the id was found, the content
    /// not checked).
    pub raw_event_cut: u64,
    /// Messages of other runs or other producers.
    pub foreign: u64,
    /// Messages of this run with a tag (warm-up, probe, slow client).
    pub untracked: u64,
    /// Messages of this run we could not parse.
    pub unparsable: u64,
    pub consumer_errors: u64,
    pub last_error: Option<String>,
    /// Seconds spent reading after the load ended.
    pub drain_s: f64,
    /// All acknowledged beacons were found before the drain timeout.
    pub complete: bool,
}

pub struct ReaderOutcome {
    /// Beacons, or valid events (by event key).
    pub observed: HashMap<u64, Observed>,
    /// Invalid events seen on the error topic (by event key).
    pub observed_errors: HashMap<u64, Observed>,
    pub counts: ReaderCounts,
    pub sample_error: Option<String>,
}

/// The traffic a reader checks messages against.
#[derive(Clone)]
pub enum Checker {
    Beacons(Arc<Corpus>),
    Events(Arc<EventCorpus>),
}

/// An id the reader waits for: `(on the error topic, beacon number or event key)`.
type Pending = (bool, u64);

struct Finish {
    expected: HashSet<Pending>,
    timeout: Duration,
    linger: Duration,
}

pub struct KafkaWatch {
    ctl: mpsc::Sender<Finish>,
    thread: JoinHandle<ReaderOutcome>,
    pub partitions: usize,
}

impl KafkaWatch {
    /// Connects, reads the topic's metadata and end offsets, assigns all
    /// partitions and starts reading. Fails (bounded by `connect_timeout`) if
    /// the brokers do not answer or the topic does not exist.
    pub fn start(
        opts: &KafkaOptions,
        checker: Checker,
        run_id: &str,
    ) -> anyhow::Result<KafkaWatch> {
        if opts.topics.is_empty() {
            bail!("no Kafka topic to read");
        }
        for hostport in opts.brokers.split(',') {
            crate::http::resolve_loopback(hostport.trim(), "Kafka broker")?;
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("group.id", format!("loadtest-{run_id}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .set(
                "socket.connection.setup.timeout.ms",
                opts.connect_timeout.as_millis().max(1000).to_string(),
            )
            .set("log_level", "3")
            .create()
            .context("creating the Kafka consumer")?;
        let mut tpl = TopicPartitionList::new();
        for name in &opts.topics {
            add_topic(&consumer, opts, name, &mut tpl)?;
        }
        let partitions = tpl.count();
        let deferred = if opts.read_after {
            Some(tpl)
        } else {
            consumer.assign(&tpl).context("assigning partitions")?;
            None
        };
        let (ctl, rx) = mpsc::channel();
        let reader = Reader {
            checker,
            run_prefix: format!("{run_id}-"),
            run_hex: run_hex(run_id),
            error_topic: opts.error_topic.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-reader".into())
            .spawn(move || reader.run(consumer, rx, deferred))
            .context("spawning the Kafka reader")?;
        Ok(KafkaWatch {
            ctl,
            thread,
            partitions,
        })
    }

    /// Waits until every acknowledged beacon is in, or `timeout`; then reads
    /// `linger` longer to catch late duplicates. Blocking.
    pub fn finish(
        self,
        expected: &[Expected],
        expected_errors: &[Expected],
        timeout: Duration,
        linger: Duration,
    ) -> ReaderOutcome {
        let expected = expected
            .iter()
            .map(|e| (false, e.n))
            .chain(expected_errors.iter().map(|e| (true, e.n)))
            .collect();
        let _ = self.ctl.send(Finish {
            expected,
            timeout,
            linger,
        });
        self.thread.join().expect("kafka reader panicked")
    }
}

/// Adds every partition of `name` to `tpl`, from its end offset (or the start).
fn add_topic(
    consumer: &BaseConsumer,
    opts: &KafkaOptions,
    name: &str,
    tpl: &mut TopicPartitionList,
) -> anyhow::Result<()> {
    let md = consumer
        .fetch_metadata(Some(name), opts.connect_timeout)
        .with_context(|| {
            format!(
                "cannot read metadata from Kafka brokers {} within {:?}",
                opts.brokers, opts.connect_timeout
            )
        })?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .context("topic missing from metadata")?;
    if let Some(err) = topic.error() {
        bail!(
            "Kafka topic {name:?}: {err:?} (create it first, e.g. scripts/dev-broker create-topic)"
        );
    }
    if topic.partitions().is_empty() {
        bail!("Kafka topic {name:?} has no partitions (does it exist?)");
    }
    for p in topic.partitions() {
        let offset = if opts.from_beginning {
            Offset::Beginning
        } else {
            let (_, high) = consumer
                .fetch_watermarks(name, p.id(), opts.connect_timeout)
                .with_context(|| format!("reading the end offset of {name}[{}]", p.id()))?;
            Offset::Offset(high)
        };
        tpl.add_partition_offset(name, p.id(), offset)
            .context("building the assignment")?;
    }
    Ok(())
}

struct Reader {
    checker: Checker,
    run_prefix: String,
    /// The run in event ids.
    run_hex: String,
    error_topic: Option<String>,
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Reader {
    fn run(
        self,
        consumer: BaseConsumer,
        ctl: mpsc::Receiver<Finish>,
        deferred: Option<TopicPartitionList>,
    ) -> ReaderOutcome {
        let mut out = ReaderOutcome {
            observed: HashMap::new(),
            observed_errors: HashMap::new(),
            counts: ReaderCounts::default(),
            sample_error: None,
        };
        let mut finish: Option<(Finish, Instant)> = None;
        let mut pending: HashSet<Pending> = HashSet::new();
        if let Some(tpl) = deferred {
            // Read only once the load is over.
            let Ok(f) = ctl.recv() else { return out };
            if let Err(e) = consumer.assign(&tpl) {
                out.counts.consumer_errors += 1;
                out.counts.last_error = Some(format!("assigning partitions: {e}"));
                return out;
            }
            pending = f.expected.clone();
            finish = Some((f, Instant::now()));
        }
        let mut complete_at: Option<Instant> = None;
        let mut last_progress = Instant::now();
        loop {
            if finish.is_none() {
                match ctl.try_recv() {
                    Ok(f) => {
                        pending = f
                            .expected
                            .iter()
                            .copied()
                            .filter(|&(err, n)| {
                                let seen = if err {
                                    &out.observed_errors
                                } else {
                                    &out.observed
                                };
                                !seen.contains_key(&n)
                            })
                            .collect();
                        finish = Some((f, Instant::now()));
                        last_progress = Instant::now();
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => return out,
                }
            }
            if let Some((f, since)) = &finish {
                let now = Instant::now();
                if pending.is_empty() && complete_at.is_none() {
                    complete_at = Some(now);
                    out.counts.complete = true;
                }
                let done = match complete_at {
                    Some(at) => now >= at + f.linger,
                    None => now >= *since + f.timeout,
                };
                if done {
                    out.counts.drain_s = since.elapsed().as_secs_f64();
                    return out;
                }
                if complete_at.is_none() && last_progress.elapsed() >= Duration::from_secs(2) {
                    last_progress = now;
                    eprintln!(
                        "loadtest: kafka: waiting for {} of {} acknowledged items ({:.0} s left)",
                        pending.len(),
                        f.expected.len(),
                        (f.timeout.saturating_sub(since.elapsed())).as_secs_f64()
                    );
                }
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => {
                    out.counts.consumer_errors += 1;
                    out.counts.last_error = Some(e.to_string());
                }
                Some(Ok(m)) => {
                    out.counts.messages += 1;
                    let ts = m.timestamp().to_millis().unwrap_or_else(now_ms);
                    let payload = m.payload().unwrap_or_default();
                    let seen = match &self.checker {
                        Checker::Beacons(c) => self
                            .observe_beacon(c, payload, ts, &mut out)
                            .map(|n| (false, n)),
                        Checker::Events(c) => {
                            self.observe_event(c, m.topic(), payload, ts, &mut out)
                        }
                    };
                    if let Some(p) = seen {
                        pending.remove(&p);
                    }
                }
            }
        }
    }

    /// Records one message; returns the beacon number if it is a measured
    /// beacon of this run.
    fn observe_beacon(
        &self,
        corpus: &Corpus,
        payload: &[u8],
        ts_ms: i64,
        out: &mut ReaderOutcome,
    ) -> Option<u64> {
        if !find(payload, self.run_prefix.as_bytes()) {
            out.counts.foreign += 1;
            return None;
        }
        let msg = match lines::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                out.counts.unparsable += 1;
                out.sample_error.get_or_insert_with(|| format!("{e:#}"));
                return None;
            }
        };
        match msg.format {
            Format::Varnishkafka => out.counts.varnishkafka += 1,
            Format::Json => out.counts.json += 1,
        }
        let Some(id) = msg.loadtest_id() else {
            out.counts.foreign += 1;
            return None;
        };
        let Some(rest) = id.strip_prefix(&self.run_prefix) else {
            out.counts.foreign += 1;
            return None;
        };
        let Ok(n) = rest.parse::<u64>() else {
            out.counts.untracked += 1;
            return None;
        };
        let choice = corpus.choose(n);
        let corrupted = match choice.kind {
            Ok(t) => {
                let got = Fnv::default()
                    .write(canonical_json(&Value::Object(msg.capsule.clone())).as_bytes())
                    .finish();
                got != corpus.templates[t].capsule_hash(id)
            }
            Err(_) => true,
        };
        let ip_mismatch = match msg.client_ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => canonical_ip(ip) != choice.client_ip,
            Some(Err(_)) => true,
            None => false,
        };
        let ua_mismatch = msg
            .user_agent
            .as_deref()
            .is_some_and(|ua| ua != USER_AGENTS[choice.user_agent]);
        note(
            &mut out.observed,
            n,
            ts_ms,
            [corrupted, ip_mismatch, ua_mismatch],
        );
        Some(n)
    }

    /// Records one message of a stream topic or the error topic; returns
    /// what it was if it is a measured event of this run on the right side.
    fn observe_event(
        &self,
        corpus: &EventCorpus,
        topic: &str,
        payload: &[u8],
        ts_ms: i64,
        out: &mut ReaderOutcome,
    ) -> Option<Pending> {
        if !find(payload, self.run_hex.as_bytes()) {
            out.counts.foreign += 1;
            return None;
        }
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                out.counts.unparsable += 1;
                out.sample_error
                    .get_or_insert_with(|| "a message is not a JSON object".into());
                return None;
            }
            Err(e) => {
                out.counts.unparsable += 1;
                out.sample_error
                    .get_or_insert_with(|| format!("bad JSON message: {e}"));
                return None;
            }
        };
        let on_error = self.error_topic.as_deref() == Some(topic);
        // The event as sent: the message itself, or an error event's raw_event.
        let (event, cut_id) = if on_error {
            out.counts.error_events += 1;
            let raw = v.get("raw_event").and_then(Value::as_str).unwrap_or("");
            match serde_json::from_str::<Value>(raw) {
                Ok(e) => (e, None),
                Err(_) => (Value::Null, find_event_id(raw, &self.run_hex)),
            }
        } else {
            out.counts.events += 1;
            (v, None)
        };
        let id = match &cut_id {
            Some(id) => id.as_str(),
            None => match event.pointer("/meta/id").and_then(Value::as_str) {
                Some(id) => id,
                None => {
                    out.counts.foreign += 1;
                    return None;
                }
            },
        };
        let Some((tag, key)) = parse_event_id(&self.run_hex, id) else {
            out.counts.foreign += 1;
            return None;
        };
        if tag != 0 {
            out.counts.untracked += 1;
            return None;
        }
        let (n, j) = split_key(key);
        let choice = corpus.choose(n);
        let Some(&t) = choice.events.get(j) else {
            out.counts.foreign += 1;
            return None;
        };
        let template = &corpus.templates[t];
        if template.invalid.is_none() == on_error {
            out.counts.misrouted += 1;
            return None;
        }
        let corrupted = if cut_id.is_some() {
            out.counts.raw_event_cut += 1;
            false
        } else {
            // A valid event must be on its stream's topic (a prefix allowed).
            !template.delivered_intact(&event, id)
                || (!on_error && !topic.ends_with(template.stream()))
        };
        let fills = crate::events::SCHEMAS[template.schema].fills;
        let ip_mismatch = !on_error
            && fills.client_ip
            && match event.pointer("/http/client_ip").and_then(Value::as_str) {
                Some(ip) => ip
                    .parse::<IpAddr>()
                    .map_or(true, |ip| canonical_ip(ip) != choice.client_ip),
                None => true,
            };
        let ua_mismatch = !on_error
            && fills.user_agent
            && event
                .pointer("/http/request_headers/user-agent")
                .and_then(Value::as_str)
                != Some(USER_AGENTS[choice.user_agent]);
        let map = if on_error {
            &mut out.observed_errors
        } else {
            &mut out.observed
        };
        note(map, key, ts_ms, [corrupted, ip_mismatch, ua_mismatch]);
        Some((on_error, key))
    }
}

/// Counts one copy of `key`.
fn note(map: &mut HashMap<u64, Observed>, key: u64, ts_ms: i64, flags: [bool; 3]) {
    let o = map.entry(key).or_insert(Observed {
        count: 0,
        ..Observed::first(ts_ms)
    });
    o.count += 1;
    if o.count == 1 {
        o.first_read_ms = now_ms();
    }
    o.first_ts_ms = o.first_ts_ms.min(ts_ms);
    o.corrupted |= flags[0];
    o.ip_mismatch |= flags[1];
    o.ua_mismatch |= flags[2];
}

/// The first event id of this run in a (cut) raw event's text.
fn find_event_id(raw: &str, run_hex: &str) -> Option<String> {
    let mut from = 0;
    while let Some(at) = raw[from..].find(run_hex) {
        let start = from + at;
        if let Some(id) = raw.get(start..start + crate::events::EVENT_ID_LEN) {
            if parse_event_id(run_hex, id).is_some() {
                return Some(id.to_string());
            }
        }
        from = start + 1;
    }
    None
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{beacon_id, CorpusConfig};
    use crate::encode::{decode_query, encode_uri_component};

    fn reader() -> Reader {
        Reader {
            checker: Checker::Beacons(Arc::new(Corpus::new(CorpusConfig::default()))),
            run_prefix: "r1-".into(),
            run_hex: run_hex("r1"),
            error_topic: None,
        }
    }

    impl Reader {
        fn corpus(&self) -> &Corpus {
            match &self.checker {
                Checker::Beacons(c) => c,
                Checker::Events(_) => unreachable!("a beacon reader"),
            }
        }

        fn observe(&self, payload: &[u8], ts_ms: i64, out: &mut ReaderOutcome) -> Option<u64> {
            self.observe_beacon(self.corpus(), payload, ts_ms, out)
        }
    }

    fn outcome() -> ReaderOutcome {
        ReaderOutcome {
            observed: HashMap::new(),
            observed_errors: HashMap::new(),
            counts: ReaderCounts::default(),
            sample_error: None,
        }
    }

    /// The varnishkafka line a faithful collector writes for beacon `n`.
    fn vk_line(r: &Reader, n: u64) -> String {
        let c = r.corpus().choose(n);
        let mut q = Vec::new();
        r.corpus().write_query(&c, &beacon_id("r1", "", n), &mut q);
        let q = String::from_utf8(q).unwrap();
        format!(
            "?{q}\tloadtest-host\t{n}\t2024-05-01T00:00:00\t{}\t\"{}\"",
            c.client_ip, USER_AGENTS[c.user_agent]
        )
    }

    #[test]
    fn observes_faithful_copies_and_flags_changes() {
        let r = reader();
        let mut out = outcome();
        assert_eq!(
            r.observe(vk_line(&r, 5).as_bytes(), 1000, &mut out),
            Some(5)
        );
        assert_eq!(r.observe(vk_line(&r, 5).as_bytes(), 999, &mut out), Some(5));
        let o = out.observed[&5];
        assert_eq!(
            (
                o.count,
                o.first_ts_ms,
                o.corrupted,
                o.ip_mismatch,
                o.ua_mismatch
            ),
            (2, 999, false, false, false)
        );

        // A JSON message for beacon 6, with a changed event field.
        let c = r.corpus().choose(6);
        let mut q = Vec::new();
        r.corpus().write_query(&c, "r1-6", &mut q);
        let mut v = decode_query(std::str::from_utf8(&q).unwrap()).unwrap();
        v["ip"] = Value::String(c.client_ip.to_string());
        v["userAgent"] = Value::String("someone else".into());
        v["seqId"] = 1.into();
        assert_eq!(
            r.observe(serde_json::to_vec(&v).unwrap().as_slice(), 1, &mut out),
            Some(6)
        );
        assert!(
            out.observed[&6].ua_mismatch
                && !out.observed[&6].corrupted
                && !out.observed[&6].ip_mismatch
        );
        v["event"]["extra_field"] = 1.into();
        r.observe(serde_json::to_vec(&v).unwrap().as_slice(), 1, &mut out);
        assert!(out.observed[&6].corrupted);
        assert_eq!(out.counts.json, 2);
        assert_eq!(out.counts.varnishkafka, 2);

        // Other runs, tagged ids and garbage.
        let other = format!(
            "?{};\th\t1\t2024-05-01T00:00:00\t1.2.3.4\t\"u\"",
            encode_uri_component(r#"{"event":{"loadtest_id":"r2-1"}}"#)
        );
        assert_eq!(r.observe(other.as_bytes(), 1, &mut out), None);
        let warm = format!(
            "?{};\th\t1\t2024-05-01T00:00:00\t1.2.3.4\t\"u\"",
            encode_uri_component(r#"{"event":{"loadtest_id":"r1-w1"}}"#)
        );
        assert_eq!(r.observe(warm.as_bytes(), 1, &mut out), None);
        assert_eq!(r.observe(b"?r1-%ZZ", 1, &mut out), None);
        assert_eq!(
            (
                out.counts.foreign,
                out.counts.untracked,
                out.counts.unparsable
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn unreachable_broker_is_a_bounded_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let opts = KafkaOptions {
            brokers: dead.to_string(),
            topics: vec!["t".into()],
            error_topic: None,
            connect_timeout: Duration::from_secs(2),
            from_beginning: false,
            read_after: false,
        };
        let started = Instant::now();
        let err = KafkaWatch::start(
            &opts,
            Checker::Beacons(Arc::new(Corpus::new(CorpusConfig::default()))),
            "r",
        )
        .err()
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            format!("{err:#}").contains("cannot read metadata"),
            "{err:#}"
        );
        let opts = KafkaOptions {
            brokers: "192.0.2.1:9092".into(),
            ..opts
        };
        assert!(KafkaWatch::start(
            &opts,
            Checker::Beacons(Arc::new(Corpus::new(CorpusConfig::default()))),
            "r"
        )
        .is_err());
    }

    /// The whole reader against librdkafka's in-process mock broker, reading
    /// live and reading after the load.
    #[test]
    fn reads_only_this_run_from_the_end_offsets() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        for read_after in [false, true] {
            let mock = MockCluster::new(1).unwrap();
            mock.create_topic("t", 2, 1).unwrap();
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", mock.bootstrap_servers())
                .create()
                .unwrap();
            let r = reader();
            let send = |payload: &str| {
                producer
                    .send(BaseRecord::<(), str>::to("t").payload(payload))
                    .unwrap();
                producer.flush(Duration::from_secs(10)).unwrap();
            };
            // Before the start: not read (the reader starts at the end offsets).
            send(&vk_line(&r, 100));
            let opts = KafkaOptions {
                brokers: mock.bootstrap_servers(),
                topics: vec!["t".into()],
                error_topic: None,
                connect_timeout: Duration::from_secs(10),
                from_beginning: false,
                read_after,
            };
            let w = KafkaWatch::start(&opts, r.checker.clone(), "r1").unwrap();
            assert_eq!(w.partitions, 2);
            for n in 0..20 {
                send(&vk_line(&r, n));
            }
            send(&vk_line(&r, 3)); // a duplicate
            let expected: Vec<Expected> = (0..21)
                .map(|n| Expected {
                    n,
                    sched_unix_us: 0,
                })
                .collect();
            let out = w.finish(
                &expected,
                &[],
                Duration::from_secs(3),
                Duration::from_millis(200),
            );
            assert!(!out.counts.complete, "beacon 20 never came");
            assert_eq!(out.observed.len(), 20, "read_after {read_after}");
            assert_eq!(out.observed[&3].count, 2);
            assert!(
                !out.observed.contains_key(&100),
                "read from before the start"
            );
            assert_eq!(out.counts.messages, 21);
            let m = crate::verify::match_ids(&expected, &out.observed);
            assert_eq!(
                (m.delivered, m.lost, m.duplicated, m.corrupted),
                (20, 1, 1, 0)
            );
        }
    }

    /// What a faithful collector writes for event `j` of request `n`: the
    /// event with fills, or an error event around it.
    fn delivered_event(ev: &EventCorpus, n: u64, j: usize) -> (Value, bool) {
        let c = ev.choose(n);
        let t = &ev.templates[c.events[j]];
        let id = crate::events::event_id(&run_hex("r1"), "", crate::events::event_key(n, j));
        let mut v = t.with_id(&id);
        v["meta"]["dt"] = "2024-05-01T00:00:00.000Z".into();
        v["http"] = serde_json::json!({
            "client_ip": c.client_ip.to_string(),
            "request_headers": {"user-agent": USER_AGENTS[c.user_agent]},
        });
        if t.invalid.is_some() {
            let raw = serde_json::to_string(&t.with_id(&id)).unwrap();
            (
                serde_json::json!({"$schema": "/error/2.1.0", "raw_event": raw}),
                true,
            )
        } else {
            (v, false)
        }
    }

    #[test]
    fn observes_events_on_their_topics_and_errors_on_the_error_topic() {
        use crate::events::{Batch, EventsConfig};
        let ev = Arc::new(EventCorpus::new(EventsConfig {
            invalid_fraction: 0.5,
            batch: Batch::Array { min: 2, max: 4 },
            ..EventsConfig::default()
        }));
        let r = Reader {
            checker: Checker::Events(Arc::clone(&ev)),
            run_prefix: "r1-".into(),
            run_hex: run_hex("r1"),
            error_topic: Some("err".into()),
        };
        let mut out = outcome();
        let (mut valid, mut invalid) = (0, 0);
        for n in 0..20 {
            let c = ev.choose(n);
            for j in 0..c.events.len() {
                let (v, is_error) = delivered_event(&ev, n, j);
                let key = crate::events::event_key(n, j);
                let topic = if is_error {
                    "err"
                } else {
                    ev.templates[c.events[j]].stream()
                };
                let payload = serde_json::to_vec(&v).unwrap();
                assert_eq!(
                    r.observe_event(&ev, topic, &payload, 5, &mut out),
                    Some((is_error, key))
                );
                // The wrong side (an invalid event accepted, a valid one
                // refused): misrouted, not counted as delivered.
                let id = crate::events::event_id(&run_hex("r1"), "", key);
                let sent = ev.templates[c.events[j]].with_id(&id);
                let (wrong_topic, wrong) = if is_error {
                    ("eventlogging_NavigationTiming", sent)
                } else {
                    let raw = serde_json::to_string(&sent).unwrap();
                    ("err", serde_json::json!({"raw_event": raw}))
                };
                let wrong = serde_json::to_vec(&wrong).unwrap();
                assert_eq!(r.observe_event(&ev, wrong_topic, &wrong, 5, &mut out), None);
                if is_error {
                    invalid += 1;
                } else {
                    valid += 1;
                }
            }
        }
        assert!(valid > 5 && invalid > 5);
        assert_eq!(out.observed.len(), valid);
        assert_eq!(out.observed_errors.len(), invalid);
        assert!(out
            .observed
            .values()
            .chain(out.observed_errors.values())
            .all(|o| { o.count == 1 && !o.corrupted && !o.ip_mismatch && !o.ua_mismatch }));
        assert_eq!(out.counts.misrouted, (valid + invalid) as u64);

        // A changed field, a wrong client IP, a cut raw_event.
        let n = (0..100)
            .find(|&n| {
                let c = ev.choose(n);
                let t = &ev.templates[c.events[0]];
                t.invalid.is_none() && crate::events::SCHEMAS[t.schema].fills.client_ip
            })
            .unwrap();
        let (mut v, _) = delivered_event(&ev, n, 0);
        let topic = ev.templates[ev.choose(n).events[0]].stream();
        v["http"]["client_ip"] = "192.0.2.99".into();
        r.observe_event(&ev, topic, &serde_json::to_vec(&v).unwrap(), 5, &mut out);
        v["$schema"] = "/something/else/1.0.0".into();
        r.observe_event(&ev, topic, &serde_json::to_vec(&v).unwrap(), 5, &mut out);
        let o = out.observed[&crate::events::event_key(n, 0)];
        assert_eq!((o.count, o.corrupted, o.ip_mismatch), (3, true, true));
        let n = (0..100)
            .find(|&n| ev.templates[ev.choose(n).events[0]].invalid.is_some())
            .unwrap();
        let (mut v, _) = delivered_event(&ev, n, 0);
        let raw = v["raw_event"].as_str().unwrap().to_string();
        v["raw_event"] = raw[..raw.len() / 2].to_string().into();
        if raw[..raw.len() / 2].contains(&run_hex("r1")) {
            r.observe_event(&ev, "err", &serde_json::to_vec(&v).unwrap(), 5, &mut out);
            assert_eq!(out.counts.raw_event_cut, 1);
        }
        // Other runs.
        let other = serde_json::json!({"meta": {"id": "00000000-0000-4000-8000-000000000000"}});
        assert_eq!(
            r.observe_event(
                &ev,
                topic,
                &serde_json::to_vec(&other).unwrap(),
                5,
                &mut out
            ),
            None
        );
    }
}
