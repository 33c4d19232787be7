//! Admin endpoint: what operators and load balancers ask the service.
//!
//! Owns `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (200 only while beacons can be accepted without loss: the broker
//! is reachable or the spool can write and has room, and the service is not
//! shutting down).
//!
//! Must never: be served on the beacon listener, or do blocking work per
//! request (readiness is read from flags the probe thread keeps current).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::metrics::Metrics;
use crate::sink::KafkaSink;
use crate::stream_config_remote::StreamConfigStatus;

/// The facts `/readyz` answers from.
#[derive(Debug)]
pub struct Readiness {
    sink: Arc<KafkaSink>,
    draining: AtomicBool,
    /// A stream config from a URL: its age and last refresh, a detail line
    /// (never a reason to be unready).
    stream_config: Option<Arc<StreamConfigStatus>>,
}

impl Readiness {
    pub fn new(sink: Arc<KafkaSink>) -> Self {
        Self {
            sink,
            draining: AtomicBool::new(false),
            stream_config: None,
        }
    }

    /// Adds the stream config detail line to `/readyz`.
    pub fn with_stream_config(mut self, status: Arc<StreamConfigStatus>) -> Self {
        self.stream_config = Some(status);
        self
    }

    fn detail(&self) -> String {
        self.stream_config
            .as_ref()
            .map(|s| s.detail_line(crate::stream_config_remote::now_ms()))
            .unwrap_or_default()
    }

    /// From now on `/readyz` answers 503: the service is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready while beacons can be accepted without loss: not draining, not
    /// shedding (spool full, or unable to write: a full disk, an I/O error),
    /// and either the broker answers or the spool has room.
    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        match self.sink.spool() {
            Some(spool) => !spool.is_full() && spool.is_writable(),
            None => self.sink.broker_reachable(),
        }
    }
}

/// Answers one request on the admin listener.
pub fn handle<B>(
    req: &Request<B>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let (status, first) = if readiness.is_ready() {
                (StatusCode::OK, "ready\n")
            } else if readiness.draining.load(Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if readiness.sink.spool().is_some_and(|s| !s.is_writable()) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shedding: spool cannot write\n",
                )
            } else if readiness.sink.spool().is_some() {
                (StatusCode::SERVICE_UNAVAILABLE, "shedding: spool full\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n")
            };
            let detail = readiness.detail();
            if detail.is_empty() {
                text(status, first)
            } else {
                text_owned(status, format!("{first}{detail}"))
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_body(status, Bytes::from_static(body.as_bytes()))
}

fn text_owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_body(status, Bytes::from(body))
}

fn with_body(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
