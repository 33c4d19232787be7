//! The listener's own limits over real sockets: shutdown ends every
//! connection task, a client that never reads is closed by the write
//! timeout, the answers hyper writes itself are counted, and a failing
//! `accept` (EMFILE, from a lowered RLIMIT_NOFILE) backs off and is logged
//! once per burst. No broker: the producer points at a closed port.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::Config;
use beacond::listener::{self, ConnectionSettings, RequestBody};
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config_without_broker() -> Config {
    let mut config = test_config("127.0.0.1:9", "unreachable");
    config.shutdown.flush_timeout_seconds = 0;
    config
}

/// Reads until the server closes `s`, at most `within`; the bytes read, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Issue 12: a request whose body was still arriving when the grace period
/// ended used to be answered 204 afterwards (after the producer was
/// flushed). Now `serve` ends every connection task before it returns, so
/// such a request is never answered and its handler never finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_unfinished_when_the_grace_ends_is_never_answered() {
    const CLIENTS: usize = 5;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, answered) = (started.clone(), answered.clone());
        move |req: Request<RequestBody>, _peer: SocketAddr| {
            let (started, answered) = (started.clone(), answered.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await;
                answered.fetch_add(1, Ordering::SeqCst);
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = if body.is_ok() {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::BAD_REQUEST
                };
                r
            }
        }
    };
    let settings = ConnectionSettings {
        header_read_timeout: Duration::from_secs(30),
        max_buf_size: 16 * 1024,
        write_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_millis(300),
    };
    let metrics = Arc::new(beacond::metrics::Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener::serve_with_edge(
        tcp,
        handler,
        settings,
        listener::EdgeSettings::default(),
        Some(metrics.clone()),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Each client: headers and the first of two body bytes.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /beacon/event HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
            .await
            .unwrap();
        clients.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) < CLIENTS {
        assert!(Instant::now() < deadline, "handlers never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after the grace period")
        .unwrap();

    // The second byte, after the grace: nobody may answer it.
    for s in &mut clients {
        let _ = s.write_all(b"b").await;
    }
    for s in &mut clients {
        let (got, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(
            got.is_empty(),
            "answered after the grace: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(closed, "connection still open after serve returned");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    let m = Metrics::parse(&metrics.render());
    assert_eq!(
        m.get("beacond_connections_closed_total{reason=\"shutdown_grace\"}"),
        CLIENTS as f64
    );
    assert_eq!(m.get("beacond_connections_open"), 0.0);
}

/// Issue 12: clients pipelining thousands of requests with a 1 KiB receive
/// buffer and never reading held every connection slot for as long as the
/// header timeout allowed, or longer. The write timeout closes each once its
/// response write makes no progress; the requests it answered before that
/// are bounded by the socket buffers (hyper answers one at a time, each once
/// the previous response is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_by_the_write_timeout() {
    const MAX: usize = 5;
    const PIPELINED: usize = 20_000;
    let mut config = config_without_broker();
    config.http.max_connections = MAX;
    // Far longer than the test: only the write timeout can close them.
    config.http.header_read_timeout_ms = 120_000;
    config.http.write_timeout_ms = 500;
    config.http.send_buffer_bytes = 16_384;
    let svc = Running::start(config).await;

    let request = b"GET /beacon/event?%7B%7D; HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let started = Instant::now();
    for _ in 0..MAX {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let stream = socket.connect(svc.beacon).await.unwrap();
        let (read, mut write) = stream.into_split();
        readers.push(read); // held, never read
        let all = request.repeat(PIPELINED);
        writers.push(tokio::spawn(async move {
            let _ = write.write_all(&all).await;
        }));
    }

    let key = "beacond_connections_closed_total{reason=\"write_timeout\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = svc.metrics().await;
        if m.get(key) >= MAX as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MAX} non-reading clients closed after {:?}; metrics: {:?}",
            m.get(key),
            started.elapsed(),
            m.0.iter()
                .filter(|(k, _)| k.contains("connection") || k.contains("requests"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = started.elapsed();
    let m = svc.metrics().await;
    let answered = m.get("beacond_requests_total{route=\"/beacon/event\",status=\"204\"}");
    eprintln!(
        "{MAX} clients pipelining {PIPELINED} requests each, never reading: \
         closed after {closed_after:?}, {answered} requests answered"
    );
    // 32 KiB of send buffer (doubled by Linux) plus the client's receive
    // buffer hold a few hundred 204s, not the kernel's autotuned 4 MiB.
    assert!(
        answered < (MAX * 2_000) as f64,
        "{answered} answered: pipelining is not bounded by http.send_buffer_bytes"
    );
    // The slots are free again: a new client is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(svc.beacon).await.unwrap();
        s.write_all(b"GET /beacon/event?%7B%7D; HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if let Ok(r) = read_response(&mut s).await {
            assert_eq!(r.status, 204);
            break;
        }
        assert!(Instant::now() < deadline, "no slot free after the closes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    drop(readers);
    svc.stop().await;
}

/// Issue 12, fault 5: the 400 and 431 answers hyper writes itself (a request
/// it cannot parse, or whose head overflows the read buffer) are counted in
/// `beacond_requests_total{route="none"}`; a query over
/// `http.max_query_bytes` that fits the buffer is the intake's 414.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hyper_writes_itself_are_counted() {
    let svc = Running::start(config_without_broker()).await;
    // Not HTTP: 400.
    let r = raw_request(svc.beacon, b"\x01\x02 / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // A request line beyond the read buffer (max_query_bytes + 16 KiB): 431,
    // as Node (EventGate) answers; Varnish closes without an answer.
    let long = format!(
        "GET /beacon/event?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(40_000)
    );
    assert_eq!(
        raw_request(svc.beacon, long.as_bytes())
            .await
            .unwrap()
            .status,
        431
    );
    // A header beyond it: 431.
    let big = format!(
        "GET /beacon/event?%7B%7D HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(40_000)
    );
    assert_eq!(
        raw_request(svc.beacon, big.as_bytes())
            .await
            .unwrap()
            .status,
        431
    );
    // Over max_query_bytes (8192) but within the buffer: the intake's 414.
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{}", "b".repeat(10_000)),
        &[],
    )
    .await;
    assert_eq!(r.status, 414);

    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_requests_total{route=\"none\",status=\"400\"}"),
        1.0
    );
    assert_eq!(
        m.get("beacond_requests_total{route=\"none\",status=\"431\"}"),
        2.0
    );
    assert_eq!(
        m.get("beacond_requests_total{route=\"/beacon/event\",status=\"414\"}"),
        1.0
    );
    svc.stop().await;
}

/// Open file descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft RLIMIT_NOFILE of `pid`.
fn nofile_soft(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/PID/limits")
}

/// `prlimit --pid PID --nofile=SOFT:` (the hard limit stays).
fn set_nofile_soft(pid: u32, soft: usize) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit --nofile={soft}:");
}

/// Issue 12: an accept error (EMFILE) was retried every 10 ms forever and
/// logged each time. With RLIMIT_NOFILE lowered under the open descriptors
/// of a running beacond, accept fails until connections close: the failures
/// are counted, spaced by a growing backoff, logged once for the burst, and
/// serving resumes when descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_are_counted_and_logged_once_per_burst() {
    let dir = temp_dir("emfile");
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_ms = 60000\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [output]\nhostname = \"emfile-host\"\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\
             [spool]\ndir = {:?}\n[shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 0\n",
            dir.join("spool").display().to_string()
        ),
    )
    .unwrap();
    let svc = ChildBeacond::start(&dir, &config, "beacond.log");
    wait_http(svc.admin, "/healthz", false).await;
    let pid = svc.pid();

    // Room for two more descriptors at most; then twenty connections.
    let soft = nofile_soft(pid);
    set_nofile_soft(pid, open_fds(pid) + 2);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(
            TcpStream::connect(svc.beacon)
                .await
                .expect("kernel accepts"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svc.log().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "no accept failure:\n{}",
            svc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keep the burst going for two seconds: a fixed 10 ms retry fails ~200
    // times; the backoff (10 ms doubling to 1 s) about ten.
    let burst = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_nofile_soft(pid, soft);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !svc.log().contains("accepting again") {
        assert!(
            Instant::now() < deadline,
            "never accepting again:\n{}",
            svc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_len = burst.elapsed();
    let log = svc.log();
    let m = svc.metrics().await;
    let failures = m.get("beacond_accept_errors_total{reason=\"file_limit\"}");
    eprintln!("accept failures over a {burst_len:?} burst: {failures}");
    assert!(failures >= 3.0, "{failures} failures; log:\n{log}");
    assert!(
        failures <= 20.0,
        "{failures} failures over {burst_len:?}: no backoff"
    );
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "one log line per burst:\n{log}"
    );
    assert_eq!(
        get(svc.beacon, "/beacon/event?%7B%7D;", &[]).await.status,
        204
    );
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Issue 12, item 3, end to end: POSTs whose body began before SIGTERM and
/// ends after the shutdown grace (10 s) are never answered 204: their
/// connections are closed when the grace ends, before the flush (and a
/// late enqueue would be refused by the closed sink: 503).
#[test]
fn after_the_grace_a_late_request_is_never_answered_2xx() {
    const CLIENTS: usize = 10;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = temp_dir("late-body");
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [output]\nhostname = \"late-host\"\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\
             [spool]\nmode = \"overflow\"\ndir = {:?}\n\
             [shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 1\n",
            dir.join("spool").display().to_string()
        ),
    )
    .unwrap();
    let mut svc = ChildBeacond::start(&dir, &config, "beacond.log");
    let mut clients = rt.block_on(async {
        wait_http(svc.admin, "/healthz", false).await;
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut s = TcpStream::connect(svc.beacon).await.unwrap();
            let head = format!(
                "POST /beacon/event?%7B%22late%22%3A{i}%7D; HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            clients.push(s);
        }
        svc.wait_metric("beacond_connections_open", CLIENTS as f64)
            .await;
        clients
    });
    svc.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !svc
        .log()
        .contains("connections still open after the shutdown grace period")
    {
        assert!(
            Instant::now() < deadline,
            "grace never ended:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(async {
        for s in &mut clients {
            let _ = s.write_all(b"b").await;
        }
        for s in &mut clients {
            let (got, closed) = read_until_closed(s, Duration::from_secs(20)).await;
            let text = String::from_utf8_lossy(&got);
            assert!(
                !text.starts_with("HTTP/1.1 2"),
                "answered after the grace: {text}"
            );
            assert!(closed, "still open after the grace");
        }
    });
    let exit = svc.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", svc.log());
}
