//! Sluice edge collector: accepts event batches over HTTP, makes them durable in a local WAL with
//! group commit, answers `202` only after `fdatasync`, and forwards the WAL to core over QUIC.
//!
//! Pure logic (`auth`, `body`, `validate`) is separate from IO (`http`, `wal`, `forwarder`).

pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod forwarder;
pub mod http;
pub mod server;
pub mod tls;
pub mod validate;
pub mod wal;

use std::net::SocketAddr;
use std::sync::Arc;

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
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("forwarder endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// A running edge.
pub struct Edge {
    pub http_addr: SocketAddr,
    pub wal: Wal,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    forwarder: Option<JoinHandle<std::io::Result<()>>>,
}

/// Opens the WAL, binds the HTTP listener and starts the forwarder.
pub async fn start(config: EdgeConfig) -> Result<Edge, StartError> {
    let keys = auth::KeyStore::load(&config.keys_file)?;
    let (wal, reader) = Wal::open(&config.wal)?;
    let (stop, stop_rx) = watch::channel(false);
    let forwarder = if config.forwarder.enabled {
        let f = &config.forwarder;
        let client = tls::quic_client_config(&f.ca_cert, f.client_cert.as_deref(), f.client_key.as_deref())?;
        let fwd = forwarder::Forwarder::new(f.clone(), config.edge_id.clone(), reader, client)
            .map_err(StartError::Endpoint)?;
        Some(tokio::spawn(fwd.run(stop_rx.clone())))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let state = Arc::new(http::AppState {
        keys,
        wal: wal.clone(),
        region: config.region.clone(),
        limits: config.limits.clone(),
    });
    let app = http::router(state);
    let server =
        tokio::spawn(server::serve(listener, app, config.server.clone(), config.limits.max_body_bytes, stop_rx));
    tracing::info!(%http_addr, edge_id = %config.edge_id, region = %config.region, "edge: listening");
    Ok(Edge { http_addr, wal, stop, server, forwarder })
}

impl Edge {
    /// Stops accepting, lets in-flight requests finish, stops the forwarder. The WAL keeps
    /// whatever was not yet acknowledged by core.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
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
