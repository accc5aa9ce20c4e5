//! Request bodies: decompression under a hard size cap (then [`crate::ingest::batch`] parses them).
//!
//! The size limit is enforced on the *decompressed* bytes while inflating, so a gzip bomb costs
//! at most `max_bytes + 1` bytes of memory and fails fast with `TooLarge`.

use std::borrow::Cow;
use std::io::Read;

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
}
