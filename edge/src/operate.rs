//! What operators drive and watch: the admin API (`admin`: metrics, status, drain, forwarder
//! pause/resume, tenant controls), the drain (`drain`: readiness gate, in-flight count, report) and
//! the operator gauges (`operator_metrics`).

pub mod admin;
pub mod drain;
pub mod operator_metrics;
