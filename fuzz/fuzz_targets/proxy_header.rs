//! The PROXY protocol header parser: never panics; a header it accepts lies
//! within the input and the size bound, parses the same on its own, and every
//! shorter cut of it asks for more bytes (so TCP segmentation cannot turn a
//! valid header into a refusal); a refusal is not undone by more bytes.
#![no_main]

use beacond::proxy_protocol::{parse, Parsed, MAX_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header { len, source } => {
            assert!(len > 0 && len <= data.len() && len <= MAX_HEADER_BYTES);
            let header = &data[..len];
            assert_eq!(parse(header), Parsed::Header { len, source });
            let step = (len / 64).max(1);
            for cut in (0..len).step_by(step) {
                assert_eq!(
                    parse(&header[..cut]),
                    Parsed::Incomplete,
                    "cut {cut} of header {header:?}"
                );
            }
        }
        Parsed::Incomplete => assert!(data.len() < MAX_HEADER_BYTES),
        refused @ (Parsed::NotProxy | Parsed::Invalid) => {
            assert!(!data.is_empty());
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\0\x21\x11");
            assert_eq!(parse(&longer), refused, "more bytes changed a refusal");
        }
    }
});
