//! Heap allocations per request on the hot paths, counted by a global
//! allocator that wraps the system's: the synchronous legacy step
//! (`Intake::accept`), the whole legacy handler (`Intake::handle`, request to
//! response), and the whole events handler for one hasty event of a real
//! schema. Requests are built outside the counted span (the HTTP layer makes
//! them); their drop inside it is counted.
//!
//! `cargo test --test allocations` prints a table (counts do not depend on
//! the build profile); it fails if the legacy step or the legacy handler
//! allocates at all (their contract: no allocation per beacon past the
//! request the HTTP layer builds). It runs without the libtest harness, so
//! no other test allocates beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;

use beacond::config::Config;
use beacond::event_rules::EventRulesSource;
use beacond::intake::events::EventIntake;
use beacond::intake::{Intake, Outcome};
use beacond::meta::ReceiveTime;
use beacond::metrics::Metrics;
use beacond::sink::{EnqueueError, Enqueued, MessageSink, OutboundMessage};
use beacond::testing::encode_uri_component;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
const ROUNDS: u64 = 10_000;

/// Allocations and bytes per call of `f`, after a warm-up.
fn per_call(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..1_000 {
        f();
    }
    counted(ROUNDS, f)
}

/// Allocations and bytes per call over `calls` calls of `f`.
fn counted(calls: u64, mut f: impl FnMut()) -> (f64, f64) {
    let now = || {
        (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        )
    };
    let (a0, b0) = now();
    for _ in 0..calls {
        f();
    }
    let (a1, b1) = now();
    (
        (a1 - a0) as f64 / calls as f64,
        (b1 - b0) as f64 / calls as f64,
    )
}

fn typical_beacon() -> String {
    let capsule = r#"{"event":{"action":"click","editingSessionId":"4f9a2c1e8b7d6a5f","isOversample":false,"pageTitle":"Déjà vu","pageNs":0,"userEditCount":1234,"platform":"desktop","integration":"page","mechanism":"click","editor_interface":"visualeditor","timing":412,"emoji":"😀"},"schema":"EditAttemptStep","revision":18530416,"webHost":"en.wikipedia.org","wiki":"enwiki"}"#;
    format!("{};", encode_uri_component(capsule))
}

/// One NavigationTiming event, valid against its real schema (1.6.0).
const NAVIGATION_TIMING: &str = r#"{"$schema":"/analytics/legacy/navigationtiming/1.6.0","meta":{"stream":"eventlogging_NavigationTiming","domain":"en.wikipedia.org","id":"5c1f0a6e-9f55-4d2b-8f0a-3d8d2b1c9e01"},"client_dt":"2026-12-02T06:30:00.123Z","schema":"NavigationTiming","webHost":"en.wikipedia.org","wiki":"enwiki","event":{"pageviewToken":"a1b2c3d4e5f6a7b8c9d0","isAnon":true,"isOversample":false,"action":"view","namespaceId":0,"revId":1204567890,"skin":"vector-2022","mediaWikiVersion":"1.42.0-wmf.5","mediaWikiLoadEnd":1100,"originCountry":"DE","netinfoEffectiveConnectionType":"4g","netinfoConnectionType":"wifi","netinfoRtt":150,"netinfoDownlink":1.45,"deviceMemory":8,"hardwareConcurrency":8,"cacheHost":"cp3062","cacheResponseType":"hit-front","connectStart":200,"connectEnd":240,"dnsLookup":12,"domComplete":1400,"domInteractive":900,"fetchStart":3,"firstPaint":550,"firstContentfulPaint":560,"largestContentfulPaint":1000,"largestContentfulPaintElement":"p","loadEventEnd":1500,"loadEventStart":1450,"requestStart":245,"responseEnd":500,"responseStart":400,"secureConnectionStart":220,"transferSize":45000,"unload":0,"gaps":7,"cumulativeLayoutShift":0.0125,"longTaskTotalTasks":2,"longTaskTotalDuration":120}}"#;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::default();
    config.output.hostname = Some("cp3050.esams.wmnet".into());
    config.client_ip.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    config.events.stream_config = Some(root.join("config/dev-streams.yaml"));
    config.events.schema_repositories = vec![
        root.join("tests/fixtures/event-schemas/primary/jsonschema"),
        root.join("tests/fixtures/event-schemas/secondary/jsonschema"),
    ];
    let metrics = Arc::new(Metrics::new());
    let sink = Arc::new(DiscardSink);
    let validator = EventRulesSource::new(&config.events, "cp3050.esams.wmnet")
        .expect("events configured")
        .load()
        .expect("the fixture schemas and dev streams load");
    let events = EventIntake::new(&config, validator, sink.clone(), &metrics);
    let intake = Intake::new(&config, sink, metrics.clone())
        .unwrap()
        .with_events(events, &metrics);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    let query = typical_beacon();
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static(UA));
    headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let peer: SocketAddr = "10.64.0.5:4000".parse().unwrap();

    let accept = per_call(|| {
        let outcome = intake.accept(Some(&query), &headers, peer.ip(), ReceiveTime::now());
        assert!(matches!(outcome, Outcome::Accepted));
    });

    let beacon_request = || {
        Request::get(format!("/beacon/event?{query}"))
            .header("user-agent", UA)
            .header("x-forwarded-for", "203.0.113.9")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let legacy = counted_handler(
        &runtime,
        &intake,
        peer,
        beacon_request,
        StatusCode::NO_CONTENT,
    );

    let event = Bytes::from_static(NAVIGATION_TIMING.as_bytes());
    let event_request = || {
        Request::post("/v1/events?hasty=true")
            .header("user-agent", UA)
            .header("x-forwarded-for", "203.0.113.9")
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Full::new(event.clone()))
            .unwrap()
    };
    let hasty = counted_handler(&runtime, &intake, peer, event_request, StatusCode::ACCEPTED);

    println!("| step | allocations per request | bytes allocated per request |");
    println!("|---|---|---|");
    for (name, (n, bytes)) in [
        ("legacy `Intake::accept` (typical beacon)", accept),
        ("legacy `Intake::handle`, request to 204", legacy),
        (
            "events `Intake::handle`, one hasty NavigationTiming event, to 202",
            hasty,
        ),
    ] {
        println!("| {name} | {n:.2} | {bytes:.0} |");
    }
    assert_eq!(accept.0, 0.0, "the legacy accept step allocated");
    assert_eq!(legacy.0, 0.0, "the legacy handler allocated");
    assert!(hasty.0 > 0.0, "the counting allocator counts");
}

/// Allocations per call of the whole handler, the request built outside the
/// counted span.
fn counted_handler(
    runtime: &tokio::runtime::Runtime,
    intake: &Intake<DiscardSink>,
    peer: SocketAddr,
    request: impl Fn() -> Request<Full<Bytes>>,
    want: StatusCode,
) -> (f64, f64) {
    // Built ahead in batches, so that only the handler is counted; ten
    // batches warm up, the figure is the last one's.
    let batch = ROUNDS / 10;
    let mut figure = (0.0, 0.0);
    for _ in 0..11 {
        let mut requests = (0..batch)
            .map(|_| request())
            .collect::<Vec<_>>()
            .into_iter();
        figure = counted(batch, || {
            let req = requests.next().expect("one request per call");
            let response = runtime.block_on(intake.handle(req, peer));
            assert_eq!(response.status(), want);
        });
    }
    figure
}
