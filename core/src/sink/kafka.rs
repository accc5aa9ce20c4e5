//! Kafka sink: one message per event, key = tenant, headers tenant/env/batch_id/event_id.
//!
//! Every message of a frame is enqueued before any delivery report is awaited (awaiting one by one
//! would cost a round trip per event). The producer is idempotent with `acks=all`; a message that
//! times out may still have been written, so it is reported as a failure and the whole frame is
//! retried by the edge: duplicates carry the same IDs for downstream dedupe, nothing is lost.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_wire::{BatchRecord, EventRecord, Stream};

use super::SinkError;
use crate::config::KafkaConfig;

pub struct KafkaSink {
    /// Replaced when librdkafka reports a fatal error (see [`KafkaSink::deliver`]).
    producer: RwLock<FutureProducer>,
    client: ClientConfig,
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

/// The headers of one event's message: tenant, env, batch_id, event_id (downstream dedupe keys).
pub fn event_headers(batch: &BatchRecord, batch_id: &str, event: &EventRecord) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(5)
        .insert(Header { key: "tenant", value: Some(batch.tenant.as_str()) })
        .insert(Header { key: "env", value: Some(batch.env.as_str()) })
        .insert(Header { key: "batch_id", value: Some(batch_id) })
        .insert(Header { key: "event_id", value: Some(event.event_id.as_str()) });
    match &batch.traceparent {
        Some(tp) => headers.insert(Header { key: "traceparent", value: Some(tp.as_str()) }),
        None => headers,
    }
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig) -> Result<Self, SinkError> {
        let client = producer_config(config);
        let producer = client.create().map_err(|e| SinkError::Kafka(e.to_string()))?;
        Ok(Self {
            producer: RwLock::new(producer),
            client,
            topic_prefix: config.topic_prefix.clone(),
            dlq_topic: config.dlq_topic.clone(),
        })
    }

    /// The producer in use (a cheap handle).
    fn current(&self) -> FutureProducer {
        self.producer.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Produces every event of `batches` and waits for all delivery reports.
    ///
    /// An idempotent producer that hits a fatal error (librdkafka raises one, e.g., on an
    /// out-of-order sequence after message timeouts) fails every later send for good. When a
    /// frame fails and the producer reports a fatal error, it is replaced by a new one, so the
    /// edge's resend succeeds. Nothing is acked in between: the failed frame is resent whole, and
    /// any of its events that were written carry the same IDs (duplicates, never losses).
    pub async fn deliver(&self, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        let producer = self.current();
        let result = self.deliver_with(&producer, batches).await;
        if result.is_err()
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            tracing::error!(?code, %reason, "kafka: producer hit a fatal error; replacing it");
            match self.client.create::<FutureProducer>() {
                Ok(fresh) => *self.producer.write().unwrap_or_else(PoisonError::into_inner) = fresh,
                Err(e) => tracing::error!(error = %e, "kafka: could not create a new producer"),
            }
        }
        result
    }

    async fn deliver_with(&self, producer: &FutureProducer, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(batches.iter().map(|b| b.events.len()).sum());
        let mut payload = Vec::new();
        for batch in batches {
            let topic = match batch.stream {
                Stream::Events => format!("{}{}", self.topic_prefix, batch.region),
                Stream::DeadLetter => self.dlq_topic.clone(),
            };
            let batch_id = batch.batch_id.to_string();
            for event in &batch.events {
                let headers = event_headers(batch, &batch_id, event);
                // librdkafka copies the payload, so one buffer serves every event.
                payload.clear();
                batch.write_event_json(event, &mut payload);
                let mut record =
                    FutureRecord::to(&topic).key(batch.tenant.as_str()).payload(payload.as_slice()).headers(headers);
                loop {
                    match producer.send_result(record) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use sluice_wire::EventRecord;

    fn batch(i: usize) -> BatchRecord {
        BatchRecord {
            batch_id: sluice_wire::ids::new_batch_id(),
            tenant: "acme".into(),
            env: "prod".into(),
            region: "fatal".into(),
            received_at_ms: 1,
            stream: Stream::Events,
            events: vec![EventRecord { event_id: format!("e{i}"), json: b"{}".to_vec() }],
            traceparent: None,
            shared: Vec::new(),
        }
    }

    /// Regression: an idempotent producer that hit a fatal error (librdkafka raises one e.g. on
    /// an out-of-order sequence after timeouts) fails every later send. Core answered `Retry`
    /// forever and every edge stalled until someone restarted core.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_producer_error_is_recovered_by_a_new_producer() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("events.fatal", 1, 1).unwrap();
        let config = KafkaConfig { brokers: mock.bootstrap_servers(), ..KafkaConfig::default() };
        let sink = KafkaSink::new(&config).unwrap();
        sink.deliver(&[&batch(0)]).await.unwrap();

        let producer = sink.current();
        let reason = std::ffi::CString::new("injected by test").unwrap();
        // SAFETY: the pointer is the live client of `producer`, which outlives the call.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
        assert!(producer.client().fatal_error().is_some());
        drop(producer);
        // The frame in flight may fail (the edge resends it); the next attempt must succeed.
        let mut ok = false;
        for i in 1..=3 {
            if sink.deliver(&[&batch(i)]).await.is_ok() {
                ok = true;
                break;
            }
        }
        assert!(ok, "the sink never recovered from the fatal producer error");
    }
}
