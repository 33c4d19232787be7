//! Filters and privacy against a real broker: excluded user agents are
//! answered 204 and never reach Kafka; with `privacy.anonymize_ip`, only the
//! /24 or /48 of the client address appears, in both output formats and in
//! error records.

mod common;

use std::time::Duration;

use beacond::format::OutputFormat;
use common::*;

fn target(id: &str) -> String {
    format!("/beacon/event?%7B%22id%22%3A%22{id}%22%7D;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn excluded_user_agents_never_reach_kafka() {
    let brokers = require_broker();
    let topic = unique_topic("edge-ua");
    let error_topic = unique_topic("edge-ua-errors");
    create_topic(&brokers, &topic, 1).await;
    create_topic(&brokers, &error_topic, 1).await;
    let mut config = test_config(&brokers, &topic);
    config.kafka.error_topic = Some(error_topic.clone());
    config.filter.user_agent_exclude = vec!["^Fuzz Faster U Fool".into(), "(?i)^evilbot/".into()];
    let svc = Running::start(config).await;
    svc.wait_ready().await;

    let excluded = [
        "Fuzz Faster U Fool v2.1.0-dev",
        "Fuzz Faster U Fool",
        "EvilBot/1.0",
        "evilbot/2 (+http://x)",
    ];
    for (i, ua) in excluded.iter().enumerate() {
        let r = get(
            svc.beacon,
            &target(&format!("excluded-{i}")),
            &[("User-Agent", ua)],
        )
        .await;
        assert_eq!(r.status, 204, "{ua}");
        assert!(r.body.is_empty());
        // Even an invalid beacon with that user agent is dropped, not an error record.
        let r = get(
            svc.beacon,
            "/beacon/event?%7Bnot-json",
            &[("User-Agent", ua)],
        )
        .await;
        assert_eq!(r.status, 204, "{ua}");
    }
    let kept = [
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        "Mozilla/5.0 Fuzz Faster U Fool",
        "",
        "NotEvilBot/1.0",
    ];
    for (i, ua) in kept.iter().enumerate() {
        let headers: Vec<(&str, &str)> = if ua.is_empty() {
            vec![]
        } else {
            vec![("User-Agent", ua)]
        };
        let r = get(svc.beacon, &target(&format!("kept-{i}")), &headers).await;
        assert_eq!(r.status, 204, "{ua}");
    }
    let bad = get(
        svc.beacon,
        "/beacon/event?%7Bnot-json",
        &[("User-Agent", "Mozilla")],
    )
    .await;
    assert_eq!(bad.status, 400);

    let main = consume(
        &brokers,
        &topic,
        kept.len(),
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    assert_eq!(main.len(), kept.len());
    for m in &main {
        let line = String::from_utf8(m.payload.clone()).unwrap();
        assert!(line.contains("kept-"), "{line}");
        assert!(!line.contains("excluded-"), "{line}");
    }
    let errors = consume(
        &brokers,
        &error_topic,
        1,
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    assert_eq!(errors.len(), 1, "only the kept user agent's invalid beacon");
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_beacons_filtered_total{reason=\"user_agent\"}") as usize,
        2 * excluded.len()
    );
    assert_eq!(m.get("beacond_beacons_accepted_total") as usize, kept.len());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn anonymized_ips_in_both_formats_and_error_records() {
    let brokers = require_broker();
    let clients = [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:abcd:12:3456::1", "2001:db8:abcd::"),
        ("::ffff:198.51.100.250", "198.51.100.0"),
    ];
    for format in [OutputFormat::Varnishkafka, OutputFormat::Json] {
        let topic = unique_topic("edge-anon");
        let error_topic = unique_topic("edge-anon-errors");
        create_topic(&brokers, &topic, 1).await;
        create_topic(&brokers, &error_topic, 1).await;
        let mut config = test_config(&brokers, &topic);
        config.output.format = format.into();
        config.kafka.error_topic = Some(error_topic.clone());
        config.kafka.partitioning = beacond::config::Partitioning::ClientIp;
        config.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.privacy.anonymize_ip = true;
        let svc = Running::start(config).await;
        svc.wait_ready().await;
        for (i, (ip, _)) in clients.iter().enumerate() {
            let r = get(
                svc.beacon,
                &target(&format!("anon-{i}")),
                &[("X-Forwarded-For", ip)],
            )
            .await;
            assert_eq!(r.status, 204);
            let r = get(
                svc.beacon,
                "/beacon/event?%5B%5D",
                &[("X-Forwarded-For", ip)],
            )
            .await;
            assert_eq!(r.status, 400);
        }
        let main = consume(
            &brokers,
            &topic,
            clients.len(),
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
        assert_eq!(main.len(), clients.len());
        for m in &main {
            let payload = String::from_utf8(m.payload.clone()).unwrap();
            let i: usize = payload
                .split("anon-")
                .nth(1)
                .and_then(|rest| rest[..1].parse().ok())
                .unwrap_or_else(|| panic!("no id in {payload}"));
            let (full, want) = clients[i];
            let ip = match format {
                OutputFormat::Varnishkafka => payload.split('\t').nth(4).unwrap().to_string(),
                OutputFormat::Json => {
                    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
                    v["ip"].as_str().unwrap().to_string()
                }
                OutputFormat::EventPlatform => unreachable!("not a line format"),
            };
            assert_eq!(ip, want, "{format:?}: {payload}");
            assert!(!payload.contains(full), "full address in {payload}");
            assert_eq!(m.key.as_deref(), Some(want.as_bytes()), "partition key");
        }
        let errors = consume(
            &brokers,
            &error_topic,
            clients.len(),
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
        assert_eq!(errors.len(), clients.len());
        let mut error_ips: Vec<String> = errors
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                v["ip"].as_str().unwrap().to_string()
            })
            .collect();
        error_ips.sort();
        let mut want: Vec<String> = clients.iter().map(|c| c.1.to_string()).collect();
        want.sort();
        assert_eq!(error_ips, want);
        svc.stop().await;
    }
}
