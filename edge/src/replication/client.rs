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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_wire::record::check_record;
use sluice_wire::replication::{self as proto, Origin, PeerMessage, PeerReply, WirePosition};
use tokio::sync::{mpsc, oneshot};

use super::ReplicationMetrics;
use crate::config::{DegradedMode, PeerAddr, PeerConfig};
use crate::wal::{Position, Replicate, Wal, segment_path};

/// Backfill messages stay below this size (split at record boundaries).
const BACKFILL_CHUNK: usize = 4 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Job {
    at: Position,
    bytes: Bytes,
    done: oneshot::Sender<bool>,
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
    runtime: tokio::runtime::Handle,
    metrics: Arc<ReplicationMetrics>,
    degraded: Arc<DegradedClock>,
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
fn client_endpoint(peers: &[(PeerConfig, String)]) -> std::io::Result<quinn::Endpoint> {
    let v4 = SocketAddr::from(([0, 0, 0, 0], 0));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let needs_v6 = peers.iter().any(|(p, _)| matches!(p.addr, PeerAddr::Ip(a) if a.is_ipv6()));
    let named = peers.iter().any(|(p, _)| matches!(p.addr, PeerAddr::Name { .. }));
    if needs_v6 {
        quinn::Endpoint::client(v6)
    } else if named {
        quinn::Endpoint::client(v6).or_else(|e| {
            tracing::debug!(error = %e, "replication: no IPv6 socket; peers by name are reached over IPv4 only");
            quinn::Endpoint::client(v4)
        })
    } else {
        quinn::Endpoint::client(v4)
    }
}

impl Replicator {
    /// Spawns one task per peer on the current runtime.
    pub fn start(p: ClientParams, wal: WalSlot, metrics: Arc<ReplicationMetrics>) -> std::io::Result<Self> {
        let mut endpoint = client_endpoint(&p.peers)?;
        endpoint.set_default_client_config(p.tls);
        // Continues across restarts (wall clock), so a replica can drop an append that was
        // delayed past a newer one even if the origin restarted in between.
        let seq = crate::http::now_ms().saturating_mul(1_000);
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
                };
                tokio::spawn(task.run(rx));
                let beat = Heartbeat {
                    link: link(),
                    node_id: p.node_id.clone(),
                    wal: wal.clone(),
                    confirmed,
                    metrics: metrics.clone(),
                };
                tokio::spawn(beat.run(p.heartbeat));
                tx
            })
            .collect();
        Ok(Self {
            peers,
            need: p.need,
            mode: p.mode,
            timeout: p.timeout,
            runtime: tokio::runtime::Handle::current(),
            degraded: Arc::new(DegradedClock::new(metrics.clone())),
            metrics,
        })
    }
}

impl Replicate for Replicator {
    fn begin(&self, at: Position, bytes: &[u8]) -> oneshot::Receiver<Result<(), String>> {
        let (result_tx, result_rx) = oneshot::channel();
        let bytes = Bytes::copy_from_slice(bytes);
        let refused = Arc::new(AtomicBool::new(false));
        let mut acks: FuturesUnordered<_> = self
            .peers
            .iter()
            .filter_map(|peer| {
                let (done, wait) = oneshot::channel();
                peer.send(Job { at, bytes: bytes.clone(), done, refused: refused.clone() }).ok().map(|()| wait)
            })
            .collect();
        let (need, mode, timeout) = (self.need, self.mode, self.timeout);
        let (metrics, degraded) = (self.metrics.clone(), self.degraded.clone());
        self.runtime.spawn(async move {
            let started = Instant::now();
            let mut got = 0;
            let _ = tokio::time::timeout(timeout, async {
                while got < need {
                    match acks.next().await {
                        Some(Ok(true)) => got += 1,
                        Some(_) => {}
                        None => break,
                    }
                }
            })
            .await;
            let replicated = got >= need;
            degraded.mark(!replicated);
            let result = if replicated {
                metrics.ack_latency.observe(started.elapsed().as_secs_f64());
                Ok(())
            } else {
                metrics.unreplicated_groups.inc();
                match mode {
                    DegradedMode::AllowLocal => {
                        tracing::warn!(
                            acks = got,
                            needed = need,
                            segment = at.segment,
                            offset = at.offset,
                            "replication: degraded, group accepted with the local copy only (allow_local)"
                        );
                        Ok(())
                    }
                    DegradedMode::Require => {
                        refused.store(true, Ordering::Release);
                        Err(format!("{got} of {need} replica acks"))
                    }
                }
            };
            let _ = result_tx.send(result);
        });
        result_rx
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
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
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
                crate::forwarder::handshake(&self.endpoint, addr, &self.server_name)
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
                let _ = job.done.send(false);
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
            let _ = job.done.send(ok);
        }
    }

    async fn append(&mut self, at: Position, bytes: Vec<u8>) -> Result<(), String> {
        let origin = origin(&self.node_id, &self.wal).ok_or("WAL not open yet")?;
        let end = Position { segment: at.segment, offset: at.offset + bytes.len() as u64 };
        self.seq += 1;
        let msg = PeerMessage::Append {
            origin: origin.clone(),
            seq: self.seq,
            segment: at.segment,
            offset: at.offset,
            bytes,
        };
        match self.link.exchange(&msg).await? {
            PeerReply::Stored => {}
            PeerReply::Behind { segment, have } if segment == at.segment && have < at.offset => {
                tracing::info!(peer = %self.link.peer.id, segment, from = have, to = at.offset,
                    "replication: peer is behind; sending it the missing bytes of the segment");
                self.backfill(&origin, segment, have, at.offset).await?;
                self.seq += 1;
                let PeerMessage::Append { bytes, .. } = msg else { unreachable!("built above") };
                let again =
                    PeerMessage::Append { origin, seq: self.seq, segment: at.segment, offset: at.offset, bytes };
                match self.link.exchange(&again).await? {
                    PeerReply::Stored => {}
                    other => return Err(format!("after backfill: {other:?}")),
                }
            }
            PeerReply::Behind { segment, have } => {
                return Err(format!("peer is behind at segment {segment} offset {have}, before what this WAL keeps"));
            }
            PeerReply::Refused { reason } => return Err(format!("refused: {reason}")),
        }
        *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner) = end;
        if self.down_until.take().is_some() {
            tracing::info!(peer = %self.link.peer.id, "replication: peer reachable again");
        }
        self.backoff = MIN_BACKOFF;
        Ok(())
    }

    /// Sends `[from, to)` of local segment `segment` (committed bytes: the writer only appends
    /// after `to`) in chunks that end on record boundaries.
    async fn backfill(&mut self, origin: &Origin, segment: u64, from: u64, to: u64) -> Result<(), String> {
        let path = segment_path(&self.wal_dir, segment);
        let data = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; (to - from) as usize];
            std::fs::File::open(&path).and_then(|f| f.read_exact_at(&mut buf, from)).map(|()| buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the local segment for backfill: {e}"))?;
        let mut start = 0usize;
        while start < data.len() {
            let mut end = start;
            while end < data.len() && (end == start || end - start < BACKFILL_CHUNK) {
                match check_record(&data[end..]) {
                    Ok(Some(len)) => end += len,
                    _ => return Err(format!("local segment {segment} has no valid record at {}", from + end as u64)),
                }
            }
            self.seq += 1;
            let msg = PeerMessage::Append {
                origin: origin.clone(),
                seq: self.seq,
                segment,
                offset: from + start as u64,
                bytes: data[start..end].to_vec(),
            };
            match self.link.exchange(&msg).await? {
                PeerReply::Stored => start = end,
                other => return Err(format!("backfill: {other:?}")),
            }
        }
        Ok(())
    }

    fn failed(&mut self, error: &str) {
        if self.down_until.is_none() {
            tracing::warn!(peer = %self.link.peer.id, addr = %self.link.peer.addr, error, "replication: peer unreachable");
        }
        self.down_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
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
            let msg = PeerMessage::Heartbeat { origin, acked: wire(acked) };
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

fn wire(p: Position) -> WirePosition {
    WirePosition { segment: p.segment, offset: p.offset }
}
