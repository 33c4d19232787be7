//! Shared helpers for the end-to-end tests: the broker, topics, a raw HTTP
//! client, a running service, and a consumer that reads a topic back.
//!
//! Broker: `BEACOND_TEST_BROKERS` (e.g. `127.0.0.1:19092`, from
//! `scripts/dev-broker start`, or any real Kafka). The tests that need one are
//! marked `#[ignore = "needs a broker"]` and call [`require_broker`]: a plain
//! `cargo test` reports them as ignored (never as passed); `scripts/test` runs
//! them with `--include-ignored`, and an unset broker then fails them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use beacond::config::Config;
use beacond::service::Service;

/// The broker of a test marked `#[ignore = "needs a broker"]`: such tests
/// run only when asked for (`scripts/test` passes `--include-ignored`), so an
/// unset `BEACOND_TEST_BROKERS` is a failure, never a silent pass.
pub fn require_broker() -> String {
    match std::env::var("BEACOND_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "this test needs a broker: set BEACOND_TEST_BROKERS (scripts/dev-broker start prints it), \
             or run scripts/test"
        ),
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    create_topic_with(brokers, &[], topic, partitions).await
}

/// [`create_topic`] through a client configured with `props` (TLS, SASL...).
pub async fn create_topic_with(
    brokers: &str,
    props: &[(&str, &str)],
    topic: &str,
    partitions: i32,
) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_client(brokers, props).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics");
    for r in results {
        if let Err((name, code)) = r {
            panic!("cannot create topic {name}: {code}");
        }
    }
}

/// A config for tests: loopback listeners on free ports, the given broker.
pub fn test_config(brokers: &str, topic: &str) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.output.hostname = Some("test-host".into());
    c.kafka.brokers = brokers.into();
    c.kafka.topic = topic.into();
    c.kafka.properties.insert(
        "linger.ms".into(),
        beacond::config::PropertyValue::Text("1".into()),
    );
    c.shutdown.flush_timeout_seconds = 10;
    c.shutdown.drain_seconds = 0;
    c.spool.dir = temp_dir("spool");
    c
}

/// A fresh directory under the system's temp dir, unique to this call.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique_topic(&format!("beacond-{prefix}")));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A service running on the test runtime.
pub struct Running {
    pub beacon: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(config: Config) -> Running {
        let service = Service::bind(config).await.expect("service binds");
        let (beacon, admin) = (service.beacon_addr(), service.admin_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            service
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("service runs");
        });
        Running {
            beacon,
            admin,
            stop: Some(tx),
            task,
        }
    }

    /// Shuts down (drain, flush) and waits for the end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("service stops within 30 s")
            .expect("service task did not panic");
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = get(self.admin, "/readyz", &[]).await;
            if r.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after 20 s: {}",
                r.body_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&get(self.admin, "/metrics", &[]).await.body_text())
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub async fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    read_response(&mut s).await
}

/// Whether the server closes `s` (EOF or reset) within `within`, reading
/// and dropping whatever comes before (a response such as a 408).
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one response (headers, then a Content-Length body) from a stream.
pub async fn read_response(s: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// One request on a new connection, `Connection: close`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut raw =
        format!("{method} {target} HTTP/1.1\r\nHost: beacon.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        raw.push_str("Content-Length: 0\r\n");
    }
    raw.push_str("\r\n");
    raw_request(addr, raw.as_bytes())
        .await
        .expect("request answered")
}

pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", target, headers).await
}

/// Prometheus text parsed into `name{labels}` -> value.
#[derive(Debug)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
                .collect(),
        )
    }
    /// The value of one series; a series that does not exist fails the test
    /// (a renamed or unregistered metric must not read as 0).
    #[track_caller]
    pub fn get(&self, key: &str) -> f64 {
        match self.0.get(key) {
            Some(v) => *v,
            None => {
                let name = key.split('{').next().unwrap_or(key);
                let mut similar: Vec<_> = self.0.keys().filter(|k| k.starts_with(name)).collect();
                similar.sort();
                panic!("no series {key}; series of {name}: {similar:?}")
            }
        }
    }

    /// The sum over every series of `name` whose labels include each of
    /// `labels` (`("status", "204")`); fails when `name` has no series.
    #[track_caller]
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let series: Vec<_> = self
            .0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .collect();
        assert!(!series.is_empty(), "no series of {name}");
        series
            .iter()
            .filter(|(k, _)| {
                labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| **v)
            .sum()
    }
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub partition: i32,
}

/// Reads a topic from the beginning (all partitions, assigned directly: a
/// group join is slow on tansu) until `expected` messages arrived, then
/// keeps reading for `linger` to catch any extra.
pub fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    linger: Duration,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("beacond-test-{}", unique_topic("g")))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut linger_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || linger_until.is_some_and(|l| now > l) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Received {
                payload: m.payload().unwrap_or_default().to_vec(),
                key: m.key().map(<[u8]>::to_vec),
                partition: m.partition(),
            });
        }
        if out.len() >= expected && linger_until.is_none() {
            linger_until = Some(Instant::now() + linger);
        }
    }
    out
}

/// Polls `GET path` on `addr` until it answers 200 (any answer when
/// `any_status`), failing the test after 20 s.
pub async fn wait_http(addr: SocketAddr, path: &str, any_status: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let raw = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
    loop {
        match raw_request(addr, raw.as_bytes()).await {
            Ok(r) if any_status || r.status == 200 => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} did not answer in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The repository's root (for the schema fixtures and the dev stream config).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The schema repositories copied into the repository (real Wikimedia schemas).
pub fn fixture_schema_repositories() -> Vec<std::path::PathBuf> {
    let root = repo_root().join("tests/fixtures/event-schemas");
    vec![
        root.join("primary/jsonschema"),
        root.join("secondary/jsonschema"),
    ]
}

/// A test config with the events intake on, over `config/dev-streams.yaml`
/// and the fixture schemas. Every stream's topic gets `topic_prefix` (unique
/// per test, so tests sharing a broker do not see each other's events), the
/// `eventlogging_` streams included (`unprefixed_streams` is emptied).
pub fn events_config(brokers: &str, topic_prefix: &str) -> Config {
    let mut c = test_config(brokers, &format!("{topic_prefix}beacons"));
    c.events.stream_config = Some(repo_root().join("config/dev-streams.yaml"));
    c.events.schema_repositories = fixture_schema_repositories();
    c.events.topic_prefix = topic_prefix.into();
    c.events.unprefixed_streams = Vec::new();
    c
}

/// A topic prefix no other test uses, ending in `.`.
pub fn unique_prefix(name: &str) -> String {
    format!("{}.", unique_topic(name))
}

/// Creates the topics of `streams` (and the error stream's, and the beacon
/// topic) under `topic_prefix`.
pub async fn create_event_topics(brokers: &str, topic_prefix: &str, streams: &[&str]) {
    create_topic(brokers, &format!("{topic_prefix}beacons"), 1).await;
    create_topic(
        brokers,
        &format!("{topic_prefix}beacond.error.validation"),
        1,
    )
    .await;
    for s in streams {
        create_topic(brokers, &format!("{topic_prefix}{s}"), 1).await;
    }
}

/// One POST on a new connection, `Connection: close`.
pub async fn post(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: beacon.test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw_request(addr, &raw).await.expect("request answered")
}

/// The addresses a `beacond --ready-file FILE` wrote, once the file exists.
pub fn read_ready_file(path: &std::path::Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(path).ok()?;
    let addr = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((addr("beacon=")?, addr("admin=")?))
}

/// A `beacond` binary run as a child process, its stderr in a file the test
/// reads while it runs. Killed (SIGKILL) when dropped still running.
pub struct ChildBeacond {
    child: std::process::Child,
    log: std::path::PathBuf,
    pub beacon: SocketAddr,
    pub admin: SocketAddr,
}

impl ChildBeacond {
    /// Starts `beacond --config config --ready-file ...` (the config should
    /// listen on port 0) and waits for it to bind; its addresses come from
    /// the ready file. stderr goes to `dir/log_name`.
    pub fn start(dir: &std::path::Path, config: &std::path::Path, log_name: &str) -> ChildBeacond {
        Self::start_with(dir, config, log_name, |_| {})
    }

    /// [`ChildBeacond::start`], with `adjust` applied to the command first.
    pub fn start_with(
        dir: &std::path::Path,
        config: &std::path::Path,
        log_name: &str,
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> ChildBeacond {
        let log = dir.join(log_name);
        let ready = dir.join(format!("{log_name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_beacond"));
        command
            .arg("--config")
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .env("BEACOND_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        adjust(&mut command);
        let mut child = command.spawn().expect("beacond starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (beacon, admin) = loop {
            if let Some(addrs) = read_ready_file(&ready) {
                break addrs;
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!(
                    "beacond exited ({status}) before binding; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "beacond did not bind within 30 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ChildBeacond {
            child,
            log,
            beacon,
            admin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's VmRSS (its memory alone: no test client shares the
    /// process), in KiB; 0 once it has exited.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `kill <sig>` (e.g. `-HUP`).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&get(self.admin, "/metrics", &[]).await.body_text())
    }

    pub async fn metric(&self, key: &str) -> f64 {
        self.metrics().await.get(key)
    }

    /// Polls until the series `key` reaches `n` (deadline 30 s).
    pub async fn wait_metric(&self, key: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric(key).await < n {
            assert!(
                Instant::now() < deadline,
                "{key} never reached {n}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, once the process ends within `within`; `None` if it
    /// is still running then.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and the end of the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code within 30 s, and the log.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal("-TERM");
        match self.wait_exit(Duration::from_secs(30)) {
            Some(exit) => (exit.code(), self.log()),
            None => panic!("no exit within 30 s of SIGTERM; log:\n{}", self.log()),
        }
    }
}

impl Drop for ChildBeacond {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// How [`numbered_beacons`] sends each beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeaconMethod {
    Get,
    /// `POST` with an empty body, as `navigator.sendBeacon` sends one.
    EmptyPost,
}

/// Sends numbered beacons (`event.id` = `{prefix}-{n}`) on one keep-alive
/// connection, reconnecting when needed, one every `pause` (plus the
/// answer's time), until `stop` is set. `answer` gets each id with its status,
/// or `None` when no answer came (the connection is then dropped).
pub async fn numbered_beacons(
    addr: SocketAddr,
    prefix: &str,
    method: BeaconMethod,
    pause: Duration,
    stop: &std::sync::atomic::AtomicBool,
    mut answer: impl FnMut(String, Option<u16>),
) {
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if conn.is_none() {
            conn = TcpStream::connect(addr).await.ok();
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let id = format!("{prefix}-{n}");
        n += 1;
        let target = format!(
            "/beacon/event?%7B%22event%22%3A%7B%22id%22%3A%22{id}%22%7D%2C%22schema%22%3A%22T%22%2C%22revision%22%3A1%7D;"
        );
        let req = match method {
            BeaconMethod::Get => format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"),
            BeaconMethod::EmptyPost => {
                format!("POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            }
        };
        let status = match s.write_all(req.as_bytes()).await {
            Ok(()) => read_response(s).await.ok().map(|r| r.status),
            Err(_) => None,
        };
        if status.is_none() {
            conn = None;
        }
        answer(id, status);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A client config for `brokers` with `props` (TLS, SASL...) set.
pub fn kafka_client(brokers: &str, props: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in props {
        c.set(*k, *v);
    }
    c
}
