//! Query decoding and validation: never panics; what it accepts is one JSON
//! object, within the size limit, that a browser's encoding of the decoded
//! text gives back unchanged; what it refuses is a 4xx.
#![no_main]

use beacond::decode::{decode_beacon, RejectReason};
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
        Ok(text) => {
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
            assert_eq!(decoded, text);
        }
        Err(RejectReason::QueryTooLong) => assert!(query.len() > MAX_QUERY_BYTES),
        Err(reason) => {
            assert!(query.len() <= MAX_QUERY_BYTES);
            assert!(reason.status().is_client_error());
        }
    }
});
