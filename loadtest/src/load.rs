//! The load loops.
//!
//! * Open loop ([`Pace::Open`]): a pacer thread releases request numbers at
//!   their scheduled times, each to an idle worker or, when all are busy, into
//!   a backlog; `connections` workers, each owning one keep-alive connection,
//!   take the next due number as soon as they are free.
//!   Latency runs from the scheduled time, so a stalled server is charged for
//!   every request that waited behind it (no coordinated omission).
//! * Closed loop ([`Pace::Closed`], `--rate max`): each worker sends its next
//!   request as soon as the previous one is answered.
//!
//! Both stop by themselves: the schedule is finite, the closed loop has a
//! deadline and a request cap, and every request has a timeout.

use crate::corpus::{beacon_id, Corpus};
use crate::events::{event_key, run_hex, EventCorpus};
use crate::http::{Conn, Target, TransportError};
use crate::schedule::Schedule;
use crate::stats::{Outcome, Recorder};
use crate::verify::Expected;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What every round of a run shares.
pub struct RunCtx {
    pub corpus: Arc<Corpus>,
    /// Prefix of every beacon id of this run.
    pub run_id: String,
    /// Timeline second 0.
    pub origin: Instant,
    pub origin_unix_us: i64,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Events mode: the event traffic (beacons otherwise).
    pub events: Option<Arc<EventCorpus>>,
    /// The run in event ids.
    pub run_hex: String,
}

impl RunCtx {
    pub fn new(corpus: Arc<Corpus>, run_id: String, timeout: Duration) -> Self {
        let origin = Instant::now();
        let origin_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        RunCtx {
            corpus,
            origin,
            origin_unix_us,
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(3)),
            events: None,
            run_hex: run_hex(&run_id),
            run_id,
        }
    }

    /// Sends events (`POST`, JSON body) instead of beacons.
    pub fn with_events(mut self, events: Arc<EventCorpus>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn unix_us(&self, t: Instant) -> i64 {
        if t >= self.origin {
            self.origin_unix_us + (t - self.origin).as_micros() as i64
        } else {
            self.origin_unix_us - (self.origin - t).as_micros() as i64
        }
    }

    pub fn second_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_secs()
    }
}

#[derive(Debug, Clone)]
pub enum Pace {
    Open(Schedule),
    Closed {
        duration: Duration,
        max_requests: u64,
    },
}

/// One round against one endpoint.
pub struct Round {
    pub target: Arc<Target>,
    /// Id tag: "" for measured beacons, "w" warm-up, "b" baseline.
    pub tag: &'static str,
    pub pace: Pace,
    /// Number of the first request (ids continue across rounds).
    pub n_base: u64,
    /// Record acknowledged valid beacons as expected in Kafka.
    pub expect: bool,
}

/// Keep-alive connections carried from one round to the next.
pub type Pool = Vec<Option<Conn>>;

/// Runs one round; returns the connections and the number of requests used.
pub async fn run_round(
    ctx: &Arc<RunCtx>,
    round: Round,
    pool: Pool,
    rec: &Arc<Mutex<Recorder>>,
) -> (Pool, u64) {
    let round = Arc::new(round);
    let started = Instant::now();
    let (pool, used) = match &round.pace {
        Pace::Open(schedule) => run_open(ctx, &round, schedule.clone(), pool, rec).await,
        Pace::Closed {
            duration,
            max_requests,
        } => run_closed(ctx, &round, *duration, *max_requests, pool, rec).await,
    };
    let planned = match &round.pace {
        Pace::Open(s) => s.duration(),
        Pace::Closed { duration, .. } => *duration,
    };
    // Rates are per planned second; a round that overran (a stalled server)
    // counts the overrun too.
    rec.lock().expect("recorder").active +=
        started.elapsed().max(planned).min(planned + ctx.timeout);
    (pool, used)
}

/// Hand-off between the pacer and the workers: a due request goes straight to
/// an idle worker (one wake-up), or waits in the backlog for the next worker
/// that finishes. No worker idles while a due request waits.
struct Dispatch {
    state: Mutex<DispatchState>,
    workers: Mutex<Vec<mpsc::UnboundedSender<u64>>>,
}

struct DispatchState {
    /// Workers waiting for a request (a stack: the warmest connection first).
    idle: Vec<usize>,
    /// Due requests no worker was free for.
    backlog: std::collections::VecDeque<u64>,
    /// The pacer has released everything.
    done: bool,
}

impl Dispatch {
    /// Pacer side: hands `i` to an idle worker or queues it.
    fn release(&self, i: u64) {
        let mut st = self.state.lock().expect("dispatch");
        match st.idle.pop() {
            Some(w) => {
                drop(st);
                let _ = self.workers.lock().expect("dispatch")[w].send(i);
            }
            None => st.backlog.push_back(i),
        }
    }

    /// Pacer side: nothing more will come; idle workers stop.
    fn close(&self) {
        self.state.lock().expect("dispatch").done = true;
        self.workers.lock().expect("dispatch").clear();
    }

    /// Worker side: the next request, waiting if none is due yet.
    async fn next(&self, me: usize, rx: &mut mpsc::UnboundedReceiver<u64>) -> Option<u64> {
        {
            let mut st = self.state.lock().expect("dispatch");
            if let Some(i) = st.backlog.pop_front() {
                return Some(i);
            }
            if st.done {
                return None;
            }
            st.idle.push(me);
        }
        rx.recv().await
    }
}

async fn run_open(
    ctx: &Arc<RunCtx>,
    round: &Arc<Round>,
    schedule: Schedule,
    pool: Pool,
    rec: &Arc<Mutex<Recorder>>,
) -> (Pool, u64) {
    let total = schedule.total();
    rec.lock().expect("recorder").scheduled += total;
    let mut receivers = Vec::with_capacity(pool.len());
    let mut senders = Vec::with_capacity(pool.len());
    for _ in 0..pool.len() {
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        senders.push(tx);
        receivers.push(rx);
    }
    let dispatch = Arc::new(Dispatch {
        state: Mutex::new(DispatchState {
            idle: Vec::with_capacity(pool.len()),
            backlog: std::collections::VecDeque::new(),
            done: false,
        }),
        workers: Mutex::new(senders),
    });
    let start = Instant::now() + Duration::from_millis(5);
    let hard_deadline = start + schedule.duration() + ctx.timeout;
    let schedule = Arc::new(schedule);
    let stop = Arc::new(AtomicBool::new(false));
    let pacer = {
        let (schedule, stop, dispatch) = (
            Arc::clone(&schedule),
            Arc::clone(&stop),
            Arc::clone(&dispatch),
        );
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                pace(&schedule, start, &dispatch, &stop);
                dispatch.close();
            })
            .expect("spawn pacer thread")
    };
    let mut handles = Vec::with_capacity(pool.len());
    for (me, (conn, mut rx)) in pool.into_iter().zip(receivers).enumerate() {
        let (ctx, round, rec, dispatch, schedule) = (
            Arc::clone(ctx),
            Arc::clone(round),
            Arc::clone(rec),
            Arc::clone(&dispatch),
            Arc::clone(&schedule),
        );
        handles.push(tokio::spawn(async move {
            let mut w = Worker::new(conn);
            while let Some(i) = dispatch.next(me, &mut rx).await {
                let sched = start + schedule.offset_of(i);
                if Instant::now() > hard_deadline {
                    rec.lock().expect("recorder").unsent += 1;
                    continue;
                }
                w.one(&ctx, &round, round.n_base + i, sched, &rec).await;
            }
            w.conn
        }));
    }
    let mut pool = Vec::with_capacity(handles.len());
    for h in handles {
        pool.push(h.await.unwrap_or(None));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    (pool, total)
}

/// The pacer: releases request numbers when they are due, sleeping in
/// between with a 1 ns timer slack (no spinning: the core is shared).
fn pace(schedule: &Schedule, start: Instant, dispatch: &Dispatch, stop: &AtomicBool) {
    set_fine_timer_slack();
    let total = schedule.total();
    let mut next = 0;
    while next < total && !stop.load(Ordering::Relaxed) {
        let due = schedule.due_until(next, Instant::now().saturating_duration_since(start));
        for i in due.clone() {
            dispatch.release(i);
        }
        next = due.end;
        if next < total {
            let t = start + schedule.offset_of(next);
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
    }
}

fn set_fine_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

async fn run_closed(
    ctx: &Arc<RunCtx>,
    round: &Arc<Round>,
    duration: Duration,
    max_requests: u64,
    pool: Pool,
    rec: &Arc<Mutex<Recorder>>,
) -> (Pool, u64) {
    let end = Instant::now() + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(pool.len());
    for conn in pool {
        let (ctx, round, rec, counter) = (
            Arc::clone(ctx),
            Arc::clone(round),
            Arc::clone(rec),
            Arc::clone(&counter),
        );
        handles.push(tokio::spawn(async move {
            let mut w = Worker::new(conn);
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                w.one(&ctx, &round, round.n_base + i, Instant::now(), &rec)
                    .await;
            }
            w.conn
        }));
    }
    let mut pool = Vec::with_capacity(handles.len());
    for h in handles {
        pool.push(h.await.unwrap_or(None));
    }
    let used = counter.load(Ordering::Relaxed).min(max_requests);
    // In a closed loop every request is "scheduled" when it is sent.
    let mut r = rec.lock().expect("recorder");
    r.scheduled = r.sent;
    drop(r);
    (pool, used)
}

struct Worker {
    conn: Option<Conn>,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Worker {
    fn new(conn: Option<Conn>) -> Self {
        Worker {
            conn,
            buf: Vec::with_capacity(4096),
            body: Vec::new(),
        }
    }

    /// Sends request `n`, scheduled at `sched`, and records the outcome.
    async fn one(
        &mut self,
        ctx: &RunCtx,
        round: &Round,
        n: u64,
        sched: Instant,
        rec: &Mutex<Recorder>,
    ) {
        self.buf.clear();
        // What is sent: (valid, POST, for events the choice and the status EventGate gives).
        let (valid, post, events) = match &ctx.events {
            None => {
                let choice = ctx.corpus.choose(n);
                let id = beacon_id(&ctx.run_id, round.tag, n);
                ctx.corpus.write_request(
                    &mut self.buf,
                    &round.target.host,
                    &round.target.path,
                    &id,
                    &choice,
                );
                (choice.valid(), choice.post, None)
            }
            Some(ev) => {
                let choice = ev.choose(n);
                ev.write_request(
                    &mut self.buf,
                    &mut self.body,
                    &round.target.host,
                    &round.target.path,
                    &ctx.run_hex,
                    round.tag,
                    n,
                    &choice,
                );
                let status = ev.expected_status(&choice);
                (
                    (200..300).contains(&status),
                    true,
                    Some((ev, choice, status)),
                )
            }
        };
        let mut retries = 0;
        let mut sent_at = Instant::now();
        let result = loop {
            if self.conn.is_none() {
                match Conn::connect(round.target.addr, ctx.connect_timeout).await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        // Do not spin on a dead target.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        break Err(e);
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected");
            if retries == 0 {
                sent_at = Instant::now();
            }
            let r = match tokio::time::timeout(ctx.timeout, conn.request(&self.buf, false)).await {
                Ok(r) => r,
                Err(_) => Err(TransportError::Timeout),
            };
            match r {
                Ok(resp) => {
                    if resp.close {
                        self.conn = None;
                    }
                    break Ok(resp.status);
                }
                // A keep-alive connection the server had closed while idle:
                // reconnect and resend once, as browsers do.
                Err(TransportError::Closed) if retries == 0 => {
                    self.conn = None;
                    retries += 1;
                }
                Err(e) => {
                    self.conn = None;
                    break Err(if e == TransportError::Closed {
                        TransportError::Io
                    } else {
                        e
                    });
                }
            }
        };
        let done = Instant::now();
        let outcome = Outcome {
            valid,
            post,
            send_delay: sent_at.saturating_duration_since(sched),
            service: done.saturating_duration_since(sent_at),
            result,
            second: ctx.second_of(done),
        };
        let mut r = rec.lock().expect("recorder");
        r.retries += retries;
        r.record(&outcome);
        let ok = matches!(result, Ok(s) if (200..300).contains(&s));
        let sched_unix_us = ctx.unix_us(sched);
        match events {
            None => {
                if round.expect && valid && ok {
                    r.expected.push(Expected { n, sched_unix_us });
                }
            }
            Some((ev, choice, status)) => {
                r.events_sent += choice.events.len() as u64;
                let invalid = choice.events.iter().filter(|&&t| !ev.valid(t)).count();
                r.invalid_events_sent += invalid as u64;
                if matches!(result, Ok(s) if s != status && s != 503) {
                    r.unexpected_status += 1;
                }
                // Processed: valid events are on their way to their streams'
                // topics, invalid ones to the error topic (a 400 says all
                // were invalid; they are still written as error events).
                let processed = ok || (status == 400 && result == Ok(400));
                if round.expect && processed {
                    for (j, &t) in choice.events.iter().enumerate() {
                        let e = Expected {
                            n: event_key(n, j),
                            sched_unix_us,
                        };
                        if ev.valid(t) {
                            r.expected.push(e);
                        } else {
                            r.expected_errors.push(e);
                        }
                    }
                }
            }
        }
    }
}

/// `connections` empty slots: workers connect on first use.
pub fn empty_pool(connections: usize) -> Pool {
    (0..connections).map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::CorpusConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A keep-alive server answering 204, which stalls once for `stall`
    /// before answering its `stall_at`-th request.
    async fn stalling_server(stall_at: usize, stall: Duration) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut got = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            if count.fetch_add(1, Ordering::SeqCst) as usize == stall_at {
                                tokio::time::sleep(stall).await;
                            }
                            if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn ctx() -> Arc<RunCtx> {
        let corpus = Arc::new(Corpus::new(CorpusConfig::default()));
        Arc::new(RunCtx::new(corpus, "test".into(), Duration::from_secs(5)))
    }

    fn target(addr: std::net::SocketAddr) -> Arc<Target> {
        Arc::new(Target::parse(&format!("http://{addr}/beacon/event")).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_charges_a_stall_to_every_request_behind_it() {
        // 200/s for 2 s on ONE connection; the server stalls 500 ms at request 100.
        // A closed-loop tool would record one slow request; the open loop must
        // record the ~100 requests scheduled during the stall as slow too.
        let addr = stalling_server(100, Duration::from_millis(500)).await;
        let ctx = ctx();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let round = Round {
            target: target(addr),
            tag: "",
            pace: Pace::Open(Schedule::constant(200.0, Duration::from_secs(2))),
            n_base: 0,
            expect: true,
        };
        let (pool, used) = run_round(&ctx, round, empty_pool(1), &rec).await;
        assert_eq!(used, 400);
        assert_eq!(pool.len(), 1);
        let r = rec.lock().unwrap();
        assert_eq!(r.sent, 400);
        assert_eq!(r.status_counts[&204], 400);
        assert_eq!(r.expected.len(), 400);
        let over_250ms = r.latency.count_between(250_000, u64::MAX);
        assert!(
            over_250ms >= 40,
            "requests charged with the stall: {over_250ms}"
        );
        assert!(r.latency.max() >= 480_000, "max {}", r.latency.max());
        // ...while the server itself answered all but one quickly.
        let slow_service = r.service.count_between(250_000, u64::MAX);
        assert!(slow_service <= 2, "{slow_service}");
        // The schedule did not slide: the run took ~2 s, not 2.5 s.
        // (Loose: a busy CI machine may add some delay, but not another 2 s.)
        assert!(r.active < Duration::from_millis(4000), "{:?}", r.active);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_keeps_the_rate_and_ids() {
        let addr = stalling_server(usize::MAX, Duration::ZERO).await;
        let ctx = ctx();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let round = Round {
            target: target(addr),
            tag: "",
            pace: Pace::Open(Schedule::constant(500.0, Duration::from_secs(1))),
            n_base: 1000,
            expect: true,
        };
        let started = Instant::now();
        let _ = run_round(&ctx, round, empty_pool(4), &rec).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took < Duration::from_millis(3000),
            "{took:?}"
        );
        let r = rec.lock().unwrap();
        assert_eq!(r.sent, 500);
        let mut ns: Vec<u64> = r.expected.iter().map(|e| e.n).collect();
        ns.sort_unstable();
        assert_eq!(ns, (1000..1500).collect::<Vec<_>>());
        // The pacer is on time: the median request left within 2 ms of its
        // scheduled time (loose enough for a loaded CI machine).
        let median = r.send_delay.value_at_quantile(0.5);
        assert!(median < 2_000, "median send delay {median} us");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_is_bounded_and_counts_errors() {
        let addr = stalling_server(usize::MAX, Duration::ZERO).await;
        let ctx = ctx();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let round = Round {
            target: target(addr),
            tag: "b",
            pace: Pace::Closed {
                duration: Duration::from_secs(5),
                max_requests: 300,
            },
            n_base: 0,
            expect: false,
        };
        let (_, used) = run_round(&ctx, round, empty_pool(3), &rec).await;
        assert_eq!(used, 300);
        assert_eq!(rec.lock().unwrap().sent, 300);
        assert!(rec.lock().unwrap().expected.is_empty());

        // A dead target: connect errors, no hang.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let round = Round {
            target: target(dead),
            tag: "",
            pace: Pace::Open(Schedule::constant(100.0, Duration::from_millis(200))),
            n_base: 0,
            expect: true,
        };
        let _ = run_round(&ctx, round, empty_pool(2), &rec).await;
        let r = rec.lock().unwrap();
        assert_eq!(r.transport_errors[&TransportError::Connect], 20);
        assert!(r.expected.is_empty());
    }
}
