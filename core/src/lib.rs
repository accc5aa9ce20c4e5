//! Sluice core ingest node: receives zstd frames of WAL records from edges over QUIC, drops batches
//! it already delivered (redb dedupe index), produces the rest to Kafka (or the embedded file
//! sink), and acks a frame only once every event in it is durable downstream.

pub mod circuit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dedupe;
pub mod metrics;
pub mod producer_metrics;
pub mod server;
pub mod sink;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::CoreConfig;
use crate::dedupe::{DedupeIndex, RedbDedupe};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Dedupe(#[from] dedupe::DedupeError),
    #[error("sink: {0}")]
    Sink(#[from] sink::SinkError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct Core {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<metrics::CoreMetrics>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn start(config: CoreConfig) -> Result<Core, StartError> {
    let server_config = tls::quic_server_config(&config.cert, &config.key, config.client_ca.as_deref())?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let dedupe = Arc::new(dedupe::Watched::new(RedbDedupe::open(&config.data_dir.join("dedupe.redb"))?));
    let metrics = Arc::new(metrics::CoreMetrics::new()?);
    let sink = sink::Sink::from_config(&config.sink, &metrics.producer)?;
    // Bound before the endpoint and any task start, so a taken port fails startup with nothing running yet.
    let admin_listener = match config.admin_listen {
        Some(admin) => Some((
            admin,
            tokio::net::TcpListener::bind(admin).await.map_err(|source| StartError::Bind { addr: admin, source })?,
        )),
        None => None,
    };
    let endpoint = quinn::Endpoint::server(server_config, config.listen)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = endpoint.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let ingest = Arc::new(server::Ingest::new(dedupe.clone(), sink, metrics.clone()));
    let admin_state = AdminState { metrics: metrics.clone(), ingest: ingest.clone(), dedupe: dedupe.clone() };
    let ttl_ms = config.dedupe_ttl_hours * 3600 * 1000;
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let d = dedupe.clone();
            let cutoff = clock::now_ms().saturating_sub(ttl_ms);
            match tokio::task::spawn_blocking(move || d.evict(cutoff)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(evicted = n, "core: dedupe entries expired"),
                Ok(Err(e)) => tracing::warn!(error = %e, "core: dedupe expiry failed"),
                _ => {}
            }
        }
    });
    let server = tokio::spawn(server::serve(endpoint.clone(), ingest.clone()));
    let mut tasks = vec![server, expiry];
    let admin_addr = match admin_listener {
        Some((admin, listener)) => {
            let bound = listener.local_addr().map_err(|source| StartError::Bind { addr: admin, source })?;
            tasks.push(tokio::spawn(serve_admin(listener, admin_state)));
            tracing::info!(admin_addr = %bound, "core: admin API listening");
            Some(bound)
        }
        None => None,
    };
    tracing::info!(%addr, "core: listening");
    Ok(Core { addr, admin_addr, metrics, endpoint, tasks })
}

/// What the admin port reads.
pub struct AdminState<D> {
    pub metrics: Arc<metrics::CoreMetrics>,
    pub ingest: Arc<server::Ingest>,
    pub dedupe: Arc<dedupe::Watched<D>>,
}

async fn serve_admin<D: DedupeIndex>(listener: tokio::net::TcpListener, state: AdminState<D>) {
    if let Err(e) = axum::serve(listener, admin_router(state)).await {
        tracing::error!(error = %e, "core: admin server failed");
    }
}

/// The admin port: `GET /metrics` (Prometheus text), `GET /health` (the process serves) and
/// `GET /ready` (`{"status":"ready"|"degraded","degraded":[…]}`, see [`readiness`]).
pub fn admin_router<D: DedupeIndex>(state: AdminState<D>) -> axum::Router {
    use axum::http::{StatusCode, header};
    let AdminState { metrics, ingest, dedupe } = state;
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { StatusCode::OK }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let (status, body) = readiness(ingest.circuit.state(), dedupe.failed());
                async move { (status, axum::Json(body)) }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
            }),
        )
        .fallback(|| async {
            let error = serde_json::json!({ "error": { "code": "not_found", "message": "no such admin endpoint" } });
            (StatusCode::NOT_FOUND, axum::Json(error))
        })
}

/// Readiness, like the edge's: the degraded states, and `503` only for a failure of this node
/// that another node does not share. A failing dedupe index (`dedupe_failed`) is one: every frame
/// is answered `Retry`, so the node should leave the rotation until the index works again. An
/// open sink circuit (`sink_circuit_open`, Kafka failing) is reported with `200`: it hits every
/// core node alike, and taking them all out of rotation would only cut off the frame whose
/// delivery closes the circuit; edges keep their WAL meanwhile.
fn readiness(
    sink_circuit: sluice_wire::breaker::BreakerState,
    dedupe_failed: bool,
) -> (axum::http::StatusCode, serde_json::Value) {
    let mut degraded = Vec::new();
    if sink_circuit != sluice_wire::breaker::BreakerState::Closed {
        degraded.push("sink_circuit_open");
    }
    if dedupe_failed {
        degraded.push("dedupe_failed");
    }
    let status = if dedupe_failed { axum::http::StatusCode::SERVICE_UNAVAILABLE } else { axum::http::StatusCode::OK };
    (
        status,
        serde_json::json!({ "status": if degraded.is_empty() { "ready" } else { "degraded" }, "degraded": degraded }),
    )
}

impl Core {
    /// Closes the endpoint; unacked frames are resent by edges to the next core.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        for t in self.tasks {
            t.abort();
        }
        self.endpoint.wait_idle().await;
    }
}
