//! `kafka-tail`: prints the messages that reach a Kafka topic, one per line,
//! so a new user sees their beacon arrive. `scripts/dev-broker tail TOPIC`
//! runs it against the dev broker.
//!
//! Built on the workspace's rdkafka (librdkafka 2.12): Debian's kcat
//! (librdkafka 2.0) cannot talk to tansu. Partitions are assigned directly
//! (a consumer-group join takes ~25 s on tansu) and nothing is committed.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Prints what reaches a Kafka topic (from now, or from the beginning).
#[derive(Debug, Parser)]
#[command(name = "kafka-tail")]
struct Args {
    /// The topic to read.
    topic: String,
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Start at the oldest message instead of at the end.
    #[arg(long)]
    from_beginning: bool,
    /// Print `partition@offset`, the key and the timestamp before each payload
    /// (tab-separated).
    #[arg(long)]
    meta: bool,
    /// Exit after this many messages.
    #[arg(long)]
    max: Option<u64>,
    /// Exit after this many seconds without a message.
    #[arg(long)]
    idle_exit_secs: Option<u64>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("kafka-tail: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "beacond-kafka-tail")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("asking {} for topic {}", args.brokers, args.topic))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == args.topic) else {
        bail!("no metadata for topic {}", args.topic);
    };
    if let Some(e) = topic.error() {
        bail!(
            "topic {}: {} (create it: scripts/dev-broker create-topic {})",
            args.topic,
            rdkafka::error::RDKafkaErrorCode::from(e),
            args.topic
        );
    }
    if topic.partitions().is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        // "From now" is the high-water mark as of now, asked before the
        // line below says so (Offset::End would be resolved later, and miss
        // a message sent in between).
        let start = if args.from_beginning {
            Offset::Beginning
        } else {
            let (_, high) = consumer
                .fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10))
                .with_context(|| format!("the end of partition {}", p.id()))?;
            Offset::Offset(high)
        };
        tpl.add_partition_offset(&args.topic, p.id(), start)
            .context("adding a partition")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    eprintln!(
        "kafka-tail: reading {} ({} partitions) from {} at {}; Ctrl-C to stop",
        args.topic,
        topic.partitions().len(),
        if args.from_beginning {
            "the beginning"
        } else {
            "now"
        },
        args.brokers
    );

    let stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut last = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        if args.max.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        if let Some(idle) = args.idle_exit_secs {
            if last.elapsed() >= Duration::from_secs(idle) {
                return Ok(());
            }
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => {
                // Once per kind of error, not once per poll.
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    eprintln!("kafka-tail: {text}");
                    last_error = Some(text);
                }
            }
            Some(Ok(m)) => {
                let mut out = stdout.lock();
                let mut line = Vec::new();
                if args.meta {
                    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    let ts = m.timestamp().to_millis().unwrap_or(-1);
                    let _ = write!(line, "{}@{}\t{key}\t{ts}\t", m.partition(), m.offset());
                }
                line.extend_from_slice(m.payload().unwrap_or_default());
                line.push(b'\n');
                // A closed pipe (`| head`) ends the tail quietly.
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                printed += 1;
                last = Instant::now();
                last_error = None;
            }
        }
    }
}
