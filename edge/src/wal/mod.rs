//! The edge write-ahead log.
//!
//! Architecture invariant: an append completes only after `fdatasync` has returned success for
//! the record's bytes. One writer thread does group commit: it takes every append waiting, writes
//! them, syncs once, then completes all of them. After any failed write or sync the WAL latches
//! failed (fsyncgate: Linux may drop dirty pages after reporting the error once, so a later
//! "successful" sync proves nothing) and refuses appends until the process reopens and re-verifies it.
//!
//! With replication, a group also goes to the POP's peers while it is synced locally, and it
//! completes only once both are done (see [`Replicate`]).
//!
//! Layout: `<dir>/<seq:020>.wal` segments of records framed by `sluice_wire::record`,
//! `<dir>/ack.watermark`, the position up to which core has acknowledged, and `<dir>/wal.id`, the
//! WAL's identity for replicas; their names and bytes are `sluice_wire::wal_files`'.
//! [`Position`] is `sluice_wire`'s, so the replication protocol and the tools carry it as is. Segments entirely before the watermark are deleted. Peers'
//! replicas live under `<dir>/replica/` ([`mirror`]).

#[cfg(test)]
mod crash_sweep;
mod identity;
pub mod mirror;
mod prealloc;
mod reader;
mod recovery;
pub mod scan;
mod segment;
#[cfg(test)]
mod sim;
pub mod storage;
mod watermark;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use tokio::sync::{oneshot, watch};

pub use reader::{ReadOutcome, WalReader};
pub use recovery::{TailRecovery, recover_tail};
use segment::list_segments;
pub use segment::segment_path;
pub use sluice_wire::Position;
use storage::{FileStorage, Storage};

use crate::config::WalConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("WAL budget exhausted ({used} of {budget} bytes live)")]
    Full { used: u64, budget: u64 },
    #[error("WAL failed after an I/O error and refuses appends until restarted: {0}")]
    Failed(String),
    #[error("WAL writer has stopped")]
    Closed,
    /// The group is durable locally but did not get the replica acks it needs; it was cut back
    /// and refused. The WAL itself stays usable.
    #[error("not replicated: {0}")]
    Unreplicated(String),
}

/// Ships one group commit's bytes to the replicas while the writer syncs them locally.
pub trait Replicate: Send + Sync + 'static {
    /// Starts replicating `bytes`, which the writer is about to write at `at`.
    fn begin(&self, at: Position, bytes: &[u8]) -> Box<dyn PendingReplicas>;
}

/// A group on its way to the replicas.
pub trait PendingReplicas: Send {
    /// Blocks the writer thread until enough copies are durable (or the configured degraded
    /// mode accepts the local copy alone): `Ok`; `Err(reason)` otherwise.
    fn wait(self: Box<Self>) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
#[error("opening WAL in {dir}: {source}")]
pub struct OpenError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Counters the writer keeps for metrics and benchmarks.
#[derive(Debug)]
pub struct WalStats {
    pub groups: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Each group commit's `fdatasync`: the disk's share of every append's latency, so a latency
    /// tail can be told apart from the disk's own (the edge registers it as a metric). Its sum
    /// is the total time spent in fdatasync.
    pub sync_latency: prometheus::Histogram,
}

impl WalStats {
    fn new() -> Self {
        let buckets = (0..16).map(|k| 0.000_1 * f64::from(1u32 << k)).collect();
        let opts = prometheus::HistogramOpts::new(
            "sluice_edge_wal_fsync_duration_seconds",
            "One group commit's fdatasync of the local WAL",
        )
        .buckets(buckets);
        Self {
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            // Only fails on a bad name or unsorted buckets, both constants here.
            sync_latency: prometheus::Histogram::with_opts(opts).expect("constant histogram options are valid"),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Bytes in live segment files (written minus deleted): what the budget limits.
    pub disk_bytes: AtomicU64,
    pub failed: AtomicBool,
    pub stats: WalStats,
    /// Everything before this position is acknowledged by core (the in-memory watermark).
    pub acked: watch::Sender<Position>,
}

/// How far the forwarder is behind: what `GET /status` and a drain report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub acked: Position,
    pub committed: Position,
    /// Committed bytes core has not acknowledged.
    pub unacked_bytes: u64,
}

struct Append {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), WalError>>,
}

/// What the writer thread is asked to do.
enum Request {
    Append(Append),
    /// Close segment `segment` if it is still the one being written, and continue in a new one;
    /// answers the segment now being written. The reader asks this before quarantining the
    /// active segment, so no later append lands in a file nobody forwards.
    Rotate {
        segment: u64,
        done: mpsc::SyncSender<std::io::Result<u64>>,
    },
}

/// Handle to the WAL: appends go to the writer thread; the reader tails committed data.
#[derive(Clone)]
pub struct Wal {
    storage: Arc<dyn Storage>,
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    budget: u64,
    dir: PathBuf,
    committed: watch::Receiver<Position>,
    id: u64,
}

impl Wal {
    /// Recovers the directory and starts the writer thread on a fresh segment.
    pub fn open(config: &WalConfig) -> Result<(Wal, WalReader), OpenError> {
        Self::open_replicated(config, None)
    }

    /// [`Wal::open`], with every group commit also waiting for `replicate`.
    pub fn open_replicated(
        config: &WalConfig,
        replicate: Option<Arc<dyn Replicate>>,
    ) -> Result<(Wal, WalReader), OpenError> {
        Self::open_on(config, Arc::new(FileStorage), replicate)
    }

    /// [`Wal::open_replicated`] on `storage` (the crash sweep's simulated disk).
    pub fn open_on(
        config: &WalConfig,
        storage: Arc<dyn Storage>,
        replicate: Option<Arc<dyn Replicate>>,
    ) -> Result<(Wal, WalReader), OpenError> {
        let config = &effective(config);
        let dir = config.dir.clone();
        let err = |source| OpenError { dir: dir.clone(), source };
        let s = &*storage;
        s.create_dir_all(&dir).map_err(err)?;
        let id = identity::load_or_create(s, &dir).map_err(err)?;
        let acked = watermark::load(s, &dir).map_err(err)?.unwrap_or_default();
        segment::remove_leftovers(s, &dir).map_err(err)?;
        let mut segments = list_segments(s, &dir).map_err(err)?;
        if let Some(&(last, _)) = segments.last() {
            let tail = recover_tail(s, &dir, last).map_err(err)?;
            if let Some(s) = segments.last_mut() {
                s.1 = tail.valid_bytes;
            }
        }
        // Segments wholly before the watermark were acked but their deletion did not finish.
        let (acked_segments, live): (Vec<_>, Vec<_>) = segments.into_iter().partition(|&(seq, _)| seq < acked.segment);
        for (seq, _) in &acked_segments {
            s.remove(&segment_path(&dir, *seq)).map_err(err)?;
        }
        if !acked_segments.is_empty() {
            s.sync_dir(&dir).map_err(err)?;
        }
        let next_seq = live.last().map_or(1, |&(seq, _)| seq + 1).max(acked.segment).max(1);
        let disk_bytes: u64 = live.iter().map(|&(_, len)| len).sum();
        let reader_start = acked.max(Position { segment: live.first().map_or(next_seq, |s| s.0), offset: 0 });
        let shared = Arc::new(Shared::new(disk_bytes, reader_start));
        let start = Position { segment: next_seq, offset: 0 };
        let (committed_tx, committed_rx) = watch::channel(start);
        let writer = writer::Writer::create(config, storage.clone(), next_seq, shared.clone(), committed_tx, replicate)
            .map_err(err)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("wal-writer".into()).spawn(move || writer.run(rx)).map_err(err)?;
        tracing::info!(dir = %dir.display(), acked_segment = acked.segment, acked_offset = acked.offset,
            live_segments = live.len(), live_bytes = disk_bytes, "wal: opened");
        let reader = WalReader::new(
            storage.clone(),
            dir.clone(),
            committed_rx.clone(),
            reader_start,
            shared.clone(),
            tx.clone(),
        );
        Ok((Wal { storage, tx, shared, budget: config.budget_bytes, dir, committed: committed_rx, id }, reader))
    }

    /// This WAL's identity (see `wal.id`), stable for as long as the directory lives.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Everything before this position is acknowledged by core.
    pub fn acked(&self) -> Position {
        *self.shared.acked.borrow()
    }

    /// Appends one framed record; resolves once it is durable.
    pub async fn append(&self, bytes: Vec<u8>) -> Result<(), WalError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(WalError::Failed("a previous write or fsync failed".into()));
        }
        let used = self.shared.disk_bytes.load(Ordering::Relaxed);
        if used + bytes.len() as u64 > self.budget {
            return Err(WalError::Full { used, budget: self.budget });
        }
        let (done, wait) = oneshot::channel();
        self.tx.send(Request::Append(Append { bytes, done })).map_err(|_| WalError::Closed)?;
        wait.await.map_err(|_| WalError::Closed)?
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Bytes of the segments on disk (live: not deleted yet). A segment stays, and counts here,
    /// until core acknowledged all of it; this is what `wal.budget_bytes` limits.
    pub fn live_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// `wal.budget_bytes`: past it appends are refused.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Latched after a failed write or sync: every append is refused until a restart.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The end of the last durable record.
    pub fn committed(&self) -> Position {
        *self.committed.borrow()
    }

    /// Acked and committed positions and the bytes between them.
    pub fn depth(&self) -> std::io::Result<Depth> {
        // Committed first: a record committed after this read is simply not counted yet.
        let committed = self.committed();
        let acked = self.acked();
        let segments = list_segments(&*self.storage, &self.dir)?;
        Ok(Depth { acked, committed, unacked_bytes: scan::unacked_bytes(&segments, acked, committed) })
    }

    /// Records core has not acknowledged (walks record headers: one read per record).
    pub fn unacked_records(&self, depth: &Depth) -> std::io::Result<u64> {
        scan::count_records(&self.dir, &list_segments(&*self.storage, &self.dir)?, depth.acked, depth.committed)
    }

    /// The oldest record core has not acknowledged, if any.
    pub fn oldest_unacked(&self, depth: &Depth) -> std::io::Result<Option<sluice_wire::BatchRecord>> {
        scan::record_at(&self.dir, &list_segments(&*self.storage, &self.dir)?, depth.acked, depth.committed)
    }
}

impl Shared {
    fn new(disk_bytes: u64, acked: Position) -> Self {
        Self {
            disk_bytes: AtomicU64::new(disk_bytes),
            failed: AtomicBool::new(false),
            stats: WalStats::new(),
            acked: watch::channel(acked).0,
        }
    }
}

/// Smallest segment size [`effective`] shrinks to.
const MIN_SEGMENT_BYTES: u64 = 16 * 1024;

/// The budget is freed by deleting whole acknowledged segments, and the segment being written is
/// never deleted. A segment as large as the budget could therefore hold the WAL "full" forever
/// even after core acked everything; segments are kept to at most a quarter of the budget.
fn effective(config: &WalConfig) -> WalConfig {
    let mut c = config.clone();
    let cap = (config.budget_bytes / 4).max(MIN_SEGMENT_BYTES);
    if c.segment_bytes > cap {
        tracing::info!(
            configured = config.segment_bytes,
            budget = config.budget_bytes,
            segment_bytes = cap,
            "wal: segment size lowered to a quarter of the budget"
        );
        c.segment_bytes = cap;
    }
    c
}

/// A framed record for the WAL's unit tests: tenant `t`, the given receive time and events.
#[cfg(test)]
pub(crate) fn test_record(received_at_ms: u64, events: Vec<sluice_wire::EventRecord>) -> Vec<u8> {
    let mut b = Vec::new();
    sluice_wire::record::encode_record(&test_batch(received_at_ms, events), &mut b).expect("a test record encodes");
    b
}

/// [`test_record`], compressed (record version 5) when compression makes it smaller.
#[cfg(test)]
pub(crate) fn test_record_compressed(received_at_ms: u64, events: Vec<sluice_wire::EventRecord>) -> Vec<u8> {
    let mut b = Vec::new();
    sluice_wire::record::encode_record_compressed(&test_batch(received_at_ms, events), 1, &mut b)
        .expect("a test record encodes");
    b
}

#[cfg(test)]
fn test_batch(received_at_ms: u64, events: Vec<sluice_wire::EventRecord>) -> sluice_wire::BatchRecord {
    sluice_wire::BatchRecord {
        batch_id: sluice_wire::ids::new_batch_id(),
        tenant: "t".into(),
        env: "e".into(),
        region: "r".into(),
        received_at_ms,
        stream: sluice_wire::Stream::Events,
        events,
        traceparent: None,
        shared: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pad: usize) -> Vec<u8> {
        test_record(1, vec![sluice_wire::EventRecord { event_id: "e".into(), json: vec![b' '; pad] }])
    }

    /// A read is sized by what its records hold decompressed: a frame of compressed records
    /// carries as many events as a frame of plain ones (core's time per frame follows events).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_sized_by_decompressed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, reader) = Wal::open(&WalConfig { dir: dir.path().join("wal"), ..WalConfig::default() }).unwrap();
        let event = || sluice_wire::EventRecord { event_id: "e".into(), json: vec![b'x'; 4000] };
        let (plain, packed) = (test_record(1, vec![event()]), test_record_compressed(1, vec![event()]));
        assert!(packed.len() * 20 < plain.len());
        for _ in 0..20 {
            wal.append(packed.clone()).await.unwrap();
        }
        // Three records' worth of decompressed bytes: three records, not the whole WAL.
        let want = 3 * sluice_wire::record::decoded_len(&packed);
        match reader.read(reader.acked(), want).unwrap() {
            ReadOutcome::Records { count, data, .. } => assert_eq!((count, data.len()), (3, 3 * packed.len())),
            other => panic!("{other:?}"),
        }
    }

    /// Segments prepared ahead by the background thread. The first segment after a start grows,
    /// and gives way to a prepared one once the thread has one ready; the one being written is
    /// full length (zeros after its records), every finished one ends at its last record, the
    /// writer cuts the last one when it stops, and everything reads back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_segments_are_cut_to_their_records_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let segment_bytes = 256 * 1024;
        let config = WalConfig { dir: wal_dir.clone(), segment_bytes, ..WalConfig::default() };
        let len = |seq| std::fs::metadata(segment::segment_path(&wal_dir, seq)).map(|m| m.len()).unwrap();
        let (wal, reader) = Wal::open(&config).unwrap();
        let rec = record(3000);
        let mut appended = 0usize;
        // Appends, one at a time, until the writer is in a segment other than `from`: returns
        // where the segment it left ended.
        let mut until_next = async |from: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut end = wal.committed();
            while wal.committed().segment == from {
                assert!(std::time::Instant::now() < deadline, "still in segment {from}");
                end = wal.committed();
                wal.append(rec.clone()).await.unwrap();
                appended += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            end
        };
        let first = until_next(1).await;
        assert!(first.offset < segment_bytes, "left before it was full, for the prepared one");
        assert_eq!(len(1), first.offset, "a growing segment is as long as its records");
        let second = wal.committed().segment;
        assert_eq!(len(second), segment_bytes, "the segment being written was prepared");
        let end = until_next(second).await;
        assert_eq!(len(second), end.offset, "a prepared segment is cut to its records when finished");
        assert!(end.offset + rec.len() as u64 > segment_bytes, "it was filled");
        let last = wal.committed();
        drop((wal, reader));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while len(last.segment) != last.offset {
            assert!(std::time::Instant::now() < deadline, "the stopped writer did not cut its segment");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (_wal, reader) = Wal::open(&config).unwrap();
        let mut at = reader.acked();
        let mut count = 0u32;
        loop {
            match reader.read(at, 1 << 20).unwrap() {
                ReadOutcome::Records { segment, end, count: n, .. } => {
                    count += n;
                    at = Position { segment, offset: end };
                }
                ReadOutcome::NextSegment(next) => at = next,
                ReadOutcome::UpToDate => break,
                ReadOutcome::Corrupt { segment, offset, .. } => panic!("corrupt at {segment}:{offset}"),
            }
        }
        assert_eq!(count as usize, appended);
    }

    /// Regression: with segments larger than the budget, acked bytes in the segment being written
    /// were never freed, so an edge that filled its budget while core was away answered 503 forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_budget_is_freed_once_core_acks() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { dir: dir.path().join("wal"), budget_bytes: 64 * 1024, ..WalConfig::default() };
        let (wal, mut reader) = Wal::open(&config).unwrap();
        let rec = record(2000);
        let mut n = 0;
        while wal.append(rec.clone()).await.is_ok() {
            n += 1;
            assert!(n < 10_000, "the budget never filled");
        }
        assert!(matches!(wal.append(rec.clone()).await, Err(WalError::Full { .. })));
        // Core acks everything committed.
        let mut at = reader.acked();
        loop {
            match reader.read(at, 1 << 20).unwrap() {
                ReadOutcome::Records { segment, end, .. } => at = Position { segment, offset: end },
                ReadOutcome::NextSegment(next) => at = next,
                ReadOutcome::UpToDate => break,
                ReadOutcome::Corrupt { .. } => panic!("corrupt"),
            }
            tokio::task::block_in_place(|| reader.ack(at)).unwrap();
        }
        assert!(wal.append(rec).await.is_ok(), "the budget is usable again once core acked everything");
    }

    /// Regression: on a full disk the watermark could not be written, `ack` failed before it
    /// deleted anything, and the forwarder stopped for good; nothing more was forwarded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ack_frees_segments_even_when_the_watermark_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let config = WalConfig { dir: wal_dir.clone(), segment_bytes: 16 * 1024, ..WalConfig::default() };
        let (wal, mut reader) = Wal::open(&config).unwrap();
        for _ in 0..20 {
            wal.append(record(2000)).await.unwrap();
        }
        let before = wal.live_bytes();
        // The watermark's temp file cannot be created (stands in for ENOSPC).
        std::fs::create_dir(wal_dir.join("ack.watermark.tmp")).unwrap();
        let to = wal.committed();
        tokio::task::block_in_place(|| reader.ack(to)).unwrap();
        assert_eq!(reader.acked(), to);
        assert!(wal.live_bytes() < before, "acked segments were deleted");
    }

    /// Regression: when the disk filled up halfway through a group commit, the whole records
    /// at the start of the failed write stayed in the segment; every append of the group was
    /// answered with an error (503), yet recovery after a restart found those records valid and
    /// forwarded them. Needs a small tmpfs; skipped where `mount` is not permitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_appends_are_not_resurrected_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here; skipped");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let config = WalConfig { dir: mnt.join("wal"), ..WalConfig::default() };
        let mut acked = 0usize;
        {
            let (wal, _reader) = Wal::open(&config).unwrap();
            // Many appends at once, so the group that hits ENOSPC holds several records.
            'fill: for _ in 0..50 {
                let results = futures::future::join_all((0..12).map(|_| wal.append(record(1500)))).await;
                for r in results {
                    match r {
                        Ok(()) => acked += 1,
                        Err(_) => break 'fill,
                    }
                }
            }
        }
        // Restart: recovery must find exactly the acknowledged records.
        let (_wal, reader) = Wal::open(&config).unwrap();
        let (mut at, mut recovered) = (reader.acked(), 0u32);
        loop {
            match reader.read(at, 1 << 20).unwrap() {
                ReadOutcome::Records { segment, end, count, .. } => {
                    recovered += count;
                    at = Position { segment, offset: end };
                }
                ReadOutcome::NextSegment(next) => at = next,
                ReadOutcome::UpToDate => break,
                ReadOutcome::Corrupt { .. } => panic!("corrupt"),
            }
        }
        eprintln!("acked {acked}, recovered {recovered}");
        assert!(acked > 0);
        assert_eq!(recovered as usize, acked, "recovery forwards only what was acknowledged");
    }

    /// Replicas that answer from a script: records every position handed to them.
    struct ScriptedReplicas {
        answers: std::sync::Mutex<Vec<Result<(), String>>>,
        seen: std::sync::Mutex<Vec<Position>>,
    }

    impl Replicate for ScriptedReplicas {
        fn begin(&self, at: Position, _bytes: &[u8]) -> Box<dyn PendingReplicas> {
            self.seen.lock().unwrap().push(at);
            Box::new(Answered(self.answers.lock().unwrap().remove(0)))
        }
    }

    struct Answered(Result<(), String>);

    impl PendingReplicas for Answered {
        fn wait(self: Box<Self>) -> Result<(), String> {
            self.0
        }
    }

    /// A group the replicas did not acknowledge is refused, and cut out of the local WAL so it is
    /// never forwarded; the WAL stays usable (no fsyncgate latch) and the next group takes its
    /// place, at the same position on the replicas too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_without_replica_acks_is_refused_and_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { dir: dir.path().join("wal"), ..WalConfig::default() };
        let replicas = Arc::new(ScriptedReplicas {
            answers: std::sync::Mutex::new(vec![Ok(()), Err("0 of 1 replica acks".into()), Ok(())]),
            seen: std::sync::Mutex::new(Vec::new()),
        });
        let (wal, reader) = Wal::open_replicated(&config, Some(replicas.clone())).unwrap();
        let (a, b, c) = (record(10), record(20), record(30));
        wal.append(a.clone()).await.unwrap();
        assert!(matches!(wal.append(b).await, Err(WalError::Unreplicated(_))));
        wal.append(c.clone()).await.unwrap();
        let seen = replicas.seen.lock().unwrap().clone();
        assert_eq!(seen[1], seen[2], "the next group is replicated where the refused one was");
        match reader.read(reader.acked(), 1 << 20).unwrap() {
            ReadOutcome::Records { data, count, .. } => {
                assert_eq!(count, 2);
                assert_eq!(data, [a, c].concat(), "the refused group is not in the WAL");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Regression: quarantining the segment the writer was still appending to renamed the file
    /// under the writer, so every later acknowledged append went into a file nobody forwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quarantining_the_active_segment_moves_the_writer_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { dir: dir.path().join("wal"), ..WalConfig::default() };
        let (wal, mut reader) = Wal::open(&config).unwrap();
        wal.append(record(1)).await.unwrap();
        let active = wal.committed().segment;
        let next = tokio::task::block_in_place(|| reader.quarantine(active)).unwrap();
        assert_eq!(next, Position { segment: active + 1, offset: 0 });
        wal.append(record(2)).await.unwrap();
        assert_eq!(wal.committed().segment, active + 1, "the append after the quarantine is in a new segment");
        match reader.read(reader.acked(), 1 << 20).unwrap() {
            ReadOutcome::Records { segment, count, .. } => assert_eq!((segment, count), (active + 1, 1)),
            other => panic!("the record appended after the quarantine is not readable: {other:?}"),
        }
        let quarantined = sluice_wire::wal_files::quarantined_file_name(active);
        assert!(dir.path().join("wal").join(quarantined).exists());
    }
}
