//! Response heads on the wire: the status line (the handler's reason
//! phrase, `hyper::ext::ReasonPhrase`, when it set one), a `date` (cached
//! per thread, rewritten once a second), the handler's headers, the body's
//! length, and the connection's fate (`connection: close`, or
//! `connection: keep-alive` for an HTTP/1.0 client that keeps it).
//!
//! Length rules (RFC 9110 section 8.6): no `content-length` and no body on
//! 1xx, 204 and 304; for `HEAD` the length the body would have (when not 0),
//! but no body; otherwise the body's length, 0 included. Framing headers the
//! handler set are replaced by ours.
//!
//! Must never: write a response whose length disagrees with its body, or a
//! body where none may be.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{Method, StatusCode, Version};

/// What the connection does after this response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

/// Whether a response with `status` to `method` carries a body.
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    *method != Method::HEAD && may_have_length(status)
}

fn may_have_length(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Whether the handler's response asks to close the connection.
pub fn asks_to_close(parts: &Parts) -> bool {
    parts.headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Appends the head of a response to `out`: `version` is the request's
/// (an HTTP/1.0 client is answered in HTTP/1.0), `body_len` the body's
/// length.
pub fn encode_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    version: Version,
    method: &Method,
    body_len: usize,
    after: After,
) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("<none>")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    let mut said_close = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONNECTION
            && value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            said_close = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match after {
        After::Close if !said_close => out.extend_from_slice(b"connection: close\r\n"),
        After::KeepAlive if version == Version::HTTP_10 => {
            out.extend_from_slice(b"connection: keep-alive\r\n")
        }
        _ => {}
    }
    if may_have_length(parts.status) && !(*method == Method::HEAD && body_len == 0) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The answer to a head the listener could not parse (400, 414, 431): no
/// body, and the connection closes after it.
pub fn encode_refusal(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
}

/// What the server writes before reading the body of a request that sent
/// `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is 29 bytes.
const DATE_LEN: usize = 29;

struct DateCache {
    second: u64,
    text: [u8; DATE_LEN],
}

thread_local! {
    static DATE_CACHE: RefCell<DateCache> = const {
        RefCell::new(DateCache { second: u64::MAX, text: [b' '; DATE_LEN] })
    };
}

/// Calls `f` with the current `date` value, formatted at most once a second
/// per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != now {
            cache.text = imf_fixdate(now);
            cache.second = now;
        }
        f(&cache.text);
    });
}

/// Formats seconds since the epoch as an IMF-fixdate (RFC 9110 section
/// 5.6.7).
pub fn imf_fixdate(unix_secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let t = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut out = [b' '; DATE_LEN];
    let two = |out: &mut [u8], n: u8| {
        out[0] = b'0' + n / 10;
        out[1] = b'0' + n % 10;
    };
    out[..3].copy_from_slice(DAYS[usize::from(t.weekday().number_days_from_monday())]);
    out[3] = b',';
    two(&mut out[5..7], t.day());
    out[8..11].copy_from_slice(MONTHS[usize::from(u8::from(t.month()) - 1)]);
    let year = u16::try_from(t.year()).unwrap_or(9999).min(9999);
    out[12] = b'0' + (year / 1000) as u8;
    out[13] = b'0' + (year / 100 % 10) as u8;
    out[14] = b'0' + (year / 10 % 10) as u8;
    out[15] = b'0' + (year % 10) as u8;
    two(&mut out[17..19], t.hour());
    out[19] = b':';
    two(&mut out[20..22], t.minute());
    out[22] = b':';
    two(&mut out[23..25], t.second());
    out[26..29].copy_from_slice(b"GMT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Response};

    fn head(
        r: Response<()>,
        version: Version,
        method: &Method,
        len: usize,
        after: After,
    ) -> String {
        let (parts, ()) = r.into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, version, method, len, after);
        let text = String::from_utf8(out).unwrap();
        // The date varies: checked on its own.
        let date_at = text.find("date: ").unwrap();
        let mut text = text.clone();
        text.replace_range(date_at + 6..date_at + 6 + DATE_LEN, "D");
        text
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_709_251_199),
            b"Thu, 29 Feb 2024 23:59:59 GMT"
        );
    }

    #[test]
    fn lengths_by_status_and_method() {
        let r = |s: u16| Response::builder().status(s).body(()).unwrap();
        let (get, headm) = (Method::GET, Method::HEAD);
        let v = Version::HTTP_11;
        let ka = After::KeepAlive;
        assert_eq!(
            head(r(204), v, &get, 0, ka),
            "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            head(r(304), v, &get, 0, ka),
            "HTTP/1.1 304 Not Modified\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            head(r(200), v, &get, 0, ka),
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            head(r(200), v, &headm, 12, ka),
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(
            head(r(200), v, &headm, 0, ka),
            "HTTP/1.1 200 OK\r\ndate: D\r\n\r\n"
        );
        assert!(has_body(&get, StatusCode::OK));
        assert!(!has_body(&headm, StatusCode::OK));
        assert!(!has_body(&get, StatusCode::NO_CONTENT));
        assert!(!has_body(&get, StatusCode::NOT_MODIFIED));
    }

    #[test]
    fn connection_fate_and_reason() {
        let mut r = Response::builder()
            .status(201)
            .header("content-length", "99")
            .header("x-a", "b")
            .body(())
            .unwrap();
        r.extensions_mut().insert(
            hyper::ext::ReasonPhrase::try_from(&b"All 1 out of 1 events were accepted."[..])
                .unwrap(),
        );
        assert_eq!(
            head(r, Version::HTTP_11, &Method::POST, 2, After::Close),
            "HTTP/1.1 201 All 1 out of 1 events were accepted.\r\ndate: D\r\nx-a: b\r\n\
             connection: close\r\ncontent-length: 2\r\n\r\n"
        );
        let r = Response::builder().status(204).body(()).unwrap();
        assert_eq!(
            head(r, Version::HTTP_10, &Method::GET, 0, After::KeepAlive),
            "HTTP/1.0 204 No Content\r\ndate: D\r\nconnection: keep-alive\r\n\r\n"
        );
        let mut r = Response::builder().status(400).body(()).unwrap();
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let (parts, ()) = r.into_parts();
        assert!(asks_to_close(&parts));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &parts,
            Version::HTTP_11,
            &Method::GET,
            0,
            After::Close,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }

    #[test]
    fn refusals_close() {
        let mut out = Vec::new();
        encode_refusal(&mut out, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ndate: "));
        assert!(text.ends_with("\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"));
    }
}
