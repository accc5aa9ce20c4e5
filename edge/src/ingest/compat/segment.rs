//! The Segment HTTP tracking API (`/v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias`) as analytics-node and analytics-python send it.
//!
//! Limits are Segment's: one call at most 32 KB, a batch at most 500 KB (decompressed). The key
//! is the Basic-auth user name (the HTTP layer reads it) or the body's `writeKey`.
//!
//! Mapping: `messageId` → `event_id`; `userId`, else `anonymousId` → `distinct_id`; `timestamp`
//! (else `originalTimestamp`); `sentAt` → `sent_at`; `event` is the track call's name, or `$`
//! and the call type for the others (`$identify`, `$page`, `$screen`, `$group`, `$alias`);
//! `properties` are the call's `properties` (track, page, screen) or `traits` (identify,
//! group); `context` is the call's `context` plus `context.segment` holding `type` and the
//! call's other members (`userId`, `anonymousId`, `groupId`, `previousId`, `name`,
//! `category`, `integrations`).

use serde_json::{Map, Value};

use super::{CompatError, Translated, finish, identity, parse, str_member};

pub const MAX_CALL_BYTES: usize = 32 * 1024;
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Batch,
    /// A single call; the type is the endpoint's, whatever the body says.
    Single(&'static str),
}

/// The endpoints of the tracking API.
pub const PATHS: [&str; 7] =
    ["/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias"];

/// The call an endpoint takes (`/v1/batch` a batch, `/v1/<type>` one call of that type).
pub fn call_for_path(path: &str) -> Option<Call> {
    match path.strip_prefix("/v1/")? {
        "batch" => Some(Call::Batch),
        "track" => Some(Call::Single("track")),
        "identify" => Some(Call::Single("identify")),
        "page" => Some(Call::Single("page")),
        "screen" => Some(Call::Single("screen")),
        "group" => Some(Call::Single("group")),
        "alias" => Some(Call::Single("alias")),
        _ => None,
    }
}

/// The write key of `Authorization: Basic base64(<write key>:)`.
pub fn basic_auth_user(authorization: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    (!user.is_empty()).then(|| user.to_string())
}

/// The members kept under `context.segment`, as Segment names them.
const SEGMENT_MEMBERS: [&str; 7] =
    ["userId", "anonymousId", "groupId", "previousId", "name", "category", "integrations"];

/// Translates a decoded Segment body.
pub fn translate(body: &[u8], call: Call) -> Result<Translated, CompatError> {
    let (what, limit) = match call {
        Call::Batch => ("the batch", MAX_BATCH_BYTES),
        Call::Single(_) => ("the call", MAX_CALL_BYTES),
    };
    if body.len() > limit {
        return Err(CompatError::TooLarge { what, size: body.len(), limit });
    }
    let Value::Object(mut obj) = parse(body)? else {
        return Err(CompatError::Malformed("expected a JSON object".into()));
    };
    let key = str_member(&obj, "writeKey").map(String::from);
    let sent_at = obj.remove("sentAt");
    let events = match call {
        Call::Batch => match obj.remove("batch") {
            Some(Value::Array(messages)) => messages.into_iter().map(|m| message(m, None)).collect(),
            _ => return Err(CompatError::Malformed("`batch` must be an array of messages".into())),
        },
        Call::Single(kind) => {
            obj.remove("writeKey");
            vec![message(Value::Object(obj), Some(kind))]
        }
    };
    Ok(finish(key, sent_at, events))
}

fn message(value: Value, kind: Option<&str>) -> Value {
    let Value::Object(mut m) = value else { return value };
    let kind = kind.map(String::from).or_else(|| str_member(&m, "type").map(String::from));
    let mut out = Map::new();
    if let Some(id) = m.remove("messageId") {
        out.insert("event_id".into(), id);
    }
    let name = match kind.as_deref() {
        Some("track") => m.remove("event"),
        Some(other) => Some(Value::String(format!("${other}"))),
        // No type: no name, and validation rejects the message.
        None => None,
    };
    if let Some(name) = name {
        out.insert("event".into(), name);
    }
    if let Some(id) = identity(m.get("userId")).or_else(|| identity(m.get("anonymousId"))) {
        out.insert("distinct_id".into(), id);
    }
    if let Some(ts) = m.remove("timestamp").filter(|t| !t.is_null()).or_else(|| m.remove("originalTimestamp")) {
        out.insert("timestamp".into(), ts);
    }
    let properties = match kind.as_deref() {
        Some("identify" | "group") => m.remove("traits"),
        _ => m.remove("properties"),
    };
    out.insert("properties".into(), properties.filter(|p| !p.is_null()).unwrap_or_else(|| Value::Object(Map::new())));
    let mut segment = Map::new();
    if let Some(kind) = kind {
        segment.insert("type".into(), Value::String(kind));
    }
    for member in SEGMENT_MEMBERS {
        if let Some(v) = m.remove(member).filter(|v| !v.is_null()) {
            segment.insert(member.into(), v);
        }
    }
    let context = match m.remove("context") {
        Some(Value::Object(mut c)) => {
            c.insert("segment".into(), Value::Object(segment));
            Value::Object(c)
        }
        None | Some(Value::Null) => Value::Object(Map::from_iter([("segment".to_string(), Value::Object(segment))])),
        // Not an object: validation rejects it as on `/v1/events`.
        Some(other) => other,
    };
    out.insert("context".into(), context);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(t: &Translated) -> Vec<Value> {
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        v["batch"].as_array().unwrap().clone()
    }

    /// What analytics-node 3.1 sends (trimmed): one message of each call type.
    const NODE: &str = r#"{"batch":[
        {"timestamp":"2027-01-15T08:00:00.000Z","integrations":{},"event":"Signed Up","type":"track","properties":{"plan":"pro"},"context":{"library":{"name":"@segment/analytics-node"}},"userId":"u1","messageId":"m-1"},
        {"timestamp":"2027-01-15T08:00:00.001Z","type":"identify","userId":"u1","traits":{"email":"e"},"messageId":"m-2"},
        {"type":"page","properties":{"category":"Docs"},"category":"Docs","name":"Home","userId":"u1","messageId":"m-3"},
        {"type":"screen","properties":{},"name":"Main","anonymousId":"a1","messageId":"m-4"},
        {"type":"group","traits":{"n":1},"groupId":"g1","userId":"u1","anonymousId":null,"messageId":"m-5"},
        {"userId":"u0","type":"alias","previousId":"u1","messageId":"m-6"}
      ],"writeKey":"wk","sentAt":"2027-01-15T08:00:01.000Z"}"#;

    #[test]
    fn maps_every_call_type() {
        let t = translate(NODE.as_bytes(), Call::Batch).unwrap();
        assert_eq!(t.key.as_deref(), Some("wk"));
        assert!(t.retry_key.is_some());
        let e = events(&t);
        assert_eq!(
            e[0],
            json!({
                "event_id": "m-1", "event": "Signed Up", "distinct_id": "u1", "timestamp": "2027-01-15T08:00:00.000Z",
                "properties": {"plan": "pro"},
                "context": {"library": {"name": "@segment/analytics-node"},
                            "segment": {"type": "track", "userId": "u1", "integrations": {}}}
            })
        );
        let names: Vec<_> = e.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(names, ["Signed Up", "$identify", "$page", "$screen", "$group", "$alias"]);
        assert_eq!(e[1]["properties"], json!({"email": "e"}), "identify traits are the properties");
        assert_eq!(e[2]["context"]["segment"], json!({"type":"page","userId":"u1","name":"Home","category":"Docs"}));
        assert_eq!(e[3]["distinct_id"], "a1", "anonymousId when there is no userId");
        assert_eq!(e[4]["properties"], json!({"n": 1}));
        assert_eq!(e[4]["context"]["segment"], json!({"type":"group","userId":"u1","groupId":"g1"}), "nulls dropped");
        assert_eq!(e[5]["context"]["segment"]["previousId"], "u1");
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["sent_at"], "2027-01-15T08:00:01.000Z");
    }

    #[test]
    fn single_calls_take_their_type_from_the_endpoint() {
        let body = br#"{"writeKey":"wk2","type":"track","userId":"u","traits":{"a":1},"messageId":"x"}"#;
        let t = translate(body, Call::Single("identify")).unwrap();
        assert_eq!(t.key.as_deref(), Some("wk2"));
        let e = &events(&t)[0];
        assert_eq!((e["event"].as_str(), &e["properties"]), (Some("$identify"), &json!({"a": 1})));
        assert_eq!(e["context"]["segment"]["type"], "identify");
        let anon = translate(br#"{"anonymousId":42,"event":"E"}"#, Call::Single("track")).unwrap();
        assert_eq!(events(&anon)[0]["distinct_id"], "42");
        assert_eq!(anon.retry_key, None);
    }

    #[test]
    fn paths_and_basic_auth() {
        assert_eq!(PATHS.map(call_for_path).iter().filter(|c| c.is_some()).count(), PATHS.len());
        assert_eq!(call_for_path("/v1/page"), Some(Call::Single("page")));
        assert_eq!(call_for_path("/v1/batch"), Some(Call::Batch));
        assert_eq!(call_for_path("/v1/events"), None);
        assert_eq!(basic_auth_user("Basic d2s6").as_deref(), Some("wk"), "what both SDKs send for `wk`");
        assert_eq!(basic_auth_user("basic d2s6cHc=").as_deref(), Some("wk"), "a password is ignored");
        assert_eq!(basic_auth_user("Basic Og=="), None, "empty user");
        assert_eq!(basic_auth_user("Bearer d2s6"), None);
        assert_eq!(basic_auth_user("Basic %%%"), None);
    }

    #[test]
    fn enforces_segment_limits() {
        let call = format!(r#"{{"event":"e","userId":"u","properties":{{"p":"{}"}}}}"#, "x".repeat(MAX_CALL_BYTES));
        assert!(matches!(translate(call.as_bytes(), Call::Single("track")), Err(CompatError::TooLarge { .. })));
        let batch = format!(r#"{{"batch":[{{"p":"{}"}}]}}"#, "x".repeat(MAX_BATCH_BYTES));
        assert!(matches!(translate(batch.as_bytes(), Call::Batch), Err(CompatError::TooLarge { .. })));
    }

    #[test]
    fn malformed_bodies_and_invalid_messages() {
        assert!(matches!(translate(b"[1]", Call::Batch), Err(CompatError::Malformed(_))));
        assert!(matches!(translate(b"{\"batch\":1}", Call::Batch), Err(CompatError::Malformed(_))));
        let t = translate(
            br#"{"batch":[{"userId":"u"},3,{"type":"track","userId":"u","event":"e","context":[1]}]}"#,
            Call::Batch,
        )
        .unwrap();
        let e = events(&t);
        assert_eq!(e[0].get("event"), None, "no type: no name, validation rejects it");
        assert_eq!(e[1], json!(3));
        assert_eq!(e[2]["context"], json!([1]));
    }
}
