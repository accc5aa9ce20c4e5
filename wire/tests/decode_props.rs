//! WAL records and edge↔core messages are decoded from bytes that may be torn, bit-rotted or
//! hostile. Guards against: a panic or an unbounded allocation while decoding, a damaged record
//! being accepted as valid (so garbage would be forwarded), and an encode/decode mismatch.

use proptest::prelude::*;
use sluice_wire::record::{
    HEADER_LEN, RECORD_VERSION, check_record, decode_record, encode_record, encode_record_compressed, records,
};
use sluice_wire::{BatchRecord, EventRecord, Stream, frame, protocol};

fn batch() -> impl Strategy<Value = BatchRecord> {
    (
        any::<u128>(),
        "[a-z]{0,12}",
        "[a-z]{0,8}",
        any::<u64>(),
        any::<bool>(),
        // Repetitive JSON-like text compresses, arbitrary bytes do not: both encodings are drawn.
        prop::collection::vec(
            ("[a-zA-Z0-9-]{0,40}", prop::collection::vec(prop_oneof![any::<u8>(), Just(b'x')], 0..200)),
            0..8,
        ),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, tenant, env, at, dlq, events, shared)| BatchRecord {
            batch_id: uuid::Uuid::from_u128(id),
            tenant: tenant.clone(),
            env,
            region: tenant,
            received_at_ms: at,
            stream: if dlq { Stream::DeadLetter } else { Stream::Events },
            events: events.into_iter().map(|(event_id, json)| EventRecord { event_id, json }).collect(),
            traceparent: None,
            shared,
        })
}

fn encoded(b: &BatchRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(b, &mut out).unwrap();
    out
}

/// `b` encoded compressed (version 5) when `compress`, else as [`encoded`].
fn encoded_as(b: &BatchRecord, compress: bool) -> Vec<u8> {
    if !compress {
        return encoded(b);
    }
    let mut out = Vec::new();
    encode_record_compressed(b, 1, &mut out).unwrap();
    out
}

/// Frames `payload` with a correct length and checksum, so decoding reaches postcard.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(b in batch(), compress in any::<bool>()) {
        let bytes = encoded_as(&b, compress);
        prop_assert_eq!(check_record(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(decode_record(&bytes).unwrap(), b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = check_record(&data);
        let _ = decode_record(&data);
        let _ = records(&data).take(100).count();
        let _ = protocol::decode_message(&data);
        let _ = protocol::decode_ack(&data);
    }

    /// A payload with a valid checksum but arbitrary content (an outside writer, a crc
    /// collision) is decoded by postcard: it must fail cleanly, never panic or over-allocate.
    #[test]
    fn checksummed_garbage_is_rejected_cleanly(body in prop::collection::vec(any::<u8>(), 1..2048)) {
        for version in 1..=RECORD_VERSION {
            let mut payload = vec![version];
            payload.extend_from_slice(&body);
            let _ = decode_record(&framed(&payload));
        }
        let _ = decode_record(&framed(&body));
    }

    /// A compressed record damaged under a valid checksum (its zstd body, or the length its
    /// header claims for the body) is refused or decoded, never a panic.
    #[test]
    fn a_damaged_compressed_body_is_rejected_cleanly(b in batch(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let bytes = encoded_as(&b, true);
        let mut payload = bytes[HEADER_LEN..].to_vec();
        let i = pos.index(payload.len());
        payload[i] ^= 1 << bit;
        // Inside a valid crc the record's own checksum cannot help: zstd and postcard must
        // refuse or decode, never panic or allocate past the claimed length.
        let _ = decode_record(&framed(&payload));
    }

    /// Any flipped bit in a record is detected: the record is never returned as valid.
    #[test]
    fn a_flipped_bit_is_always_detected(b in batch(), compress in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encoded_as(&b, compress);
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(decode_record(&bytes).is_err());
        prop_assert!(!matches!(check_record(&bytes), Ok(Some(n)) if n == bytes.len()));
    }

    /// A torn record (any strict prefix) is never taken for a complete one.
    #[test]
    fn a_torn_record_is_incomplete_or_invalid(b in batch(), compress in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let bytes = encoded_as(&b, compress);
        let keep = cut.index(bytes.len());
        prop_assert!(!matches!(check_record(&bytes[..keep]), Ok(Some(_))));
        prop_assert!(decode_record(&bytes[..keep]).is_err());
    }

    /// Frames from a hostile or broken peer: arbitrary payloads and claimed sizes.
    #[test]
    fn frame_decompress_never_panics(data in prop::collection::vec(any::<u8>(), 0..2048), raw_len in 0usize..(1 << 20)) {
        let _ = frame::decompress(&data, raw_len);
    }

    #[test]
    fn frame_round_trip(bs in prop::collection::vec((batch(), any::<bool>()), 1..6)) {
        let raw: Vec<u8> = bs.iter().flat_map(|(b, compress)| encoded_as(b, *compress)).collect();
        let c = frame::compress(&raw, 3).unwrap();
        let bs: Vec<_> = bs.into_iter().map(|(b, _)| b).collect();
        prop_assert_eq!(frame::decompress(&c, raw.len()).unwrap(), bs);
    }
}

#[test]
fn a_claimed_huge_frame_is_refused_before_allocating() {
    assert!(matches!(frame::decompress(b"x", usize::MAX), Err(frame::FrameError::TooLarge(_))));
}
