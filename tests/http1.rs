//! The listener's own HTTP/1.1 driver over real sockets: keep-alive and
//! close rules (HTTP/1.1 and HTTP/1.0), pipelined requests answered in
//! order, chunked bodies (valid, with trailers, cut into pieces, malformed,
//! cut short), `Expect: 100-continue`, `HEAD`, and the memory an idle
//! keep-alive connection holds (a beacond child's RSS). No broker: the
//! producer points at a closed port and only queues.

mod common;

use std::time::{Duration, Instant};

use beacond::config::Config;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config_without_broker() -> Config {
    let mut config = test_config("127.0.0.1:9", "unreachable");
    config.shutdown.flush_timeout_seconds = 0;
    config
}

const BEACON: &str = "/beacon/event?%7B%22a%22%3A1%7D;";

/// Writes `raw` and reads one response.
async fn exchange(s: &mut TcpStream, raw: &[u8]) -> HttpResponse {
    s.write_all(raw).await.expect("write");
    tokio::time::timeout(Duration::from_secs(10), read_response(s))
        .await
        .expect("answered in time")
        .expect("response")
}

/// The first line of the next response on `s`, read byte by byte (so
/// nothing after it is consumed).
async fn status_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&line));
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_close_rules() {
    let svc = Running::start(config_without_broker()).await;
    let get11 = format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\n\r\n");

    // HTTP/1.1: kept by default, several requests on one connection.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    for _ in 0..3 {
        let r = exchange(&mut s, get11.as_bytes()).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("connection"), None);
        assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    }
    // `Connection: close`: answered with `connection: close`, then closed.
    let r = exchange(
        &mut s,
        format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    // HTTP/1.0 without keep-alive: answered in HTTP/1.0, then closed.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(format!("GET {BEACON} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(status_line(&mut s).await, "HTTP/1.0 204 No Content");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    // HTTP/1.0 with `Connection: keep-alive`: kept, and said so.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    let get10 = format!("GET {BEACON} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    for _ in 0..2 {
        let r = exchange(&mut s, get10.as_bytes()).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // A response that closes (a 400 for broken framing) says so and closes.
    let r = exchange(
        &mut s,
        b"POST /beacon/event?%7B%7D HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);

    // HEAD (on the admin listener, same driver): the length, no body, and
    // the connection goes on.
    let mut s = TcpStream::connect(svc.admin).await.unwrap();
    s.write_all(
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(4).filter(|w| *w == b"\r\n\r\n").count() < 2 || !got.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let (head_answer, get_answer) = text.split_at(text.find("\r\n\r\n").unwrap() + 4);
    assert!(head_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let len = head_answer
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("HEAD says the length");
    assert!(get_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        get_answer.contains(&format!("content-length: {len}\r\n")),
        "{text}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let svc = Running::start(config_without_broker()).await;
    // 404s and 204s interleaved, a body among them, all in one write.
    let mut raw = Vec::new();
    let mut want = Vec::new();
    for i in 0..50 {
        match i % 3 {
            0 => {
                raw.extend_from_slice(
                    format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                );
                want.push(204);
            }
            1 => {
                raw.extend_from_slice(
                    format!("GET /nope/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                );
                want.push(404);
            }
            _ => {
                raw.extend_from_slice(
                    b"POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                );
                want.push(204);
            }
        }
    }
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(&raw).await.unwrap();
    // Every whole response in what arrives, in order.
    let mut got = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < want.len() {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            got.push(
                head.split(' ')
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
            buf.drain(..end + 4 + len);
        }
        if got.len() >= want.len() {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("responses in time")
            .expect("read");
        assert!(n > 0, "closed after {} responses", got.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, want);
    assert!(buf.is_empty());
    // Still open for more.
    let r = exchange(
        &mut s,
        format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_valid_malformed_and_cut_short() {
    let svc = Running::start(config_without_broker()).await;
    let head =
        "POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    // Valid, with an extension and trailers, sent a few bytes at a time;
    // the connection then serves the next request.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    let body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection"), None);
    let r = exchange(
        &mut s,
        format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204);

    // Malformed: a bad size, a missing CRLF after the data.
    for bad in ["zz\r\nhi\r\n0\r\n\r\n", "2\r\nhiXX0\r\n\r\n"] {
        let r = raw_request(svc.beacon, format!("{head}{bad}").as_bytes())
            .await
            .expect("answered");
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.header("connection"), Some("close"));
    }

    // Cut short: the client's side closed after one chunk.
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(format!("{head}5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);

    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"body_malformed\"}"),
        2.0
    );
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"body_incomplete\"}"),
        1.0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_when_the_body_is_read() {
    let svc = Running::start(config_without_broker()).await;
    let mut s = TcpStream::connect(svc.beacon).await.unwrap();
    s.write_all(
        b"POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // The intake reads the body: 100 Continue comes first, before any byte
    // of it was sent.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 204);

    // A body refused from its announced length is answered without
    // 100 Continue (the client need not send it).
    let raw = format!(
        "POST /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    assert_eq!(status_line(&mut s).await, "HTTP/1.1 413 Payload Too Large");
    svc.stop().await;
}

/// Issue 10: an idle keep-alive connection holds no read or write buffer.
/// 2,000 connections, each after one beacon, cost the beacond child well
/// under hyper's ~12 KB each (nginx: ~0.5 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_little_memory() {
    const CONNECTIONS: usize = 2000;
    let mut config = config_without_broker();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.http.header_read_timeout_ms = 120_000;
    let dir = temp_dir("http1-idle");
    let path = dir.join("beacond.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let svc = ChildBeacond::start(&dir, &path, "beacond.log");

    let get = format!("GET {BEACON} HTTP/1.1\r\nHost: x\r\n\r\n");
    let connect_one = || async {
        let mut s = TcpStream::connect(svc.beacon).await.expect("connect");
        let r = exchange(&mut s, get.as_bytes()).await;
        assert_eq!(r.status, 204);
        s
    };
    // Warm up: the runtime's, allocator's and metrics' first allocations.
    let mut warm = Vec::new();
    for _ in 0..200 {
        warm.push(connect_one().await);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = svc.rss_kib();
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(connect_one().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = svc.rss_kib();
    assert_eq!(
        svc.metric("beacond_connections_open").await as usize,
        CONNECTIONS
    );
    let per_connection = (after.saturating_sub(before) * 1024) as f64 / CONNECTIONS as f64;
    eprintln!(
        "{CONNECTIONS} idle keep-alive connections: RSS {before} -> {after} KiB, \
         {per_connection:.0} bytes each"
    );
    assert!(
        per_connection < 3072.0,
        "{per_connection:.0} bytes per idle connection"
    );
    // Every one still works.
    for s in held.iter_mut().step_by(97) {
        assert_eq!(exchange(s, get.as_bytes()).await.status, 204);
    }
    drop(held);
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Shutdown: an idle keep-alive connection closes at once; a busy one
/// finishes its request, answered with `connection: close`, then closes;
/// `serve` returns once both are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_lets_busy_ones_finish() {
    use beacond::listener::{self, ConnectionSettings, RequestBody};
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let slow_started = Arc::new(AtomicBool::new(false));
    let handler = {
        let (release, slow_started) = (release.clone(), slow_started.clone());
        move |req: Request<RequestBody>, _peer| {
            let (release, slow_started) = (release.clone(), slow_started.clone());
            async move {
                if req.uri().path() == "/slow" {
                    slow_started.store(true, Ordering::SeqCst);
                    release.notified().await;
                }
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                *r.status_mut() = StatusCode::OK;
                r
            }
        }
    };
    let settings = ConnectionSettings {
        header_read_timeout: Duration::from_secs(30),
        max_buf_size: 16 * 1024,
        write_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener::serve(tcp, handler, settings, None, async {
        let _ = stop_rx.await;
    }));

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let r = exchange(&mut idle, b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"));
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slow_started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "slow handler never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let _ = stop_tx.send(());
    assert!(
        closed_within(&mut idle, Duration::from_secs(2)).await,
        "idle connection still open at shutdown"
    );
    release.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut busy))
        .await
        .expect("busy answered")
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_within(&mut busy, Duration::from_secs(2)).await);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap();
}
