//! The Event Platform traffic (`POST /v1/events`, EventGate's protocol):
//! events of real Wikimedia schemas (the copies in
//! `tests/fixtures/event-schemas/`), one JSON object per request as
//! EventLogging's `mw.eventLog.submit` sends it by `sendBeacon`
//! (`text/plain;charset=UTF-8`), or arrays as Metrics Platform sends them;
//! optionally `application/json` (what `fetch` clients send) and `?hasty=true`.
//!
//! Request `n` of a run is a pure function of `(seed, n)` ([`EventCorpus::choose`]),
//! like a beacon: how many events, which templates (valid or deliberately
//! invalid), content type, user agent, client IP. Every event carries its own
//! `meta.id`, a UUID-shaped string that encodes the run, the id tag and the
//! event's key `n << 12 | j` (`j` its place in the request) ([`event_id`],
//! [`parse_event_id`]), so the Kafka reader finds what it was sent from the id
//! alone. A collector keeps a client's `meta.id` as is.
//!
//! A template is an event with a placeholder where `meta.id` goes, serialized
//! once; a request is the pieces around the ids.

use crate::corpus::{pick_client, token, TEXTS, USER_AGENTS};
use crate::rng::{Fnv, Rng};
use serde_json::{json, Value};
use std::net::IpAddr;

/// Where a collector writes invalid events by default (`<service>.error.validation`).
pub const DEFAULT_ERROR_TOPIC: &str = "beacond.error.validation";
/// Events per request at most: `j` has 12 bits in an event key.
pub const MAX_BATCH: usize = 4095;
const PLACEHOLDER: &str = "LTIDPLACEHOLDER-0000-0000-0000-000000000000";
/// Length of every [`event_id`].
pub const EVENT_ID_LEN: usize = 36;

/// The event key of event `j` of request `n`: what [`crate::verify`] matches.
pub fn event_key(n: u64, j: usize) -> u64 {
    (n << 12) | j as u64
}

/// `(n, j)` of an event key.
pub fn split_key(key: u64) -> (u64, usize) {
    (key >> 12, (key & 0xfff) as usize)
}

/// The 8 hex digits of a run in event ids: the run id itself when it is
/// hexadecimal (the default), else a hash of it.
pub fn run_hex(run_id: &str) -> String {
    if run_id.len() <= 8 && run_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{:0>8}", run_id.to_ascii_lowercase())
    } else {
        let h = Fnv::default().write(run_id.as_bytes()).finish();
        format!("{:08x}", h as u32)
    }
}

fn tag_code(tag: &str) -> u16 {
    match tag {
        "" => 0,
        "w" => 1,
        "b" => 2,
        "p" => 3,
        "s" => 4,
        _ => 0xf,
    }
}

/// `meta.id` of the event with key `key`: `RRRRRRRR-TTTT-4KKK-8KKK-KKKKKKKKKKKK`
/// (run, tag, 72 bits of key), shaped as a version-4 UUID.
pub fn event_id(run_hex: &str, tag: &str, key: u64) -> String {
    let k = format!("{:018x}", u128::from(key));
    format!(
        "{run_hex}-{:04x}-4{}-8{}-{}",
        tag_code(tag),
        &k[..3],
        &k[3..6],
        &k[6..]
    )
}

/// What an id of this run says: `(tag code, key)`, or `None` for another run
/// or another shape.
pub fn parse_event_id(run_hex: &str, id: &str) -> Option<(u16, u64)> {
    let b = id.as_bytes();
    if b.len() != EVENT_ID_LEN || !id.starts_with(run_hex) || b[8] != b'-' {
        return None;
    }
    if b[13] != b'-' || b[14] != b'4' || b[18] != b'-' || b[19] != b'8' || b[23] != b'-' {
        return None;
    }
    let tag = u16::from_str_radix(&id[9..13], 16).ok()?;
    let digits = format!("{}{}{}", &id[15..18], &id[20..23], &id[24..]);
    let key = u128::from_str_radix(&digits, 16).ok()?;
    Some((tag, u64::try_from(key).ok()?))
}

/// How many events a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// One bare JSON object per request (EventLogging's `mw.eventLog.submit`).
    Single,
    /// A JSON array of `min..=max` events (Metrics Platform).
    Array { min: usize, max: usize },
}

impl Batch {
    /// `1` (one object), `N` (arrays of N) or `A-B` (arrays of A to B).
    pub fn parse(s: &str) -> Result<Batch, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: expected 1, N or A-B (events per request)"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None if num(s)? == 1 => return Ok(Batch::Single),
            None => (num(s)?, num(s)?),
        };
        if min == 0 || min > max || max > MAX_BATCH {
            return Err(format!(
                "{s:?}: batch sizes must be 1 to {MAX_BATCH}, A <= B"
            ));
        }
        Ok(Batch::Array { min, max })
    }
}

/// Which server-side fill-ins an event of a schema gets that the reader can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fills {
    /// The schema defines `http.client_ip`.
    pub client_ip: bool,
    /// The schema defines `http.request_headers` (the user agent goes there).
    pub user_agent: bool,
}

type Build = fn(&mut Rng) -> Value;
/// A deliberate schema violation: `(name, mutation of a valid event)`.
type Break = (&'static str, fn(&mut Value));

/// One schema of the corpus.
pub struct EventSchema {
    /// `$schema`, relative as clients send it.
    pub uri: &'static str,
    pub stream: &'static str,
    pub fills: Fills,
    build: Build,
    breaks: &'static [Break],
}

fn client_dt(r: &mut Rng) -> String {
    format!(
        "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60),
        r.below(1000)
    )
}

fn domain(r: &mut Rng) -> &'static str {
    const DOMAINS: &[&str] = &[
        "en.wikipedia.org",
        "de.wikipedia.org",
        "ja.wikipedia.org",
        "en.m.wikipedia.org",
        "commons.wikimedia.org",
    ];
    DOMAINS[r.below(DOMAINS.len())]
}

fn meta(stream: &str, r: &mut Rng) -> Value {
    json!({ "stream": stream, "domain": domain(r), "id": PLACEHOLDER })
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    v.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("templates have this object")
}

fn navigation_timing_event(r: &mut Rng) -> Value {
    let base = r.below(300) as i64;
    json!({
        "pageviewToken": token(r, 20),
        "isAnon": r.below(3) != 0,
        "isOversample": false,
        "action": "view",
        "namespaceId": 0,
        "revId": 1_200_000_000 + r.below(10_000_000),
        "skin": *r.pick(&["vector-2022", "minerva", "timeless"]),
        "mediaWikiVersion": "1.42.0-wmf.5",
        "mediaWikiLoadEnd": base + 900,
        "originCountry": *r.pick(&["DE", "US", "JP", "BR", "IN", "ZA"]),
        "netinfoEffectiveConnectionType": *r.pick(&["4g", "3g", "slow-2g"]),
        "netinfoConnectionType": "wifi",
        "netinfoRtt": 50 + r.below(300),
        "netinfoDownlink": 1.45,
        "deviceMemory": *r.pick(&[2, 4, 8]),
        "hardwareConcurrency": *r.pick(&[2, 4, 8, 16]),
        "cacheHost": "cp3062", "cacheResponseType": *r.pick(&["hit-front", "miss", "pass"]),
        "connectStart": base, "connectEnd": base + 40, "dnsLookup": 12,
        "domComplete": base + 1200, "domInteractive": base + 700,
        "fetchStart": 3, "firstPaint": base + 350, "firstContentfulPaint": base + 360,
        "largestContentfulPaint": base + 800, "largestContentfulPaintElement": "p",
        "loadEventEnd": base + 1300, "loadEventStart": base + 1250,
        "requestStart": base + 45, "responseEnd": base + 300, "responseStart": base + 200,
        "secureConnectionStart": base + 20, "transferSize": 30_000 + r.below(50_000),
        "unload": 0, "gaps": 7, "cumulativeLayoutShift": 0.0125,
        "longTaskTotalTasks": r.below(5), "longTaskTotalDuration": r.below(400),
    })
}

/// The schemas of the corpus: real ones, each with its stream in
/// `config/dev-streams.yaml`.
pub const SCHEMAS: &[EventSchema] = &[
    EventSchema {
        uri: "/analytics/legacy/navigationtiming/1.6.0",
        stream: "eventlogging_NavigationTiming",
        fills: Fills {
            client_ip: true,
            user_agent: true,
        },
        build: |r| {
            json!({
                "$schema": "/analytics/legacy/navigationtiming/1.6.0",
                "meta": meta("eventlogging_NavigationTiming", r),
                "client_dt": client_dt(r),
                "schema": "NavigationTiming",
                "webHost": "en.wikipedia.org",
                "wiki": "enwiki",
                "event": navigation_timing_event(r),
            })
        },
        breaks: &[
            ("missing_required", |v| {
                obj_mut(v, "event").remove("isAnon");
            }),
            ("wrong_type", |v| {
                obj_mut(v, "event").insert("connectStart".into(), json!("fast"));
            }),
            ("additional_property", |v| {
                v.as_object_mut()
                    .expect("object")
                    .insert("unexpectedField".into(), json!(1));
            }),
            ("format_date_time", |v| {
                v["client_dt"] = json!("yesterday at noon")
            }),
            ("minimum", |v| v["event"]["dnsLookup"] = json!(-5)),
        ],
    },
    EventSchema {
        uri: "/analytics/legacy/searchsatisfaction/1.5.0",
        stream: "eventlogging_SearchSatisfaction",
        fills: Fills {
            client_ip: true,
            user_agent: true,
        },
        build: |r| {
            json!({
                "$schema": "/analytics/legacy/searchsatisfaction/1.5.0",
                "meta": meta("eventlogging_SearchSatisfaction", r),
                "client_dt": client_dt(r),
                "schema": "SearchSatisfaction",
                "webHost": "en.wikipedia.org",
                "wiki": "enwiki",
                "event": {
                    "action": *r.pick(&["searchResultPage", "visitPage", "checkin", "click", "hover-on"]),
                    "searchSessionId": token(r, 20),
                    "pageViewId": token(r, 20),
                    "mwSessionId": token(r, 20),
                    "uniqueId": token(r, 32),
                    "scroll": r.below(2) == 0,
                    "source": *r.pick(&["autocomplete", "fulltext"]),
                    "query": *r.pick(TEXTS),
                    "hitsReturned": r.below(500),
                    "msToDisplayResults": r.below(2000),
                    "inputLocation": "header-moved",
                    "skin": "vector-2022",
                    "skinVersion": "latest",
                    "isAnon": true,
                    "isForced": false,
                    "position": r.below(20),
                    "userEditBucket": *r.pick(&["0 edits", "1-4 edits", "1000+ edits"]),
                    "sampleMultiplier": 1.0,
                    "searchToken": token(r, 26),
                },
            })
        },
        breaks: &[
            ("enum", |v| v["event"]["action"] = json!("teleport")),
            ("missing_required", |v| {
                obj_mut(v, "event").remove("uniqueId");
            }),
        ],
    },
    EventSchema {
        uri: "/test/event/1.0.0",
        stream: "test.event",
        fills: Fills {
            client_ip: false,
            user_agent: false,
        },
        build: |r| {
            let mut v = json!({
                "$schema": "/test/event/1.0.0",
                "meta": meta("test.event", r),
                "test": *r.pick(TEXTS),
                "test_map": { "key1": *r.pick(TEXTS), "key2": token(r, 8) },
            });
            if r.below(3) == 0 {
                // The schema's default ("default value") fills it in.
                v.as_object_mut().expect("object").remove("test");
            }
            v
        },
        breaks: &[
            ("wrong_type", |v| v["test"] = json!(42)),
            ("map_value_type", |v| v["test_map"]["key1"] = json!(1)),
        ],
    },
    EventSchema {
        uri: "/analytics/product_metrics/web/base/1.3.0",
        stream: "product_metrics.web_base",
        fills: Fills {
            client_ip: false,
            user_agent: true,
        },
        build: |r| {
            let logged_in = r.below(4) == 0;
            json!({
                "$schema": "/analytics/product_metrics/web/base/1.3.0",
                "meta": meta("product_metrics.web_base", r),
                "dt": client_dt(r),
                "action": *r.pick(&["init", "click", "impression", "hover"]),
                "action_source": "toc",
                "action_context": *r.pick(TEXTS),
                "instrument_name": "TableOfContents",
                "funnel_entry_token": token(r, 20),
                "funnel_event_sequence_position": 1 + r.below(9),
                "element_id": "toc-link",
                "agent": {
                    "client_platform": "mediawiki_js",
                    "client_platform_family": *r.pick(&["desktop_browser", "mobile_browser"]),
                    "release_status": "prod",
                },
                "page": {
                    "id": r.below(70_000_000),
                    "title": *r.pick(TEXTS),
                    "namespace_id": 0,
                    "namespace_name": "",
                    "revision_id": 1_200_000_000 + r.below(10_000_000),
                    "wikidata_qid": format!("Q{}", 1 + r.below(100_000_000)),
                    "content_language": *r.pick(&["en", "de", "ja", "he"]),
                    "is_redirect": false,
                    "user_groups_allowed_to_edit": [],
                    "user_groups_allowed_to_move": ["autoconfirmed"],
                },
                "mediawiki": {
                    "skin": "vector-2022",
                    "version": "1.42.0-wmf.5",
                    "site_content_language": "en",
                    "database": "enwiki",
                },
                "performer": {
                    "is_logged_in": logged_in,
                    "is_bot": false,
                    "is_temp": false,
                    "session_id": token(r, 20),
                    "pageview_id": token(r, 20),
                    "groups": if logged_in { json!(["*", "user", "autoconfirmed"]) } else { json!(["*"]) },
                    "language": "en",
                    "can_probably_edit_page": true,
                    "edit_count_bucket": *r.pick(&["0 edits", "1-4 edits", "5-99 edits"]),
                },
                "experiments": { "enrolled": ["toc-pinning"], "assigned": { "toc-pinning": "treatment" } },
                "sample": { "rate": 0.5, "unit": "pageview" },
            })
        },
        breaks: &[
            ("pattern", |v| {
                v["performer"]["session_id"] = json!("NOT A TOKEN, NO WAY!")
            }),
            ("max_length", |v| v["action"] = json!("x".repeat(65))),
            ("nested_additional_property", |v| {
                obj_mut(v, "agent").insert("extra".into(), json!("y"));
            }),
            ("maximum", |v| v["sample"]["rate"] = json!(2)),
        ],
    },
];

/// One event with a placeholder `meta.id`, serialized once.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    /// Index into [`SCHEMAS`].
    pub schema: usize,
    /// The violation, for a deliberately invalid event.
    pub invalid: Option<&'static str>,
    /// The event as sent, `meta.id` being the placeholder.
    pub value: Value,
    prefix: String,
    suffix: String,
}

impl EventTemplate {
    fn new(schema: usize, invalid: Option<&'static str>, value: Value) -> Self {
        let text = serde_json::to_string(&value).expect("event serializes");
        let at = text.find(PLACEHOLDER).expect("meta.id placeholder");
        EventTemplate {
            schema,
            invalid,
            prefix: text[..at].to_string(),
            suffix: text[at + PLACEHOLDER.len()..].to_string(),
            value,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>, id: &str) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(self.suffix.as_bytes());
    }

    /// The event as sent with `meta.id` = `id`.
    pub fn with_id(&self, id: &str) -> Value {
        let mut v = self.value.clone();
        v["meta"]["id"] = Value::String(id.to_string());
        v
    }

    pub fn stream(&self) -> &'static str {
        SCHEMAS[self.schema].stream
    }

    pub fn len(&self) -> usize {
        self.prefix.len() + EVENT_ID_LEN + self.suffix.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every field sent is in `got` with the same value (a collector adds
    /// fields: `meta.dt`, `dt`, `http.*`, schema defaults). `meta.id` must be `id`.
    pub fn delivered_intact(&self, got: &Value, id: &str) -> bool {
        got.pointer("/meta/id").and_then(Value::as_str) == Some(id) && contains(got, &self.value)
    }
}

/// `want`'s fields are all in `got`, recursively for objects (the placeholder
/// id is not compared; the caller checks `meta.id`).
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (_, Value::String(s)) if s == PLACEHOLDER => true,
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| contains(gv, wv))),
        // Numbers: 1.0 may come back as 1 after a round trip elsewhere.
        (Value::Number(g), Value::Number(w)) => g == w || g.as_f64() == w.as_f64(),
        (g, w) => g == w,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EventsConfig {
    pub seed: u64,
    /// Fraction of events (not requests) that are deliberately invalid.
    pub invalid_fraction: f64,
    pub batch: Batch,
    /// Fraction of requests sent as `application/json` (`fetch`); the rest
    /// are `text/plain;charset=UTF-8` (`sendBeacon`).
    pub json_fraction: f64,
    /// `?hasty=true`: 202 before validation.
    pub hasty: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            seed: 1,
            invalid_fraction: 0.0,
            batch: Batch::Single,
            json_fraction: 0.0,
            hasty: false,
        }
    }
}

/// What request `n` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventChoice {
    /// Template index per event (valid and invalid ones share the list).
    pub events: Vec<usize>,
    pub array: bool,
    pub json: bool,
    pub user_agent: usize,
    pub xff: String,
    pub client_ip: IpAddr,
}

pub struct EventCorpus {
    pub cfg: EventsConfig,
    pub templates: Vec<EventTemplate>,
    valid: Vec<usize>,
    invalid: Vec<usize>,
}

impl EventCorpus {
    pub fn new(cfg: EventsConfig) -> Self {
        let mut r = Rng::new(cfg.seed ^ 0xe7e7);
        let mut templates = Vec::new();
        const VARIANTS: usize = 6;
        for (i, s) in SCHEMAS.iter().enumerate() {
            for _ in 0..VARIANTS {
                templates.push(EventTemplate::new(i, None, (s.build)(&mut r)));
            }
            for &(name, mutate) in s.breaks {
                let mut v = (s.build)(&mut r);
                mutate(&mut v);
                templates.push(EventTemplate::new(i, Some(name), v));
            }
        }
        let (valid, invalid) = (0..templates.len()).partition(|&t| templates[t].invalid.is_none());
        EventCorpus {
            cfg,
            templates,
            valid,
            invalid,
        }
    }

    /// The streams valid events go to (a collector's topic per stream).
    pub fn streams(&self) -> Vec<&'static str> {
        SCHEMAS.iter().map(|s| s.stream).collect()
    }

    pub fn choose(&self, n: u64) -> EventChoice {
        let mut r = Rng::for_item(self.cfg.seed ^ 0xe7e7, n);
        let (count, array) = match self.cfg.batch {
            Batch::Single => (1, false),
            Batch::Array { min, max } => (min + r.below(max - min + 1), true),
        };
        let events = (0..count)
            .map(|_| {
                if r.next_f64() < self.cfg.invalid_fraction {
                    self.invalid[r.below(self.invalid.len())]
                } else {
                    self.valid[r.below(self.valid.len())]
                }
            })
            .collect();
        let json = r.next_f64() < self.cfg.json_fraction;
        let (user_agent, xff, client_ip) = pick_client(&mut r);
        EventChoice {
            events,
            array,
            json,
            user_agent,
            xff,
            client_ip,
        }
    }

    pub fn valid(&self, template: usize) -> bool {
        self.templates[template].invalid.is_none()
    }

    /// EventGate's answer: 202 hasty; else 201 all valid, 400 all invalid, 207 mixed.
    pub fn expected_status(&self, c: &EventChoice) -> u16 {
        let valid = c.events.iter().filter(|&&t| self.valid(t)).count();
        match () {
            _ if self.cfg.hasty => 202,
            _ if valid == c.events.len() => 201,
            _ if valid == 0 => 400,
            _ => 207,
        }
    }

    /// The body of request `n` with its events' ids.
    pub fn write_body(&self, out: &mut Vec<u8>, c: &EventChoice, run_hex: &str, tag: &str, n: u64) {
        if c.array {
            out.push(b'[');
        }
        for (j, &t) in c.events.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let id = event_id(run_hex, tag, event_key(n, j));
            self.templates[t].write(out, &id);
        }
        if c.array {
            out.push(b']');
        }
    }

    /// A complete HTTP/1.1 request as a browser sends it: `sendBeacon(url,
    /// JSON.stringify(event))` (text/plain) or `fetch` (application/json).
    #[allow(clippy::too_many_arguments)]
    pub fn write_request(
        &self,
        out: &mut Vec<u8>,
        body: &mut Vec<u8>,
        host: &str,
        path: &str,
        run_hex: &str,
        tag: &str,
        n: u64,
        c: &EventChoice,
    ) {
        body.clear();
        self.write_body(body, c, run_hex, tag, n);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path.as_bytes());
        if self.cfg.hasty {
            out.extend_from_slice(b"?hasty=true");
        }
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\nUser-Agent: ");
        out.extend_from_slice(USER_AGENTS[c.user_agent].as_bytes());
        out.extend_from_slice(b"\r\nX-Forwarded-For: ");
        out.extend_from_slice(c.xff.as_bytes());
        out.extend_from_slice(b"\r\nAccept: */*\r\nOrigin: https://en.wikipedia.org\r\nReferer: https://en.wikipedia.org/wiki/Special:Random\r\nContent-Type: ");
        out.extend_from_slice(if c.json {
            b"application/json".as_slice()
        } else {
            b"text/plain;charset=UTF-8".as_slice()
        });
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .join("tests/fixtures/event-schemas")
    }

    /// The real schema of `uri`, as JSON (YAML in the fixtures).
    fn load_schema(uri: &str) -> Value {
        for repo in ["primary", "secondary"] {
            let path = fixtures().join(repo).join(format!("jsonschema{uri}.yaml"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let mut v: Value = serde_yaml_ng::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                // `https://json-schema.org/draft-07/schema#` is draft-07;
                // boon knows it by its canonical http URL.
                v["$schema"] = json!("http://json-schema.org/draft-07/schema#");
                return v;
            }
        }
        panic!("no schema {uri} in {}", fixtures().display());
    }

    struct Validator {
        schemas: boon::Schemas,
        index: std::collections::HashMap<&'static str, boon::SchemaIndex>,
    }

    impl Validator {
        fn new() -> Self {
            let mut compiler = boon::Compiler::new();
            compiler.set_default_draft(boon::Draft::V7);
            compiler.enable_format_assertions();
            let mut schemas = boon::Schemas::new();
            let mut index = std::collections::HashMap::new();
            for s in SCHEMAS {
                let loc = format!("https://schema.test{}", s.uri);
                compiler.add_resource(&loc, load_schema(s.uri)).unwrap();
                let i = compiler
                    .compile(&loc, &mut schemas)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", s.uri));
                index.insert(s.uri, i);
            }
            Validator { schemas, index }
        }

        fn check(&self, uri: &str, v: &Value) -> Result<(), String> {
            self.schemas
                .validate(v, self.index[uri])
                .map_err(|e| format!("{e}"))
        }
    }

    /// What the collector fills in before validating, per the contract
    /// (`meta.dt`; `dt` for `analytics/legacy/*`; `http.*` where the schema
    /// has them), so that "valid" means what the collector decides.
    fn filled(s: &EventSchema, mut v: Value, c: &EventChoice) -> Value {
        let now = "2024-05-01T00:00:00.000Z";
        if v["meta"].get("dt").is_none() {
            v["meta"]["dt"] = json!(now);
        }
        if s.uri.starts_with("/analytics/legacy/") && v.get("dt").is_none() {
            v["dt"] = json!(now);
        }
        if s.fills.client_ip || s.fills.user_agent {
            let http = v
                .as_object_mut()
                .unwrap()
                .entry("http")
                .or_insert(json!({}));
            if s.fills.client_ip {
                http["client_ip"] = json!(c.client_ip.to_string());
            }
            if s.fills.user_agent {
                http["request_headers"] = json!({"user-agent": USER_AGENTS[c.user_agent]});
            }
        }
        v
    }

    #[test]
    fn every_valid_event_validates_and_every_invalid_one_does_not() {
        let v = Validator::new();
        let corpus = EventCorpus::new(EventsConfig {
            invalid_fraction: 0.3,
            batch: Batch::Array { min: 1, max: 5 },
            ..EventsConfig::default()
        });
        let mut kinds = std::collections::BTreeSet::new();
        for (i, t) in corpus.templates.iter().enumerate() {
            let s = &SCHEMAS[t.schema];
            let c = corpus.choose(i as u64);
            let event = filled(s, t.with_id(&event_id("deadbeef", "", i as u64)), &c);
            match (t.invalid, v.check(s.uri, &event)) {
                (None, Ok(())) => {}
                (None, Err(e)) => panic!(
                    "valid {} template {i} does not validate: {e}\n{event:#}",
                    s.uri
                ),
                (Some(kind), Ok(())) => panic!("invalid ({kind}) {} template {i} validates", s.uri),
                (Some(kind), Err(_)) => {
                    kinds.insert(kind);
                }
            }
            // The event as sent lacks only what the collector fills in.
            let as_sent = t.with_id("x");
            assert_eq!(as_sent["$schema"], s.uri);
            assert_eq!(as_sent["meta"]["stream"], s.stream);
        }
        assert!(kinds.len() >= 8, "{kinds:?}");
        // Real requests: each event of the body validates (or not) as its template says.
        for n in 0..200 {
            let c = corpus.choose(n);
            let mut body = Vec::new();
            corpus.write_body(&mut body, &c, "deadbeef", "", n);
            let parsed: Value = serde_json::from_slice(&body).unwrap();
            let items = parsed.as_array().unwrap();
            assert_eq!(items.len(), c.events.len());
            for (j, (item, &t)) in items.iter().zip(&c.events).enumerate() {
                let s = &SCHEMAS[corpus.templates[t].schema];
                let id = item["meta"]["id"].as_str().unwrap();
                assert_eq!(parse_event_id("deadbeef", id), Some((0, event_key(n, j))));
                let ok = v.check(s.uri, &filled(s, item.clone(), &c)).is_ok();
                assert_eq!(ok, corpus.valid(t), "request {n} event {j}");
                assert!(corpus.templates[t].delivered_intact(&filled(s, item.clone(), &c), id));
            }
        }
    }

    #[test]
    fn fill_flags_and_streams_match_the_schemas_and_the_stream_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let streams: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(root.join("config/dev-streams.yaml")).unwrap(),
        )
        .unwrap();
        for s in SCHEMAS {
            let schema = load_schema(s.uri);
            let http = &schema["properties"]["http"]["properties"];
            assert_eq!(
                s.fills.client_ip,
                http.get("client_ip").is_some(),
                "{}",
                s.uri
            );
            assert_eq!(
                s.fills.user_agent,
                http.get("request_headers").is_some(),
                "{}",
                s.uri
            );
            let title = schema["title"].as_str().unwrap();
            let entry = streams
                .as_object()
                .unwrap()
                .iter()
                .find(
                    |(k, _)| match k.strip_prefix('/').and_then(|k| k.strip_suffix('/')) {
                        Some(re) => regex::Regex::new(re).unwrap().is_match(s.stream),
                        None => *k == s.stream,
                    },
                )
                .unwrap_or_else(|| panic!("stream {} not in config/dev-streams.yaml", s.stream));
            assert_eq!(entry.1["schema_title"], title, "{}", s.stream);
        }
    }

    #[test]
    fn ids_round_trip_and_belong_to_their_run() {
        for (n, j) in [
            (0u64, 0usize),
            (1, 4094),
            (20_000_000, 17),
            ((1 << 52) - 1, 4095),
        ] {
            let key = event_key(n, j);
            assert_eq!(split_key(key), (n, j));
            for tag in ["", "w", "b", "p"] {
                let id = event_id("0badcafe", tag, key);
                assert_eq!(id.len(), EVENT_ID_LEN, "{id}");
                let (t, k) = parse_event_id("0badcafe", &id).unwrap();
                assert_eq!((t, k), (tag_code(tag), key));
                assert!(parse_event_id("0badcaff", &id).is_none());
            }
        }
        assert_eq!(run_hex("ABC"), "00000abc");
        assert_eq!(run_hex("zz").len(), 8);
        assert!(parse_event_id("00000abc", "not-an-id").is_none());
    }

    #[test]
    fn requests_look_like_send_beacon_and_fetch() {
        let corpus = EventCorpus::new(EventsConfig {
            hasty: true,
            json_fraction: 0.5,
            ..EventsConfig::default()
        });
        let (mut plain, mut json_ct) = (0, 0);
        for n in 0..50 {
            let c = corpus.choose(n);
            let (mut out, mut body) = (Vec::new(), Vec::new());
            corpus.write_request(
                &mut out,
                &mut body,
                "127.0.0.1:1",
                "/v1/events",
                "0000abcd",
                "",
                n,
                &c,
            );
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&out).unwrap() {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(req.path, Some("/v1/events?hasty=true"));
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
            };
            let len: usize = header("content-length").unwrap().parse().unwrap();
            assert_eq!(len, out.len() - head);
            match header("content-type").as_deref() {
                Some("text/plain;charset=UTF-8") => plain += 1,
                Some("application/json") => json_ct += 1,
                other => panic!("{other:?}"),
            }
            let v: Value = serde_json::from_slice(&out[head..]).unwrap();
            assert!(v.is_object(), "a single event is a bare object");
            assert_eq!(corpus.expected_status(&c), 202);
        }
        assert!(plain > 10 && json_ct > 10);
    }

    #[test]
    fn expected_statuses_and_batches() {
        assert_eq!(Batch::parse("1"), Ok(Batch::Single));
        assert_eq!(Batch::parse("10"), Ok(Batch::Array { min: 10, max: 10 }));
        assert_eq!(Batch::parse("1-25"), Ok(Batch::Array { min: 1, max: 25 }));
        for bad in ["0", "5-2", "x", "1-5000"] {
            assert!(Batch::parse(bad).is_err(), "{bad}");
        }
        let corpus = EventCorpus::new(EventsConfig {
            invalid_fraction: 0.5,
            batch: Batch::Array { min: 1, max: 4 },
            ..EventsConfig::default()
        });
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..500 {
            let c = corpus.choose(n);
            assert!((1..=4).contains(&c.events.len()));
            seen.insert(corpus.expected_status(&c));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![201, 207, 400]);
        assert_eq!(corpus.choose(9), corpus.choose(9));
    }
}
