//! The HTTP/1 request head parser: never panics; a head it accepts lies
//! within the input and the limit, parses the same from its own bytes, and
//! every shorter cut of it asks for more bytes (TCP may split a head
//! anywhere); a refusal is not undone by more bytes.
#![no_main]

use beacond::listener::http1::head::{parse, HeadLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (headers, data) = input;
    let limits = HeadLimits {
        max_headers: usize::from(headers % 120) + 1,
        max_head_bytes: 4096,
    };
    match parse(data, limits) {
        Ok(Some(head)) => {
            assert!(head.len > 0 && head.len <= data.len() && head.len <= limits.max_head_bytes);
            assert!(head.headers.len() <= limits.max_headers);
            let own = parse(&data[..head.len], limits)
                .expect("a head parses alone")
                .expect("whole");
            assert_eq!(own.len, head.len);
            assert_eq!(own.framing, head.framing);
            assert_eq!(own.keep_alive, head.keep_alive);
            let step = (head.len / 64).max(1);
            for cut in (0..head.len).step_by(step) {
                assert!(
                    matches!(parse(&data[..cut], limits), Ok(None)),
                    "cut {cut} of {:?}",
                    String::from_utf8_lossy(&data[..head.len])
                );
            }
        }
        Ok(None) => assert!(data.len() < limits.max_head_bytes),
        Err(e) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert!(parse(&longer, limits).is_err(), "more bytes undid {e}");
        }
    }
});
