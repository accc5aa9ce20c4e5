//! Core's circuit breaker towards its sink (Kafka). While deliveries fail, core stops reading
//! frames: streams the edges open wait unread (QUIC flow control then holds the edges' sends),
//! nothing is acked, and the edges keep their WAL and go on answering `202` until their budget.
//! After a backoff one frame is read as a probe; when its delivery succeeds the circuit closes and
//! every waiting stream is read.
//!
//! The state machine is the pure [`sluice_wire::breaker::Breaker`]; this is its async gate.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use sluice_wire::breaker::{Breaker, BreakerState, Permit};

const BASE_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a waiting stream sleeps before asking again (a probe may have closed the circuit).
const MAX_POLL: Duration = Duration::from_millis(100);

pub struct SinkCircuit {
    breaker: Mutex<Breaker>,
    epoch: Instant,
    /// Metrics: the state (as `BreakerState as i64`) and the number of times it opened.
    state: IntGauge,
    opens: IntCounter,
}

/// Leave to read one frame. A probe that ends without a delivery verdict (e.g. every batch was a
/// duplicate) lets the next stream probe.
pub struct Pass<'a> {
    circuit: &'a SinkCircuit,
    probe: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            let now = self.circuit.epoch.elapsed();
            let mut b = self.circuit.lock();
            b.probe_abandoned(now);
            self.circuit.publish(&b);
        }
    }
}

impl SinkCircuit {
    pub fn new(state: IntGauge, opens: IntCounter) -> Self {
        Self { breaker: Mutex::new(Breaker::new(BASE_BACKOFF, MAX_BACKOFF)), epoch: Instant::now(), state, opens }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, b: &Breaker) {
        self.state.set(b.state() as i64);
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// Waits until a frame may be read.
    pub async fn pass(&self) -> Pass<'_> {
        loop {
            let permit = {
                let mut b = self.lock();
                let permit = b.poll(self.epoch.elapsed());
                self.publish(&b);
                permit
            };
            match permit {
                Permit::Allow => return Pass { circuit: self, probe: false },
                Permit::Probe => {
                    tracing::info!("core: sink circuit half-open; reading one frame as a probe");
                    return Pass { circuit: self, probe: true };
                }
                Permit::Wait(d) => tokio::time::sleep(d.min(MAX_POLL)).await,
            }
        }
    }

    /// A delivery succeeded: close the circuit.
    pub fn delivered(&self) {
        let mut b = self.lock();
        if b.state() != BreakerState::Closed {
            tracing::info!(failures = b.failures(), "core: sink circuit closed; reading frames again");
        }
        b.on_success();
        self.publish(&b);
    }

    /// A delivery failed. Opens a closed circuit, reopens after a failed probe; frames that were
    /// already in flight when it opened do not lengthen the backoff again.
    pub fn failed(&self) {
        let mut b = self.lock();
        if b.state() == BreakerState::Open {
            return;
        }
        let delay = b.on_failure(self.epoch.elapsed(), rand::random::<f64>());
        self.opens.inc();
        self.publish(&b);
        tracing::warn!(
            failures = b.failures(),
            retry_in_ms = delay.as_millis() as u64,
            circuit = "open",
            "core: sink deliveries failing; not reading or acking frames until a probe succeeds"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> SinkCircuit {
        SinkCircuit::new(IntGauge::new("s", "s").unwrap(), IntCounter::new("o", "o").unwrap())
    }

    #[tokio::test]
    async fn frames_wait_while_open_and_one_probe_closes_it() {
        let c = circuit();
        drop(c.pass().await);
        c.failed();
        c.failed();
        assert_eq!(c.state(), BreakerState::Open);
        assert_eq!(c.lock().failures(), 1, "a second in-flight failure does not escalate");
        assert_eq!((c.state.get(), c.opens.get()), (BreakerState::Open as i64, 1));
        let started = tokio::time::Instant::now();
        let probe = c.pass().await;
        assert!(probe.probe, "the first frame after the backoff is a probe");
        assert!(started.elapsed() >= BASE_BACKOFF / 2, "it waited for the backoff");
        // A second stream waits while the probe is out, and goes once the probe succeeds.
        let waiter = async { c.pass().await.probe };
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.delivered();
            drop(probe);
        };
        let (second_was_probe, ()) = tokio::join!(waiter, release);
        assert!(!second_was_probe);
        assert_eq!(c.state(), BreakerState::Closed);
        assert_eq!(c.state.get(), BreakerState::Closed as i64);
    }

    #[tokio::test]
    async fn an_abandoned_probe_hands_over_to_the_next_frame() {
        let c = circuit();
        c.failed();
        drop(c.pass().await);
        assert!(c.pass().await.probe, "the next frame probes");
    }
}
