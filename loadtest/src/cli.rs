//! Command line. Flag names are a contract: scripts depend on them.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Longest run we accept: every load loop here is bounded.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
pub const MAX_RATE: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateArg {
    PerSecond(f64),
    /// Closed loop, as fast as the server answers.
    Max,
}

pub fn parse_rate(s: &str) -> Result<RateArg, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(RateArg::Max);
    }
    let v: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (a number per second, or \"max\")"))?;
    if !(v > 0.0 && v <= MAX_RATE) {
        return Err(format!("rate must be in (0, {MAX_RATE}]"));
    }
    Ok(RateArg::PerSecond(v))
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{s:?} is out of range (0 to {}s)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("must be between 0 and 1".into());
    }
    Ok(v)
}

/// Which protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// EventLogging beacons: `GET`/`POST <target>?<encoded capsule>;`.
    Beacon,
    /// Event Platform (EventGate): `POST <target>` with JSON events in the body.
    Events,
}

fn parse_proxy(s: &str) -> Result<(String, String), String> {
    let (l, u) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected LISTEN=UPSTREAM, e.g. 127.0.0.1:29092=127.0.0.1:29093")
    })?;
    Ok((l.to_string(), u.to_string()))
}

/// Open-loop load for beacon collectors, with Kafka delivery verification.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Open-loop load generator for beacon collectors, with end-to-end Kafka verification",
    after_help = "Examples:\n  \
      loadtest --target http://127.0.0.1:8080/beacon/event --rate 2000 --duration 30s \\\n    \
        --kafka-brokers 127.0.0.1:19092 --kafka-topic eventlogging-client-side --report-json r.json --plot r.svg\n  \
      loadtest --target http://127.0.0.1:8080/beacon/event --rate max --duration 20s --baseline http://127.0.0.1:8099/beacon/event\n  \
      loadtest --target http://127.0.0.1:8080/beacon/event --scenario loadtest/scenarios/spike.toml\n\n\
      Exit status: 0 done, 1 error (unreachable target or broker, bad scenario), 2 bad flag, 3 --fail-on-loss and beacons were lost."
)]
pub struct Args {
    /// Beacon endpoint, e.g. http://127.0.0.1:8080/beacon/event (loopback only); each beacon's query is appended.
    #[arg(long)]
    pub target: String,
    /// Requests per second (open loop), or `max` (closed loop). Default 1000, or the scenario's base rate.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<RateArg>,
    /// Measured duration, e.g. 30s. Default 30s (ignored with --scenario, whose phases say it).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Unmeasured warm-up at the first phase's rate before measuring. Default 2s.
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Keep-alive connections per endpoint. Default 32.
    #[arg(long)]
    pub connections: Option<usize>,
    /// `beacon` (EventLogging beacons) or `events` (`POST /v1/events`, JSON events of real schemas).
    #[arg(long, value_enum, default_value_t = Protocol::Beacon)]
    pub protocol: Protocol,
    /// Events: events per request: `1` (one JSON object, as mw.eventLog.submit sends), `N` (arrays of N) or `A-B` (arrays of A to B, as Metrics Platform sends).
    #[arg(long, value_parser = crate::events::Batch::parse, default_value = "1")]
    pub batch: crate::events::Batch,
    /// Events: post with `?hasty=true` (202 before validation).
    #[arg(long)]
    pub hasty: bool,
    /// Events: fraction of requests sent as `application/json` (fetch); the rest `text/plain;charset=UTF-8` (sendBeacon).
    #[arg(long, value_parser = parse_fraction, default_value = "0")]
    pub json_fraction: f64,
    /// Events: the collector's error topic (invalid events are expected there).
    #[arg(long, default_value = crate::events::DEFAULT_ERROR_TOPIC)]
    pub error_topic: String,
    /// Events: the collector's `events.topic_prefix` (topic = prefix + stream name).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// Kafka bootstrap servers to verify delivery (beacons: needs --kafka-topic; events: reads every stream's topic and the error topic).
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// The collector's topic (beacons only).
    #[arg(long, requires = "kafka_brokers")]
    pub kafka_topic: Option<String>,
    /// After the load, how long to wait for acknowledged beacons to show up in Kafka. Default 60s.
    #[arg(long, value_parser = parse_duration)]
    pub kafka_drain_timeout: Option<Duration>,
    /// Read on this long after the last expected beacon, to catch late duplicates.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub kafka_linger: Duration,
    /// Read the topic from the beginning rather than from its end offsets at start.
    #[arg(long)]
    pub kafka_from_beginning: bool,
    /// Read the topic only after the load (end offsets are still taken at start), keeping
    /// the reader off the generator's CPU during `--rate max` runs.
    #[arg(long)]
    pub kafka_read_after: bool,
    /// A second endpoint (e.g. nginx `return 204`) loaded in alternating rounds; the report gives the ratio.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Length of one round with --baseline.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub round: Duration,
    /// Write the full result as JSON.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write latency percentiles and throughput over time as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A scenario file (TOML, see loadtest/scenarios/).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Run a TCP proxy in front of the broker: LISTEN=UPSTREAM (scenarios can cut it).
    #[arg(long, value_parser = parse_proxy)]
    pub broker_proxy: Option<(String, String)>,
    /// Fraction of invalid beacons (bad JSON, bad encoding, oversize...); with events, of events that break their schema.
    #[arg(long, value_parser = parse_fraction)]
    pub invalid_fraction: Option<f64>,
    /// Fraction sent as sendBeacon POSTs; the rest are image GETs.
    #[arg(long, value_parser = parse_fraction)]
    pub post_fraction: Option<f64>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Keep probing the target this long before giving up (for a collector still starting).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub wait_target: Duration,
    /// Generator threads. Default: the CPUs this process may run on.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the beacon mix (beacon n is the same for the same seed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cap on requests per endpoint in `--rate max` mode.
    #[arg(long, default_value_t = 20_000_000)]
    pub max_requests: u64,
    /// Prefix of beacon ids. Default: random.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Exit 3 when an acknowledged beacon is missing from Kafka (or arrived twice).
    #[arg(long)]
    pub fail_on_loss: bool,
}

impl Args {
    /// A flag combination clap cannot express, if any.
    pub fn conflict(&self) -> Option<&'static str> {
        match self.protocol {
            Protocol::Beacon if self.kafka_brokers.is_some() && self.kafka_topic.is_none() => {
                Some("--kafka-brokers needs --kafka-topic with --protocol beacon")
            }
            Protocol::Events if self.kafka_topic.is_some() => Some(
                "--kafka-topic is for beacons; with --protocol events the topics are the streams' (--topic-prefix) and --error-topic",
            ),
            Protocol::Events if self.post_fraction.is_some() => Some(
                "--post-fraction is for beacons; events are always POSTed (see --json-fraction)",
            ),
            _ => None,
        }
    }

    /// Exits 2, like any bad flag, on a [`Args::conflict`].
    pub fn check(&self) {
        use clap::CommandFactory;
        if let Some(msg) = self.conflict() {
            Args::command()
                .error(clap::error::ErrorKind::ArgumentConflict, msg)
                .exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("2h").is_err(), "over the bound");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200"), Ok(RateArg::PerSecond(200.0)));
        assert_eq!(parse_rate("max"), Ok(RateArg::Max));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn flags() {
        let a = Args::try_parse_from([
            "loadtest",
            "--target",
            "http://127.0.0.1:1/b",
            "--rate",
            "max",
            "--duration",
            "30s",
            "--warmup",
            "1s",
            "--connections",
            "8",
            "--kafka-brokers",
            "127.0.0.1:19092",
            "--kafka-topic",
            "t",
            "--baseline",
            "http://127.0.0.1:2/b",
            "--report-json",
            "r.json",
            "--plot",
            "p.svg",
            "--scenario",
            "s.toml",
            "--broker-proxy",
            "127.0.0.1:1=127.0.0.1:2",
            "--invalid-fraction",
            "0.1",
        ])
        .unwrap();
        assert_eq!(a.rate, Some(RateArg::Max));
        assert_eq!(
            a.broker_proxy,
            Some(("127.0.0.1:1".into(), "127.0.0.1:2".into()))
        );
        let conflict = |v: &[&str]| {
            let mut all = vec!["loadtest", "--target", "x"];
            all.extend_from_slice(v);
            Args::try_parse_from(all).unwrap().conflict()
        };
        assert!(conflict(&["--kafka-brokers", "b"]).is_some());
        assert!(conflict(&["--kafka-brokers", "b", "--protocol", "events"]).is_none());
        assert!(conflict(&[
            "--protocol",
            "events",
            "--kafka-brokers",
            "b",
            "--kafka-topic",
            "t"
        ])
        .is_some());
        let e = Args::try_parse_from([
            "loadtest",
            "--target",
            "x",
            "--protocol",
            "events",
            "--batch",
            "1-20",
            "--hasty",
            "--json-fraction",
            "0.5",
        ])
        .unwrap();
        assert_eq!(e.batch, crate::events::Batch::Array { min: 1, max: 20 });
        assert!(e.hasty && e.protocol == Protocol::Events);
        assert!(Args::try_parse_from(["loadtest", "--target", "x", "--batch", "0"]).is_err());
        assert!(
            Args::try_parse_from(["loadtest", "--target", "x", "--invalid-fraction", "2"]).is_err()
        );
        assert!(Args::try_parse_from(["loadtest", "--rate", "5"]).is_err());
    }
}
