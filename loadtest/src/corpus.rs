//! The traffic: EventLogging-style beacons from a small built-in corpus.
//!
//! Beacon `n` of a run is a pure function of `(seed, n)` ([`Corpus::choose`]):
//! valid or not, which template, GET or POST, user agent, client IP. The load
//! generator writes it; the Kafka checker recomputes it to check what arrived.
//!
//! A template is a capsule with a placeholder where the unique id goes
//! (`event.loadtest_id`), pre-encoded once. Ids are ASCII letters, digits and
//! `-`, which neither encoding escapes, so a request is the encoded prefix,
//! the id and the encoded suffix.

use crate::encode::{canonical_json, encode_uri_component, php_style_json, rawurlencode};
use crate::rng::{Fnv, Rng};
use serde_json::{json, Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest id we generate: `<8 hex>-<tag><20 digits>`.
pub const MAX_ID_LEN: usize = 30;
/// The EventLogging client does not send URLs longer than this.
pub const CLIENT_URL_LIMIT: usize = 2000;
/// What the client's URL looks like before the query, for sizing.
const CLIENT_BASE_URL: &str = "https://en.wikipedia.org/beacon/event?";
const PLACEHOLDER: &str = "LTIDPLACEHOLDERQQQQQQQQQQQQQQQ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `encodeURIComponent(JSON.stringify(capsule))`
    Browser,
    /// `rawurlencode` of PHP-style JSON (`\uXXXX`, `\/`, `\u0020`)
    Php,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub schema: &'static str,
    pub encoding: Encoding,
    query_prefix: String,
    /// Includes the trailing `;`.
    query_suffix: String,
    /// Hash state after the canonical JSON before the id.
    canon_prefix: Fnv,
    canon_suffix: String,
}

impl Template {
    fn new(
        schema: &'static str,
        revision: i64,
        mut event: Map<String, Value>,
        encoding: Encoding,
    ) -> Self {
        event.insert("loadtest_id".into(), Value::String(PLACEHOLDER.into()));
        let capsule = json!({
            "event": Value::Object(event),
            "schema": schema,
            "revision": revision,
            "webHost": "en.wikipedia.org",
            "wiki": "enwiki",
        });
        let compact = serde_json::to_string(&capsule).expect("capsule serializes");
        let encoded = match encoding {
            Encoding::Browser => encode_uri_component(&compact),
            Encoding::Php => rawurlencode(&php_style_json(&compact)),
        };
        let (qp, qs) = split_once_exact(&encoded, PLACEHOLDER);
        let canon = canonical_json(&capsule);
        let (cp, cs) = split_once_exact(&canon, PLACEHOLDER);
        let mut canon_prefix = Fnv::default();
        canon_prefix.write(cp.as_bytes());
        Template {
            schema,
            encoding,
            query_prefix: qp.to_string(),
            query_suffix: format!("{qs};"),
            canon_prefix,
            canon_suffix: cs.to_string(),
        }
    }

    /// The encoded query (without `?`) for beacon id `id`.
    pub fn write_query(&self, out: &mut Vec<u8>, id: &str) {
        out.extend_from_slice(self.query_prefix.as_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(self.query_suffix.as_bytes());
    }

    pub fn query(&self, id: &str) -> String {
        let mut v = Vec::new();
        self.write_query(&mut v, id);
        String::from_utf8(v).expect("ascii")
    }

    /// Hash of the canonical JSON of the capsule with id `id`.
    pub fn capsule_hash(&self, id: &str) -> u64 {
        let mut h = self.canon_prefix;
        h.write(id.as_bytes())
            .write(self.canon_suffix.as_bytes())
            .finish()
    }

    /// Length of the URL a browser would have sent for the longest id.
    pub fn client_url_len(&self) -> usize {
        CLIENT_BASE_URL.len() + self.query_prefix.len() + MAX_ID_LEN + self.query_suffix.len()
    }
}

fn split_once_exact<'a>(s: &'a str, needle: &str) -> (&'a str, &'a str) {
    let at = s.find(needle).expect("placeholder present");
    assert!(
        s[at + needle.len()..].find(needle).is_none(),
        "placeholder occurs once"
    );
    (&s[..at], &s[at + needle.len()..])
}

/// Invalid beacons: what a collector must refuse (400, or 414 when too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    TruncatedJson,
    NotAnObject,
    BadPercent,
    BadUtf8,
    Empty,
    Oversize,
}

pub const INVALID_KINDS: [InvalidKind; 6] = [
    InvalidKind::TruncatedJson,
    InvalidKind::NotAnObject,
    InvalidKind::BadPercent,
    InvalidKind::BadUtf8,
    InvalidKind::Empty,
    InvalidKind::Oversize,
];

fn invalid_query(kind: InvalidKind, oversize_bytes: usize) -> String {
    match kind {
        InvalidKind::TruncatedJson => {
            format!(
                "{};",
                encode_uri_component(r#"{"event":{"action":"click","x":"#)
            )
        }
        InvalidKind::NotAnObject => format!("{};", encode_uri_component(r#"[1,2,"three"]"#)),
        InvalidKind::BadPercent => "%7B%22event%22%3A%7B%7D%ZZ%7D;".into(),
        InvalidKind::BadUtf8 => "%7B%22event%22%3A%7B%22x%22%3A%22%C3%28%22%7D%7D;".into(),
        InvalidKind::Empty => ";".into(),
        InvalidKind::Oversize => {
            let head = encode_uri_component(r#"{"event":{"pad":""#);
            let tail = encode_uri_component(r#""},"schema":"Oversize","revision":1}"#);
            let pad = oversize_bytes
                .saturating_sub(head.len() + tail.len() + 1)
                .max(1);
            format!("{head}{}{tail};", "x".repeat(pad))
        }
    }
}

pub const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Firefox/115.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "WikipediaApp/7.5.1 (Android 12; Phone) Default Channel",
];

pub(crate) const TEXTS: &[&str] = &[
    "Main Page",
    "Zürich café «guillemets» naïve façade",
    "東京都 — 日本の首都",
    "Ελληνικά (γλώσσα)",
    "Москва — столица России",
    "עברית ועוד RTL text",
    "emoji 😀 👍🏽 🇩🇪 👩‍💻 🚀",
    "it's (quoted) *stars* & 100% + plus/slash ~tilde! ?query=x;y",
    "say \"hi\" \\ back\tslash",
    "हिन्दी देवनागरी",
];

pub(crate) fn token(r: &mut Rng, len: usize) -> String {
    const ALPHA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..len)
        .map(|_| ALPHA[r.below(ALPHA.len())] as char)
        .collect()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("schema builders return objects"),
    }
}

type SchemaFn = fn(&mut Rng) -> Map<String, Value>;

/// `(name, revision, builder)`, small to large.
const SCHEMAS: &[(&str, i64, SchemaFn)] = &[
    ("Popups", 17_807_993, |r| {
        obj(json!({
            "action": *r.pick(&["pageLoaded", "opened", "dismissed", "dwelledButAbandoned"]),
            "isAnon": r.below(2) == 0,
            "pageToken": token(r, 20),
            "namespaceIdSource": 0,
            "pageIdSource": r.below(70_000_000),
        }))
    }),
    ("SearchSatisfaction", 22_249_818, |r| {
        obj(json!({
            "action": *r.pick(&["searchResultPage", "click", "visitPage", "checkin"]),
            "searchSessionId": token(r, 32),
            "pageViewId": token(r, 20),
            "uniqueId": token(r, 32),
            "query": *r.pick(TEXTS),
            "hitsReturned": r.below(100),
            "msToDisplayResults": r.below(2000),
            "inputLocation": "header-moved",
            "skin": "vector-2022",
            "isForced": false,
        }))
    }),
    ("NavigationTiming", 22_167_193, |r| {
        let base = r.below(300) as i64;
        obj(json!({
            "pageviewToken": token(r, 20),
            "isAnon": r.below(3) != 0,
            "isHiDPI": r.below(2) == 0,
            "isOversample": false,
            "mediaWikiVersion": "1.42.0-wmf.5",
            "mediaWikiLoadEnd": base + 900,
            "originCountry": *r.pick(&["DE", "US", "JP", "BR", "IN", "ZA"]),
            "netinfoEffectiveConnectionType": *r.pick(&["4g", "3g", "slow-2g"]),
            "netinfoConnectionType": "wifi",
            "deviceMemory": *r.pick(&[2, 4, 8]),
            "hardwareConcurrency": *r.pick(&[2, 4, 8, 16]),
            "connectStart": base, "connectEnd": base + 40, "dnsLookup": 12,
            "domComplete": base + 1200, "domInteractive": base + 700,
            "fetchStart": 3, "firstPaint": base + 350, "loadEventEnd": base + 1300,
            "loadEventStart": base + 1250, "requestStart": base + 45, "responseEnd": base + 300,
            "responseStart": base + 200, "secureConnectionStart": base + 20,
            "transferSize": 30_000 + r.below(50_000), "unload": 0,
            "gaps": 7, "cumulativeLayoutShift": 0.0125,
        }))
    }),
    ("EditAttemptStep", 23_014_546, |r| {
        obj(json!({
            "action": *r.pick(&["init", "ready", "loaded", "saveIntent", "saveAttempt", "saveSuccess"]),
            "editor_interface": *r.pick(&["visualeditor", "wikitext", "wikitext-2017"]),
            "integration": "page",
            "mw_version": "1.42.0-wmf.5",
            "platform": *r.pick(&["desktop", "phone"]),
            "user_editcount": r.below(50_000),
            "user_id": r.below(40_000_000),
            "user_class": "IP",
            "version": 1,
            "page_id": r.below(70_000_000),
            "page_title": *r.pick(TEXTS),
            "page_ns": 0,
            "revision_id": 1_200_000_000 + r.below(10_000_000),
            "editing_session_id": token(r, 32),
            "init_type": "page",
            "init_mechanism": "click",
            "ready_timing": r.below(5000),
            "is_oversample": false,
        }))
    }),
    ("ReadingDepth", 18_201_205, |r| {
        obj(json!({
            "action": *r.pick(&["pageLoaded", "pageUnloaded"]),
            "domInteractiveTime": r.below(3000),
            "firstPaintTime": r.below(2000),
            "isAnon": true,
            "namespaceId": 0,
            "pageTitle": *r.pick(TEXTS),
            "pageToken": token(r, 20),
            "sessionToken": token(r, 20),
            "skin": "minerva",
            "totalLength": r.below(600_000),
            "visibleLength": r.below(600_000),
            "default_sample": true,
            "tags": [*r.pick(TEXTS), "🔥", "読み物"],
        }))
    }),
    ("DesktopWebUIActionsTracking", 20_041_228, |r| {
        obj(json!({
            "action": "click",
            "name": *r.pick(&["ui.dropdown-p-personal", "ui.sidebar-toc", "vector.pinned-toc"]),
            "token": token(r, 20),
            "editCountBucket": "0 edits",
            "isAnon": true,
            "skin": "vector-2022",
            "skinVersion": "latest",
            "viewportSizeBucket": ">1200px",
            "extra": *r.pick(TEXTS),
            "contextText": ([*r.pick(TEXTS), *r.pick(TEXTS), *r.pick(TEXTS)].join(" · ")),
        }))
    }),
];

/// Target client-URL lengths for the padded large templates.
const LARGE_URL_SIZES: &[usize] = &[1200, 1600, 1900, CLIENT_URL_LIMIT];

fn padded_template(r: &mut Rng, target_url_len: usize, encoding: Encoding) -> Template {
    let (name, rev, build) = SCHEMAS[SCHEMAS.len() - 1];
    let mut event = build(r);
    let t = Template::new(name, rev, event.clone(), encoding);
    let len = t.client_url_len();
    // `filler` is ASCII letters: one character in the URL each, either encoding.
    let pad = target_url_len.saturating_sub(len + "\"filler\":\"\",".len() * 3);
    let filler: String = (0..pad).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    event.insert("filler".into(), Value::String(filler.clone()));
    let mut t = Template::new(name, rev, event.clone(), encoding);
    // Converge exactly onto the target (the key's quoting costs differ per encoding).
    let mut filler = filler;
    while t.client_url_len() > target_url_len && !filler.is_empty() {
        let over = t.client_url_len() - target_url_len;
        filler.truncate(filler.len().saturating_sub(over));
        event.insert("filler".into(), Value::String(filler.clone()));
        t = Template::new(name, rev, event.clone(), encoding);
    }
    while t.client_url_len() < target_url_len {
        filler.push('z');
        event.insert("filler".into(), Value::String(filler.clone()));
        let next = Template::new(name, rev, event.clone(), encoding);
        if next.client_url_len() > target_url_len {
            break;
        }
        t = next;
    }
    t
}

#[derive(Debug, Clone, Copy)]
pub struct CorpusConfig {
    pub seed: u64,
    /// Fraction of beacons that are invalid, in [0, 1].
    pub invalid_fraction: f64,
    /// Fraction sent as sendBeacon (POST, empty body); the rest are image GETs.
    pub post_fraction: f64,
    /// Query length of the oversize invalid beacon.
    pub oversize_bytes: usize,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig {
            seed: 1,
            invalid_fraction: 0.0,
            post_fraction: 0.75,
            oversize_bytes: 9000,
        }
    }
}

/// What beacon `n` is: derived from `(seed, n)` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub post: bool,
    /// `Ok(template index)` or `Err(invalid kind)`.
    pub kind: Result<usize, InvalidKind>,
    pub user_agent: usize,
    /// The `X-Forwarded-For` value and the client IP a collector trusting us
    /// as a proxy must record (the right-most entry).
    pub xff: String,
    pub client_ip: IpAddr,
}

impl Choice {
    pub fn valid(&self) -> bool {
        self.kind.is_ok()
    }
}

/// The user agent (an index into [`USER_AGENTS`]), the `X-Forwarded-For`
/// value, and the client IP a collector trusting us as a proxy must record
/// (the right-most entry): drawn the same way for beacons and events.
pub(crate) fn pick_client(r: &mut Rng) -> (usize, String, IpAddr) {
    let user_agent = r.below(USER_AGENTS.len());
    let a = r.below(250) + 1;
    let b = r.below(250) + 1;
    let (a, b) = (a as u8, b as u8);
    let v4 = |x, y, z, w| IpAddr::V4(Ipv4Addr::new(x, y, z, w));
    let (xff, client_ip) = match r.below(10) {
        0..=2 => (format!("203.0.113.{a}"), v4(203, 0, 113, a)),
        3..=5 => (format!("198.51.100.{a}"), v4(198, 51, 100, a)),
        6 | 7 => (format!("192.0.2.{a}, 203.0.113.{b}"), v4(203, 0, 113, b)),
        8 => {
            let last = r.below(0xffff) as u16 + 1;
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
            (ip.to_string(), IpAddr::V6(ip))
        }
        _ => (format!("2001:db8::1, 198.51.100.{b}"), v4(198, 51, 100, b)),
    };
    (user_agent, xff, client_ip)
}

pub struct Corpus {
    pub cfg: CorpusConfig,
    pub templates: Vec<Template>,
    invalid: Vec<String>,
}

impl Corpus {
    pub fn new(cfg: CorpusConfig) -> Self {
        let mut r = Rng::new(cfg.seed ^ 0x5eed);
        let mut templates = Vec::new();
        const VARIANTS: usize = 6;
        for &(name, rev, build) in SCHEMAS {
            for _ in 0..VARIANTS {
                let event = build(&mut r);
                templates.push(Template::new(name, rev, event.clone(), Encoding::Browser));
                templates.push(Template::new(name, rev, event, Encoding::Php));
            }
        }
        for &size in LARGE_URL_SIZES {
            for enc in [Encoding::Browser, Encoding::Php] {
                templates.push(padded_template(&mut r, size, enc));
            }
        }
        let invalid = INVALID_KINDS
            .iter()
            .map(|&k| invalid_query(k, cfg.oversize_bytes))
            .collect();
        Corpus {
            cfg,
            templates,
            invalid,
        }
    }

    pub fn choose(&self, n: u64) -> Choice {
        let mut r = Rng::for_item(self.cfg.seed, n);
        let valid = r.next_f64() >= self.cfg.invalid_fraction;
        let t = r.below(self.templates.len());
        let inv = r.below(INVALID_KINDS.len());
        let post = r.next_f64() < self.cfg.post_fraction;
        let (user_agent, xff, client_ip) = pick_client(&mut r);
        Choice {
            post,
            kind: if valid {
                Ok(t)
            } else {
                Err(INVALID_KINDS[inv])
            },
            user_agent,
            xff,
            client_ip,
        }
    }

    /// The encoded query (after `?`) for choice `c` with id `id`.
    pub fn write_query(&self, c: &Choice, id: &str, out: &mut Vec<u8>) {
        match c.kind {
            Ok(t) => self.templates[t].write_query(out, id),
            Err(k) => out.extend_from_slice(self.invalid[k as usize].as_bytes()),
        }
    }

    /// Writes a complete HTTP/1.1 request for beacon `n` the way a browser sends
    /// it: sendBeacon (POST, empty body) or an image (GET).
    pub fn write_request(&self, out: &mut Vec<u8>, host: &str, path: &str, id: &str, c: &Choice) {
        out.extend_from_slice(if c.post { b"POST " } else { b"GET " });
        out.extend_from_slice(path.as_bytes());
        out.push(b'?');
        self.write_query(c, id, out);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\nUser-Agent: ");
        out.extend_from_slice(USER_AGENTS[c.user_agent].as_bytes());
        out.extend_from_slice(b"\r\nX-Forwarded-For: ");
        out.extend_from_slice(c.xff.as_bytes());
        out.extend_from_slice(
            b"\r\nAccept: */*\r\nReferer: https://en.wikipedia.org/wiki/Special:Random\r\n",
        );
        if c.post {
            out.extend_from_slice(b"Content-Length: 0\r\n");
        } else {
            out.extend_from_slice(b"Accept-Encoding: gzip, deflate, br\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Beacon ids: `<run>-<n>` for measured beacons, `<run>-<tag><n>` for others
/// (`w` warm-up, `b` baseline, `p` probe, `s` slow client).
pub fn beacon_id(run: &str, tag: &str, n: u64) -> String {
    format!("{run}-{tag}{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::decode_query;

    #[test]
    fn templates_decode_to_their_capsule_and_hash() {
        let c = Corpus::new(CorpusConfig::default());
        let id = beacon_id("deadbeef", "", 12345);
        let mut schemas = std::collections::BTreeSet::new();
        for t in &c.templates {
            schemas.insert(t.schema);
            let q = format!("?{}", t.query(&id));
            let v =
                decode_query(&q).unwrap_or_else(|e| panic!("{} {:?}: {e}", t.schema, t.encoding));
            assert_eq!(v["event"]["loadtest_id"], id.as_str());
            assert_eq!(v["schema"], t.schema);
            let h = crate::rng::Fnv::default()
                .write(canonical_json(&v).as_bytes())
                .finish();
            assert_eq!(h, t.capsule_hash(&id));
            assert!(
                t.client_url_len() <= CLIENT_URL_LIMIT,
                "{} is {}",
                t.schema,
                t.client_url_len()
            );
        }
        assert_eq!(schemas.len(), SCHEMAS.len());
        let longest = c
            .templates
            .iter()
            .map(Template::client_url_len)
            .max()
            .unwrap();
        assert!(
            longest >= CLIENT_URL_LIMIT - 5,
            "a near-limit template exists: {longest}"
        );
        let shortest = c
            .templates
            .iter()
            .map(Template::client_url_len)
            .min()
            .unwrap();
        assert!(shortest < 450, "a small template exists: {shortest}");
        assert!(
            c.templates.iter().any(|t| t.query("x").contains("%F0%9F")),
            "emoji present"
        );
    }

    #[test]
    fn php_and_browser_variants_of_one_event_match() {
        let c = Corpus::new(CorpusConfig::default());
        let mut differ = 0;
        for pair in c.templates.chunks(2).take(36) {
            assert_eq!(pair[0].encoding, Encoding::Browser);
            assert_eq!(pair[1].encoding, Encoding::Php);
            let (a, b) = (pair[0].query("id-1"), pair[1].query("id-1"));
            differ += usize::from(a != b);
            assert_eq!(decode_query(&a).unwrap(), decode_query(&b).unwrap());
            assert_eq!(pair[0].capsule_hash("id-1"), pair[1].capsule_hash("id-1"));
        }
        assert!(differ >= 20, "most pairs are encoded differently: {differ}");
    }

    #[test]
    fn invalid_beacons_do_not_decode() {
        let c = Corpus::new(CorpusConfig::default());
        for (k, q) in INVALID_KINDS.iter().zip(&c.invalid) {
            if *k == InvalidKind::Oversize {
                continue; // well-formed, only too long
            }
            match decode_query(q) {
                Err(_) => {}
                Ok(v) => assert!(!v.is_object(), "{k:?} decoded to an object"),
            }
        }
        assert!(c.invalid[InvalidKind::Oversize as usize].len() >= 9000);
    }

    #[test]
    fn choice_mix_follows_fractions() {
        let c = Corpus::new(CorpusConfig {
            invalid_fraction: 0.1,
            post_fraction: 0.75,
            ..Default::default()
        });
        let n = 20_000;
        let choices: Vec<Choice> = (0..n).map(|i| c.choose(i)).collect();
        let invalid = choices.iter().filter(|c| !c.valid()).count() as f64 / n as f64;
        let post = choices.iter().filter(|c| c.post).count() as f64 / n as f64;
        assert!((invalid - 0.1).abs() < 0.02, "{invalid}");
        assert!((post - 0.75).abs() < 0.02, "{post}");
        assert!(choices.iter().any(|c| c.client_ip.is_ipv6()));
        assert!(choices.iter().any(|c| c.xff.contains(", ")));
        assert_eq!(c.choose(77), c.choose(77));
        let uas: std::collections::BTreeSet<usize> = choices.iter().map(|c| c.user_agent).collect();
        assert_eq!(uas.len(), USER_AGENTS.len());
    }

    #[test]
    fn request_bytes_look_like_a_browser() {
        let c = Corpus::new(CorpusConfig::default());
        let mut choice = c.choose(1);
        choice.post = true;
        let mut out = Vec::new();
        c.write_request(&mut out, "127.0.0.1:8080", "/beacon/event", "r-1", &choice);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /beacon/event?%7B"), "{text}");
        assert!(text.contains(";  HTTP/1.1\r\n") || text.contains("; HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Length: 0\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        let mut req = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut req);
        assert!(parsed.parse(text.as_bytes()).unwrap().is_complete());
    }
}
