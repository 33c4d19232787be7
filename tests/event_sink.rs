//! The sink with a topic per message, over librdkafka's mock cluster: event
//! messages for two topics ride out a broker outage through the spool and
//! each reaches its own topic; a spool left by the previous version (format
//! v1) is replayed to the beacon topic after the upgrade.

mod common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::PropertyValue;
use beacond::metrics::Metrics;
use beacond::sink::{Destination, EnqueueError, Enqueued, KafkaSink, MessageSink, OutboundMessage};
use beacond::spool::segment::version_1;
use beacond::spool::Spool;
use common::*;
use rdkafka::mocking::MockCluster;

/// Hands one message over and waits for the spool's reply if it went there.
async fn put(sink: &KafkaSink, topic: &str, payload: &[u8]) -> Result<(), EnqueueError> {
    let message = OutboundMessage {
        destination: Destination::Event { topic },
        key: Some(payload),
        payload,
    };
    match sink.enqueue(&message)? {
        Enqueued::Queued => Ok(()),
        Enqueued::Spooling(reply) => match reply.await {
            Ok(result) => result.map_err(EnqueueError::from),
            Err(_) => Err(EnqueueError::Spool(beacond::spool::SpoolError::Closed)),
        },
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_two_topics_survive_an_outage_each_on_its_own_topic() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let beacons = unique_topic("ev-beacons");
    let topics = [unique_topic("ev-one"), unique_topic("ev-two")];
    for t in [&beacons, &topics[0], &topics[1]] {
        mock.create_topic(t, 2, 1).unwrap();
    }
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &beacons);
    for (k, v) in [
        ("message.timeout.ms", "2000"),
        ("linger.ms", "5"),
        ("retry.backoff.ms", "100"),
    ] {
        config
            .kafka
            .properties
            .insert(k.into(), PropertyValue::Text(v.into()));
    }
    config.spool.fsync_interval_ms = 10;
    let metrics = Arc::new(Metrics::new());
    let mut spool = Spool::open(
        beacond::spool::SpoolSettings::from_config(&config.spool).unwrap(),
        metrics.spool.clone(),
    )
    .unwrap();
    let sink = KafkaSink::with_readiness_topics(
        &config,
        metrics.clone(),
        Some(spool.handle()),
        vec![beacons.clone(), topics[1].clone()],
    )
    .unwrap();
    spool.start(sink.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = sink
        .spawn_probe(Duration::from_secs(1), stop.clone())
        .unwrap();
    wait_until(
        "the topic view and readiness",
        Duration::from_secs(20),
        || sink.broker_reachable() && sink.topic_exists(&topics[0]) == Some(true),
    )
    .await;
    assert_eq!(sink.topic_exists(&topics[1]), Some(true));
    assert_eq!(sink.topic_exists("no-such-topic"), Some(false));
    assert_eq!(
        put(&sink, "no-such-topic", b"x").await,
        Err(EnqueueError::UnknownTopic),
        "never accepted, so never lost later"
    );

    let mut sent: Vec<(usize, String)> = Vec::new();
    let mut n = 0;
    let mut send_for = |d: Duration| {
        let sink = sink.clone();
        let topics = topics.clone();
        let start = n;
        n += 100_000;
        async move {
            let mut out = Vec::new();
            let until = Instant::now() + d;
            let mut i = start;
            while Instant::now() < until {
                let which = i % 2;
                let id = format!("{{\"id\":\"ev-{which}-{i}\"}}");
                put(&sink, &topics[which], id.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("event {i} refused: {e}"));
                out.push((which, id));
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        }
    };
    sent.extend(send_for(Duration::from_secs(1)).await);
    mock.broker_down(1).unwrap();
    // Longer than message.timeout.ms: queued messages fail back into the
    // spool, new ones queue behind them.
    sent.extend(send_for(Duration::from_secs(10)).await);
    assert_eq!(
        sink.topic_exists(&topics[0]),
        Some(true),
        "the view outlives the broker"
    );
    mock.broker_up(1).unwrap();
    sent.extend(send_for(Duration::from_secs(2)).await);
    assert!(sent.len() > 500, "load ran: {}", sent.len());

    wait_until("the spool to drain", Duration::from_secs(90), || {
        metrics.spool.records.get() == 0 && sink.in_flight() == 0
    })
    .await;
    assert!(
        metrics.spool.appended.get() > 0,
        "the outage went through the spool"
    );
    for (which, topic) in topics.iter().enumerate() {
        let want: Vec<&String> = sent
            .iter()
            .filter(|(w, _)| *w == which)
            .map(|(_, id)| id)
            .collect();
        let got = consume(
            &brokers,
            topic,
            want.len(),
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for m in &got {
            assert_eq!(m.key.as_deref(), Some(&m.payload[..]), "key kept");
            *seen.entry(m.payload.clone()).or_default() += 1;
        }
        let lost: Vec<&&String> = want
            .iter()
            .filter(|id| !seen.contains_key(id.as_bytes()))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} events for {topic} missing, e.g. {:?}",
            lost.len(),
            want.len(),
            &lost[..lost.len().min(3)]
        );
        let strays = got
            .iter()
            .filter(|m| !String::from_utf8_lossy(&m.payload).contains(&format!("ev-{which}-")))
            .count();
        assert_eq!(strays, 0, "only its own events on {topic}");
    }
    let text = metrics.render();
    let delivered = metrics.event_topic.delivered.get();
    assert!(
        delivered >= sent.len() as u64,
        "delivered {delivered} of {}",
        sent.len()
    );
    assert_eq!(
        metrics.main_topic.delivered.get(),
        0,
        "nothing counted as beacons"
    );
    assert!(
        text.contains(&format!(
            "beacond_kafka_delivered_total{{topic=\"event\"}} {delivered}"
        )),
        "{text}"
    );
    eprintln!(
        "events outage: {} accepted, {} spooled, {} delivered",
        sent.len(),
        metrics.spool.appended.get(),
        delivered
    );

    let handle = spool.handle();
    handle.stop_dispatch();
    assert_eq!(sink.flush_and_spool(Duration::from_secs(10)), 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || {
        spool.shutdown();
        let _ = probe.join();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_the_previous_version_is_delivered_to_the_beacon_topic() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("v1-upgrade");
    mock.create_topic(&topic, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let config = test_config(&brokers, &topic);
    // The old version's spool: a v1 segment ("BCNSPOOL", version 1).
    let mut segment = version_1::header();
    let lines: Vec<String> = (0..20)
        .map(|i| format!("?%7B%22event%22%3A%7B%22id%22%3A%22v1-{i}%22%7D%7D;\thost\t{i}\t2026-01-01T00:00:00\t192.0.2.1\t\"ua\""))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let key: Option<&[u8]> = (i % 2 == 0).then_some(b"192.0.2.1");
        segment.extend_from_slice(&version_1::record(
            1_700_000_000_000 + i as u64,
            key,
            line.as_bytes(),
        ));
    }
    std::fs::write(
        config.spool.dir.join("segment-00000000000000000007.spool"),
        &segment,
    )
    .unwrap();

    let svc = Running::start(config.clone()).await;
    svc.wait_ready().await;
    let got = consume(
        &brokers,
        &topic,
        lines.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let by_line: HashMap<Vec<u8>, Option<Vec<u8>>> = got
        .iter()
        .map(|m| (m.payload.clone(), m.key.clone()))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let key = by_line
            .get(line.as_bytes())
            .unwrap_or_else(|| panic!("v1 record {i} not delivered"));
        let want: Option<Vec<u8>> = (i % 2 == 0).then(|| b"192.0.2.1".to_vec());
        assert_eq!(key, &want, "record {i} keeps its key");
    }
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_kafka_delivered_total{topic=\"main\"}"),
        lines.len() as f64
    );
    assert_eq!(m.get("beacond_spool_corrupt_segments_total"), 0.0);
    svc.stop().await;
    let left: Vec<_> = std::fs::read_dir(&config.spool.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(left.is_empty(), "the v1 segment is deleted once delivered");
}
