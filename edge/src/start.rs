//! How an edge is put together: [`Edge::builder`] then [`EdgeBuilder::start`], which runs the
//! steps below in order: open the stores (keys, idempotency), bind the listeners, open the WAL
//! with its replication, start the forwarder, then serve the HTTP and admin APIs. Every caller
//! (`sluice-edge`, `sluicectl dev` and `bench`, the test harness) starts an edge this one way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::clock::Clock;
use crate::config::{EdgeConfig, HttpConfig};
use crate::forward::ForwarderControl;
use crate::ingest::idempotency::IdempotencyStore;
use crate::ingest::{admission, auth, idempotency};
use crate::link_health::LinkHealth;
use crate::metrics::EdgeMetrics;
use crate::operate::{admin, drain, operator_metrics};
use crate::wal::{Wal, WalReader};
use crate::{Edge, clock, forward, http, metrics, replication, server, tls, wal};

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

/// An edge to start: its config, and what tests may replace (the clock).
pub struct EdgeBuilder {
    config: EdgeConfig,
    clock: Clock,
}

impl Edge {
    /// An edge on `config`, with the real clock until [`EdgeBuilder::clock`] says otherwise.
    pub fn builder(config: EdgeConfig) -> EdgeBuilder {
        EdgeBuilder { config, clock: Clock::real() }
    }
}

impl EdgeBuilder {
    /// The clock of admission control: tests pass a [`Clock::manual`] to drive quotas and
    /// `Retry-After` deterministically.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the WAL, binds the listeners and starts the forwarder, replication and the APIs.
    pub async fn start(self) -> Result<Edge, StartError> {
        let Self { config, clock } = self;
        let stores = Stores::open(&config)?;
        let http_tls = http_tls(&config.http)?;
        let listeners = Listeners::bind(&config).await?;
        let (wal, reader, replication) = open_wal(&config)?;
        let metrics = Arc::new(EdgeMetrics::new(wal.clone())?);
        let replicating = start_replication(replication, &wal, &config, &metrics)?;
        let (stop, stop_rx) = watch::channel(false);
        let forwarding = start_forwarder(&config, reader, &metrics, &stop_rx)?;
        let shared = Shared::new(&config, stores, wal, metrics, &forwarding, clock)?;
        let mut background = shared.spawn_background(&config);
        background.extend(replicating.tasks);
        let drain_deadline = Duration::from_secs(config.drain_deadline_secs);
        let admin_addr = match listeners.admin {
            Some(listener) => {
                let state = shared.admin_state(&config, drain_deadline, replicating.view);
                let (addr, task) = serve_admin(listener, state, stop_rx.clone())?;
                background.push(task);
                Some(addr)
            }
            None => None,
        };
        let (wal, metrics, drain) = (shared.wal.clone(), shared.metrics.clone(), shared.drain.clone());
        let server =
            serve_http(listeners.http, listeners.http_addr, shared.app_state(&config), http_tls, &config, stop_rx);
        Ok(Edge {
            http_addr: listeners.http_addr,
            admin_addr,
            replication_addr: replicating.addr,
            replication_metrics: replicating.metrics,
            wal,
            metrics,
            drain,
            forwarder_control: forwarding.control,
            drain_deadline,
            stop,
            server,
            background,
            forwarder: forwarding.task,
        })
    }
}

/// What the edge keeps across restarts besides the WAL: the API keys and the idempotency store
/// (which also holds the tenant controls set through the admin API).
struct Stores {
    keys: Arc<auth::KeyRing>,
    idempotency: Arc<IdempotencyStore>,
}

impl Stores {
    fn open(config: &EdgeConfig) -> Result<Self, StartError> {
        let keys = Arc::new(auth::KeyRing::load(&config.keys_file)?);
        let idempotency = Arc::new(IdempotencyStore::open(&config.idempotency.path, config.idempotency.ttl_secs)?);
        keys.restore_controls(idempotency.load_controls()?);
        Ok(Self { keys, idempotency })
    }
}

/// What the HTTP and admin APIs and the background tasks share.
struct Shared {
    keys: Arc<auth::KeyRing>,
    idempotency: Arc<IdempotencyStore>,
    wal: Wal,
    metrics: Arc<EdgeMetrics>,
    admission: Arc<admission::Admission>,
    drain: Arc<drain::Drain>,
    control: Option<Arc<ForwarderControl>>,
    link: Option<Arc<LinkHealth>>,
}

impl Shared {
    /// Sets up admission control and the drain, and registers the collectors that read them.
    fn new(
        config: &EdgeConfig,
        stores: Stores,
        wal: Wal,
        metrics: Arc<EdgeMetrics>,
        forwarding: &Forwarding,
        clock: Clock,
    ) -> Result<Self, StartError> {
        let Stores { keys, idempotency } = stores;
        let (control, link) = (forwarding.control.clone(), forwarding.link.clone());
        let admission = Arc::new(admission::Admission::new(
            config.admission.clone(),
            config.limits.max_body_bytes,
            config.wal.budget_bytes,
            metrics.admission_refusals.clone(),
            clock,
        ));
        metrics.register(Box::new(metrics::AdmissionCollector::new(admission.clone(), keys.clone(), link.clone())?))?;
        let drain = Arc::new(drain::Drain::default());
        metrics.register(Box::new(operator_metrics::OperatorCollector::new(
            wal.clone(),
            drain.clone(),
            control.clone(),
        )?))?;
        Ok(Self { keys, idempotency, wal, metrics, admission, drain, control, link })
    }

    /// Key reloads, idempotency expiry, admission housekeeping and the drain.
    fn spawn_background(&self, config: &EdgeConfig) -> Vec<JoinHandle<()>> {
        vec![
            self.keys.spawn_reloader(Duration::from_millis(config.http.keys_reload_ms.max(10))),
            spawn_idempotency_expiry(self.idempotency.clone()),
            spawn_admission_housekeeping(self.admission.clone(), self.keys.clone()),
            tokio::spawn(self.drain.clone().run(self.wal.clone(), self.control.clone())),
        ]
    }

    fn admin_state(
        &self,
        config: &EdgeConfig,
        drain_deadline: Duration,
        replication: Option<admin::ReplicationView>,
    ) -> admin::AdminState {
        admin::AdminState {
            edge_id: config.edge_id.clone(),
            token: config.admin.token.clone(),
            wal: self.wal.clone(),
            metrics: self.metrics.clone(),
            keys: self.keys.clone(),
            store: self.idempotency.clone(),
            drain: self.drain.clone(),
            drain_deadline,
            forwarder: self.control.clone(),
            link: self.link.clone(),
            replication,
        }
    }

    fn app_state(self, config: &EdgeConfig) -> http::AppState {
        http::AppState {
            keys: self.keys,
            wal: self.wal,
            region: config.region.clone(),
            record_zstd_level: config.wal.zstd_level,
            limits: config.limits.clone(),
            rules: config.validation.clone(),
            pii: config.pii.clone(),
            http: config.http.clone(),
            idempotency: self.idempotency,
            debug_limiter: http::AppState::new_debug_limiter(config.limits.debug_requests_per_sec),
            metrics: self.metrics,
            admission: self.admission,
            link: self.link,
            drain: self.drain,
        }
    }
}

fn http_tls(http: &HttpConfig) -> Result<Option<TlsAcceptor>, StartError> {
    match (&http.tls_cert, &http.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(server::tls_acceptor(cert, key)?)),
        (None, None) => Ok(None),
        _ => Err(StartError::HalfHttpTls),
    }
}

/// The TCP listeners, bound before any task starts, so a taken port fails startup with nothing
/// running yet (a task still alive while the runtime shuts down can panic on its timers).
struct Listeners {
    http: TcpListener,
    http_addr: SocketAddr,
    admin: Option<(SocketAddr, TcpListener)>,
}

impl Listeners {
    async fn bind(config: &EdgeConfig) -> Result<Self, StartError> {
        let http = bind(config.listen).await?;
        let http_addr = local_addr(&http, config.listen)?;
        let admin = match config.admin.listen {
            Some(addr) => Some((addr, bind(addr).await?)),
            None => None,
        };
        Ok(Self { http, http_addr, admin })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind { addr: configured, source })
}

/// The WAL, opened in the first of replication's two phases: its writer waits for the replicas,
/// whose tasks get the open WAL in [`start_replication`].
fn open_wal(config: &EdgeConfig) -> Result<(Wal, WalReader, replication::Replication), StartError> {
    let replication = replication::Replication::prepare(config)?;
    let (wal, reader) = Wal::open_replicated(&config.wal, replication.replicate())?;
    Ok((wal, reader, replication))
}

/// Replication once the WAL is open: where peers' replicas are served, what `GET /status` shows
/// of it, and its tasks.
struct Replicating {
    addr: Option<SocketAddr>,
    view: Option<admin::ReplicationView>,
    metrics: Arc<replication::ReplicationMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

fn start_replication(
    replication: replication::Replication,
    wal: &Wal,
    config: &EdgeConfig,
    metrics: &EdgeMetrics,
) -> Result<Replicating, StartError> {
    let peers = config.replication.peers_of(&config.edge_id);
    let view = (!peers.is_empty()).then(|| admin::ReplicationView {
        factor: config.replication.factor,
        mode: config.replication.mode,
        peers,
        metrics: replication.metrics(),
    });
    let replication_metrics = replication.metrics();
    let (addr, tasks) = replication.start(wal, config, metrics)?;
    Ok(Replicating { addr, view, metrics: replication_metrics, tasks })
}

/// The forwarder to core, when `forwarder.enabled`: its control (pause/resume), its link's health
/// and its task.
struct Forwarding {
    control: Option<Arc<ForwarderControl>>,
    link: Option<Arc<LinkHealth>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

fn start_forwarder(
    config: &EdgeConfig,
    reader: WalReader,
    metrics: &EdgeMetrics,
    stop: &watch::Receiver<bool>,
) -> Result<Forwarding, StartError> {
    let f = &config.forwarder;
    if !f.enabled {
        return Ok(Forwarding { control: None, link: None, task: None });
    }
    let control = Arc::<ForwarderControl>::default();
    let client = tls::quic_client_config(&f.ca_cert, f.client_cert.as_deref(), f.client_key.as_deref())?;
    let forwarder =
        forward::Forwarder::new(f.clone(), config.edge_id.clone(), reader, client, metrics.forwarder.clone())
            .map_err(StartError::Endpoint)?
            .with_control(control.clone());
    let link = forwarder.link_health();
    let task = tokio::spawn(forwarder.run(stop.clone()));
    Ok(Forwarding { control: Some(control), link: Some(link), task: Some(task) })
}

/// Serves the admin API on its bound listener until `stop`; its address and task.
fn serve_admin(
    (configured, listener): (SocketAddr, TcpListener),
    state: admin::AdminState,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let bound = local_addr(&listener, configured)?;
    let router = admin::router(Arc::new(state));
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %e, "admin: server failed");
        }
    });
    tracing::info!(admin_addr = %bound, "edge: admin API listening");
    Ok((bound, task))
}

/// Serves the HTTP API on its bound listener until `stop`.
fn serve_http(
    listener: TcpListener,
    http_addr: SocketAddr,
    state: http::AppState,
    tls: Option<TlsAcceptor>,
    config: &EdgeConfig,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let header_timeout = Duration::from_millis(config.http.header_timeout_ms);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = tokio::spawn(server::serve(listener, http::router(Arc::new(state)), tls, header_timeout, stop));
    tracing::info!(%http_addr, scheme, edge_id = %config.edge_id, region = %config.region, "edge: listening");
    server
}

/// Evicts expired idempotency keys and request signatures every minute so the store stays bounded.
fn spawn_idempotency_expiry(store: Arc<IdempotencyStore>) -> JoinHandle<()> {
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
