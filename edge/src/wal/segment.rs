//! Segment files: `<seq:020>.wal` in the WAL directory, consecutive sequence numbers, and the
//! directory fsync every create/rename/delete needs (DESIGN durability rule 3).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub const SEGMENT_EXT: &str = "wal";
/// Quarantined segments are renamed with this extension and never read again by the forwarder.
pub const QUARANTINE_EXT: &str = "corrupt";

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

/// Live segments (not quarantined), sorted by sequence number, with their sizes.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXT}")) else {
            continue;
        };
        let Ok(seq) = stem.parse::<u64>() else {
            continue;
        };
        out.push((seq, entry.metadata()?.len()));
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `seq` (it must not exist) and makes its directory entry durable before
/// anything is written to it.
pub fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().create_new(true).append(true).open(segment_path(dir, seq))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a create, rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves a segment out of the forwarding path, keeping its bytes for an operator.
pub fn quarantine(dir: &Path, seq: u64) -> io::Result<PathBuf> {
    let from = segment_path(dir, seq);
    let to = from.with_extension(QUARANTINE_EXT);
    std::fs::rename(&from, &to)?;
    sync_dir(dir)?;
    Ok(to)
}
