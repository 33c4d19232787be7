//! Open-loop schedules: when request `n` is due, fixed before the run starts
//! and independent of how fast the server answers (no coordinated omission:
//! latency is measured from this time, not from when a connection was free).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub duration: Duration,
    /// Requests per second during the phase.
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    start: Duration,
    first: u64,
    count: u64,
    rate: f64,
}

/// A piecewise-constant rate schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    segments: Vec<Segment>,
    total: u64,
    duration: Duration,
}

impl Schedule {
    pub fn new(phases: &[Phase]) -> Self {
        let mut segments = Vec::new();
        let mut start = Duration::ZERO;
        let mut first = 0;
        for p in phases {
            let count = if p.rate > 0.0 {
                (p.rate * p.duration.as_secs_f64()).round() as u64
            } else {
                0
            };
            if count > 0 {
                segments.push(Segment {
                    start,
                    first,
                    count,
                    rate: p.rate,
                });
            }
            first += count;
            start += p.duration;
        }
        Schedule {
            segments,
            total: first,
            duration: start,
        }
    }

    pub fn constant(rate: f64, duration: Duration) -> Self {
        Schedule::new(&[Phase { duration, rate }])
    }

    /// Number of requests in the schedule.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// When request `n` (0-based) is due, from the start of the schedule.
    pub fn offset_of(&self, n: u64) -> Duration {
        let i = self
            .segments
            .partition_point(|s| s.first <= n)
            .saturating_sub(1);
        let s = &self.segments[i];
        s.start + Duration::from_nanos(((n - s.first) as f64 * 1e9 / s.rate).round() as u64)
    }

    /// Requests due at or before `elapsed`, starting from `from`: the range
    /// `from..to` a pacer releases at that moment.
    pub fn due_until(&self, from: u64, elapsed: Duration) -> std::ops::Range<u64> {
        let mut to = from;
        while to < self.total && self.offset_of(to) <= elapsed {
            to += 1;
        }
        from..to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn constant_rate_offsets() {
        let s = Schedule::constant(200.0, Duration::from_secs(3));
        assert_eq!(s.total(), 600);
        assert_eq!(s.offset_of(0), Duration::ZERO);
        assert_eq!(s.offset_of(1), ms(5));
        assert_eq!(s.offset_of(200), Duration::from_secs(1));
        assert!(s.offset_of(599) < Duration::from_secs(3));
    }

    #[test]
    fn phases_are_contiguous() {
        // steady 100/s for 2 s, spike 1000/s for 1 s, back to 100/s for 1 s
        let s = Schedule::new(&[
            Phase {
                duration: Duration::from_secs(2),
                rate: 100.0,
            },
            Phase {
                duration: Duration::from_secs(1),
                rate: 1000.0,
            },
            Phase {
                duration: Duration::from_secs(1),
                rate: 100.0,
            },
        ]);
        assert_eq!(s.total(), 200 + 1000 + 100);
        assert_eq!(s.duration(), Duration::from_secs(4));
        assert_eq!(s.offset_of(199), ms(1990));
        assert_eq!(s.offset_of(200), ms(2000));
        assert_eq!(s.offset_of(201), ms(2001));
        assert_eq!(s.offset_of(1200), ms(3000));
        assert_eq!(s.offset_of(1201), ms(3010));
        // monotone
        let mut last = Duration::ZERO;
        for n in 0..s.total() {
            let t = s.offset_of(n);
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn zero_rate_phase_is_a_pause() {
        let s = Schedule::new(&[
            Phase {
                duration: Duration::from_secs(1),
                rate: 10.0,
            },
            Phase {
                duration: Duration::from_secs(2),
                rate: 0.0,
            },
            Phase {
                duration: Duration::from_secs(1),
                rate: 10.0,
            },
        ]);
        assert_eq!(s.total(), 20);
        assert_eq!(s.offset_of(10), Duration::from_secs(3));
    }

    #[test]
    fn pacer_releases_what_is_due() {
        let s = Schedule::constant(1000.0, Duration::from_secs(1));
        assert_eq!(s.due_until(0, Duration::ZERO), 0..1);
        assert_eq!(s.due_until(1, ms(10)), 1..11);
        // A pacer that wakes late releases everything due at once: the
        // schedule does not slide.
        assert_eq!(s.due_until(11, ms(500)), 11..501);
        assert_eq!(s.due_until(501, Duration::from_secs(5)), 501..1000);
        assert_eq!(s.due_until(1000, Duration::from_secs(6)), 1000..1000);
    }
}
