//! Startup recovery of the last segment: the only place a torn append can be.
//!
//! Appends are not atomic, so a crash can leave a partial record or zeros after the last
//! fdatasync'd byte of the *last* segment. Everything before that byte was acknowledged and is
//! intact; everything after it was never acknowledged (no 202 without fdatasync), so truncating
//! from the first bad record is safe. Older segments were complete and synced before rotation;
//! the forwarder verifies each of their records' checksum as it reads, and quarantines a segment
//! that fails rather than skipping silently.
//!
//! A bad record in the last segment is a torn tail only if nothing valid follows it. If valid
//! records follow (a bit flip or a bad sector in the middle), those records were acknowledged:
//! truncating would silently drop them. Then only the bytes after the last valid record are
//! truncated, and the corrupt record is left for the forwarder, which quarantines the segment
//! with an error once it has forwarded everything before it.

use std::io;
use std::path::Path;

use sluice_wire::record::check_record;

use super::segment::segment_path;
use super::storage::Storage;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailRecovery {
    pub valid_bytes: u64,
    pub truncated_bytes: u64,
    pub records: u64,
}

/// Validates segment `seq` record by record and truncates it after the last valid record.
pub fn recover_tail(storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<TailRecovery> {
    let path = segment_path(dir, seq);
    let data = storage.read(&path)?;
    let mut offset = 0usize;
    let mut records = 0u64;
    while offset < data.len() {
        match check_record(&data[offset..]) {
            Ok(Some(len)) => {
                offset += len;
                records += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let first_bad = offset;
    // Look past the bad record for valid ones: their presence means mid-segment corruption. A
    // segment prepared ahead ends in zeros (`prealloc`), where no record can start.
    let mut scan = if data[offset..].iter().all(|&b| b == 0) { data.len() } else { offset };
    let mut after_bad = 0u64;
    while scan < data.len() {
        match check_record(&data[scan..]) {
            Ok(Some(len)) => {
                scan += len;
                offset = scan;
                after_bad += 1;
            }
            Ok(None) | Err(_) => scan += 1,
        }
    }
    if after_bad > 0 {
        tracing::error!(
            segment = seq,
            offset = first_bad,
            valid_records_after = after_bad,
            "wal: corrupt record in the middle of the last segment (not a torn tail); kept for the forwarder to quarantine"
        );
    }
    let truncated = (data.len() - offset) as u64;
    if truncated > 0 {
        let mut f = storage.open(&path)?;
        f.set_len(offset as u64)?;
        f.sync_data()?;
        tracing::warn!(segment = seq, valid_bytes = offset, truncated_bytes = truncated, "wal: truncated torn tail");
    }
    Ok(TailRecovery { valid_bytes: offset as u64, truncated_bytes: truncated, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::FileStorage;

    fn rec() -> Vec<u8> {
        crate::wal::test_record(1, vec![])
    }

    #[test]
    fn torn_tail_and_zero_fill_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (rec(), rec());
        for tail in [&b[..b.len() - 3], &[0u8; 100][..], &b"garbage!garbage!"[..]] {
            let mut data = a.clone();
            data.extend_from_slice(tail);
            std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
            let r = recover_tail(&FileStorage, dir.path(), 1).unwrap();
            assert_eq!(r, TailRecovery { valid_bytes: a.len() as u64, truncated_bytes: tail.len() as u64, records: 1 });
            assert_eq!(std::fs::read(segment_path(dir.path(), 1)).unwrap(), a);
        }
    }

    /// Regression: a flipped byte in the middle of the last segment used to be taken for a torn
    /// tail, truncating every acknowledged record after it.
    #[test]
    fn corruption_before_valid_records_is_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b, c) = (rec(), rec(), rec());
        b[12] ^= 0xff;
        let mut data = [a.clone(), b, c].concat();
        let keep = data.len();
        data.extend_from_slice(&[0u8; 64]);
        std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
        let r = recover_tail(&FileStorage, dir.path(), 1).unwrap();
        assert_eq!(r.valid_bytes, keep as u64, "only the zero tail goes");
        assert_eq!(r.truncated_bytes, 64);
        assert_eq!(std::fs::read(segment_path(dir.path(), 1)).unwrap(), data[..keep]);
    }
}
