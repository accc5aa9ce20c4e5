//! Edge ↔ edge replication protocol (within a POP), over QUIC with mutual TLS.
//!
//! One bidirectional stream per message. The origin writes `postcard(PeerMessage)` and finishes its
//! side; the replica answers `postcard(PeerReply)` and finishes. An [`PeerMessage::Append`] carries
//! one group commit's bytes exactly as the origin writes them to its WAL (records framed by
//! [`crate::record`]), with their position in the origin's WAL, so a replica's copy has the same
//! segment numbers and offsets and the origin's ack watermark applies to it unchanged.

use serde::{Deserialize, Serialize};

use crate::Position;

/// ALPN of the replication protocol; distinct from edge→core so neither side can be confused
/// for the other.
pub const ALPN: &[u8] = b"sluice-repl/1";
/// Largest message a replica reads from a stream (a group is at most `wal.max_group_bytes`).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Which WAL of an origin: `wal_id` is chosen at random when the origin's WAL directory is
/// created, so an origin that comes back with an empty disk is told apart from one whose
/// positions continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node_id: String,
    pub wal_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The bytes of one group commit (or several contiguous ones), to be written at `offset` of
    /// segment `segment`. `seq` grows with every message of an origin (across its restarts), so a
    /// replica drops an append that arrives after a newer one.
    Append {
        origin: Origin,
        seq: u64,
        segment: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Sent periodically: the origin is alive (it renews the replica's takeover lease), and core
    /// has acknowledged everything before `acked` (the replica trims up to it).
    Heartbeat { origin: Origin, acked: Position },
    /// Where does the copy end? Asked after the origin lost track of this replica (a start, a
    /// failed or skipped append), so it can send every byte the copy lacks, across segments,
    /// before the replica counts again. Answered with [`PeerReply::CopyEnd`].
    Locate { origin: Origin },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    /// The append is fdatasync'd on the replica (or the heartbeat applied).
    Stored,
    /// The replica's copy of `segment` ends at `have`, before the append's offset: the origin
    /// must first send the bytes in between.
    Behind { segment: u64, have: u64 },
    /// The replica cannot store this (I/O error, an append to a segment it has moved past).
    Refused { reason: String },
    /// The copy ends at `end` (the answer to [`PeerMessage::Locate`]).
    CopyEnd { end: Position },
    /// Storing the append would take this replica's copies of all its peers past their disk
    /// budget (`used_bytes` of `budget_bytes` in use). Nothing was written.
    Full { used_bytes: u64, budget_bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("postcard: {0}")]
    Codec(#[from] postcard::Error),
}

pub fn encode_message(m: &PeerMessage) -> Result<Vec<u8>, ReplicationError> {
    // An append carries a whole group (up to megabytes): sized once, the buffer is not grown by
    // doubling, which copied the group again at every step and faulted in fresh pages.
    let capacity = match m {
        PeerMessage::Append { bytes, .. } => bytes.len() + 256,
        _ => 256,
    };
    Ok(postcard::to_extend(m, Vec::with_capacity(capacity))?)
}

pub fn decode_message(bytes: &[u8]) -> Result<PeerMessage, ReplicationError> {
    Ok(postcard::from_bytes(bytes)?)
}

pub fn encode_reply(r: &PeerReply) -> Result<Vec<u8>, ReplicationError> {
    Ok(postcard::to_stdvec(r)?)
}

pub fn decode_reply(bytes: &[u8]) -> Result<PeerReply, ReplicationError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let origin = Origin { node_id: "edge-a".into(), wal_id: 42 };
        let msgs = [
            PeerMessage::Append { origin: origin.clone(), seq: 5, segment: 3, offset: 4096, bytes: vec![1, 2, 3] },
            PeerMessage::Heartbeat { origin: origin.clone(), acked: Position { segment: 2, offset: 9 } },
            PeerMessage::Locate { origin },
        ];
        for m in msgs {
            assert_eq!(decode_message(&encode_message(&m).unwrap()).unwrap(), m);
        }
        for r in [
            PeerReply::Stored,
            PeerReply::Behind { segment: 1, have: 7 },
            PeerReply::Refused { reason: "x".into() },
            PeerReply::CopyEnd { end: Position { segment: 4, offset: 12 } },
            PeerReply::Full { used_bytes: 10, budget_bytes: 8 },
        ] {
            assert_eq!(decode_reply(&encode_reply(&r).unwrap()).unwrap(), r);
        }
    }

    /// Positions travel as two varints; a peer running an older build decodes these bytes.
    #[test]
    fn position_bytes_are_unchanged() {
        let origin = Origin { node_id: "a".into(), wal_id: 42 };
        let heartbeat = PeerMessage::Heartbeat { origin, acked: Position { segment: 2, offset: 300 } };
        assert_eq!(encode_message(&heartbeat).unwrap(), [1, 1, b'a', 42, 2, 0xac, 0x02]);
        let end = PeerReply::CopyEnd { end: Position { segment: 4, offset: 12 } };
        assert_eq!(encode_reply(&end).unwrap(), [3, 4, 12]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_message(&[]).is_err());
        assert!(decode_message(&[9, 9, 9]).is_err());
        assert!(decode_reply(&[200]).is_err());
    }
}
