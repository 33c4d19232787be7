//! The binary's failure modes: a clear message and a non-zero exit, fast.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn loadtest(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest");
    (out, started.elapsed())
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--rate", "10"][..],
        &["--target", "http://127.0.0.1:1/x", "--rate", "fast"],
        &["--target", "http://127.0.0.1:1/x", "--duration", "forever"],
        &[
            "--target",
            "http://127.0.0.1:1/x",
            "--kafka-brokers",
            "127.0.0.1:1",
        ],
        &["--target", "http://127.0.0.1:1/x", "--no-such-flag"],
    ] {
        let (out, _) = loadtest(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unreachable_target_is_a_clear_error() {
    let url = format!("http://127.0.0.1:{}/beacon/event", dead_port());
    let (out, took) = loadtest(&["--target", &url, "--rate", "10", "--duration", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn non_loopback_target_is_refused() {
    let (out, _) = loadtest(&[
        "--target",
        "http://192.0.2.1:80/beacon/event",
        "--duration",
        "1s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("loopback"), "{err}");
}

#[test]
fn unreachable_broker_is_a_clear_error() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // never answers; not reached
    let url = format!("http://{}/beacon/event", target.local_addr().unwrap());
    let brokers = format!("127.0.0.1:{}", dead_port());
    let (out, took) = loadtest(&[
        "--target",
        &url,
        "--duration",
        "1s",
        "--kafka-brokers",
        &brokers,
        "--kafka-topic",
        "t",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Kafka"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn bad_scenario_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "name = 'x'\n[[phase]]\nduration = '1s'\nrate = 'lots'\n",
    )
    .unwrap();
    let (out, _) = loadtest(&[
        "--target",
        "http://127.0.0.1:1/b",
        "--scenario",
        path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("phase 1 rate"), "{err}");
}
