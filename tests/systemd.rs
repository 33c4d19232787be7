//! systemd integration: the `sd_notify` messages a `Type=notify` unit relies
//! on, read from a fake `NOTIFY_SOCKET`, and the example unit checked by
//! `systemd-analyze verify`. No broker needed (a mock cluster).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;

/// Reads datagrams from `sock` until `done` says so or `within` passes;
/// returns every message line in arrival order.
fn read_until(
    sock: &UnixDatagram,
    lines: &mut Vec<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while !done(lines) {
        if Instant::now() > deadline {
            return false;
        }
        match sock.recv(&mut buf) {
            Ok(n) => lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    true
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

fn position(lines: &[String], line: &str) -> Option<usize> {
    lines.iter().position(|l| l == line)
}

/// A beacond child (on a mock cluster) whose service manager is a datagram
/// socket the test reads, with `env` set for it.
struct Notified {
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    child: std::process::Child,
    sock: UnixDatagram,
    log: std::path::PathBuf,
}

impl Notified {
    fn start(name: &str, env: &[(&str, &str)]) -> Notified {
        let mock = MockCluster::new(1).expect("mock cluster");
        let topic = unique_topic(name);
        mock.create_topic(&topic, 1, 1).unwrap();
        let dir = temp_dir(name);
        let config = dir.join("beacond.toml");
        std::fs::write(
            &config,
            test_config(&mock.bootstrap_servers(), &topic).to_toml(),
        )
        .unwrap();
        let notify = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&notify).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = dir.join("beacond.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_beacond"));
        command
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env("BEACOND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("beacond starts");
        Notified {
            _mock: mock,
            child,
            sock,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn ready_then_watchdog_pings_then_stopping_on_sigterm() {
    // A 400 ms watchdog: pings every 200 ms.
    let mut svc = Notified::start("systemd", &[("WATCHDOG_USEC", "400000")]);
    let mut lines = Vec::new();
    let pinged = read_until(&svc.sock, &mut lines, Duration::from_secs(30), |l| {
        count(l, "WATCHDOG=1") >= 3
    });
    assert!(pinged, "no READY and 3 pings: {lines:?}\n{}", svc.log());
    let ready = position(&lines, "READY=1").expect("READY=1 sent");
    let first_ping = position(&lines, "WATCHDOG=1").unwrap();
    assert!(ready < first_ping, "READY=1 comes first: {lines:?}");
    assert!(
        lines[..first_ping]
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("beacons accepted")),
        "a status line with READY: {lines:?}"
    );
    assert_eq!(position(&lines, "STOPPING=1"), None);

    svc.sigterm();
    let stopped = read_until(&svc.sock, &mut lines, Duration::from_secs(30), |l| {
        position(l, "STOPPING=1").is_some()
    });
    assert!(stopped, "no STOPPING=1 after SIGTERM: {lines:?}");
    let stopping = position(&lines, "STOPPING=1").unwrap();
    assert!(stopping > first_ping);
    assert!(
        lines[stopping..]
            .iter()
            .any(|l| l.starts_with("STATUS=draining")),
        "{lines:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = svc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit; log:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0), "{}", svc.log());
    assert_eq!(count(&lines, "READY=1"), 1, "{lines:?}");
}

/// `WATCHDOG_PID` names another process: the watchdog is not this
/// process's, so no `WATCHDOG=1` is sent (`READY=1` still is).
#[test]
fn a_watchdog_meant_for_another_process_is_ignored() {
    let mut svc = Notified::start(
        "systemd-off",
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    let mut lines = Vec::new();
    assert!(read_until(
        &svc.sock,
        &mut lines,
        Duration::from_secs(30),
        |l| { position(l, "READY=1").is_some() }
    ));
    // Over a second of serving, a 100 ms watchdog would have pinged ~20 times.
    read_until(&svc.sock, &mut lines, Duration::from_millis(1200), |_| {
        false
    });
    assert_eq!(count(&lines, "WATCHDOG=1"), 0, "{lines:?}");
    svc.sigterm();
    let exit = svc.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", svc.log());
}

/// `systemd-analyze verify` accepts the example unit (with `ExecStart`
/// pointed at the binary under test, since the unit names the installed
/// path).
#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        panic!("systemd-analyze is not installed (Debian's systemd package)");
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deploy/beacond.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("WatchdogSec="));
    let bin = env!("CARGO_BIN_EXE_beacond");
    let dir = temp_dir("unit");
    let unit = unit.replace("/usr/local/bin/beacond", bin);
    let path = dir.join("beacond.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about this unit only (the host's other units may be noisy).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("beacond.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
