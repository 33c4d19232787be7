//! Hostile input over real sockets: the service answers with a 4xx or closes
//! the connection, never panics, and keeps serving. No broker is needed: the
//! producer points at a closed port and simply queues.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn start_without_broker() -> Running {
    // Port 9 (discard) on loopback: nothing listens there.
    let mut config = test_config("127.0.0.1:9", "unreachable");
    config.http.max_query_bytes = 8192;
    // Nothing can be delivered: don't wait for it at shutdown.
    config.shutdown.flush_timeout_seconds = 0;
    Running::start(config).await
}

/// The service still answers a valid beacon and its admin endpoints.
async fn assert_still_serving(svc: &Running) {
    let r = get(svc.beacon, "/beacon/event?%7B%22ok%22%3Atrue%7D;", &[]).await;
    assert_eq!(r.status, 204);
    assert_eq!(get(svc.admin, "/healthz", &[]).await.status, 200);
    let m = svc.metrics().await;
    assert!(m.get("beacond_beacons_accepted_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_queries_and_headers_are_refused() {
    let svc = start_without_broker().await;
    // Over max_query_bytes but within hyper's buffer: our 414.
    let q = "%7B%22a%22%3A%22".to_string() + &"x".repeat(9000) + "%22%7D";
    assert_eq!(
        get(svc.beacon, &format!("/beacon/event?{q}"), &[])
            .await
            .status,
        414
    );
    // Far beyond any buffer: hyper refuses the head (414 or 431) or closes.
    let q = "x".repeat(1 << 20);
    let raw = format!("GET /beacon/event?{q} HTTP/1.1\r\nHost: x\r\n\r\n");
    if let Ok(r) = raw_request(svc.beacon, raw.as_bytes()).await {
        assert!(matches!(r.status, 414 | 431 | 400), "status {}", r.status);
    }
    // A huge header.
    let raw = format!(
        "GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(200_000)
    );
    if let Ok(r) = raw_request(svc.beacon, raw.as_bytes()).await {
        assert!(matches!(r.status, 431 | 400), "status {}", r.status);
    }
    // A user agent over max_user_agent_bytes.
    let ua = "u".repeat(3000);
    let r = get(svc.beacon, "/beacon/event?%7B%7D", &[("User-Agent", &ua)]).await;
    assert_eq!(r.status, 431);
    // A POST body over max_body_bytes, declared and chunked.
    let raw = format!(
        "POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    let r = raw_request(svc.beacon, raw.as_bytes())
        .await
        .expect("answered");
    assert_eq!(r.status, 413);
    let mut raw =
        b"POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..20 {
        raw.extend_from_slice(format!("1000\r\n{}\r\n", "z".repeat(0x1000)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(svc.beacon, &raw).await.expect("answered");
    assert_eq!(r.status, 413);
    // A small body is read and ignored: still a beacon.
    let raw = b"POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(
        raw_request(svc.beacon, raw).await.expect("answered").status,
        204
    );
    assert_still_serving(&svc).await;
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"body_too_large\"}"),
        2.0
    );
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"user_agent_too_long\"}"),
        1.0
    );
    svc.stop().await;
}

/// The varnishkafka line's user agent field, as written (quotes and
/// escapes included), at the EventLogging processor's limit of 800
/// characters is answered 204; one character more is refused with 431 and
/// its own reason, since the processor would drop the line after the 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_agent_at_the_processors_limit_is_204_and_one_past_it_431() {
    let svc = start_without_broker().await;
    let at_limit = "u".repeat(798);
    let r = get(
        svc.beacon,
        "/beacon/event?%7B%7D;",
        &[("User-Agent", &at_limit)],
    )
    .await;
    assert_eq!(r.status, 204);
    let past = "u".repeat(799);
    let r = get(
        svc.beacon,
        "/beacon/event?%7B%7D;",
        &[("User-Agent", &past)],
    )
    .await;
    assert_eq!(r.status, 431);
    assert!(
        r.body_text().contains("EventLogging processor"),
        "{}",
        r.body_text()
    );
    // A backslash is written as two characters: 797 letters and a
    // backslash (798 characters of user agent) make an 801-character field.
    let escaped = format!("{}\\", "u".repeat(797));
    let r = get(
        svc.beacon,
        "/beacon/event?%7B%7D;",
        &[("User-Agent", &escaped)],
    )
    .await;
    assert_eq!(r.status, 431);
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"user_agent_too_long_for_processor\"}"),
        2.0
    );
    assert_eq!(m.get("beacond_beacons_accepted_total"), 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_nesting_is_refused() {
    let svc = start_without_broker().await;
    let deep = format!("%7B%22a%22%3A{}", "%5B".repeat(2500));
    let r = get(svc.beacon, &format!("/beacon/event?{deep}"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body_text(), "query string JSON nested too deeply\n");
    let deep_objects = "%7B%22a%22%3A".repeat(500) + "1" + &"%7D".repeat(500);
    assert_eq!(
        get(svc.beacon, &format!("/beacon/event?{deep_objects}"), &[])
            .await
            .status,
        400
    );
    assert_still_serving(&svc).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_socket() {
    let svc = start_without_broker().await;
    // A fixed set of nasty inputs, then pseudo-random bytes.
    let mut inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec(),
        b"GET /beacon/event?%7B%7D HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /beacon/event?\x7f\x00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nUser-Agent: a\xffb\r\n\r\n".to_vec(),
        b"GET /beacon/event?%7B%7D HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"GET /beacon/event?%7B%7D HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            .to_vec(),
        b"POST /beacon/event?%7B%7D HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"\r\n\r\n\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        vec![b'A'; 100_000],
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..200 {
        let len = 1 + (i * 37) % 600;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push((x >> 24) as u8);
        }
        if i % 2 == 0 {
            // Half of them look like a request line first.
            let mut v = b"GET /beacon/event?".to_vec();
            v.extend_from_slice(&bytes);
            bytes = v;
        }
        inputs.push(bytes);
    }
    for input in inputs {
        let Ok(mut s) = TcpStream::connect(svc.beacon).await else {
            panic!("listener stopped accepting");
        };
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        // Either an answer or a close; never a hang past the read timeout.
        let _ = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s)).await;
    }
    assert_still_serving(&svc).await;
    svc.stop().await;
}

/// Polls `/metrics` until `beacond_kafka_broker_reachable` is `want`.
async fn wait_reachable(svc: &Running, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = svc.metrics().await.get("beacond_kafka_broker_reachable");
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "beacond_kafka_broker_reachable stayed {now}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The probe follows the broker both ways (a mock cluster taken down and
/// brought back), and readiness follows it only where nothing could be
/// accepted safely without it: without a spool, 503 while the broker is
/// unreachable; with a spool below its cap, 200 throughout (beacons are safe
/// on disk). Liveness never depends on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_without_a_broker_depends_on_the_spool() {
    for spool in [false, true] {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let topic = unique_topic("readiness");
        mock.create_topic(&topic, 1, 1).unwrap();
        let mut config = test_config(&mock.bootstrap_servers(), &topic);
        config.spool.enabled = spool;
        config.shutdown.flush_timeout_seconds = 0;
        let svc = Running::start(config).await;
        wait_reachable(&svc, 1.0).await;
        svc.wait_ready().await;

        mock.broker_down(1).unwrap();
        wait_reachable(&svc, 0.0).await;
        let r = get(svc.admin, "/readyz", &[]).await;
        if spool {
            assert_eq!(r.status, 200, "spool on: ready without the broker");
        } else {
            assert_eq!(
                (r.status, r.body_text().as_str()),
                (503, "broker unreachable\n"),
                "no spool: not ready without the broker"
            );
        }
        assert_eq!(get(svc.admin, "/healthz", &[]).await.status, 200);

        mock.broker_up(1).unwrap();
        wait_reachable(&svc, 1.0).await;
        svc.wait_ready().await;
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let svc = start_without_broker().await;
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    for i in 0..50 {
        let req = format!("GET /beacon/event?%7B%22i%22%3A{i}%7D; HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(r.status, 204);
    }
    let m = svc.metrics().await;
    assert_eq!(m.get("beacond_connections_accepted_total"), 1.0);
    svc.stop().await;
}

/// Polls the metrics until `check` holds, or fails after 10 s.
async fn metrics_until(svc: &Running, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = svc.metrics().await;
        if check(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen in 10 s: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 12, fault 5 (bodies): a client that disconnects mid-body is not a
/// 413, nor is a malformed chunked body; each has its reason, on both the
/// beacon route (the POST drain) and the events route (the body read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_cut_short_or_malformed_are_told_from_bodies_too_large() {
    let mut config = events_config("127.0.0.1:9", "hostile.");
    config.shutdown.flush_timeout_seconds = 0;
    let svc = Running::start(config).await;
    let beacon_head = "POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\n";
    let events_head = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    for head in [beacon_head, events_head] {
        // Malformed chunked encoding: 400 and closed, not 413.
        let raw = format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n");
        let r = raw_request(svc.beacon, raw.as_bytes())
            .await
            .expect("answered");
        assert_eq!(r.status, 400, "{head}: {}", r.body_text());
        assert_eq!(r.header("connection"), Some("close"), "{head}");
        // The client goes away mid-body (announced 100 bytes, sent 5).
        let mut s = TcpStream::connect(svc.beacon).await.unwrap();
        s.write_all(format!("{head}Content-Length: 100\r\n\r\nhello").as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s)).await
        {
            assert_ne!(r.status, 413, "{head}");
        }
        drop(s);
        // Same, chunked: one chunk, then gone.
        let mut s = TcpStream::connect(svc.beacon).await.unwrap();
        s.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").as_bytes())
            .await
            .unwrap();
        drop(s);
    }
    let beacons =
        |m: &Metrics, r: &str| m.get(&format!("beacond_beacons_rejected_total{{reason=\"{r}\"}}"));
    let events = |m: &Metrics, r: &str| {
        m.get(&format!(
            "beacond_event_requests_rejected_total{{reason=\"{r}\"}}"
        ))
    };
    let m = metrics_until(&svc, "both disconnects counted", |m| {
        beacons(m, "body_incomplete") >= 2.0 && events(m, "body_incomplete") >= 2.0
    })
    .await;
    assert_eq!(beacons(&m, "body_incomplete"), 2.0);
    assert_eq!(beacons(&m, "body_malformed"), 1.0);
    assert_eq!(beacons(&m, "body_too_large"), 0.0);
    assert_eq!(events(&m, "body_incomplete"), 2.0);
    assert_eq!(events(&m, "body_malformed"), 1.0);
    assert_eq!(events(&m, "body_too_large"), 0.0);
    // A body over the limit is still a 413.
    let raw = format!("{beacon_head}Content-Length: {}\r\n\r\n", 1 << 20);
    let r = raw_request(svc.beacon, raw.as_bytes())
        .await
        .expect("answered");
    assert_eq!(r.status, 413);
    assert_still_serving(&svc).await;
    svc.stop().await;
}
