//! Replication of the WAL within a POP: a `202` survives the loss of a whole edge node.
//!
//! - [`client`] (origin side): every group commit goes to the configured peers while the writer
//!   syncs it locally; the group completes once `factor - 1` peers acked it (one round trip per
//!   group, concurrent with the local `fdatasync`). Without those acks the group is refused
//!   (`mode = "require"`: `503 replica_unavailable`) or accepted locally and counted as degraded
//!   (`mode = "allow_local"`).
//! - [`server`] (replica side): stores peers' groups in `<wal dir>/replica/<origin>/<wal id>/`
//!   with the WAL's own segment and record format ([`crate::wal::mirror`]), trims them by the
//!   origin's ack watermark, and forwards them to core itself when the origin stays silent past
//!   the lease (takeover).
//!
//! Messages are defined in `sluice_wire::replication`.

pub mod client;
pub mod server;
pub mod takeover;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};
use tokio::task::JoinHandle;

use crate::config::EdgeConfig;
use crate::metrics::EdgeMetrics;
use crate::tls;
use crate::wal::{Replicate, Wal};

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication config: {0}")]
    Config(String),
    #[error("replication TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("replication endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("replication metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Replication metrics (`sluice_edge_replication_*`).
pub struct ReplicationMetrics {
    /// From handing a group to the peers until the required acks were in.
    pub ack_latency: Histogram,
    /// 1 while groups cannot get their replica acks.
    pub degraded: IntGauge,
    /// Time groups spent without their replica acks (refused or accepted locally).
    pub degraded_seconds: prometheus::Counter,
    /// Groups that did not get their replica acks.
    pub unreplicated_groups: IntCounter,
    /// Bytes of the segment being written that a peer has not confirmed.
    pub lag_bytes: IntGaugeVec,
    /// Takeovers started by this edge as a replica.
    pub takeovers: IntCounter,
}

impl ReplicationMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            ack_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_edge_replication_ack_latency_seconds",
                    "Group handed to the peers until the required replica acks were in",
                )
                .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 16)?),
            )?,
            degraded: IntGauge::new(
                "sluice_edge_replication_degraded",
                "1 while groups cannot get their replica acks (503 in require mode, local-only in allow_local)",
            )?,
            degraded_seconds: prometheus::Counter::new(
                "sluice_edge_replication_degraded_seconds_total",
                "Time during which groups did not get their replica acks",
            )?,
            unreplicated_groups: IntCounter::new(
                "sluice_edge_replication_unreplicated_groups_total",
                "Group commits that did not get their replica acks",
            )?,
            lag_bytes: IntGaugeVec::new(
                Opts::new(
                    "sluice_edge_replication_lag_bytes",
                    "Bytes of the segment being written that the peer has not confirmed",
                ),
                &["peer"],
            )?,
            takeovers: IntCounter::new(
                "sluice_edge_replication_takeovers_total",
                "Takeovers: this edge forwarded a silent origin's records itself",
            )?,
        })
    }

    fn register(&self, registry: &EdgeMetrics) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.ack_latency.clone()))?;
        registry.register(Box::new(self.degraded.clone()))?;
        registry.register(Box::new(self.degraded_seconds.clone()))?;
        registry.register(Box::new(self.unreplicated_groups.clone()))?;
        registry.register(Box::new(self.lag_bytes.clone()))?;
        registry.register(Box::new(self.takeovers.clone()))
    }
}

/// Replication set up in two steps around opening the WAL: the writer needs the replicator,
/// and the replicator's heartbeats and the replica server need the open WAL.
pub struct Replication {
    replicator: Option<Arc<client::Replicator>>,
    wal: client::WalSlot,
    metrics: Arc<ReplicationMetrics>,
}

impl Replication {
    /// Checks the config and starts the peer tasks (idle until the WAL is open).
    pub fn prepare(config: &EdgeConfig) -> Result<Self, ReplicationError> {
        let r = &config.replication;
        let metrics = Arc::new(ReplicationMetrics::new()?);
        let wal: client::WalSlot = Arc::new(OnceLock::new());
        let need = r.factor.saturating_sub(1);
        let peers = r.peers_of(&config.edge_id);
        if peers.is_empty() {
            return Ok(Self { replicator: None, wal, metrics });
        }
        if need > peers.len() {
            return Err(ReplicationError::Config(format!(
                "factor {} needs {need} peers, {} configured besides this edge ({})",
                r.factor,
                peers.len(),
                config.edge_id
            )));
        }
        if !server::valid_node_id(&config.edge_id) {
            return Err(ReplicationError::Config(format!(
                "edge_id {:?} must be 1-64 of [A-Za-z0-9._-] to name replica directories",
                config.edge_id
            )));
        }
        let (ca, cert, key) = identity(config)?;
        let tls = tls::quic_client_config_for(sluice_wire::replication::ALPN, &ca, Some(&cert), Some(&key))?;
        let heartbeat = Duration::from_millis((r.lease_secs * 1000 / 4).clamp(100, 1_000));
        let replicator = client::Replicator::start(
            client::ClientParams {
                node_id: config.edge_id.clone(),
                peers: peers.iter().map(|p| (p.clone(), r.server_name_for(&p.addr))).collect(),
                need,
                mode: r.mode,
                timeout: Duration::from_millis(r.ack_timeout_ms.max(1)),
                heartbeat,
                wal_dir: config.wal.dir.clone(),
                tls,
            },
            wal.clone(),
            metrics.clone(),
        )?;
        tracing::info!(peers = peers.len(), factor = r.factor, mode = ?r.mode, "replication: group commits wait for replica acks");
        Ok(Self { replicator: Some(Arc::new(replicator)), wal, metrics })
    }

    /// Replication metrics, also read by the admin status.
    pub fn metrics(&self) -> Arc<ReplicationMetrics> {
        self.metrics.clone()
    }

    /// What the WAL writer waits for, if anything.
    pub fn replicate(&self) -> Option<Arc<dyn Replicate>> {
        self.replicator.clone().map(|r| r as Arc<dyn Replicate>)
    }

    /// Hands the open WAL to the peer tasks, registers the metrics and, with
    /// `replication.listen`, starts serving peers' replicas. Returns the address served on and
    /// the background tasks.
    pub fn start(
        self,
        wal: &Wal,
        config: &EdgeConfig,
        registry: &EdgeMetrics,
    ) -> Result<(Option<std::net::SocketAddr>, Vec<JoinHandle<()>>), ReplicationError> {
        let _ = self.wal.set(wal.clone());
        self.metrics.register(registry)?;
        let Some(listen) = config.replication.listen else { return Ok((None, Vec::new())) };
        let (ca, cert, key) = identity(config)?;
        let server_config = tls::quic_server_config(sluice_wire::replication::ALPN, &cert, &key, &ca)?;
        let endpoint = quinn::Endpoint::server(server_config, listen)?;
        let addr = endpoint.local_addr()?;
        let f = &config.forwarder;
        let takeover = if f.enabled {
            let tls = tls::quic_client_config(&f.ca_cert, f.client_cert.as_deref(), f.client_key.as_deref())?;
            let metrics = takeover::TakeoverMetrics::new()?;
            registry.register(Box::new(metrics.clone()))?;
            Some(server::TakeoverConfig { forwarder: f.clone(), tls, metrics })
        } else {
            None
        };
        let lease = Duration::from_secs(config.replication.lease_secs);
        let store = Arc::new(tokio::task::block_in_place(|| {
            server::ReplicaStore::open(&wal.dir().join("replica"), lease, takeover, self.metrics.clone())
        })?);
        tracing::info!(%addr, lease_secs = config.replication.lease_secs, "replication: serving replicas for peers");
        Ok((
            Some(addr),
            vec![tokio::spawn(server::serve(endpoint, store.clone())), tokio::spawn(server::watch_leases(store))],
        ))
    }
}

/// CA, certificate and key for the POP's mutual TLS, defaulting to the forwarder's.
fn identity(
    config: &EdgeConfig,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf), ReplicationError> {
    let r = &config.replication;
    let f = &config.forwarder;
    let ca = r.ca_cert.clone().unwrap_or_else(|| f.ca_cert.clone());
    let missing = || {
        ReplicationError::Config(
            "needs a certificate and key (replication.cert/key or forwarder.client_cert/key)".into(),
        )
    };
    let cert = r.cert.clone().or_else(|| f.client_cert.clone()).ok_or_else(missing)?;
    let key = r.key.clone().or_else(|| f.client_key.clone()).ok_or_else(missing)?;
    Ok((ca, cert, key))
}
