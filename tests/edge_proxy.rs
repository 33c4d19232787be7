//! The client address at the edge, over real sockets: PROXY protocol v1 and
//! v2 from a trusted balancer set it; from an untrusted peer, or malformed,
//! missing or slow, the connection is refused; a forged `X-Forwarded-For`
//! from an untrusted peer never sets it, nor on a connection whose PROXY
//! header named no client. Tests that read the address back
//! from Kafka need a broker (`BEACOND_TEST_BROKERS`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use beacond::config::Config;
use common::*;
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(command: Command, src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    Builder::with_addresses(Version::Two | command, Protocol::Stream, (s, d))
        .build()
        .unwrap()
}

fn beacon(id: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET /beacon/event?%7B%22id%22%3A%22{id}%22%7D; HTTP/1.1\r\nHost: x\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `bytes` on a new connection: `Some(status)` if answered, `None`
/// if the server closed the connection without a response.
async fn send(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_response(&mut s).await.ok().map(|r| r.status)
}

fn proxy_config(brokers: &str, topic: &str, trusted: &str) -> Config {
    let mut config = test_config(brokers, topic);
    config.http.proxy_protocol = true;
    config.http.header_read_timeout_ms = 800;
    config.client_ip.trusted_proxies = vec![trusted.parse().unwrap()];
    config
}

/// The client IP field of each delivered varnishkafka line, by beacon id.
fn ips_by_id(brokers: &str, topic: &str, expected: usize) -> Vec<(String, String)> {
    let messages = consume(
        brokers,
        topic,
        expected,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    messages
        .iter()
        .map(|m| {
            let line = String::from_utf8(m.payload.clone()).unwrap();
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 6, "{line}");
            let id = f[0]
                .split("%22")
                .nth(3)
                .unwrap_or_else(|| panic!("no id in {line}"))
                .to_string();
            (id, f[4].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn proxy_v1_and_v2_from_a_trusted_peer_set_the_client_ip() {
    let brokers = require_broker();
    let topic = unique_topic("edge-proxy");
    create_topic(&brokers, &topic, 1).await;
    let svc = Running::start(proxy_config(&brokers, &topic, "127.0.0.1/32")).await;
    svc.wait_ready().await;
    let dst = format!("127.0.0.1:{}", svc.beacon.port());
    let dst6 = format!("[2001:db8::1]:{}", svc.beacon.port());

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("v1-tcp4", v1("203.0.113.9:4711", &dst), "203.0.113.9"),
        (
            "v1-tcp6",
            v1("[2001:db8:5::7]:4711", &dst6),
            "2001:db8:5::7",
        ),
        (
            "v2-tcp4",
            v2(Command::Proxy, "198.51.100.3:1234", &dst),
            "198.51.100.3",
        ),
        (
            "v2-tcp6",
            v2(Command::Proxy, "[2001:db8:6::8]:1", &dst6),
            "2001:db8:6::8",
        ),
        // A balancer's own health check: the peer is the client.
        (
            "v2-local",
            v2(Command::Local, "10.0.0.1:1", "10.0.0.2:2"),
            "127.0.0.1",
        ),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        // The header's client is not a trusted proxy: its XFF is its own claim.
        ("v1-forged-xff", v1("203.0.113.10:5", &dst), "203.0.113.10"),
    ];
    for (id, header, _) in &cases {
        // v1-forged-xff: the header's client is not a trusted proxy; local
        // and unknown: the balancer named no client, so it vouches for no
        // forwarding header on the connection.
        let extra = if matches!(*id, "v1-forged-xff" | "v2-local" | "v1-unknown") {
            "X-Forwarded-For: 6.6.6.6\r\n"
        } else {
            ""
        };
        let mut bytes = header.clone();
        bytes.extend_from_slice(&beacon(id, extra));
        assert_eq!(send(svc.beacon, &bytes).await, Some(204), "{id}");
    }
    // Header and request in separate segments, the header itself split.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    let h = v2(Command::Proxy, "192.0.2.77:9", &dst);
    s.write_all(&h[..7]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&h[7..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&beacon("v2-split", "")).await.unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().status, 204);

    let got = ips_by_id(&brokers, &topic, cases.len() + 1);
    assert_eq!(got.len(), cases.len() + 1, "{got:?}");
    for (id, _, want) in &cases {
        let ip = &got
            .iter()
            .find(|(i, _)| i == id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .1;
        assert_eq!(ip, want, "{id}");
    }
    assert!(got.contains(&("v2-split".into(), "192.0.2.77".into())));
    let m = svc.metrics().await;
    for reason in ["missing", "invalid", "untrusted", "timeout"] {
        assert_eq!(
            m.get(&format!(
                "beacond_connections_rejected_total{{reason=\"proxy_header_{reason}\"}}"
            )),
            0.0
        );
    }
    svc.stop().await;
}

fn v2_unnamed(addresses: ppp::v2::Addresses, protocol: Protocol) -> Vec<u8> {
    Builder::with_addresses(Version::Two | Command::Proxy, protocol, addresses)
        .build()
        .unwrap()
}

/// Fault 6 of issue 12: a trusted balancer's PROXY header without a source
/// address (v1 UNKNOWN, v2 LOCAL, AF_UNSPEC, AF_UNIX) followed by a client's
/// `X-Forwarded-For` let the client pick its address and rate-limit key.
/// Observed without a broker through the per-client rate limit (1/s, burst
/// 1): believed, every distinct forged address has its own fresh bucket and
/// every beacon is 204; not believed, they all share the balancer's bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_without_a_source_makes_no_forwarding_header_believed() {
    let mut config = proxy_config("127.0.0.1:9", "unreachable", "127.0.0.1/32");
    config.shutdown.flush_timeout_seconds = 0;
    config.rate_limit.per_client_per_second = 1;
    config.rate_limit.per_client_burst = 1;
    let svc = Running::start(config).await;
    let dst = format!("127.0.0.1:{}", svc.beacon.port());

    // Control: named sources are distinct clients, each with its own bucket.
    for i in 1..=3 {
        let mut bytes = v1(&format!("203.0.113.{i}:4711"), &dst);
        bytes.extend_from_slice(&beacon("named", "X-Forwarded-For: 6.6.6.6\r\n"));
        assert_eq!(send(svc.beacon, &bytes).await, Some(204), "named {i}");
    }

    let unix = ppp::v2::Unix::new([1; 108], [2; 108]).into();
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2-local", v2(Command::Local, "10.0.0.1:1", "10.0.0.2:2")),
        (
            "v2-af-unspec",
            v2_unnamed(ppp::v2::Addresses::Unspecified, Protocol::Unspecified),
        ),
        ("v2-af-unix", v2_unnamed(unix, Protocol::Stream)),
    ];
    let mut n = 0;
    for (kind, header) in &kinds {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            n += 1;
            let xff = format!("X-Forwarded-For: 6.6.{n}.6\r\n");
            let mut bytes = header.clone();
            bytes.extend_from_slice(&beacon(kind, &xff));
            statuses.push(send(svc.beacon, &bytes).await);
        }
        // All of them share one bucket (the balancer's): of two beacons sent
        // back to back at least one is over the limit.
        assert!(
            statuses.contains(&Some(429)),
            "{kind}: {statuses:?}: the client's X-Forwarded-For chose the rate-limit key"
        );
        assert!(
            statuses.iter().all(|s| matches!(s, Some(204 | 429))),
            "{kind}: {statuses:?}"
        );
    }
    let m = svc.metrics().await;
    assert!(m.get("beacond_beacons_rate_limited_total{limit=\"client\"}") >= 4.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_an_untrusted_peer_is_refused() {
    // Loopback is not a trusted proxy here.
    let mut config = proxy_config("127.0.0.1:9", "unreachable", "192.0.2.0/24");
    config.shutdown.flush_timeout_seconds = 0;
    let svc = Running::start(config).await;
    let dst = format!("127.0.0.1:{}", svc.beacon.port());
    let mut forged = v1("203.0.113.9:4711", &dst);
    forged.extend_from_slice(&beacon("forged-v1", ""));
    assert_eq!(send(svc.beacon, &forged).await, None);
    let mut forged = v2(Command::Proxy, "203.0.113.9:4711", &dst);
    forged.extend_from_slice(&beacon("forged-v2", ""));
    assert_eq!(send(svc.beacon, &forged).await, None);
    let mut forged = b"PROXY TCP4 garbage\r\n".to_vec();
    forged.extend_from_slice(&beacon("forged-bad", ""));
    assert_eq!(send(svc.beacon, &forged).await, None);
    // Plain HTTP from the untrusted peer is a direct client.
    assert_eq!(send(svc.beacon, &beacon("direct", "")).await, Some(204));
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_connections_rejected_total{reason=\"proxy_header_untrusted\"}"),
        3.0
    );
    assert_eq!(m.get("beacond_beacons_accepted_total"), 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_missing_or_slow_proxy_header_from_a_trusted_peer_is_refused() {
    let mut config = proxy_config("127.0.0.1:9", "unreachable", "127.0.0.1/32");
    config.shutdown.flush_timeout_seconds = 0;
    let svc = Running::start(config).await;
    let dst = format!("127.0.0.1:{}", svc.beacon.port());

    // Missing: the balancer was supposed to send one.
    assert_eq!(send(svc.beacon, &beacon("missing", "")).await, None);
    // Malformed, in several ways.
    let mut bad_version = v2(Command::Proxy, "198.51.100.3:1234", &dst);
    bad_version[12] = 0x31;
    let mut too_long = v2(Command::Proxy, "198.51.100.3:1234", &dst);
    too_long[14..16].copy_from_slice(&60_000u16.to_be_bytes());
    let malformed: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 203.0.113.9 nonsense 1 2\r\n".to_vec(),
        b"PROXY TCP9 203.0.113.9 192.0.2.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 203.0.113.9 192.0.2.1 99999 2\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
        bad_version,
        too_long,
    ];
    for (i, mut bytes) in malformed.into_iter().enumerate() {
        bytes.extend_from_slice(&beacon("bad", ""));
        assert_eq!(send(svc.beacon, &bytes).await, None, "malformed case {i}");
    }
    // Slow: half a header, then nothing; closed after the header timeout.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    // A well-formed one still works.
    let mut ok = v1("203.0.113.9:4711", &dst);
    ok.extend_from_slice(&beacon("ok", ""));
    assert_eq!(send(svc.beacon, &ok).await, Some(204));

    let m = svc.metrics().await;
    let rejected = |r: &str| {
        m.get(&format!(
            "beacond_connections_rejected_total{{reason=\"proxy_header_{r}\"}}"
        ))
    };
    assert_eq!(rejected("missing"), 1.0);
    assert_eq!(rejected("invalid"), 6.0);
    assert_eq!(rejected("timeout"), 1.0);
    assert_eq!(rejected("untrusted"), 0.0);
    assert_eq!(m.get("beacond_beacons_accepted_total"), 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn forged_x_forwarded_for_from_an_untrusted_peer_never_sets_the_client_ip() {
    let brokers = require_broker();
    let topic = unique_topic("edge-xff");
    create_topic(&brokers, &topic, 1).await;
    let mut config = test_config(&brokers, &topic);
    // Our balancers live elsewhere: loopback is an untrusted client.
    config.client_ip.trusted_proxies = vec!["192.0.2.0/24".parse().unwrap()];
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    let forgeries = [
        ("xff-1", "X-Forwarded-For: 6.6.6.6\r\n"),
        ("xff-2", "X-Forwarded-For: 6.6.6.6, 192.0.2.1\r\n"),
        (
            "xff-3",
            "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 7.7.7.7\r\n",
        ),
        (
            "xff-4",
            "X-Forwarded-For: [2001:db8::66]:80\r\nX-Client-IP: 8.8.8.8\r\n",
        ),
        ("xff-5", "Forwarded: for=9.9.9.9\r\nX-Real-IP: 9.9.9.9\r\n"),
    ];
    for (id, headers) in forgeries {
        assert_eq!(
            send(svc.beacon, &beacon(id, headers)).await,
            Some(204),
            "{id}"
        );
    }
    let got = ips_by_id(&brokers, &topic, forgeries.len());
    assert_eq!(got.len(), forgeries.len());
    for (id, ip) in &got {
        assert_eq!(ip, "127.0.0.1", "{id}");
    }
    svc.stop().await;
}
