//! Recent intake per tenant as exponentially decaying rates (pure: the caller passes the time).
//! What WAL-pressure shedding compares tenants by, and what `tenant_quota_utilization` reports.

use std::collections::HashMap;

/// Time constant of the decay, seconds: a burst weighs for a few seconds, then fades.
pub const TAU_SECS: f64 = 2.0;

/// Below this many bytes/s a tenant no longer counts as active (its share is not reserved).
const ACTIVE_BYTES_PER_SEC: f64 = 1.0;

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    value: f64,
    at: f64,
}

impl Rate {
    fn at(&self, now: f64) -> f64 {
        self.value * (-(now - self.at).max(0.0) / TAU_SECS).exp()
    }

    fn add(&mut self, amount: f64, now: f64) {
        self.value = self.at(now) + amount / TAU_SECS;
        self.at = now;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TenantUsage {
    bytes: Rate,
    events: Rate,
}

/// A tenant's part of the recent WAL intake.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// This tenant's WAL bytes/s.
    pub rate: f64,
    /// All tenants' WAL bytes/s.
    pub total: f64,
    /// Tenants with a non-negligible rate, this one included.
    pub active: usize,
}

impl Share {
    /// How many times its equal share of the intake the tenant takes (0 when idle).
    pub fn over_share(&self) -> f64 {
        if self.total <= 0.0 || self.active == 0 {
            return 0.0;
        }
        self.rate / (self.total / self.active as f64)
    }
}

#[derive(Debug, Default)]
pub struct Usage {
    tenants: HashMap<String, TenantUsage>,
}

impl Usage {
    /// Records an accepted request: `bytes` written to the WAL, `events` accepted.
    pub fn add(&mut self, tenant: &str, bytes: u64, events: u64, now: f64) {
        let u = match self.tenants.get_mut(tenant) {
            Some(u) => u,
            None => self.tenants.entry(tenant.to_string()).or_default(),
        };
        u.bytes.add(bytes as f64, now);
        u.events.add(events as f64, now);
    }

    pub fn share(&self, tenant: &str, now: f64) -> Share {
        let mut share = Share { rate: 0.0, total: 0.0, active: 0 };
        for (name, u) in &self.tenants {
            let r = u.bytes.at(now);
            if r < ACTIVE_BYTES_PER_SEC && name != tenant {
                continue;
            }
            share.total += r;
            share.active += 1;
            if name == tenant {
                share.rate = r;
            }
        }
        share
    }

    /// The tenant's recent accepted events per second.
    pub fn events_per_sec(&self, tenant: &str, now: f64) -> f64 {
        self.tenants.get(tenant).map_or(0.0, |u| u.events.at(now))
    }

    /// Forgets tenants idle long enough to have decayed to nothing (keeps the map bounded).
    pub fn evict_idle(&mut self, now: f64) {
        self.tenants.retain(|_, u| u.bytes.at(now) >= ACTIVE_BYTES_PER_SEC / 100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_converges_and_decays() {
        let mut u = Usage::default();
        // 100 events of 10 bytes per second for 20 s, in 10 ms steps.
        for i in 0..2000 {
            u.add("a", 10, 1, i as f64 * 0.01);
        }
        let eps = u.events_per_sec("a", 20.0);
        assert!((eps - 100.0).abs() < 3.0, "{eps}");
        assert!(u.events_per_sec("a", 30.0) < 1.0, "decays after the traffic stops");
        u.add("b", 10, 1, 199.0);
        u.evict_idle(200.0);
        assert_eq!(u.tenants.len(), 1, "the idle tenant is forgotten");
        assert_eq!(u.share("a", 200.0), Share { rate: 0.0, total: u.share("b", 200.0).rate, active: 1 });
    }

    #[test]
    fn over_share_compares_tenants_with_an_equal_split() {
        let mut u = Usage::default();
        for i in 0..1000 {
            let now = i as f64 * 0.01;
            u.add("hog", 900, 9, now);
            u.add("small", 100, 1, now);
        }
        let hog = u.share("hog", 10.0);
        assert_eq!(hog.active, 2);
        assert!((hog.over_share() - 1.8).abs() < 0.01, "{hog:?}");
        assert!((u.share("small", 10.0).over_share() - 0.2).abs() < 0.01);
        assert_eq!(u.share("new", 10.0).over_share(), 0.0, "a tenant without intake is under its share");
        assert_eq!(Usage::default().share("x", 0.0).over_share(), 0.0);
    }
}
