use std::sync::Mutex;

use super::*;
use crate::metrics::Metrics;

/// What the fake broker was given: location, line, key.
type Sent = (RecordLocation, Vec<u8>, Option<Vec<u8>>);

/// A destination as the fake broker saw it: `None` for beacons, else the
/// role byte's meaning and the topic.
type SentTo = Option<(bool, String)>;

/// A dispatch target that records what it was given.
#[derive(Default)]
struct FakeKafka {
    open: AtomicBool,
    sent: Mutex<Vec<Sent>>,
    /// The destination of each record sent, in the same order.
    to: Mutex<Vec<SentTo>>,
    /// How often the spool asked whether the broker answers (once a turn).
    asked: AtomicUsize,
}

impl Dispatch for FakeKafka {
    fn can_dispatch(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
    fn broker_answers(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.open.load(Ordering::Relaxed)
    }
    fn dispatch(&self, record: &SpoolRecord<'_>, at: RecordLocation) -> Result<(), DispatchError> {
        let to = match record.destination {
            segment::Destination::Beacons => None,
            segment::Destination::Event { topic } => Some((false, topic.to_owned())),
            segment::Destination::EventError { topic } => Some((true, topic.to_owned())),
        };
        // Both under one lock order: `to` then `sent`.
        let mut tos = self.to.lock().unwrap();
        tos.push(to);
        self.sent.lock().unwrap().push((
            at,
            record.payload.to_vec(),
            record.key.map(<[u8]>::to_vec),
        ));
        Ok(())
    }
}

impl FakeKafka {
    fn new(open: bool) -> Arc<FakeKafka> {
        let f = FakeKafka::default();
        f.open.store(open, Ordering::Relaxed);
        Arc::new(f)
    }
    /// The destinations of everything sent so far (and forgets them).
    fn take_to(&self) -> Vec<SentTo> {
        std::mem::take(&mut *self.to.lock().unwrap())
    }
    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
    /// Waits until at least `n` records were dispatched in total.
    fn wait_for(&self, n: usize) -> Vec<Sent> {
        wait_until(&format!("{n} records dispatched"), || {
            self.sent.lock().unwrap().len() >= n
        });
        self.take()
    }
}

/// Polls `done` until it holds, failing the test after a generous deadline
/// (no sleep-then-assert: a loaded machine only makes this slower).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("beacond-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_path_buf(),
        mode: SpoolMode::Overflow,
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        fsync_interval: Duration::from_millis(10),
    }
}

fn open(s: SpoolSettings, kafka: &Arc<FakeKafka>) -> (Spool, SpoolHandle, Metrics) {
    let metrics = Metrics::new();
    let mut spool = Spool::open(s, metrics.spool.clone()).unwrap();
    spool.start(kafka.clone()).unwrap();
    let h = spool.handle();
    (spool, h, metrics)
}

fn line(i: usize) -> Vec<u8> {
    format!("?%7B%22i%22%3A{i}%7D;\thost\t{i}\t2026-11-28T00:00:00\t203.0.113.9\t\"ua\"")
        .into_bytes()
}

fn append(h: &SpoolHandle, i: usize) -> Result<(), SpoolError> {
    let l = line(i);
    let rec = SpoolRecord {
        appended_unix_ms: now_unix_ms(),
        destination: segment::Destination::Beacons,
        key: if i.is_multiple_of(2) {
            Some(b"203.0.113.9")
        } else {
            None
        },
        payload: &l,
    };
    h.append(&rec)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

fn files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".spool"))
        .collect();
    v.sort();
    v
}

#[test]
fn appended_records_are_dispatched_in_order_and_deleted_once_acked() {
    let d = dir("order");
    let kafka = FakeKafka::new(true);
    let (spool, h, metrics) = open(settings(&d), &kafka);
    for i in 0..100 {
        append(&h, i).unwrap();
    }
    let sent = kafka.wait_for(100);
    let lines: Vec<Vec<u8>> = sent.iter().map(|s| s.1.clone()).collect();
    assert_eq!(lines, (0..100).map(line).collect::<Vec<_>>());
    assert_eq!(sent[0].2.as_deref(), Some(&b"203.0.113.9"[..]));
    assert_eq!(sent[1].2, None);
    // All handed to Kafka: new lines need not queue behind them any more,
    // though none is acknowledged yet.
    wait_until("not pending once all are dispatched", || !h.is_pending());
    assert_eq!(metrics.spool.records.get(), 100);
    for (at, _, _) in &sent {
        h.acked(*at);
    }
    spool.shutdown();
    assert!(
        files(&d).is_empty(),
        "drained segments deleted: {:?}",
        files(&d)
    );
    assert_eq!(metrics.spool.appended.get(), 100);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_restart_replays_what_was_not_acknowledged() {
    let d = dir("restart");
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    for i in 0..50 {
        append(&h, i).unwrap();
    }
    spool.shutdown();
    assert_eq!(files(&d).len(), 1);

    let kafka = FakeKafka::new(true);
    let (spool, h, metrics) = open(settings(&d), &kafka);
    assert!(h.is_pending(), "recovered records count as pending");
    let sent = kafka.wait_for(50);
    assert_eq!(
        sent.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        (0..50).map(line).collect::<Vec<_>>()
    );
    // Ack only the first 20, then stop: the ledger remembers them.
    for (at, _, _) in &sent[..20] {
        h.acked(*at);
    }
    // The acks are queued before the shutdown command, which takes them all.
    spool.shutdown();
    assert_eq!(metrics.spool.replayed.get(), 50);

    let kafka = FakeKafka::new(true);
    let (spool, h, _) = open(settings(&d), &kafka);
    let sent = kafka.wait_for(30);
    assert_eq!(
        sent.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        (20..50).map(line).collect::<Vec<_>>()
    );
    for (at, _, _) in &sent {
        h.acked(*at);
    }
    spool.shutdown();
    assert!(files(&d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn segments_rotate_and_each_is_deleted_when_acked() {
    let d = dir("rotate");
    let kafka = FakeKafka::new(false);
    let mut s = settings(&d);
    s.segment_bytes = 4096;
    let (spool, h, metrics) = open(s, &kafka);
    for i in 0..200 {
        append(&h, i).unwrap();
    }
    let segs = files(&d);
    assert!(segs.len() > 3, "rotated into several segments: {segs:?}");
    // The gauges are published after the replies, in the same turn.
    wait_until("gauges published", || {
        metrics.spool.segments.get() as usize == segs.len() && metrics.spool.records.get() == 200
    });
    kafka.open.store(true, Ordering::Relaxed);
    let sent = kafka.wait_for(200);
    // Ack the first segment's records only: it goes, the rest stay.
    let first = sent[0].0.segment;
    for (at, _, _) in sent.iter().filter(|s| s.0.segment == first) {
        h.acked(*at);
    }
    wait_until("the first segment deleted", || {
        files(&d).len() == segs.len() - 1
    });
    assert!(!files(&d).contains(&segment_file_name(first)));
    for (at, _, _) in sent.iter().filter(|s| s.0.segment != first) {
        h.acked(*at);
    }
    wait_until("nothing pending", || !h.is_pending());
    spool.shutdown();
    assert!(files(&d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn full_spool_refuses_appends() {
    let d = dir("full");
    let kafka = FakeKafka::new(false);
    let mut s = settings(&d);
    s.max_bytes = 8192;
    s.segment_bytes = 4096;
    let (spool, h, metrics) = open(s, &kafka);
    let mut ok = 0;
    let mut full = 0;
    for i in 0..500 {
        match append(&h, i) {
            Ok(()) => ok += 1,
            Err(SpoolError::Full) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok > 10 && full > 100, "ok {ok} full {full}");
    assert!(h.is_full());
    assert_eq!(metrics.spool.refused_full.get(), full);
    assert!(metrics.spool.bytes.get() <= 8192);
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn retriable_failures_are_resent_and_permanent_ones_dropped() {
    let d = dir("retry");
    let kafka = FakeKafka::new(true);
    let (spool, h, metrics) = open(settings(&d), &kafka);
    append(&h, 1).unwrap();
    append(&h, 2).unwrap();
    let sent = kafka.wait_for(2);
    h.failed(sent[0].0, false);
    h.failed(sent[1].0, true);
    let again = kafka.wait_for(1);
    assert_eq!(again[0].0, sent[0].0);
    assert_eq!(again[0].1, line(1));
    h.acked(again[0].0);
    wait_until("nothing pending", || !h.is_pending());
    wait_until("the permanent failure counted", || {
        metrics.spool.dropped_permanent.get() == 1
    });
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn corrupt_and_truncated_segments_replay_up_to_the_damage() {
    let d = dir("corrupt");
    let kafka = FakeKafka::new(false);
    let mut s = settings(&d);
    s.segment_bytes = 2048;
    let (spool, h, _) = open(s.clone(), &kafka);
    for i in 0..60 {
        append(&h, i).unwrap();
    }
    spool.shutdown();
    let segs = files(&d);
    assert!(segs.len() >= 3);
    // Tear the last segment mid-record, flip a byte in the middle of the
    // first, and give a third a bad header.
    let last = d.join(&segs[segs.len() - 1]);
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let first = d.join(&segs[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    let second = d.join(&segs[1]);
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[0] = b'X';
    std::fs::write(&second, &bytes).unwrap();

    let kafka = FakeKafka::new(true);
    let (spool, h, metrics) = open(s, &kafka);
    assert_eq!(metrics.spool.corrupt_segments.get(), 3);
    assert!(metrics.spool.corrupt_bytes.get() > 0);
    // Everything readable handed over: no longer pending.
    wait_until("the readable records dispatched", || !h.is_pending());
    let sent = kafka.take();
    let got: Vec<Vec<u8>> = sent.iter().map(|s| s.1.clone()).collect();
    // Every replayed record is intact and in order; only damaged ones are missing.
    let all: Vec<Vec<u8>> = (0..60).map(line).collect();
    let mut idx = 0;
    for g in &got {
        while idx < all.len() && &all[idx] != g {
            idx += 1;
        }
        assert!(idx < all.len(), "replayed a record that was never written");
    }
    assert!(got.len() >= 20 && got.len() < 60, "replayed {}", got.len());
    assert!(
        d.join(segs[1].replace(".spool", ".damaged")).exists(),
        "bad header set aside"
    );
    for (at, _, _) in &sent {
        h.acked(*at);
    }
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_process_per_directory() {
    let d = dir("lock");
    let kafka = FakeKafka::new(false);
    let (spool, _h, _) = open(settings(&d), &kafka);
    let second = Spool::open(settings(&d), Metrics::new().spool.clone());
    assert!(matches!(second, Err(SpoolOpenError::Locked { .. })));
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_stale_ledger_never_hides_records_of_a_reused_id() {
    let d = dir("stale-ledger");
    std::fs::create_dir_all(&d).unwrap();
    // A ledger naming a segment deleted before a crash, with a large offset.
    std::fs::write(d.join("ledger"), "5 100000\n").unwrap();
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    append(&h, 1).unwrap();
    spool.shutdown();
    assert_eq!(files(&d), vec![segment_file_name(6)], "id 5 is not reused");
    let kafka = FakeKafka::new(true);
    let (spool, h, _) = open(settings(&d), &kafka);
    let sent = kafka.wait_for(1);
    assert_eq!(sent[0].1, line(1));
    h.acked(sent[0].0);
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

fn append_to(
    h: &SpoolHandle,
    destination: segment::Destination<'_>,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Result<(), SpoolError> {
    let rec = SpoolRecord {
        appended_unix_ms: now_unix_ms(),
        destination,
        key,
        payload,
    };
    h.append(&rec)?
        .blocking_recv()
        .unwrap_or(Err(SpoolError::Closed))
}

#[test]
fn events_keep_their_topic_through_the_spool_and_a_restart() {
    use segment::Destination;
    let d = dir("topics");
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    for i in 0..30 {
        let l = line(i);
        let destination = match i % 3 {
            0 => Destination::Beacons,
            1 => Destination::Event {
                topic: "eqiad.stream.one",
            },
            _ => Destination::EventError {
                topic: "beacond.error.validation",
            },
        };
        append_to(&h, destination, Some(format!("k{i}").as_bytes()), &l).unwrap();
    }
    spool.shutdown();
    let kafka = FakeKafka::new(true);
    let (spool, h, _) = open(settings(&d), &kafka);
    let sent = kafka.wait_for(30);
    let to = kafka.take_to();
    for (i, ((at, payload, key), to)) in sent.iter().zip(&to).enumerate() {
        assert_eq!(payload, &line(i));
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_bytes()));
        let want = match i % 3 {
            0 => None,
            1 => Some((false, "eqiad.stream.one".to_string())),
            _ => Some((true, "beacond.error.validation".to_string())),
        };
        assert_eq!(to, &want, "record {i}");
        h.acked(*at);
    }
    spool.shutdown();
    assert!(files(&d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_version_1_spool_is_replayed_as_beacons_after_the_upgrade() {
    use segment::version_1;
    use segment::Destination;
    let d = dir("v1-upgrade");
    std::fs::create_dir_all(&d).unwrap();
    // What beacond before topics left behind: one v1 segment, a ledger
    // saying the first record was acknowledged.
    let mut bytes = version_1::header();
    let first = version_1::record(1_000, Some(b"203.0.113.9"), &line(0));
    bytes.extend_from_slice(&first);
    for i in 1..10 {
        let key: Option<&[u8]> = if i % 2 == 0 {
            Some(b"203.0.113.9")
        } else {
            None
        };
        bytes.extend_from_slice(&version_1::record(1_000 + i as u64, key, &line(i)));
    }
    std::fs::write(d.join(segment_file_name(4)), &bytes).unwrap();
    std::fs::write(
        d.join("ledger"),
        format!("4 {}\n", SEGMENT_HEADER_LEN + first.len() as u64),
    )
    .unwrap();

    let kafka = FakeKafka::new(false);
    let (spool, h, metrics) = open(settings(&d), &kafka);
    assert_eq!(metrics.spool.corrupt_segments.get(), 0);
    // New records after the upgrade queue behind the old ones, in v2.
    append_to(&h, Destination::Event { topic: "ev" }, None, b"new-event").unwrap();
    kafka.open.store(true, Ordering::Relaxed);
    let sent = kafka.wait_for(10);
    let to = kafka.take_to();
    for (n, (_, payload, key)) in sent[..9].iter().enumerate() {
        let i = n + 1;
        assert_eq!(payload, &line(i));
        let want: Option<&[u8]> = if i % 2 == 0 {
            Some(b"203.0.113.9")
        } else {
            None
        };
        assert_eq!(key.as_deref(), want);
        assert_eq!(to[n], None, "v1 records are beacons");
    }
    assert_eq!(sent[9].1, b"new-event");
    assert_eq!(to[9], Some((false, "ev".to_string())));
    assert_eq!(sent[9].0.segment, 5, "a new segment, after the old one");
    let header = std::fs::read(d.join(segment_file_name(5))).unwrap();
    assert_eq!(&header[8..12], &segment::FORMAT_VERSION.to_le_bytes());
    for (at, _, _) in &sent {
        h.acked(*at);
    }
    spool.shutdown();
    assert!(files(&d).is_empty(), "{:?}", files(&d));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn segment_ids_wrap_at_the_tag_limit_only_once_the_spool_is_empty() {
    let d = dir("id-limit");
    std::fs::create_dir_all(&d).unwrap();
    // The last allowed id holds a record; the ledger names it.
    let mut w = segment::SegmentWriter::create(&d, MAX_SEGMENT_ID).unwrap();
    let mut enc = Vec::new();
    SpoolRecord {
        appended_unix_ms: 1,
        destination: segment::Destination::Beacons,
        key: None,
        payload: &line(0),
    }
    .encode(&mut enc)
    .unwrap();
    w.append(&enc).unwrap();
    drop(w);
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    // No id left for a new segment while one exists: refused (503), not
    // written under an id the delivery tag cannot carry.
    assert!(matches!(append(&h, 1), Err(SpoolError::Io(_))));
    kafka.open.store(true, Ordering::Relaxed);
    let sent = kafka.wait_for(1);
    assert_eq!(sent[0].0.segment, MAX_SEGMENT_ID);
    h.acked(sent[0].0);
    // Once it is deleted, ids start again at 1.
    wait_until("the last segment deleted", || files(&d).is_empty());
    append(&h, 2).unwrap();
    assert_eq!(files(&d), vec![segment_file_name(1)]);
    let sent = kafka.wait_for(1);
    assert_eq!(sent[0].1, line(2));
    h.acked(sent[0].0);
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn records_that_do_not_fit_are_refused() {
    let d = dir("unfit");
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    let long = "t".repeat(250);
    assert_eq!(
        append_to(&h, segment::Destination::Event { topic: &long }, None, b"x"),
        Err(SpoolError::Record(RecordError::TopicLength(250)))
    );
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovered_records_are_in_the_metrics_as_soon_as_the_spool_opens() {
    let d = dir("recovered-metrics");
    let kafka = FakeKafka::new(false);
    let (spool, h, _) = open(settings(&d), &kafka);
    for i in 0..40 {
        append(&h, i).unwrap();
    }
    spool.shutdown();

    // Opened, not started: a `spool_records == 0` read now must not say
    // "drained" while the previous run's records wait.
    let metrics = Metrics::new();
    let mut spool = Spool::open(settings(&d), metrics.spool.clone()).unwrap();
    assert_eq!(metrics.spool.records.get(), 40);
    assert_eq!(metrics.spool.segments.get(), 1);
    assert!(metrics.spool.bytes.get() > 0);
    spool.start(kafka.clone()).unwrap();
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

/// The spool's file I/O with faults on demand: after a number of writes
/// (or fsyncs) succeed, each further one fails (`ENOSPC`, `EIO`) until
/// healed; a failing write can first write part of its bytes, as a disk
/// filling up mid-write does.
#[derive(Debug, Default)]
struct FaultyFiles {
    /// Writes still allowed to succeed; `None`: all do.
    writes_left: Mutex<Option<u64>>,
    /// Fsyncs still allowed to succeed; `None`: all do.
    syncs_left: Mutex<Option<u64>>,
    /// A failing write first writes this many bytes of its buffer.
    partial: std::sync::atomic::AtomicUsize,
    failed_writes: std::sync::atomic::AtomicU64,
}

impl FaultyFiles {
    fn new() -> Arc<FaultyFiles> {
        Arc::new(FaultyFiles::default())
    }
    /// After `n` more successful writes, writes fail with ENOSPC.
    fn fail_writes_after(&self, n: u64) {
        *self.writes_left.lock().unwrap() = Some(n);
    }
    /// After `n` more successful fsyncs, fsyncs fail with EIO.
    fn fail_syncs_after(&self, n: u64) {
        *self.syncs_left.lock().unwrap() = Some(n);
    }
    /// Room on the disk again: everything succeeds.
    fn heal(&self) {
        *self.writes_left.lock().unwrap() = None;
        *self.syncs_left.lock().unwrap() = None;
    }
    /// Takes one from a budget; false when it is spent (the call fails).
    fn allow(budget: &Mutex<Option<u64>>) -> bool {
        match &mut *budget.lock().unwrap() {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

impl fileops::FileOps for FaultyFiles {
    fn create_new(&self, path: &Path) -> std::io::Result<File> {
        OsFiles.create_new(path)
    }
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        if Self::allow(&self.writes_left) {
            return OsFiles.write_all(file, bytes);
        }
        self.failed_writes.fetch_add(1, Ordering::Relaxed);
        let partial = self.partial.load(Ordering::Relaxed).min(bytes.len());
        OsFiles.write_all(file, &bytes[..partial])?;
        Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
    }
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        if Self::allow(&self.syncs_left) {
            return OsFiles.sync_data(file);
        }
        Err(std::io::Error::from_raw_os_error(5)) // EIO
    }
    fn set_len(&self, file: &File, len: u64) -> std::io::Result<()> {
        OsFiles.set_len(file, len)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        OsFiles.remove_file(path)
    }
}

fn open_faulty(
    s: SpoolSettings,
    kafka: &Arc<FakeKafka>,
    io: &Arc<FaultyFiles>,
) -> (Spool, SpoolHandle, Metrics) {
    let metrics = Metrics::new();
    let mut spool = Spool::open_with_files(s, metrics.spool.clone(), io.clone()).unwrap();
    spool.start(kafka.clone()).unwrap();
    let h = spool.handle();
    (spool, h, metrics)
}

/// Fault 1 of issue 12: the header of a new segment could not be written
/// (full disk); the file must not stay behind, or every later create of the
/// same id fails ("File exists") until a restart.
#[test]
fn a_segment_whose_header_write_failed_leaves_nothing_behind_and_the_next_write_works() {
    let d = dir("header-enospc");
    let kafka = FakeKafka::new(false);
    let io = FaultyFiles::new();
    io.fail_writes_after(0);
    let (spool, h, metrics) = open_faulty(settings(&d), &kafka, &io);
    assert!(h.is_writable());
    assert!(matches!(append(&h, 0), Err(SpoolError::Io(_))));
    assert!(!h.is_writable(), "unwritable after a failed write");
    assert_eq!(metrics.spool.writable.get(), 0);
    assert!(metrics.spool.io_errors.get() >= 1);
    let left = files(&d);
    assert_eq!(metrics.spool.appended.get(), 0);
    // Room again: the very next append is written, no restart needed.
    io.heal();
    append(&h, 1).expect("written once there is room (no restart)");
    assert!(left.is_empty(), "no headerless segment left: {left:?}");
    assert_eq!(files(&d).len(), 1);
    assert!(h.is_writable());
    assert_eq!(metrics.spool.writable.get(), 1);
    kafka.open.store(true, Ordering::Relaxed);
    let sent = kafka.wait_for(1);
    assert_eq!(sent[0].1, line(1));
    h.acked(sent[0].0);
    spool.shutdown();
    assert_eq!(metrics.spool.dropped_io.get(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

/// While it cannot write, readiness is false, so traffic may stop: the
/// spool must find out by itself that the disk has room again.
#[test]
fn an_unwritable_spool_becomes_writable_again_without_traffic() {
    let d = dir("retry-without-traffic");
    let kafka = FakeKafka::new(false);
    let io = FaultyFiles::new();
    let (spool, h, metrics) = open_faulty(settings(&d), &kafka, &io);
    append(&h, 0).unwrap();
    // Fills up: the active segment's next write fails part way.
    io.partial.store(7, Ordering::Relaxed);
    io.fail_writes_after(0);
    assert!(matches!(append(&h, 1), Err(SpoolError::Io(_))));
    assert!(!h.is_writable());
    // Retried while unwritable, and failing: it stays so.
    let failed = io.failed_writes.load(Ordering::Relaxed);
    wait_until("a write retried without traffic", || {
        io.failed_writes.load(Ordering::Relaxed) > failed
    });
    assert!(!h.is_writable());
    io.heal();
    wait_until("writable again with no append", || h.is_writable());
    assert_eq!(metrics.spool.writable.get(), 1);
    append(&h, 2).unwrap();
    spool.shutdown();
    // The torn write was cut back: a restart finds no damage, and replays
    // exactly what was answered Ok.
    let kafka = FakeKafka::new(true);
    let (spool, h, metrics) = open(settings(&d), &kafka);
    assert_eq!(
        metrics.spool.corrupt_segments.get(),
        0,
        "no torn record left"
    );
    let sent = kafka.wait_for(2);
    assert_eq!(
        sent.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        vec![line(0), line(2)]
    );
    for (at, _, _) in &sent {
        h.acked(*at);
    }
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

/// `fsync_interval_ms = 0`: a failed fsync refuses the appends it was for
/// (503), seals the segment, and the next append goes to a fresh one.
#[test]
fn a_failed_fsync_refuses_the_append_and_the_spool_recovers() {
    let d = dir("fsync-eio");
    let kafka = FakeKafka::new(false);
    let io = FaultyFiles::new();
    let mut s = settings(&d);
    s.fsync_interval = Duration::ZERO;
    let (spool, h, metrics) = open_faulty(s, &kafka, &io);
    append(&h, 0).unwrap();
    io.fail_syncs_after(0);
    assert!(matches!(append(&h, 1), Err(SpoolError::Io(_))));
    assert!(!h.is_writable());
    assert!(metrics.spool.io_errors.get() >= 1);
    io.heal();
    append(&h, 2).unwrap();
    assert!(h.is_writable());
    assert_eq!(files(&d).len(), 2, "a fresh segment after the failed fsync");
    kafka.open.store(true, Ordering::Relaxed);
    // The refused line may be sent too (at-least-once; its client got a
    // 503 and may retry), but every line answered Ok is.
    let sent = kafka.wait_for(2);
    let lines: Vec<Vec<u8>> = sent.iter().map(|s| s.1.clone()).collect();
    assert!(
        lines.contains(&line(0)) && lines.contains(&line(2)),
        "{lines:?}"
    );
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

/// An undelivered line (already answered 204) that cannot be written while
/// the disk is full is the one loss policy allows: counted, never silent.
#[test]
fn undelivered_lines_a_full_disk_cannot_take_are_counted_as_io_error_drops() {
    let d = dir("undelivered-enospc");
    let kafka = FakeKafka::new(false);
    let io = FaultyFiles::new();
    io.fail_writes_after(0);
    let (spool, h, metrics) = open_faulty(settings(&d), &kafka, &io);
    let l = line(0);
    let rec = SpoolRecord {
        appended_unix_ms: now_unix_ms(),
        destination: segment::Destination::Beacons,
        key: None,
        payload: &l,
    };
    h.append_undelivered(&rec).unwrap();
    wait_until("the drop counted", || metrics.spool.dropped_io.get() == 1);
    // Once there is room, undelivered lines are kept again.
    io.heal();
    wait_until("writable again", || h.is_writable());
    h.append_undelivered(&rec).unwrap();
    wait_until("the line appended", || metrics.spool.appended.get() == 1);
    assert_eq!(metrics.spool.dropped_io.get(), 1);
    spool.shutdown();
    let _ = std::fs::remove_dir_all(&d);
}

/// Fault 4 of issue 12: an outage fails hundreds of records at once; that
/// is one failed attempt, so replay pauses once (250 ms), not 400 times
/// over (which took the old shared backoff to its 30 s cap).
#[test]
fn many_records_failing_at_once_pause_replay_once_not_per_record() {
    let d = dir("backoff-per-outage");
    let kafka = FakeKafka::new(true);
    let (spool, h, _) = open(settings(&d), &kafka);
    for i in 0..400 {
        append(&h, i).unwrap();
    }
    let sent = kafka.wait_for(400);
    for (at, _, _) in &sent {
        h.failed(*at, false);
    }
    // Sent again well within the poll's deadline (10 s).
    let again = kafka.wait_for(400);
    let mut offsets: Vec<RecordLocation> = again.iter().map(|s| s.0).collect();
    offsets.sort_by_key(|a| (a.segment, a.offset));
    let mut first: Vec<RecordLocation> = sent.iter().map(|s| s.0).collect();
    first.sort_by_key(|a| (a.segment, a.offset));
    assert_eq!(offsets, first);
    for (at, _, _) in &again {
        h.acked(*at);
    }
    spool.shutdown();
    assert!(files(&d).is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

/// The broker answers again after an outage: replay resumes at once,
/// whatever pause the outage built up.
#[test]
fn replay_resumes_as_soon_as_the_broker_answers_again() {
    let d = dir("backoff-reset");
    let kafka = FakeKafka::new(true);
    let (spool, h, _) = open(settings(&d), &kafka);
    append(&h, 0).unwrap();
    let sent = kafka.wait_for(1);
    // Each resend is a new attempt, so each failure of it grows the pause
    // (250 ms, 500 ms, 1 s); the fourth makes it 2 s, the cap.
    let mut at = sent[0].0;
    for _ in 0..3 {
        h.failed(at, false);
        at = kafka.wait_for(1)[0].0;
    }
    let paused = Instant::now();
    h.failed(at, false);
    // The broker stops answering (the worker looks twice), then answers
    // again: the outage is over, and so is its pause.
    kafka.open.store(false, Ordering::Relaxed);
    let asked = kafka.asked.load(Ordering::Relaxed);
    wait_until("the worker saw the broker gone", || {
        kafka.asked.load(Ordering::Relaxed) >= asked + 2
    });
    kafka.open.store(true, Ordering::Relaxed);
    let again = kafka.wait_for(1);
    let took = paused.elapsed();
    assert_eq!(again[0].0, at);
    h.acked(again[0].0);
    spool.shutdown();
    assert!(
        took < Backoff::MAX,
        "resent {took:?} after the failure: it waited out the pause"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn backoff_grows_once_per_failed_attempt_and_ends_with_the_outage() {
    let t0 = Instant::now();
    let mut b = Backoff::default();
    assert!(!b.pausing(t0));
    // Round 3 was the last sent; 400 of its records (and older) fail.
    for r in [1, 2, 3].iter().cycle().take(400) {
        b.on_failure(*r, 3, t0);
    }
    assert_eq!(b.delay, Backoff::MIN, "one attempt, one step");
    assert!(b.pausing(t0));
    assert!(!b.pausing(t0 + Backoff::MIN));
    // Sent after the pause (round 4) and failed again: one more step.
    for _ in 0..100 {
        b.on_failure(4, 4, t0 + Backoff::MIN);
    }
    assert_eq!(b.delay, Backoff::MIN * 2);
    // Capped short.
    for round in 5..50 {
        b.on_failure(round, round, t0);
    }
    assert_eq!(b.delay, Backoff::MAX);
    assert!(Backoff::MAX <= Duration::from_secs(2));
    // A delivery succeeded, or the broker answers again: no pause, and the
    // next outage starts small.
    b.reset();
    assert!(!b.pausing(t0));
    b.on_failure(60, 60, t0);
    assert_eq!(b.delay, Backoff::MIN);
}
