//! Edge protection over real sockets: rate limits (per client, global,
//! bounded state), connection limits, slowloris, header and body limits.
//! The delivery test needs a broker (`BEACOND_TEST_BROKERS`); the others run
//! without one (the producer points at a closed port and only queues).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::{Config, RateLimitExceeded};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config_without_broker() -> Config {
    let mut config = test_config("127.0.0.1:9", "unreachable");
    config.shutdown.flush_timeout_seconds = 0;
    config
}

/// `config` run as a beacond child process (for the tests that measure the
/// service's own memory), on port 0; its addresses from the ready file.
fn child(mut config: Config, name: &str) -> ChildBeacond {
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let dir = temp_dir(name);
    let path = dir.join("beacond.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    ChildBeacond::start(&dir, &path, "beacond.log")
}

/// A beacon whose query names `id`.
fn beacon_target(id: &str) -> String {
    format!("/beacon/event?%7B%22id%22%3A%22{id}%22%7D;")
}

/// One keep-alive connection sending requests one after the other.
struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut raw = format!("GET {target} HTTP/1.1\r\nHost: beacon.test\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        self.stream.write_all(raw.as_bytes()).await.expect("write");
        read_response(&mut self.stream).await.expect("response")
    }
}

/// Sends `requests` pipelined on one connection, `batch` at a time, and
/// returns the statuses in order. Responses carry no body or a
/// Content-Length one.
async fn pipelined(
    addr: SocketAddr,
    mut requests: impl Iterator<Item = Vec<u8>>,
    batch: usize,
) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut statuses = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let group: Vec<Vec<u8>> = requests.by_ref().take(batch).collect();
        if group.is_empty() {
            break;
        }
        s.write_all(&group.concat()).await.expect("write");
        let want = statuses.len() + group.len();
        while statuses.len() < want {
            // Parse every whole response in the buffer.
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() < end + 4 + len {
                    break;
                }
                let status = head.split(' ').nth(1).and_then(|v| v.parse().ok()).unwrap();
                statuses.push(status);
                buf.drain(..end + 4 + len);
            }
            if statuses.len() >= want {
                break;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .expect("responses in time")
                .expect("read");
            assert!(n > 0, "closed after {} responses", statuses.len());
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn flooding_client_is_limited_while_a_polite_client_is_delivered() {
    let brokers = require_broker();
    for exceeded in [
        RateLimitExceeded::TooManyRequests,
        RateLimitExceeded::SilentDrop,
    ] {
        let topic = unique_topic("edge-flood");
        create_topic(&brokers, &topic, 1).await;
        let mut config = test_config(&brokers, &topic);
        config.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.rate_limit.per_client_per_second = 20;
        config.rate_limit.per_client_burst = 20;
        config.rate_limit.exceeded = exceeded;
        let svc = Running::start(config).await;
        svc.wait_ready().await;

        // The flood: four connections from 203.0.113.1, as fast as they go,
        // while the polite client sends 10 beacons a second for 3 seconds.
        let started = Instant::now();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flood_sent, flood_ok, flood_429) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut flooders = Vec::new();
        for c in 0..4 {
            let (stop, sent, ok, limited) = (
                stop.clone(),
                flood_sent.clone(),
                flood_ok.clone(),
                flood_429.clone(),
            );
            let addr = svc.beacon;
            flooders.push(tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .get(
                            &beacon_target(&format!("flood-{c}-{i}")),
                            &[("X-Forwarded-For", "203.0.113.1")],
                        )
                        .await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r.status {
                        204 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            let retry: u64 = r
                                .header("retry-after")
                                .and_then(|v| v.parse().ok())
                                .expect("429 carries Retry-After in seconds");
                            assert!(retry >= 1);
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        s => panic!("flood got {s}"),
                    };
                    i += 1;
                }
            }));
        }
        let mut polite = Client::connect(svc.beacon).await;
        let mut polite_ids = Vec::new();
        for i in 0..30 {
            let id = format!("polite-{i}");
            let r = polite
                .get(&beacon_target(&id), &[("X-Forwarded-For", "198.51.100.2")])
                .await;
            assert_eq!(r.status, 204, "polite beacon {i} ({exceeded:?})");
            polite_ids.push(id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            f.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let sent = flood_sent.load(Ordering::Relaxed);
        let ok = flood_ok.load(Ordering::Relaxed);
        let limited = flood_429.load(Ordering::Relaxed);
        eprintln!(
            "{exceeded:?}: flood sent {sent} in {elapsed:.1} s: {ok} answered 204, {limited} 429"
        );
        // Many times its limit: 20 burst + 20/s.
        let allowed = 20.0 + 20.0 * elapsed;
        assert!(
            sent as f64 > 5.0 * allowed,
            "the flood was not a flood: {sent}"
        );
        let m = svc.metrics().await;
        let counted = m.get("beacond_beacons_rate_limited_total{limit=\"client\"}") as usize;
        let delivered_flood_max = match exceeded {
            RateLimitExceeded::TooManyRequests => {
                assert_eq!(limited, counted);
                assert!(ok as f64 <= allowed + 5.0, "{ok} flood beacons accepted");
                assert_eq!(
                    m.sum("beacond_requests_total", &[("status", "429")]) as usize,
                    limited
                );
                ok
            }
            RateLimitExceeded::SilentDrop => {
                assert_eq!(limited, 0);
                assert_eq!(ok, sent, "silent mode answers 204");
                assert!(
                    counted as f64 >= sent as f64 - allowed - 5.0,
                    "{counted} dropped"
                );
                sent - counted
            }
        };

        let accepted = m.get("beacond_beacons_accepted_total") as usize;
        let messages = consume(
            &brokers,
            &topic,
            accepted,
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
        assert_eq!(messages.len(), accepted, "every accepted beacon delivered");
        let lines: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).unwrap())
            .collect();
        for id in &polite_ids {
            let needle = format!("%22{id}%22");
            let line = lines
                .iter()
                .find(|l| l.contains(&needle))
                .unwrap_or_else(|| panic!("{id} not delivered ({exceeded:?})"));
            assert_eq!(line.split('\t').nth(4), Some("198.51.100.2"));
        }
        let flood_lines = lines
            .iter()
            .filter(|l| l.contains("\t203.0.113.1\t"))
            .count();
        assert!(
            flood_lines <= delivered_flood_max,
            "{flood_lines} flood lines"
        );
        assert!(flood_lines as f64 <= allowed + 5.0);
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_and_exempt_clients() {
    let mut config = config_without_broker();
    config.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.rate_limit.global_per_second = 5;
    config.rate_limit.exempt = vec!["10.0.0.0/8".parse().unwrap()];
    let svc = Running::start(config).await;
    let mut client = Client::connect(svc.beacon).await;
    let mut statuses = Vec::new();
    let started = Instant::now();
    for i in 0..20 {
        // Twenty different clients: only the global limit applies.
        let xff = format!("198.51.100.{i}");
        statuses.push(
            client
                .get(&beacon_target("g"), &[("X-Forwarded-For", &xff)])
                .await
                .status,
        );
    }
    // A burst of one second's worth (5), plus what refilled meanwhile: a
    // bound from the time the requests took, not from the machine's speed.
    let refilled = (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    let ok = statuses.iter().filter(|s| **s == 204).count();
    assert!((5..=5 + refilled).contains(&ok), "{statuses:?}");
    assert_eq!(&statuses[..5], &[204; 5], "the burst is served first");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20 - ok);
    // Exempt clients pass while the limit is exhausted.
    for _ in 0..20 {
        let r = client
            .get(&beacon_target("x"), &[("X-Forwarded-For", "10.9.8.7")])
            .await;
        assert_eq!(r.status, 204);
    }
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_beacons_rate_limited_total{limit=\"global\"}") as usize,
        20 - ok
    );
    assert_eq!(
        m.get("beacond_beacons_rate_limited_total{limit=\"client\"}"),
        0.0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_address_flood_keeps_key_count_and_memory_bounded() {
    const ADDRESSES: u32 = 100_000;
    const MAX_KEYS: usize = 1_000;
    let mut config = config_without_broker();
    config.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.rate_limit.per_client_per_second = 1;
    config.rate_limit.per_client_burst = 1;
    config.rate_limit.max_keys = MAX_KEYS;
    // Dropped after the limiter: nothing piles up in the producer's queue,
    // so memory is the limiter's and the HTTP path's.
    config.filter.user_agent_exclude = vec!["^flood$".into()];
    let svc = child(config, "flood");
    // Warm up the listener, runtime and allocator before the baseline.
    let mut warm = Client::connect(svc.beacon).await;
    for i in 0..2000 {
        let xff = format!("192.0.2.{}", i % 256);
        warm.get(
            &beacon_target("w"),
            &[("X-Forwarded-For", &xff), ("User-Agent", "flood")],
        )
        .await;
    }
    let rss_before = svc.rss_kib();

    let max_keys_seen = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (admin, seen) = (svc.admin, max_keys_seen.clone());
        tokio::spawn(async move {
            loop {
                let m = Metrics::parse(&get(admin, "/metrics", &[]).await.body_text());
                seen.fetch_max(m.get("beacond_rate_limit_keys") as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let mut senders = Vec::new();
    for c in 0..4u32 {
        let addr = svc.beacon;
        senders.push(tokio::spawn(async move {
            let requests = (c..ADDRESSES)
                .step_by(4)
                .map(|i| {
                    // 10.0.0.0 + i: a distinct IPv4 client each; every 8th an
                    // IPv6 client in its own /64 instead.
                    let xff = if i % 8 == 0 {
                        format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
                    } else {
                        std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()
                    };
                    format!(
                        "GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nUser-Agent: flood\r\nX-Forwarded-For: {xff}\r\n\r\n"
                    )
                    .into_bytes()
                });
            let statuses = pipelined(addr, requests, 100).await;
            let mut counts = [0usize; 2];
            for s in statuses {
                assert!(s == 204 || s == 429, "status {s}");
                counts[usize::from(s == 429)] += 1;
            }
            counts
        }));
    }
    let mut answered = [0usize; 2];
    for s in senders {
        let s = s.await.unwrap();
        answered[0] += s[0];
        answered[1] += s[1];
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let during = svc.metrics().await;
    let rss_flood = svc.rss_kib();
    // Eviction runs every second; states replenish after 1 s: poll until
    // the housekeeping task has emptied the keyed state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let m = svc.metrics().await;
        if m.get("beacond_rate_limit_keys") == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sampler.abort();
    let rss_after = svc.rss_kib();
    let peak = max_keys_seen.load(Ordering::Relaxed);
    eprintln!(
        "{ADDRESSES} addresses in {flood_secs:.1} s: 204 {} / 429 {}; keys peak {peak}, \
         at end {}, after eviction {}; overflow {}; RSS KiB before {rss_before}, \
         after flood {rss_flood}, after eviction {rss_after}",
        answered[0],
        answered[1],
        during.get("beacond_rate_limit_keys"),
        after.get("beacond_rate_limit_keys"),
        during.get("beacond_rate_limit_key_overflow_total"),
    );
    assert_eq!(answered[0] + answered[1], ADDRESSES as usize);
    assert!(peak <= MAX_KEYS, "key count {peak} above max_keys");
    assert!(peak > 0);
    // Far more new clients than max_keys per eviction: the cap was reached,
    // and the clients beyond it shared the overflow state (so got 429s).
    assert!(during.get("beacond_rate_limit_key_overflow_total") > 0.0);
    assert!(answered[1] > 0);
    assert!(during.get("beacond_rate_limit_keys") as usize <= MAX_KEYS);
    assert_eq!(
        after.get("beacond_rate_limit_keys"),
        0.0,
        "idle keys evicted"
    );
    // After eviction a new client has its own state again.
    let r = get(
        svc.beacon,
        &beacon_target("fresh"),
        &[("X-Forwarded-For", "192.0.2.99")],
    )
    .await;
    assert_eq!(r.status, 204);
    // The service's own memory (a process of its own); the key count above
    // is the exact measure of the limiter's state.
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 16, "RSS grew by {growth_mib} MiB");
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_closed_after_the_header_timeout() {
    let mut config = config_without_broker();
    config.http.header_read_timeout_ms = 600;
    let svc = Running::start(config).await;

    // Headers trickling in, a byte every 100 ms, never finished.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(b"GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"a").await.is_err() {
                return;
            }
            if started.elapsed() > Duration::from_secs(5) {
                return;
            }
        }
    };
    trickle.await;
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(3),
        "slowloris still open after {closed_after:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(500),
        "{closed_after:?}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    // Only the request line, then silence.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(b"GET /beacon/event?%7B%7D HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);

    // An idle keep-alive connection after one request.
    let mut c = Client::connect(svc.beacon).await;
    assert_eq!(c.get(&beacon_target("idle"), &[]).await.status, 204);
    let started = Instant::now();
    assert!(closed_within(&mut c.stream, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A connection that never says anything.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);

    assert_eq!(
        get(svc.beacon, &beacon_target("after"), &[]).await.status,
        204
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_without_growing_memory() {
    const MAX: usize = 20;
    let mut config = config_without_broker();
    config.http.max_connections = MAX;
    config.http.header_read_timeout_ms = 20_000;
    let svc = child(config, "max-connections");

    // Fill every slot with an idle connection (proved open by a request).
    let mut held = Vec::new();
    for i in 0..MAX {
        let mut c = Client::connect(svc.beacon).await;
        assert_eq!(
            c.get(&beacon_target(&format!("held-{i}")), &[])
                .await
                .status,
            204
        );
        held.push(c);
    }
    let rss_before = svc.rss_kib();
    // Two thousand more: each is accepted and closed at once.
    const EXTRA: usize = 2000;
    let mut refused = 0;
    for chunk in 0..(EXTRA / 100) {
        let mut conns = Vec::new();
        for _ in 0..100 {
            conns.push(
                TcpStream::connect(svc.beacon)
                    .await
                    .expect("kernel accepts"),
            );
        }
        for mut s in conns {
            let _ = s
                .write_all(b"GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            if closed_within(&mut s, Duration::from_secs(5)).await {
                refused += 1;
            }
        }
        let m = svc.metrics().await;
        assert!(
            m.get("beacond_connections_open") as usize <= MAX,
            "chunk {chunk}: {} open",
            m.get("beacond_connections_open")
        );
    }
    assert_eq!(refused, EXTRA);
    let rss_after = svc.rss_kib();
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_connections_rejected_total{reason=\"max_connections\"}") as usize,
        EXTRA
    );
    assert_eq!(m.get("beacond_connections_open") as usize, MAX);
    let growth_kib = rss_after.saturating_sub(rss_before);
    eprintln!("{EXTRA} refused connections: RSS {rss_before} -> {rss_after} KiB");
    assert!(growth_kib < 8 * 1024, "RSS grew by {growth_kib} KiB");

    // Held connections still work; freeing one slot lets a new one in.
    assert_eq!(held[0].get(&beacon_target("still"), &[]).await.status, 204);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(svc.beacon).await.unwrap();
        s.write_all(b"GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if let Ok(r) = read_response(&mut s).await {
            assert_eq!(r.status, 204);
            break;
        }
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let mut config = config_without_broker();
    config.http.max_headers = 20;
    config.http.max_body_bytes = 1024;
    let svc = Running::start(config).await;

    // Header count: 19 extra headers plus Host fit, 30 do not.
    let mut fits = vec![];
    for i in 0..19 {
        fits.push((format!("X-H{i}"), "v".to_string()));
    }
    let refs: Vec<(&str, &str)> = fits.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = request(svc.beacon, "GET", &beacon_target("count-ok"), &refs[..18]).await;
    assert_eq!(r.status, 204);
    let mut raw = String::from("GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert_eq!(
        raw_request(svc.beacon, raw.as_bytes())
            .await
            .unwrap()
            .status,
        431
    );

    // Header bytes beyond the read buffer (max_query_bytes + 16 KiB).
    let raw = format!(
        "GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(40_000)
    );
    assert_eq!(
        raw_request(svc.beacon, raw.as_bytes())
            .await
            .unwrap()
            .status,
        431
    );

    // Body over max_body_bytes: declared, and sent.
    let raw = "POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    assert_eq!(
        raw_request(svc.beacon, raw.as_bytes())
            .await
            .unwrap()
            .status,
        413
    );
    let mut raw =
        b"POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(format!("400\r\n{}\r\n", "z".repeat(0x400)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_request(svc.beacon, &raw).await.unwrap().status, 413);

    let m = svc.metrics().await;
    assert_eq!(m.sum("beacond_requests_total", &[("status", "413")]), 2.0);
    assert_eq!(
        get(svc.beacon, &beacon_target("after"), &[]).await.status,
        204
    );
    svc.stop().await;
}
