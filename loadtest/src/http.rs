//! A minimal HTTP/1.1 client over raw tokio TCP: keep-alive, one request in
//! flight per connection, responses parsed with `httparse`. Raw TCP keeps the
//! generator cheap (it shares a core with the broker) and lets the slow-client
//! scenario write a request a few bytes at a time.

use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `http://host:port/path` endpoint on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    pub path: String,
}

/// Refuses anything but the loopback range: this tool sends load, and load
/// is only ever sent to this machine.
pub fn require_loopback(addr: &SocketAddr, what: &str) -> anyhow::Result<()> {
    let ok = match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !ok {
        bail!("{what} {addr} is not a loopback address; loadtest only targets this machine (127.0.0.0/8, ::1)");
    }
    Ok(())
}

/// Resolves `host:port` to a loopback socket address.
pub fn resolve_loopback(hostport: &str, what: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {what} {hostport:?}"))?
        .collect();
    let first = *addrs
        .first()
        .with_context(|| format!("{what} {hostport:?} resolves to nothing"))?;
    for a in &addrs {
        require_loopback(a, what)?;
    }
    Ok(first)
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("target {url:?}: only http:// URLs are supported"))?;
        if rest.contains(['?', '#']) {
            bail!("target {url:?}: give the beacon path without a query; loadtest appends each beacon's query");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("target {url:?}: bad host");
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let hostport = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = resolve_loopback(&hostport, "target")?;
        Ok(Target {
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportError {
    Connect,
    Timeout,
    /// A reused keep-alive connection was closed before any byte of the
    /// response (the server closed it while idle): safe to retry once.
    Closed,
    /// Reset or closed before a full response.
    Io,
    /// Not an HTTP/1.x response we understand.
    Protocol,
}

impl TransportError {
    pub fn name(self) -> &'static str {
        match self {
            TransportError::Connect => "connect",
            TransportError::Timeout => "timeout",
            TransportError::Closed => "closed",
            TransportError::Io => "io",
            TransportError::Protocol => "protocol",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    requests: u64,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, TransportError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(TransportError::Connect),
            Err(_) => return Err(TransportError::Connect),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            requests: 0,
        })
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends `req` (a complete request without a body, or with its body) and
    /// reads one response. On error the connection must be dropped.
    pub async fn request(
        &mut self,
        req: &[u8],
        head_request: bool,
    ) -> Result<Response, TransportError> {
        let reused = self.requests > 0;
        self.requests += 1;
        let sent = self.stream.write_all(req).await;
        let res = match sent {
            Ok(()) => self.read_response(head_request).await,
            Err(_) => Err(TransportError::Io),
        };
        match res {
            Err(TransportError::Io) if reused && self.buf.is_empty() => Err(TransportError::Closed),
            other => other,
        }
    }

    pub async fn read_response(&mut self, head_request: bool) -> Result<Response, TransportError> {
        self.buf.clear();
        loop {
            let (status, header_len, framing, close) = {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = resp.code.unwrap_or(0);
                        let (framing, close) = framing_of(&resp, status, head_request)?;
                        (status, len, framing, close)
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 64 * 1024 {
                            return Err(TransportError::Protocol);
                        }
                        self.fill().await?;
                        continue;
                    }
                    Err(_) => return Err(TransportError::Protocol),
                }
            };
            if (100..200).contains(&status) {
                // 1xx: drop it and read the real response.
                self.buf.drain(..header_len);
                continue;
            }
            self.buf.drain(..header_len);
            let close = match framing {
                Framing::Length(n) => {
                    while self.buf.len() < n {
                        self.fill().await?;
                    }
                    self.buf.drain(..n);
                    close
                }
                Framing::Chunked => {
                    self.skip_chunked().await?;
                    close
                }
                Framing::UntilClose => {
                    while self.fill().await.is_ok() {}
                    true
                }
            };
            return Ok(Response { status, close });
        }
    }

    async fn fill(&mut self) -> Result<(), TransportError> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => Err(TransportError::Io),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    async fn skip_chunked(&mut self) -> Result<(), TransportError> {
        loop {
            let line_end = loop {
                if let Some(i) = find_crlf(&self.buf) {
                    break i;
                }
                if self.buf.len() > 1024 {
                    return Err(TransportError::Protocol);
                }
                self.fill().await?;
            };
            let line =
                std::str::from_utf8(&self.buf[..line_end]).map_err(|_| TransportError::Protocol)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| TransportError::Protocol)?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find_crlf(&self.buf) {
                            break i;
                        }
                        self.fill().await?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            self.buf.drain(..size + 2);
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing_of(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head: bool,
) -> Result<(Framing, bool), TransportError> {
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| TransportError::Protocol)?;
            length = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| TransportError::Protocol)?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((framing, close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:8080/beacon/event").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/beacon/event");
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("http://127.0.0.1:1/x?y").is_err());
        let err = Target::parse("http://192.0.2.1:80/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
    }

    async fn serve_once(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            for r in responses {
                // one request per response
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(r).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_keep_alive_responses_of_every_framing() {
        let addr = serve_once(vec![
            b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad beacon\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfull\r\n0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 3\r\nConnection: close\r\n\r\nlong",
        ])
        .await;
        let mut c = Conn::connect(addr, Duration::from_secs(1)).await.unwrap();
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            c.request(req, false).await,
            Ok(Response {
                status: 204,
                close: false
            })
        );
        assert_eq!(
            c.request(req, false).await,
            Ok(Response {
                status: 400,
                close: false
            })
        );
        assert_eq!(
            c.request(req, false).await,
            Ok(Response {
                status: 503,
                close: false
            })
        );
        assert_eq!(
            c.request(req, false).await,
            Ok(Response {
                status: 414,
                close: true
            })
        );
        assert_eq!(c.request(req, false).await, Err(TransportError::Closed));
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert_eq!(
            Conn::connect(addr, Duration::from_secs(1)).await.err(),
            Some(TransportError::Connect)
        );
    }
}
