//! What operators look at: librdkafka's statistics on `/metrics` (against
//! librdkafka's mock cluster, a broker taken down and back), and the
//! Grafana dashboard (`config/grafana/beacond.json`) and Prometheus rules
//! (`config/prometheus/beacond.rules.yml`) naming only metrics the service
//! exports. No broker needed.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beacond::config::PropertyValue;
use common::*;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

const FIXTURE: &str = "tests/fixtures/librdkafka-stats.json";
const DASHBOARD: &str = "config/grafana/beacond.json";
const RULES: &str = "config/prometheus/beacond.rules.yml";

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

    // Down, with traffic (librdkafka then wants the connection: an idle
    // producer leaves a lost broker in INIT, which has no up series): the
    // statistics say so and count the disconnect; then up again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, beacon) = (stop.clone(), svc.beacon);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(beacon, "/beacon/event?%7B%7D;", &[]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    svc.stop().await;
}

/// Every name a scrape can be queried by: each series' name, and per
/// `# TYPE` family its sample names (`_total` for a counter; `_bucket`,
/// `_sum`, `_count` for a histogram), so a family with no series yet counts.
fn exported_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

/// The `beacond_*` metric and `beacond:*` recording-rule names a PromQL
/// expression uses (quoted label values left out).
fn names_in(expr: &str) -> BTreeSet<String> {
    let quoted = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let name = regex::Regex::new(r"(?:^|[^a-zA-Z0-9_:])(beacond[_:][a-zA-Z0-9_:]*)").unwrap();
    let bare = quoted.replace_all(expr, "\"\"");
    name.captures_iter(&bare)
        .map(|c| c[1].to_string())
        .collect()
}

/// Every `expr` in a JSON document (panels, targets, nested rows).
fn exprs_in(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs_in(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs_in(v, out)),
        _ => {}
    }
}

/// The rules file: (recording rule names, every rule's expression).
fn rules() -> (HashSet<String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(repo_root().join(RULES)).expect("rules file");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("rules are YAML");
    let mut recorded = HashSet::new();
    let mut exprs = Vec::new();
    let groups = doc["groups"].as_sequence().expect("groups");
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
    {
        let expr = rule["expr"].as_str().expect("expr").to_string();
        if let Some(name) = rule["record"].as_str() {
            recorded.insert(name.to_string());
            exprs.push((name.to_string(), expr));
        } else {
            let alert = rule["alert"].as_str().expect("record or alert");
            assert!(
                !rule["for"].is_null() || expr.contains("increase("),
                "{alert}: no `for:`"
            );
            assert!(
                rule["annotations"]["summary"].is_string()
                    && rule["annotations"]["description"].is_string(),
                "{alert}: summary and description"
            );
            exprs.push((alert.to_string(), expr));
        }
    }
    (recorded, exprs)
}

/// A stream config server (`events.stream_config_uri`) answering every
/// request with the same config, so the stream config metrics exist.
fn serve_stream_config(body: String) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_metrics_the_service_exports() {
    // Every part on: beacons with an error topic, events with the stream
    // config from a URL, the spool, librdkafka's statistics.
    let mock = MockCluster::new(1).expect("mock cluster");
    let prefix = unique_prefix("ops");
    for t in [
        "beacons",
        "errors",
        "beacond.error.validation",
        "test.event",
    ] {
        mock.create_topic(&format!("{prefix}{t}"), 1, 1).unwrap();
    }
    let streams = serde_json::json!({"streams": {
        "beacond.error.validation": {"schema_title": "error"},
        "test.event": {"schema_title": "test/event"},
    }});
    let server = serve_stream_config(streams.to_string());
    let mut config = events_config(&mock.bootstrap_servers(), &prefix);
    config.events.stream_config = None;
    config.events.stream_config_uri = Some(format!("http://{server}/streams"));
    config.events.stream_config_cache = Some(temp_dir("ops-cache").join("streams.json"));
    config.kafka.error_topic = Some(format!("{prefix}errors"));
    set(&mut config, "statistics.interval.ms", "100");
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    assert_eq!(
        get(svc.beacon, "/beacon/event?%7B%7D;", &[]).await.status,
        204
    );
    let event = br#"{"$schema":"/test/event/1.0.0","meta":{"stream":"test.event"}}"#;
    let r = post(
        svc.beacon,
        "/v1/events",
        &[("Content-Type", "application/json")],
        event,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    wait_series(&svc, "beacond_kafka_broker_up", "statistics", |_, v| {
        v == 1.0
    })
    .await;
    let text = get(svc.admin, "/metrics", &[]).await.body_text();
    let exported = exported_names(&text);

    let (recorded, rule_exprs) = rules();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap())
            .expect("the dashboard is JSON");
    let mut dashboard_exprs = Vec::new();
    exprs_in(&dashboard["panels"], &mut dashboard_exprs);
    assert!(dashboard_exprs.len() > 30, "{dashboard_exprs:?}");

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    let sources = dashboard_exprs
        .iter()
        .map(|e| ("dashboard", e.as_str()))
        .chain(rule_exprs.iter().map(|(_, e)| (RULES, e.as_str())));
    for (source, expr) in sources {
        let names = names_in(expr);
        assert!(
            !names.is_empty() || !expr.contains("beacond"),
            "{source}: no name found in {expr}"
        );
        for name in names {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                exported.contains(&name)
            };
            if !known {
                missing.push(format!("{source}: {name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "names neither on /metrics nor recorded:\n{}\n/metrics:\n{text}",
        missing.join("\n")
    );

    // The dashboard covers what the issue lists, and every librdkafka
    // statistics family.
    let mut dashboard_names = BTreeSet::new();
    for e in &dashboard_exprs {
        dashboard_names.extend(names_in(e));
    }
    for name in [
        "beacond_requests_total",
        "beacond_beacons_rejected_total",
        "beacond_event_validation_seconds_bucket",
        "beacond_spool_bytes",
        "beacond_kafka_delivered_total",
        "beacond_kafka_delivery_failures_total",
        "beacond_kafka_broker_reachable",
    ] {
        assert!(dashboard_names.contains(name), "the dashboard lacks {name}");
    }
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE beacond_kafka_") else {
            continue;
        };
        let family = rest.split(' ').next().unwrap_or_default();
        if family.starts_with("broker_") || family.starts_with("topic_") {
            let kind = rest.split(' ').nth(1).unwrap_or_default();
            let name = match kind {
                "counter" => format!("beacond_kafka_{family}_total"),
                _ => format!("beacond_kafka_{family}"),
            };
            assert!(
                dashboard_names.contains(&name),
                "the dashboard lacks {name}"
            );
        }
    }
    // A datasource variable, used by every panel and query.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus datasource variable"
    );
    let mut ids = HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "ids unique"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{panel}");
            assert!(
                target["expr"].as_str().unwrap().contains("$instance"),
                "{panel}"
            );
        }
    }
    eprintln!(
        "{} names checked ({} recording rules); dashboard: {} queries",
        used.len(),
        recorded.len(),
        dashboard_exprs.len()
    );
    svc.stop().await;
}
