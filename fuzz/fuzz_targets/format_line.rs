//! Line formatting: for any request a browser could send (query as an
//! `http::Uri` allows, any user agent bytes, any address, time and sequence),
//! the varnishkafka line has six tab-separated fields on one line, the json
//! format and the error record are JSON objects, the json format holds each
//! attested field once with beacond's value (never the capsule's), and no
//! message exceeds the size bound that start-up checks against
//! `message.max.bytes`.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use beacond::decode::decode_beacon;
use beacond::format::{write_error_record, OutputFormat};
use beacond::meta::{BeaconMeta, ReceiveTime};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

#[derive(Arbitrary, Debug)]
struct Input {
    query: String,
    user_agent: Vec<u8>,
    ip: IpAddr,
    seq: u64,
    unix_seconds: i64,
    hostname: String,
}

fn is_json_object(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{') && serde_json::from_slice::<&RawValue>(bytes).is_ok()
}

fuzz_target!(|input: Input| {
    let Ok(uri) = format!("/beacon/event?{}", input.query).parse::<http::Uri>() else {
        return;
    };
    let raw_query = uri.query().unwrap_or("");
    let hostname = if input.hostname.is_empty()
        || input
            .hostname
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        "fuzz-host"
    } else {
        input.hostname.as_str()
    };
    let mut meta = BeaconMeta {
        received: ReceiveTime::from_unix_seconds(input.unix_seconds),
        seq: None,
        client_ip: input.ip,
        user_agent: &input.user_agent,
        hostname,
    };
    let max_query = raw_query.len().max(16);
    let max_ua = input.user_agent.len().max(16);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    match decode_beacon(raw_query, max_query, &mut buf) {
        Ok(capsule) => {
            let capsule = capsule.text;
            meta.seq = Some(input.seq);
            for format in [OutputFormat::Varnishkafka, OutputFormat::Json] {
                out.clear();
                format.write_line(raw_query, capsule, &meta, &mut out);
                let bound = format.max_message_bytes(max_query, max_ua, hostname.len());
                assert!(out.len() <= bound, "{format:?}: {} > {bound}", out.len());
                match format {
                    OutputFormat::Varnishkafka => {
                        assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
                        assert_eq!(out.iter().filter(|b| **b == b'\t').count(), 5);
                        let ua_field = out.rsplit(|b| *b == b'\t').next().unwrap_or(&[]);
                        assert!(
                            ua_field.len() >= 2
                                && ua_field.starts_with(b"\"")
                                && ua_field.ends_with(b"\"")
                        );
                        assert!(!ua_field.iter().any(|b| b.is_ascii_control()));
                    }
                    OutputFormat::Json => {
                        assert!(is_json_object(&out), "{}", String::from_utf8_lossy(&out));
                        // Raw values: `1e999` is valid JSON a tree of
                        // `f64`s refuses.
                        let v: std::collections::HashMap<String, &RawValue> =
                            serde_json::from_slice(&out).expect("json line is an object");
                        assert_eq!(v["ip"].get(), format!("\"{}\"", input.ip), "ip not ours");
                        assert_eq!(v["seqId"].get(), input.seq.to_string(), "seqId not ours");
                        let recv_from: String =
                            serde_json::from_str(v["recvFrom"].get()).expect("a string");
                        assert_eq!(recv_from, hostname, "recvFrom not ours");
                        assert_eq!(top_level_members(&out), v.len(), "a key twice");
                    }
                    OutputFormat::EventPlatform => unreachable!("not a line format"),
                }
            }
        }
        Err(reason) => {
            write_error_record(reason, raw_query, &meta, &mut out);
            assert!(is_json_object(&out), "{}", String::from_utf8_lossy(&out));
            let bound = OutputFormat::Varnishkafka
                .max_message_bytes(max_query, max_ua, hostname.len())
                .max(OutputFormat::Json.max_message_bytes(max_query, max_ua, hostname.len()));
            assert!(out.len() <= bound, "error record {} > {bound}", out.len());
        }
    }
});

/// The members of the top-level object, duplicates included.
fn top_level_members(bytes: &[u8]) -> usize {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
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
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_map(&mut de, Count).expect("an object")
}
