//! The QUIC ingest server: one bidirectional stream per frame, answered with an [`Ack`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

use sluice_wire::frame::{self, FrameError};
use sluice_wire::protocol::{self, Ack, MAX_COMPRESSED_LEN, MAX_HEADER_LEN};
use sluice_wire::record::{RECORD_VERSION, RecordError};
use sluice_wire::{BatchRecord, Stream};

use crate::circuit::SinkCircuit;
use crate::clock::now_ms;
use crate::dedupe::DedupeIndex;
use crate::metrics::CoreMetrics;
use crate::sink::Sink;

pub struct Ingest {
    pub dedupe: Arc<dyn DedupeIndex>,
    pub sink: Sink,
    pub in_flight: Arc<BatchLocks>,
    pub metrics: Arc<CoreMetrics>,
    /// Open while the sink's deliveries fail: frames are then left unread.
    pub circuit: SinkCircuit,
}

impl Ingest {
    pub fn new(dedupe: Arc<dyn DedupeIndex>, sink: Sink, metrics: Arc<CoreMetrics>) -> Self {
        let circuit = SinkCircuit::new(metrics.sink_circuit_state.clone(), metrics.sink_circuit_opens.clone());
        Self { dedupe, sink, in_flight: Arc::default(), metrics, circuit }
    }
}

/// One lock per batch ID being delivered. An edge whose ack timed out resends a frame while the
/// first copy may still be producing (the first `process` is not cancelled when its stream
/// goes away); without this, both copies pass the dedupe check before either is recorded and
/// every event is produced twice. The second copy waits, then finds the batch in the index.
#[derive(Default)]
pub struct BatchLocks {
    map: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct BatchGuard {
    locks: Arc<BatchLocks>,
    ids: Vec<Uuid>,
    guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl BatchLocks {
    /// Locks every ID (in sorted order, so two frames never wait on each other crosswise).
    pub async fn lock(self: &Arc<Self>, mut ids: Vec<Uuid>) -> BatchGuard {
        ids.sort_unstable();
        ids.dedup();
        let mut guards = Vec::with_capacity(ids.len());
        for id in &ids {
            let lock = self.map.lock().unwrap_or_else(PoisonError::into_inner).entry(*id).or_default().clone();
            guards.push(lock.lock_owned().await);
        }
        BatchGuard { locks: self.clone(), ids, guards }
    }

    /// Batch IDs currently locked or waited for (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.guards.clear();
        let mut map = self.locks.map.lock().unwrap_or_else(PoisonError::into_inner);
        for id in &self.ids {
            // Only the map holds it: nobody is waiting, forget the entry.
            if map.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(id);
            }
        }
    }
}

pub async fn serve(endpoint: quinn::Endpoint, ingest: Arc<Ingest>) {
    while let Some(incoming) = endpoint.accept().await {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "core: handshake failed");
                    return;
                }
            };
            let peer = conn.remote_address();
            tracing::info!(%peer, "core: edge connected");
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        tokio::spawn(handle_stream(ingest.clone(), send, recv));
                    }
                    Err(e) => {
                        tracing::info!(%peer, reason = %e, "core: edge disconnected");
                        return;
                    }
                }
            }
        });
    }
}

async fn handle_stream(ingest: Arc<Ingest>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    // Not a byte is read while the sink's circuit is open (backpressure to the edges).
    let _pass = ingest.circuit.pass().await;
    let ack = match recv.read_to_end(4 + MAX_HEADER_LEN + MAX_COMPRESSED_LEN).await {
        Ok(msg) => ingest.process(&msg).await,
        Err(e) => {
            tracing::warn!(error = %e, "core: reading frame failed");
            return;
        }
    };
    let reply = match protocol::encode_ack(&ack) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "core: encoding ack failed");
            return;
        }
    };
    if let Err(e) = send.write_all(&reply).await {
        tracing::warn!(error = %e, "core: sending ack failed");
        return;
    }
    let _ = send.finish();
}

impl Ingest {
    /// Decodes a frame, delivers the batches not delivered before, and says what the edge may do.
    pub async fn process(&self, msg: &[u8]) -> Ack {
        let ack = self.process_frame(msg).await;
        let label = match ack {
            Ack::Stored => "stored",
            Ack::Retry { .. } => "retry",
            Ack::Rejected { .. } => "rejected",
        };
        self.metrics.frames.with_label_values(&[label]).inc();
        ack
    }

    async fn process_frame(&self, msg: &[u8]) -> Ack {
        let (header, payload) = match protocol::decode_message(msg) {
            Ok(x) => x,
            Err(e) => {
                return Ack::Rejected { reason: format!("bad frame message: {e}") };
            }
        };
        let batches = match frame::decompress(payload, header.raw_len as usize) {
            Ok(b) => b,
            // A record format from a newer edge is not damage: the edge keeps the frame in its
            // WAL and resends it until this core is upgraded (a rejection would quarantine it).
            Err(e @ FrameError::Record { source: RecordError::UnknownVersion(v), .. }) if v > RECORD_VERSION => {
                tracing::error!(edge = %header.edge_id, segment = header.segment, start = header.start, error = %e,
                    "core: frame holds a record format newer than this core reads; upgrade core");
                return Ack::Retry { reason: format!("{e}; upgrade core") };
            }
            Err(e) => {
                tracing::error!(edge = %header.edge_id, segment = header.segment, start = header.start, error = %e, "core: undecodable frame");
                return Ack::Rejected { reason: e.to_string() };
            }
        };
        let ids: Vec<_> = batches.iter().map(|b| b.batch_id).collect();
        // Held until the batches are recorded (or failed): a concurrent copy waits here.
        let _in_flight = self.in_flight.lock(ids.clone()).await;
        let dedupe = self.dedupe.clone();
        let seen = match tokio::task::spawn_blocking(move || dedupe.seen(&ids)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Ack::Retry { reason: e.to_string() };
            }
            Err(e) => {
                return Ack::Retry { reason: e.to_string() };
            }
        };
        let fresh: Vec<&BatchRecord> = batches.iter().zip(&seen).filter(|(_, s)| !**s).map(|(b, _)| b).collect();
        let duplicates = batches.len() - fresh.len();
        self.metrics.batches.inc_by(batches.len() as u64);
        self.metrics.duplicate_batches.inc_by(duplicates as u64);
        if !fresh.is_empty() {
            let streams = [Stream::Events, Stream::DeadLetter, Stream::Overflow];
            let per_stream = streams.map(|stream| {
                (stream, fresh.iter().filter(|b| b.stream == stream).map(|b| b.events.len() as u64).sum::<u64>())
            });
            let oldest = fresh.iter().map(|b| b.received_at_ms).min().unwrap_or(0);
            let delivering = self.metrics.in_delivery.start(per_stream.iter().map(|(_, n)| n).sum(), oldest);
            let timer = self.metrics.delivery_seconds.start_timer();
            if let Err(e) = self.sink.deliver(&fresh).await {
                timer.stop_and_discard();
                tracing::warn!(edge = %header.edge_id, segment = header.segment, error = %e, "core: sink refused frame; edge will resend");
                self.circuit.failed();
                return Ack::Retry { reason: e.to_string() };
            }
            self.circuit.delivered();
            drop((timer, delivering));
            for (stream, n) in per_stream {
                self.metrics.delivered_events.with_label_values(&[stream.as_str()]).inc_by(n);
            }
            let ids: Vec<_> = fresh.iter().map(|b| b.batch_id).collect();
            let dedupe = self.dedupe.clone();
            // Recording after delivery: a crash in between re-delivers the frame (a duplicate with
            // the same IDs) rather than losing it.
            match tokio::task::spawn_blocking(move || dedupe.record(&ids, now_ms())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "core: dedupe record failed; a resend would duplicate")
                }
                Err(e) => tracing::warn!(error = %e, "core: dedupe record task failed"),
            }
        }
        tracing::debug!(edge = %header.edge_id, segment = header.segment, start = header.start, end = header.end,
            batches = batches.len(), duplicates, "core: frame stored");
        Ack::Stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::RedbDedupe;
    use crate::sink::{EVENTS_FILE_NAME, FileSink};
    use sluice_wire::protocol::{FrameHeader, PROTOCOL_VERSION};
    use sluice_wire::record::{HEADER_LEN, encode_record};
    use sluice_wire::{EventRecord, Stream};
    use std::collections::HashMap;

    fn frame() -> Vec<u8> {
        frame_of(&records())
    }

    /// 20 framed records of 5 events each.
    fn records() -> Vec<u8> {
        let mut raw = Vec::new();
        for b in 0..20 {
            let record = test_batch(b, "acme".into(), "r", br#","tenant":"acme""#.to_vec());
            encode_record(&record, &mut raw).unwrap();
        }
        raw
    }

    fn frame_of(raw: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            protocol_version: PROTOCOL_VERSION,
            edge_id: "e".into(),
            segment: 1,
            start: 0,
            end: raw.len() as u64,
            record_count: 20,
            raw_len: raw.len() as u32,
        };
        frame::encode_message(&header, raw, 3).unwrap()
    }

    /// Regression: a frame resent while its first copy was still being delivered passed the
    /// dedupe check too (nothing was recorded yet), so every event was produced twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_copies_of_a_frame_are_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&dir.path().join("d.redb")).unwrap());
        let sink = Sink::File(FileSink::open(&dir.path().join("sink")).unwrap());
        let ingest = Arc::new(Ingest::new(dedupe, sink, Arc::new(CoreMetrics::new().unwrap())));
        let msg = Arc::new(frame());
        let copies: Vec<_> = (0..4)
            .map(|_| {
                let (ingest, msg) = (ingest.clone(), msg.clone());
                tokio::spawn(async move { ingest.process(&msg).await })
            })
            .collect();
        for c in copies {
            assert_eq!(c.await.unwrap(), Ack::Stored);
        }
        let sunk = std::fs::read_to_string(dir.path().join("sink").join(EVENTS_FILE_NAME)).unwrap();
        assert_eq!(sunk.lines().count(), 100, "each of the 100 events is delivered exactly once");
        assert!(
            sunk.lines().all(|l| l.ends_with(r#","tenant":"acme"}"#)),
            "the record's shared members are in every event"
        );
        assert!(ingest.in_flight.is_empty(), "locks are released");
        let m = &ingest.metrics;
        assert_eq!(m.frames.with_label_values(&["stored"]).get(), 4);
        assert_eq!((m.batches.get(), m.duplicate_batches.get()), (80, 60), "dedupe hits are counted");
        assert_eq!(m.delivered_events.with_label_values(&["events"]).get(), 100);
        assert_eq!(m.in_delivery.snapshot(now_ms()).0, 0, "nothing left in delivery");
    }

    /// A record format this core does not know yet (an edge upgraded before core) is retried,
    /// not rejected: a rejection makes the edge quarantine the segment and stop forwarding it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_record_format_is_retried_not_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&dir.path().join("d.redb")).unwrap());
        let sink = Sink::File(FileSink::open(&dir.path().join("sink")).unwrap());
        let ingest = Ingest::new(dedupe, sink, Arc::new(CoreMetrics::new().unwrap()));
        // The first record claims version 99, with a valid checksum.
        let mut raw = records();
        let end = HEADER_LEN + u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        raw[HEADER_LEN] = 99;
        let crc = crc32c::crc32c(&raw[HEADER_LEN..end]);
        raw[4..8].copy_from_slice(&crc.to_le_bytes());
        let msg = frame_of(&raw);
        assert!(matches!(ingest.process(&msg).await, Ack::Retry { ref reason } if reason.contains("upgrade core")));
    }

    /// Batch `b` of 5 events (`{b}-{i}`) for `tenant`.
    fn test_batch(b: usize, tenant: String, region: &str, shared: Vec<u8>) -> BatchRecord {
        BatchRecord {
            batch_id: sluice_wire::ids::new_batch_id(),
            tenant,
            env: "prod".into(),
            region: region.into(),
            received_at_ms: 1,
            stream: Stream::Events,
            events: (0..5)
                .map(|i| EventRecord { event_id: format!("{b}-{i}"), json: format!(r#"{{"i":{i}}}"#).into_bytes() })
                .collect(),
            traceparent: None,
            shared,
        }
    }

    /// 20 batches of 5 events, one tenant each (so they spread over the topic's partitions).
    fn tenant_records(region: &str) -> (Vec<u8>, Vec<BatchRecord>) {
        let mut raw = Vec::new();
        let batches: Vec<BatchRecord> = (0..20).map(|b| test_batch(b, format!("t{b}"), region, Vec::new())).collect();
        for b in &batches {
            encode_record(b, &mut raw).unwrap();
        }
        (raw, batches)
    }

    /// Event ID → copies in `topic` (read until no new message for a second).
    fn copies_in(brokers: &str, topic: &str) -> HashMap<String, usize> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "core-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut copies = HashMap::new();
        let mut idle = std::time::Instant::now();
        while idle.elapsed() < std::time::Duration::from_secs(2) {
            if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) {
                let id = m.headers().and_then(|h| h.iter().find(|x| x.key == "event_id").and_then(|x| x.value));
                *copies.entry(String::from_utf8_lossy(id.unwrap_or_default()).into_owned()).or_insert(0) += 1;
                idle = std::time::Instant::now();
            }
        }
        copies
    }

    /// Core's half of the crash model (issue 17): a producer that fails in the middle of a frame
    /// (one partition's leader is down: some events are written, the rest time out), then a core
    /// "crash" after the dedupe index recorded the frame but before the edge got the ack.
    ///
    /// Shown: no frame is acked while any of its events is undelivered, the dedupe index records
    /// nothing of a failed frame, and the duplicate window is exactly "a frame that failed part
    /// way is produced again whole": the events written by the failed attempt appear twice, the
    /// others once; a frame recorded in the index is never produced again, whatever crashed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_that_fails_part_way_is_never_acked_and_is_resent_whole() {
        use crate::config::KafkaConfig;
        use crate::sink::KafkaSink;
        use rdkafka::mocking::MockCluster;

        let mock = MockCluster::new(2).unwrap();
        let topic = "events.midframe";
        mock.create_topic(topic, 2, 1).unwrap();
        mock.partition_leader(topic, 0, Some(1)).unwrap();
        mock.partition_leader(topic, 1, Some(2)).unwrap();
        let kafka = KafkaConfig {
            brokers: mock.bootstrap_servers(),
            properties: [("message.timeout.ms".to_string(), "2000".to_string())].into(),
            ..KafkaConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let metrics = Arc::new(CoreMetrics::new().unwrap());
            let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&dir.path().join("d.redb")).unwrap());
            let sink = Sink::Kafka(Box::new(KafkaSink::new(&kafka, metrics.producer.clone()).unwrap()));
            (Ingest::new(dedupe.clone(), sink, metrics), dedupe)
        };
        let (raw, batches) = tenant_records("midframe");
        let ids: Vec<Uuid> = batches.iter().map(|b| b.batch_id).collect();
        let msg = frame_of(&raw);

        let (ingest, dedupe) = open();
        mock.broker_down(2).unwrap();
        assert!(
            matches!(ingest.process(&msg).await, Ack::Retry { .. }),
            "a frame with undelivered events is not acked"
        );
        assert_eq!(dedupe.seen(&ids).unwrap(), vec![false; 20], "nothing of a failed frame is recorded");
        mock.broker_up(2).unwrap();
        let mut stored = false;
        for _ in 0..10 {
            if ingest.process(&msg).await == Ack::Stored {
                stored = true;
                break;
            }
        }
        assert!(stored, "the resend is stored once the partition is back");
        assert_eq!(dedupe.seen(&ids).unwrap(), vec![true; 20]);
        let after_resend = copies_in(&mock.bootstrap_servers(), topic);
        assert_eq!(after_resend.len(), 100, "every event reached the broker");
        let twice = after_resend.values().filter(|&&n| n == 2).count();
        assert!(twice > 0 && twice < 100, "the events written by the failed attempt, and only those, twice: {twice}");
        assert!(after_resend.values().all(|&n| n <= 2));

        // The ack is lost with core (a crash after the index recorded the frame); the edge
        // resends to a fresh core on the same index: acked from the index, produced no more.
        drop((ingest, dedupe));
        let (ingest, _dedupe) = open();
        assert_eq!(ingest.process(&msg).await, Ack::Stored);
        assert_eq!(copies_in(&mock.bootstrap_servers(), topic), after_resend, "no copy more");
    }

    /// The overflow lane: a frame mixing overflow records with ordinary ones delivers each to its
    /// own topic (`events.<region>.overflow` / `events.<region>`), once, counted per stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overflow_records_go_to_the_overflow_topic_and_only_they() {
        use crate::config::KafkaConfig;
        use crate::sink::KafkaSink;
        use rdkafka::mocking::MockCluster;

        let mock = MockCluster::new(1).unwrap();
        for topic in ["events.lanes", "events.lanes.overflow"] {
            mock.create_topic(topic, 2, 1).unwrap();
        }
        let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), ..KafkaConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(CoreMetrics::new().unwrap());
        let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&dir.path().join("d.redb")).unwrap());
        let sink = Sink::Kafka(Box::new(KafkaSink::new(&kafka, metrics.producer.clone()).unwrap()));
        let ingest = Ingest::new(dedupe, sink, metrics);
        let (_, mut batches) = tenant_records("lanes");
        let mut raw = Vec::new();
        for (i, b) in batches.iter_mut().enumerate() {
            if i % 2 == 1 {
                b.stream = Stream::Overflow;
            }
            encode_record(b, &mut raw).unwrap();
        }
        let msg = frame_of(&raw);
        assert_eq!(ingest.process(&msg).await, Ack::Stored);
        let ids_of = |stream| -> HashMap<String, usize> {
            batches
                .iter()
                .filter(|b| b.stream == stream)
                .flat_map(|b| &b.events)
                .map(|e| (e.event_id.clone(), 1))
                .collect()
        };
        let brokers = mock.bootstrap_servers();
        assert_eq!(copies_in(&brokers, "events.lanes.overflow"), ids_of(Stream::Overflow), "overflow, once each");
        assert_eq!(copies_in(&brokers, "events.lanes"), ids_of(Stream::Events), "the others, in the usual topic");
        let delivered = |s: &str| ingest.metrics.delivered_events.with_label_values(&[s]).get();
        assert_eq!((delivered("events"), delivered("overflow")), (50, 50));
    }

    /// An index that fails while `fail` is set.
    struct Flaky {
        inner: RedbDedupe,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), crate::dedupe::DedupeError> {
            match self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                true => Err(crate::dedupe::DedupeError("disk gone".into())),
                false => Ok(()),
            }
        }
    }

    impl DedupeIndex for Flaky {
        fn seen(&self, ids: &[Uuid]) -> Result<Vec<bool>, crate::dedupe::DedupeError> {
            self.check()?;
            self.inner.seen(ids)
        }
        fn record(&self, ids: &[Uuid], now_ms: u64) -> Result<(), crate::dedupe::DedupeError> {
            self.check()?;
            self.inner.record(ids, now_ms)
        }
        fn evict(&self, cutoff_ms: u64) -> Result<usize, crate::dedupe::DedupeError> {
            self.check()?;
            self.inner.evict(cutoff_ms)
        }
    }

    /// `GET /ready` of the admin port follows the sink circuit (degraded, `200`) and the dedupe
    /// index (`503` while it fails, ready again once it works).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_follows_the_sink_circuit_and_the_dedupe_index() {
        use serde_json::json;
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbDedupe::open(&dir.path().join("d.redb")).unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dedupe = Arc::new(crate::dedupe::Watched::new(Flaky { inner, fail: fail.clone() }));
        let sink = Sink::File(FileSink::open(&dir.path().join("sink")).unwrap());
        let metrics = Arc::new(CoreMetrics::new().unwrap());
        let ingest = Arc::new(Ingest::new(dedupe.clone(), sink, metrics.clone()));
        let router = crate::admin_router(crate::AdminState { metrics, ingest: ingest.clone(), dedupe: dedupe.clone() });
        let ready = || async {
            let req = axum::http::Request::get("/ready").body(axum::body::Body::empty()).unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        };
        assert_eq!(ready().await, (200, json!({"status": "ready", "degraded": []})));

        ingest.circuit.failed();
        assert_eq!(ready().await, (200, json!({"status": "degraded", "degraded": ["sink_circuit_open"]})));
        ingest.circuit.delivered();

        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(ingest.process(&frame()).await, Ack::Retry { .. }));
        assert_eq!(ready().await, (503, json!({"status": "degraded", "degraded": ["dedupe_failed"]})));

        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ingest.process(&frame()).await, Ack::Stored);
        assert_eq!(ready().await, (200, json!({"status": "ready", "degraded": []})));
    }
}
