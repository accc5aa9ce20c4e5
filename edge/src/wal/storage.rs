//! The file operations the edge's durable state is made of (WAL segments, rotation, recovery,
//! `ack.watermark`, `wal.id`, a replica's mirror), behind a small trait like redb's
//! `StorageBackend` or raft-engine's `FileSystem`: [`FileStorage`] is the real disk; the crash
//! sweep runs the same code on a simulated disk that loses what was not synced (`wal::sim`).
//!
//! The trait is the syscall level the durability rules talk about: positional writes,
//! `fdatasync`, and directory entries that are durable only after the directory is synced (DESIGN
//! rule 3). Nothing here buffers, so a successful `sync_data` means what it means for a file.
//! Dispatch is dynamic: one or two virtual calls per group commit, next to a `write` and an
//! `fdatasync` of the group.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A directory tree of files. Paths are the real paths the WAL uses (`<dir>/<seq:020>.wal`, …).
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Creates `dir` and its parents (as durable as the tree above them; the WAL syncs what it
    /// creates inside).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates an empty file that must not exist yet, open for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Creates a file or truncates an existing one, open for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// The whole content of a (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The file names in `dir` with their lengths, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creates, renames and removes in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Writes are positional: the WAL always knows where its bytes go.
pub trait StorageFile: Send {
    /// Writes all of `buf` at `offset` (or fails, possibly after writing a part).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the content and length written so far survive a power loss.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The real disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

impl Storage for FileStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).create_new(true).open(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).open(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let meta = entry.metadata()?;
            if meta.is_file() {
                out.push((name, meta.len()));
            }
        }
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl StorageFile for File {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Replaces a small file atomically: temp file, `fdatasync`, rename, directory sync. A crash
/// leaves the old content or the new, never a mix (the watermark and `wal.id`).
pub fn replace_file(storage: &dyn Storage, dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(tmp);
    let mut f = storage.create(&tmp)?;
    f.write_at(bytes, 0)?;
    f.sync_data()?;
    drop(f);
    storage.rename(&tmp, &dir.join(name))?;
    storage.sync_dir(dir)
}

/// The error of a small file whose bytes do not decode: its path and why.
pub fn corrupt(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt: {why}", path.display()))
}

/// Reads a small file, `None` if it does not exist.
pub fn read_optional(storage: &dyn Storage, path: &Path) -> io::Result<Option<Vec<u8>>> {
    match storage.read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
