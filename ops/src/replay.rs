//! `sluicectl replay <wal dir> --core <addr>`: ships the records of a WAL directory (usually
//! copied off a dead node) to core, the way the edge's forwarder would: the same frames
//! (`sluice_wire::frame::encode_message`), the same QUIC client (`sluice_edge::tls`,
//! `forward::send_on`), and the same rule that a frame counts only once core answers `Stored`.
//!
//! - **What**: records core has not acknowledged (from the ack watermark on), or with `--all`
//!   every record; `--include-quarantined` adds the valid records of `*.corrupt` segments
//!   (salvage). Damaged regions are skipped and counted (`sluicectl wal verify` lists them).
//! - **Pipelined** like the forwarder: up to `max_in_flight` frames await core's ack at once; the
//!   state file only ever moves past the oldest frame once it is acknowledged.
//! - **Idempotent**: every record keeps its batch ID, and core drops batches it already
//!   delivered, so replaying twice, or replaying what the node had forwarded, adds nothing.
//! - **Resumable**: after each acknowledged frame a state file (beside the WAL directory by
//!   default, so a read-only copy works) records how far the replay got; a new run continues
//!   there. `--restart` ignores it.
//! - `--to-file` writes the records as NDJSON (the `wal dump` format) instead of sending them.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_edge::forward::{SendError, handshake, send_on};
use sluice_edge::routing::Rendezvous;
use sluice_edge::wal::Position;
use sluice_edge::wal::scan::Item;
use sluice_wire::frame;
use sluice_wire::protocol::{FrameHeader, PROTOCOL_VERSION};

use crate::wal::{WalDir, WalToolError, record_json};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Wal(#[from] WalToolError),
    #[error("state file {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    #[error("state file {path} belongs to another WAL directory ({other}); pass --state or --restart")]
    ForeignState { path: PathBuf, other: String },
    #[error("connecting to core at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error(
        "core kept refusing segment {segment} offset {start} after {attempts} attempts: {last}; run again to resume"
    )]
    GaveUp { segment: u64, start: u64, attempts: u32, last: String },
    #[error("core rejected segment {segment} offset {start} as undecodable: {reason}")]
    Rejected { segment: u64, start: u64, reason: String },
    #[error("encoding a frame: {0}")]
    Encode(String),
    #[error("writing {path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
}

/// Where the records go.
pub enum Target {
    Core(CoreTarget),
    /// NDJSON lines in the `wal dump` format; the file is rewritten from scratch.
    File(PathBuf),
}

pub struct CoreTarget {
    /// The core nodes, and which one each tenant goes to: the forwarder's routing (each node's
    /// dedupe index is its own, so a batch must go where the edge would have sent it).
    pub routing: Rendezvous,
    pub server_name: String,
    pub client: quinn::ClientConfig,
    /// Shown in core's logs for these frames.
    pub edge_id: String,
    pub zstd_level: i32,
    pub ack_timeout: Duration,
    /// Attempts per frame before giving up (the state file keeps the progress).
    pub max_attempts: u32,
    /// Frames awaiting core's ack at once (the forwarder's `max_in_flight`). Progress is recorded
    /// only up to the oldest unacknowledged one.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub dir: PathBuf,
    /// Every record, not only those after the ack watermark.
    pub all: bool,
    pub include_quarantined: bool,
    /// Progress file; see [`default_state_file`].
    pub state_file: PathBuf,
    /// Ignore (and overwrite) an existing state file.
    pub restart: bool,
    /// Target frame size, decompressed (the forwarder's default is 1 MiB).
    pub frame_bytes: usize,
}

/// `<parent>/<dir name>.replay-state.json`: beside the WAL directory, which may be read-only.
pub fn default_state_file(dir: &Path) -> PathBuf {
    let name = dir.file_name().map_or_else(|| "wal".into(), |n| n.to_string_lossy().into_owned());
    dir.parent().unwrap_or(Path::new(".")).join(format!("{name}.replay-state.json"))
}

/// How far a replay got: every selected record before `next` was acknowledged by core.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ReplayState {
    dir: String,
    next: Position,
    records: u64,
}

/// What a replay did (`--json` prints this).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub dir: String,
    /// `core <addr>` or `file <path>`.
    pub target: String,
    /// `unacked` or `all`.
    pub mode: &'static str,
    /// Where this run started because of an earlier run's state file.
    pub resumed_from: Option<Position>,
    pub frames: u64,
    pub records: u64,
    pub events: u64,
    pub bytes: u64,
    /// Records before the ack watermark, not sent (without `--all`).
    pub skipped_acked: u64,
    /// Records an earlier run already delivered.
    pub skipped_done: u64,
    /// Damaged regions skipped (see `sluicectl wal verify`).
    pub damaged: u64,
    pub elapsed_ms: u64,
    pub state_file: Option<String>,
}

fn load_state(opts: &ReplayOptions) -> Result<Option<ReplayState>, ReplayError> {
    if opts.restart {
        return Ok(None);
    }
    let err = |source| ReplayError::State { path: opts.state_file.clone(), source };
    let bytes = match std::fs::read(&opts.state_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let state: ReplayState = serde_json::from_slice(&bytes).map_err(|e| err(e.into()))?;
    if state.dir != canonical(&opts.dir) {
        return Err(ReplayError::ForeignState { path: opts.state_file.clone(), other: state.dir });
    }
    Ok(Some(state))
}

/// Replaces the state file atomically: temp file, fsync, rename, fsync of the directory.
fn store_state(path: &Path, state: &ReplayState) -> Result<(), ReplayError> {
    let err = |source| ReplayError::State { path: path.to_path_buf(), source };
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(e.into()))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(err)
}

fn canonical(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string()
}

/// A run of consecutive records of one segment, sent as one frame.
#[derive(Default)]
struct Batch {
    segment: u64,
    start: u64,
    end: u64,
    raw: Vec<u8>,
    /// What `raw`'s records hold decompressed: frames are sized by it, as the forwarder's are.
    decoded: usize,
    /// Tenant and byte range in `raw` of each record (for routing to core nodes).
    spans: Vec<(String, std::ops::Range<usize>)>,
    records: u32,
    events: u64,
    lines: Vec<serde_json::Value>,
}

/// A connection to one core node.
#[derive(Default)]
struct NodeConn {
    conn: Option<quinn::Connection>,
    /// Connected at least once: a later failure is transient, a first one is a wrong address or
    /// certificate and fails the replay at once.
    ever: bool,
}

/// What frames sent to core share: the target, the QUIC endpoint, one connection per node.
struct CoreCtx {
    target: CoreTarget,
    endpoint: quinn::Endpoint,
    conns: tokio::sync::Mutex<Vec<NodeConn>>,
}

/// The sending side: core over QUIC, or an NDJSON file.
enum Sink {
    Core(Arc<CoreCtx>),
    File { path: PathBuf, file: std::io::BufWriter<std::fs::File> },
}

/// A batch on its way; `task` is `None` once it is delivered (file output is written at once).
struct InFlight {
    segment: u64,
    start: u64,
    end: u64,
    records: u32,
    events: u64,
    bytes: u64,
    task: Option<tokio::task::JoinHandle<Result<(), ReplayError>>>,
}

impl Sink {
    /// Starts delivering `b`; core frames go out concurrently, each retried until `Stored`.
    fn start(&mut self, b: Batch) -> Result<InFlight, ReplayError> {
        let mut f = InFlight {
            segment: b.segment,
            start: b.start,
            end: b.end,
            records: b.records,
            events: b.events,
            bytes: b.raw.len() as u64,
            task: None,
        };
        match self {
            Sink::File { path, file } => {
                for line in &b.lines {
                    serde_json::to_writer(&mut *file, line)
                        .map_err(std::io::Error::from)
                        .and_then(|()| file.write_all(b"\n"))
                        .map_err(|source| ReplayError::Output { path: path.clone(), source })?;
                }
            }
            Sink::Core(ctx) => f.task = Some(tokio::spawn(deliver(ctx.clone(), b))),
        }
        Ok(f)
    }

    async fn finish(self) -> Result<(), ReplayError> {
        match self {
            Sink::File { path, file } => file
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|source| ReplayError::Output { path, source }),
            Sink::Core(ctx) => {
                for c in ctx.conns.lock().await.iter().filter_map(|n| n.conn.as_ref()) {
                    c.close(0u32.into(), b"replay done");
                }
                ctx.endpoint.wait_idle().await;
                Ok(())
            }
        }
    }
}

/// Delivers one batch to core. With several core nodes the records are split by tenant like the
/// forwarder does, one sub-frame per node; a node that does not answer is retried, never swapped
/// for another (its dedupe index is the one that knows the batch).
async fn deliver(ctx: Arc<CoreCtx>, b: Batch) -> Result<(), ReplayError> {
    let target = &ctx.target;
    let mut split: Vec<(Vec<u8>, u32)> = vec![(Vec::new(), 0); target.routing.nodes().len()];
    for (tenant, range) in &b.spans {
        let node = target.routing.pick(tenant, |_| true).unwrap_or(0);
        split[node].0.extend_from_slice(&b.raw[range.clone()]);
        split[node].1 += 1;
    }
    for (node, (data, count)) in split.into_iter().enumerate().filter(|(_, (d, _))| !d.is_empty()) {
        let header = FrameHeader {
            protocol_version: PROTOCOL_VERSION,
            edge_id: target.edge_id.clone(),
            segment: b.segment,
            start: b.start,
            end: b.end,
            record_count: count,
            raw_len: data.len() as u32,
        };
        let message =
            frame::encode_message(&header, &data, target.zstd_level).map_err(|e| ReplayError::Encode(e.to_string()))?;
        send(&ctx, node, message, b.segment, b.start).await?;
    }
    Ok(())
}

/// The connection to `node`, connecting if needed.
async fn connection(ctx: &CoreCtx, node: usize) -> Result<quinn::Connection, (bool, String)> {
    let mut conns = ctx.conns.lock().await;
    let state = &mut conns[node];
    if let Some(c) = &state.conn
        && c.close_reason().is_none()
    {
        return Ok(c.clone());
    }
    let addr = ctx.target.routing.nodes()[node].addr;
    let conn = handshake(&ctx.endpoint, addr, &ctx.target.server_name).await.map_err(|reason| (state.ever, reason))?;
    state.conn = Some(conn.clone());
    state.ever = true;
    Ok(conn)
}

/// Sends one frame message to core node `node`, retrying with backoff until `Stored`.
async fn send(ctx: &CoreCtx, node: usize, message: Vec<u8>, segment: u64, start: u64) -> Result<(), ReplayError> {
    let target = &ctx.target;
    let addr = target.routing.nodes()[node].addr;
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=target.max_attempts.max(1) {
        let c = match connection(ctx, node).await {
            Ok(c) => c,
            // Never reached: a wrong address or certificate, not a transient failure.
            Err((false, reason)) => return Err(ReplayError::Connect { addr, reason }),
            Err((true, reason)) => {
                last = reason;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match send_on(c, message.clone(), target.ack_timeout).await {
            Ok(()) => return Ok(()),
            Err(SendError::Rejected(reason)) => return Err(ReplayError::Rejected { segment, start, reason }),
            Err(e) => {
                if !matches!(e, SendError::Retry(_)) {
                    ctx.conns.lock().await[node].conn = None;
                }
                tracing::warn!(error = %e, %addr, segment, start, attempt, "replay: frame not acked; retrying");
                last = e.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    Err(ReplayError::GaveUp { segment, start, attempts: target.max_attempts, last })
}

/// Bytes a replay will read from `start` on (for the progress bar).
fn planned_bytes(wal: &WalDir, opts: &ReplayOptions, start: &dyn Fn(u64, bool) -> Option<u64>) -> u64 {
    wal.segments
        .iter()
        .filter(|s| opts.include_quarantined || !s.quarantined)
        .filter_map(|s| start(s.seq, s.quarantined).map(|o| s.bytes.saturating_sub(o)))
        .sum()
}

/// Runs a replay. `progress` counts bytes read from the WAL.
pub async fn run(
    opts: &ReplayOptions,
    target: Target,
    progress: &indicatif::ProgressBar,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let wal = WalDir::open(&opts.dir)?;
    let (mut sink, target_name, use_state) = match target {
        Target::Core(t) => {
            let addrs: Vec<SocketAddr> = t.routing.nodes().iter().map(|n| n.addr).collect();
            let first = addrs.first().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            let bind: SocketAddr =
                if addrs.iter().any(SocketAddr::is_ipv6) { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(
                    |e: std::net::AddrParseError| ReplayError::Connect { addr: first, reason: e.to_string() },
                )?;
            let mut endpoint = quinn::Endpoint::client(bind)
                .map_err(|e| ReplayError::Connect { addr: first, reason: e.to_string() })?;
            endpoint.set_default_client_config(t.client.clone());
            let name = format!("core {}", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            let conns = tokio::sync::Mutex::new(addrs.iter().map(|_| NodeConn::default()).collect());
            (Sink::Core(Arc::new(CoreCtx { target: t, endpoint, conns })), name, true)
        }
        Target::File(path) => {
            let file =
                std::fs::File::create(&path).map_err(|source| ReplayError::Output { path: path.clone(), source })?;
            let name = format!("file {}", path.display());
            (Sink::File { path, file: std::io::BufWriter::new(file) }, name, false)
        }
    };
    let state = if use_state { load_state(opts)? } else { None };
    let resume = state.as_ref().map(|s| s.next);
    let acked = if opts.all { None } else { wal.acked };
    // Where each segment starts, or None to skip it whole.
    let start = |seq: u64, quarantined: bool| -> Option<u64> {
        let mut from = 0;
        if let Some(a) = acked.filter(|_| !quarantined) {
            if seq < a.segment {
                return None;
            }
            if seq == a.segment {
                from = a.offset;
            }
        }
        if let Some(r) = resume {
            if seq < r.segment {
                return None;
            }
            if seq == r.segment {
                from = from.max(r.offset);
            }
        }
        Some(from)
    };
    progress.set_length(planned_bytes(&wal, opts, &start));
    let summary = ReplaySummary {
        dir: opts.dir.display().to_string(),
        target: target_name,
        mode: if opts.all { "all" } else { "unacked" },
        resumed_from: resume,
        state_file: use_state.then(|| opts.state_file.display().to_string()),
        ..ReplaySummary::default()
    };
    let mut tracker = Tracker {
        summary,
        done_records: state.map_or(0, |s| s.records),
        dir: canonical(&opts.dir),
        state_file: use_state.then(|| opts.state_file.clone()),
    };
    let window = match &sink {
        Sink::Core(ctx) => ctx.target.max_in_flight.max(1),
        Sink::File { .. } => 1,
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    for seg in wal.segments.iter().filter(|s| opts.include_quarantined || !s.quarantined) {
        let data = std::fs::read(&seg.path).map_err(|source| WalToolError::Io { path: seg.path.clone(), source })?;
        let from = start(seg.seq, seg.quarantined);
        // Count what is skipped, for the summary.
        for item in sluice_edge::wal::scan::Records::new(&data) {
            let Item::Record { offset, .. } = item else { continue };
            if from.is_some_and(|f| offset >= f) {
                break;
            }
            {
                let before_ack = !seg.quarantined && wal.is_acked(seg.seq, offset) && !opts.all;
                if before_ack {
                    tracker.summary.skipped_acked += 1;
                } else {
                    tracker.summary.skipped_done += 1;
                }
            }
        }
        let Some(from) = from else { continue };
        let mut batch = Batch { segment: seg.seq, start: from, end: from, ..Batch::default() };
        let mut items = sluice_edge::wal::scan::Records::from(&data, from).peekable();
        while let Some(item) = items.next() {
            match item {
                Item::Record { offset, len, record } => {
                    if batch.records == 0 {
                        batch.start = offset;
                    }
                    let (o, l) = (offset as usize, len as usize);
                    let at = batch.raw.len();
                    batch.raw.extend_from_slice(&data[o..o + l]);
                    batch.decoded += sluice_wire::record::decoded_len(&data[o..o + l]);
                    batch.spans.push((record.tenant.clone(), at..at + l));
                    batch.end = offset + len;
                    batch.records += 1;
                    batch.events += record.events.len() as u64;
                    if matches!(sink, Sink::File { .. }) {
                        let acked = !seg.quarantined && wal.is_acked(seg.seq, offset);
                        batch.lines.push(record_json(seg.seq, offset, acked, &record));
                    }
                }
                Item::Corrupt { offset, skipped, error, tail } => {
                    tracker.summary.damaged += 1;
                    tracing::warn!(segment = seg.seq, offset, bytes = skipped, tail, %error, "replay: skipping a damaged region");
                }
            }
            let at_boundary = !matches!(items.peek(), Some(Item::Record { .. }));
            if batch.records > 0 && (batch.decoded >= opts.frame_bytes || at_boundary) {
                let full = std::mem::replace(&mut batch, Batch { segment: seg.seq, ..Batch::default() });
                in_flight.push_back(sink.start(full)?);
                while in_flight.len() >= window
                    && let Some(oldest) = in_flight.pop_front()
                {
                    if let Err(e) = tracker.settle(oldest, progress).await {
                        abort_all(&in_flight);
                        return Err(e);
                    }
                }
            }
        }
    }
    while let Some(oldest) = in_flight.pop_front() {
        if let Err(e) = tracker.settle(oldest, progress).await {
            abort_all(&in_flight);
            return Err(e);
        }
    }
    let mut summary = tracker.summary;
    sink.finish().await?;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Applies acknowledged batches in WAL order: summary, progress bar, state file.
struct Tracker {
    summary: ReplaySummary,
    done_records: u64,
    dir: String,
    state_file: Option<PathBuf>,
}

impl Tracker {
    /// Waits for the oldest batch in flight; only then does the state file move past it.
    async fn settle(&mut self, f: InFlight, progress: &indicatif::ProgressBar) -> Result<(), ReplayError> {
        if let Some(task) = f.task {
            task.await.map_err(|e| ReplayError::Encode(format!("replay task: {e}")))??;
        }
        let s = &mut self.summary;
        s.frames += 1;
        s.records += u64::from(f.records);
        s.events += f.events;
        s.bytes += f.bytes;
        self.done_records += u64::from(f.records);
        progress.set_position(progress.position() + (f.end - f.start));
        progress.set_message(format!("{} records, {} frames", s.records, s.frames));
        if let Some(path) = &self.state_file {
            let next = Position { segment: f.segment, offset: f.end };
            store_state(path, &ReplayState { dir: self.dir.clone(), next, records: self.done_records })?;
        }
        Ok(())
    }
}

fn abort_all(in_flight: &VecDeque<InFlight>) {
    for f in in_flight {
        if let Some(t) = &f.task {
            t.abort();
        }
    }
}

impl ReplaySummary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "replayed {} records ({} events, {} bytes) in {} frames to {} in {:.1} s\n",
            self.records,
            self.events,
            self.bytes,
            self.frames,
            self.target,
            self.elapsed_ms as f64 / 1000.0
        );
        if let Some(p) = self.resumed_from {
            s.push_str(&format!("  resumed at segment {} offset {} (earlier run)\n", p.segment, p.offset));
        }
        s.push_str(&format!(
            "  skipped: {} already acked by core (mode {}), {} delivered by an earlier run, {} damaged regions\n",
            self.skipped_acked, self.mode, self.skipped_done, self.damaged
        ));
        if let Some(f) = &self.state_file {
            s.push_str(&format!("  progress kept in {f} (--restart to start over)\n"));
        }
        s
    }
}
