//! Sluice core ingest node: receives zstd frames of WAL records from edges over QUIC, drops batches
//! it already delivered (redb dedupe index), produces the rest to Kafka (or the embedded file
//! sink), and acks a frame only once every event in it is durable downstream.

pub mod circuit;
pub mod cli;
pub mod config;
pub mod dedupe;
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
}

pub struct Core {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn start(config: CoreConfig) -> Result<Core, StartError> {
    let server_config = tls::quic_server_config(&config.cert, &config.key, config.client_ca.as_deref())?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&config.data_dir.join("dedupe.redb"))?);
    let sink = sink::Sink::from_config(&config.sink)?;
    let endpoint = quinn::Endpoint::server(server_config, config.listen)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = endpoint.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let ingest = Arc::new(server::Ingest::new(dedupe.clone(), sink));
    let ttl_ms = config.dedupe_ttl_hours * 3600 * 1000;
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let d = dedupe.clone();
            let cutoff = server::now_ms().saturating_sub(ttl_ms);
            match tokio::task::spawn_blocking(move || d.evict(cutoff)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(evicted = n, "core: dedupe entries expired"),
                Ok(Err(e)) => tracing::warn!(error = %e, "core: dedupe expiry failed"),
                _ => {}
            }
        }
    });
    let server = tokio::spawn(server::serve(endpoint.clone(), ingest));
    tracing::info!(%addr, "core: listening");
    Ok(Core { addr, endpoint, tasks: vec![server, expiry] })
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
