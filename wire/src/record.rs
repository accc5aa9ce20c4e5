//! WAL records: `len u32 LE | crc32c u32 LE | version u8 | payload`.
//!
//! `len` counts the bytes after the crc (version byte + payload); the crc covers the same bytes.
//! A zero `len` is never written, so a zero-filled tail (the usual result of a torn append on
//! ext4/xfs) is recognised as corrupt rather than as an empty record.
//!
//! The payload is `postcard(BatchRecord)` up to version 4. Version 5 is the compressed record:
//! `postcard((batch_id, tenant, env, region, received_at_ms, stream, body_len u32))` followed by
//! zstd of the rest of the record (`postcard((events, traceparent, shared))`, `body_len` bytes).
//! The edge compresses each request's record once, on the HTTP worker that built it; the same
//! bytes are fsync'd, replicated and forwarded ([`crate::frame`] stores rather than recompresses
//! frames of them), and core decompresses once. The leading fields stay in the clear, so routing,
//! lag tracking and the tools read them without decompressing ([`peek_prefix`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bytes before the versioned payload: `len` and `crc`.
pub const HEADER_LEN: usize = 8;
/// The newest record format this code reads and writes. Readers accept every version listed in
/// `decode_record`: 1 (no trace context), 2 (adds `traceparent`), 3 (adds `shared`), 4 (the
/// same fields as 3; `stream` may be [`Stream::Overflow`]) and 5 (compressed, any stream).
/// Uncompressed, writers write the oldest version that holds the record ([`record_version`]), so
/// only overflow records need an upgraded reader; compressed records need a core that reads 5.
pub const RECORD_VERSION: u8 = 5;
/// The version of compressed records ([`encode_record_compressed`]).
pub const COMPRESSED_VERSION: u8 = 5;
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
    #[error("compressed record body: {0}")]
    Zstd(String),
}

/// Appends the framed encoding of `record` to `out`, uncompressed.
pub fn encode_record(record: &BatchRecord, out: &mut Vec<u8>) -> Result<(), RecordError> {
    frame_payload(out, |out| {
        out.push(record_version(record));
        postcard_extend(record, out)
    })
}

/// Appends the framed encoding of `record` to `out`, its events compressed with zstd at `level`
/// (version 5). A record that compression would not make smaller (a few tiny events) is written
/// uncompressed instead, as [`encode_record`] does.
pub fn encode_record_compressed(record: &BatchRecord, level: i32, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let prefix = (&record.batch_id, &record.tenant, &record.env, &record.region, record.received_at_ms, record.stream);
    let body = BodyRef { events: &record.events, traceparent: &record.traceparent, shared: &record.shared };
    ZSTD.with_borrow_mut(|zstd| {
        let Zstd { compressor, body: raw, compressed } = zstd;
        raw.clear();
        postcard_extend(&body, raw)?;
        let body_len = u32::try_from(raw.len()).map_err(|_| RecordError::TooLarge(raw.len()))?;
        if body_len > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge(raw.len()));
        }
        compressor.set_compression_level(level).map_err(|e| RecordError::Zstd(e.to_string()))?;
        compressed.clear();
        compressed.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        compressor.compress_to_buffer(raw.as_slice(), compressed).map_err(|e| RecordError::Zstd(e.to_string()))?;
        // `body_len` costs a varint of at most 5 bytes: compressed must beat the raw body by more.
        if compressed.len() + 5 >= raw.len() {
            return frame_payload(out, |out| {
                out.push(record_version(record));
                postcard_extend(&prefix, out)?;
                out.extend_from_slice(raw);
                Ok(())
            });
        }
        out.reserve(HEADER_LEN + 64 + record.tenant.len() + record.env.len() + record.region.len() + compressed.len());
        frame_payload(out, |out| {
            out.push(COMPRESSED_VERSION);
            let (batch_id, tenant, env, region, received_at_ms, stream) = prefix;
            let clear: CompressedPrefix<'_> = (*batch_id, tenant, env, region, received_at_ms, stream, body_len);
            postcard_extend(&clear, out)?;
            out.extend_from_slice(compressed);
            Ok(())
        })
    })
}

/// The zstd context and buffers of one thread's record encoding: a context costs an allocation
/// of about its window, too much to make per request.
struct Zstd {
    compressor: zstd::bulk::Compressor<'static>,
    body: Vec<u8>,
    compressed: Vec<u8>,
}

thread_local! {
    static ZSTD: std::cell::RefCell<Zstd> = std::cell::RefCell::new(Zstd {
        // Creating a context only fails when zstd cannot allocate one.
        compressor: zstd::bulk::Compressor::new(1).expect("zstd context allocates"),
        body: Vec::new(),
        compressed: Vec::new(),
    });
    static UNZSTD: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context allocates"));
}

/// The part of a record that version 5 compresses: the fields after `stream`, in their order.
#[derive(Serialize)]
struct BodyRef<'a> {
    events: &'a [EventRecord],
    traceparent: &'a Option<String>,
    #[serde(with = "serde_bytes")]
    shared: &'a [u8],
}

/// [`BodyRef`], decoded.
#[derive(Deserialize)]
struct Body {
    events: Vec<EventRecord>,
    traceparent: Option<String>,
    #[serde(with = "serde_bytes")]
    shared: Vec<u8>,
}

fn postcard_extend<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), RecordError> {
    *out = postcard::to_extend(value, std::mem::take(out)).map_err(|e| RecordError::Body(e.to_string()))?;
    Ok(())
}

/// Appends a record whose version byte and payload `payload` writes, with its length and crc.
fn frame_payload(
    out: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = payload(out) {
        out.truncate(start);
        return Err(e);
    }
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

/// About how many bytes `record` (one whole record, as [`check_record`] delimited it; not
/// checked again) holds decompressed: its length, or for a compressed record the length with the
/// body's claimed size in place of its compressed bytes. A forwarder frame is sized by this, so a
/// frame carries as many events whichever format they were written in (core's time per frame,
/// and so freshness, follows events, not WAL bytes).
pub fn decoded_len(record: &[u8]) -> usize {
    if !is_compressed(record) {
        return record.len();
    }
    match postcard::take_from_bytes::<CompressedPrefix<'_>>(&record[HEADER_LEN + 1..]) {
        Ok(((.., body_len), compressed)) => record.len() - compressed.len() + body_len as usize,
        Err(_) => record.len(),
    }
}

/// The clear part of a version 5 record: batch_id, tenant, env, region, received_at_ms, stream,
/// and the length of the compressed body that follows.
type CompressedPrefix<'a> = (Uuid, &'a str, &'a str, &'a str, u64, Stream, u32);

/// Whether the framed record at the start of `buf` is compressed (version 5). Reads only the
/// version byte: `buf` must start with a record [`check_record`] accepted.
pub fn is_compressed(buf: &[u8]) -> bool {
    buf.get(HEADER_LEN) == Some(&COMPRESSED_VERSION)
}

/// The total length (header included) the record starting at `buf` claims, from its length
/// field alone (no checksum): `Ok(None)` if `buf` is shorter than a header. For walks that only
/// hop from record to record over bytes [`check_record`] already accepted, or that only count.
pub fn claimed_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(RecordError::BadLength(len));
    }
    Ok(Some(HEADER_LEN + len as usize))
}

/// Checks the framing and checksum of the record at the start of `buf` and returns its total
/// length (header included). `Ok(None)` means `buf` ends before the record does.
pub fn check_record(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(total) = claimed_len(buf)? else { return Ok(None) };
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
        COMPRESSED_VERSION => decode_compressed(&payload[1..]),
        3 | 4 => postcard::from_bytes(&payload[1..]).map_err(body),
        2 => postcard::from_bytes::<BatchRecordV2>(&payload[1..]).map(BatchRecord::from).map_err(body),
        1 => postcard::from_bytes::<BatchRecordV1>(&payload[1..]).map(BatchRecord::from).map_err(body),
        v => Err(RecordError::UnknownVersion(v)),
    }
}

fn decode_compressed(payload: &[u8]) -> Result<BatchRecord, RecordError> {
    let body = |e: postcard::Error| RecordError::Body(e.to_string());
    let ((batch_id, tenant, env, region, received_at_ms, stream, body_len), compressed) =
        postcard::take_from_bytes::<CompressedPrefix<'_>>(payload).map_err(body)?;
    if body_len > MAX_RECORD_LEN {
        return Err(RecordError::BadLength(body_len));
    }
    let raw = UNZSTD
        .with_borrow_mut(|d| d.decompress(compressed, body_len as usize))
        .map_err(|e| RecordError::Zstd(e.to_string()))?;
    if raw.len() != body_len as usize {
        return Err(RecordError::Zstd(format!("body decompressed to {} bytes, header said {body_len}", raw.len())));
    }
    let Body { events, traceparent, shared } = postcard::from_bytes(&raw).map_err(body)?;
    let (tenant, env, region) = (tenant.to_string(), env.to_string(), region.to_string());
    Ok(BatchRecord { batch_id, tenant, env, region, received_at_ms, stream, events, traceparent, shared })
}

/// The leading fields of a record, read without decoding its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPrefix<'a> {
    pub tenant: &'a str,
    pub received_at_ms: u64,
}

/// The tenant and receive time of one complete framed record, without decoding its events
/// (routing and lag tracking need only these). Every version so far starts with
/// `batch_id, tenant, env, region, received_at_ms`, uncompressed.
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

    /// A record of many similar events, as SDK batches are.
    fn page_views(n: usize) -> BatchRecord {
        let mut rec = sample(0);
        rec.events = (0..n)
            .map(|i| EventRecord {
                event_id: crate::ids::derived_event_id(&rec.batch_id, i).to_string(),
                json: format!(
                    r#"{{"event":"page_view","distinct_id":"user-{}","properties":{{"path":"/docs/{i}"}}}}"#,
                    i % 7
                )
                .into_bytes(),
            })
            .collect();
        rec
    }

    #[test]
    fn compressed_records_round_trip_smaller_with_their_prefix_in_the_clear() {
        for stream in [Stream::Events, Stream::DeadLetter, Stream::Overflow] {
            let rec = BatchRecord { stream, ..page_views(100) };
            let (mut plain, mut packed) = (Vec::new(), Vec::new());
            encode_record(&rec, &mut plain).unwrap();
            encode_record_compressed(&rec, 1, &mut packed).unwrap();
            assert!(is_compressed(&packed) && !is_compressed(&plain));
            assert!(packed.len() * 3 < plain.len(), "{} vs {} bytes", packed.len(), plain.len());
            assert_eq!(check_record(&packed), Ok(Some(packed.len())));
            assert_eq!(decode_record(&packed).unwrap(), rec);
            assert_eq!(peek_prefix(&packed), peek_prefix(&plain));
            // Decompressed, it is the uncompressed record give or take the length varint.
            assert!(decoded_len(&packed).abs_diff(plain.len()) <= 5, "{} vs {}", decoded_len(&packed), plain.len());
            assert_eq!(decoded_len(&plain), plain.len());
        }
    }

    /// A record compression would not shrink is written exactly as the uncompressed encoding.
    #[test]
    fn a_record_too_small_to_gain_is_written_uncompressed() {
        let rec = BatchRecord {
            events: vec![EventRecord { event_id: "1".into(), json: b"{}".to_vec() }],
            traceparent: None,
            shared: Vec::new(),
            ..sample(0)
        };
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        encode_record(&rec, &mut plain).unwrap();
        encode_record_compressed(&rec, 1, &mut packed).unwrap();
        assert_eq!(packed, plain);
        assert!(!is_compressed(&packed));
    }

    /// A compressed record whose header claims more body than it holds (or an absurd amount) is
    /// an error, not an allocation or a panic.
    #[test]
    fn a_compressed_record_lying_about_its_body_is_refused() {
        let rec = page_views(20);
        let mut packed = Vec::new();
        encode_record_compressed(&rec, 1, &mut packed).unwrap();
        let ((id, t, e, r, at, s, body_len), z) =
            postcard::take_from_bytes::<CompressedPrefix<'_>>(&packed[HEADER_LEN + 1..]).unwrap();
        for lie in [body_len + 1, body_len - 1, MAX_RECORD_LEN + 1, u32::MAX] {
            let mut payload = vec![COMPRESSED_VERSION];
            payload.extend_from_slice(&postcard::to_stdvec(&(id, t, e, r, at, s, lie)).unwrap());
            payload.extend_from_slice(z);
            assert!(decode_record(&framed(&payload)).is_err(), "claimed {lie} of {body_len}");
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
