//! Spool: the disk log of lines Kafka has not acknowledged yet.
//!
//! Owns the spool directory (`spool.dir`): segment files ([`segment`]), a
//! ledger of acknowledged positions, and one worker thread that does all disk
//! I/O: it appends in batches (group commit), fsyncs every
//! `spool.fsync_interval_ms` (or before answering, when 0), hands spooled
//! records to Kafka through [`Dispatch`] (oldest first, only while the
//! broker answers and the producer has room, so live traffic keeps flowing),
//! tracks their acknowledgements, and deletes a segment once every record in
//! it is acknowledged.
//!
//! Delivery is at-least-once. After a crash, records delivered but not yet in
//! the ledger (written every half second) are sent again: duplicates are
//! bounded by what was in flight plus half a second of acknowledgements.
//!
//! A failed create, write or fsync (a full disk, an I/O error) makes the
//! spool unwritable ([`SpoolHandle::is_writable`], `/readyz` 503) until a
//! write succeeds; the worker tries one every half second, traffic or not.
//! Its file I/O goes through [`fileops::FileOps`], so tests can fail it.
//!
//! Must never: do disk I/O on the request path (requests send a command and
//! await the reply), delete a record before Kafka acknowledged it, grow
//! past `spool.max_bytes` (an append that does not fit is refused: 503), or
//! need a restart to write again.

pub mod fileops;
pub mod segment;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::SpoolMetrics;
use fileops::{FileOps, OsFiles};
use segment::{
    parse_segment_file_name, scan_segment, segment_file_name, RecordError, SegmentReader,
    SegmentWriter, SpoolRecord, SEGMENT_HEADER_LEN,
};

pub use crate::config::SpoolMode;

/// The spool's settings, from `[spool]`.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub mode: SpoolMode,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync_interval: Duration,
}

impl SpoolSettings {
    /// The spool's settings, when `spool.enabled`.
    pub fn from_config(config: &crate::config::SpoolConfig) -> Option<Self> {
        config.enabled.then(|| SpoolSettings {
            dir: config.dir.clone(),
            mode: config.mode,
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            fsync_interval: Duration::from_millis(config.fsync_interval_ms),
        })
    }
}

/// Where a spooled record lives. Packed into librdkafka's message opaque
/// (see `crate::sink`), hence the bounds below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    pub segment: u64,
    pub offset: u64,
}

/// The largest segment id: 30 bits of the delivery tag. Ids count up from 1;
/// at the limit the next segment is 1 again, as soon as the spool holds no
/// segment (until then, appends that need a new segment are refused). At
/// one new segment a second the limit is 34 years away.
pub const MAX_SEGMENT_ID: u64 = (1 << 30) - 1;
/// The largest record offset: 31 bits of the delivery tag. A record starts
/// before `spool.segment_bytes` (at most 1 GiB), so every offset fits.
pub const MAX_RECORD_OFFSET: u64 = (1 << 31) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full (spool.max_bytes)")]
    Full,
    #[error("spool busy (too many appends waiting)")]
    Busy,
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("spool stopped")]
    Closed,
    #[error(transparent)]
    Record(#[from] RecordError),
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolOpenError {
    #[error("spool.dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("spool.dir {dir} is in use by another process")]
    Locked { dir: PathBuf },
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error("cannot start the spool thread: {0}")]
    Thread(std::io::Error),
}

/// Why [`Dispatch::dispatch`] did not take a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// Try again later (the producer's queue is full).
    Busy,
    /// The producer will never take this record (counted and reported by
    /// the dispatcher); it is dropped so the records behind it can go.
    Permanent,
}

/// Where the spool sends its records: the Kafka producer.
pub trait Dispatch: Send + Sync + 'static {
    /// True while sending makes sense: the broker answers and the producer
    /// has room for spooled records next to live traffic.
    fn can_dispatch(&self) -> bool;
    /// True while the broker answers (the probe's view), whatever the
    /// producer's queue: when it turns true again, an outage is over and
    /// replay resumes at once, whatever backoff the outage built up.
    fn broker_answers(&self) -> bool;
    /// Hands a record over; its acknowledgement comes back through
    /// [`SpoolHandle::acked`] or [`SpoolHandle::failed`] with `at`.
    fn dispatch(&self, record: &SpoolRecord<'_>, at: RecordLocation) -> Result<(), DispatchError>;
}

/// A reply to an append: resolves once the record is written (and synced,
/// with `fsync_interval_ms = 0`).
pub type AppendReply = tokio::sync::oneshot::Receiver<Result<(), SpoolError>>;

enum Command {
    Append {
        encoded: Vec<u8>,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), SpoolError>>>,
    },
    Acked(RecordLocation),
    Failed {
        at: RecordLocation,
        permanent: bool,
    },
    StopDispatch,
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// How many commands may wait for the worker; beyond it appends are refused.
const COMMAND_QUEUE: usize = 65_536;
/// Records handed to Kafka per worker turn, at most.
const DISPATCH_BATCH: usize = 4096;
/// How often acknowledged positions are written to the ledger, at most.
const LEDGER_INTERVAL: Duration = Duration::from_millis(500);
/// A drained active segment is deleted once it is this large or old.
const DRAINED_SEGMENT_BYTES: u64 = 1 << 20;
const DRAINED_SEGMENT_AGE: Duration = Duration::from_secs(5);
/// While the spool cannot write, a write is tried this often even without
/// appends (readiness is false meanwhile, so there may be no traffic).
const WRITE_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// That write (a file of its own, removed after) must find this much room,
/// not just a page for a segment header: else readiness would come back
/// with room for no batch.
const WRITE_PROBE_BYTES: usize = 64 << 10;
const WRITE_PROBE_FILE: &str = "write-probe";

struct Shared {
    /// Records on disk not yet handed to Kafka (or awaiting a resend).
    pending: AtomicBool,
    /// Appends sent to the worker and not yet staged.
    queued: AtomicUsize,
    /// The last append was refused for space; cleared below 90% of the cap.
    full: AtomicBool,
    /// False after a failed segment create, write or fsync (a full disk, an
    /// I/O error), until a write succeeds again.
    writable: AtomicBool,
}

/// The request path's and the producer's handle on the spool.
#[derive(Clone)]
pub struct SpoolHandle {
    tx: SyncSender<Command>,
    shared: Arc<Shared>,
    mode: SpoolMode,
}

impl std::fmt::Debug for SpoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolHandle")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl SpoolHandle {
    pub fn mode(&self) -> SpoolMode {
        self.mode
    }

    /// True while the spool holds records not yet acknowledged: in overflow
    /// mode new lines then go to the spool too, so order is kept.
    pub fn is_pending(&self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) > 0
            || self.shared.pending.load(Ordering::Relaxed)
    }

    /// True when the spool refused an append for lack of space lately.
    pub fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// False while the spool cannot write (its last segment create, write or
    /// fsync failed: a full disk, an I/O error); the worker tries again every
    /// half second, traffic or not, and it turns true once a write succeeds.
    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
    }

    /// Appends a line from the request path; never blocks. Await the reply
    /// before answering 204.
    pub fn append(&self, record: &SpoolRecord<'_>) -> Result<AppendReply, SpoolError> {
        let mut encoded = Vec::with_capacity(record.payload.len() + 32);
        record.encode(&mut encoded)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Command::Append {
            encoded,
            reply: Some(tx),
        }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(SpoolError::Busy),
                    TrySendError::Disconnected(_) => Err(SpoolError::Closed),
                }
            }
        }
    }

    /// Appends a line whose delivery failed (from the producer's thread).
    /// Waits for room in the command queue rather than lose the line.
    pub fn append_undelivered(&self, record: &SpoolRecord<'_>) -> Result<(), SpoolError> {
        let mut encoded = Vec::with_capacity(record.payload.len() + 32);
        record.encode(&mut encoded)?;
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::Append {
                encoded,
                reply: None,
            })
            .map_err(|_| {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                SpoolError::Closed
            })
    }

    /// Kafka acknowledged a spooled record.
    pub fn acked(&self, at: RecordLocation) {
        let _ = self.tx.send(Command::Acked(at));
    }

    /// A spooled record's delivery failed; a permanent failure drops it
    /// (the caller counted and reported it), a retriable one is sent again.
    pub fn failed(&self, at: RecordLocation, permanent: bool) {
        let _ = self.tx.send(Command::Failed { at, permanent });
    }

    /// Stops handing records to Kafka (shutdown: the producer is being flushed).
    pub fn stop_dispatch(&self) {
        let _ = self.tx.send(Command::StopDispatch);
    }
}

/// The spool: its handle and its worker thread.
pub struct Spool {
    handle: SpoolHandle,
    worker: Option<Worker>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) and scans the spool directory. Records left
    /// by a previous run are replayed once the worker starts.
    pub fn open(settings: SpoolSettings, metrics: SpoolMetrics) -> Result<Spool, SpoolOpenError> {
        Self::open_with_files(settings, metrics, Arc::new(OsFiles))
    }

    /// [`Spool::open`] with the worker's segment I/O going through `files`
    /// (tests inject failures there).
    pub fn open_with_files(
        settings: SpoolSettings,
        metrics: SpoolMetrics,
        files: Arc<dyn FileOps>,
    ) -> Result<Spool, SpoolOpenError> {
        let dir = settings.dir.clone();
        let dir_err = |source| SpoolOpenError::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let lock = File::create(dir.join("lock")).map_err(dir_err)?;
        if lock.try_lock().is_err() {
            return Err(SpoolOpenError::Locked { dir });
        }
        let ledger = read_ledger(&dir);
        let mut ids: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(dir_err)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(parse_segment_file_name))
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        for &id in &ids {
            let path = dir.join(segment_file_name(id));
            if id > MAX_SEGMENT_ID {
                // Its records could not be tagged for acknowledgement.
                tracing::error!(segment = %path.display(), "spool segment id out of range; left in place, not replayed");
                continue;
            }
            // A ledger offset past the end of the file is stale (the id was
            // reused): ignore it rather than skip records.
            let file_len_now = std::fs::metadata(&path).map_or(0, |m| m.len());
            let from = ledger
                .iter()
                .find(|(s, _)| *s == id)
                .map(|(_, o)| *o)
                .filter(|o| *o <= file_len_now)
                .unwrap_or(SEGMENT_HEADER_LEN);
            let scan = match scan_segment(&path, from) {
                Ok(scan) => scan,
                Err(e) => {
                    metrics.corrupt_segments.inc();
                    let aside = path.with_extension("damaged");
                    tracing::error!(error = %e, moved_to = %aside.display(), "unreadable spool segment set aside");
                    let _ = std::fs::rename(&path, &aside);
                    continue;
                }
            };
            if let Some((at, damage, lost)) = scan.damage {
                metrics.corrupt_segments.inc();
                metrics.corrupt_bytes.inc_by(lost);
                tracing::error!(
                    segment = %path.display(), offset = at, %damage, lost_bytes = lost,
                    kept_records = scan.records, "damaged spool segment: replaying up to the damage"
                );
            }
            let file_len = std::fs::metadata(&path).map_or(scan.valid_len, |m| m.len());
            if scan.records == 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            total_bytes += file_len;
            let start = from.clamp(SEGMENT_HEADER_LEN, scan.valid_len);
            segments.push_back(SegmentState {
                id,
                path,
                reader: None,
                len: scan.valid_len,
                file_len,
                sealed: true,
                next_dispatch: start,
                acked_prefix: start,
                inflight: VecDeque::new(),
                retry: VecDeque::new(),
                unacked_records: scan.records,
                first_record_ms: scan.oldest_unix_ms,
                created: Instant::now(),
            });
        }
        let recovered: u64 = segments.iter().map(|s| s.unacked_records).sum();
        if recovered > 0 {
            tracing::info!(
                records = recovered,
                segments = segments.len(),
                "spool holds records from a previous run; replaying"
            );
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            pending: AtomicBool::new(recovered > 0),
            queued: AtomicUsize::new(0),
            full: AtomicBool::new(false),
            writable: AtomicBool::new(true),
        });
        // Never reuse an id the ledger still names.
        let next_id = ids
            .iter()
            .chain(ledger.iter().map(|(id, _)| id))
            .max()
            .map_or(1, |id| id + 1);
        let worker = Worker {
            settings: settings.clone(),
            rx,
            shared: shared.clone(),
            metrics,
            segments,
            files,
            writer: None,
            next_id,
            total_bytes,
            dirty: false,
            last_sync: Instant::now(),
            ledger_dirty: false,
            last_ledger: Instant::now(),
            backoff: Backoff::default(),
            round: 0,
            broker_answered: true,
            last_write_try: Instant::now(),
            dispatch_stopped: false,
            body: Vec::new(),
        };
        // The ledger from now on names only the segments that exist.
        let mut worker = worker;
        worker.write_ledger();
        // The metrics show the recovered records now, not at the worker's
        // first turn: until then `spool_records` would read 0 ("drained").
        worker.publish();
        Ok(Spool {
            handle: SpoolHandle {
                tx,
                shared,
                mode: settings.mode,
            },
            worker: Some(worker),
            thread: None,
            _lock: lock,
        })
    }

    pub fn handle(&self) -> SpoolHandle {
        self.handle.clone()
    }

    /// Starts the worker thread, sending spooled records to `dispatch`.
    pub fn start(&mut self, dispatch: Arc<dyn Dispatch>) -> Result<(), SpoolOpenError> {
        if let Some(mut worker) = self.worker.take() {
            let thread = std::thread::Builder::new()
                .name("spool".into())
                .spawn(move || worker.run(dispatch.as_ref()))
                .map_err(SpoolOpenError::Thread)?;
            self.thread = Some(thread);
        }
        Ok(())
    }

    /// Writes what is queued, fsyncs, records acknowledgements, and stops the
    /// worker. Blocking: call off the async runtime.
    pub fn shutdown(mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.handle.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.recv();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One segment's bookkeeping.
struct SegmentState {
    id: u64,
    path: PathBuf,
    reader: Option<SegmentReader>,
    /// End of the readable records.
    len: u64,
    /// Bytes on disk (counts toward `max_bytes`).
    file_len: u64,
    /// No more appends (an older segment, or one from a previous run).
    sealed: bool,
    /// Next record to hand to Kafka.
    next_dispatch: u64,
    /// Everything before this offset is acknowledged (what the ledger keeps).
    acked_prefix: u64,
    /// Records handed to Kafka, in offset order.
    inflight: VecDeque<InFlight>,
    /// Offsets of in-flight records whose delivery failed; sent again.
    retry: VecDeque<u64>,
    unacked_records: u64,
    first_record_ms: Option<u64>,
    created: Instant,
}

/// A record handed to Kafka and not yet acknowledged (or acknowledged out
/// of order, waiting for those before it).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: u64,
    end: u64,
    acked: bool,
    /// The dispatch round it was (last) sent in: failures of one round are
    /// one failed attempt, for the backoff.
    round: u64,
}

/// Replay's pause after failed deliveries, per outage rather than per
/// record: everything sent before the pause was decided belongs to the same
/// failed attempt, however many records fail; the pause grows only when
/// records sent after it fail too, up to [`Backoff::MAX`], and ends as soon
/// as a delivery succeeds or the broker answers again after not answering.
#[derive(Debug, Default)]
struct Backoff {
    delay: Duration,
    until: Option<Instant>,
    /// The last round sent when the pause was decided.
    decided_at_round: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);

    /// A record sent in `record_round` failed; `current_round` is the last
    /// round sent.
    fn on_failure(&mut self, record_round: u64, current_round: u64, now: Instant) {
        if self.until.is_some() && record_round <= self.decided_at_round {
            // Part of the attempt this pause is for.
            return;
        }
        self.delay = (self.delay * 2).clamp(Self::MIN, Self::MAX);
        self.until = Some(now + self.delay);
        self.decided_at_round = current_round;
    }

    /// The broker took a record, or answers again: no pause.
    fn reset(&mut self) {
        self.delay = Duration::ZERO;
        self.until = None;
    }

    fn pausing(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

impl SegmentState {
    fn drained(&self) -> bool {
        self.next_dispatch >= self.len && self.inflight.is_empty() && self.retry.is_empty()
    }
}

struct Worker {
    settings: SpoolSettings,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    metrics: SpoolMetrics,
    /// Oldest first; the active segment (if any) is last and not sealed.
    segments: VecDeque<SegmentState>,
    /// Segment file I/O (the OS, or a test's failing stand-in).
    files: Arc<dyn FileOps>,
    writer: Option<SegmentWriter>,
    next_id: u64,
    total_bytes: u64,
    dirty: bool,
    last_sync: Instant,
    ledger_dirty: bool,
    last_ledger: Instant,
    backoff: Backoff,
    /// Dispatch rounds (worker turns allowed to send), counted.
    round: u64,
    /// What [`Dispatch::broker_answers`] said last turn.
    broker_answered: bool,
    /// When a write was last tried (for the retry while unwritable).
    last_write_try: Instant,
    dispatch_stopped: bool,
    body: Vec<u8>,
}

type Reply = tokio::sync::oneshot::Sender<Result<(), SpoolError>>;

impl Worker {
    fn run(&mut self, dispatch: &dyn Dispatch) {
        let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut batch_records: u64 = 0;
        let mut replies: Vec<Reply> = Vec::new();
        let mut shutdown: Option<std::sync::mpsc::Sender<()>> = None;
        loop {
            let wait = if self.dirty {
                self.settings
                    .fsync_interval
                    .saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_millis(50)
            };
            let first = match self.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(cmd) => Some(cmd),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = first;
            let mut handled = 0;
            while let Some(cmd) = next {
                match cmd {
                    Command::Append { encoded, reply } => {
                        self.stage(
                            &encoded,
                            reply,
                            &mut batch,
                            &mut batch_records,
                            &mut replies,
                        );
                    }
                    Command::Acked(at) => self.on_acked(at),
                    Command::Failed { at, permanent } => self.on_failed(at, permanent),
                    Command::StopDispatch => self.dispatch_stopped = true,
                    Command::Shutdown(done) => shutdown = Some(done),
                }
                handled += 1;
                // After Shutdown, take everything still queued (late purge
                // reports) before the final write.
                next = if handled < 8192 || shutdown.is_some() {
                    self.rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut batch, &mut batch_records, &mut replies);
            if self.dirty
                && (shutdown.is_some() || self.last_sync.elapsed() >= self.settings.fsync_interval)
            {
                self.sync_or_seal();
            }
            if !self.is_writable() && self.last_write_try.elapsed() >= WRITE_RETRY_INTERVAL {
                self.try_write();
            }
            if self.ledger_dirty && self.last_ledger.elapsed() >= LEDGER_INTERVAL {
                self.write_ledger();
            }
            if !self.dispatch_stopped && shutdown.is_none() {
                self.dispatch(dispatch);
            }
            self.collect_garbage(shutdown.is_some());
            self.publish();
            if let Some(done) = shutdown.take() {
                self.sync_or_seal();
                self.write_ledger();
                let _ = done.send(());
                return;
            }
        }
        self.sync_or_seal();
        self.write_ledger();
    }

    fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
    }

    /// A segment create, write or fsync failed: counted, and the spool is
    /// unwritable (readiness false) until a write succeeds. Logged at ERROR
    /// when it stops writing, then quietly while it stays so.
    fn io_failed(&mut self, what: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.io_errors.inc();
        if self.shared.writable.swap(false, Ordering::Relaxed) {
            self.metrics.writable.set(0);
            tracing::error!(%error, "spool {what} failed: appends refused (503), not ready, until a write succeeds (tried every {WRITE_RETRY_INTERVAL:?})");
        } else {
            tracing::debug!(%error, "spool {what} failed again");
        }
    }

    /// A write (and its fsync, when answering waits for it) succeeded.
    fn wrote(&mut self) {
        if !self.shared.writable.swap(true, Ordering::Relaxed) {
            self.metrics.writable.set(1);
            tracing::info!("spool writes again");
        }
    }

    /// While unwritable, traffic or not: writes, fsyncs and removes a probe
    /// file of [`WRITE_PROBE_BYTES`], so that readiness comes back once
    /// there is room again (replay deleted segments, an operator freed
    /// space), without waiting for traffic a 503 keeps away. (Failed probes
    /// are not counted as I/O errors; they are expected until then.)
    fn try_write(&mut self) {
        self.last_write_try = Instant::now();
        let path = self.settings.dir.join(WRITE_PROBE_FILE);
        // One left by a crash mid-probe would fail the create.
        let _ = self.files.remove_file(&path);
        let files = self.files.clone();
        let result = files.create_new(&path).and_then(|mut f| {
            files.write_all(&mut f, &[0; WRITE_PROBE_BYTES])?;
            files.sync_data(&f)
        });
        let _ = files.remove_file(&path);
        match result {
            Ok(()) => self.wrote(),
            Err(e) => tracing::debug!(error = %e, "spool still cannot write"),
        }
    }

    /// fsyncs the active segment; after a failure its tail cannot be
    /// trusted for appends (the page cache may have dropped them), so it is
    /// sealed (what it holds is still replayed) and the spool is unwritable.
    fn sync_or_seal(&mut self) {
        if self.sync().is_err() {
            self.seal_active();
        }
    }

    /// Adds an encoded record to the batch being written, or refuses it.
    fn stage(
        &mut self,
        encoded: &[u8],
        reply: Option<Reply>,
        batch: &mut Vec<u8>,
        count: &mut u64,
        replies: &mut Vec<Reply>,
    ) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        let len = encoded.len() as u64;
        if self.total_bytes + batch.len() as u64 + len > self.settings.max_bytes {
            self.shared.full.store(true, Ordering::Relaxed);
            match reply {
                Some(r) => {
                    self.metrics.refused_full.inc();
                    let _ = r.send(Err(SpoolError::Full));
                }
                None => {
                    // A line already answered 204 whose delivery failed, and
                    // no room left: this is loss.
                    self.metrics.dropped_full.inc();
                    tracing::error!(
                        "spool full: an undelivered line was dropped (beacond_spool_dropped_total)"
                    );
                }
            }
            return;
        }
        let active_len = self.writer.as_ref().map_or(0, |w| w.len());
        if self.writer.is_some()
            && active_len + batch.len() as u64 + len > self.settings.segment_bytes
        {
            // Rotate: write what is batched into the current segment first.
            self.commit(batch, count, replies);
            self.seal_active();
        }
        batch.extend_from_slice(encoded);
        *count += 1;
        if let Some(r) = reply {
            replies.push(r);
        }
    }

    /// Writes the batch to the active segment and answers the appends.
    fn commit(&mut self, batch: &mut Vec<u8>, count: &mut u64, replies: &mut Vec<Reply>) {
        if batch.is_empty() {
            return;
        }
        let mut result = self.write(batch, *count);
        if result.is_err() {
            // The failed segment is sealed: one more try, in a fresh one.
            result = self.write(batch, *count);
        }
        if result.is_ok() && self.settings.fsync_interval.is_zero() {
            // fsync before answering; after a failed fsync the page cache
            // cannot be trusted, so the appends are refused.
            if let Err(e) = self.sync() {
                self.seal_active();
                result = Err(e);
            }
        }
        if result.is_ok() {
            self.wrote();
        } else {
            // Lines already answered 204 (their delivery failed) that could
            // not be written: lost, and counted as such.
            let unanswered = (*count).saturating_sub(replies.len() as u64);
            if unanswered > 0 {
                self.metrics.dropped_io.inc_by(unanswered);
                tracing::error!(
                    lines = unanswered,
                    "spool write failed: undelivered lines lost (beacond_spool_dropped_total)"
                );
            }
        }
        for r in replies.drain(..) {
            let _ = r.send(result.clone());
        }
        batch.clear();
        *count = 0;
        self.last_write_try = Instant::now();
    }

    /// Opens a new active segment unless there is one.
    fn open_segment(&mut self) -> Result<(), SpoolError> {
        if self.writer.is_none() {
            if self.next_id > MAX_SEGMENT_ID {
                if !self.segments.is_empty() {
                    tracing::error!(
                        "spool segment ids exhausted: appends refused until the spool drains"
                    );
                    return Err(SpoolError::Io("spool segment ids exhausted".into()));
                }
                // No segment left, and the ledger is rewritten to name none:
                // no id can be confused with an older one.
                tracing::info!("spool segment ids wrap around to 1");
                self.next_id = 1;
                self.write_ledger();
            }
            let id = self.next_id;
            let path = self.settings.dir.join(segment_file_name(id));
            let w = match SegmentWriter::create_with(self.files.clone(), &self.settings.dir, id) {
                Ok(w) => w,
                Err(e) => {
                    // A file left behind (its removal failed too) must not
                    // block every later try: that id is burnt.
                    if path.exists() {
                        self.next_id += 1;
                    }
                    self.io_failed("segment create", &e);
                    return Err(SpoolError::Io(e.to_string()));
                }
            };
            self.next_id += 1;
            self.total_bytes += w.len();
            self.segments.push_back(SegmentState {
                id,
                path,
                reader: None,
                len: w.len(),
                file_len: w.len(),
                sealed: false,
                next_dispatch: w.len(),
                acked_prefix: w.len(),
                inflight: VecDeque::new(),
                retry: VecDeque::new(),
                unacked_records: 0,
                first_record_ms: None,
                created: Instant::now(),
            });
            self.writer = Some(w);
        }
        Ok(())
    }

    fn write(&mut self, batch: &[u8], count: u64) -> Result<(), SpoolError> {
        self.open_segment()?;
        let Some(writer) = self.writer.as_mut() else {
            return Err(SpoolError::Closed);
        };
        if let Err(e) = writer.append(batch) {
            // Cut back to where it was (or, if that failed too, uncertain):
            // sealed there either way, and the next write opens a new one.
            self.seal_active();
            self.io_failed("write", &e);
            return Err(SpoolError::Io(e.to_string()));
        }
        let new_len = writer.len();
        self.total_bytes += batch.len() as u64;
        if let Some(state) = self.segments.back_mut() {
            state.len = new_len;
            state.file_len = new_len;
            state.unacked_records += count;
            if state.first_record_ms.is_none() {
                state.first_record_ms = Some(now_unix_ms());
            }
        }
        self.metrics.appended.inc_by(count);
        self.shared.pending.store(true, Ordering::Relaxed);
        self.dirty = true;
        Ok(())
    }

    fn seal_active(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.sync();
            if let Some(state) = self.segments.iter_mut().find(|s| s.id == w.id()) {
                state.sealed = true;
            }
        }
    }

    /// fsyncs the active segment. The ledger is written on its own timer,
    /// off the path to a reply.
    fn sync(&mut self) -> Result<(), SpoolError> {
        self.dirty = false;
        self.last_sync = Instant::now();
        let result = self.writer.as_ref().map_or(Ok(()), SegmentWriter::sync);
        if let Err(e) = result {
            self.io_failed("fsync", &e);
            return Err(SpoolError::Io(e.to_string()));
        }
        Ok(())
    }

    /// Hands records to Kafka: retries first, then in order, oldest segment first.
    fn dispatch(&mut self, dispatch: &dyn Dispatch) {
        let answers = dispatch.broker_answers();
        if answers && !self.broker_answered {
            // An outage is over: whatever it built up, replay resumes now.
            self.backoff.reset();
        }
        self.broker_answered = answers;
        if self.backoff.pausing(Instant::now()) || !dispatch.can_dispatch() {
            return;
        }
        self.round += 1;
        let round = self.round;
        let mut budget = DISPATCH_BATCH;
        let mut body = std::mem::take(&mut self.body);
        let active = self.writer.as_ref().map(|w| w.id());
        let mut seal_damaged_active = false;
        for state in self.segments.iter_mut() {
            if state.reader.is_none()
                && (state.next_dispatch < state.len || !state.retry.is_empty())
            {
                match SegmentReader::open(&state.path) {
                    Ok(r) => state.reader = Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read spool segment");
                        continue;
                    }
                }
            }
            // Taken out for the loop (so `state` can change), put back after.
            let Some(reader) = state.reader.take() else {
                continue;
            };
            let mut stop = false;
            while budget > 0 {
                let (offset, is_retry) = match state.retry.front() {
                    Some(&off) => (off, true),
                    None if state.next_dispatch < state.len => (state.next_dispatch, false),
                    None => break,
                };
                let span = match reader.read_at(offset, state.len, &mut body) {
                    Ok(Some(span)) => span,
                    Ok(None) => break,
                    Err(damage) => {
                        // Damage after the start-up scan (disk error): stop
                        // this segment's readable part here.
                        self.metrics.corrupt_segments.inc();
                        tracing::error!(segment = state.id, offset, %damage, "spool segment damaged while replaying");
                        if is_retry {
                            state.retry.pop_front();
                            mark_acked(state, offset);
                        } else {
                            state.len = offset;
                            // New appends must not land behind the damage.
                            seal_damaged_active |= Some(state.id) == active;
                        }
                        continue;
                    }
                };
                let Ok(record) = reader.decode(&body) else {
                    break;
                };
                let at = RecordLocation {
                    segment: state.id,
                    offset,
                };
                match dispatch.dispatch(&record, at) {
                    Ok(()) => {}
                    Err(DispatchError::Busy) => {
                        stop = true;
                        break;
                    }
                    Err(DispatchError::Permanent) => {
                        self.metrics.dropped_permanent.inc();
                        if is_retry {
                            state.retry.pop_front();
                            mark_acked(state, offset);
                        } else {
                            // Done with, as if acknowledged.
                            state.inflight.push_back(InFlight {
                                offset,
                                end: span.end,
                                acked: false,
                                round,
                            });
                            state.next_dispatch = span.end;
                            mark_acked(state, offset);
                        }
                        continue;
                    }
                }
                budget -= 1;
                self.metrics.replayed.inc();
                if is_retry {
                    state.retry.pop_front();
                    if let Some(r) = in_flight(state, offset) {
                        r.round = round;
                    }
                } else {
                    state.inflight.push_back(InFlight {
                        offset,
                        end: span.end,
                        acked: false,
                        round,
                    });
                    state.next_dispatch = span.end;
                }
            }
            state.reader = Some(reader);
            if stop || budget == 0 {
                break;
            }
        }
        self.body = body;
        if seal_damaged_active {
            self.seal_active();
        }
    }

    fn find(&mut self, segment: u64) -> Option<&mut SegmentState> {
        self.segments.iter_mut().find(|s| s.id == segment)
    }

    fn on_acked(&mut self, at: RecordLocation) {
        self.backoff.reset();
        if let Some(state) = self.find(at.segment) {
            if mark_acked(state, at.offset) {
                self.ledger_dirty = true;
            }
        }
    }

    fn on_failed(&mut self, at: RecordLocation, permanent: bool) {
        if permanent {
            // Counted and reported by the sink; never retried.
            self.metrics.dropped_permanent.inc();
            self.on_acked(at);
            return;
        }
        let current = self.round;
        let mut sent_in = current;
        if let Some(state) = self.find(at.segment) {
            if let Some(r) = in_flight(state, at.offset) {
                sent_in = r.round;
            }
            state.retry.push_back(at.offset);
        }
        // Once per failed attempt, however many of its records fail.
        self.backoff.on_failure(sent_in, current, Instant::now());
    }

    /// Deletes segments whose every record is acknowledged.
    fn collect_garbage(&mut self, shutting_down: bool) {
        let active = self.writer.as_ref().map(|w| w.id());
        let mut i = 0;
        while i < self.segments.len() {
            let s = &self.segments[i];
            let is_active = Some(s.id) == active;
            let deletable = s.drained()
                && (s.sealed
                    || shutting_down
                    || (is_active
                        && (s.file_len >= DRAINED_SEGMENT_BYTES
                            || s.created.elapsed() >= DRAINED_SEGMENT_AGE)));
            if !deletable {
                i += 1;
                continue;
            }
            if is_active {
                self.writer = None;
            }
            if let Some(s) = self.segments.remove(i) {
                if let Err(e) = self.files.remove_file(&s.path) {
                    tracing::warn!(error = %e, segment = %s.path.display(), "cannot delete spool segment");
                }
                self.total_bytes = self.total_bytes.saturating_sub(s.file_len);
                self.ledger_dirty = true;
            }
        }
        if self.total_bytes * 10 < self.settings.max_bytes * 9 {
            self.shared.full.store(false, Ordering::Relaxed);
        }
    }

    /// Updates the shared flags and the metrics.
    fn publish(&mut self) {
        let records: u64 = self.segments.iter().map(|s| s.unacked_records).sum();
        // New lines must queue behind records not yet handed to Kafka; once
        // all are handed over, live lines can go straight to the producer.
        let undispatched = self
            .segments
            .iter()
            .any(|s| s.next_dispatch < s.len || !s.retry.is_empty());
        self.shared.pending.store(undispatched, Ordering::Relaxed);
        self.metrics.bytes.set(self.total_bytes as i64);
        self.metrics.records.set(records as i64);
        self.metrics.segments.set(self.segments.len() as i64);
        let oldest = self
            .segments
            .iter()
            .filter(|s| s.unacked_records > 0)
            .filter_map(|s| s.first_record_ms)
            .min();
        let age = oldest.map_or(0, |ms| now_unix_ms().saturating_sub(ms) / 1000);
        self.metrics.oldest_record_age_seconds.set(age as i64);
    }

    /// The ledger: `segment-id acked-prefix-offset` per segment, replaced
    /// atomically. Lost or stale, it only causes duplicates, never loss.
    fn write_ledger(&mut self) {
        let mut text = String::new();
        for s in &self.segments {
            text.push_str(&format!("{} {}\n", s.id, s.acked_prefix));
        }
        let tmp = self.settings.dir.join("ledger.tmp");
        let result = File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_data()))
            .and_then(|_| std::fs::rename(&tmp, self.settings.dir.join("ledger")));
        match result {
            // Make the rename itself durable.
            Ok(()) => sync_dir(&self.settings.dir),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the spool ledger (restart may replay duplicates)")
            }
        }
        self.ledger_dirty = false;
        self.last_ledger = Instant::now();
    }
}

/// The in-flight entry of the record at `offset`.
fn in_flight(state: &mut SegmentState, offset: u64) -> Option<&mut InFlight> {
    let i = state
        .inflight
        .binary_search_by_key(&offset, |e| e.offset)
        .ok()?;
    state.inflight.get_mut(i)
}

/// Marks a record acknowledged; advances the segment's acked prefix.
/// Returns true when the prefix moved.
fn mark_acked(state: &mut SegmentState, offset: u64) -> bool {
    let Some(entry) = in_flight(state, offset) else {
        return false;
    };
    if entry.acked {
        return false;
    }
    entry.acked = true;
    state.unacked_records = state.unacked_records.saturating_sub(1);
    let mut moved = false;
    while let Some(&InFlight {
        end, acked: true, ..
    }) = state.inflight.front()
    {
        state.acked_prefix = end;
        state.inflight.pop_front();
        moved = true;
    }
    moved
}

/// fsyncs a directory, so that files created or renamed in it survive power loss.
pub(crate) fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot fsync the spool directory");
    }
}

fn read_ledger(dir: &Path) -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string(dir.join("ledger")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
