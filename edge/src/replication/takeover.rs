//! Metrics of the takeovers this edge runs as a replica (`sluice_edge_takeover_*{origin}`): the
//! series this edge's own forwarder exports, per origin whose copy is being forwarded, plus whether
//! a takeover runs and how much of the copy core has not acknowledged yet. The `origin` label is
//! bounded by the POP's peer list.
//!
//! A takeover forwarder gets a [`ForwarderMetrics`] of its own ([`TakeoverMetrics::forwarder`]):
//! its counters are the origin's labelled counters, so they keep counting across takeovers;
//! its gauges are read at scrape time while it runs, and summed when two copies of one origin
//! (an orphan and the current WAL) are forwarded at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::link_health::LinkHealth;
use crate::metrics::ForwarderMetrics;
use crate::wal::Position;
use crate::wal::scan::{self, SegmentFile};

/// Cheap to clone: every clone shares the series and the set of running takeovers.
#[derive(Clone)]
pub struct TakeoverMetrics {
    state: Arc<Mutex<State>>,
    active: IntGaugeVec,
    frames_in_flight: IntGaugeVec,
    oldest_unacked_age: GaugeVec,
    unacked_bytes: IntGaugeVec,
    forwarded_records: IntCounterVec,
    forwarded_bytes: IntCounterVec,
    send_failures: IntCounterVec,
}

#[derive(Default)]
struct State {
    /// By (origin, WAL ID).
    running: HashMap<(String, u64), Running>,
    /// Origins that had a takeover since start: their `active` stays at 0 rather than vanishing.
    seen: BTreeSet<String>,
}

struct Running {
    copy: PathBuf,
    metrics: ForwarderMetrics,
    link: Arc<LinkHealth>,
    /// Breaker opens (failed sends) of this forwarder already added to `send_failures`.
    failures_counted: u64,
}

impl Running {
    fn count_failures(&mut self, counter: &IntCounterVec, origin: &str) {
        let opens = self.link.opens();
        counter.with_label_values(&[origin]).inc_by(opens.saturating_sub(self.failures_counted));
        self.failures_counted = opens;
    }
}

/// Removes its takeover from the running set when dropped (the takeover stopped).
pub struct RunningGuard {
    metrics: TakeoverMetrics,
    key: (String, u64),
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let m = &self.metrics;
        let mut state = m.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut r) = state.running.remove(&self.key) {
            r.count_failures(&m.send_failures, &self.key.0);
        }
    }
}

impl TakeoverMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let origin = &["origin"];
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), origin);
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), origin);
        Ok(Self {
            state: Arc::default(),
            active: gauge(
                "sluice_edge_takeover_active",
                "Copies of the origin's WAL this edge forwards to core itself (the origin went silent)",
            )?,
            frames_in_flight: gauge(
                "sluice_edge_takeover_frames_in_flight",
                "Takeover frames sent to core, awaiting its ack",
            )?,
            oldest_unacked_age: GaugeVec::new(
                Opts::new(
                    "sluice_edge_takeover_oldest_unacked_age_seconds",
                    "Age since receipt of the oldest record of a copy being taken over that core has not acknowledged",
                ),
                origin,
            )?,
            unacked_bytes: gauge(
                "sluice_edge_takeover_unacked_bytes",
                "Bytes of the copies being taken over that core has not acknowledged (what the takeover still has to forward)",
            )?,
            forwarded_records: counter(
                "sluice_edge_takeover_forwarded_records_total",
                "Records of the origin's copy that a takeover got acknowledged by core",
            )?,
            forwarded_bytes: counter(
                "sluice_edge_takeover_forwarded_bytes_total",
                "WAL bytes of the origin's copy that a takeover got acknowledged by core",
            )?,
            send_failures: counter(
                "sluice_edge_takeover_send_failures_total",
                "Takeover sends to core that failed (each opens the takeover forwarder's circuit breaker)",
            )?,
        })
    }

    /// The metrics a takeover forwarder of `origin`'s copy updates.
    pub fn forwarder(&self, origin: &str) -> Result<ForwarderMetrics, prometheus::Error> {
        Ok(ForwarderMetrics {
            // Read at scrape time while the takeover runs; never registered itself.
            frames_in_flight: IntGauge::new("takeover_frames_in_flight", "Summed per origin at scrape time")?,
            forwarded_records: self.forwarded_records.with_label_values(&[origin]),
            forwarded_bytes: self.forwarded_bytes.with_label_values(&[origin]),
            oldest_unacked_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A takeover of `origin`'s WAL `wal_id`, copied in `copy`, started with `metrics` (from
    /// [`TakeoverMetrics::forwarder`]). It counts as running until the guard is dropped.
    pub fn started(
        &self,
        origin: &str,
        wal_id: u64,
        copy: &Path,
        metrics: ForwarderMetrics,
        link: Arc<LinkHealth>,
    ) -> RunningGuard {
        let key = (origin.to_string(), wal_id);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.seen.insert(origin.to_string());
        state.running.insert(key.clone(), Running { copy: copy.to_path_buf(), metrics, link, failures_counted: 0 });
        RunningGuard { metrics: self.clone(), key }
    }

    fn gauges(&self) -> [&dyn Collector; 4] {
        [&self.active, &self.frames_in_flight, &self.oldest_unacked_age, &self.unacked_bytes]
    }

    fn counters(&self) -> [&dyn Collector; 3] {
        [&self.forwarded_records, &self.forwarded_bytes, &self.send_failures]
    }
}

/// Per origin, what its running takeovers add up to.
#[derive(Default)]
struct Totals {
    active: i64,
    frames_in_flight: i64,
    oldest_unacked_age: f64,
    unacked_bytes: u64,
}

impl Collector for TakeoverMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().chain(self.counters()).flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut totals: BTreeMap<String, Totals> = state.seen.iter().map(|o| (o.clone(), Totals::default())).collect();
        for ((origin, _), r) in state.running.iter_mut() {
            r.count_failures(&self.send_failures, origin);
            let t = totals.entry(origin.clone()).or_default();
            t.active += 1;
            t.frames_in_flight += r.metrics.frames_in_flight.get();
            t.oldest_unacked_age = t.oldest_unacked_age.max(r.metrics.oldest_unacked_age_secs());
            match copy_unacked_bytes(&r.copy) {
                Ok(bytes) => t.unacked_bytes += bytes,
                Err(e) => tracing::warn!(origin = %origin, error = %e, "metrics: reading a taken-over copy failed"),
            }
        }
        drop(state);
        self.active.reset();
        self.frames_in_flight.reset();
        self.oldest_unacked_age.reset();
        self.unacked_bytes.reset();
        for (origin, t) in &totals {
            let o = &[origin.as_str()];
            self.active.with_label_values(o).set(t.active);
            self.frames_in_flight.with_label_values(o).set(t.frames_in_flight);
            self.oldest_unacked_age.with_label_values(o).set(t.oldest_unacked_age);
            self.unacked_bytes.with_label_values(o).set(i64::try_from(t.unacked_bytes).unwrap_or(i64::MAX));
        }
        self.gauges().into_iter().chain(self.counters()).flat_map(|c| c.collect()).collect()
    }
}

/// Bytes of the copy in `dir` past its stored watermark.
fn copy_unacked_bytes(dir: &Path) -> std::io::Result<u64> {
    Ok(unacked_in(&scan::segment_files(dir)?, scan::acked_watermark(dir)?))
}

/// Bytes of the live `segments` past `acked` (none acked: all of them). A copy has no writer
/// ahead of its durable bytes, so its last segment's length is where it ends.
fn unacked_in(segments: &[SegmentFile], acked: Option<Position>) -> u64 {
    let live: Vec<(u64, u64)> = segments.iter().filter(|s| !s.quarantined).map(|s| (s.seq, s.bytes)).collect();
    let Some(&(last, len)) = live.last() else { return 0 };
    scan::unacked_bytes(&live, acked.unwrap_or_default(), Position { segment: last, offset: len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(seq: u64, bytes: u64, quarantined: bool) -> SegmentFile {
        SegmentFile { seq, path: PathBuf::new(), bytes, quarantined }
    }

    #[test]
    fn a_copys_unacked_bytes_start_at_its_watermark_and_skip_quarantined_segments() {
        let segs = [segment(3, 100, false), segment(4, 50, true), segment(5, 70, false)];
        assert_eq!(unacked_in(&segs, None), 170, "nothing acked: every live byte");
        assert_eq!(unacked_in(&segs, Some(Position { segment: 3, offset: 40 })), 130);
        assert_eq!(unacked_in(&segs, Some(Position { segment: 5, offset: 70 })), 0, "fully acked");
        assert_eq!(unacked_in(&[], None), 0);
    }

    /// The sample `name{origin="..."}` of a scrape, as Prometheus would read it.
    fn value(families: &[MetricFamily], name: &str, origin: &str) -> Option<f64> {
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), families, &mut text).unwrap();
        let prefix = format!("{name}{{origin=\"{origin}\"}} ");
        String::from_utf8(text).unwrap().lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    }

    /// Two copies of one origin forwarded at once add up; a stopped takeover leaves its counters
    /// and failures counted, and `active` at 0.
    #[test]
    fn running_takeovers_add_up_per_origin_and_stopping_keeps_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let m = TakeoverMetrics::new().unwrap();
        let (old, new) = (m.forwarder("a").unwrap(), m.forwarder("a").unwrap());
        old.frames_in_flight.set(2);
        new.frames_in_flight.set(3);
        old.forwarded_records.inc_by(7);
        new.forwarded_bytes.inc_by(900);
        let link = Arc::new(LinkHealth::default());
        link.opened();
        let g_old = m.started("a", 1, dir.path(), old, link.clone());
        let g_new = m.started("a", 2, dir.path(), new, Arc::default());
        let f = m.collect();
        assert_eq!(value(&f, "sluice_edge_takeover_active", "a"), Some(2.0));
        assert_eq!(value(&f, "sluice_edge_takeover_frames_in_flight", "a"), Some(5.0));
        assert_eq!(value(&f, "sluice_edge_takeover_forwarded_records_total", "a"), Some(7.0));
        assert_eq!(value(&f, "sluice_edge_takeover_forwarded_bytes_total", "a"), Some(900.0));
        assert_eq!(value(&f, "sluice_edge_takeover_send_failures_total", "a"), Some(1.0));
        assert_eq!(value(&f, "sluice_edge_takeover_unacked_bytes", "a"), Some(0.0), "an empty copy");

        // A failure after the last scrape is still counted when the takeover stops.
        link.opened();
        drop(g_old);
        drop(g_new);
        let f = m.collect();
        assert_eq!(value(&f, "sluice_edge_takeover_active", "a"), Some(0.0));
        assert_eq!(value(&f, "sluice_edge_takeover_frames_in_flight", "a"), Some(0.0));
        assert_eq!(value(&f, "sluice_edge_takeover_send_failures_total", "a"), Some(2.0));
        assert_eq!(value(&f, "sluice_edge_takeover_forwarded_records_total", "a"), Some(7.0));
        assert_eq!(value(&f, "sluice_edge_takeover_active", "b"), None, "no series for an origin never taken over");
    }
}
