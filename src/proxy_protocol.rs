//! PROXY protocol (v1 text and v2 binary, parsed by `ppp`): the client
//! address an L4 load balancer (HAProxy, LVS, cloud network balancers) puts
//! in front of the connection's bytes.
//!
//! Owns the trust rule for that header. With `http.proxy_protocol = true`:
//!
//! - a peer in `client_ip.trusted_proxies` must send a header; its source
//!   address becomes the connection's peer. A header that names no source
//!   (v2 `LOCAL`, the balancer's own health checks; v1 `UNKNOWN`, v2
//!   `AF_UNSPEC` or `AF_UNIX`: client unknown) keeps the TCP peer, the
//!   balancer, and marks the connection [`PeerOrigin::Unnamed`]: no
//!   forwarding header on it is believed (the client could have written one
//!   to pick its own address and rate-limit key). A missing or malformed
//!   header closes the connection;
//! - any other peer is served as a direct client, unless it sends a PROXY
//!   header, which closes the connection: only our balancers may say who the
//!   client is.
//!
//! The header is read (at most [`MAX_HEADER_BYTES`], within the header read
//! timeout), parsed, and exactly its length consumed; bytes read past it are
//! handed back to HTTP through [`Prefixed`].
//!
//! Must never: believe a header from an untrusted peer, read without a bound
//! in size or time, or panic on any input.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ppp::v2::{Addresses as V2Addresses, Command};
use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub use crate::client_ip::PeerOrigin;

/// The longest header accepted: a v1 header is at most 107 bytes, a v2
/// header 16 plus its addresses and TLVs (balancers add a few dozen bytes).
pub const MAX_HEADER_BYTES: usize = 4096;

const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header, `\r\n` included.
const V1_MAX_BYTES: usize = 107;
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;

/// What the start of a connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole, valid header of `len` bytes; `source` is the client, when the
    /// header names one.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// The bytes so far are the start of a header: read more.
    Incomplete,
    /// Not a PROXY header at all (e.g. an HTTP request line).
    NotProxy,
    /// A PROXY signature followed by something invalid, or too long.
    Invalid,
}

/// Parses a PROXY header at the start of `buf` (which may hold more bytes).
pub fn parse(buf: &[u8]) -> Parsed {
    let starts_with = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let (v1, v2) = (starts_with(V1_SIGNATURE), starts_with(V2_SIGNATURE));
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if !v1 && !v2 {
        return Parsed::NotProxy;
    }
    if v1 {
        return parse_v1(buf);
    }
    if buf.len() >= 16 {
        // Refuse an announced length we would never read, without waiting.
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_HEADER_BYTES {
            return Parsed::Invalid;
        }
    }
    match ppp::v2::Header::try_from(buf) {
        Ok(h) => Parsed::Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (Command::Proxy, V2Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, V2Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, _) => None,
            },
        },
        Err(e) if e.is_incomplete() => Parsed::Incomplete,
        Err(_) => Parsed::Invalid,
    }
}

/// A v1 header is one line of at most 107 bytes. It is parsed only once its
/// `\r\n` has arrived: `ppp` takes a line cut after a space (`... 4711 `) for
/// an invalid one, and TCP may cut anywhere.
fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(cr) = window.iter().position(|b| *b == b'\r') else {
        return if buf.len() >= V1_MAX_BYTES {
            Parsed::Invalid
        } else {
            Parsed::Incomplete
        };
    };
    match buf.get(cr + 1) {
        None => return Parsed::Incomplete,
        Some(b'\n') => {}
        Some(_) => return Parsed::Invalid,
    }
    let line = &buf[..cr + 2];
    match ppp::v1::Header::try_from(line) {
        Ok(h) => Parsed::Header {
            len: line.len(),
            source: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        },
        Err(_) => Parsed::Invalid,
    }
}

/// Why a connection was closed before HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProxyError {
    #[error("trusted peer sent no PROXY header")]
    Missing,
    #[error("malformed or oversized PROXY header")]
    Invalid,
    #[error("PROXY header from an untrusted peer")]
    Untrusted,
    #[error("PROXY header not received in time")]
    Timeout,
    /// The peer closed or the socket failed before a decision: not counted.
    #[error("connection closed before the PROXY header")]
    Closed,
}

impl ProxyError {
    /// Every counted reason, for pre-registering metrics.
    pub const COUNTED: [ProxyError; 4] = [
        ProxyError::Missing,
        ProxyError::Invalid,
        ProxyError::Untrusted,
        ProxyError::Timeout,
    ];

    /// The metric label (`beacond_connections_rejected_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::Missing => "proxy_header_missing",
            ProxyError::Invalid => "proxy_header_invalid",
            ProxyError::Untrusted => "proxy_header_untrusted",
            ProxyError::Timeout => "proxy_header_timeout",
            ProxyError::Closed => "closed",
        }
    }
}

/// The connection's client as the PROXY rule decides it.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The client: the header's source, or the TCP peer.
    pub peer: SocketAddr,
    /// [`PeerOrigin::Unnamed`] when a trusted peer's header named no source:
    /// the listener puts it on each request as an extension, and no
    /// forwarding header of the connection is believed.
    pub origin: PeerOrigin,
    /// The stream, with any bytes read past the header put back in front.
    pub stream: Prefixed<S>,
}

/// Reads what the PROXY rule needs from a new connection from `peer`
/// (`trusted`: in `client_ip.trusted_proxies`), within `timeout`.
pub async fn accept<S>(
    mut stream: S,
    peer: SocketAddr,
    trusted: bool,
    timeout: Duration,
) -> Result<Accepted<S>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    let read = async {
        loop {
            let filled = buf.len();
            let want = (MAX_HEADER_BYTES - filled).min(1024);
            buf.resize(filled + want, 0);
            let n = match stream.read(&mut buf[filled..]).await {
                Ok(n) => n,
                Err(_) => return Err(ProxyError::Closed),
            };
            buf.truncate(filled + n);
            if n == 0 {
                return Err(if trusted && !buf.is_empty() {
                    ProxyError::Invalid
                } else {
                    ProxyError::Closed
                });
            }
            match (parse(&buf), trusted) {
                (Parsed::Incomplete, _) => continue,
                (Parsed::Header { len, source }, true) => return Ok((len, source)),
                (Parsed::NotProxy, true) => return Err(ProxyError::Missing),
                (Parsed::Invalid, true) => return Err(ProxyError::Invalid),
                (Parsed::NotProxy, false) => return Ok((0, None)),
                (Parsed::Header { .. } | Parsed::Invalid, false) => {
                    return Err(ProxyError::Untrusted)
                }
            }
        }
    };
    let (len, source) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError::Timeout)??;
    buf.drain(..len);
    buf.shrink_to_fit();
    // A trusted peer's header without a source: the peer is the balancer,
    // and it vouches for nobody on this connection.
    let origin = match (trusted, source) {
        (true, None) => PeerOrigin::Unnamed,
        _ => PeerOrigin::Named,
    };
    Ok(Accepted {
        peer: source.unwrap_or(peer),
        origin,
        stream: Prefixed::new(buf, stream),
    })
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go
/// straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// Whether bytes read with the header are still to be yielded: a read
    /// is ready at once, whatever the inner stream says (the HTTP/1 driver
    /// asks before it takes a read buffer).
    pub fn has_buffered(&self) -> bool {
        self.pos < self.prefix.len()
    }

    /// The stream after the prefix.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    use ppp::v2::{Builder, Protocol};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(command: Command, src: &str, dst: &str) -> Vec<u8> {
        let addresses: V2Addresses = (sa(src), sa(dst)).into();
        Builder::with_addresses(ppp::v2::Version::Two | command, Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 203.0.113.9 192.0.2.1 4711 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 43,
                source: Some(sa("203.0.113.9:4711"))
            }
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 5000 80\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                source: Some(sa("[2001:db8::7]:5000"))
            }
        );
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: h.len(),
                source: None
            }
        );
    }

    #[test]
    fn v2_proxy_and_local() {
        let mut h = v2(Command::Proxy, "198.51.100.3:1234", "192.0.2.1:80");
        let len = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len,
                source: Some(sa("198.51.100.3:1234"))
            }
        );
        let h = v2(Command::Proxy, "[2001:db8::9]:1", "[2001:db8::1]:80");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: h.len(),
                source: Some(SocketAddr::new(
                    IpAddr::V6("2001:db8::9".parse::<Ipv6Addr>().unwrap()),
                    1
                ))
            }
        );
        let h = v2(Command::Local, "10.0.0.1:1", "10.0.0.2:2");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: h.len(),
                source: None
            }
        );
    }

    #[test]
    fn partial_headers_are_incomplete_at_every_cut() {
        let v1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 4711 443\r\n".to_vec();
        let v2 = v2(Command::Proxy, "198.51.100.3:1234", "192.0.2.1:80");
        for h in [v1, v2] {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Parsed::Incomplete, "cut {cut} of {h:?}");
            }
            assert!(matches!(parse(&h), Parsed::Header { .. }));
        }
    }

    #[test]
    fn http_is_not_proxy_and_garbage_is_invalid() {
        assert_eq!(parse(b"GET /beacon/event HTTP/1.1\r\n"), Parsed::NotProxy);
        assert_eq!(parse(b"P"), Parsed::Incomplete);
        assert_eq!(parse(b"PUT / HTTP/1.1"), Parsed::NotProxy);
        assert_eq!(parse(b"\r\n\r\nGET"), Parsed::NotProxy);
        assert_eq!(parse(b"PROXY TCP4 nonsense here 1 2\r\n"), Parsed::Invalid);
        assert_eq!(
            parse(b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"),
            Parsed::Invalid
        );
        assert_eq!(parse(&[b'X'; 200]), Parsed::NotProxy);
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 200]);
        assert_eq!(parse(&long), Parsed::Invalid);
        // A v2 header announcing more than we accept.
        let mut h = v2(Command::Proxy, "198.51.100.3:1234", "192.0.2.1:80");
        h[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(parse(&h), Parsed::Invalid);
        // A bad version nibble.
        let mut h = v2(Command::Proxy, "198.51.100.3:1234", "192.0.2.1:80");
        h[12] = 0x31;
        assert_eq!(parse(&h), Parsed::Invalid);
    }

    async fn run(input: &[u8], trusted: bool) -> Result<(SocketAddr, Vec<u8>), ProxyError> {
        run_with_origin(input, trusted)
            .await
            .map(|(peer, _, rest)| (peer, rest))
    }

    async fn run_with_origin(
        input: &[u8],
        trusted: bool,
    ) -> Result<(SocketAddr, PeerOrigin, Vec<u8>), ProxyError> {
        let (mut client, server) = tokio::io::duplex(8192);
        tokio::io::AsyncWriteExt::write_all(&mut client, input)
            .await
            .unwrap();
        drop(client);
        let peer = sa("10.0.0.1:5555");
        let a = accept(server, peer, trusted, Duration::from_secs(1)).await?;
        let mut rest = Vec::new();
        let mut s = a.stream;
        s.read_to_end(&mut rest).await.unwrap();
        Ok((a.peer, a.origin, rest))
    }

    #[tokio::test]
    async fn a_header_without_a_source_leaves_the_client_unnamed() {
        let unix = Builder::with_addresses(
            ppp::v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            ppp::v2::Unix::new([1; 108], [2; 108]),
        )
        .build()
        .unwrap();
        let unspec = Builder::with_addresses(
            ppp::v2::Version::Two | Command::Proxy,
            Protocol::Unspecified,
            V2Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec()),
            (
                "v1 unknown with addresses",
                b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            ),
            ("v2 local", v2(Command::Local, "6.6.6.6:1", "10.0.0.2:2")),
            ("v2 af_unix", unix),
            ("v2 af_unspec", unspec),
        ];
        for (name, mut h) in cases {
            h.extend_from_slice(b"GET /");
            let (peer, origin, rest) = run_with_origin(&h, true).await.unwrap();
            assert_eq!(peer, sa("10.0.0.1:5555"), "{name}");
            assert_eq!(origin, PeerOrigin::Unnamed, "{name}");
            assert_eq!(rest, b"GET /", "{name}");
        }
        // Named sources, and plain HTTP from an untrusted peer, are named.
        let h = v2(Command::Proxy, "198.51.100.3:1234", "192.0.2.1:80");
        assert_eq!(
            run_with_origin(&h, true).await.unwrap().1,
            PeerOrigin::Named
        );
        let plain = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            run_with_origin(plain, false).await.unwrap().1,
            PeerOrigin::Named
        );
    }

    #[tokio::test]
    async fn accept_consumes_exactly_the_header() {
        let (peer, rest) = run(
            b"PROXY TCP4 203.0.113.9 192.0.2.1 4711 443\r\nGET / HTTP/1.1\r\n\r\n",
            true,
        )
        .await
        .unwrap();
        assert_eq!(peer, sa("203.0.113.9:4711"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        let mut h = v2(Command::Local, "10.0.0.1:1", "10.0.0.2:2");
        h.extend_from_slice(b"GET /");
        let (peer, rest) = run(&h, true).await.unwrap();
        assert_eq!(peer, sa("10.0.0.1:5555"));
        assert_eq!(rest, b"GET /");
    }

    #[tokio::test]
    async fn accept_applies_the_trust_rule() {
        let v1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 4711 443\r\nGET /".as_slice();
        assert_eq!(run(v1, false).await.unwrap_err(), ProxyError::Untrusted);
        let (peer, rest) = run(b"GET / HTTP/1.1\r\n\r\n", false).await.unwrap();
        assert_eq!(peer, sa("10.0.0.1:5555"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            run(b"GET / HTTP/1.1\r\n\r\n", true).await.unwrap_err(),
            ProxyError::Missing
        );
        assert_eq!(
            run(b"PROXY TCP4 1.2.3\r\n", true).await.unwrap_err(),
            ProxyError::Invalid
        );
        // Cut short by the peer.
        assert_eq!(
            run(b"PROXY TCP4 1.2.", true).await.unwrap_err(),
            ProxyError::Invalid
        );
        assert_eq!(run(b"", true).await.unwrap_err(), ProxyError::Closed);
    }

    #[tokio::test]
    async fn accept_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 ")
            .await
            .unwrap();
        let r = accept(server, sa("10.0.0.1:1"), true, Duration::from_millis(50)).await;
        assert_eq!(r.unwrap_err(), ProxyError::Timeout);
        drop(client);
    }
}
