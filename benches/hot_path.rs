//! Per-beacon work without I/O: decode and validate, client-IP resolution,
//! line formatting, and the whole synchronous `Intake::accept` step with a
//! sink that discards. For a small, a typical and a near-limit beacon.
//!
//! `cargo bench --bench hot_path` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};

use beacond::client_ip::ClientIpResolver;
use beacond::config::Config;
use beacond::decode::decode_beacon;
use beacond::format::OutputFormat;
use beacond::intake::{Intake, Outcome};
use beacond::meta::{BeaconMeta, ReceiveTime};
use beacond::metrics::Metrics;
use beacond::sink::{EnqueueError, Enqueued, MessageSink, OutboundMessage};
use beacond::testing::encode_uri_component;

/// (name, raw query) for the three sizes.
fn beacons() -> Vec<(&'static str, String)> {
    let small = r#"{"event":{"a":1},"schema":"Test","revision":1,"webHost":"en.wikipedia.org","wiki":"enwiki"}"#;
    let typical = r#"{"event":{"action":"click","editingSessionId":"4f9a2c1e8b7d6a5f","isOversample":false,"pageTitle":"Déjà vu","pageNs":0,"userEditCount":1234,"platform":"desktop","integration":"page","mechanism":"click","editor_interface":"visualeditor","timing":412,"emoji":"😀"},"schema":"EditAttemptStep","revision":18530416,"webHost":"en.wikipedia.org","wiki":"enwiki"}"#;
    let filler = "x".repeat(1700);
    let near = format!(
        r#"{{"event":{{"action":"save","blob":"{filler}"}},"schema":"Big","revision":1,"webHost":"en.wikipedia.org","wiki":"enwiki"}}"#
    );
    let q = |s: &str| format!("{};", encode_uri_component(s));
    let out = vec![
        ("small", q(small)),
        ("typical", q(typical)),
        ("near_limit", q(&near)),
    ];
    assert!(out[2].1.len() < 2000 && out[2].1.len() > 1800);
    out
}

struct DiscardSink;

impl MessageSink for DiscardSink {
    fn enqueue(&self, message: &OutboundMessage<'_>) -> Result<Enqueued, EnqueueError> {
        black_box(message.payload);
        Ok(Enqueued::Queued)
    }
    fn report_rejection(&self, record: &[u8]) {
        black_box(record);
    }
}

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36";

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let mut buf = Vec::new();
    for (name, q) in beacons() {
        g.throughput(Throughput::Bytes(q.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(decode_beacon(black_box(&q), 8192, &mut buf).is_ok());
            })
        });
    }
    g.finish();
}

fn bench_client_ip(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_ip");
    let resolver = ClientIpResolver::new(
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "2620:0:860::/46".parse().unwrap(),
        ],
        http::HeaderName::from_static("x-forwarded-for"),
    );
    let untrusted: IpAddr = "198.51.100.7".parse().unwrap();
    let proxy: IpAddr = "10.64.0.5".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.9, 10.20.0.1"),
    );
    g.bench_function("untrusted_peer", |b| {
        b.iter(|| black_box(resolver.resolve(black_box(untrusted), &headers)))
    });
    g.bench_function("trusted_chain", |b| {
        b.iter(|| black_box(resolver.resolve(black_box(proxy), &headers)))
    });
    g.finish();
}

fn bench_format(c: &mut Criterion) {
    let mut g = c.benchmark_group("format");
    let mut decoded = Vec::new();
    let mut out = Vec::new();
    for (name, q) in beacons() {
        let capsule = decode_beacon(&q, 8192, &mut decoded)
            .unwrap()
            .text
            .to_string();
        let meta = BeaconMeta {
            received: ReceiveTime::now(),
            seq: Some(123_456),
            client_ip: "203.0.113.9".parse().unwrap(),
            user_agent: UA.as_bytes(),
            hostname: "cp3050.esams.wmnet",
        };
        for format in [OutputFormat::Varnishkafka, OutputFormat::Json] {
            g.bench_function(format!("{format:?}/{name}").to_lowercase(), |b| {
                b.iter(|| {
                    out.clear();
                    format.write_line(black_box(&q), black_box(&capsule), &meta, &mut out);
                    black_box(out.len());
                })
            });
        }
    }
    g.finish();
}

fn bench_accept(c: &mut Criterion) {
    let mut g = c.benchmark_group("accept");
    let mut config = Config::default();
    config.output.hostname = Some("cp3050.esams.wmnet".into());
    config.client_ip.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let intake = Intake::new(&config, Arc::new(DiscardSink), Arc::new(Metrics::new())).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static(UA));
    headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let peer: IpAddr = "10.64.0.5".parse().unwrap();
    for (name, q) in beacons() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let outcome =
                    intake.accept(Some(black_box(&q)), &headers, peer, ReceiveTime::now());
                assert!(matches!(outcome, Outcome::Accepted));
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_client_ip,
    bench_format,
    bench_accept
);
criterion_main!(benches);
