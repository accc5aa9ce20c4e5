//! Tailing committed WAL data for the forwarder, and trimming what core has acknowledged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_wire::record::{HEADER_LEN, RecordError, check_record, decoded_len};
use tokio::sync::watch;

use super::segment::{delete_segment, list_segments, quarantine, segment_path};
use super::storage::Storage;
use super::{Position, Request, Shared, watermark};

#[derive(Debug)]
pub enum ReadOutcome {
    /// Whole records `[start, end)` of `segment`.
    Records { segment: u64, start: u64, end: u64, data: Vec<u8>, count: u32 },
    /// `from` is the end of a finished segment; continue at this position.
    NextSegment(Position),
    /// Nothing committed after `from` yet.
    UpToDate,
    /// A committed record failed its checksum: bit rot or an outside writer.
    Corrupt { segment: u64, offset: u64, error: RecordError },
}

pub struct WalReader {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    committed: watch::Receiver<Position>,
    acked: Position,
    shared: Arc<Shared>,
    writer: std::sync::mpsc::Sender<Request>,
}

impl WalReader {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        committed: watch::Receiver<Position>,
        acked: Position,
        shared: Arc<Shared>,
        writer: std::sync::mpsc::Sender<Request>,
    ) -> Self {
        Self { storage, dir, committed, acked, shared, writer }
    }

    /// Position up to which core has acknowledged; forwarding (re)starts here (DESIGN rule 5).
    pub fn acked(&self) -> Position {
        self.acked
    }

    pub fn committed(&self) -> Position {
        *self.committed.borrow()
    }

    /// Waits until data past `from` is committed. Returns `false` if the WAL writer is gone.
    pub async fn wait_past(&mut self, from: Position) -> bool {
        self.committed.wait_for(|c| *c > from).await.is_ok()
    }

    /// Reads whole committed records starting at `from`, about `max_bytes` of them decompressed
    /// (at least one): a frame of compressed records carries as many events as one of plain
    /// records, [`decoded_len`].
    pub fn read(&self, from: Position, max_bytes: usize) -> io::Result<ReadOutcome> {
        let committed = self.committed();
        if from >= committed {
            return Ok(ReadOutcome::UpToDate);
        }
        let file = match self.storage.open(&segment_path(&self.dir, from.segment)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.next_segment(from, committed);
            }
            Err(e) => return Err(e),
        };
        let limit = if from.segment == committed.segment { committed.offset } else { file.size()? };
        if from.offset >= limit {
            return self.next_segment(from, committed);
        }
        let available = (limit - from.offset) as usize;
        let mut data = vec![0u8; available.min(max_bytes.max(HEADER_LEN))];
        file.read_at(&mut data, from.offset)?;
        let mut used = 0usize;
        let mut decoded = 0usize;
        let mut count = 0u32;
        loop {
            match check_record(&data[used..]) {
                Ok(Some(len)) => {
                    decoded += decoded_len(&data[used..used + len]);
                    used += len;
                    count += 1;
                    if decoded >= max_bytes {
                        break;
                    }
                }
                Ok(None) if count == 0 => {
                    // The first record is larger than `max_bytes`: read exactly that record.
                    let len = HEADER_LEN + u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                    if len > available {
                        return Ok(corrupt(from, RecordError::Incomplete));
                    }
                    data.resize(len, 0);
                    file.read_at(&mut data, from.offset)?;
                }
                Ok(None) => break,
                Err(error) => {
                    if count == 0 {
                        return Ok(corrupt(from, error));
                    }
                    break;
                }
            }
            if used == data.len() {
                break;
            }
        }
        data.truncate(used);
        Ok(ReadOutcome::Records {
            segment: from.segment,
            start: from.offset,
            end: from.offset + used as u64,
            data,
            count,
        })
    }

    fn next_segment(&self, from: Position, committed: Position) -> io::Result<ReadOutcome> {
        let next = list_segments(&*self.storage, &self.dir)?
            .into_iter()
            .map(|(seq, _)| seq)
            .find(|&seq| seq > from.segment)
            .unwrap_or(committed.segment)
            .max(from.segment + 1);
        Ok(ReadOutcome::NextSegment(Position { segment: next, offset: 0 }))
    }

    /// Records that core acknowledged everything before `to`: deletes segments that lie wholly
    /// before it, then persists the watermark.
    ///
    /// Deleting first is safe (those bytes are acked) and frees space before the watermark needs
    /// any: on a full disk the watermark cannot be written until a segment is gone. A watermark
    /// that cannot be written is not fatal either: the in-memory position (what core acked) moves
    /// on and the store is retried on the next ack; a crash meanwhile only resends frames that
    /// core's dedupe drops.
    pub fn ack(&mut self, to: Position) -> io::Result<()> {
        if to <= self.acked {
            return Ok(());
        }
        trim(&*self.storage, &self.dir, to, &self.shared)?;
        self.acked = to;
        self.shared.acked.send_replace(to);
        Ok(())
    }

    /// Takes a segment with a corrupt committed record out of service and moves past it. The
    /// records after the corruption are kept in the quarantined file for `sluicectl wal`.
    ///
    /// If `segment` is the one the writer is appending to, the writer first moves to a new
    /// segment: renaming the file under it would send every later `202`'d append into a file that
    /// is never forwarded.
    pub fn quarantine(&mut self, segment: u64) -> io::Result<Position> {
        if segment >= self.committed().segment {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            // A writer that is gone appends nothing more, so renaming is safe then too.
            if self.writer.send(Request::Rotate { segment, done }).is_ok()
                && let Ok(result) = wait.recv()
            {
                result?;
            }
        }
        let len = list_segments(&*self.storage, &self.dir)?.into_iter().find(|&(s, _)| s == segment).map_or(0, |s| s.1);
        let path = quarantine(&*self.storage, &self.dir, segment)?;
        self.shared.disk_bytes.fetch_sub(len.min(self.shared.disk_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        tracing::error!(segment, path = %path.display(), "wal: corrupt segment quarantined; its remaining records need operator recovery");
        let next = Position { segment: segment + 1, offset: 0 };
        self.ack(next)?;
        Ok(next)
    }
}

/// Deletes the segments of `dir` wholly before `to`, then stores `to` as the ack watermark (see
/// [`WalReader::ack`] for why in that order, and why a failed store is only a warning).
pub(super) fn trim(storage: &dyn Storage, dir: &Path, to: Position, shared: &Shared) -> io::Result<()> {
    let mut deleted = false;
    for (seq, len) in list_segments(storage, dir)? {
        if seq >= to.segment {
            break;
        }
        delete_segment(storage, dir, seq)?;
        shared.disk_bytes.fetch_sub(len.min(shared.disk_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        deleted = true;
    }
    if deleted {
        storage.sync_dir(dir)?;
    }
    if let Err(e) = watermark::store(storage, dir, to) {
        tracing::warn!(error = %e, dir = %dir.display(), segment = to.segment, offset = to.offset,
            "wal: ack watermark not persisted; will retry on the next ack (a crash now only causes resends)");
    }
    Ok(())
}

fn corrupt(at: Position, error: RecordError) -> ReadOutcome {
    ReadOutcome::Corrupt { segment: at.segment, offset: at.offset, error }
}
