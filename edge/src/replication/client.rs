//! The origin side: ships every group commit to the POP's peers and tells the WAL writer when
//! enough of them have it durable.
//!
//! One task per peer sends that peer's appends strictly one after another (an append and the
//! next one can never be reordered on the way, which the replica's overwrite rule relies on) and
//! merges appends that queued up meanwhile into one message. A peer that fails is skipped for a
//! backoff, so a dead peer costs `ack_timeout_ms` at most once per backoff instead of on every
//! group. A second task per peer, on its own connection, sends heartbeats: the origin's ack
//! watermark (the replica trims by it) and the proof of life that holds the replica's takeover
//! lease off. Heartbeats to a peer that does not answer never hold up appends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_wire::record::check_record;
use sluice_wire::replication::{self as proto, Origin, PeerMessage, PeerReply};
use tokio::sync::mpsc;

use super::{Lane, ReplicationMetrics, Stage};
use crate::config::{DegradedMode, PeerAddr, PeerConfig};
use crate::wal::{PendingReplicas, Position, Replicate, Wal, segment_path};

/// Backfill messages stay below this size (split at record boundaries).
const BACKFILL_CHUNK: usize = 4 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Job {
    at: Position,
    bytes: Bytes,
    queued: Instant,
    done: Arc<Tally>,
    /// Set once the writer refused the group (too few acks in time): a peer that has not sent
    /// it yet must not, since a refused record on a replica could be forwarded by a takeover.
    refused: Arc<AtomicBool>,
}

/// The writer's [`Replicate`]: fans a group out to every peer and waits for `need` acks.
pub struct Replicator {
    peers: Vec<mpsc::UnboundedSender<Job>>,
    need: usize,
    mode: DegradedMode,
    timeout: Duration,
    metrics: Arc<ReplicationMetrics>,
    degraded: Arc<DegradedClock>,
    /// Holding it keeps the peer tasks' runtime up.
    _lane: Arc<Lane>,
}

/// What the peer tasks need that exists only once the WAL is open.
pub type WalSlot = Arc<OnceLock<Wal>>;

pub struct ClientParams {
    pub node_id: String,
    /// Each peer with the name its certificate is verified against.
    pub peers: Vec<(PeerConfig, String)>,
    pub need: usize,
    pub mode: DegradedMode,
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub wal_dir: PathBuf,
    pub tls: quinn::ClientConfig,
}

/// The client socket: IPv4 unless a peer needs IPv6. A peer given by name may resolve to either
/// family, so then a dual-stack socket is tried first, falling back to IPv4 on hosts without
/// IPv6 (where binding `[::]` fails) rather than refusing to start.
fn client_endpoint(lane: &Lane, peers: &[(PeerConfig, String)]) -> std::io::Result<quinn::Endpoint> {
    let v4 = SocketAddr::from(([0, 0, 0, 0], 0));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let needs_v6 = peers.iter().any(|(p, _)| matches!(p.addr, PeerAddr::Ip(a) if a.is_ipv6()));
    let named = peers.iter().any(|(p, _)| matches!(p.addr, PeerAddr::Name { .. }));
    if needs_v6 {
        super::endpoint(lane, v6, None)
    } else if named {
        super::endpoint(lane, v6, None).or_else(|e| {
            tracing::debug!(error = %e, "replication: no IPv6 socket; peers by name are reached over IPv4 only");
            super::endpoint(lane, v4, None)
        })
    } else {
        super::endpoint(lane, v4, None)
    }
}

impl Replicator {
    /// Spawns one task per peer on `lane`.
    pub fn start(
        p: ClientParams,
        wal: WalSlot,
        metrics: Arc<ReplicationMetrics>,
        lane: Arc<Lane>,
    ) -> std::io::Result<Self> {
        let mut endpoint = client_endpoint(&lane, &p.peers)?;
        endpoint.set_default_client_config(p.tls);
        // Continues across restarts (wall clock), so a replica can drop an append that was
        // delayed past a newer one even if the origin restarted in between.
        let seq = crate::clock::now_ms().saturating_mul(1_000);
        let peers = p
            .peers
            .iter()
            .map(|(peer, server_name)| {
                let (tx, rx) = mpsc::unbounded_channel();
                let link = || PeerLink {
                    peer: peer.clone(),
                    server_name: server_name.clone(),
                    endpoint: endpoint.clone(),
                    conn: None,
                    timeout: p.timeout,
                };
                let confirmed = Arc::new(Mutex::new(Position::default()));
                let task = PeerTask {
                    link: link(),
                    node_id: p.node_id.clone(),
                    wal: wal.clone(),
                    wal_dir: p.wal_dir.clone(),
                    down_until: None,
                    backoff: MIN_BACKOFF,
                    seq,
                    confirmed: confirmed.clone(),
                    level: None,
                    queue: metrics.stage(Stage::Queue),
                    round_trip: metrics.stage(Stage::RoundTrip),
                };
                lane.handle().spawn(task.run(rx));
                let beat = Heartbeat {
                    link: link(),
                    node_id: p.node_id.clone(),
                    wal: wal.clone(),
                    confirmed,
                    metrics: metrics.clone(),
                };
                lane.handle().spawn(beat.run(p.heartbeat));
                tx
            })
            .collect();
        Ok(Self {
            peers,
            need: p.need,
            mode: p.mode,
            timeout: p.timeout,
            _lane: lane.clone(),
            degraded: Arc::new(DegradedClock::new(metrics.clone())),
            metrics,
        })
    }
}

impl Replicate for Replicator {
    fn begin(&self, at: Position, bytes: &[u8]) -> Box<dyn PendingReplicas> {
        let bytes = Bytes::copy_from_slice(bytes);
        let refused = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let queued = Instant::now();
        let peers = self
            .peers
            .iter()
            .filter(|peer| {
                let job = Job { at, bytes: bytes.clone(), queued, done: tally.clone(), refused: refused.clone() };
                peer.send(job).is_ok()
            })
            .count();
        Box::new(Group {
            at,
            tally,
            peers,
            need: self.need,
            mode: self.mode,
            started: queued,
            deadline: queued + self.timeout,
            refused,
            metrics: self.metrics.clone(),
            degraded: self.degraded.clone(),
        })
    }
}

/// The peers' answers about one group. The peer tasks count into it and the writer thread
/// waits on it directly, with no task in between to schedule.
#[derive(Default)]
struct Tally {
    answers: Mutex<Answers>,
    changed: Condvar,
}

#[derive(Default)]
struct Answers {
    acks: usize,
    answered: usize,
}

impl Tally {
    fn answer(&self, stored: bool) {
        let mut a = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        a.answered += 1;
        a.acks += usize::from(stored);
        self.changed.notify_one();
    }
}

/// One group the writer waits for.
struct Group {
    at: Position,
    tally: Arc<Tally>,
    /// Peers the group was handed to.
    peers: usize,
    need: usize,
    mode: DegradedMode,
    started: Instant,
    deadline: Instant,
    refused: Arc<AtomicBool>,
    metrics: Arc<ReplicationMetrics>,
    degraded: Arc<DegradedClock>,
}

impl PendingReplicas for Group {
    fn wait(self: Box<Self>) -> Result<(), String> {
        let (need, peers) = (self.need, self.peers);
        let timeout = self.deadline.saturating_duration_since(Instant::now());
        let answers = self.tally.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let (answers, _) = self
            .tally
            .changed
            .wait_timeout_while(answers, timeout, |a| a.acks < need && a.answered < peers)
            .unwrap_or_else(PoisonError::into_inner);
        let got = answers.acks;
        drop(answers);
        let replicated = got >= need;
        self.degraded.mark(!replicated);
        if replicated {
            self.metrics.ack_latency.observe(self.started.elapsed().as_secs_f64());
            return Ok(());
        }
        self.metrics.unreplicated_groups.inc();
        match self.mode {
            DegradedMode::AllowLocal => {
                tracing::warn!(
                    acks = got,
                    needed = need,
                    segment = self.at.segment,
                    offset = self.at.offset,
                    "replication: degraded, group accepted with the local copy only (allow_local)"
                );
                Ok(())
            }
            DegradedMode::Require => {
                self.refused.store(true, Ordering::Release);
                Err(format!("{got} of {need} replica acks"))
            }
        }
    }
}

/// Accumulates the time during which groups could not get their replica acks.
struct DegradedClock {
    since: Mutex<Option<Instant>>,
    metrics: Arc<ReplicationMetrics>,
}

impl DegradedClock {
    fn new(metrics: Arc<ReplicationMetrics>) -> Self {
        Self { since: Mutex::new(None), metrics }
    }

    fn mark(&self, degraded: bool) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = since.take() {
            self.metrics.degraded_seconds.inc_by(t.elapsed().as_secs_f64());
        }
        if degraded {
            *since = Some(Instant::now());
        }
        self.metrics.degraded.set(i64::from(degraded));
    }
}

/// One connection to a peer and the one-message-per-stream exchange.
struct PeerLink {
    peer: PeerConfig,
    server_name: String,
    endpoint: quinn::Endpoint,
    conn: Option<quinn::Connection>,
    timeout: Duration,
}

impl PeerLink {
    /// One message on its own stream, bounded by the ack timeout (connecting included). A
    /// failure drops the connection, so the next exchange reconnects.
    async fn exchange(&mut self, msg: &PeerMessage) -> Result<PeerReply, String> {
        let bytes = proto::encode_message(msg).map_err(|e| e.to_string())?;
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            // The encoded message moves into quinn's send buffer as it is (no copy).
            send.write_chunk(Bytes::from(bytes)).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let reply = recv.read_to_end(64 * 1024).await.map_err(|e| e.to_string())?;
            proto::decode_reply(&reply).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn connection(&mut self) -> Result<quinn::Connection, String> {
        if let Some(c) = &self.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let (conn, addr) = self.connect().await?;
        tracing::debug!(peer = %self.peer.id, addr = %self.peer.addr, resolved = %addr, "replication: connected to peer");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// A new connection. A name is looked up on every attempt (not once at startup): a peer pod
    /// that was rescheduled comes back under its name with another IP. The handshakes to all of
    /// the name's addresses race, so an address nobody listens on (`localhost` as `::1` while
    /// the peer listens on `127.0.0.1`) does not cost the whole timeout.
    async fn connect(&self) -> Result<(quinn::Connection, SocketAddr), String> {
        let addrs = resolve(&self.peer.addr).await?;
        let mut attempts: FuturesUnordered<_> = addrs
            .into_iter()
            .map(|addr| async move {
                crate::forward::handshake(&self.endpoint, addr, &self.server_name)
                    .await
                    .map(|conn| (conn, addr))
                    .map_err(|e| format!("{addr}: {e}"))
            })
            .collect();
        let mut errors = Vec::new();
        while let Some(attempt) = attempts.next().await {
            match attempt {
                Ok(connected) => return Ok(connected),
                Err(e) => errors.push(e),
            }
        }
        Err(format!("connecting to {} (server name {:?}): {}", self.peer.addr, self.server_name, errors.join("; ")))
    }
}

/// The socket addresses of a peer, resolving a name through the system resolver.
async fn resolve(addr: &PeerAddr) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = match addr {
        PeerAddr::Ip(addr) => return Ok(vec![*addr]),
        PeerAddr::Name { host, port } => (host, *port),
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("peer name {host:?} does not resolve: {e}"))?
        .collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("peer name {host:?} resolves to no address"));
    }
    Ok(addrs)
}

fn origin(node_id: &str, wal: &WalSlot) -> Option<Origin> {
    Some(Origin { node_id: node_id.to_string(), wal_id: wal.get()?.id() })
}

/// Sends one peer its appends, in order.
struct PeerTask {
    link: PeerLink,
    node_id: String,
    wal: WalSlot,
    wal_dir: PathBuf,
    down_until: Option<Instant>,
    backoff: Duration,
    seq: u64,
    /// End of what this peer has confirmed durable (read by the heartbeat for the lag gauge).
    confirmed: Arc<Mutex<Position>>,
    /// Where the peer's copy ends, known to match the local WAL up to there; `None` at start and
    /// after a failed exchange, when the next append first asks the peer (`Locate`).
    level: Option<Position>,
    queue: prometheus::Histogram,
    round_trip: prometheus::Histogram,
}

impl PeerTask {
    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let mut batch = vec![job];
            while let Ok(more) = jobs.try_recv() {
                batch.push(more);
            }
            self.appends(batch).await;
        }
    }

    /// Sends queued groups, merging runs that are contiguous in the WAL into one message.
    async fn appends(&mut self, batch: Vec<Job>) {
        let mut run: Vec<Job> = Vec::new();
        for job in batch {
            if job.refused.load(Ordering::Acquire) {
                job.done.answer(false);
                continue;
            }
            let contiguous = run.last().is_some_and(|last| {
                last.at.segment == job.at.segment && last.at.offset + last.bytes.len() as u64 == job.at.offset
            });
            if !contiguous && !run.is_empty() {
                self.send_run(std::mem::take(&mut run)).await;
            }
            run.push(job);
        }
        if !run.is_empty() {
            self.send_run(run).await;
        }
    }

    async fn send_run(&mut self, run: Vec<Job>) {
        let ok = if self.down_until.is_some_and(|t| Instant::now() < t) {
            false
        } else {
            for job in &run {
                self.queue.observe(job.queued.elapsed().as_secs_f64());
            }
            let at = run[0].at;
            let bytes: Vec<u8> = if run.len() == 1 {
                run[0].bytes.to_vec()
            } else {
                run.iter().flat_map(|j| j.bytes.iter().copied()).collect()
            };
            match self.append(at, bytes).await {
                Ok(()) => true,
                Err(e) => {
                    self.failed(&e);
                    false
                }
            }
        };
        for job in run {
            job.done.answer(ok);
        }
    }

    /// Brings the peer level with the local WAL at `at` if it is not, then sends the run. Only
    /// then does the peer count toward the group's acks.
    async fn append(&mut self, at: Position, bytes: Vec<u8>) -> Result<(), String> {
        let origin = origin(&self.node_id, &self.wal).ok_or("WAL not open yet")?;
        let end = Position { segment: at.segment, offset: at.offset + bytes.len() as u64 };
        let result = self.level_and_append(&origin, at, bytes).await;
        // An exchange that failed may still have been stored; ask the copy next time.
        self.level = result.as_ref().ok().map(|()| end);
        result?;
        *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner) = end;
        if self.down_until.take().is_some() {
            tracing::info!(peer = %self.link.peer.id, "replication: peer reachable again");
        }
        self.backoff = MIN_BACKOFF;
        Ok(())
    }

    async fn level_and_append(&mut self, origin: &Origin, at: Position, bytes: Vec<u8>) -> Result<(), String> {
        if self.level != Some(at) {
            let from = match self.level {
                Some(known) => known,
                None => self.locate(origin).await?,
            };
            self.catch_up(origin, from, at).await?;
        }
        match self.send(origin, at, bytes).await? {
            Sent::Stored => Ok(()),
            // The copy is not where this task thought (the replica lost or cut its copy).
            Sent::Behind(have, bytes) => {
                self.catch_up(origin, have, at).await?;
                match self.send(origin, at, bytes).await? {
                    Sent::Stored => Ok(()),
                    Sent::Behind(have, _) => Err(format!("peer still behind at {have:?} after catching up")),
                }
            }
        }
    }

    async fn locate(&mut self, origin: &Origin) -> Result<Position, String> {
        match self.exchange(&PeerMessage::Locate { origin: origin.clone() }).await? {
            PeerReply::CopyEnd { end } => Ok(end),
            other => Err(format!("locating the copy: {}", describe(&other))),
        }
    }

    /// One append.
    async fn send(&mut self, origin: &Origin, at: Position, bytes: Vec<u8>) -> Result<Sent, String> {
        self.seq += 1;
        let msg = PeerMessage::Append {
            origin: origin.clone(),
            seq: self.seq,
            segment: at.segment,
            offset: at.offset,
            bytes,
        };
        match self.exchange(&msg).await? {
            PeerReply::Stored => Ok(Sent::Stored),
            PeerReply::Behind { segment, have } => {
                let PeerMessage::Append { bytes, .. } = msg else { unreachable!("built above") };
                Ok(Sent::Behind(Position { segment, offset: have }, bytes))
            }
            other => Err(describe(&other)),
        }
    }

    /// Sends the peer, whose copy ends at `from`, what it lacks of the local WAL before `to`:
    /// the rest of its last segment, every segment after it, and the start of `to`'s segment.
    async fn catch_up(&mut self, origin: &Origin, from: Position, to: Position) -> Result<(), String> {
        let dir = self.wal_dir.clone();
        let lengths = tokio::task::spawn_blocking(move || local_lengths(&dir, from.segment, to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("listing the local segments to catch up: {e}"))?;
        let plan = catch_up_plan(from, to, &lengths);
        if plan.is_empty() {
            return Ok(());
        }
        let bytes: u64 = plan.iter().map(|r| r.end - r.start).sum();
        tracing::info!(peer = %self.link.peer.id, from_segment = from.segment, from_offset = from.offset,
            to_segment = to.segment, to_offset = to.offset, segments = plan.len(), bytes,
            "replication: peer is behind; sending it the missing bytes of every segment it lacks");
        for range in plan {
            self.send_range(origin, range).await?;
        }
        Ok(())
    }

    /// Sends `range` of a local segment (committed bytes) in messages that end on record
    /// boundaries. An empty range still sends one (empty) append: it cuts off bytes of a refused
    /// group the copy has past the segment's end, or starts an empty segment.
    async fn send_range(&mut self, origin: &Origin, range: Range) -> Result<(), String> {
        let mut start = range.start;
        loop {
            let path = segment_path(&self.wal_dir, range.segment);
            let end = range.end;
            let chunk = tokio::task::spawn_blocking(move || read_records(&path, start, end))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading local segment {} for catch-up: {e}", range.segment))?;
            let len = chunk.len() as u64;
            let at = Position { segment: range.segment, offset: start };
            if let Sent::Behind(have, _) = self.send(origin, at, chunk).await? {
                return Err(format!("catch-up: peer behind at {have:?} while sending {at:?}"));
            }
            start += len;
            if start >= range.end {
                return Ok(());
            }
        }
    }

    async fn exchange(&mut self, msg: &PeerMessage) -> Result<PeerReply, String> {
        let started = Instant::now();
        let reply = self.link.exchange(msg).await;
        self.round_trip.observe(started.elapsed().as_secs_f64());
        reply
    }

    fn failed(&mut self, error: &str) {
        if self.down_until.is_none() {
            tracing::warn!(peer = %self.link.peer.id, addr = %self.link.peer.addr, error,
                "replication: peer failed; its acks are missing until it answers again");
        }
        self.down_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// How an append went, short of an error.
enum Sent {
    Stored,
    /// The copy ends at this position, before the append; the append's bytes come back.
    Behind(Position, Vec<u8>),
}

fn describe(reply: &PeerReply) -> String {
    match reply {
        PeerReply::Refused { reason } => format!("refused: {reason}"),
        PeerReply::Full { used_bytes, budget_bytes } => {
            format!("replica budget full: {used_bytes} of {budget_bytes} bytes of peers' copies in use")
        }
        other => format!("unexpected reply {other:?}"),
    }
}

/// Bytes `[start, end)` of local segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    segment: u64,
    start: u64,
    end: u64,
}

/// Committed lengths of the local segments from `first` up to `to.segment` (which counts up to
/// `to.offset`: the writer may be writing after it). Segments already deleted (wholly acked by
/// core, so the peer does not need them) are left out.
fn local_lengths(dir: &Path, first: u64, to: Position) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for segment in first..to.segment {
        match std::fs::metadata(segment_path(dir, segment)) {
            Ok(m) => out.push((segment, m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.push((to.segment, to.offset));
    Ok(out)
}

/// What a peer whose copy ends at `from` lacks to be level with the local WAL at `to`, given the
/// local segments' committed lengths (`to.segment` last): oldest first. Nothing when the copy is
/// at or past `to` in its segment (an append before the copy's end cuts and overwrites it).
fn catch_up_plan(from: Position, to: Position, lengths: &[(u64, u64)]) -> Vec<Range> {
    if from.segment >= to.segment {
        return if from.segment == to.segment && from.offset < to.offset {
            vec![Range { segment: to.segment, start: from.offset, end: to.offset }]
        } else {
            Vec::new()
        };
    }
    lengths
        .iter()
        .filter(|&&(segment, _)| segment >= from.segment && segment <= to.segment)
        .filter_map(|&(segment, len)| {
            let start = if segment == from.segment { from.offset.min(len) } else { 0 };
            let needed = if segment == from.segment {
                // Also when the copy has more than the segment: the empty append cuts it back.
                from.offset != len
            } else {
                segment < to.segment || len > 0
            };
            needed.then_some(Range { segment, start, end: len })
        })
        .collect()
}

/// Whole records from `start` of a segment file, up to [`BACKFILL_CHUNK`] bytes (or the one
/// record starting at `start`, if it is larger), not past `end`.
fn read_records(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let read = |from: u64, len: u64| {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, from).map(|()| buf)
    };
    let mut buf = read(start, (end - start).min(BACKFILL_CHUNK as u64))?;
    let mut whole = 0;
    loop {
        match check_record(&buf[whole..]) {
            Ok(Some(len)) => whole += len,
            Ok(None) if whole == 0 && !buf.is_empty() => {
                // One record larger than a chunk: its header says how long it is.
                let len = sluice_wire::record::HEADER_LEN as u64
                    + u64::from(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
                buf = read(start, len.min(end - start))?;
                whole = check_record(&buf).ok().flatten().ok_or_else(|| bad_record(path, start))?;
                break;
            }
            Ok(None) => break,
            Err(_) => return Err(bad_record(path, start + whole as u64)),
        }
    }
    buf.truncate(whole);
    Ok(buf)
}

fn bad_record(path: &Path, at: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} has no valid record at {at}", path.display()))
}

/// Sends one peer the origin's watermark periodically (trimming, and the takeover lease).
struct Heartbeat {
    link: PeerLink,
    node_id: String,
    wal: WalSlot,
    confirmed: Arc<Mutex<Position>>,
    metrics: Arc<ReplicationMetrics>,
}

impl Heartbeat {
    async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(wal) = self.wal.get() else { continue };
            let (acked, committed) = (wal.acked(), wal.committed());
            let confirmed = *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner);
            let lag = if confirmed.segment == committed.segment {
                committed.offset.saturating_sub(confirmed.offset)
            } else {
                committed.offset
            };
            self.metrics.lag_bytes.with_label_values(&[&self.link.peer.id]).set(i64::try_from(lag).unwrap_or(i64::MAX));
            let Some(origin) = origin(&self.node_id, &self.wal) else { continue };
            let msg = PeerMessage::Heartbeat { origin, acked };
            match self.link.exchange(&msg).await {
                Ok(PeerReply::Stored) => {}
                Ok(other) => {
                    tracing::debug!(peer = %self.link.peer.id, reply = ?other, "replication: heartbeat refused")
                }
                Err(e) => tracing::debug!(peer = %self.link.peer.id, error = %e, "replication: heartbeat failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    fn range(segment: u64, start: u64, end: u64) -> Range {
        Range { segment, start, end }
    }

    #[test]
    fn a_peer_that_missed_several_segments_gets_all_of_them() {
        // The copy ends inside segment 3; the origin wrote 4, 5 and 6 since and is in 7.
        let lengths = [(3, 900), (4, 1000), (5, 1000), (6, 980), (7, 120)];
        assert_eq!(
            catch_up_plan(pos(3, 400), pos(7, 120), &lengths),
            [range(3, 400, 900), range(4, 0, 1000), range(5, 0, 1000), range(6, 0, 980), range(7, 0, 120)]
        );
        // At the start of a new segment, with the copy's last segment complete: nothing to send.
        assert_eq!(catch_up_plan(pos(6, 980), pos(7, 0), &[(6, 980), (7, 0)]), []);
        // An empty copy of a WAL whose first segments were acked and deleted locally.
        assert_eq!(catch_up_plan(pos(0, 0), pos(9, 50), &[(8, 700), (9, 50)]), [range(8, 0, 700), range(9, 0, 50)]);
    }

    #[test]
    fn within_a_segment_only_the_gap_is_sent() {
        assert_eq!(catch_up_plan(pos(5, 100), pos(5, 300), &[(5, 300)]), [range(5, 100, 300)]);
        assert_eq!(catch_up_plan(pos(5, 300), pos(5, 300), &[(5, 300)]), []);
        // The copy has a refused group's bytes past the append: the append overwrites them.
        assert_eq!(catch_up_plan(pos(5, 400), pos(5, 300), &[(5, 300)]), []);
    }

    #[test]
    fn refused_bytes_past_a_finished_segment_are_cut() {
        // The copy holds 50 bytes of a refused group after segment 4's real end.
        assert_eq!(
            catch_up_plan(pos(4, 1050), pos(5, 10), &[(4, 1000), (5, 10)]),
            [range(4, 1000, 1000), range(5, 0, 10)]
        );
    }

    #[test]
    fn records_are_read_whole_and_chunked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let small =
            crate::wal::test_record(1, vec![sluice_wire::EventRecord { event_id: "a".into(), json: vec![1; 40] }]);
        let big = crate::wal::test_record(
            1,
            vec![sluice_wire::EventRecord { event_id: "b".into(), json: vec![2; BACKFILL_CHUNK + 10] }],
        );
        let data = [small.clone(), small.clone(), big.clone(), small.clone()].concat();
        std::fs::write(&path, &data).unwrap();
        let two = 2 * small.len() as u64;
        // Stops at `end`, on a record boundary, before the record that does not fit a chunk.
        assert_eq!(read_records(&path, 0, two).unwrap(), [small.clone(), small.clone()].concat());
        assert_eq!(read_records(&path, 0, data.len() as u64).unwrap(), [small.clone(), small.clone()].concat());
        // A record larger than a chunk is read alone.
        assert_eq!(read_records(&path, two, data.len() as u64).unwrap(), big);
        let after = two + big.len() as u64;
        assert_eq!(read_records(&path, after, data.len() as u64).unwrap(), small);
        assert!(read_records(&path, 3, data.len() as u64).is_err(), "not a record boundary");
    }
}
