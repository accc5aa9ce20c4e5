//! Per-event validation and normalization. Pure: the caller supplies the clock and identity.
//!
//! Parsing borrows from the request body (no `serde_json::Value`), which is what keeps the hot
//! path at millions of events per second per core.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_wire::EventRecord;
use uuid::Uuid;

const MAX_NAME_LEN: usize = 200;
const MAX_ID_LEN: usize = 200;
/// Epoch values below this are seconds, above it milliseconds (1e11 s is the year 5138;
/// 1e11 ms is March 1973).
const SECONDS_MS_BOUNDARY: f64 = 1e11;

/// Everything about the request that every event inherits.
#[derive(Debug, Clone)]
pub struct BatchContext<'a> {
    pub batch_id: Uuid,
    pub tenant: &'a str,
    pub env: &'a str,
    pub region: &'a str,
    pub received_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// The fields of an input event, borrowed from the request body as raw JSON. Keeping strings raw
/// lets `normalize` copy them into the output verbatim (they are already valid JSON) instead of
/// decoding and re-escaping them; unknown fields are skipped.
#[derive(Debug, Default)]
pub struct InEvent<'a> {
    event: Option<&'a RawValue>,
    distinct_id: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    event_id: Option<&'a RawValue>,
    properties: Option<&'a RawValue>,
    context: Option<&'a RawValue>,
}

/// One event of a body as parsed: its fields, or why it cannot be an event. Type problems are
/// per event (the rest of the batch is still accepted), so parsing an element never fails on
/// them; only malformed JSON does.
#[derive(Debug)]
pub enum Element<'a> {
    Event(InEvent<'a>),
    Invalid { code: &'static str, message: String },
}

impl<'a> Element<'a> {
    /// Parses one event's JSON text (an NDJSON line).
    pub fn parse(json: &'a [u8]) -> Self {
        serde_json::from_slice(json).unwrap_or_else(|e| Element::Invalid {
            code: if e.is_data() { "invalid_type" } else { "malformed_json" },
            message: e.to_string(),
        })
    }
}

const FIELDS: [&str; 6] = ["event", "distinct_id", "timestamp", "event_id", "properties", "context"];

/// A key of an event object: the index of a known field, or `None`.
struct FieldKey(Option<usize>);

impl<'de> Deserialize<'de> for FieldKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FieldKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldKey, E> {
                Ok(FieldKey(FIELDS.iter().position(|f| *f == v)))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

fn not_an_object<'a>(what: &str) -> Element<'a> {
    Element::Invalid { code: "invalid_type", message: format!("an event must be a JSON object, not {what}") }
}

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element<'de>, A::Error> {
        let mut fields: [Option<&'de RawValue>; 6] = [None; 6];
        let mut seen = [false; 6];
        let mut duplicate = None;
        while let Some(FieldKey(key)) = map.next_key()? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            fields[i] = map.next_value()?;
            if std::mem::replace(&mut seen[i], true) {
                duplicate.get_or_insert(FIELDS[i]);
            }
        }
        if let Some(field) = duplicate {
            return Ok(Element::Invalid { code: "invalid_type", message: format!("duplicate field `{field}`") });
        }
        let [event, distinct_id, timestamp, event_id, properties, context] = fields;
        Ok(Element::Event(InEvent { event, distinct_id, timestamp, event_id, properties, context }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element<'de>, E> {
        Ok(not_an_object("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element<'de>, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element<'de>, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Element<'de>, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Element<'de>, E> {
        Ok(not_an_object("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Element<'de>, E> {
        Ok(not_an_object("null"))
    }
}

fn reject(index: usize, code: &'static str, message: impl Into<String>) -> Reject {
    Reject { index, code, message: message.into() }
}

/// The normalized fields every event of a batch shares, serialized once per batch:
/// `,"received_at":…,"tenant":…,"env":…,"region":…,"batch_id":…`.
pub struct SharedFields(Vec<u8>);

impl BatchContext<'_> {
    pub fn shared_fields(&self) -> SharedFields {
        let mut out = Vec::with_capacity(128);
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
        SharedFields(out)
    }
}

/// Serializing a string, integer or UUID into a Vec cannot fail.
fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// Validates the `index`-th event of a batch and returns its normalized form.
pub fn normalize(ctx: &BatchContext<'_>, index: usize, json: &[u8]) -> Result<EventRecord, Reject> {
    normalize_with(ctx, &ctx.shared_fields(), index, json)
}

/// [`normalize`] with the batch's shared fields computed once by the caller.
///
/// The output object is `event_id, event, distinct_id, timestamp (epoch ms), received_at, tenant,
/// env, region, batch_id[, properties][, context]`.
pub fn normalize_with(
    ctx: &BatchContext<'_>,
    shared: &SharedFields,
    index: usize,
    json: &[u8],
) -> Result<EventRecord, Reject> {
    normalize_element(ctx, shared, index, Element::parse(json))
}

/// Validates and normalizes one parsed element (see [`crate::body::parse`]).
pub fn normalize_element(
    ctx: &BatchContext<'_>,
    shared: &SharedFields,
    index: usize,
    element: Element<'_>,
) -> Result<EventRecord, Reject> {
    let input = match element {
        Element::Event(e) => e,
        Element::Invalid { code, message } => return Err(reject(index, code, message)),
    };
    let event = required_str(index, "event", input.event, MAX_NAME_LEN)?;
    let distinct_id = required_str(index, "distinct_id", input.distinct_id, MAX_ID_LEN)?;
    let timestamp = match input.timestamp {
        None => ctx.received_at_ms as i64,
        Some(raw) => parse_timestamp(raw.get()).ok_or_else(|| {
            reject(
                index,
                "invalid_timestamp",
                format!("`timestamp` {} is not RFC 3339 or epoch seconds/milliseconds", raw.get()),
            )
        })?,
    };
    for (field, value) in [("properties", input.properties), ("context", input.context)] {
        if let Some(v) = value
            && !v.get().starts_with('{')
        {
            return Err(reject(index, "invalid_type", format!("`{field}` must be an object")));
        }
    }
    let client_id = match input.event_id {
        Some(raw) => Some(required_str(index, "event_id", Some(raw), MAX_ID_LEN)?),
        None => None,
    };
    // Copied raw values + the shared fields + keys, IDs and the timestamp: one allocation.
    let copied: usize = [event.raw, distinct_id.raw]
        .iter()
        .map(|r| r.len())
        .chain([input.properties, input.context].iter().flatten().map(|r| r.get().len()))
        .sum();
    let mut out = Vec::with_capacity(copied + shared.0.len() + 192);
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
    out.extend_from_slice(&shared.0);
    for (key, value) in [(&b",\"properties\":"[..], input.properties), (b",\"context\":", input.context)] {
        if let Some(v) = value {
            out.extend_from_slice(key);
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    Ok(EventRecord { event_id, json: out })
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
    if value.len() > max {
        return Err(reject(index, "field_too_long", format!("`{field}` is longer than {max} bytes")));
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
        (ms < i64::MAX as f64).then_some(ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BatchContext<'static> {
        BatchContext {
            batch_id: Uuid::from_u128(42),
            tenant: "acme",
            env: "prod",
            region: "eu",
            received_at_ms: 1_700_000_000_123,
        }
    }

    fn out(rec: &EventRecord) -> serde_json::Value {
        serde_json::from_slice(&rec.json).unwrap()
    }

    #[test]
    fn normalizes_timestamp_forms_to_epoch_ms() {
        assert_eq!(parse_timestamp(r#""2023-11-14T22:13:20Z""#), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp(r#""2023-11-14T23:13:20.5+01:00""#), Some(1_700_000_000_500));
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("1700000000.25"), Some(1_700_000_000_250));
        assert_eq!(parse_timestamp("1700000000123"), Some(1_700_000_000_123));
        for bad in [r#""yesterday""#, "-5", "true", "null", r#""2023-13-01T00:00:00Z""#] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn enriches_and_keeps_client_fields() {
        let rec = normalize(&ctx(), 0, br#"{"event":"signup","distinct_id":"u1","timestamp":1700000000,"event_id":"e-1","properties":{"plan":"pro"},"tenant":"evil"}"#).unwrap();
        assert_eq!(rec.event_id, "e-1");
        let v = out(&rec);
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
        out(rec)["timestamp"].as_i64().unwrap()
    }

    #[test]
    fn raw_strings_are_copied_as_valid_json() {
        let rec = normalize(
            &ctx(),
            0,
            br#"{"event":"a\"b\u00e9","distinct_id":"u\\1","event_id":"id\n2","context":{"x":[1]}}"#,
        )
        .unwrap();
        assert_eq!(rec.event_id, "id\n2", "the header carries the decoded client ID");
        let v = out(&rec);
        assert_eq!(v["event"], "a\"b\u{e9}");
        assert_eq!(v["distinct_id"], "u\\1");
        assert_eq!(v["event_id"], "id\n2");
        assert_eq!(v["context"]["x"][0], 1);
        assert_eq!(v["batch_id"], Uuid::from_u128(42).to_string());
        assert_eq!(v.as_object().unwrap().len(), 10);
        let null = normalize(&ctx(), 1, br#"{"event":null,"distinct_id":"u"}"#).unwrap_err();
        assert_eq!(null.code, "missing_field");
        let blank = normalize(&ctx(), 1, br#"{"event":"\u0020","distinct_id":"u"}"#).unwrap_err();
        assert_eq!(blank.code, "missing_field");
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
            let r = normalize(&ctx(), 3, body).unwrap_err();
            assert_eq!((r.index, r.code), (3, code), "{}", String::from_utf8_lossy(body));
        }
    }
}
