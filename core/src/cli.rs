//! The `sluice-core` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::{CoreConfig, KafkaConfig, SinkConfig};

#[derive(Debug, Parser)]
#[command(name = "sluice-core", about = "Sluice core ingest node")]
pub struct Args {
    /// TOML config file; every field has a default (see `core/src/config.rs`).
    #[arg(long, env = "SLUICE_CORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, env = "SLUICE_CORE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Overrides `data_dir`.
    #[arg(long, env = "SLUICE_CORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use the Kafka sink with these bootstrap servers (overrides `sink`).
    #[arg(long, env = "SLUICE_CORE_KAFKA")]
    pub kafka: Option<String>,
    /// Overrides `admin_listen` (serves `GET /metrics`).
    #[arg(long, env = "SLUICE_CORE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, env = "SLUICE_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
}

pub fn load_config(args: &Args) -> anyhow::Result<CoreConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => CoreConfig::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = args.admin_listen {
        config.admin_listen = Some(v);
    }
    if let Some(brokers) = &args.kafka {
        let mut k = match config.sink {
            SinkConfig::Kafka(k) => k,
            SinkConfig::File { .. } => KafkaConfig::default(),
        };
        k.brokers = brokers.clone();
        config.sink = SinkConfig::Kafka(k);
    }
    Ok(config)
}

/// Entry point of the `sluice-core` binary (also used by the test harness's process wrapper).
pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async {
        let core = crate::start(config).await.context("starting core")?;
        shutdown_signal().await;
        tracing::info!("core: shutting down");
        core.shutdown().await;
        anyhow::Ok(())
    })
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
