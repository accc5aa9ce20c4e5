//! A circuit breaker for a downstream that fails as a whole (core for the edge's forwarder, Kafka
//! for core's sink). Pure: no IO and no clock; callers pass `now` (time since any fixed origin)
//! and a jitter fraction, so tests drive it deterministically. It lives here because both
//! sides of the edge↔core link use it.
//!
//! - **Closed**: traffic flows.
//! - **Open** (after a failure): nothing is sent until the backoff passes. Backoff doubles per
//!   consecutive failure up to a cap, with "equal jitter" (half fixed, half random) so many
//!   clients that failed together do not come back together.
//! - **Half-open**: the backoff passed; exactly one probe is let through. Its success closes the
//!   breaker, its failure opens it again with a longer backoff.

use std::time::Duration;

/// The three states, as exported in metrics (`0`, `1`, `2`) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// Inverse of `self as u8` (for states kept in an atomic).
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send.
    Allow,
    /// Half-open: send one probe and report its outcome (or [`Breaker::probe_abandoned`]).
    Probe,
    /// Wait this long, then ask again (open, or a probe is already out).
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    base: Duration,
    max: Duration,
    state: BreakerState,
    /// Consecutive failures since the last success.
    failures: u32,
    open_until: Duration,
    /// How long a caller waits while another one's probe is out.
    probe_poll: Duration,
}

impl Breaker {
    /// `base`: backoff after the first failure; `max`: the cap.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            state: BreakerState::Closed,
            failures: 0,
            open_until: Duration::ZERO,
            probe_poll: base.clamp(Duration::from_millis(10), Duration::from_millis(100)),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Asks whether a request may go out at `now`; moves open to half-open once the backoff passed.
    pub fn poll(&mut self, now: Duration) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Allow,
            BreakerState::HalfOpen => Permit::Wait(self.probe_poll),
            BreakerState::Open if now < self.open_until => Permit::Wait(self.open_until - now),
            BreakerState::Open => {
                self.state = BreakerState::HalfOpen;
                Permit::Probe
            }
        }
    }

    /// A request failed: open (again) and return the backoff. `jitter` in `[0, 1)` picks where
    /// in the upper half of the backoff the retry lands.
    pub fn on_failure(&mut self, now: Duration, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubling = 2u32.saturating_pow(self.failures.saturating_sub(1).min(20));
        let backoff = self.base.saturating_mul(doubling).min(self.max);
        let delay = backoff / 2 + backoff.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        self.state = BreakerState::Open;
        self.open_until = now + delay;
        delay
    }

    /// A request succeeded: close.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
    }

    /// The probe ended without telling success from failure (e.g. nothing reached the
    /// downstream): let the next caller probe at once.
    pub fn probe_abandoned(&mut self, now: Duration) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open;
            self.open_until = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn opens_backs_off_exponentially_with_jitter_and_caps() {
        let mut b = Breaker::new(100 * MS, 1000 * MS);
        assert_eq!(b.poll(Duration::ZERO), Permit::Allow);
        // No jitter: half the backoff; full jitter: just under all of it.
        assert_eq!(b.on_failure(Duration::ZERO, 0.0), 50 * MS);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.on_failure(Duration::ZERO, 0.0), 100 * MS);
        assert_eq!(b.on_failure(Duration::ZERO, 0.0), 200 * MS);
        let d = b.on_failure(Duration::ZERO, 0.999);
        assert!(d > 790 * MS && d < 800 * MS, "{d:?}");
        for _ in 0..40 {
            assert!(b.on_failure(Duration::ZERO, 0.999) <= 1000 * MS, "capped");
        }
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let mut b = Breaker::new(100 * MS, 1000 * MS);
        let d = b.on_failure(Duration::ZERO, 0.0);
        assert_eq!(b.poll(10 * MS), Permit::Wait(d - 10 * MS), "open: wait out the backoff");
        assert_eq!(b.poll(d), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.poll(d), Permit::Wait(_)), "a second caller waits for the probe");
        // The probe fails: open again, longer.
        let d2 = b.on_failure(d, 0.0);
        assert_eq!(d2, 2 * d);
        assert_eq!(b.poll(d + d2), Permit::Probe);
        b.on_success();
        assert_eq!((b.state(), b.failures()), (BreakerState::Closed, 0));
        assert_eq!(b.poll(d + d2), Permit::Allow);
        assert_eq!(b.on_failure(Duration::ZERO, 0.0), 50 * MS, "backoff starts over after a success");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let mut b = Breaker::new(100 * MS, 1000 * MS);
        b.on_failure(Duration::ZERO, 0.0);
        assert_eq!(b.poll(60 * MS), Permit::Probe);
        b.probe_abandoned(60 * MS);
        assert_eq!(b.poll(60 * MS), Permit::Probe);
        b.probe_abandoned(60 * MS);
        b.on_success();
        b.probe_abandoned(70 * MS);
        assert_eq!(b.state(), BreakerState::Closed, "abandoning after a close changes nothing");
        for s in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
            assert_eq!(BreakerState::from_u8(s as u8), s);
        }
    }
}
