//! A really full disk under the spool (issue 12): `spool.dir` on a 512 KiB
//! tmpfs, far below `spool.max_bytes`, the broker (librdkafka's mock
//! cluster) down. The promises of ARCHITECTURE.md must hold: beacons that
//! cannot be written get 503, never 204; `/readyz` is 503 while the spool
//! cannot write; once the broker is back and replay has freed space, the
//! spool writes again without a restart; every beacon answered 204 is
//! delivered; nothing is dropped where policy does not allow it.
//!
//! Needs root (to mount the tmpfs). Not root, it fails and says so, unless
//! `BEACOND_SKIP_TMPFS_TESTS=1` asks to skip it (printed, never silent).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beacond::config::{PropertyValue, SpoolMode};
use common::*;
use rdkafka::mocking::MockCluster;

/// A tmpfs mounted for the test, unmounted when dropped (lazily if files
/// are still open, e.g. after a failed assertion).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount(8) syntax) on a fresh directory;
    /// `None` when the test is asked to skip without root.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = temp_dir("full-disk");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount(8)");
        if out.status.success() {
            return Some(Tmpfs { dir });
        }
        let why = String::from_utf8_lossy(&out.stderr);
        if std::env::var("BEACOND_SKIP_TMPFS_TESTS").as_deref() == Ok("1") {
            eprintln!("SKIPPED (BEACOND_SKIP_TMPFS_TESTS=1): cannot mount a tmpfs: {why}");
            return None;
        }
        panic!(
            "this test mounts a tmpfs and needs root: {why}\
             (run as root, or set BEACOND_SKIP_TMPFS_TESTS=1 to skip it visibly)"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Answers seen by [`load`], shared so the test can watch them live.
#[derive(Default)]
struct Tally {
    ok: std::sync::Mutex<Vec<String>>,
    other: std::sync::Mutex<HashMap<u16, u64>>,
    /// 503s in a row (reset by any other answer).
    refused_in_a_row: AtomicU64,
}

impl Tally {
    fn answered(&self) -> u64 {
        self.ok.lock().unwrap().len() as u64 + self.other.lock().unwrap().values().sum::<u64>()
    }
}

/// Sends numbered beacons on a keep-alive connection until `stop`, one
/// every `pause` (plus the answer's time).
async fn load(
    addr: std::net::SocketAddr,
    prefix: String,
    pause: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    numbered_beacons(
        addr,
        &prefix,
        BeaconMethod::Get,
        pause,
        &stop,
        |id, status| match status {
            Some(204) => {
                tally.ok.lock().unwrap().push(id);
                tally.refused_in_a_row.store(0, Ordering::Relaxed);
            }
            Some(s) => {
                *tally.other.lock().unwrap().entry(s).or_default() += 1;
                if s == 503 {
                    tally.refused_in_a_row.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {}
        },
    )
    .await;
}

/// The ids found in varnishkafka lines.
fn ids_in(messages: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        let line = String::from_utf8_lossy(&m.payload);
        if let Some(rest) = line.split("%22id%22%3A%22").nth(1) {
            if let Some(id) = rest.split("%22").next() {
                *seen.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Polls the service's metrics until `done` holds (deadline `within`).
async fn wait_metrics(
    svc: &Running,
    what: &str,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let m = svc.metrics().await;
        if done(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what} (writable {}, io errors {}, spool bytes {}, records {})",
            m.get("beacond_spool_writable"),
            m.get("beacond_spool_io_errors_total"),
            m.get("beacond_spool_bytes"),
            m.get("beacond_spool_records"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// About 300 beacons a second, as in the issue.
const FAST: Duration = Duration::from_millis(3);

/// Starts beacond on a spool on `tmpfs`, with the given mode and producer
/// properties, the broker (a mock cluster) up.
async fn start(
    tmpfs: &Tmpfs,
    mode: SpoolMode,
    properties: &[(&str, &str)],
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    String,
    Running,
) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique_topic("full-disk");
    mock.create_topic(&topic, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut config = test_config(&brokers, &topic);
    config.spool.mode = mode;
    config.spool.dir = tmpfs.dir.clone();
    // The cap is far above the disk: the disk fills first.
    config.spool.max_bytes = 64 << 20;
    config.spool.segment_bytes = 64 << 10;
    config.spool.fsync_interval_ms = 10;
    for (k, v) in properties {
        config
            .kafka
            .properties
            .insert((*k).into(), PropertyValue::Text((*v).into()));
    }
    let svc = Running::start(config).await;
    svc.wait_ready().await;
    (mock, brokers, topic, svc)
}

/// Loads until the spool refuses 100 beacons in a row (the disk is full);
/// returns what was answered.
async fn fill_the_disk(svc: &Running, prefix: &str) -> Arc<Tally> {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let loader = tokio::spawn(load(
        svc.beacon,
        prefix.into(),
        FAST,
        stop.clone(),
        tally.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    while tally.refused_in_a_row.load(Ordering::Relaxed) < 100 {
        assert!(
            Instant::now() < deadline,
            "the disk never filled: {} answered 204, others {:?}",
            tally.ok.lock().unwrap().len(),
            tally.other.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    tally
}

/// The spool cannot write: `/readyz` says so, the metrics too, and a beacon
/// gets 503.
async fn assert_unwritable(svc: &Running) {
    let ready = get(svc.admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "not ready while the spool cannot write");
    assert!(
        ready.body_text().contains("spool cannot write"),
        "{}",
        ready.body_text()
    );
    let m = svc.metrics().await;
    assert_eq!(m.get("beacond_spool_writable"), 0.0);
    assert!(m.get("beacond_spool_io_errors_total") > 0.0);
    assert!(
        m.get("beacond_spool_bytes") < (512 << 10) as f64,
        "the disk, not spool.max_bytes, was the limit"
    );
    assert!(m.get("beacond_beacons_refused_total{reason=\"spool_error\"}") > 0.0);
    let r = get(svc.beacon, "/beacon/event?%7B%7D", &[]).await;
    assert_eq!(r.status, 503);
}

/// The broker is back: replay delivers, deletes segments, frees space; the
/// spool writes again and readiness returns, with no restart.
async fn assert_recovers(
    svc: &Running,
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    mock.broker_up(1).unwrap();
    wait_metrics(
        svc,
        "the spool writable again",
        Duration::from_secs(60),
        |m| m.get("beacond_spool_writable") == 1.0,
    )
    .await;
    svc.wait_ready().await;
}

/// Sends `n` beacons at `pause` intervals; returns the tally.
async fn send(svc: &Running, prefix: &str, n: u64, pause: Duration) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        svc.beacon,
        prefix.into(),
        pause,
        stop.clone(),
        tally.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    while tally.answered() < n {
        assert!(Instant::now() < deadline, "load stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    tally
}

/// Reads the topic back; returns the ids seen.
fn delivered(brokers: &str, topic: &str, expected: usize) -> HashMap<String, usize> {
    let got = consume(
        brokers,
        topic,
        expected,
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    ids_in(&got)
}

fn missing<'a>(sent: &'a [String], seen: &HashMap<String, usize>) -> Vec<&'a String> {
    sent.iter().filter(|id| !seen.contains_key(*id)).collect()
}

async fn wait_drained(svc: &Running) {
    wait_metrics(svc, "the spool drained", Duration::from_secs(90), |m| {
        m.get("beacond_spool_records") == 0.0 && m.get("beacond_kafka_producer_queue_depth") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_mode_a_full_disk_is_503_not_ready_and_recovers_without_a_restart() {
    let Some(tmpfs) = Tmpfs::mount("512k") else {
        return;
    };
    let (mock, brokers, topic, svc) = start(
        &tmpfs,
        SpoolMode::Always,
        &[("message.timeout.ms", "600000")],
    )
    .await;
    mock.broker_down(1).unwrap();

    // Written (204) until the disk is full, then refused (503).
    let before = fill_the_disk(&svc, "a").await;
    let filled = before.ok.lock().unwrap().len();
    assert!(
        filled > 100,
        "beacons were written before the disk filled: {filled}"
    );
    assert_unwritable(&svc).await;
    assert_recovers(&svc, &mock).await;

    // New beacons are welcome again: every one of them.
    let after = send(&svc, "b", 500, FAST).await;
    assert!(
        after.other.lock().unwrap().is_empty(),
        "after recovery only 204s: {:?} ({} ok)",
        after.other.lock().unwrap(),
        after.ok.lock().unwrap().len()
    );

    // Every beacon answered 204, before the disk filled and after, is in
    // Kafka; nothing was dropped, nothing set aside as damaged.
    let mut sent = before.ok.lock().unwrap().clone();
    sent.extend(after.ok.lock().unwrap().iter().cloned());
    let seen = delivered(&brokers, &topic, sent.len());
    let lost = missing(&sent, &seen);
    assert!(
        lost.is_empty(),
        "{} of {} beacons answered 204 are missing, e.g. {:?}",
        lost.len(),
        sent.len(),
        &lost[..lost.len().min(5)]
    );
    let m = svc.metrics().await;
    assert_eq!(
        m.sum("beacond_spool_dropped_total", &[]),
        0.0,
        "no drops in always mode"
    );
    assert_eq!(m.get("beacond_spool_corrupt_segments_total"), 0.0);
    let files = spool_files(&tmpfs.dir);
    assert!(
        !files.iter().any(|f| f.ends_with(".damaged")),
        "nothing set aside: {files:?}"
    );
    eprintln!(
        "always, full disk: {filled} written before it filled, {} refused, {} after recovery, lost 0",
        before.other.lock().unwrap().get(&503).copied().unwrap_or(0),
        sent.len() - filled,
    );
    svc.stop().await;
    drop(tmpfs);
}

/// Overflow mode: lines answered 204 from the producer's queue whose
/// delivery fails while the disk is full are the loss policy allows, and
/// each is counted (`io_error`); after recovery a later, short outage loses
/// nothing (the issue: 406 of 406 lost, though the disk had room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_mode_counts_what_a_full_disk_loses_and_a_later_outage_loses_nothing() {
    let Some(tmpfs) = Tmpfs::mount("512k") else {
        return;
    };
    let (mock, brokers, topic, svc) = start(
        &tmpfs,
        SpoolMode::Overflow,
        &[("message.timeout.ms", "2000"), ("retry.backoff.ms", "100")],
    )
    .await;
    mock.broker_down(1).unwrap();
    // Queued (204) while the broker is down; their deliveries time out and
    // go to the spool until it is full, then new beacons get 503.
    let before = fill_the_disk(&svc, "a").await;
    assert_unwritable(&svc).await;
    assert_recovers(&svc, &mock).await;
    wait_drained(&svc).await;
    let m = svc.metrics().await;
    let dropped_then = m.get("beacond_spool_dropped_total{reason=\"io_error\"}");
    assert_eq!(
        m.get("beacond_spool_dropped_total{reason=\"spool_full\"}"),
        0.0
    );
    let sent_before = before.ok.lock().unwrap().clone();
    // (Fewer may arrive than were answered 204: those counted as dropped.)
    let expected = sent_before.len().saturating_sub(dropped_then as usize);
    let seen = delivered(&brokers, &topic, expected);
    let lost = missing(&sent_before, &seen);
    assert!(
        lost.len() as f64 <= dropped_then,
        "{} answered 204 are missing but only {dropped_then} drops were counted",
        lost.len()
    );

    // A later outage, shorter than the disk: the spool takes every line
    // whose delivery fails, and the broker gets them all.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(
        svc.beacon,
        "b".into(),
        Duration::from_millis(20),
        stop.clone(),
        tally.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    mock.broker_down(1).unwrap();
    // Until delivery failures reach the spool (librdkafka reports the 2 s
    // timeout late), then a little longer.
    // (Or dropped: then the assertion below says so.)
    let handled = |m: &Metrics| {
        m.get("beacond_spool_appended_total")
            + m.get("beacond_spool_dropped_total{reason=\"io_error\"}")
    };
    let handled_then = handled(&m);
    wait_metrics(
        &svc,
        "undelivered lines spooled",
        Duration::from_secs(60),
        |m| handled(m) > handled_then + 50.0,
    )
    .await;
    mock.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    wait_drained(&svc).await;
    let sent = tally.ok.lock().unwrap().clone();
    assert!(
        tally.other.lock().unwrap().is_empty(),
        "the disk had room: only 204s, got {:?}",
        tally.other.lock().unwrap()
    );
    let m = svc.metrics().await;
    assert_eq!(
        m.get("beacond_spool_dropped_total{reason=\"io_error\"}"),
        dropped_then,
        "no line lost to a spool write once the disk had room"
    );
    let seen = delivered(
        &brokers,
        &topic,
        sent_before.len() - lost.len() + sent.len(),
    );
    let lost2 = missing(&sent, &seen);
    assert!(
        lost2.is_empty(),
        "{} of {} beacons of the later outage are missing, e.g. {:?}",
        lost2.len(),
        sent.len(),
        &lost2[..lost2.len().min(5)]
    );
    eprintln!(
        "overflow, full disk: {} answered 204 then, {} lost, {dropped_then} counted drops; later outage: {} answered 204, lost 0",
        sent_before.len(),
        lost.len(),
        sent.len()
    );
    svc.stop().await;
    drop(tmpfs);
}
