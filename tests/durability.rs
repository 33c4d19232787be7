//! Nothing is lost once 204 is sent: broker outages (librdkafka's mock
//! cluster, brokers taken down for longer than `message.timeout.ms`),
//! shutdown with undelivered lines, and `kill -9` in `always` mode.

mod common;

use std::collections::HashMap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::PropertyValue;
use common::*;
use rdkafka::mocking::MockCluster;

/// Sends numbered beacons on one keep-alive connection (reconnecting when
/// needed) until `stop` is set; returns the ids answered 204 and the count of
/// other answers by status.
async fn load(
    addr: std::net::SocketAddr,
    prefix: String,
    pause: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, HashMap<u16, u64>) {
    let mut ok = Vec::new();
    let mut other: HashMap<u16, u64> = HashMap::new();
    numbered_beacons(
        addr,
        &prefix,
        BeaconMethod::EmptyPost,
        pause,
        &stop,
        |id, status| match status {
            Some(204) => ok.push(id),
            Some(s) => *other.entry(s).or_default() += 1,
            None => {}
        },
    )
    .await;
    (ok, other)
}

/// The ids found in varnishkafka lines.
fn ids_in(messages: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        let line = String::from_utf8_lossy(&m.payload);
        if let Some(rest) = line.split("%22id%22%3A%22").nth(1) {
            if let Some(id) = rest.split("%22").next() {
                *seen.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Asserts every id answered 204 is present; returns the duplicate count.
fn assert_none_lost(sent: &[String], seen: &HashMap<String, usize>) -> usize {
    let lost: Vec<&String> = sent.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} beacons answered 204 are missing, e.g. {:?}",
        lost.len(),
        sent.len(),
        &lost[..lost.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_longer_than_message_timeout_loses_nothing() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("outage");
    mock.create_topic(&topic, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
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
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(
        svc.beacon,
        "o".into(),
        Duration::from_millis(5),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_down(1).unwrap();
    // Longer than message.timeout.ms (whose expiry librdkafka reports late).
    tokio::time::sleep(Duration::from_secs(12)).await;
    mock.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, other) = loader.await.unwrap();
    assert!(
        other.is_empty(),
        "only 204s expected during the outage: {other:?}"
    );
    assert!(sent.len() > 300, "load ran: {}", sent.len());

    wait_spool_drained(&svc, Duration::from_secs(90)).await;
    let m = svc.metrics().await;
    assert!(
        m.get("beacond_spool_appended_total") > 0.0,
        "the outage went through the spool"
    );
    let got = consume(
        &brokers,
        &topic,
        sent.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let dups = assert_none_lost(&sent, &ids_in(&got));
    eprintln!(
        "outage: {} answered 204, {} in Kafka, lost 0, duplicates {dups}, spooled {}",
        sent.len(),
        got.len(),
        m.get("beacond_spool_appended_total")
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spools_what_kafka_did_not_take_and_the_next_start_delivers_it() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("shutdown");
    mock.create_topic(&topic, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
    // Lines wait in the producer for a while: at shutdown, many are queued.
    config
        .kafka
        .properties
        .insert("linger.ms".into(), PropertyValue::Text("2000".into()));
    config.shutdown.flush_timeout_seconds = 0;
    let spool_dir = config.spool.dir.clone();
    let svc = Running::start(config.clone()).await;
    svc.wait_ready().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(svc.beacon, "s".into(), Duration::ZERO, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The broker goes away, then we shut down under load (what SIGTERM
    // does); the loader sees the door close.
    mock.broker_down(1).unwrap();
    svc.stop().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, _) = loader.await.unwrap();
    assert!(!sent.is_empty());
    let leftover = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .count();
    assert!(leftover > 0, "undelivered lines were spooled at shutdown");

    // The next start, same spool, broker back: everything arrives.
    mock.broker_up(1).unwrap();
    let svc = Running::start(config).await;
    wait_spool_drained(&svc, Duration::from_secs(60)).await;
    let got = consume(
        &brokers,
        &topic,
        sent.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let dups = assert_none_lost(&sent, &ids_in(&got));
    eprintln!(
        "shutdown: {} answered 204, lost 0, duplicates {dups}",
        sent.len()
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_with_broker_down_sheds_with_503_in_bounded_memory_then_recovers() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("full");
    mock.create_topic(&topic, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
    for (k, v) in [
        ("queue.buffering.max.messages", "50"),
        ("message.timeout.ms", "600000"),
    ] {
        config
            .kafka
            .properties
            .insert(k.into(), PropertyValue::Text(v.into()));
    }
    config.spool.max_bytes = 128 * 1024;
    config.spool.segment_bytes = 32 * 1024;
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    mock.broker_down(1).unwrap();

    let rss_before = rss_kib();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(svc.beacon, "f".into(), Duration::ZERO, stop.clone()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ready = get(svc.admin, "/readyz", &[]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, other) = loader.await.unwrap();
    let rss_after = rss_kib();
    let shed = other.get(&503).copied().unwrap_or(0);
    assert!(
        shed > 1000,
        "503s once producer queue and spool are full: {other:?}"
    );
    assert_eq!(ready.status, 503, "not ready while shedding");
    let m = svc.metrics().await;
    assert!(m.get("beacond_spool_bytes") <= 128.0 * 1024.0);
    assert!(m.get("beacond_beacons_refused_total{reason=\"spool_full\"}") > 0.0);
    let r = get(svc.beacon, "/beacon/event?%7B%7D", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    eprintln!(
        "spool full: {} accepted, {shed} shed, RSS {rss_before} KiB -> {rss_after} KiB",
        sent.len()
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "memory bounded while shedding: {rss_before} -> {rss_after} KiB"
    );

    // Recovery: the broker returns, the spool drains, beacons are welcome again.
    mock.broker_up(1).unwrap();
    wait_spool_drained(&svc, Duration::from_secs(60)).await;
    svc.wait_ready().await;
    assert_eq!(
        get(svc.beacon, "/beacon/event?%7B%7D", &[]).await.status,
        204
    );
    let got = consume(
        &brokers,
        &topic,
        sent.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let dups = assert_none_lost(&sent, &ids_in(&got));
    eprintln!("spool full: recovered, lost 0, duplicates {dups}");
    svc.stop().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs a broker"]
fn kill_9_in_always_mode_loses_nothing_answered_204() {
    let brokers = require_broker();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topic = unique_topic("kill9");
    rt.block_on(create_topic(&brokers, &topic, 3));
    let spool = temp_dir("kill9-spool");
    let dir = temp_dir("kill9-cfg");
    let config_path = dir.join("beacond.toml");
    std::fs::write(
        &config_path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [output]\nhostname = \"kill9-host\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             [kafka.properties]\n\"linger.ms\" = 500\n\
             [spool]\nmode = \"always\"\ndir = \"{}\"\nfsync_interval_ms = 50\n[shutdown]\ndrain_seconds = 0\n",
            spool.display()
        ),
    )
    .unwrap();
    let wait_ready = |child: &ChildBeacond| {
        rt.block_on(async {
            wait_http(child.admin, "/readyz", false).await;
        })
    };

    let mut child = ChildBeacond::start(&dir, &config_path, "first.log");
    wait_ready(&child);
    let beacon = child.beacon;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = rt.spawn(load(beacon, "k".into(), Duration::ZERO, stop.clone()));
    std::thread::sleep(Duration::from_millis(1500));
    child.kill(); // SIGKILL
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, _) = rt.block_on(loader).unwrap();
    assert!(sent.len() > 50, "load ran: {}", sent.len());

    let child = ChildBeacond::start(&dir, &config_path, "second.log");
    wait_ready(&child);
    let got = consume(
        &brokers,
        &topic,
        sent.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let seen = ids_in(&got);
    let _ = child.stop();
    let dups = assert_none_lost(&sent, &seen);
    eprintln!(
        "kill -9: {} answered 204, lost 0, duplicates {dups}",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_delivery_failures_go_to_the_error_topic_not_round_the_spool() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("perm");
    let error_topic = unique_topic("perm-errors");
    mock.create_topic(&topic, 1, 1).unwrap();
    mock.create_topic(&error_topic, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
    config.kafka.error_topic = Some(error_topic.clone());
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    // The broker answers the next produce request with "message too large":
    // retrying cannot help.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let r = get(
        svc.beacon,
        "/beacon/event?%7B%22event%22%3A%7B%22id%22%3A%22perm-1%22%7D%7D;",
        &[],
    )
    .await;
    assert_eq!(r.status, 204);
    let errors = consume(
        &brokers,
        &error_topic,
        1,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(errors.len(), 1, "one error record");
    let v: serde_json::Value = serde_json::from_slice(&errors[0].payload).unwrap();
    assert_eq!(v["reason"], "delivery_failed");
    assert!(v["line"].as_str().unwrap().contains("perm-1"), "{v}");
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_kafka_delivery_failures_total{topic=\"main\"}"),
        1.0
    );
    assert_eq!(m.get("beacond_spool_appended_total"), 0.0, "not spooled");
    // The next beacon goes through as usual.
    let r = get(
        svc.beacon,
        "/beacon/event?%7B%22event%22%3A%7B%22id%22%3A%22perm-2%22%7D%7D;",
        &[],
    )
    .await;
    assert_eq!(r.status, 204);
    let main = consume(
        &brokers,
        &topic,
        1,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let seen = ids_in(&main);
    assert!(
        seen.contains_key("perm-2") && !seen.contains_key("perm-1"),
        "{seen:?}"
    );
    svc.stop().await;
}
