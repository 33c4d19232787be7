//! The legacy bridge (`output.format = ["varnishkafka", "event_platform"]`)
//! over real sockets against a real broker (tansu in `scripts/test`, or any
//! Kafka through `BEACOND_TEST_BROKERS`): one beacon written both ways, the
//! varnishkafka line on `kafka.topic` and the converted event on its
//! `eventlogging_<Schema>` stream's topic, valid for an independent validator
//! (boon, `src/crosscheck.rs`), with the uuid the EventLogging processor
//! computes from the line; an invalid legacy event answered 204 and found on
//! the error stream; with the converted event only, an unknown schema and a
//! converted event that errors are 400s.

mod common;
#[path = "../src/crosscheck.rs"]
mod crosscheck;

use std::time::Duration;

use beacond::config::Config;
use beacond::format::{OutputFormat, OutputFormats};
use beacond::testing::{encode_uri_component, rawurlencode};
use common::*;
use crosscheck::BoonOracle;
use serde_json::{json, Value};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const NAV_STREAM: &str = "eventlogging_NavigationTiming";
const PINGBACK_STREAM: &str = "eventlogging_MediaWikiPingback";
const ERROR_STREAM: &str = "beacond.error.validation";

fn bridge_config(brokers: &str, prefix: &str, formats: Vec<OutputFormat>) -> Config {
    let mut c = events_config(brokers, prefix);
    c.output.format = OutputFormats::new(formats);
    c.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    c.events
        .legacy_schema_versions
        .insert("MediaWikiPingback".into(), "1.0.0".into());
    c
}

/// As `ext.eventLogging` sends it.
fn js_query(capsule: &Value) -> String {
    format!(
        "{};",
        encode_uri_component(&serde_json::to_string(capsule).unwrap())
    )
}

/// As MediaWiki's pingback (PHP) sends it.
fn php_query(capsule: &Value) -> String {
    rawurlencode(
        &serde_json::to_string(capsule)
            .unwrap()
            .replace(' ', "\\u0020"),
    )
}

fn navigation_timing() -> Value {
    json!({
        "schema": "NavigationTiming",
        "revision": -1,
        "wiki": "enwiki",
        "webHost": "en.wikipedia.org",
        "event": {"isAnon": true, "action": "view", "responseStart": 215}
    })
}

fn pingback(arch: u32) -> Value {
    json!({
        "schema": "MediaWikiPingback",
        "revision": 15781718,
        "wiki": "d2a5b6c1e0f9",
        "webHost": "wiki.example.org",
        "event": {
            "database": "mysql", "MediaWiki": "1.42.1", "PHP": "8.2.7",
            "OS": "Linux 6.1.0", "arch": arch, "machine": "x86_64"
        }
    })
}

fn proxied() -> Vec<(&'static str, &'static str)> {
    vec![
        ("User-Agent", UA),
        ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
        ("X-Request-Id", "req-legacy-0001"),
    ]
}

fn read(brokers: &str, topic: &str, expected: usize) -> Vec<Value> {
    consume(
        brokers,
        topic,
        expected,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .into_iter()
    .map(|m| serde_json::from_slice(&m.payload).expect("JSON message"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a broker"]
async fn one_beacon_written_both_ways_and_an_invalid_one_on_the_error_stream() {
    let brokers = require_broker();
    let prefix = unique_prefix("legacy-bridge");
    create_event_topics(&brokers, &prefix, &[NAV_STREAM, PINGBACK_STREAM]).await;
    let config = bridge_config(
        &brokers,
        &prefix,
        vec![OutputFormat::Varnishkafka, OutputFormat::EventPlatform],
    );
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let nav_query = js_query(&navigation_timing());
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{nav_query}"),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body_text());
    // sendBeacon-style POST of a PHP-encoded pingback, valid for 1.0.0 (the map).
    let r = request(
        svc.beacon,
        "POST",
        &format!("/beacon/event?{}", php_query(&pingback(64))),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 204);
    // Invalid (arch must be 32 or 64): still 204, to the error stream.
    let r = request(
        svc.beacon,
        "POST",
        &format!("/beacon/event?{}", php_query(&pingback(16))),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 204);
    // No version anywhere: with the line on, written as a line only.
    let unknown = json!({"schema": "NoSuchSchema", "revision": 1, "event": {}});
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{}", js_query(&unknown)),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 204);

    // The lines, exactly as before: four beacons, four lines.
    let lines = consume(
        &brokers,
        &format!("{prefix}beacons"),
        4,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    assert_eq!(lines.len(), 4);
    let nav_line = lines
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .find(|l| l.starts_with(&format!("?{nav_query}\t")))
        .expect("the navigation timing line");
    let fields: Vec<&str> = nav_line.split('\t').collect();
    assert_eq!(fields.len(), 6, "{nav_line}");
    let (host, seq, dt, ip) = (fields[1], fields[2], fields[3], fields[4]);
    assert_eq!(host, "test-host");
    assert_eq!(ip, "203.0.113.9");
    assert_eq!(fields[5], format!("\"{UA}\""));

    // The converted event, on its stream's topic, valid for boon.
    let oracle = BoonOracle::fixtures();
    let navs = read(&brokers, &format!("{prefix}{NAV_STREAM}"), 1);
    assert_eq!(navs.len(), 1, "{navs:?}");
    let nav = &navs[0];
    let schema = nav["$schema"].as_str().unwrap();
    assert_eq!(schema, "/analytics/legacy/navigationtiming/1.7.0");
    oracle.assert_agrees(schema, nav, true, "converted navigation timing");
    assert_eq!(nav["meta"]["stream"], NAV_STREAM);
    assert_eq!(nav["recvFrom"], host);
    assert_eq!(nav["seqId"].to_string(), seq);
    let event_dt = nav["dt"].as_str().unwrap();
    assert!(
        event_dt.starts_with(&format!("{dt}.")) && event_dt.ends_with('Z') && event_dt.len() == 24,
        "{event_dt} vs {dt}"
    );
    assert_eq!(nav["client_dt"], nav["dt"]);
    assert_eq!(nav["http"]["client_ip"], "203.0.113.9");
    // EventGate's fill-ins, as for POST /v1/events.
    assert_eq!(nav["meta"]["request_id"], "req-legacy-0001");
    assert!(nav["meta"]["id"].is_string() && nav["meta"]["dt"].is_string());
    assert_eq!(nav["http"]["request_headers"]["user-agent"], UA);
    assert_eq!(nav["event"], navigation_timing()["event"]);
    assert_eq!(nav["webHost"], "en.wikipedia.org");
    // The processor's uuid, from the line: '%032x' % uuid5(NAMESPACE_URL, ...).
    let name = format!("event://{host}/?seqId={seq}&dt={dt}Z");
    let want = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes());
    assert_eq!(nav["uuid"], want.simple().to_string());
    assert_eq!(nav["uuid"].as_str().unwrap().len(), 32);

    let pings = read(&brokers, &format!("{prefix}{PINGBACK_STREAM}"), 1);
    assert_eq!(pings.len(), 1, "only the valid pingback: {pings:?}");
    assert_eq!(
        pings[0]["$schema"],
        "/analytics/legacy/mediawikipingback/1.0.0"
    );
    oracle.assert_agrees(
        "/analytics/legacy/mediawikipingback/1.0.0",
        &pings[0],
        true,
        "converted pingback",
    );

    let errors = read(&brokers, &format!("{prefix}{ERROR_STREAM}"), 1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    oracle.assert_agrees("/error/2.1.0", error, true, "error event");
    assert_eq!(error["errored_stream_name"], PINGBACK_STREAM);
    assert_eq!(
        error["errored_schema_uri"],
        "/analytics/legacy/mediawikipingback/1.0.0"
    );
    let raw: Value = serde_json::from_str(error["raw_event"].as_str().unwrap()).unwrap();
    assert_eq!(raw["event"]["arch"], 16);

    let m = svc.metrics().await;
    let converted =
        |outcome: &str| m.sum("beacond_beacons_converted_total", &[("outcome", outcome)]);
    assert_eq!(converted("accepted"), 2.0);
    assert_eq!(converted("invalid"), 1.0);
    assert_eq!(converted("unknown_schema"), 1.0);
    assert_eq!(converted("errored"), 0.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn with_the_converted_event_only_unknown_and_errored_are_400s_and_no_line_is_written() {
    let brokers = require_broker();
    let prefix = unique_prefix("legacy-only");
    create_event_topics(&brokers, &prefix, &[NAV_STREAM]).await;
    let mut config = bridge_config(&brokers, &prefix, vec![OutputFormat::EventPlatform]);
    // A version the repository lacks: the converted event errors (unknown schema).
    config
        .events
        .legacy_schema_versions
        .insert("VirtualPageView".into(), "9.9.9".into());
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    let unknown = json!({"schema": "NoSuchSchema", "revision": 1, "event": {}});
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{}", js_query(&unknown)),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body_text(), "unknown legacy schema\n");
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{}", js_query(&navigation_timing())),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 204);
    let errored = json!({"schema": "VirtualPageView", "revision": -1, "event": {}});
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{}", js_query(&errored)),
        &proxied(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body_text(), "event not accepted\n");
    let navs = read(&brokers, &format!("{prefix}{NAV_STREAM}"), 1);
    assert_eq!(navs.len(), 1);
    // The first accepted beacon got sequence number 0: the refused one none.
    assert_eq!(navs[0]["seqId"], 0);
    let lines = consume(
        &brokers,
        &format!("{prefix}beacons"),
        1,
        Duration::from_secs(2),
        Duration::ZERO,
    );
    assert!(lines.is_empty(), "no line with the line format off");
    let m = svc.metrics().await;
    assert_eq!(
        m.sum(
            "beacond_beacons_rejected_total",
            &[("reason", "unknown_legacy_schema")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "beacond_beacons_rejected_total",
            &[("reason", "legacy_event_errored")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "beacond_events_errored_total",
            &[("reason", "unknown_schema")]
        ),
        1.0
    );
    svc.stop().await;
}

/// `spool.mode = "always"`: both messages of a beacon go through the spool,
/// and the 204 waits for both writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn with_the_spool_always_on_both_messages_are_spooled_then_delivered() {
    let brokers = require_broker();
    let prefix = unique_prefix("legacy-spool");
    create_event_topics(&brokers, &prefix, &[NAV_STREAM]).await;
    let mut config = bridge_config(
        &brokers,
        &prefix,
        vec![OutputFormat::Varnishkafka, OutputFormat::EventPlatform],
    );
    config.spool.mode = beacond::config::SpoolMode::Always;
    config.spool.fsync_interval_ms = 0;
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    for _ in 0..3 {
        let r = get(
            svc.beacon,
            &format!("/beacon/event?{}", js_query(&navigation_timing())),
            &proxied(),
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_spool_appended_total"),
        6.0,
        "line and event, three times"
    );
    let lines = consume(
        &brokers,
        &format!("{prefix}beacons"),
        3,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    assert_eq!(lines.len(), 3);
    let navs = read(&brokers, &format!("{prefix}{NAV_STREAM}"), 3);
    assert_eq!(navs.len(), 3);
    let mut seqs: Vec<i64> = navs.iter().map(|e| e["seqId"].as_i64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2]);
    svc.stop().await;
}
