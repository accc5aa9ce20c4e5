//! The dedupe index: batch IDs already delivered to the sink, so a resent frame (edge retry after
//! a lost ack, another edge replaying a dead node's WAL) is acked without producing again.
//!
//! Behind a trait so a shared store can replace redb when several core nodes must agree.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, TableDefinition};
use uuid::Uuid;

/// batch_id → delivered-at (epoch ms).
const BATCHES: TableDefinition<u128, u64> = TableDefinition::new("batches");
/// (delivered-at, batch_id) → (): lets expiry scan only what is old.
const BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("batches_by_time");

#[derive(Debug, thiserror::Error)]
#[error("dedupe index: {0}")]
pub struct DedupeError(pub(crate) String);

fn err(e: impl std::fmt::Display) -> DedupeError {
    DedupeError(e.to_string())
}

pub trait DedupeIndex: Send + Sync + 'static {
    /// For each ID, whether it was already delivered.
    fn seen(&self, ids: &[Uuid]) -> Result<Vec<bool>, DedupeError>;
    /// Durably records IDs as delivered at `now_ms`.
    fn record(&self, ids: &[Uuid], now_ms: u64) -> Result<(), DedupeError>;
    /// Forgets IDs delivered before `cutoff_ms`; returns how many.
    fn evict(&self, cutoff_ms: u64) -> Result<usize, DedupeError>;
}

pub struct RedbDedupe {
    db: Database,
}

impl RedbDedupe {
    pub fn open(path: &Path) -> Result<Self, DedupeError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(BATCHES).map_err(err)?;
        txn.open_table(BY_TIME).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }
}

impl DedupeIndex for RedbDedupe {
    fn seen(&self, ids: &[Uuid]) -> Result<Vec<bool>, DedupeError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(BATCHES).map_err(err)?;
        ids.iter().map(|id| Ok(table.get(id.as_u128()).map_err(err)?.is_some())).collect()
    }

    fn record(&self, ids: &[Uuid], now_ms: u64) -> Result<(), DedupeError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut batches = txn.open_table(BATCHES).map_err(err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(err)?;
            for id in ids {
                if let Some(old) = batches.insert(id.as_u128(), now_ms).map_err(err)? {
                    by_time.remove((old.value(), id.as_u128())).map_err(err)?;
                }
                by_time.insert((now_ms, id.as_u128()), ()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    fn evict(&self, cutoff_ms: u64) -> Result<usize, DedupeError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut n = 0;
        {
            let mut batches = txn.open_table(BATCHES).map_err(err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(err)?;
            let old = by_time.extract_from_if((0, 0)..(cutoff_ms, 0), |_, _| true).map_err(err)?;
            for entry in old {
                let (key, _) = entry.map_err(err)?;
                let (_, id) = key.value();
                batches.remove(id).map_err(err)?;
                n += 1;
            }
        }
        txn.commit().map_err(err)?;
        Ok(n)
    }
}

/// An index that remembers whether its last operation failed, for readiness: a core whose index
/// fails answers every frame with `Retry`, so it should leave the rotation until it works again
/// (the next frame or the minutely expiry finds out).
pub struct Watched<D> {
    inner: D,
    failed: AtomicBool,
}

impl<D: DedupeIndex> Watched<D> {
    pub fn new(inner: D) -> Self {
        Self { inner, failed: AtomicBool::new(false) }
    }

    /// Whether the last operation on the index failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn watch<T>(&self, result: Result<T, DedupeError>) -> Result<T, DedupeError> {
        self.failed.store(result.is_err(), Ordering::Relaxed);
        result
    }
}

impl<D: DedupeIndex> DedupeIndex for Watched<D> {
    fn seen(&self, ids: &[Uuid]) -> Result<Vec<bool>, DedupeError> {
        self.watch(self.inner.seen(ids))
    }

    fn record(&self, ids: &[Uuid], now_ms: u64) -> Result<(), DedupeError> {
        self.watch(self.inner.record(ids, now_ms))
    }

    fn evict(&self, cutoff_ms: u64) -> Result<usize, DedupeError> {
        self.watch(self.inner.evict(cutoff_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_reopen_and_evicts_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        {
            let d = RedbDedupe::open(&path).unwrap();
            assert_eq!(d.seen(&[a, b]).unwrap(), vec![false, false]);
            d.record(&[a], 1_000).unwrap();
            d.record(&[b], 5_000).unwrap();
        }
        let d = RedbDedupe::open(&path).unwrap();
        assert_eq!(d.seen(&[a, b]).unwrap(), vec![true, true]);
        assert_eq!(d.evict(2_000).unwrap(), 1);
        assert_eq!(d.seen(&[a, b]).unwrap(), vec![false, true]);
    }
}
