//! The modules of beacond that the fuzz targets exercise, compiled from the
//! main crate's own source files (`#[path]`), so that this crate needs
//! neither rdkafka nor librdkafka's C build (which does not run under
//! cargo-fuzz). The paths and names match `beacond::...`. A module that
//! starts using another `crate::` module needs that one listed here too;
//! `cargo fuzz build` says so.
#![forbid(unsafe_code)]
#![allow(dead_code)]

#[path = "../../src/client_ip.rs"]
pub mod client_ip;
#[path = "../../src/decode.rs"]
pub mod decode;
#[path = "../../src/format.rs"]
pub mod format;
#[path = "../../src/meta.rs"]
pub mod meta;
#[path = "../../src/proxy_protocol.rs"]
pub mod proxy_protocol;
#[path = "../../src/schema_repository.rs"]
pub mod schema_repository;
#[path = "../../src/stream_config.rs"]
pub mod stream_config;
#[path = "../../src/testing.rs"]
pub mod testing;
#[path = "../../src/validation.rs"]
pub mod validation;
#[path = "../../src/listener/http1/chunked.rs"]
#[doc(hidden)]
pub mod http1_chunked;
#[path = "../../src/listener/http1/head.rs"]
#[doc(hidden)]
pub mod http1_head;
/// The listener's HTTP/1 parsers (heads, chunked bodies): pure modules,
/// under their paths in beacond.
pub mod listener {
    pub mod http1 {
        pub use crate::http1_chunked as chunked;
        pub use crate::http1_head as head;
    }
}
