//! Forwarder frames: a run of consecutive WAL records, zstd-compressed as one unit.
//!
//! The records inside keep their WAL framing (len + crc32c), so core re-verifies every record's
//! checksum after decompression: corruption anywhere between the edge's disk and core is caught.
//!
//! Records the edge compressed when it wrote them (record version 5) are not compressed again: a
//! frame holding them is a zstd frame of raw (stored) blocks, which every zstd decoder reads as
//! a copy. Core reads both kinds the same way, so the edge decides per frame and the protocol is
//! unchanged (a core too old for version 5 records answers `Retry`, and the WAL keeps them).

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
/// (whole WAL records) compressed at `level`, or stored if they hold compressed records already.
pub fn encode_message(header: &FrameHeader, raw_records: &[u8], level: i32) -> Result<Vec<u8>, FrameError> {
    let mut message = protocol::encode_header(header)?;
    if holds_compressed(raw_records) {
        store(raw_records, &mut message);
    } else {
        message.extend_from_slice(&compress(raw_records, level)?);
    }
    Ok(message)
}

/// Whether any record of `raw_records` is compressed. An edge that compresses records writes the
/// few it leaves uncompressed (too small to gain) beside them: a frame with one compressed
/// record comes from such an edge and is not worth compressing again.
/// The records were checksummed when they were read (and core checks them again): this walk only
/// hops by their length fields.
fn holds_compressed(mut raw_records: &[u8]) -> bool {
    while let Ok(Some(len)) = record::claimed_len(raw_records) {
        if record::is_compressed(raw_records) {
            return true;
        }
        raw_records = raw_records.get(len..).unwrap_or_default();
    }
    false
}

/// Appends `data` as a zstd frame of raw blocks (RFC 8878 §3.1.1): no compression, readable by
/// any zstd decoder.
fn store(data: &[u8], out: &mut Vec<u8>) {
    /// Raw blocks are at most 128 KiB (the format's `Block_Maximum_Size`).
    const BLOCK: usize = 128 * 1024;
    const MAGIC: u32 = 0xFD2F_B528;
    // Frame_Header_Descriptor: an 8-byte Frame_Content_Size (flag 3) and Single_Segment (no
    // window descriptor; the window is the content), no checksum, no dictionary.
    const DESCRIPTOR: u8 = 0b1110_0000;
    out.reserve(4 + 1 + 8 + data.len() + 3 * (data.len() / BLOCK + 1));
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(DESCRIPTOR);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut blocks = data.chunks(BLOCK).peekable();
    if blocks.peek().is_none() {
        // A frame has at least one block: the last, raw and empty.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(block) = blocks.next() {
        // Block_Header, 3 bytes LE: Last_Block (bit 0), Block_Type 0 = raw (bits 1-2), Block_Size.
        let header = u32::from(blocks.peek().is_none()) | ((block.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
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

    /// The header of a frame of `count` records, `raw` being the whole of them.
    fn header_for(raw: &[u8], count: u32) -> FrameHeader {
        FrameHeader {
            protocol_version: protocol::PROTOCOL_VERSION,
            edge_id: "edge-1".into(),
            segment: 2,
            start: 0,
            end: raw.len() as u64,
            record_count: count,
            raw_len: raw.len() as u32,
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
        let header = header_for(&raw, 3);
        let msg = encode_message(&header, &raw, 3).unwrap();
        let (got, payload) = protocol::decode_message(&msg).unwrap();
        assert_eq!(got, header);
        assert_eq!(decompress(payload, got.raw_len as usize).unwrap(), recs);
    }

    /// Frames of compressed records are stored, not compressed again, and still decode with the
    /// decompression every core runs; frames of uncompressed records are compressed.
    #[test]
    fn compressed_records_are_stored_and_decode_like_any_frame() {
        let many = |i| BatchRecord {
            events: (0..50)
                .map(|e| EventRecord { event_id: format!("{i}-{e}"), json: br#"{"event":"page_view","n":1}"#.to_vec() })
                .collect(),
            ..rec(i)
        };
        let recs: Vec<_> = (0..4).map(many).collect();
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        for r in &recs {
            encode_record(r, &mut plain).unwrap();
            crate::record::encode_record_compressed(r, 1, &mut packed).unwrap();
        }
        assert!(packed.len() * 3 < plain.len(), "{} vs {}", packed.len(), plain.len());
        for (raw, stored) in [(&plain, false), (&packed, true)] {
            let msg = encode_message(&header_for(raw, 4), raw, 3).unwrap();
            let (h, payload) = protocol::decode_message(&msg).unwrap();
            // A stored frame is the records plus 13 bytes of frame header and 3 per block.
            assert_eq!(payload.len() == raw.len() + 16, stored, "{} for {}", payload.len(), raw.len());
            assert_eq!(decompress(payload, h.raw_len as usize).unwrap(), recs);
        }
    }

    /// The stored frame is valid zstd at every size around the block limit, empty included.
    #[test]
    fn stored_frames_decode_at_every_block_boundary() {
        for len in [0, 1, 1000, 128 * 1024 - 1, 128 * 1024, 128 * 1024 + 1, 3 * 128 * 1024 + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut out = Vec::new();
            store(&data, &mut out);
            assert_eq!(zstd::bulk::decompress(&out, len.max(1)).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn lying_length_is_an_error_not_an_allocation() {
        let z = compress(b"hello", 1).unwrap();
        assert!(matches!(decompress(&z, usize::MAX), Err(FrameError::TooLarge(_))));
        assert!(decompress(&z, 3).is_err());
        assert!(decompress(&z, 50).is_err());
    }
}
