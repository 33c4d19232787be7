//! The stream config from a URL (`events.stream_config_uri`), against a
//! tiny HTTP server the test controls: start-up from the URL (with the
//! configured headers), a refresh that adds a stream (in force within a
//! TTL), refreshes that fail in each way (server down, 500, garbage, an
//! unknown schema title, timeout) while ingestion goes on with the last good
//! config, a restart with the server down (the disk cache serves), and a
//! start with neither (a clear error, non-zero exit). The child process
//! talks to librdkafka's mock cluster, hosted by the test process.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;

const BIN: &str = env!("CARGO_BIN_EXE_beacond");
/// The stream a refresh adds.
const X: &str = "remote.x";

fn streams_json(extra: &[(&str, &str)]) -> String {
    let mut streams = serde_json::Map::new();
    streams.insert(
        "beacond.error.validation".into(),
        serde_json::json!({"schema_title": "error", "destination_event_service": "eventgate-analytics"}),
    );
    streams.insert(
        "test.event".into(),
        serde_json::json!({"schema_title": "test/event"}),
    );
    for (k, t) in extra {
        streams.insert((*k).into(), serde_json::json!({ "schema_title": t }));
    }
    serde_json::json!({ "streams": streams }).to_string()
}

/// What the server answers.
#[derive(Debug, Clone)]
enum Mode {
    Serve(String),
    /// Accepts and closes at once, no answer.
    Down,
    Status500,
    Garbage,
    /// Answers after this long (beyond the fetch timeout).
    Slow(Duration),
}

/// A stream config server on a thread, one thread per connection.
struct ConfigServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// The request heads received.
    heads: Arc<Mutex<Vec<String>>>,
}

impl ConfigServer {
    fn start(mode: Mode) -> ConfigServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (m, h) = (mode.clone(), heads.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (m, h) = (m.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let mode = m.lock().unwrap().clone();
                    let (status, body) = match mode {
                        Mode::Down => return,
                        Mode::Serve(body) => ("200 OK", body),
                        Mode::Status500 => ("500 Internal Server Error", "oops".into()),
                        Mode::Garbage => ("200 OK", "<html>not a stream config".into()),
                        Mode::Slow(d) => {
                            std::thread::sleep(d);
                            ("200 OK", streams_json(&[]))
                        }
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        ConfigServer { addr, mode, heads }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn uri(&self) -> String {
        format!(
            "http://{}/w/api.php?action=streamconfigs&format=json&constraints=destination_event_service=eventgate-analytics",
            self.addr
        )
    }
}

fn config_text(dir: &Path, uri: &str, cache: &Path, brokers: &str, prefix: &str) -> String {
    let repos: Vec<String> = fixture_schema_repositories()
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"uri-host\"\n\
         [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{prefix}beacons\"\n\
         [kafka.properties]\n\"linger.ms\" = 5\n\
         [spool]\ndir = {:?}\n[shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 2\n\
         [events]\nstream_config_uri = {uri:?}\nstream_config_ttl_seconds = 1\n\
         stream_config_cache = {:?}\nschema_repositories = [{}]\n\
         topic_prefix = \"{prefix}\"\nunprefixed_streams = []\n\
         [events.stream_config_headers]\nHost = \"meta.test\"\n",
        dir.join("spool").display().to_string(),
        cache.display().to_string(),
        repos.join(", "),
    )
}

fn event(stream: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "$schema": "/test/event/1.0.0",
        "meta": {"stream": stream, "id": id},
    }))
    .unwrap()
}

async fn post_status(addr: SocketAddr, stream: &str, id: &str) -> u16 {
    let body = event(stream, id);
    let mut raw = format!(
        "POST /v1/events HTTP/1.1\r\nHost: events.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw_request(addr, &raw).await.map_or(0, |r| r.status)
}

fn refreshes(result: &str) -> String {
    format!("beacond_event_stream_config_refreshes_total{{result=\"{result}\"}}")
}

#[test]
fn stream_config_from_a_url_refreshes_keeps_the_last_good_and_restarts_from_the_cache() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let prefix = unique_prefix("uri");
    for t in ["beacons", "beacond.error.validation", "test.event", X] {
        mock.create_topic(&format!("{prefix}{t}"), 1, 1).unwrap();
    }
    let dir = temp_dir("stream-uri");
    let cache = dir.join("cache/stream-config.json");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let server = ConfigServer::start(Mode::Serve(streams_json(&[])));
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        config_text(&dir, &server.uri(), &cache, &brokers, &prefix),
    )
    .unwrap();

    // Start-up from the URL, with the configured Host header; cached.
    let svc = ChildBeacond::start(&dir, &config, "first.log");
    rt.block_on(async {
        wait_http(svc.admin, "/readyz", false).await;
        assert_eq!(post_status(svc.beacon, "test.event", "a-1").await, 201);
        assert_eq!(
            post_status(svc.beacon, X, "x-0").await,
            500,
            "X not yet configured"
        );
        assert!(svc.metric(&refreshes("ok")).await >= 1.0);
        let heads = server.heads.lock().unwrap().clone();
        assert!(
            heads[0].starts_with("GET /w/api.php?action=streamconfigs&format=json")
                && heads[0]
                    .to_ascii_lowercase()
                    .contains("host: meta.test\r\n"),
            "{}",
            heads[0]
        );
        let cached: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
        assert!(cached["streams"]["test.event"].is_object(), "{cached}");

        // A refresh adds X: accepted within a TTL or so.
        server.set(Mode::Serve(streams_json(&[(X, "test/event")])));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while post_status(svc.beacon, X, &format!("x-wait-{n}")).await != 201 {
            n += 1;
            assert!(
                Instant::now() < deadline,
                "X never accepted; log:\n{}",
                svc.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            std::fs::read_to_string(&cache).unwrap().contains(X),
            "cache updated"
        );

        // Each way of failing keeps the last good config (X stays accepted).
        let unknown = streams_json(&[(X, "test/event"), ("remote.orphan", "no/such/title")]);
        for (mode, result) in [
            (Mode::Down, "unreachable"),
            (Mode::Status500, "http_status"),
            (Mode::Garbage, "unparsable"),
            (Mode::Serve(unknown), "unknown_schema"),
            (Mode::Slow(Duration::from_secs(3)), "timeout"),
        ] {
            server.set(mode);
            svc.wait_metric(&refreshes(result), 1.0).await;
            for i in 0..3 {
                assert_eq!(
                    post_status(svc.beacon, X, &format!("x-{result}-{i}")).await,
                    201,
                    "{result}"
                );
                assert_eq!(
                    post_status(svc.beacon, "test.event", &format!("t-{result}-{i}")).await,
                    201
                );
            }
            let r = get(svc.admin, "/readyz", &[]).await;
            assert_eq!(r.status, 200, "stale config is no reason to be unready");
            assert!(
                r.body_text().contains("last good kept") && r.body_text().contains(result),
                "{result}: {}",
                r.body_text()
            );
            let cached = std::fs::read_to_string(&cache).unwrap();
            assert!(
                cached.contains(X) && !cached.contains("remote.orphan"),
                "cache keeps the last good"
            );
        }
        // A SIGHUP while the URL fails: the schemas are reloaded, the last
        // good stream config stays (X accepted).
        server.set(Mode::Down);
        svc.signal("-HUP");
        svc.wait_metric("beacond_event_rules_reloads_total{result=\"ok\"}", 1.0)
            .await;
        assert_eq!(post_status(svc.beacon, X, "x-after-hup").await, 201);
        // The age grows while refreshes fail.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(svc.metric("beacond_event_stream_config_age_seconds").await >= 1.0);
    });
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("last good stream config stays in force"),
        "{log}"
    );

    // A restart with the server down: the cache serves, X included.
    server.set(Mode::Down);
    let svc = ChildBeacond::start(&dir, &config, "second.log");
    rt.block_on(async {
        wait_http(svc.admin, "/readyz", false).await;
        assert_eq!(
            post_status(svc.beacon, X, "x-cache").await,
            201,
            "{}",
            svc.log()
        );
        assert_eq!(svc.metric(&refreshes("cache")).await, 1.0);
        let r = get(svc.admin, "/readyz", &[]).await;
        assert!(
            r.body_text().contains("from the cache"),
            "{}",
            r.body_text()
        );
        // The server comes back: the next refresh is from the URL.
        server.set(Mode::Serve(streams_json(&[(X, "test/event")])));
        svc.wait_metric(&refreshes("ok"), 1.0).await;
    });
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("starting with the cached stream config"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn neither_the_url_nor_a_cache_is_a_clear_start_up_error() {
    let dir = temp_dir("stream-uri-none");
    // A port nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let uri = format!("http://127.0.0.1:{port}/w/api.php?action=streamconfigs&format=json");
    let cache = dir.join("no-such-cache.json");
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        config_text(&dir, &uri, &cache, "127.0.0.1:9", "none."),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail; stderr:\n{stderr}");
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{:?}",
        out.status
    );
    for name in [
        "events.stream_config_uri",
        "events.stream_config_cache",
        &uri,
    ] {
        assert!(stderr.contains(name), "stderr names {name:?}:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_fetches_the_url_and_writes_no_cache() {
    let dir = temp_dir("stream-uri-check");
    let server = ConfigServer::start(Mode::Serve(streams_json(&[(X, "test/event")])));
    let cache = dir.join("cache.json");
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        config_text(&dir, &server.uri(), &cache, "127.0.0.1:9", "check."),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("events: 3 streams"), "{stderr}");
    assert!(!cache.exists(), "--check writes no cache");
    let _ = std::fs::remove_dir_all(&dir);
}
