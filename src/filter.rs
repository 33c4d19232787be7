//! Filters and privacy: beacons dropped on purpose, and what is kept of the
//! client address.
//!
//! Owns two rules, both applied after the client address and user agent are
//! known and before the beacon is decoded:
//!
//! - `filter.user_agent_exclude`: a beacon whose user agent matches any of
//!   these regexes is answered 204 and dropped, like the varnishkafka filter
//!   of the Wikimedia deployment (`^Fuzz Faster U Fool`). Counted, never
//!   written anywhere.
//! - `privacy.anonymize_ip`: the address written to Kafka (and used as the
//!   partition key) keeps only its network part: /24 of IPv4, /48 of IPv6.
//!   Rate limiting still sees the full address.
//!
//! Must never: allocate per beacon, or let an excluded beacon reach a sink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::bytes::RegexSet;

use crate::config::{FilterConfig, PrivacyConfig};

/// The per-beacon filters, built once at start-up.
#[derive(Debug, Clone, Default)]
pub struct BeaconFilter {
    user_agent_exclude: Option<RegexSet>,
    anonymize_ip: bool,
}

impl BeaconFilter {
    /// Builds the filters; a regex that does not compile is an error (the
    /// filter never fails open).
    pub fn new(filter: &FilterConfig, privacy: &PrivacyConfig) -> Result<Self, String> {
        Ok(Self {
            user_agent_exclude: filter.compile_user_agent_exclude()?,
            anonymize_ip: privacy.anonymize_ip,
        })
    }

    /// True when the user agent matches one of the exclusion regexes.
    /// Regexes match the raw header bytes (`(?-u)` is not needed: a regex
    /// made of ASCII and valid UTF-8 matches the same text either way).
    pub fn excludes_user_agent(&self, user_agent: &[u8]) -> bool {
        self.user_agent_exclude
            .as_ref()
            .is_some_and(|set| set.is_match(user_agent))
    }

    /// The address to write: the client's, or its network when anonymizing.
    pub fn output_ip(&self, ip: IpAddr) -> IpAddr {
        if self.anonymize_ip {
            anonymize_ip(ip)
        } else {
            ip
        }
    }
}

/// Keeps the /24 of an IPv4 address and the /48 of an IPv6 address, zeroing
/// the rest. IPv4-mapped IPv6 addresses are treated as IPv4.
pub fn anonymize_ip(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & (u128::MAX << 80))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn filter(patterns: &[&str], anonymize_ip: bool) -> BeaconFilter {
        BeaconFilter::new(
            &FilterConfig {
                user_agent_exclude: patterns.iter().map(|s| s.to_string()).collect(),
            },
            &PrivacyConfig { anonymize_ip },
        )
        .unwrap()
    }

    #[test]
    fn anonymizes_v4_to_24_and_v6_to_48() {
        assert_eq!(anonymize_ip(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymize_ip(ip("10.1.2.255")), ip("10.1.2.0"));
        assert_eq!(
            anonymize_ip(ip("2001:db8:abcd:1234:5678::9")),
            ip("2001:db8:abcd::")
        );
        assert_eq!(anonymize_ip(ip("::ffff:198.51.100.9")), ip("198.51.100.0"));
        assert_eq!(anonymize_ip(ip("::1")), ip("::"));
    }

    #[test]
    fn output_ip_only_when_enabled() {
        assert_eq!(filter(&[], false).output_ip(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(filter(&[], true).output_ip(ip("1.2.3.4")), ip("1.2.3.0"));
    }

    #[test]
    fn user_agent_exclusion() {
        let f = filter(&["^Fuzz Faster U Fool", "(?i)badbot"], false);
        assert!(f.excludes_user_agent(b"Fuzz Faster U Fool v2.1.0"));
        assert!(f.excludes_user_agent(b"Mozilla/5.0 (compatible; BadBot/1.0)"));
        assert!(!f.excludes_user_agent(b"Mozilla/5.0 Fuzz Faster U Fool"));
        assert!(!f.excludes_user_agent(b""));
        // Bytes that are not UTF-8 neither panic nor match by accident.
        assert!(!f.excludes_user_agent(b"\xff\xfeFuzz"));
        assert!(f.excludes_user_agent(b"Fuzz Faster U Fool\xff"));
        assert!(!filter(&[], false).excludes_user_agent(b"Fuzz Faster U Fool"));
    }

    #[test]
    fn bad_regex_is_named() {
        let bad = FilterConfig {
            user_agent_exclude: vec!["ok".into(), "(unclosed".into()],
        };
        let err = bad.compile_user_agent_exclude().unwrap_err();
        assert!(err.contains("(unclosed"), "{err}");
        // Never fails open: the filter cannot be built without its regexes.
        assert!(BeaconFilter::new(&bad, &PrivacyConfig::default()).is_err());
        let none = FilterConfig::default()
            .compile_user_agent_exclude()
            .unwrap();
        assert!(none.is_none());
    }
}
