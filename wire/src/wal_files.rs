//! The files of a WAL directory around the records ([`crate::record`] frames those): segment
//! file names, the ack watermark and the WAL's identity. Pure names and bytes; the edge does
//! the IO (reads, atomic replace, directory syncs).
//!
//! A directory holds `<seq:020>.wal` segments (a quarantined one renamed to
//! `<seq:020>.corrupt`), `ack.watermark` (`segment u64 LE | offset u64 LE | crc32c u32 LE`: core
//! acknowledged every record before it) and `wal.id` (`id u64 LE | crc32c u32 LE`: a random ID
//! chosen when the directory was created, by which replicas tell a fresh WAL from one whose
//! positions continue). Both small files are replaced atomically through their `.tmp` names.
//! `next.wal.zeros` is a segment prepared ahead (zeros, synced) that becomes the next segment by
//! a rename; it holds no data, and a WAL opening removes a leftover one. `gone.wal.acked` is a
//! segment core acknowledged, on its way out (renamed, then shrunk in steps, then removed); a
//! WAL opening removes a leftover one too.

use crate::Position;

pub const SEGMENT_EXT: &str = "wal";
/// Quarantined segments are renamed with this extension and never read again by the forwarder.
pub const QUARANTINE_EXT: &str = "corrupt";
pub const WATERMARK_FILE: &str = "ack.watermark";
pub const WATERMARK_TMP: &str = "ack.watermark.tmp";
pub const WAL_ID_FILE: &str = "wal.id";
pub const WAL_ID_TMP: &str = "wal.id.tmp";
/// Not a segment name (`parse_segment_file_name` refuses it), so nothing reads it as one.
pub const PREPARED_SEGMENT_FILE: &str = "next.wal.zeros";
/// Not a segment name either: an acknowledged segment being deleted.
pub const DELETED_SEGMENT_FILE: &str = "gone.wal.acked";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{len} bytes where {expected} are expected")]
    Length { len: usize, expected: usize },
    #[error("checksum mismatch")]
    Checksum,
}

/// Whether a segment file is still forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentState {
    Live,
    Quarantined,
}

pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.{SEGMENT_EXT}")
}

pub fn quarantined_file_name(seq: u64) -> String {
    format!("{seq:020}.{QUARANTINE_EXT}")
}

/// The sequence number and state of a segment file's name; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, SegmentState)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let state = match ext {
        SEGMENT_EXT => SegmentState::Live,
        QUARANTINE_EXT => SegmentState::Quarantined,
        _ => return None,
    };
    Some((stem.parse().ok()?, state))
}

pub fn encode_watermark(acked: Position) -> Vec<u8> {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&acked.segment.to_le_bytes());
    payload[8..].copy_from_slice(&acked.offset.to_le_bytes());
    sealed(payload)
}

pub fn decode_watermark(bytes: &[u8]) -> Result<Position, FileError> {
    let payload: [u8; 16] = unsealed(bytes)?;
    let (segment, offset) = payload.split_at(8);
    Ok(Position { segment: u64_le(segment), offset: u64_le(offset) })
}

pub fn encode_wal_id(id: u64) -> Vec<u8> {
    sealed(id.to_le_bytes())
}

pub fn decode_wal_id(bytes: &[u8]) -> Result<u64, FileError> {
    let payload: [u8; 8] = unsealed(bytes)?;
    Ok(u64::from_le_bytes(payload))
}

/// `payload | crc32c(payload) u32 LE`: how both small files are laid out.
fn sealed<const N: usize>(payload: [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(N + 4);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out
}

fn unsealed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], FileError> {
    let length = FileError::Length { len: bytes.len(), expected: N + 4 };
    if bytes.len() != N + 4 {
        return Err(length);
    }
    let (payload, crc) = bytes.split_at(N);
    if crc32c::crc32c(payload).to_le_bytes() != crc {
        return Err(FileError::Checksum);
    }
    payload.try_into().map_err(|_| length)
}

/// Eight bytes as a little-endian `u64`; callers split an array, so the length is exact.
fn u64_le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The bytes of an `ack.watermark` written by earlier versions still decode, and the same
    /// position still encodes to them.
    #[test]
    fn watermark_bytes_are_unchanged() {
        let old = unhex("03000000000000000010000000000000bf00d3cd");
        let p = Position { segment: 3, offset: 4096 };
        assert_eq!(decode_watermark(&old), Ok(p));
        assert_eq!(encode_watermark(p), old);
    }

    #[test]
    fn the_prepared_and_the_deleted_segment_are_not_segments() {
        assert_eq!(parse_segment_file_name(PREPARED_SEGMENT_FILE), None);
        assert_eq!(parse_segment_file_name(DELETED_SEGMENT_FILE), None);
    }

    #[test]
    fn wal_id_bytes_are_unchanged() {
        let old = unhex("efcdab90785634127a06eecd");
        assert_eq!(decode_wal_id(&old), Ok(0x1234_5678_90ab_cdef));
        assert_eq!(encode_wal_id(0x1234_5678_90ab_cdef), old);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let good = encode_watermark(Position { segment: 7, offset: 9 });
        assert_eq!(decode_watermark(&[1u8; 20]), Err(FileError::Checksum));
        assert_eq!(decode_watermark(&good[..19]), Err(FileError::Length { len: 19, expected: 20 }));
        assert_eq!(
            decode_watermark(&[good.clone(), vec![0]].concat()),
            Err(FileError::Length { len: 21, expected: 20 })
        );
        assert_eq!(decode_watermark(&[]), Err(FileError::Length { len: 0, expected: 20 }));
        // A wal.id is not a watermark, nor the other way round.
        assert!(decode_wal_id(&good).is_err());
        assert!(decode_watermark(&encode_wal_id(5)).is_err());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode_watermark(&bad), Err(FileError::Checksum), "bit flip in byte {i}");
        }
        let mut id = encode_wal_id(5);
        id[0] ^= 0x80;
        assert_eq!(decode_wal_id(&id), Err(FileError::Checksum));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(2), "00000000000000000002.wal");
        assert_eq!(quarantined_file_name(2), "00000000000000000002.corrupt");
        assert_eq!(parse_segment_file_name("00000000000000000002.wal"), Some((2, SegmentState::Live)));
        assert_eq!(
            parse_segment_file_name(&quarantined_file_name(u64::MAX)),
            Some((u64::MAX, SegmentState::Quarantined))
        );
        for other in
            [WATERMARK_FILE, WATERMARK_TMP, WAL_ID_FILE, WAL_ID_TMP, "replica", "x.wal", ".wal", "1.wal.tmp", "1"]
        {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(segment: u64, offset: u64, id: u64, seq: u64) {
            let p = Position { segment, offset };
            prop_assert_eq!(decode_watermark(&encode_watermark(p)), Ok(p));
            prop_assert_eq!(decode_wal_id(&encode_wal_id(id)), Ok(id));
            prop_assert_eq!(parse_segment_file_name(&segment_file_name(seq)), Some((seq, SegmentState::Live)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_watermark(&bytes);
            let _ = decode_wal_id(&bytes);
        }
    }
}
