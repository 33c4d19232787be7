//! Query decoding and validation: never panics; what it accepts is one JSON
//! object, within the size limit, that a browser's encoding of the decoded
//! text gives back unchanged, whose top-level keys are distinct and whose
//! attested fields are those a parsed map has; a duplicate key is refused as
//! such; what it refuses is a 4xx.
#![no_main]

use beacond::decode::{decode_beacon, AttestedField, RejectReason};
use beacond::testing::encode_uri_component;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

const MAX_QUERY_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let mut buf = Vec::new();
    match decode_beacon(query, MAX_QUERY_BYTES, &mut buf) {
        Ok(capsule) => {
            let text = capsule.text;
            // Distinct keys: a map has as many members as the text.
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).expect("accepted text is an object");
            assert_eq!(
                map.len(),
                top_level_members(text),
                "duplicate kept: {text:?}"
            );
            for f in AttestedField::ALL {
                assert_eq!(
                    capsule.attested.contains(f),
                    map.contains_key(f.as_str()),
                    "{f:?} in {text:?}"
                );
            }
            assert!(query.len() <= MAX_QUERY_BYTES);
            assert!(
                serde_json::from_str::<&RawValue>(text).is_ok(),
                "accepted text is not JSON: {text:?}"
            );
            assert!(
                text.trim_start_matches([' ', '\t', '\n', '\r'])
                    .starts_with('{'),
                "accepted JSON is not an object: {text:?}"
            );
            let text = text.to_string();
            let encoded = encode_uri_component(&text) + ";";
            let mut again = Vec::new();
            let decoded = decode_beacon(&encoded, usize::MAX, &mut again)
                .unwrap_or_else(|r| panic!("re-encoded {text:?} refused: {r:?}"));
            assert_eq!(decoded.text, text);
        }
        Err(RejectReason::DuplicateKey) => {
            // The buffer holds the decoded text: valid JSON whose object has
            // fewer distinct keys than members.
            let decoded = std::str::from_utf8(&buf).expect("decoded text is UTF-8");
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(decoded).expect("a duplicate-key refusal is valid JSON");
            assert!(
                map.len() < top_level_members(decoded),
                "no duplicate in {decoded:?}"
            );
        }
        Err(RejectReason::QueryTooLong) => assert!(query.len() > MAX_QUERY_BYTES),
        Err(reason) => {
            assert!(query.len() <= MAX_QUERY_BYTES);
            assert!(reason.status().is_client_error());
        }
    }
});

/// The members of the top-level object, duplicates included.
fn top_level_members(text: &str) -> usize {
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
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Count).expect("an object")
}
