//! The test broker (mock cluster or `SLUICE_TEST_KAFKA`) and a consumer that reads a whole topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};

pub struct TestKafka {
    pub brokers: String,
    pub mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl TestKafka {
    /// A 3-broker mock cluster, or the broker in `SLUICE_TEST_KAFKA`.
    pub fn start() -> Self {
        match std::env::var("SLUICE_TEST_KAFKA") {
            Ok(brokers) if !brokers.is_empty() => TestKafka { brokers, mock: None },
            _ => {
                let mock = MockCluster::new(3).expect("mock cluster");
                TestKafka { brokers: mock.bootstrap_servers(), mock: Some(mock) }
            }
        }
    }

    /// Creates a topic on the mock cluster; a real broker auto-creates it on first produce.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        if let Some(m) = &self.mock {
            m.create_topic(topic, partitions, 3).expect("create topic");
        }
    }
}

/// Waits (up to `timeout`) for `topic` to exist, then assigns all its partitions from the start.
/// Explicit assignment: no consumer-group rebalance delays, and nothing is committed.
pub fn assign_from_beginning(consumer: &BaseConsumer, topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2))
            && let Some(t) = md.topics().first()
            && !t.partitions().is_empty()
            && t.error().is_none()
        {
            break t.partitions().len();
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
}

#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<String>,
    pub payload: serde_json::Value,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `expected` messages arrived (then `grace` longer, to
/// catch duplicates) or `timeout` passed.
pub fn consume(brokers: &str, topic: &str, expected: usize, timeout: Duration, grace: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("sluice-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + timeout;
    assign_from_beginning(&consumer, topic, timeout);
    let mut out = Vec::new();
    let mut done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || done_at.is_some_and(|d| now >= d) {
            return out;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        let v = hdr.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                        headers.insert(hdr.key.to_string(), v);
                    }
                }
                let payload = serde_json::from_slice(m.payload().unwrap_or_default()).expect("payload is JSON");
                out.push(Consumed { key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()), payload, headers });
                if out.len() >= expected && done_at.is_none() {
                    done_at = Some(Instant::now() + grace);
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
}
