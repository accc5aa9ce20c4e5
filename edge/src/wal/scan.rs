//! Reading a WAL directory from outside the writer: the admin status (depth, oldest unacked
//! record) and the operator tools (`sluicectl wal ls|inspect|verify|dump`, `sluicectl replay`),
//! which also work on a directory copied off a dead node.
//!
//! Records are framed and decoded only by `sluice_wire::record`; this module only walks files.
//! Nothing here writes: a scan of a live WAL sees at most a torn tail that the writer is still
//! appending to, and reports it as such.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluice_wire::BatchRecord;
use sluice_wire::record::{HEADER_LEN, RecordError, check_record, claimed_len, decode_record};
use sluice_wire::wal_files::{SegmentState, parse_segment_file_name};

use super::{Position, watermark};

/// One segment file of a WAL directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub seq: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// Renamed to `*.corrupt` by the forwarder after a checksum failure; never forwarded again.
    pub quarantined: bool,
}

/// Every segment file, live and quarantined, sorted by sequence number.
pub fn segment_files(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some((seq, state)) = entry.file_name().to_str().and_then(parse_segment_file_name) else { continue };
        let quarantined = state == SegmentState::Quarantined;
        out.push(SegmentFile { seq, bytes: entry.metadata()?.len(), path: entry.path(), quarantined });
    }
    out.sort_by_key(|s| (s.seq, s.quarantined));
    Ok(out)
}

/// The durable ack watermark of a WAL directory; `None` if core never acked anything.
pub fn acked_watermark(dir: &Path) -> io::Result<Option<Position>> {
    watermark::load(&super::storage::FileStorage, dir)
}

/// What a scan finds at one place in a segment.
#[derive(Debug)]
pub enum Item {
    Record {
        offset: u64,
        len: u64,
        record: BatchRecord,
    },
    /// Bytes at `offset` that are not a valid record. `skipped` bytes were passed over to the next
    /// valid record (or the end). `tail` means no valid record follows: in the last segment that is
    /// the torn tail of an append that was never acknowledged.
    Corrupt {
        offset: u64,
        skipped: u64,
        error: RecordError,
        tail: bool,
    },
}

/// Walks the records of one segment's bytes, resynchronising after damage so the records behind
/// a corrupt one are still found (salvage of quarantined segments).
pub struct Records<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, offset: 0 }
    }

    /// Starts at byte `offset` (a record boundary, e.g. the ack watermark).
    pub fn from(data: &'a [u8], offset: u64) -> Self {
        Self { data, offset: usize::try_from(offset).unwrap_or(usize::MAX).min(data.len()) }
    }

    /// The next offset at or after `from` where a whole, checksummed record starts.
    fn next_valid(&self, from: usize) -> Option<usize> {
        // The zeros after the last record of a segment prepared ahead hold none.
        if self.data.get(from..)?.iter().all(|&b| b == 0) {
            return None;
        }
        (from..self.data.len()).find(|&at| matches!(check_record(&self.data[at..]), Ok(Some(_))))
    }
}

impl Iterator for Records<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let at = self.offset;
        let rest = self.data.get(at..).filter(|rest| !rest.is_empty())?;
        // Zeros to the end are no damage: the room left in a segment prepared ahead (or a tail
        // whose data never reached the disk), where no record was ever acknowledged.
        if rest.iter().all(|&b| b == 0) {
            self.offset = self.data.len();
            return None;
        }
        let error = match check_record(rest) {
            Ok(Some(len)) => match decode_record(&rest[..len]) {
                Ok(record) => {
                    self.offset += len;
                    return Some(Item::Record { offset: at as u64, len: len as u64, record });
                }
                // Checksummed but undecodable: the framing is intact, skip exactly this record.
                Err(error) => {
                    self.offset += len;
                    let tail = self.next_valid(self.offset).is_none();
                    return Some(Item::Corrupt { offset: at as u64, skipped: len as u64, error, tail });
                }
            },
            Ok(None) => RecordError::Incomplete,
            Err(e) => e,
        };
        let resume = self.next_valid(at + 1);
        self.offset = resume.unwrap_or(self.data.len());
        Some(Item::Corrupt { offset: at as u64, skipped: (self.offset - at) as u64, error, tail: resume.is_none() })
    }
}

/// Bytes not yet acknowledged by core, from the live segment sizes (`(seq, len)`), the ack
/// watermark and the end of committed data (the segment being written counts up to `committed`).
pub fn unacked_bytes(segments: &[(u64, u64)], acked: Position, committed: Position) -> u64 {
    segments
        .iter()
        .filter(|&&(seq, _)| seq >= acked.segment && seq <= committed.segment)
        .map(|&(seq, len)| {
            let end = if seq == committed.segment { committed.offset.min(len) } else { len };
            let start = if seq == acked.segment { acked.offset } else { 0 };
            end.saturating_sub(start)
        })
        .sum()
}

/// Counts records in `[from, to)` by following their length headers (no checksums, no decoding:
/// cheap enough for a status request). Stops a segment at the first implausible header.
pub fn count_records(dir: &Path, segments: &[(u64, u64)], from: Position, to: Position) -> io::Result<u64> {
    let mut count = 0;
    for &(seq, len) in segments.iter().filter(|&&(seq, _)| seq >= from.segment && seq <= to.segment) {
        let end = if seq == to.segment { to.offset.min(len) } else { len };
        let mut at = if seq == from.segment { from.offset } else { 0 };
        let file = match File::open(super::segment_path(dir, seq)) {
            Ok(f) => f,
            // Deleted by an ack meanwhile: nothing of it is unacked any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut header = [0u8; HEADER_LEN];
        while at + HEADER_LEN as u64 <= end {
            file.read_exact_at(&mut header, at)?;
            let Ok(Some(total)) = claimed_len(&header) else { break };
            at += total as u64;
            if at > end {
                break;
            }
            count += 1;
        }
    }
    Ok(count)
}

/// The first record at or after `from` (skipping to the next live segment at a segment's end),
/// if it is before `to`: the oldest record core has not acknowledged.
pub fn record_at(dir: &Path, segments: &[(u64, u64)], from: Position, to: Position) -> io::Result<Option<BatchRecord>> {
    for &(seq, len) in segments.iter().filter(|&&(seq, _)| seq >= from.segment && seq <= to.segment) {
        let at = if seq == from.segment { from.offset } else { 0 };
        let end = if seq == to.segment { to.offset.min(len) } else { len };
        if at + HEADER_LEN as u64 > end {
            continue;
        }
        let file = match File::open(super::segment_path(dir, seq)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, at)?;
        let Ok(Some(total)) = claimed_len(&header) else { return Ok(None) };
        let total = total as u64;
        if at + total > end {
            return Ok(None);
        }
        let mut buf = vec![0u8; total as usize];
        file.read_exact_at(&mut buf, at)?;
        return Ok(decode_record(&buf).ok());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(received_at_ms: u64) -> Vec<u8> {
        crate::wal::test_record(received_at_ms, vec![])
    }

    #[test]
    fn records_resynchronise_after_damage_and_flag_the_tail() {
        let (a, mut b, c) = (rec(1), rec(2), rec(3));
        b[HEADER_LEN + 2] ^= 1;
        let data = [a.clone(), b.clone(), c.clone(), vec![0xab; 10]].concat();
        let items: Vec<Item> = Records::new(&data).collect();
        assert!(matches!(items[0], Item::Record { offset: 0, .. }));
        match &items[1] {
            Item::Corrupt { offset, skipped, error, tail } => {
                assert_eq!((*offset, *skipped, *tail), (a.len() as u64, b.len() as u64, false));
                assert!(matches!(error, RecordError::Checksum { .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&items[2], Item::Record { record, .. } if record.received_at_ms == 3));
        assert!(matches!(&items[3], Item::Corrupt { tail: true, skipped: 10, .. }));
        assert_eq!(items.len(), 4);
    }

    /// The room after the last record of a segment prepared ahead is not a torn tail.
    #[test]
    fn zeros_after_the_last_record_are_the_end() {
        let a = rec(1);
        let data = [a.clone(), vec![0u8; 64 * 1024]].concat();
        let items: Vec<Item> = Records::new(&data).collect();
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Item::Record { offset: 0, .. }));
        // Zeros before a record are still damage.
        let data = [vec![0u8; 16], a].concat();
        assert!(matches!(Records::new(&data).next(), Some(Item::Corrupt { offset: 0, skipped: 16, tail: false, .. })));
    }

    #[test]
    fn unacked_bytes_counts_from_the_watermark_to_the_committed_end() {
        let segs = [(1, 100), (2, 100), (3, 80)];
        let p = |segment, offset| Position { segment, offset };
        assert_eq!(unacked_bytes(&segs, p(1, 40), p(3, 50)), 60 + 100 + 50);
        assert_eq!(unacked_bytes(&segs, p(3, 50), p(3, 50)), 0);
        assert_eq!(unacked_bytes(&segs, p(2, 0), p(2, 100)), 100);
    }

    #[test]
    fn counts_and_finds_the_oldest_unacked_record() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (rec(10), rec(20), rec(30));
        std::fs::write(super::super::segment_path(dir.path(), 1), [a.clone(), b.clone()].concat()).unwrap();
        std::fs::write(super::super::segment_path(dir.path(), 2), &c).unwrap();
        let segs = [(1, (a.len() + b.len()) as u64), (2, c.len() as u64)];
        let p = |segment, offset| Position { segment, offset };
        let end = p(2, c.len() as u64);
        assert_eq!(count_records(dir.path(), &segs, p(1, 0), end).unwrap(), 3);
        assert_eq!(count_records(dir.path(), &segs, p(1, a.len() as u64), end).unwrap(), 2);
        let at_b = record_at(dir.path(), &segs, p(1, a.len() as u64), end).unwrap().unwrap();
        assert_eq!(at_b.received_at_ms, 20);
        // At the end of segment 1 the oldest unacked record is the first of segment 2.
        let at_c = record_at(dir.path(), &segs, p(1, segs[0].1), end).unwrap().unwrap();
        assert_eq!(at_c.received_at_ms, 30);
        assert!(record_at(dir.path(), &segs, end, end).unwrap().is_none());
    }
}
