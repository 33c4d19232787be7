//! The two ways EventLogging clients put a capsule in a URL, and the decoding
//! the EventLogging processor applies (`json.loads(unquote_plus(q.strip('?;')))`).
//!
//! * Browser (`ext.eventLogging`): `encodeURIComponent(JSON.stringify(capsule))`,
//!   which leaves `A-Z a-z 0-9 - _ . ! ~ * ' ( )` alone and writes UTF-8 bytes
//!   as `%XX`.
//! * PHP (server-side EventLogging): the JSON has non-ASCII as `\uXXXX`, `/` as
//!   `\/` and spaces as `\u0020`, then `rawurlencode`, which leaves only
//!   `A-Z a-z 0-9 - _ . ~` alone (it also escapes `!'()*`).

use serde_json::Value;
use std::fmt::Write as _;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// JavaScript's `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    percent_encode(s, |b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
    })
}

/// PHP's `rawurlencode` (RFC 3986 unreserved characters only).
pub fn rawurlencode(s: &str) -> String {
    percent_encode(s, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
    })
}

/// Rewrites compact JSON (as `serde_json::to_string` writes it) the way the
/// PHP client writes it: non-ASCII as `\uXXXX` (UTF-16, so astral characters
/// become surrogate pairs), `/` as `\/`, and spaces as `\u0020`.
///
/// Compact JSON has no space, `/` or non-ASCII character outside strings, and
/// no escape sequence contains one, so a character-wise rewrite is exact.
pub fn php_style_json(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 4);
    for c in compact.chars() {
        match c {
            ' ' => out.push_str("\\u0020"),
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    BadPercent(usize),
    BadUtf8,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadPercent(at) => write!(f, "bad percent escape at byte {at}"),
            DecodeError::BadUtf8 => write!(f, "decoded bytes are not UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Python's `unquote_plus`, but strict: `+` is a space, `%XX` a byte, and the
/// result must be UTF-8 (Python would substitute U+FFFD; we want to notice).
pub fn unquote_plus(s: &str) -> Result<String, DecodeError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex_val);
                let lo = b.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(DecodeError::BadPercent(i)),
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::BadUtf8)
}

/// The processor's decoding of a `%q` field: strip `?` and `;` from both
/// ends, `unquote_plus`, parse JSON.
pub fn decode_query(q: &str) -> anyhow::Result<Value> {
    let trimmed = q.trim_matches(|c| c == '?' || c == ';');
    let text = unquote_plus(trimmed)?;
    Ok(serde_json::from_str(&text)?)
}

/// JSON text with object keys sorted at every level, so two equal values give
/// the same text whatever order their keys came in.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string serializes"));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).expect("scalar serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "event": {
                "text": "Zürich café «x» 東京 🚀 👩‍💻 🇩🇪 a/b (it's) *ok*! ~tilde~ 100% + plus",
                "quote": "say \"hi\" \\ back\nslash",
                "n": 42, "f": 1234.5, "neg": -3, "b": true, "null": null,
                "list": [1, "two", {"three": 3}]
            },
            "schema": "Test",
            "revision": 123,
            "webHost": "en.wikipedia.org",
            "wiki": "enwiki"
        })
    }

    #[test]
    fn encode_uri_component_matches_javascript() {
        // Values as printed by a browser console.
        assert_eq!(encode_uri_component("a b"), "a%20b");
        assert_eq!(encode_uri_component("!'()*-_.~"), "!'()*-_.~");
        assert_eq!(encode_uri_component("{\"a\":1}"), "%7B%22a%22%3A1%7D");
        assert_eq!(encode_uri_component("é"), "%C3%A9");
        assert_eq!(encode_uri_component("😀"), "%F0%9F%98%80");
        assert_eq!(encode_uri_component("+/?;&="), "%2B%2F%3F%3B%26%3D");
    }

    #[test]
    fn rawurlencode_matches_php() {
        assert_eq!(rawurlencode("!'()*-_.~"), "%21%27%28%29%2A-_.~");
        assert_eq!(rawurlencode("a b"), "a%20b");
        assert_eq!(rawurlencode("é"), "%C3%A9");
    }

    #[test]
    fn php_json_escapes() {
        assert_eq!(
            php_style_json(r#"{"a":"x y/é😀"}"#),
            r#"{"a":"x\u0020y\/\u00e9\ud83d\ude00"}"#
        );
        // An escaped backslash followed by a slash stays a backslash and a slash.
        let v: Value = serde_json::from_str(&php_style_json(r#"{"a":"\\/"}"#)).unwrap();
        assert_eq!(v["a"], "\\/");
    }

    #[test]
    fn both_encodings_decode_to_the_same_json() {
        let v = sample();
        let compact = serde_json::to_string(&v).unwrap();
        let js = format!("?{};", encode_uri_component(&compact));
        let php = format!("?{};", rawurlencode(&php_style_json(&compact)));
        assert_ne!(js, php);
        assert!(!php.contains('!') && !php.contains('('));
        assert!(php.contains("%5Cu0020"), "spaces written as \\u0020");
        let from_js = decode_query(&js).unwrap();
        let from_php = decode_query(&php).unwrap();
        assert_eq!(from_js, v);
        assert_eq!(from_php, v);
        assert_eq!(canonical_json(&from_js), canonical_json(&from_php));
    }

    #[test]
    fn unquote_plus_is_strict() {
        assert_eq!(unquote_plus("a+b%20c").unwrap(), "a b c");
        assert_eq!(unquote_plus("%zz"), Err(DecodeError::BadPercent(0)));
        assert_eq!(unquote_plus("ab%4"), Err(DecodeError::BadPercent(2)));
        assert_eq!(unquote_plus("%FF"), Err(DecodeError::BadUtf8));
        assert!(decode_query("?%5B1%5D;").unwrap().is_array());
        assert!(decode_query("?%7B%22a;").is_err());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":1,"y":2}],"c":"é"}}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"é","d":[1,{"y":2,"z":1}]},"b":1}"#
        );
    }
}
