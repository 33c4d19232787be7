//! Kafka with SASL, as far as it can be tested here.
//!
//! tansu 0.6 (the only broker here) serves SASL SCRAM-SHA-256/512 only with
//! `--authentication`, and then no user can be provisioned: `tansu user
//! create` is refused (`NotAuthenticated`, its client does not log in), a
//! user created on a broker without `--authentication` is not found after
//! a restart with it (`unknown-user`), and the postgres storage is not built
//! in. Without `--authentication` it answers every SASL handshake with
//! `UnsupportedSaslMechanism`; PLAIN it never offers. So no test here gets a
//! SASL login accepted. What is tested: beacond takes the properties an
//! operator writes (`--check`, the password redacted), and credentials the
//! broker refuses, or a broker that does not speak SASL, are a loud failure:
//! the reason in the log, `beacond_kafka_broker_reachable 0`, `/readyz` 503
//! without a spool, and never the password in the log.

mod common;
#[path = "common/lb.rs"]
mod lb;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use lb::*;

const PASSWORD: &str = "pw-never-logged-7d1e";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `[kafka.properties]` lines an operator writes for SASL over TLS.
fn sasl_ssl_toml(ca: &Path, mechanism: &str) -> String {
    format!(
        "\"security.protocol\" = \"sasl_ssl\"\n\"ssl.ca.location\" = \"{}\"\n\
         \"sasl.mechanism\" = \"{mechanism}\"\n\"sasl.username\" = \"beacond\"\n\
         \"sasl.password\" = \"{PASSWORD}\"\n",
        ca.display()
    )
}

#[test]
fn check_accepts_the_sasl_properties_and_redacts_the_password() {
    let dir = temp_dir("sasl-check");
    let pki = pki(&dir, "check");
    let config = transport_config(
        &dir,
        (free_port(), free_port()),
        "kafka1.example:9093",
        "beacons",
        &format!(
            "{}\"ssl.key.password\" = \"{PASSWORD}-key\"\n",
            sasl_ssl_toml(&pki.ca, "SCRAM-SHA-512")
        ),
        true,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_beacond"))
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "--check failed: {stderr}");
    for (k, v) in [
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "beacond"),
        ("sasl.password", "<redacted>"),
        ("ssl.key.password", "<redacted>"),
    ] {
        assert!(
            stdout.contains(&format!("\"{k}\" = \"{v}\"")),
            "{k} = {v} not in:\n{stdout}"
        );
    }
    assert!(!stdout.contains(PASSWORD), "password printed:\n{stdout}");
    assert!(!stderr.contains(PASSWORD), "password logged:\n{stderr}");
}

/// Waits for `needle` in the log, then checks the loud-failure state:
/// reachable 0, `/readyz` 503 (no spool), the password nowhere in the log.
async fn assert_loud_failure(p: &Proc, admin: SocketAddr, needle: &str, what: &str) {
    let log = wait_log(p, needle, Duration::from_secs(30)).await;
    let line = log.lines().find(|l| l.contains(needle)).unwrap();
    eprintln!("{what}: beacond logs: {line}");
    let m = Metrics::parse(&get(admin, "/metrics", &[]).await.body_text());
    assert_eq!(m.get("beacond_kafka_broker_reachable"), 0.0, "{what}");
    let ready = get(admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{what}: {}", ready.body_text());
    assert!(!p.log().contains(PASSWORD), "{what}: password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn credentials_the_broker_refuses_are_a_loud_failure() {
    // tansu with --authentication (SCRAM served, no user known) behind a
    // TLS front: a real TLS handshake, then a refused SCRAM login.
    let dir = temp_dir("sasl-refused");
    let pki = pki(&dir, "sasl");
    let (plain, tls) = (free_port(), free_port());
    let mut broker = tansu(
        &dir,
        "tansu-auth",
        plain,
        &format!("tcp://127.0.0.1:{tls}"),
        &["--authentication"],
    );
    wait_port(addr(plain), &mut broker).await;
    let mut front = tls_front(&dir, &pki, tls, plain);
    wait_port(addr(tls), &mut front).await;

    let ports = (free_port(), free_port());
    let config = transport_config(
        &dir,
        ports,
        &format!("127.0.0.1:{tls}"),
        "beacons",
        &sasl_ssl_toml(&pki.ca, "SCRAM-SHA-512"),
        false,
    );
    let mut p = beacond(&dir, &config, "beacond");
    wait_port(addr(ports.1), &mut p).await;
    assert_loud_failure(
        &p,
        addr(ports.1),
        "SASL SCRAM authentication failed",
        "sasl_ssl, credentials refused",
    )
    .await;
    let status = p.terminate().await;
    assert!(status.success(), "exit {status}; log:\n{}", p.log());
    assert!(!p.log().contains(PASSWORD), "password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker"]
async fn sasl_against_a_broker_without_sasl_is_a_loud_failure() {
    let dir = temp_dir("sasl-none");
    let port = free_port();
    let mut broker = tansu(&dir, "tansu", port, &format!("tcp://127.0.0.1:{port}"), &[]);
    wait_port(addr(port), &mut broker).await;
    let ports = (free_port(), free_port());
    let config = transport_config(
        &dir,
        ports,
        &format!("127.0.0.1:{port}"),
        "beacons",
        &format!(
            "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\
             \"sasl.username\" = \"beacond\"\n\"sasl.password\" = \"{PASSWORD}\"\n"
        ),
        false,
    );
    let mut p = beacond(&dir, &config, "beacond");
    wait_port(addr(ports.1), &mut p).await;
    assert_loud_failure(
        &p,
        addr(ports.1),
        "Unsupported SASL mechanism",
        "sasl_plaintext, broker without SASL",
    )
    .await;
    let status = p.terminate().await;
    assert!(status.success(), "exit {status}; log:\n{}", p.log());
}
