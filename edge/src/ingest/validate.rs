//! Per-event validation and normalization. Pure: the caller supplies the clock and identity.
//!
//! Events arrive parsed by [`crate::ingest::batch`], their fields borrowed from the request body as raw
//! JSON (no `serde_json::Value`), which is what keeps the hot path at millions of events per
//! second per core: strings are copied into the output as the tokens the client sent (they are
//! already valid JSON) instead of being decoded and re-escaped.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use sluice_wire::EventRecord;
use uuid::Uuid;

use crate::config::{FuturePolicy, LimitsConfig, PiiPolicy, ValidationConfig};
use crate::ingest::batch::{self, Event};
use crate::ingest::pii::{self, PiiViolation};

const MAX_NAME_LEN: usize = 200;
const MAX_ID_LEN: usize = 200;
/// Epoch values below this are seconds, above it milliseconds (1e11 s is the year 5138;
/// 1e11 ms is March 1973).
const SECONDS_MS_BOUNDARY: f64 = 1e11;
/// The largest epoch-ms number accepted: the end of year 9999, where RFC 3339 strings end too.
/// Below 2^53, so every integer up to it parses exactly and the spec's `maximum` is exact.
const MAX_EPOCH_MS: f64 = 253_402_300_799_999.0;

/// Everything about the request that every event inherits.
#[derive(Debug, Clone)]
pub struct BatchContext<'a> {
    pub batch_id: Uuid,
    pub tenant: &'a str,
    pub env: &'a str,
    pub region: &'a str,
    pub received_at_ms: u64,
    /// Batch-level client send time (epoch ms), when the SDK supplied one.
    pub sent_at_ms: Option<i64>,
    pub rules: &'a ValidationConfig,
    pub limits: &'a LimitsConfig,
    pub pii: &'a PiiPolicy,
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The event alone is rejected (listed in the 202 body, sent to the dead-letter topic).
    Reject(Reject),
    /// The event violates the tenant's PII policy: the whole request is refused.
    Pii(PiiViolation),
}

impl From<Reject> for Invalid {
    fn from(r: Reject) -> Self {
        Invalid::Reject(r)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

impl BatchContext<'_> {
    /// The normalized members every event of the batch shares, serialized once per batch and
    /// stored once per WAL record (`BatchRecord::shared`):
    /// `[,"sent_at":…],"received_at":…,"tenant":…,"env":…,"region":…,"batch_id":…`.
    pub fn shared_fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        if let Some(sent_at) = self.sent_at_ms {
            out.extend_from_slice(b",\"sent_at\":");
            push_json(&mut out, &sent_at);
        }
        out.extend_from_slice(b",\"received_at\":");
        push_json(&mut out, &self.received_at_ms);
        for (key, value) in
            [(&b",\"tenant\":"[..], self.tenant), (b",\"env\":", self.env), (b",\"region\":", self.region)]
        {
            out.extend_from_slice(key);
            push_json(&mut out, value);
        }
        out.extend_from_slice(b",\"batch_id\":");
        push_json(&mut out, &self.batch_id);
        out
    }
}

/// Serializing a string, integer or UUID into a Vec cannot fail.
fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

fn reject(index: usize, code: &'static str, message: impl Into<String>) -> Reject {
    Reject { index, code, message: message.into() }
}

/// Validates the `index`-th event of a batch, given as its JSON text, and returns its normalized
/// form (see [`normalize_event`]).
pub fn normalize(ctx: &BatchContext<'_>, index: usize, json: &[u8]) -> Result<EventRecord, Invalid> {
    normalize_event(ctx, index, &batch::parse_line(json))
}

/// Validates the `index`-th event of a parsed batch and returns its normalized form.
///
/// The output object is `event_id, event, distinct_id, timestamp (epoch ms)[, client_timestamp]
/// [, properties][, context]`, written directly: string fields are copied as the raw JSON tokens
/// the client sent. The batch's [`BatchContext::shared_fields`] complete it when it is produced.
pub fn normalize_event(ctx: &BatchContext<'_>, index: usize, event: &Event<'_>) -> Result<EventRecord, Invalid> {
    let json = event.raw;
    if json.len() > ctx.limits.max_event_bytes {
        let max = ctx.limits.max_event_bytes;
        return Err(reject(index, "event_too_large", format!("event is {} bytes, limit {max}", json.len())).into());
    }
    let input = event.fields.as_ref().map_err(|f| reject(index, f.code, f.message.clone()))?;
    let event = required_str(index, "event", input.event, MAX_NAME_LEN)?;
    let distinct_id = required_str(index, "distinct_id", input.distinct_id, MAX_ID_LEN)?;
    let mut client_timestamp = None;
    let timestamp = match input.timestamp {
        None => ctx.received_at_ms as i64,
        Some(raw) => {
            let t = parse_timestamp(raw.get()).ok_or_else(|| {
                let msg = format!("`timestamp` {} is not RFC 3339 or epoch seconds/milliseconds", raw.get());
                reject(index, "invalid_timestamp", msg)
            })?;
            check_window(ctx, index, t, &mut client_timestamp)?
        }
    };
    for (field, value) in [("properties", input.properties), ("context", input.context)] {
        if let Some(v) = value
            && !v.get().starts_with('{')
        {
            return Err(reject(index, "invalid_type", format!("`{field}` must be an object")).into());
        }
    }
    pii::check(ctx.pii, index, input.properties, input.context).map_err(Invalid::Pii)?;
    let client_id = match input.event_id {
        Some(raw) => Some(required_str(index, "event_id", Some(raw), MAX_ID_LEN)?),
        None => None,
    };
    let mut out = Vec::with_capacity(json.len() + 128);
    out.extend_from_slice(b"{\"event_id\":");
    let event_id = match client_id {
        Some(s) => {
            out.extend_from_slice(s.raw.as_bytes());
            s.value.into_owned()
        }
        None => {
            let mut buf = Uuid::encode_buffer();
            let id = sluice_wire::ids::derived_event_id(&ctx.batch_id, index).hyphenated().encode_lower(&mut buf);
            out.push(b'"');
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
            id.to_owned()
        }
    };
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event.raw.as_bytes());
    out.extend_from_slice(b",\"distinct_id\":");
    out.extend_from_slice(distinct_id.raw.as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    push_json(&mut out, &timestamp);
    if let Some(original) = client_timestamp {
        out.extend_from_slice(b",\"client_timestamp\":");
        push_json(&mut out, &original);
    }
    for (key, value) in [(&b",\"properties\":"[..], input.properties), (b",\"context\":", input.context)] {
        if let Some(v) = value {
            out.extend_from_slice(key);
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    Ok(EventRecord { event_id, json: out })
}

/// Applies the past/future sanity window to a parsed client timestamp.
fn check_window(ctx: &BatchContext<'_>, index: usize, t: i64, original: &mut Option<i64>) -> Result<i64, Reject> {
    let received = ctx.received_at_ms as i64;
    let oldest = received.saturating_sub((ctx.rules.max_past_secs as i64).saturating_mul(1000));
    let newest = received.saturating_add((ctx.rules.max_future_secs as i64).saturating_mul(1000));
    if t < oldest {
        let days = ctx.rules.max_past_secs / 86_400;
        return Err(reject(
            index,
            "timestamp_out_of_range",
            format!("`timestamp` is more than {days} days in the past"),
        ));
    }
    if t > newest {
        let secs = ctx.rules.max_future_secs;
        return match ctx.rules.future_policy {
            FuturePolicy::Reject => {
                Err(reject(index, "timestamp_out_of_range", format!("`timestamp` is more than {secs} s in the future")))
            }
            FuturePolicy::Clamp => {
                *original = Some(t);
                Ok(received)
            }
        };
    }
    Ok(t)
}

/// The dead-letter form of a rejected event: the reason plus the original text, kept as a string
/// because it may not even be valid JSON.
pub fn dead_letter(ctx: &BatchContext<'_>, reject: &Reject, raw: &[u8]) -> Result<EventRecord, serde_json::Error> {
    let event_id = sluice_wire::ids::derived_event_id(&ctx.batch_id, reject.index).to_string();
    let json = serde_json::to_vec(&serde_json::json!({
        "event_id": event_id,
        "tenant": ctx.tenant,
        "env": ctx.env,
        "region": ctx.region,
        "batch_id": ctx.batch_id,
        "index": reject.index,
        "code": reject.code,
        "message": reject.message,
        "received_at": ctx.received_at_ms,
        "raw": String::from_utf8_lossy(raw),
    }))?;
    Ok(EventRecord { event_id, json })
}

/// A JSON string field: its raw token (quotes and escapes included) and its decoded value.
struct JsonStr<'a> {
    raw: &'a str,
    value: Cow<'a, str>,
}

fn required_str<'s>(index: usize, field: &str, raw: Option<&'s RawValue>, max: usize) -> Result<JsonStr<'s>, Reject> {
    let Some(raw) = raw else {
        return Err(reject(index, "missing_field", format!("`{field}` is required")));
    };
    let raw = raw.get();
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return Err(reject(index, "invalid_type", format!("`{field}` must be a string, got {raw}")));
    };
    let value: Cow<'s, str> = if inner.contains('\\') {
        serde_json::from_str::<String>(raw).map_err(|e| reject(index, "malformed_json", e.to_string()))?.into()
    } else {
        Cow::Borrowed(inner)
    };
    if value.trim().is_empty() {
        return Err(reject(index, "missing_field", format!("`{field}` is empty")));
    }
    // Characters (Unicode scalar values), as JSON Schema's `maxLength` counts them.
    if value.chars().nth(max).is_some() {
        return Err(reject(index, "field_too_long", format!("`{field}` is longer than {max} characters")));
    }
    Ok(JsonStr { raw, value })
}

/// RFC 3339 string, or epoch seconds / milliseconds as a number. Returns epoch ms.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    if raw.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(raw).ok()?;
        let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    } else {
        let n: f64 = raw.parse().ok()?;
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let ms = if n < SECONDS_MS_BOUNDARY { n * 1000.0 } else { n };
        (ms <= MAX_EPOCH_MS).then_some(ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: ValidationConfig =
        ValidationConfig { max_past_secs: 86_400, max_future_secs: 60, future_policy: FuturePolicy::Clamp };
    const LIMITS: LimitsConfig =
        LimitsConfig { max_events: 500, max_body_bytes: 512 * 1024, max_event_bytes: 1024, debug_requests_per_sec: 1 };
    static NO_PII: PiiPolicy = PiiPolicy { disallowed_fields: Vec::new(), detectors: Vec::new() };

    fn ctx() -> BatchContext<'static> {
        BatchContext {
            batch_id: Uuid::from_u128(42),
            tenant: "acme",
            env: "prod",
            region: "eu",
            received_at_ms: 1_700_000_000_123,
            sent_at_ms: None,
            rules: &RULES,
            limits: &LIMITS,
            pii: &NO_PII,
        }
    }

    fn rejected(ctx: &BatchContext<'_>, body: &[u8]) -> Reject {
        match normalize(ctx, 3, body) {
            Err(Invalid::Reject(r)) => r,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    /// The event as produced: its own members and the batch's shared ones.
    fn out(ctx: &BatchContext<'_>, rec: &EventRecord) -> serde_json::Value {
        serde_json::from_slice(&sluice_wire::record::spliced(&rec.json, &ctx.shared_fields())).unwrap()
    }

    #[test]
    fn normalizes_timestamp_forms_to_epoch_ms() {
        assert_eq!(parse_timestamp(r#""2023-11-14T22:13:20Z""#), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp(r#""2023-11-14T23:13:20.5+01:00""#), Some(1_700_000_000_500));
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("1700000000.25"), Some(1_700_000_000_250));
        assert_eq!(parse_timestamp("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_timestamp("253402300799999"), Some(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        for bad in [r#""yesterday""#, "-5", "true", "null", r#""2023-13-01T00:00:00Z""#, "253402300800000", "1e300"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn enriches_and_keeps_client_fields() {
        let rec = normalize(&ctx(), 0, br#"{"event":"signup","distinct_id":"u1","timestamp":1700000000,"event_id":"e-1","properties":{"plan":"pro"},"tenant":"evil"}"#).unwrap();
        assert_eq!(rec.event_id, "e-1");
        let v = out(&ctx(), &rec);
        assert_eq!(v["event"], "signup");
        assert_eq!(v["timestamp"], 1_700_000_000_000i64);
        assert_eq!(v["received_at"], 1_700_000_000_123u64);
        assert_eq!(v["region"], "eu");
        assert_eq!(v["tenant"], "acme", "tenant comes from the key, never the body");
        assert_eq!(v["properties"]["plan"], "pro");
    }

    #[test]
    fn assigns_deterministic_event_ids() {
        let body = br#"{"event":"e","distinct_id":"u"}"#;
        let a = normalize(&ctx(), 7, body).unwrap();
        let b = normalize(&ctx(), 7, body).unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, normalize(&ctx(), 8, body).unwrap().event_id);
        assert_eq!(v_ts(&a), 1_700_000_000_123);
    }

    fn v_ts(rec: &EventRecord) -> i64 {
        out(&ctx(), rec)["timestamp"].as_i64().unwrap()
    }

    #[test]
    fn rejects_with_codes() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"distinct_id":"u"}"#, "missing_field"),
            (br#"{"event":"","distinct_id":"u"}"#, "missing_field"),
            (br#"{"event":"e"}"#, "missing_field"),
            (br#"{"event":5,"distinct_id":"u"}"#, "invalid_type"),
            (br#"{"event":"e","distinct_id":"u","timestamp":"soon"}"#, "invalid_timestamp"),
            (br#"{"event":"e","distinct_id":"u","properties":[1]}"#, "invalid_type"),
            (br#"{"event":"e","#, "malformed_json"),
        ];
        for (body, code) in cases {
            let r = rejected(&ctx(), body);
            assert_eq!((r.index, r.code), (3, code), "{}", String::from_utf8_lossy(body));
        }
        let big = format!(r#"{{"event":"e","distinct_id":"u","properties":{{"p":"{}"}}}}"#, "x".repeat(1024));
        // Only an object is an event: serde would read a struct from an array field by field.
        for (body, code, says) in [
            (&br#"["signup","user-1",1796220000,"evid",{"plan":"pro"}]"#[..], "invalid_type", "got an array"),
            (br#"  [{"event":"e","distinct_id":"u"}]"#, "invalid_type", "got an array"),
            (br#""signup""#, "invalid_type", "got a string"),
            (b"42", "invalid_type", "got a number"),
            (b"null", "invalid_type", "got null"),
            (b"[1,", "malformed_json", ""),
        ] {
            let r = rejected(&ctx(), body);
            assert_eq!(r.code, code, "{}", String::from_utf8_lossy(body));
            assert!(r.message.contains(says), "{}", r.message);
        }
        assert_eq!(rejected(&ctx(), big.as_bytes()).code, "event_too_large");
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let named = |name: &str| format!(r#"{{"event":"{name}","distinct_id":"u"}}"#);
        // 200 two-byte characters (400 bytes) are within `maxLength: 200`.
        assert!(normalize(&ctx(), 0, named(&"é".repeat(200)).as_bytes()).is_ok());
        assert!(
            normalize(&ctx(), 0, named(&format!("{}\\u00e9", "é".repeat(199))).as_bytes()).is_ok(),
            "escapes count decoded"
        );
        let r = rejected(&ctx(), named(&"é".repeat(201)).as_bytes());
        assert_eq!(r.code, "field_too_long", "{}", r.message);
    }

    #[test]
    fn timestamp_window_rejects_the_past_and_clamps_or_rejects_the_future() {
        let at = |ms: i64| format!(r#"{{"event":"e","distinct_id":"u","timestamp":{ms}}}"#);
        let received = 1_700_000_000_123i64;
        let old = at(received - 86_401_000);
        assert_eq!(rejected(&ctx(), old.as_bytes()).code, "timestamp_out_of_range");
        let ok = normalize(&ctx(), 0, at(received - 86_399_000).as_bytes()).unwrap();
        assert_eq!(v_ts(&ok), received - 86_399_000);

        let future = at(received + 61_000);
        let clamped = out(&ctx(), &normalize(&ctx(), 0, future.as_bytes()).unwrap());
        assert_eq!(clamped["timestamp"].as_i64(), Some(received));
        assert_eq!(clamped["client_timestamp"].as_i64(), Some(received + 61_000));
        let strict = ValidationConfig { future_policy: FuturePolicy::Reject, ..RULES };
        let c = BatchContext { rules: &strict, ..ctx() };
        assert_eq!(rejected(&c, future.as_bytes()).code, "timestamp_out_of_range");
    }

    #[test]
    fn escaped_strings_are_copied_as_valid_json_and_decoded_for_ids() {
        let body = br#"{"event":"sign\"up","distinct_id":"caf\u00e9","event_id":"id\/1","properties":{"a":"\n"}}"#;
        let rec = normalize(&ctx(), 0, body).unwrap();
        assert_eq!(rec.event_id, "id/1", "the Kafka header carries the decoded ID");
        let v = out(&ctx(), &rec);
        assert_eq!(v["event"], "sign\"up");
        assert_eq!(v["distinct_id"], "café");
        assert_eq!(v["event_id"], "id/1");
        assert_eq!(v["properties"]["a"], "\n");
    }

    #[test]
    fn sent_at_and_received_at_stay_separate_fields() {
        let c = BatchContext { sent_at_ms: Some(1_699_999_999_000), ..ctx() };
        let v = out(&c, &normalize(&c, 0, br#"{"event":"e","distinct_id":"u","timestamp":1699999998}"#).unwrap());
        assert_eq!(v["timestamp"], 1_699_999_998_000i64);
        assert_eq!(v["sent_at"], 1_699_999_999_000i64);
        assert_eq!(v["received_at"], 1_700_000_000_123u64);
        assert!(v.get("client_timestamp").is_none());
    }

    #[test]
    fn pii_hits_fail_differently_from_rejects() {
        let policy = PiiPolicy { disallowed_fields: vec![], detectors: vec![crate::config::PiiDetector::Email] };
        let c = BatchContext { pii: &policy, ..ctx() };
        let r = normalize(&c, 1, br#"{"event":"e","distinct_id":"u","properties":{"note":"mail me: a@b.io"}}"#);
        assert!(matches!(r, Err(Invalid::Pii(ref v)) if v.field == "properties.note"), "{r:?}");
    }

    #[test]
    fn dead_letters_keep_the_raw_text_and_reason() {
        let r = rejected(&ctx(), b"{\"event\":");
        let dl = dead_letter(&ctx(), &r, b"{\"event\":").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&dl.json).unwrap();
        assert_eq!(v["raw"], "{\"event\":");
        assert_eq!(v["code"], "malformed_json");
        assert_eq!(v["index"], 3);
        assert_eq!(v["tenant"], "acme");
    }
}
