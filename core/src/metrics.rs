//! Prometheus metrics of one core process (`sluice_core_*`), served on the admin port
//! (`admin_listen`, `GET /metrics`).
//!
//! "Broker lag" (the ADR's `broker_lag`) is measured where core can see it: events handed to the
//! sink whose delivery reports have not all come back (`sluice_core_events_in_delivery`), and the
//! age since edge receipt of the oldest of them (`sluice_core_broker_lag_seconds`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::producer_metrics::ProducerMetrics;

pub struct CoreMetrics {
    registry: Registry,
    /// Frames answered, by ack (`stored`, `retry`, `rejected`).
    pub frames: IntCounterVec,
    /// Batches received in frames, and those dropped because the dedupe index had them.
    pub batches: IntCounter,
    pub duplicate_batches: IntCounter,
    /// Events whose delivery was confirmed, by stream (`events`, `dead_letter`).
    pub delivered_events: IntCounterVec,
    /// Time for the sink to confirm one frame's fresh batches.
    pub delivery_seconds: Histogram,
    pub in_delivery: Arc<InDelivery>,
    /// The sink's circuit breaker (`circuit`): 0 closed, 1 half-open, 2 open; and how often it opened.
    pub sink_circuit_state: IntGauge,
    pub sink_circuit_opens: IntCounter,
    /// The Kafka producer's replacements, generation and failed frames ([`ProducerMetrics`]).
    pub producer: ProducerMetrics,
}

impl CoreMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let frames = IntCounterVec::new(Opts::new("sluice_core_frames_total", "Frames answered, by ack"), &["ack"])?;
        let batches = IntCounter::new("sluice_core_batches_total", "Batches received in frames")?;
        let duplicate_batches = IntCounter::new(
            "sluice_core_duplicate_batches_total",
            "Batches dropped as already delivered (dedupe hits)",
        )?;
        let delivered_events = IntCounterVec::new(
            Opts::new("sluice_core_delivered_events_total", "Events confirmed by the sink, by stream"),
            &["stream"],
        )?;
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new("sluice_core_delivery_seconds", "Sink delivery time of one frame's fresh batches")
                .buckets(prometheus::exponential_buckets(0.000_5, 2.0, 16)?),
        )?;
        let in_delivery = Arc::new(InDelivery::default());
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(duplicate_batches.clone()))?;
        registry.register(Box::new(delivered_events.clone()))?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        registry.register(Box::new(InDeliveryCollector::new(in_delivery.clone())?))?;
        let sink_circuit_state = IntGauge::new(
            "sluice_core_sink_circuit_state",
            "Circuit breaker towards the sink: 0 closed, 1 half-open (probing), 2 open (frames left unread)",
        )?;
        let sink_circuit_opens =
            IntCounter::new("sluice_core_sink_circuit_opens_total", "Times the sink's circuit breaker opened")?;
        registry.register(Box::new(sink_circuit_state.clone()))?;
        registry.register(Box::new(sink_circuit_opens.clone()))?;
        let producer = ProducerMetrics::register(&registry)?;
        Ok(Self {
            registry,
            frames,
            batches,
            duplicate_batches,
            delivered_events,
            delivery_seconds,
            in_delivery,
            sink_circuit_state,
            sink_circuit_opens,
            producer,
        })
    }

    /// Registers a metric owned by another module.
    pub fn register(&self, metric: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(metric)
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Deliveries handed to the sink and not yet confirmed.
#[derive(Default)]
pub struct InDelivery {
    next: AtomicU64,
    events: AtomicU64,
    /// Delivery → the oldest edge receipt time (epoch ms) among its events.
    oldest: Mutex<BTreeMap<u64, u64>>,
}

/// Ends one delivery's accounting when dropped (delivered, failed or cancelled alike).
pub struct Delivering<'a> {
    owner: &'a InDelivery,
    id: u64,
    events: u64,
}

impl InDelivery {
    pub fn start(&self, events: u64, oldest_received_at_ms: u64) -> Delivering<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.oldest.lock().unwrap_or_else(PoisonError::into_inner).insert(id, oldest_received_at_ms);
        Delivering { owner: self, id, events }
    }

    /// Events in delivery, and the age in seconds of the oldest (0 when none).
    pub fn snapshot(&self, now_ms: u64) -> (u64, f64) {
        let oldest = self.oldest.lock().unwrap_or_else(PoisonError::into_inner).values().copied().min();
        let age = oldest.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
        (self.events.load(Ordering::Relaxed), age)
    }
}

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.owner.events.fetch_sub(self.events, Ordering::Relaxed);
        self.owner.oldest.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

struct InDeliveryCollector {
    source: Arc<InDelivery>,
    events: IntGauge,
    oldest_age: prometheus::Gauge,
}

impl InDeliveryCollector {
    fn new(source: Arc<InDelivery>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            source,
            events: IntGauge::new("sluice_core_events_in_delivery", "Events handed to the sink, not yet confirmed")?,
            oldest_age: prometheus::Gauge::new(
                "sluice_core_broker_lag_seconds",
                "The ADR's broker_lag: age since edge receipt of the oldest event handed to the sink and not yet \
                 confirmed (0 when none)",
            )?,
        })
    }
}

impl Collector for InDeliveryCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.events.desc(), self.oldest_age.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (events, age) = self.source.snapshot(crate::clock::now_ms());
        self.events.set(i64::try_from(events).unwrap_or(i64::MAX));
        self.oldest_age.set(age);
        [self.events.collect(), self.oldest_age.collect()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_delivery_tracks_the_oldest_open_delivery() {
        let d = InDelivery::default();
        assert_eq!(d.snapshot(10_000), (0, 0.0));
        let a = d.start(5, 4_000);
        let b = d.start(3, 1_000);
        assert_eq!(d.snapshot(10_000), (8, 9.0));
        drop(b);
        assert_eq!(d.snapshot(10_000), (5, 6.0));
        drop(a);
        assert_eq!(d.snapshot(10_000), (0, 0.0));
    }

    /// The value on the line `name value` of a scrape.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn broker_lag_is_exported_under_the_adr_name() {
        let m = CoreMetrics::new().unwrap();
        assert_eq!(sample(&m.render(), "sluice_core_broker_lag_seconds"), Some(0.0));
        // Received at the edge a minute ago and still in delivery.
        let _open = m.in_delivery.start(4, crate::clock::now_ms() - 60_000);
        let text = m.render();
        let lag = sample(&text, "sluice_core_broker_lag_seconds").unwrap();
        assert!((60.0..120.0).contains(&lag), "{text}");
        assert_eq!(sample(&text, "sluice_core_events_in_delivery"), Some(4.0));
    }
}
