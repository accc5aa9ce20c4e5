//! What can go wrong sending a frame to core. A leaf module: the window state machine, the
//! driver, the operator's control handle and `sluicectl replay` all name these.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to core: {0}")]
    Connect(String),
    #[error("QUIC stream: {0}")]
    Stream(String),
    #[error("core did not ack within {0:?}")]
    Timeout(Duration),
    #[error("core asked to retry: {0}")]
    Retry(String),
    #[error("core rejected the frame: {0}")]
    Rejected(String),
    #[error("encoding: {0}")]
    Encode(String),
}

impl SendError {
    /// The node could not be reached or the exchange broke, as opposed to core answering (retry,
    /// rejected) or the edge failing to build the frame: only then is the node to blame.
    pub fn unreachable(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Stream(_) | SendError::Timeout(_))
    }
}

/// A failed exchange and the core node it was with; `None` when no one node is to blame (every
/// node is down, the frame could not be split, the send task died), so none is marked down.
pub type NodeError = (Option<usize>, SendError);
