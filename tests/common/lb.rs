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
