//! Request decoding: turns a beacon's raw query string into validated JSON text.
//!
//! Owns the one rule that decides whether a beacon is well formed, and it is the
//! rule the EventLogging processor applies downstream:
//! `json.loads(unquote_plus(q.strip('?;')))` must give a JSON object. We are
//! stricter than Python in two places, on purpose, so that a bad beacon is
//! refused at the edge with a 4xx instead of being mangled: a `%` not followed
//! by two hex digits is an error (Python keeps it literally), and invalid UTF-8
//! is an error (Python replaces it with U+FFFD). JSON nesting deeper than
//! [`MAX_JSON_DEPTH`] is refused, because the processor's recursive decoder
//! would fail on it. A top-level key given twice (`"a"` and `"\u0061"` are
//! the same key) is refused ([`RejectReason::DuplicateKey`]): parsers
//! downstream disagree on which one counts (Python's last, others the first
//! or both), so beacond could not say what it passed on.
//!
//! The same pass over the top-level object notes which [`AttestedField`]s the
//! capsule carries: the metadata beacond vouches for, which a client must not
//! set (`format` and `legacy_conversion` write beacond's values over them).
//!
//! Must never: allocate per beacon (it decodes into a caller-owned buffer;
//! only a capsule with more than [`INLINE_KEYS`] top-level keys, or a key
//! with escapes, allocates), build a JSON tree, or panic on any input.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Deepest JSON nesting accepted. Real EventLogging capsules nest three or
/// four levels; Python's recursive decoder gives up near 1000.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a beacon was refused. Each reason has its own counter and status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    #[error("missing or empty query string")]
    EmptyQuery,
    #[error("query string longer than http.max_query_bytes")]
    QueryTooLong,
    #[error("bad percent-encoding in query string")]
    BadPercentEncoding,
    #[error("query string does not decode to UTF-8")]
    InvalidUtf8,
    #[error("query string is not valid JSON")]
    InvalidJson,
    #[error("JSON is not an object")]
    NotAnObject,
    #[error("JSON nested too deeply")]
    JsonTooDeep,
    /// A top-level key appears twice.
    #[error("JSON object has a duplicate top-level key")]
    DuplicateKey,
    /// `output.refuse_attested_fields`: the capsule sets a field beacond
    /// attests (`recvFrom`, `seqId`, `dt`, `ip`, `userAgent`, `uuid`).
    #[error("capsule sets a field beacond attests")]
    AttestedField,
    #[error("user agent longer than http.max_user_agent_bytes")]
    UserAgentTooLong,
    /// The `varnishkafka` line only: the user agent field as written (its
    /// quotes and escapes included) is longer than the EventLogging
    /// processor reads (`format::PROCESSOR_MAX_USER_AGENT_FIELD_CHARS`).
    #[error("user agent field longer than the EventLogging processor reads")]
    UserAgentTooLongForProcessor,
    #[error("request body larger than http.max_body_bytes")]
    BodyTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    /// The client went away before its body ended (no one reads the answer).
    #[error("connection closed before the request body ended")]
    BodyIncomplete,
    /// Broken body framing (bad chunked encoding).
    #[error("malformed request body framing")]
    BodyMalformed,
    /// `event_platform` output only: the capsule's `schema` is missing, or
    /// has no version in `events.legacy_schema_versions` nor in the schema
    /// repositories.
    #[error("capsule schema has no known Event Platform schema version")]
    UnknownLegacySchema,
    /// `event_platform` output only: the converted event errored (its stream
    /// is not configured, its schema title differs, it cannot be produced).
    #[error("converted event errored (stream not configured or not producible)")]
    LegacyEventErrored,
}

impl RejectReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [RejectReason; 17] = [
        RejectReason::EmptyQuery,
        RejectReason::QueryTooLong,
        RejectReason::BadPercentEncoding,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::JsonTooDeep,
        RejectReason::DuplicateKey,
        RejectReason::AttestedField,
        RejectReason::UserAgentTooLong,
        RejectReason::UserAgentTooLongForProcessor,
        RejectReason::BodyTooLarge,
        RejectReason::BodyTimeout,
        RejectReason::BodyIncomplete,
        RejectReason::BodyMalformed,
        RejectReason::UnknownLegacySchema,
        RejectReason::LegacyEventErrored,
    ];

    /// Stable snake_case name: the metric label and the error-topic `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyQuery => "empty_query",
            RejectReason::QueryTooLong => "query_too_long",
            RejectReason::BadPercentEncoding => "bad_percent_encoding",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::JsonTooDeep => "json_too_deep",
            RejectReason::DuplicateKey => "duplicate_key",
            RejectReason::AttestedField => "attested_field",
            RejectReason::UserAgentTooLong => "user_agent_too_long",
            RejectReason::UserAgentTooLongForProcessor => "user_agent_too_long_for_processor",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::BodyIncomplete => "body_incomplete",
            RejectReason::BodyMalformed => "body_malformed",
            RejectReason::UnknownLegacySchema => "unknown_legacy_schema",
            RejectReason::LegacyEventErrored => "legacy_event_errored",
        }
    }

    /// The HTTP status a client gets for this reason.
    pub fn status(self) -> http::StatusCode {
        match self {
            RejectReason::QueryTooLong => http::StatusCode::URI_TOO_LONG,
            RejectReason::UserAgentTooLong | RejectReason::UserAgentTooLongForProcessor => {
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RejectReason::BodyTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            RejectReason::BodyTimeout => http::StatusCode::REQUEST_TIMEOUT,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The one-line plain-text body sent with the status.
    pub fn body(self) -> &'static str {
        match self {
            RejectReason::EmptyQuery => "missing or empty query string\n",
            RejectReason::QueryTooLong => "query string too long\n",
            RejectReason::BadPercentEncoding => "bad percent-encoding in query string\n",
            RejectReason::InvalidUtf8 => "query string does not decode to UTF-8\n",
            RejectReason::InvalidJson => "query string is not valid JSON\n",
            RejectReason::NotAnObject => "query string JSON is not an object\n",
            RejectReason::JsonTooDeep => "query string JSON nested too deeply\n",
            RejectReason::DuplicateKey => "query string JSON has a duplicate top-level key\n",
            RejectReason::AttestedField => {
                "query string JSON sets a field the collector attests (recvFrom, seqId, dt, ip, userAgent, uuid)\n"
            }
            RejectReason::UserAgentTooLong => "user agent too long\n",
            RejectReason::UserAgentTooLongForProcessor => {
                "user agent too long for the EventLogging processor (800 characters as written)\n"
            }
            RejectReason::BodyTooLarge => "request body too large\n",
            RejectReason::BodyTimeout => "request body not received in time\n",
            RejectReason::BodyIncomplete => "request body cut short\n",
            RejectReason::BodyMalformed => "malformed request body (chunked encoding)\n",
            RejectReason::UnknownLegacySchema => "unknown legacy schema\n",
            RejectReason::LegacyEventErrored => "event not accepted\n",
        }
    }
}

/// A top-level capsule field whose value beacond vouches for: the EventLogging
/// processor's line fields (`recvFrom`, `seqId`, `dt`, `ip`, `userAgent`) and
/// the `uuid` computed from them. In the processor a capsule field wins over
/// the line's; for these beacond's value wins in every output it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttestedField {
    RecvFrom,
    SeqId,
    Dt,
    Ip,
    UserAgent,
    Uuid,
}

impl AttestedField {
    pub const ALL: [AttestedField; 6] = [
        AttestedField::RecvFrom,
        AttestedField::SeqId,
        AttestedField::Dt,
        AttestedField::Ip,
        AttestedField::UserAgent,
        AttestedField::Uuid,
    ];

    /// The metric label (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            AttestedField::RecvFrom => "recv_from",
            AttestedField::SeqId => "seq_id",
            AttestedField::Dt => "dt",
            AttestedField::Ip => "ip",
            AttestedField::UserAgent => "user_agent",
            AttestedField::Uuid => "uuid",
        }
    }

    /// The key, as in the capsule.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestedField::RecvFrom => "recvFrom",
            AttestedField::SeqId => "seqId",
            AttestedField::Dt => "dt",
            AttestedField::Ip => "ip",
            AttestedField::UserAgent => "userAgent",
            AttestedField::Uuid => "uuid",
        }
    }

    /// The field a top-level key names, if any.
    pub fn of_key(key: &str) -> Option<AttestedField> {
        AttestedField::ALL.into_iter().find(|f| f.as_str() == key)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The set of [`AttestedField`]s a capsule carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttestedFields(u8);

impl AttestedFields {
    pub fn insert(&mut self, field: AttestedField) {
        self.0 |= field.bit();
    }

    pub fn contains(self, field: AttestedField) -> bool {
        self.0 & field.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = AttestedField> {
        AttestedField::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

/// A decoded, valid beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capsule<'b> {
    /// The JSON object text.
    pub text: &'b str,
    /// The attested fields among its top-level keys.
    pub attested: AttestedFields,
}

/// The part of the raw query that carries the JSON: Python's `q.strip('?;')`.
pub fn strip_query(raw: &str) -> &str {
    raw.trim_matches(|c| c == '?' || c == ';')
}

/// Decodes and validates a raw query string (without its leading `?`, as
/// `http::Uri::query` gives it). On success returns the decoded JSON object
/// text, borrowed from `buf`, which is cleared first and reused across calls,
/// and the attested fields it carries.
pub fn decode_beacon<'b>(
    raw_query: &str,
    max_query_bytes: usize,
    buf: &'b mut Vec<u8>,
) -> Result<Capsule<'b>, RejectReason> {
    if raw_query.len() > max_query_bytes {
        return Err(RejectReason::QueryTooLong);
    }
    let payload = strip_query(raw_query);
    if payload.is_empty() {
        return Err(RejectReason::EmptyQuery);
    }
    unquote_plus(payload.as_bytes(), buf)?;
    let text = std::str::from_utf8(buf).map_err(|_| RejectReason::InvalidUtf8)?;
    let attested = validate_json_object(text)?;
    Ok(Capsule { text, attested })
}

/// `+` to space, then `%XX` to the byte it names; a `%` without two hex digits
/// after it is an error. Runs of plain bytes are found with [`find2`] and
/// copied in one go; the output never outgrows the input, so it is sized
/// once and written in place.
fn unquote_plus(input: &[u8], out: &mut Vec<u8>) -> Result<(), RejectReason> {
    out.clear();
    out.resize(input.len(), 0);
    let mut read = 0;
    let mut written = 0;
    while read < input.len() {
        let run = find2(b'%', b'+', &input[read..]).unwrap_or(input.len() - read);
        if run > 0 {
            out[written..written + run].copy_from_slice(&input[read..read + run]);
            written += run;
            read += run;
        }
        let Some(&escape) = input.get(read) else {
            break;
        };
        if escape == b'+' {
            out[written] = b' ';
            read += 1;
        } else {
            let (Some(&hi), Some(&lo)) = (input.get(read + 1), input.get(read + 2)) else {
                out.truncate(written);
                return Err(RejectReason::BadPercentEncoding);
            };
            let (hi, lo) = (HEX[usize::from(hi)], HEX[usize::from(lo)]);
            if (hi | lo) & 0xF0 != 0 {
                out.truncate(written);
                return Err(RejectReason::BadPercentEncoding);
            }
            out[written] = hi << 4 | lo;
            read += 3;
        }
        written += 1;
    }
    out.truncate(written);
    Ok(())
}

/// The first `a` or `b` in `hay`: a plain loop over the first bytes, where
/// most runs in a beacon end (between two escapes, inside a short string),
/// then `memchr2`, vectorized, for what is left of a long run.
#[inline]
fn find2(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    let head = &hay[..hay.len().min(SHORT)];
    if let Some(at) = head.iter().position(|&c| c == a || c == b) {
        return Some(at);
    }
    if hay.len() <= SHORT {
        return None;
    }
    memchr::memchr2(a, b, &hay[SHORT..]).map(|at| at + SHORT)
}

/// The value of each hex digit; 0xFF for every other byte.
static HEX: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = match c as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => 0xFF,
        };
        c += 1;
    }
    table
};

/// Valid JSON, an object at the top without a duplicate key, nested no
/// deeper than [`MAX_JSON_DEPTH`]; returns the attested fields among its keys.
fn validate_json_object(text: &str) -> Result<AttestedFields, RejectReason> {
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    // Depth first: serde_json's validator is iterative and would accept any
    // depth; checking first also keeps the validator's stack small.
    if json_depth_exceeds(text.as_bytes(), MAX_JSON_DEPTH) {
        return Err(RejectReason::JsonTooDeep);
    }
    if first != Some(b'{') {
        serde_json::from_str::<&RawValue>(text).map_err(|_| RejectReason::InvalidJson)?;
        return Err(RejectReason::NotAnObject);
    }
    // One pass: validates the whole text (values skipped without a tree) and
    // reads the top-level keys.
    let mut de = serde_json::Deserializer::from_str(text);
    let keys = de
        .deserialize_map(TopLevelKeys)
        .map_err(|_| RejectReason::InvalidJson)?;
    de.end().map_err(|_| RejectReason::InvalidJson)?;
    keys
}

/// Top-level keys kept inline for the duplicate check; beyond, a hash set.
pub const INLINE_KEYS: usize = 16;

/// The keys seen so far in an object, without allocating for small ones.
struct KeySet<'de> {
    inline: [Cow<'de, str>; INLINE_KEYS],
    len: usize,
    spill: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> KeySet<'de> {
    fn new() -> Self {
        KeySet {
            inline: [const { Cow::Borrowed("") }; INLINE_KEYS],
            len: 0,
            spill: None,
        }
    }

    /// False when `key` was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.spill {
            return set.insert(key);
        }
        if self.inline[..self.len].contains(&key) {
            return false;
        }
        if self.len < INLINE_KEYS {
            self.inline[self.len] = key;
            self.len += 1;
            return true;
        }
        let mut set: HashSet<Cow<'de, str>> = self.inline.iter_mut().map(std::mem::take).collect();
        set.insert(key);
        self.spill = Some(set);
        true
    }
}

/// Visits the top-level object: duplicate keys, attested fields; values are
/// validated and skipped.
struct TopLevelKeys;

impl<'de> Visitor<'de> for TopLevelKeys {
    /// The inner error is ours (a duplicate); serde's is invalid JSON.
    type Value = Result<AttestedFields, RejectReason>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = KeySet::new();
        let mut attested = AttestedFields::default();
        let mut duplicate = false;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            map.next_value::<IgnoredAny>()?;
            if duplicate {
                continue; // still validate the rest
            }
            if let Some(field) = AttestedField::of_key(&key.0) {
                attested.insert(field);
            }
            duplicate = !seen.insert(key.0);
        }
        Ok(if duplicate {
            Err(RejectReason::DuplicateKey)
        } else {
            Ok(attested)
        })
    }
}

/// An object key, borrowed from the text when it has no escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// True when brackets outside strings nest deeper than `limit`. Only
/// meaningful for the nesting of valid JSON; invalid JSON is caught after.
/// Inside a string, jumps to its next quote or backslash with [`find2`].
fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // To the closing quote, past escaped characters.
                i += 1;
                loop {
                    let Some(at) = find2(b'"', b'\\', &bytes[i..]) else {
                        return false; // unterminated: invalid, caught after
                    };
                    i += at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    i += 2; // the backslash and the character it escapes
                    if i >= bytes.len() {
                        return false;
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{encode_uri_component, rawurlencode};

    fn decode(q: &str) -> Result<String, RejectReason> {
        let mut buf = Vec::new();
        decode_beacon(q, 8192, &mut buf).map(|c| c.text.to_owned())
    }

    fn attested(q: &str) -> Result<Vec<&'static str>, RejectReason> {
        let mut buf = Vec::new();
        decode_beacon(q, 8192, &mut buf).map(|c| c.attested.iter().map(|f| f.as_str()).collect())
    }

    #[test]
    fn accepts_real_world_encodings() {
        let capsule = r#"{"event":{"action":"click","label":"Déjà vu 😀 (it's *fine*!)"},"schema":"Test","revision":-1,"webHost":"en.wikipedia.org","wiki":"enwiki"}"#;
        // PHP writes spaces inside JSON strings as \u0020.
        let php_capsule = capsule.replace(' ', "\\u0020");
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "js with ;",
                format!("{};", encode_uri_component(capsule)),
                capsule,
            ),
            ("js without ;", encode_uri_component(capsule), capsule),
            (
                "php",
                format!("{};", rawurlencode(&php_capsule)),
                &php_capsule,
            ),
            (
                "lowercase hex",
                "%7b%22a%22:%22%c3%a9%22%7d".into(),
                r#"{"a":"é"}"#,
            ),
            (
                "plus is space",
                "%7B%22a%22:%22x+y%22%7D;".into(),
                r#"{"a":"x y"}"#,
            ),
            (
                "encoded plus stays plus",
                "%7B%22a%22:%22x%2By%22%7D".into(),
                r#"{"a":"x+y"}"#,
            ),
            ("extra ?;", "?%7B%7D;;".into(), "{}"),
            ("raw json chars", r#"{"a":1};"#.into(), r#"{"a":1}"#),
            ("whitespace around", "+%7B%7D+".into(), " {} "),
            (
                "emoji escaped in json",
                r#"{"e":"\ud83d\ude00"}"#.into(),
                r#"{"e":"\ud83d\ude00"}"#,
            ),
        ];
        for (name, q, want) in cases {
            let got = decode(&q).unwrap_or_else(|e| panic!("{name}: rejected: {e}"));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn rejects_with_reason() {
        let cases: &[(&str, &str, RejectReason)] = &[
            ("empty", "", RejectReason::EmptyQuery),
            ("only separators", "?;", RejectReason::EmptyQuery),
            (
                "percent at end",
                "%7B%7D%",
                RejectReason::BadPercentEncoding,
            ),
            (
                "percent one digit",
                "%7B%7D%4",
                RejectReason::BadPercentEncoding,
            ),
            (
                "percent non hex",
                "%7B%zz%7D",
                RejectReason::BadPercentEncoding,
            ),
            (
                "lone continuation byte",
                "%7B%22a%22:%22%80%22%7D",
                RejectReason::InvalidUtf8,
            ),
            (
                "overlong",
                "%7B%22a%22:%22%C0%AF%22%7D",
                RejectReason::InvalidUtf8,
            ),
            ("truncated json", "%7B%22a%22:", RejectReason::InvalidJson),
            ("trailing garbage", "%7B%7Dx", RejectReason::InvalidJson),
            ("nan", "%7B%22a%22:NaN%7D", RejectReason::InvalidJson),
            ("array", "%5B1,2%5D", RejectReason::NotAnObject),
            ("string", "%22hi%22", RejectReason::NotAnObject),
            ("number", "42", RejectReason::NotAnObject),
            ("null", "null", RejectReason::NotAnObject),
            (
                "duplicate key",
                r#"{"ip":"1.2.3.4","ip":"6.6.6.6"}"#,
                RejectReason::DuplicateKey,
            ),
            (
                "duplicate key, one escaped",
                r#"{"event":{},"\u0065vent":1}"#,
                RejectReason::DuplicateKey,
            ),
            (
                "duplicate key, invalid later",
                r#"{"a":1,"a":2,"b":}"#,
                RejectReason::InvalidJson,
            ),
        ];
        for (name, q, want) in cases {
            assert_eq!(decode(q), Err(*want), "{name}");
        }
    }

    #[test]
    fn attested_fields_and_duplicates_are_top_level_only() {
        assert_eq!(attested(r#"{"event":{"ip":1},"schema":"S"}"#), Ok(vec![]));
        assert_eq!(
            attested(
                r#"{"uuid":"u","ip":"6.6.6.6","dt":0,"seqId":1,"recvFrom":"h","userAgent":"x"}"#
            ),
            Ok(vec!["recvFrom", "seqId", "dt", "ip", "userAgent", "uuid"])
        );
        // Escaped spellings are the same key.
        assert_eq!(attested(r#"{"\u0069p":"6.6.6.6"}"#), Ok(vec!["ip"]));
        // Case matters, as in every JSON parser.
        assert_eq!(attested(r#"{"IP":"6.6.6.6","Ip":1}"#), Ok(vec![]));
        // Found by the decode_beacon fuzz target (the target's own check
        // used a tree of f64s): a number out of f64's range is valid JSON,
        // accepted as before (Python reads it as inf).
        assert_eq!(attested(r#"{"Aa[5":125e11225}"#), Ok(vec![]));
        // Duplicates below the top level are event data: passed on.
        assert!(decode(r#"{"event":{"a":1,"a":2}}"#).is_ok());
        // Many keys (past the inline set) and a duplicate far apart.
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", many.join(","));
        assert!(decode(&text).is_ok());
        let text = format!("{{{},\"k3\":0}}", many.join(","));
        assert_eq!(decode(&text), Err(RejectReason::DuplicateKey));
        let text = format!("{{\"k99\":0,{}}}", many.join(","));
        assert_eq!(decode(&text), Err(RejectReason::DuplicateKey));
    }

    #[test]
    fn too_long_is_414_and_limit_is_inclusive() {
        let mut buf = Vec::new();
        let q = format!("%7B%22a%22:%22{}%22%7D", "x".repeat(100));
        assert!(decode_beacon(&q, q.len(), &mut buf).is_ok());
        let err = decode_beacon(&q, q.len() - 1, &mut buf).unwrap_err();
        assert_eq!(err, RejectReason::QueryTooLong);
        assert_eq!(err.status(), http::StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn depth_limit() {
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert!(decode(&ok).is_ok());
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(decode(&deep), Err(RejectReason::JsonTooDeep));
        // Brackets inside strings do not count.
        let in_string = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(decode(&in_string).is_ok());
        // Hostile: 100k opening brackets is refused quickly, no stack overflow.
        let hostile = "[".repeat(100_000);
        let mut buf = Vec::new();
        assert_eq!(
            decode_beacon(&hostile, usize::MAX, &mut buf),
            Err(RejectReason::JsonTooDeep)
        );
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut names: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RejectReason::ALL.len());
        for r in RejectReason::ALL {
            assert!(r.status().is_client_error());
            assert!(r.body().ends_with('\n') && !r.body()[..r.body().len() - 1].contains('\n'));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn json_object() -> impl Strategy<Value = serde_json::Value> {
            prop::collection::btree_map(any::<String>(), json_value(), 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        }

        proptest! {
            #[test]
            fn browser_encoding_round_trips(obj in json_object(), semicolon in any::<bool>()) {
                let text = serde_json::to_string(&obj).unwrap();
                let q = format!("{}{}", encode_uri_component(&text), if semicolon { ";" } else { "" });
                let got = decode(&q).unwrap();
                prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&got).unwrap(), obj);
            }

            /// The one-pass key scan agrees with a tree: a member list is
            /// refused as a duplicate exactly when two top-level keys are
            /// equal, and otherwise its attested fields are the keys a
            /// parsed map has among them. Keys are drawn from a small set
            /// (attested names included) and written escaped or not.
            #[test]
            fn top_level_keys_match_a_parsed_map(
                members in prop::collection::vec(
                    (prop::sample::select(vec!["ip", "dt", "uuid", "seqId", "recvFrom", "userAgent", "event", "schema", "a", "IP"]),
                     any::<bool>(),
                     json_value()),
                    0..10),
            ) {
                let mut text = String::from("{");
                for (i, (key, escape, value)) in members.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    let key = if *escape {
                        key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>()
                    } else {
                        key.to_string()
                    };
                    text.push_str(&format!("\"{key}\":{value}"));
                }
                text.push('}');
                let q = encode_uri_component(&text);
                let mut keys: Vec<&str> = members.iter().map(|(k, _, _)| *k).collect();
                let n = keys.len();
                keys.sort();
                keys.dedup();
                let mut buf = Vec::new();
                match decode_beacon(&q, usize::MAX, &mut buf) {
                    Err(RejectReason::DuplicateKey) => prop_assert!(keys.len() < n, "{}", text),
                    Ok(capsule) => {
                        prop_assert_eq!(keys.len(), n, "{}", text);
                        let parsed: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(capsule.text).unwrap();
                        for f in AttestedField::ALL {
                            prop_assert_eq!(capsule.attested.contains(f), parsed.contains_key(f.as_str()));
                        }
                    }
                    Err(other) => prop_assert!(false, "{other:?} for {}", text),
                }
            }

            #[test]
            fn php_encoding_round_trips(obj in json_object()) {
                // PHP's encoder writes spaces (and other characters) as \u escapes.
                let text = serde_json::to_string(&obj).unwrap().replace(' ', "\\u0020");
                let q = format!("{};", rawurlencode(&text));
                let got = decode(&q).unwrap();
                prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&got).unwrap(), obj);
            }

            #[test]
            fn never_panics(q in ".{0,300}") {
                let mut buf = Vec::new();
                let _ = decode_beacon(&q, 8192, &mut buf);
            }

            /// The fast decoder against a byte-at-a-time one, on inputs
            /// dense with escapes, bad ones included.
            #[test]
            fn unquote_matches_a_plain_decoder(
                input in prop::collection::vec(
                    prop_oneof![
                        Just(b'%'), Just(b'+'), Just(b'A'), Just(b'f'), Just(b'7'),
                        Just(b'g'), any::<u8>(),
                    ],
                    0..200,
                )
            ) {
                let mut out = vec![1, 2, 3];
                let got = unquote_plus(&input, &mut out).map(|()| out);
                prop_assert_eq!(got, plain_unquote(&input));
            }

            /// The memchr depth scan against a byte-at-a-time one.
            #[test]
            fn depth_scan_matches_a_plain_scan(
                input in prop::collection::vec(
                    prop_oneof![
                        Just(b'"'), Just(b'\\'), Just(b'['), Just(b']'), Just(b'{'),
                        Just(b'}'), Just(b'a'),
                    ],
                    0..120,
                ),
                limit in 0usize..6,
            ) {
                prop_assert_eq!(json_depth_exceeds(&input, limit), plain_depth_exceeds(&input, limit));
            }
        }

        fn plain_unquote(input: &[u8]) -> Result<Vec<u8>, RejectReason> {
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            let mut out = Vec::new();
            let mut i = 0;
            while i < input.len() {
                match input[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        let hi = input.get(i + 1).and_then(|&c| hex(c));
                        let lo = input.get(i + 2).and_then(|&c| hex(c));
                        let (Some(hi), Some(lo)) = (hi, lo) else {
                            return Err(RejectReason::BadPercentEncoding);
                        };
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            Ok(out)
        }

        fn plain_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
            let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
            for &b in bytes {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > limit {
                            return true;
                        }
                    }
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            false
        }
    }
}
