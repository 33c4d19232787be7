//! Slow clients: connections that dribble a request's head a few bytes at a
//! time (slowloris). A collector should close them (header read timeout) and
//! keep serving everyone else; the report shows both.

use crate::corpus::{beacon_id, Corpus};
use crate::http::{Conn, Target, TransportError};
use crate::stats::{new_hist, LatencySummary};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Copy)]
pub struct SlowOptions {
    pub connections: usize,
    /// Pause between two writes.
    pub interval: Duration,
    pub bytes_per_write: usize,
    /// Extra header lines after the real ones, to make the head long.
    pub extra_headers: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowReport {
    pub connections: usize,
    pub opened: u64,
    pub connect_errors: u64,
    /// The server closed the connection before the head was complete.
    pub closed_by_server: u64,
    /// The whole head went through and a response came back.
    pub completed: u64,
    pub status_counts: std::collections::BTreeMap<String, u64>,
    /// Still dribbling when the scenario ended.
    pub open_at_end: u64,
    /// How long the server kept a dribbling connection before closing it.
    pub time_to_close_ms: LatencySummary,
}

#[derive(Default)]
struct Acc {
    opened: u64,
    connect_errors: u64,
    closed_by_server: u64,
    completed: u64,
    status_counts: std::collections::BTreeMap<String, u64>,
    open_at_end: u64,
    close_us: Option<Histogram<u64>>,
}

/// Runs `opts.connections` slow clients until `until`; each reconnects when
/// closed. Bounded by `until` (plus one write).
pub async fn run(
    target: Arc<Target>,
    corpus: Arc<Corpus>,
    run_id: String,
    opts: SlowOptions,
    until: Instant,
) -> SlowReport {
    let acc = Arc::new(Mutex::new(Acc {
        close_us: Some(new_hist()),
        ..Acc::default()
    }));
    let mut handles = Vec::new();
    for slot in 0..opts.connections {
        let (target, corpus, run_id, acc) = (
            Arc::clone(&target),
            Arc::clone(&corpus),
            run_id.clone(),
            Arc::clone(&acc),
        );
        handles.push(tokio::spawn(async move {
            let mut k = 0u64;
            while Instant::now() < until {
                k += 1;
                let n = slot as u64 * 1_000_000 + k;
                let mut req = Vec::new();
                let c = corpus.choose(n);
                corpus.write_request(
                    &mut req,
                    &target.host,
                    &target.path,
                    &beacon_id(&run_id, "s", n),
                    &c,
                );
                req.truncate(req.len() - 2); // reopen the head for extra headers
                for i in 0..opts.extra_headers {
                    req.extend_from_slice(format!("X-Slow-{i}: dribble\r\n").as_bytes());
                }
                req.extend_from_slice(b"\r\n");
                let outcome = dribble(&target, &req, opts, until).await;
                let backoff = {
                    let mut a = acc.lock().expect("slow acc");
                    match outcome {
                        Dribble::ConnectError => {
                            a.connect_errors += 1;
                            true
                        }
                        Dribble::Closed(after) => {
                            a.opened += 1;
                            a.closed_by_server += 1;
                            if let Some(h) = a.close_us.as_mut() {
                                crate::stats::record(h, after.as_micros() as u64);
                            }
                            false
                        }
                        Dribble::Completed(status) => {
                            a.opened += 1;
                            a.completed += 1;
                            *a.status_counts.entry(status.to_string()).or_default() += 1;
                            false
                        }
                        Dribble::OpenAtEnd => {
                            a.opened += 1;
                            a.open_at_end += 1;
                            false
                        }
                    }
                };
                if backoff {
                    tokio::time::sleep(opts.interval.min(Duration::from_millis(200))).await;
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let a = acc.lock().expect("slow acc");
    SlowReport {
        connections: opts.connections,
        opened: a.opened,
        connect_errors: a.connect_errors,
        closed_by_server: a.closed_by_server,
        completed: a.completed,
        status_counts: a.status_counts.clone(),
        open_at_end: a.open_at_end,
        time_to_close_ms: a
            .close_us
            .as_ref()
            .map(LatencySummary::from_us)
            .unwrap_or_default(),
    }
}

enum Dribble {
    ConnectError,
    Closed(Duration),
    Completed(u16),
    OpenAtEnd,
}

async fn dribble(target: &Target, req: &[u8], opts: SlowOptions, until: Instant) -> Dribble {
    let Ok(mut conn) = Conn::connect(target.addr, Duration::from_secs(3)).await else {
        return Dribble::ConnectError;
    };
    let opened = Instant::now();
    for chunk in req.chunks(opts.bytes_per_write.max(1)) {
        if Instant::now() >= until {
            return Dribble::OpenAtEnd;
        }
        if conn.stream_mut().write_all(chunk).await.is_err() {
            return Dribble::Closed(opened.elapsed());
        }
        // Notice a close while we pause, without reading the response early.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(opts.interval, conn.stream_mut().peek(&mut probe)).await {
            Err(_) => {} // still open, nothing sent
            Ok(Ok(0)) | Ok(Err(_)) => return Dribble::Closed(opened.elapsed()), // closed
            Ok(Ok(_)) => break, // the server answered early (e.g. 408/400)
        }
    }
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    match tokio::time::timeout(left, conn.read_response(false)).await {
        Ok(Ok(r)) => Dribble::Completed(r.status),
        Ok(Err(TransportError::Io | TransportError::Closed)) => Dribble::Closed(opened.elapsed()),
        Ok(Err(_)) => Dribble::Closed(opened.elapsed()),
        Err(_) => Dribble::OpenAtEnd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::CorpusConfig;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A server with a header read timeout: closes a connection whose head is
    /// not complete within `limit`.
    async fn server_with_header_timeout(limit: Duration) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let deadline = Instant::now() + limit;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, s.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return, // timeout or closed: drop the connection
                        }
                    }
                    let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn counts_connections_the_server_closes() {
        let addr = server_with_header_timeout(Duration::from_millis(150)).await;
        let target = Arc::new(Target::parse(&format!("http://{addr}/beacon/event")).unwrap());
        let corpus = Arc::new(Corpus::new(CorpusConfig::default()));
        let opts = SlowOptions {
            connections: 3,
            interval: Duration::from_millis(20),
            bytes_per_write: 1,
            extra_headers: 0,
        };
        let r = run(
            target.clone(),
            corpus.clone(),
            "r".into(),
            opts,
            Instant::now() + Duration::from_millis(700),
        )
        .await;
        assert!(r.closed_by_server >= 3, "{r:?}");
        assert_eq!(r.completed, 0);
        let p50 = r.time_to_close_ms.p50;
        assert!((100.0..1500.0).contains(&p50), "{r:?}");

        // Fast enough to finish: completes.
        let opts = SlowOptions {
            connections: 1,
            interval: Duration::from_millis(1),
            bytes_per_write: 200,
            extra_headers: 0,
        };
        let r = run(
            target,
            corpus,
            "r".into(),
            opts,
            Instant::now() + Duration::from_millis(1000),
        )
        .await;
        assert!(r.completed >= 1, "{r:?}");
        assert_eq!(r.status_counts["204"], r.completed);
    }
}
