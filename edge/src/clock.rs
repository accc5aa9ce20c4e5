//! The edge's clocks. A leaf every module may import.
//!
//! - [`Clock`]: the monotonic clock of admission control (tenant and per-IP buckets, intake
//!   rates): the real one, or a manual one that only moves when a test advances it, so the tests
//!   of quotas, `Retry-After` and the noisy neighbour prove exact figures instead of racing the
//!   machine.
//! - [`now_ms`]: wall-clock epoch milliseconds (`received_at`, idempotency timestamps, record
//!   ages, replication sequence numbers).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::FakeRelativeClock;

/// Time since the clock was made; the `Instant` of the rate limiters.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    Real(Instant),
    Manual(FakeRelativeClock),
}

/// The handle that moves a [`Clock::manual`].
#[derive(Debug, Clone)]
pub struct ManualClock(FakeRelativeClock);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock {
    pub fn real() -> Self {
        Clock(Source::Real(Instant::now()))
    }

    /// A clock standing still at zero until the returned handle advances it.
    pub fn manual() -> (Self, ManualClock) {
        // Clones of a FakeRelativeClock share its time.
        let fake = FakeRelativeClock::default();
        (Clock(Source::Manual(fake.clone())), ManualClock(fake))
    }

    pub fn elapsed(&self) -> Duration {
        match &self.0 {
            Source::Real(start) => start.elapsed(),
            Source::Manual(fake) => governor::clock::Clock::now(fake).into(),
        }
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

/// Wall-clock epoch milliseconds; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let (clock, hand) = Clock::manual();
        let copy = clock.clone();
        assert_eq!(clock.elapsed(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.elapsed(), Duration::ZERO);
        hand.advance(Duration::from_millis(1500));
        assert_eq!((clock.elapsed(), copy.elapsed()), (Duration::from_millis(1500), Duration::from_millis(1500)));
        assert!(Clock::real().elapsed() < Duration::from_secs(1));
    }
}
