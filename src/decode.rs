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
//! would fail on it.
//!
//! Must never: allocate per beacon (it decodes into a caller-owned buffer),
//! build a JSON tree, or panic on any input.

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
    #[error("user agent longer than http.max_user_agent_bytes")]
    UserAgentTooLong,
    #[error("request body larger than http.max_body_bytes")]
    BodyTooLarge,
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
    pub const ALL: [RejectReason; 11] = [
        RejectReason::EmptyQuery,
        RejectReason::QueryTooLong,
        RejectReason::BadPercentEncoding,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::JsonTooDeep,
        RejectReason::UserAgentTooLong,
        RejectReason::BodyTooLarge,
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
            RejectReason::UserAgentTooLong => "user_agent_too_long",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::UnknownLegacySchema => "unknown_legacy_schema",
            RejectReason::LegacyEventErrored => "legacy_event_errored",
        }
    }

    /// The HTTP status a client gets for this reason.
    pub fn status(self) -> http::StatusCode {
        match self {
            RejectReason::QueryTooLong => http::StatusCode::URI_TOO_LONG,
            RejectReason::UserAgentTooLong => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RejectReason::BodyTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
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
            RejectReason::UserAgentTooLong => "user agent too long\n",
            RejectReason::BodyTooLarge => "request body too large\n",
            RejectReason::UnknownLegacySchema => "unknown legacy schema\n",
            RejectReason::LegacyEventErrored => "event not accepted\n",
        }
    }
}

/// The part of the raw query that carries the JSON: Python's `q.strip('?;')`.
pub fn strip_query(raw: &str) -> &str {
    raw.trim_matches(|c| c == '?' || c == ';')
}

/// Decodes and validates a raw query string (without its leading `?`, as
/// `http::Uri::query` gives it). On success returns the decoded JSON object
/// text, borrowed from `buf`, which is cleared first and reused across calls.
pub fn decode_beacon<'b>(
    raw_query: &str,
    max_query_bytes: usize,
    buf: &'b mut Vec<u8>,
) -> Result<&'b str, RejectReason> {
    if raw_query.len() > max_query_bytes {
        return Err(RejectReason::QueryTooLong);
    }
    let payload = strip_query(raw_query);
    if payload.is_empty() {
        return Err(RejectReason::EmptyQuery);
    }
    unquote_plus(payload.as_bytes(), buf)?;
    let text = std::str::from_utf8(buf).map_err(|_| RejectReason::InvalidUtf8)?;
    validate_json_object(text)?;
    Ok(text)
}

/// `+` to space, then `%XX` to the byte it names; a `%` without two hex digits
/// after it is an error.
fn unquote_plus(input: &[u8], out: &mut Vec<u8>) -> Result<(), RejectReason> {
    out.clear();
    out.reserve(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = input.get(i + 1).and_then(|&h| hex_value(h));
                let lo = input.get(i + 2).and_then(|&l| hex_value(l));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(RejectReason::BadPercentEncoding),
                }
                i += 3;
            }
            _ => {
                // Copy the run of plain bytes up to the next escape in one go.
                let run = input[i..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'+')
                    .unwrap_or(input.len() - i);
                out.extend_from_slice(&input[i..i + run]);
                i += run;
            }
        }
    }
    Ok(())
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Valid JSON, an object at the top, nested no deeper than [`MAX_JSON_DEPTH`].
fn validate_json_object(text: &str) -> Result<(), RejectReason> {
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    // Depth first: serde_json's validator is iterative and would accept any
    // depth; checking first also keeps the validator's stack small.
    if json_depth_exceeds(text.as_bytes(), MAX_JSON_DEPTH) {
        return Err(RejectReason::JsonTooDeep);
    }
    serde_json::from_str::<&RawValue>(text).map_err(|_| RejectReason::InvalidJson)?;
    if first == Some(b'{') {
        Ok(())
    } else {
        Err(RejectReason::NotAnObject)
    }
}

/// True when brackets outside strings nest deeper than `limit`. Only
/// meaningful for the nesting of valid JSON; invalid JSON is caught after.
fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{encode_uri_component, rawurlencode};

    fn decode(q: &str) -> Result<String, RejectReason> {
        let mut buf = Vec::new();
        decode_beacon(q, 8192, &mut buf).map(str::to_owned)
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
        ];
        for (name, q, want) in cases {
            assert_eq!(decode(q), Err(*want), "{name}");
        }
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
        }
    }
}
