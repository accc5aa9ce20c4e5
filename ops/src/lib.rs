//! Operator tooling behind `sluicectl`, as a library so the test harness reuses it.

pub mod affinity;
pub mod bench;
pub mod cli;
pub mod dev;
pub mod devpki;
pub mod drain;
pub mod keys;
pub mod loadgen;
pub mod replay;
pub mod wal;
