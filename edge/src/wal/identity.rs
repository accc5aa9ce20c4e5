//! The WAL's identity: a random `u64` chosen when the directory is first opened, kept in
//! `wal.id` (bytes: `sluice_wire::wal_files`). Replicas key their copy of an origin's WAL by it,
//! so an origin that comes back with an empty disk (a new ID, positions starting over) is never
//! mistaken for one whose positions continue.

use std::io;
use std::path::Path;

use sluice_wire::wal_files::{self, WAL_ID_FILE, WAL_ID_TMP};

use super::storage::{Storage, corrupt, read_optional, replace_file};

/// Loads the ID, creating it (atomically, durably) if the directory has none yet.
pub fn load_or_create(storage: &dyn Storage, dir: &Path) -> io::Result<u64> {
    let path = dir.join(WAL_ID_FILE);
    match read_optional(storage, &path)? {
        Some(bytes) => wal_files::decode_wal_id(&bytes).map_err(|e| corrupt(&path, e)),
        None => {
            let id: u64 = rand::random();
            replace_file(storage, dir, WAL_ID_FILE, WAL_ID_TMP, &wal_files::encode_wal_id(id))?;
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
        std::fs::write(a.path().join(WAL_ID_FILE), [0u8; 12]).unwrap();
        assert!(load_or_create(&FileStorage, a.path()).is_err(), "a corrupt ID is an error, not a new identity");
    }
}
