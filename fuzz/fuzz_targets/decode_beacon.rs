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
            // Distinct keys, and the attested fields are those among them.
            // (Keys read with values skipped: `1e999` is valid JSON a tree
            // of `f64`s refuses.)
            let mut keys = top_level_keys(text);
            for f in AttestedField::ALL {
                assert_eq!(
                    capsule.attested.contains(f),
                    keys.iter().any(|k| k == f.as_str()),
                    "{f:?} in {text:?}"
                );
            }
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "duplicate kept: {text:?}");
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
            // The buffer holds the decoded text: valid JSON, an object with
            // a key twice.
            let decoded = std::str::from_utf8(&buf).expect("decoded text is UTF-8");
            assert!(
                serde_json::from_str::<&RawValue>(decoded).is_ok(),
                "{decoded:?}"
            );
            let mut keys = top_level_keys(decoded);
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert!(keys.len() < n, "no duplicate in {decoded:?}");
        }
        Err(RejectReason::QueryTooLong) => assert!(query.len() > MAX_QUERY_BYTES),
        Err(reason) => {
            assert!(query.len() <= MAX_QUERY_BYTES);
            assert!(reason.status().is_client_error());
        }
    }
});

/// The keys of the top-level object, duplicates included, values skipped.
fn top_level_keys(text: &str) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Keys).expect("an object")
}
