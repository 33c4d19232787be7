//! The Event Platform intake (`POST /v1/events`) over real sockets against a
//! real broker (tansu in `scripts/test`, or any Kafka through
//! `BEACOND_TEST_BROKERS`): realistic events built from the real schemas in
//! `tests/fixtures/event-schemas/`, each answered with EventGate's statuses
//! and bodies; valid events on their topics with beacond's fill-ins, invalid
//! ones on the error topic as `/error/2.1.0` events; and an independent
//! validator (boon, `src/crosscheck.rs`) agreeing with beacond's verdict on
//! every event sent.
//!
//! Each test has its own topic prefix (so tests sharing a broker do not see
//! each other's events) and its own service (so metric totals are exact).
//! Tests that need no broker (whole-request refusals, the 503) point the
//! producer at a closed port.

mod common;
#[path = "../src/crosscheck.rs"]
mod crosscheck;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use beacond::config::{Config, PropertyValue};
use common::*;
use crosscheck::BoonOracle;
use serde_json::{json, Value};

const ROUTE: &str = "/v1/events";
const NAV: &str = "/analytics/legacy/navigationtiming/1.6.0";
const SEARCH: &str = "/analytics/legacy/searchsatisfaction/1.5.0";
const TEST_EVENT: &str = "/test/event/1.0.0";
const WEB_BASE: &str = "/analytics/product_metrics/web/base/1.3.0";
const ERROR_SCHEMA: &str = "/error/2.1.0";

const NAV_STREAM: &str = "eventlogging_NavigationTiming";
const SEARCH_STREAM: &str = "eventlogging_SearchSatisfaction";
const TEST_STREAM: &str = "test.event";
/// A Metrics Platform stream matched by the `/regex/` key [`WEB_BASE_KEY`].
const WEB_STREAM: &str = "product_metrics.web_base.search";
const WEB_BASE_KEY: &str = r"/^product_metrics\.web_base(\..+)?$/";
const ERROR_STREAM: &str = "beacond.error.validation";

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const TEXT_PLAIN: (&str, &str) = ("Content-Type", "text/plain;charset=UTF-8");
const JSON: (&str, &str) = ("Content-Type", "application/json");

// ---------------------------------------------------------------------------
// Realistic events. Each carries a unique `meta.domain` (a "marker") so the
// test can find it again on whichever topic beacond sent it to.

fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("m{}.wikipedia.org", N.fetch_add(1, Ordering::Relaxed))
}

/// NavigationTiming 1.6.0 as the NavigationTiming extension sends it through
/// `mw.eventLog.submit`: no `meta.id`, `meta.dt`, `dt` or `http` (beacond's).
fn navigation_timing(domain: &str) -> Value {
    json!({
        "$schema": NAV,
        "meta": {"stream": NAV_STREAM, "domain": domain},
        "client_dt": "2026-05-01T12:00:00.123Z",
        "webHost": domain,
        "wiki": "enwiki",
        "event": {
            "isAnon": true,
            "action": "view",
            "skin": "vector-2022",
            "mediaWikiVersion": "1.45.0-wmf.3",
            "namespaceId": 0,
            "revId": 1_289_876_543,
            "pageviewToken": "3b1a0c5f9e2d4c7b8a61",
            "fetchStart": 2,
            "responseStart": 121,
            "domInteractive": 540,
            "domComplete": 880,
            "loadEventStart": 881,
            "loadEventEnd": 905,
            "firstContentfulPaint": 410,
            "transferSize": 34_567,
            "netinfoEffectiveConnectionType": "4g",
            "deviceMemory": 8,
            "hardwareConcurrency": 16,
            "cumulativeLayoutShift": 0.0125
        }
    })
}

/// SearchSatisfaction 1.5.0 (WikimediaEvents' search instrumentation).
fn search_satisfaction(domain: &str, action: &str) -> Value {
    json!({
        "$schema": SEARCH,
        "meta": {"stream": SEARCH_STREAM, "domain": domain},
        "client_dt": "2026-05-01T12:00:01.000Z",
        "event": {
            "action": action,
            "searchSessionId": "lq8x3mfh2a7k1d0e9s",
            "pageViewId": "a1b2c3d4e5f60718",
            "scroll": false,
            "mwSessionId": "f00dcafe0123456789ab",
            "source": "fulltext",
            "uniqueId": format!("uid-{domain}"),
            "hitsReturned": 20,
            "msToDisplayResults": 312,
            "query": "déjà vu 😀",
            "skin": "vector-2022",
            "isAnon": true,
            "sampleMultiplier": 1.0
        }
    })
}

/// test/event 1.0.0 (`test` has a schema default).
fn test_event(domain: &str) -> Value {
    json!({
        "$schema": TEST_EVENT,
        "meta": {"stream": TEST_STREAM, "domain": domain},
        "test_map": {"key1": "val1"}
    })
}

/// A Metrics Platform web base 1.3.0 event, as its JS submitter sends them
/// (in an array, `dt` set by the client).
fn web_base(domain: &str, action: &str) -> Value {
    json!({
        "$schema": WEB_BASE,
        "meta": {"stream": WEB_STREAM, "domain": domain},
        "dt": "2026-05-01T12:00:02.500Z",
        "action": action,
        "action_source": "search_box",
        "agent": {
            "client_platform": "mediawiki_js",
            "client_platform_family": "desktop_browser",
            "release_status": "prod"
        },
        "mediawiki": {"database": "enwiki", "skin": "vector-2022", "version": "1.45.0-wmf.3"},
        "page": {"id": 15_580_374, "title": "Main_Page", "namespace_id": 0, "revision_id": 1_289_876_543},
        "performer": {
            "is_logged_in": false,
            "pageview_id": "0123456789abcdefghij",
            "session_id": "abcdefghij0123456789"
        },
        "sample": {"rate": 1.0, "unit": "session"}
    })
}

fn with(mut event: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut event;
    for p in &path[..path.len() - 1] {
        at = at.get_mut(*p).expect("path exists");
    }
    at[path[path.len() - 1]] = value;
    event
}

fn without(mut event: Value, path: &[&str]) -> Value {
    let mut at = &mut event;
    for p in &path[..path.len() - 1] {
        at = at.get_mut(*p).expect("path exists");
    }
    at.as_object_mut()
        .expect("object")
        .remove(path[path.len() - 1]);
    event
}

fn domain_of(event: &Value) -> Option<&str> {
    event.get("meta")?.get("domain")?.as_str()
}

fn json_body(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(events).unwrap()
}

fn one(event: &Value) -> Vec<u8> {
    serde_json::to_vec(event).unwrap()
}

// ---------------------------------------------------------------------------
// The test's own book of what it sent and what beacond answered.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accepted,
    Invalid,
    Error,
}

/// Every marked event sent, with the verdict the test expects, and the
/// response statuses sent back; checked against Kafka, the oracle and the
/// metrics at the end.
#[derive(Default)]
struct Book {
    events: BTreeMap<String, (Expect, Value)>,
    /// Invalid events without a marker (not an object, no `meta`).
    unmarked_invalid: usize,
    statuses: HashMap<u16, f64>,
    /// Response items of non-hasty answers, by marker.
    items: HashMap<String, Value>,
}

impl Book {
    fn expect(&mut self, event: &Value, expect: Expect) {
        match domain_of(event) {
            Some(d) => {
                let old = self.events.insert(d.to_owned(), (expect, event.clone()));
                assert!(old.is_none(), "marker {d} used twice");
            }
            None => {
                assert_eq!(expect, Expect::Invalid, "only invalid events go unmarked");
                self.unmarked_invalid += 1;
            }
        }
    }

    /// Posts `events` (each with its expected verdict) and checks the answer
    /// EventGate would give: the status, the reason phrase's counts, the
    /// body's lists.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        svc: &Running,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        events: &[(&Value, Expect)],
        want_status: u16,
    ) -> HttpResponse {
        for (e, x) in events {
            self.expect(e, *x);
        }
        let r = post(svc.beacon, target, headers, body).await;
        *self.statuses.entry(r.status).or_default() += 1.0;
        assert_eq!(
            r.status,
            want_status,
            "{target}: {} {:?}",
            r.body_text(),
            r.headers
        );
        let count = |x: Expect| events.iter().filter(|(_, e)| *e == x).count();
        match want_status {
            201 | 202 => assert!(r.body.is_empty(), "{want_status} has no body"),
            207 | 400 | 500 => {
                assert_eq!(
                    r.header("content-type"),
                    Some("application/json; charset=utf-8")
                );
                let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
                let obj = body.as_object().expect("an object");
                assert_eq!(obj.len(), 2, "only invalid and error: {body}");
                let invalid = body["invalid"].as_array().expect("invalid list");
                let error = body["error"].as_array().expect("error list");
                assert_eq!(invalid.len(), count(Expect::Invalid), "invalid: {body}");
                assert_eq!(error.len(), count(Expect::Error), "error: {body}");
                for (list, status) in [(invalid, "invalid"), (error, "error")] {
                    for item in list {
                        let keys: HashSet<&str> = item
                            .as_object()
                            .unwrap()
                            .keys()
                            .map(String::as_str)
                            .collect();
                        assert_eq!(
                            keys,
                            HashSet::from(["status", "event", "context"]),
                            "{item}"
                        );
                        assert_eq!(item["status"], status);
                        if status == "invalid" {
                            assert!(
                                item["context"]["errors"]
                                    .as_array()
                                    .is_some_and(|e| !e.is_empty()),
                                "{item}"
                            );
                            assert!(
                                item["context"]["errorsText"]
                                    .as_str()
                                    .is_some_and(|t| !t.is_empty()),
                                "{item}"
                            );
                        } else {
                            assert!(
                                item["context"]["message"]
                                    .as_str()
                                    .is_some_and(|t| !t.is_empty()),
                                "{item}"
                            );
                        }
                        if let Some(d) = domain_of(&item["event"]) {
                            let (x, _) = self
                                .events
                                .get(d)
                                .unwrap_or_else(|| panic!("unknown item {item}"));
                            assert_eq!(
                                status,
                                if *x == Expect::Invalid {
                                    "invalid"
                                } else {
                                    "error"
                                },
                                "{item}"
                            );
                            self.items.insert(d.to_owned(), item.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        r
    }

    fn count(&self, x: Expect) -> usize {
        self.events.values().filter(|(e, _)| *e == x).count()
            + if x == Expect::Invalid {
                self.unmarked_invalid
            } else {
                0
            }
    }
}

fn config_with_broker(brokers: &str, prefix: &str) -> Config {
    let mut c = events_config(brokers, prefix);
    c.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    c
}

/// A service whose producer points at a closed port (nothing is ever delivered).
fn config_without_broker(prefix: &str) -> Config {
    let mut c = events_config("127.0.0.1:9", prefix);
    c.shutdown.flush_timeout_seconds = 0;
    c
}

async fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<Value> {
    let (brokers, topic2) = (brokers.to_owned(), topic.to_owned());
    let got = tokio::task::spawn_blocking(move || {
        consume(
            &brokers,
            &topic2,
            expected,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
    })
    .await
    .unwrap();
    assert_eq!(got.len(), expected, "messages on {topic}");
    got.iter()
        .map(|m| {
            assert!(m.key.is_none(), "no partition_key: random partitioning");
            let text = std::str::from_utf8(&m.payload).expect("UTF-8");
            assert!(
                !text.contains('\n') && !text.contains(": "),
                "compact JSON: {text}"
            );
            serde_json::from_str(text).expect("a JSON event")
        })
        .collect()
}

/// `2026-12-01T21:41:46.123Z`, within the test's time.
#[track_caller]
fn assert_receive_time(v: &Value, from: time::OffsetDateTime, to: time::OffsetDateTime) {
    let s = v.as_str().unwrap_or_else(|| panic!("a string: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[23] == b'Z'
            && b[20..23].iter().all(u8::is_ascii_digit),
        "ISO-8601 with milliseconds and Z: {s}"
    );
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let from = from - Duration::from_millis(1);
    assert!(from <= t && t <= to, "{s} within the test");
}

#[track_caller]
fn assert_uuid(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("a string: {v}"));
    let u = uuid::Uuid::parse_str(s).unwrap_or_else(|_| panic!("a UUID: {s}"));
    assert_eq!(u.get_version_num(), 4, "{s}");
    assert_eq!(s.len(), 36, "hyphenated: {s}");
}

/// A Prometheus label value as the text format writes it.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

fn events_total(m: &Metrics, outcome: &str, stream: &str) -> f64 {
    m.get(&format!(
        "beacond_events_total{{outcome=\"{outcome}\",stream=\"{}\"}}",
        esc(stream)
    ))
}

/// The stream-config key beacond counts an event under: its key when the
/// event got as far as the stream lookup, else `unknown`.
fn expected_key(event: &Value, oracle: &BoonOracle) -> &'static str {
    let (Some(schema), Some(stream)) = (
        event.get("$schema").and_then(Value::as_str),
        event
            .get("meta")
            .and_then(|m| m.get("stream"))
            .and_then(Value::as_str),
    ) else {
        return "unknown";
    };
    if oracle.is_valid(schema, event).is_none() {
        return "unknown"; // the schema is resolved before the stream
    }
    match stream {
        NAV_STREAM => NAV_STREAM,
        SEARCH_STREAM => SEARCH_STREAM,
        TEST_STREAM => TEST_STREAM,
        s if s == "product_metrics.web_base" || s.starts_with("product_metrics.web_base.") => {
            WEB_BASE_KEY
        }
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a broker"]
async fn events_reach_their_topics_filled_in_and_boon_agrees_with_every_verdict() {
    let brokers = require_broker();
    let prefix = unique_prefix("ev-e2e");
    let streams = [NAV_STREAM, SEARCH_STREAM, TEST_STREAM, WEB_STREAM];
    create_event_topics(&brokers, &prefix, &streams).await;
    let svc = Running::start(config_with_broker(&brokers, &prefix)).await;
    svc.wait_ready().await;
    let oracle = BoonOracle::fixtures();
    let mut book = Book::default();
    let from = time::OffsetDateTime::now_utc();

    // Proxy headers: the peer (127.0.0.1) is trusted, so the right-most
    // untrusted X-Forwarded-For entry is the client, never the left-most.
    let proxied: &[(&str, &str)] = &[
        ("User-Agent", UA),
        ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
        ("X-Request-Id", "req-e2e-0001"),
    ];
    let h = |ct: (&'static str, &'static str)| -> Vec<(&str, &str)> {
        let mut v = proxied.to_vec();
        v.push(ct);
        v
    };

    // 201: one object as sendBeacon sends it (text/plain;charset=UTF-8).
    let nav = navigation_timing(&marker());
    book.send(
        &svc,
        ROUTE,
        &h(TEXT_PLAIN),
        &one(&nav),
        &[(&nav, Expect::Accepted)],
        201,
    )
    .await;
    // 202: the same, hasty (mw.eventLog's `?hasty=true`): no body.
    let nav_hasty = navigation_timing(&marker());
    let r = book
        .send(
            &svc,
            &format!("{ROUTE}?hasty=true"),
            &h(TEXT_PLAIN),
            &one(&nav_hasty),
            &[(&nav_hasty, Expect::Accepted)],
            202,
        )
        .await;
    assert!(r.header("content-type").is_none());
    // 201: an array as application/json (fetch), with a client `meta.id` and
    // `meta.request_id` that are kept, and a `test` that beats the default.
    let search = search_satisfaction(&marker(), "searchResultPage");
    let search_own_id = with(
        with(
            search_satisfaction(&marker(), "click"),
            &["meta", "id"],
            json!("0d9c0a62-2b1c-4d5e-9f3a-1b2c3d4e5f60"),
        ),
        &["meta", "request_id"],
        json!("client-request-id"),
    );
    let test_plain = test_event(&marker());
    let test_own = with(
        test_event(&marker()),
        &["test"],
        json!("specific test value"),
    );
    let batch = [
        search.clone(),
        search_own_id.clone(),
        test_plain.clone(),
        test_own.clone(),
    ];
    book.send(
        &svc,
        ROUTE,
        &h(JSON),
        &json_body(&batch),
        &batch
            .iter()
            .map(|e| (e, Expect::Accepted))
            .collect::<Vec<_>>(),
        201,
    )
    .await;
    // 202: a Metrics Platform array (text/plain, hasty) on a regex stream.
    let web = [web_base(&marker(), "click"), web_base(&marker(), "init")];
    book.send(
        &svc,
        &format!("{ROUTE}?hasty=true"),
        &h(TEXT_PLAIN),
        &json_body(&web),
        &web.iter()
            .map(|e| (e, Expect::Accepted))
            .collect::<Vec<_>>(),
        202,
    )
    .await;

    // Invalid events, one per rule.
    let nav_no_anon = without(navigation_timing(&marker()), &["event", "isAnon"]);
    let nav_bad_format = with(
        navigation_timing(&marker()),
        &["client_dt"],
        json!("yesterday"),
    );
    let nav_negative = with(
        navigation_timing(&marker()),
        &["event", "responseStart"],
        json!(-5),
    );
    let search_bad_enum = with(
        search_satisfaction(&marker(), "click"),
        &["event", "source"],
        json!("voice"),
    );
    let web_extra = with(
        web_base(&marker(), "click"),
        &["agent", "os"],
        json!("Linux"),
    );
    let web_pattern = with(
        web_base(&marker(), "click"),
        &["performer", "session_id"],
        json!("NOT-VALID"),
    );
    let test_bad_map = with(test_event(&marker()), &["test_map", "key2"], json!(7));
    let no_schema = without(navigation_timing(&marker()), &["$schema"]);
    let no_stream = without(navigation_timing(&marker()), &["meta", "stream"]);
    let stream_number = with(navigation_timing(&marker()), &["meta", "stream"], json!(42));
    let not_object = json!(42);
    let no_meta = without(navigation_timing(&marker()), &["meta"]);
    // Errors: the stream, the title, the schema.
    let unknown_stream = with(
        navigation_timing(&marker()),
        &["meta", "stream"],
        json!("eventlogging_NoSuchStream"),
    );
    let title_mismatch = with(
        navigation_timing(&marker()),
        &["meta", "stream"],
        json!(SEARCH_STREAM),
    );
    let unknown_schema = with(
        navigation_timing(&marker()),
        &["$schema"],
        json!("/analytics/legacy/navigationtiming/9.9.9"),
    );
    let unknown_title = with(
        test_event(&marker()),
        &["$schema"],
        json!("/no/such/schema/1.0.0"),
    );

    // 207: mixed.
    let ok1 = navigation_timing(&marker());
    let ok2 = web_base(&marker(), "hover");
    let mixed = [
        ok1.clone(),
        nav_no_anon.clone(),
        ok2.clone(),
        unknown_stream.clone(),
        web_extra.clone(),
        not_object.clone(),
    ];
    book.send(
        &svc,
        ROUTE,
        &h(JSON),
        &json_body(&mixed),
        &[
            (&ok1, Expect::Accepted),
            (&nav_no_anon, Expect::Invalid),
            (&ok2, Expect::Accepted),
            (&unknown_stream, Expect::Error),
            (&web_extra, Expect::Invalid),
            (&not_object, Expect::Invalid),
        ],
        207,
    )
    .await;
    // 400: all invalid.
    let all_invalid = [
        nav_bad_format.clone(),
        nav_negative.clone(),
        search_bad_enum.clone(),
        web_pattern.clone(),
        test_bad_map.clone(),
        no_schema.clone(),
        no_stream.clone(),
        stream_number.clone(),
        no_meta.clone(),
    ];
    book.send(
        &svc,
        ROUTE,
        &h(TEXT_PLAIN),
        &json_body(&all_invalid),
        &all_invalid
            .iter()
            .map(|e| (e, Expect::Invalid))
            .collect::<Vec<_>>(),
        400,
    )
    .await;
    // 400: one invalid object.
    let single_invalid = with(
        test_event(&marker()),
        &["meta", "uri"],
        json!("http://[bad"),
    );
    book.send(
        &svc,
        ROUTE,
        &h(JSON),
        &one(&single_invalid),
        &[(&single_invalid, Expect::Invalid)],
        400,
    )
    .await;
    // 500: none accepted, some errored (with and without invalid ones).
    let errors = [title_mismatch.clone(), unknown_schema.clone()];
    book.send(
        &svc,
        ROUTE,
        &h(JSON),
        &json_body(&errors),
        &errors
            .iter()
            .map(|e| (e, Expect::Error))
            .collect::<Vec<_>>(),
        500,
    )
    .await;
    let invalid_and_error = with(test_event(&marker()), &["meta", "dt"], json!("not a date"));
    book.send(
        &svc,
        ROUTE,
        &h(JSON),
        &json_body(&[unknown_title.clone(), invalid_and_error.clone()]),
        &[
            (&unknown_title, Expect::Error),
            (&invalid_and_error, Expect::Invalid),
        ],
        500,
    )
    .await;
    // Hasty with invalid and error events: still 202, and counted.
    let hasty_invalid = with(
        search_satisfaction(&marker(), "nope"),
        &["client_dt"],
        json!(""),
    );
    let hasty_error = with(
        test_event(&marker()),
        &["meta", "stream"],
        json!("no.such.stream"),
    );
    let hasty_ok = test_event(&marker());
    book.send(
        &svc,
        &format!("{ROUTE}?hasty=true"),
        &h(TEXT_PLAIN),
        &json_body(&[hasty_invalid.clone(), hasty_error.clone(), hasty_ok.clone()]),
        &[
            (&hasty_invalid, Expect::Invalid),
            (&hasty_error, Expect::Error),
            (&hasty_ok, Expect::Accepted),
        ],
        202,
    )
    .await;
    let to = time::OffsetDateTime::now_utc();

    // --- Kafka: the accepted events on their topics, filled in. -----------
    let mut produced: HashMap<String, (String, Value)> = HashMap::new();
    for stream in streams {
        let want = book
            .events
            .values()
            .filter(|(x, e)| *x == Expect::Accepted && e["meta"]["stream"] == stream)
            .count();
        for e in read_topic(&brokers, &format!("{prefix}{stream}"), want).await {
            assert_eq!(e["meta"]["stream"], stream);
            let d = domain_of(&e).expect("marker kept").to_owned();
            assert!(
                produced.insert(d.clone(), (stream.to_owned(), e)).is_none(),
                "{d} twice"
            );
        }
    }
    for (d, (x, sent)) in &book.events {
        if *x != Expect::Accepted {
            assert!(
                !produced.contains_key(d),
                "{d} ({x:?}) must not be produced"
            );
            continue;
        }
        let (_, got) = produced
            .get(d)
            .unwrap_or_else(|| panic!("accepted {d} not on its topic"));
        // The oracle: what beacond produced is valid against its schema.
        oracle.assert_agrees(
            sent["$schema"].as_str().unwrap(),
            got,
            true,
            &format!("accepted {d}"),
        );
        // Fill-ins: meta.id (kept when sent), meta.dt (receive time).
        match sent["meta"].get("id") {
            Some(id) => assert_eq!(&got["meta"]["id"], id, "a client's meta.id is kept"),
            None => assert_uuid(&got["meta"]["id"]),
        }
        assert_receive_time(&got["meta"]["dt"], from, to);
        let schema = sent["$schema"].as_str().unwrap();
        let legacy = schema.starts_with("/analytics/legacy/");
        // dt: analytics/legacy/* only, the same receive time.
        if legacy {
            assert_eq!(got["dt"], got["meta"]["dt"], "{d}: dt is the receive time");
        } else {
            assert_eq!(
                got.get("dt"),
                sent.get("dt"),
                "{d}: dt only for legacy schemas"
            );
        }
        // meta.request_id from X-Request-Id unless the client set one.
        let want_rid = sent["meta"]
            .get("request_id")
            .cloned()
            .unwrap_or(json!("req-e2e-0001"));
        assert_eq!(got["meta"]["request_id"], want_rid, "{d}");
        // http: user agent where the schema has request_headers, client_ip
        // where it has client_ip (NavigationTiming, SearchSatisfaction; not
        // web base), from the trusted-proxy rule.
        match schema {
            NAV | SEARCH => {
                assert_eq!(
                    got["http"]["client_ip"], "203.0.113.9",
                    "{d}: never the left-most XFF"
                );
                assert_eq!(got["http"]["request_headers"]["user-agent"], UA);
            }
            WEB_BASE => {
                assert!(
                    got["http"].get("client_ip").is_none(),
                    "{d}: web base has no client_ip"
                );
                assert_eq!(got["http"]["request_headers"]["user-agent"], UA);
            }
            TEST_EVENT => {
                assert!(got.get("http").is_none(), "{d}: test/event has no http");
                let want = sent.get("test").cloned().unwrap_or(json!("default value"));
                assert_eq!(
                    got["test"], want,
                    "{d}: the schema default, or the client's"
                );
            }
            other => panic!("unexpected schema {other}"),
        }
        // Nothing else changed.
        let mut stripped = got.clone();
        let m = stripped["meta"].as_object_mut().unwrap();
        for k in ["id", "dt", "request_id"] {
            if sent["meta"].get(k).is_none() {
                m.remove(k);
            }
        }
        let o = stripped.as_object_mut().unwrap();
        if sent.get("http").is_none() {
            o.remove("http");
        }
        if sent.get("dt").is_none() {
            o.remove("dt");
        }
        if sent.get("test").is_none() && schema == TEST_EVENT {
            o.remove("test");
        }
        assert_eq!(&stripped, sent, "{d}: only the fill-ins were added");
    }

    // --- The error topic: one /error/2.1.0 event per invalid event. -------
    let invalid_count = book.count(Expect::Invalid);
    let error_events =
        read_topic(&brokers, &format!("{prefix}{ERROR_STREAM}"), invalid_count).await;
    let mut seen_invalid = HashSet::new();
    for ee in &error_events {
        oracle.assert_agrees(ERROR_SCHEMA, ee, true, "error event");
        assert_eq!(ee["$schema"], ERROR_SCHEMA);
        assert_eq!(ee["meta"]["stream"], ERROR_STREAM);
        assert_uuid(&ee["meta"]["id"]);
        assert_receive_time(&ee["meta"]["dt"], from, to);
        assert_receive_time(&ee["dt"], from, to);
        assert_eq!(
            ee["emitter_id"], "beacond/test-host",
            "service_name/hostname"
        );
        assert!(
            ee["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{ee}"
        );
        let raw: Value =
            serde_json::from_str(ee["raw_event"].as_str().unwrap()).expect("raw_event is JSON");
        let want_uri = raw
            .get("$schema")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        assert_eq!(ee["errored_schema_uri"], want_uri, "{ee}");
        let want_stream = raw
            .get("meta")
            .and_then(|m| m.get("stream"))
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        assert_eq!(ee["errored_stream_name"], want_stream, "{ee}");
        let Some(d) = domain_of(&raw) else {
            continue; // not an object, or no meta
        };
        assert_eq!(ee["meta"]["domain"], d, "the event's meta.domain");
        let (x, sent) = book
            .events
            .get(d)
            .unwrap_or_else(|| panic!("error event for unknown {d}"));
        assert_eq!(*x, Expect::Invalid, "{d} got an error event");
        assert!(seen_invalid.insert(d.to_owned()), "{d}: one error event");
        assert_eq!(raw["meta"]["stream"], sent["meta"]["stream"]);
        assert_eq!(raw["event"], sent["event"]);
        // The oracle on the invalid event, as beacond judged it (fill-ins in).
        if let Some(schema) = raw.get("$schema").and_then(Value::as_str) {
            if raw["meta"]["stream"].is_string() {
                assert_eq!(
                    sent["meta"]["request_id"]
                        .as_str()
                        .unwrap_or("req-e2e-0001"),
                    raw["meta"]["request_id"]
                );
            }
            oracle.assert_agrees(schema, &raw, false, &format!("invalid {d}"));
        }
        // And the response item (non-hasty) carries the same event.
        if let Some(item) = book.items.get(d) {
            if let Some(schema) = item["event"].get("$schema").and_then(Value::as_str) {
                oracle.assert_agrees(schema, &item["event"], false, &format!("invalid item {d}"));
            }
            assert!(ee["message"]
                .as_str()
                .unwrap()
                .contains(item["context"]["errorsText"].as_str().unwrap()));
        }
    }
    for (d, (x, sent)) in &book.events {
        match x {
            Expect::Invalid => assert!(seen_invalid.contains(d), "invalid {d} has no error event"),
            Expect::Error => {
                // Errors: no error event; the oracle knows the schema exactly
                // when beacond found it.
                assert!(!seen_invalid.contains(d));
                let schema = sent["$schema"].as_str().unwrap();
                let known = oracle.is_valid(schema, sent).is_some();
                let unknown_schema_error = [&unknown_schema, &unknown_title]
                    .iter()
                    .any(|e| domain_of(e) == Some(d));
                assert_eq!(known, !unknown_schema_error, "{d}: schema {schema}");
            }
            Expect::Accepted => {}
        }
    }

    // --- Metrics: what was sent, by stream-config key and reason. ---------
    let m = svc.metrics().await;
    let by_key = |x: Expect, key: &str| -> f64 {
        let marked = book
            .events
            .values()
            .filter(|(e, ev)| *e == x && expected_key(ev, &oracle) == key)
            .count();
        let unmarked = if x == Expect::Invalid && key == "unknown" {
            book.unmarked_invalid
        } else {
            0
        };
        (marked + unmarked) as f64
    };
    for key in [
        NAV_STREAM,
        SEARCH_STREAM,
        TEST_STREAM,
        WEB_BASE_KEY,
        "unknown",
    ] {
        for (x, outcome) in [
            (Expect::Accepted, "accepted"),
            (Expect::Invalid, "invalid"),
            (Expect::Error, "error"),
        ] {
            assert_eq!(
                events_total(&m, outcome, key),
                by_key(x, key),
                "events_total {outcome} {key}"
            );
        }
    }
    // librdkafka's per-topic statistics name the topics produced to: topics
    // the cluster has (the sink refuses others), at most kafka_stats's cap;
    // no label elsewhere comes from a client's stream name.
    assert!(
        !m.0.keys()
            .filter(|k| !k.starts_with("beacond_kafka_topic_"))
            .any(|k| k.contains(WEB_STREAM) || k.contains("NoSuchStream")),
        "no client stream name in a label"
    );
    assert!(!m.0.keys().any(|k| k.contains("NoSuchStream")));
    let total_events = |outcome: &str| m.sum("beacond_events_total", &[("outcome", outcome)]);
    assert_eq!(
        total_events("accepted"),
        book.count(Expect::Accepted) as f64
    );
    assert_eq!(total_events("invalid"), book.count(Expect::Invalid) as f64);
    assert_eq!(total_events("error"), book.count(Expect::Error) as f64);
    let invalid = |r: &str| m.get(&format!("beacond_events_invalid_total{{reason=\"{r}\"}}"));
    assert_eq!(invalid("not_an_object"), 1.0);
    assert_eq!(invalid("missing_schema"), 1.0);
    assert_eq!(
        invalid("missing_stream"),
        3.0,
        "no stream, a number, no meta"
    );
    assert_eq!(
        invalid("schema_validation"),
        (book.count(Expect::Invalid) - 5) as f64
    );
    let errored = |r: &str| m.get(&format!("beacond_events_errored_total{{reason=\"{r}\"}}"));
    assert_eq!(errored("unknown_stream"), 2.0);
    assert_eq!(errored("schema_title_mismatch"), 1.0);
    assert_eq!(errored("unknown_schema"), 2.0);
    assert_eq!(
        m.sum("beacond_events_errored_total", &[]),
        book.count(Expect::Error) as f64
    );
    assert_eq!(m.sum("beacond_event_requests_rejected_total", &[]), 0.0);
    for (status, n) in &book.statuses {
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
        book.statuses.values().sum::<f64>()
    );
    svc.stop().await;
}

/// A service with the events intake and no broker: for the answers that do
/// not depend on Kafka.
async fn start_without_broker(prefix: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut c = config_without_broker(prefix);
    tweak(&mut c);
    Running::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_refusals_get_their_status_and_are_counted_by_reason() {
    let prefix = unique_prefix("ev-refusals");
    let svc = start_without_broker(&prefix, |c| {
        c.events.max_body_bytes = 4096;
        c.events.max_events_per_request = 3;
        c.events.cors_allowed_origins = vec!["https://en.wikipedia.org".into()];
    })
    .await;
    let nav = navigation_timing(&marker());
    let four: Vec<Value> = (0..4).map(|_| test_event(&marker())).collect();
    let big = with(test_event(&marker()), &["test"], json!("x".repeat(4096)));
    // (content type, body, status, reason)
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (Some("application/json"), b"".to_vec(), 400, "empty_body"),
        (
            Some("text/plain;charset=UTF-8"),
            b" \r\n\t".to_vec(),
            400,
            "empty_body",
        ),
        (
            Some("application/json"),
            b"{\"$schema\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            Some("application/json"),
            b"{}{}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            Some("text/plain"),
            b"\"an event\"".to_vec(),
            400,
            "not_object_or_array",
        ),
        (
            Some("application/json"),
            b"42".to_vec(),
            400,
            "not_object_or_array",
        ),
        (
            Some("application/json"),
            b"null".to_vec(),
            400,
            "not_object_or_array",
        ),
        (Some("application/json"), b"[]".to_vec(), 400, "empty_array"),
        (Some("application/json"), one(&big), 413, "body_too_large"),
        (
            Some("application/json"),
            json_body(&four),
            413,
            "too_many_events",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            one(&nav),
            415,
            "unsupported_content_type",
        ),
        (
            Some("multipart/form-data; boundary=x"),
            one(&nav),
            415,
            "unsupported_content_type",
        ),
        (None, one(&nav), 415, "unsupported_content_type"),
    ];
    let mut want_reason: HashMap<&str, f64> = HashMap::new();
    let mut want_status: HashMap<u16, f64> = HashMap::new();
    for (ct, body, status, reason) in &cases {
        let headers: Vec<(&str, &str)> = ct.iter().map(|c| ("Content-Type", *c)).collect();
        let r = post(svc.beacon, ROUTE, &headers, body).await;
        assert_eq!(r.status, *status, "{reason}: {}", r.body_text());
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{reason}"
        );
        let text = r.body_text();
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{reason}: {text:?}"
        );
        *want_reason.entry(reason).or_default() += 1.0;
        *want_status.entry(*status).or_default() += 1.0;
    }
    // At the event cap: processed (no topic list from the broker yet, so the
    // topics count as existing and the events wait in the producer's queue).
    let three: Vec<Value> = (0..3).map(|_| test_event(&marker())).collect();
    let r = post(svc.beacon, ROUTE, &[JSON], &json_body(&three)).await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    *want_status.entry(201).or_default() += 1.0;

    // 405 with Allow, for every other method.
    for method in ["GET", "PUT", "DELETE", "PATCH", "HEAD"] {
        let r = request(svc.beacon, method, ROUTE, &[]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("POST, OPTIONS"), "{method}");
        *want_status.entry(405).or_default() += 1.0;
    }
    // A preflight from an allowed origin, and from another.
    let preflight = |origin: &'static str| {
        let addr = svc.beacon;
        async move {
            request(
                addr,
                "OPTIONS",
                ROUTE,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                    ("Access-Control-Request-Headers", "content-type"),
                ],
            )
            .await
        }
    };
    let r = preflight("https://en.wikipedia.org").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://en.wikipedia.org")
    );
    assert_eq!(r.header("vary"), Some("origin"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    let allowed = r.header("access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.split(',').any(|h| h.trim() == "content-type"),
        "{allowed}"
    );
    assert!(r.header("access-control-max-age").is_some());
    let r = preflight("https://evil.example").await;
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );
    *want_status.entry(204).or_default() += 2.0;
    // The POST itself carries the CORS header for an allowed origin.
    let r = post(
        svc.beacon,
        &format!("{ROUTE}?hasty=true"),
        &[TEXT_PLAIN, ("Origin", "https://en.wikipedia.org")],
        &one(&test_event(&marker())),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://en.wikipedia.org")
    );
    *want_status.entry(202).or_default() += 1.0;
    // Another path is not the events route.
    assert_eq!(
        post(svc.beacon, "/v1/events/x", &[JSON], b"{}")
            .await
            .status,
        404
    );

    let m = svc.metrics().await;
    for (reason, n) in &want_reason {
        assert_eq!(
            m.get(&format!(
                "beacond_event_requests_rejected_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "{reason}"
        );
    }
    assert_eq!(
        m.sum("beacond_event_requests_rejected_total", &[]),
        cases.len() as f64
    );
    assert_eq!(
        m.get("beacond_event_requests_rejected_total{reason=\"body_timeout\"}"),
        0.0
    );
    for (status, n) in &want_status {
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
        want_status.values().sum::<f64>()
    );
    assert_eq!(
        m.get("beacond_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    // Refused requests never reach the per-event counters.
    assert_eq!(
        m.sum("beacond_events_total", &[("outcome", "accepted")]),
        4.0
    );
    assert_eq!(
        m.sum("beacond_events_total", &[("outcome", "invalid")]),
        0.0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn without_trusted_proxies_the_peer_is_the_client_and_no_cors_headers() {
    let brokers = require_broker();
    let prefix = unique_prefix("ev-untrusted");
    create_event_topics(&brokers, &prefix, &[NAV_STREAM]).await;
    // events_config: no trusted proxies, no CORS origins.
    let svc = Running::start(events_config(&brokers, &prefix)).await;
    svc.wait_ready().await;
    let oracle = BoonOracle::fixtures();
    let nav = navigation_timing(&marker());
    let r = post(
        svc.beacon,
        ROUTE,
        &[
            TEXT_PLAIN,
            ("User-Agent", UA),
            ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
            ("Origin", "https://en.wikipedia.org"),
        ],
        &one(&nav),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(r.header("access-control-allow-origin").is_none());
    let r = request(
        svc.beacon,
        "OPTIONS",
        ROUTE,
        &[
            ("Origin", "https://en.wikipedia.org"),
            ("Access-Control-Request-Method", "POST"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    for h in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
    ] {
        assert!(r.header(h).is_none(), "{h} without cors_allowed_origins");
    }
    let got = read_topic(&brokers, &format!("{prefix}{NAV_STREAM}"), 1).await;
    oracle.assert_agrees(NAV, &got[0], true, "accepted");
    assert_eq!(
        got[0]["http"]["client_ip"], "127.0.0.1",
        "the peer: X-Forwarded-For is not trusted"
    );
    assert_eq!(got[0]["http"]["request_headers"]["user-agent"], UA);
    assert!(
        got[0]["meta"].get("request_id").is_none(),
        "no X-Request-Id: none filled in"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_sink_cannot_take_are_answered_503_with_retry_after() {
    let prefix = unique_prefix("ev-503");
    // No spool, a producer queue of 2 messages, and a broker that never
    // answers: the third event has nowhere to go.
    let svc = start_without_broker(&prefix, |c| {
        c.spool.enabled = false;
        c.kafka.properties.insert(
            "queue.buffering.max.messages".into(),
            PropertyValue::Text("2".into()),
        );
    })
    .await;
    let oracle = BoonOracle::fixtures();
    let events: Vec<Value> = (0..2).map(|_| test_event(&marker())).collect();
    for e in &events {
        // Each is valid: the oracle agrees with the 201.
        let mut filled = e.clone();
        filled["meta"]["dt"] = json!("2026-05-01T00:00:00.000Z");
        oracle.assert_agrees(TEST_EVENT, &filled, true, "queued");
    }
    let r = post(svc.beacon, ROUTE, &[JSON], &json_body(&events)).await;
    assert_eq!(r.status, 201, "{}", r.body_text());
    let mut refused = 0.0;
    for target in [ROUTE.to_owned(), format!("{ROUTE}?hasty=true")] {
        let r = post(
            svc.beacon,
            &target,
            &[TEXT_PLAIN],
            &one(&test_event(&marker())),
        )
        .await;
        assert_eq!(r.status, 503, "{target}: {}", r.body_text());
        assert_eq!(r.header("retry-after"), Some("1"), "{target}");
        refused += 1.0;
    }
    // Invalid events still get their answer: nothing of theirs needs the queue
    // (their error event is counted as refused instead).
    let invalid = with(test_event(&marker()), &["meta", "dt"], json!("later"));
    let r = post(svc.beacon, ROUTE, &[JSON], &one(&invalid)).await;
    assert_eq!(r.status, 400, "{}", r.body_text());
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_events_refused_total{reason=\"producer_queue_full\"}"),
        refused
    );
    assert_eq!(m.get("beacond_event_error_events_refused_total"), 1.0);
    assert_eq!(
        m.get(&format!(
            "beacond_requests_total{{route=\"{ROUTE}\",status=\"503\"}}"
        )),
        refused
    );
    assert_eq!(events_total(&m, "accepted", TEST_STREAM), 2.0);
    assert_eq!(events_total(&m, "invalid", TEST_STREAM), 1.0);
    // /readyz tells the load balancer too.
    assert_eq!(get(svc.admin, "/readyz", &[]).await.status, 503);
    svc.stop().await;
}

/// A valid event for a stream whose topic the cluster lacks (once the
/// sink's topic list is known) is an *error* item (500), counted as
/// `unknown_topic`, never a 2xx: accepting it would only lose it later.
/// Until the probe thread has fetched the list, such events are accepted
/// (and spooled if need be); so each try names a stream of its own (the
/// regex key `product_metrics.web_base.*`) whose topic nobody created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn a_valid_event_for_a_topic_the_cluster_lacks_is_an_error_item() {
    let brokers = require_broker();
    let prefix = unique_prefix("ev-notopic");
    create_event_topics(&brokers, &prefix, &[]).await;
    let svc = Running::start(config_with_broker(&brokers, &prefix)).await;
    let headers = [("Content-Type", "application/json")];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let stream = format!("{WEB_STREAM}.missing{tries}");
        let event = with(
            web_base("en.wikipedia.org", "click"),
            &["meta", "stream"],
            json!(stream),
        );
        let r = post(svc.beacon, "/v1/events", &headers, &one(&event)).await;
        if r.status == 500 {
            break serde_json::from_slice::<Value>(&r.body).unwrap();
        }
        assert_eq!(r.status, 201, "{}", r.body_text());
        assert!(
            std::time::Instant::now() < deadline,
            "never refused for its topic"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["error"].as_array().map(Vec::len), Some(1), "{body}");
    let message = body["error"][0]["context"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("does not exist"), "{body}");
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_events_errored_total{reason=\"unknown_topic\"}"),
        1.0
    );
    svc.stop().await;
}
