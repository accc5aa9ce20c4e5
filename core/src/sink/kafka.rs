//! Kafka sink: one message per event, key = tenant, headers tenant/env/batch_id/event_id.
//!
//! Every message of a frame is enqueued before any delivery report is awaited (awaiting one by one
//! would cost a round trip per event). The producer is idempotent with `acks=all`; a message that
//! times out may still have been written, so it is reported as a failure and the whole frame is
//! retried by the edge: duplicates carry the same IDs for downstream dedupe, nothing is lost.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_wire::{BatchRecord, Stream};

use super::SinkError;
use crate::config::KafkaConfig;

pub struct KafkaSink {
    producer: FutureProducer,
    topic_prefix: String,
    dlq_topic: String,
}

/// The librdkafka settings of the sink's producer; public so `sluicectl bench` can compare the
/// sink with a bare producer configured identically.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &config.properties {
        client.set(k, v);
    }
    // Not overridable: these are what make a delivery report mean "replicated and ordered".
    client.set("acks", "all").set("enable.idempotence", "true");
    client
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig) -> Result<Self, SinkError> {
        let producer = producer_config(config).create().map_err(|e| SinkError::Kafka(e.to_string()))?;
        Ok(Self { producer, topic_prefix: config.topic_prefix.clone(), dlq_topic: config.dlq_topic.clone() })
    }

    pub async fn deliver(&self, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(batches.iter().map(|b| b.events.len()).sum());
        for batch in batches {
            let topic = match batch.stream {
                Stream::Events => format!("{}{}", self.topic_prefix, batch.region),
                Stream::DeadLetter => self.dlq_topic.clone(),
            };
            let batch_id = batch.batch_id.to_string();
            for event in &batch.events {
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header { key: "tenant", value: Some(batch.tenant.as_str()) })
                    .insert(Header { key: "env", value: Some(batch.env.as_str()) })
                    .insert(Header { key: "batch_id", value: Some(batch_id.as_str()) })
                    .insert(Header { key: "event_id", value: Some(event.event_id.as_str()) });
                let mut record =
                    FutureRecord::to(&topic).key(batch.tenant.as_str()).payload(event.json.as_slice()).headers(headers);
                loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err((e, _)) => return Err(SinkError::Kafka(e.to_string())),
                    }
                }
            }
        }
        let mut first_error = None;
        for delivery in pending {
            let failure = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "producer dropped the delivery report".to_string(),
            };
            first_error.get_or_insert(failure);
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(SinkError::Kafka(e)),
        }
    }
}
