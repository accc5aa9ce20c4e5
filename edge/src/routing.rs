//! Which core node receives a tenant's batches: rendezvous (highest-random-weight) hashing.
//!
//! Every edge ranks the core nodes for a tenant by `score(node id, tenant)` and sends to the
//! highest-ranked node that is up. So all edges agree without coordination, one tenant's batches
//! meet one dedupe index, and losing a node moves only that node's tenants (to their second
//! choice) and moves them back when it returns. The score must be stable across processes and
//! releases, so it is a fixed function (FNV-1a + a 64-bit finalizer), not `std`'s hasher.

use std::net::SocketAddr;

/// One core node as configured (`[[forwarder.core_nodes]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreNode {
    /// Stable name; the routing depends on it, not on the address, so readdressing a node keeps
    /// its tenants.
    pub id: String,
    /// QUIC address.
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Rendezvous {
    nodes: Vec<CoreNode>,
}

impl Rendezvous {
    pub fn new(nodes: Vec<CoreNode>) -> Self {
        Self { nodes }
    }

    pub fn nodes(&self) -> &[CoreNode] {
        &self.nodes
    }

    /// The index of the best node for `tenant` among those `up` says are usable.
    pub fn pick(&self, tenant: &str, up: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.nodes.len()).filter(|&i| up(i)).max_by_key(|&i| (score(&self.nodes[i].id, tenant), i))
    }
}

fn score(node: &str, tenant: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    // The 0xff separator keeps ("ab","c") and ("a","bc") apart; it never occurs in UTF-8.
    let h = node
        .bytes()
        .chain([0xff])
        .chain(tenant.bytes())
        .fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    // FNV alone mixes the last bytes poorly; the splitmix64 finalizer spreads them over all bits.
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Rendezvous {
        Rendezvous::new(
            ids.iter()
                .enumerate()
                .map(|(i, id)| CoreNode {
                    id: id.to_string(),
                    addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
                })
                .collect(),
        )
    }

    fn tenants() -> Vec<String> {
        (0..3000).map(|i| format!("tenant-{i}")).collect()
    }

    #[test]
    fn the_choice_is_a_fixed_function_of_node_ids_and_tenant() {
        // Pinned values: changing the score function would move every tenant on upgrade.
        let r = ring(&["core-a", "core-b", "core-c"]);
        let picks: Vec<_> = ["acme", "globex", "initech", "umbrella"].iter().map(|t| r.pick(t, |_| true)).collect();
        assert_eq!(picks, PINNED);
        // Node order in the config does not matter, only ids.
        let reordered = ring(&["core-c", "core-a", "core-b"]);
        for t in tenants() {
            let a = r.nodes()[r.pick(&t, |_| true).unwrap()].id.clone();
            let b = reordered.nodes()[reordered.pick(&t, |_| true).unwrap()].id.clone();
            assert_eq!(a, b, "{t}");
        }
    }

    const PINNED: [Option<usize>; 4] = [Some(1), Some(2), Some(0), Some(1)];

    #[test]
    fn tenants_spread_evenly() {
        let r = ring(&["core-a", "core-b", "core-c"]);
        let mut counts = [0usize; 3];
        for t in tenants() {
            counts[r.pick(&t, |_| true).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..=1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn a_down_node_moves_only_its_tenants_and_they_come_back() {
        let r = ring(&["core-a", "core-b", "core-c"]);
        for t in tenants() {
            let first = r.pick(&t, |_| true).unwrap();
            let without_b = r.pick(&t, |i| i != 1).unwrap();
            if first == 1 {
                assert_ne!(without_b, 1);
            } else {
                assert_eq!(without_b, first, "{t} moved although its node is up");
            }
            assert_eq!(r.pick(&t, |_| true).unwrap(), first, "back on its first choice");
        }
        assert_eq!(r.pick("acme", |_| false), None);
    }
}
