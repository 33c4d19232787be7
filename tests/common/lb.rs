//! Child processes for the load balancer and Kafka transport tests:
//! `beacond`, `haproxy` and `tansu`, each killed when its guard drops (a
//! failing test leaves nothing running), with its stderr in a file.
//!
//! Included with `#[path = "common/lb.rs"] mod lb;` next to `mod common;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process, SIGKILLed and reaped on drop unless it already exited.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr into `dir/<name>.log`.
    pub fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `kill <sig>` (e.g. `-TERM`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {}", self.name);
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Polls (async) until the process exits; fails the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit status (deadline 30 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(Duration::from_secs(30)).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `beacond --config <config>`, log in `dir/<name>.log`.
pub fn beacond(dir: &Path, config: &Path, name: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beacond"));
    cmd.arg("--config")
        .arg(config)
        .env("BEACOND_LOG", "info,librdkafka=info");
    Proc::spawn(name, dir, cmd)
}

/// The haproxy binary (Debian's package, `scripts/install-deps haproxy`).
pub fn haproxy_bin() -> PathBuf {
    for p in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("haproxy is not installed: run scripts/install-deps haproxy (scripts/test does)")
}

/// Writes `config` to `dir/<name>.cfg`, checks it with `haproxy -c`, and
/// runs `haproxy -f <cfg> -db` (foreground) as a child.
pub fn haproxy(dir: &Path, name: &str, config: &str) -> Proc {
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg, config).expect("write haproxy config");
    let check = Command::new(haproxy_bin())
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy -c runs");
    assert!(
        check.status.success(),
        "haproxy -c refuses the config:\n{}{}\n--- config:\n{config}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(haproxy_bin());
    cmd.arg("-f").arg(&cfg).arg("-db");
    Proc::spawn(name, dir, cmd)
}

/// The tansu binary `scripts/dev-broker bin` installs.
pub fn tansu_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/dev-broker"))
        .arg("bin")
        .output()
        .expect("scripts/dev-broker bin runs");
    assert!(
        out.status.success(),
        "scripts/dev-broker bin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A tansu broker (memory storage) listening on `listen`, advertising
/// `advertised` (a URL such as `tcp://127.0.0.1:PORT`), with `extra` args.
pub fn tansu(dir: &Path, name: &str, listen: u16, advertised: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(tansu_bin());
    cmd.arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{listen}"))
        .arg("--advertised-listener-url")
        .arg(advertised)
        .arg("--storage-engine")
        .arg("memory://tansu/")
        .args(extra);
    Proc::spawn(name, dir, cmd)
}

/// Polls until `addr` accepts a TCP connection (deadline 20 s).
pub async fn wait_port(addr: SocketAddr, what: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = what.exited() {
            panic!("{} exited ({status}); log:\n{}", what.name, what.log());
        }
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {addr}; log:\n{}",
            what.name,
            what.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One admin command on HAProxy's stats socket (`show stat`, ...).
pub async fn haproxy_command(socket: &Path, command: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("{command}\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stats socket"))??;
    Ok(out)
}

/// The `status` column of `show stat` for `backend`/`server` (`UP`,
/// `DOWN`, `UP 1/2`, ...).
pub async fn haproxy_server_status(socket: &Path, backend: &str, server: &str) -> Option<String> {
    let csv = haproxy_command(socket, "show stat").await.ok()?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = header.iter().position(|h| *h == "status")?;
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&server))
        .and_then(|f| f.get(col).map(|s| s.to_string()))
}

/// Polls until HAProxy reports `server` of `backend` with status `want`
/// (deadline `timeout`).
pub async fn wait_haproxy_status(
    socket: &Path,
    backend: &str,
    server: &str,
    want: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = haproxy_server_status(socket, backend, server).await;
        if status.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy never showed {backend}/{server} {want} (last: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces `from` with `to` in `text`, failing the test if `from` is not
/// there (the example config changed under the test).
#[track_caller]
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in the config"
    );
    text.replacen(from, to, 1)
}

/// A test PKI: a CA of its own and a server certificate it signed, for
/// `localhost` and `127.0.0.1`.
pub struct Pki {
    /// The CA's certificate (what a client trusts: `ssl.ca.location`).
    pub ca: PathBuf,
    /// The server's certificate followed by its key (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// Generates a CA and a server certificate into `dir` (files `<name>-ca.pem`
/// and `<name>-server.pem`).
pub fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("beacond test CA {name}"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server_params.signed_by(&server_key, &ca).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        combined: dir.join(format!("{name}-server.pem")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(
        &pki.combined,
        format!("{}{}", server.pem(), server_key.serialize_pem()),
    )
    .unwrap();
    pki
}

/// HAProxy in TCP mode terminating TLS on `tls_port` in front of a broker
/// on `broker_port` (tansu 0.6 cannot serve TLS itself).
pub fn tls_front(dir: &Path, pki: &Pki, tls_port: u16, broker_port: u16) -> Proc {
    let config = format!(
        "global\n    log stderr format raw local0\n    maxconn 200\n\
         defaults\n    mode tcp\n    log global\n    option tcplog\n\
         \x20   timeout connect 2s\n    timeout client 5m\n    timeout server 5m\n\
         frontend kafka_tls\n    bind 127.0.0.1:{tls_port} ssl crt {}\n    default_backend broker\n\
         backend broker\n    server tansu 127.0.0.1:{broker_port}\n",
        pki.combined.display()
    );
    haproxy(dir, "haproxy-kafka-tls", &config)
}

/// Reads `topic` (partition 0, from the beginning) through a client
/// configured with `props`, until `expected` payloads arrived or `timeout`.
pub fn consume_with(
    brokers: &str,
    props: &[(&str, &str)],
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = crate::common::kafka_client(brokers, props)
        .set("group.id", crate::common::unique_topic("g"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}

/// A beacond config for the Kafka transport tests: loopback listeners on
/// `ports`, `brokers`, `topic`, `[kafka.properties]` from `props` (TOML
/// lines as an operator writes them), a spool in `dir` when `spool`.
pub fn transport_config(
    dir: &Path,
    ports: (u16, u16),
    brokers: &str,
    topic: &str,
    props: &str,
    spool: bool,
) -> PathBuf {
    let path = dir.join("beacond.toml");
    let spool = if spool {
        format!("[spool]\ndir = \"{}\"\n", dir.join("spool").display())
    } else {
        "[spool]\nenabled = false\n".to_string()
    };
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             [output]\nhostname = \"transport-test\"\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             [kafka.properties]\n\"linger.ms\" = 5\n{props}\n{spool}\
             [shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 5\n",
            ports.0, ports.1
        ),
    )
    .unwrap();
    path
}

/// Polls `log()` until it contains `needle` (deadline `timeout`).
pub async fn wait_log(p: &Proc, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = p.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}; log:\n{log}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port free at the time of asking, for the programs that cannot
/// bind port 0 and report it (haproxy's frontends and tansu's listeners), and
/// for a beacond that must come back on the ports a balancer's config names.
/// Racy by nature (another process may take it first); beacond alone is
/// started on port 0 with `--ready-file` wherever nothing needs the port in
/// advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}
