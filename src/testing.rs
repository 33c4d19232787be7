//! Test support: the client-side encoders beacons arrive in, shared by unit
//! tests, integration tests, benches and fuzz targets. Not part of the
//! service; nothing on the request path uses it.

/// JavaScript's `encodeURIComponent`: every byte of the UTF-8 but
/// `A-Z a-z 0-9 - _ . ! ~ * ' ( )` is percent-encoded.
pub fn encode_uri_component(s: &str) -> String {
    percent_encode_except(s, b"-_.!~*'()")
}

/// PHP's `rawurlencode`: every byte but `A-Z a-z 0-9 - _ . ~` is
/// percent-encoded (so it also escapes `!'()*`).
pub fn rawurlencode(s: &str) -> String {
    percent_encode_except(s, b"-_.~")
}

fn percent_encode_except(s: &str, unreserved: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || unreserved.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_differ_only_on_sub_delims() {
        assert_eq!(encode_uri_component("a b!'()*é"), "a%20b!'()*%C3%A9");
        assert_eq!(rawurlencode("a b!'()*é"), "a%20b%21%27%28%29%2A%C3%A9");
    }
}
