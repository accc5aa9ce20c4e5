//! sluicectl: the Sluice operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_ops::bench::{self, BenchOptions};
use sluice_ops::dev::{self, DevOptions, KafkaChoice};
use sluice_ops::loadgen::{self, LoadgenOptions};

#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about = "Operate Sluice: run it locally, manage keys, measure it")]
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
        /// Edges in the local POP. With more than one they replicate to each other: edge i
        /// serves HTTP on the `--http` port + i and replicas on the `--quic` port + 1 + i.
        #[arg(long, default_value_t = 1)]
        edges: usize,
    },
    /// Send synthetic events to an edge on loopback and report throughput and latency.
    Loadgen {
        /// The edge's HTTP address (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        /// API key; repeat for several tenants (requests rotate over them).
        #[arg(long = "api-key", required = true)]
        api_keys: Vec<String>,
        /// Bytes of JSON per event.
        #[arg(long, default_value_t = 300)]
        event_bytes: usize,
        #[arg(long, default_value_t = 100)]
        events_per_request: usize,
        /// gzip request bodies (compressed once, before the run).
        #[arg(long)]
        gzip: bool,
        /// Distinct `distinct_id` values.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of load, after the warm-up.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds of warm-up not counted.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Open loop at this many events/s in total; without it, closed loop (max throughput).
        #[arg(long)]
        rate: Option<f64>,
        /// Tokio worker threads of the generator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Run the benchmark suite on this machine and write a Markdown table (see BENCHMARKS.md).
    Bench {
        /// Scratch directory on the disk to measure (the WAL lives there during the run).
        #[arg(long, default_value = ".sluice-bench")]
        dir: PathBuf,
        /// Where to write the Markdown table.
        #[arg(long, default_value = "bench-results.md")]
        out: PathBuf,
        /// Tokio worker threads of the edge (plus its WAL writer thread).
        #[arg(long, default_value_t = 1)]
        server_threads: usize,
        /// Tokio worker threads of the load generator.
        #[arg(long, default_value_t = 1)]
        loadgen_threads: usize,
        /// Concurrent HTTP connections. Group commit needs concurrency: with fdatasync at a few
        /// ms, 16 connections cap the edge far below its CPU limit.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// A few seconds in total instead of about two minutes: checks the suite, measures little.
        #[arg(long)]
        quick: bool,
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
    /// Set a tenant's events/s quota on each edge (burst 3×; 0 = unlimited).
    Quota { tenant: String, events_per_sec: u32 },
    /// Kill switch: every key of the tenant (or of one environment) gets 403.
    Disable {
        tenant: String,
        #[arg(long)]
        env: Option<String>,
    },
    /// Lifts `disable`.
    Enable {
        tenant: String,
        #[arg(long)]
        env: Option<String>,
    },
}

/// Same allocator as the `sluice-edge` binary, so `sluicectl dev` and `bench` measure the edge as
/// it is shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { dir, http, quic, kafka, edges } => run_dev(DevOptions { dir, http, quic, kafka, edges }),
        Command::Loadgen {
            target,
            api_keys,
            event_bytes,
            events_per_request,
            gzip,
            keys,
            connections,
            seconds,
            warmup,
            rate,
            threads,
        } => run_loadgen(
            LoadgenOptions {
                event_bytes,
                events_per_request,
                gzip,
                distinct_ids: keys,
                connections,
                duration: secs(seconds)?,
                warmup: secs(warmup)?,
                rate_events_per_sec: rate,
                ..LoadgenOptions::new(target, api_keys)
            },
            threads,
        ),
        Command::Bench { dir, out, server_threads, loadgen_threads, connections, quick } => {
            let mut opts = BenchOptions { server_threads, loadgen_threads, connections, ..BenchOptions::new(dir) };
            if quick {
                opts.phases = bench::Phases::smoke();
            }
            run_bench(&opts, &out)
        }
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
            KeysAction::Quota { tenant, events_per_sec } => {
                sluice_ops::keys::set_quota(&file, &tenant, events_per_sec)?;
                println!("tenant {tenant}: {events_per_sec} events/s per edge (burst ×3; 0 = unlimited)");
                Ok(())
            }
            KeysAction::Disable { tenant, env } => {
                sluice_ops::keys::set_disabled(&file, &tenant, env.as_deref(), true)?;
                println!("disabled tenant {tenant} env {}", env.as_deref().unwrap_or("*"));
                Ok(())
            }
            KeysAction::Enable { tenant, env } => {
                sluice_ops::keys::set_disabled(&file, &tenant, env.as_deref(), false)?;
                println!("enabled tenant {tenant} env {}", env.as_deref().unwrap_or("*"));
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
        for peer in &pipeline.peers {
            println!(
                "  edge HTTP : http://{} (replicas on {})",
                peer.http_addr,
                peer.replication_addr.map_or_else(|| "-".into(), |a| a.to_string())
            );
        }
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

fn secs(s: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a number of seconds"))
}

fn run_loadgen(opts: LoadgenOptions, threads: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadgen")
        .enable_all()
        .build()
        .context("starting tokio")?;
    let bar = indicatif::ProgressBar::new(1).with_style(
        indicatif::ProgressStyle::with_template("loadgen [{bar:30}] {pos}/{len}s").context("progress template")?,
    );
    let mode = match opts.rate_events_per_sec {
        Some(r) => format!("open loop at {r:.0} events/s"),
        None => "closed loop".into(),
    };
    eprintln!(
        "loadgen: {} connections, {mode}, {} x {} B events per request{}, {} tenant(s)",
        opts.connections,
        opts.events_per_request,
        opts.event_bytes,
        if opts.gzip { ", gzip" } else { "" },
        opts.api_keys.len()
    );
    let report = runtime.block_on(loadgen::run(&opts, &bar))?;
    bar.finish_and_clear();
    print!("{}", report.summary());
    Ok(())
}

fn run_bench(opts: &BenchOptions, out: &std::path::Path) -> anyhow::Result<()> {
    let progress = indicatif::MultiProgress::new();
    eprintln!("bench: the full suite takes about two minutes; numbers are noisy if other work shares the cores");
    let results = bench::run(opts, &progress)?;
    let table = bench::render(opts, &results, &bench::describe_machine(&opts.dir));
    std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!("{table}");
    eprintln!("bench: table written to {}", out.display());
    Ok(())
}
