//! beacond: an edge event collector for both generations of the
//! EventLogging protocol (legacy beacons and Event Platform events).
//!
//! # Layout
//! One module per step of the paths a beacon and an event take (see
//! ARCHITECTURE.md):
//!
//! - [`listener`]: TCP accept loop and HTTP/1.1 connections (hyper).
//! - [`intake`]: routes and the plumbing both protocols share;
//!   [`intake::legacy`] (beacons, 204) and [`intake::events`]
//!   (`POST /v1/events`, EventGate's contract).
//! - [`decode`]: a beacon's query string to validated JSON text.
//! - [`stream_config`], [`schema_repository`] and [`validation`]: the Event
//!   Platform rules (streams, compiled schemas, per-event verdicts), nothing
//!   of HTTP; [`event_rules`] loads them at start-up and on `SIGHUP`.
//! - [`client_ip`] and [`meta`]: client address, time, host, sequence, user agent.
//! - [`proxy_protocol`], [`rate_limit`] and [`filter`]: edge protection: the
//!   PROXY header, per-client and global limits, user-agent filter, IP anonymization.
//! - [`format`]: the beacon's Kafka message bytes (`varnishkafka` or `json`).
//! - [`legacy_conversion`]: a beacon's capsule as an Event Platform event
//!   (`output.format = "event_platform"`), nothing of HTTP.
//! - [`sink`] and [`spool`]: the hand-off to Kafka (rdkafka), the disk spool,
//!   delivery reports, flush.
//! - [`metrics`], [`kafka_stats`] (librdkafka's statistics) and [`admin`]:
//!   what operators see.
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
pub mod kafka_stats;
pub mod legacy_conversion;
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
pub mod stream_config_remote;
pub mod systemd;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod validation;
