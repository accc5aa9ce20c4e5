//! Segment files (named by `sluice_wire::wal_files`) in the WAL directory, consecutive sequence
//! numbers, and the directory fsync every create/rename/delete needs (DESIGN durability rule 3).

use std::io;
use std::path::{Path, PathBuf};

use sluice_wire::wal_files::{SegmentState, parse_segment_file_name, quarantined_file_name, segment_file_name};

use super::storage::{Storage, StorageFile};

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// Live segments (not quarantined), sorted by sequence number, with their sizes.
pub fn list_segments(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = storage
        .list(dir)?
        .into_iter()
        .filter_map(|(name, len)| match parse_segment_file_name(&name)? {
            (seq, SegmentState::Live) => Some((seq, len)),
            (_, SegmentState::Quarantined) => None,
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `seq` (it must not exist) and makes its directory entry durable before
/// anything is written to it.
pub fn create_segment(storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<Box<dyn StorageFile>> {
    let file = storage.create_new(&segment_path(dir, seq))?;
    storage.sync_dir(dir)?;
    Ok(file)
}

/// Moves a segment out of the forwarding path, keeping its bytes for an operator.
pub fn quarantine(storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<PathBuf> {
    let from = segment_path(dir, seq);
    let to = dir.join(quarantined_file_name(seq));
    storage.rename(&from, &to)?;
    storage.sync_dir(dir)?;
    Ok(to)
}
