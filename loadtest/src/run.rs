//! The orchestration of one `loadtest` invocation: validate, probe, warm up,
//! measure (rounds, events, slow clients), drain Kafka, report.

use crate::cli::{Args, Protocol, RateArg};
use crate::corpus::{beacon_id, Corpus, CorpusConfig};
use crate::events::{EventCorpus, EventsConfig};
use crate::http::{Conn, Target};
use crate::kafka::{Checker, KafkaOptions, KafkaWatch};
use crate::load::{empty_pool, run_round, Pace, Pool, Round, RunCtx};
use crate::proxy::BrokerProxy;
use crate::report::{self, EventRecord, KafkaReport, Report};
use crate::scenario::{Action, Event, Resolved, Scenario};
use crate::schedule::{Phase, Schedule};
use crate::stats::Recorder;
use anyhow::{bail, Context};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit status when `--fail-on-loss` finds lost or duplicated beacons.
pub const EXIT_LOSS: i32 = 3;

const DEFAULT_RATE: f64 = 1000.0;
const DEFAULT_DURATION: Duration = Duration::from_secs(30);
const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
const DEFAULT_CONNECTIONS: usize = 32;
const DEFAULT_DRAIN: Duration = Duration::from_secs(60);

/// Everything decided before the first request.
struct Plan {
    mode: RateArg,
    phases: Vec<Phase>,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    drain: Duration,
    events: Vec<Event>,
    proxy: Option<(String, String)>,
    scenario: Option<Resolved>,
    invalid_fraction: f64,
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let scenario = match &args.scenario {
        None => None,
        Some(path) => {
            let s = Scenario::load(path)?;
            let base = match args.rate {
                Some(RateArg::PerSecond(r)) => Some(r),
                Some(RateArg::Max) => {
                    bail!("--rate max cannot drive a scenario; give a number (the base rate)")
                }
                None => None,
            };
            if args.duration.is_some() {
                bail!("--duration conflicts with --scenario (the scenario's phases give the duration)");
            }
            Some(s.resolve(base, args.broker_proxy.is_some())?)
        }
    };
    if scenario.is_some() && args.baseline.is_some() {
        bail!("--baseline is not supported with --scenario; compare with a fixed --rate or --rate max");
    }
    let (mode, phases) = match &scenario {
        Some(s) => (RateArg::PerSecond(s.phases[0].rate), s.phases.clone()),
        None => {
            let duration = args.duration.unwrap_or(DEFAULT_DURATION);
            if duration.is_zero() {
                bail!("--duration must be more than 0");
            }
            match args.rate.unwrap_or(RateArg::PerSecond(DEFAULT_RATE)) {
                RateArg::Max => (
                    RateArg::Max,
                    vec![Phase {
                        duration,
                        rate: 0.0,
                    }],
                ),
                RateArg::PerSecond(r) => (RateArg::PerSecond(r), vec![Phase { duration, rate: r }]),
            }
        }
    };
    let duration = phases.iter().map(|p| p.duration).sum();
    let connections = args
        .connections
        .or(scenario.as_ref().and_then(|s| s.connections))
        .unwrap_or(DEFAULT_CONNECTIONS);
    if connections == 0 || connections > 20_000 {
        bail!("--connections must be between 1 and 20000");
    }
    let proxy = args.broker_proxy.clone().or_else(|| {
        scenario.as_ref().and_then(|s| {
            s.proxy
                .as_ref()
                .map(|p| (p.listen.clone(), p.upstream.clone()))
        })
    });
    let invalid_fraction = args
        .invalid_fraction
        .or(scenario.as_ref().and_then(|s| s.invalid_fraction))
        .unwrap_or(0.0);
    if !(0.0..=1.0).contains(&invalid_fraction) {
        bail!("invalid_fraction must be between 0 and 1");
    }
    if args.round.is_zero() {
        bail!("--round must be more than 0");
    }
    Ok(Plan {
        mode,
        duration,
        warmup: args
            .warmup
            .or(scenario.as_ref().and_then(|s| s.warmup))
            .unwrap_or(DEFAULT_WARMUP),
        connections,
        drain: args
            .kafka_drain_timeout
            .or(scenario.as_ref().and_then(|s| s.kafka_drain_timeout))
            .unwrap_or(DEFAULT_DRAIN),
        events: scenario
            .as_ref()
            .map(|s| s.events.clone())
            .unwrap_or_default(),
        proxy,
        phases,
        scenario,
        invalid_fraction,
    })
}

/// CPU seconds this process has used (all threads).
fn process_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn default_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}",
        crate::rng::mix(nanos as u64 ^ u64::from(std::process::id()) << 32) as u32
    )
}

/// One request with a probe id: fails on a refused connection, a timeout, or
/// a 404 (wrong path). Retries until `wait` has passed.
async fn probe(
    target: &Target,
    corpus: &Corpus,
    events: Option<&EventCorpus>,
    run_id: &str,
    timeout: Duration,
    wait: Duration,
) -> anyhow::Result<u16> {
    let deadline = Instant::now() + wait;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        // A valid beacon if the mix has one (invalid ones may get 400 by design).
        let c = (0..10_000)
            .map(|n| corpus.choose(n))
            .find(|c| c.valid())
            .unwrap_or_else(|| corpus.choose(0));
        let mut req = Vec::new();
        match events {
            None => corpus.write_request(
                &mut req,
                &target.host,
                &target.path,
                &beacon_id(run_id, "p", attempt),
                &c,
            ),
            Some(ev) => {
                // A request of valid events only, if the mix has one.
                let n = (0..10_000)
                    .find(|&n| ev.choose(n).events.iter().all(|&t| ev.valid(t)))
                    .unwrap_or(0);
                ev.write_request(
                    &mut req,
                    &mut Vec::new(),
                    &target.host,
                    &target.path,
                    &crate::events::run_hex(run_id),
                    "p",
                    n,
                    &ev.choose(n),
                );
            }
        }
        let res = async {
            let mut conn = Conn::connect(target.addr, timeout.min(Duration::from_secs(3)))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("cannot connect to {} ({})", target.url, target.addr)
                })?;
            match tokio::time::timeout(timeout, conn.request(&req, false)).await {
                Ok(Ok(r)) => Ok(r.status),
                Ok(Err(e)) => bail!("{}: request failed ({})", target.url, e.name()),
                Err(_) => bail!("{}: no answer within {:?}", target.url, timeout),
            }
        }
        .await;
        match res {
            Ok(404) => bail!(
                "{} answered 404 to a {}: wrong path?",
                target.url,
                if events.is_some() {
                    "POST of events"
                } else {
                    "beacon"
                }
            ),
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn pace_for(plan: &Plan, phases: &[Phase], max_requests: u64) -> Pace {
    match plan.mode {
        RateArg::Max => Pace::Closed {
            duration: phases.iter().map(|p| p.duration).sum(),
            max_requests,
        },
        RateArg::PerSecond(_) => Pace::Open(Schedule::new(phases)),
    }
}

/// Runs the whole thing; returns the report and the exit status.
pub async fn run(args: Args) -> anyhow::Result<(Report, i32)> {
    let plan = plan(&args)?;
    let target = Arc::new(Target::parse(&args.target)?);
    let baseline = args
        .baseline
        .as_deref()
        .map(Target::parse)
        .transpose()?
        .map(Arc::new);
    let run_id = args.run_id.clone().unwrap_or_else(default_run_id);
    if run_id.is_empty() || !run_id.bytes().all(|b| b.is_ascii_alphanumeric()) || run_id.len() > 8 {
        bail!("--run-id must be 1 to 8 ASCII letters or digits");
    }
    let corpus = Arc::new(Corpus::new(CorpusConfig {
        seed: args.seed,
        invalid_fraction: plan.invalid_fraction,
        post_fraction: args
            .post_fraction
            .unwrap_or(CorpusConfig::default().post_fraction),
        ..CorpusConfig::default()
    }));
    let events = (args.protocol == Protocol::Events).then(|| {
        Arc::new(EventCorpus::new(EventsConfig {
            seed: args.seed,
            invalid_fraction: plan.invalid_fraction,
            batch: args.batch,
            json_fraction: args.json_fraction,
            hasty: args.hasty,
        }))
    });
    let new_ctx = || {
        let ctx = RunCtx::new(Arc::clone(&corpus), run_id.clone(), args.timeout);
        match &events {
            Some(ev) => ctx.with_events(Arc::clone(ev)),
            None => ctx,
        }
    };

    let proxy = match &plan.proxy {
        Some((listen, upstream)) => {
            let p = BrokerProxy::start(listen, upstream).await?;
            eprintln!("loadtest: broker proxy {} -> {}", p.listen, p.upstream);
            Some(Arc::new(p))
        }
        None => None,
    };
    if !plan.events.is_empty() && proxy.is_none() {
        bail!("the scenario cuts the broker but no broker proxy is configured");
    }

    // Beacons: the one topic. Events: every stream's topic and the error topic.
    let topics: Vec<String> = match (&events, &args.kafka_topic) {
        (Some(ev), _) => ev
            .streams()
            .into_iter()
            .map(|s| format!("{}{s}", args.topic_prefix))
            .chain(std::iter::once(args.error_topic.clone()))
            .collect(),
        (None, Some(t)) => vec![t.clone()],
        (None, None) => vec![],
    };
    let kafka = match &args.kafka_brokers {
        Some(brokers) if !topics.is_empty() => {
            let opts = KafkaOptions {
                brokers: brokers.clone(),
                topics: topics.clone(),
                error_topic: events.as_ref().map(|_| args.error_topic.clone()),
                connect_timeout: Duration::from_secs(10),
                from_beginning: args.kafka_from_beginning,
                read_after: args.kafka_read_after,
            };
            let checker = match &events {
                Some(ev) => Checker::Events(Arc::clone(ev)),
                None => Checker::Beacons(Arc::clone(&corpus)),
            };
            let id = run_id.clone();
            let w = tokio::task::spawn_blocking(move || KafkaWatch::start(&opts, checker, &id))
                .await??;
            eprintln!(
                "loadtest: reading {} ({} partitions) from {brokers}",
                topics.join(", "),
                w.partitions
            );
            Some(w)
        }
        _ => None,
    };

    let status = probe(
        &target,
        &corpus,
        events.as_deref(),
        &run_id,
        args.timeout,
        args.wait_target,
    )
    .await?;
    eprintln!("loadtest: target {} answers {status}", target.url);
    if let Some(b) = &baseline {
        let status = probe(
            b,
            &corpus,
            events.as_deref(),
            &run_id,
            args.timeout,
            args.wait_target,
        )
        .await?;
        eprintln!("loadtest: baseline {} answers {status}", b.url);
    }

    let mut pools: Vec<Pool> = vec![empty_pool(plan.connections), empty_pool(plan.connections)];

    // Warm-up: unmeasured, ids tagged "w".
    if !plan.warmup.is_zero() {
        eprintln!("loadtest: warming up for {:?}", plan.warmup);
        let warm_ctx = Arc::new(new_ctx());
        let warm_phases = [Phase {
            duration: plan.warmup,
            rate: plan.phases[0].rate,
        }];
        let mut endpoints = vec![Arc::clone(&target)];
        endpoints.extend(baseline.iter().cloned());
        for (i, ep) in endpoints.into_iter().enumerate() {
            let rec = Arc::new(Mutex::new(Recorder::default()));
            let round = Round {
                target: ep,
                tag: "w",
                pace: pace_for(&plan, &warm_phases, args.max_requests),
                n_base: 0,
                expect: false,
            };
            let pool = std::mem::take(&mut pools[i]);
            pools[i] = run_round(&warm_ctx, round, pool, &rec).await.0;
        }
    }

    let ctx = Arc::new(new_ctx());
    let events_log = Arc::new(Mutex::new(Vec::<EventRecord>::new()));
    let mut event_tasks = Vec::new();
    if let Some(p) = &proxy {
        for e in plan.events.clone() {
            let (p, log, origin) = (Arc::clone(p), Arc::clone(&events_log), ctx.origin);
            event_tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until((origin + e.at).into()).await;
                let action = match e.action {
                    Action::BrokerDown => {
                        p.cut(e.mode);
                        format!("broker_down ({:?})", e.mode).to_lowercase()
                    }
                    Action::BrokerUp => {
                        p.restore();
                        "broker_up".to_string()
                    }
                };
                eprintln!("loadtest: {:.1}s: {action}", origin.elapsed().as_secs_f64());
                log.lock().expect("events").push(EventRecord {
                    at_s: origin.elapsed().as_secs_f64(),
                    action,
                });
            }));
        }
    }
    let slow_task = plan
        .scenario
        .as_ref()
        .and_then(|s| s.slow.clone())
        .map(|slow| {
            let (t, c, id, origin) = (
                Arc::clone(&target),
                Arc::clone(&corpus),
                run_id.clone(),
                ctx.origin,
            );
            let until = origin + slow.stop.unwrap_or(plan.duration).min(plan.duration);
            tokio::spawn(async move {
                tokio::time::sleep_until((origin + slow.start).into()).await;
                crate::slow::run(t, c, id, slow.opts, until).await
            })
        });

    let rec_t = Arc::new(Mutex::new(Recorder::default()));
    let rec_b = Arc::new(Mutex::new(Recorder::default()));
    let cpu_at_start = process_cpu();
    eprintln!("loadtest: run {run_id}: measuring for {:?}", plan.duration);
    match &baseline {
        None => {
            let round = Round {
                target: Arc::clone(&target),
                tag: "",
                pace: pace_for(&plan, &plan.phases, args.max_requests),
                n_base: 0,
                expect: true,
            };
            let pool = std::mem::take(&mut pools[0]);
            pools[0] = run_round(&ctx, round, pool, &rec_t).await.0;
        }
        Some(b) => {
            // Alternating rounds of equal length: target, baseline, target, ...
            let mut left = plan.duration;
            let (mut n_t, mut n_b) = (0u64, 0u64);
            let rate = plan.phases[0].rate;
            while !left.is_zero() {
                let len = left.min(args.round);
                left -= len;
                let phases = [Phase {
                    duration: len,
                    rate,
                }];
                for (i, ep, tag, rec) in [(0, &target, "", &rec_t), (1, b, "b", &rec_b)] {
                    let n_base = if i == 0 { n_t } else { n_b };
                    let round = Round {
                        target: Arc::clone(ep),
                        tag,
                        pace: pace_for(&plan, &phases, args.max_requests),
                        n_base,
                        expect: i == 0,
                    };
                    let pool = std::mem::take(&mut pools[i]);
                    let (pool, used) = run_round(&ctx, round, pool, rec).await;
                    pools[i] = pool;
                    if i == 0 {
                        n_t += used;
                    } else {
                        n_b += used;
                    }
                }
            }
        }
    }
    let slow_report = match slow_task {
        Some(t) => Some(t.await.context("slow clients task")?),
        None => None,
    };
    for t in event_tasks {
        t.abort();
    }
    let generator_cpu =
        (process_cpu() - cpu_at_start) / ctx.origin.elapsed().as_secs_f64().max(1e-3);
    if let Some(p) = &proxy {
        if p.state() != crate::proxy::State::Up {
            // Whatever the scenario said, let the backlog through before draining.
            p.restore();
            eprintln!("loadtest: broker proxy restored at the end of the load");
        }
    }
    drop(pools);

    let rec_t = std::mem::take(&mut *rec_t.lock().expect("recorder"));
    let rec_b = std::mem::take(&mut *rec_b.lock().expect("recorder"));
    let summary = rec_t.summary();

    let kafka_report = match kafka {
        None => None,
        Some(w) => {
            let partitions = w.partitions;
            eprintln!(
                "loadtest: load done; waiting up to {:?} for {} acknowledged beacons in Kafka",
                plan.drain,
                rec_t.expected.len()
            );
            let expected = rec_t.expected.clone();
            let expected_errors = rec_t.expected_errors.clone();
            let (drain, linger) = (plan.drain, args.kafka_linger);
            let outcome = tokio::task::spawn_blocking(move || {
                w.finish(&expected, &expected_errors, drain, linger)
            })
            .await?;
            // Arrival times say nothing when the topic was read after the load.
            let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
            for e in rec_t.expected.iter().filter(|_| !args.kafka_read_after) {
                if let Some(o) = outcome.observed.get(&e.n) {
                    let t =
                        ((o.first_read_ms * 1000 - ctx.origin_unix_us).max(0) / 1_000_000) as u64;
                    *per_second.entry(t).or_default() += 1;
                }
            }
            Some(KafkaReport {
                brokers: args.kafka_brokers.clone().unwrap_or_default(),
                topic: topics.join(","),
                partitions,
                matched: crate::verify::match_ids(&rec_t.expected, &outcome.observed),
                error_events: events.as_ref().map(|_| {
                    crate::verify::match_ids(&rec_t.expected_errors, &outcome.observed_errors)
                }),
                reader: outcome.counts,
                sample_parse_error: outcome.sample_error,
                timeline: per_second
                    .into_iter()
                    .map(|(t, delivered)| report::KafkaSecond { t, delivered })
                    .collect(),
            })
        }
    };
    let mut timeline = report::timeline(&rec_t, "target");
    let baseline_report = baseline.as_ref().map(|b| {
        timeline.extend(report::timeline(&rec_b, "baseline"));
        report::baseline_report(&b.url, &summary, rec_b.summary())
    });
    timeline.sort_by_key(|p| (p.t, p.endpoint));
    let mut scenario_events = std::mem::take(&mut *events_log.lock().expect("events"));
    scenario_events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));

    let report = Report {
        tool: "loadtest",
        version: env!("CARGO_PKG_VERSION"),
        run_id,
        target: target.url.clone(),
        protocol: match args.protocol {
            Protocol::Beacon => "beacon",
            Protocol::Events => "events",
        },
        batch: events.as_ref().map(|_| match args.batch {
            crate::events::Batch::Single => "1".to_string(),
            crate::events::Batch::Array { min, max } if min == max => format!("[{min}]"),
            crate::events::Batch::Array { min, max } => format!("[{min}-{max}]"),
        }),
        hasty: events.is_some() && args.hasty,
        mode: match plan.mode {
            RateArg::Max => "max",
            RateArg::PerSecond(_) => "rate",
        },
        rate: match plan.mode {
            RateArg::Max => None,
            RateArg::PerSecond(r) => Some(r),
        },
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        connections: plan.connections,
        scenario: plan.scenario.as_ref().map(|s| s.name.clone()),
        invalid_fraction: plan.invalid_fraction,
        post_fraction: corpus.cfg.post_fraction,
        generator_cpu,
        summary,
        kafka: kafka_report,
        baseline: baseline_report,
        slow_clients: slow_report,
        events: scenario_events,
        timeline,
    };
    let lossy = report.kafka.as_ref().is_some_and(|k| {
        let errors_lossy = k
            .error_events
            .as_ref()
            .is_some_and(|e| e.lost > 0 || e.duplicated > 0);
        k.matched.lost > 0 || k.matched.duplicated > 0 || errors_lossy
    });
    Ok((
        report,
        if args.fail_on_loss && lossy {
            EXIT_LOSS
        } else {
            0
        },
    ))
}

/// Writes the report's files and prints the table.
pub fn emit(args: &Args, report: &Report) -> anyhow::Result<()> {
    println!("{}", report::table(report));
    if let Some(path) = &args.report_json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadtest: wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let how = match report.rate {
            Some(r) if report.mode == "rate" => format!("{r}/s"),
            _ => "max".into(),
        };
        let title = format!(
            "loadtest {} - {} {}{}",
            report.run_id,
            report.target,
            how,
            report
                .scenario
                .as_deref()
                .map(|s| format!(" - scenario {s}"))
                .unwrap_or_default()
        );
        let tmp = path.with_extension("svg.tmp");
        std::fs::write(
            &tmp,
            crate::plot::svg(
                &title,
                &report.timeline,
                report
                    .kafka
                    .as_ref()
                    .map(|k| &k.timeline[..])
                    .unwrap_or_default(),
                &report.events,
                report.duration_s,
            ),
        )
        .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadtest: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["loadtest", "--target", "http://127.0.0.1:1/beacon/event"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    fn scenario_file() -> String {
        format!("{}/scenarios/spike.toml", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn plans_defaults_and_overrides() {
        let p = plan(&args(&[])).unwrap();
        assert_eq!(p.mode, RateArg::PerSecond(DEFAULT_RATE));
        assert_eq!(p.duration, DEFAULT_DURATION);
        assert_eq!(p.connections, DEFAULT_CONNECTIONS);
        let p = plan(&args(&[
            "--rate",
            "max",
            "--duration",
            "5s",
            "--connections",
            "4",
        ]))
        .unwrap();
        assert_eq!(
            (p.mode, p.duration, p.connections),
            (RateArg::Max, Duration::from_secs(5), 4)
        );
        // A scenario's rates scale with --rate; its phases give the duration.
        let s = scenario_file();
        let p = plan(&args(&["--scenario", &s, "--rate", "100"])).unwrap();
        assert_eq!(
            p.phases.iter().map(|p| p.rate).collect::<Vec<_>>(),
            vec![100.0, 500.0, 100.0]
        );
        assert_eq!(p.duration, Duration::from_secs(30));
    }

    #[test]
    fn refuses_conflicting_flags() {
        let s = scenario_file();
        for extra in [
            &["--scenario", &s, "--duration", "5s"][..],
            &["--scenario", &s, "--baseline", "http://127.0.0.1:2/b"],
            &["--scenario", &s, "--rate", "max"],
            &["--connections", "0"],
            &["--duration", "0s"],
        ] {
            assert!(plan(&args(extra)).is_err(), "{extra:?}");
        }
    }
}
