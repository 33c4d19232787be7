//! Hostile input on `POST /v1/events`, over real sockets, without a broker
//! (the producer points at a closed port; the spool is on, in a temp dir):
//! deep nesting, huge arrays and strings, invalid UTF-8, numbers out of
//! range, schemas that do not exist, floods of distinct `$schema` and
//! `meta.stream` values, a slow body. The service answers each with its
//! status, never panics, keeps serving, counts every refusal (metric totals
//! equal what was sent), adds no metric series for client values, and, in a
//! child process, keeps its memory bounded.

mod common;
#[path = "../src/crosscheck.rs"]
mod crosscheck;

use std::collections::HashMap;
use std::net::SocketAddr;

use std::time::{Duration, Instant};

use beacond::config::Config;
use common::*;
use crosscheck::BoonOracle;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTE: &str = "/v1/events";
const NAV: &str = "/analytics/legacy/navigationtiming/1.6.0";
const TEST_EVENT: &str = "/test/event/1.0.0";
const JSON: (&str, &str) = ("Content-Type", "application/json");
const TEXT_PLAIN: (&str, &str) = ("Content-Type", "text/plain;charset=UTF-8");

fn test_event() -> Value {
    json!({"$schema": TEST_EVENT, "meta": {"stream": "test.event", "domain": "en.wikipedia.org"}})
}

fn navigation_timing() -> Value {
    json!({
        "$schema": NAV,
        "meta": {"stream": "eventlogging_NavigationTiming", "domain": "en.wikipedia.org"},
        "event": {"isAnon": true, "skin": "vector-2022", "revId": 1, "responseStart": 120}
    })
}

fn config_without_broker(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = events_config("127.0.0.1:9", &unique_prefix("ev-hostile"));
    c.shutdown.flush_timeout_seconds = 0;
    tweak(&mut c);
    c
}

/// What the test sent, to compare with the service's counters.
#[derive(Default)]
struct Sent {
    statuses: HashMap<u16, f64>,
    rejected: HashMap<&'static str, f64>,
    invalid: HashMap<&'static str, f64>,
    errored: HashMap<&'static str, f64>,
    accepted: f64,
}

impl Sent {
    async fn post(
        &mut self,
        addr: SocketAddr,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let r = post(addr, ROUTE, headers, body).await;
        *self.statuses.entry(r.status).or_default() += 1.0;
        r
    }

    /// A whole request refused with `status` for `reason`.
    async fn refused(&mut self, addr: SocketAddr, body: &[u8], status: u16, reason: &'static str) {
        let r = self.post(addr, &[JSON], body).await;
        assert_eq!(r.status, status, "{reason}: {}", r.body_text());
        *self.rejected.entry(reason).or_default() += 1.0;
    }

    async fn check(&self, svc_admin: SocketAddr) {
        let m = Metrics::parse(&get(svc_admin, "/metrics", &[]).await.body_text());
        for (status, n) in &self.statuses {
            assert_eq!(
                m.get(&format!(
                    "beacond_requests_total{{route=\"{ROUTE}\",status=\"{status}\"}}"
                )),
                *n,
                "status {status}"
            );
        }
        assert_eq!(
            m.sum("beacond_requests_total", &[("route", ROUTE)]),
            self.statuses.values().sum::<f64>(),
            "every request counted"
        );
        for (family, want) in [
            ("beacond_event_requests_rejected_total", &self.rejected),
            ("beacond_events_invalid_total", &self.invalid),
            ("beacond_events_errored_total", &self.errored),
        ] {
            for (reason, n) in want {
                assert_eq!(
                    m.get(&format!("{family}{{reason=\"{reason}\"}}")),
                    *n,
                    "{family} {reason}"
                );
            }
            assert_eq!(
                m.sum(family, &[]),
                want.values().sum::<f64>(),
                "{family}: nothing else"
            );
        }
        let outcome = |o: &str| m.sum("beacond_events_total", &[("outcome", o)]);
        assert_eq!(outcome("accepted"), self.accepted);
        assert_eq!(outcome("invalid"), self.invalid.values().sum::<f64>());
        assert_eq!(outcome("error"), self.errored.values().sum::<f64>());
    }
}

/// The service still answers a valid event, and its admin endpoints.
async fn assert_still_serving(sent: &mut Sent, svc: &Running) {
    let r = sent
        .post(
            svc.beacon,
            &[TEXT_PLAIN],
            &serde_json::to_vec(&test_event()).unwrap(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    sent.accepted += 1.0;
    assert_eq!(get(svc.admin, "/healthz", &[]).await.status, 200);
}

fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_huge_arrays_and_strings_and_bad_bytes_are_answered_and_counted() {
    let svc = Running::start(config_without_broker(|_| {})).await;
    let max_body = beacond::config::EventsConfig::default().max_body_bytes;
    let max_events = beacond::config::EventsConfig::default().max_events_per_request;
    let mut sent = Sent::default();
    let addr = svc.beacon;

    // Deep nesting: 10k `[`, 10k `{"a":`, and deep inside an event.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    sent.refused(addr, deep.as_bytes(), 400, "malformed_json")
        .await;
    let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    sent.refused(addr, deep.as_bytes(), 400, "malformed_json")
        .await;
    let unclosed = "[".repeat(100_000);
    sent.refused(addr, unclosed.as_bytes(), 400, "malformed_json")
        .await;
    let mut nested = test_event();
    nested["test_map"] = json!({"k": serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap()});
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&nested).unwrap())
        .await;
    assert_eq!(
        r.status,
        400,
        "a nested array where a string belongs: {}",
        r.body_text()
    );
    *sent.invalid.entry("schema_validation").or_default() += 1.0;
    assert_still_serving(&mut sent, &svc).await;

    // Huge arrays: over the cap; at the cap of tiny invalid events, of
    // non-objects, of valid events.
    let over: Vec<Value> = (0..=max_events).map(|_| test_event()).collect();
    sent.refused(
        addr,
        &serde_json::to_vec(&over).unwrap(),
        413,
        "too_many_events",
    )
    .await;
    let empties = format!("[{}]", vec!["{}"; max_events].join(","));
    let r = sent.post(addr, &[JSON], empties.as_bytes()).await;
    assert_eq!(r.status, 400);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["invalid"].as_array().unwrap().len(), max_events);
    *sent.invalid.entry("missing_schema").or_default() += max_events as f64;
    let numbers = format!("[{}]", vec!["1"; max_events].join(","));
    let r = sent.post(addr, &[TEXT_PLAIN], numbers.as_bytes()).await;
    assert_eq!(r.status, 400);
    *sent.invalid.entry("not_an_object").or_default() += max_events as f64;
    let valid: Vec<Value> = (0..max_events).map(|_| test_event()).collect();
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&valid).unwrap())
        .await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    sent.accepted += max_events as f64;
    assert_still_serving(&mut sent, &svc).await;

    // Huge strings: an event exactly at the body cap is accepted; one byte
    // more is 413; a huge invalid value and a huge property name are
    // invalid with bounded error paths.
    let mut at_cap = test_event();
    at_cap["test"] = json!("");
    let overhead = serde_json::to_vec(&at_cap).unwrap().len();
    at_cap["test"] = json!("é".repeat((max_body - overhead) / 2));
    let mut body = serde_json::to_vec(&at_cap).unwrap();
    while body.len() < max_body {
        at_cap["test"] = json!(format!("{}x", at_cap["test"].as_str().unwrap()));
        body = serde_json::to_vec(&at_cap).unwrap();
    }
    assert_eq!(body.len(), max_body);
    let r = sent.post(addr, &[TEXT_PLAIN], &body).await;
    assert_eq!(
        r.status,
        201,
        "an event of max_body_bytes: {}",
        &r.body_text()[..200.min(r.body.len())]
    );
    sent.accepted += 1.0;
    at_cap["test"] = json!(format!("{}x", at_cap["test"].as_str().unwrap()));
    sent.refused(
        addr,
        &serde_json::to_vec(&at_cap).unwrap(),
        413,
        "body_too_large",
    )
    .await;
    let mut huge_dt = navigation_timing();
    huge_dt["client_dt"] = json!("9".repeat(max_body - 400));
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&huge_dt).unwrap())
        .await;
    assert_eq!(r.status, 400);
    *sent.invalid.entry("schema_validation").or_default() += 1.0;
    let mut huge_key = test_event();
    huge_key["test_map"] = json!({ "k".repeat(200_000): 1 });
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&huge_key).unwrap())
        .await;
    assert_eq!(r.status, 400);
    *sent.invalid.entry("schema_validation").or_default() += 1.0;
    let item: Value = serde_json::from_slice(&r.body).unwrap();
    let item = &item["invalid"][0];
    let text = item["context"]["errorsText"].as_str().unwrap();
    assert!(
        text.len() < 1024,
        "errorsText bounded: {} bytes",
        text.len()
    );
    for e in item["context"]["errors"].as_array().unwrap() {
        assert!(
            e["dataPath"].as_str().unwrap().len() <= 256 + 32,
            "dataPath bounded"
        );
    }
    assert_still_serving(&mut sent, &svc).await;

    // Invalid UTF-8 in the body, a lone surrogate; bad bytes in headers.
    let mut raw =
        br#"{"$schema":"/test/event/1.0.0","meta":{"stream":"test.event"},"test":""#.to_vec();
    raw.extend_from_slice(b"\xff\xfe\xc3(\"}");
    sent.refused(addr, &raw, 400, "malformed_json").await;
    let surrogate =
        br#"{"$schema":"/test/event/1.0.0","meta":{"stream":"test.event"},"test":"\ud800"}"#;
    sent.refused(addr, surrogate, 400, "malformed_json").await;
    sent.refused(addr, b"\xef\xbb\xbf{}", 400, "malformed_json")
        .await;
    // A user agent and request id that are not UTF-8: not filled in, the
    // event is still accepted.
    let nav = serde_json::to_vec(&navigation_timing()).unwrap();
    let mut req = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        nav.len()
    )
    .into_bytes();
    req.extend_from_slice(b"User-Agent: Mozilla\xff\xfe\r\nX-Request-Id: r\xc3\x28\r\n\r\n");
    req.extend_from_slice(&nav);
    let r = raw_request(addr, &req).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body_text());
    *sent.statuses.entry(201).or_default() += 1.0;
    sent.accepted += 1.0;
    assert_still_serving(&mut sent, &svc).await;

    // Numbers out of range: the whole request for what JSON parsing cannot
    // hold; beyond the schema's range an invalid event. The oracle decides
    // each verdict beacond must give.
    for n in ["1e400", "-1e400"] {
        let body = format!(
            r#"{{"$schema":"{NAV}","meta":{{"stream":"eventlogging_NavigationTiming"}},"event":{{"isAnon":true,"revId":{n}}}}}"#
        );
        sent.refused(addr, body.as_bytes(), 400, "malformed_json")
            .await;
    }
    let oracle = BoonOracle::fixtures();
    for n in [
        "9007199254740991",
        "9007199254740992",
        "18446744073709551617",
        "-18446744073709551617",
        "1.0",
        "1.5",
        "1e308",
        "1e-400",
        "-0",
    ] {
        let body = format!(
            r#"{{"$schema":"{NAV}","meta":{{"stream":"eventlogging_NavigationTiming"}},"event":{{"isAnon":true,"revId":{n}}}}}"#
        );
        let mut filled: Value = serde_json::from_str(&body).unwrap();
        filled["meta"]["dt"] = json!("2026-05-01T00:00:00.000Z");
        filled["dt"] = json!("2026-05-01T00:00:00.000Z");
        filled["meta"]["id"] = json!("00000000-0000-4000-8000-000000000000");
        filled["http"] = json!({"client_ip": "127.0.0.1"});
        let boon_valid = oracle.is_valid(NAV, &filled).unwrap();
        let r = sent.post(addr, &[JSON], body.as_bytes()).await;
        if boon_valid {
            assert_eq!(
                r.status,
                201,
                "revId {n}: boon says valid; beacond: {}",
                r.body_text()
            );
            sent.accepted += 1.0;
        } else {
            assert_eq!(r.status, 400, "revId {n}: boon says invalid");
            let item: Value = serde_json::from_slice(&r.body).unwrap();
            oracle.assert_agrees(
                NAV,
                &item["invalid"][0]["event"],
                false,
                &format!("revId {n}"),
            );
            *sent.invalid.entry("schema_validation").or_default() += 1.0;
        }
    }
    assert_still_serving(&mut sent, &svc).await;
    sent.check(svc.admin).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_unknown_schemas_and_streams_are_errors_counted_without_new_series() {
    let svc = Running::start(config_without_broker(|_| {})).await;
    let mut sent = Sent::default();
    let addr = svc.beacon;
    assert_still_serving(&mut sent, &svc).await;
    let before = series_count(&get(svc.admin, "/metrics", &[]).await.body_text());

    // Schemas that do not exist, or that no request may name.
    for (schema, reason) in [
        ("/no/such/schema/1.0.0", "unknown_schema"),
        ("/test/event/9.9.9", "unknown_schema"),
        ("/../../../../etc/passwd", "unknown_schema"),
        ("/test/event/../../error/2.1.0", "unknown_schema"),
        (
            "https://schema.wikimedia.org/repositories/primary/jsonschema/test/event/1.0.0",
            "absolute_schema_uri",
        ),
        ("file:///etc/passwd", "absolute_schema_uri"),
    ] {
        let mut e = test_event();
        e["$schema"] = json!(schema);
        let r = sent
            .post(addr, &[JSON], &serde_json::to_vec(&e).unwrap())
            .await;
        assert_eq!(r.status, 500, "{schema}: {}", r.body_text());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"][0]["status"], "error", "{schema}");
        // Count under whichever reason beacond gives, but it must be one
        // of the schema reasons.
        let m = Metrics::parse(&get(svc.admin, "/metrics", &[]).await.body_text());
        let got: Vec<&str> = [
            "unknown_schema",
            "malformed_schema_uri",
            "absolute_schema_uri",
        ]
        .into_iter()
        .filter(|r| {
            m.get(&format!("beacond_events_errored_total{{reason=\"{r}\"}}"))
                > sent.errored.get(r).copied().unwrap_or(0.0)
        })
        .collect();
        assert_eq!(got.len(), 1, "{schema}: one schema reason, got {got:?}");
        if reason == "absolute_schema_uri" {
            assert_eq!(got[0], reason, "{schema}");
        }
        *sent.errored.entry(got[0]).or_default() += 1.0;
    }

    // Thousands of distinct $schema values, then of meta.stream values.
    let per_request = 1000;
    for round in 0..3 {
        let events: Vec<Value> = (0..per_request)
            .map(|i| {
                let mut e = test_event();
                e["$schema"] = json!(format!("/flood/r{round}/s{i}/1.0.0"));
                e
            })
            .collect();
        let r = sent
            .post(addr, &[TEXT_PLAIN], &serde_json::to_vec(&events).unwrap())
            .await;
        assert_eq!(r.status, 500);
        *sent.errored.entry("unknown_schema").or_default() += per_request as f64;
        let events: Vec<Value> = (0..per_request)
            .map(|i| {
                let mut e = test_event();
                e["meta"]["stream"] = json!(format!("flood.r{round}.stream{i}"));
                e
            })
            .collect();
        let r = sent
            .post(addr, &[JSON], &serde_json::to_vec(&events).unwrap())
            .await;
        assert_eq!(r.status, 500);
        *sent.errored.entry("unknown_stream").or_default() += per_request as f64;
        // A stream matched by a regex key, under another schema's title.
        let events: Vec<Value> = (0..per_request)
            .map(|i| {
                let mut e = test_event();
                e["meta"]["stream"] = json!(format!("product_metrics.web_base.r{round}x{i}"));
                e
            })
            .collect();
        let r = sent
            .post(addr, &[JSON], &serde_json::to_vec(&events).unwrap())
            .await;
        assert_eq!(r.status, 500);
        *sent.errored.entry("schema_title_mismatch").or_default() += per_request as f64;
    }
    assert_still_serving(&mut sent, &svc).await;
    let text = get(svc.admin, "/metrics", &[]).await.body_text();
    // The route's 500 series is new (the hot ones exist from the start).
    assert!(
        series_count(&text) <= before + 1,
        "no series per client value: {before} -> {}",
        series_count(&text)
    );
    let with_client_values: Vec<&str> = text.lines().filter(|l| l.contains("flood")).collect();
    assert!(
        with_client_values.is_empty(),
        "no client value in a label: {with_client_values:?}"
    );
    sent.check(svc.admin).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_byte_by_byte_past_the_timeout_gets_408() {
    let svc = Running::start(config_without_broker(|c| {
        c.http.header_read_timeout_ms = 1000
    }))
    .await;
    let mut sent = Sent::default();
    let body = serde_json::to_vec(&test_event()).unwrap();
    let s = TcpStream::connect(svc.beacon).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        // One byte every 100 ms: the whole body would take ~7 s.
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, rd.read(&mut chunk))
            .await
            .expect("an answer before the body is complete")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "answered before the body ended"
    );
    writer.abort();
    *sent.statuses.entry(408).or_default() += 1.0;
    *sent.rejected.entry("body_timeout").or_default() += 1.0;
    assert_still_serving(&mut sent, &svc).await;
    sent.check(svc.admin).await;
    svc.stop().await;
}

// ---------------------------------------------------------------------------
// Memory, in a child process of its own (this test process is shared by the
// tests running in parallel, so its RSS says little).

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One round of hostile traffic: floods of unknown schemas and streams,
/// huge invalid events (each an error event for the producer's queue),
/// deep nesting, arrays at the cap.
async fn hostile_round(addr: SocketAddr, round: usize, sent: &mut Sent) {
    let schemas: Vec<Value> = (0..1000)
        .map(|i| {
            let mut e = test_event();
            e["$schema"] = json!(format!("/flood/{round}/{i}/1.0.0"));
            e["meta"]["stream"] = json!(format!("flood.{round}.{i}"));
            e
        })
        .collect();
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&schemas).unwrap())
        .await;
    assert_eq!(r.status, 500);
    *sent.errored.entry("unknown_schema").or_default() += 1000.0;
    let streams: Vec<Value> = (0..1000)
        .map(|i| {
            let mut e = test_event();
            e["meta"]["stream"] = json!(format!("flood.{round}.{i}"));
            e
        })
        .collect();
    let r = sent
        .post(addr, &[JSON], &serde_json::to_vec(&streams).unwrap())
        .await;
    assert_eq!(r.status, 500);
    *sent.errored.entry("unknown_stream").or_default() += 1000.0;
    for _ in 0..4 {
        let mut e = test_event();
        e["meta"]["dt"] = json!("x".repeat(250_000));
        let r = sent
            .post(addr, &[JSON], &serde_json::to_vec(&e).unwrap())
            .await;
        assert_eq!(r.status, 400);
        *sent.invalid.entry("schema_validation").or_default() += 1.0;
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    sent.refused(addr, deep.as_bytes(), 400, "malformed_json")
        .await;
    let empties = format!("[{}]", vec!["{}"; 1000].join(","));
    let r = sent.post(addr, &[JSON], empties.as_bytes()).await;
    assert_eq!(r.status, 400);
    *sent.invalid.entry("missing_schema").or_default() += 1000.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_floods_in_a_child_process() {
    let dir = temp_dir("ev-hostile-child");
    let root = repo_root();
    let schemas = fixture_schema_repositories();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"hostile-host\"\n\
         [kafka]\nbrokers = \"127.0.0.1:9\"\ntopic = \"beacons\"\n\
         [kafka.properties]\n\"queue.buffering.max.kbytes\" = 16384\n\
         [spool]\ndir = \"{}\"\n[shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 0\n\
         [events]\nstream_config = \"{}\"\nschema_repositories = [\"{}\", \"{}\"]\n",
        dir.join("spool").display(),
        root.join("config/dev-streams.yaml").display(),
        schemas[0].display(),
        schemas[1].display(),
    );
    let path = dir.join("beacond.toml");
    std::fs::write(&path, config).unwrap();
    // Killed when dropped.
    let child = ChildBeacond::start(&dir, &path, "beacond.log");
    let pid = child.pid();
    let (beacon, admin) = (child.beacon, child.admin);
    wait_http(admin, "/healthz", false).await;
    let mut sent = Sent::default();

    // Warm up (allocator pools, buffers, the first error events queued),
    // then take the baseline.
    hostile_round(beacon, 0, &mut sent).await;
    let baseline = vm_rss_kib(pid);
    assert!(baseline > 0, "VmRSS of {pid}");
    let rounds = 8;
    let mut peak = baseline;
    for round in 1..=rounds {
        hostile_round(beacon, round, &mut sent).await;
        peak = peak.max(vm_rss_kib(pid));
    }
    // Bounded: the producer's queue is capped at 16 MiB; the rest of what a
    // request holds is freed with it. Allow for allocator slack, polling
    // until the process settles (or the deadline).
    let bound_kib = baseline + 96 * 1024;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = vm_rss_kib(pid);
    while now > bound_kib && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = vm_rss_kib(pid);
    }
    eprintln!(
        "child VmRSS: baseline {} MiB, peak {} MiB, after {} MiB ({rounds} rounds)",
        baseline / 1024,
        peak / 1024,
        now / 1024
    );
    assert!(
        now <= bound_kib,
        "VmRSS {now} KiB over {bound_kib} KiB (baseline {baseline})"
    );
    assert!(
        peak <= baseline + 256 * 1024,
        "peak VmRSS {peak} KiB (baseline {baseline})"
    );
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    sent.check(admin).await;
    drop(child);
}
