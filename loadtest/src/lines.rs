//! The collector's two Kafka message formats, detected per message by the
//! first byte:
//!
//! * `varnishkafka` (`?...`): six tab-separated fields,
//!   `%q  %l  %n  %{%FT%T}t  %{X-Client-IP}o  "%{User-agent}i"`; the first is
//!   the raw query as sent, decoded as `json.loads(unquote_plus(q.strip('?;')))`.
//! * `json` (`{...}`): the capsule's fields plus `recvFrom`, `seqId`, `dt`,
//!   `ip`, `userAgent`, `uuid`.

use crate::encode::decode_query;
use anyhow::{bail, Context};
use serde_json::{Map, Value};

/// The fields of the capsule a client sends (and that a JSON message copies).
pub const CAPSULE_FIELDS: [&str; 5] = ["event", "schema", "revision", "webHost", "wiki"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Varnishkafka,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub format: Format,
    /// The capsule's fields only.
    pub capsule: Map<String, Value>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub host: Option<String>,
    pub seq: Option<u64>,
    pub dt: Option<String>,
}

impl Message {
    /// `event.loadtest_id`, if present.
    pub fn loadtest_id(&self) -> Option<&str> {
        self.capsule.get("event")?.get("loadtest_id")?.as_str()
    }
}

pub fn parse(payload: &[u8]) -> anyhow::Result<Message> {
    match payload.first() {
        Some(b'?') => {
            parse_varnishkafka(std::str::from_utf8(payload).context("message is not UTF-8")?)
        }
        Some(b'{') => parse_json(payload),
        Some(b) => bail!("unknown message format (first byte {:?})", *b as char),
        None => bail!("empty message"),
    }
}

fn is_dt(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

pub fn parse_varnishkafka(line: &str) -> anyhow::Result<Message> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 6 {
        bail!("varnishkafka line has {} fields, expected 6", fields.len());
    }
    let [q, host, seq, dt, ip, ua] = [
        fields[0], fields[1], fields[2], fields[3], fields[4], fields[5],
    ];
    if !q.starts_with('?') {
        bail!("varnishkafka field 1 does not start with '?'");
    }
    let seq: u64 = seq
        .parse()
        .with_context(|| format!("bad sequence number {seq:?}"))?;
    if !is_dt(dt) {
        bail!("bad timestamp {dt:?}, expected YYYY-MM-DDTHH:MM:SS");
    }
    let ua = ua
        .strip_prefix('"')
        .and_then(|u| u.strip_suffix('"'))
        .with_context(|| format!("user agent field not quoted: {ua:?}"))?;
    let capsule = match decode_query(q)? {
        Value::Object(m) => m,
        _ => bail!("capsule is not a JSON object"),
    };
    Ok(Message {
        format: Format::Varnishkafka,
        capsule,
        client_ip: Some(ip.to_string()),
        user_agent: Some(ua.to_string()),
        host: Some(host.to_string()),
        seq: Some(seq),
        dt: Some(dt.to_string()),
    })
}

pub fn parse_json(payload: &[u8]) -> anyhow::Result<Message> {
    let mut all: Map<String, Value> =
        match serde_json::from_slice(payload).context("bad JSON message")? {
            Value::Object(m) => m,
            _ => bail!("JSON message is not an object"),
        };
    let mut capsule = Map::new();
    for k in CAPSULE_FIELDS {
        if let Some(v) = all.remove(k) {
            capsule.insert(k.to_string(), v);
        }
    }
    let string = |v: Option<Value>| match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(Message {
        format: Format::Json,
        client_ip: string(all.remove("ip")),
        user_agent: string(all.remove("userAgent")),
        host: string(all.remove("recvFrom")),
        seq: all.get("seqId").and_then(Value::as_u64),
        dt: string(all.remove("dt")),
        capsule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{canonical_json, encode_uri_component};
    use serde_json::json;

    fn capsule() -> Value {
        json!({"event": {"loadtest_id": "abc-1", "q": "a b+c 😀"}, "schema": "S", "revision": 1,
               "webHost": "en.wikipedia.org", "wiki": "enwiki"})
    }

    #[test]
    fn parses_varnishkafka_lines() {
        let q = encode_uri_component(&serde_json::to_string(&capsule()).unwrap());
        let line = format!(
            "?{q};\tloadtest-host\t42\t2024-05-01T12:34:56\t203.0.113.9\t\"Mozilla/5.0 (X11) \"quoted\"\""
        );
        let m = parse(line.as_bytes()).unwrap();
        assert_eq!(m.format, Format::Varnishkafka);
        assert_eq!(Value::Object(m.capsule.clone()), capsule());
        assert_eq!(m.loadtest_id(), Some("abc-1"));
        assert_eq!(m.client_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(
            m.user_agent.as_deref(),
            Some("Mozilla/5.0 (X11) \"quoted\"")
        );
        assert_eq!(m.host.as_deref(), Some("loadtest-host"));
        assert_eq!(m.seq, Some(42));
        // `+` is a space (unquote_plus), as the processor decodes it.
        let plus = "?%7B%22event%22%3A%7B%22a%22%3A%22x+y%22%7D%7D;\th\t1\t2024-05-01T12:34:56\t::1\t\"ua\"";
        assert_eq!(parse(plus.as_bytes()).unwrap().capsule["event"]["a"], "x y");
    }

    #[test]
    fn rejects_malformed_varnishkafka_lines() {
        let ok = "?%7B%7D;\th\t1\t2024-05-01T12:34:56\t1.2.3.4\t\"ua\"";
        assert!(parse(ok.as_bytes()).is_ok());
        for bad in [
            "?%7B%7D;\th\t1\t2024-05-01T12:34:56\t1.2.3.4", // 5 fields
            "?%7B%7D;\th\tx\t2024-05-01T12:34:56\t1.2.3.4\t\"ua\"", // bad seq
            "?%7B%7D;\th\t1\t2024-05-01 12:34:56\t1.2.3.4\t\"ua\"", // bad dt
            "?%7B%7D;\th\t1\t2024-05-01T12:34:56\t1.2.3.4\tua", // unquoted ua
            "?%5B1%5D;\th\t1\t2024-05-01T12:34:56\t1.2.3.4\t\"ua\"", // not an object
            "?%7B%ZZ;\th\t1\t2024-05-01T12:34:56\t1.2.3.4\t\"ua\"", // bad escape
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(b"").is_err());
        assert!(parse(b"x").is_err());
    }

    #[test]
    fn parses_json_messages() {
        let mut v = capsule();
        let o = v.as_object_mut().unwrap();
        o.insert("recvFrom".into(), json!("loadtest-host"));
        o.insert("seqId".into(), json!(7));
        o.insert("dt".into(), json!("2024-05-01T12:34:56Z"));
        o.insert("ip".into(), json!("2001:db8::1"));
        o.insert("userAgent".into(), json!("Mozilla/5.0"));
        o.insert("uuid".into(), json!("0123456789abcdef0123456789abcdef"));
        let m = parse(serde_json::to_string(&v).unwrap().as_bytes()).unwrap();
        assert_eq!(m.format, Format::Json);
        assert_eq!(
            canonical_json(&Value::Object(m.capsule.clone())),
            canonical_json(&capsule())
        );
        assert_eq!(m.loadtest_id(), Some("abc-1"));
        assert_eq!(m.client_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(m.user_agent.as_deref(), Some("Mozilla/5.0"));
        assert_eq!(m.seq, Some(7));
        assert!(parse(b"{\"event\":").is_err());
        assert!(parse(b"{}").unwrap().loadtest_id().is_none());
    }
}
