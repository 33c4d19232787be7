//! Matching what was acknowledged (answered 2xx) against what reached Kafka.
//! Pure logic: the Kafka reader fills an [`Observed`] map, the load loop a
//! list of [`Expected`], and [`match_ids`] counts.

use crate::stats::LatencySummary;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A beacon the collector acknowledged: it must be in Kafka exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub n: u64,
    /// When its request was scheduled (unix time, microseconds).
    pub sched_unix_us: i64,
}

/// What the Kafka reader saw for one id of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub count: u32,
    /// Kafka timestamp of the first copy (unix milliseconds).
    pub first_ts_ms: i64,
    /// When the harness read the first copy (unix milliseconds).
    pub first_read_ms: i64,
    /// Some copy differed from the capsule sent.
    pub corrupted: bool,
    /// Some copy recorded another client IP than the one we sent.
    pub ip_mismatch: bool,
    /// Some copy recorded another user agent than the one we sent.
    pub ua_mismatch: bool,
}

impl Observed {
    pub fn first(ts_ms: i64) -> Self {
        Observed {
            count: 1,
            first_ts_ms: ts_ms,
            first_read_ms: ts_ms,
            corrupted: false,
            ip_mismatch: false,
            ua_mismatch: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Matched {
    /// Acknowledged beacons (answered 2xx).
    pub expected: u64,
    /// Acknowledged beacons found in Kafka (at least once).
    pub delivered: u64,
    /// Acknowledged beacons not found in Kafka.
    pub lost: u64,
    /// Acknowledged beacons found more than once.
    pub duplicated: u64,
    /// Extra copies beyond the first, over all beacons.
    pub duplicate_copies: u64,
    /// Delivered beacons whose capsule differs from what was sent.
    pub corrupted: u64,
    pub ip_mismatch: u64,
    pub ua_mismatch: u64,
    /// Beacons of this run in Kafka that were not acknowledged (timed out,
    /// refused, or answered 503 yet delivered anyway).
    pub unacknowledged_delivered: u64,
    /// Scheduled send to the Kafka timestamp of the first copy (the
    /// producer's CreateTime unless the topic uses LogAppendTime).
    pub e2e_latency_ms: LatencySummary,
    /// Scheduled send to the moment the harness read the first copy: an
    /// upper bound on delivery delay, whatever the timestamp type.
    pub read_latency_ms: LatencySummary,
}

pub fn match_ids(expected: &[Expected], observed: &HashMap<u64, Observed>) -> Matched {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut read_hist = Histogram::<u64>::new(3).expect("histogram");
    let mut m = Matched {
        expected: expected.len() as u64,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        duplicate_copies: 0,
        corrupted: 0,
        ip_mismatch: 0,
        ua_mismatch: 0,
        unacknowledged_delivered: 0,
        e2e_latency_ms: LatencySummary::default(),
        read_latency_ms: LatencySummary::default(),
    };
    let mut seen = HashSet::with_capacity(expected.len());
    for e in expected {
        if !seen.insert(e.n) {
            continue; // the same request acknowledged twice cannot happen; be safe
        }
        match observed.get(&e.n) {
            None => m.lost += 1,
            Some(o) => {
                m.delivered += 1;
                if o.count > 1 {
                    m.duplicated += 1;
                    m.duplicate_copies += u64::from(o.count - 1);
                }
                m.corrupted += u64::from(o.corrupted);
                m.ip_mismatch += u64::from(o.ip_mismatch);
                m.ua_mismatch += u64::from(o.ua_mismatch);
                let e2e_us = o.first_ts_ms * 1000 - e.sched_unix_us;
                crate::stats::record(&mut hist, e2e_us.max(0) as u64);
                let read_us = o.first_read_ms * 1000 - e.sched_unix_us;
                crate::stats::record(&mut read_hist, read_us.max(0) as u64);
            }
        }
    }
    m.expected = seen.len() as u64;
    m.unacknowledged_delivered = observed.keys().filter(|n| !seen.contains(n)).count() as u64;
    m.e2e_latency_ms = LatencySummary::from_us(&hist);
    m.read_latency_ms = LatencySummary::from_us(&read_hist);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_delivered_lost_duplicated() {
        let expected: Vec<Expected> = (0..10)
            .map(|n| Expected {
                n,
                sched_unix_us: 1_000_000_000 + n as i64 * 1000,
            })
            .collect();
        let mut observed = HashMap::new();
        for n in 0..8u64 {
            // arrives 5 ms after it was scheduled
            observed.insert(n, Observed::first(1_000_000 + n as i64 + 5));
        }
        observed.get_mut(&2).unwrap().count = 3; // two extra copies
        observed.get_mut(&7).unwrap().first_read_ms += 1000; // read a second late
        observed.get_mut(&3).unwrap().count = 2;
        observed.get_mut(&4).unwrap().corrupted = true;
        observed.get_mut(&5).unwrap().ip_mismatch = true;
        observed.insert(42, Observed::first(1_000_100)); // timed out but delivered
        let m = match_ids(&expected, &observed);
        assert_eq!(m.expected, 10);
        assert_eq!(m.delivered, 8);
        assert_eq!(m.lost, 2);
        assert_eq!(m.duplicated, 2);
        assert_eq!(m.duplicate_copies, 3);
        assert_eq!(m.corrupted, 1);
        assert_eq!(m.ip_mismatch, 1);
        assert_eq!(m.ua_mismatch, 0);
        assert_eq!(m.unacknowledged_delivered, 1);
        assert_eq!(m.e2e_latency_ms.count, 8);
        assert!(
            (m.e2e_latency_ms.p50 - 5.0).abs() < 0.01,
            "{:?}",
            m.e2e_latency_ms
        );
        assert!((m.e2e_latency_ms.max - 5.0).abs() < 0.01);
        assert!((m.read_latency_ms.p50 - 5.0).abs() < 0.01);
        assert!(
            (m.read_latency_ms.max - 1005.0).abs() < 1.0,
            "{:?}",
            m.read_latency_ms
        );
    }

    #[test]
    fn nothing_expected_nothing_lost() {
        let m = match_ids(&[], &HashMap::new());
        assert_eq!(
            (m.expected, m.delivered, m.lost, m.duplicated),
            (0, 0, 0, 0)
        );
        assert_eq!(m.e2e_latency_ms.count, 0);
    }
}
