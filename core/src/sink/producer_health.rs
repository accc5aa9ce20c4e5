//! When to give up on the Kafka producer in use and build a new one. Pure: the caller passes the
//! time and the outcome of each frame; IO (creating producers) stays in [`super::kafka`].
//!
//! librdkafka recovers an idempotent producer from most broker trouble by itself (it retries,
//! and acquires a new producer ID after `UNKNOWN_PRODUCER_ID` or timed-out batches), and raises a
//! fatal error when it cannot. But a producer can also end up making no progress without a fatal
//! error: against a broker that lost the producer's state it was seen answering
//! `UNKNOWN_PRODUCER_ID` about 9 times a second for minutes, with core logging only
//! `MessageTimedOut`, until core was restarted; a fresh producer then drained everything in
//! seconds. So core judges the producer by its results, not by librdkafka's view of itself.
//!
//! Only frames sent with the producer in use count (each outcome names the generation that sent
//! it): a frame that was still in flight on a replaced producer says nothing about the new one.

use std::time::Duration;

/// Shortest time between two replacements; doubled after each replacement that is not followed
/// by a delivery, so a broker outage (which no producer can cure) costs a new producer every
/// few minutes at most.
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Failed frames, each with a producer-state error, before the producer counts as wedged.
const PRODUCER_STATE_FAILURES: u32 = 2;
/// Failed frames (of any kind) before a lasting failure counts as a stall; one failure is not a
/// pattern.
const STALL_FAILURES: u32 = 2;

/// What one failed frame says about its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// librdkafka raised a fatal error: the producer will never deliver again.
    Fatal,
    /// A delivery report with a producer-state error (`UNKNOWN_PRODUCER_ID`,
    /// `OUT_OF_ORDER_SEQUENCE_NUMBER`, `INVALID_PRODUCER_EPOCH`, …): librdkafka already tried its
    /// own recovery for that message.
    ProducerState,
    /// Anything else (timeouts, broker errors): the broker may be at fault, not the producer.
    Other,
}

/// Why a producer was replaced (the `reason` label of `sluice_core_producer_replacements_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Fatal,
    ProducerState,
    Stalled,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::Fatal, Reason::ProducerState, Reason::Stalled];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fatal => "fatal",
            Reason::ProducerState => "producer_state",
            Reason::Stalled => "stalled",
        }
    }
}

#[derive(Debug)]
pub struct ProducerHealth {
    /// Counts producers: the first is 0, each replacement adds one.
    generation: u64,
    /// Of the producer in use, since its last delivery.
    failed_frames: u32,
    producer_state_failures: u32,
    failing_since: Option<Duration>,
    /// No replacement before this time.
    not_before: Duration,
    backoff: Duration,
    /// How long frames may fail without a single delivery before the producer counts as stalled.
    stall_after: Duration,
}

impl ProducerHealth {
    pub fn new(stall_after: Duration) -> Self {
        Self {
            generation: 0,
            failed_frames: 0,
            producer_state_failures: 0,
            failing_since: None,
            not_before: Duration::ZERO,
            backoff: MIN_BACKOFF,
            stall_after,
        }
    }

    /// The generation of the producer in use.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Frames failed since the current producer's last delivery.
    pub fn failed_frames(&self) -> u32 {
        self.failed_frames
    }

    /// A frame sent with producer `generation` was delivered.
    pub fn delivered(&mut self, generation: u64) {
        if generation != self.generation {
            return;
        }
        self.failed_frames = 0;
        self.producer_state_failures = 0;
        self.failing_since = None;
        self.backoff = MIN_BACKOFF;
    }

    /// A frame sent with producer `generation` failed at `now`. `Some(reason)`: replace the
    /// producer now (then call [`ProducerHealth::replaced`]).
    pub fn failed(&mut self, generation: u64, failure: Failure, now: Duration) -> Option<Reason> {
        if generation != self.generation {
            return None;
        }
        self.failed_frames += 1;
        let since = *self.failing_since.get_or_insert(now);
        if failure == Failure::ProducerState {
            self.producer_state_failures += 1;
        }
        let reason = if failure == Failure::Fatal {
            Reason::Fatal
        } else if self.producer_state_failures >= PRODUCER_STATE_FAILURES {
            Reason::ProducerState
        } else if self.failed_frames >= STALL_FAILURES && now.saturating_sub(since) >= self.stall_after {
            Reason::Stalled
        } else {
            return None;
        };
        (now >= self.not_before).then_some(reason)
    }

    /// A new producer is in use from `now`.
    pub fn replaced(&mut self, now: Duration) {
        self.generation += 1;
        self.failed_frames = 0;
        self.producer_state_failures = 0;
        self.failing_since = None;
        self.not_before = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_fatal_error_replaces_at_once() {
        let mut h = ProducerHealth::new(STALL);
        assert_eq!(h.failed(0, Failure::Fatal, s(1)), Some(Reason::Fatal));
        h.replaced(s(1));
        assert_eq!(h.generation(), 1);
    }

    #[test]
    fn repeated_producer_state_errors_replace_but_one_does_not() {
        let mut h = ProducerHealth::new(STALL);
        assert_eq!(h.failed(0, Failure::ProducerState, s(1)), None, "librdkafka may still recover from one");
        assert_eq!(h.failed(0, Failure::ProducerState, s(2)), Some(Reason::ProducerState));
    }

    #[test]
    fn failures_without_a_delivery_for_the_stall_time_replace() {
        let mut h = ProducerHealth::new(STALL);
        assert_eq!(h.failed(0, Failure::Other, s(10)), None);
        assert_eq!(h.failed(0, Failure::Other, s(39)), None, "not failing for 30 s yet");
        assert_eq!(h.failed(0, Failure::Other, s(40)), Some(Reason::Stalled));
        // One failure, however old, is not a stall: a frame can take the whole message timeout.
        let mut h = ProducerHealth::new(STALL);
        assert_eq!(h.failed(0, Failure::Other, s(100)), None);
    }

    #[test]
    fn a_delivery_clears_the_record() {
        let mut h = ProducerHealth::new(STALL);
        h.failed(0, Failure::ProducerState, s(1));
        h.failed(0, Failure::Other, s(2));
        h.delivered(0);
        assert_eq!(h.failed_frames(), 0);
        assert_eq!(h.failed(0, Failure::ProducerState, s(3)), None, "the earlier producer-state error was forgiven");
        assert_eq!(h.failed(0, Failure::Other, s(32)), None, "the stall clock restarted at 3 s, not 1 s");
        assert_eq!(h.failed(0, Failure::Other, s(33)), Some(Reason::Stalled));
    }

    #[test]
    fn outcomes_of_a_replaced_producer_do_not_count() {
        let mut h = ProducerHealth::new(STALL);
        h.failed(0, Failure::Fatal, s(1));
        h.replaced(s(1));
        // Frames still in flight on producer 0 fail after the replacement.
        for t in 2..10 {
            assert_eq!(h.failed(0, Failure::Fatal, s(t)), None);
        }
        assert_eq!(h.failed_frames(), 0);
        h.failed(1, Failure::Other, s(10));
        h.delivered(0);
        assert_eq!(h.failed_frames(), 1, "a late delivery by producer 0 says nothing about producer 1");
    }

    #[test]
    fn replacements_back_off_until_a_delivery() {
        let mut h = ProducerHealth::new(STALL);
        h.replaced(s(0));
        assert_eq!(h.failed(1, Failure::Fatal, s(1)), None, "within the first backoff (5 s)");
        assert_eq!(h.failed(1, Failure::Fatal, s(5)), Some(Reason::Fatal));
        h.replaced(s(5));
        assert_eq!(h.failed(2, Failure::Fatal, s(14)), None, "backoff doubled to 10 s");
        assert_eq!(h.failed(2, Failure::Fatal, s(15)), Some(Reason::Fatal));
        h.replaced(s(15));
        h.delivered(3);
        h.replaced(s(16));
        assert_eq!(h.failed(4, Failure::Fatal, s(21)), Some(Reason::Fatal), "a delivery reset the backoff to 5 s");
        let mut t = 100;
        for _ in 0..20 {
            h.replaced(s(t));
            t += 1000;
        }
        assert_eq!(h.backoff, MAX_BACKOFF);
    }
}
