//! A simulated disk for the crash sweep: it keeps what was written apart from what was synced,
//! and on a power loss keeps only what a real disk may keep.
//!
//! The model (what POSIX and Linux promise, no more):
//! - file data is durable once `sync_data` of that file returned success; unsynced pages may
//!   each survive or not, in any order ([`Loss`] picks one of those outcomes);
//! - a created, renamed or removed directory entry is durable once its directory was synced;
//!   until then a power loss undoes it (a new file is gone, a renamed file has its old name, a
//!   removed file is back with its durable content);
//! - a failed `sync_data` leaves the pages it did not write clean but not durable (fsyncgate):
//!   later syncs do not write them, so their content is lost on a power loss;
//! - directories themselves (`create_dir_all`) are taken as durable.
//!
//! Every mutating call is one numbered *operation*. A [`Plan`] can cut the power at operation
//! `n` (that call and every later one fail, nothing more reaches the disk), and fail chosen
//! operations (`EIO`, `ENOSPC` after a short write) to exercise the error paths.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::storage::{Storage, StorageFile};

const PAGE: usize = 4096;

/// What survives of the unsynced pages of a file at a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// None of them.
    Drop,
    /// All of them (the page cache happened to be flushed just before).
    Keep,
    /// The first half of them, in file order, and nothing after: a write cut short.
    Prefix,
    /// The file has its new length, but what was written since the last sync reads as zeros
    /// (metadata reached the disk, data did not).
    ZeroFill,
    /// Every other unsynced page: written back out of order.
    Reorder,
}

impl Loss {
    pub const ALL: [Loss; 5] = [Loss::Drop, Loss::Keep, Loss::Prefix, Loss::ZeroFill, Loss::Reorder];
}

/// Kinds of operations a [`Fault`] can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write,
    Sync,
    Read,
}

/// Fail the `nth` (1-based) operation of kind `op`.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub op: Op,
    pub nth: u64,
    pub error: FaultError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// `EIO`.
    Io,
    /// Half the buffer is written, then `ENOSPC` (only meaningful for writes).
    ShortWriteNoSpace,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Cut the power at this operation (1-based): it and everything after fail.
    pub crash_at: Option<u64>,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Pages a failed sync left clean but not durable (fsyncgate).
    lost: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    ops: u64,
    counts: BTreeMap<&'static str, u64>,
    plan: Plan,
    crashed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl State {
    /// Counts a mutating operation; fails it if the power is (now) off.
    fn op(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(power_lost());
        }
        self.ops += 1;
        if self.plan.crash_at == Some(self.ops) {
            self.crashed = true;
            return Err(power_lost());
        }
        Ok(())
    }

    /// The fault planned for this operation of kind `op`, if any.
    fn fault(&mut self, op: Op) -> Option<FaultError> {
        let key = match op {
            Op::Write => "write",
            Op::Sync => "sync",
            Op::Read => "read",
        };
        let n = self.counts.entry(key).or_default();
        *n += 1;
        let n = *n;
        self.plan.faults.iter().find(|f| f.op == op && f.nth == n).map(|f| f.error)
    }

    fn read_check(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(power_lost());
        }
        match self.fault(Op::Read) {
            Some(_) => Err(io::Error::other("injected EIO on read")),
            None => Ok(()),
        }
    }

    fn inode(&self, path: &Path) -> io::Result<usize> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn new_inode(&mut self, path: &Path) -> usize {
        self.inodes.push(Inode::default());
        let id = self.inodes.len() - 1;
        self.names.insert(path.to_path_buf(), id);
        id
    }
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the plan for the operations from now on (counts restart at 0).
    pub fn set_plan(&self, plan: Plan) {
        let mut s = self.lock();
        s.plan = plan;
        s.ops = 0;
        s.counts.clear();
    }

    /// Mutating operations run since the plan was set.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The disk as it is after a power loss now, with unsynced pages treated per `loss`.
    pub fn power_loss(&self, loss: Loss) -> SimDisk {
        let s = self.lock();
        let mut next = State { dirs: s.dirs.clone(), ..State::default() };
        let mut map = BTreeMap::new();
        for (path, &id) in &s.durable_names {
            let new_id = *map.entry(id).or_insert_with(|| {
                let content = survive(&s.inodes[id], loss);
                next.inodes.push(Inode { current: content.clone(), durable: content, lost: BTreeSet::new() });
                next.inodes.len() - 1
            });
            next.names.insert(path.clone(), new_id);
        }
        next.durable_names = next.names.clone();
        SimDisk { state: Arc::new(Mutex::new(next)) }
    }

    /// A file's current content (as a reader sees it), for assertions.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        s.names.get(path).map(|&id| s.inodes[id].current.clone())
    }
}

/// Dirty pages: those whose current content differs from the durable one, or lies past its end.
fn dirty_pages(inode: &Inode) -> Vec<usize> {
    let len = inode.current.len().max(inode.durable.len());
    (0..len.div_ceil(PAGE))
        .filter(|&p| {
            let range = |v: &Vec<u8>| v.get(p * PAGE..((p + 1) * PAGE).min(v.len())).map(<[u8]>::to_vec);
            range(&inode.current) != range(&inode.durable)
        })
        .collect()
}

fn survive(inode: &Inode, loss: Loss) -> Vec<u8> {
    let dirty: Vec<usize> = dirty_pages(inode).into_iter().filter(|p| !inode.lost.contains(p)).collect();
    let applied: Vec<usize> = match loss {
        Loss::Drop | Loss::ZeroFill => Vec::new(),
        Loss::Keep => dirty.clone(),
        Loss::Prefix => dirty[..dirty.len().div_ceil(2)].to_vec(),
        Loss::Reorder => dirty.iter().copied().skip(1).step_by(2).collect(),
    };
    let len = match loss {
        Loss::Drop => return inode.durable.clone(),
        Loss::Keep | Loss::ZeroFill | Loss::Reorder => inode.current.len(),
        // The file grows only as far as the pages that made it.
        Loss::Prefix => applied
            .last()
            .map_or(inode.durable.len(), |&p| ((p + 1) * PAGE).min(inode.current.len()).max(inode.durable.len())),
    };
    // Bytes a page shares with its durable version are the same either way; only what changed
    // since the last sync is new, lost, or zeros.
    let mut out = inode.durable.clone();
    out.resize(len, 0);
    for p in applied {
        let end = ((p + 1) * PAGE).min(len).min(inode.current.len());
        if p * PAGE < end {
            out[p * PAGE..end].copy_from_slice(&inode.current[p * PAGE..end]);
        }
    }
    out
}

struct SimFile {
    disk: SimDisk,
    inode: usize,
}

impl Storage for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.op()?;
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        s.op()?;
        if s.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let inode = s.new_inode(path);
        Ok(Box::new(SimFile { disk: self.clone(), inode }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        s.op()?;
        let inode = match s.names.get(path).copied() {
            Some(id) => {
                s.inodes[id].current.clear();
                id
            }
            None => s.new_inode(path),
        };
        Ok(Box::new(SimFile { disk: self.clone(), inode }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        s.read_check()?;
        let inode = s.inode(path)?;
        Ok(Box::new(SimFile { disk: self.clone(), inode }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        s.read_check()?;
        let id = s.inode(path)?;
        Ok(s.inodes[id].current.clone())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>> {
        let mut s = self.lock();
        s.read_check()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, &id)| Some((p.file_name()?.to_str()?.to_string(), s.inodes[id].current.len() as u64)))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.op()?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.op()?;
        s.names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.op()?;
        if s.fault(Op::Sync).is_some() {
            return Err(io::Error::other("injected EIO on directory fsync"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let entries: Vec<(PathBuf, usize)> =
            s.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, &i)| (p.clone(), i)).collect();
        s.durable_names.extend(entries);
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.op()?;
        let (buf, result) = match s.fault(Op::Write) {
            None => (buf, Ok(())),
            Some(FaultError::Io) => return Err(io::Error::other("injected EIO on write")),
            Some(FaultError::ShortWriteNoSpace) => {
                (&buf[..buf.len() / 2], Err(io::Error::other("injected ENOSPC after a short write")))
            }
        };
        let start = offset as usize;
        let inode = &mut s.inodes[self.inode];
        if !buf.is_empty() {
            inode.lost.retain(|&p| p < start / PAGE || p > (start + buf.len() - 1) / PAGE);
        }
        let file = &mut inode.current;
        if file.len() < start + buf.len() {
            file.resize(start + buf.len(), 0);
        }
        file[start..start + buf.len()].copy_from_slice(buf);
        result
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.read_check()?;
        let file = &s.inodes[self.inode].current;
        let start = offset as usize;
        let src = file
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut s = self.disk.lock();
        s.read_check()?;
        Ok(s.inodes[self.inode].current.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.op()?;
        s.inodes[self.inode].current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.op()?;
        let failed = s.fault(Op::Sync).is_some();
        let inode = &mut s.inodes[self.inode];
        if failed {
            // fsyncgate: the pages are marked clean although they never reached the disk.
            inode.lost.extend(dirty_pages(inode));
            return Err(io::Error::other("injected EIO on fdatasync"));
        }
        // Pages a failed sync marked clean stay as they were on the disk until rewritten.
        let mut durable = inode.current.clone();
        for &p in &inode.lost {
            let end = ((p + 1) * PAGE).min(durable.len());
            if p * PAGE < end {
                let old = inode.durable.get(p * PAGE..end.min(inode.durable.len())).unwrap_or_default().to_vec();
                durable[p * PAGE..p * PAGE + old.len()].copy_from_slice(&old);
                durable[p * PAGE + old.len()..end].fill(0);
            }
        }
        inode.durable = durable;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> PathBuf {
        PathBuf::from("/w").join(s)
    }

    fn disk_with_dir() -> SimDisk {
        let d = SimDisk::new();
        d.create_dir_all(Path::new("/w")).unwrap();
        d
    }

    #[test]
    fn unsynced_data_and_entries_do_not_survive() {
        let d = disk_with_dir();
        let mut f = d.create_new(&path("a")).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(d.power_loss(Loss::Keep).contents(&path("a")), None, "the entry was never synced");
        d.sync_dir(Path::new("/w")).unwrap();
        f.write_at(b" world", 5).unwrap();
        assert_eq!(d.power_loss(Loss::Drop).contents(&path("a")).unwrap(), b"hello");
        assert_eq!(d.power_loss(Loss::Keep).contents(&path("a")).unwrap(), b"hello world");
        assert_eq!(d.power_loss(Loss::ZeroFill).contents(&path("a")).unwrap(), b"hello\0\0\0\0\0\0");
    }

    #[test]
    fn renames_and_removes_are_undone_until_the_directory_is_synced() {
        let d = disk_with_dir();
        let mut f = d.create(&path("tmp")).unwrap();
        f.write_at(b"v1", 0).unwrap();
        f.sync_data().unwrap();
        d.rename(&path("tmp"), &path("final")).unwrap();
        d.sync_dir(Path::new("/w")).unwrap();
        d.remove(&path("final")).unwrap();
        let after = d.power_loss(Loss::Drop);
        assert_eq!(after.contents(&path("final")).unwrap(), b"v1", "the unsynced remove is undone");
        assert_eq!(after.contents(&path("tmp")), None);
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_or_scattered_pages() {
        let d = disk_with_dir();
        let mut f = d.create_new(&path("a")).unwrap();
        d.sync_dir(Path::new("/w")).unwrap();
        let data: Vec<u8> = (0..4 * PAGE).map(|i| (i / PAGE) as u8 + 1).collect();
        f.write_at(&data, 0).unwrap();
        let prefix = d.power_loss(Loss::Prefix).contents(&path("a")).unwrap();
        assert_eq!(prefix, data[..2 * PAGE], "first half of the dirty pages");
        let scattered = d.power_loss(Loss::Reorder).contents(&path("a")).unwrap();
        assert_eq!(scattered.len(), 4 * PAGE);
        assert_eq!(&scattered[..PAGE], &[0u8; PAGE][..], "page 0 did not make it");
        assert_eq!(scattered[PAGE..2 * PAGE], data[PAGE..2 * PAGE], "page 1 did");
    }

    #[test]
    fn a_failed_sync_loses_its_pages_for_good_and_the_power_cut_fails_everything_after() {
        let d = disk_with_dir();
        let mut f = d.create_new(&path("a")).unwrap();
        d.sync_dir(Path::new("/w")).unwrap();
        d.set_plan(Plan { crash_at: None, faults: vec![Fault { op: Op::Sync, nth: 1, error: FaultError::Io }] });
        f.write_at(b"lost", 0).unwrap();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert_eq!(
            d.power_loss(Loss::Keep).contents(&path("a")).unwrap(),
            b"\0\0\0\0",
            "a retried fsync saved nothing"
        );

        d.set_plan(Plan { crash_at: Some(2), faults: vec![] });
        f.write_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(d.crashed());
        assert!(f.write_at(b"y", 0).is_err() && d.read(&path("a")).is_err(), "nothing works after the cut");
    }
}
