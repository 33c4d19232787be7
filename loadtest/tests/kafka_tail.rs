//! `kafka-tail` (what `scripts/dev-broker tail` runs) against librdkafka's
//! mock cluster: from the beginning, and from now (only what arrives after
//! it says it is reading).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const BIN: &str = env!("CARGO_BIN_EXE_kafka-tail");

fn produce(brokers: &str, topic: &str, messages: &[(&str, &str)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (key, payload) in messages {
        producer
            .send(BaseRecord::to(topic).key(*key).payload(*payload))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("delivered");
}

#[test]
fn prints_a_topic_from_the_beginning_with_metadata() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("tail-a", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(
        &brokers,
        "tail-a",
        &[("k1", "?one\thost\t0"), ("k2", "second"), ("k3", "third")],
    );
    let out = Command::new(BIN)
        .args([
            "tail-a",
            "--brokers",
            &brokers,
            "--from-beginning",
            "--meta",
        ])
        .args(["--max", "3", "--idle-exit-secs", "30"])
        .output()
        .expect("kafka-tail runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (i, (line, (key, payload))) in lines
        .iter()
        .zip([("k1", "?one\thost\t0"), ("k2", "second"), ("k3", "third")])
        .enumerate()
    {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(fields[0], format!("0@{i}"), "{line}");
        assert_eq!(fields[1], key);
        assert!(fields[2].parse::<i64>().unwrap() > 0, "timestamp: {line}");
        assert_eq!(fields[3], payload);
    }
}

#[test]
fn from_now_prints_only_what_arrives_after_it_started() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("tail-b", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce(&brokers, "tail-b", &[("a", "old-1"), ("b", "old-2")]);
    let mut child = Command::new(BIN)
        .args(["tail-b", "--brokers", &brokers, "--max", "2"])
        .args(["--idle-exit-secs", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kafka-tail runs");
    // Wait for "reading ... from now" (the end offsets are known by then).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("from now"), "{line}");
    produce(&brokers, "tail-b", &[("c", "new-1"), ("d", "new-2")]);
    let out = child.wait_with_output().expect("kafka-tail exits");
    assert!(out.status.success(), "{out:?}");
    let mut got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, ["new-1", "new-2"]);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let out = Command::new(BIN)
        .args(["no-such-topic", "--brokers", &mock.bootstrap_servers()])
        .output()
        .expect("kafka-tail runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-topic") && err.contains("create-topic"),
        "{err}"
    );
}
