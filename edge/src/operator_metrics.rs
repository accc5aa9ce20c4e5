//! Metrics of the operator-facing state, read at scrape time: whether the edge is draining,
//! whether forwarding is paused, frames acked, and how far behind the forwarder is (unacked bytes
//! and the age of the oldest unacked record: the number to alert on during a core or broker
//! outage, see `deploy/RUNBOOK.md`).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntGauge};

use crate::drain::Drain;
use crate::forwarder_control::ForwarderControl;
use crate::wal::Wal;

pub struct OperatorCollector {
    wal: Wal,
    drain: Arc<Drain>,
    forwarder: Option<Arc<ForwarderControl>>,
    draining: IntGauge,
    paused: IntGauge,
    frames_acked: IntCounter,
    unacked_bytes: IntGauge,
    oldest_age: Gauge,
}

impl OperatorCollector {
    pub fn new(
        wal: Wal,
        drain: Arc<Drain>,
        forwarder: Option<Arc<ForwarderControl>>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            wal,
            drain,
            forwarder,
            draining: IntGauge::new("sluice_edge_draining", "1 while the edge drains (readiness off, ingest refused)")?,
            paused: IntGauge::new("sluice_edge_forwarder_paused", "1 while an operator has paused forwarding")?,
            frames_acked: IntCounter::new("sluice_edge_forwarder_frames_acked_total", "Frames core acknowledged")?,
            unacked_bytes: IntGauge::new(
                "sluice_edge_wal_unacked_bytes",
                "Committed WAL bytes core has not acknowledged (what a drain still has to forward)",
            )?,
            oldest_age: Gauge::new(
                "sluice_edge_wal_oldest_unacked_age_seconds",
                "Age of the oldest record core has not acknowledged; 0 when the WAL is drained",
            )?,
        })
    }
}

impl Collector for OperatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.draining.desc(),
            self.paused.desc(),
            self.frames_acked.desc(),
            self.unacked_bytes.desc(),
            self.oldest_age.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.draining.set(i64::from(self.drain.is_draining()));
        if let Some(f) = &self.forwarder {
            self.paused.set(i64::from(f.is_paused()));
            let acked = f.frames_acked();
            self.frames_acked.inc_by(acked.saturating_sub(self.frames_acked.get()));
        }
        match self.wal.depth() {
            Ok(depth) => {
                self.unacked_bytes.set(i64::try_from(depth.unacked_bytes).unwrap_or(i64::MAX));
                let oldest = self.wal.oldest_unacked(&depth).ok().flatten().map(|r| r.received_at_ms);
                let age_ms = oldest.map_or(0, |t| crate::http::now_ms().saturating_sub(t));
                self.oldest_age.set(age_ms as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: reading the WAL depth failed"),
        }
        [
            self.draining.collect(),
            self.paused.collect(),
            self.frames_acked.collect(),
            self.unacked_bytes.collect(),
            self.oldest_age.collect(),
        ]
        .concat()
    }
}
