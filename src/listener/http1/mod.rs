//! beacond's own HTTP/1.1 server pieces (HTTP/2 stays with hyper): so far
//! the parsers of untrusted input, request heads ([`head`], by `httparse`)
//! and chunked bodies ([`chunked`]); pure, property-tested and fuzzed.

pub mod chunked;
pub mod head;
