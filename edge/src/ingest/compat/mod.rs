//! Drop-in endpoints for unmodified PostHog and Segment SDKs. Each submodule is a pure
//! translation from what that SDK sends to the body `POST /v1/events` takes
//! (`{"sent_at":…,"batch":[…]}` of `/v1/events` events); the HTTP layer feeds the result to the
//! same pipeline (auth, admission, PII policy, dead letters, WAL, replication), so a compatible
//! endpoint's `200` carries the same guarantee as a `202`.
//!
//! Translation never judges an event: a message without a name or an identity is translated
//! without one, and validation rejects it (and dead-letters it) exactly as on `/v1/events`.

pub mod posthog;
pub mod segment;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::ingest::body::BodyError;

/// The API a request came through; the normalized event records it as `api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    PostHog,
    Segment,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::PostHog => "posthog",
            Api::Segment => "segment",
        }
    }
}

/// A compatible request, translated.
#[derive(Debug)]
pub struct Translated {
    /// The key the body carried (PostHog `api_key`/`token`, Segment `writeKey`).
    pub key: Option<String>,
    /// The native body: `{"batch":[…][,"sent_at":…]}`.
    pub body: Vec<u8>,
    /// Names the request's events by their client IDs, when every event has one. SDKs resend a
    /// batch they got no answer for with the same message IDs; mapping those to the same batch
    /// ID lets core drop the resend as a duplicate, as it does for a keyed `/v1/events` retry.
    pub retry_key: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompatError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("{what} is {size} bytes, limit {limit}")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error("unsupported compression `{0}` (use gzip-js, base64, lz64 or none)")]
    UnsupportedCompression(String),
}

fn parse(body: &[u8]) -> Result<Value, CompatError> {
    serde_json::from_slice(body).map_err(|e| CompatError::Malformed(e.to_string()))
}

/// A string member, if it is a non-empty string.
fn str_member<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An identity as the SDKs send it: a string, or a number (both APIs accept numeric IDs and
/// store them as strings). `null` and empty strings are no identity.
fn identity(value: Option<&Value>) -> Option<Value> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(Value::String(s.clone())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        _ => None,
    }
}

/// Builds the native body from translated events.
fn finish(key: Option<String>, sent_at: Option<Value>, events: Vec<Value>) -> Translated {
    let ids: Option<Vec<&str>> = events.iter().map(|e| e.get("event_id").and_then(Value::as_str)).collect();
    let retry_key = ids.filter(|ids| !ids.is_empty()).map(|ids| {
        let mut hash = Sha256::new();
        for id in ids {
            hash.update(id.as_bytes());
            hash.update([0]);
        }
        hex::encode(hash.finalize())
    });
    let mut envelope = Map::new();
    if let Some(sent_at) = sent_at.filter(|v| !v.is_null()) {
        envelope.insert("sent_at".into(), sent_at);
    }
    envelope.insert("batch".into(), Value::Array(events));
    // Serializing a `Value` cannot fail.
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    Translated { key, body, retry_key }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_key_needs_every_event_id_and_follows_them() {
        let a = finish(None, None, vec![json!({"event_id":"1"}), json!({"event_id":"2"})]);
        let b = finish(None, Some(json!("later")), vec![json!({"event_id":"1"}), json!({"event_id":"2"})]);
        assert!(a.retry_key.is_some());
        assert_eq!(a.retry_key, b.retry_key, "a resend with a new sent_at is the same batch");
        let c = finish(None, None, vec![json!({"event_id":"1"}), json!({"event_id":"3"})]);
        assert_ne!(a.retry_key, c.retry_key);
        assert_eq!(finish(None, None, vec![json!({"event_id":"1"}), json!({})]).retry_key, None);
        assert_eq!(finish(None, None, vec![]).retry_key, None);
    }

    #[test]
    fn identities_are_strings_or_numbers() {
        assert_eq!(identity(Some(&json!("u"))), Some(json!("u")));
        assert_eq!(identity(Some(&json!(42))), Some(json!("42")));
        for none in [json!(null), json!(""), json!({}), json!(true)] {
            assert_eq!(identity(Some(&none)), None, "{none}");
        }
    }
}
