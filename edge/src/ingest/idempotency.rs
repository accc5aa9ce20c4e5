//! `X-Idempotency-Key`: per (tenant, env, key), the first response is stored durably for a TTL
//! (24 h by default) in redb, so a retry gets the original status and body and appends nothing.
//! The same key with a different body is a client bug (422); a retry that arrives while the first
//! request is still in flight gets 409 rather than racing it.
//!
//! The keyed request's batch ID is derived from (tenant, env, key), so even if the edge crashes
//! between the WAL append and storing the response, the retry's batch is deduped by core.
//!
//! The same file holds the request signatures the edge accepted (`X-Signature`), each until its
//! timestamp leaves the skew window, so a captured signed request is refused after a restart too,
//! and the operator controls set through the admin API (kill-switch blocks, overflow routes), so
//! they last across restarts.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::ingest::auth::Controls;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use sluice_wire::seen_signature::SeenSignature;
use sluice_wire::stored_response::StoredResponse;

/// scope key (`tenant \0 env \0 key`) → encoded StoredResponse.
const RESPONSES: TableDefinition<&str, &[u8]> = TableDefinition::new("responses");
/// (created_ms, scope key) → (): expiry scans only what is old.
const BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("responses_by_time");
/// MAC of an accepted signature → encoded SeenSignature.
const SIGNATURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("signatures");
/// (expires_ms, MAC) → (): expiry scans only what is old.
const SIGNATURES_BY_TIME: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("signatures_by_time");

/// [`CONTROLS_KEY`] → JSON of [`Controls`] (one row: operators change it a few times a day).
const CONTROLS: TableDefinition<&str, &[u8]> = TableDefinition::new("operator_controls");
const CONTROLS_KEY: &str = "controls";

/// Idempotency keys longer than this are refused (400); they are stored verbatim.
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct StoreError(pub(crate) String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub enum Lookup {
    /// First use: process the request, then `complete` with the guard.
    Fresh(InFlight),
    /// Seen before with the same body: answer with this.
    Replay(StoredResponse),
    /// Seen before with a different body.
    BodyMismatch,
}

/// Marks a key as in flight; dropping it (on any error path) frees the key for a retry.
pub struct InFlight {
    scope: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.scope);
    }
}

pub struct IdempotencyStore {
    db: Database,
    in_flight: Arc<Mutex<HashSet<String>>>,
    ttl_ms: u64,
}

pub fn scope(tenant: &str, env: &str, key: &str) -> String {
    format!("{tenant}\0{env}\0{key}")
}

impl IdempotencyStore {
    pub fn open(path: &Path, ttl_secs: u64) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(RESPONSES).map_err(err)?;
        txn.open_table(BY_TIME).map_err(err)?;
        txn.open_table(SIGNATURES).map_err(err)?;
        txn.open_table(SIGNATURES_BY_TIME).map_err(err)?;
        txn.open_table(CONTROLS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self { db, in_flight: Arc::default(), ttl_ms: ttl_secs.saturating_mul(1000) })
    }

    /// Claims `scope` for one request before its body is read, so a concurrent duplicate is
    /// refused (409) instead of racing. `None` if another request holds it.
    pub fn reserve(&self, scope: &str) -> Option<InFlight> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.insert(scope.to_string()).then(|| InFlight { scope: scope.to_string(), set: self.in_flight.clone() })
    }

    /// With the key reserved and the body read: was this key already answered?
    pub fn lookup(&self, guard: InFlight, request_hash: &[u8; 32], now_ms: u64) -> Result<Lookup, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(RESPONSES).map_err(err)?;
        if let Some(v) = table.get(guard.scope.as_str()).map_err(err)? {
            let stored = StoredResponse::decode(v.value()).map_err(err)?;
            if now_ms.saturating_sub(stored.created_ms) < self.ttl_ms {
                return Ok(if &stored.request_hash == request_hash {
                    Lookup::Replay(stored)
                } else {
                    Lookup::BodyMismatch
                });
            }
        }
        Ok(Lookup::Fresh(guard))
    }

    /// Durably stores the response of a fresh request, then releases its in-flight mark.
    pub fn complete(&self, guard: InFlight, response: &StoredResponse) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut responses = txn.open_table(RESPONSES).map_err(err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(err)?;
            let old = responses.insert(guard.scope.as_str(), response.encode().as_slice()).map_err(err)?;
            if let Some(old) = old.and_then(|o| StoredResponse::decode(o.value()).ok()) {
                by_time.remove((old.created_ms, guard.scope.as_str())).map_err(err)?;
            }
            by_time.insert((response.created_ms, guard.scope.as_str()), ()).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        drop(guard);
        Ok(())
    }

    /// Durably records an accepted signature (its MAC) until `seen.expires_ms`; `false` if it was
    /// recorded before, i.e. the request is a replay. One write transaction, so two copies of a
    /// request racing on this edge cannot both pass.
    pub fn admit_signature(&self, mac: &[u8], seen: &SeenSignature) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut signatures = txn.open_table(SIGNATURES).map_err(err)?;
            if signatures.get(mac).map_err(err)?.is_some() {
                return Ok(false);
            }
            signatures.insert(mac, seen.encode().as_slice()).map_err(err)?;
            txn.open_table(SIGNATURES_BY_TIME).map_err(err)?.insert((seen.expires_ms, mac), ()).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(true)
    }

    /// Deletes responses older than the TTL and signatures past their expiry; returns how many.
    /// Keeps the file bounded.
    pub fn evict_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        let txn = self.db.begin_write().map_err(err)?;
        let mut n = 0;
        {
            let mut signatures = txn.open_table(SIGNATURES).map_err(err)?;
            let mut by_time = txn.open_table(SIGNATURES_BY_TIME).map_err(err)?;
            let range = (0u64, [].as_slice())..(now_ms, [].as_slice());
            for entry in by_time.extract_from_if(range, |_, _| true).map_err(err)? {
                let (key, _) = entry.map_err(err)?;
                signatures.remove(key.value().1).map_err(err)?;
                n += 1;
            }
        }
        {
            let mut responses = txn.open_table(RESPONSES).map_err(err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(err)?;
            for entry in by_time.extract_from_if((0u64, "")..(cutoff, ""), |_, _| true).map_err(err)? {
                let (key, _) = entry.map_err(err)?;
                responses.remove(key.value().1).map_err(err)?;
                n += 1;
            }
        }
        txn.commit().map_err(err)?;
        Ok(n)
    }

    /// The operator controls last stored (none on a new store). One that does not decode fails
    /// startup: silently lifting a kill switch is worse than not starting.
    pub fn load_controls(&self) -> Result<Controls, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CONTROLS).map_err(err)?;
        match table.get(CONTROLS_KEY).map_err(err)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError(format!("operator controls: {e}"))),
            None => Ok(Controls::default()),
        }
    }

    /// Stores the operator controls; durable (fsync'd) when this returns.
    pub fn store_controls(&self, controls: &Controls) -> Result<(), StoreError> {
        let json = serde_json::to_vec(controls).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(CONTROLS).map_err(err)?.insert(CONTROLS_KEY, json.as_slice()).map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Signatures currently remembered.
    pub fn signatures(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        txn.open_table(SIGNATURES).map_err(err)?.len().map_err(err)
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        txn.open_table(RESPONSES).map_err(err)?.len().map_err(err)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(hash: u8, created_ms: u64) -> StoredResponse {
        StoredResponse { status: 202, created_ms, request_hash: [hash; 32], body: b"{\"accepted\":1}".to_vec() }
    }

    #[test]
    fn fresh_inflight_replay_mismatch_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let s = scope("acme", "prod", "k1");
        {
            let store = IdempotencyStore::open(&path, 10).unwrap();
            let guard = store.reserve(&s).unwrap();
            assert!(store.reserve(&s).is_none(), "a concurrent duplicate cannot reserve");
            let Lookup::Fresh(guard) = store.lookup(guard, &[1; 32], 1_000).unwrap() else { panic!("fresh") };
            store.complete(guard, &resp(1, 1_000)).unwrap();
        }
        let store = IdempotencyStore::open(&path, 10).unwrap();
        let look = |hash: u8, now: u64| store.lookup(store.reserve(&s).unwrap(), &[hash; 32], now).unwrap();
        assert!(matches!(look(1, 2_000), Lookup::Replay(r) if r == resp(1, 1_000)));
        assert!(matches!(look(2, 2_000), Lookup::BodyMismatch));
        // Dropping a guard without completing frees the key.
        let other = scope("acme", "prod", "k2");
        drop(store.reserve(&other));
        assert!(store.reserve(&other).is_some());
        // After the TTL the key is new again, and eviction removes it from disk.
        assert!(matches!(look(2, 12_000), Lookup::Fresh(_)));
        assert_eq!(store.evict_expired(12_000).unwrap(), 1);
        assert!(store.is_empty().unwrap());
    }

    #[test]
    fn operator_controls_survive_a_reopen() {
        use crate::ingest::auth::TenantScope;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let mut controls = Controls::default();
        controls.blocks.insert(TenantScope { tenant: "acme".into(), env: Some("dev".into()) });
        controls.overflow.insert(TenantScope { tenant: "heavy".into(), env: None });
        {
            let store = IdempotencyStore::open(&path, 10).unwrap();
            assert_eq!(store.load_controls().unwrap(), Controls::default(), "none on a new store");
            store.store_controls(&controls).unwrap();
        }
        assert_eq!(IdempotencyStore::open(&path, 10).unwrap().load_controls().unwrap(), controls);
    }

    #[test]
    fn a_signature_is_admitted_once_across_reopens_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let seen = SeenSignature { signed_at: 1_000, expires_ms: 1_300_000 };
        {
            let store = IdempotencyStore::open(&path, 10).unwrap();
            assert!(store.admit_signature(b"mac-1", &seen).unwrap());
            assert!(!store.admit_signature(b"mac-1", &seen).unwrap(), "a replay");
            assert!(store.admit_signature(b"mac-2", &SeenSignature { expires_ms: 2_000_000, ..seen }).unwrap());
        }
        let store = IdempotencyStore::open(&path, 10).unwrap();
        assert!(!store.admit_signature(b"mac-1", &seen).unwrap(), "still a replay after a restart");
        assert_eq!(store.evict_expired(1_300_000).unwrap(), 0, "not expired yet at its expiry");
        assert_eq!(store.evict_expired(1_300_001).unwrap(), 1, "only mac-1 expired");
        assert_eq!(store.signatures().unwrap(), 1);
        assert!(store.admit_signature(b"mac-1", &seen).unwrap(), "forgotten once expired");
    }
}
