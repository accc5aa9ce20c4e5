//! Request bodies: decompression under a hard size cap, then parsing into per-event elements.
//!
//! The size limit is enforced on the *decompressed* bytes while inflating, so a gzip bomb costs
//! at most `max_bytes + 1` bytes of memory and fails fast with `TooLarge`.

use std::borrow::Cow;
use std::io::Read;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::validate::Element;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `[{...}, {...}]`
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

/// Parses a decompressed body into its events. A JSON array is parsed in one pass, each element
/// straight into the fields validation needs (the body is scanned once, not once to split and
/// again per event); NDJSON lines are parsed one by one, so one bad line is rejected on its own
/// rather than failing the whole batch.
pub fn parse(body: &[u8], format: BodyFormat, max_events: usize) -> Result<Vec<Element<'_>>, BodyError> {
    let events = match format {
        BodyFormat::JsonArray => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let (events, total) =
                ArrayOfEvents { max_events }.deserialize(&mut de).map_err(|e| BodyError::Malformed(e.to_string()))?;
            de.end().map_err(|e| BodyError::Malformed(e.to_string()))?;
            if total > max_events {
                return Err(BodyError::TooManyEvents { limit: max_events });
            }
            events
        }
        BodyFormat::Ndjson => {
            let mut events = Vec::new();
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if events.len() == max_events {
                    return Err(BodyError::TooManyEvents { limit: max_events });
                }
                events.push(Element::parse(line));
            }
            events
        }
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(events)
}

/// A JSON array of events that keeps at most `max_events` of them (the rest is only counted), so a
/// body of many tiny elements cannot allocate more than the limit allows.
struct ArrayOfEvents {
    max_events: usize,
}

impl<'de> DeserializeSeed<'de> for ArrayOfEvents {
    type Value = (Vec<Element<'de>>, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArrayOfEvents {
    type Value = (Vec<Element<'de>>, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_events));
        let mut total = 0;
        while total < self.max_events {
            match seq.next_element()? {
                Some(e) => events.push(e),
                None => return Ok((events, total)),
            }
            total += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok((events, total))
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

    fn kinds(events: &[Element<'_>]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                Element::Event(_) => "event",
                Element::Invalid { code, .. } => code,
            })
            .collect()
    }

    #[test]
    fn parses_arrays_and_ndjson() {
        let a = parse(br#"[{"a":1}, {"b":[2]}, 7, {"event":"x","event":"y"}]"#, BodyFormat::JsonArray, 10).unwrap();
        assert_eq!(kinds(&a), ["event", "event", "invalid_type", "invalid_type"]);
        let n = parse(b"{\"a\":1}\r\n\n{bad\n{\"c\":3}\n", BodyFormat::Ndjson, 10).unwrap();
        assert_eq!(kinds(&n), ["event", "malformed_json", "event"]);
    }

    #[test]
    fn limits_and_malformed() {
        let too_many = Err(BodyError::TooManyEvents { limit: 2 });
        assert_eq!(parse(b"[1,2,3]", BodyFormat::JsonArray, 2).map(|e| e.len()), too_many);
        assert_eq!(parse(b"1\n2\n3\n", BodyFormat::Ndjson, 2).map(|e| e.len()), too_many);
        for bad in [&b"[1,"[..], b"{}", b"[{}] x", b"[{\"a\":}]"] {
            let r = parse(bad, BodyFormat::JsonArray, 2).map(|e| e.len());
            assert!(matches!(r, Err(BodyError::Malformed(_))), "{}: {r:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"[]", BodyFormat::JsonArray, 2).map(|e| e.len()), Err(BodyError::Empty));
    }
}
