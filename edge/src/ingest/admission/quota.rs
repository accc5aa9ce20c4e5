//! Rate limits on governor's GCRA: per tenant in events/s, per client IP in requests/s, each
//! with burst = 3× the rate (the ADR's choice). Also turns a limiter's state into the answer's
//! `Retry-After` and `RateLimit-*` figures.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use crate::clock::Clock;

/// Burst is this many seconds' worth of the rate.
pub const BURST_FACTOR: u32 = 3;

type Instant = Duration;
type Direct = RateLimiter<NotKeyed, InMemoryState, Clock, StateInformationMiddleware>;
type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, Clock, StateInformationMiddleware>;

/// `per_sec` with a burst of 3×; `None` for 0 (unlimited).
pub fn quota(per_sec: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(BURST_FACTOR)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// What a limiter says about a caller, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// The configured rate per second.
    pub per_sec: u32,
    /// The bucket size (burst).
    pub burst: u32,
    /// What may still be sent right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl RateInfo {
    fn from_snapshot(per_sec: u32, s: &StateSnapshot) -> Self {
        let q = s.quota();
        let burst = q.burst_size().get();
        let remaining = s.remaining_burst_capacity();
        RateInfo { per_sec, burst, remaining, reset: q.replenish_interval() * burst.saturating_sub(remaining) }
    }
}

/// A refusal by a limiter: when to retry, and the state for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub info: RateInfo,
}

/// One tenant's bucket of events.
///
/// A request is charged before its body is read, so a tenant over its quota is refused without
/// reading or parsing anything. The number of events is not known then, so the charge on arrival
/// is the size of the tenant's previous request, settled once the body is counted: a larger
/// request pays the difference, a smaller one has overpaid (SDKs send batches of similar size).
/// A refused charge takes nothing from the bucket, so a flooding tenant still gets its quota.
pub struct TenantBucket {
    per_sec: u32,
    limiter: Direct,
    /// Events in this tenant's last request: the charge on arrival.
    last_events: AtomicU32,
}

/// A request let in by [`TenantBucket::admit`]: what it paid and the bucket's state then.
#[derive(Debug, Clone, Copy)]
pub struct Prepaid {
    events: u32,
    info: RateInfo,
}

impl TenantBucket {
    pub fn new(per_sec: u32, clock: Clock) -> Option<Self> {
        Some(Self {
            per_sec,
            limiter: RateLimiter::direct_with_clock(quota(per_sec)?, clock)
                .with_middleware::<StateInformationMiddleware>(),
            last_events: AtomicU32::new(1),
        })
    }

    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }

    fn burst(&self) -> u32 {
        self.per_sec.saturating_mul(BURST_FACTOR).max(1)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_sec.max(1)
    }

    /// A refusal: wait until `denied` would pass, plus `extra_events` more (what the retry will
    /// be charged beyond the refused part).
    fn limited(&self, denied: &NotUntil<Instant>, extra_events: u32) -> Limited {
        let wait = denied.wait_time_from(self.limiter.clock().now()) + self.interval() * extra_events;
        Limited {
            retry_after: wait,
            info: RateInfo { per_sec: self.per_sec, burst: self.burst(), remaining: 0, reset: wait },
        }
    }

    fn take(&self, events: u32) -> Result<Result<RateInfo, NotUntil<Instant>>, Limited> {
        let n = NonZeroU32::new(events.clamp(1, self.burst())).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_n(n) {
            Ok(Ok(s)) => Ok(Ok(RateInfo::from_snapshot(self.per_sec, &s))),
            Ok(Err(denied)) => Ok(Err(denied)),
            // Cannot happen (n ≤ burst); refuse for one burst's time rather than panic.
            Err(_) => Err(Limited {
                retry_after: Duration::from_secs(BURST_FACTOR.into()),
                info: RateInfo { per_sec: self.per_sec, burst: self.burst(), remaining: 0, reset: Duration::ZERO },
            }),
        }
    }

    /// Charges a request on arrival (the size of the previous one).
    pub fn admit(&self) -> Result<Prepaid, Limited> {
        let events = self.last_events.load(Ordering::Relaxed).clamp(1, self.burst());
        match self.take(events)? {
            Ok(info) => Ok(Prepaid { events, info }),
            Err(denied) => Err(self.limited(&denied, 0)),
        }
    }

    /// Settles a request of `events` events (clamped to the burst: a request larger than the
    /// burst costs the whole burst rather than being refused forever).
    pub fn charge(&self, events: u32, prepaid: Prepaid) -> Result<RateInfo, Limited> {
        let events = events.clamp(1, self.burst());
        self.last_events.store(events, Ordering::Relaxed);
        if events <= prepaid.events {
            return Ok(prepaid.info);
        }
        match self.take(events - prepaid.events)? {
            Ok(info) => Ok(info),
            // The retry is charged `events` on arrival: wait for the prepaid part as well.
            Err(denied) => Err(self.limited(&denied, prepaid.events)),
        }
    }
}

/// Requests per second per client address.
pub struct IpLimiter {
    per_sec: u32,
    limiter: Keyed,
}

impl IpLimiter {
    pub fn new(per_sec: u32, clock: Clock) -> Option<Self> {
        Some(Self { per_sec, limiter: RateLimiter::new(quota(per_sec)?, DefaultKeyedStateStore::default(), clock) })
    }

    pub fn check(&self, ip: IpAddr) -> Result<RateInfo, Limited> {
        match self.limiter.check_key(&ip) {
            Ok(s) => Ok(RateInfo::from_snapshot(self.per_sec, &s)),
            Err(denied) => {
                let wait = denied.wait_time_from(self.limiter.clock().now());
                let burst = self.per_sec.saturating_mul(BURST_FACTOR);
                Err(Limited {
                    retry_after: wait,
                    info: RateInfo { per_sec: self.per_sec, burst, remaining: 0, reset: wait },
                })
            }
        }
    }

    /// Drops addresses whose bucket is full again (they carry no state), so the map stays bounded.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// 10 events/s (burst 30) on a clock that moves only when told.
    fn bucket() -> (TenantBucket, crate::clock::ManualClock) {
        let (clock, hand) = Clock::manual();
        (TenantBucket::new(10, clock).expect("limited"), hand)
    }

    #[test]
    fn a_tenant_gets_its_burst_then_an_accurate_retry_after() {
        // Requests of 5 events: 6 fit, each leaving exactly 5 fewer.
        let (b, hand) = bucket();
        for i in 0..6 {
            let a = b.admit().unwrap_or_else(|_| panic!("request {i} admitted"));
            let info = b.charge(5, a).unwrap_or_else(|_| panic!("request {i} charged"));
            assert_eq!((info.burst, info.per_sec, info.remaining), (30, 10, 30 - 5 * (i + 1)), "request {i}");
        }
        // Empty: refused on arrival, told to wait until 5 fit (a token per 100 ms).
        let denied = b.admit().expect_err("over quota");
        assert_eq!((denied.info.remaining, denied.retry_after), (0, 500 * MS));
        hand.advance(499 * MS);
        assert!(b.admit().is_err(), "1 ms before Retry-After it does not fit yet");
        hand.advance(MS);
        let a = b.admit().expect("admitted at Retry-After");
        assert_eq!(b.charge(5, a).map(|i| i.remaining), Ok(0), "the whole request fits at Retry-After");
    }

    #[test]
    fn a_larger_request_pays_the_difference_and_refusals_cost_nothing() {
        // The first request prepays 1 and settles 20: 10 left.
        let (b, hand) = bucket();
        assert_eq!(b.charge(20, b.admit().unwrap()).unwrap().remaining, 10);
        // The next prepays 20 (the last size): refused, told to wait for 10 more (1 s). Refused
        // again and again, it is told the same: a refusal takes nothing.
        for _ in 0..3 {
            assert_eq!(b.admit().map(|_| ()).map_err(|l| l.retry_after), Err(1000 * MS));
        }
        hand.advance(1000 * MS);
        assert_eq!(b.charge(20, b.admit().expect("fits after Retry-After")).map(|i| i.remaining), Ok(0));

        // Settlement: prepay 5 of a request that turns out to hold 30, with 25 in the bucket.
        let (b, hand) = bucket();
        b.charge(5, b.admit().unwrap()).unwrap();
        let prepaid = b.admit().unwrap();
        let refused = b.charge(30, prepaid).expect_err("25 more do not fit in 20");
        // 5 more tokens (0.5 s), plus the 5 the retry prepays again (0.5 s).
        assert_eq!(refused.retry_after, 1000 * MS);
        hand.advance(999 * MS);
        assert!(b.admit().is_err(), "the retry prepays 30, which fit only at Retry-After");
        hand.advance(MS);
        let retry = b.admit().expect("the retry prepays 30 and fits");
        assert_eq!(b.charge(30, retry).unwrap().remaining, 0);
    }

    #[test]
    fn a_request_larger_than_the_burst_costs_the_burst() {
        let (b, _hand) = bucket();
        let a = b.admit().unwrap();
        let info = b.charge(500, a).expect("a full bucket takes a request larger than the burst");
        assert_eq!(info.remaining, 0);
        assert!(b.admit().is_err());
        assert!(TenantBucket::new(0, Clock::real()).is_none(), "0 is unlimited");
    }

    #[test]
    fn ip_limits_count_requests_per_address() {
        let (clock, hand) = Clock::manual();
        let l = IpLimiter::new(2, clock).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for i in 0..6 {
            assert_eq!(l.check(a).map(|r| r.remaining), Ok(5 - i), "burst of 6");
        }
        let denied = l.check(a).expect_err("burst of 6 used");
        assert_eq!(denied.retry_after, 500 * MS, "one request per 500 ms");
        assert!(l.check(b).is_ok(), "another address has its own bucket");
        hand.advance(500 * MS);
        assert!(l.check(a).is_ok(), "a request's worth refilled");
    }
}
