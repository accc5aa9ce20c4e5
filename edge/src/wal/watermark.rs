//! The durable ack watermark: every record before this position has been acked by core.
//!
//! Its bytes are `sluice_wire::wal_files`'; here it is read and replaced atomically (write
//! temp, fsync, rename, fsync dir), so a crash leaves either the old or the new value.

use std::io;
use std::path::Path;

use sluice_wire::wal_files::{self, WATERMARK_FILE, WATERMARK_TMP};

use super::Position;
use super::storage::{Storage, corrupt, read_optional, replace_file};

pub fn load(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Position>> {
    let path = dir.join(WATERMARK_FILE);
    let Some(bytes) = read_optional(storage, &path)? else { return Ok(None) };
    wal_files::decode_watermark(&bytes).map(Some).map_err(|e| corrupt(&path, e))
}

pub fn store(storage: &dyn Storage, dir: &Path, pos: Position) -> io::Result<()> {
    replace_file(storage, dir, WATERMARK_FILE, WATERMARK_TMP, &wal_files::encode_watermark(pos))
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
        std::fs::write(dir.path().join(WATERMARK_FILE), [1u8; 20]).unwrap();
        let e = load(&FileStorage, dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(WATERMARK_FILE), "{e}");
    }
}
