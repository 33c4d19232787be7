//! A real load balancer in front of beacond: HAProxy (Debian's package,
//! `scripts/install-deps haproxy`) running `config/deploy/haproxy.cfg` in
//! front of two beacond processes (PROXY protocol v2 to them, health checks
//! on `/readyz`), steady open-loop load through it on keep-alive
//! connections, and a rolling restart (SIGTERM one instance, start it again
//! once it exited, wait until HAProxy has it UP, then the other). No client
//! sees a non-2xx answer or a failed connection, and every beacon (GET and
//! sendBeacon's empty POST) answered 204 is in Kafka (duplicates counted and printed). Needs a broker
//! (`BEACOND_TEST_BROKERS`).

mod common;
#[path = "common/lb.rs"]
mod lb;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lb::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Beacons per second, sent on schedule whatever the answers (open loop).
const RATE: u64 = 200;
/// A client connection idle longer than this is not reused (browsers close
/// theirs well before HAProxy's `timeout http-keep-alive`).
const CLIENT_IDLE_REUSE: Duration = Duration::from_secs(2);

/// One beacond instance: its config and ports, which a restart keeps.
struct Instance {
    name: &'static str,
    server: &'static str,
    dir: PathBuf,
    config: PathBuf,
    beacon: u16,
    admin: u16,
    proc: Option<Proc>,
    starts: usize,
}

impl Instance {
    fn new(name: &'static str, server: &'static str, brokers: &str, topic: &str) -> Instance {
        let dir = temp_dir(&format!("lb-{name}"));
        let (beacon, admin) = (free_port(), free_port());
        let spool = dir.join("spool");
        let config = dir.join("beacond.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{beacon}\"\nproxy_protocol = true\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                 [output]\nhostname = \"lb-{name}\"\n\
                 [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
                 [kafka.properties]\n\"linger.ms\" = 5\n\
                 [spool]\ndir = \"{}\"\n\
                 [shutdown]\ndrain_seconds = {DRAIN_SECONDS}\nflush_timeout_seconds = 10\n",
                spool.display()
            ),
        )
        .unwrap();
        Instance {
            name,
            server,
            dir,
            config,
            beacon,
            admin,
            proc: None,
            starts: 0,
        }
    }

    fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    async fn start(&mut self) {
        self.starts += 1;
        let log = format!("beacond-{}-{}", self.name, self.starts);
        self.proc = Some(beacond(&self.dir, &self.config, &log));
        wait_http(self.admin_addr(), "/readyz", false).await;
    }

    /// SIGTERM, and the exit.
    async fn stop(&mut self) {
        self.proc.as_ref().expect("running").signal("-TERM");
        self.wait_stopped().await;
    }

    /// Waits for the exit after a SIGTERM: success, errors in the log printed.
    async fn wait_stopped(&mut self) {
        let mut p = self.proc.take().expect("running");
        let status = p.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "{} exited {status}; log:\n{}",
            p.name,
            p.log()
        );
        for line in p.log().lines().filter(|l| l.contains("ERROR")) {
            eprintln!("{}: {line}", p.name);
        }
    }
}

/// beacond's drain: longer than HAProxy needs to see `/readyz` fail (at
/// most `inter`, then (`fall` - 1) × `fastinter` below: 0.5 + 0.2 s).
const DRAIN_SECONDS: u64 = 3;

/// `config/deploy/haproxy.cfg` with this test's addresses, stats socket and
/// shorter check timing (the same shape: `fall`, `rise`, `fastinter`).
fn haproxy_config(lb_port: u16, socket: &Path, a: &Instance, b: &Instance) -> String {
    let example = std::fs::read_to_string(repo_root().join("config/deploy/haproxy.cfg"))
        .expect("config/deploy/haproxy.cfg");
    let mut c = example;
    c = replace_once(&c, "log /dev/log local0", "log stderr format raw local0");
    // 20000 needs 40000 file descriptors; test machines may allow fewer.
    c = replace_once(&c, "maxconn 20000", "maxconn 2000");
    c = replace_once(
        &c,
        "stats socket /run/haproxy/admin.sock",
        &format!("stats socket {}", socket.display()),
    );
    c = replace_once(&c, "bind :80", &format!("bind 127.0.0.1:{lb_port}"));
    c = replace_once(
        &c,
        "inter 2s fastinter 500ms downinter 1s",
        "inter 500ms fastinter 200ms downinter 200ms",
    );
    c = replace_once(
        &c,
        "server beacond1 10.0.0.11:8080",
        &format!(
            "server {} 127.0.0.1:{} port {}",
            a.server, a.beacon, a.admin
        ),
    );
    c = replace_once(
        &c,
        "server beacond2 10.0.0.12:8080",
        &format!(
            "server {} 127.0.0.1:{} port {}",
            b.server, b.beacon, b.admin
        ),
    );
    c
}

/// What one beacon got.
#[derive(Debug)]
enum Answer {
    Status(u16),
    /// Connect, write or read failed (refused, reset, closed, timed out).
    Failed(String),
}

type Pool = Arc<Mutex<VecDeque<(TcpStream, Instant)>>>;

/// Sends one beacon carrying `token` on a pooled keep-alive connection to
/// HAProxy (a new one when none is idle).
async fn send_beacon(lb: SocketAddr, pool: Pool, token: String) -> (String, Answer) {
    let reused = loop {
        let next = pool.lock().unwrap().pop_front();
        match next {
            Some((s, idle_since)) if idle_since.elapsed() < CLIENT_IDLE_REUSE => break Some(s),
            Some(_) => continue, // too old: dropped, as a browser would
            None => break None,
        }
    };
    let mut s = match reused {
        Some(s) => s,
        None => match TcpStream::connect(lb).await {
            Ok(s) => s,
            Err(e) => return (token, Answer::Failed(format!("connect: {e}"))),
        },
    };
    // Half GET (the image fallback), half POST with an empty body (what
    // navigator.sendBeacon sends).
    let (method, body_header) = if token.ends_with(['1', '3', '5', '7', '9']) {
        ("POST", "Content-Length: 0\r\n")
    } else {
        ("GET", "")
    };
    let req = format!(
        "{method} /beacon/event?%7B%22t%22%3A%22{token}%22%7D; HTTP/1.1\r\nHost: beacon.test\r\n\
         User-Agent: lb-test\r\n{body_header}\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return (token, Answer::Failed(format!("write: {e}")));
    }
    match read_response(&mut s).await {
        Ok(r) => {
            let close = r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !close {
                pool.lock().unwrap().push_back((s, Instant::now()));
            }
            (token, Answer::Status(r.status))
        }
        Err(e) => (token, Answer::Failed(format!("read: {e}"))),
    }
}

/// Open-loop load: a beacon every 1/RATE s until `stop`, each on its own
/// task; returns every beacon's answer.
async fn load(lb: SocketAddr, stop: Arc<AtomicBool>) -> Vec<(String, Answer)> {
    let pool: Pool = Arc::new(Mutex::new(VecDeque::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let token = format!("lb{n:07}");
        tasks.push(tokio::spawn(send_beacon(lb, pool.clone(), token)));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// The token of a delivered varnishkafka line (`?{"t":"lb0000001"};...`).
fn token_of(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let query = line.split('\t').next()?;
    query.split("%22").nth(3).map(str::to_string)
}

/// Requests HAProxy's log shows as retried: `option httplog` writes the
/// timers (`TR/Tw/Tc/Tr/Ta`), then later the connection counters
/// (`ac/fc/bc/sc/rc`, `rc` with a `+` when redispatched); the second field
/// with four slashes is the counters.
fn retried_in_log(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("/beacon/event"))
        .filter(|l| {
            l.split_whitespace()
                .filter(|f| f.matches('/').count() == 4)
                .nth(1)
                .and_then(|f| f.rsplit('/').next())
                .is_some_and(|r| r.starts_with('+') || r.parse::<u32>().is_ok_and(|n| n > 0))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn rolling_restart_behind_haproxy_loses_nothing_and_fails_no_client() {
    let brokers = require_broker();
    let topic = unique_topic("lb-rolling");
    create_topic(&brokers, &topic, 3).await;

    let mut a = Instance::new("a", "beacond1", &brokers, &topic);
    let mut b = Instance::new("b", "beacond2", &brokers, &topic);
    a.start().await;
    b.start().await;

    let dir = temp_dir("lb-haproxy");
    let socket = dir.join("admin.sock");
    let lb_port = free_port();
    let mut haproxy = haproxy(&dir, "haproxy", &haproxy_config(lb_port, &socket, &a, &b));
    let lb = SocketAddr::from(([127, 0, 0, 1], lb_port));
    wait_port(lb, &mut haproxy).await;
    for s in [a.server, b.server] {
        wait_haproxy_status(&socket, "beacons", s, "UP", Duration::from_secs(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(lb, stop.clone()));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    for inst in [&mut a, &mut b] {
        let t = Instant::now();
        // SIGTERM (once: a second one cuts the drain short): /readyz 503 at
        // once, HAProxy takes it out, then it stops accepting and exits.
        inst.proc.as_ref().expect("running").signal("-TERM");
        wait_haproxy_status(
            &socket,
            "beacons",
            inst.server,
            "DOWN",
            Duration::from_secs(10),
        )
        .await;
        let down_after = t.elapsed();
        let p = inst.proc.as_mut().expect("running");
        assert!(
            p.exited().is_none(),
            "{} exited before HAProxy took it out ({down_after:?})",
            inst.name
        );
        inst.wait_stopped().await;
        let exited_after = t.elapsed();
        inst.start().await;
        wait_haproxy_status(
            &socket,
            "beacons",
            inst.server,
            "UP",
            Duration::from_secs(20),
        )
        .await;
        eprintln!(
            "restart {}: DOWN in haproxy after {down_after:?}, exited after {exited_after:?}, \
             UP again after {:?}",
            inst.name,
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = loader.await.unwrap();
    let load_secs = started.elapsed().as_secs_f64();

    a.stop().await;
    b.stop().await;
    let haproxy_log = haproxy.log();

    let mut non_2xx: HashMap<u16, usize> = HashMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut accepted: Vec<&str> = Vec::new();
    for (token, answer) in &answers {
        match answer {
            Answer::Status(204) => accepted.push(token),
            Answer::Status(s) => *non_2xx.entry(*s).or_default() += 1,
            Answer::Failed(e) => failed.push(format!("{token}: {e}")),
        }
    }
    let got = consume(
        &brokers,
        &topic,
        accepted.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &got {
        let t = token_of(&m.payload).expect("a line with a token");
        *seen.entry(t).or_default() += 1;
    }
    let missing: Vec<&&str> = accepted
        .iter()
        .filter(|t| !seen.contains_key(**t))
        .collect();
    let duplicates: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let duplicate_count: usize = duplicates.iter().map(|(_, n)| **n - 1).sum();
    let retried = retried_in_log(&haproxy_log);
    let non_2xx_total: usize = non_2xx.values().sum();

    eprintln!(
        "haproxy rolling restart: requests {} in {load_secs:.1} s ({:.0}/s), answered 204 {}, \
         non-2xx {non_2xx_total} {non_2xx:?}, resets/errors {}, delivered {} distinct ({} messages), \
         missing {}, duplicates {duplicate_count} {duplicates:?}, retried by haproxy {retried}",
        answers.len(),
        answers.len() as f64 / load_secs,
        accepted.len(),
        failed.len(),
        seen.len(),
        got.len(),
        missing.len(),
    );
    assert!(
        answers.len() as f64 > RATE as f64 * load_secs * 0.9,
        "the load ran"
    );
    assert_eq!(non_2xx_total, 0, "non-2xx answers: {non_2xx:?}");
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "answered 204, not in Kafka: {missing:?}"
    );
    assert!(
        seen.keys().all(|t| answers.iter().any(|(a, _)| a == t)),
        "a token nobody sent"
    );
}

#[test]
fn retries_are_read_from_haproxys_log() {
    let line = |counters: &str| {
        format!(
            "127.0.0.1:35614 [02/Dec/2026:00:50:28.960] beacon beacons/beacond1 0/0/0/1/1 204 75 \
             - - ---- {counters} 0/0 \"GET /beacon/event?%7B%22t%22%3A%22lb0000001%22%7D; HTTP/1.1\""
        )
    };
    let log = [line("1/1/0/0/0"), line("1/1/0/0/1"), line("1/1/0/0/+1")].join("\n");
    assert_eq!(retried_in_log(&log), 2);
    assert_eq!(
        token_of(
            b"?%7B%22t%22%3A%22lb0000001%22%7D;\th\t1\t2026-12-02T00:50:28\t127.0.0.1\t\"ua\""
        ),
        Some("lb0000001".into())
    );
}
