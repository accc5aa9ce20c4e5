//! sluicectl: the Sluice operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_ops::dev::{self, DevOptions, KafkaChoice};

#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about = "Operate Sluice: run it locally, manage keys")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run core + edge on loopback with throwaway certificates and a fresh API key.
    Dev {
        /// State directory (WAL, sink, certificates, keys). Wiped of certificates and keys each run.
        #[arg(long, default_value = ".sluice-dev")]
        dir: PathBuf,
        /// HTTP listen address of the edge.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// QUIC listen address of core.
        #[arg(long, default_value = "127.0.0.1:7000")]
        quic: SocketAddr,
        /// `none` (embedded NDJSON file sink), `mock` (in-process Kafka mock cluster) or
        /// `host:port` of a real broker.
        #[arg(long, default_value = "none")]
        kafka: KafkaChoice,
    },
    /// Manage API keys in an edge keys file.
    Keys {
        /// The keys file.
        #[arg(long, default_value = "keys.toml", global = true)]
        file: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Create a key for a tenant and environment; prints the secret once.
    New {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "production")]
        env: String,
        /// Also create an HMAC signing secret: requests with this key must then carry
        /// `X-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>." + body)>`.
        #[arg(long)]
        signed: bool,
    },
    /// List keys (ids, tenants, status; never secrets).
    List,
    /// Revoke a key by id: requests with it get 403.
    Revoke { id: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { dir, http, quic, kafka } => run_dev(DevOptions { dir, http, quic, kafka }),
        Command::Keys { file, action } => match action {
            KeysAction::New { tenant, env, signed } => {
                let signing = signed.then(sluice_ops::keys::new_signing_secret);
                let (id, secret) = sluice_ops::keys::add_with_signing(&file, &tenant, &env, signing.clone())?;
                println!("created key {id} for tenant {tenant} env {env}");
                println!("secret (shown once): {secret}");
                if let Some(s) = signing {
                    println!("signing secret (hex, keep it server-side): {s}");
                }
                Ok(())
            }
            KeysAction::List => {
                for k in sluice_ops::keys::list(&file)?.keys {
                    println!("{}\t{}\t{}\t{}", k.id, k.tenant, k.env, if k.revoked { "revoked" } else { "active" });
                }
                Ok(())
            }
            KeysAction::Revoke { id } => {
                sluice_ops::keys::revoke(&file, &id)?;
                println!("revoked {id}");
                Ok(())
            }
        },
    }
}

fn run_dev(opts: DevOptions) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async {
        let pipeline = dev::start(&opts).await?;
        println!();
        println!("Sluice dev pipeline is up.");
        println!("  edge HTTP : http://{}", pipeline.edge.http_addr);
        println!("  core QUIC : {}", pipeline.core.addr);
        println!("  API key   : {}", pipeline.api_key);
        match (&pipeline.sink_dir, &pipeline.brokers) {
            (Some(d), _) => println!("  sink      : {}", dev::events_file(d).display()),
            (None, Some(b)) => println!("  sink      : Kafka {b}, topic {}", pipeline.topic),
            (None, None) => {}
        }
        println!();
        println!("Send an event:");
        println!("  {}", pipeline.curl_line());
        println!();
        println!("Ctrl-C to stop (the WAL keeps anything not yet forwarded).");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        pipeline.shutdown().await;
        anyhow::Ok(())
    })
}
