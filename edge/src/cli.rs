//! The `sluice-edge` command line: a TOML config file, with the most-used settings overridable by
//! flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::EdgeConfig;

#[derive(Debug, Parser)]
#[command(name = "sluice-edge", about = "Sluice edge collector")]
pub struct Args {
    /// TOML config file; every field has a default (see `edge/src/config.rs`).
    #[arg(long, env = "SLUICE_EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `edge_id` (e.g. the pod name of a StatefulSet).
    #[arg(long, env = "SLUICE_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Overrides `listen`.
    #[arg(long, env = "SLUICE_EDGE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Overrides `wal.dir`.
    #[arg(long, env = "SLUICE_EDGE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Overrides `forwarder.core_addr`.
    #[arg(long, env = "SLUICE_EDGE_CORE_ADDR")]
    pub core_addr: Option<SocketAddr>,
    /// Overrides `admin.listen`.
    #[arg(long, env = "SLUICE_EDGE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Overrides `admin.token` (prefer the environment variable: flags show up in `ps`).
    #[arg(long, env = "SLUICE_EDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Overrides `drain_deadline_secs`.
    #[arg(long, env = "SLUICE_EDGE_DRAIN_DEADLINE_SECS")]
    pub drain_deadline_secs: Option<u64>,
    /// Log as JSON lines (production) instead of human-readable text.
    #[arg(long, env = "SLUICE_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
}

pub fn load_config(args: &Args) -> anyhow::Result<EdgeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => EdgeConfig::default(),
    };
    if let Some(v) = &args.edge_id {
        config.edge_id = v.clone();
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.wal_dir {
        config.wal.dir = v.clone();
    }
    if let Some(v) = args.core_addr {
        config.forwarder.core_addr = v;
    }
    if let Some(v) = args.admin_listen {
        config.admin.listen = Some(v);
    }
    if let Some(v) = &args.admin_token {
        config.admin.token = Some(v.clone());
    }
    if let Some(v) = args.drain_deadline_secs {
        config.drain_deadline_secs = v;
    }
    Ok(config)
}

/// Sets up tracing: JSON lines for production, text for a terminal; `RUST_LOG` filters.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Entry point of the `sluice-edge` binary (also used by the test harness's process wrapper).
pub fn main() -> anyhow::Result<()> {
    run(Args::parse())
}

/// Runs one edge until it is drained: `sluice-edge`, and `sluicectl edge` (which `sluicectl
/// bench` starts as the peer of its replicated phases).
pub fn run(args: Args) -> anyhow::Result<()> {
    init_tracing(args.log_json);
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async {
        let edge = crate::Edge::builder(config).start().await.context("starting edge")?;
        edge.serve_until_drained().await;
        anyhow::Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config() {
        let args =
            Args::try_parse_from(["sluice-edge", "--edge-id", "sluice-edge-3", "--admin-listen", "127.0.0.1:9080"])
                .expect("flags parse");
        let config = load_config(&args).expect("config");
        assert_eq!(config.edge_id, "sluice-edge-3");
        assert_eq!(config.admin.listen, Some("127.0.0.1:9080".parse().unwrap()));
    }
}
