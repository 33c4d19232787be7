//! Line formatting: the bytes of the Kafka message for a beacon.
//!
//! Owns the output formats (`output.format`) and the error-topic record.
//! Each format is one function from (raw query, decoded capsule, metadata) to
//! bytes appended to a caller-owned buffer; adding a format means adding a
//! variant to [`OutputFormat`], its writer, and its size bound.
//!
//! - `varnishkafka`: `%q\t%l\t%n\t%{%FT%T}t\t%{X-Client-IP}o\t"%{User-agent}i"`,
//!   byte for byte, always six tab-separated fields on one line.
//! - `json`: the event the EventLogging processor would emit from that line,
//!   except that beacond's metadata (`recvFrom`, `seqId`, `dt`, `ip`,
//!   `userAgent`, `uuid`) always wins over a capsule field of that name.
//!
//! Must never: write a raw control character of the user agent into a
//! varnishkafka line, emit invalid JSON in the json format, or allocate per
//! beacon (buffers are reused; the uuid name is built in the output buffer).

use std::fmt;
use std::io::Write as _;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decode::{AttestedField, Key, RejectReason};
use crate::meta::BeaconMeta;

/// How an accepted beacon is written to the main topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The raw line varnishkafka wrote for EventLogging (the default).
    #[default]
    Varnishkafka,
    /// The decoded event, as the EventLogging processor emits it.
    Json,
    /// The converted Event Platform event (`crate::legacy_conversion`), to
    /// its `eventlogging_<Schema>` stream: not a line; [`OutputFormat::write_line`]
    /// writes nothing for it.
    #[serde(rename = "event_platform")]
    EventPlatform,
}

/// `output.format`: one format or a list (`["varnishkafka", "event_platform"]`
/// writes both). At most one line format (`varnishkafka` or `json`) goes to
/// `kafka.topic`; `event_platform` adds the converted event. Written back as
/// a plain string when it holds one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFormats(Vec<OutputFormat>);

impl Default for OutputFormats {
    fn default() -> Self {
        OutputFormats(vec![OutputFormat::Varnishkafka])
    }
}

impl OutputFormats {
    pub fn new(formats: Vec<OutputFormat>) -> Self {
        OutputFormats(formats)
    }

    pub fn as_slice(&self) -> &[OutputFormat] {
        &self.0
    }

    /// The line format written to `kafka.topic`, if any.
    pub fn line(&self) -> Option<OutputFormat> {
        self.0
            .iter()
            .copied()
            .find(|f| *f != OutputFormat::EventPlatform)
    }

    /// Whether the converted Event Platform event is written.
    pub fn event_platform(&self) -> bool {
        self.0.contains(&OutputFormat::EventPlatform)
    }
}

impl From<OutputFormat> for OutputFormats {
    fn from(f: OutputFormat) -> Self {
        OutputFormats(vec![f])
    }
}

impl serde::Serialize for OutputFormats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OutputFormats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FormatsVisitor;
        impl<'de> Visitor<'de> for FormatsVisitor {
            type Value = OutputFormats;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a format name or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let one = OutputFormat::deserialize(serde::de::value::StrDeserializer::new(v))?;
                Ok(OutputFormats(vec![one]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(f) = seq.next_element::<OutputFormat>()? {
                    all.push(f);
                }
                Ok(OutputFormats(all))
            }
        }
        d.deserialize_any(FormatsVisitor)
    }
}

/// The longest raw query copied into an error-topic record.
pub const ERROR_RAW_QUERY_MAX: usize = 1024;

/// Longest text form of an IP address (an IPv4-mapped IPv6 address).
const MAX_IP_TEXT: usize = 45;

/// Longest message key beacond writes for a beacon: the text of an IP address.
pub const MAX_KEY_BYTES: usize = MAX_IP_TEXT;

impl OutputFormat {
    /// Appends the message for an accepted beacon to `out`.
    /// `capsule` is the decoded JSON object text of `raw_query`.
    pub fn write_line(
        self,
        raw_query: &str,
        capsule: &str,
        meta: &BeaconMeta<'_>,
        out: &mut Vec<u8>,
    ) {
        match self {
            OutputFormat::Varnishkafka => write_varnishkafka(raw_query, meta, out),
            OutputFormat::Json => write_json(capsule, meta, out),
            OutputFormat::EventPlatform => {}
        }
    }

    /// An upper bound on the size of any message this format (or the error
    /// topic) writes, given the request limits. Checked against the
    /// producer's `message.max.bytes` at start-up.
    pub fn max_message_bytes(
        self,
        max_query_bytes: usize,
        max_user_agent_bytes: usize,
        hostname_len: usize,
    ) -> usize {
        let line = match self {
            // ?q \t host \t seq \t time \t ip \t "ua": a user agent byte
            // escapes to at most 4 bytes (\xHH).
            OutputFormat::Varnishkafka => {
                1 + max_query_bytes
                    + 1
                    + hostname_len
                    + 1
                    + 20
                    + 1
                    + 19
                    + 1
                    + MAX_IP_TEXT
                    + 3
                    + 4 * max_user_agent_bytes
            }
            // The capsule is copied (never longer than the raw query); a
            // string byte escapes to at most 6 bytes (\u00XX); keys, numbers
            // and the uuid fit in 256 bytes.
            OutputFormat::Json => {
                max_query_bytes + 6 * hostname_len + 6 * max_user_agent_bytes + MAX_IP_TEXT + 256
            }
            // Not on `kafka.topic`: a converted event too large for the
            // producer becomes an error verdict (`message_too_large`).
            OutputFormat::EventPlatform => 0,
        };
        let error_record = 2 * ERROR_RAW_QUERY_MAX
            + 6 * hostname_len
            + 6 * max_user_agent_bytes
            + MAX_IP_TEXT
            + 512;
        line.max(error_record)
    }
}

fn write_varnishkafka(raw_query: &str, meta: &BeaconMeta<'_>, out: &mut Vec<u8>) {
    out.push(b'?');
    out.extend_from_slice(raw_query.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(meta.hostname.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(itoa::Buffer::new().format(meta.seq.unwrap_or(0)).as_bytes());
    out.push(b'\t');
    out.extend_from_slice(&meta.received.formatted());
    out.push(b'\t');
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", meta.client_ip);
    out.extend_from_slice(b"\t\"");
    escape_user_agent(meta.user_agent, out);
    out.push(b'"');
}

/// The longest user agent field the EventLogging processor reads from a
/// `varnishkafka` line, in characters, its quotes included: its `parse_ua`
/// refuses a longer one, so a line with it would be lost after a 204.
pub const PROCESSOR_MAX_USER_AGENT_FIELD_CHARS: usize = 800;

/// The characters of the user agent field as [`write_varnishkafka`] writes
/// it: the quotes, plus the user agent escaped by [`escape_user_agent`]
/// (a `\t` is two characters, a `\xHH` four). Counts without writing.
pub fn user_agent_field_chars(ua: &[u8]) -> usize {
    let mut chars = 2;
    for chunk in ua.utf8_chunks() {
        for c in chunk.valid().chars() {
            chars += match c {
                '\t' | '\n' | '\r' | '\\' => 2,
                '\u{0}'..='\u{1f}' | '\u{7f}' => 4,
                _ => 1,
            };
        }
        chars += 4 * chunk.invalid().len();
    }
    chars
}

/// Escapes a user agent for the tab-separated line: control characters and
/// bytes that are not UTF-8 become `\t`, `\n`, `\r` or `\xHH`, a backslash
/// becomes `\\`; everything else, quotes included, passes as is.
pub fn escape_user_agent(ua: &[u8], out: &mut Vec<u8>) {
    // Nearly every user agent is printable ASCII without a backslash: one
    // copy. The test has no early exit, so it compiles to a vector loop.
    let plain = !ua.iter().fold(false, |odd, &b| {
        odd | !(0x20..0x7f).contains(&b) | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(ua);
        return;
    }
    for chunk in ua.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let escaped: &[u8] = match b {
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\\' => b"\\\\",
                0x00..=0x1f | 0x7f => b"",
                _ => continue,
            };
            out.extend_from_slice(&valid[start..i]);
            if escaped.is_empty() {
                push_hex_escape(b, out);
            } else {
                out.extend_from_slice(escaped);
            }
            start = i + 1;
        }
        out.extend_from_slice(&valid[start..]);
        for &b in chunk.invalid() {
            push_hex_escape(b, out);
        }
    }
}

fn push_hex_escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
}

/// The json format: the capsule's members, except the [`AttestedField`]s
/// (a client must not set what beacond vouches for; the intake counted
/// them), then beacond's `recvFrom`, `seqId`, `dt`, `ip`, `userAgent` and
/// `uuid`. Each key appears once.
fn write_json(capsule: &str, meta: &BeaconMeta<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(b'{');
    let copied = serde_json::Deserializer::from_str(capsule).deserialize_map(MemberCopier { out });
    if copied.is_err() {
        // Unreachable for text `decode_beacon` accepted; keep the line valid
        // JSON anyway by dropping the capsule's members.
        out.truncate(start + 1);
    }
    if out.len() > start + 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"recvFrom\":");
    write_json_string(meta.hostname.as_bytes(), out);
    out.extend_from_slice(b",\"seqId\":");
    out.extend_from_slice(itoa::Buffer::new().format(meta.seq.unwrap_or(0)).as_bytes());
    out.extend_from_slice(b",\"dt\":\"");
    out.extend_from_slice(&meta.received.formatted());
    let _ = write!(out, "Z\",\"ip\":\"{}\",\"userAgent\":", meta.client_ip);
    write_json_string(meta.user_agent, out);
    out.extend_from_slice(b",\"uuid\":\"");
    push_processor_uuid(meta, out);
    out.extend_from_slice(b"\"}");
}

/// Appends the EventLogging processor's uuid of a beacon, as 32 lowercase hex
/// digits (`'%032x' % uuid5(NAMESPACE_URL, 'event://{recvFrom}/?seqId={seqId}&dt={dt}')`),
/// `dt` being `YYYY-MM-DDTHH:MM:SSZ`, every part beacond's own (from `meta`).
/// Shared by the json format and the converted Event Platform event; the
/// name is built in `out` and replaced by the hex, so nothing is allocated.
pub fn push_processor_uuid(meta: &BeaconMeta<'_>, out: &mut Vec<u8>) {
    let name_start = out.len();
    out.extend_from_slice(b"event://");
    out.extend_from_slice(meta.hostname.as_bytes());
    out.extend_from_slice(b"/?seqId=");
    out.extend_from_slice(itoa::Buffer::new().format(meta.seq.unwrap_or(0)).as_bytes());
    out.extend_from_slice(b"&dt=");
    out.extend_from_slice(&meta.received.formatted());
    out.push(b'Z');
    let uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, &out[name_start..]);
    out.truncate(name_start);
    out.extend_from_slice(
        uuid.simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
}

/// Copies the capsule's members into the output, skipping the attested ones.
struct MemberCopier<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> Visitor<'de> for MemberCopier<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if AttestedField::of_key(&key.0).is_some() {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            write_json_string(key.0.as_bytes(), self.out);
            self.out.push(b':');
            self.out.extend_from_slice(value.get().as_bytes());
        }
        Ok(())
    }
}

/// Writes bytes as a JSON string; bytes that are not UTF-8 become U+FFFD.
fn write_json_string(bytes: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(bytes);
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

/// Appends the error-topic record for a rejected beacon: one JSON object with
/// the reason, the raw query (cut to [`ERROR_RAW_QUERY_MAX`] bytes, and then
/// marked `rawQueryCut`), and the metadata.
pub fn write_error_record(
    reason: RejectReason,
    raw_query: &str,
    meta: &BeaconMeta<'_>,
    out: &mut Vec<u8>,
) {
    let mut cut = raw_query.len().min(ERROR_RAW_QUERY_MAX);
    while !raw_query.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(b"{\"reason\":\"");
    out.extend_from_slice(reason.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_string(reason.to_string().as_bytes(), out);
    out.extend_from_slice(b",\"rawQuery\":");
    let mut raw = String::with_capacity(cut + 1);
    raw.push('?');
    raw.push_str(&raw_query[..cut]);
    write_json_string(raw.as_bytes(), out);
    out.extend_from_slice(if cut < raw_query.len() {
        b",\"rawQueryCut\":true"
    } else {
        b",\"rawQueryCut\":false"
    });
    out.extend_from_slice(b",\"recvFrom\":");
    write_json_string(meta.hostname.as_bytes(), out);
    out.extend_from_slice(b",\"dt\":\"");
    out.extend_from_slice(&meta.received.formatted());
    let _ = write!(out, "Z\",\"ip\":\"{}\",\"userAgent\":", meta.client_ip);
    write_json_string(meta.user_agent, out);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::ReceiveTime;

    fn meta<'a>(ua: &'a [u8], ip: &str) -> BeaconMeta<'a> {
        BeaconMeta {
            // 2026-11-28T23:27:14Z
            received: ReceiveTime::from_unix_seconds(1_795_908_434),
            seq: Some(12345),
            client_ip: ip.parse().unwrap(),
            user_agent: ua,
            hostname: "cp3050.esams.wmnet",
        }
    }

    fn line(format: OutputFormat, q: &str, capsule: &str, m: &BeaconMeta<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        format.write_line(q, capsule, m, &mut out);
        out
    }

    const Q: &str =
        "%7B%22event%22%3A%7B%22a%22%3A1%7D%2C%22schema%22%3A%22Test%22%2C%22revision%22%3A-1%7D;";
    const CAPSULE: &str = r#"{"event":{"a":1},"schema":"Test","revision":-1}"#;

    #[test]
    fn varnishkafka_is_byte_exact() {
        let m = meta(b"Mozilla/5.0 (X11; Linux x86_64)", "203.0.113.9");
        let want = format!("?{Q}\tcp3050.esams.wmnet\t12345\t2026-11-28T23:27:14\t203.0.113.9\t\"Mozilla/5.0 (X11; Linux x86_64)\"");
        assert_eq!(
            String::from_utf8(line(OutputFormat::Varnishkafka, Q, CAPSULE, &m)).unwrap(),
            want
        );
    }

    #[test]
    fn varnishkafka_escapes_tab_and_keeps_quotes() {
        let m = meta(b"Evil\t\"UA\"\n\\ \x01\x7f caf\xc3\xa9 \xff", "2001:db8::1");
        let got = line(OutputFormat::Varnishkafka, Q, CAPSULE, &m);
        let want = format!(
            "?{Q}\tcp3050.esams.wmnet\t12345\t2026-11-28T23:27:14\t2001:db8::1\t\"Evil\\t\"UA\"\\n\\\\ \\x01\\x7f café \\xff\""
        );
        assert_eq!(String::from_utf8(got.clone()).unwrap(), want);
        assert_eq!(got.iter().filter(|&&b| b == b'\t').count(), 5, "six fields");
        assert!(!got.contains(&b'\n'));
    }

    #[test]
    fn varnishkafka_empty_user_agent() {
        let m = meta(b"", "203.0.113.9");
        let got = line(OutputFormat::Varnishkafka, Q, CAPSULE, &m);
        assert!(got.ends_with(b"\t203.0.113.9\t\"\""));
    }

    #[test]
    fn json_is_byte_exact_with_independent_uuid() {
        let m = meta(b"Evil\t\"UA\"", "203.0.113.9");
        let got = String::from_utf8(line(OutputFormat::Json, Q, CAPSULE, &m)).unwrap();
        // Python: '%032x' % uuid.uuid5(uuid.NAMESPACE_URL,
        //   'event://cp3050.esams.wmnet/?seqId=12345&dt=2026-11-28T23:27:14Z').int
        let want = concat!(
            r#"{"event":{"a":1},"schema":"Test","revision":-1,"recvFrom":"cp3050.esams.wmnet","seqId":12345,"#,
            r#""dt":"2026-11-28T23:27:14Z","ip":"203.0.113.9","userAgent":"Evil\t\"UA\"","#,
            r#""uuid":"PYTHON_UUID"}"#
        )
        .replace("PYTHON_UUID", PYTHON_UUID);
        assert_eq!(got, want);
    }

    /// Computed by CPython 3.11's `uuid` module (an independent
    /// implementation); see the comment in the test above.
    const PYTHON_UUID: &str = "2fa91094e39f53e7822272dcc54a432d";

    #[test]
    fn json_attested_fields_are_beacond_s_own() {
        // Issue 12, fault 7: a capsule must not set what beacond attests.
        let capsule = r#"{"recvFrom":"other.host","uuid":"forged","ev\"k":"v","seqId":7,"ip":"6.6.6.6","dt":"1999-01-01T00:00:00Z","userAgent":"forged","event":{"ip":"kept"}}"#;
        let m = meta(b"ua", "203.0.113.9");
        let got = line(OutputFormat::Json, "", capsule, &m);
        let text = String::from_utf8(got.clone()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["recvFrom"], "cp3050.esams.wmnet");
        assert_eq!(v["seqId"], 12345);
        assert_eq!(v["ip"], "203.0.113.9");
        assert_eq!(v["dt"], "2026-11-28T23:27:14Z");
        assert_eq!(v["userAgent"], "ua");
        assert_eq!(v["uuid"], PYTHON_UUID);
        assert_eq!(v["ev\"k"], "v");
        // Event data is not metadata: a nested `ip` passes.
        assert_eq!(v["event"]["ip"], "kept");
        for key in ["recvFrom", "seqId", "dt", "ip", "userAgent", "uuid"] {
            assert_eq!(
                text.matches(&format!("\"{key}\":")).count(),
                1 + usize::from(key == "ip"),
                "{key}: {text}"
            );
        }
        assert!(
            !text.contains("forged") && !text.contains("6.6.6.6") && !text.contains("other.host")
        );
    }

    #[test]
    fn json_non_utf8_user_agent_stays_valid_json() {
        let m = meta(b"bad \xff\x00", "203.0.113.9");
        let got = line(OutputFormat::Json, Q, CAPSULE, &m);
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["userAgent"], "bad \u{fffd}\u{0}");
    }

    #[test]
    fn json_empty_capsule() {
        let m = meta(b"ua", "203.0.113.9");
        let got = line(OutputFormat::Json, "", "{}", &m);
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 6);
    }

    #[test]
    fn error_record_cuts_and_marks() {
        let m = BeaconMeta {
            seq: None,
            ..meta(b"ua", "203.0.113.9")
        };
        let long = "x".repeat(ERROR_RAW_QUERY_MAX + 10);
        let mut out = Vec::new();
        write_error_record(RejectReason::QueryTooLong, &long, &m, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reason"], "query_too_long");
        assert_eq!(v["rawQueryCut"], true);
        assert_eq!(
            v["rawQuery"].as_str().unwrap().len(),
            ERROR_RAW_QUERY_MAX + 1
        );
        assert_eq!(v["ip"], "203.0.113.9");
        assert_eq!(v["dt"], "2026-11-28T23:27:14Z");
        out.clear();
        write_error_record(RejectReason::InvalidJson, "%7B", &m, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rawQuery"], "?%7B");
        assert_eq!(v["rawQueryCut"], false);
    }

    #[test]
    fn size_bounds_hold_for_worst_cases() {
        let ua = vec![0x01u8; 100];
        let q = "%22".repeat(30);
        let host = "h".repeat(20);
        for format in [OutputFormat::Varnishkafka, OutputFormat::Json] {
            let m = BeaconMeta {
                hostname: &host,
                ..meta(&ua, "::ffff:255.255.255.255")
            };
            let bound = format.max_message_bytes(q.len(), ua.len(), host.len());
            let capsule = format!("{{\"a\":\"{}\"}}", "\\u0001".repeat(12));
            assert!(line(format, &q, &capsule, &m).len() <= bound, "{format:?}");
            let mut out = Vec::new();
            write_error_record(RejectReason::InvalidJson, &q, &m, &mut out);
            assert!(out.len() <= bound);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Counts an object's members, duplicates included.
        struct CountKeys;

        impl<'de> Visitor<'de> for CountKeys {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
                let mut n = 0;
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(n)
            }
        }

        fn member() -> impl Strategy<Value = (String, serde_json::Value)> {
            (
                prop_oneof![
                    prop::sample::select(vec![
                        "ip",
                        "dt",
                        "uuid",
                        "seqId",
                        "recvFrom",
                        "userAgent",
                        "event",
                        "schema"
                    ])
                    .prop_map(str::to_owned),
                    any::<String>(),
                ],
                prop_oneof![
                    any::<String>().prop_map(serde_json::Value::String),
                    any::<i64>().prop_map(serde_json::Value::from),
                    Just(serde_json::json!({"ip": "6.6.6.6"})),
                ],
            )
        }

        proptest! {
            /// Whatever a capsule's top-level members, the json line is one
            /// object with each of beacond's keys once, holding beacond's
            /// value, and every other member of the capsule unchanged.
            #[test]
            fn json_keeps_event_data_and_attests_its_own(
                members in prop::collection::btree_map(member().prop_map(|(k, _)| k), member().prop_map(|(_, v)| v), 0..8),
                ua in ".{0,20}",
            ) {
                let capsule = serde_json::to_string(&members).unwrap();
                let m = meta(ua.as_bytes(), "203.0.113.9");
                let got = line(OutputFormat::Json, "", &capsule, &m);
                let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&got).unwrap();
                prop_assert_eq!(&v["recvFrom"], "cp3050.esams.wmnet");
                prop_assert_eq!(&v["seqId"], 12345);
                prop_assert_eq!(&v["dt"], "2026-11-28T23:27:14Z");
                prop_assert_eq!(&v["ip"], "203.0.113.9");
                prop_assert_eq!(&v["userAgent"], ua.as_str());
                prop_assert_eq!(&v["uuid"], PYTHON_UUID);
                for (k, value) in &members {
                    if AttestedField::of_key(k).is_none() {
                        prop_assert_eq!(&v[k], value);
                    }
                }
                let ours = members.keys().filter(|k| AttestedField::of_key(k).is_some()).count();
                prop_assert_eq!(v.len(), members.len() - ours + 6);
                // No key twice in the text either (a map would hide it).
                let mut de = serde_json::Deserializer::from_slice(&got);
                let count = serde::de::Deserializer::deserialize_map(&mut de, CountKeys).unwrap();
                prop_assert_eq!(count, v.len());
            }

            #[test]
            fn any_user_agent_gives_a_well_formed_line(ua in prop::collection::vec(any::<u8>(), 0..300)) {
                let m = meta(&ua, "203.0.113.9");
                let got = line(OutputFormat::Varnishkafka, Q, CAPSULE, &m);
                prop_assert_eq!(got.iter().filter(|&&b| b == b'\t').count(), 5);
                prop_assert!(!got.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f));
                prop_assert!(std::str::from_utf8(&got).is_ok());
                let json = line(OutputFormat::Json, Q, CAPSULE, &m);
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
            }

            /// The count the processor limit is checked with is the length
            /// of the field as written, in characters, quotes included.
            #[test]
            fn user_agent_field_chars_is_the_written_field(ua in prop::collection::vec(any::<u8>(), 0..300)) {
                let m = meta(&ua, "203.0.113.9");
                let got = line(OutputFormat::Varnishkafka, Q, CAPSULE, &m);
                let text = std::str::from_utf8(&got).unwrap();
                let field = text.rsplit('\t').next().unwrap();
                prop_assert!(field.starts_with('"') && field.ends_with('"'));
                prop_assert_eq!(user_agent_field_chars(&ua), field.chars().count());
            }
        }
    }
}
