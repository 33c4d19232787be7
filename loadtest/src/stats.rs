//! Recording request outcomes and summarizing them: the numbers of the report.

use crate::http::TransportError;
use crate::verify::Expected;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Records `v` into an auto-resizing histogram (`saturating_record` would
/// clamp instead of growing it).
pub fn record(h: &mut Histogram<u64>, v: u64) {
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

pub fn new_hist() -> Histogram<u64> {
    // Auto-resizing, 3 significant digits, microseconds.
    Histogram::new(3).expect("histogram")
}

/// One second of the timeline (by completion time).
#[derive(Debug, Clone)]
pub struct Second {
    pub completed: u64,
    pub ok: u64,
    pub non_ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            completed: 0,
            ok: 0,
            non_ok: 0,
            errors: 0,
            latency: Histogram::new(2).expect("histogram"),
        }
    }
}

/// Everything measured for one endpoint.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Scheduled time to response, microseconds (no coordinated omission).
    pub latency: Histogram<u64>,
    /// Write of the request to response, microseconds.
    pub service: Histogram<u64>,
    /// Scheduled time to write of the request (generator lag plus waiting for a
    /// free connection), microseconds.
    pub send_delay: Histogram<u64>,
    pub status_counts: BTreeMap<u16, u64>,
    pub transport_errors: BTreeMap<TransportError, u64>,
    pub scheduled: u64,
    pub sent: u64,
    /// Scheduled but never sent before the run's deadline.
    pub unsent: u64,
    pub retries: u64,
    pub valid_sent: u64,
    pub invalid_sent: u64,
    /// Valid beacons answered 4xx.
    pub valid_rejected: u64,
    /// Invalid beacons answered 2xx.
    pub invalid_accepted: u64,
    pub get: u64,
    pub post: u64,
    pub expected: Vec<Expected>,
    /// Events: deliberately invalid events expected on the error topic.
    pub expected_errors: Vec<Expected>,
    /// Events: events sent (a request carries one or more), how many were
    /// deliberately invalid, and answers other than the one EventGate gives
    /// (201/207/400, or 202 hasty; 503 is not counted: it is a refusal).
    pub events_sent: u64,
    pub invalid_events_sent: u64,
    pub unexpected_status: u64,
    pub timeline: BTreeMap<u64, Second>,
    /// Wall time under load (sum of rounds).
    pub active: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: new_hist(),
            service: new_hist(),
            send_delay: new_hist(),
            status_counts: BTreeMap::new(),
            transport_errors: BTreeMap::new(),
            scheduled: 0,
            sent: 0,
            unsent: 0,
            retries: 0,
            valid_sent: 0,
            invalid_sent: 0,
            valid_rejected: 0,
            invalid_accepted: 0,
            get: 0,
            post: 0,
            expected: Vec::new(),
            expected_errors: Vec::new(),
            events_sent: 0,
            invalid_events_sent: 0,
            unexpected_status: 0,
            timeline: BTreeMap::new(),
            active: Duration::ZERO,
        }
    }
}

/// The outcome of one request, as the load loop hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub valid: bool,
    pub post: bool,
    /// Scheduled → written, written → done.
    pub send_delay: Duration,
    pub service: Duration,
    pub result: Result<u16, TransportError>,
    /// Second of the timeline in which it completed.
    pub second: u64,
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Recorder {
    pub fn record(&mut self, o: &Outcome) {
        self.sent += 1;
        if o.valid {
            self.valid_sent += 1;
        } else {
            self.invalid_sent += 1;
        }
        if o.post {
            self.post += 1;
        } else {
            self.get += 1;
        }
        let total = o.send_delay + o.service;
        let sec = self.timeline.entry(o.second).or_default();
        sec.completed += 1;
        match o.result {
            Ok(status) => {
                *self.status_counts.entry(status).or_default() += 1;
                record(&mut self.latency, us(total).max(1));
                record(&mut self.service, us(o.service).max(1));
                record(&mut self.send_delay, us(o.send_delay).max(1));
                record(&mut sec.latency, us(total).max(1));
                if (200..300).contains(&status) {
                    sec.ok += 1;
                    if !o.valid {
                        self.invalid_accepted += 1;
                    }
                } else {
                    sec.non_ok += 1;
                    if o.valid && (400..500).contains(&status) {
                        self.valid_rejected += 1;
                    }
                }
            }
            Err(e) => {
                *self.transport_errors.entry(e).or_default() += 1;
                sec.errors += 1;
            }
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latency
            .add(&other.latency)
            .expect("same histogram kind");
        self.service
            .add(&other.service)
            .expect("same histogram kind");
        self.send_delay
            .add(&other.send_delay)
            .expect("same histogram kind");
        for (k, v) in other.status_counts {
            *self.status_counts.entry(k).or_default() += v;
        }
        for (k, v) in other.transport_errors {
            *self.transport_errors.entry(k).or_default() += v;
        }
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.unsent += other.unsent;
        self.retries += other.retries;
        self.valid_sent += other.valid_sent;
        self.invalid_sent += other.invalid_sent;
        self.valid_rejected += other.valid_rejected;
        self.invalid_accepted += other.invalid_accepted;
        self.get += other.get;
        self.post += other.post;
        self.expected.extend(other.expected);
        self.expected_errors.extend(other.expected_errors);
        self.events_sent += other.events_sent;
        self.invalid_events_sent += other.invalid_events_sent;
        self.unexpected_status += other.unexpected_status;
        for (k, s) in other.timeline {
            let mine = self.timeline.entry(k).or_default();
            mine.completed += s.completed;
            mine.ok += s.ok;
            mine.non_ok += s.non_ok;
            mine.errors += s.errors;
            mine.latency.add(&s.latency).expect("same histogram kind");
        }
        self.active += other.active;
    }

    pub fn responses(&self) -> u64 {
        self.status_counts.values().sum()
    }

    pub fn ok_responses(&self) -> u64 {
        self.status_counts
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn transport_error_total(&self) -> u64 {
        self.transport_errors.values().sum()
    }

    pub fn summary(&self) -> EndpointSummary {
        let secs = self.active.as_secs_f64();
        let per_s = |v: u64| if secs > 0.0 { v as f64 / secs } else { 0.0 };
        EndpointSummary {
            scheduled: self.scheduled,
            sent: self.sent,
            unsent: self.unsent,
            status_counts: self
                .status_counts
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            transport_errors: self.transport_error_total(),
            transport_error_kinds: self
                .transport_errors
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            retries: self.retries,
            duration_s: secs,
            achieved_rate: per_s(self.responses()),
            ok_rate: per_s(self.ok_responses()),
            latency_ms: LatencySummary::from_us(&self.latency),
            service_time_ms: LatencySummary::from_us(&self.service),
            send_delay_ms: LatencySummary::from_us(&self.send_delay),
            valid_sent: self.valid_sent,
            invalid_sent: self.invalid_sent,
            valid_rejected: self.valid_rejected,
            invalid_accepted: self.invalid_accepted,
            methods: [
                ("GET".to_string(), self.get),
                ("POST".to_string(), self.post),
            ]
            .into_iter()
            .collect(),
            intake: (self.events_sent > 0).then(|| IntakeSummary {
                events_sent: self.events_sent,
                invalid_events_sent: self.invalid_events_sent,
                events_per_request: self.events_sent as f64 / self.sent.max(1) as f64,
                unexpected_status: self.unexpected_status,
                event_rate: per_s(self.events_sent),
            }),
        }
    }
}

/// Events mode: per-event figures of an endpoint.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntakeSummary {
    pub events_sent: u64,
    pub invalid_events_sent: u64,
    pub events_per_request: f64,
    /// Answers other than EventGate's for the request (201 all valid, 207
    /// mixed, 400 all invalid, 202 hasty); 503 and transport errors excluded.
    pub unexpected_status: u64,
    /// Events sent per second of load.
    pub event_rate: f64,
}

/// The per-endpoint figures of the JSON report (names are a contract).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointSummary {
    pub scheduled: u64,
    pub sent: u64,
    pub unsent: u64,
    pub status_counts: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub transport_error_kinds: BTreeMap<String, u64>,
    pub retries: u64,
    pub duration_s: f64,
    /// HTTP responses (any status) per second under load.
    pub achieved_rate: f64,
    /// 2xx responses per second under load.
    pub ok_rate: f64,
    /// Scheduled time to response: the latency a browser sees.
    pub latency_ms: LatencySummary,
    pub service_time_ms: LatencySummary,
    pub send_delay_ms: LatencySummary,
    pub valid_sent: u64,
    pub invalid_sent: u64,
    pub valid_rejected: u64,
    pub invalid_accepted: u64,
    pub methods: BTreeMap<String, u64>,
    /// Events mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intake: Option<IntakeSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64, second: u64) -> Outcome {
        Outcome {
            valid: true,
            post: true,
            send_delay: Duration::ZERO,
            service: Duration::from_millis(ms),
            result: Ok(204),
            second,
        }
    }

    #[test]
    fn report_numbers_on_a_known_input() {
        let mut r = Recorder::default();
        // 1000 requests: latencies 1..=1000 ms, all 204, over 2 seconds
        for i in 1..=1000u64 {
            r.record(&ok(i, i / 500));
        }
        r.record(&Outcome {
            result: Ok(400),
            valid: false,
            post: false,
            ..ok(1, 1)
        });
        r.record(&Outcome {
            result: Ok(400),
            ..ok(1, 1)
        });
        r.record(&Outcome {
            result: Err(TransportError::Timeout),
            ..ok(1, 1)
        });
        r.record(&Outcome {
            result: Ok(204),
            valid: false,
            ..ok(1, 1)
        });
        r.active = Duration::from_secs(2);
        let s = r.summary();
        assert_eq!(s.sent, 1004);
        assert_eq!(s.status_counts["204"], 1001);
        assert_eq!(s.status_counts["400"], 2);
        assert_eq!(s.transport_errors, 1);
        assert_eq!(s.transport_error_kinds["timeout"], 1);
        assert_eq!(s.valid_rejected, 1);
        assert_eq!(s.invalid_accepted, 1);
        assert_eq!(s.invalid_sent, 2);
        assert_eq!(s.methods["GET"], 1);
        assert!((s.achieved_rate - 1003.0 / 2.0).abs() < 1e-9);
        assert!((s.ok_rate - 1001.0 / 2.0).abs() < 1e-9);
        // percentiles within the histogram's 3 significant digits
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(close(s.latency_ms.p50, 500.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p90, 900.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99, 990.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p999, 999.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.max, 1000.0), "{:?}", s.latency_ms);
        assert_eq!(r.timeline[&0].completed, 499);
        assert_eq!(r.timeline[&1].completed, 500 + 4);
        assert_eq!(r.timeline[&1].errors, 1);
        assert_eq!(r.timeline[&2].completed, 1);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(&ok(1, 0));
        b.record(&ok(3, 1));
        b.record(&Outcome {
            result: Err(TransportError::Connect),
            ..ok(1, 1)
        });
        a.active = Duration::from_secs(1);
        b.active = Duration::from_secs(1);
        a.merge(b);
        let s = a.summary();
        assert_eq!(s.sent, 3);
        assert_eq!(s.latency_ms.count, 2);
        assert_eq!(s.transport_errors, 1);
        assert!((s.achieved_rate - 1.0).abs() < 1e-9);
        assert_eq!(a.timeline.len(), 2);
    }
}
