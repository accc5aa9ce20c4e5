//! Edge → core protocol over QUIC.
//!
//! One bidirectional stream per frame. The edge writes `u32 LE header length | postcard(FrameHeader)
//! | zstd payload` and finishes its side; core answers `postcard(Ack)` and finishes. Core acks
//! `Stored` only when every event of the frame is durable in the sink (DESIGN rule 6); the edge
//! advances its ack watermark to `header.end` only on `Stored` (rule 5).

use serde::{Deserialize, Serialize};

/// ALPN protocol ID; a version bump here is a breaking wire change.
pub const ALPN: &[u8] = b"sluice/1";
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest encoded header accepted.
pub const MAX_HEADER_LEN: usize = 4096;
/// Largest compressed frame accepted on a stream.
pub const MAX_COMPRESSED_LEN: usize = 64 * 1024 * 1024;

/// Identifies a frame's position in the sending edge's WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    pub protocol_version: u16,
    pub edge_id: String,
    /// WAL segment the frame's records come from (frames never span segments).
    pub segment: u64,
    /// Byte offset of the first record in the segment.
    pub start: u64,
    /// Byte offset just past the last record.
    pub end: u64,
    pub record_count: u32,
    /// Decompressed payload length.
    pub raw_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// Every event is durable downstream (or the batch was already delivered): trim it.
    Stored,
    /// Not stored now (sink unavailable, overloaded): resend later from the acked position.
    Retry { reason: String },
    /// The frame can never be stored (undecodable). The edge quarantines rather than loops.
    Rejected { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame header is {0} bytes, limit {MAX_HEADER_LEN}")]
    HeaderTooLarge(usize),
    #[error("message truncated")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    Version(u16),
    #[error("postcard: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes the header part of a frame message; the compressed payload follows it on the stream.
pub fn encode_header(header: &FrameHeader) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_stdvec(header)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits a complete frame message into its header and compressed payload.
pub fn decode_message(msg: &[u8]) -> Result<(FrameHeader, &[u8]), ProtocolError> {
    let len_bytes: [u8; 4] =
        msg.get(..4).ok_or(ProtocolError::Truncated)?.try_into().map_err(|_| ProtocolError::Truncated)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_HEADER_LEN {
        return Err(ProtocolError::HeaderTooLarge(len));
    }
    let header_bytes = msg.get(4..4 + len).ok_or(ProtocolError::Truncated)?;
    let header: FrameHeader = postcard::from_bytes(header_bytes)?;
    if header.protocol_version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(header.protocol_version));
    }
    Ok((header, &msg[4 + len..]))
}

pub fn encode_ack(ack: &Ack) -> Result<Vec<u8>, ProtocolError> {
    Ok(postcard::to_stdvec(ack)?)
}

pub fn decode_ack(bytes: &[u8]) -> Result<Ack, ProtocolError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let h = FrameHeader {
            protocol_version: PROTOCOL_VERSION,
            edge_id: "edge-1".into(),
            segment: 7,
            start: 100,
            end: 900,
            record_count: 3,
            raw_len: 800,
        };
        let mut msg = encode_header(&h).unwrap();
        msg.extend_from_slice(b"payload");
        let (got, payload) = decode_message(&msg).unwrap();
        assert_eq!(got, h);
        assert_eq!(payload, b"payload");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_message(&[]).is_err());
        assert!(decode_message(&[255, 255, 255, 255]).is_err());
        assert!(decode_message(&[3, 0, 0, 0, 1]).is_err());
        assert!(decode_ack(&[42]).is_err());
    }
}
