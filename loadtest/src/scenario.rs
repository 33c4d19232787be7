//! Scenario files (TOML): phases of load, broker cuts, slow clients.
//! The format is documented in loadtest/README.md; examples live in
//! loadtest/scenarios/.

use crate::cli::parse_duration;
use crate::proxy::CutMode;
use crate::schedule::Phase;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Rate that `"Nx"` phase rates multiply (overridden by `--rate`).
    pub base_rate: Option<f64>,
    pub connections: Option<usize>,
    pub warmup: Option<String>,
    pub kafka_drain_timeout: Option<String>,
    pub invalid_fraction: Option<f64>,
    #[serde(default, rename = "phase")]
    pub phases: Vec<PhaseSpec>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
    pub broker_proxy: Option<ProxySpec>,
    pub slow_clients: Option<SlowSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub duration: String,
    /// Requests per second (a number) or a multiple of the base rate ("5x").
    pub rate: toml::Value,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    BrokerDown,
    BrokerUp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// From the start of the measured run.
    pub at: String,
    pub action: Action,
    #[serde(default)]
    pub mode: CutMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    pub listen: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowSpec {
    pub connections: usize,
    pub interval: String,
    #[serde(default = "one")]
    pub bytes_per_write: usize,
    #[serde(default)]
    pub extra_headers: usize,
    pub start: Option<String>,
    pub stop: Option<String>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
    pub mode: CutMode,
}

#[derive(Debug, Clone)]
pub struct Slow {
    pub opts: crate::slow::SlowOptions,
    pub start: Duration,
    pub stop: Option<Duration>,
}

/// A scenario with durations parsed and rates resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub phases: Vec<Phase>,
    pub events: Vec<Event>,
    pub proxy: Option<ProxySpec>,
    pub slow: Option<Slow>,
    pub connections: Option<usize>,
    pub warmup: Option<Duration>,
    pub kafka_drain_timeout: Option<Duration>,
    pub invalid_fraction: Option<f64>,
}

fn dur(s: &str, what: &str) -> anyhow::Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

impl Scenario {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))
    }

    /// Resolves rates against `rate_override` (from `--rate`) or `base_rate`.
    /// `cli_proxy`: a `--broker-proxy` was given (it can stand in for `[broker_proxy]`).
    pub fn resolve(&self, rate_override: Option<f64>, cli_proxy: bool) -> anyhow::Result<Resolved> {
        if self.phases.is_empty() {
            bail!("scenario {:?} has no [[phase]]", self.name);
        }
        let base = rate_override.or(self.base_rate);
        let mut phases = Vec::new();
        let mut total = Duration::ZERO;
        for (i, p) in self.phases.iter().enumerate() {
            let duration = dur(&p.duration, &format!("phase {} duration", i + 1))?;
            let rate = match &p.rate {
                toml::Value::Integer(v) => *v as f64,
                toml::Value::Float(v) => *v,
                toml::Value::String(s) if s.ends_with('x') => {
                    let m: f64 = s[..s.len() - 1]
                        .parse()
                        .with_context(|| format!("phase {} rate {s:?}", i + 1))?;
                    m * base.with_context(|| {
                        format!("phase {} rate {s:?} needs base_rate or --rate", i + 1)
                    })?
                }
                other => bail!(
                    "phase {} rate {other}: give a number or a multiple like \"5x\"",
                    i + 1
                ),
            };
            if !(0.0..=crate::cli::MAX_RATE).contains(&rate) {
                bail!("phase {} rate {rate} out of range", i + 1);
            }
            total += duration;
            phases.push(Phase { duration, rate });
        }
        if total.is_zero() || total > crate::cli::MAX_DURATION {
            bail!(
                "scenario duration {total:?} must be between 0 and {:?}",
                crate::cli::MAX_DURATION
            );
        }
        let mut events = Vec::new();
        for e in &self.events {
            let at = dur(&e.at, "event at")?;
            if at > total {
                bail!("event at {at:?} is after the scenario's end ({total:?})");
            }
            events.push(Event {
                at,
                action: e.action,
                mode: e.mode,
            });
        }
        events.sort_by_key(|e| e.at);
        if !events.is_empty() && self.broker_proxy.is_none() && !cli_proxy {
            bail!("broker events need a [broker_proxy] (or --broker-proxy)");
        }
        let slow = match &self.slow_clients {
            None => None,
            Some(s) => {
                if s.connections == 0 || s.connections > 10_000 {
                    bail!("slow_clients.connections must be 1..=10000");
                }
                Some(Slow {
                    opts: crate::slow::SlowOptions {
                        connections: s.connections,
                        interval: dur(&s.interval, "slow_clients.interval")?,
                        bytes_per_write: s.bytes_per_write.max(1),
                        extra_headers: s.extra_headers.min(1000),
                    },
                    start: s
                        .start
                        .as_deref()
                        .map(|v| dur(v, "slow_clients.start"))
                        .transpose()?
                        .unwrap_or_default(),
                    stop: s
                        .stop
                        .as_deref()
                        .map(|v| dur(v, "slow_clients.stop"))
                        .transpose()?,
                })
            }
        };
        Ok(Resolved {
            name: self.name.clone(),
            phases,
            events,
            proxy: self.broker_proxy.clone(),
            slow,
            connections: self.connections,
            warmup: self
                .warmup
                .as_deref()
                .map(|v| dur(v, "warmup"))
                .transpose()?,
            kafka_drain_timeout: self
                .kafka_drain_timeout
                .as_deref()
                .map(|v| dur(v, "kafka_drain_timeout"))
                .transpose()?,
            invalid_fraction: self.invalid_fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let s: Scenario = toml::from_str(
            r#"
            name = "spike"
            base_rate = 100
            [[phase]]
            duration = "2s"
            rate = "1x"
            [[phase]]
            duration = "1s"
            rate = "5x"
            [[phase]]
            duration = "500ms"
            rate = 50.5
            [broker_proxy]
            listen = "127.0.0.1:29092"
            upstream = "127.0.0.1:29093"
            [[event]]
            at = "2s"
            action = "broker_up"
            [[event]]
            at = "1s"
            action = "broker_down"
            mode = "blackhole"
            [slow_clients]
            connections = 10
            interval = "1s"
            "#,
        )
        .unwrap();
        let r = s.resolve(None, false).unwrap();
        assert_eq!(
            r.phases.iter().map(|p| p.rate).collect::<Vec<_>>(),
            vec![100.0, 500.0, 50.5]
        );
        assert_eq!(
            r.events[0],
            Event {
                at: Duration::from_secs(1),
                action: Action::BrokerDown,
                mode: CutMode::Blackhole
            }
        );
        assert_eq!(r.events[1].mode, CutMode::Reset);
        assert_eq!(r.slow.as_ref().unwrap().opts.bytes_per_write, 1);
        let r = s.resolve(Some(10.0), false).unwrap();
        assert_eq!(r.phases[1].rate, 50.0);
    }

    #[test]
    fn rejects_bad_scenarios() {
        let bad = [
            "name='x'",                                                         // no phases
            "name='x'\n[[phase]]\nduration='1s'\nrate='2x'",                   // no base rate
            "name='x'\n[[phase]]\nduration='1s'\nrate=1\nbogus=1",             // unknown key
            "name='x'\n[[phase]]\nduration='1s'\nrate=1\n[[event]]\nat='0s'\naction='broker_down'", // no proxy
            "name='x'\n[[phase]]\nduration='1s'\nrate=1\n[broker_proxy]\nlisten='a'\nupstream='b'\n[[event]]\nat='5s'\naction='broker_down'", // after end
        ];
        for b in bad {
            let r = toml::from_str::<Scenario>(b)
                .map_err(anyhow::Error::from)
                .and_then(|s| s.resolve(None, false));
            assert!(r.is_err(), "{b}");
        }
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path)
                    .unwrap()
                    .resolve(None, false)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "steady, spike, broker outage, slow client");
    }
}
