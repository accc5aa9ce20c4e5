//! Sluice edge collector: accepts event batches over HTTP, makes them durable in a local WAL with
//! group commit, answers `202` only after `fdatasync`, and forwards the WAL to core over QUIC.
//!
//! The modules follow an event down the pipeline (ARCHITECTURE.md has the map):
//! `server` and `http` (connections, routes and the steps of a request), `ingest` (everything a
//! request passes before it is appended: keys, admission, idempotency, body, validation, PII;
//! pure where it can be), `wal` (group commit, recovery, the reader), `replication` (a group's
//! copies on peer edges), `forward` (the WAL to core), and `operate` (the admin API, drain,
//! operator metrics). `clock`, `client_ip`, `api_error`, `link_health` and `forwarder_control` are leaves both
//! sides import, so no two modules import each other.

pub mod api_error;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod forward;
pub mod forwarder_control;
pub mod http;
pub mod ingest;
pub mod link_health;
pub mod metrics;
pub mod operate;
pub mod replication;
pub mod routing;
pub mod server;
mod start;
pub mod tls;
pub mod wal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::start::{EdgeBuilder, StartError};
use crate::wal::Wal;

/// How long the admin API stays up after a drain finished, so its report can be collected.
const DRAIN_REPORT_LINGER: Duration = Duration::from_millis(500);

/// A running edge, started by [`Edge::builder`].
pub struct Edge {
    pub http_addr: SocketAddr,
    /// Where the admin API listens, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Where peers' replicas are received, when `replication.listen` is set.
    pub replication_addr: Option<SocketAddr>,
    /// Replication metrics, of this edge as an origin and as a replica.
    pub replication_metrics: Arc<replication::ReplicationMetrics>,
    pub wal: Wal,
    pub metrics: Arc<metrics::EdgeMetrics>,
    /// Drain state: readiness, the ingest gate and the drain's outcome.
    pub drain: Arc<operate::drain::Drain>,
    /// Pause/resume and state of the forwarder, when forwarding is enabled.
    pub forwarder_control: Option<Arc<forward::ForwarderControl>>,
    drain_deadline: Duration,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    forwarder: Option<JoinHandle<std::io::Result<()>>>,
}

impl Edge {
    /// Starts a graceful drain (see [`drain`]) with `deadline`, or `drain_deadline_secs` from the
    /// config. Returns `false` if a drain is already running. Await `drain.finished()`, then call
    /// [`Edge::shutdown`].
    pub fn begin_drain(&self, deadline: Option<Duration>) -> bool {
        self.drain.begin(deadline.unwrap_or(self.drain_deadline))
    }

    /// The life of the `sluice-edge` process: serves until SIGTERM/SIGINT or `POST /drain` starts
    /// a drain, waits for it (a second signal cuts it short), then shuts down.
    pub async fn serve_until_drained(self) {
        let drain = self.drain.clone();
        tokio::select! {
            _ = cli::shutdown_signal() => {
                tracing::info!("edge: signal received; draining");
                self.begin_drain(None);
            }
            _ = drain.finished() => {}
        }
        tokio::select! {
            report = drain.finished() => {
                tracing::info!(complete = report.complete, unacked_bytes = report.unacked_bytes,
                    elapsed_ms = report.elapsed_ms, "edge: drained; shutting down");
                // Let the admin API answer whoever follows the drain (`sluicectl drain`) first.
                tokio::time::sleep(DRAIN_REPORT_LINGER).await;
            }
            _ = cli::shutdown_signal() => tracing::warn!("edge: second signal; stopping without waiting for the drain"),
        }
        self.shutdown().await;
    }

    /// Stops accepting, lets in-flight requests finish, stops the forwarder. The WAL keeps
    /// whatever was not yet acknowledged by core.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.background {
            t.abort();
            // Awaiting the cancelled task drops what it holds (the keys and idempotency store),
            // so a new edge in the same process can reopen them.
            let _ = t.await;
        }
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "edge: HTTP server task failed");
        }
        if let Some(f) = self.forwarder {
            match f.await {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "edge: forwarder stopped with a WAL error")
                }
                Err(e) => tracing::error!(error = %e, "edge: forwarder task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
}
