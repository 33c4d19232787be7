//! Client-IP resolution: never panics; an untrusted peer is always the
//! client; the result is canonical (no IPv4-mapped IPv6); entries a client
//! writes to the left of the chosen address never change it; a new untrusted
//! hop appended by a trusted proxy becomes the client; a peer whose PROXY
//! header named no client (`PeerOrigin::Unnamed`) is the client, whatever
//! the header says.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use arbitrary::Arbitrary;
use beacond::client_ip::{ClientIpResolver, PeerOrigin};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Entry {
    Ip(IpAddr),
    IpPort(IpAddr, u16),
    Bracketed(Ipv6Addr, Option<u16>),
    Raw(String),
}

impl Entry {
    fn text(&self) -> String {
        match self {
            Entry::Ip(ip) => ip.to_string(),
            Entry::IpPort(IpAddr::V4(ip), port) => format!("{ip}:{port}"),
            Entry::IpPort(IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
            Entry::Bracketed(ip, None) => format!("[{ip}]"),
            Entry::Bracketed(ip, Some(port)) => format!("[{ip}]:{port}"),
            Entry::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    peer: IpAddr,
    trusted: Vec<(IpAddr, u8)>,
    lines: Vec<Vec<Entry>>,
    forged: Vec<Entry>,
    appended: IpAddr,
}

fn headers(lines: &[String]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(line).ok()?,
        );
    }
    Some(h)
}

fuzz_target!(|input: Input| {
    let trusted: Vec<IpNet> = input
        .trusted
        .iter()
        .take(8)
        .map(|(ip, len)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(*ip, len % (max + 1)).expect("valid prefix length")
        })
        .collect();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));
    let resolver =
        ClientIpResolver::new(trusted.clone(), HeaderName::from_static("x-forwarded-for"));
    let lines: Vec<String> = input
        .lines
        .iter()
        .map(|l| l.iter().map(Entry::text).collect::<Vec<_>>().join(", "))
        .collect();
    let Some(h) = headers(&lines) else {
        return;
    };
    let peer = input.peer.to_canonical();
    assert_eq!(
        resolver.resolve_from(PeerOrigin::Unnamed, input.peer, &h),
        peer,
        "header believed on a connection whose PROXY header named no client"
    );
    let client = resolver.resolve(input.peer, &h);
    assert_eq!(client, client.to_canonical(), "not canonical");
    if !is_trusted(peer) {
        assert_eq!(client, peer, "header believed from an untrusted peer");
        return;
    }
    if !is_trusted(client) {
        // Forged entries to the left, in the first line or as a line of their own.
        let forged: Vec<String> = input.forged.iter().map(Entry::text).collect();
        let forged = forged.join(", ");
        let mut prefixed = lines.clone();
        match prefixed.first_mut() {
            Some(first) => *first = format!("{forged}, {first}"),
            None => prefixed.push(forged.clone()),
        }
        if let Some(h2) = headers(&prefixed) {
            assert_eq!(
                resolver.resolve(input.peer, &h2),
                client,
                "forged prefix won"
            );
        }
        let mut extra_line = vec![forged];
        extra_line.extend(lines.iter().cloned());
        if let Some(h3) = headers(&extra_line) {
            assert_eq!(resolver.resolve(input.peer, &h3), client, "forged line won");
        }
    }
    let appended = input.appended.to_canonical();
    if !is_trusted(appended) {
        let mut more = lines.clone();
        more.push(appended.to_string());
        if let Some(h4) = headers(&more) {
            assert_eq!(resolver.resolve(input.peer, &h4), appended);
        }
    }
});
