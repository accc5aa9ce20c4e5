//! The durable ack watermark: every record before this position has been acked by core.
//!
//! Stored as `segment u64 LE | offset u64 LE | crc32c u32 LE` and replaced atomically
//! (write temp, fsync, rename, fsync dir), so a crash leaves either the old or the new value.

use std::io;
use std::path::Path;

use super::Position;
use super::storage::{Storage, read_optional, replace_file};

const FILE: &str = "ack.watermark";
const TMP: &str = "ack.watermark.tmp";

pub fn load(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Position>> {
    let Some(bytes) = read_optional(storage, &dir.join(FILE))? else { return Ok(None) };
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt", dir.join(FILE).display()));
    let arr: [u8; 20] = bytes.as_slice().try_into().map_err(|_| invalid())?;
    let crc = u32::from_le_bytes(arr[16..20].try_into().map_err(|_| invalid())?);
    if crc32c::crc32c(&arr[..16]) != crc {
        return Err(invalid());
    }
    Ok(Some(Position {
        segment: u64::from_le_bytes(arr[0..8].try_into().map_err(|_| invalid())?),
        offset: u64::from_le_bytes(arr[8..16].try_into().map_err(|_| invalid())?),
    }))
}

pub fn store(storage: &dyn Storage, dir: &Path, pos: Position) -> io::Result<()> {
    let mut buf = [0u8; 20];
    buf[0..8].copy_from_slice(&pos.segment.to_le_bytes());
    buf[8..16].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..16]);
    buf[16..20].copy_from_slice(&crc.to_le_bytes());
    replace_file(storage, dir, FILE, TMP, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::FileStorage;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&FileStorage, dir.path()).unwrap(), None);
        let p = Position { segment: 3, offset: 4096 };
        store(&FileStorage, dir.path(), p).unwrap();
        assert_eq!(load(&FileStorage, dir.path()).unwrap(), Some(p));
        std::fs::write(dir.path().join(FILE), [1u8; 20]).unwrap();
        assert!(load(&FileStorage, dir.path()).is_err());
    }
}
