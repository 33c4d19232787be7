//! beacond: an edge beacon collector.
//!
//! # Layout
//! The path a beacon takes, one module per step (see ARCHITECTURE.md):
//!
//! - [`listener`]: TCP accept loop and HTTP/1.1 connections (hyper).
//! - [`intake`]: the beacon endpoint; routes, methods, status codes.
//! - [`decode`]: the query string to validated JSON text.
//! - [`client_ip`] and [`meta`]: client address, time, host, sequence, user agent.
//! - [`proxy_protocol`], [`rate_limit`] and [`filter`]: edge protection: the
//!   PROXY header, per-client and global limits, user-agent filter, IP anonymization.
//! - [`format`]: the Kafka message bytes (`varnishkafka` or `json`).
//! - [`sink`]: the hand-off to Kafka (rdkafka), delivery reports, flush.
//! - [`metrics`] and [`admin`]: what operators see.
//! - [`config`]: the TOML file; [`service`]: wiring, start-up and shutdown.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client_ip;
pub mod config;
#[cfg(test)]
pub(crate) mod crosscheck;
pub mod decode;
pub mod event_rules;
pub mod filter;
pub mod format;
pub mod intake;
pub mod listener;
pub mod meta;
pub mod metrics;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod schema_repository;
pub mod service;
pub mod sink;
pub mod spool;
pub mod stream_config;
#[doc(hidden)]
pub mod testing;
pub mod validation;
