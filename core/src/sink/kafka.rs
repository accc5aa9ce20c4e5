//! Kafka sink: one message per event, key = tenant, headers tenant/env/batch_id/event_id.
//!
//! Every message of a frame is enqueued before any delivery report is awaited (awaiting one by one
//! would cost a round trip per event). The producer is idempotent with `acks=all`; a message that
//! times out may still have been written, so it is reported as a failure and the whole frame is
//! retried by the edge: duplicates carry the same IDs for downstream dedupe, nothing is lost.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_wire::{BatchRecord, EventRecord, Stream};

use super::SinkError;
use super::producer_health::{Failure, ProducerHealth, Reason};
use crate::config::KafkaConfig;
use crate::producer_metrics::ProducerMetrics;

/// `client.id` of the first producer when the configuration sets none; replacements append
/// `-<generation>`, so broker logs and request metrics tell the producers apart.
const DEFAULT_CLIENT_ID: &str = "sluice-core";

pub struct KafkaSink {
    /// Replaced when it stops making progress (see [`ProducerHealth`]).
    producer: RwLock<Current>,
    health: Mutex<ProducerHealth>,
    epoch: Instant,
    client: ClientConfig,
    client_id: String,
    topic_prefix: String,
    dlq_topic: String,
    metrics: ProducerMetrics,
}

struct Current {
    producer: FutureProducer,
    generation: u64,
}

/// The librdkafka settings of the sink's producer; public so `sluicectl bench` can compare the
/// sink with a bare producer configured identically.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", DEFAULT_CLIENT_ID)
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

/// Delivery reports that say librdkafka lost track of the producer's identity or sequence.
fn is_producer_state_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// Why a frame failed: the first error, and whether any event failed for the producer's state.
struct FrameFailure {
    first: String,
    producer_state: bool,
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig, metrics: ProducerMetrics) -> Result<Self, SinkError> {
        let client = producer_config(config);
        let client_id = client.get("client.id").unwrap_or(DEFAULT_CLIENT_ID).to_string();
        let producer = client.create().map_err(|e| SinkError::Kafka(e.to_string()))?;
        for reason in Reason::ALL {
            metrics.replacements.with_label_values(&[reason.as_str()]);
        }
        Ok(Self {
            producer: RwLock::new(Current { producer, generation: 0 }),
            health: Mutex::new(ProducerHealth::new(Duration::from_millis(config.producer_stall_ms))),
            epoch: Instant::now(),
            client,
            client_id,
            topic_prefix: config.topic_prefix.clone(),
            dlq_topic: config.dlq_topic.clone(),
            metrics,
        })
    }

    /// The producer in use (a cheap handle) and its generation.
    fn current(&self) -> (FutureProducer, u64) {
        let c = self.producer.read().unwrap_or_else(PoisonError::into_inner);
        (c.producer.clone(), c.generation)
    }

    fn health(&self) -> MutexGuard<'_, ProducerHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Produces every event of `batches` and waits for all delivery reports, all from the one
    /// producer that sent them: a frame succeeds only when each of its events was delivered.
    ///
    /// A failed frame is judged by [`ProducerHealth`]; when the producer is fatally broken,
    /// wedged (repeated producer-state errors) or stalled (failing frames and no delivery for
    /// `producer_stall_ms`), a new producer takes over before this returns, so the edge's resend
    /// (the circuit's probe) uses it. Nothing is acked in between: the failed frame is resent
    /// whole, and any of its events that were written carry the same IDs (duplicates, never
    /// losses).
    pub async fn deliver(&self, batches: &[&BatchRecord]) -> Result<(), SinkError> {
        let (producer, generation) = self.current();
        let result = self.deliver_with(&producer, batches).await;
        let mut health = self.health();
        match result {
            Ok(()) => {
                health.delivered(generation);
                self.metrics.failed_frames.set(i64::from(health.failed_frames()));
                Ok(())
            }
            Err(failure) => {
                let kind = match producer.client().fatal_error() {
                    Some(_) => Failure::Fatal,
                    None if failure.producer_state => Failure::ProducerState,
                    None => Failure::Other,
                };
                let now = self.epoch.elapsed();
                if let Some(reason) = health.failed(generation, kind, now) {
                    self.replace(&mut health, reason, now, &failure.first);
                }
                self.metrics.failed_frames.set(i64::from(health.failed_frames()));
                Err(SinkError::Kafka(failure.first))
            }
        }
    }

    /// Puts a new producer in place of the current one. The old one is dropped once the frames
    /// still in flight on it have their (failed or purged) reports.
    fn replace(&self, health: &mut ProducerHealth, reason: Reason, now: Duration, error: &str) {
        let generation = health.generation() + 1;
        let mut client = self.client.clone();
        client.set("client.id", format!("{}-{generation}", self.client_id));
        let fresh: FutureProducer = match client.create() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "kafka: could not create a new producer; keeping the old one");
                return;
            }
        };
        let failed_frames = health.failed_frames();
        health.replaced(now);
        let old = std::mem::replace(
            &mut *self.producer.write().unwrap_or_else(PoisonError::into_inner),
            Current { producer: fresh, generation },
        );
        self.metrics.replacements.with_label_values(&[reason.as_str()]).inc();
        self.metrics.generation.set(generation as i64);
        tracing::warn!(reason = reason.as_str(), generation, failed_frames, last_error = %error,
            "kafka: producer made no progress; replaced it with a new one");
        // The last handle's drop purges and flushes (up to 500 ms): not on a runtime thread.
        tokio::task::spawn_blocking(move || drop(old));
    }

    async fn deliver_with(&self, producer: &FutureProducer, batches: &[&BatchRecord]) -> Result<(), FrameFailure> {
        let mut pending = Vec::with_capacity(batches.iter().map(|b| b.events.len()).sum());
        let mut payload = Vec::new();
        for batch in batches {
            let topic = match batch.stream {
                Stream::Events => format!("{}{}", self.topic_prefix, batch.region),
                Stream::DeadLetter => self.dlq_topic.clone(),
                Stream::Overflow => format!("{}{}.overflow", self.topic_prefix, batch.region),
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
                        Err((e, _)) => {
                            return Err(FrameFailure {
                                producer_state: is_producer_state_error(&e),
                                first: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        let mut failure: Option<FrameFailure> = None;
        for delivery in pending {
            let (message, producer_state) = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => (e.to_string(), is_producer_state_error(&e)),
                Err(_) => ("producer dropped the delivery report".to_string(), false),
            };
            let f = failure.get_or_insert(FrameFailure { first: message, producer_state: false });
            f.producer_state |= producer_state;
        }
        failure.map_or(Ok(()), Err)
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
        // Core's own registry: the test reads what core exports.
        let metrics = crate::metrics::CoreMetrics::new().unwrap();
        let sink = KafkaSink::new(&config, metrics.producer.clone()).unwrap();
        sink.deliver(&[&batch(0)]).await.unwrap();

        let (producer, generation) = sink.current();
        assert_eq!(generation, 0);
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
        assert_eq!(sink.current().1, 1, "one new producer");
        assert_eq!(metrics.producer.replacements.with_label_values(&["fatal"]).get(), 1);
        assert_eq!(metrics.producer.generation.get(), 1);
        assert_eq!(metrics.producer.failed_frames.get(), 0, "the new producer delivered");
        let text = metrics.render();
        for reason in ["producer_state", "stalled"] {
            let line = format!("sluice_core_producer_replacements_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "every reason is exported before its first use: {line}");
        }
    }
}
