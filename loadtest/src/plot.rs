//! The picture: latency percentiles (log scale) and throughput per second,
//! target and baseline, with broker events marked. Plain SVG written by hand.

use crate::report::{EventRecord, KafkaSecond, TimelinePoint};
use std::fmt::Write as _;

const W: f64 = 1000.0;
const H: f64 = 640.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const LAT_TOP: f64 = 50.0;
const LAT_BOTTOM: f64 = 330.0;
const TPUT_TOP: f64 = 390.0;
const TPUT_BOTTOM: f64 = 590.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    dashed: bool,
    width: f64,
    points: Vec<(u64, f64)>,
}

/// Per-second values of one endpoint.
fn series(
    points: &[TimelinePoint],
    endpoint: &str,
    f: impl Fn(&TimelinePoint) -> Option<f64>,
) -> Vec<(u64, f64)> {
    points
        .iter()
        .filter(|p| p.endpoint == endpoint)
        .filter_map(|p| f(p).map(|v| (p.t, v)))
        .collect()
}

/// Per-second counts of one endpoint, without the partial second at the end
/// of each round or run (a few stragglers after the schedule ended, which
/// would look like a stall).
fn throughput(
    points: &[TimelinePoint],
    endpoint: &str,
    f: impl Fn(&TimelinePoint) -> u64,
) -> Vec<(u64, f64)> {
    let mine: Vec<&TimelinePoint> = points.iter().filter(|p| p.endpoint == endpoint).collect();
    let mut out = Vec::with_capacity(mine.len());
    for (i, p) in mine.iter().enumerate() {
        let last_of_run = mine.get(i + 1).is_none_or(|next| next.t != p.t + 1);
        let prev = i.checked_sub(1).map(|j| mine[j]).filter(|q| q.t + 1 == p.t);
        let partial = last_of_run && prev.is_some_and(|q| p.completed * 2 < q.completed);
        if !partial {
            out.push((p.t, f(p) as f64));
        }
    }
    out
}

/// Polylines, broken where a second is missing (the other endpoint's round).
fn draw(out: &mut String, s: &Series<'_>, x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64) {
    let dash = if s.dashed {
        " stroke-dasharray=\"6 3\""
    } else {
        ""
    };
    let mut run: Vec<(u64, f64)> = Vec::new();
    let flush = |out: &mut String, run: &mut Vec<(u64, f64)>| {
        if run.is_empty() {
            return;
        }
        if run.len() == 1 {
            let (t, v) = run[0];
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}"/>"#,
                x(t as f64 + 0.5),
                y(v),
                s.color
            );
        } else {
            let pts: Vec<String> = run
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="{}"{} points="{}"/>"#,
                s.color,
                s.width,
                dash,
                pts.join(" ")
            );
        }
        run.clear();
    };
    for &(t, v) in &s.points {
        if let Some(&(last, _)) = run.last() {
            if t != last + 1 {
                flush(out, &mut run);
            }
        }
        run.push((t, v));
    }
    flush(out, &mut run);
}

fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

pub fn svg(
    title: &str,
    points: &[TimelinePoint],
    kafka: &[KafkaSecond],
    events: &[EventRecord],
    duration_s: f64,
) -> String {
    let has_baseline = points.iter().any(|p| p.endpoint == "baseline");

    let pos = |v: f64| if v > 0.0 { Some(v) } else { None };
    let mut lat = vec![
        Series {
            label: "p50",
            color: "#1f77b4",
            dashed: false,
            width: 2.0,
            points: series(points, "target", |p| pos(p.p50_ms)),
        },
        Series {
            label: "p99",
            color: "#ff7f0e",
            dashed: false,
            width: 2.0,
            points: series(points, "target", |p| pos(p.p99_ms)),
        },
        Series {
            label: "max",
            color: "#d62728",
            dashed: false,
            width: 1.0,
            points: series(points, "target", |p| pos(p.max_ms)),
        },
    ];
    let mut tput = vec![
        Series {
            label: "2xx/s",
            color: "#2ca02c",
            dashed: false,
            width: 2.0,
            points: throughput(points, "target", |p| p.ok),
        },
        Series {
            label: "non-2xx/s",
            color: "#ff7f0e",
            dashed: false,
            width: 1.5,
            points: throughput(points, "target", |p| p.non_ok),
        },
        Series {
            label: "errors/s",
            color: "#d62728",
            dashed: false,
            width: 1.5,
            points: throughput(points, "target", |p| p.errors),
        },
    ];
    if has_baseline {
        lat.push(Series {
            label: "baseline p50",
            color: "#7f7f7f",
            dashed: true,
            width: 1.5,
            points: series(points, "baseline", |p| pos(p.p50_ms)),
        });
        lat.push(Series {
            label: "baseline p99",
            color: "#9467bd",
            dashed: true,
            width: 1.5,
            points: series(points, "baseline", |p| pos(p.p99_ms)),
        });
        tput.push(Series {
            label: "baseline 2xx/s",
            color: "#7f7f7f",
            dashed: true,
            width: 1.5,
            points: throughput(points, "baseline", |p| p.ok),
        });
    }

    if !kafka.is_empty() {
        tput.push(Series {
            label: "into Kafka/s",
            color: "#17becf",
            dashed: false,
            width: 1.5,
            // Zero-filled: a stall shows as a drop to zero, not a gap.
            points: {
                let last = kafka.iter().map(|k| k.t).max().unwrap_or(0);
                let by_t: std::collections::BTreeMap<u64, u64> =
                    kafka.iter().map(|k| (k.t, k.delivered)).collect();
                (0..=last)
                    .map(|t| (t, by_t.get(&t).copied().unwrap_or(0) as f64))
                    .collect()
            },
        });
    }
    // Time: the scheduled duration, or longer if answers or Kafka ran late.
    let last = lat
        .iter()
        .chain(&tput)
        .flat_map(|s| s.points.iter().map(|p| p.0 as f64 + 1.0));
    let max_t = last.fold(duration_s.ceil(), f64::max).max(1.0);
    let x = |t: f64| LEFT + (t / max_t) * (W - LEFT - RIGHT);

    // Latency: log scale over whole decades.
    let all_lat = lat.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = all_lat.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo_dec, hi_dec) = if hi > 0.0 {
        (
            lo.log10().floor().max(-3.0),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (-1.0, 2.0)
    };
    let ly = |v: f64| {
        let f = (v.log10().clamp(lo_dec, hi_dec) - lo_dec) / (hi_dec - lo_dec);
        LAT_BOTTOM - f * (LAT_BOTTOM - LAT_TOP)
    };
    // Throughput: linear from zero.
    let tmax = tput
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0f64, f64::max)
        .max(1.0);
    let step = nice_step(tmax);
    let ttop = (tmax / step).ceil() * step;
    let ty = |v: f64| TPUT_BOTTOM - (v / ttop) * (TPUT_BOTTOM - TPUT_TOP);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );

    // Frames, grids, axis labels.
    for (top, bottom, label) in [
        (
            LAT_TOP,
            LAT_BOTTOM,
            "latency, ms (log; from scheduled send)",
        ),
        (
            TPUT_TOP,
            TPUT_BOTTOM,
            "per second: responses, and beacons reaching Kafka",
        ),
    ] {
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            W - LEFT - RIGHT,
            bottom - top
        );
        let _ = writeln!(
            o,
            r##"<text x="{LEFT}" y="{}" fill="#333">{label}</text>"##,
            top - 6.0
        );
    }
    let few_decades = hi_dec - lo_dec <= 3.0;
    let mut d = lo_dec as i32;
    while d <= hi_dec as i32 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = m * 10f64.powi(d);
            if v > 10f64.powf(hi_dec) * 1.0001 {
                break;
            }
            let y = ly(v);
            let stroke = if major { "#ccc" } else { "#eee" };
            let _ = writeln!(
                o,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
                W - RIGHT
            );
            if major || few_decades {
                let label = if v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                };
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                    LEFT - 6.0,
                    y + 4.0
                );
            }
        }
        d += 1;
    }
    let mut v = 0.0;
    while v <= ttop + step / 2.0 {
        let y = ty(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
        v += step;
    }
    let xstep = nice_step(max_t).max(1.0);
    let mut t = 0.0;
    while t <= max_t + 1e-9 {
        let xx = x(t);
        for bottom in [LAT_BOTTOM, TPUT_BOTTOM] {
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{bottom}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
                bottom + 4.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"#,
            TPUT_BOTTOM + 18.0
        );
        t += xstep;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since start of measurement</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        TPUT_BOTTOM + 36.0
    );

    // Events.
    for e in events {
        let xx = x(e.at_s);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{LAT_TOP}" x2="{xx:.1}" y2="{TPUT_BOTTOM}" stroke="#8c564b" stroke-dasharray="3 3"/>"##
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" fill="#8c564b" font-size="11">{}</text>"##,
            xx + 3.0,
            LAT_TOP + 12.0,
            esc(&e.action)
        );
    }

    for s in &lat {
        draw(&mut o, s, &x, &ly);
    }
    for s in &tput {
        draw(&mut o, s, &x, &ty);
    }

    // Legends.
    for (top, list) in [(LAT_TOP, &lat), (TPUT_TOP, &tput)] {
        for (i, s) in list.iter().enumerate() {
            let y = top + 14.0 + i as f64 * 18.0;
            let lx = W - RIGHT + 14.0;
            let dash = if s.dashed {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let _ = writeln!(
                o,
                r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="{}"{dash}/>"#,
                lx + 24.0,
                s.color,
                s.width
            );
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 30.0,
                y + 4.0,
                esc(s.label)
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: u64, endpoint: &'static str, ok: u64, p50: f64) -> TimelinePoint {
        TimelinePoint {
            t,
            endpoint,
            completed: ok,
            ok,
            non_ok: 0,
            errors: 0,
            p50_ms: p50,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 10.0,
        }
    }

    #[test]
    fn draws_a_well_formed_picture() {
        let mut pts = vec![];
        for t in 0..5 {
            pts.push(p(t, "target", 1000, 0.2));
        }
        // a stall at t=5: nothing completes, then a burst of slow answers
        pts.push(p(6, "target", 3000, 400.0));
        for t in 7..10 {
            pts.push(p(t, "baseline", 1000, 0.1));
        }
        let ev = vec![EventRecord {
            at_s: 5.0,
            action: "broker_down (reset) <&>".into(),
        }];
        let kafka = [
            KafkaSecond {
                t: 0,
                delivered: 900,
            },
            KafkaSecond {
                t: 12,
                delivered: 50,
            },
        ];
        let s = svg("run x & y", &pts, &kafka, &ev, 10.0);
        assert!(s.contains("into Kafka/s"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("run x &amp; y") && s.contains("&lt;&amp;&gt;"));
        assert!(s.matches("<polyline").count() >= 6, "{s}");
        assert!(s.contains("baseline p99"));
        // tags balance: every opened element is self-closed or closed
        let opens = s.matches('<').count();
        let closes = s.matches("/>").count() + s.matches("</").count() * 2;
        assert_eq!(opens, closes, "unbalanced tags");
        assert_eq!(
            svg("empty", &[], &[], &[], 1.0)
                .matches("<polyline")
                .count(),
            0
        );
    }

    #[test]
    fn partial_seconds_at_round_ends_are_not_drawn_as_stalls() {
        let mut pts: Vec<TimelinePoint> = (0..5).map(|t| p(t, "target", 1000, 0.2)).collect();
        pts.push(p(5, "target", 12, 0.2)); // end of a round: stragglers
        pts.extend((10..13).map(|t| p(t, "target", 1000, 0.2)));
        pts.push(p(13, "target", 400, 0.2)); // a real drop, run goes on
        pts.push(p(14, "target", 900, 0.2));
        let t: Vec<u64> = throughput(&pts, "target", |p| p.ok)
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(t, vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
        // Latency of those few requests is still shown.
        assert_eq!(series(&pts, "target", |p| Some(p.p50_ms)).len(), pts.len());
    }
}
