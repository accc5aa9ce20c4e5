//! Segments written ahead of need (`wal.preallocate`): a file of zeros as long as a segment,
//! synced, so that a group commit's `fdatasync` writes only the group. Appending to a growing file
//! changes its size with every group, and `fdatasync` must then write the inode too (ext4 without
//! a journal writes it synchronously: about twice the time per 64 KiB group here, BENCHMARKS).
//!
//! The file is prepared under a name that is not a segment (`wal_files::PREPARED_SEGMENT_FILE`)
//! and becomes the next segment by a rename and a directory sync before anything is written to
//! it. The zeros are written and synced in small steps, so a group commit's `fdatasync` never
//! queues behind a whole segment of them.
//!
//! Only the segment being written has zeros after its last record: the writer cuts it to its
//! records ([`seal`]) before it starts the next one, so every finished segment ends at its last
//! record, as the reader, catch-up and the tools expect. A crash leaves zeros after the last
//! record of the last segment, which recovery truncates as a torn tail.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use sluice_wire::wal_files::PREPARED_SEGMENT_FILE;

use super::segment::segment_path;
use super::storage::{Storage, StorageFile};
use crate::config::Preallocate;

/// Zeros written, then synced, per step.
const STEP: usize = 1024 * 1024;

/// Where the writer's next segment comes from.
pub(super) enum Preallocator {
    Off,
    Inline { storage: Arc<dyn Storage>, dir: PathBuf, bytes: u64 },
    Background(Background),
}

pub(super) struct Background {
    /// Asks the thread for one more prepared file (it holds at most one).
    want: SyncSender<()>,
    ready: Receiver<io::Result<Box<dyn StorageFile>>>,
    /// What the thread handed over and the writer has not taken yet.
    received: Option<io::Result<Box<dyn StorageFile>>>,
    /// A file was asked for and not yet taken.
    asked: bool,
}

impl Preallocator {
    pub fn new(mode: Preallocate, storage: Arc<dyn Storage>, dir: PathBuf, bytes: u64) -> io::Result<Self> {
        Ok(match mode {
            Preallocate::Off => Preallocator::Off,
            Preallocate::Inline => Preallocator::Inline { storage, dir, bytes },
            Preallocate::Background => {
                let (want, wanted) = sync_channel::<()>(1);
                let (done, ready) = sync_channel(1);
                std::thread::Builder::new().name("wal-prealloc".into()).spawn(move || {
                    for () in wanted {
                        if done.send(prepare(&*storage, &dir, bytes)).is_err() {
                            break;
                        }
                    }
                })?;
                Preallocator::Background(Background { want, ready, received: None, asked: false })
            }
        })
    }

    /// Starts preparing the next segment, unless one is on its way: when the writer has filled
    /// half a prepared segment, or is writing a growing one.
    pub fn want_next(&mut self) {
        if let Preallocator::Background(b) = self
            && !b.asked
        {
            // The thread is gone only if it panicked; then segments simply grow.
            b.asked = b.want.try_send(()).is_ok();
        }
    }

    /// Whether a prepared file is ready to be taken (never in `Inline` mode, which prepares as
    /// it is taken). A writer on a growing segment moves on to it at once.
    pub fn ready(&mut self) -> bool {
        let Preallocator::Background(b) = self else { return false };
        if b.received.is_none() {
            b.received = b.ready.try_recv().ok();
        }
        matches!(b.received, Some(Ok(_)))
    }

    /// A prepared file, renamed to segment `seq` and durable under that name, or `None` when
    /// there is none (preallocation off, not ready yet, or it failed): the caller starts a
    /// growing file. An error is one of the rename, in the WAL's own directory.
    pub fn take(&mut self, storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<Option<Box<dyn StorageFile>>> {
        let prepared = match self {
            Preallocator::Off => return Ok(None),
            Preallocator::Inline { storage, dir, bytes } => prepare(&**storage, dir, *bytes),
            Preallocator::Background(b) => match b.received.take().map_or_else(|| b.ready.try_recv(), Ok) {
                Ok(prepared) => {
                    b.asked = false;
                    prepared
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(None),
            },
        };
        let file = match prepared {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, segment = seq, "wal: could not prepare a segment ahead; this one grows as it is written");
                return Ok(None);
            }
        };
        storage.rename(&dir.join(PREPARED_SEGMENT_FILE), &segment_path(dir, seq))?;
        storage.sync_dir(dir)?;
        Ok(Some(file))
    }
}

/// Writes `bytes` of zeros to the prepared file and syncs them. A failure (a full disk) removes
/// the file again, so preparing never holds space the WAL itself needs.
fn prepare(storage: &dyn Storage, dir: &Path, bytes: u64) -> io::Result<Box<dyn StorageFile>> {
    let path = dir.join(PREPARED_SEGMENT_FILE);
    let fill = || -> io::Result<Box<dyn StorageFile>> {
        let mut file = storage.create(&path)?;
        let zeros = vec![0u8; STEP.min(bytes as usize)];
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_at(&zeros[..n], at)?;
            file.sync_data()?;
            at += n as u64;
        }
        Ok(file)
    };
    fill().inspect_err(|_| {
        let _ = storage.remove(&path);
    })
}

/// Cuts a prepared segment to its records before the writer leaves it, and syncs the new length.
pub(super) fn seal(file: &mut dyn StorageFile, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_data()
}
