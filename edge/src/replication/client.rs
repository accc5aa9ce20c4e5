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
//!
//! What a peer task sends when (merging, level, `Locate` and catch-up, the backoff) is decided by
//! [`super::peer_state`], pure; the task only carries its commands out over QUIC and the local
//! segment files, and counts the outcome into the groups' tallies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_wire::record::check_record;
use sluice_wire::replication::{self as proto, Origin, PeerMessage, PeerReply};
use tokio::sync::mpsc;

use super::peer_state::{Command, Event, Outcome, PeerState, Range, Runs};
use super::{Lane, ReplicationMetrics, Stage};
use crate::config::{DegradedMode, PeerAddr, PeerConfig};
use crate::wal::{PendingReplicas, Position, Replicate, Wal, segment_path};

/// Backfill messages stay below this size (split at record boundaries).
const BACKFILL_CHUNK: usize = 4 * 1024 * 1024;

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
    /// The writer's side, and one task per peer to start on `lane` once the WAL is open (their
    /// messages carry its ID): the groups the writer hands over meanwhile wait in their queues.
    pub fn new(
        p: ClientParams,
        metrics: Arc<ReplicationMetrics>,
        lane: Arc<Lane>,
    ) -> std::io::Result<(Self, PeerTasks)> {
        let mut endpoint = client_endpoint(&lane, &p.peers)?;
        endpoint.set_default_client_config(p.tls);
        // Continues across restarts (wall clock), so a replica can drop an append that was
        // delayed past a newer one even if the origin restarted in between.
        let seq = crate::clock::now_ms().saturating_mul(1_000);
        let (peers, tasks) = p
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
                (tx, UnstartedPeer { appends: link(), heartbeats: link(), jobs: rx })
            })
            .unzip();
        let tasks = PeerTasks {
            peers: tasks,
            node_id: p.node_id,
            wal_dir: p.wal_dir,
            seq,
            heartbeat: p.heartbeat,
            metrics: metrics.clone(),
            lane: lane.clone(),
        };
        let replicator = Self {
            peers,
            need: p.need,
            mode: p.mode,
            timeout: p.timeout,
            _lane: lane,
            degraded: Arc::new(DegradedClock::new(metrics.clone())),
            metrics,
        };
        Ok((replicator, tasks))
    }
}

/// The peer tasks of a [`Replicator`], waiting for the WAL to be open.
pub struct PeerTasks {
    peers: Vec<UnstartedPeer>,
    node_id: String,
    wal_dir: PathBuf,
    seq: u64,
    heartbeat: Duration,
    metrics: Arc<ReplicationMetrics>,
    lane: Arc<Lane>,
}

struct UnstartedPeer {
    appends: PeerLink,
    heartbeats: PeerLink,
    jobs: mpsc::UnboundedReceiver<Job>,
}

impl PeerTasks {
    /// Spawns each peer's append task and heartbeat task on the lane.
    pub fn start(self, wal: &Wal) {
        let origin = Origin { node_id: self.node_id, wal_id: wal.id() };
        for peer in self.peers {
            let confirmed = Arc::new(Mutex::new(Position::default()));
            let task = PeerTask {
                link: peer.appends,
                state: PeerState::new(origin.clone(), self.seq),
                wal_dir: self.wal_dir.clone(),
                confirmed: confirmed.clone(),
                queue: self.metrics.stage(Stage::Queue),
                round_trip: self.metrics.stage(Stage::RoundTrip),
            };
            self.lane.handle().spawn(task.run(peer.jobs));
            let beat = Heartbeat {
                link: peer.heartbeats,
                origin: origin.clone(),
                wal: wal.clone(),
                confirmed,
                metrics: self.metrics.clone(),
            };
            self.lane.handle().spawn(beat.run(self.heartbeat));
        }
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
        self.exchange_on(msg, true).await
    }

    /// [`PeerLink::exchange`]; with `reconnect` false it fails rather than open a new
    /// connection. Within a run, a new connection may reach a peer that restarted without
    /// its copy, and the rest of the run was planned on that copy.
    async fn exchange_on(&mut self, msg: &PeerMessage, reconnect: bool) -> Result<PeerReply, String> {
        let bytes = proto::encode_message(msg).map_err(|e| e.to_string())?;
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let conn = match self.open() {
                Some(conn) => conn,
                None if reconnect => self.connection().await?,
                None => return Err("the connection to the peer closed during the run".to_string()),
            };
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

    /// The connection, if it is still open.
    fn open(&self) -> Option<quinn::Connection> {
        self.conn.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Opens a connection unless one is open, within the ack timeout: `true` if it is new.
    async fn connect_if_closed(&mut self) -> Result<bool, String> {
        if self.open().is_some() {
            return Ok(false);
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.connection())
            .await
            .unwrap_or_else(|_| Err(format!("no connection within {timeout:?}")))?;
        Ok(true)
    }

    async fn connection(&mut self) -> Result<quinn::Connection, String> {
        if let Some(c) = self.open() {
            return Ok(c);
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

/// Sends one peer its appends, in order: carries out what its [`PeerState`] asks for.
struct PeerTask {
    link: PeerLink,
    state: PeerState,
    wal_dir: PathBuf,
    /// End of what this peer has confirmed durable (read by the heartbeat for the lag gauge).
    confirmed: Arc<Mutex<Position>>,
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
        let mut runs = Runs::default();
        let mut run: Vec<Job> = Vec::new();
        for job in batch {
            if job.refused.load(Ordering::Acquire) {
                job.done.answer(false);
                continue;
            }
            if runs.starts_run(job.at, job.bytes.len() as u64) && !run.is_empty() {
                self.send_run(std::mem::take(&mut run)).await;
            }
            run.push(job);
        }
        if !run.is_empty() {
            self.send_run(run).await;
        }
    }

    async fn send_run(&mut self, run: Vec<Job>) {
        let stored = self.state.admits(Instant::now()) && {
            for job in &run {
                self.queue.observe(job.queued.elapsed().as_secs_f64());
            }
            let bytes: Vec<u8> = if run.len() == 1 {
                run[0].bytes.to_vec()
            } else {
                run.iter().flat_map(|j| j.bytes.iter().copied()).collect()
            };
            // Not connected: the run's first exchange fails, and the state takes it from there.
            if self.link.connect_if_closed().await.unwrap_or(false) {
                self.state.reconnected();
            }
            self.state.run(run[0].at, bytes);
            self.drive().await
        };
        for job in run {
            job.done.answer(stored);
        }
    }

    /// Carries out the state's commands until the run is over: whether the peer stored it.
    async fn drive(&mut self) -> bool {
        while let Some(command) = self.state.poll() {
            let event = match command {
                Command::Exchange(msg) => {
                    let reply = self.exchange(&msg).await;
                    Event::Replied { sent: msg, reply }
                }
                Command::ListLengths { first, to } => {
                    let dir = self.wal_dir.clone();
                    let lengths = blocking(move || local_lengths(&dir, first, to)).await;
                    Event::Lengths(lengths.map_err(|e| format!("listing the local segments to catch up: {e}")))
                }
                Command::ReadRecords(range) => {
                    let (path, Range { segment, start, end }) = (segment_path(&self.wal_dir, range.segment), range);
                    let chunk = blocking(move || read_records(&path, start, end)).await;
                    Event::Records(chunk.map_err(|e| format!("reading local segment {segment} for catch-up: {e}")))
                }
                Command::CatchingUp { from, to, ranges, bytes } => {
                    tracing::info!(peer = %self.link.peer.id, from_segment = from.segment, from_offset = from.offset,
                        to_segment = to.segment, to_offset = to.offset, segments = ranges, bytes,
                        "replication: peer is behind; sending it the missing bytes of every segment it lacks");
                    continue;
                }
                Command::Done(Outcome::Stored { end, back }) => {
                    *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner) = end;
                    if back {
                        tracing::info!(peer = %self.link.peer.id, "replication: peer reachable again");
                    }
                    return true;
                }
                Command::Done(Outcome::Failed { error, newly_down }) => {
                    if newly_down {
                        tracing::warn!(peer = %self.link.peer.id, addr = %self.link.peer.addr, error,
                            "replication: peer failed; its acks are missing until it answers again");
                    }
                    return false;
                }
            };
            self.state.handle(event, Instant::now());
        }
        debug_assert!(false, "a run ends with Command::Done");
        false
    }

    async fn exchange(&mut self, msg: &PeerMessage) -> Result<PeerReply, String> {
        let started = Instant::now();
        let reply = self.link.exchange_on(msg, false).await;
        self.round_trip.observe(started.elapsed().as_secs_f64());
        reply
    }
}

/// `f` on tokio's blocking pool (file IO off the lane's one worker).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
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
    origin: Origin,
    wal: Wal,
    confirmed: Arc<Mutex<Position>>,
    metrics: Arc<ReplicationMetrics>,
}

impl Heartbeat {
    async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (acked, committed) = (self.wal.acked(), self.wal.committed());
            let confirmed = *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner);
            let lag = if confirmed.segment == committed.segment {
                committed.offset.saturating_sub(confirmed.offset)
            } else {
                committed.offset
            };
            self.metrics.lag_bytes.with_label_values(&[&self.link.peer.id]).set(i64::try_from(lag).unwrap_or(i64::MAX));
            let msg = PeerMessage::Heartbeat { origin: self.origin.clone(), acked };
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
