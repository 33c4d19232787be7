//! Over real sockets against a real broker (tansu in `scripts/test`, or any
//! Kafka through `BEACOND_TEST_BROKERS`): beacons in, exact messages out.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use beacond::testing::{encode_uri_component as js_encode, rawurlencode};
use common::*;

/// PHP `rawurlencode` of JSON whose spaces are written `\u0020`.
fn php_encode(s: &str) -> String {
    rawurlencode(&s.replace(' ', "\\u0020"))
}

fn capsule(id: &str, extra: &str) -> String {
    format!(
        r#"{{"event":{{"id":"{id}","text":"{extra}"}},"schema":"TestSchema","revision":-1,"webHost":"test.wikipedia.org","wiki":"testwiki"}}"#
    )
}

/// Splits a varnishkafka line into its six fields.
fn fields(line: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(line).expect("line is UTF-8");
    let f: Vec<String> = text.split('\t').map(str::to_string).collect();
    assert_eq!(f.len(), 6, "six fields: {text:?}");
    f
}

/// (method, path, query, user agent, x-forwarded-for, client ip, escaped user agent)
type Case<'a> = (
    &'a str,
    &'a str,
    String,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn beacons_reach_kafka_exactly_and_rejections_go_to_the_error_topic() {
    let brokers = require_broker();
    let topic = unique_topic("e2e-main");
    let error_topic = unique_topic("e2e-errors");
    create_topic(&brokers, &topic, 3).await;
    create_topic(&brokers, &error_topic, 1).await;
    let mut config = test_config(&brokers, &topic);
    config.kafka.error_topic = Some(error_topic.clone());
    config.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.http.max_query_bytes = 2048;
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let before = time::OffsetDateTime::now_utc().unix_timestamp();
    // (method, path, query, user agent, x-forwarded-for, expected client ip, expected escaped UA)
    let near_limit = format!("{};", js_encode(&capsule("near-limit", &"x".repeat(1800))));
    assert!(near_limit.len() <= 2048);
    let accepted: Vec<Case> = vec![
        (
            "GET",
            "/beacon/event",
            format!("{};", js_encode(&capsule("get-1", "Déjà vu 😀"))),
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
            Some("203.0.113.7"),
            "203.0.113.7",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        ),
        (
            "POST",
            "/beacon/event",
            format!("{};", js_encode(&capsule("post-1", "a+b (c) *d*!"))),
            "Chrome \"quoted\"\tTabbed",
            Some("6.6.6.6, 198.51.100.4"),
            "198.51.100.4",
            "Chrome \"quoted\"\\tTabbed",
        ),
        (
            "GET",
            "/event.gif",
            js_encode(&capsule("legacy-gif", "no semicolon")),
            "Legacy",
            None,
            "127.0.0.1",
            "Legacy",
        ),
        (
            "POST",
            "/beacon/event",
            format!("{};", php_encode(&capsule("php-1", "server side ünïcode"))),
            "MediaWiki/1.45",
            Some("2001:db8::42"),
            "2001:db8::42",
            "MediaWiki/1.45",
        ),
        (
            "HEAD",
            "/beacon/event",
            format!("{};", js_encode(&capsule("head-1", "head"))),
            "Head",
            None,
            "127.0.0.1",
            "Head",
        ),
        (
            "GET",
            "/beacon/event",
            near_limit.clone(),
            "Near",
            None,
            "127.0.0.1",
            "Near",
        ),
    ];
    for (method, path, query, ua, xff, _, _) in &accepted {
        let mut headers = vec![("User-Agent", *ua)];
        if let Some(x) = xff {
            headers.push(("X-Forwarded-For", *x));
        }
        let r = request(svc.beacon, method, &format!("{path}?{query}"), &headers).await;
        assert_eq!(r.status, 204, "{method} {path}: {}", r.body_text());
        assert!(r.body.is_empty());
    }

    // Rejected: (query, status, reason)
    let too_long = format!("{};", js_encode(&capsule("too-long", &"y".repeat(2100))));
    let rejected: Vec<(String, u16, &str)> = vec![
        ("%7B%22a%22%3A".into(), 400, "invalid_json"),
        ("%7B%zz%7D".into(), 400, "bad_percent_encoding"),
        ("%5B1%2C2%5D;".into(), 400, "not_an_object"),
        ("%7B%22a%22%3A%22%FF%22%7D".into(), 400, "invalid_utf8"),
        (";".into(), 400, "empty_query"),
        (too_long, 414, "query_too_long"),
    ];
    for (query, status, reason) in &rejected {
        let r = get(
            svc.beacon,
            &format!("/beacon/event?{query}"),
            &[("User-Agent", "Rejected")],
        )
        .await;
        assert_eq!(r.status, *status, "{reason}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        let body = r.body_text();
        assert!(
            body.ends_with('\n') && body.lines().count() == 1,
            "one-line reason: {body:?}"
        );
    }
    let missing = get(svc.beacon, "/beacon/event", &[]).await;
    assert_eq!(missing.status, 400);
    // Not beacons: never produced, never error records.
    assert_eq!(get(svc.beacon, "/elsewhere?%7B%7D", &[]).await.status, 404);
    let put = request(svc.beacon, "PUT", "/beacon/event?%7B%7D", &[]).await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), Some("GET, HEAD, POST"));
    let after = time::OffsetDateTime::now_utc().unix_timestamp();

    let main = consume(
        &brokers,
        &topic,
        accepted.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_eq!(main.len(), accepted.len(), "exactly the accepted beacons");
    let mut by_query: HashMap<String, Vec<String>> = HashMap::new();
    for m in &main {
        assert!(m.key.is_none(), "random partitioning sends no key");
        let f = fields(&m.payload);
        by_query.insert(f[0].clone(), f);
    }
    let mut seqs = Vec::new();
    for (_, _, query, _, _, ip, escaped_ua) in &accepted {
        let f = by_query
            .get(&format!("?{query}"))
            .unwrap_or_else(|| panic!("missing {query}"));
        assert_eq!(f[1], "test-host");
        seqs.push(f[2].parse::<u64>().expect("seq is a number"));
        let dt = time::PrimitiveDateTime::parse(
            &f[3],
            &time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .expect("dt format")
        .assume_utc()
        .unix_timestamp();
        assert!(
            (before..=after).contains(&dt),
            "receive time {dt} within the test"
        );
        assert_eq!(f[4], *ip);
        assert_eq!(f[5], format!("\"{escaped_ua}\""));
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (0..accepted.len() as u64).collect::<Vec<_>>(),
        "sequence numbers"
    );

    let errors = consume(
        &brokers,
        &error_topic,
        rejected.len() + 1,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_eq!(
        errors.len(),
        rejected.len() + 1,
        "one error record per rejected beacon"
    );
    let mut reasons: Vec<String> = errors
        .iter()
        .map(|m| {
            let v: serde_json::Value =
                serde_json::from_slice(&m.payload).expect("error record is JSON");
            assert_eq!(v["recvFrom"], "test-host");
            assert_eq!(v["ip"], "127.0.0.1");
            if v["reason"] == "query_too_long" {
                assert_eq!(v["rawQueryCut"], true);
            }
            v["reason"].as_str().unwrap().to_string()
        })
        .collect();
    reasons.sort();
    let mut want: Vec<String> = rejected.iter().map(|r| r.2.to_string()).collect();
    want.push("empty_query".into());
    want.sort();
    assert_eq!(reasons, want);

    // Metrics match the traffic. Deliveries are counted once acknowledged;
    // the messages were read back above, so the reports have arrived or
    // arrive within the producer's poll interval.
    let mut m = svc.metrics().await;
    for _ in 0..50 {
        if m.get("beacond_kafka_delivered_total{topic=\"main\"}") as usize == accepted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = svc.metrics().await;
    }
    let n = accepted.len() as f64;
    assert_eq!(m.sum("beacond_requests_total", &[("status", "204")]), n);
    assert_eq!(m.sum("beacond_requests_total", &[("status", "400")]), 6.0);
    assert_eq!(m.sum("beacond_requests_total", &[("status", "414")]), 1.0);
    assert_eq!(m.sum("beacond_requests_total", &[("status", "404")]), 1.0);
    assert_eq!(m.sum("beacond_requests_total", &[("status", "405")]), 1.0);
    assert_eq!(m.get("beacond_beacons_accepted_total"), n);
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"invalid_json\"}"),
        1.0
    );
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"empty_query\"}"),
        2.0
    );
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"query_too_long\"}"),
        1.0
    );
    assert_eq!(m.get("beacond_kafka_produced_total{topic=\"main\"}"), n);
    assert_eq!(m.get("beacond_kafka_delivered_total{topic=\"main\"}"), n);
    assert_eq!(
        m.get("beacond_kafka_delivery_failures_total{topic=\"main\"}"),
        0.0
    );
    assert_eq!(m.get("beacond_kafka_produced_total{topic=\"error\"}"), 7.0);
    assert_eq!(m.get("beacond_kafka_broker_reachable"), 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn json_format_with_client_ip_keys() {
    let brokers = require_broker();
    let topic = unique_topic("e2e-json");
    create_topic(&brokers, &topic, 3).await;
    let mut config = test_config(&brokers, &topic);
    config.output.format = beacond::format::OutputFormat::Json.into();
    config.kafka.partitioning = beacond::config::Partitioning::ClientIp;
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let sent = capsule("json-1", "emoji 🎉 and \\\"quotes\\\"");
    let r = request(
        svc.beacon,
        "POST",
        &format!("/beacon/event?{};", js_encode(&sent)),
        &[("User-Agent", "UA with \"quotes\"")],
    )
    .await;
    assert_eq!(r.status, 204);
    let got = consume(
        &brokers,
        &topic,
        1,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some(&b"127.0.0.1"[..]));
    let v: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
    for (k, want) in sent.as_object().unwrap() {
        assert_eq!(&v[k], want, "capsule field {k}");
    }
    assert_eq!(v["recvFrom"], "test-host");
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(v["userAgent"], "UA with \"quotes\"");
    let dt = v["dt"].as_str().unwrap();
    assert!(dt.ends_with('Z') && dt.len() == 20, "{dt}");
    let name = format!("event://test-host/?seqId={}&dt={dt}", v["seqId"]);
    let uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes());
    assert_eq!(v["uuid"], uuid.simple().to_string());
    svc.stop().await;
}

/// Issue 12, fault 7, end to end: a capsule forging what beacond attests
/// (with `privacy.anonymize_ip` on) reaches Kafka with beacond's values; a
/// capsule with a key twice is refused before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn json_format_attested_fields_are_beacond_s_own() {
    let brokers = require_broker();
    let topic = unique_topic("e2e-json-attested");
    create_topic(&brokers, &topic, 1).await;
    let mut config = test_config(&brokers, &topic);
    config.output.format = beacond::format::OutputFormat::Json.into();
    config.privacy.anonymize_ip = true;
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    let forged = r#"{"event":{"ip":"kept"},"schema":"T","ip":"6.6.6.6","recvFrom":"evil","seqId":-1,"dt":"1999-01-01T00:00:00Z","userAgent":"forged","uuid":"forged"}"#;
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{};", js_encode(forged)),
        &[("User-Agent", "real")],
    )
    .await;
    assert_eq!(r.status, 204);
    let twice = r#"{"schema":"T","ip":"6.6.6.6","ip":"7.7.7.7"}"#;
    let r = get(
        svc.beacon,
        &format!("/beacon/event?{};", js_encode(twice)),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let got = consume(
        &brokers,
        &topic,
        1,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_eq!(got.len(), 1);
    let text = String::from_utf8(got[0].payload.clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ip"], "127.0.0.0", "{text}");
    assert_eq!(v["recvFrom"], "test-host");
    assert_eq!(v["userAgent"], "real");
    assert_eq!(v["event"]["ip"], "kept");
    assert!(v["seqId"].as_u64().is_some());
    assert!(!text.contains("forged") && !text.contains("6.6.6.6") && !text.contains("1999"));
    let m = svc.metrics().await;
    for field in ["ip", "recv_from", "seq_id", "dt", "user_agent", "uuid"] {
        assert_eq!(
            m.get(&format!(
                "beacond_beacons_attested_fields_total{{field=\"{field}\"}}"
            )),
            1.0,
            "{field}"
        );
    }
    assert_eq!(
        m.get("beacond_beacons_rejected_total{reason=\"duplicate_key\"}"),
        1.0
    );
    svc.stop().await;
}
