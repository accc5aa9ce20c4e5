//! The request pipeline between the HTTP layer and the WAL, without IO: parse the body, validate
//! and normalize every event, apply the PII policy, and build the WAL records. Shared by
//! `POST /v1/events` and the `:debug` echo, so what debug reports is exactly what ingest does.
//!
//! Its submodules are the other things a request passes before its record is appended, in the
//! order `http::steps` runs them: `auth`, `admission`, `idempotency`, `signature`,
//! `body`, then `batch` (parse), `validate`, `pii` and `compat` (what unmodified SDKs send).

pub mod admission;
pub mod auth;
pub mod batch;
pub mod body;
pub mod compat;
pub mod idempotency;
pub mod pii;
pub mod signature;
pub mod validate;

use sluice_wire::record::{RecordError, encode_record, encode_record_compressed};
use sluice_wire::{BatchRecord, EventRecord, Stream};
use uuid::Uuid;

use crate::config::{LimitsConfig, PiiPolicy, ValidationConfig};
use crate::ingest::auth::Principal;
use crate::ingest::body::{BodyError, BodyFormat};
use crate::ingest::compat::Api;
use crate::ingest::pii::PiiViolation;
use crate::ingest::validate::{BatchContext, Invalid, Reject};

pub struct Request<'a> {
    pub principal: &'a Principal,
    pub region: &'a str,
    pub batch_id: Uuid,
    pub received_at_ms: u64,
    /// The decompressed body.
    pub body: &'a [u8],
    pub format: BodyFormat,
    pub limits: &'a LimitsConfig,
    pub rules: &'a ValidationConfig,
    pub pii: &'a PiiPolicy,
    /// The compatible API the request came through (`None` for `/v1/events`), recorded in every
    /// event as `api`.
    pub api: Option<Api>,
}

#[derive(Debug)]
pub struct Prepared {
    pub batch_id: Uuid,
    pub received_at_ms: u64,
    pub accepted: Vec<EventRecord>,
    /// The members every accepted event shares ([`BatchRecord::shared`]).
    pub shared: Vec<u8>,
    pub rejected: Vec<Reject>,
    /// Dead-letter form of each rejected event.
    pub dead_letters: Vec<EventRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("event {} field `{}` violates the PII policy ({})", .0.index, .0.field, .0.rule)]
    Pii(PiiViolation),
    #[error("no event in the batch is valid")]
    NoValidEvents(Vec<Reject>),
    #[error("internal: {0}")]
    Internal(String),
}

pub fn prepare(req: &Request<'_>) -> Result<Prepared, PrepareError> {
    let parsed = batch::parse(req.body, req.format, req.limits.max_events)?;
    let sent_at_ms = match parsed.sent_at {
        None => None,
        Some(raw) => Some(
            validate::parse_timestamp(raw.get())
                .ok_or_else(|| BodyError::Malformed(format!("`sent_at` {} is not a timestamp", raw.get())))?,
        ),
    };
    let ctx = BatchContext {
        batch_id: req.batch_id,
        tenant: &req.principal.tenant,
        env: &req.principal.env,
        region: req.region,
        received_at_ms: req.received_at_ms,
        sent_at_ms,
        rules: req.rules,
        limits: req.limits,
        pii: req.pii,
    };
    let mut shared = ctx.shared_fields();
    if let Some(api) = req.api {
        shared.extend_from_slice(b",\"api\":\"");
        shared.extend_from_slice(api.name().as_bytes());
        shared.push(b'"');
    }
    let mut accepted = Vec::with_capacity(parsed.events.len());
    let mut rejected = Vec::new();
    let mut dead_letters = Vec::new();
    for (index, event) in parsed.events.iter().enumerate() {
        match validate::normalize_event(&ctx, index, event) {
            Ok(e) => accepted.push(e),
            Err(Invalid::Pii(v)) => return Err(PrepareError::Pii(v)),
            Err(Invalid::Reject(r)) => {
                dead_letters.push(
                    validate::dead_letter(&ctx, &r, event.raw).map_err(|e| PrepareError::Internal(e.to_string()))?,
                );
                rejected.push(r);
            }
        }
    }
    if accepted.is_empty() {
        return Err(PrepareError::NoValidEvents(rejected));
    }
    Ok(Prepared {
        batch_id: req.batch_id,
        received_at_ms: req.received_at_ms,
        accepted,
        shared,
        rejected,
        dead_letters,
    })
}

/// What a request appends to the WAL, and what its 202 reports.
#[derive(Debug)]
pub struct WalBatch {
    pub accepted: usize,
    pub rejected: Vec<Reject>,
    /// The events record, followed by the dead-letter record if any event was rejected.
    pub bytes: Vec<u8>,
}

impl Prepared {
    /// Encodes the WAL bytes for this request: the events record and, if any event was rejected,
    /// a dead-letter record, appended together so both are durable before the 202.
    /// `traceparent` is the request span's W3C trace context, carried to the Kafka headers.
    /// `lane` is the stream of the accepted events ([`crate::ingest::auth::KeyRing::lane`]); dead letters
    /// go to the dead-letter stream whatever the lane. Records are compressed at `zstd_level`
    /// (`0`: uncompressed).
    pub fn into_wal_bytes(
        self,
        principal: &Principal,
        region: &str,
        lane: Stream,
        traceparent: Option<String>,
        zstd_level: i32,
    ) -> Result<WalBatch, RecordError> {
        let encode = |record: &BatchRecord, out: &mut Vec<u8>| match zstd_level {
            0 => encode_record(record, out),
            level => encode_record_compressed(record, level, out),
        };
        let accepted = self.accepted.len();
        let rejected = self.rejected;
        let mut bytes = match zstd_level {
            0 => {
                let size: usize = self.accepted.iter().chain(&self.dead_letters).map(|e| e.json.len() + 64).sum();
                Vec::with_capacity(size + self.shared.len() + 256)
            }
            // A few times smaller than the events; the encoder reserves what it writes.
            _ => Vec::new(),
        };
        let mut record = BatchRecord {
            batch_id: self.batch_id,
            tenant: principal.tenant.clone(),
            env: principal.env.clone(),
            region: region.to_string(),
            received_at_ms: self.received_at_ms,
            stream: lane,
            events: self.accepted,
            traceparent,
            shared: self.shared,
        };
        encode(&record, &mut bytes)?;
        if !self.dead_letters.is_empty() {
            // A distinct batch ID: core dedupes per batch, and the two records must not shadow
            // each other. Derived, so a retried keyed batch maps to the same dead-letter batch.
            record.batch_id = Uuid::new_v5(&self.batch_id, b"dead-letter");
            record.stream = Stream::DeadLetter;
            record.events = self.dead_letters;
            // Dead letters hold every member themselves (their text may not even be JSON).
            record.shared = Vec::new();
            encode(&record, &mut bytes)?;
        }
        Ok(WalBatch { accepted, rejected, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_wire::record::records;

    #[test]
    fn ndjson_with_a_bad_line_accepts_the_rest_and_dead_letters_it() {
        let principal =
            Principal { key_id: "k".into(), tenant: "acme".into(), env: "prod".into(), signing_secret: None };
        let limits = LimitsConfig::default();
        let rules = ValidationConfig::default();
        let pii = PiiPolicy::default();
        let body = b"{\"event\":\"a\",\"distinct_id\":\"u\"}\n{oops\n{\"event\":\"c\",\"distinct_id\":\"u\"}\n";
        let req = Request {
            principal: &principal,
            region: "eu",
            batch_id: Uuid::from_u128(7),
            received_at_ms: 1_800_000_000_000,
            body,
            format: BodyFormat::Ndjson,
            limits: &limits,
            rules: &rules,
            pii: &pii,
            api: None,
        };
        let p = prepare(&req).unwrap();
        assert_eq!(p.accepted.len(), 2);
        assert_eq!(p.rejected.iter().map(|r| (r.index, r.code)).collect::<Vec<_>>(), vec![(1, "malformed_json")]);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let overflow = prepare(&req).unwrap().into_wal_bytes(&principal, "eu", Stream::Overflow, None, 0).unwrap();
        let lanes: Vec<_> = records(&overflow.bytes).map(|r| r.unwrap().stream).collect();
        assert_eq!(lanes, [Stream::Overflow, Stream::DeadLetter], "the lane takes the accepted events only");
        let batch = p.into_wal_bytes(&principal, "eu", Stream::Events, Some(tp.into()), 1).unwrap();
        assert_eq!((batch.accepted, batch.rejected.len()), (2, 1));
        let recs: Vec<_> = records(&batch.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 2);
        assert!(recs.iter().all(|r| r.traceparent.as_deref() == Some(tp)), "both records carry the trace");
        assert_eq!((recs[0].stream, recs[0].events.len()), (Stream::Events, 2));
        let produced: serde_json::Value = serde_json::from_slice(&recs[0].event_json(&recs[0].events[1])).unwrap();
        assert_eq!((produced["event"].as_str(), produced["tenant"].as_str()), (Some("c"), Some("acme")));
        assert_eq!(produced["received_at"], 1_800_000_000_000u64);
        assert!(
            !recs[0].events[1].json.windows(8).any(|w| w == b"\"tenant\""),
            "shared members are stored once per record"
        );
        assert_eq!((recs[1].stream, recs[1].events.len()), (Stream::DeadLetter, 1));
        assert_ne!(recs[0].batch_id, recs[1].batch_id);
        assert!(produced.get("api").is_none(), "native events name no compatible API");
    }

    #[test]
    fn an_envelope_is_read_in_one_pass_and_rejected_events_keep_their_exact_text() {
        let principal =
            Principal { key_id: "k".into(), tenant: "acme".into(), env: "prod".into(), signing_secret: None };
        let (limits, rules, pii) = (LimitsConfig::default(), ValidationConfig::default(), PiiPolicy::default());
        let bad = "{ \"event\" : 5 ,\n  \"distinct_id\":\"caf\\u00e9\", \"x\":[{}] }";
        let twice = r#"{"event":"a","distinct_id":"u","event":"b"}"#;
        let body = format!(
            r#"{{"api_key":"k","batch":[ {{"event":"a","distinct_id":"u"}} , {bad},{twice}, [1] ],"sentAt":"2027-01-15T08:00:00Z"}}"#
        );
        let req = Request {
            principal: &principal,
            region: "eu",
            batch_id: Uuid::from_u128(9),
            received_at_ms: 1_800_000_000_000,
            body: body.as_bytes(),
            format: BodyFormat::JsonArray,
            limits: &limits,
            rules: &rules,
            pii: &pii,
            api: None,
        };
        let p = prepare(&req).unwrap();
        assert_eq!(p.accepted.len(), 1);
        let produced: serde_json::Value =
            serde_json::from_slice(&sluice_wire::record::spliced(&p.accepted[0].json, &p.shared)).unwrap();
        assert_eq!(produced["sent_at"], 1_800_000_000_000i64, "the envelope's sentAt");
        let rejects: Vec<_> = p.rejected.iter().map(|r| (r.index, r.code, r.message.as_str())).collect();
        assert_eq!(
            rejects,
            [
                (1, "invalid_type", "`event` must be a string, got 5"),
                (2, "invalid_type", "duplicate field `event` at line 1 column 38"),
                (3, "invalid_type", "an event must be a JSON object, got an array"),
            ]
        );
        let raws: Vec<serde_json::Value> = p
            .dead_letters
            .iter()
            .map(|d| serde_json::from_slice::<serde_json::Value>(&d.json).unwrap()["raw"].clone())
            .collect();
        assert_eq!(raws, [bad, twice, "[1]"], "dead letters hold each event's text byte for byte");
    }

    #[test]
    fn events_record_the_compatible_api_they_came_through() {
        let principal =
            Principal { key_id: "k".into(), tenant: "acme".into(), env: "prod".into(), signing_secret: None };
        let (limits, rules, pii) = (LimitsConfig::default(), ValidationConfig::default(), PiiPolicy::default());
        let req = Request {
            principal: &principal,
            region: "eu",
            batch_id: Uuid::from_u128(8),
            received_at_ms: 1_800_000_000_000,
            body: br#"[{"event":"a","distinct_id":"u"}]"#,
            format: BodyFormat::JsonArray,
            limits: &limits,
            rules: &rules,
            pii: &pii,
            api: Some(Api::Segment),
        };
        let p = prepare(&req).unwrap();
        let produced: serde_json::Value =
            serde_json::from_slice(&sluice_wire::record::spliced(&p.accepted[0].json, &p.shared)).unwrap();
        assert_eq!((produced["api"].as_str(), produced["tenant"].as_str()), (Some("segment"), Some("acme")));
    }
}
