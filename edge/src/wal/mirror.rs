//! A replica's copy of a peer's ("origin's") WAL: the same segment files at the same positions,
//! written by the replication server, trimmed by the origin's ack watermark, and read by a
//! [`WalReader`] when the replica forwards the origin's records itself (takeover).
//!
//! Positions are the origin's: the bytes of a group that sits at `(segment, offset)` in the
//! origin's WAL are written at `(segment, offset)` here, so the origin's watermark applies as is
//! and a takeover resends exactly what the origin had not got acknowledged by core.
//!
//! Append rules ([`rules`], pure; the origin's view is the truth; the origin sends one message at
//! a time):
//! - at the end of the copy: append, `fdatasync`, ack;
//! - before the end: the bytes after `offset` were never acknowledged by the origin (it refused
//!   that group and cut its own WAL back), so they are cut and overwritten;
//! - after the end, or in a segment that starts past 0: [`MirrorAppend::Behind`] with where the
//!   copy ends, and the origin sends the missing bytes first (of every segment in between);
//! - in a segment older than the last one: refused (the origin never goes back).
//!
//! After a failed write or sync the copy refuses every append until the process restarts
//! (fsyncgate, as for the WAL itself).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_wire::wal_files::{SegmentState, parse_segment_file_name};
use tokio::sync::watch;

use self::rules::Placement;
use super::reader::{WalReader, trim};
use super::segment::{create_segment, list_segments, remove_leftovers, segment_path};
use super::storage::{FileStorage, Storage, StorageFile};
use super::{Position, Shared, recover_tail, watermark};

pub(crate) mod rules;

/// A copy's disk bytes, see [`Mirror::usage`].
#[derive(Clone)]
pub struct Usage(Arc<Shared>);

impl Usage {
    pub fn bytes(&self) -> u64 {
        self.0.disk_bytes.load(Ordering::Relaxed)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum MirrorAppend {
    /// Durable here.
    Stored,
    /// The copy ends at `have` in `segment` (its last); send the bytes from there first.
    Behind { segment: u64, have: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("replica I/O: {0}")]
    Io(#[from] io::Error),
    #[error("append to segment {segment}, but this replica is already at segment {last}")]
    Stale { segment: u64, last: u64 },
    #[error("this replica failed an earlier write or sync and refuses appends until restarted")]
    Failed,
}

pub struct Mirror {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// End of the durable bytes of the last segment (segment 0: no segment yet).
    end: Position,
    file: Option<Box<dyn StorageFile>>,
    committed: watch::Sender<Position>,
    acked: Position,
    failed: bool,
    shared: Arc<Shared>,
}

impl Mirror {
    /// Opens (creating if needed) the copy in `dir`, cutting a torn tail of its last segment.
    pub fn open(dir: &Path) -> io::Result<Mirror> {
        Self::open_on(Arc::new(FileStorage), dir)
    }

    /// [`Mirror::open`] on `storage`.
    pub fn open_on(storage: Arc<dyn Storage>, dir: &Path) -> io::Result<Mirror> {
        let s = &*storage;
        s.create_dir_all(dir)?;
        remove_leftovers(s, dir)?;
        let segments = list_segments(s, dir)?;
        let end = match segments.last() {
            Some(&(seq, _)) => Position { segment: seq, offset: recover_tail(s, dir, seq)?.valid_bytes },
            None => Position::default(),
        };
        let acked = watermark::load(s, dir)?.unwrap_or_default();
        let disk: u64 = list_segments(s, dir)?.iter().map(|&(_, len)| len).sum();
        Ok(Mirror {
            storage,
            dir: dir.to_path_buf(),
            end,
            file: None,
            committed: watch::channel(end).0,
            acked,
            failed: false,
            shared: Arc::new(Shared::new(disk, acked)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// End of the durable copy.
    pub fn end(&self) -> Position {
        self.end
    }

    /// Bytes of the copy's segment files, kept current by appends and by trims (the origin's
    /// heartbeats, or a takeover forwarder's), readable without the copy's lock.
    pub(crate) fn usage(&self) -> Usage {
        Usage(self.shared.clone())
    }

    /// Writes the origin's bytes that sit at `(segment, offset)` and syncs them, where
    /// [`rules::place`] says.
    pub fn append(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> Result<MirrorAppend, MirrorError> {
        if self.failed {
            return Err(MirrorError::Failed);
        }
        let cut = match rules::place(self.end, segment, offset) {
            Placement::Stale { segment, last } => return Err(MirrorError::Stale { segment, last }),
            Placement::Behind { segment, have } => return Ok(MirrorAppend::Behind { segment, have }),
            Placement::NewSegment => {
                self.file =
                    Some(create_segment(&*self.storage, &self.dir, segment).inspect_err(|_| self.failed = true)?);
                self.end = Position { segment, offset: 0 };
                false
            }
            Placement::Write { cut } => cut,
        };
        let result = self.write_at(offset, cut, bytes);
        if result.is_err() {
            self.failed = true;
        }
        result?;
        // The segment's length goes from `end.offset` to `offset + len` (less, after a cut).
        let (before, after) = (self.end.offset, offset + bytes.len() as u64);
        if after >= before {
            self.shared.disk_bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            let cut = (before - after).min(self.shared.disk_bytes.load(Ordering::Relaxed));
            self.shared.disk_bytes.fetch_sub(cut, Ordering::Relaxed);
        }
        self.end = Position { segment, offset: after };
        self.committed.send_replace(self.end);
        Ok(MirrorAppend::Stored)
    }

    fn write_at(&mut self, offset: u64, cut: bool, bytes: &[u8]) -> io::Result<()> {
        let mut file = match self.file.take() {
            Some(f) => f,
            None => self.storage.open(&segment_path(&self.dir, self.end.segment))?,
        };
        if cut {
            file.set_len(offset)?;
        }
        file.write_at(bytes, offset)?;
        file.sync_data()?;
        self.file = Some(file);
        Ok(())
    }

    /// The origin's forwarder has everything before `acked` acknowledged by core: delete the
    /// segments wholly before it and store it as this copy's watermark.
    pub fn trim(&mut self, acked: Position) -> io::Result<()> {
        if acked <= self.acked {
            return Ok(());
        }
        trim(&*self.storage, &self.dir, acked, &self.shared)?;
        self.acked = acked;
        Ok(())
    }

    /// Re-reads the watermark after a takeover forwarder moved it.
    pub fn reload_acked(&mut self) -> io::Result<()> {
        self.acked = self.acked.max(watermark::load(&*self.storage, &self.dir)?.unwrap_or_default());
        Ok(())
    }

    /// Whether core has acknowledged every record of the copy (per the stored watermark).
    pub fn drained(&self) -> io::Result<bool> {
        let acked = watermark::load(&*self.storage, &self.dir)?.unwrap_or_default().max(self.acked);
        Ok(acked >= self.end || list_segments(&*self.storage, &self.dir)?.is_empty())
    }

    /// Whether a takeover quarantined a segment of the copy (kept for an operator).
    pub fn has_quarantined(&self) -> bool {
        self.storage.list(&self.dir).into_iter().flatten().any(|(name, _)| {
            parse_segment_file_name(&name).is_some_and(|(_, state)| state == SegmentState::Quarantined)
        })
    }

    /// A reader over the copy for a takeover forwarder, starting at the stored watermark.
    pub fn reader(&self) -> io::Result<WalReader> {
        let acked = watermark::load(&*self.storage, &self.dir)?.unwrap_or_default().max(self.acked);
        let first = list_segments(&*self.storage, &self.dir)?
            .first()
            .map_or(self.end, |&(seq, _)| Position { segment: seq, offset: 0 });
        // No writer thread: a quarantine of the last segment renames it directly, and the next
        // append from the origin then starts that segment afresh (or is told it is behind).
        let (writer, _) = std::sync::mpsc::channel();
        Ok(WalReader::new(
            self.storage.clone(),
            self.dir.clone(),
            self.committed.subscribe(),
            acked.max(first),
            self.shared.clone(),
            writer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::ReadOutcome;

    fn record(tag: u8) -> Vec<u8> {
        crate::wal::test_record(1, vec![sluice_wire::EventRecord { event_id: tag.to_string(), json: vec![tag; 40] }])
    }

    #[test]
    fn appends_at_the_origins_positions_and_reports_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let (a, b, c) = (record(1), record(2), record(3));
        assert_eq!(m.append(3, 0, &a).unwrap(), MirrorAppend::Stored);
        let at_b = a.len() as u64;
        // A gap: the replica missed a group.
        assert_eq!(m.append(3, at_b + 10, &c).unwrap(), MirrorAppend::Behind { segment: 3, have: at_b });
        // A new segment that does not start at 0: the copy's end is in the one before.
        assert_eq!(m.append(4, 5, &c).unwrap(), MirrorAppend::Behind { segment: 3, have: at_b });
        assert_eq!(m.append(3, at_b, &b).unwrap(), MirrorAppend::Stored);
        assert_eq!(std::fs::read(segment_path(dir.path(), 3)).unwrap(), [a.clone(), b.clone()].concat());
        // A group the origin refused and cut back is overwritten by the next one at its offset.
        assert_eq!(m.append(3, at_b, &c).unwrap(), MirrorAppend::Stored);
        assert_eq!(std::fs::read(segment_path(dir.path(), 3)).unwrap(), [a.clone(), c.clone()].concat());
        assert_eq!(m.append(5, 0, &a).unwrap(), MirrorAppend::Stored);
        assert!(matches!(m.append(4, 0, &a), Err(MirrorError::Stale { segment: 4, last: 5 })));
        // Usage follows the files, cuts included.
        let on_disk = |d: &Path| list_segments(&FileStorage, d).unwrap().iter().map(|&(_, len)| len).sum::<u64>();
        assert_eq!(m.usage().bytes(), on_disk(dir.path()));
        // Reopening finds the same end and usage.
        let end = m.end();
        drop(m);
        let m = Mirror::open(dir.path()).unwrap();
        assert_eq!((m.end(), m.usage().bytes()), (end, on_disk(dir.path())));
    }

    #[test]
    fn trim_deletes_acked_segments_and_the_reader_starts_at_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let (a, b) = (record(1), record(2));
        m.append(1, 0, &a).unwrap();
        m.append(2, 0, &a).unwrap();
        m.append(2, a.len() as u64, &b).unwrap();
        assert!(!m.drained().unwrap());
        let usage = m.usage();
        assert_eq!(usage.bytes(), 2 * a.len() as u64 + b.len() as u64);
        m.trim(Position { segment: 2, offset: a.len() as u64 }).unwrap();
        assert!(!segment_path(dir.path(), 1).exists());
        assert_eq!(usage.bytes(), a.len() as u64 + b.len() as u64, "a trim frees segment 1's bytes");
        let reader = m.reader().unwrap();
        match reader.read(reader.acked(), 1 << 20).unwrap() {
            ReadOutcome::Records { segment: 2, start, count: 1, data, .. } => {
                assert_eq!(start, a.len() as u64);
                assert_eq!(data, b);
            }
            other => panic!("expected the one unacked record, got {other:?}"),
        }
        m.trim(m.end()).unwrap();
        assert!(m.drained().unwrap());
    }
}
