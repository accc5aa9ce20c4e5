//! Shedding by WAL pressure (pure). Below the high-water mark everything is accepted. Between it
//! and the budget, a tenant is shed (`429`) when it takes more than `1 / pressure` times its
//! equal share of the recent intake, where pressure rises from 0 at the high-water mark to 1 at
//! the budget: the biggest hogs go first, and near the budget everyone above an equal share is
//! shed. Tenants at or under their share are only refused at the budget itself (`503`), since
//! nothing may be accepted that cannot be persisted.

use super::usage::Share;

/// WAL occupancy and thresholds, bytes.
#[derive(Debug, Clone, Copy)]
pub struct WalLevel {
    pub used: u64,
    pub high_water: u64,
    pub budget: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Accept,
    /// Over its share while the WAL is under pressure.
    Shed {
        pressure: f64,
        over_share: f64,
    },
    /// The budget is used up: refuse everyone.
    Full,
}

/// Pressure in `(0, 1]` above the high-water mark, `0` below it.
pub fn pressure(level: WalLevel) -> f64 {
    if level.used <= level.high_water {
        return 0.0;
    }
    let span = level.budget.saturating_sub(level.high_water).max(1) as f64;
    ((level.used - level.high_water) as f64 / span).min(1.0)
}

pub fn decide(level: WalLevel, share: Share) -> Verdict {
    if level.used >= level.budget {
        return Verdict::Full;
    }
    let pressure = pressure(level);
    let over_share = share.over_share();
    if pressure > 0.0 && over_share * pressure > 1.0 { Verdict::Shed { pressure, over_share } } else { Verdict::Accept }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(over: f64) -> Share {
        // Two active tenants, this one taking `over` times half the total.
        Share { rate: over * 50.0, total: 100.0, active: 2 }
    }

    fn level(used: u64) -> WalLevel {
        WalLevel { used, high_water: 800, budget: 1000 }
    }

    #[test]
    fn accepts_everything_below_high_water_and_refuses_all_at_the_budget() {
        assert_eq!(decide(level(0), share(1.99)), Verdict::Accept);
        assert_eq!(decide(level(800), share(1.99)), Verdict::Accept);
        assert_eq!(decide(level(1000), share(0.0)), Verdict::Full);
        assert_eq!(decide(level(5000), share(0.1)), Verdict::Full);
    }

    #[test]
    fn sheds_the_most_over_share_first_as_pressure_rises() {
        // Pressure 0.25: only tenants above 4× their share (impossible with 2 tenants: max 2×).
        assert_eq!(decide(level(850), share(1.9)), Verdict::Accept);
        // Pressure 0.6: above 1.67×.
        assert_eq!(decide(level(920), share(1.5)), Verdict::Accept);
        assert!(matches!(decide(level(920), share(1.9)), Verdict::Shed { .. }));
        // Nearly full: anyone above an equal share, nobody at or below it.
        assert!(matches!(decide(level(999), share(1.05)), Verdict::Shed { .. }));
        assert_eq!(decide(level(999), share(1.0)), Verdict::Accept);
        assert_eq!(decide(level(999), share(0.3)), Verdict::Accept);
    }

    #[test]
    fn pressure_is_bounded_and_a_degenerate_budget_does_not_divide_by_zero() {
        assert_eq!(pressure(level(700)), 0.0);
        assert!((pressure(level(900)) - 0.5).abs() < 1e-9);
        assert_eq!(pressure(WalLevel { used: 10, high_water: 5, budget: 5 }), 1.0);
    }
}
