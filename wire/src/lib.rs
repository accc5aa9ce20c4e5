//! Sluice's on-disk and on-wire formats.
//!
//! Architecture invariant: only this crate defines bytes that outlive a process or cross a
//! machine: the WAL record framing ([`record`]), the forwarder frames ([`frame`]), the
//! edge↔core protocol messages ([`protocol`]), the edge↔edge replication messages
//! ([`replication`]), the other files of a WAL directory (segment names, ack watermark, `wal.id`:
//! [`wal_files`]), the one WAL [`Position`] they all carry, and the edge's idempotency store
//! values ([`stored_response`], [`seen_signature`]). Everything here is pure (no IO, no clock),
//! so it is unit- and property-testable. [`breaker`] is the one piece of shared *logic*: the circuit breaker both
//! ends of the edge↔core link use (pure as well).

pub mod breaker;
pub mod frame;
pub mod ids;
mod position;
pub mod protocol;
pub mod record;
pub mod replication;
pub mod seen_signature;
pub mod stored_response;
pub mod wal_files;

pub use position::Position;
pub use record::{BatchRecord, EventRecord, RecordError, Stream};
