//! Metrics of the operator-facing state, read at scrape time: whether the edge is draining,
//! whether forwarding is paused, and how many committed bytes core has not acknowledged (what a
//! drain still has to forward; see `deploy/RUNBOOK.md`).

use std::sync::Arc;

use prometheus::IntGauge;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::forwarder_control::ForwarderControl;
use crate::operate::drain::Drain;
use crate::wal::Wal;

pub struct OperatorCollector {
    wal: Wal,
    drain: Arc<Drain>,
    forwarder: Option<Arc<ForwarderControl>>,
    draining: IntGauge,
    paused: IntGauge,
    unacked_bytes: IntGauge,
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
            unacked_bytes: IntGauge::new(
                "sluice_edge_wal_unacked_bytes",
                "Committed WAL bytes core has not acknowledged (what a drain still has to forward)",
            )?,
        })
    }
}

impl Collector for OperatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.draining.desc(), self.paused.desc(), self.unacked_bytes.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.draining.set(i64::from(self.drain.is_draining()));
        self.paused.set(i64::from(self.forwarder.as_ref().is_some_and(|f| f.is_paused())));
        match self.wal.depth() {
            Ok(depth) => self.unacked_bytes.set(i64::try_from(depth.unacked_bytes).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!(error = %e, "metrics: reading the WAL depth failed"),
        }
        [self.draining.collect(), self.paused.collect(), self.unacked_bytes.collect()].concat()
    }
}
