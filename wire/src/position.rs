//! A point in a WAL: the one position type of the edge's WAL, its replicas, the replication
//! protocol and the operator tools.

use serde::{Deserialize, Serialize};

/// Byte `offset` of segment `segment`. Ordered by (segment, offset): the field order is what
/// the derived `Ord` compares, and what postcard and JSON encode, so it must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_segment_then_offset() {
        let p = |segment, offset| Position { segment, offset };
        assert!(p(1, u64::MAX) < p(2, 0));
        assert!(p(2, 0) < p(2, 1));
        assert_eq!(Position::default(), p(0, 0));
    }

    /// `sluicectl wal inspect --json` and the replay state file carry positions as these objects.
    #[test]
    fn json_shape() {
        let json = serde_json::to_string(&Position { segment: 3, offset: 4096 }).unwrap();
        assert_eq!(json, r#"{"segment":3,"offset":4096}"#);
    }
}
