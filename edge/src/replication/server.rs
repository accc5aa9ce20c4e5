//! The replica side: stores peers' groups under `<wal dir>/replica/<origin>/<wal id>/`, trims
//! them by the origin's ack watermark, and takes over forwarding when an origin goes silent.
//!
//! Takeover: an origin not heard from for `lease_secs` (no append, no heartbeat) may be dead with
//! its disk. The replica then runs a [`Forwarder`] over its copy, from the origin's last
//! watermark: exactly what the origin had not got acknowledged by core. If the origin is alive
//! after all (a network cut), both send the same batches and core's batch-ID dedupe drops the
//! second copy. The first message from the origin stops the takeover; the origin then carries
//! on from its own WAL.
//!
//! An origin that comes back with a different WAL ID lost its disk: the copies of its older WAL
//! IDs are orphans. They are forwarded at once (nobody else has them) and deleted once core has
//! acknowledged all of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_wire::replication::{self as proto, Origin, PeerMessage, PeerReply};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::takeover::{RunningGuard, TakeoverMetrics};
use super::{ReplicationMetrics, Stage};
use crate::config::ForwarderConfig;
use crate::forward::Forwarder;
use crate::wal::mirror::{Mirror, MirrorAppend, MirrorError, Usage};

/// How often leases and orphans are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long a stopped takeover forwarder gets to finish before it is aborted.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Where and how a takeover forwards.
#[derive(Clone)]
pub struct TakeoverConfig {
    pub forwarder: ForwarderConfig,
    pub tls: quinn::ClientConfig,
    /// Per origin (`sluice_edge_takeover_*`): a takeover's series must not mix with those of this
    /// edge's own forwarder.
    pub metrics: TakeoverMetrics,
}

pub struct ReplicaStore {
    root: PathBuf,
    lease: Duration,
    takeover: Option<TakeoverConfig>,
    /// Disk bytes all copies together may take.
    budget: u64,
    entries: Mutex<HashMap<(String, u64), Slot>>,
    metrics: Arc<ReplicationMetrics>,
}

type SharedEntry = Arc<tokio::sync::Mutex<Entry>>;

/// A copy, and its disk bytes readable without waiting for its lock.
#[derive(Clone)]
struct Slot {
    entry: SharedEntry,
    usage: Usage,
}

impl Slot {
    fn new(node_id: String, wal_id: u64, mirror: Mirror) -> Self {
        let usage = mirror.usage();
        Slot { entry: Arc::new(tokio::sync::Mutex::new(Entry::new(node_id, wal_id, mirror))), usage }
    }
}

/// One origin WAL's copy.
struct Entry {
    node_id: String,
    wal_id: u64,
    mirror: Mirror,
    last_heard: Instant,
    /// Highest append `seq` applied; older appends are dropped.
    last_seq: u64,
    /// The origin now writes under another WAL ID: this copy has no other owner.
    orphan: bool,
    running: Option<(watch::Sender<bool>, JoinHandle<std::io::Result<()>>, RunningGuard)>,
}

impl ReplicaStore {
    /// Opens every copy under `root`. Their leases start now: an origin gets `lease` to speak up
    /// after this replica restarts.
    pub fn open(
        root: &Path,
        lease: Duration,
        budget: u64,
        takeover: Option<TakeoverConfig>,
        metrics: Arc<ReplicationMetrics>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut entries = HashMap::new();
        for node in std::fs::read_dir(root)? {
            let node = node?;
            let Some(node_id) = node.file_name().to_str().filter(|n| valid_node_id(n)).map(str::to_string) else {
                continue;
            };
            for wal in std::fs::read_dir(node.path())? {
                let wal = wal?;
                let Some(wal_id) = wal.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) else {
                    continue;
                };
                let mirror = Mirror::open(&wal.path())?;
                tracing::info!(origin = %node_id, wal_id = %format!("{wal_id:016x}"), end_segment = mirror.end().segment,
                    end_offset = mirror.end().offset, "replica: opened copy");
                entries.insert((node_id.clone(), wal_id), Slot::new(node_id.clone(), wal_id, mirror));
            }
        }
        metrics.replica_budget_bytes.set(i64::try_from(budget).unwrap_or(i64::MAX));
        let store = Self { root: root.to_path_buf(), lease, takeover, budget, entries: Mutex::new(entries), metrics };
        store.used();
        Ok(store)
    }

    /// Disk bytes of all copies; also sets the gauge.
    fn used(&self) -> u64 {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let used = entries.values().map(|slot| slot.usage.bytes()).sum();
        self.metrics.replica_bytes.set(i64::try_from(used).unwrap_or(i64::MAX));
        used
    }

    fn dir(&self, origin: &Origin) -> PathBuf {
        self.root.join(&origin.node_id).join(format!("{:016x}", origin.wal_id))
    }

    /// The copy for `origin`, created if new; a new WAL ID makes the origin's other copies orphans.
    fn entry(&self, origin: &Origin) -> std::io::Result<SharedEntry> {
        let key = (origin.node_id.clone(), origin.wal_id);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = entries.get(&key) {
            return Ok(slot.entry.clone());
        }
        let mirror = tokio::task::block_in_place(|| Mirror::open(&self.dir(origin)))?;
        let slot = Slot::new(origin.node_id.clone(), origin.wal_id, mirror);
        let entry = slot.entry.clone();
        for ((node, wal_id), Slot { entry: other, .. }) in entries.iter() {
            if *node == origin.node_id {
                tracing::warn!(origin = %node, old_wal_id = %format!("{wal_id:016x}"), new_wal_id = %format!("{:016x}", origin.wal_id),
                    "replica: origin came back with a new WAL (its disk was lost); forwarding the old copy now");
                if let Ok(mut o) = other.try_lock() {
                    o.orphan = true;
                } else {
                    // Busy right now; the lease check marks it on its next pass.
                    let other = other.clone();
                    tokio::spawn(async move { other.lock().await.orphan = true });
                }
            }
        }
        entries.insert(key, slot);
        Ok(entry)
    }

    /// Applies one message from an origin.
    pub async fn handle(&self, msg: PeerMessage) -> PeerReply {
        let origin = match &msg {
            PeerMessage::Append { origin, .. }
            | PeerMessage::Heartbeat { origin, .. }
            | PeerMessage::Locate { origin } => origin.clone(),
        };
        if !valid_node_id(&origin.node_id) {
            return PeerReply::Refused { reason: format!("invalid origin id {:?}", origin.node_id) };
        }
        let entry = match self.entry(&origin) {
            Ok(e) => e,
            Err(e) => return PeerReply::Refused { reason: format!("opening the replica: {e}") },
        };
        let waited = Instant::now();
        let mut e = entry.lock().await;
        self.metrics.stage(Stage::Lock).observe(waited.elapsed().as_secs_f64());
        e.last_heard = Instant::now();
        e.stop_takeover("the origin is back").await;
        let result = match msg {
            PeerMessage::Append { seq, segment, offset, bytes, .. } => {
                if seq <= e.last_seq {
                    return PeerReply::Refused { reason: format!("append {seq} arrived after {}", e.last_seq) };
                }
                let used = self.used();
                if used.saturating_add(bytes.len() as u64) > self.budget {
                    self.metrics.replica_refusals.inc();
                    tracing::warn!(origin = %origin.node_id, used_bytes = used, budget_bytes = self.budget,
                        append_bytes = bytes.len(), "replica: budget for peers' copies full; refusing the append");
                    return PeerReply::Full { used_bytes: used, budget_bytes: self.budget };
                }
                e.last_seq = seq;
                let started = Instant::now();
                let result = tokio::task::block_in_place(|| e.mirror.append(segment, offset, &bytes));
                self.metrics.stage(Stage::Fsync).observe(started.elapsed().as_secs_f64());
                self.used();
                match result {
                    Ok(MirrorAppend::Stored) => Ok(PeerReply::Stored),
                    Ok(MirrorAppend::Behind { segment, have }) => Ok(PeerReply::Behind { segment, have }),
                    Err(MirrorError::Io(io)) => {
                        tracing::error!(origin = %origin.node_id, error = %io, "replica: write failed; refusing appends until restart");
                        Err(io.to_string())
                    }
                    Err(other) => Err(other.to_string()),
                }
            }
            PeerMessage::Locate { .. } => Ok(PeerReply::CopyEnd { end: e.mirror.end() }),
            PeerMessage::Heartbeat { acked, .. } => {
                let trimmed = tokio::task::block_in_place(|| e.mirror.trim(acked));
                self.used();
                trimmed.map(|()| PeerReply::Stored).map_err(|io| io.to_string())
            }
        };
        result.unwrap_or_else(|reason| PeerReply::Refused { reason })
    }

    /// Starts takeovers for silent origins and orphans; drops orphans core has acknowledged.
    pub async fn check_leases(&self) {
        // A takeover's forwarder trims the copy it reads.
        self.used();
        let entries: Vec<_> =
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).values().map(|s| s.entry.clone()).collect();
        for entry in entries {
            let mut e = entry.lock().await;
            let drained = match tokio::task::block_in_place(|| e.mirror.drained()) {
                Ok(d) => d,
                Err(err) => {
                    tracing::warn!(origin = %e.node_id, error = %err, "replica: cannot read the copy's watermark");
                    continue;
                }
            };
            if drained {
                if e.orphan {
                    e.stop_takeover("the orphaned copy is fully acknowledged").await;
                    if e.mirror.has_quarantined() {
                        // Keep the copy: its quarantined segments are for an operator to salvage.
                        continue;
                    }
                    let dir = e.mirror.dir().to_path_buf();
                    let key = (e.node_id.clone(), e.wal_id);
                    drop(e);
                    self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                    match tokio::task::block_in_place(|| std::fs::remove_dir_all(&dir)) {
                        Ok(()) => tracing::info!(dir = %dir.display(), "replica: orphaned copy forwarded and deleted"),
                        Err(err) => {
                            tracing::warn!(dir = %dir.display(), error = %err, "replica: cannot delete the orphaned copy")
                        }
                    }
                } else {
                    e.stop_takeover("everything is acknowledged").await;
                }
                continue;
            }
            let expired = e.orphan || e.last_heard.elapsed() > self.lease;
            if expired && e.running.is_none() {
                self.start_takeover(&mut e);
            }
        }
    }

    fn start_takeover(&self, e: &mut Entry) {
        let Some(t) = &self.takeover else {
            tracing::error!(origin = %e.node_id, "replica: origin silent past its lease but the forwarder is disabled here; cannot take over");
            return;
        };
        let reader = match e.mirror.reader() {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(origin = %e.node_id, error = %err, "replica: cannot read the copy for a takeover");
                return;
            }
        };
        let metrics = match t.metrics.forwarder(&e.node_id) {
            Ok(m) => m,
            Err(err) => {
                tracing::error!(origin = %e.node_id, error = %err, "replica: cannot make the takeover's metrics");
                return;
            }
        };
        let fwd = match Forwarder::new(t.forwarder.clone(), e.node_id.clone(), reader, t.tls.clone(), metrics.clone()) {
            Ok(f) => f,
            Err(err) => {
                tracing::error!(origin = %e.node_id, error = %err, "replica: cannot start the takeover forwarder");
                return;
            }
        };
        tracing::warn!(origin = %e.node_id, wal_id = %format!("{:016x}", e.wal_id), orphan = e.orphan,
            silent_ms = e.last_heard.elapsed().as_millis() as u64,
            "replica: taking over, forwarding the origin's unacknowledged records to core");
        self.metrics.takeovers.inc();
        let running = t.metrics.started(&e.node_id, e.wal_id, e.mirror.dir(), metrics, fwd.link_health());
        let (stop, stop_rx) = watch::channel(false);
        e.running = Some((stop, tokio::spawn(fwd.run(stop_rx)), running));
    }
}

impl Entry {
    fn new(node_id: String, wal_id: u64, mirror: Mirror) -> Self {
        Self { node_id, wal_id, mirror, last_heard: Instant::now(), last_seq: 0, orphan: false, running: None }
    }

    async fn stop_takeover(&mut self, why: &str) {
        // `_running` lives to the end: the takeover's metrics count it until it has finished.
        let Some((stop, mut task, _running)) = self.running.take() else { return };
        let _ = stop.send(true);
        // A forwarder stuck connecting to an unreachable core does not see `stop` until its
        // handshake times out; the origin's message must not wait that long. Aborting is safe:
        // the forwarder's trims happen inside `block_in_place`, never cut by an abort.
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(origin = %self.node_id, error = %e, "replica: takeover forwarder failed"),
            Ok(Err(e)) => tracing::warn!(origin = %self.node_id, error = %e, "replica: takeover task failed"),
            Err(_) => {
                task.abort();
                let _ = task.await;
            }
        }
        if let Err(e) = self.mirror.reload_acked() {
            tracing::warn!(origin = %self.node_id, error = %e, "replica: cannot reload the watermark");
        }
        tracing::info!(origin = %self.node_id, reason = why, "replica: takeover stopped");
    }
}

/// A node ID names a directory: keep it to a safe alphabet.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Accepts peers' connections; one message per stream.
pub async fn serve(endpoint: quinn::Endpoint, store: Arc<ReplicaStore>) {
    while let Some(incoming) = endpoint.accept().await {
        let store = store.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "replica: handshake failed");
                    return;
                }
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let bytes = match recv.read_to_end(proto::MAX_MESSAGE_LEN).await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::debug!(error = %e, "replica: reading a message failed");
                            return;
                        }
                    };
                    store.metrics.stage(Stage::Receive).observe(started.elapsed().as_secs_f64());
                    let reply = match proto::decode_message(&bytes) {
                        Ok(msg) => store.handle(msg).await,
                        Err(e) => PeerReply::Refused { reason: format!("undecodable message: {e}") },
                    };
                    if let Ok(bytes) = proto::encode_reply(&reply) {
                        let _ = send.write_all(&bytes).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

/// Runs [`ReplicaStore::check_leases`] forever.
pub async fn watch_leases(store: Arc<ReplicaStore>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        store.check_leases().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Position;

    fn append(origin: &Origin, seq: u64, segment: u64, offset: u64, bytes: &[u8]) -> PeerMessage {
        PeerMessage::Append { origin: origin.clone(), seq, segment, offset, bytes: bytes.to_vec() }
    }

    /// Peers' copies share one budget: an append past it is refused with nothing written, and
    /// the origin's watermark trimming a copy makes room again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_past_the_budget_are_refused_until_trims_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(ReplicationMetrics::new().unwrap());
        let rec =
            crate::wal::test_record(1, vec![sluice_wire::EventRecord { event_id: "e".into(), json: vec![7; 500] }]);
        let len = rec.len() as u64;
        let budget = 2 * len + len / 2;
        let store = ReplicaStore::open(dir.path(), Duration::from_secs(60), budget, None, metrics.clone()).unwrap();
        let (a, b) = (Origin { node_id: "a".into(), wal_id: 1 }, Origin { node_id: "b".into(), wal_id: 2 });
        assert_eq!(store.handle(append(&a, 1, 1, 0, &rec)).await, PeerReply::Stored);
        assert_eq!(store.handle(append(&a, 2, 1, len, &rec)).await, PeerReply::Stored);
        let full = PeerReply::Full { used_bytes: 2 * len, budget_bytes: budget };
        assert_eq!(store.handle(append(&a, 3, 2, 0, &rec)).await, full);
        // Another origin's copy counts against the same budget.
        assert_eq!(store.handle(append(&b, 1, 1, 0, &rec)).await, full);
        assert!(!crate::wal::segment_path(&dir.path().join("a").join(format!("{:016x}", 1)), 2).exists());
        assert_eq!(metrics.replica_refusals.get(), 2);
        assert_eq!((metrics.replica_bytes.get(), metrics.replica_budget_bytes.get()), (2 * len as i64, budget as i64));
        // Core acknowledged segment 1: the heartbeat trims it and the next append fits.
        let acked = Position { segment: 2, offset: 0 };
        assert_eq!(store.handle(PeerMessage::Heartbeat { origin: a.clone(), acked }).await, PeerReply::Stored);
        assert_eq!(metrics.replica_bytes.get(), 0);
        assert_eq!(store.handle(append(&a, 4, 2, 0, &rec)).await, PeerReply::Stored);
        assert_eq!(store.handle(append(&b, 2, 1, 0, &rec)).await, PeerReply::Stored);
        assert_eq!(metrics.replica_bytes.get(), 2 * len as i64);
    }

    #[test]
    fn node_ids_cannot_escape_the_replica_directory() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a b", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
        for good in ["edge-1", "pop1.edge_2", "A9"] {
            assert!(valid_node_id(good));
        }
    }
}
