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
mod peer_state;
pub mod server;
pub mod takeover;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts};
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
    /// Where a group's replication time goes, by [`Stage`].
    stages: HistogramVec,
    /// Replica side: disk bytes of the copies of peers' WALs, their budget, and the appends
    /// refused because of it.
    pub replica_bytes: IntGauge,
    pub replica_budget_bytes: IntGauge,
    pub replica_refusals: IntCounter,
}

/// The legs of one group's trip to a replica and back, each a `stage` of
/// `sluice_edge_replication_stage_seconds`. The origin records the first two, the replica the
/// rest; `round_trip` minus the replica's stages is the time on the network and in the QUIC
/// stacks, both ways.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Origin: group handed to the replicator until its peer task puts it on the wire.
    Queue,
    /// Origin: message written to a stream until the peer's reply is read.
    RoundTrip,
    /// Replica: stream accepted until the whole message is read.
    Receive,
    /// Replica: message read until the origin's copy is free (another message holds it).
    Lock,
    /// Replica: the copy's write and `fdatasync`.
    Fsync,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Queue, Stage::RoundTrip, Stage::Receive, Stage::Lock, Stage::Fsync];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::RoundTrip => "round_trip",
            Stage::Receive => "receive",
            Stage::Lock => "lock",
            Stage::Fsync => "fsync",
        }
    }
}

impl ReplicationMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let metrics = Self {
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
            stages: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_edge_replication_stage_seconds",
                    "A group's replication by stage: queue and round_trip on the origin; receive, lock and fsync on the replica",
                )
                .buckets(prometheus::exponential_buckets(0.000_025, 2.0, 18)?),
                &["stage"],
            )?,
            replica_bytes: IntGauge::new(
                "sluice_edge_replication_replica_bytes",
                "Disk bytes of this edge's copies of its peers' WALs",
            )?,
            replica_budget_bytes: IntGauge::new(
                "sluice_edge_replication_replica_budget_bytes",
                "replication.replica_budget_bytes: what the copies of peers' WALs may take",
            )?,
            replica_refusals: IntCounter::new(
                "sluice_edge_replication_replica_refusals_total",
                "Peers' appends refused because the copies would exceed replication.replica_budget_bytes",
            )?,
        };
        // Every stage from the start, so a dashboard shows 0 rather than "no data".
        for stage in Stage::ALL {
            metrics.stage(stage);
        }
        Ok(metrics)
    }

    /// The histogram of one stage.
    pub fn stage(&self, stage: Stage) -> Histogram {
        self.stages.with_label_values(&[stage.label()])
    }

    fn register(&self, registry: &EdgeMetrics) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.ack_latency.clone()))?;
        registry.register(Box::new(self.degraded.clone()))?;
        registry.register(Box::new(self.degraded_seconds.clone()))?;
        registry.register(Box::new(self.unreplicated_groups.clone()))?;
        registry.register(Box::new(self.lag_bytes.clone()))?;
        registry.register(Box::new(self.takeovers.clone()))?;
        registry.register(Box::new(self.stages.clone()))?;
        registry.register(Box::new(self.replica_bytes.clone()))?;
        registry.register(Box::new(self.replica_budget_bytes.clone()))?;
        registry.register(Box::new(self.replica_refusals.clone()))
    }
}

/// The runtime replication runs on: a worker thread of its own. A group's trip to a peer and
/// back crosses several tasks on each side (peer task, QUIC endpoint and connection drivers,
/// the replica's stream task); on the edge's runtime each of those hops waits behind every HTTP
/// request task that is ready, which under load added tens of milliseconds to a group commit.
/// Stops when the last holder drops it.
pub struct Lane {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Lane {
    fn start() -> std::io::Result<Arc<Lane>> {
        // Multi-thread with one worker, not current-thread: the replica's fsyncs run in
        // `block_in_place`, which hands the worker's queue to another thread meanwhile.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-repl")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("sluice-repl-main".into()).spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_background();
        })?;
        Ok(Arc::new(Lane { handle, _stop: stop }))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

/// Receive and send buffer asked for on the replication sockets. A group is one burst of up to
/// `wal.max_group_bytes`; with the kernel's default buffer (~208 KiB) the burst overflowed it
/// while the receiving thread was busy, and each dropped datagram cost a QUIC loss-recovery
/// timeout (tens of ms) on that group. The kernel caps the size at `net.core.rmem_max` /
/// `wmem_max`.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A QUIC endpoint on `addr` with [`SOCKET_BUFFER`]-sized buffers, its driver on `lane`.
fn endpoint(
    lane: &Lane,
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.bind(&addr.into())?;
    let (recv, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    // Linux reads back double what it granted (it counts its bookkeeping too).
    if recv < SOCKET_BUFFER || send < SOCKET_BUFFER {
        tracing::warn!(%addr, wanted = SOCKET_BUFFER, recv, send,
            "replication: the kernel granted smaller UDP buffers; raise net.core.rmem_max and wmem_max");
    }
    // The endpoint's driver, and its connections', run on the runtime it is created in.
    let _in_lane = lane.handle.enter();
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket.into(), Arc::new(quinn::TokioRuntime))
}

/// Replication set up in two steps around opening the WAL: the writer needs the replicator,
/// and the peer tasks and the replica server need the open WAL.
pub struct Replication {
    replicator: Option<Arc<client::Replicator>>,
    peer_tasks: Option<client::PeerTasks>,
    metrics: Arc<ReplicationMetrics>,
    lane: Option<Arc<Lane>>,
}

impl Replication {
    /// Checks the config and sets up the replicator (its peer tasks start with the WAL).
    pub fn prepare(config: &EdgeConfig) -> Result<Self, ReplicationError> {
        let r = &config.replication;
        let metrics = Arc::new(ReplicationMetrics::new()?);
        let need = r.factor.saturating_sub(1);
        let peers = r.peers_of(&config.edge_id);
        if peers.is_empty() {
            return Ok(Self { replicator: None, peer_tasks: None, metrics, lane: None });
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
        let lane = Lane::start()?;
        let (replicator, peer_tasks) = client::Replicator::new(
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
            metrics.clone(),
            lane.clone(),
        )?;
        tracing::info!(peers = peers.len(), factor = r.factor, mode = ?r.mode, "replication: group commits wait for replica acks");
        Ok(Self { replicator: Some(Arc::new(replicator)), peer_tasks: Some(peer_tasks), metrics, lane: Some(lane) })
    }

    /// Replication metrics, also read by the admin status.
    pub fn metrics(&self) -> Arc<ReplicationMetrics> {
        self.metrics.clone()
    }

    /// What the WAL writer waits for, if anything.
    pub fn replicate(&self) -> Option<Arc<dyn Replicate>> {
        self.replicator.clone().map(|r| r as Arc<dyn Replicate>)
    }

    /// Starts the peer tasks on the open WAL, registers the metrics and, with
    /// `replication.listen`, starts serving peers' replicas. Returns the address served on and
    /// the background tasks.
    pub fn start(
        self,
        wal: &Wal,
        config: &EdgeConfig,
        registry: &EdgeMetrics,
    ) -> Result<(Option<std::net::SocketAddr>, Vec<JoinHandle<()>>), ReplicationError> {
        if let Some(tasks) = self.peer_tasks {
            tasks.start(wal);
        }
        self.metrics.register(registry)?;
        let Some(listen) = config.replication.listen else { return Ok((None, Vec::new())) };
        let (ca, cert, key) = identity(config)?;
        let server_config = tls::quic_server_config(sluice_wire::replication::ALPN, &cert, &key, &ca)?;
        let lane = match self.lane {
            Some(lane) => lane,
            None => Lane::start()?,
        };
        let endpoint = endpoint(&lane, listen, Some(server_config))?;
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
            server::ReplicaStore::open(
                &wal.dir().join("replica"),
                lease,
                config.replication.replica_budget_bytes,
                takeover,
                self.metrics.clone(),
            )
        })?);
        tracing::info!(%addr, lease_secs = config.replication.lease_secs, "replication: serving replicas for peers");
        // The tasks hold the lane: it stops once the edge aborts them at shutdown.
        let (serving, leases, watched) = (lane.clone(), lane.clone(), store.clone());
        Ok((
            Some(addr),
            vec![
                lane.handle.spawn(async move {
                    let _lane = serving;
                    server::serve(endpoint, store).await
                }),
                lane.handle.spawn(async move {
                    let _lane = leases;
                    server::watch_leases(watched).await
                }),
            ],
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
