//! Client metadata, part one: which address a beacon came from.
//!
//! Owns the trust rule. The TCP peer is the client unless the peer is a
//! trusted proxy; then the forwarding header (`client_ip.header`, e.g.
//! `X-Forwarded-For` or `X-Client-IP`) is walked from the right, and the first
//! address that is not itself a trusted proxy is the client. Entries to the
//! left of it were written by the client and are never believed. A header from
//! an untrusted peer is ignored entirely, and so is any header on a connection
//! whose PROXY header named no client ([`PeerOrigin::Unnamed`]: the peer is
//! then the balancer, which vouches for nobody on it).
//!
//! Must never: trust the left-most `X-Forwarded-For` entry, allocate per
//! request, or fail a request (a malformed header yields the last address we
//! could verify, never an error).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// What the connection says of its peer, before any header is read.
///
/// With `http.proxy_protocol`, a trusted balancer's PROXY header either names
/// the client (its source address becomes the peer) or names none: v2 `LOCAL`
/// (the balancer's own connection, e.g. a health check), v1 `UNKNOWN`, v2
/// `AF_UNSPEC` or `AF_UNIX` (the client's address is not known). Then the peer
/// stays the balancer's TCP address, and the connection's bytes are not
/// vouched for: a forwarding header on it may be the client's own writing on
/// an L4 path, so it is never believed; the client is the balancer (so such
/// connections share the balancer's rate-limit key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerOrigin {
    /// The TCP peer, or the client a PROXY header named: its forwarding
    /// header is believed when it is a trusted proxy.
    #[default]
    Named,
    /// A trusted balancer whose PROXY header named no client: no forwarding
    /// header is believed. The listener marks such requests with this value
    /// as a request extension.
    Unnamed,
}

/// A request's peer: its address and what the connection said of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    pub origin: PeerOrigin,
}

impl From<IpAddr> for Peer {
    /// A peer the connection named (a direct client, or a PROXY header's source).
    fn from(ip: IpAddr) -> Self {
        Peer {
            ip,
            origin: PeerOrigin::Named,
        }
    }
}

/// Resolves the client address of a request from its peer and headers.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    header: HeaderName,
}

impl ClientIpResolver {
    pub fn new(trusted_proxies: Vec<IpNet>, header: HeaderName) -> Self {
        Self {
            trusted: trusted_proxies,
            header,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address. IPv4-mapped IPv6 addresses come back as IPv4.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.resolve_from(PeerOrigin::Named, peer, headers)
    }

    /// [`ClientIpResolver::resolve`] for a peer of the given origin: an
    /// [`PeerOrigin::Unnamed`] peer is the client, whatever its headers say.
    pub fn resolve_from(&self, origin: PeerOrigin, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if origin == PeerOrigin::Unnamed || self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        // The right-most verified hop so far. When every entry is a trusted
        // proxy this ends as the left-most one, like nginx's recursive realip.
        let mut hop = peer;
        // Later header lines are appended by later proxies: walk them last first.
        for value in headers.get_all(&self.header).iter().rev() {
            // Bytes, not `to_str`: a byte that is not visible ASCII in an
            // entry the client wrote must not hide the entries our proxies
            // appended to its right on the same line.
            for entry in value.as_bytes().rsplit(|b| *b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let parsed = std::str::from_utf8(entry)
                    .ok()
                    .and_then(parse_forwarded_entry);
                let Some(ip) = parsed else {
                    // Garbage in the chain: nothing left of it can be verified.
                    return hop;
                };
                let ip = ip.to_canonical();
                if !self.is_trusted(ip) {
                    return ip;
                }
                hop = ip;
            }
        }
        hop
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn resolver(trusted: &[&str], header: &'static str) -> ClientIpResolver {
        ClientIpResolver::new(
            trusted.iter().map(|s| s.parse().unwrap()).collect(),
            HeaderName::from_static(header),
        )
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const XFF: &str = "x-forwarded-for";

    #[test]
    fn no_proxy_configured_uses_peer_and_ignores_header() {
        let r = resolver(&[], XFF);
        let h = headers(XFF, &["203.0.113.9"]);
        assert_eq!(r.resolve(ip("198.51.100.7"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_chain_takes_rightmost_untrusted() {
        let r = resolver(&["10.0.0.0/8", "192.0.2.1/32"], XFF);
        // client, forged-by-client entry, then two of our proxies.
        let h = headers(XFF, &["6.6.6.6, 203.0.113.9, 192.0.2.1"]);
        assert_eq!(r.resolve(ip("10.1.2.3"), &h), ip("203.0.113.9"));
        // Same chain split over several header lines.
        let h = headers(XFF, &["6.6.6.6", "203.0.113.9", "192.0.2.1"]);
        assert_eq!(r.resolve(ip("10.1.2.3"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn untrusted_peer_with_forged_header_is_ignored() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        let h = headers(XFF, &["1.1.1.1, 10.0.0.1"]);
        assert_eq!(r.resolve(ip("198.51.100.7"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn a_trusted_balancer_that_named_no_client_vouches_for_no_header() {
        // PROXY UNKNOWN / v2 LOCAL, AF_UNSPEC, AF_UNIX: the peer stays the
        // balancer, and what the client wrote after it is not believed.
        let r = resolver(&["10.0.0.0/8"], XFF);
        for forged in [&["6.6.6.6"][..], &["6.6.6.6, 10.0.0.2"], &["10.9.9.9"]] {
            let h = headers(XFF, forged);
            assert_eq!(
                r.resolve_from(PeerOrigin::Unnamed, ip("10.0.0.5"), &h),
                ip("10.0.0.5"),
                "{forged:?}"
            );
            // The same header from a named trusted peer is walked as usual.
            assert_ne!(
                r.resolve_from(PeerOrigin::Named, ip("10.0.0.5"), &h),
                ip("10.0.0.5")
            );
        }
        assert_eq!(
            r.resolve_from(
                PeerOrigin::Unnamed,
                ip("::ffff:10.0.0.5"),
                &HeaderMap::new()
            ),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        assert_eq!(r.resolve(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        let h = headers(XFF, &["10.9.9.9, 10.0.0.2"]);
        assert_eq!(r.resolve(ip("10.0.0.5"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn garbage_entry_stops_at_last_verified_hop() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        let h = headers(XFF, &["1.2.3.4, not-an-ip, 10.0.0.2"]);
        assert_eq!(r.resolve(ip("10.0.0.5"), &h), ip("10.0.0.2"));
        let h = headers(XFF, &["unknown"]);
        assert_eq!(r.resolve(ip("10.0.0.5"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn ipv6_and_ports() {
        let r = resolver(&["2001:db8:ffff::/48", "10.0.0.0/8"], XFF);
        let h = headers(XFF, &["[2001:db8::1]:4711, 2001:db8:ffff::2"]);
        assert_eq!(r.resolve(ip("2001:db8:ffff::1"), &h), ip("2001:db8::1"));
        let h = headers(XFF, &["203.0.113.9:1234"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = headers(XFF, &["2001:db8::7"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        let h = headers(XFF, &["[2001:db8::8]"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("2001:db8::8"));
        // An untrusted IPv6 peer.
        assert_eq!(r.resolve(ip("2001:db8:1::5"), &h), ip("2001:db8:1::5"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; still trusted.
        let h = headers(XFF, &["::ffff:203.0.113.9"]);
        assert_eq!(r.resolve(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(
            r.resolve(ip("::ffff:198.51.100.1"), &HeaderMap::new()),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn x_client_ip_header() {
        let r = resolver(&["10.0.0.0/8"], "x-client-ip");
        let mut h = headers("x-client-ip", &["203.0.113.9"]);
        h.append(XFF, HeaderValue::from_static("6.6.6.6"));
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn non_utf8_header_is_ignored() {
        let r = resolver(&["10.0.0.0/8"], XFF);
        let mut h = HeaderMap::new();
        h.append(XFF, HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap());
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn non_ascii_client_entry_does_not_hide_the_proxy_appended_one() {
        // Found by the client_ip fuzz target: the client writes a non-ASCII
        // byte, the proxy appends the real address to the same line.
        let r = resolver(&["10.0.0.0/8"], XFF);
        let mut h = HeaderMap::new();
        h.append(
            XFF,
            HeaderValue::from_bytes("\u{7cb}, 6.6.6.6, 203.0.113.9, 10.0.0.2".as_bytes()).unwrap(),
        );
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let mut h = HeaderMap::new();
        h.append(
            XFF,
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn entry_parser() {
        assert_eq!(parse_forwarded_entry("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_forwarded_entry("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_forwarded_entry("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_forwarded_entry("::1"), Some(ip("::1")));
        assert_eq!(parse_forwarded_entry("1.2.3.4:"), None);
        assert_eq!(parse_forwarded_entry("1.2.3.4:x"), None);
        assert_eq!(parse_forwarded_entry("[::1"), None);
        assert_eq!(parse_forwarded_entry("[::1]x"), None);
        assert_eq!(parse_forwarded_entry("[1.2.3.4]"), None);
        assert_eq!(parse_forwarded_entry("host.example"), None);
    }
}
