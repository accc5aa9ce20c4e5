//! WAL records: `len u32 LE | crc32c u32 LE | version u8 | postcard(BatchRecord)`.
//!
//! `len` counts the bytes after the crc (version byte + body); the crc covers the same bytes.
//! A zero `len` is never written, so a zero-filled tail (the usual result of a torn append on
//! ext4/xfs) is recognised as corrupt rather than as an empty record.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bytes before the versioned payload: `len` and `crc`.
pub const HEADER_LEN: usize = 8;
/// The newest record format this code reads and writes. Readers accept every version listed in
/// `decode_record`: 1 (no trace context), 2 (adds `traceparent`), 3 (adds `shared`) and 4 (the
/// same fields as 3; `stream` may be [`Stream::Overflow`]). Writers write the oldest version that
/// holds the record ([`record_version`]), so only overflow records need an upgraded reader.
pub const RECORD_VERSION: u8 = 4;
/// Upper bound on one record's payload, so a corrupt length can never trigger a huge allocation.
/// A request is at most 512 KiB of events, so 16 MiB leaves room for envelopes.
pub const MAX_RECORD_LEN: u32 = 16 * 1024 * 1024;

/// Which Kafka stream a record's events belong to. Encoded as its variant index: new variants go
/// last, with a new record version (an older reader must see an unknown version, which core
/// retries, not an undecodable body, which it rejects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Accepted, normalized events → `events.<region>`.
    Events,
    /// Events rejected by validation → the dead-letter topic.
    DeadLetter,
    /// Accepted events of a tenant an operator routed to the overflow lane →
    /// `events.<region>.overflow` (record version 4).
    Overflow,
}

impl Stream {
    /// The name in metrics labels and tool output.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::DeadLetter => "dead_letter",
            Stream::Overflow => "overflow",
        }
    }
}

/// The record version [`encode_record`] writes for `record`: 3, or 4 for an overflow record, so
/// edges upgraded before core keep forwarding every tenant not routed to overflow.
pub fn record_version(record: &BatchRecord) -> u8 {
    match record.stream {
        Stream::Events | Stream::DeadLetter => 3,
        Stream::Overflow => 4,
    }
}

/// One accepted request: the unit of durability, forwarding and dedupe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch_id: Uuid,
    pub tenant: String,
    pub env: String,
    pub region: String,
    pub received_at_ms: u64,
    pub stream: Stream,
    pub events: Vec<EventRecord>,
    /// The W3C `traceparent` of the edge's request span, when the client sent one, so a batch can be
    /// followed from the HTTP request to its Kafka messages.
    pub traceparent: Option<String>,
    /// JSON members every event of the batch carries (`,"received_at":…,"tenant":…,…`), stored
    /// once per record instead of once per event (about a quarter of a 300-byte event's WAL
    /// bytes). Each event's produced JSON is its own `json` with these spliced in before the
    /// closing brace ([`BatchRecord::write_event_json`]). Empty in dead-letter records and in
    /// versions 1 and 2, whose events hold every member themselves.
    #[serde(with = "serde_bytes")]
    pub shared: Vec<u8>,
}

impl BatchRecord {
    /// Appends the JSON that is produced for `event` (one of this record's events) to `out`.
    pub fn write_event_json(&self, event: &EventRecord, out: &mut Vec<u8>) {
        splice_shared(&event.json, &self.shared, out);
    }

    /// [`BatchRecord::write_event_json`] into a new buffer.
    pub fn event_json(&self, event: &EventRecord) -> Vec<u8> {
        spliced(&event.json, &self.shared)
    }
}

/// [`splice_shared`] into a new buffer.
pub fn spliced(object: &[u8], shared: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(object.len() + shared.len());
    splice_shared(object, shared, &mut out);
    out
}

/// Appends `object` (a JSON object) with the `shared` members (`,"k":v,…`) added before its closing
/// brace; `object` as is when `shared` is empty.
pub fn splice_shared(object: &[u8], shared: &[u8], out: &mut Vec<u8>) {
    debug_assert!(shared.is_empty() || object.ends_with(b"}"), "normalized events end with their closing brace");
    match object.split_last() {
        Some((b'}', members)) if !shared.is_empty() => {
            out.extend_from_slice(members);
            // `{}` has no member for the shared ones to follow: drop their leading comma.
            let shared = if members == b"{" { shared.strip_prefix(b",").unwrap_or(shared) } else { shared };
            out.extend_from_slice(shared);
            out.push(b'}');
        }
        _ => out.extend_from_slice(object),
    }
}

/// Version 2 of [`BatchRecord`]: every event's JSON held all of its members.
#[derive(Deserialize)]
struct BatchRecordV2 {
    batch_id: Uuid,
    tenant: String,
    env: String,
    region: String,
    received_at_ms: u64,
    stream: Stream,
    events: Vec<EventRecord>,
    traceparent: Option<String>,
}

impl From<BatchRecordV2> for BatchRecord {
    fn from(v: BatchRecordV2) -> Self {
        let BatchRecordV2 { batch_id, tenant, env, region, received_at_ms, stream, events, traceparent } = v;
        BatchRecord { batch_id, tenant, env, region, received_at_ms, stream, events, traceparent, shared: Vec::new() }
    }
}

/// Version 1 of [`BatchRecord`], before trace context; WALs written by older edges still hold it.
#[derive(Deserialize)]
struct BatchRecordV1 {
    batch_id: Uuid,
    tenant: String,
    env: String,
    region: String,
    received_at_ms: u64,
    stream: Stream,
    events: Vec<EventRecord>,
}

impl From<BatchRecordV1> for BatchRecord {
    fn from(v: BatchRecordV1) -> Self {
        let BatchRecordV1 { batch_id, tenant, env, region, received_at_ms, stream, events } = v;
        BatchRecordV2 { batch_id, tenant, env, region, received_at_ms, stream, events, traceparent: None }.into()
    }
}

/// A normalized event, kept as JSON bytes so core never re-serializes: the produced JSON is these
/// bytes plus the record's shared members ([`BatchRecord::write_event_json`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    #[serde(with = "serde_bytes")]
    pub json: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record length {0} is outside 1..={MAX_RECORD_LEN}")]
    BadLength(u32),
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("record body does not decode: {0}")]
    Body(String),
    #[error("record is {0} bytes, larger than the {MAX_RECORD_LEN} byte limit")]
    TooLarge(usize),
    #[error("buffer holds a partial record")]
    Incomplete,
}

/// Appends the framed encoding of `record` to `out`.
pub fn encode_record(record: &BatchRecord, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(record_version(record));
    let mut out_vec = std::mem::take(out);
    out_vec = postcard::to_extend(record, out_vec).map_err(|e| RecordError::Body(e.to_string()))?;
    *out = out_vec;
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > MAX_RECORD_LEN as usize {
        out.truncate(start);
        return Err(RecordError::TooLarge(payload_len));
    }
    let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Checks the framing and checksum of the record at the start of `buf` and returns its total
/// length (header included). `Ok(None)` means `buf` ends before the record does.
pub fn check_record(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(RecordError::BadLength(len));
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let computed = crc32c::crc32c(&buf[HEADER_LEN..total]);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(Some(total))
}

/// Decodes one complete framed record (as delimited by [`check_record`]).
pub fn decode_record(buf: &[u8]) -> Result<BatchRecord, RecordError> {
    let total = check_record(buf)?.ok_or(RecordError::Incomplete)?;
    let payload = &buf[HEADER_LEN..total];
    let body = |e: postcard::Error| RecordError::Body(e.to_string());
    match payload[0] {
        3 | 4 => postcard::from_bytes(&payload[1..]).map_err(body),
        2 => postcard::from_bytes::<BatchRecordV2>(&payload[1..]).map(BatchRecord::from).map_err(body),
        1 => postcard::from_bytes::<BatchRecordV1>(&payload[1..]).map(BatchRecord::from).map_err(body),
        v => Err(RecordError::UnknownVersion(v)),
    }
}

/// The leading fields of a record, read without decoding its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPrefix<'a> {
    pub tenant: &'a str,
    pub received_at_ms: u64,
}

/// The tenant and receive time of one complete framed record, without decoding its events
/// (routing and lag tracking need only these). Every version so far starts with
/// `batch_id, tenant, env, region, received_at_ms`.
pub fn peek_prefix(buf: &[u8]) -> Result<RecordPrefix<'_>, RecordError> {
    let total = check_record(buf)?.ok_or(RecordError::Incomplete)?;
    let payload = &buf[HEADER_LEN..total];
    match payload[0] {
        1..=RECORD_VERSION => postcard::take_from_bytes::<(Uuid, &str, &str, &str, u64)>(&payload[1..])
            .map(|((_, tenant, _, _, received_at_ms), _)| RecordPrefix { tenant, received_at_ms })
            .map_err(|e| RecordError::Body(e.to_string())),
        v => Err(RecordError::UnknownVersion(v)),
    }
}

/// Iterates over the framed records of a buffer that must contain only whole, valid records
/// (a decompressed frame). Stops at the first error.
pub fn records(mut buf: &[u8]) -> impl Iterator<Item = Result<BatchRecord, RecordError>> + '_ {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let item = match check_record(buf) {
            Ok(Some(total)) => {
                let rec = decode_record(&buf[..total]);
                buf = &buf[total..];
                rec
            }
            Ok(None) => Err(RecordError::Incomplete),
            Err(e) => Err(e),
        };
        if item.is_err() {
            buf = &[];
        }
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(n: usize) -> BatchRecord {
        let batch_id = crate::ids::new_batch_id();
        BatchRecord {
            batch_id,
            tenant: "acme".into(),
            env: "prod".into(),
            region: "eu-west".into(),
            received_at_ms: 1_764_000_000_000,
            stream: Stream::Events,
            events: (0..n)
                .map(|i| EventRecord {
                    event_id: crate::ids::derived_event_id(&batch_id, i).to_string(),
                    json: format!(r#"{{"event":"e{i}"}}"#).into_bytes(),
                })
                .collect(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            shared: br#","tenant":"acme","received_at":1764000000000"#.to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let rec = sample(3);
        let mut buf = Vec::new();
        encode_record(&rec, &mut buf).unwrap();
        assert_eq!(check_record(&buf), Ok(Some(buf.len())));
        assert_eq!(decode_record(&buf).unwrap(), rec);
    }

    #[test]
    fn every_prefix_is_incomplete_not_corrupt() {
        let mut buf = Vec::new();
        encode_record(&sample(2), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(check_record(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_record(&sample(2), &mut buf).unwrap();
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(!matches!(check_record(&bad), Ok(Some(_))), "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn zero_tail_is_corrupt() {
        assert_eq!(check_record(&[0u8; 64]), Err(RecordError::BadLength(0)));
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut buf = Vec::new();
        encode_record(&sample(1), &mut buf).unwrap();
        buf[HEADER_LEN] = 99;
        let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_record(&buf), Err(RecordError::UnknownVersion(99)));
    }

    /// Frames `payload` (version byte included) as a record.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        buf.extend_from_slice(payload);
        buf
    }

    #[test]
    fn version_2_records_still_decode() {
        let rec = BatchRecord { shared: Vec::new(), ..sample(2) };
        // Version 2 is the same fields in the same order without the trailing `shared`.
        let v2 = (
            rec.batch_id,
            &rec.tenant,
            &rec.env,
            &rec.region,
            rec.received_at_ms,
            rec.stream,
            &rec.events,
            &rec.traceparent,
        );
        let buf = framed(&[vec![2u8], postcard::to_stdvec(&v2).unwrap()].concat());
        assert_eq!(decode_record(&buf).unwrap(), rec);
        assert_eq!(peek_prefix(&buf).map(|p| p.tenant), Ok("acme"));
        // Its events' JSON is produced as stored.
        assert_eq!(rec.event_json(&rec.events[1]), br#"{"event":"e1"}"#);
    }

    #[test]
    fn shared_members_are_spliced_into_every_event() {
        let rec = sample(2);
        assert_eq!(rec.event_json(&rec.events[0]), br#"{"event":"e0","tenant":"acme","received_at":1764000000000}"#);
        let empty = EventRecord { event_id: "x".into(), json: b"{}".to_vec() };
        let json = rec.event_json(&empty);
        assert_eq!(json, br#"{"tenant":"acme","received_at":1764000000000}"#);
        serde_json::from_slice::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn version_1_records_still_decode() {
        let rec = BatchRecord { traceparent: None, shared: Vec::new(), ..sample(2) };
        // Version 1 is the same fields in the same order without the trailing traceparent.
        let v1 = (rec.batch_id, &rec.tenant, &rec.env, &rec.region, rec.received_at_ms, rec.stream, &rec.events);
        let buf = framed(&[vec![1u8], postcard::to_stdvec(&v1).unwrap()].concat());
        assert_eq!(decode_record(&buf).unwrap(), rec);
    }

    #[test]
    fn peek_prefix_reads_tenant_and_receive_time() {
        let mut buf = Vec::new();
        encode_record(&BatchRecord { tenant: "globex".into(), received_at_ms: 42, ..sample(3) }, &mut buf).unwrap();
        assert_eq!(peek_prefix(&buf), Ok(RecordPrefix { tenant: "globex", received_at_ms: 42 }));
        assert_eq!(peek_prefix(&buf[..buf.len() - 1]), Err(RecordError::Incomplete));
    }

    /// Overflow records are version 4, everything else stays version 3 (readable by cores that
    /// predate the overflow lane); both decode.
    #[test]
    fn overflow_records_are_version_4_and_others_stay_version_3() {
        for (stream, version) in [(Stream::Events, 3), (Stream::DeadLetter, 3), (Stream::Overflow, 4)] {
            let rec = BatchRecord { stream, ..sample(2) };
            let mut buf = Vec::new();
            encode_record(&rec, &mut buf).unwrap();
            assert_eq!(buf[HEADER_LEN], version, "{stream:?}");
            assert_eq!(decode_record(&buf).unwrap(), rec);
            assert_eq!(peek_prefix(&buf).map(|p| p.tenant), Ok("acme"));
        }
    }

    #[test]
    fn iterates_concatenated_records() {
        let mut buf = Vec::new();
        let (a, b) = (sample(1), sample(2));
        encode_record(&a, &mut buf).unwrap();
        encode_record(&b, &mut buf).unwrap();
        let got: Vec<_> = records(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![a, b]);
    }
}
