//! The Kafka producer's share of core's metrics: written by [`crate::sink`], registered and
//! served with the rest by [`crate::metrics`]. A leaf both import, so neither imports the other.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct ProducerMetrics {
    /// `sluice_core_producer_replacements_total{reason}`.
    pub replacements: IntCounterVec,
    /// `sluice_core_producer_generation`: producers replaced since start.
    pub generation: IntGauge,
    /// `sluice_core_producer_failed_frames`: frames failed since the producer's last delivery.
    pub failed_frames: IntGauge,
}

impl ProducerMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            replacements: IntCounterVec::new(
                Opts::new(
                    "sluice_core_producer_replacements_total",
                    "Kafka producers replaced because they made no progress, by reason (fatal, producer_state, stalled)",
                ),
                &["reason"],
            )?,
            generation: IntGauge::new(
                "sluice_core_producer_generation",
                "Kafka producers replaced since start (0: the first producer is in use)",
            )?,
            failed_frames: IntGauge::new(
                "sluice_core_producer_failed_frames",
                "Frames failed since the Kafka producer in use last delivered one",
            )?,
        };
        registry.register(Box::new(metrics.replacements.clone()))?;
        registry.register(Box::new(metrics.generation.clone()))?;
        registry.register(Box::new(metrics.failed_frames.clone()))?;
        Ok(metrics)
    }
}
