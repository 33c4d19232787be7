//! Replay after an outage (issue 12, fault 4): once the broker answers
//! again, the spool resumes replay at once, whatever backoff the outage's
//! failed deliveries built up (it used to double per failed record, so one
//! outage froze replay for up to 30 s after the broker was back).
//! librdkafka's mock cluster plays the broker; no external broker needed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beacond::config::{PropertyValue, SpoolMode};
use common::*;
use rdkafka::mocking::MockCluster;

/// Sends numbered beacons on a keep-alive connection until `stop`; the ids
/// answered 204 go to `ok`, other statuses are counted in `other`.
async fn load(
    addr: std::net::SocketAddr,
    pause: Duration,
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<Vec<String>>>,
    other: Arc<Mutex<HashMap<u16, u64>>>,
) {
    numbered_beacons(
        addr,
        "r",
        BeaconMethod::Get,
        pause,
        &stop,
        |id, status| match status {
            Some(204) => ok.lock().unwrap().push(id),
            Some(s) => *other.lock().unwrap().entry(s).or_default() += 1,
            None => {}
        },
    )
    .await;
}

/// Polls the metrics until `done` holds; returns when it did.
async fn wait_metrics(
    svc: &Running,
    what: &str,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let m = svc.metrics().await;
        if done(&m) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what} (delivered {}, replayed {}, spool records {}, reachable {})",
            m.get(DELIVERED),
            m.get(REPLAYED),
            m.get("beacond_spool_records"),
            m.get("beacond_kafka_broker_reachable"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DELIVERED: &str = "beacond_kafka_delivered_total{topic=\"main\"}";
const REPLAYED: &str = "beacond_spool_replayed_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resumes_as_soon_as_the_broker_is_back() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("replay-resumes");
    mock.create_topic(&topic, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
    config.spool.mode = SpoolMode::Always;
    config.spool.fsync_interval_ms = 10;
    for (k, v) in [("message.timeout.ms", "3000"), ("retry.backoff.ms", "100")] {
        config
            .kafka
            .properties
            .insert(k.into(), PropertyValue::Text(v.into()));
    }
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    // About 200 beacons a second, through an outage of 6 s: the records
    // handed to the producer as it began fail (their timeout), hundreds at
    // once.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(Mutex::new(HashMap::new()));
    let loader = tokio::spawn(load(
        svc.beacon,
        Duration::from_millis(5),
        stop.clone(),
        ok.clone(),
        other.clone(),
    ));
    wait_metrics(&svc, "deliveries", Duration::from_secs(30), |m| {
        m.get(DELIVERED) > 100.0
    })
    .await;
    mock.broker_down(1).unwrap();
    wait_metrics(
        &svc,
        "the probe sees the outage",
        Duration::from_secs(30),
        |m| m.get("beacond_kafka_broker_reachable") == 0.0,
    )
    .await;
    // An outage of 6 s (a scenario's length, not a wait for a result).
    tokio::time::sleep(Duration::from_secs(6)).await;
    mock.broker_up(1).unwrap();
    let reachable = wait_metrics(
        &svc,
        "the broker reachable again",
        Duration::from_secs(60),
        |m| m.get("beacond_kafka_broker_reachable") == 1.0,
    )
    .await;
    // Replay: records handed from the spool to the producer (what the
    // outage's backoff held back), not deliveries librdkafka retried itself.
    let replayed_then = svc.metrics().await.get(REPLAYED);
    let resumed = wait_metrics(&svc, "replay resumed", Duration::from_secs(60), |m| {
        m.get(REPLAYED) > replayed_then + 200.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    let took = resumed - reachable;
    // The old per-record backoff held replay for up to 30 s here; the probe
    // turning reachable now ends the pause at once.
    assert!(
        took < Duration::from_secs(10),
        "replay resumed {took:?} after the broker was reachable again"
    );

    let sent = ok.lock().unwrap().clone();
    assert!(
        other.lock().unwrap().is_empty(),
        "always mode with a spool: only 204s, got {:?}",
        other.lock().unwrap()
    );
    wait_metrics(&svc, "the spool drained", Duration::from_secs(90), |m| {
        m.get("beacond_spool_records") == 0.0
    })
    .await;
    let got = consume(
        &brokers,
        &topic,
        sent.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let mut seen = std::collections::HashSet::new();
    for m in &got {
        let line = String::from_utf8_lossy(&m.payload);
        if let Some(id) = line
            .split("%22id%22%3A%22")
            .nth(1)
            .and_then(|r| r.split("%22").next())
        {
            seen.insert(id.to_string());
        }
    }
    let lost: Vec<&String> = sent.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} lost", lost.len(), sent.len());
    // The scenario did what it is for: spooled records failed and were sent
    // again (each record is replayed once, plus once per failure).
    let m = svc.metrics().await;
    let resent = m.get(REPLAYED) - m.get("beacond_spool_appended_total");
    assert!(
        resent > 0.0,
        "no spooled record failed: the outage tested nothing"
    );
    eprintln!(
        "replay: resumed {took:?} after the broker was reachable; {resent} resends; {} answered 204, lost 0",
        sent.len()
    );
    svc.stop().await;
}
