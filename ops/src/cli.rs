//! sluicectl's command line: parsing and the commands' drivers. The binary (`main.rs`) and the
//! test harness's copy (`tests/src/bin/sluicectl-under-test.rs`) both call [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::bench::{self, BenchOptions};
use crate::dev::{self, DevOptions, KafkaChoice};
use crate::loadgen::{self, LoadgenOptions};
use crate::replay;
use anyhow::Context;
use clap::{Parser, Subcommand};

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
        /// Core's metrics address; edge i serves its admin API (metrics, status, drain) on
        /// this port + 1 + i.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
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
        /// A few seconds in total instead of about three minutes: checks the suite, measures little.
        #[arg(long)]
        quick: bool,
        /// Let the edge and the load generator share all CPUs. By default, with two or more
        /// CPUs, the edge phases run the edge on the first and the generator on the second.
        #[arg(long)]
        no_pin: bool,
        /// Only the replication phases (section 5), about two minutes.
        #[arg(long)]
        replication_only: bool,
        /// Where the replicated phases' peer keeps its WAL (default: under `--dir`, the same
        /// disk as the origin's). Another disk, or tmpfs, shows what sharing one disk costs.
        #[arg(long)]
        peer_dir: Option<PathBuf>,
        /// Where the edge phases keep their WAL (default: under `--dir`, the disk the raw rows
        /// measure). tmpfs, for the edge's CPU without the disk (with `--peer-dir` on tmpfs too).
        #[arg(long)]
        edge_dir: Option<PathBuf>,
        /// Edge phases without the edge's forwarder (the suite before issue 18 ran this way):
        /// the edge's CPU then leaves out framing and zstd compression.
        #[arg(long)]
        no_forwarder: bool,
    },
    /// Run one edge, exactly as the `sluice-edge` binary does (same flags). `bench` starts the
    /// peer of its replicated phases this way, as a process of its own.
    #[command(hide = true)]
    Edge(sluice_edge::cli::Args),
    /// Drain an edge through its admin API: readiness off, new requests refused, forward the WAL
    /// until empty or the deadline, then the edge exits. Shows progress and a summary.
    Drain {
        /// The edge's admin address (`admin.listen`).
        #[arg(long)]
        edge: SocketAddr,
        /// The edge's `admin.token`.
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Override the edge's `drain_deadline_secs`.
        #[arg(long)]
        deadline_secs: Option<u64>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read a WAL directory offline (a live edge's, or one copied off a dead node).
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
    /// Ship a WAL directory's records to core (or to an NDJSON file): how a dead node's disk is
    /// recovered. Idempotent (core drops batch IDs it already delivered) and resumable.
    Replay {
        /// The WAL directory.
        dir: PathBuf,
        /// Take core's address, TLS files and frame settings from this edge config's `[forwarder]`.
        #[arg(long)]
        edge_config: Option<PathBuf>,
        /// Core's QUIC address (overrides the edge config).
        #[arg(long)]
        core: Option<SocketAddr>,
        /// CA certificate of core (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate and key (PEM) for mutual TLS.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Name in core's certificate.
        #[arg(long)]
        server_name: Option<String>,
        /// Shown in core's logs for the replayed frames.
        #[arg(long, default_value = "sluicectl-replay")]
        edge_id: String,
        /// Every record, not only those after the ack watermark.
        #[arg(long)]
        all: bool,
        /// Also salvage the valid records of quarantined (`*.corrupt`) segments.
        #[arg(long)]
        include_quarantined: bool,
        /// Progress file (default: `<dir>.replay-state.json` beside the directory).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Ignore the progress file of an earlier run.
        #[arg(long)]
        restart: bool,
        /// Write NDJSON (the `wal dump` format) to this file instead of sending to core.
        #[arg(long, conflicts_with = "core")]
        to_file: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
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
enum WalAction {
    /// Segments: bytes, records, events, unacked, damage, oldest/newest received_at.
    Ls {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Totals, ack watermark, unacked depth and per-tenant counts.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Checks every record's checksum; reports damage by segment and offset. Exit code 1 on
    /// corruption (a torn tail alone is expected after a crash and passes).
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Prints records as NDJSON, one line per record.
    Dump {
        dir: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        batch_id: Option<uuid::Uuid>,
        /// received_at at or after this (epoch ms or RFC 3339).
        #[arg(long, value_parser = crate::wal::parse_time_ms)]
        since: Option<u64>,
        /// received_at before this (epoch ms or RFC 3339).
        #[arg(long, value_parser = crate::wal::parse_time_ms)]
        until: Option<u64>,
        /// Only records core has not acknowledged.
        #[arg(long)]
        unacked: bool,
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
    /// Route the tenant's accepted events to the overflow topic (`events.<region>.overflow`);
    /// `--off` routes them back.
    Overflow {
        tenant: String,
        #[arg(long)]
        off: bool,
    },
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

/// Parses the process arguments and runs the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { dir, http, quic, kafka, edges, admin } => {
            run_dev(DevOptions { dir, http, quic, kafka, edges, admin: Some(admin) })
        }
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
        Command::Bench {
            dir,
            out,
            server_threads,
            loadgen_threads,
            connections,
            quick,
            no_pin,
            replication_only,
            peer_dir,
            edge_dir,
            no_forwarder,
        } => {
            let mut opts = BenchOptions {
                server_threads,
                loadgen_threads,
                connections,
                peer_dir,
                edge_dir,
                ..BenchOptions::new(dir)
            };
            if no_pin {
                opts.pinning = None;
            }
            opts.forwarder = !no_forwarder;
            if quick {
                opts.phases = bench::Phases::smoke();
            }
            run_bench(&opts, &out, replication_only)
        }
        Command::Edge(args) => sluice_edge::cli::run(args),
        Command::Drain { edge, token, deadline_secs, json } => run_drain(edge, &token, deadline_secs, json),
        Command::Wal { action } => run_wal(action),
        Command::Replay {
            dir,
            edge_config,
            core,
            ca,
            cert,
            key,
            server_name,
            edge_id,
            all,
            include_quarantined,
            state,
            restart,
            to_file,
            json,
        } => {
            let target = match to_file {
                Some(path) => replay::Target::File(path),
                None => replay_core_target(edge_config.as_deref(), core, ca, cert, key, server_name, edge_id)?,
            };
            let opts = replay::ReplayOptions {
                state_file: state.unwrap_or_else(|| replay::default_state_file(&dir)),
                dir,
                all,
                include_quarantined,
                restart,
                frame_bytes: 1024 * 1024,
            };
            run_replay(&opts, target, json)
        }
        Command::Keys { file, action } => match action {
            KeysAction::New { tenant, env, signed } => {
                let signing = signed.then(crate::keys::new_signing_secret);
                let (id, secret) = crate::keys::add_with_signing(&file, &tenant, &env, signing.clone())?;
                println!("created key {id} for tenant {tenant} env {env}");
                println!("secret (shown once): {secret}");
                if let Some(s) = signing {
                    println!(
                        "signing secret (keep it server-side; the HMAC key is the 32 bytes this hex encodes): {s}"
                    );
                }
                Ok(())
            }
            KeysAction::List => {
                for k in crate::keys::list(&file)?.keys {
                    println!("{}\t{}\t{}\t{}", k.id, k.tenant, k.env, if k.revoked { "revoked" } else { "active" });
                }
                Ok(())
            }
            KeysAction::Revoke { id } => {
                crate::keys::revoke(&file, &id)?;
                println!("revoked {id}");
                Ok(())
            }
            KeysAction::Quota { tenant, events_per_sec } => {
                crate::keys::set_quota(&file, &tenant, events_per_sec)?;
                println!("tenant {tenant}: {events_per_sec} events/s per edge (burst ×3; 0 = unlimited)");
                Ok(())
            }
            KeysAction::Overflow { tenant, off } => {
                crate::keys::set_overflow(&file, &tenant, !off)?;
                println!("tenant {tenant}: {}", if off { "back on its region's topic" } else { "routed to overflow" });
                Ok(())
            }
            KeysAction::Disable { tenant, env } => {
                crate::keys::set_disabled(&file, &tenant, env.as_deref(), true)?;
                println!("disabled tenant {tenant} env {}", env.as_deref().unwrap_or("*"));
                Ok(())
            }
            KeysAction::Enable { tenant, env } => {
                crate::keys::set_disabled(&file, &tenant, env.as_deref(), false)?;
                println!("enabled tenant {tenant} env {}", env.as_deref().unwrap_or("*"));
                Ok(())
            }
        },
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("encoding JSON")?);
    Ok(())
}

fn run_wal(action: WalAction) -> anyhow::Result<()> {
    use crate::wal;
    match action {
        WalAction::Ls { dir, json } | WalAction::Inspect { dir, json } if json => {
            let i = wal::inspect(&dir)?;
            print_json(&i)
        }
        WalAction::Ls { dir, .. } => {
            print!("{}", wal::render_ls(&wal::inspect(&dir)?));
            Ok(())
        }
        WalAction::Inspect { dir, .. } => {
            print!("{}", wal::render_inspect(&wal::inspect(&dir)?));
            Ok(())
        }
        WalAction::Verify { dir, json } => {
            let v = wal::verify(&dir)?;
            if json {
                print_json(&v)?;
            } else {
                print!("{}", wal::render_verify(&v));
            }
            if !v.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        WalAction::Dump { dir, tenant, batch_id, since, until, unacked } => {
            let filter = wal::DumpFilter { tenant, batch_id, since_ms: since, until_ms: until, unacked_only: unacked };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = wal::dump(&dir, &filter, &mut out)?;
            std::io::Write::flush(&mut out).context("writing stdout")?;
            eprintln!("{n} records");
            Ok(())
        }
    }
}

fn run_drain(edge: SocketAddr, token: &str, deadline_secs: Option<u64>, json: bool) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(1).with_style(
        indicatif::ProgressStyle::with_template(
            "drain [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .context("progress template")?,
    );
    let summary = crate::drain::run(edge, token, deadline_secs, std::time::Duration::from_millis(250), &bar)?;
    bar.finish_and_clear();
    if json {
        print_json(&summary)?;
    } else {
        print!("{}", summary.render());
    }
    if !summary.complete {
        std::process::exit(1);
    }
    Ok(())
}

fn replay_core_target(
    edge_config: Option<&std::path::Path>,
    core: Option<SocketAddr>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    edge_id: String,
) -> anyhow::Result<replay::Target> {
    let mut f = match edge_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<sluice_edge::config::EdgeConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
                .forwarder
        }
        None => {
            anyhow::ensure!(core.is_some(), "replay needs --core <addr> (or --edge-config, or --to-file)");
            sluice_edge::config::ForwarderConfig::default()
        }
    };
    if let Some(v) = ca {
        f.ca_cert = v;
    }
    if cert.is_some() || key.is_some() {
        (f.client_cert, f.client_key) = (cert, key);
    }
    if let Some(v) = server_name {
        f.server_name = v;
    }
    let client = sluice_edge::tls::quic_client_config(&f.ca_cert, f.client_cert.as_deref(), f.client_key.as_deref())
        .context("QUIC client TLS")?;
    Ok(replay::Target::Core(replay::CoreTarget {
        // --core names one node; otherwise the edge config's nodes (core_nodes or core_addr).
        routing: match core {
            Some(addr) => {
                sluice_edge::routing::Rendezvous::new(vec![sluice_edge::routing::CoreNode { id: "core".into(), addr }])
            }
            None => f.routing(),
        },
        server_name: f.server_name,
        client,
        edge_id,
        zstd_level: f.zstd_level,
        ack_timeout: std::time::Duration::from_secs(f.ack_timeout_secs),
        max_attempts: 30,
        max_in_flight: f.max_in_flight,
    }))
}

fn run_replay(opts: &replay::ReplayOptions, target: replay::Target, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let bar = indicatif::ProgressBar::new(1).with_style(
        indicatif::ProgressStyle::with_template(
            "replay [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .context("progress template")?,
    );
    let summary = runtime.block_on(replay::run(opts, target, &bar))?;
    bar.finish_and_clear();
    if json {
        print_json(&summary)
    } else {
        print!("{}", summary.render());
        Ok(())
    }
}

fn run_dev(opts: DevOptions) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async {
        let pipeline = dev::start(&opts).await?;
        println!();
        print!("{}", pipeline.summary());
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

fn run_bench(opts: &BenchOptions, out: &std::path::Path, replication_only: bool) -> anyhow::Result<()> {
    let progress = indicatif::MultiProgress::new();
    let table = if replication_only {
        bench::run_replication(opts, &progress)?
    } else {
        eprintln!("bench: the full suite takes about three minutes; numbers are noisy if other work shares the cores");
        let results = bench::run(opts, &progress)?;
        bench::render(opts, &results, &bench::describe_machine(&opts.dir))
    };
    std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!("{table}");
    eprintln!("bench: table written to {}", out.display());
    Ok(())
}
