//! The WAL's identity: a random `u64` chosen when the directory is first opened, kept in
//! `wal.id` as `id u64 LE | crc32c u32 LE`. Replicas key their copy of an origin's WAL by it, so
//! an origin that comes back with an empty disk (a new ID, positions starting over) is never
//! mistaken for one whose positions continue.

use std::io;
use std::path::Path;

use super::storage::{Storage, read_optional, replace_file};

const FILE: &str = "wal.id";
const TMP: &str = "wal.id.tmp";

/// Loads the ID, creating it (atomically, durably) if the directory has none yet.
pub fn load_or_create(storage: &dyn Storage, dir: &Path) -> io::Result<u64> {
    match read_optional(storage, &dir.join(FILE))? {
        Some(bytes) => {
            let invalid =
                || io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt", dir.join(FILE).display()));
            let arr: [u8; 12] = bytes.as_slice().try_into().map_err(|_| invalid())?;
            let (id, crc) = arr.split_at(8);
            if crc32c::crc32c(id).to_le_bytes() != crc {
                return Err(invalid());
            }
            Ok(u64::from_le_bytes(id.try_into().map_err(|_| invalid())?))
        }
        None => {
            let id: u64 = rand::random();
            let mut buf = [0u8; 12];
            buf[..8].copy_from_slice(&id.to_le_bytes());
            let crc = crc32c::crc32c(&buf[..8]);
            buf[8..].copy_from_slice(&crc.to_le_bytes());
            replace_file(storage, dir, FILE, TMP, &buf)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::FileStorage;

    #[test]
    fn stable_across_opens_new_for_a_new_directory() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let id = load_or_create(&FileStorage, a.path()).unwrap();
        assert_eq!(load_or_create(&FileStorage, a.path()).unwrap(), id);
        assert_ne!(load_or_create(&FileStorage, b.path()).unwrap(), id);
        std::fs::write(a.path().join(FILE), [0u8; 12]).unwrap();
        assert!(load_or_create(&FileStorage, a.path()).is_err(), "a corrupt ID is an error, not a new identity");
    }
}
