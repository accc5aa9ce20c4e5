//! The PostHog capture API (`/batch/`, `/e/`, `/capture/`, `/i/v0/e/`, `/track/`) as posthog-js,
//! posthog-node and posthog-python send it.
//!
//! Bodies: one event, an array of events, or `{"api_key":…,"batch":[…],"sent_at":…}`; gzip by
//! `Content-Encoding`, `?compression=gzip-js`, or (as posthog-js sends it) only its magic number; or the legacy form body `data=<payload>` whose
//! payload is base64 (`compression=base64`, or none) or lz-string (`compression=lz64`). The key is
//! the body's `api_key`/`token`, else an event's `api_key`/`token`/`properties.token`.
//!
//! Mapping: `uuid` → `event_id`; `event`; `distinct_id` (else `properties.distinct_id` or
//! `$distinct_id`); `timestamp`, else the receive time minus `offset` ms; `properties` kept with
//! every `$`-property, plus a top-level `$set`/`$set_once` moved into them, minus `token`
//! (the key does not travel with the event).

use std::borrow::Cow;

use base64::Engine;
use serde_json::{Map, Value};

use super::{CompatError, Translated, finish, identity, parse, str_member};
use crate::ingest::body;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The request's compression: `?compression=` (posthog-js) or the form's own `compression`.
fn compression<'a>(query: Option<&'a str>) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "compression").map(|(_, v)| v)
}

/// Decompresses a capture body into JSON text, at most `max_bytes` of it.
pub fn decode<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    query: Option<&str>,
    max_bytes: usize,
) -> Result<Cow<'a, [u8]>, CompatError> {
    let mime = content_type.and_then(|ct| ct.split(';').next()).map(|m| m.trim().to_ascii_lowercase());
    let compression = compression(query);
    if mime.as_deref() == Some("application/x-www-form-urlencoded") {
        return decode_form(raw, compression, max_bytes).map(Cow::Owned);
    }
    let encoding = match compression.as_deref() {
        Some("gzip-js" | "gzip") => Some("gzip"),
        Some("base64" | "lz64") => return decode_form(raw, compression, max_bytes).map(Cow::Owned),
        Some(other) if !other.is_empty() => return Err(CompatError::UnsupportedCompression(other.into())),
        // posthog-js (1.449) gzips its batches and says so nowhere; PostHog's capture sniffs
        // the gzip magic number, and so must we.
        _ if content_encoding.is_none() && raw.starts_with(&GZIP_MAGIC) => Some("gzip"),
        _ => content_encoding,
    };
    Ok(body::decode(raw, encoding, max_bytes)?)
}

/// The legacy form body `data=<payload>[&compression=…]`.
fn decode_form(raw: &[u8], query_compression: Option<Cow<'_, str>>, max_bytes: usize) -> Result<Vec<u8>, CompatError> {
    let mut data = None;
    let mut compression = query_compression.map(Cow::into_owned);
    for (k, v) in form_urlencoded::parse(raw) {
        match &*k {
            "data" => data = Some(v.into_owned()),
            "compression" => compression = Some(v.into_owned()),
            _ => {}
        }
    }
    let data = data.ok_or_else(|| CompatError::Malformed("the form body has no `data` field".into()))?;
    let json = match compression.as_deref() {
        Some("lz64") => lz_str::decompress_from_base64(&data)
            .and_then(|utf16| String::from_utf16(&utf16).ok())
            .ok_or_else(|| CompatError::Malformed("`data` is not lz-string base64".into()))?
            .into_bytes(),
        None | Some("" | "base64") if data.trim_start().starts_with(['{', '[']) => data.into_bytes(),
        None | Some("" | "base64") => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| CompatError::Malformed(format!("`data` is not base64: {e}")))?,
        Some(other) => return Err(CompatError::UnsupportedCompression(other.into())),
    };
    if json.len() > max_bytes {
        return Err(body::BodyError::TooLarge { limit: max_bytes }.into());
    }
    Ok(json)
}

/// Translates a decoded capture body; `received_at_ms` resolves `offset`.
pub fn translate(body: &[u8], received_at_ms: u64) -> Result<Translated, CompatError> {
    let (mut key, sent_at, events) = match parse(body)? {
        Value::Array(events) => (None, None, events),
        Value::Object(mut obj) => match obj.remove("batch") {
            Some(Value::Array(events)) => (body_key(&obj), obj.remove("sent_at"), events),
            Some(_) => return Err(CompatError::Malformed("`batch` must be an array".into())),
            None => (body_key(&obj), None, vec![Value::Object(obj)]),
        },
        other => return Err(CompatError::Malformed(format!("expected an event or a batch, got {other}"))),
    };
    if key.is_none() {
        key = events.iter().filter_map(Value::as_object).find_map(event_key);
    }
    let events = events.into_iter().map(|e| event(e, received_at_ms)).collect();
    Ok(finish(key, sent_at, events))
}

fn body_key(obj: &Map<String, Value>) -> Option<String> {
    str_member(obj, "api_key").or_else(|| str_member(obj, "token")).map(String::from)
}

fn event_key(event: &Map<String, Value>) -> Option<String> {
    body_key(event)
        .or_else(|| event.get("properties")?.as_object().and_then(|p| str_member(p, "token")).map(String::from))
}

fn event(value: Value, received_at_ms: u64) -> Value {
    let Value::Object(mut e) = value else { return value };
    let mut out = Map::new();
    if let Some(uuid) = e.remove("uuid") {
        out.insert("event_id".into(), uuid);
    }
    if let Some(name) = e.remove("event") {
        out.insert("event".into(), name);
    }
    let mut properties = match e.remove("properties") {
        Some(Value::Object(p)) => Some(p),
        // Not an object: validation rejects it as on `/v1/events`.
        Some(other) => {
            out.insert("properties".into(), other);
            None
        }
        None => Some(Map::new()),
    };
    let distinct_id = identity(e.get("distinct_id"))
        .or_else(|| identity(properties.as_ref()?.get("distinct_id")))
        .or_else(|| identity(e.get("$distinct_id")));
    if let Some(id) = distinct_id {
        out.insert("distinct_id".into(), id);
    }
    match (e.remove("timestamp"), e.get("offset").and_then(Value::as_i64)) {
        (Some(ts), _) if !ts.is_null() => {
            out.insert("timestamp".into(), ts);
        }
        (_, Some(offset)) => {
            out.insert("timestamp".into(), Value::from((received_at_ms as i64).saturating_sub(offset)));
        }
        _ => {}
    }
    if let Some(mut p) = properties.take() {
        p.remove("token");
        for set in ["$set", "$set_once"] {
            if let Some(v) = e.remove(set) {
                p.entry(set).or_insert(v);
            }
        }
        out.insert("properties".into(), Value::Object(p));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use serde_json::json;
    use std::io::Write;

    const NOW: u64 = 1_800_000_000_000;

    fn batch(t: &Translated) -> Vec<Value> {
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        v["batch"].as_array().unwrap().clone()
    }

    /// What posthog-python 7.91 sends (trimmed), including an `$set` call with a top-level `$set`.
    const PYTHON: &str = r#"{"batch": [
        {"properties": {"a": 1, "$lib": "posthog-python"}, "timestamp": "2027-01-15T08:00:00+00:00",
         "distinct_id": "u1", "event": "evt", "uuid": "fc5c3b39-015a-4e65-844d-fbae65f426a1"},
        {"timestamp": "2027-01-15T08:00:01+00:00", "distinct_id": "u1", "$set": {"name": "x"}, "event": "$set",
         "properties": {"$lib": "posthog-python"}, "uuid": "2017fbee-1ad9-4ede-8398-405328bb30dc"}],
        "historical_migration": false, "sent_at": "2027-01-15T08:00:02+00:00", "api_key": "phc_key"}"#;

    #[test]
    fn maps_a_server_sdk_batch() {
        let t = translate(PYTHON.as_bytes(), NOW).unwrap();
        assert_eq!(t.key.as_deref(), Some("phc_key"));
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["sent_at"], "2027-01-15T08:00:02+00:00");
        let events = batch(&t);
        assert_eq!(
            events[0],
            json!({
                "event_id": "fc5c3b39-015a-4e65-844d-fbae65f426a1", "event": "evt", "distinct_id": "u1",
                "timestamp": "2027-01-15T08:00:00+00:00", "properties": {"a": 1, "$lib": "posthog-python"}
            })
        );
        assert_eq!(events[1]["properties"]["$set"], json!({"name": "x"}), "top-level $set moves into properties");
        assert!(t.retry_key.is_some());
    }

    #[test]
    fn single_events_arrays_and_keys_from_events() {
        let single = translate(br#"{"event":"e","distinct_id":"u","api_key":"k1"}"#, NOW).unwrap();
        assert_eq!((single.key.as_deref(), batch(&single).len()), (Some("k1"), 1));
        assert_eq!(single.retry_key, None, "no uuid: no retry key");
        let js = br#"[{"event":"$pageview","uuid":"u-1","offset":250,"properties":{"token":"phc_js","distinct_id":"d1","$current_url":"http://x/"}}]"#;
        let t = translate(js, NOW).unwrap();
        assert_eq!(t.key.as_deref(), Some("phc_js"));
        let e = &batch(&t)[0];
        assert_eq!(e["distinct_id"], "d1", "posthog-js puts the identity in properties");
        assert_eq!(e["timestamp"], json!(NOW - 250), "offset is ms before receipt");
        assert_eq!(e["properties"].get("token"), None, "the key is not stored with the event");
        assert_eq!(e["properties"]["$current_url"], "http://x/");
        let token = translate(br#"{"token":"k2","batch":[{"event":"e","distinct_id":7}]}"#, NOW).unwrap();
        assert_eq!((token.key.as_deref(), &batch(&token)[0]["distinct_id"]), (Some("k2"), &json!("7")));
    }

    #[test]
    fn leaves_invalid_events_for_validation() {
        let t = translate(br#"[{"distinct_id":"u"}, 5, {"event":"e","properties":[1]}]"#, NOW).unwrap();
        let events = batch(&t);
        assert_eq!(events[0], json!({"distinct_id":"u","properties":{}}), "no name: validation rejects it");
        assert_eq!(events[1], json!(5));
        assert_eq!(events[2]["properties"], json!([1]));
        assert!(matches!(translate(b"{\"batch\":{}}", NOW), Err(CompatError::Malformed(_))));
        assert!(matches!(translate(b"\"x\"", NOW), Err(CompatError::Malformed(_))));
        assert!(matches!(translate(b"[", NOW), Err(CompatError::Malformed(_))));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn decodes_every_body_form() {
        let json = br#"[{"event":"e"}]"#;
        let plain = decode(json, None, Some("application/json"), None, 100).unwrap();
        assert_eq!(&*plain, json);
        let gz = gzip(json);
        assert_eq!(&*decode(&gz, Some("gzip"), None, None, 100).unwrap(), json);
        let query = Some("ip=1&_=1700000000000&compression=gzip-js&ver=1.2");
        assert_eq!(&*decode(&gz, None, Some("text/plain"), query, 100).unwrap(), json);
        assert_eq!(&*decode(&gz, None, Some("text/plain"), Some("ip=0"), 100).unwrap(), json, "gzip by its magic");

        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let form: String = form_urlencoded::Serializer::new(String::new()).append_pair("data", &b64).finish();
        let form_ct = Some("application/x-www-form-urlencoded");
        assert_eq!(&*decode(form.as_bytes(), None, form_ct, None, 100).unwrap(), json);
        assert_eq!(&*decode(form.as_bytes(), None, form_ct, Some("compression=base64"), 100).unwrap(), json);
        let lz = lz_str::compress_to_base64(std::str::from_utf8(json).unwrap());
        let lz_form = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &lz)
            .append_pair("compression", "lz64")
            .finish();
        assert_eq!(&*decode(lz_form.as_bytes(), None, form_ct, None, 100).unwrap(), json);
        let raw_json_form = form_urlencoded::Serializer::new(String::new()).append_pair("data", "[1]").finish();
        assert_eq!(&*decode(raw_json_form.as_bytes(), None, form_ct, None, 100).unwrap(), b"[1]");
    }

    #[test]
    fn decode_errors() {
        let form_ct = Some("application/x-www-form-urlencoded");
        assert!(matches!(decode(b"x=1", None, form_ct, None, 100), Err(CompatError::Malformed(_))));
        assert!(matches!(decode(b"data=%%%", None, form_ct, None, 100), Err(CompatError::Malformed(_))));
        assert_eq!(
            decode(b"{}", None, None, Some("compression=br"), 100),
            Err(CompatError::UnsupportedCompression("br".into()))
        );
        let big = base64::engine::general_purpose::STANDARD.encode([b' '; 101]);
        let form = format!("data={}", form_urlencoded::byte_serialize(big.as_bytes()).collect::<String>());
        assert_eq!(
            decode(form.as_bytes(), None, form_ct, None, 100),
            Err(body::BodyError::TooLarge { limit: 100 }.into())
        );
        assert!(matches!(
            decode(&gzip(&[b' '; 200]), None, None, Some("compression=gzip-js"), 100),
            Err(CompatError::Body(body::BodyError::TooLarge { .. }))
        ));
    }
}
