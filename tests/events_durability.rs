//! Nothing answered 2xx on `POST /v1/events` is lost: hasty posts through a
//! broker outage longer than `message.timeout.ms` (both spool modes), events
//! accepted while the broker is down and spooled at shutdown, a spool left
//! by the previous version (format v1) replayed next to new events, and
//! events posted before the broker was ever reachable. All over librdkafka's
//! mock cluster; every event carries a unique `meta.id` and is read back
//! from its own topic.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::{Config, PropertyValue, SpoolMode};
use beacond::spool::segment::version_1;
use common::*;
use rdkafka::mocking::MockCluster;

/// The streams events are posted to (both in `config/dev-streams.yaml`).
const STREAMS: [&str; 2] = ["test.event", "analytics.test"];

/// One valid event for `STREAMS[stream]` with our own `meta.id`.
fn event(stream: usize, id: &str) -> serde_json::Value {
    match stream {
        0 => serde_json::json!({
            "$schema": "/test/event/1.0.0",
            "meta": {"stream": STREAMS[0], "id": id},
            "test": "durability",
        }),
        _ => serde_json::json!({
            "$schema": "/analytics/test/2.0.0",
            "meta": {"stream": STREAMS[1], "id": id},
            "dt": "2026-01-01T00:00:00.000Z",
            "test_string": "durability",
        }),
    }
}

/// Request `n` of a load named `tag`: every third is an array of three
/// events, the others a single object; streams alternate. Returns the body
/// and the `(stream, meta.id)` of its events.
fn request_body(tag: &str, n: u64) -> (Vec<u8>, Vec<(usize, String)>) {
    let count = if n % 3 == 2 { 3 } else { 1 };
    let events: Vec<(usize, String)> = (0..count)
        .map(|k| (((n + k) % 2) as usize, format!("{tag}-{n}-{k}")))
        .collect();
    let values: Vec<serde_json::Value> = events.iter().map(|(s, id)| event(*s, id)).collect();
    let body = if count == 1 {
        serde_json::to_vec(&values[0]).unwrap()
    } else {
        serde_json::to_vec(&values).unwrap()
    };
    (body, events)
}

/// What a load saw.
#[derive(Debug, Default)]
struct Load {
    /// Events of requests answered 2xx.
    accepted: Vec<(usize, String)>,
    /// Answers other than the expected 2xx, by status.
    other: HashMap<u16, u64>,
    /// Requests with no answer (connection refused, closed, timed out).
    unanswered: u64,
}

/// One POST on a new connection; `None` when nothing came back.
async fn try_post(addr: SocketAddr, target: &str, content_type: &str, body: &[u8]) -> Option<u16> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: events.test\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).await.ok().map(|r| r.status)
}

/// Posts events until `stop` is set, `pause` apart. Hasty (202 expected)
/// unless `hasty` is false (201 expected); `text/plain` (sendBeacon) and
/// `application/json` alternate.
async fn post_events(
    addr: SocketAddr,
    tag: String,
    hasty: bool,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Load {
    let (target, want) = if hasty {
        ("/v1/events?hasty=true", 202)
    } else {
        ("/v1/events", 201)
    };
    let mut load = Load::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (body, events) = request_body(&tag, n);
        let content_type = if n.is_multiple_of(2) {
            "text/plain;charset=UTF-8"
        } else {
            "application/json"
        };
        n += 1;
        match try_post(addr, target, content_type, &body).await {
            Some(s) if s == want => load.accepted.extend(events),
            Some(s) => *load.other.entry(s).or_default() += 1,
            None => load.unanswered += 1,
        }
        tokio::time::sleep(pause).await;
    }
    load
}

/// Posts `count` requests at once (no pause), each expected to be accepted.
async fn post_now(addr: SocketAddr, tag: &str, hasty: bool, count: u64) -> Vec<(usize, String)> {
    let mut accepted = Vec::new();
    for n in 0..count {
        let (body, events) = request_body(tag, n);
        let (target, want) = if hasty {
            ("/v1/events?hasty=true", 202)
        } else {
            ("/v1/events", 201)
        };
        let r = post(addr, target, &[("Content-Type", "application/json")], &body).await;
        assert_eq!(r.status, want, "request {n}: {}", r.body_text());
        accepted.extend(events);
    }
    accepted
}

/// Events config over the mock cluster, with the stream topics, the error
/// topic and the beacon topic created there.
fn mock_events_config<C: rdkafka::ClientContext>(
    mock: &MockCluster<'_, C>,
    name: &str,
) -> (Config, String) {
    let prefix = unique_prefix(name);
    for t in [
        "beacons",
        "beacond.error.validation",
        STREAMS[0],
        STREAMS[1],
    ] {
        mock.create_topic(&format!("{prefix}{t}"), 2, 1).unwrap();
    }
    let mut config = events_config(&mock.bootstrap_servers(), &prefix);
    for (k, v) in [
        ("message.timeout.ms", "2000"),
        ("linger.ms", "5"),
        ("retry.backoff.ms", "100"),
    ] {
        config
            .kafka
            .properties
            .insert(k.into(), PropertyValue::Text(v.into()));
    }
    config.spool.fsync_interval_ms = 10;
    (config, prefix)
}

/// Reads every stream topic back and checks that each accepted event is
/// there, on its own stream's topic; returns the number of duplicates.
fn assert_all_delivered(brokers: &str, prefix: &str, accepted: &[(usize, String)]) -> usize {
    let mut duplicates = 0;
    for (s, stream) in STREAMS.iter().enumerate() {
        let topic = format!("{prefix}{stream}");
        let want: Vec<&String> = accepted
            .iter()
            .filter(|(w, _)| *w == s)
            .map(|(_, id)| id)
            .collect();
        let got = consume(
            brokers,
            &topic,
            want.len(),
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &got {
            let v: serde_json::Value = serde_json::from_slice(&m.payload)
                .unwrap_or_else(|e| panic!("not JSON on {topic}: {e}"));
            assert_eq!(
                v["meta"]["stream"], *stream,
                "only its own events on {topic}: {v}"
            );
            assert!(v["meta"]["dt"].is_string(), "meta.dt filled in: {v}");
            let id = v["meta"]["id"].as_str().expect("meta.id").to_string();
            *seen.entry(id).or_default() += 1;
        }
        let lost: Vec<&&String> = want.iter().filter(|id| !seen.contains_key(**id)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} events accepted for {topic} are missing, e.g. {:?}",
            lost.len(),
            want.len(),
            &lost[..lost.len().min(5)]
        );
        let strays = seen.keys().filter(|id| !want.contains(id)).count();
        assert_eq!(strays, 0, "nothing on {topic} that was not accepted for it");
        duplicates += seen.values().map(|n| n - 1).sum::<usize>();
    }
    duplicates
}

async fn wait_spool_drained(svc: &Running, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = svc.metrics().await;
        if m.get("beacond_spool_records") == 0.0
            && m.get("beacond_kafka_producer_queue_depth") == 0.0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "spool not drained: {} records",
            m.get("beacond_spool_records")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spool_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .count()
}

/// Hasty single events and arrays, posted steadily while the broker is down
/// for longer than `message.timeout.ms`: every event answered 202 reaches
/// its topic.
async fn hasty_posts_through_an_outage(mode: SpoolMode) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let (mut config, prefix) = mock_events_config(&mock, "ev-outage");
    config.spool.mode = mode;
    let brokers = mock.bootstrap_servers();
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(post_events(
        svc.beacon,
        format!("{mode:?}"),
        true,
        Duration::from_millis(5),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_down(1).unwrap();
    // Longer than message.timeout.ms (whose expiry librdkafka reports late,
    // later still on a loaded machine): down until what was queued failed
    // back into the spool and new events queue behind it, polled with a
    // deadline rather than assumed after a fixed time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let during = loop {
        let m = svc.metrics().await;
        if m.get("beacond_spool_records") > 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    mock.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let load = loader.await.unwrap();
    assert!(
        load.other.is_empty() && load.unanswered == 0,
        "only 202s expected through the outage: {:?}, {} unanswered",
        load.other,
        load.unanswered
    );
    assert!(
        load.accepted.len() > 300,
        "load ran: {}",
        load.accepted.len()
    );
    assert!(
        during.get("beacond_spool_records") > 0.0,
        "events waited in the spool during the outage"
    );

    wait_spool_drained(&svc, Duration::from_secs(90)).await;
    let m = svc.metrics().await;
    assert!(
        m.get("beacond_spool_appended_total") > 0.0,
        "went through the spool"
    );
    assert!(
        m.get("beacond_spool_replayed_total") > 0.0,
        "replayed from the spool"
    );
    assert_eq!(
        m.get("beacond_events_total{outcome=\"accepted\",stream=\"test.event\"}")
            + m.get("beacond_events_total{outcome=\"accepted\",stream=\"analytics.test\"}"),
        load.accepted.len() as f64,
        "every event counted as accepted"
    );
    assert_eq!(m.get("beacond_kafka_delivered_total{topic=\"main\"}"), 0.0);
    let duplicates = assert_all_delivered(&brokers, &prefix, &load.accepted);
    eprintln!(
        "events outage ({mode:?}): {} events answered 202, lost 0, duplicates {duplicates} \
         (possible only for produce requests in flight at the cut: their outcome \
         unknown, they are resent from the spool), spooled {}, delivered {}",
        load.accepted.len(),
        m.get("beacond_spool_appended_total"),
        m.get("beacond_kafka_delivered_total{topic=\"event\"}")
    );
    // Duplicates come only from requests in flight at the cut.
    assert!(
        duplicates * 10 < load.accepted.len(),
        "duplicates {duplicates} of {}",
        load.accepted.len()
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hasty_events_survive_a_broker_outage_longer_than_message_timeout() {
    hasty_posts_through_an_outage(SpoolMode::Overflow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hasty_events_survive_a_broker_outage_in_always_mode() {
    hasty_posts_through_an_outage(SpoolMode::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_while_the_broker_is_down_are_spooled_at_shutdown_and_delivered_next_start()
{
    let mock = MockCluster::new(1).expect("mock cluster");
    let (mut config, prefix) = mock_events_config(&mock, "ev-shutdown");
    // Queued events wait in the producer until shutdown purges them.
    config.kafka.properties.insert(
        "message.timeout.ms".into(),
        PropertyValue::Text("300000".into()),
    );
    config.shutdown.flush_timeout_seconds = 1;
    let brokers = mock.bootstrap_servers();
    let svc = Running::start(config.clone()).await;
    svc.wait_ready().await;
    mock.broker_down(1).unwrap();
    let mut accepted = post_now(svc.beacon, "sd-hasty", true, 60).await;
    accepted.extend(post_now(svc.beacon, "sd-sync", false, 60).await);
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_spool_records"),
        0.0,
        "in the producer's queue, not spooled yet"
    );
    svc.stop().await;
    assert!(
        spool_segments(&config.spool.dir) > 0,
        "the undelivered events were spooled at shutdown"
    );

    mock.broker_up(1).unwrap();
    let svc = Running::start(config).await;
    wait_spool_drained(&svc, Duration::from_secs(60)).await;
    let m = svc.metrics().await;
    assert!(
        m.get("beacond_spool_replayed_total") >= accepted.len() as f64,
        "delivered from the spool: replayed {}",
        m.get("beacond_spool_replayed_total")
    );
    let duplicates = assert_all_delivered(&brokers, &prefix, &accepted);
    eprintln!(
        "events shutdown: {} events accepted while the broker was down, lost 0, duplicates {duplicates}",
        accepted.len()
    );
    assert_eq!(duplicates, 0, "never sent, so spooling cannot duplicate");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_spool_and_new_events_after_the_upgrade_each_reach_their_topic() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let (config, prefix) = mock_events_config(&mock, "ev-v1");
    let brokers = mock.bootstrap_servers();
    // The old version's spool: a v1 segment of beacons.
    let mut segment = version_1::header();
    let lines: Vec<String> = (0..30)
        .map(|i| format!("?%7B%22event%22%3A%7B%22id%22%3A%22v1-{i}%22%7D%7D;\thost\t{i}\t2026-01-01T00:00:00\t192.0.2.1\t\"ua\""))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let key: Option<&[u8]> = (i % 2 == 0).then_some(b"192.0.2.1");
        segment.extend_from_slice(&version_1::record(
            1_700_000_000_000 + i as u64,
            key,
            line.as_bytes(),
        ));
    }
    std::fs::write(
        config.spool.dir.join("segment-00000000000000000007.spool"),
        &segment,
    )
    .unwrap();

    // The upgraded beacond starts while the broker is away: the v1 records
    // wait, and the new events are spooled behind them (v2 segments in the
    // same directory).
    mock.broker_down(1).unwrap();
    let svc = Running::start(config.clone()).await;
    let accepted = post_now(svc.beacon, "v1-mix", false, 30).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while spool_segments(&config.spool.dir) < 2 {
        assert!(
            Instant::now() < deadline,
            "the events never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mock.broker_up(1).unwrap();
    wait_spool_drained(&svc, Duration::from_secs(60)).await;

    let beacons = consume(
        &brokers,
        &format!("{prefix}beacons"),
        lines.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let by_line: HashMap<Vec<u8>, Option<Vec<u8>>> = beacons
        .iter()
        .map(|m| (m.payload.clone(), m.key.clone()))
        .collect();
    assert_eq!(
        beacons.len(),
        lines.len(),
        "only the v1 beacons on the beacon topic"
    );
    for (i, line) in lines.iter().enumerate() {
        let key = by_line
            .get(line.as_bytes())
            .unwrap_or_else(|| panic!("v1 record {i} not delivered to the beacon topic"));
        let want: Option<Vec<u8>> = (i % 2 == 0).then(|| b"192.0.2.1".to_vec());
        assert_eq!(key, &want, "v1 record {i} keeps its key");
    }
    let duplicates = assert_all_delivered(&brokers, &prefix, &accepted);
    let m = svc.metrics().await;
    assert_eq!(m.get("beacond_spool_corrupt_segments_total"), 0.0);
    assert_eq!(
        m.get("beacond_kafka_delivered_total{topic=\"main\"}"),
        lines.len() as f64
    );
    eprintln!(
        "v1 + events: {} v1 beacons, {} events, lost 0, duplicates {duplicates}",
        lines.len(),
        accepted.len()
    );
    svc.stop().await;
    assert_eq!(
        spool_segments(&config.spool.dir),
        0,
        "every segment deleted once delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_before_the_broker_was_ever_reachable_are_delivered_once_it_appears() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let (mut config, prefix) = mock_events_config(&mock, "ev-nobroker");
    // The mock cluster would create a topic the producer asks about.
    config.kafka.properties.insert(
        "allow.auto.create.topics".into(),
        PropertyValue::Text("false".into()),
    );
    let brokers = mock.bootstrap_servers();
    // Down before beacond ever talks to it: the topic list is unknown.
    mock.broker_down(1).unwrap();
    let svc = Running::start(config).await;
    // ARCHITECTURE.md: ready while the broker answers "or the spool has room".
    let r = get(svc.admin, "/readyz", &[]).await;
    assert_eq!(
        r.status,
        200,
        "ready on the spool's room: {}",
        r.body_text()
    );
    let mut accepted = post_now(svc.beacon, "nb-hasty", true, 30).await;
    accepted.extend(post_now(svc.beacon, "nb-sync", false, 30).await);
    // A stream whose topic the cluster does not have: while the topic list
    // is unknown it is accepted too (the spool holds it) ...
    let orphan = serde_json::json!({
        "$schema": "/analytics/legacy/test/1.3.0",
        "meta": {"stream": "eventlogging_Test", "id": "nb-orphan"},
        "event": {"OtherMessage": "no topic"},
    });
    let r = post(
        svc.beacon,
        "/v1/events",
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&orphan).unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    // message.timeout.ms expires: the events move to the spool.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = svc.metrics().await;
        if m.get("beacond_spool_records") > accepted.len() as f64 {
            assert_eq!(m.get("beacond_kafka_broker_reachable"), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the events never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = get(svc.admin, "/readyz", &[]).await;
    assert_eq!(
        r.status,
        200,
        "still ready: the spool has room: {}",
        r.body_text()
    );

    mock.broker_up(1).unwrap();
    wait_spool_drained(&svc, Duration::from_secs(60)).await;
    let m = svc.metrics().await;
    assert_eq!(m.get("beacond_kafka_broker_reachable"), 1.0);
    // ... and once the list is known it is a permanent failure, counted and
    // dropped from the spool, not resent forever (the spool drained above).
    assert_eq!(
        m.get("beacond_kafka_delivery_failures_total{topic=\"event\"}"),
        1.0,
        "only the event for the missing topic failed"
    );
    assert_eq!(
        m.get("beacond_spool_dropped_total{reason=\"permanent_delivery_failure\"}"),
        1.0
    );
    let duplicates = assert_all_delivered(&brokers, &prefix, &accepted);
    eprintln!(
        "no broker at start: {} events accepted into the spool, lost 0, duplicates {duplicates}",
        accepted.len()
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_readiness_follows_the_broker() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let (mut config, _prefix) = mock_events_config(&mock, "ev-nospool");
    config.spool.enabled = false;
    mock.broker_down(1).unwrap();
    let svc = Running::start(config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get(svc.admin, "/readyz", &[]).await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (503, "broker unreachable\n")
    );
    mock.broker_up(1).unwrap();
    svc.wait_ready().await;
    svc.stop().await;
}
