//! The request body path (gzip inflation under a cap, the one-pass JSON array / NDJSON parse, per-event
//! validation) sees arbitrary client bytes. Guards against: a panic, output larger than the
//! limit (gzip bombs, unbounded allocation), more events than the limit, and valid input being
//! mangled on the way.

use std::io::Write;

use proptest::prelude::*;
use sluice_edge::config::{LimitsConfig, PiiPolicy, ValidationConfig};
use sluice_edge::ingest::batch::parse;
use sluice_edge::ingest::body::{BodyError, BodyFormat, decode};
use sluice_edge::ingest::validate::{BatchContext, normalize, normalize_event};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

static RULES: std::sync::LazyLock<ValidationConfig> = std::sync::LazyLock::new(ValidationConfig::default);
static LIMITS: std::sync::LazyLock<LimitsConfig> = std::sync::LazyLock::new(LimitsConfig::default);
static PII: std::sync::LazyLock<PiiPolicy> = std::sync::LazyLock::new(|| PiiPolicy {
    disallowed_fields: vec!["properties.a.b".into()],
    detectors: vec![sluice_edge::config::PiiDetector::Email, sluice_edge::config::PiiDetector::CardNumber],
});

fn ctx() -> BatchContext<'static> {
    BatchContext {
        batch_id: uuid::Uuid::nil(),
        tenant: "t",
        env: "e",
        region: "r",
        received_at_ms: 1_764_000_000_000,
        sent_at_ms: None,
        rules: &RULES,
        limits: &LIMITS,
        pii: &PII,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_is_bounded_for_any_input(data in prop::collection::vec(any::<u8>(), 0..4096), max in 0usize..8192,
                                       enc in prop::sample::select(vec![None, Some("gzip"), Some("x-gzip"), Some("identity"), Some("br"), Some(" GZIP ")])) {
        if let Ok(out) = decode(&data, enc, max) {
            prop_assert!(out.len() <= max);
        }
    }

    #[test]
    fn gzip_round_trips_or_reports_too_large(data in prop::collection::vec(any::<u8>(), 0..20_000), max in 1usize..16_384) {
        match decode(&gzip(&data), Some("gzip"), max) {
            Ok(out) => prop_assert_eq!(&*out, &data[..]),
            Err(e) => {
                prop_assert_eq!(e, BodyError::TooLarge { limit: max });
                prop_assert!(data.len() > max);
            }
        }
    }

    /// Gzip damaged anywhere: an error or some bytes, never a panic or more than the limit.
    #[test]
    fn damaged_gzip_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000), pos in any::<prop::sample::Index>(), cut in any::<bool>()) {
        let mut g = gzip(&data);
        let i = pos.index(g.len());
        if cut { g.truncate(i) } else { g[i] ^= 0x5a }
        if let Ok(out) = decode(&g, Some("gzip"), 4096) {
            prop_assert!(out.len() <= 4096);
        }
    }

    #[test]
    fn parse_never_panics_and_respects_the_event_limit(data in prop::collection::vec(any::<u8>(), 0..4096), max in 1usize..50, ndjson in any::<bool>()) {
        let format = if ndjson { BodyFormat::Ndjson } else { BodyFormat::JsonArray };
        if let Ok(batch) = parse(&data, format, max) {
            prop_assert!(!batch.events.is_empty() && batch.events.len() <= max);
        }
    }

    /// Text that looks like JSON (brackets, quotes, nesting) reaches deeper parser states.
    #[test]
    fn jsonish_text_never_panics(s in r#"[\[\]\{\}",:0-9a-z\\ \n-]{0,400}"#, max in 1usize..20) {
        for format in [BodyFormat::JsonArray, BodyFormat::Ndjson] {
            if let Ok(batch) = parse(s.as_bytes(), format, max) {
                for (i, e) in batch.events.iter().enumerate() {
                    let _ = normalize_event(&ctx(), i, e);
                }
            }
        }
    }

    #[test]
    fn normalize_never_panics(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = normalize(&ctx(), 0, &data);
    }

    /// Well-formed arrays parse into exactly their elements.
    #[test]
    fn arrays_parse_into_their_elements(n in 1usize..30, max in 1usize..30) {
        let elements: Vec<_> = (0..n).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
        let body = format!("[{}]", elements.join(","));
        match parse(body.as_bytes(), BodyFormat::JsonArray, max) {
            Ok(batch) => {
                prop_assert!(n <= max);
                let raws: Vec<_> = batch.events.iter().map(|e| e.raw).collect();
                prop_assert_eq!(raws, elements.iter().map(|e| e.as_bytes()).collect::<Vec<_>>());
            }
            Err(e) => {
                prop_assert!(n > max);
                prop_assert_eq!(e, BodyError::TooManyEvents { limit: max });
            }
        }
    }
}
