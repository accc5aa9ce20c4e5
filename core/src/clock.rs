//! The wall clock of core (dedupe timestamps and their expiry, delivery ages). A leaf every
//! module may import.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock epoch milliseconds; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
