//! Segment files (named by `sluice_wire::wal_files`) in the WAL directory, consecutive sequence
//! numbers, and the directory fsync every create/rename/delete needs (DESIGN durability rule 3).

use std::io;
use std::path::{Path, PathBuf};

use sluice_wire::wal_files::{
    DELETED_SEGMENT_FILE, PREPARED_SEGMENT_FILE, SegmentState, parse_segment_file_name, quarantined_file_name,
    segment_file_name,
};

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

/// Bytes freed per `ftruncate` when a segment is deleted. Freeing blocks costs the disk work: on
/// a file system with online discard (ext4 `-o discard`, as here) the kernel trims them before
/// the call returns, and a group commit's `fdatasync` waits behind the trim. Removing a 64 MiB
/// segment at once held a concurrent 8 KiB `fdatasync` for up to 8.7 ms here; in 1 MiB steps, at
/// most 1.2 ms (BENCHMARKS, "Where the half-load tail comes from: the forwarder's segment
/// deletes"). RocksDB's `DeleteScheduler` truncates in chunks for the same reason.
pub(super) const DELETE_STEP: u64 = 1024 * 1024;

/// Deletes segment `seq`, every record of which core acknowledged, in steps the disk can
/// interleave with group commits. The segment first leaves the segment namespace by a rename
/// made durable before any byte is freed, so a crash never leaves a shortened segment that
/// would read as corrupt; a crash afterwards leaves the renamed file, which the next open
/// removes ([`remove_leftovers`]).
pub fn delete_segment(storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<()> {
    let doomed = dir.join(DELETED_SEGMENT_FILE);
    storage.rename(&segment_path(dir, seq), &doomed)?;
    storage.sync_dir(dir)?;
    let mut file = storage.open(&doomed)?;
    let mut len = file.size()?;
    while len > 0 {
        len = len.saturating_sub(DELETE_STEP);
        file.set_len(len)?;
    }
    drop(file);
    storage.remove(&doomed)
}

/// Removes the files a previous run left between names: a segment prepared ahead (zeros) and
/// one being deleted (acked). Neither holds a record anybody still needs.
pub fn remove_leftovers(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    for name in [PREPARED_SEGMENT_FILE, DELETED_SEGMENT_FILE] {
        match storage.remove(&dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
