//! The report: a table on stdout and the full result as JSON. JSON key names
//! are a contract (scripts read `sent`, `status_counts`, `transport_errors`,
//! `achieved_rate`, `latency_ms.p50/p90/p99/p999/max`, `kafka.delivered`,
//! `kafka.lost`, `kafka.duplicated`, `kafka.e2e_latency_ms.p50/p99`,
//! `baseline.*` and `baseline.ratio`).

use crate::kafka::ReaderCounts;
use crate::slow::SlowReport;
use crate::stats::{EndpointSummary, IntakeSummary, LatencySummary, Recorder};
use crate::verify::Matched;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub run_id: String,
    pub target: String,
    /// "beacon" or "events".
    pub protocol: &'static str,
    /// Events: events per request ("1": one object; "[N]" or "[A-B]": arrays).
    pub batch: Option<String>,
    /// Events: posted with `?hasty=true`.
    pub hasty: bool,
    /// "rate" (open loop) or "max" (closed loop).
    pub mode: &'static str,
    /// Requests per second asked for (first phase for scenarios); null with `max`.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub scenario: Option<String>,
    pub invalid_fraction: f64,
    pub post_fraction: f64,
    /// CPU used by loadtest itself during the measured load, in cores
    /// (near 1.0 on one pinned core: the generator may be the bottleneck).
    pub generator_cpu: f64,
    #[serde(flatten)]
    pub summary: EndpointSummary,
    pub kafka: Option<KafkaReport>,
    pub baseline: Option<BaselineReport>,
    pub slow_clients: Option<SlowReport>,
    pub events: Vec<EventRecord>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KafkaReport {
    pub brokers: String,
    pub topic: String,
    pub partitions: usize,
    /// Beacons, or valid events (on their streams' topics).
    #[serde(flatten)]
    pub matched: Matched,
    /// Events: the deliberately invalid events, expected on the error topic
    /// when their request was answered 2xx (or 400: all invalid).
    pub error_events: Option<Matched>,
    pub reader: ReaderCounts,
    pub sample_parse_error: Option<String>,
    /// Acknowledged beacons first read from Kafka, per second of the run.
    pub timeline: Vec<KafkaSecond>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct KafkaSecond {
    pub t: u64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub target: String,
    #[serde(flatten)]
    pub summary: EndpointSummary,
    /// Target ok_rate / baseline ok_rate (2xx answers per second). With
    /// `--rate max` this is the throughput ratio.
    pub ratio: f64,
    /// Target latency / baseline latency.
    pub latency_ratio: LatencyRatio,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRatio {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub at_s: f64,
    pub action: String,
}

/// One second of one endpoint (by completion time, from the start of the
/// measured run).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelinePoint {
    pub t: u64,
    pub endpoint: &'static str,
    pub completed: u64,
    pub ok: u64,
    pub non_ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn timeline(rec: &Recorder, endpoint: &'static str) -> Vec<TimelinePoint> {
    rec.timeline
        .iter()
        .map(|(&t, s)| {
            let l = LatencySummary::from_us(&s.latency);
            TimelinePoint {
                t,
                endpoint,
                completed: s.completed,
                ok: s.ok,
                non_ok: s.non_ok,
                errors: s.errors,
                p50_ms: l.p50,
                p99_ms: l.p99,
                max_ms: l.max,
            }
        })
        .collect()
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

pub fn baseline_report(
    url: &str,
    target: &EndpointSummary,
    base: EndpointSummary,
) -> BaselineReport {
    BaselineReport {
        target: url.to_string(),
        ratio: ratio(target.ok_rate, base.ok_rate),
        latency_ratio: LatencyRatio {
            p50: ratio(target.latency_ms.p50, base.latency_ms.p50),
            p99: ratio(target.latency_ms.p99, base.latency_ms.p99),
        },
        summary: base,
    }
}

fn statuses(s: &EndpointSummary) -> String {
    if s.status_counts.is_empty() {
        return "-".into();
    }
    s.status_counts
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn lat(l: &LatencySummary) -> [String; 5] {
    [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| format!("{v:.3}"))
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let how = match r.rate {
        Some(rate) if r.mode == "rate" => format!("open loop at {rate}/s"),
        _ => "closed loop (max)".to_string(),
    };
    let _ = writeln!(
        out,
        "\nloadtest run {} - {} for {:.1}s, {} connections{}",
        r.run_id,
        how,
        r.duration_s,
        r.connections,
        r.scenario
            .as_deref()
            .map(|s| format!(", scenario {s}"))
            .unwrap_or_default()
    );
    let cols: Vec<(&str, &EndpointSummary)> = match &r.baseline {
        Some(b) => vec![("target", &r.summary), ("baseline", &b.summary)],
        None => vec![("target", &r.summary)],
    };
    let _ = writeln!(out, "  target   {}", r.target);
    if r.protocol == "events" {
        let _ = writeln!(
            out,
            "  events   per request {}{}",
            r.batch.as_deref().unwrap_or("1"),
            if r.hasty { ", hasty" } else { "" }
        );
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(out, "  baseline {}", b.target);
    }
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&EndpointSummary) -> String| {
        rows.push((name.to_string(), cols.iter().map(|(_, s)| f(s)).collect()));
    };
    row("sent", &|s| s.sent.to_string());
    row("responses/s", &|s| format!("{:.1}", s.achieved_rate));
    row("2xx/s", &|s| format!("{:.1}", s.ok_rate));
    row("status", &statuses);
    row("transport errors", &|s| s.transport_errors.to_string());
    row("unsent (overrun)", &|s| s.unsent.to_string());
    let names = ["p50", "p90", "p99", "p99.9", "max"];
    for (i, n) in names.iter().enumerate() {
        row(&format!("latency {n} ms"), &|s| {
            lat(&s.latency_ms)[i].clone()
        });
    }
    row("service p50/p99 ms", &|s| {
        format!("{:.3}/{:.3}", s.service_time_ms.p50, s.service_time_ms.p99)
    });
    row("send delay p99 ms", &|s| {
        format!("{:.3}", s.send_delay_ms.p99)
    });
    row("invalid sent/accepted", &|s| {
        format!("{}/{}", s.invalid_sent, s.invalid_accepted)
    });
    row("valid rejected (4xx)", &|s| s.valid_rejected.to_string());
    if r.protocol == "events" {
        let intake = |s: &EndpointSummary, f: &dyn Fn(&IntakeSummary) -> String| {
            s.intake.as_ref().map_or_else(|| "-".to_string(), f)
        };
        row("events sent/invalid", &|s| {
            intake(s, &|i| {
                format!("{}/{}", i.events_sent, i.invalid_events_sent)
            })
        });
        row("events/s", &|s| {
            intake(s, &|i| format!("{:.1}", i.event_rate))
        });
        row("unexpected status", &|s| {
            intake(s, &|i| i.unexpected_status.to_string())
        });
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .flat_map(|r| r.1.iter().map(String::len))
        .max()
        .unwrap_or(0)
        .max(8);
    let _ = write!(out, "\n  {:w0$}", "");
    for (name, _) in &cols {
        let _ = write!(out, "  {name:>w1$}");
    }
    out.push('\n');
    for (name, vals) in &rows {
        let _ = write!(out, "  {name:w0$}");
        for v in vals {
            let _ = write!(out, "  {v:>w1$}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n  loadtest used {:.0}% of a core while loading{}",
        r.generator_cpu * 100.0,
        if r.generator_cpu > 0.85 {
            " (it may have been the bottleneck)"
        } else {
            ""
        }
    );
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            out,
            "\n  ratio target/baseline: 2xx/s {:.3}, latency p50 {:.2}x, p99 {:.2}x",
            b.ratio, b.latency_ratio.p50, b.latency_ratio.p99
        );
    }
    if let Some(k) = &r.kafka {
        let m = &k.matched;
        let _ = writeln!(
            out,
            "\n  kafka {} ({} partitions): acknowledged {}, delivered {}, LOST {}, duplicated {}, corrupted {}, ip/ua mismatch {}/{}",
            k.topic, k.partitions, m.expected, m.delivered, m.lost, m.duplicated, m.corrupted, m.ip_mismatch, m.ua_mismatch
        );
        let _ = writeln!(
            out,
            "  kafka e2e latency ms (scheduled send -> Kafka timestamp): p50 {:.1} p99 {:.1} max {:.1}; \
             -> read by loadtest: p50 {:.1} p99 {:.1}; drained in {:.1}s{}",
            m.e2e_latency_ms.p50,
            m.e2e_latency_ms.p99,
            m.e2e_latency_ms.max,
            m.read_latency_ms.p50,
            m.read_latency_ms.p99,
            k.reader.drain_s,
            if k.reader.complete { "" } else { " (TIMED OUT)" }
        );
        if let Some(e) = &k.error_events {
            let _ = writeln!(
                out,
                "  kafka error topic: invalid events expected {}, delivered {}, LOST {}, duplicated {}, changed {}; \
                 events read {}, error events read {}, misrouted {}, raw_event cut {}",
                e.expected,
                e.delivered,
                e.lost,
                e.duplicated,
                e.corrupted,
                k.reader.events,
                k.reader.error_events,
                k.reader.misrouted,
                k.reader.raw_event_cut
            );
        }
        let _ = writeln!(
            out,
            "  kafka messages read {} (varnishkafka {}, json {}), other runs {}, unparsable {}, unacknowledged but delivered {}",
            k.reader.messages,
            k.reader.varnishkafka,
            k.reader.json,
            k.reader.foreign,
            k.reader.unparsable,
            m.unacknowledged_delivered
        );
    }
    if let Some(s) = &r.slow_clients {
        let _ = writeln!(
            out,
            "\n  slow clients ({}): opened {}, closed by server {} (after p50 {:.0} ms), completed {}, still open at end {}",
            s.connections, s.opened, s.closed_by_server, s.time_to_close_ms.p50, s.completed, s.open_at_end
        );
    }
    for e in &r.events {
        let _ = writeln!(out, "  event at {:.1}s: {}", e.at_s, e.action);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use std::time::Duration;

    fn summary(latency_ms: u64, n: u64) -> EndpointSummary {
        let mut r = Recorder::default();
        for _ in 0..n {
            r.record(&Outcome {
                valid: true,
                post: true,
                send_delay: Duration::ZERO,
                service: Duration::from_millis(latency_ms),
                result: Ok(204),
                second: 0,
            });
        }
        r.active = Duration::from_secs(1);
        r.summary()
    }

    #[test]
    fn json_has_the_contract_keys() {
        let target = summary(2, 100);
        let base = baseline_report("http://127.0.0.1:2/b", &target, summary(1, 200));
        assert!((base.ratio - 0.5).abs() < 1e-9);
        assert!((base.latency_ratio.p50 - 2.0).abs() < 0.01);
        let r = Report {
            tool: "loadtest",
            version: "0",
            run_id: "r".into(),
            target: "http://127.0.0.1:1/b".into(),
            protocol: "beacon",
            batch: None,
            hasty: false,
            mode: "rate",
            rate: Some(100.0),
            duration_s: 1.0,
            warmup_s: 0.0,
            connections: 1,
            scenario: None,
            invalid_fraction: 0.0,
            post_fraction: 0.75,
            generator_cpu: 0.5,
            summary: target,
            kafka: Some(KafkaReport {
                brokers: "b".into(),
                topic: "t".into(),
                partitions: 1,
                matched: crate::verify::match_ids(&[], &Default::default()),
                error_events: None,
                reader: ReaderCounts::default(),
                sample_parse_error: None,
                timeline: vec![],
            }),
            baseline: Some(base),
            slow_clients: None,
            events: vec![],
            timeline: vec![],
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "sent",
            "status_counts",
            "transport_errors",
            "achieved_rate",
            "latency_ms",
            "kafka",
            "baseline",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][k].is_number(), "{k}");
            assert!(v["baseline"]["latency_ms"][k].is_number(), "{k}");
        }
        assert_eq!(v["status_counts"]["204"], 100);
        for k in ["delivered", "lost", "duplicated"] {
            assert!(v["kafka"][k].is_number(), "{k}");
        }
        assert!(v["kafka"]["e2e_latency_ms"]["p50"].is_number());
        assert!(v["kafka"]["e2e_latency_ms"]["p99"].is_number());
        assert!(v["baseline"]["ratio"].is_number());
        assert_eq!(v["baseline"]["sent"], 200);
        let t = table(&r);
        assert!(
            t.contains("latency p99 ms") && t.contains("baseline") && t.contains("LOST 0"),
            "{t}"
        );
    }
}
