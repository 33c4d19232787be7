//! A TCP proxy the harness runs in front of the broker, so a scenario can cut
//! the collector off from Kafka mid-run and restore it.
//!
//! For the cut to hold, the broker must advertise the proxy's address (else
//! clients bootstrap through the proxy and then connect to the broker
//! directly): `loadtest/scenario.sh` starts one that way.
//!
//! Cut modes: `reset` closes every proxied connection and closes new ones at
//! once (a broker crash); `blackhole` keeps connections open but forwards
//! nothing until restored (a network partition: timeouts, not errors).

use anyhow::Context;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CutMode {
    #[default]
    Reset,
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down(CutMode),
}

#[derive(Debug, Default, Serialize)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub refused_while_down: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub bytes_forwarded: AtomicU64,
}

pub struct BrokerProxy {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    state: watch::Sender<State>,
    pub stats: Arc<ProxyStats>,
}

impl BrokerProxy {
    /// Binds `listen` and starts forwarding to `upstream` (both must be
    /// loopback addresses).
    pub async fn start(listen: &str, upstream: &str) -> anyhow::Result<BrokerProxy> {
        let listen_addr = crate::http::resolve_loopback(listen, "broker proxy listen address")?;
        let upstream = crate::http::resolve_loopback(upstream, "broker proxy upstream")?;
        let listener = TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("broker proxy: cannot listen on {listen}"))?;
        let listen = listener.local_addr()?;
        let (state, rx) = watch::channel(State::Up);
        let stats = Arc::new(ProxyStats::default());
        tokio::spawn(accept_loop(listener, upstream, rx, Arc::clone(&stats)));
        Ok(BrokerProxy {
            listen,
            upstream,
            state,
            stats,
        })
    }

    pub fn cut(&self, mode: CutMode) {
        self.state.send_replace(State::Down(mode));
    }

    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        // Closes every connection and stops the accept loop.
        self.state.send_replace(State::Down(CutMode::Reset));
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut rx: watch::Receiver<State>,
    stats: Arc<ProxyStats>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = rx.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let Ok((client, _)) = accepted else { continue };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if *rx.borrow() == State::Down(CutMode::Reset) {
            stats.refused_while_down.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let (rx, stats) = (rx.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            // A blackholed proxy holds new connections until restored.
            let mut wait = rx.clone();
            loop {
                let s = *wait.borrow_and_update();
                match s {
                    State::Up => break,
                    State::Down(CutMode::Reset) => return,
                    State::Down(CutMode::Blackhole) => {
                        if wait.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            let server = match TcpStream::connect(upstream).await {
                Ok(s) => s,
                Err(_) => {
                    stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let a = tokio::spawn(pump(cr, sw, rx.clone(), Arc::clone(&stats)));
            let b = tokio::spawn(pump(sr, cw, rx, stats));
            let _ = tokio::join!(a, b);
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<State>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Forward only while up; hold while blackholed; drop on reset.
        loop {
            let s = *rx.borrow_and_update();
            match s {
                State::Up => break,
                State::Down(CutMode::Reset) => return,
                State::Down(CutMode::Blackhole) => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    stats.bytes_forwarded.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            changed = rx.changed() => {
                if changed.is_err() { return; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Echo through the proxy; `Err` if nothing comes back within `wait`.
    async fn roundtrip_within(
        s: &mut TcpStream,
        msg: &[u8],
        wait: Duration,
    ) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(wait, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
        Ok(buf)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        roundtrip_within(s, msg, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let echo = echo_server().await;
        let p = BrokerProxy::start("127.0.0.1:0", &echo.to_string())
            .await
            .unwrap();
        let mut c = TcpStream::connect(p.listen).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"hello").await.unwrap(), b"hello");

        // Blackhole: the connection stays open, nothing comes back...
        p.cut(CutMode::Blackhole);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            roundtrip_within(&mut c, b"lost?", Duration::from_millis(300))
                .await
                .is_err()
        );
        // ...until restored, when the held bytes flow again.
        p.restore();
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"lost?");

        // Reset: existing connections are closed, new ones closed at once.
        p.cut(CutMode::Reset);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut one = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(1), c.read(&mut one))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)));
        let mut c2 = TcpStream::connect(p.listen).await.unwrap();
        assert!(roundtrip_within(&mut c2, b"x", Duration::from_millis(300))
            .await
            .is_err());
        p.restore();
        let mut c3 = TcpStream::connect(p.listen).await.unwrap();
        assert_eq!(roundtrip(&mut c3, b"back").await.unwrap(), b"back");
        assert!(p.stats.refused_while_down.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        assert!(BrokerProxy::start("127.0.0.1:0", "192.0.2.1:9092")
            .await
            .is_err());
    }
}
