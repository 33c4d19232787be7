//! TLS and HTTP/2 on the beacon listener (`[http.tls]`, `[http.h2]`): curl
//! over HTTP/1.1 and HTTP/2, a certificate swapped on `SIGHUP` (new
//! connections get the new one, an open one goes on), and the HTTP/2 floods
//! an edge server must survive (rapid reset, streams beyond the limit), each
//! counted while a second client is served. No broker needed: a mock cluster.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and the certificates it signs for `localhost`.
struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Authority {
    fn new() -> Authority {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "beacond test CA");
        let cert = params.self_signed(&key).unwrap();
        Authority {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a fresh `localhost` certificate and key to `cert`, `key`
    /// (atomically, as an operator's deploy tool would); returns its DER.
    fn issue(&self, cert: &Path, key: &Path) -> Vec<u8> {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        write_atomically(cert, &leaf.pem());
        write_atomically(key, &leaf_key.serialize_pem());
        leaf.der().to_vec()
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A rustls client trusting `ca`, offering `alpn`.
fn client_config(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        let c: CertificateDer<'static> = c.unwrap();
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A full handshake each time: a resumed session shows the certificate
    // of the session it resumes, not the one in force.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn peer_certificate(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn negotiated(s: &Tls) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One HTTP/1.1 request on `s`; the status of its answer.
async fn h1_status<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, target: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            assert!(
                !head.to_ascii_lowercase().contains("content-length: ")
                    || head.to_ascii_lowercase().contains("content-length: 0"),
                "a beacon answer has no body: {head}"
            );
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct TlsFiles {
    dir: PathBuf,
    ca: Authority,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
}

fn tls_files(name: &str) -> (TlsFiles, Vec<u8>) {
    let dir = temp_dir(name);
    let ca = Authority::new();
    let (cert, key, ca_file) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let der = ca.issue(&cert, &key);
    (
        TlsFiles {
            dir,
            ca,
            cert,
            key,
            ca_file,
        },
        der,
    )
}

fn tls_config(brokers: &str, prefix: &str, files: &TlsFiles) -> beacond::config::Config {
    let mut config = events_config(brokers, prefix);
    config.http.tls = Some(beacond::config::TlsConfig {
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    config
}

fn mock_with_topics(
    prefix: &str,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in ["beacons", "beacond.error.validation", "test.event"] {
        mock.create_topic(&format!("{prefix}{t}"), 1, 1).unwrap();
    }
    mock
}

/// curl, as an operator would check an edge: HTTP/1.1 and HTTP/2 over TLS,
/// a beacon (204) and a hasty event (202).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_tls_gets_204_and_202_with_http1_and_http2() {
    let prefix = unique_prefix("tls-curl");
    let mock = mock_with_topics(&prefix);
    let (files, _) = tls_files("tls-curl");
    let svc = Running::start(tls_config(&mock.bootstrap_servers(), &prefix, &files)).await;
    let base = format!("https://localhost:{}", svc.beacon.port());
    let resolve = format!("localhost:{}:127.0.0.1", svc.beacon.port());
    let curl = |version: &'static str, args: Vec<String>| {
        let ca = files.ca_file.clone();
        let resolve = resolve.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                ])
                .arg(version)
                .arg("--cacert")
                .arg(&ca)
                .args(["--resolve", &resolve])
                .args(&args)
                .output()
                .expect("curl runs");
            assert!(
                out.status.success(),
                "curl {version} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let beacon = format!("{base}/beacon/event?%7B%22tls%22%3Atrue%7D;");
    let event = r#"{"$schema":"/test/event/1.0.0","meta":{"stream":"test.event"},"test":"tls"}"#;
    let hasty = format!("{base}/v1/events?hasty=true");
    for (version, shown) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let got = curl(version, vec![beacon.clone()]).await.unwrap();
        assert_eq!(got, format!("204 {shown}"), "beacon over {version}");
        let got = curl(
            version,
            vec![
                "-H".into(),
                "Content-Type: text/plain;charset=UTF-8".into(),
                "--data-binary".into(),
                event.into(),
                hasty.clone(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(got, format!("202 {shown}"), "hasty event over {version}");
    }
    let m = svc.metrics().await;
    assert_eq!(m.get("beacond_beacons_accepted_total"), 2.0);
    svc.stop().await;
}

/// A certificate swapped on disk and `SIGHUP`: new connections get the new
/// one; a keep-alive connection opened before goes on being served.
#[test]
fn sighup_serves_a_new_certificate_to_new_connections_while_old_ones_finish() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prefix = unique_prefix("tls-hup");
    let mock = mock_with_topics(&prefix);
    let (files, first) = tls_files("tls-hup");
    let config_path = files.dir.join("beacond.toml");
    let config = tls_config(&mock.bootstrap_servers(), &prefix, &files);
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let svc = ChildBeacond::start(&files.dir, &config_path, "beacond.log");
    rt.block_on(async {
        let client = client_config(&files.ca.pem, &[b"http/1.1"]);
        wait_http(svc.admin, "/readyz", false).await;
        let mut old = connect_tls(svc.beacon, client.clone()).await.unwrap();
        assert_eq!(peer_certificate(&old), first);
        assert_eq!(h1_status(&mut old, "/beacon/event?%7B%7D;").await, 204);

        let second = files.ca.issue(&files.cert, &files.key);
        assert_ne!(first, second);
        svc.signal("-HUP");
        svc.wait_metric("beacond_tls_certificate_reloads_total{result=\"ok\"}", 1.0)
            .await;
        let mut new = connect_tls(svc.beacon, client.clone()).await.unwrap();
        assert_eq!(
            peer_certificate(&new),
            second,
            "new connections: new certificate"
        );
        assert_eq!(h1_status(&mut new, "/beacon/event?%7B%7D;").await, 204);
        // The connection from before the swap is still served.
        assert_eq!(h1_status(&mut old, "/beacon/event?%7B%7D;").await, 204);

        // A broken swap (a key that is not the certificate's) keeps the
        // second certificate in force, counted.
        std::fs::write(&files.key, "garbage").unwrap();
        svc.signal("-HUP");
        svc.wait_metric(
            "beacond_tls_certificate_reloads_total{result=\"failed\"}",
            1.0,
        )
        .await;
        let again = connect_tls(svc.beacon, client).await.unwrap();
        assert_eq!(peer_certificate(&again), second);
    });
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("TLS certificate reload failed"), "{log}");
}

/// A handshake that fails (a client that does not trust the certificate,
/// plain HTTP on the TLS port) is counted and does not stop the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_and_the_listener_goes_on() {
    let prefix = unique_prefix("tls-bad");
    let mock = mock_with_topics(&prefix);
    let (files, _) = tls_files("tls-bad");
    let svc = Running::start(tls_config(&mock.bootstrap_servers(), &prefix, &files)).await;
    let stranger = Authority::new();
    assert!(
        connect_tls(svc.beacon, client_config(&stranger.pem, &[b"http/1.1"]))
            .await
            .is_err()
    );
    let mut plain = TcpStream::connect(svc.beacon).await.unwrap();
    plain
        .write_all(b"GET /beacon/event?%7B%7D; HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
    let mut good = connect_tls(
        svc.beacon,
        client_config(&files.ca.pem, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated(&good).as_deref(), Some(&b"h2"[..]));
    drop(good.shutdown().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = svc.metrics().await;
        if m.sum("beacond_tls_handshakes_failed_total", &[]) >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "handshake failures not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.stop().await;
}

// ---------------------------------------------------------------------------
// HTTP/2 floods, with frames written by hand: a well-behaved client library
// would refuse to send them.

mod frames {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn settings() -> Vec<u8> {
        frame(SETTINGS, 0, 0, &[])
    }

    pub fn settings_ack() -> Vec<u8> {
        frame(SETTINGS, ACK, 0, &[])
    }

    /// HPACK without Huffman or the dynamic table: `:method GET` and
    /// `:scheme https` from the static table, `:path` and `:authority` as
    /// literals with indexed names.
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x87];
        for (index, value) in [(4u8, path), (1u8, "localhost")] {
            block.push(index); // literal without indexing, indexed name (4-bit prefix)
            assert!(value.len() < 127);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    pub fn reset(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()) // CANCEL
    }
}

/// Reads frames until a GOAWAY or EOF; returns the GOAWAY's error code.
async fn read_until_goaway(s: &mut Tls, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == frames::GOAWAY && len >= 8 {
                return Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
            }
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

async fn h2_flooder(svc: &Running, ca: &str) -> Tls {
    let mut s = connect_tls(svc.beacon, client_config(ca, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(negotiated(&s).as_deref(), Some(&b"h2"[..]));
    s.write_all(frames::PREFACE).await.unwrap();
    s.write_all(&frames::settings()).await.unwrap();
    s.write_all(&frames::settings_ack()).await.unwrap();
    s
}

/// A served client on its own connection, during and after each flood.
async fn assert_second_client_served(svc: &Running, ca: &str) {
    let mut s = connect_tls(svc.beacon, client_config(ca, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(
        h1_status(&mut s, "/beacon/event?%7B%22second%22%3A1%7D;").await,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_and_stream_floods_close_the_flooder_and_are_counted() {
    let prefix = unique_prefix("tls-h2");
    let mock = mock_with_topics(&prefix);
    let (files, _) = tls_files("tls-h2");
    let mut config = tls_config(&mock.bootstrap_servers(), &prefix, &files);
    config.http.h2.max_concurrent_streams = 10;
    config.http.h2.max_pending_accept_reset_streams = 20;
    let svc = Running::start(config).await;
    let ca = files.ca.pem.clone();

    // Rapid reset: open a stream and cancel it at once, 10,000 times.
    let mut s = h2_flooder(&svc, &ca).await;
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        burst.extend(frames::get(id, "/beacon/event?%7B%7D;"));
        burst.extend(frames::reset(id));
    }
    let _ = s.write_all(&burst).await;
    let goaway = read_until_goaway(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        goaway,
        Some(0xb),
        "ENHANCE_YOUR_CALM for a rapid reset flood"
    );
    assert_second_client_served(&svc, &ca).await;

    // Streams beyond SETTINGS_MAX_CONCURRENT_STREAMS, never read: refused.
    let mut s = h2_flooder(&svc, &ca).await;
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        burst.extend(frames::get(2 * i + 1, "/beacon/event?%7B%7D;"));
    }
    let _ = s.write_all(&burst).await;
    let goaway = read_until_goaway(&mut s, Duration::from_secs(10)).await;
    assert!(goaway.is_some(), "the stream flood ends in a GOAWAY");
    eprintln!("stream flood: GOAWAY {goaway:?}");
    assert_second_client_served(&svc, &ca).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = svc.metrics().await;
        let closed = m.sum("beacond_h2_connections_closed_total", &[]);
        if closed >= 2.0 {
            eprintln!(
                "h2 closes: enhance_your_calm {}, protocol_error {}, flow_control {}, other {}",
                m.get("beacond_h2_connections_closed_total{reason=\"enhance_your_calm\"}"),
                m.get("beacond_h2_connections_closed_total{reason=\"protocol_error\"}"),
                m.get("beacond_h2_connections_closed_total{reason=\"flow_control\"}"),
                m.get("beacond_h2_connections_closed_total{reason=\"other\"}"),
            );
            assert!(
                m.get("beacond_h2_connections_closed_total{reason=\"enhance_your_calm\"}") >= 1.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "floods not counted: {closed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.stop().await;
}
