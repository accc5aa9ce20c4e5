//! Prometheus metrics of one edge process: one registry, served as text on the admin port
//! (`GET /metrics`). Counters that already live elsewhere as atomics (the WAL writer's group-commit
//! statistics) are read at scrape time by a collector instead of being counted twice.
//!
//! Naming follows Prometheus conventions: `sluice_edge_` prefix, base units, `_total` counters.
//! Tenant labels appear only where the set of tenants is bounded by configuration.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::ingest::admission::Admission;
use crate::ingest::auth::KeyRing;
use crate::link_health::LinkHealth;
use crate::wal::Wal;

pub struct EdgeMetrics {
    registry: Registry,
    /// Events written to the WAL and answered `202`.
    pub accepted_events: IntCounter,
    /// Every HTTP response of the public API by status and error code (`ok` for success).
    pub responses: IntCounterVec,
    /// Time from handing a batch to the WAL until its group's `fdatasync` returned.
    pub enqueue_latency: Histogram,
    /// Time from a request's head being parsed until its response is ready (body read, checks,
    /// WAL append): the server's part of the latency a client sees.
    pub request_duration: Histogram,
    /// Requests refused by admission control, by reason (`ip_rate_limited`, `rate_limited`,
    /// `shed`, `overloaded`, `wal_full`).
    pub admission_refusals: IntCounterVec,
    /// Requests (batches) and accepted events routed to the overflow lane, by tenant (only
    /// tenants an operator routed there: a bounded label set).
    pub overflow_batches: IntCounterVec,
    pub overflow_events: IntCounterVec,
    /// This edge's own forwarder.
    pub forwarder: ForwarderMetrics,
}

/// What a [`crate::forward::Forwarder`] updates as it runs: this edge's own forwarder's
/// (`sluice_edge_forward*`), or a takeover's, labelled by origin
/// (`replication::takeover`).
#[derive(Clone)]
pub struct ForwarderMetrics {
    /// Frames sent to core and not yet acknowledged.
    pub frames_in_flight: IntGauge,
    /// Records and WAL bytes core acknowledged (rate = forwarding throughput).
    pub forwarded_records: IntCounter,
    pub forwarded_bytes: IntCounter,
    /// Edge receipt time (epoch ms) of the oldest record core has not acknowledged; 0 when the
    /// forwarder is caught up. Exposed as an age at scrape time.
    pub oldest_unacked_ms: Arc<AtomicU64>,
}

impl ForwarderMetrics {
    /// Seconds since the receipt of the oldest record core has not acknowledged; 0 when caught up.
    pub fn oldest_unacked_age_secs(&self) -> f64 {
        let oldest = self.oldest_unacked_ms.load(std::sync::atomic::Ordering::Relaxed);
        let age_ms = if oldest == 0 { 0 } else { crate::clock::now_ms().saturating_sub(oldest) };
        age_ms as f64 / 1000.0
    }
}

impl EdgeMetrics {
    pub fn new(wal: Wal) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let accepted_events =
            IntCounter::new("sluice_edge_accepted_events_total", "Events made durable in the WAL and answered 202")?;
        let responses = IntCounterVec::new(
            Opts::new("sluice_edge_responses_total", "Public API responses by HTTP status and error code"),
            &["status", "code"],
        )?;
        let enqueue_latency = Histogram::with_opts(
            HistogramOpts::new("sluice_edge_enqueue_latency_seconds", "WAL append until fdatasync returned")
                .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 16)?),
        )?;
        registry.register(Box::new(accepted_events.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(enqueue_latency.clone()))?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_edge_request_duration_seconds",
                "Request head parsed until the response is ready",
            )
            .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 16)?),
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let admission_refusals = IntCounterVec::new(
            Opts::new("sluice_edge_admission_refusals_total", "Requests refused by admission control, by reason"),
            &["reason"],
        )?;
        // At 0 from the start: a dashboard's rate() of a series that appears with its first
        // refusal misses that refusal, and a panel of an absent series shows "no data".
        for reason in crate::ingest::admission::Reason::ALL {
            admission_refusals.with_label_values(&[reason.code()]);
        }
        registry.register(Box::new(admission_refusals.clone()))?;
        let overflow_batches = IntCounterVec::new(
            Opts::new("sluice_edge_overflow_batches_total", "Requests whose events went to the overflow lane"),
            &["tenant"],
        )?;
        let overflow_events = IntCounterVec::new(
            Opts::new("sluice_edge_overflow_events_total", "Accepted events routed to the overflow lane"),
            &["tenant"],
        )?;
        registry.register(Box::new(overflow_batches.clone()))?;
        registry.register(Box::new(overflow_events.clone()))?;
        let forwarder_frames_in_flight =
            IntGauge::new("sluice_edge_forwarder_frames_in_flight", "Frames sent to core, awaiting its ack")?;
        let forwarded_records =
            IntCounter::new("sluice_edge_forwarded_records_total", "WAL records acknowledged by core")?;
        let forwarded_bytes = IntCounter::new("sluice_edge_forwarded_bytes_total", "WAL bytes acknowledged by core")?;
        registry.register(Box::new(forwarder_frames_in_flight.clone()))?;
        registry.register(Box::new(forwarded_records.clone()))?;
        registry.register(Box::new(forwarded_bytes.clone()))?;
        registry.register(Box::new(wal.stats().sync_latency.clone()))?;
        let forwarder = ForwarderMetrics {
            frames_in_flight: forwarder_frames_in_flight,
            forwarded_records,
            forwarded_bytes,
            oldest_unacked_ms: Arc::new(AtomicU64::new(0)),
        };
        registry.register(Box::new(WalCollector::new(wal, forwarder.clone())?))?;
        Ok(Self {
            registry,
            accepted_events,
            responses,
            enqueue_latency,
            request_duration,
            forwarder,
            admission_refusals,
            overflow_batches,
            overflow_events,
        })
    }

    /// Registers a metric owned by another module (forwarder, limits, replication).
    pub fn register(&self, metric: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(metric)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Reads the WAL writer's counters at scrape time.
struct WalCollector {
    wal: Wal,
    forwarder: ForwarderMetrics,
    oldest_unacked_age: prometheus::Gauge,
    live_bytes: IntGauge,
    fsyncs: IntCounter,
    records: IntCounter,
    bytes: IntCounter,
    fsync_seconds: prometheus::Counter,
}

impl WalCollector {
    fn new(wal: Wal, forwarder: ForwarderMetrics) -> Result<Self, prometheus::Error> {
        Ok(Self {
            wal,
            forwarder,
            oldest_unacked_age: prometheus::Gauge::new(
                "sluice_edge_wal_oldest_unacked_age_seconds",
                "Age since receipt of the oldest WAL record core has not acknowledged (0 when caught up)",
            )?,
            // Not "unforwarded": a segment stays (and counts) until core acked all of it.
            live_bytes: IntGauge::new(
                "sluice_edge_wal_live_bytes",
                "Bytes in live WAL segment files, what the WAL budget limits (a segment is deleted once core \
                 has acknowledged all of it; sluice_edge_wal_unacked_bytes is the exact unacknowledged count)",
            )?,
            fsyncs: IntCounter::new("sluice_edge_wal_fsyncs_total", "Group commits (one fdatasync each)")?,
            records: IntCounter::new("sluice_edge_wal_records_total", "Records written by group commits")?,
            bytes: IntCounter::new("sluice_edge_wal_written_bytes_total", "Bytes written by group commits")?,
            fsync_seconds: prometheus::Counter::new(
                "sluice_edge_wal_fsync_seconds_total",
                "Time spent in fdatasync; divide by fsyncs for the mean",
            )?,
        })
    }
}

impl Collector for WalCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.oldest_unacked_age.desc(),
            self.live_bytes.desc(),
            self.fsyncs.desc(),
            self.records.desc(),
            self.bytes.desc(),
            self.fsync_seconds.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.wal.stats();
        // Counters only go up: add the difference since the last scrape.
        let catch_up = |c: &IntCounter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        self.live_bytes.set(i64::try_from(self.wal.live_bytes()).unwrap_or(i64::MAX));
        catch_up(&self.fsyncs, stats.groups.load(Relaxed));
        catch_up(&self.records, stats.records.load(Relaxed));
        catch_up(&self.bytes, stats.bytes.load(Relaxed));
        let secs = stats.sync_latency.get_sample_sum();
        self.fsync_seconds.inc_by((secs - self.fsync_seconds.get()).max(0.0));
        self.oldest_unacked_age.set(self.forwarder.oldest_unacked_age_secs());
        [
            self.oldest_unacked_age.collect(),
            self.live_bytes.collect(),
            self.fsyncs.collect(),
            self.records.collect(),
            self.bytes.collect(),
            self.fsync_seconds.collect(),
        ]
        .concat()
    }
}

/// Admission state read at scrape time: `sluice_edge_tenant_quota_utilization` (accepted
/// events/s over quota, labelled only for tenants with a quota in the keys file, so the label
/// set is bounded by configuration) and the forwarder's circuit breaker.
pub struct AdmissionCollector {
    admission: Arc<Admission>,
    keys: Arc<KeyRing>,
    link: Option<Arc<LinkHealth>>,
    utilization: GaugeVec,
    breaker_state: IntGauge,
    breaker_opens: IntCounter,
}

impl AdmissionCollector {
    pub fn new(
        admission: Arc<Admission>,
        keys: Arc<KeyRing>,
        link: Option<Arc<LinkHealth>>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            admission,
            keys,
            link,
            utilization: GaugeVec::new(
                Opts::new(
                    "sluice_edge_tenant_quota_utilization",
                    "Accepted events/s over the tenant's quota (tenants with a quota in the keys file)",
                ),
                &["tenant"],
            )?,
            breaker_state: IntGauge::new(
                "sluice_edge_forwarder_breaker_state",
                "Forwarder circuit breaker towards core: 0 closed, 1 half-open, 2 open",
            )?,
            breaker_opens: IntCounter::new(
                "sluice_edge_forwarder_breaker_opens_total",
                "Times the forwarder's circuit breaker opened (a send to core failed)",
            )?,
        })
    }
}

impl Collector for AdmissionCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.utilization.desc(), self.breaker_state.desc(), self.breaker_opens.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.utilization.reset();
        for (tenant, u) in self.admission.utilization(&self.keys.snapshot()) {
            self.utilization.with_label_values(&[tenant.as_str()]).set(u);
        }
        let mut out = self.utilization.collect();
        if let Some(link) = &self.link {
            self.breaker_state.set(link.state() as i64);
            self.breaker_opens.inc_by(link.opens().saturating_sub(self.breaker_opens.get()));
            out.extend(self.breaker_state.collect());
            out.extend(self.breaker_opens.collect());
        }
        out
    }
}
