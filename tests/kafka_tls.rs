//! Kafka over TLS, with `[kafka.properties]` as an operator writes them.
//! tansu 0.6 cannot serve TLS itself (its `--cert` and `--key` refuse each
//! other), so HAProxy in TCP mode terminates TLS in front of it (`bind ...
//! ssl crt`) and tansu advertises the TLS port: librdkafka (rdkafka's `ssl`
//! feature, the system OpenSSL) does a real handshake. The CA and the
//! server certificate are generated per test (rcgen).
//!
//! Each test runs its own tansu and HAProxy (`scripts/dev-broker bin`,
//! `scripts/install-deps haproxy`), so they are marked like the other tests
//! that need a broker.

mod common;
#[path = "common/lb.rs"]
mod lb;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lb::*;

/// tansu on a plain port, advertising the TLS port HAProxy serves.
struct TlsBroker {
    tls_port: u16,
    _tansu: Proc,
    _front: Proc,
}

impl TlsBroker {
    async fn start(dir: &Path, pki: &Pki) -> TlsBroker {
        let (plain, tls_port) = (free_port(), free_port());
        let mut tansu = tansu(
            dir,
            "tansu",
            plain,
            &format!("tcp://127.0.0.1:{tls_port}"),
            &[],
        );
        wait_port(SocketAddr::from(([127, 0, 0, 1], plain)), &mut tansu).await;
        let mut front = tls_front(dir, pki, tls_port, plain);
        wait_port(SocketAddr::from(([127, 0, 0, 1], tls_port)), &mut front).await;
        TlsBroker {
            tls_port,
            _tansu: tansu,
            _front: front,
        }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }
}

fn ssl_props(ca: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "ssl".to_string()),
        ("ssl.ca.location", ca.display().to_string()),
    ]
}

fn as_refs<'a>(props: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    props.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The `[kafka.properties]` lines an operator writes for TLS.
fn ssl_toml(ca: &Path) -> String {
    format!(
        "\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    )
}

fn beacon_target(token: &str) -> String {
    format!("/beacon/event?%7B%22t%22%3A%22{token}%22%7D;")
}

async fn start_beacond(dir: &Path, config: &Path, ports: (u16, u16), name: &str) -> Proc {
    let mut p = beacond(dir, config, name);
    wait_port(SocketAddr::from(([127, 0, 0, 1], ports.1)), &mut p).await;
    p
}

/// Polls until `beacond_kafka_broker_reachable` is 1 (the probe's metadata
/// request went through the TLS port), deadline 30 s.
async fn wait_reachable(admin: SocketAddr, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = Metrics::parse(&get(admin, "/metrics", &[]).await.body_text());
        if m.get("beacond_kafka_broker_reachable") == 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker never reachable over TLS; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn beacons_reach_kafka_over_tls() {
    let dir = temp_dir("kafka-tls");
    let pki = pki(&dir, "good");
    let broker = TlsBroker::start(&dir, &pki).await;
    let props = ssl_props(&pki.ca);
    let topic = unique_topic("tls");
    create_topic_with(&broker.brokers(), &as_refs(&props), &topic, 1).await;

    let ports = (free_port(), free_port());
    let config = transport_config(
        &dir,
        ports,
        &broker.brokers(),
        &topic,
        &ssl_toml(&pki.ca),
        true,
    );
    let mut svc = start_beacond(&dir, &config, ports, "beacond").await;
    wait_reachable(addr(ports.1), &svc).await;
    wait_http(addr(ports.1), "/readyz", false).await;

    let tokens: Vec<String> = (0..50).map(|i| format!("tls{i:04}")).collect();
    for t in &tokens {
        let r = get(addr(ports.0), &beacon_target(t), &[]).await;
        assert_eq!(r.status, 204, "{}", r.body_text());
    }
    let got = consume_with(
        &broker.brokers(),
        &as_refs(&props),
        &topic,
        tokens.len(),
        Duration::from_secs(30),
    );
    let lines: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    for t in &tokens {
        assert!(
            lines.iter().any(|l| l.contains(&format!("%22{t}%22"))),
            "{t} not read back over TLS ({} lines); log:\n{}",
            lines.len(),
            svc.log()
        );
    }
    let status = svc.terminate().await;
    assert!(status.success(), "exit {status}; log:\n{}", svc.log());
    eprintln!(
        "kafka over TLS: {} beacons answered 204, {} read back through the TLS port",
        tokens.len(),
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn an_untrusted_broker_certificate_is_a_loud_failure_and_beacons_spool() {
    let dir = temp_dir("kafka-tls-untrusted");
    let good = pki(&dir, "good");
    let other = pki(&dir, "other");
    let broker = TlsBroker::start(&dir, &good).await;
    let topic = unique_topic("tls-untrusted");
    create_topic_with(&broker.brokers(), &as_refs(&ssl_props(&good.ca)), &topic, 1).await;

    // Without a spool: not ready, never reachable, and the log says why.
    let dir_a = dir.join("nospool");
    std::fs::create_dir_all(&dir_a).unwrap();
    let ports_a = (free_port(), free_port());
    let config_a = transport_config(
        &dir_a,
        ports_a,
        &broker.brokers(),
        &topic,
        &ssl_toml(&other.ca),
        false,
    );
    let a = start_beacond(&dir_a, &config_a, ports_a, "beacond-nospool").await;

    // With a spool: beacons are answered 204 at once and, once librdkafka
    // gives up on them (message.timeout.ms), spooled.
    let dir_b = dir.join("spool");
    std::fs::create_dir_all(&dir_b).unwrap();
    let ports_b = (free_port(), free_port());
    let config_b = transport_config(
        &dir_b,
        ports_b,
        &broker.brokers(),
        &topic,
        &format!("{}\"message.timeout.ms\" = 3000\n", ssl_toml(&other.ca)),
        true,
    );
    let mut b = start_beacond(&dir_b, &config_b, ports_b, "beacond-spool").await;

    let needle = "certificate verify failed";
    let log = wait_log(&a, needle, Duration::from_secs(30)).await;
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap()
        .to_string();
    eprintln!("untrusted certificate, beacond logs: {line}");
    let m = Metrics::parse(&get(addr(ports_a.1), "/metrics", &[]).await.body_text());
    assert_eq!(m.get("beacond_kafka_broker_reachable"), 0.0);
    let ready = get(addr(ports_a.1), "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body_text());
    eprintln!(
        "untrusted certificate, no spool: /readyz 503: {}",
        ready.body_text().trim()
    );

    let tokens: Vec<String> = (0..20).map(|i| format!("untrusted{i:04}")).collect();
    for t in &tokens {
        let sent = Instant::now();
        let r = get(addr(ports_b.0), &beacon_target(t), &[]).await;
        assert_eq!(r.status, 204, "{}", r.body_text());
        assert!(sent.elapsed() < Duration::from_secs(2), "a beacon hung");
    }
    wait_log(&b, needle, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = Metrics::parse(&get(addr(ports_b.1), "/metrics", &[]).await.body_text());
        assert_eq!(m.get("beacond_kafka_broker_reachable"), 0.0);
        if m.get("beacond_spool_records") >= tokens.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "beacons not spooled: {} records; log:\n{}",
            m.get("beacond_spool_records"),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_b = get(addr(ports_b.1), "/readyz", &[]).await;
    eprintln!(
        "untrusted certificate, with spool: {} beacons answered 204 and spooled; /readyz {}: {}",
        tokens.len(),
        ready_b.status,
        ready_b.body_text().trim()
    );
    let status = b.terminate().await;
    assert!(status.success(), "exit {status}; log:\n{}", b.log());
}
