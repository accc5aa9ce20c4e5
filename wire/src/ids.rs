//! Batch and event identifiers.
//!
//! Event IDs that the client did not supply are derived from the batch ID and the event's index,
//! so a batch that is retried (same batch ID) gets the same event IDs and downstream dedupe works.

use uuid::Uuid;

/// Namespace for keyed batch IDs (UUIDv5), fixed forever: changing it changes every derived ID.
const KEYED_BATCH_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_0b0a_7c4e_4a1f_9d3e_2b6f_1a8c_0001);

/// A fresh, time-ordered batch ID for a request without an idempotency key.
pub fn new_batch_id() -> Uuid {
    Uuid::now_v7()
}

/// The batch ID of a request carrying an idempotency key: the same (tenant, env, key) always maps
/// to the same batch, on any edge, so core's dedupe also catches a retry that lands elsewhere.
pub fn keyed_batch_id(tenant: &str, env: &str, idempotency_key: &str) -> Uuid {
    let mut name = Vec::with_capacity(tenant.len() + env.len() + idempotency_key.len() + 2);
    for part in [tenant, env, idempotency_key] {
        name.extend_from_slice(part.as_bytes());
        name.push(0);
    }
    Uuid::new_v5(&KEYED_BATCH_NAMESPACE, &name)
}

/// Deterministic event ID for the `index`-th event of a batch.
pub fn derived_event_id(batch_id: &Uuid, index: usize) -> Uuid {
    Uuid::new_v5(batch_id, &(index as u64).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let b = new_batch_id();
        assert_eq!(derived_event_id(&b, 3), derived_event_id(&b, 3));
        assert_ne!(derived_event_id(&b, 3), derived_event_id(&b, 4));
        assert_ne!(derived_event_id(&b, 3), derived_event_id(&new_batch_id(), 3));
    }

    #[test]
    fn keyed_ids_do_not_collide_across_field_boundaries() {
        assert_eq!(keyed_batch_id("t", "prod", "k"), keyed_batch_id("t", "prod", "k"));
        assert_ne!(keyed_batch_id("ab", "c", "k"), keyed_batch_id("a", "bc", "k"));
    }
}
