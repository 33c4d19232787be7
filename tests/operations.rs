//! What operators look at: librdkafka's statistics on `/metrics` (against
//! librdkafka's mock cluster, a broker taken down and back), and the
//! Grafana dashboard and Prometheus rules naming only metrics the service
//! exports. No broker needed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beacond::config::PropertyValue;
use common::*;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

const FIXTURE: &str = "tests/fixtures/librdkafka-stats.json";

fn set(config: &mut beacond::config::Config, key: &str, value: &str) {
    config
        .kafka
        .properties
        .insert(key.into(), PropertyValue::Text(value.into()));
}

/// Keeps the statistics documents librdkafka hands over.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<serde_json::Value>>>);

impl ClientContext for Capture {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(v) = serde_json::from_slice(statistics) {
            self.0.lock().unwrap().push(v);
        }
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// A real document from the bundled librdkafka, for a producer on the mock
/// cluster, once a window holds produce batches and round trips: it has
/// every field `kafka_stats` reads (a librdkafka upgrade that renames one
/// fails here, not silently as zeros). `BEACOND_WRITE_STATS_FIXTURE=1`
/// writes it to the fixture `kafka_stats`'s unit tests read.
#[test]
fn real_statistics_have_every_field_the_mapping_reads() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("beacons", 1, 1).unwrap();
    let capture = Capture::default();
    let producer: ThreadedProducer<Capture> = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("statistics.interval.ms", "100")
        .set("linger.ms", "5")
        .set("client.id", "beacond-test-host")
        .create_with_context(capture.clone())
        .expect("producer");
    let deadline = Instant::now() + Duration::from_secs(30);
    let doc = loop {
        assert!(Instant::now() < deadline, "no document with batches");
        for i in 0..3 {
            let payload =
                format!("?{{\"n\":{i}}}\ttest-host\t{i}\t2026-12-02T00:00:00\t127.0.0.1\t\"ua\"");
            let _ = producer.send(BaseRecord::<(), _, ()>::to("beacons").payload(&payload));
        }
        std::thread::sleep(Duration::from_millis(120));
        let docs = capture.0.lock().unwrap();
        let good = docs.iter().find(|d| {
            d["topics"]["beacons"]["batchcnt"]["cnt"].as_i64() > Some(0)
                && d["brokers"]
                    .as_object()
                    .is_some_and(|b| b.values().any(|b| b["rtt"]["cnt"].as_i64() > Some(0)))
        });
        if let Some(d) = good {
            break d.clone();
        }
    };
    producer.flush(Duration::from_secs(5)).unwrap();
    for (_, b) in doc["brokers"].as_object().unwrap() {
        for field in [
            "source",
            "state",
            "outbuf_cnt",
            "outbuf_msg_cnt",
            "waitresp_cnt",
            "waitresp_msg_cnt",
            "txerrs",
            "rxerrs",
            "txretries",
            "req_timeouts",
            "disconnects",
        ] {
            assert!(!b[field].is_null(), "broker field {field} missing: {b}");
        }
        assert!(b["rtt"]["avg"].is_number() && b["rtt"]["p99"].is_number());
    }
    let t = &doc["topics"]["beacons"];
    for window in ["batchsize", "batchcnt"] {
        assert!(t[window]["avg"].as_f64() > Some(0.0), "{window}: {t}");
        assert!(t[window]["p99"].as_f64() > Some(0.0), "{window}: {t}");
    }
    if std::env::var_os("BEACOND_WRITE_STATS_FIXTURE").is_some() {
        let path = repo_root().join(FIXTURE);
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

/// The value of `name{labels}` once it satisfies `ok`, polled; fails after
/// 30 s with the series of `name` seen last.
async fn wait_series(svc: &Running, name: &str, what: &str, ok: impl Fn(&str, f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = svc.metrics().await;
        let series: Vec<_> =
            m.0.iter()
                .filter(|(k, _)| k.split('{').next() == Some(name))
                .collect();
        if series.iter().any(|(k, v)| ok(k, **v)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 30 s; {name}: {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_statistics_reach_metrics_and_follow_a_broker_down_and_up() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("stats");
    mock.create_topic(&topic, 1, 1).unwrap();
    let mut config = test_config(&mock.bootstrap_servers(), &topic);
    set(&mut config, "statistics.interval.ms", "100");
    set(&mut config, "reconnect.backoff.max.ms", "200");
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    for i in 0..5 {
        let r = get(
            svc.beacon,
            &format!("/beacon/event?%7B%22n%22%3A{i}%7D;"),
            &[],
        )
        .await;
        assert_eq!(r.status, 204);
    }
    // The learned broker (`host:port/1`), up, with a round trip measured.
    let learned = |k: &str| k.contains("/1\"") || k.contains("/1\"}");
    wait_series(&svc, "beacond_kafka_broker_up", "broker 1 up", |k, v| {
        learned(k) && v == 1.0
    })
    .await;
    wait_series(
        &svc,
        "beacond_kafka_broker_rtt_avg_seconds",
        "an rtt",
        |k, v| learned(k) && v > 0.0,
    )
    .await;
    let topic_label = format!("{{topic=\"{topic}\"}}");
    wait_series(
        &svc,
        "beacond_kafka_topic_batch_messages_avg",
        "batches of the beacon topic",
        |k, v| k.ends_with(&topic_label) && v >= 1.0,
    )
    .await;
    let m = svc.metrics().await;
    for family in [
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
    ] {
        assert!(m.sum(family, &[]) >= 0.0);
    }
    let bytes = m.get(&format!(
        "beacond_kafka_topic_batch_size_avg_bytes{topic_label}"
    ));
    assert!(bytes > 0.0, "batch size in bytes: {bytes}");
    assert!(m.get("beacond_kafka_stats_updates_total") >= 1.0);
    assert_eq!(m.get("beacond_kafka_stats_errors_total"), 0.0);

    // Down: the statistics say so (and count the disconnect); up again.
    mock.broker_down(1).unwrap();
    wait_series(&svc, "beacond_kafka_broker_up", "broker 1 down", |k, v| {
        learned(k) && v == 0.0
    })
    .await;
    wait_series(
        &svc,
        "beacond_kafka_broker_disconnects_total",
        "a disconnect counted",
        |k, v| learned(k) && v >= 1.0,
    )
    .await;
    mock.broker_up(1).unwrap();
    wait_series(
        &svc,
        "beacond_kafka_broker_up",
        "broker 1 up again",
        |k, v| learned(k) && v == 1.0,
    )
    .await;
    svc.stop().await;
}
