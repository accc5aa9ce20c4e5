//! Sluice edge collector: accepts event batches over HTTP, makes them durable in a local WAL with
//! group commit, answers `202` only after `fdatasync`, and forwards the WAL to core over QUIC.
//!
//! Pure logic (`auth`, `body`, `validate`) is separate from IO (`http`, `wal`, `forward`).

pub mod admin;
pub mod admission;
pub mod api_error;
pub mod auth;
pub mod batch;
pub mod body;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod compat;
pub mod config;
pub mod drain;
pub mod forward;
pub mod forwarder_control;
pub mod http;
pub mod idempotency;
pub mod ingest;
pub mod link_health;
pub mod metrics;
pub mod operator_metrics;
pub mod pii;
pub mod replication;
pub mod routing;
pub mod server;
pub mod signature;
pub mod tls;
pub mod validate;
pub mod wal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::EdgeConfig;
use crate::wal::Wal;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("API keys: {0}")]
    Keys(#[from] auth::KeysFileError),
    #[error(transparent)]
    Wal(#[from] wal::OpenError),
    #[error("forwarder TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("idempotency store: {0}")]
    Idempotency(#[from] idempotency::StoreError),
    #[error("HTTP TLS: tls_cert and tls_key must be set together")]
    HalfHttpTls,
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("forwarder endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Replication(#[from] replication::ReplicationError),
}

/// How long the admin API stays up after a drain finished, so its report can be collected.
const DRAIN_REPORT_LINGER: Duration = Duration::from_millis(500);

/// A running edge.
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
    pub drain: Arc<drain::Drain>,
    /// Pause/resume and state of the forwarder, when forwarding is enabled.
    pub forwarder_control: Option<Arc<forward::ForwarderControl>>,
    drain_deadline: Duration,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    forwarder: Option<JoinHandle<std::io::Result<()>>>,
}

/// Opens the WAL, binds the HTTP listener and starts the forwarder.
pub async fn start(config: EdgeConfig) -> Result<Edge, StartError> {
    start_with_clock(config, clock::Clock::real()).await
}

/// [`start`] with the clock of admission control given: tests pass a [`clock::Clock::manual`]
/// to drive quotas and `Retry-After` deterministically.
pub async fn start_with_clock(config: EdgeConfig, clock: clock::Clock) -> Result<Edge, StartError> {
    let keys = Arc::new(auth::KeyRing::load(&config.keys_file)?);
    let idempotency =
        Arc::new(idempotency::IdempotencyStore::open(&config.idempotency.path, config.idempotency.ttl_secs)?);
    keys.restore_controls(idempotency.load_controls()?);
    let http_tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => return Err(StartError::HalfHttpTls),
    };
    // Listeners are bound before any task starts, so a taken port fails startup with nothing
    // running yet (a task still alive while the runtime shuts down can panic on its timers).
    let listener = bind(config.listen).await?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let admin_listener = match config.admin.listen {
        Some(addr) => Some((addr, bind(addr).await?)),
        None => None,
    };
    let replication = replication::Replication::prepare(&config)?;
    let (wal, reader) = Wal::open_replicated(&config.wal, replication.replicate())?;
    let metrics = Arc::new(metrics::EdgeMetrics::new(wal.clone())?);
    let peers = config.replication.peers_of(&config.edge_id);
    let replication_view = (!peers.is_empty()).then(|| admin::ReplicationView {
        factor: config.replication.factor,
        mode: config.replication.mode,
        peers,
        metrics: replication.metrics(),
    });
    let replication_metrics = replication.metrics();
    let (replication_addr, replication_tasks) = replication.start(&wal, &config, &metrics)?;
    let (stop, stop_rx) = watch::channel(false);
    let mut link = None;
    let forwarder_control = config.forwarder.enabled.then(Arc::<forward::ForwarderControl>::default);
    let forwarder = match &forwarder_control {
        Some(control) => {
            let f = &config.forwarder;
            let client = tls::quic_client_config(&f.ca_cert, f.client_cert.as_deref(), f.client_key.as_deref())?;
            let fwd =
                forward::Forwarder::new(f.clone(), config.edge_id.clone(), reader, client, metrics.forwarder.clone())
                    .map_err(StartError::Endpoint)?
                    .with_control(control.clone());
            link = Some(fwd.link_health());
            Some(tokio::spawn(fwd.run(stop_rx.clone())))
        }
        None => None,
    };
    let admission = Arc::new(admission::Admission::new(
        config.admission.clone(),
        config.limits.max_body_bytes,
        config.wal.budget_bytes,
        metrics.admission_refusals.clone(),
        clock,
    ));
    metrics.register(Box::new(metrics::AdmissionCollector::new(admission.clone(), keys.clone(), link.clone())?))?;
    let drain = Arc::new(drain::Drain::default());
    let drain_deadline = Duration::from_secs(config.drain_deadline_secs);
    metrics.register(Box::new(operator_metrics::OperatorCollector::new(
        wal.clone(),
        drain.clone(),
        forwarder_control.clone(),
    )?))?;
    let mut background = vec![
        keys.spawn_reloader(Duration::from_millis(config.http.keys_reload_ms.max(10))),
        spawn_idempotency_expiry(idempotency.clone()),
        spawn_admission_housekeeping(admission.clone(), keys.clone()),
        tokio::spawn(drain.clone().run(wal.clone(), forwarder_control.clone())),
    ];
    background.extend(replication_tasks);
    let state = Arc::new(http::AppState {
        keys,
        wal: wal.clone(),
        region: config.region.clone(),
        record_zstd_level: config.wal.zstd_level,
        limits: config.limits.clone(),
        rules: config.validation.clone(),
        pii: config.pii.clone(),
        http: config.http.clone(),
        idempotency,
        debug_limiter: http::AppState::new_debug_limiter(config.limits.debug_requests_per_sec),
        metrics: metrics.clone(),
        admission,
        link,
        drain: drain.clone(),
    });
    let admin_addr = match admin_listener {
        Some((addr, listener)) => {
            let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            let admin = admin::router(Arc::new(admin::AdminState {
                edge_id: config.edge_id.clone(),
                token: config.admin.token.clone(),
                wal: wal.clone(),
                metrics: metrics.clone(),
                keys: state.keys.clone(),
                store: state.idempotency.clone(),
                drain: drain.clone(),
                drain_deadline,
                forwarder: forwarder_control.clone(),
                link: state.link.clone(),
                replication: replication_view,
            }));
            let mut stop = stop_rx.clone();
            background.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, admin).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "admin: server failed");
                }
            }));
            tracing::info!(admin_addr = %bound, "edge: admin API listening");
            Some(bound)
        }
        None => None,
    };
    let app = http::router(state);
    let header_timeout = Duration::from_millis(config.http.header_timeout_ms);
    let server = tokio::spawn(server::serve(listener, app, http_tls, header_timeout, stop_rx));
    let scheme = if config.http.tls_cert.is_some() { "https" } else { "http" };
    tracing::info!(%http_addr, scheme, edge_id = %config.edge_id, region = %config.region, "edge: listening");
    Ok(Edge {
        http_addr,
        admin_addr,
        replication_addr,
        replication_metrics,
        wal,
        metrics,
        drain,
        forwarder_control,
        drain_deadline,
        stop,
        server,
        background,
        forwarder,
    })
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// Evicts expired idempotency keys and request signatures every minute so the store stays bounded.
fn spawn_idempotency_expiry(store: Arc<idempotency::IdempotencyStore>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = clock::now_ms();
            match tokio::task::block_in_place(|| store.evict_expired(now)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(evicted = n, "edge: idempotency keys and signatures expired"),
                Err(e) => tracing::warn!(error = %e, "edge: idempotency expiry failed"),
            }
        }
    })
}

/// Forgets idle rate-limit state every minute so it stays bounded by the active callers.
fn spawn_admission_housekeeping(admission: Arc<admission::Admission>, keys: Arc<auth::KeyRing>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            admission.forget_idle();
            admission.forget_unlimited(&keys.snapshot());
        }
    })
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
