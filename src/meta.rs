//! Client metadata, part two: what is attached to every beacon besides its
//! address: receive time, host name, sequence number, user agent.
//!
//! Owns the per-process sequence counter and the formatting of the receive
//! time (`YYYY-MM-DDTHH:MM:SS`, UTC, cached per second per thread).
//!
//! Must never: block, or allocate per beacon.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything the output formats need to know about a beacon besides its query.
#[derive(Debug, Clone, Copy)]
pub struct BeaconMeta<'a> {
    pub received: ReceiveTime,
    /// `None` for rejected beacons: sequence numbers go to accepted ones only,
    /// so a gap in a host's sequence means a beacon refused with 503.
    pub seq: Option<u64>,
    pub client_ip: IpAddr,
    /// Raw header bytes; empty when the request had none.
    pub user_agent: &'a [u8],
    pub hostname: &'a str,
}

/// The per-process sequence number (varnishkafka's `%n`), starting at 0.
#[derive(Debug, Default)]
pub struct SequenceCounter(AtomicU64);

impl SequenceCounter {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A receive time with one-second resolution, as the pipeline records it
/// (plus the milliseconds, for the converted Event Platform event's `dt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveTime {
    unix_seconds: i64,
    millis: u16,
}

/// Length of `YYYY-MM-DDTHH:MM:SS`.
pub const TIMESTAMP_LEN: usize = 19;

thread_local! {
    static LAST_FORMATTED: Cell<(i64, [u8; TIMESTAMP_LEN])> = const { Cell::new((i64::MIN, [0; TIMESTAMP_LEN])) };
}

impl ReceiveTime {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let (unix_seconds, millis) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_millis() as u16),
            Err(e) => (-(e.duration().as_secs_f64().ceil() as i64), 0),
        };
        Self {
            unix_seconds,
            millis,
        }
    }

    pub fn from_unix_seconds(unix_seconds: i64) -> Self {
        Self {
            unix_seconds,
            millis: 0,
        }
    }

    /// The same second, with `millis` (0-999) milliseconds into it.
    pub fn with_millis(self, millis: u16) -> Self {
        Self {
            millis: millis.min(999),
            ..self
        }
    }

    /// Milliseconds into the second (0-999).
    pub fn millis(self) -> u16 {
        self.millis
    }

    pub fn unix_seconds(self) -> i64 {
        self.unix_seconds
    }

    /// `YYYY-MM-DDTHH:MM:SS` in UTC. Formats once per second per thread.
    pub fn formatted(self) -> [u8; TIMESTAMP_LEN] {
        LAST_FORMATTED.with(|cache| {
            let (secs, text) = cache.get();
            if secs == self.unix_seconds {
                return text;
            }
            let text = format_utc(self.unix_seconds);
            cache.set((self.unix_seconds, text));
            text
        })
    }
}

fn format_utc(unix_seconds: i64) -> [u8; TIMESTAMP_LEN] {
    let dt = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut out = *b"0000-00-00T00:00:00";
    let year = dt.year().clamp(0, 9999) as u32;
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], u8::from(dt.month()) as u32);
    put_digits(&mut out[8..10], dt.day() as u32);
    put_digits(&mut out[11..13], dt.hour() as u32);
    put_digits(&mut out[14..16], dt.minute() as u32);
    put_digits(&mut out[17..19], dt.second() as u32);
    out
}

fn put_digits(slot: &mut [u8], mut value: u32) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The machine's fully qualified name, as varnishkafka's `%l` gives it:
/// the canonical name of the host name, or the plain host name when the
/// resolver knows no better.
pub fn machine_fqdn() -> String {
    let short = gethostname::gethostname().to_string_lossy().into_owned();
    let hints = dns_lookup::AddrInfoHints {
        flags: libc_ai_canonname(),
        ..Default::default()
    };
    if let Ok(mut infos) = dns_lookup::getaddrinfo(Some(&short), None, Some(hints)) {
        if let Some(Ok(info)) = infos.next() {
            if let Some(name) = info.canonname {
                if !name.is_empty() {
                    return name;
                }
            }
        }
    }
    short
}

/// `AI_CANONNAME`, the same value on every platform we build for.
const fn libc_ai_canonname() -> i32 {
    0x0002
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_seconds() {
        assert_eq!(
            &ReceiveTime::from_unix_seconds(0).formatted(),
            b"1970-01-01T00:00:00"
        );
        // 2026-11-28T23:27:14Z
        assert_eq!(
            &ReceiveTime::from_unix_seconds(1_795_908_434).formatted(),
            b"2026-11-28T23:27:14"
        );
        // Leap day, and the cache giving way to a new second.
        assert_eq!(
            &ReceiveTime::from_unix_seconds(951_782_400).formatted(),
            b"2000-02-29T00:00:00"
        );
        assert_eq!(
            &ReceiveTime::from_unix_seconds(951_782_401).formatted(),
            b"2000-02-29T00:00:01"
        );
    }

    #[test]
    fn sequence_counts_from_zero() {
        let s = SequenceCounter::default();
        assert_eq!((s.next(), s.next(), s.next()), (0, 1, 2));
    }

    #[test]
    fn fqdn_is_not_empty() {
        assert!(!machine_fqdn().is_empty());
    }
}
