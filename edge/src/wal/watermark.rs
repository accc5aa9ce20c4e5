//! The durable ack watermark: every record before this position has been acked by core.
//!
//! Stored as `segment u64 LE | offset u64 LE | crc32c u32 LE` and replaced atomically
//! (write temp, fsync, rename, fsync dir), so a crash leaves either the old or the new value.

use std::io::{self, Write};
use std::path::Path;

use super::{Position, segment::sync_dir};

const FILE: &str = "ack.watermark";
const TMP: &str = "ack.watermark.tmp";

pub fn load(dir: &Path) -> io::Result<Option<Position>> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
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

pub fn store(dir: &Path, pos: Position) -> io::Result<()> {
    let mut buf = [0u8; 20];
    buf[0..8].copy_from_slice(&pos.segment.to_le_bytes());
    buf[8..16].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..16]);
    buf[16..20].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let p = Position { segment: 3, offset: 4096 };
        store(dir.path(), p).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(p));
        std::fs::write(dir.path().join(FILE), [1u8; 20]).unwrap();
        assert!(load(dir.path()).is_err());
    }
}
