//! Forwarder frames: a run of consecutive WAL records, zstd-compressed as one unit.
//!
//! The records inside keep their WAL framing (len + crc32c), so core re-verifies every record's
//! checksum after decompression: corruption anywhere between the edge's disk and core is caught.

use crate::protocol::{self, FrameHeader, ProtocolError};
use crate::record::{self, BatchRecord, RecordError};

/// Largest decompressed frame core accepts; bounds the allocation a hostile header can cause.
pub const MAX_FRAME_RAW_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame claims {0} raw bytes, above the {MAX_FRAME_RAW_LEN} byte limit")]
    TooLarge(usize),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    #[error("frame decompressed to {got} bytes, header said {expected}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("record {index} in frame: {source}")]
    Record { index: usize, source: RecordError },
    #[error("frame header: {0}")]
    Header(#[from] ProtocolError),
}

/// Compresses framed records. Level 1-3 keeps the forwarder far from being CPU-bound.
pub fn compress(raw_records: &[u8], level: i32) -> Result<Vec<u8>, FrameError> {
    Ok(zstd::bulk::compress(raw_records, level)?)
}

/// The whole message a forwarder sends on a stream: the encoded `header`, then `raw_records`
/// compressed at `level`.
pub fn encode_message(header: &FrameHeader, raw_records: &[u8], level: i32) -> Result<Vec<u8>, FrameError> {
    let mut message = protocol::encode_header(header)?;
    message.extend_from_slice(&compress(raw_records, level)?);
    Ok(message)
}

/// Decompresses a frame whose header announced `raw_len` bytes and decodes its records.
pub fn decompress(compressed: &[u8], raw_len: usize) -> Result<Vec<BatchRecord>, FrameError> {
    if raw_len > MAX_FRAME_RAW_LEN {
        return Err(FrameError::TooLarge(raw_len));
    }
    let raw = zstd::bulk::decompress(compressed, raw_len)?;
    if raw.len() != raw_len {
        return Err(FrameError::LengthMismatch { expected: raw_len, got: raw.len() });
    }
    record::records(&raw)
        .enumerate()
        .map(|(index, r)| r.map_err(|source| FrameError::Record { index, source }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventRecord, Stream, encode_record};

    fn rec(i: usize) -> BatchRecord {
        BatchRecord {
            batch_id: crate::ids::new_batch_id(),
            tenant: "t".into(),
            env: "e".into(),
            region: "r".into(),
            received_at_ms: i as u64,
            stream: Stream::Events,
            events: vec![EventRecord { event_id: i.to_string(), json: b"{}".to_vec() }],
            traceparent: None,
            shared: Vec::new(),
        }
    }

    #[test]
    fn round_trip() {
        let recs: Vec<_> = (0..10).map(rec).collect();
        let mut raw = Vec::new();
        for r in &recs {
            encode_record(r, &mut raw).unwrap();
        }
        let z = compress(&raw, 1).unwrap();
        assert_eq!(decompress(&z, raw.len()).unwrap(), recs);
    }

    #[test]
    fn message_splits_back_into_header_and_records() {
        let recs: Vec<_> = (0..3).map(rec).collect();
        let mut raw = Vec::new();
        for r in &recs {
            encode_record(r, &mut raw).unwrap();
        }
        let header = FrameHeader {
            protocol_version: protocol::PROTOCOL_VERSION,
            edge_id: "edge-1".into(),
            segment: 2,
            start: 0,
            end: raw.len() as u64,
            record_count: 3,
            raw_len: raw.len() as u32,
        };
        let msg = encode_message(&header, &raw, 3).unwrap();
        let (got, payload) = protocol::decode_message(&msg).unwrap();
        assert_eq!(got, header);
        assert_eq!(decompress(payload, got.raw_len as usize).unwrap(), recs);
    }

    #[test]
    fn lying_length_is_an_error_not_an_allocation() {
        let z = compress(b"hello", 1).unwrap();
        assert!(matches!(decompress(&z, usize::MAX), Err(FrameError::TooLarge(_))));
        assert!(decompress(&z, 3).is_err());
        assert!(decompress(&z, 50).is_err());
    }
}
