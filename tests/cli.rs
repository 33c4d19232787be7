//! The binary: `--check`, config errors, and SIGTERM with a real broker.

mod common;

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_beacond");

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_contents(text)
}

/// A temp file removed on drop (no extra dependency for one helper).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with_contents(text: &str) -> TempPath {
            let path = std::env::temp_dir().join(super::unique_topic("beacond-cfg") + ".toml");
            std::fs::write(&path, text).expect("write temp config");
            TempPath(path)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn check_prints_the_effective_config() {
    let out = Command::new(BIN)
        .args(["--config", "config/beacond.toml", "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The printed config is itself a valid config, with the hostname resolved.
    let shown = beacond::config::Config::parse(&text, "stdout").unwrap();
    assert!(shown.output.hostname.is_some());
    assert!(
        text.contains("\"compression.codec\" = \"snappy\""),
        "{text}"
    );
}

#[test]
fn config_errors_name_the_key_and_fail() {
    let cases = [
        ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
        ("[kafka]\ntopcs = \"x\"\n", "topcs"),
        ("[output]\nformat = \"xml\"\n", "output.format"),
        (
            "[kafka.properties]\n\"no.such.property\" = \"1\"\n",
            "no.such.property",
        ),
        (
            "[kafka.properties]\n\"message.max.bytes\" = 4096\n",
            "message.max.bytes",
        ),
    ];
    for (text, key) in cases {
        let cfg = write_config(text);
        let out = Command::new(BIN)
            .args(["--config", cfg.0.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} should name {key}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
#[ignore = "needs a broker"]
fn sigterm_flushes_and_exits_zero() {
    let brokers = require_broker();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topic = unique_topic("sigterm");
    rt.block_on(create_topic(&brokers, &topic, 3));
    let dir = temp_dir("cli-sigterm");
    let cfg = write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"sigterm-host\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
         [kafka.properties]\n\"linger.ms\" = 200\n[shutdown]\ndrain_seconds = 1\n\
         [spool]\ndir = \"{}\"\n",
        temp_dir("cli-spool").display()
    ));
    let child = ChildBeacond::start(&dir, &cfg.0, "beacond.log");
    let (beacon, admin) = (child.beacon, child.admin);
    let sent = rt.block_on(async {
        wait_http(admin, "/readyz", false).await;
        // linger.ms = 200: many of these are still in the producer's queue
        // when SIGTERM arrives, so only the flush gets them out.
        let mut ok = 0;
        for i in 0..300 {
            let r = get(beacon, &format!("/beacon/event?%7B%22n%22%3A{i}%7D;"), &[]).await;
            assert_eq!(r.status, 204);
            ok += 1;
        }
        ok
    });
    let (code, stderr) = child.stop();
    assert_eq!(code, Some(0), "exit status; log:\n{stderr}");
    assert!(stderr.contains("producer flushed"), "{stderr}");
    let got = consume(
        &brokers,
        &topic,
        sent,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    let mut ns: Vec<u64> = got
        .iter()
        .map(|m| {
            let line = String::from_utf8(m.payload.clone()).unwrap();
            let q = line.split('\t').next().unwrap().to_string();
            q.trim_start_matches("?%7B%22n%22%3A")
                .trim_end_matches("%7D;")
                .parse()
                .unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..sent as u64).collect::<Vec<_>>(),
        "every 204 in Kafka exactly once"
    );
    let _ = std::io::stderr().flush();
}

#[test]
fn sigterm_drains_while_not_ready_and_a_second_signal_cuts_it_short() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = temp_dir("cli-drain");
    // No broker needed: the spool takes what the producer cannot deliver.
    let cfg = write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"drain-host\"\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\
         [spool]\ndir = \"{}\"\n[shutdown]\ndrain_seconds = 60\nflush_timeout_seconds = 1\n",
        temp_dir("drain-spool").display()
    ));
    let mut child = ChildBeacond::start(&dir, &cfg.0, "beacond.log");
    let (beacon, admin) = (child.beacon, child.admin);
    rt.block_on(async {
        wait_http(admin, "/healthz", true).await;
    });
    child.signal("-TERM");
    rt.block_on(async {
        // Draining: not ready, yet beacons are still answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(admin, "/readyz", &[]).await;
            if r.status == 503 && r.body_text() == "draining\n" {
                break;
            }
            assert!(Instant::now() < deadline, "readyz never said draining");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(get(beacon, "/beacon/event?%7B%7D", &[]).await.status, 204);
    });
    let started = Instant::now();
    child.signal("-TERM");
    let exit = child
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the second SIGTERM did not cut the drain short"));
    assert_eq!(exit.code(), Some(0), "{}", child.log());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_ready_file_and_the_serving_line_name_the_bound_addresses() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = temp_dir("cli-ready");
    let cfg = write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [output]\nhostname = \"ready-host\"\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\
         [spool]\ndir = \"{}\"\n[shutdown]\ndrain_seconds = 0\nflush_timeout_seconds = 0\n",
        dir.join("spool").display()
    ));
    let svc = ChildBeacond::start(&dir, &cfg.0, "beacond.log");
    assert_ne!(svc.beacon.port(), 0);
    assert_ne!(svc.admin.port(), 0);
    rt.block_on(async {
        wait_http(svc.admin, "/healthz", false).await;
        assert_eq!(
            get(svc.beacon, "/beacon/event?%7B%7D;", &[]).await.status,
            204
        );
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !svc.log().contains("beacond serving") {
        assert!(Instant::now() < deadline, "no serving line:\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = svc.log();
    assert!(log.contains(&format!("beacon={}", svc.beacon)), "{log}");
    assert!(log.contains(&format!("admin={}", svc.admin)), "{log}");
    let (code, log) = svc.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// `http.workers`: 1 is a single-threaded runtime, N a multi-threaded one
/// with N workers, 0 one per CPU the process may run on (here, pinned to one
/// core with taskset: 1). Each serves beacons to Kafka and stops cleanly.
#[test]
#[ignore = "needs a broker"]
fn workers_shape_the_runtime() {
    let brokers = require_broker();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let mut cases = vec![(1, false, 1), (3, false, 3)];
    if pinned {
        cases.push((0, true, 1));
    }
    for (workers, pin, want) in cases {
        let topic = unique_topic("workers");
        rt.block_on(create_topic(&brokers, &topic, 3));
        let dir = temp_dir("cli-workers");
        let cfg = write_config(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [output]\nhostname = \"workers-host\"\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             [spool]\ndir = \"{}\"\n",
            dir.join("spool").display()
        ));
        let child = if pin {
            // taskset itself execs beacond: the pid is beacond's.
            ChildBeacond::start_with(&dir, &cfg.0, "beacond.log", |c| {
                let program = c.get_program().to_owned();
                let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
                *c = {
                    let mut t = Command::new("taskset");
                    t.arg("-c").arg("0").arg(program).args(args);
                    t.env("BEACOND_LOG", "info")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::fs::File::create(dir.join("beacond.log")).unwrap());
                    t
                };
            })
        } else {
            ChildBeacond::start(&dir, &cfg.0, "beacond.log")
        };
        let (beacon, admin) = (child.beacon, child.admin);
        rt.block_on(async {
            wait_http(admin, "/readyz", false).await;
            for i in 0..100 {
                let r = get(beacon, &format!("/beacon/event?%7B%22n%22%3A{i}%7D;"), &[]).await;
                assert_eq!(r.status, 204, "workers = {workers}");
            }
        });
        let (code, log) = child.stop();
        assert_eq!(code, Some(0), "workers = {workers}; log:\n{log}");
        assert!(
            log.contains(&format!("runtime started workers={want}")),
            "workers = {workers}, pinned: {pin}: want {want}; log:\n{log}"
        );
        let got = consume(
            &brokers,
            &topic,
            100,
            Duration::from_secs(30),
            Duration::from_secs(1),
        );
        assert_eq!(got.len(), 100, "workers = {workers}");
    }
}
