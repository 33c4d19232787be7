//! A real browser, end to end: headless Chromium loads a page that sends
//! beacons exactly as the EventLogging client does, to collectors running
//! in-process against a real broker, and every event is read back from Kafka.
//!
//! The page sends each event twice per collector: once with
//! `navigator.sendBeacon(url)` (POST, empty body) and once with the image
//! fallback `new Image().src = url` (GET), where
//! `url = base + '?' + encodeURIComponent(JSON.stringify(capsule)) + ';'` and,
//! as in the client, URLs over 2000 characters are not sent. The collector
//! does not record the method, so the two paths are told apart by the event
//! id. Two collectors run side by side, one per output format (varnishkafka
//! and json), each on its own topic.
//!
//! The page reports back to the test (same-origin `POST /report`) what it
//! sent: each URL's length, whether `sendBeacon` queued it, and
//! `navigator.userAgent`. Chromium keeps running until Kafka holds every
//! event, so no beacon is cut off by the browser exiting.
//!
//! A second test does the same for the Event Platform intake
//! (`POST /v1/events`): a page on one origin (a loopback port of its own)
//! sends real events (NavigationTiming 1.6.0, analytics/test 1.0.0,
//! test/event 1.0.0, Metrics Platform web base 1.3.0 in an array) to beacond
//! on another origin, each request both by `navigator.sendBeacon(url,
//! JSON.stringify(body))` and by a keepalive `fetch` with `Content-Type:
//! application/json` (preflighted). Each event is read back from Kafka once,
//! valid to the independent `boon` validator, with what beacond fills in
//! (`http.client_ip`, the browser's user agent, times, defaults) where its
//! schema defines it. A second beacond that does not allow the page's origin
//! is the control: the browser refuses to send the POST after its preflight.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`); where it is missing the
//! test runs `scripts/install-deps chromium`. Skipped without a broker, like
//! the other end-to-end tests (see `tests/common/mod.rs`).

mod common;
#[path = "../src/crosscheck.rs"]
mod crosscheck;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use beacond::testing::encode_uri_component as js_encode;
use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The EventLogging client does not send URLs longer than this.
const MAX_URL: usize = 2000;
/// How long Chromium may take to start, load the page and send everything.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// What the page server reports when it served the page (not a user agent).
const PAGE_SERVED: &str = "\u{0}page served";
/// How long the beacons may take to reach Kafka after the page has sent them.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(20);
/// The whole test after Chromium is installed; past this a watchdog kills
/// Chromium and fails the test, whatever it is stuck in.
const TEST_BUDGET: Duration = Duration::from_secs(90);
/// Keys the json format adds to the capsule.
const JSON_OWN_KEYS: [&str; 6] = ["recvFrom", "seqId", "dt", "ip", "userAgent", "uuid"];

/// The EventLogging processor's decoding: strip `?` and `;`, `+` is a space,
/// then strict percent-decoding and UTF-8.
fn decode_query(q: &str) -> String {
    let q = q.strip_prefix('?').unwrap_or(q);
    let q = q.strip_suffix(';').unwrap_or(q);
    let raw = q.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| panic!("bad percent escape at {i} in {q:?}"));
                bytes.push(hex);
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("query is not UTF-8: {e}: {q:?}"))
}

/// The URL the page builds, as the client does. `serde_json` writes object
/// keys sorted and escapes strings as `JSON.stringify` does; the page gets the
/// capsule in that same key order, so the lengths agree (the test checks
/// them against the page's own).
fn beacon_url(base: &str, capsule: &Value) -> String {
    format!("{base}?{};", js_encode(&capsule.to_string()))
}

/// One event the page sends: `path` is `beacon` (sendBeacon, POST) or
/// `image` (GET).
#[derive(Debug, Clone)]
struct Planned {
    id: String,
    path: &'static str,
    capsule: Value,
}

/// The events: each template once per path, with a unique id. The last one
/// is padded so that its URL to the longest base is exactly 2000 characters.
fn plan(run: &str, longest_base: &str) -> Vec<Planned> {
    let templates: Vec<(&str, Value)> = vec![
        (
            "plain",
            json!({
                "action": "click", "count": 3, "ratio": 1.5, "negative": -42, "enabled": true,
                "nothing": null, "tags": ["a", "b", ""], "nested": {"depth": {"level": 2}}
            }),
        ),
        (
            "unicode",
            json!({
                "text": "Déjà vu — Ελληνικά, русский, 日本語, עברית, العربية, हिन्दी",
                "title": "Spezial:Suche/Ünïcödé",
            }),
        ),
        (
            "emoji",
            json!({
                "text": "😀👍🏽🇩🇪 👨‍👩‍👧‍👦 ❤️ 🎉",
                "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝄞 🀄",
            }),
        ),
        (
            "reserved",
            json!({
                "text": "a+b=c & d%20e; f?g#h/i \"quoted\" back\\slash\ttab\nnewline !'()*~",
                "markup": "<script>alert(1)</script><!-- -->",
                "query": "?x=1;y=2",
                "control": "\u{1}\u{1f}\u{7f}",
            }),
        ),
        (
            "near-limit",
            json!({"text": "Near the limit: ünïcödé 😀 日本語 "}),
        ),
    ];
    let mut out = Vec::new();
    for (name, event) in templates {
        for path in ["beacon", "image"] {
            let id = format!("{run}-{name}-{path}");
            let mut event = event.clone();
            event["id"] = json!(id);
            let mut capsule = json!({
                "event": event,
                "schema": "BrowserEndToEnd",
                "revision": if path == "beacon" { json!(12345) } else { json!(-1) },
                "webHost": "test.wikipedia.org",
                "wiki": "testwiki",
            });
            if name == "near-limit" {
                // Each `x` adds one character to the URL.
                let short = beacon_url(longest_base, &capsule).len();
                assert!(
                    short < MAX_URL,
                    "the near-limit prefix is already {short} long"
                );
                let text = capsule["event"]["text"].as_str().unwrap().to_string();
                capsule["event"]["text"] = json!(text + &"x".repeat(MAX_URL - short));
                assert_eq!(beacon_url(longest_base, &capsule).len(), MAX_URL);
            }
            out.push(Planned { id, path, capsule });
        }
    }
    out
}

/// The page: the events and bases inline, the client's sending code, and a
/// report back to the test once every beacon is queued and every image
/// request has ended (a 204 fires `onerror` on an image: that is expected).
fn page(bases: &[String], planned: &[Planned]) -> String {
    let beacons: Vec<Value> = planned
        .iter()
        .map(|p| json!({"path": p.path, "capsule": p.capsule}))
        .collect();
    // Inside <script>, `<` could end the element; `\u003c` is the same
    // character to JavaScript.
    let script_json = |v: &Value| v.to_string().replace('<', "\\u003c");
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>beacond browser test</title></head>
<body><p id="status">sending</p>
<script>
// Its own element, so it reports even a syntax error in the next one.
function report(body) {{
  fetch('/report', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, body: JSON.stringify(body) }});
}}
window.addEventListener('error', (e) => report({{ error: String(e.message) + ' at line ' + e.lineno }}));
</script>
<script>
"use strict";
const BASES = {bases};
const BEACONS = {beacons};
const MAX_URL = {MAX_URL};
const results = [];
let pending = 1;
function ended() {{
  if (--pending === 0) {{
    document.getElementById('status').textContent = 'done';
    report({{ userAgent: navigator.userAgent, results }});
  }}
}}
for (const base of BASES) {{
  for (const b of BEACONS) {{
    // As ext.eventLogging's core.js builds and sends it.
    const url = base + '?' + encodeURIComponent(JSON.stringify(b.capsule)) + ';';
    const r = {{ id: b.capsule.event.id, base, path: b.path, length: url.length }};
    results.push(r);
    if (url.length > MAX_URL) {{
      r.outcome = 'refused';
    }} else if (b.path === 'beacon') {{
      r.outcome = navigator.sendBeacon(url) ? 'queued' : 'not queued';
    }} else {{
      pending++;
      const img = new Image();
      img.onload = () => {{ r.outcome = 'load'; ended(); }};
      img.onerror = () => {{ r.outcome = 'error'; ended(); }};
      img.src = url;
    }}
  }}
}}
ended();
</script>
</body></html>
"#,
        bases = script_json(&json!(bases)),
        beacons = script_json(&Value::Array(beacons)),
    )
}

/// A tiny HTTP/1.1 responder for the page: `GET /` is the page,
/// `POST /report` forwards its body (and the request's user agent) to the
/// test, anything else is 404. One request per connection.
async fn serve_page(
    listener: TcpListener,
    html: String,
    reports: mpsc::UnboundedSender<(String, Vec<u8>)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (html, reports) = (html.clone(), reports.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &html, &reports))
                .await;
        });
    }
}

async fn answer(
    mut s: TcpStream,
    html: &str,
    reports: &mpsc::UnboundedSender<(String, Vec<u8>)>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 1 << 20 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, content_type, content): (&str, &str, &[u8]) = match (method, target) {
        ("GET", "/") => {
            let _ = reports.send((PAGE_SERVED.into(), Vec::new()));
            ("200 OK", "text/html; charset=utf-8", html.as_bytes())
        }
        ("POST", "/report") => {
            let _ = reports.send((header("user-agent").unwrap_or_default(), body));
            ("204 No Content", "text/plain", b"")
        }
        _ => ("404 Not Found", "text/plain", b"not found\n"),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nConnection: close\r\n"
    );
    if !status.starts_with("204") {
        response.push_str(&format!("Content-Length: {}\r\n", content.len()));
    }
    response.push_str("\r\n");
    s.write_all(response.as_bytes()).await?;
    s.write_all(content).await?;
    s.shutdown().await
}

/// The process groups of the running Chromiums, for the watchdogs (the
/// tests of this file run in parallel, each with its own browser).
static BROWSER_GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn browser_groups() -> std::sync::MutexGuard<'static, Vec<u32>> {
    BROWSER_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One test's progress, for its log and for its watchdog.
struct Watch {
    test: &'static str,
    started: Instant,
    at: Arc<Mutex<&'static str>>,
}

impl Watch {
    /// Starts the clock and a watchdog that fails the test (and kills every
    /// Chromium) if it runs past `budget`, even if it is stuck where no
    /// timeout reaches.
    fn start(test: &'static str, budget: Duration) -> Watch {
        let at = Arc::new(Mutex::new("starting"));
        let seen = at.clone();
        std::thread::spawn(move || {
            std::thread::sleep(budget);
            let at = *seen.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("{test}: still running after {budget:?}, at step {at:?}: giving up");
            for group in browser_groups().iter() {
                kill_group(*group, "KILL");
            }
            std::process::exit(101);
        });
        Watch {
            test,
            started: Instant::now(),
            at,
        }
    }

    fn step(&self, name: &'static str) {
        eprintln!("[{} +{:.1?}] {name}", self.test, self.started.elapsed());
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn kill_group(group: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

/// Installs Chromium where it is missing (bounded, so a stuck apt fails the
/// test instead of hanging it).
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps");
    eprintln!(
        "{CHROMIUM} is missing: running {} chromium",
        script.display()
    );
    let mut child = Command::new(&script)
        .arg("chromium")
        .spawn()
        .expect("run scripts/install-deps");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for install-deps") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scripts/install-deps chromium took over 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "scripts/install-deps chromium failed: {status}"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} still missing after install-deps"
    );
}

/// Headless Chromium on a fresh profile, in its own process group. Dropping
/// it kills the group and removes the profile; if the test is failing, its
/// log is printed first.
struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    fn launch(url: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(unique_topic("beacond-chromium"));
        std::fs::create_dir_all(&dir).expect("profile dir");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("log file");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromium");
        browser_groups().push(child.id());
        Browser { child, dir }
    }

    /// Has the browser exited already?
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Without D-Bus on test machines, those lines are noise.
            let log = self.log();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains(":ERROR:dbus/"))
                .rev()
                .take(40)
                .collect();
            eprintln!("--- chromium log (last 40 lines, D-Bus errors left out) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // A clean exit first, so the browser reaps its renderer, GPU and
        // utility processes; then the whole group, whatever is left.
        let group = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &group.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(group, "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        browser_groups().retain(|g| *g != group);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the page's report: the user agent it was sent with and the page's
/// own record of each beacon. A script error on the page fails the test.
async fn page_report(
    reports: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    browser: &mut Browser,
    url: &str,
) -> (String, Value) {
    let mut served = false;
    for attempt in 1..=2 {
        let wait = async {
            loop {
                tokio::select! {
                    r = reports.recv() => match r {
                        Some((marker, _)) if marker == PAGE_SERVED => served = true,
                        other => return other,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if let Some(status) = browser.exited() {
                            panic!("chromium exited ({status}) before the page reported");
                        }
                    }
                }
            }
        };
        let Ok(report) = tokio::time::timeout(PAGE_TIMEOUT, wait).await else {
            // A Chromium that never asked for the page hung while starting
            // (seen on this machine, rarely): nothing was sent, so a second
            // browser changes nothing the test checks. Once the page was
            // served, the page or the collectors are at fault: fail.
            if !served && attempt == 1 {
                eprintln!(
                    "chromium never asked for the page within {PAGE_TIMEOUT:?}; starting another"
                );
                *browser = Browser::launch(url);
                continue;
            }
            let log = browser.log();
            let start = log.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
            panic!(
                "no report from the page within {PAGE_TIMEOUT:?} (page served: {served}); \
                 chromium's log ends:\n{}",
                &log[start..]
            )
        };
        let (ua, body) = report.expect("page server running");
        let v: Value = serde_json::from_slice(&body).expect("report is JSON");
        if let Some(e) = v.get("error") {
            panic!("script error on the page: {e}");
        }
        return (ua, v);
    }
    unreachable!("two attempts")
}

/// Reads `topic` from the beginning until `expected` messages arrived (then
/// 2 s more for any extra), or [`KAFKA_TIMEOUT`]. On a plain thread, not
/// `spawn_blocking`: a consumer stuck in librdkafka then fails the test
/// instead of holding up the runtime's shutdown.
async fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<Received> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(consume(
            &brokers,
            &topic,
            expected,
            KAFKA_TIMEOUT,
            Duration::from_secs(2),
        ));
    });
    tokio::time::timeout(KAFKA_TIMEOUT + Duration::from_secs(15), rx)
        .await
        .expect("the Kafka consumer returns in time")
        .expect("the Kafka consumer does not panic")
}

/// A beacon in the varnishkafka format: the id in its event, the decoded capsule, the user agent.
fn parse_varnishkafka(payload: &[u8]) -> (String, Value, String) {
    let line = std::str::from_utf8(payload).expect("line is UTF-8");
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f.len(), 6, "six tab-separated fields: {line:?}");
    assert!(
        f[0].starts_with('?') && f[0].ends_with(';'),
        "query with ? and ;: {:?}",
        f[0]
    );
    assert_eq!(f[1], "test-host");
    f[2].parse::<u64>().expect("sequence number");
    assert_eq!(f[3].len(), 19, "receive time: {:?}", f[3]);
    assert_eq!(f[4], "127.0.0.1");
    let ua = f[5]
        .strip_prefix('"')
        .and_then(|u| u.strip_suffix('"'))
        .unwrap_or_else(|| panic!("quoted user agent: {:?}", f[5]));
    let capsule: Value = serde_json::from_str(&decode_query(f[0])).expect("query decodes to JSON");
    let id = capsule["event"]["id"]
        .as_str()
        .expect("event id")
        .to_string();
    (id, capsule, ua.to_string())
}

/// A beacon in the json format: the id, the capsule (our own keys removed), the user agent.
fn parse_json(payload: &[u8]) -> (String, Value, String) {
    let mut v: Value = serde_json::from_slice(payload).expect("json message");
    let obj = v.as_object_mut().expect("an object");
    assert_eq!(obj["recvFrom"], "test-host");
    assert_eq!(obj["ip"], "127.0.0.1");
    assert!(obj["seqId"].is_u64());
    let uuid = obj["uuid"].as_str().expect("uuid");
    assert!(
        uuid.len() == 32 && uuid.bytes().all(|b| b.is_ascii_hexdigit()),
        "uuid {uuid}"
    );
    let ua = obj["userAgent"].as_str().expect("userAgent").to_string();
    for k in JSON_OWN_KEYS {
        obj.remove(k);
    }
    let id = v["event"]["id"].as_str().expect("event id").to_string();
    (id, v, ua)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn chromium_beacons_reach_kafka_exactly_once() {
    let brokers = require_broker();
    ensure_chromium();
    let watch = Watch::start("browser beacons", TEST_BUDGET);
    watch.step("creating topics");

    // Two collectors, one per output format, each on its own topic.
    let vk_topic = unique_topic("browser-vk");
    let json_topic = unique_topic("browser-json");
    create_topic(&brokers, &vk_topic, 2).await;
    create_topic(&brokers, &json_topic, 1).await;
    watch.step("starting the collectors");
    let vk = Running::start(test_config(&brokers, &vk_topic)).await;
    let mut json_config = test_config(&brokers, &json_topic);
    json_config.output.format = beacond::format::OutputFormat::Json.into();
    let js = Running::start(json_config).await;
    watch.step("waiting for readiness");
    vk.wait_ready().await;
    js.wait_ready().await;
    let base = |a: SocketAddr| format!("http://{a}/beacon/event");
    let bases = vec![base(vk.beacon), base(js.beacon)];
    let longest = bases.iter().max_by_key(|b| b.len()).unwrap().clone();

    let run = unique_topic("run");
    let planned = plan(&run, &longest);
    let by_id: HashMap<&str, &Planned> = planned.iter().map(|p| (p.id.as_str(), p)).collect();

    // The page, on a loopback port of its own (another origin than the collectors).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = listener.local_addr().unwrap();
    let (tx, mut reports) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve_page(listener, page(&bases, &planned), tx));

    watch.step("chromium loads the page and sends");
    let url = format!("http://{page_addr}/");
    let mut browser = Browser::launch(&url);
    let (report_ua, report) = page_report(&mut reports, &mut browser, &url).await;
    let sent_at = watch.elapsed();

    // What the page did, per beacon: every URL as long as computed here
    // (the near-limit ones exactly 2000 to the longest base), none refused,
    // every sendBeacon queued, every image request ended.
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), planned.len() * bases.len());
    for r in results {
        let id = r["id"].as_str().unwrap();
        let p = by_id[id];
        let b = r["base"].as_str().unwrap();
        let want_len = beacon_url(b, &p.capsule).len();
        assert_eq!(r["length"], json!(want_len), "URL length of {id} to {b}");
        // An image answered 204 fires `onerror` (no image data): expected.
        let want: &[&str] = if p.path == "beacon" {
            &["queued"]
        } else {
            &["error", "load"]
        };
        let outcome = r["outcome"].as_str().unwrap_or("none");
        assert!(want.contains(&outcome), "{id} to {b}: {r}");
    }
    let at_limit = results
        .iter()
        .filter(|r| r["length"] == json!(MAX_URL))
        .count();
    assert!(
        at_limit >= 2,
        "the near-limit beacons are {MAX_URL} characters long in the browser"
    );
    let page_ua = report["userAgent"].as_str().expect("navigator.userAgent");
    assert_eq!(
        page_ua, report_ua,
        "navigator.userAgent is the User-Agent header"
    );
    assert!(
        page_ua.contains("Chrome"),
        "a Chromium user agent: {page_ua}"
    );

    // Kafka: each event exactly once per collector, decoding to the object
    // the page sent, with Chromium's user agent. The browser stays up until
    // then, so no beacon is cut off by its exit.
    watch.step("reading Kafka");
    let (vk_msgs, json_msgs) = tokio::join!(
        read_topic(&brokers, &vk_topic, planned.len()),
        read_topic(&brokers, &json_topic, planned.len())
    );
    let in_kafka_at = watch.elapsed();
    watch.step("stopping chromium");
    drop(browser);
    server.abort();
    watch.step("checking");

    for (name, msgs, parse) in [
        (
            "varnishkafka",
            &vk_msgs,
            parse_varnishkafka as fn(&[u8]) -> (String, Value, String),
        ),
        ("json", &json_msgs, parse_json),
    ] {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in msgs.iter() {
            let (id, capsule, ua) = parse(&m.payload);
            let p = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{name}: unexpected event {id}"));
            assert_eq!(
                capsule, p.capsule,
                "{name}: {id} decodes to what the page sent"
            );
            assert_eq!(ua, page_ua, "{name}: {id} carries Chromium's user agent");
            *seen.entry(id).or_default() += 1;
        }
        for p in &planned {
            let n = seen.get(&p.id).copied().unwrap_or(0);
            assert_eq!(
                n, 1,
                "{name}: {} ({}) arrived {n} times, not once",
                p.id, p.path
            );
        }
        assert_eq!(msgs.len(), planned.len(), "{name}: no other messages");
    }

    // The collectors saw nothing but good beacons.
    for (name, svc) in [("varnishkafka", &vk), ("json", &js)] {
        let m = svc.metrics().await;
        assert_eq!(
            m.sum("beacond_requests_total", &[("status", "204")]),
            planned.len() as f64,
            "{name}: 204s"
        );
        for (k, v) in &m.0 {
            if k.starts_with("beacond_requests_total{") && !k.contains("\"204\"") {
                assert_eq!(*v, 0.0, "{name}: {k}");
            }
        }
    }
    eprintln!(
        "{} beacons per collector from {page_ua}: page done at {sent_at:.1?}, all in Kafka at {in_kafka_at:.1?}",
        planned.len()
    );
    watch.step("stopping the collectors");
    vk.stop().await;
    js.stop().await;
    watch.step("done");
}

// ---------------------------------------------------------------------------
// The Event Platform intake (`POST /v1/events`) from a real browser.

/// The stream config's streams the events page sends to.
const EVENT_STREAMS: [&str; 4] = [
    "eventlogging_NavigationTiming",
    "analytics.test",
    "test.event",
    "product_metrics.web_base",
];
/// A fixed client-side time (`client_dt`, Metrics Platform's `dt`).
const CLIENT_DT: &str = "2026-12-01T21:41:46.123Z";

/// What beacond must fill in, by what the event's schema defines.
#[derive(Debug, Clone, Copy)]
struct Fills {
    /// Top-level `dt` (receive time): `analytics/legacy/*` schemas only.
    dt: bool,
    /// `http.request_headers["user-agent"]`.
    user_agent: bool,
    /// `http.client_ip`.
    client_ip: bool,
    /// test/event's `test` property, `default: default value`.
    test_default: bool,
}

/// One event the page sends, as the test builds it.
#[derive(Debug, Clone)]
struct PlannedEvent {
    id: String,
    stream: &'static str,
    schema: &'static str,
    sent: Value,
    fills: Fills,
}

/// One request the page makes: `how` is `beacon` (sendBeacon, a string body:
/// `text/plain;charset=UTF-8`, no preflight) or `fetch` (keepalive,
/// `application/json`: preflighted).
#[derive(Debug, Clone)]
struct PlannedSend {
    name: String,
    how: &'static str,
    hasty: bool,
    /// One event (sent as an object) or several (sent as an array).
    events: Vec<PlannedEvent>,
}

impl PlannedSend {
    fn body(&self) -> Value {
        match self.events.as_slice() {
            [one] if !self.name.contains("array") => one.sent.clone(),
            many => Value::Array(many.iter().map(|e| e.sent.clone()).collect()),
        }
    }
}

/// NavigationTiming as `mw.eventLog.submit` sends it (EventLogging's legacy
/// capsule fields at the top level, `client_dt`, no `meta.dt`).
fn navigation_timing(id: &str) -> PlannedEvent {
    PlannedEvent {
        id: id.into(),
        stream: "eventlogging_NavigationTiming",
        schema: "/analytics/legacy/navigationtiming/1.6.0",
        sent: json!({
            "$schema": "/analytics/legacy/navigationtiming/1.6.0",
            "meta": {"stream": "eventlogging_NavigationTiming", "domain": "test.wikipedia.org", "id": id},
            "client_dt": CLIENT_DT,
            "schema": "NavigationTiming",
            "webHost": "test.wikipedia.org",
            "wiki": "testwiki",
            "event": {
                "isAnon": true, "isOversample": false, "action": "view", "namespaceId": 0,
                "revId": 1_234_567, "mediaWikiVersion": "1.44.0-wmf.5", "skin": "vector-2022",
                "responseStart": 213, "domInteractive": 480, "domComplete": 912,
                "loadEventStart": 915, "loadEventEnd": 930, "firstPaint": 301,
                "firstContentfulPaint": 301, "largestContentfulPaint": 640,
                "cumulativeLayoutShift": 0.0123, "transferSize": 45_231,
                "netinfoEffectiveConnectionType": "4g", "pageviewToken": "2d1c0fa9e3b8a7c65f41"
            }
        }),
        fills: Fills {
            dt: true,
            user_agent: true,
            client_ip: true,
            test_default: false,
        },
    }
}

fn analytics_test(id: &str) -> PlannedEvent {
    PlannedEvent {
        id: id.into(),
        stream: "analytics.test",
        schema: "/analytics/test/1.0.0",
        sent: json!({
            "$schema": "/analytics/test/1.0.0",
            "meta": {"stream": "analytics.test", "domain": "test.wikipedia.org", "id": id},
            "client_dt": CLIENT_DT,
            "web_session_id": "0123456789abcdefghij",
            "web_pageview_id": "klmnopqrst0123456789",
            "test_string": "Déjà vu — 日本語 😀 \"quoted\" <b>",
        }),
        fills: Fills {
            dt: false,
            user_agent: true,
            client_ip: true,
            test_default: false,
        },
    }
}

/// test/event defines no `http` (nothing of the request is filled in) and a
/// default for `test`, which the event leaves out.
fn test_event(id: &str) -> PlannedEvent {
    PlannedEvent {
        id: id.into(),
        stream: "test.event",
        schema: "/test/event/1.0.0",
        sent: json!({
            "$schema": "/test/event/1.0.0",
            "meta": {"stream": "test.event", "domain": "test.wikipedia.org", "id": id},
            "test_map": {"browser": "chromium", "unicode": "Ünïcödé 👨‍👩‍👧‍👦"},
        }),
        fills: Fills {
            dt: false,
            user_agent: false,
            client_ip: false,
            test_default: true,
        },
    }
}

/// A Metrics Platform web base event. web/base 1.3.0 defines
/// `http.request_headers` but not `http.client_ip`.
fn web_base(id: &str, action: &str) -> PlannedEvent {
    PlannedEvent {
        id: id.into(),
        stream: "product_metrics.web_base",
        schema: "/analytics/product_metrics/web/base/1.3.0",
        sent: json!({
            "$schema": "/analytics/product_metrics/web/base/1.3.0",
            "meta": {"stream": "product_metrics.web_base", "domain": "test.wikipedia.org", "id": id},
            "dt": CLIENT_DT,
            "action": action,
            "action_source": "toc",
            "element_id": "toc-Early_life",
            "instrument_name": "TableOfContents",
            "agent": {"client_platform": "mediawiki_js", "client_platform_family": "desktop_browser"},
            "page": {"id": 12_345, "title": "Ünïcödé_page", "namespace_id": 0, "revision_id": 987_654},
            "mediawiki": {"database": "testwiki", "skin": "vector-2022", "version": "1.44.0-wmf.5"},
            "performer": {
                "is_logged_in": false,
                "active_browsing_session_token": "abcdefghij0123456789",
                "pageview_id": "9876543210zyxwvutsrq"
            }
        }),
        fills: Fills {
            dt: false,
            user_agent: true,
            client_ip: false,
            test_default: false,
        },
    }
}

/// The requests: the same mix by sendBeacon (hasty, as EventLogging and
/// Metrics Platform send) and by fetch (three waiting for 201, one hasty).
fn plan_events(run: &str) -> Vec<PlannedSend> {
    let mut sends = Vec::new();
    for how in ["beacon", "fetch"] {
        let id = |what: &str| format!("{run}-{how}-{what}");
        let hasty = how == "beacon";
        let mut send = |name: &str, hasty: bool, events: Vec<PlannedEvent>| {
            sends.push(PlannedSend {
                name: format!("{how}-{name}"),
                how,
                hasty,
                events,
            })
        };
        send(
            "navtiming",
            hasty,
            vec![navigation_timing(&id("navtiming"))],
        );
        send(
            "analytics-test",
            hasty,
            vec![analytics_test(&id("analytics-test"))],
        );
        send(
            "web-base-array",
            hasty,
            vec![
                web_base(&id("web-base-0"), "init"),
                web_base(&id("web-base-1"), "click"),
                test_event(&id("array-test-event")),
            ],
        );
        send("test-event", true, vec![test_event(&id("test-event"))]);
    }
    sends
}

/// The events page: sends every beacon, then every fetch one after the
/// other (each awaited, so the preflight cache sees them in order), and
/// reports what each returned: `sendBeacon`'s boolean; the fetch's status,
/// `ok` and response type (readable only if beacond's CORS headers allowed
/// it; otherwise the fetch rejects with a TypeError, reported as `error`).
/// Last, the control: the same fetch of `denied_event` to `denied_endpoint`,
/// a beacond that does not list the page's origin.
fn events_page(
    endpoint: &str,
    sends: &[PlannedSend],
    denied_endpoint: &str,
    denied_event: &PlannedEvent,
) -> String {
    let sends: Vec<Value> = sends
        .iter()
        .map(|s| {
            let url = if s.hasty {
                format!("{endpoint}?hasty=true")
            } else {
                endpoint.to_string()
            };
            json!({"name": s.name, "how": s.how, "url": url, "body": s.body()})
        })
        .collect();
    let script_json = |v: &Value| v.to_string().replace('<', "\\u003c");
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>beacond events browser test</title></head>
<body><p id="status">sending</p>
<script>
function report(body) {{
  fetch('/report', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, body: JSON.stringify(body) }});
}}
window.addEventListener('error', (e) => report({{ error: String(e.message) + ' at line ' + e.lineno }}));
window.addEventListener('unhandledrejection', (e) => report({{ error: 'unhandled rejection: ' + String(e.reason) }}));
</script>
<script>
"use strict";
const SENDS = {sends};
const DENIED = {denied};
(async () => {{
  const results = [];
  for (const s of SENDS.filter((s) => s.how === 'beacon')) {{
    // As mw.eventLog.submit and Metrics Platform send.
    results.push({{ name: s.name, queued: navigator.sendBeacon(s.url, JSON.stringify(s.body)) }});
  }}
  for (const s of SENDS.filter((s) => s.how === 'fetch').concat([DENIED])) {{
    const r = {{ name: s.name }};
    results.push(r);
    try {{
      const response = await fetch(s.url, {{
        method: 'POST',
        keepalive: true,
        headers: {{ 'Content-Type': 'application/json' }},
        body: JSON.stringify(s.body),
      }});
      r.status = response.status;
      r.ok = response.ok;
      r.type = response.type;
      r.body = await response.text();
    }} catch (e) {{
      r.error = String(e);
    }}
  }}
  document.getElementById('status').textContent = 'done';
  report({{ userAgent: navigator.userAgent, origin: location.origin, results }});
}})();
</script>
</body></html>
"#,
        sends = script_json(&Value::Array(sends)),
        denied = script_json(
            &json!({"name": "denied", "how": "fetch", "url": denied_endpoint, "body": denied_event.sent})
        ),
    )
}

/// Checks one event read back from Kafka against what the page sent: boon
/// calls it valid; each field beacond fills in is there (and only those its
/// schema defines) with the right value; everything else is as sent.
fn check_event(
    oracle: &crosscheck::BoonOracle,
    planned: &PlannedEvent,
    mut got: Value,
    page_ua: &str,
    window: (time::OffsetDateTime, time::OffsetDateTime),
) {
    use time::format_description::well_known::Rfc3339;
    let id = &planned.id;
    oracle.assert_agrees(planned.schema, &got, true, id);
    assert_eq!(got["$schema"], planned.schema, "{id}: $schema");
    let meta = got["meta"].as_object_mut().expect("meta");
    let meta_dt = meta
        .remove("dt")
        .unwrap_or_else(|| panic!("{id}: meta.dt filled in"));
    let meta_dt = meta_dt.as_str().expect("meta.dt is a string").to_string();
    assert!(
        meta_dt.len() == 24 && meta_dt.ends_with('Z'),
        "{id}: meta.dt {meta_dt:?} is UTC with milliseconds"
    );
    let received = time::OffsetDateTime::parse(&meta_dt, &Rfc3339).expect("meta.dt parses");
    assert!(
        window.0 <= received && received <= window.1,
        "{id}: meta.dt {meta_dt} is the receive time, within the test's run"
    );
    let obj = got.as_object_mut().expect("an object");
    if planned.fills.dt {
        assert_eq!(
            obj.remove("dt"),
            Some(json!(meta_dt)),
            "{id}: dt is the receive time"
        );
    }
    if planned.fills.test_default {
        assert_eq!(
            obj.remove("test"),
            Some(json!("default value")),
            "{id}: the schema's default"
        );
    }
    if planned.fills.user_agent || planned.fills.client_ip {
        let mut http = obj
            .remove("http")
            .unwrap_or_else(|| panic!("{id}: http filled in"));
        let http = http.as_object_mut().expect("http is an object");
        let ip = http.remove("client_ip");
        if planned.fills.client_ip {
            assert_eq!(
                ip,
                Some(json!("127.0.0.1")),
                "{id}: http.client_ip is the browser's address"
            );
        } else {
            assert_eq!(ip, None, "{id}: the schema has no http.client_ip");
        }
        let headers = http.remove("request_headers");
        if planned.fills.user_agent {
            assert_eq!(
                headers,
                Some(json!({"user-agent": page_ua})),
                "{id}: the browser's user agent"
            );
        }
        assert!(http.is_empty(), "{id}: nothing else in http: {http:?}");
    }
    assert_eq!(
        got, planned.sent,
        "{id}: apart from the fill-ins, as the page sent it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn chromium_events_by_send_beacon_and_cors_fetch_arrive_once_valid() {
    let brokers = require_broker();
    ensure_chromium();
    let watch = Watch::start("browser events", TEST_BUDGET);
    let window_start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    watch.step("creating topics");
    let prefix = unique_prefix("browser-events");
    create_event_topics(&brokers, &prefix, &EVENT_STREAMS).await;

    // The page's origin: its own loopback port, bound first so that beacond
    // can be told to allow it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());

    watch.step("starting beacond");
    let mut config = events_config(&brokers, &prefix);
    config.events.cors_allowed_origins = vec![page_origin.clone()];
    let svc = Running::start(config).await;
    // The control: a beacond that allows another origin only.
    let mut config = events_config(&brokers, &prefix);
    config.events.cors_allowed_origins = vec!["https://test.wikipedia.org".into()];
    let denying = Running::start(config).await;
    svc.wait_ready().await;
    denying.wait_ready().await;
    let endpoint = format!("http://{}/v1/events", svc.beacon);
    let denied_endpoint = format!("http://{}/v1/events", denying.beacon);
    assert_ne!(
        endpoint.split("/v1").next(),
        Some(page_origin.as_str()),
        "another origin"
    );

    let run = unique_topic("run");
    let sends = plan_events(&run);
    let events: Vec<&PlannedEvent> = sends.iter().flat_map(|s| &s.events).collect();
    let by_id: HashMap<&str, &PlannedEvent> = events.iter().map(|e| (e.id.as_str(), *e)).collect();
    assert_eq!(by_id.len(), events.len(), "unique meta.id");
    let (tx, mut reports) = mpsc::unbounded_channel();
    // Not among the expected events: if it reached Kafka, it would be "unexpected".
    let denied_event = test_event(&format!("{run}-denied-test-event"));
    let html = events_page(&endpoint, &sends, &denied_endpoint, &denied_event);
    let server = tokio::spawn(serve_page(listener, html, tx));

    watch.step("chromium loads the page and sends");
    let url = format!("{page_origin}/");
    let mut browser = Browser::launch(&url);
    let (report_ua, report) = page_report(&mut reports, &mut browser, &url).await;
    let sent_at = watch.elapsed();

    let page_ua = report["userAgent"].as_str().expect("navigator.userAgent");
    assert_eq!(
        page_ua, report_ua,
        "navigator.userAgent is the User-Agent header"
    );
    assert!(
        page_ua.contains("Chrome"),
        "a Chromium user agent: {page_ua}"
    );
    assert_eq!(report["origin"], json!(page_origin), "the page's origin");
    let results = report["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        sends.len() + 1,
        "a result per send: {report}"
    );
    let denied = results.last().expect("the control's result");
    assert_eq!(denied["name"], "denied");
    assert!(
        denied["error"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError"))
            && denied["status"].is_null(),
        "a fetch from an origin beacond does not allow fails: {denied}"
    );
    for s in &sends {
        let r = results
            .iter()
            .find(|r| r["name"] == json!(s.name))
            .unwrap_or_else(|| panic!("no result for {}: {report}", s.name));
        if s.how == "beacon" {
            assert_eq!(r["queued"], json!(true), "{}: sendBeacon queued it", s.name);
        } else {
            // A cross-origin response is readable only with CORS allowed.
            let want = if s.hasty { 202 } else { 201 };
            assert_eq!(
                (&r["status"], &r["ok"], &r["type"], &r["body"]),
                (&json!(want), &json!(true), &json!("cors"), &json!("")),
                "{}: fetch resolved, CORS allowed: {r}",
                s.name
            );
        }
    }

    watch.step("reading Kafka");
    let oracle = crosscheck::BoonOracle::fixtures();
    let count = |stream: &str| events.iter().filter(|e| e.stream == stream).count();
    let error_topic = format!("{prefix}beacond.error.validation");
    let topic = |i: usize| format!("{prefix}{}", EVENT_STREAMS[i]);
    let topics = [topic(0), topic(1), topic(2), topic(3)];
    let (nav, atest, tevent, webbase, errors) = tokio::join!(
        read_topic(&brokers, &topics[0], count(EVENT_STREAMS[0])),
        read_topic(&brokers, &topics[1], count(EVENT_STREAMS[1])),
        read_topic(&brokers, &topics[2], count(EVENT_STREAMS[2])),
        read_topic(&brokers, &topics[3], count(EVENT_STREAMS[3])),
        read_topic(&brokers, &error_topic, 0),
    );
    let in_kafka_at = watch.elapsed();
    watch.step("stopping chromium");
    drop(browser);
    server.abort();
    let window_end = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);

    watch.step("checking");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (stream, msgs) in EVENT_STREAMS.iter().zip([&nav, &atest, &tevent, &webbase]) {
        for m in msgs.iter() {
            let got: Value = serde_json::from_slice(&m.payload).expect("a JSON event");
            let id = got["meta"]["id"].as_str().expect("meta.id").to_string();
            let planned = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{stream}: unexpected event {got}"));
            assert_eq!(planned.stream, *stream, "{id}: on its stream's topic");
            check_event(&oracle, planned, got, page_ua, (window_start, window_end));
            *seen.entry(id).or_default() += 1;
        }
    }
    for e in &events {
        let n = seen.get(&e.id).copied().unwrap_or(0);
        assert_eq!(n, 1, "{} arrived {n} times, not once", e.id);
    }
    let error_events: Vec<String> = errors
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(error_events.is_empty(), "error events: {error_events:?}");

    // beacond's side: on /v1/events, one 202 per hasty request and one 201
    // per other fetch, the preflights (204: nothing else answers 204 there),
    // nothing else; every event accepted.
    let m = svc.metrics().await;
    let route = ("route", "/v1/events");
    let status = |s: &str| m.sum("beacond_requests_total", &[route, ("status", s)]);
    let hasty = sends.iter().filter(|s| s.hasty).count() as f64;
    let fetches: Vec<&PlannedSend> = sends.iter().filter(|s| s.how == "fetch").collect();
    let waited = fetches.iter().filter(|s| !s.hasty).count() as f64;
    assert_eq!(status("202"), hasty, "202s");
    assert_eq!(status("201"), waited, "201s");
    // Chromium caches a preflight per URL (Access-Control-Max-Age), so at
    // least one per URL the fetches use, at most one per fetch.
    let preflights = status("204");
    let fetch_urls = if fetches.iter().any(|s| s.hasty) && fetches.iter().any(|s| !s.hasty) {
        2.0
    } else {
        1.0
    };
    assert!(
        fetch_urls <= preflights && preflights <= fetches.len() as f64,
        "preflights answered: {preflights}, for {} fetches to {fetch_urls} URLs",
        fetches.len()
    );
    for (k, v) in &m.0 {
        if k.starts_with("beacond_requests_total{")
            && !["\"201\"", "\"202\"", "\"204\""]
                .iter()
                .any(|s| k.contains(s) && k.contains("route=\"/v1/events\""))
        {
            assert_eq!(*v, 0.0, "{k}");
        }
    }
    assert_eq!(
        m.sum("beacond_events_total", &[("outcome", "accepted")]),
        events.len() as f64,
        "events accepted"
    );
    for outcome in ["invalid", "error"] {
        assert_eq!(
            m.sum("beacond_events_total", &[("outcome", outcome)]),
            0.0,
            "{outcome} events"
        );
    }
    // The control answered the preflight, without CORS headers, so the
    // browser never sent the POST.
    let m = denying.metrics().await;
    for (k, v) in &m.0 {
        if k.starts_with("beacond_requests_total{") {
            let want = k.contains("route=\"/v1/events\"") && k.contains("status=\"204\"");
            assert_eq!(*v, if want { 1.0 } else { 0.0 }, "control: {k}");
        }
    }
    assert_eq!(
        m.sum("beacond_events_total", &[]),
        0.0,
        "control: no event processed"
    );
    eprintln!(
        "{} events in {} requests ({} by sendBeacon, {} by fetch, {preflights} preflights) \
         from {page_ua}: page done at {sent_at:.1?}, all in Kafka at {in_kafka_at:.1?}",
        events.len(),
        sends.len(),
        sends.len() - fetches.len(),
        fetches.len()
    );
    watch.step("stopping beacond");
    svc.stop().await;
    denying.stop().await;
    watch.step("done");
}
