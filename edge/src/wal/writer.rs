//! The group-commit writer thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use tokio::sync::watch;

use super::prealloc::{self, Preallocator};
use super::segment::create_segment;
use super::storage::{Storage, StorageFile};
use super::{Append, Position, Replicate, Request, Shared, WalError};
use crate::config::WalConfig;

pub(super) struct Writer {
    storage: Arc<dyn Storage>,
    dir: std::path::PathBuf,
    segment_bytes: u64,
    max_group_bytes: usize,
    file: Box<dyn StorageFile>,
    /// `file` was prepared ahead: zeros follow its records until it is sealed.
    prepared: bool,
    prealloc: Preallocator,
    pos: Position,
    shared: Arc<Shared>,
    committed: watch::Sender<Position>,
    buf: Vec<u8>,
    replicate: Option<Arc<dyn Replicate>>,
}

/// Why a group commit failed: the local disk (latches the WAL failed, fsyncgate) or the replicas
/// (the local WAL is fine; only this group is refused).
enum CommitError {
    Io(std::io::Error),
    Unreplicated(String),
}

impl From<std::io::Error> for CommitError {
    fn from(e: std::io::Error) -> Self {
        CommitError::Io(e)
    }
}

impl Writer {
    pub fn create(
        config: &WalConfig,
        storage: Arc<dyn Storage>,
        seq: u64,
        shared: Arc<Shared>,
        committed: watch::Sender<Position>,
        replicate: Option<Arc<dyn Replicate>>,
    ) -> std::io::Result<Self> {
        let mut prealloc =
            Preallocator::new(config.preallocate, storage.clone(), config.dir.clone(), config.segment_bytes)?;
        let (file, prepared) = start_segment(&mut prealloc, &*storage, &config.dir, seq)?;
        if !prepared {
            prealloc.want_next();
        }
        Ok(Self {
            storage,
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            max_group_bytes: config.max_group_bytes,
            file,
            prepared,
            prealloc,
            pos: Position { segment: seq, offset: 0 },
            shared,
            committed,
            buf: Vec::with_capacity(config.max_group_bytes),
            replicate,
        })
    }

    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut group = Vec::new();
        let mut held: Option<Request> = None;
        loop {
            let first = match held.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let first = match first {
                Request::Append(a) => a,
                Request::Rotate { segment, done } => {
                    let _ = done.send(self.rotate(segment));
                    continue;
                }
            };
            let mut bytes = first.bytes.len();
            group.push(first);
            while bytes < self.max_group_bytes {
                match rx.try_recv() {
                    Ok(Request::Append(next)) => {
                        bytes += next.bytes.len();
                        group.push(next);
                    }
                    // Commit what came before the rotation first, in the old segment.
                    Ok(rotate) => {
                        held = Some(rotate);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&group);
            for append in group.drain(..) {
                let _ = append.done.send(result.clone());
            }
        }
        if let Err(e) = self.seal() {
            tracing::warn!(error = %e, segment = self.pos.segment, "wal: could not cut the last segment to its records; the next start does");
        }
        tracing::info!("wal: writer stopped");
    }

    /// Continues in segment `pos.segment + 1`, after the current one is cut to its records.
    fn next_segment(&mut self) -> std::io::Result<()> {
        self.seal()?;
        let next = self.pos.segment + 1;
        (self.file, self.prepared) = start_segment(&mut self.prealloc, &*self.storage, &self.dir, next)?;
        self.pos = Position { segment: next, offset: 0 };
        Ok(())
    }

    fn seal(&mut self) -> std::io::Result<()> {
        if self.prepared {
            prealloc::seal(&mut *self.file, self.pos.offset)?;
            self.prepared = false;
        }
        Ok(())
    }

    /// Moves to a new segment if `segment` is still the one being written; returns the segment
    /// being written afterwards. Publishes the new position so the reader sees the old segment
    /// as finished.
    fn rotate(&mut self, segment: u64) -> std::io::Result<u64> {
        if self.pos.segment <= segment {
            self.next_segment()?;
            self.committed.send_replace(self.pos);
            tracing::warn!(closed = segment, segment = self.pos.segment, "wal: segment closed early on request");
        }
        Ok(self.pos.segment)
    }

    fn commit(&mut self, group: &[Append]) -> Result<(), WalError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(WalError::Failed("a previous write or fsync failed".into()));
        }
        let error = match self.write_and_sync(group) {
            Ok(()) => return Ok(()),
            Err(CommitError::Io(e)) => {
                self.shared.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, segment = self.pos.segment, "wal: I/O error, refusing appends until restart");
                WalError::Failed(e.to_string())
            }
            Err(CommitError::Unreplicated(reason)) => {
                tracing::warn!(reason = %reason, segment = self.pos.segment, offset = self.pos.offset,
                    "wal: group not replicated; refused");
                WalError::Unreplicated(reason)
            }
        };
        // Every append of this group is answered with an error. The bytes may be whole records
        // on disk (a partial write on ENOSPC; a fully synced group the replicas did not ack),
        // which recovery would find valid after a restart and forward: events the client was
        // told were not stored, and will resend. Cut the segment back to the last committed byte.
        let undo = self.file.set_len(self.pos.offset).and_then(|()| self.file.sync_data());
        // Cut back, a prepared file has lost its zeros, and grows from here like any other.
        self.prepared = false;
        if let Err(undo) = undo {
            self.shared.failed.store(true, Ordering::Release);
            tracing::error!(error = %undo, segment = self.pos.segment, offset = self.pos.offset,
                "wal: could not cut back the failed write; recovery may forward records that were refused");
        }
        Err(error)
    }

    /// Writes the group, ships it to the replicas meanwhile, and syncs: the group is committed
    /// once the local `fdatasync` and the replicas' acks are both in (one round trip per group).
    fn write_and_sync(&mut self, group: &[Append]) -> Result<(), CommitError> {
        self.buf.clear();
        for append in group {
            self.buf.extend_from_slice(&append.bytes);
        }
        let len = self.buf.len() as u64;
        // A growing segment (the first after a start, or a rotation that found nothing prepared)
        // gives way to a prepared one as soon as there is one.
        let leave_growing = !self.prepared && self.prealloc.ready();
        if self.pos.offset > 0 && (self.pos.offset + len > self.segment_bytes || leave_growing) {
            self.next_segment()?;
        }
        let replicas = self.replicate.as_ref().map(|r| r.begin(self.pos, &self.buf));
        self.file.write_at(&self.buf, self.pos.offset)?;
        let started = Instant::now();
        self.file.sync_data()?;
        let sync_time = started.elapsed();
        if let Some(pending) = replicas {
            pending.wait().map_err(CommitError::Unreplicated)?;
        }
        let stats = &self.shared.stats;
        stats.sync_latency.observe(sync_time.as_secs_f64());
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(group.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(len, Ordering::Relaxed);
        self.shared.disk_bytes.fetch_add(len, Ordering::Relaxed);
        self.pos.offset += len;
        self.committed.send_replace(self.pos);
        if !self.prepared || self.pos.offset >= self.segment_bytes / 2 {
            self.prealloc.want_next();
        }
        Ok(())
    }
}

/// Opens segment `seq`, prepared ahead when there is such a file; `true` if it was.
fn start_segment(
    prealloc: &mut Preallocator,
    storage: &dyn Storage,
    dir: &std::path::Path,
    seq: u64,
) -> std::io::Result<(Box<dyn StorageFile>, bool)> {
    Ok(match prealloc.take(storage, dir, seq)? {
        Some(file) => (file, true),
        None => (create_segment(storage, dir, seq)?, false),
    })
}
