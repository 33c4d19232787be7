//! Request heads: the request line and header fields of one HTTP/1.x
//! request, parsed by `httparse` into `http`'s types, with the limits and
//! framing rules hyper 1.12 applied on this listener.
//!
//! Limits: at most `max_headers` header lines (431 beyond), a head of at
//! most `max_head_bytes` (431 once that many bytes hold no complete head), a
//! request target of at most [`MAX_URI_BYTES`] (414). Framing (RFC 9112
//! section 6): `Transfer-Encoding` whose last coding is `chunked` means a
//! chunked body (HTTP/1.1 only); any other transfer coding, one on HTTP/1.0,
//! both `Transfer-Encoding` and `Content-Length` (a smuggling attempt more
//! often than not), or a `Content-Length` that is not one decimal number
//! (repeats must agree) is a 400. Keep-alive: HTTP/1.1 keeps the connection
//! unless a `Connection` line says `close`; HTTP/1.0 closes it unless one
//! says `keep-alive` (and none says `close`).
//!
//! Pure: no I/O, no allocation beyond the parsed parts; the fuzz target
//! `http1_head` runs it on arbitrary bytes.
//!
//! Must never: panic on any input, accept a head past a limit, or guess a
//! body length from a header it could not read.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// The longest request target accepted (hyper's limit).
pub const MAX_URI_BYTES: usize = (u16::MAX - 1) as usize;

/// Header lines kept on the stack while parsing; more are parsed into a
/// vector (only when `max_headers` asks for more).
const STACK_HEADERS: usize = 100;

/// The bytes an HTTP/2 client starts a connection with (prior knowledge):
/// closed without an answer, as hyper did.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Header lines at most.
    pub max_headers: usize,
    /// Bytes at most, request line and the blank line included.
    pub max_head_bytes: usize,
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no `Content-Length`, or `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The head's length in bytes (where the body starts).
    pub len: usize,
}

/// Why a head was refused; each is answered (see [`HeadError::status`])
/// and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request target longer than {MAX_URI_BYTES} bytes")]
    UriTooLong,
    #[error("request head larger than allowed, or too many header lines")]
    TooLarge,
}

impl HeadError {
    /// The answer: 400, 414 or 431, as hyper wrote them.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete
/// (and still within the limits).
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    if limits.max_headers <= STACK_HEADERS {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        parse_with(buf, limits, &mut headers[..limits.max_headers])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        parse_with(buf, limits, &mut headers)
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    limits: HeadLimits,
    slots: &mut [httparse::Header<'b>],
) -> Result<Option<RequestHead>, HeadError> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("version")),
        Err(httparse::Error::Token) if req.method.is_none() => {
            return Err(HeadError::Malformed("method"))
        }
        Err(httparse::Error::Token) => return Err(HeadError::Malformed("request target")),
        Err(_) => return Err(HeadError::Malformed("header line")),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("request line"));
    };
    if path.len() > MAX_URI_BYTES {
        return Err(HeadError::UriTooLong);
    }
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let uri = Uri::try_from(path).map_err(|_| HeadError::Malformed("request target"))?;
    let is_11 = minor == 1;
    let version = if is_11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };

    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut framing = Framing::Empty;
    let mut content_length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut keep_alive = is_11;
    let mut saw_close = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed("header value"))?;
        if name == TRANSFER_ENCODING {
            if !is_11 {
                return Err(HeadError::Malformed("transfer-encoding on HTTP/1.0"));
            }
            chunked = Some(last_coding_is_chunked(h.value));
        } else if name == CONTENT_LENGTH {
            let n = digits(h.value).ok_or(HeadError::Malformed("content-length"))?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("content-length values differ"));
            }
            content_length = Some(n);
        } else if name == CONNECTION {
            if saw_close || has_token(h.value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !is_11 && has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        } else if name == EXPECT {
            // RFC 9110 10.1.1: ignored from an HTTP/1.0 client.
            expect_continue = is_11 && h.value.eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    match (chunked, content_length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both transfer-encoding and content-length",
            ))
        }
        (Some(false), None) => return Err(HeadError::Malformed("transfer coding not chunked")),
        (Some(true), None) => framing = Framing::Chunked,
        (None, Some(0) | None) => {}
        (None, Some(n)) => framing = Framing::Length(n),
    }
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        len,
    }))
}

/// `Content-Length`: ASCII digits only, no sign or space, fits a u64.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Whether the last coding of a `Transfer-Encoding` line is `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 100,
        max_head_bytes: 8192,
    };

    fn ok(raw: &[u8]) -> RequestHead {
        parse(raw, LIMITS).unwrap().unwrap()
    }

    fn err(raw: &[u8]) -> StatusCode {
        parse(raw, LIMITS).unwrap_err().status()
    }

    #[test]
    fn a_beacon_get() {
        let raw = b"GET /beacon/event?%7B%7D; HTTP/1.1\r\nHost: x\r\nUser-Agent: a b\r\n\r\nrest";
        let h = ok(raw);
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/beacon/event");
        assert_eq!(h.uri.query(), Some("%7B%7D;"));
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["user-agent"], "a b");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(h.len, raw.len() - 4);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| ok(raw).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").version, Version::HTTP_10);
    }

    #[test]
    fn framing() {
        let f = |raw: &[u8]| ok(raw).framing;
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n"),
            Framing::Length(7)
        );
        // Optional whitespace around a value is not part of it.
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nContent-Length:  3 \r\n\r\n"),
            Framing::Length(3)
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Framing::Chunked
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                err(bad),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn expect_continue() {
        assert!(ok(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!ok(b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n").expect_continue);
        assert!(!ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            &b"\x01\x02 / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert_eq!(
                err(bad),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits() {
        // Incomplete within the limit: more bytes wanted.
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS)
            .unwrap()
            .is_none());
        // Incomplete at the limit: 431.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(
            err(long.as_bytes()),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        // Complete but over the limit: 431.
        let small = HeadLimits {
            max_head_bytes: 20,
            ..LIMITS
        };
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: xxxxxxxx\r\n\r\n", small).unwrap_err(),
            HeadError::TooLarge
        );
        // Too many header lines: 431, with the count on the stack or not.
        for max_headers in [3, 150] {
            let limits = HeadLimits {
                max_headers,
                max_head_bytes: 1 << 20,
            };
            let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..max_headers {
                raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
            }
            let mut over = raw.clone();
            raw.extend_from_slice(b"\r\n");
            assert_eq!(
                parse(&raw, limits).unwrap().unwrap().headers.len(),
                max_headers
            );
            over.extend_from_slice(b"X-last: y\r\n\r\n");
            assert_eq!(parse(&over, limits).unwrap_err(), HeadError::TooLarge);
        }
        // A target past 65534 bytes: 414.
        let big = HeadLimits {
            max_head_bytes: 1 << 20,
            ..LIMITS
        };
        let raw = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_BYTES));
        assert_eq!(
            parse(raw.as_bytes(), big).unwrap_err(),
            HeadError::UriTooLong
        );
    }

    proptest! {
        /// Any bytes: no panic; a head found lies within the input and the
        /// limit, and every cut of it asks for more bytes.
        #[test]
        fn any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some(h)) = parse(&data, LIMITS) {
                prop_assert!(h.len <= data.len() && h.len <= LIMITS.max_head_bytes);
                for cut in 0..h.len {
                    prop_assert!(matches!(parse(&data[..cut], LIMITS), Ok(None) | Err(_)));
                }
            }
        }

        /// A well-formed head parses whole at once and is incomplete at
        /// every cut (TCP may split anywhere).
        #[test]
        fn valid_heads_survive_any_cut(
            target in "/[a-zA-Z0-9%;?=&._-]{0,200}",
            names in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9-]{0,20}", 0..20),
            value in "[ -~]{0,40}",
            length in proptest::option::of(0u64..1_000_000),
        ) {
            let mut raw = format!("POST {target} HTTP/1.1\r\n");
            for n in &names {
                if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
                    || n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("expect") {
                    continue;
                }
                raw.push_str(&format!("{n}: {}\r\n", value.trim()));
            }
            if let Some(n) = length {
                raw.push_str(&format!("Content-Length: {n}\r\n"));
            }
            raw.push_str("\r\n");
            let h = parse(raw.as_bytes(), LIMITS).unwrap().unwrap();
            prop_assert_eq!(h.len, raw.len());
            prop_assert_eq!(h.uri.to_string(), target);
            let want = match length { Some(0) | None => Framing::Empty, Some(n) => Framing::Length(n) };
            prop_assert_eq!(h.framing, want);
            for cut in 0..raw.len() {
                prop_assert!(parse(&raw.as_bytes()[..cut], LIMITS).unwrap().is_none());
            }
        }
    }
}
