//! The binary and its event rules: `SIGHUP` reloads the stream config
//! (a good one is put in force, a broken one is refused and the old rules
//! stay, requests in flight all answered), and `--check` names what is wrong
//! in a stream config. The child process talks to librdkafka's mock cluster,
//! hosted by the test process, so no external broker is needed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;

const BIN: &str = env!("CARGO_BIN_EXE_beacond");

/// The stream the reload adds.
const X: &str = "reload.x";

/// The streams every config here has (the error stream is required).
const BASE_STREAMS: &str = "beacond.error.validation:\n  schema_title: error\n\
                            test.event:\n  schema_title: test/event\n";

/// Replaces a file's contents in one step (what a deploy tool should do).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A beacond config with the events intake over `streams`.
fn config_text(dir: &Path, streams: &Path, brokers: &str, prefix: &str) -> String {
    let repos: Vec<String> = fixture_schema_repositories()
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"reload-host\"\n\
         [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{prefix}beacons\"\n\
         [kafka.properties]\n\"linger.ms\" = 5\n\
         [spool]\ndir = {:?}\n[shutdown]\ndrain_seconds = 0\n\
         [events]\nstream_config = {:?}\nschema_repositories = [{}]\n\
         topic_prefix = \"{prefix}\"\nunprefixed_streams = []\n",
        dir.join("spool").display().to_string(),
        streams.display().to_string(),
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

/// One POST on a new connection; `None` when no answer came.
async fn try_post(addr: SocketAddr, body: &[u8]) -> Option<HttpResponse> {
    let mut raw = format!(
        "POST /v1/events HTTP/1.1\r\nHost: events.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).await.ok()
}

fn reloads(result: &str) -> String {
    format!("beacond_event_rules_reloads_total{{result=\"{result}\"}}")
}

/// What the posts across the reloads saw.
#[derive(Debug, Default)]
struct Seen {
    /// `test.event` answers by status (201 expected, always).
    base: HashMap<u16, u64>,
    /// `X` answers in the order they came, per loader.
    x: Vec<u16>,
    /// ids of X events answered 201.
    x_accepted: Vec<String>,
    unanswered: u64,
}

/// Posts alternately a `test.event` and an `X` event, no pause, until
/// `stop`; so requests are in flight whenever a reload happens.
async fn posts(addr: SocketAddr, tag: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (stream, id) = if n % 2 == 0 {
            ("test.event", format!("base-{tag}-{n}"))
        } else {
            (X, format!("x-{tag}-{n}"))
        };
        n += 1;
        match try_post(addr, &event(stream, &id)).await {
            None => seen.unanswered += 1,
            Some(r) if stream == X => {
                seen.x.push(r.status);
                if r.status == 201 {
                    seen.x_accepted.push(id);
                }
            }
            Some(r) => *seen.base.entry(r.status).or_default() += 1,
        }
    }
    seen
}

#[test]
fn sighup_reloads_the_stream_config_and_a_broken_one_keeps_the_rules_in_force() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let prefix = unique_prefix("reload");
    for t in ["beacons", "beacond.error.validation", "test.event", X] {
        mock.create_topic(&format!("{prefix}{t}"), 1, 1).unwrap();
    }
    let dir = temp_dir("reload");
    let streams = dir.join("streams.yaml");
    write_atomically(&streams, BASE_STREAMS);
    let config = dir.join("beacond.toml");
    std::fs::write(&config, config_text(&dir, &streams, &brokers, &prefix)).unwrap();
    let svc = ChildBeacond::start(&dir, &config, "beacond.log");

    let loaders = rt.block_on(async {
        wait_http(svc.admin, "/readyz", false).await;
        // X is not in the stream config: an error (500), not accepted.
        let r = try_post(svc.beacon, &event(X, "x-before")).await.unwrap();
        assert_eq!(r.status, 500, "{}", r.body_text());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"].as_array().map(Vec::len), Some(1), "{body}");
        let m = svc.metrics().await;
        assert_eq!(m.get("beacond_event_rules_reloads_total{result=\"ok\"}"), 0.0);
        assert_eq!(m.get("beacond_event_rules_reloads_total{result=\"failed\"}"), 0.0);

        let stop = Arc::new(AtomicBool::new(false));
        let loaders: Vec<_> = (0..4)
            .map(|i| tokio::spawn(posts(svc.beacon, i, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // X added: HUP, and X is accepted once the reload is done.
        write_atomically(
            &streams,
            &format!("{BASE_STREAMS}{X}:\n  schema_title: test/event\n"),
        );
        svc.signal("-HUP");
        svc.wait_metric(&reloads("ok"), 1.0).await;
        let r = try_post(svc.beacon, &event(X, "x-after")).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body_text());
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A broken stream config: refused, the rules in force stay.
        write_atomically(
            &streams,
            &format!("{BASE_STREAMS}{X}:\n  schema_title: test/event\n\"/[unclosed/\":\n  schema_title: test/event\n"),
        );
        svc.signal("-HUP");
        svc.wait_metric(&reloads("failed"), 1.0).await;
        let r = try_post(svc.beacon, &event(X, "x-after-failed")).await.unwrap();
        assert_eq!(r.status, 201, "old rules kept: {}", r.body_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for l in loaders {
            seen.push(l.await.unwrap());
        }
        let m = svc.metrics().await;
        assert_eq!(m.get("beacond_event_rules_reloads_total{result=\"ok\"}"), 1.0);
        assert_eq!(m.get("beacond_event_rules_reloads_total{result=\"failed\"}"), 1.0);
        seen
    });

    // Every request across both reloads was answered; test.event always
    // 201; X 500 until the reload, 201 from then on (never back).
    let mut x_accepted = vec!["x-after".to_string(), "x-after-failed".to_string()];
    let mut total = 0;
    for (i, s) in loaders.iter().enumerate() {
        assert_eq!(s.unanswered, 0, "loader {i}: requests without an answer");
        assert_eq!(
            s.base.keys().copied().collect::<Vec<_>>(),
            vec![201],
            "loader {i}: test.event answers {:?}",
            s.base
        );
        let first_ok = s.x.iter().position(|st| *st == 201).unwrap_or(s.x.len());
        assert!(
            s.x[..first_ok].iter().all(|st| *st == 500),
            "loader {i}: X before the reload: {:?}",
            &s.x[..first_ok]
        );
        assert!(
            s.x[first_ok..].iter().all(|st| *st == 201),
            "loader {i}: X after the reload must stay accepted: {:?}",
            &s.x[first_ok..]
        );
        assert!(first_ok < s.x.len(), "loader {i}: X never accepted");
        assert!(first_ok > 0, "loader {i}: X accepted before the reload");
        total += s.x.len() + s.base.values().sum::<u64>() as usize;
        x_accepted.extend(s.x_accepted.iter().cloned());
    }

    // The accepted X events are on X's topic.
    let got = consume(
        &brokers,
        &format!("{prefix}{X}"),
        x_accepted.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    let ids: std::collections::HashSet<String> = got
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| v["meta"]["id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<_> = x_accepted.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "X events accepted but not on its topic: {missing:?}"
    );

    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(log.contains("stream config and schemas reloaded"), "{log}");
    let failed = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_else(|| panic!("no reload failure logged:\n{log}"));
    assert!(
        failed.contains("/[unclosed/"),
        "the log names the key: {failed}"
    );
    eprintln!(
        "reload: {total} requests across two reloads, all answered; {} X events accepted",
        x_accepted.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `beacond --check` over a stream config; returns (success, stderr).
fn check(streams: &str) -> (bool, String) {
    let dir = temp_dir("check");
    let path = dir.join("streams.yaml");
    std::fs::write(&path, streams).unwrap();
    let config = dir.join("beacond.toml");
    std::fs::write(&config, config_text(&dir, &path, "127.0.0.1:9", "check.")).unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_stream_config_key_that_is_wrong() {
    let cases = [
        (
            "a bad regex",
            "\"/^product(/\":\n  schema_title: test/event\n",
            &["/^product(/", "regex"][..],
        ),
        (
            "no schema_title",
            "my.untitled:\n  destination_event_service: eventgate-analytics\n",
            &["my.untitled", "schema_title"][..],
        ),
        (
            "a schema title no schema has",
            "my.orphan:\n  schema_title: no/such/title\n",
            &["my.orphan", "no/such/title"][..],
        ),
    ];
    for (what, extra, names) in cases {
        let (ok, err) = check(&format!("{BASE_STREAMS}{extra}"));
        assert!(!ok, "{what}: --check must fail; stderr:\n{err}");
        for name in names {
            assert!(
                err.contains(name),
                "{what}: stderr should name {name:?}:\n{err}"
            );
        }
        assert!(
            err.contains("events.stream_config"),
            "{what}: names the config key:\n{err}"
        );
    }

    let (ok, err) = check(&format!(
        "{BASE_STREAMS}/^reload\\..+$/:\n  schema_title: test/event\n"
    ));
    assert!(ok, "a good config passes; stderr:\n{err}");
    let summary = err
        .lines()
        .find(|l| l.starts_with("events: "))
        .unwrap_or_else(|| panic!("no events summary line:\n{err}"));
    let words: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(words[1], "3", "three stream-config keys: {summary}");
    assert_eq!(words[2], "streams,", "{summary}");
    let schemas: usize = words[3].parse().unwrap();
    assert!(schemas >= 60 && words[4] == "schemas", "{summary}");
}

/// A SIGHUP never ends the process: with the events intake off there is
/// nothing to reload, and the signal is logged and ignored (its default
/// action would end beacond without a flush).
#[test]
fn sighup_without_the_events_intake_is_ignored() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = temp_dir("hup-off");
    let config = dir.join("beacond.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [output]\nhostname = \"hup-host\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n\
             [spool]\ndir = {:?}\n[shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 1\n",
            dir.join("spool").display().to_string()
        ),
    )
    .unwrap();
    let svc = ChildBeacond::start(&dir, &config, "beacond.log");
    rt.block_on(async {
        wait_http(svc.admin, "/healthz", false).await;
        svc.signal("-HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !svc.log().contains("nothing to reload") {
            assert!(Instant::now() < deadline, "HUP not logged:\n{}", svc.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Still serving.
        let r = get(svc.beacon, "/beacon/event?%7B%7D;", &[]).await;
        assert_eq!(r.status, 204);
    });
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}
