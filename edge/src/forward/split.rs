//! The tenant split (pure): with several core nodes, each record of a frame goes to its tenant's
//! node among those that are up (`routing`), so a frame becomes one share per node.

use sluice_wire::record;

use super::error::{NodeError, SendError};
use crate::routing::Rendezvous;

/// The records of one frame bound for one core node.
#[derive(Debug, PartialEq, Eq)]
pub struct Share {
    pub node: usize,
    pub data: Vec<u8>,
    pub count: u32,
}

/// Groups the whole records in `data` by the node `routing` picks for their tenant among the
/// nodes `up` admits. Shares come in node order; nodes that get nothing have none. Every node
/// down fails the frame without blaming one (the caller backs off until a probe succeeds).
pub fn split(routing: &Rendezvous, data: &[u8], up: impl Fn(usize) -> bool) -> Result<Vec<Share>, NodeError> {
    let bad = |e: record::RecordError| (None, SendError::Encode(e.to_string()));
    let mut shares: Vec<Share> =
        (0..routing.nodes().len()).map(|node| Share { node, data: Vec::new(), count: 0 }).collect();
    let mut rest = data;
    while !rest.is_empty() {
        let len = record::check_record(rest).map_err(bad)?.ok_or_else(|| bad(record::RecordError::Incomplete))?;
        let tenant = record::peek_prefix(&rest[..len]).map_err(bad)?.tenant;
        let Some(node) = routing.pick(tenant, &up) else {
            return Err((None, SendError::Connect("every core node is down".into())));
        };
        shares[node].data.extend_from_slice(&rest[..len]);
        shares[node].count += 1;
        rest = &rest[len..];
    }
    shares.retain(|s| s.count > 0);
    Ok(shares)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use sluice_wire::record::{BatchRecord, Stream};

    use super::*;
    use crate::routing::CoreNode;

    /// One encoded WAL record of `tenant`, received at `received_at_ms`.
    pub(crate) fn record_of(tenant: &str, received_at_ms: u64) -> Vec<u8> {
        let r = BatchRecord {
            batch_id: uuid::Uuid::new_v4(),
            tenant: tenant.into(),
            env: "prod".into(),
            region: "eu".into(),
            received_at_ms,
            stream: Stream::Events,
            events: Vec::new(),
            traceparent: None,
            shared: Vec::new(),
        };
        let mut out = Vec::new();
        record::encode_record(&r, &mut out).unwrap();
        out
    }

    fn ring(n: usize) -> Rendezvous {
        Rendezvous::new(
            (0..n)
                .map(|i| CoreNode {
                    id: format!("core-{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
                })
                .collect(),
        )
    }

    #[test]
    fn records_go_to_their_tenants_node_and_move_when_it_is_down() {
        let r = ring(3);
        let tenants: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
        let data: Vec<u8> = tenants.iter().flat_map(|t| record_of(t, 1)).collect();
        let shares = split(&r, &data, |_| true).unwrap();
        assert!(shares.len() > 1, "30 tenants over 3 nodes use more than one");
        assert_eq!(shares.iter().map(|s| s.count).sum::<u32>(), 30);
        for s in &shares {
            let mut rest = s.data.as_slice();
            while !rest.is_empty() {
                let len = record::check_record(rest).unwrap().unwrap();
                let tenant = record::peek_prefix(&rest[..len]).unwrap().tenant;
                assert_eq!(r.pick(tenant, |_| true), Some(s.node), "{tenant}");
                rest = &rest[len..];
            }
        }
        let without_first = split(&r, &data, |i| i != shares[0].node).unwrap();
        assert!(without_first.iter().all(|s| s.node != shares[0].node));
        assert_eq!(without_first.iter().map(|s| s.count).sum::<u32>(), 30, "nothing lost in the move");
    }

    #[test]
    fn every_node_down_or_a_torn_record_fails_without_blaming_a_node() {
        let r = ring(2);
        let data = record_of("acme", 1);
        assert!(matches!(split(&r, &data, |_| false), Err((None, SendError::Connect(_)))));
        assert!(matches!(split(&r, &data[..data.len() - 1], |_| true), Err((None, SendError::Encode(_)))));
        assert_eq!(split(&r, &[], |_| true).unwrap(), Vec::new());
    }
}
