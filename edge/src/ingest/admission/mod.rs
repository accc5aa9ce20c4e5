//! Admission control: what the edge refuses so that overload never becomes an outage or a loss.
//! Checked in this order on `POST /v1/events` (cheapest and widest first, all before the body is
//! read except the last):
//!
//! 1. per-IP requests/s (`429 ip_rate_limited`; off by default);
//! 2. the kill switch (in `auth`: `403 tenant_disabled` / `environment_disabled`);
//! 3. the in-flight caps on requests and request bytes (`503 overloaded`), so memory stays
//!    bounded whatever the load;
//! 4. WAL pressure (`shed`): at the budget everyone gets `503 wal_full`; above the high-water
//!    mark tenants over their share of the intake get `429 shed`;
//! 5. the tenant's events/s bucket: charged on arrival with the size of the tenant's previous
//!    request (`429 rate_limited` before reading anything), settled once the body is parsed and
//!    its events counted.
//!
//! The decisions are pure ([`shed`], [`usage`], [`quota`]); this module holds their state.

pub mod quota;
pub mod shed;
pub mod usage;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::config::AdmissionConfig;
use crate::ingest::auth::KeyStore;
use quota::{IpLimiter, Limited, Prepaid, RateInfo, TenantBucket};
use shed::{Verdict, WalLevel};
use usage::{Share, Usage};

/// Why a request was refused; the label of `sluice_edge_admission_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    IpRate,
    TenantRate,
    Shed,
    Overloaded,
    WalFull,
}

impl Reason {
    /// Every reason: the label set of the refusals metric, present from the first scrape.
    pub const ALL: [Reason; 5] =
        [Reason::IpRate, Reason::TenantRate, Reason::Shed, Reason::Overloaded, Reason::WalFull];

    /// The error code in the response body (and the metric label).
    pub fn code(self) -> &'static str {
        match self {
            Reason::IpRate => "ip_rate_limited",
            Reason::TenantRate => "rate_limited",
            Reason::Shed => "shed",
            Reason::Overloaded => "overloaded",
            Reason::WalFull => "wal_full",
        }
    }

    /// `503` when the edge as a whole cannot take more, `429` when this caller sends too much.
    pub fn is_unavailable(self) -> bool {
        matches!(self, Reason::Overloaded | Reason::WalFull)
    }
}

#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
    pub retry_after: Duration,
    /// The limiter's state, for the `RateLimit-*` headers (rate refusals only).
    pub rate: Option<RateInfo>,
}

/// Held while a request is handled: its share of the in-flight caps.
pub struct InFlight {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// A request let in by its tenant's bucket; [`Admission::charge`] completes the charge.
pub struct Admitted {
    bucket: Arc<TenantBucket>,
    prepaid: Prepaid,
}

/// Lowest `wal_high_water` honoured (see [`Admission::new`]).
pub const MIN_HIGH_WATER: f64 = 0.5;

/// The in-flight byte cap is counted in KiB so that it fits a semaphore's `u32` permits.
const KIB: u64 = 1024;

pub struct Admission {
    config: AdmissionConfig,
    max_body_bytes: usize,
    budget: u64,
    high_water: u64,
    ip: Option<IpLimiter>,
    tenants: RwLock<HashMap<String, Arc<TenantBucket>>>,
    usage: Mutex<Usage>,
    requests: Arc<Semaphore>,
    bytes_kib: Arc<Semaphore>,
    /// Drives the buckets and the intake rates (a manual clock in tests).
    clock: Clock,
    refusals: IntCounterVec,
}

impl Admission {
    /// `refusals` is the metric counted by reason; `wal_budget` is `wal.budget_bytes`.
    pub fn new(
        config: AdmissionConfig,
        max_body_bytes: usize,
        wal_budget: u64,
        refusals: IntCounterVec,
        clock: Clock,
    ) -> Self {
        // The WAL frees space a whole segment (up to a quarter of the budget) at a time, and the
        // segment being written stays: a mark below half the budget could stay crossed after core
        // acknowledged everything.
        let high_water = (wal_budget as f64 * config.wal_high_water.clamp(MIN_HIGH_WATER, 1.0)) as u64;
        let bytes_kib = (config.max_in_flight_bytes as u64 / KIB).clamp(1, u64::from(u32::MAX)) as usize;
        Self {
            ip: IpLimiter::new(config.ip_requests_per_sec, clock.clone()),
            requests: Arc::new(Semaphore::new(config.max_in_flight_requests.max(1))),
            bytes_kib: Arc::new(Semaphore::new(bytes_kib)),
            config,
            max_body_bytes,
            budget: wal_budget,
            high_water,
            tenants: RwLock::default(),
            usage: Mutex::default(),
            clock,
            refusals,
        }
    }

    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    fn refuse(&self, reason: Reason, message: String, retry_after: Duration, rate: Option<RateInfo>) -> Refusal {
        self.refusals.with_label_values(&[reason.code()]).inc();
        Refusal { reason, message, retry_after, rate }
    }

    fn limited(&self, reason: Reason, what: &str, l: Limited) -> Refusal {
        let message = format!(
            "{what} is over its limit of {} per second (burst {}); retry after the Retry-After interval",
            l.info.per_sec, l.info.burst
        );
        self.refuse(reason, message, l.retry_after, Some(l.info))
    }

    /// Step 1: requests/s of the client address (when configured and known).
    pub fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        match (&self.ip, ip) {
            (Some(limiter), Some(ip)) => {
                limiter.check(ip).map(|_| ()).map_err(|l| self.limited(Reason::IpRate, "this address", l))
            }
            _ => Ok(()),
        }
    }

    /// Step 3: a place among the requests in flight and their memory. `content_length` is the
    /// declared body size; bodies are read with a cap of `max_body_bytes` anyway.
    pub fn enter(&self, content_length: Option<u64>) -> Result<InFlight, Refusal> {
        let max = self.max_body_bytes as u64;
        // The raw body plus its decoded copy (what the request holds at its peak).
        let bytes = content_length.unwrap_or(max).min(max) + max;
        let kib = bytes.div_ceil(KIB).min(u64::from(u32::MAX)) as u32;
        let overloaded = || {
            self.refuse(
                Reason::Overloaded,
                "the edge is handling as many requests as it can; retry later".into(),
                Duration::from_secs(self.config.retry_after_secs),
                None,
            )
        };
        let request = self.requests.clone().try_acquire_owned().map_err(|_| overloaded())?;
        let bytes = self.bytes_kib.clone().try_acquire_many_owned(kib).map_err(|_| overloaded())?;
        Ok(InFlight { _request: request, _bytes: bytes })
    }

    /// The tenant's events/s: its entry in the keys file, else the edge default; 0 = unlimited.
    pub fn tenant_quota(&self, keys: &KeyStore, tenant: &str) -> u32 {
        keys.quota(tenant).unwrap_or(self.config.tenant_events_per_sec)
    }

    fn bucket(&self, tenant: &str, per_sec: u32) -> Option<Arc<TenantBucket>> {
        if per_sec == 0 {
            // Unlimited; a bucket left from an earlier quota is dropped by `forget_idle`.
            return None;
        }
        let found = self.tenants.read().unwrap_or_else(PoisonError::into_inner).get(tenant).cloned();
        match found {
            Some(b) if b.per_sec() == per_sec => Some(b),
            // New tenant, or its quota was changed by a reload: a fresh bucket at the new rate.
            _ => {
                let mut map = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
                let Some(fresh) = TenantBucket::new(per_sec, self.clock.clone()).map(Arc::new) else {
                    map.remove(tenant);
                    return None;
                };
                let b = map.entry(tenant.to_string()).or_insert_with(|| fresh.clone());
                if b.per_sec() != per_sec {
                    *b = fresh;
                }
                Some(b.clone())
            }
        }
    }

    /// Steps 4 and 5, before the body is read: WAL pressure (`wal_used` = live bytes),
    /// then one event from the tenant's bucket. `None` when the tenant is unlimited.
    pub fn admit(&self, keys: &KeyStore, tenant: &str, wal_used: u64) -> Result<Option<Admitted>, Refusal> {
        let level = WalLevel { used: wal_used, high_water: self.high_water, budget: self.budget };
        // The share walks every active tenant: only worth it when the WAL is under pressure.
        let share = if wal_used > self.high_water {
            self.usage.lock().unwrap_or_else(PoisonError::into_inner).share(tenant, self.now())
        } else {
            Share { rate: 0.0, total: 0.0, active: 0 }
        };
        let retry = Duration::from_secs(self.config.retry_after_secs);
        match shed::decide(level, share) {
            Verdict::Accept => {}
            Verdict::Full => {
                return Err(self.refuse(
                    Reason::WalFull,
                    "the edge is buffering its limit; retry later".into(),
                    retry,
                    None,
                ));
            }
            Verdict::Shed { pressure, over_share } => {
                tracing::debug!(tenant_id = tenant, pressure, over_share, "admission: shed");
                return Err(self.refuse(
                    Reason::Shed,
                    format!("the edge is under pressure and this tenant sends {over_share:.1}× its share; retry later"),
                    retry,
                    None,
                ));
            }
        }
        let Some(bucket) = self.bucket(tenant, self.tenant_quota(keys, tenant)) else { return Ok(None) };
        match bucket.admit() {
            Ok(prepaid) => Ok(Some(Admitted { bucket, prepaid })),
            Err(l) => Err(self.limited(Reason::TenantRate, "this tenant", l)),
        }
    }

    /// Step 5, once the request's `events` are counted. The result is the bucket's state for
    /// the `RateLimit-*` headers of the answer.
    pub fn charge(&self, admitted: &Admitted, events: usize) -> Result<RateInfo, Refusal> {
        let events = u32::try_from(events).unwrap_or(u32::MAX);
        admitted.bucket.charge(events, admitted.prepaid).map_err(|l| self.limited(Reason::TenantRate, "this tenant", l))
    }

    /// Records what an accepted request added to the WAL (the basis of shedding and utilization).
    pub fn record(&self, tenant: &str, wal_bytes: u64, events: u64) {
        let now = self.now();
        self.usage.lock().unwrap_or_else(PoisonError::into_inner).add(tenant, wal_bytes, events, now);
    }

    /// Accepted events/s over quota for every tenant with a quota in the keys file.
    pub fn utilization(&self, keys: &KeyStore) -> Vec<(String, f64)> {
        let now = self.now();
        let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        keys.quotas()
            .iter()
            .filter(|(_, q)| **q > 0)
            .map(|(t, q)| (t.clone(), usage.events_per_sec(t, now) / f64::from(*q)))
            .collect()
    }

    /// Whether the WAL is above its high-water mark (readiness reports it).
    pub fn wal_under_pressure(&self, wal_used: u64) -> bool {
        wal_used > self.high_water
    }

    /// Forgets idle IP buckets and tenants, so the maps stay bounded. Called every minute.
    pub fn forget_idle(&self) {
        if let Some(ip) = &self.ip {
            ip.forget_idle();
        }
        let now = self.now();
        self.usage.lock().unwrap_or_else(PoisonError::into_inner).evict_idle(now);
    }

    /// Drops the buckets of tenants whose quota is now unlimited (or who left the keys file).
    pub fn forget_unlimited(&self, keys: &KeyStore) {
        let default = self.config.tenant_events_per_sec;
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|tenant, _| keys.quota(tenant).unwrap_or(default) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn admission(config: AdmissionConfig, budget: u64) -> Admission {
        let refusals = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        Admission::new(config, 512 * 1024, budget, refusals, Clock::real())
    }

    #[test]
    fn in_flight_caps_bound_requests_and_bytes() {
        let a = admission(
            AdmissionConfig { max_in_flight_requests: 3, max_in_flight_bytes: 2816 * 1024, ..Default::default() },
            1 << 30,
        );
        // An unknown-length request reserves 2 × 512 KiB, a 100-byte one 513 KiB: of 2816 KiB,
        // two large and one small fit, and three large do not.
        let held: Vec<_> = (0..2).map(|_| a.enter(None).expect("fits")).collect();
        let third = a.enter(Some(100)).expect("a small body fits beside them");
        assert_eq!(a.enter(Some(100)).err().map(|r| r.reason), Some(Reason::Overloaded), "request cap");
        drop(third);
        assert_eq!(a.enter(None).err().map(|r| r.reason), Some(Reason::Overloaded), "byte cap");
        drop(held);
        assert!(a.enter(None).is_ok(), "released on drop");
        assert_eq!(a.refusals.with_label_values(&["overloaded"]).get(), 2);
    }

    #[test]
    fn wal_pressure_sheds_the_hog_and_spares_the_small_tenant() {
        let a = admission(AdmissionConfig { tenant_events_per_sec: 0, ..Default::default() }, 1000);
        let keys = KeyStore::default();
        for _ in 0..100 {
            a.record("hog", 900, 9);
            a.record("small", 100, 1);
        }
        assert!(a.admit(&keys, "hog", 500).is_ok(), "below high water (800)");
        assert_eq!(a.admit(&keys, "hog", 990).err().map(|r| r.reason), Some(Reason::Shed));
        assert!(a.admit(&keys, "small", 990).is_ok());
        assert_eq!(a.admit(&keys, "small", 1000).err().map(|r| r.reason), Some(Reason::WalFull));
    }

    #[test]
    fn tenant_buckets_follow_quota_changes() {
        let a = admission(AdmissionConfig { tenant_events_per_sec: 10, ..Default::default() }, 1 << 30);
        let keys = KeyStore::default();
        let first = a.admit(&keys, "t", 0).unwrap().expect("limited tenant");
        let err = a.charge(&first, 40).err();
        assert!(err.is_none(), "the burst (30) takes one request larger than itself");
        let refused = a.admit(&keys, "t", 0).err().expect("bucket empty");
        assert_eq!(refused.reason, Reason::TenantRate);
        assert_eq!(refused.rate.map(|r| (r.per_sec, r.burst, r.remaining)), Some((10, 30, 0)));
        // A changed quota (reload) starts a fresh bucket.
        assert!(a.bucket("t", 20).is_some_and(|b| b.per_sec() == 20));
        assert!(a.bucket("t", 0).is_none(), "0 = unlimited");
        let mut file = crate::ingest::auth::KeysFile::default();
        file.tenants
            .insert("t".into(), crate::ingest::auth::TenantSettings { events_per_sec: Some(0), ..Default::default() });
        a.forget_unlimited(&KeyStore::from_file(file).unwrap());
        assert!(a.tenants.read().unwrap().is_empty(), "the stale bucket is dropped");
    }
}
