//! Reading and damaging WAL segment files from outside the edge, for the corruption scenarios.

use std::path::{Path, PathBuf};

use sluice_wire::BatchRecord;
use sluice_wire::record::{check_record, decode_record};
use sluice_wire::wal_files::{QUARANTINE_EXT, SEGMENT_EXT};

/// A record found in a segment file: where it starts, how long it is, what it holds.
#[derive(Debug, Clone)]
pub struct FoundRecord {
    pub offset: usize,
    pub len: usize,
    pub record: BatchRecord,
}

impl FoundRecord {
    pub fn event_ids(&self) -> Vec<String> {
        self.record.events.iter().map(|e| e.event_id.clone()).collect()
    }
}

/// Live segment files (`*.wal`), sorted.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, SEGMENT_EXT)
}

/// Quarantined segment files (`*.corrupt`), sorted.
pub fn quarantined(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, QUARANTINE_EXT)
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == ext)).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The valid records of a segment from its start, stopping at the first invalid one.
pub fn records(path: &Path) -> Vec<FoundRecord> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut offset = 0;
    while let Ok(Some(len)) = check_record(&data[offset..]) {
        if let Ok(record) = decode_record(&data[offset..offset + len]) {
            out.push(FoundRecord { offset, len, record });
        }
        offset += len;
    }
    out
}

/// A segment's bytes up to the end of its records. The rest must be zeros: the room left in the
/// segment being written, which was prepared ahead.
pub fn record_bytes(path: &Path) -> Vec<u8> {
    let mut data = std::fs::read(path).unwrap_or_default();
    let end = records(path).last().map_or(0, |r| r.offset + r.len);
    assert!(data[end..].iter().all(|&b| b == 0), "{} has bytes after its records that are not zeros", path.display());
    data.truncate(end);
    data
}

/// Every valid record anywhere in the file, resynchronising after damage (what an operator's
/// salvage would find in a quarantined segment).
pub fn salvage(path: &Path) -> Vec<FoundRecord> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        match check_record(&data[offset..]) {
            Ok(Some(len)) => {
                if let Ok(record) = decode_record(&data[offset..offset + len]) {
                    out.push(FoundRecord { offset, len, record });
                }
                offset += len;
            }
            _ => offset += 1,
        }
    }
    out
}

/// Flips every bit of the byte at `offset`.
pub fn flip_byte(path: &Path, offset: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset as u64).expect("read byte");
    f.write_all_at(&[b[0] ^ 0xff], offset as u64).expect("write byte");
    f.sync_all().expect("sync");
}

/// Copies the files of WAL directory `from` into `to` (created), as an operator copies a dead
/// node's WAL off its disk.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let p = entry.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}
