//! Startup recovery of the last segment: the only place a torn append can be.
//!
//! Appends are not atomic, so a crash can leave a partial record or zeros after the last
//! fdatasync'd byte of the *last* segment. Everything before that byte was acknowledged and is
//! intact; everything after it was never acknowledged (no 202 without fdatasync), so truncating
//! from the first bad record is safe. Older segments were complete and synced before rotation;
//! the forwarder verifies each of their records' checksum as it reads, and quarantines a segment
//! that fails rather than skipping silently.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use sluice_wire::record::check_record;

use super::segment::segment_path;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailRecovery {
    pub valid_bytes: u64,
    pub truncated_bytes: u64,
    pub records: u64,
}

/// Validates segment `seq` record by record and truncates it after the last valid record.
pub fn recover_tail(dir: &Path, seq: u64) -> io::Result<TailRecovery> {
    let path = segment_path(dir, seq);
    let data = std::fs::read(&path)?;
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
    let truncated = (data.len() - offset) as u64;
    if truncated > 0 {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(offset as u64)?;
        f.sync_all()?;
        tracing::warn!(segment = seq, valid_bytes = offset, truncated_bytes = truncated, "wal: truncated torn tail");
    }
    Ok(TailRecovery { valid_bytes: offset as u64, truncated_bytes: truncated, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_wire::record::encode_record;

    fn rec() -> Vec<u8> {
        let r = sluice_wire::BatchRecord {
            batch_id: sluice_wire::ids::new_batch_id(),
            tenant: "t".into(),
            env: "e".into(),
            region: "r".into(),
            received_at_ms: 1,
            stream: sluice_wire::Stream::Events,
            events: vec![],
        };
        let mut b = Vec::new();
        encode_record(&r, &mut b).unwrap();
        b
    }

    #[test]
    fn torn_tail_and_zero_fill_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (rec(), rec());
        for tail in [&b[..b.len() - 3], &[0u8; 100][..], &b"garbage!garbage!"[..]] {
            let mut data = a.clone();
            data.extend_from_slice(tail);
            std::fs::write(segment_path(dir.path(), 1), &data).unwrap();
            let r = recover_tail(dir.path(), 1).unwrap();
            assert_eq!(r, TailRecovery { valid_bytes: a.len() as u64, truncated_bytes: tail.len() as u64, records: 1 });
            assert_eq!(std::fs::read(segment_path(dir.path(), 1)).unwrap(), a);
        }
    }
}
