//! # loadtest: the proof harness for beacond
//!
//! Sends realistic EventLogging beacons at a collector on this machine, open
//! loop at a fixed rate (or closed loop at its maximum), optionally side by
//! side with a baseline server, and checks end to end that every beacon the
//! collector acknowledged reached Kafka exactly once and unchanged.
//!
//! ## Layout
//! * [`cli`]: the flags (names are a contract).
//! * [`run`]: one invocation from start to report.
//! * [`corpus`], [`encode`], [`rng`]: what is sent: schemas, the browser and
//!   PHP encodings, beacon `n` as a pure function of `(seed, n)`.
//! * [`events`]: the `/v1/events` traffic: events of real schemas, request
//!   `n` a pure function of `(seed, n)`, ids that say what was sent.
//! * [`schedule`], [`load`], [`http`]: when and how it is sent (pacer thread,
//!   keep-alive workers, a raw HTTP/1.1 client).
//! * [`stats`], [`verify`], [`report`], [`plot`]: what is measured and shown.
//! * [`kafka`], [`lines`]: reading the topic and parsing both output formats.
//! * [`scenario`], [`proxy`], [`slow`]: spikes, broker cuts, slow clients.
//!
//! ## Invariants
//! * Load goes to loopback addresses only ([`http::require_loopback`]); every
//!   loop is bounded in count and time; every network wait has a timeout.
//! * Latency is measured from each request's scheduled time.
//! * Only beacons answered 2xx are expected in Kafka; events of requests
//!   answered 2xx (or 400, all invalid): valid ones on their streams'
//!   topics, invalid ones on the error topic.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod corpus;
pub mod encode;
pub mod events;
pub mod http;
pub mod kafka;
pub mod lines;
pub mod load;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod slow;
pub mod stats;
pub mod verify;
