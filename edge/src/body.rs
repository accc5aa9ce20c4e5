//! Request bodies: decompression under a hard size cap, then splitting into per-event JSON texts.
//!
//! The size limit is enforced on the *decompressed* bytes while inflating, so a gzip bomb costs
//! at most `max_bytes + 1` bytes of memory and fails fast with `TooLarge`.

use std::borrow::Cow;
use std::io::Read;

use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `[{...}, {...}]`, or the envelope `{"batch": [...], "sent_at": ...}` that PostHog and
    /// Segment SDKs send.
    JsonArray,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body exceeds {limit} bytes (after decompression)")]
    TooLarge { limit: usize },
    #[error("batch has more than {limit} events")]
    TooManyEvents { limit: usize },
    #[error("unsupported Content-Encoding `{0}` (use gzip or none)")]
    UnsupportedEncoding(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("body is not a JSON array of events: {0}")]
    Malformed(String),
    #[error("body holds no events")]
    Empty,
}

/// Returns the decompressed body, refusing anything that inflates past `max_bytes`.
pub fn decode<'a>(raw: &'a [u8], content_encoding: Option<&str>, max_bytes: usize) -> Result<Cow<'a, [u8]>, BodyError> {
    let too_large = BodyError::TooLarge { limit: max_bytes };
    match content_encoding.map(str::trim) {
        None | Some("") | Some("identity") => {
            if raw.len() > max_bytes {
                return Err(too_large);
            }
            Ok(Cow::Borrowed(raw))
        }
        Some(enc) if enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("x-gzip") => {
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max_bytes + 1));
            flate2::read::MultiGzDecoder::new(raw)
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::BadGzip(e.to_string()))?;
            if out.len() > max_bytes {
                return Err(too_large);
            }
            Ok(Cow::Owned(out))
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

/// A request body split into events.
#[derive(Debug)]
pub struct Split<'a> {
    /// The JSON text of each event, in order.
    pub events: Vec<&'a [u8]>,
    /// The envelope's batch-level `sent_at`, if any.
    pub sent_at: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(borrow, default, alias = "sentAt")]
    sent_at: Option<&'a RawValue>,
}

/// Splits a decompressed body into the JSON text of each event. NDJSON lines are not parsed
/// here, so one bad line is rejected on its own rather than failing the whole batch.
pub fn split(body: &[u8], format: BodyFormat, max_events: usize) -> Result<Split<'_>, BodyError> {
    let mut sent_at = None;
    let events: Vec<&[u8]> = match format {
        BodyFormat::JsonArray => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            let items: Vec<&RawValue> = if first == Some(&b'{') {
                let env: Envelope<'_> = serde_json::from_slice(body).map_err(|e| {
                    BodyError::Malformed(format!("expected an array or an object with a `batch` array: {e}"))
                })?;
                sent_at = env.sent_at;
                env.batch
            } else {
                serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))?
            };
            items.into_iter().map(|v| v.get().as_bytes()).collect()
        }
        BodyFormat::Ndjson => {
            let mut lines = Vec::new();
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if lines.len() == max_events {
                    return Err(BodyError::TooManyEvents { limit: max_events });
                }
                lines.push(line);
            }
            lines
        }
    };
    if events.len() > max_events {
        return Err(BodyError::TooManyEvents { limit: max_events });
    }
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(Split { events, sent_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        assert_eq!(decode(&bomb, Some("gzip"), 512 * 1024), Err(BodyError::TooLarge { limit: 512 * 1024 }));
    }

    #[test]
    fn gzip_round_trip_and_errors() {
        assert_eq!(&*decode(&gzip(b"[1]"), Some("GZIP"), 100).unwrap(), b"[1]");
        assert!(matches!(decode(b"not gzip", Some("gzip"), 100), Err(BodyError::BadGzip(_))));
        assert!(matches!(decode(b"x", Some("br"), 100), Err(BodyError::UnsupportedEncoding(_))));
        assert_eq!(decode(&[b' '; 101], None, 100), Err(BodyError::TooLarge { limit: 100 }));
    }

    #[test]
    fn splits_arrays_and_ndjson() {
        let a = split(br#"[{"a":1}, {"b":[2]}]"#, BodyFormat::JsonArray, 10).unwrap();
        assert_eq!(a.events, vec![&br#"{"a":1}"#[..], br#"{"b":[2]}"#]);
        let n = split(b"{\"a\":1}\r\n\n{bad\n{\"c\":3}\n", BodyFormat::Ndjson, 10).unwrap();
        assert_eq!(n.events, vec![&b"{\"a\":1}"[..], b"{bad", b"{\"c\":3}"]);
        let e = split(br#" {"sent_at":"2026-01-01T00:00:00Z","batch":[{"a":1}]}"#, BodyFormat::JsonArray, 10).unwrap();
        assert_eq!(e.events, vec![&br#"{"a":1}"#[..]]);
        assert_eq!(e.sent_at.map(RawValue::get), Some(r#""2026-01-01T00:00:00Z""#));
    }

    #[test]
    fn limits_and_malformed() {
        assert_eq!(split(b"[1,2,3]", BodyFormat::JsonArray, 2).unwrap_err(), BodyError::TooManyEvents { limit: 2 });
        assert_eq!(split(b"1\n2\n3\n", BodyFormat::Ndjson, 2).unwrap_err(), BodyError::TooManyEvents { limit: 2 });
        assert!(matches!(split(b"[1,", BodyFormat::JsonArray, 2), Err(BodyError::Malformed(_))));
        assert!(matches!(split(b"{}", BodyFormat::JsonArray, 2), Err(BodyError::Malformed(_))));
        assert!(matches!(split(br#"{"event":"x"}"#, BodyFormat::JsonArray, 2), Err(BodyError::Malformed(_))));
        assert_eq!(split(b"[]", BodyFormat::JsonArray, 2).unwrap_err(), BodyError::Empty);
    }
}
