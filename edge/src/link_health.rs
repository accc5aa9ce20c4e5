//! The forwarder's view of its link to core: the circuit breaker's state and how often it
//! opened. A leaf: the forwarder (own and takeover) writes it; metrics, readiness and the admin
//! status read it.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use sluice_wire::breaker::BreakerState;

#[derive(Debug, Default)]
pub struct LinkHealth {
    state: AtomicU8,
    opens: AtomicU64,
}

impl LinkHealth {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// How many times the breaker opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    pub(crate) fn set_state(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The breaker opened once more.
    pub(crate) fn opened(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_what_the_forwarder_set() {
        let link = LinkHealth::default();
        assert_eq!((link.state(), link.opens()), (BreakerState::Closed, 0));
        link.set_state(BreakerState::Open);
        link.opened();
        link.opened();
        assert_eq!((link.state(), link.opens()), (BreakerState::Open, 2));
        link.set_state(BreakerState::HalfOpen);
        assert_eq!(link.state(), BreakerState::HalfOpen);
    }
}
