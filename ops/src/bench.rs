//! `sluicectl bench`: a fixed suite that measures this machine's Sluice against the machine's own
//! limits, in one run, and writes a Markdown table.
//!
//! 1. raw `fdatasync` bandwidth of the WAL disk at the group sizes the WAL uses;
//! 2. the edge (WAL on, forwarder on to a core that acks and drops, as production pays): max
//!    events/s, latency at 50% and 80% of max, group commit;
//! 3. core alone: frames into `Ingest::process` → Kafka mock cluster, against a bare producer;
//! 4. end to end: freshness (202 → consumed from Kafka) at a steady rate;
//! 5. gzip vs plain, 1 KiB vs 300 B events;
//! 6. replication: local-only vs replicated (R=2, over loopback QUIC to a peer edge that runs as a
//!    process of its own on the generator's CPU), closed loop and at one open-loop rate, per round.
//!
//! Server and load generator run in one process on separate tokio runtimes with fixed worker
//! counts, and CPU time is read per thread from `/proc/self/task/*/schedstat`, so "events per
//! server core" is events divided by the CPU seconds the edge's own threads used. With two or
//! more CPUs the edge phases pin the edge (workers, WAL writer, blocking pool) to one CPU and the
//! generator to another ([`Pinning`]); max, 50% and 80% are measured in several rounds, each at
//! the max of its own round, because this machine's capacity moves between runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_core::config::{KafkaConfig, SinkConfig};
use sluice_core::dedupe::{DedupeIndex, RedbDedupe};
use sluice_core::metrics::CoreMetrics;
use sluice_core::server::Ingest;
use sluice_edge::config::{EdgeConfig, LimitsConfig, PeerConfig, PiiPolicy, ValidationConfig, WalConfig};
use sluice_edge::ingest::validate::{self, BatchContext};
use sluice_edge::replication::Stage;
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use sluice_wire::record::{encode_record, encode_record_compressed};
use sluice_wire::{BatchRecord, Stream, frame};

use crate::affinity::{CpuSet, on_cpus};
use crate::dev::{self, DevOptions, KafkaChoice};
use crate::loadgen::{self, LoadReport, LoadgenOptions};

/// Group sizes of the raw fdatasync measurement: from one small request to the WAL's 8 MiB cap.
const FSYNC_SIZES: [usize; 6] = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20];
/// Group sizes the edge writes at the suite's rates (4–64 KiB), also measured into a prepared file.
const PREPARED_FSYNC_SIZES: [usize; 2] = [4 << 10, 64 << 10];
/// The sustained run's group size: a group at 80 % load is 100–300 KiB.
const SUSTAINED_GROUP: usize = 256 << 10;
/// The forwarder's default frame size, used to cut the frames replayed into core.
const FRAME_BYTES: usize = 1 << 20;
const REGION: &str = "bench";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch directory on the disk under test (the WAL goes there).
    pub dir: PathBuf,
    /// Tokio worker threads of the edge (it also has its WAL writer thread).
    pub server_threads: usize,
    /// Tokio worker threads of the load generator.
    pub loadgen_threads: usize,
    pub connections: usize,
    pub tenants: usize,
    /// Seconds of each timed phase; see [`Phases`].
    pub phases: Phases,
    /// Which CPU the edge and the generator get in the edge phases; `None` lets them share all.
    /// The peer of the replicated phases runs on the generator's.
    pub pinning: Option<Pinning>,
    /// The `sluicectl` that runs the replicated phases' peer (`sluicectl edge`); default: this
    /// executable.
    pub peer_exe: Option<PathBuf>,
    /// Where the peer's WAL goes; default: next to the origin's, on the same disk.
    pub peer_dir: Option<PathBuf>,
    /// Where the edge phases' WAL goes (sections 2 and 5); default: under `dir`, the disk the
    /// raw rows measure. tmpfs shows the edge without its disk.
    pub edge_dir: Option<PathBuf>,
    /// Whether the edge phases run the edge's forwarder (to a core that acks and drops), so the
    /// edge's CPU includes the framing and compression a production edge does.
    pub forwarder: bool,
}

/// The edge on one CPU, the load generator on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    pub edge: usize,
    pub loadgen: usize,
}

impl Pinning {
    /// The first two CPUs this process may use, or `None` on a one-CPU machine (nothing to split).
    pub fn first_two() -> Option<Self> {
        let cpus = CpuSet::current().ok()?.cpus();
        match cpus[..] {
            [edge, loadgen, ..] => Some(Self { edge, loadgen }),
            _ => None,
        }
    }
}

/// How long each part runs. `full()` keeps the suite near three minutes; `smoke()` is for tests.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub fsync_per_size: Duration,
    /// The sustained fdatasync run: long enough to get past a virtual disk's burst allowance.
    pub fsync_sustained: Duration,
    pub warmup: Duration,
    pub edge_max: Duration,
    pub edge_latency: Duration,
    /// Rounds of (max, 50%, 80%), each open-loop rate taken from its own round's max.
    pub latency_rounds: usize,
    pub core_events: usize,
    pub e2e: Duration,
    pub matrix: Duration,
}

impl Phases {
    pub fn full() -> Self {
        Self {
            fsync_per_size: Duration::from_millis(1500),
            fsync_sustained: Duration::from_secs(12),
            warmup: Duration::from_secs(1),
            edge_max: Duration::from_secs(8),
            edge_latency: Duration::from_secs(8),
            latency_rounds: 3,
            core_events: 300_000,
            e2e: Duration::from_secs(10),
            matrix: Duration::from_secs(5),
        }
    }

    pub fn smoke() -> Self {
        Self {
            fsync_per_size: Duration::from_millis(50),
            fsync_sustained: Duration::from_millis(100),
            warmup: Duration::from_millis(100),
            edge_max: Duration::from_millis(700),
            edge_latency: Duration::from_millis(400),
            latency_rounds: 1,
            core_events: 3_000,
            e2e: Duration::from_millis(700),
            matrix: Duration::from_millis(300),
        }
    }
}

impl BenchOptions {
    /// Where the edge's threads run in the edge phases (`None`: anywhere).
    fn edge_cpus(&self) -> Option<CpuSet> {
        self.pinning.map(|p| CpuSet::only(p.edge))
    }

    /// Where the load generator's threads run.
    fn loadgen_cpus(&self) -> Option<CpuSet> {
        self.pinning.map(|p| CpuSet::only(p.loadgen))
    }

    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            server_threads: 1,
            loadgen_threads: 1,
            connections: 64,
            tenants: 4,
            phases: Phases::full(),
            pinning: Pinning::first_two(),
            peer_exe: None,
            peer_dir: None,
            edge_dir: None,
            forwarder: true,
        }
    }
}

/// The file a raw fdatasync row writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFile {
    /// Appends to a file that grows (a WAL segment with `wal.preallocate = "off"`).
    Growing,
    /// Writes into a file of zeros written and synced beforehand, round and round (a segment
    /// prepared ahead): the file's size never changes.
    Prepared,
}

/// The prepared file of the raw rows: a WAL segment's default size.
const PREPARED_FILE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct FsyncRow {
    pub group_bytes: usize,
    pub file: SyncFile,
    pub syncs: u64,
    pub elapsed: Duration,
    /// Latency of each write + fdatasync, microseconds.
    pub latency: Histogram<u64>,
    /// MB/s in each whole second of the run: a virtual disk may allow a burst, then throttle.
    pub per_second_mb: Vec<f64>,
}

impl FsyncRow {
    pub fn mb_per_sec(&self) -> f64 {
        (self.syncs * self.group_bytes as u64) as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
    pub fn ms_per_sync(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3 / self.syncs.max(1) as f64
    }
    /// The median second's MB/s (the whole run's when it lasted under two seconds).
    pub fn median_second_mb(&self) -> f64 {
        if self.per_second_mb.len() < 2 {
            return self.mb_per_sec();
        }
        median(self.per_second_mb.clone())
    }
}

/// Group-commit counters over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupStats {
    pub groups: u64,
    pub records: u64,
    pub bytes: u64,
    pub sync: Duration,
}

impl GroupStats {
    fn read(wal: &sluice_edge::wal::Wal) -> Self {
        let s = wal.stats();
        Self {
            groups: s.groups.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            sync: Duration::from_secs_f64(s.sync_latency.get_sample_sum()),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            groups: self.groups - before.groups,
            records: self.records - before.records,
            bytes: self.bytes - before.bytes,
            sync: self.sync.saturating_sub(before.sync),
        }
    }

    pub fn records_per_group(&self) -> f64 {
        self.records as f64 / self.groups.max(1) as f64
    }
    pub fn bytes_per_group(&self) -> f64 {
        self.bytes as f64 / self.groups.max(1) as f64
    }
    pub fn ms_per_sync(&self) -> f64 {
        self.sync.as_secs_f64() * 1e3 / self.groups.max(1) as f64
    }
}

/// One edge load phase: what the client saw, the WAL did and the threads burnt.
#[derive(Debug, Clone)]
pub struct EdgePhase {
    pub label: String,
    pub report: LoadReport,
    pub wal: GroupStats,
    pub cpu: CpuTimes,
    /// WAL appends (queue + write + fdatasync), from the edge's `enqueue_latency` histogram.
    pub appends: SlowShare,
    /// Requests from parsed head to ready response, from `request_duration`.
    pub handled: SlowShare,
    /// Group commits' fdatasync alone, from the WAL's `sync_latency`.
    pub fsyncs: SlowShare,
    /// Hypervisor steal on all CPUs during the phase.
    pub steal: Duration,
    /// Replicated phases: each stage of a group's replication (origin's and peer's), by label.
    pub stages: Vec<(&'static str, SlowShare)>,
    /// Frames the forwarder had acknowledged by the end of the phase (warm-up included); `None`
    /// with the forwarder off.
    pub forwarded_frames: Option<u64>,
}

/// Server-side view of a phase: how many of the server's timings exceeded two bounds. Set against
/// the client's p99 it tells where a latency tail comes from: the WAL, the request handling, or
/// outside the handler (accept, kernel, scheduling, the load generator).
#[derive(Debug, Clone, Copy, Default)]
pub struct SlowShare {
    pub total: u64,
    /// Timings over 12.8 ms and 51.2 ms (histogram bucket bounds).
    pub over_12ms: u64,
    pub over_51ms: u64,
    /// Upper bound of the histogram bucket holding the 99th percentile (buckets double from
    /// 0.1 ms, so this is the p99 rounded up to a power-of-two multiple of 0.1 ms).
    pub p99_bound_ms: f64,
}

impl SlowShare {
    fn read(histogram: &prometheus::Histogram) -> Self {
        let h = prometheus::core::Metric::metric(histogram);
        let h = h.get_histogram();
        let buckets: Vec<(f64, u64)> = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        Self::from_buckets(h.get_sample_count(), &buckets)
    }

    /// From a histogram's sample count and its cumulative buckets `(upper bound s, count)`.
    fn from_buckets(total: u64, buckets: &[(f64, u64)]) -> Self {
        let at_most =
            |bound: f64| buckets.iter().find(|(upper, _)| (upper - bound).abs() < 1e-9).map_or(total, |&(_, n)| n);
        let p99 = (total as f64 * 0.99).ceil() as u64;
        let p99_bound_ms = buckets.iter().find(|&&(_, n)| n >= p99).map_or(f64::INFINITY, |&(upper, _)| upper * 1e3);
        Self { total, over_12ms: total - at_most(0.0128), over_51ms: total - at_most(0.0512), p99_bound_ms }
    }

    /// The histogram `name` with label `label` in Prometheus text (another process's
    /// `/metrics`); empty when it is not there.
    fn scrape(text: &str, name: &str, label: &str) -> Self {
        let mut buckets = Vec::new();
        let mut total = 0;
        for line in text.lines().filter(|l| l.contains(label)) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if series.starts_with(&format!("{name}_bucket{{")) {
                let le = series.split("le=\"").nth(1).and_then(|r| r.split('"').next());
                if let Some(upper) = le.and_then(|le| le.parse::<f64>().ok()) {
                    buckets.push((upper, value as u64));
                }
            } else if series.starts_with(&format!("{name}_count{{")) {
                total = value as u64;
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self::from_buckets(total, &buckets)
    }
}

impl EdgePhase {
    /// Events the WAL made durable per CPU second of the edge's threads (workers + WAL writer).
    pub fn events_per_server_cpu_sec(&self) -> f64 {
        let cpu = self.cpu.get("edge") + self.cpu.get("wal");
        self.wal.records as f64 * self.report.events_per_request as f64 / cpu.as_secs_f64().max(1e-9)
    }

    /// Bytes of WAL per accepted event (record framing and normalized JSON included).
    pub fn wal_bytes_per_event(&self) -> f64 {
        self.wal.bytes as f64 / (self.wal.records.max(1) as f64 * self.report.events_per_request as f64)
    }
}

#[derive(Debug, Clone)]
pub struct CoreResult {
    pub events: u64,
    /// Frames processed one at a time, as one edge's forwarder sends them.
    pub core_serial: Duration,
    /// Four frames in flight, as several edges would send them.
    pub core_parallel: Duration,
    /// The same messages from a bare producer, one frame's worth at a time.
    pub bare_serial: Duration,
    /// Four frames' worth in flight.
    pub bare_parallel: Duration,
    pub frames: usize,
    /// Mean time to decompress and decode one frame.
    pub decode_per_frame: Duration,
    /// Mean time of one dedupe-index commit of a frame's batch IDs (redb, fsync'd).
    pub record_per_frame: Duration,
}

impl CoreResult {
    pub fn eps(&self, d: Duration) -> f64 {
        self.events as f64 / d.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct E2eResult {
    pub rate: f64,
    pub report: LoadReport,
    /// 202 → consumed, per event, microseconds.
    pub freshness: Histogram<u64>,
    pub missing: u64,
}

/// CPU time per thread group of this process.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes(BTreeMap<&'static str, Duration>);

impl CpuTimes {
    pub fn get(&self, group: &str) -> Duration {
        self.0.get(group).copied().unwrap_or_default()
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes(self.0.iter().map(|(k, v)| (*k, v.saturating_sub(before.get(k)))).collect())
    }

    fn describe(&self, wall: Duration) -> String {
        let w = wall.as_secs_f64().max(1e-9);
        let parts: Vec<_> = self.0.iter().map(|(k, v)| format!("{k} {:.2}", v.as_secs_f64() / w)).collect();
        format!("cores busy: {}", parts.join(", "))
    }
}

/// Per-CPU `steal` ticks from `/proc/stat`: time the hypervisor ran something else while this VM's
/// CPU had work. On a shared host a stall of hundreds of milliseconds shows up here, and in the
/// client's p99 with no trace in the server's own timings.
#[derive(Debug, Clone, Default)]
pub struct Steal(Vec<u64>);

impl Steal {
    /// Empty (no steal ever) where `/proc/stat` cannot be read.
    pub fn read() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    fn parse(proc_stat: &str) -> Self {
        // `cpuN user nice system idle iowait irq softirq steal …`; the summed `cpu ` line is skipped.
        let per_cpu = proc_stat
            .lines()
            .filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
            .map(|l| l.split_whitespace().nth(8).and_then(|v| v.parse().ok()).unwrap_or(0));
        Self(per_cpu.collect())
    }

    /// Steal summed over all CPUs since `before`.
    pub fn since(&self, before: &Steal) -> Duration {
        let ticks: u64 = self.0.iter().zip(&before.0).map(|(now, then)| now.saturating_sub(*then)).sum();
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Duration::from_millis(ticks * 1000 / u64::try_from(hz).unwrap_or(100).max(1))
    }
}

/// The thread group a thread belongs to, by the name it was given.
pub fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("edge-rt") || comm.starts_with("sluice-repl") {
        "edge"
    } else if comm.starts_with("wal-writer") {
        "wal"
    } else if comm.starts_with("loadgen") {
        "loadgen"
    } else if comm.starts_with("rdk:") {
        "kafka"
    } else {
        "other"
    }
}

/// Sums on-CPU time of this process's live threads by group (`schedstat` is in nanoseconds).
pub fn cpu_times() -> CpuTimes {
    cpu_times_in(Path::new("/proc/self/task"))
}

/// As [`cpu_times`], for the threads under `tasks` (`/proc/<pid>/task`).
fn cpu_times_in(tasks: &Path) -> CpuTimes {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(tasks) else {
        return CpuTimes(out);
    };
    for task in tasks.flatten() {
        let p = task.path();
        let (Ok(comm), Ok(sched)) =
            (std::fs::read_to_string(p.join("comm")), std::fs::read_to_string(p.join("schedstat")))
        else {
            continue;
        };
        let Some(ns) = sched.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        *out.entry(thread_group(comm.trim())).or_insert(Duration::ZERO) += Duration::from_nanos(ns);
    }
    CpuTimes(out)
}

fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// Appends each of `sizes` and fdatasyncs, like the WAL writer does, for `per_size` each; then
/// the same into a prepared file for each of `prepared` (group sizes the edge writes), so the
/// two are compared in one run.
pub fn fsync_bandwidth(
    dir: &Path,
    sizes: &[usize],
    prepared: &[usize],
    per_size: Duration,
) -> anyhow::Result<Vec<FsyncRow>> {
    let growing = sizes.iter().map(|&size| (size, SyncFile::Growing));
    let prepared = prepared.iter().map(|&size| (size, SyncFile::Prepared));
    growing.chain(prepared).map(|(size, file)| append_and_sync(dir, size, file, per_size)).collect()
}

/// Writes `size` bytes and fdatasyncs in a loop for `duration` (at least 3 times).
pub fn append_and_sync(dir: &Path, size: usize, kind: SyncFile, duration: Duration) -> anyhow::Result<FsyncRow> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("fsync-{size}.tmp"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let wrap = match kind {
        SyncFile::Growing => u64::MAX,
        SyncFile::Prepared => {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..PREPARED_FILE_BYTES / zeros.len() {
                file.write_all(&zeros).context("writing the prepared file")?;
            }
            file.sync_data().context("fdatasync of the prepared file")?;
            (PREPARED_FILE_BYTES / size * size).max(size) as u64
        }
    };
    let buf = vec![0x5au8; size];
    let mut at = 0u64;
    let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let started = Instant::now();
    let (mut second, mut second_bytes, mut per_second_mb) = (started, 0u64, Vec::new());
    let mut syncs = 0u64;
    while syncs < 3 || started.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(&buf, at).context("writing")?;
        file.sync_data().context("fdatasync")?;
        at = (at + size as u64) % wrap;
        latency.saturating_record(t.elapsed().as_micros() as u64);
        syncs += 1;
        second_bytes += size as u64;
        if second.elapsed() >= Duration::from_secs(1) {
            per_second_mb.push(second_bytes as f64 / second.elapsed().as_secs_f64() / 1e6);
            (second, second_bytes) = (Instant::now(), 0);
        }
    }
    let row = FsyncRow { group_bytes: size, file: kind, syncs, elapsed: started.elapsed(), latency, per_second_mb };
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(row)
}

struct EdgeUnderTest {
    rt: tokio::runtime::Runtime,
    edge: sluice_edge::Edge,
    /// The edge `edge` replicates to, when the phase is replicated.
    peer: Option<PeerProcess>,
    /// Where the forwarder sends, when it is on.
    core: Option<AckingCore>,
    keys: Vec<String>,
}

/// A core that acknowledges every frame as stored and drops it: the edge's forwarder does all its
/// work (read, frame, compress, send, wait for the ack, advance the watermark, delete acked
/// segments), and the core's own cost stays out of the edge phases (section 3 measures it). Runs
/// on the load generator's CPU.
struct AckingCore {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    frames: Arc<AtomicU64>,
}

impl AckingCore {
    fn start(opts: &BenchOptions, pki: &crate::devpki::DevPki) -> anyhow::Result<Self> {
        let rt = on_cpus(opts.loadgen_cpus().as_ref(), || runtime(1, "core")).context("pinning the acking core")??;
        let server = sluice_core::tls::quic_server_config(&pki.core_cert, &pki.core_key, Some(&pki.ca_cert))?;
        let endpoint = {
            let _in_rt = rt.enter();
            quinn::Endpoint::server(server, "127.0.0.1:0".parse().context("loopback address")?)
                .context("binding the acking core")?
        };
        let addr = endpoint.local_addr()?;
        let frames = Arc::new(AtomicU64::new(0));
        rt.spawn(Self::serve(endpoint, frames.clone()));
        Ok(Self { rt, addr, frames })
    }

    async fn serve(endpoint: quinn::Endpoint, frames: Arc<AtomicU64>) {
        let stored = protocol::encode_ack(&Ack::Stored).unwrap_or_default();
        while let Some(incoming) = endpoint.accept().await {
            let (frames, stored) = (frames.clone(), stored.clone());
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let (frames, stored) = (frames.clone(), stored.clone());
                    tokio::spawn(async move {
                        let Ok(msg) = recv.read_to_end(64 << 20).await else { return };
                        if protocol::decode_message(&msg).is_ok() {
                            frames.fetch_add(1, Ordering::Relaxed);
                            let _ = send.write_all(&stored).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    }
}

/// Whether an edge phase replicates every group to a peer edge (R=2, `require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    LocalOnly,
    Replicated,
}

/// The peer of a replicated phase: `sluicectl edge` in a process of its own, on the load
/// generator's CPU, as a peer on another machine would be. The origin's CPU figures are then the
/// origin's alone, and the peer's work does not compete with it for its core.
struct PeerProcess {
    child: std::process::Child,
    /// Its replica server (QUIC), where the origin replicates to.
    replication: std::net::SocketAddr,
    /// Its admin API, for its `/metrics`.
    admin: std::net::SocketAddr,
    log: PathBuf,
    /// Removed with the peer: with `peer_dir` it is outside the phase's directory.
    wal_dir: PathBuf,
}

impl PeerProcess {
    fn spawn(opts: &BenchOptions, dir: &Path, origin: &EdgeConfig) -> anyhow::Result<Self> {
        let free = |udp: bool| -> anyhow::Result<std::net::SocketAddr> {
            Ok(if udp {
                std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?
            } else {
                std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?
            })
        };
        let (replication, admin) = (free(true)?, free(false)?);
        let wal_dir = opts.peer_dir.as_deref().unwrap_or(dir).join("peer-wal");
        let f = &origin.forwarder;
        // TOML strings, quoted and escaped.
        let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let (cert, key) = f.client_cert.as_deref().zip(f.client_key.as_deref()).context("the origin's certificate")?;
        let config = format!(
            "edge_id = \"peer\"\nlisten = \"127.0.0.1:0\"\nregion = \"{REGION}\"\nkeys_file = {}\n\
             [wal]\ndir = {}\n[idempotency]\npath = {}\n\
             [forwarder]\nenabled = false\nca_cert = {}\nclient_cert = {}\nclient_key = {}\n\
             [admin]\nlisten = \"{admin}\"\n[replication]\nlisten = \"{replication}\"\n",
            quote(&origin.keys_file),
            quote(&wal_dir),
            quote(&dir.join("peer-idempotency.redb")),
            quote(&f.ca_cert),
            quote(cert),
            quote(key),
        );
        let config_path = dir.join("peer.toml");
        std::fs::write(&config_path, config).context("writing the peer's config")?;
        let log = dir.join("peer.log");
        let stderr = std::fs::File::create(&log).context("creating the peer's log")?;
        let exe = opts.peer_exe.clone().map_or_else(std::env::current_exe, Ok).context("finding sluicectl")?;
        let mut command = std::process::Command::new(&exe);
        command.args(["edge", "--config"]).arg(&config_path).stdout(std::process::Stdio::null()).stderr(stderr);
        // A forked child keeps the affinity of the thread that forked it.
        let child = on_cpus(opts.loadgen_cpus().as_ref(), || command.spawn())
            .context("pinning the peer")?
            .with_context(|| format!("starting the peer edge ({} edge)", exe.display()))?;
        let mut peer = Self { child, replication, admin, log, wal_dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while peer.metrics().is_err() {
            if let Some(status) = peer.child.try_wait()? {
                anyhow::bail!("the peer edge exited ({status}):\n{}", peer.log_text());
            }
            anyhow::ensure!(Instant::now() < deadline, "the peer edge did not start:\n{}", peer.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(peer)
    }

    fn metrics(&self) -> anyhow::Result<String> {
        Ok(crate::drain::admin_metrics(self.admin)?)
    }

    /// CPU time of all the peer's threads so far (`/proc/<pid>/task/*/schedstat`).
    fn cpu(&self) -> Duration {
        let tasks = Path::new("/proc").join(self.child.id().to_string()).join("task");
        cpu_times_in(&tasks).0.values().sum()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.wal_dir);
    }
}

fn start_edge(opts: &BenchOptions, dir: &Path, replication: Replication) -> anyhow::Result<EdgeUnderTest> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut config = EdgeConfig {
        listen: "127.0.0.1:0".parse().context("loopback address")?,
        region: REGION.into(),
        ..EdgeConfig::in_dir(dir)
    };
    let _ = std::fs::remove_file(&config.keys_file);
    let mut keys = Vec::new();
    for t in 0..opts.tenants.max(1) {
        keys.push(crate::keys::add(&config.keys_file, &format!("tenant-{t}"), "bench")?.1);
    }
    // The benchmark measures the edge's capacity, not its per-tenant quota.
    config.admission.tenant_events_per_sec = 0;
    let rt = runtime(opts.server_threads, "edge-rt")?;
    let pki = crate::devpki::write_dev_pki(&dir.join("pki"))?;
    config.forwarder.ca_cert = pki.ca_cert.clone();
    config.forwarder.client_cert = Some(pki.edge_cert.clone());
    config.forwarder.client_key = Some(pki.edge_key.clone());
    config.forwarder.enabled = opts.forwarder;
    let core = if opts.forwarder {
        let core = AckingCore::start(opts, &pki)?;
        config.forwarder.core_addr = core.addr;
        Some(core)
    } else {
        None
    };
    let peer = match replication {
        Replication::LocalOnly => None,
        Replication::Replicated => {
            let peer = PeerProcess::spawn(opts, dir, &config)?;
            config.replication.peers = vec![PeerConfig { id: "peer".into(), addr: peer.replication.into() }];
            // The bench measures throughput: a slow first handshake and fsync on the peer must
            // not turn into 503s (the default timeout is 1 s).
            config.replication.ack_timeout_ms = 5000;
            Some(peer)
        }
    };
    let edge = rt.block_on(sluice_edge::Edge::builder(config).start()).context("starting the edge")?;
    Ok(EdgeUnderTest { rt, edge, peer, core, keys })
}

impl EdgeUnderTest {
    /// The replication stages of a replicated phase: the origin's, then the peer's (scraped).
    fn stages(&self) -> anyhow::Result<Vec<(&'static str, SlowShare)>> {
        let Some(peer) = &self.peer else { return Ok(Vec::new()) };
        let origin = &self.edge.replication_metrics;
        let text = peer.metrics().context("the peer's metrics")?;
        let on_peer = |s: Stage| {
            SlowShare::scrape(&text, "sluice_edge_replication_stage_seconds", &format!("stage=\"{}\"", s.label()))
        };
        Ok([Stage::Queue, Stage::RoundTrip]
            .map(|s| (s.label(), SlowShare::read(&origin.stage(s))))
            .into_iter()
            .chain([Stage::Receive, Stage::Lock, Stage::Fsync].map(|s| (s.label(), on_peer(s))))
            .chain([("all acks", SlowShare::read(&origin.ack_latency))])
            .collect())
    }

    fn stop(self) {
        self.rt.block_on(self.edge.shutdown());
        drop(self.peer);
        self.rt.shutdown_timeout(Duration::from_secs(5));
        if let Some(core) = self.core {
            core.rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Runs one load phase against a fresh edge (its own empty WAL, so one phase's backlog never
/// fills the WAL budget of the next, with the forwarder off too).
#[allow(clippy::too_many_arguments)]
fn edge_phase(
    label: &str,
    opts: &BenchOptions,
    dir: &Path,
    lg: &tokio::runtime::Runtime,
    bar: &ProgressBar,
    replication: Replication,
    load: impl FnOnce(LoadgenOptions) -> LoadgenOptions,
) -> anyhow::Result<EdgePhase> {
    bar.set_message(format!("edge: {label}"));
    bar.set_position(0);
    // The edge's threads (runtime workers, WAL writer, blocking pool) inherit its CPU.
    let edge =
        on_cpus(opts.edge_cpus().as_ref(), || start_edge(opts, dir, replication)).context("pinning the edge")??;
    let base = LoadgenOptions {
        connections: opts.connections,
        warmup: opts.phases.warmup,
        ..LoadgenOptions::new(edge.edge.http_addr, edge.keys.clone())
    };
    let load = load(base);
    let wal_before = GroupStats::read(&edge.edge.wal);
    let peer_cpu = || edge.peer.as_ref().map(PeerProcess::cpu);
    let (cpu_before, steal_before, peer_before) = (cpu_times(), Steal::read(), peer_cpu());
    let report = on_cpus(opts.loadgen_cpus().as_ref(), || lg.block_on(loadgen::run(&load, bar)))
        .context("pinning the load generator")?;
    let (mut cpu, steal) = (cpu_times().since(&cpu_before), Steal::read().since(&steal_before));
    if let (Some(after), Some(before)) = (peer_cpu(), peer_before) {
        cpu.0.insert("peer", after.saturating_sub(before));
    }
    let wal = GroupStats::read(&edge.edge.wal).since(wal_before);
    let appends = SlowShare::read(&edge.edge.metrics.enqueue_latency);
    let handled = SlowShare::read(&edge.edge.metrics.request_duration);
    let fsyncs = SlowShare::read(&edge.edge.wal.stats().sync_latency);
    let stages = edge.stages()?;
    let forwarded_frames = edge.core.as_ref().map(|c| c.frames.load(Ordering::Relaxed));
    edge.stop();
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    let report = report.with_context(|| format!("load phase {label}"))?;
    Ok(EdgePhase {
        label: label.to_string(),
        report,
        wal,
        cpu,
        appends,
        handled,
        fsyncs,
        steal,
        stages,
        forwarded_frames,
    })
}

/// Everything the suite measured.
pub struct BenchResults {
    pub fsync: Vec<FsyncRow>,
    /// [`SUSTAINED_GROUP`] appends for `fsync_sustained`: the bandwidth the WAL can count on.
    pub sustained: FsyncRow,
    /// `latency_rounds` rounds of max, 50% and 80%, in that order.
    pub edge: Vec<EdgePhase>,
    pub core: CoreResult,
    pub e2e: E2eResult,
    pub matrix: Vec<EdgePhase>,
    /// Local-only and replicated, closed loop then open loop at one rate.
    pub replication: Vec<EdgePhase>,
    pub compression: Vec<CompressionRow>,
    pub total: Duration,
}

/// Runs the whole suite. Progress goes to `progress` (hidden when not a terminal).
pub fn run(opts: &BenchOptions, progress: &MultiProgress) -> anyhow::Result<BenchResults> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("bench-").tempdir_in(&opts.dir).context("scratch directory")?;
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len}s {msg}")
        .context("progress template")?
        .progress_chars("=> ");
    let bar = progress.add(ProgressBar::new(1).with_style(style).with_prefix("bench"));

    bar.set_message("raw fdatasync bandwidth");
    let fsync = fsync_bandwidth(scratch.path(), &FSYNC_SIZES, &PREPARED_FSYNC_SIZES, opts.phases.fsync_per_size)?;
    bar.set_message("sustained fdatasync bandwidth");
    let sustained = append_and_sync(scratch.path(), SUSTAINED_GROUP, SyncFile::Growing, opts.phases.fsync_sustained)?;

    // The generator's workers inherit its CPU from the thread that starts them.
    let lg = on_cpus(opts.loadgen_cpus().as_ref(), || runtime(opts.loadgen_threads, "loadgen"))
        .context("pinning the load generator")??;
    let edge_scratch = match &opts.edge_dir {
        Some(dir) => {
            Some(tempfile::Builder::new().prefix("bench-edge-").tempdir_in(dir).context("edge WAL directory")?)
        }
        None => None,
    };
    let edge_dir = edge_scratch.as_ref().map_or(scratch.path(), |d| d.path()).join("edge");
    let p = opts.phases;
    let local = Replication::LocalOnly;
    let mut phases = Vec::new();
    for round in 1..=p.latency_rounds.max(1) {
        let max = edge_phase(&format!("{round}: max (closed loop)"), opts, &edge_dir, &lg, &bar, local, |l| {
            LoadgenOptions { duration: p.edge_max, ..l }
        })?;
        let max_eps = max.report.events_per_sec();
        phases.push(max);
        for (pct, _) in P99_TARGET_MS {
            let rate = Some(max_eps * f64::from(pct) / 100.0);
            let label = format!("{round}: {pct}% of max (open loop)");
            phases.push(edge_phase(&label, opts, &edge_dir, &lg, &bar, local, |l| LoadgenOptions {
                duration: p.edge_latency,
                rate_events_per_sec: rate,
                ..l
            })?);
        }
    }
    let max_eps = median_max(&phases).map_or(0.0, |m| m.report.events_per_sec());

    let mut matrix = Vec::new();
    for (event_bytes, gzip) in [(300, false), (300, true), (1024, false), (1024, true)] {
        let label = format!("{event_bytes} B, {}, closed loop", if gzip { "gzip" } else { "plain" });
        matrix.push(edge_phase(&label, opts, &edge_dir, &lg, &bar, local, |l| LoadgenOptions {
            event_bytes,
            gzip,
            duration: p.matrix,
            ..l
        })?);
    }

    let replication = replication_phases(opts, &edge_dir, &lg, &bar)?;

    bar.set_message("WAL bytes per event, compressed and not");
    let compression = compression_table(&COMPRESSION_LEVELS)?;

    bar.set_message("core alone vs bare producer");
    let core = core_alone(p.core_events, &scratch.path().join("core"))?;

    let capacity = max_eps.min(core.eps(core.core_serial));
    bar.set_message("end to end freshness");
    let e2e = end_to_end(opts, &scratch.path().join("e2e"), capacity * 0.5, &lg, &bar)?;
    lg.shutdown_timeout(Duration::from_secs(5));
    bar.finish_and_clear();
    Ok(BenchResults {
        fsync,
        sustained,
        edge: phases,
        core,
        e2e,
        matrix,
        replication,
        compression,
        total: started.elapsed(),
    })
}

/// The open-loop loads of each latency round (% of that round's max) and issue 6's target for
/// the client's p99 at each.
const P99_TARGET_MS: [(u32, f64); 2] = [(50, 5.0), (80, 15.0)];
/// A round: the closed-loop max, then one open-loop phase per target.
const ROUND_PHASES: usize = 1 + P99_TARGET_MS.len();

/// The middle value (the upper middle one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Phases of one replication round: both closed loops, then both open loops.
const REPLICATION_ROUND: usize = 4;

/// `latency_rounds` rounds of local-only vs replicated back to back: closed loop (throughput),
/// then both at half the round's replicated maximum (latency at the same load).
fn replication_phases(
    opts: &BenchOptions,
    dir: &Path,
    lg: &tokio::runtime::Runtime,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<EdgePhase>> {
    let duration = opts.phases.matrix;
    let modes = [(Replication::LocalOnly, "local only"), (Replication::Replicated, "replicated R=2")];
    let mut out = Vec::new();
    for round in 1..=opts.phases.latency_rounds.max(1) {
        for (mode, name) in modes {
            let label = format!("{round}: {name}, closed loop");
            out.push(edge_phase(&label, opts, dir, lg, bar, mode, |l| LoadgenOptions { duration, ..l })?);
        }
        let rate = out[out.len() - 1].report.events_per_sec() * 0.5;
        for (mode, name) in modes {
            let label = format!("{round}: {name}, {rate:.0} events/s open loop");
            out.push(edge_phase(&label, opts, dir, lg, bar, mode, |l| LoadgenOptions {
                duration,
                rate_events_per_sec: Some(rate),
                ..l
            })?);
        }
    }
    Ok(out)
}

/// Issue 15's targets for one replication round, from its four phases.
#[derive(Debug, Clone, Copy)]
pub struct ReplicationRound {
    /// Replicated ÷ local-only events per origin CPU-second, closed loop (target ≥ 0.8).
    pub cpu_ratio: f64,
    /// Replicated ÷ local-only closed-loop max.
    pub max_ratio: f64,
    /// Client p99 at half the replicated max: local only, replicated (targets ≤ 5 ms and ≤ 2×).
    pub local_p99: Duration,
    pub replicated_p99: Duration,
}

impl ReplicationRound {
    pub fn of(round: &[EdgePhase]) -> Option<Self> {
        let [local, replicated, local_open, replicated_open] = round else { return None };
        Some(Self {
            cpu_ratio: replicated.events_per_server_cpu_sec() / local.events_per_server_cpu_sec().max(1e-9),
            max_ratio: replicated.report.events_per_sec() / local.report.events_per_sec().max(1e-9),
            local_p99: local_open.report.tally.quantile(0.99),
            replicated_p99: replicated_open.report.tally.quantile(0.99),
        })
    }

    pub fn meets_targets(&self) -> bool {
        self.cpu_ratio >= 0.8
            && self.replicated_p99 <= Duration::from_millis(5)
            && self.replicated_p99 <= self.local_p99 * 2
    }
}

/// Normalized 300-byte events in records compressed as an edge writes them (`wal.zstd_level`'s
/// default), packed into frames of ≤ 1 MiB of WAL bytes, exactly as an edge would forward them.
fn build_frames(events: usize) -> anyhow::Result<Vec<Frame>> {
    let ts = "2026-01-01T00:00:00Z";
    let records = normalized_records(events, 100, |n| loadgen::event_json(300, n % 10_000, n, ts))?;
    let mut frames = Vec::new();
    let mut raw = Vec::new();
    let mut in_frame = Vec::new();
    let mut offset = 0u64;
    let mut one = Vec::new();
    let mut records = records.into_iter().peekable();
    while let Some(r) = records.next() {
        one.clear();
        encode_record_compressed(&r, WalConfig::default().zstd_level, &mut one)?;
        raw.extend_from_slice(&one);
        in_frame.push(r);
        let full = records.peek().is_none_or(|_| raw.len() + one.len() > FRAME_BYTES);
        if full {
            let header = FrameHeader {
                protocol_version: PROTOCOL_VERSION,
                edge_id: "bench".into(),
                segment: 1,
                start: offset,
                end: offset + raw.len() as u64,
                record_count: in_frame.len() as u32,
                raw_len: raw.len() as u32,
            };
            let message = frame::encode_message(&header, &raw, 3)?;
            frames.push(Frame { message, records: std::mem::take(&mut in_frame) });
            offset += raw.len() as u64;
            raw.clear();
        }
    }
    Ok(frames)
}

/// `events` events made by `event` (given the event's number), normalized as the edge does into
/// records of `per_request` events each.
fn normalized_records(
    events: usize,
    per_request: usize,
    event: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<BatchRecord>> {
    let (rules, limits, pii) = (ValidationConfig::default(), LimitsConfig::default(), PiiPolicy::default());
    let mut records = Vec::new();
    let mut n = 0;
    while n < events {
        let batch_id = sluice_wire::ids::new_batch_id();
        let ctx = BatchContext {
            batch_id,
            tenant: "tenant-0",
            env: "bench",
            region: REGION,
            // Event timestamps are 2026-01-01; receipt a day later keeps them inside the window.
            received_at_ms: 1_767_312_000_000,
            sent_at_ms: None,
            rules: &rules,
            limits: &limits,
            pii: &pii,
        };
        let mut evs = Vec::with_capacity(per_request);
        for i in 0..per_request.min(events - n) {
            let json = event(n + i);
            evs.push(validate::normalize(&ctx, i, json.as_bytes()).map_err(|r| anyhow::anyhow!("{r:?}"))?);
        }
        n += evs.len();
        records.push(BatchRecord {
            batch_id,
            tenant: ctx.tenant.into(),
            env: ctx.env.into(),
            region: REGION.into(),
            received_at_ms: ctx.received_at_ms,
            stream: Stream::Events,
            events: evs,
            traceparent: None,
            shared: ctx.shared_fields(),
        });
    }
    Ok(records)
}

/// WAL bytes per event, uncompressed (record version 3) and compressed (version 5, at
/// `wal.zstd_level`'s default), and the CPU the compression adds per event.
#[derive(Debug, Clone)]
pub struct CompressionRow {
    pub corpus: &'static str,
    pub level: i32,
    pub events_per_request: usize,
    pub json_bytes_per_event: f64,
    pub plain_bytes_per_event: f64,
    pub compressed_bytes_per_event: f64,
    /// Encoding a compressed record minus encoding a plain one, per event.
    pub compress_cost_per_event: Duration,
}

/// The zstd levels the WAL bytes table compares: zstd's fast end, where literals are stored
/// rather than Huffman-coded, and its default.
const COMPRESSION_LEVELS: [i32; 4] = [-5, -1, 1, 3];

/// [`CompressionRow`]s for the bench's own events (padded with `x`: they flatter compression) and
/// for PostHog-like events (random IDs, URLs, a few browsers and screen sizes), at 1, 10 and 100
/// events per request: what a request of each size costs in WAL bytes, the disk, the replicas
/// and the forwarder then carry.
pub fn compression_table(levels: &[i32]) -> anyhow::Result<Vec<CompressionRow>> {
    const EVENTS: usize = 20_000;
    let ts = "2026-01-01T00:00:00Z";
    let mut rows = Vec::new();
    let corpora: [(&'static str, &dyn Fn(usize) -> String); 2] = [
        ("bench (300 B, padded)", &|n| loadgen::event_json(300, n % 10_000, n, ts)),
        ("PostHog-like", &|n| loadgen::posthog_like_event_json(n, ts)),
    ];
    for (corpus, event) in corpora {
        for per_request in [1, 10, 100] {
            let records = normalized_records(EVENTS, per_request, event)?;
            let json: usize = (0..EVENTS).map(|n| event(n).len()).sum();
            let mut out = Vec::with_capacity(1 << 20);
            let mut encode = |level: Option<i32>| -> anyhow::Result<(usize, Duration)> {
                let (mut bytes, started) = (0, Instant::now());
                for r in &records {
                    out.clear();
                    match level {
                        Some(level) => encode_record_compressed(r, level, &mut out)?,
                        None => encode_record(r, &mut out)?,
                    }
                    bytes += out.len();
                }
                Ok((bytes, started.elapsed()))
            };
            let (plain, plain_time) = encode(None)?;
            for &level in levels {
                let (compressed, compressed_time) = encode(Some(level))?;
                let per_event = |n: usize| n as f64 / EVENTS as f64;
                rows.push(CompressionRow {
                    corpus,
                    level,
                    events_per_request: per_request,
                    json_bytes_per_event: per_event(json),
                    plain_bytes_per_event: per_event(plain),
                    compressed_bytes_per_event: per_event(compressed),
                    compress_cost_per_event: compressed_time.saturating_sub(plain_time) / EVENTS as u32,
                });
            }
        }
    }
    Ok(rows)
}

/// One forwarder frame: the message core receives and the records inside it.
struct Frame {
    message: Vec<u8>,
    records: Vec<BatchRecord>,
}

/// Replays the same frames through core's `Ingest` and produces the same messages with a bare
/// producer (same librdkafka settings), each with 1 and with 4 frames in flight, against one mock
/// cluster. A frame's worth of messages is the bare producer's unit, so the ratio isolates what
/// core adds: decompress, decode, dedupe lookups and records, per-event headers.
pub fn core_alone(events: usize, dir: &Path) -> anyhow::Result<CoreResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let warmup = Arc::new(build_frames(100)?);
    let frames = Arc::new(build_frames(events)?);
    let total_events: u64 = frames.iter().flat_map(|f| &f.records).map(|r| r.events.len() as u64).sum();
    let mock = MockCluster::new(3).context("starting the mock Kafka cluster")?;
    for topic in [format!("events.{REGION}"), BARE_TOPIC.to_string(), "events.dlq".to_string()] {
        mock.create_topic(&topic, 3, 3).with_context(|| format!("creating {topic}"))?;
    }
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), ..KafkaConfig::default() };
    let rt = runtime(2, "core-rt")?;
    let result = rt.block_on(async {
        let mut core = [Duration::ZERO; 2];
        let mut bare = [Duration::ZERO; 2];
        for (slot, window) in [(0, 1), (1, 4)] {
            let dedupe: Arc<dyn DedupeIndex> = Arc::new(RedbDedupe::open(&dir.join(format!("dedupe-{window}.redb")))?);
            let metrics = Arc::new(CoreMetrics::new()?);
            let sink = sluice_core::sink::Sink::from_config(&SinkConfig::Kafka(kafka.clone()), &metrics.producer)?;
            let ingest = Arc::new(Ingest::new(dedupe, sink, metrics));
            // Producer start-up (metadata, idempotent producer ID) is paid before the clock starts.
            run_core(&ingest, &warmup, 1).await?;
            core[slot] = run_core(&ingest, &frames, window).await?;

            let producer: FutureProducer =
                sluice_core::sink::producer_config(&kafka).create().context("bare producer")?;
            run_bare(&producer, &warmup, 1).await?;
            bare[slot] = run_bare(&producer, &frames, window).await?;
        }
        let (decode_per_frame, record_per_frame) = core_costs(&frames, &dir.join("costs.redb"))?;
        anyhow::Ok(CoreResult {
            events: total_events,
            frames: frames.len(),
            core_serial: core[0],
            core_parallel: core[1],
            bare_serial: bare[0],
            bare_parallel: bare[1],
            decode_per_frame,
            record_per_frame,
        })
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

const BARE_TOPIC: &str = "bare.bench";

/// What core adds per frame besides producing: decompress + decode, and the dedupe commit.
fn core_costs(frames: &[Frame], path: &Path) -> anyhow::Result<(Duration, Duration)> {
    let n = frames.len().max(1) as u32;
    let t = Instant::now();
    for f in frames {
        let (header, payload) = protocol::decode_message(&f.message)?;
        std::hint::black_box(frame::decompress(payload, header.raw_len as usize)?);
    }
    let decode = t.elapsed() / n;
    let dedupe = RedbDedupe::open(path)?;
    let t = Instant::now();
    for f in frames {
        let ids: Vec<_> = f.records.iter().map(|r| r.batch_id).collect();
        dedupe.record(&ids, 1)?;
    }
    Ok((decode, t.elapsed() / n))
}

/// Runs `job(i)` for every frame index with at most `window` running at once.
async fn windowed<F, Fut>(frames: usize, window: usize, job: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..frames {
        if set.len() >= window
            && let Some(r) = set.join_next().await
        {
            r??;
        }
        set.spawn(job(i));
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(t.elapsed())
}

async fn run_core(ingest: &Arc<Ingest>, frames: &Arc<Vec<Frame>>, window: usize) -> anyhow::Result<Duration> {
    windowed(frames.len(), window, |i| {
        let (ingest, frames) = (ingest.clone(), frames.clone());
        async move {
            match ingest.process(&frames[i].message).await {
                Ack::Stored => Ok(()),
                other => anyhow::bail!("core did not store a frame: {other:?}"),
            }
        }
    })
    .await
}

async fn run_bare(producer: &FutureProducer, frames: &Arc<Vec<Frame>>, window: usize) -> anyhow::Result<Duration> {
    windowed(frames.len(), window, |i| {
        let (producer, frames) = (producer.clone(), frames.clone());
        async move { produce_all(&producer, &frames[i].records).await }
    })
    .await
}

/// The same messages (topic aside), key and headers as the Kafka sink, all in flight at once.
async fn produce_all(producer: &FutureProducer, records: &[BatchRecord]) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(records.iter().map(|r| r.events.len()).sum());
    let mut payload = Vec::new();
    for batch in records {
        let batch_id = batch.batch_id.to_string();
        for event in &batch.events {
            let headers = sluice_core::sink::kafka_event_headers(batch, &batch_id, event);
            payload.clear();
            batch.write_event_json(event, &mut payload);
            let mut record =
                FutureRecord::to(BARE_TOPIC).key(batch.tenant.as_str()).payload(payload.as_slice()).headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((e, back)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => anyhow::bail!("bare producer: {e}"),
                }
            }
        }
    }
    for d in pending {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("bare producer delivery: {e}"),
            Err(_) => anyhow::bail!("bare producer dropped a delivery report"),
        }
    }
    Ok(())
}

/// Whole pipeline in process (edge → QUIC → core → mock Kafka) under open-loop load; a consumer
/// thread notes when each event becomes readable.
fn end_to_end(
    opts: &BenchOptions,
    dir: &Path,
    rate: f64,
    lg: &tokio::runtime::Runtime,
    bar: &ProgressBar,
) -> anyhow::Result<E2eResult> {
    bar.set_position(0);
    let rt = runtime(opts.server_threads, "edge-rt")?;
    let dev_opts = DevOptions {
        dir: dir.to_path_buf(),
        http: "127.0.0.1:0".parse().context("loopback address")?,
        quic: "127.0.0.1:0".parse().context("loopback address")?,
        kafka: KafkaChoice::Mock,
        edges: 1,
        admin: None,
    };
    let pipeline = rt.block_on(dev::start(&dev_opts))?;
    let brokers = pipeline.brokers.clone().context("mock cluster has brokers")?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (stop, consumed, topic) = (stop.clone(), consumed.clone(), pipeline.topic.clone());
        std::thread::Builder::new()
            .name("bench-consumer".into())
            .spawn(move || consume_arrivals(&brokers, &topic, &stop, &consumed))
            .context("starting the consumer thread")?
    };
    let load = LoadgenOptions {
        connections: opts.connections,
        duration: opts.phases.e2e,
        warmup: opts.phases.warmup,
        rate_events_per_sec: Some(rate),
        collect_batches: true,
        ..LoadgenOptions::new(pipeline.edge.http_addr, vec![pipeline.api_key.clone()])
    };
    let report = lg.block_on(loadgen::run(&load, bar));
    // Let the pipeline drain everything the WAL took (warm-up included: the consumer sees it too),
    // bounded in time.
    let expected = pipeline.edge.wal.stats().records.load(Ordering::Relaxed) * load.events_per_request as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    while !consumer.is_finished() && Instant::now() < drain_deadline && consumed.load(Ordering::Acquire) < expected {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let arrivals = consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    rt.block_on(pipeline.shutdown());
    rt.shutdown_timeout(Duration::from_secs(5));
    let report = report?;
    let accepted: HashMap<&str, Instant> = report.tally.batches.iter().map(|(b, t)| (b.as_str(), *t)).collect();
    let mut freshness = Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut matched = 0u64;
    for (batch, seen_at) in &arrivals {
        if let Some(at) = accepted.get(batch.as_str()) {
            freshness.saturating_record(seen_at.saturating_duration_since(*at).as_micros().max(1) as u64);
            matched += 1;
        }
    }
    let missing = report.accepted_events().saturating_sub(matched);
    Ok(E2eResult { rate, report, freshness, missing })
}

/// Reads the topic from the beginning until `stop`, returning (batch_id header, arrival time).
fn consume_arrivals(
    brokers: &str,
    topic: &str,
    stop: &AtomicBool,
    consumed: &AtomicU64,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .context("consumer")?;
    // Assigning partitions directly skips the group rebalance, which would delay the first reads.
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("topic metadata")?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Beginning).context("partition list")?;
    }
    consumer.assign(&tpl).context("assign")?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                let batch = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "batch_id").and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                if let Some(b) = batch {
                    out.push((b, now));
                    consumed.fetch_add(1, Ordering::Release);
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "bench consumer"),
            None => {}
        }
    }
    Ok(out)
}

fn errors(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

/// `part` as a percentage of `whole`.
fn share(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

const EDGE_TABLE_HEADER: &str = "| phase | events/s | req/s | MB/s JSON | p50 ms | p95 ms | p99 ms | max ms | errors | events/s per server CPU-s | records/group | KiB/group | fdatasync mean / p99 ≤ ms | WAL appends > 12.8 / > 51.2 ms | handled > 12.8 / > 51.2 ms | handled p99 ≤ ms | CPU | steal ms | frames forwarded |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|";

fn edge_row(s: &mut String, p: &EdgePhase, opts: &BenchOptions) {
    let rep = &p.report;
    let t = &rep.tally;
    let _ = writeln!(
        s,
        "| {} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.2} / {:.1} | {:.2}% / {:.2}% | {:.2}% / {:.2}% | {:.1} | {} | {} | {} |",
        p.label,
        rep.events_per_sec(),
        rep.requests_per_sec(),
        rep.raw_mb_per_sec(),
        ms(t.quantile(0.5)),
        ms(t.quantile(0.95)),
        ms(t.quantile(0.99)),
        ms(Duration::from_micros(t.latency.max())),
        errors(&rep.tally.errors),
        p.events_per_server_cpu_sec(),
        p.wal.records_per_group(),
        p.wal.bytes_per_group() / 1024.0,
        p.wal.ms_per_sync(),
        p.fsyncs.p99_bound_ms,
        share(p.appends.over_12ms, p.appends.total),
        share(p.appends.over_51ms, p.appends.total),
        share(p.handled.over_12ms, p.handled.total),
        share(p.handled.over_51ms, p.handled.total),
        p.handled.p99_bound_ms,
        p.cpu.describe(rep.elapsed + opts.phases.warmup),
        p.steal.as_millis(),
        p.forwarded_frames.map_or_else(|| "off".to_string(), |n| n.to_string()),
    );
}

/// The closed-loop phase of the round whose max is the median of all rounds.
fn median_max(rounds: &[EdgePhase]) -> Option<&EdgePhase> {
    let mut maxima: Vec<&EdgePhase> = rounds.chunks(ROUND_PHASES).map(|r| &r[0]).collect();
    maxima.sort_by(|a, b| a.report.events_per_sec().total_cmp(&b.report.events_per_sec()));
    maxima.get(maxima.len() / 2).copied()
}

/// One line per round of (max, 50%, 80%): the client's p99 against the targets, with the
/// server's own p99 bound beside it, then how many rounds met each target.
fn latency_targets(s: &mut String, rounds: &[EdgePhase]) {
    let rounds: Vec<&[EdgePhase]> = rounds.chunks(ROUND_PHASES).filter(|r| r.len() == ROUND_PHASES).collect();
    let _ = writeln!(s, "\n#### Latency targets by round (each rate is a share of its own round's max)\n");
    let _ = writeln!(
        s,
        "| round | max events/s | 50%: p99 ms (≤ 5) | handled p99 ≤ ms | 80%: p99 ms (≤ 15) | handled p99 ≤ ms | 80%: WAL appends > 12.8 ms | 80%: fdatasync p99 ≤ ms, > 12.8 ms | steal ms at 50% / 80% |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let p99_ms = |p: &EdgePhase| p.report.tally.quantile(0.99).as_secs_f64() * 1e3;
    for (i, r) in rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2}% | {:.1}, {} | {} / {} |",
            i + 1,
            r[0].report.events_per_sec(),
            p99_ms(&r[1]),
            r[1].handled.p99_bound_ms,
            p99_ms(&r[2]),
            r[2].handled.p99_bound_ms,
            share(r[2].appends.over_12ms, r[2].appends.total),
            r[2].fsyncs.p99_bound_ms,
            r[2].fsyncs.over_12ms,
            r[1].steal.as_millis(),
            r[2].steal.as_millis(),
        );
    }
    for (k, (pct, target)) in P99_TARGET_MS.iter().enumerate() {
        let p99s: Vec<f64> = rounds.iter().map(|r| p99_ms(&r[k + 1])).collect();
        let (met, n) = (p99s.iter().filter(|&&v| v <= *target).count(), p99s.len());
        let _ = writeln!(
            s,
            "{}- p99 at {pct}% of max: within {target} ms in {met} of {n} rounds, median {:.2} ms.",
            if k == 0 { "\n" } else { "" },
            median(p99s)
        );
    }
}

/// The Markdown report: what ran, on what, and the numbers.
pub fn render(opts: &BenchOptions, r: &BenchResults, machine: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{machine}");
    if let Some(dir) = &opts.edge_dir {
        let _ = writeln!(s, "The edge phases' WAL (sections 2 and 5): {}", filesystem_of(dir));
    }
    let (edge, lg) = (opts.server_threads, opts.loadgen_threads);
    let cores = match opts.pinning {
        Some(p) => format!(
            "edge pinned to CPU {} ({edge} tokio worker(s) + WAL writer thread + blocking pool), loadgen pinned \
             to CPU {} ({lg} tokio worker(s)), same process; core and end to end run unpinned",
            p.edge, p.loadgen
        ),
        None => format!(
            "edge = {edge} tokio worker(s) + WAL writer thread; loadgen = {lg} tokio worker(s); same process, no pinning"
        ),
    };
    let _ = writeln!(
        s,
        "Cores: {cores}. {} connections, {} tenants, 300 B events x 100 per request unless stated. Suite took {:.0} s.\n",
        opts.connections,
        opts.tenants,
        r.total.as_secs_f64()
    );

    let _ = writeln!(s, "### 1. Raw fdatasync (write + fdatasync, one file)\n");
    let _ = writeln!(
        s,
        "| group bytes | file | syncs | mean ms | p50 ms | p99 ms | MB/s |\n|---:|---|---:|---:|---:|---:|---:|"
    );
    for f in &r.fsync {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} | {:.1} |",
            f.group_bytes,
            match f.file {
                SyncFile::Growing => "growing",
                SyncFile::Prepared => "prepared",
            },
            f.syncs,
            f.ms_per_sync(),
            ms(Duration::from_micros(f.latency.value_at_quantile(0.5))),
            ms(Duration::from_micros(f.latency.value_at_quantile(0.99))),
            f.mb_per_sec()
        );
    }
    for p in r.fsync.iter().filter(|f| f.file == SyncFile::Prepared) {
        if let Some(g) = r.fsync.iter().find(|g| g.file == SyncFile::Growing && g.group_bytes == p.group_bytes) {
            let _ = writeln!(
                s,
                "\n{} KiB groups: a prepared file takes {:.2}× the time per write + fdatasync of a growing one (p99 {:.2}×).",
                p.group_bytes >> 10,
                p.ms_per_sync() / g.ms_per_sync().max(1e-9),
                p.latency.value_at_quantile(0.99) as f64 / g.latency.value_at_quantile(0.99).max(1) as f64,
            );
        }
    }
    let ceiling_mb =
        r.fsync.iter().filter(|f| f.file == SyncFile::Growing).map(FsyncRow::mb_per_sec).fold(0.0, f64::max);
    let u = &r.sustained;
    let at = |q: f64| ms(Duration::from_micros(u.latency.value_at_quantile(q)));
    let _ = writeln!(
        s,
        "\nSustained: {} KiB appends + fdatasync for {:.0} s, {:.0} MB/s overall; per second: first {:.0}, \
         median {:.0}, lowest {:.0} MB/s; fdatasync p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms.",
        u.group_bytes >> 10,
        u.elapsed.as_secs_f64(),
        u.mb_per_sec(),
        u.per_second_mb.first().copied().unwrap_or_else(|| u.mb_per_sec()),
        u.median_second_mb(),
        u.per_second_mb.iter().copied().reduce(f64::min).unwrap_or_else(|| u.mb_per_sec()),
        at(0.5),
        at(0.99),
        at(0.999),
        ms(Duration::from_micros(u.latency.max())),
    );

    let forwarder =
        if opts.forwarder { "forwarder on, to a core that acks every frame and drops it" } else { "forwarder off" };
    let _ = writeln!(s, "\n### 2. The edge (WAL on, {forwarder})\n");
    let _ = writeln!(s, "{EDGE_TABLE_HEADER}");
    for p in r.edge.iter().chain(&r.matrix) {
        edge_row(&mut s, p, opts);
    }
    latency_targets(&mut s, &r.edge);
    render_compression(&mut s, &r.compression);

    let c = &r.core;
    let _ = writeln!(
        s,
        "\n### 3. Core alone ({} events in {} frames of ≤1 MiB of compressed records → mock Kafka, 3 brokers)\n",
        c.events, c.frames
    );
    let _ = writeln!(
        s,
        "| frames in flight | core events/s | bare producer events/s | core ÷ bare |\n|---:|---:|---:|---:|"
    );
    for (n, core, bare) in [(1, c.core_serial, c.bare_serial), (4, c.core_parallel, c.bare_parallel)] {
        let _ = writeln!(
            s,
            "| {n} | {:.0} | {:.0} | {:.2} |",
            c.eps(core),
            c.eps(bare),
            c.eps(core) / c.eps(bare).max(1e-9)
        );
    }
    let per_frame = |d: Duration| ms(d / c.frames.max(1) as u32);
    let _ = writeln!(
        s,
        "\nPer frame, 1 in flight: core {} ms, bare producer {} ms. Measured separately: decompress + decode \
         {} ms, dedupe-index commit (redb, fsync) {} ms.",
        per_frame(c.core_serial),
        per_frame(c.bare_serial),
        ms(c.decode_per_frame),
        ms(c.record_per_frame)
    );

    let e = &r.e2e;
    let _ = writeln!(s, "\n### 4. End to end at {:.0} events/s (open loop)\n", e.rate);
    let _ = writeln!(
        s,
        "| accepted events/s | 202 p99 ms | freshness p50 ms | p99 ms | max ms | events not seen |\n|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        s,
        "| {:.0} | {} | {} | {} | {} | {} |",
        e.report.events_per_sec(),
        ms(e.report.tally.quantile(0.99)),
        ms(Duration::from_micros(e.freshness.value_at_quantile(0.5))),
        ms(Duration::from_micros(e.freshness.value_at_quantile(0.99))),
        ms(Duration::from_micros(e.freshness.max())),
        e.missing
    );

    render_replication(&mut s, opts, &r.replication);

    if let Some(max) = median_max(&r.edge) {
        let per_event = max.wal_bytes_per_event();
        let _ = writeln!(s, "\n### Ratios\n");
        let eps = max.report.events_per_sec();
        for (what, mb) in [
            ("burst (best 1.5 s row)", ceiling_mb),
            ("sustained (median second at 256 KiB)", r.sustained.median_second_mb()),
        ] {
            let ceiling_eps = mb * 1e6 / per_event.max(1.0);
            let _ = writeln!(
                s,
                "- fdatasync ceiling, {what}: {mb:.1} MB/s / {per_event:.0} WAL bytes per event = {ceiling_eps:.0} \
                 events/s; edge max (median round) ÷ ceiling = {eps:.0} / {ceiling_eps:.0} = {:.2}",
                eps / ceiling_eps.max(1e-9)
            );
        }
        let _ = writeln!(s, "- edge events per server CPU-second: {:.0}", max.events_per_server_cpu_sec());
        let _ = writeln!(
            s,
            "- core ÷ bare producer: {:.2} (1 frame in flight), {:.2} (4 in flight)",
            c.eps(c.core_serial) / c.eps(c.bare_serial).max(1e-9),
            c.eps(c.core_parallel) / c.eps(c.bare_parallel).max(1e-9)
        );
    }
    s
}

/// WAL bytes per event for each corpus and request size, uncompressed and compressed.
fn render_compression(s: &mut String, rows: &[CompressionRow]) {
    let _ = writeln!(
        s,
        "\n#### WAL bytes per event: record version 3 (uncompressed) vs 5 (zstd; `wal.zstd_level` defaults to {})\n\n\
         | corpus | events per request | zstd level | event JSON bytes | v3 WAL bytes | v5 WAL bytes | v3 ÷ v5 | compression CPU µs per event |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        WalConfig::default().zstd_level
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            r.corpus,
            r.events_per_request,
            r.level,
            r.json_bytes_per_event,
            r.plain_bytes_per_event,
            r.compressed_bytes_per_event,
            r.plain_bytes_per_event / r.compressed_bytes_per_event.max(1e-9),
            r.compress_cost_per_event.as_secs_f64() * 1e6
        );
    }
}

/// Section 5: the replication phases, issue 15's targets per round, and where a replicated
/// group's time goes.
fn render_replication(s: &mut String, opts: &BenchOptions, phases: &[EdgePhase]) {
    let placement = match opts.pinning {
        Some(p) => format!(
            "origin edge pinned to CPU {}; the peer edge is a process of its own (`sluicectl edge`) pinned to CPU {}, \
             which it shares with the load generator",
            p.edge, p.loadgen
        ),
        None => "no pinning: origin, peer process and load generator share all CPUs".into(),
    };
    let _ = writeln!(
        s,
        "\n### 5. Replication: local only vs replicated (R=2, `require`, loopback QUIC, same disk)\n\n{placement}. \
         \"events/s per server CPU-s\" counts the origin's threads only; the peer's CPU is `peer` in the CPU column.\n"
    );
    let _ = writeln!(s, "{EDGE_TABLE_HEADER}");
    for p in phases {
        edge_row(s, p, opts);
    }
    let rounds: Vec<ReplicationRound> = phases.chunks(REPLICATION_ROUND).filter_map(ReplicationRound::of).collect();
    let _ = writeln!(
        s,
        "\n| round | replicated ÷ local events per origin CPU-s (≥ 0.8) | replicated ÷ local max | p99 at 50 % of replicated max: local / replicated ms (≤ 5 and ≤ 2× local) | targets met |\n|---|---:|---:|---:|---|"
    );
    for (i, r) in rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} / {} | {} |",
            i + 1,
            r.cpu_ratio,
            r.max_ratio,
            ms(r.local_p99),
            ms(r.replicated_p99),
            if r.meets_targets() { "yes" } else { "no" }
        );
    }
    let medians = (
        median(rounds.iter().map(|r| r.cpu_ratio).collect()),
        median(rounds.iter().map(|r| r.max_ratio).collect()),
        rounds.iter().filter(|r| r.meets_targets()).count(),
    );
    let _ =
        writeln!(s, "| median | {:.2} | {:.2} | | {} of {} rounds |", medians.0, medians.1, medians.2, rounds.len());
    let replicated: Vec<&EdgePhase> = phases.iter().filter(|p| !p.stages.is_empty()).collect();
    let Some(first) = replicated.first() else { return };
    let _ = writeln!(
        s,
        "\nReplicated groups by stage (`sluice_edge_replication_stage_seconds`; the peer's scraped from its `/metrics`, cumulative over the phase): p99 bucket bound ms, share > 12.8 ms.\n"
    );
    let names: Vec<&str> = first.stages.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(s, "| phase | {} |\n|---|{}", names.join(" | "), "---:|".repeat(names.len()));
    for p in replicated {
        let cells: Vec<String> = p
            .stages
            .iter()
            .map(|(_, h)| format!("{:.2}, {:.2}%", h.p99_bound_ms, share(h.over_12ms, h.total)))
            .collect();
        let _ = writeln!(s, "| {} | {} |", p.label, cells.join(" | "));
    }
}

/// Only the replication phases (section 5), for working on replication without the whole suite.
pub fn run_replication(opts: &BenchOptions, progress: &MultiProgress) -> anyhow::Result<String> {
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("bench-").tempdir_in(&opts.dir).context("scratch directory")?;
    let bar = progress.add(ProgressBar::new(1).with_prefix("bench"));
    let lg = on_cpus(opts.loadgen_cpus().as_ref(), || runtime(opts.loadgen_threads, "loadgen"))
        .context("pinning the load generator")??;
    let phases = replication_phases(opts, &scratch.path().join("edge"), &lg, &bar)?;
    lg.shutdown_timeout(Duration::from_secs(5));
    bar.finish_and_clear();
    let mut s = describe_machine(&opts.dir);
    s.push('\n');
    render_replication(&mut s, opts, &phases);
    Ok(s)
}

/// One line about the machine: cores and the filesystem of `dir`.
pub fn describe_machine(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let fs = filesystem_of(dir);
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    format!("Machine: {cores} cores; WAL disk {fs}; {date}")
}

/// `df`'s device, type and size of the filesystem `dir` is on.
fn filesystem_of(dir: &Path) -> String {
    std::process::Command::new("df")
        .args(["-h", "--output=source,fstype,size"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_grouped_by_name() {
        assert_eq!(thread_group("edge-rt"), "edge");
        assert_eq!(thread_group("wal-writer"), "wal");
        assert_eq!(thread_group("loadgen"), "loadgen");
        assert_eq!(thread_group("rdk:broker1"), "kafka");
        assert_eq!(thread_group("tokio-runtime-w"), "other");
    }

    #[test]
    fn this_thread_uses_cpu() {
        let before = cpu_times();
        // Spin until the test's own thread group shows 10 ms of CPU: on a loaded machine that can
        // take far more than 10 ms of wall time, so the bound is generous and only catches a
        // reader that never attributes the time.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_times().since(&before).get("other") < Duration::from_millis(10) {
            assert!(Instant::now() < deadline, "20 s of spinning never showed up as this thread's CPU");
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(5) {
                x = x.wrapping_add(std::hint::black_box(1));
            }
        }
        assert!(x > 0);
    }

    #[test]
    fn a_scraped_histogram_reads_like_the_in_process_one() {
        let h = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("stage_seconds", "h")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 12).unwrap()),
            &["stage"],
        )
        .unwrap();
        for v in [0.00005, 0.0003, 0.002, 0.02, 0.06] {
            h.with_label_values(&["fsync"]).observe(v);
        }
        h.with_label_values(&["lock"]).observe(0.5);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(h.clone())).unwrap();
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        let scraped = SlowShare::scrape(&text, "stage_seconds", "stage=\"fsync\"");
        let read = SlowShare::read(&h.with_label_values(&["fsync"]));
        assert_eq!((scraped.total, scraped.over_12ms, scraped.over_51ms), (5, 2, 1));
        assert_eq!((scraped.total, scraped.over_12ms, scraped.over_51ms), (read.total, read.over_12ms, read.over_51ms));
        assert_eq!(scraped.p99_bound_ms, read.p99_bound_ms);
        assert_eq!(SlowShare::scrape(&text, "stage_seconds", "stage=\"receive\"").total, 0);
    }

    #[test]
    fn steal_is_read_per_cpu_and_summed() {
        let before =
            Steal::parse("cpu  9 0 0 0 0 0 0 30 0 0\ncpu0 1 0 0 0 0 0 0 10 0 0\ncpu1 1 0 0 0 0 0 0 20 0 0\nintr 5\n");
        let after = Steal::parse("cpu  9 0 0 0 0 0 0 99 0 0\ncpu0 1 0 0 0 0 0 0 13 0 0\ncpu1 1 0 0 0 0 0 0 22 0 0\n");
        assert_eq!(before.0, vec![10, 20], "the summed `cpu` line is not a CPU");
        // SAFETY: as in `Steal::since`.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(after.since(&before), Duration::from_millis(5 * 1000 / hz));
    }

    #[test]
    fn fsync_rows_report_bandwidth() {
        let dir = tempfile::tempdir().unwrap();
        let rows = fsync_bandwidth(dir.path(), &[4096], &[4096], Duration::from_millis(20)).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.group_bytes, r.file)).collect::<Vec<_>>(),
            [(4096, SyncFile::Growing), (4096, SyncFile::Prepared)]
        );
        assert!(rows.iter().all(|r| r.syncs >= 3 && r.mb_per_sec() > 0.0));
        let long = append_and_sync(dir.path(), 4096, SyncFile::Growing, Duration::from_millis(2100)).unwrap();
        // A window closes at the first sync after its second is up, so a slow sync can push the
        // second one past the end.
        assert!((1..=2).contains(&long.per_second_mb.len()), "one bandwidth per whole second");
        assert!(long.per_second_mb.iter().all(|&mb| mb > 0.0) && long.median_second_mb() > 0.0);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "scratch file removed");
    }
}
