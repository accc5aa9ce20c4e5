//! The steps of a request that stores events, in the order `POST /v1/events` runs them (see
//! [`super::ingest`]): authenticate, admit, reserve the idempotency key, read the body, verify its
//! signature, decode it, identify the batch, prepare, commit, complete. Each is a function with
//! its own error, which converts into the [`ApiError`] the client sees; the SDK routes and the
//! debug echo run the steps they need.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_wire::seen_signature::SeenSignature;
use sluice_wire::stored_response::StoredResponse;

use super::{AppState, IDEMPOTENCY_KEY, api_key, json_response};
use crate::api_error::{ApiError, insert_rate_headers};
use crate::clock::now_ms;
use crate::config::LimitsConfig;
use crate::ingest::admission::quota::RateInfo;
use crate::ingest::admission::{self, Admitted, Refusal};
use crate::ingest::auth::{AuthError, Principal};
use crate::ingest::body::{self, BodyError, BodyFormat};
use crate::ingest::idempotency::{self, Lookup, StoreError};
use crate::ingest::signature::{self, SignatureError, Verified};
use crate::ingest::{self, PrepareError, Prepared};
use crate::wal::WalError;

/// The authenticated caller and the body's media type, known before the body is read.
pub(super) struct Caller {
    pub(super) principal: Principal,
    pub(super) format: BodyFormat,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CallerError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("Content-Type `{0}` is not supported; use application/json, text/plain or application/x-ndjson")]
    MediaType(String),
}

impl From<CallerError> for ApiError {
    fn from(e: CallerError) -> Self {
        match e {
            CallerError::Auth(a) => a.into(),
            CallerError::MediaType(_) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.to_string())
            }
        }
    }
}

pub(super) fn authenticate(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Caller, CallerError> {
    let principal = state.keys.authenticate(api_key(headers, uri, state.http.allow_query_key)?)?;
    Ok(Caller { principal, format: body_format(headers)? })
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, CallerError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Ok(BodyFormat::JsonArray) };
    let ct = ct.to_str().unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        // text/plain is what `navigator.sendBeacon` sends without a CORS preflight.
        "application/json" | "text/plain" => Ok(BodyFormat::JsonArray),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(CallerError::MediaType(ct.to_string())),
    }
}

/// The request's declared body size, for the in-flight bound.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Admits `tenant`'s request: in flight (the guard bounds the requests and bytes in memory until
/// it is dropped), and within the tenant's quota and share of the WAL (`None` when unlimited).
pub(super) fn admit(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    request_id: &str,
) -> Result<(admission::InFlight, Option<Admitted>), Refusal> {
    let admission = &state.admission;
    let in_flight = admission.enter(content_length(headers))?;
    let admitted = admission.admit(&state.keys.snapshot(), tenant, state.wal.live_bytes()).inspect_err(|r| {
        tracing::debug!(tenant_id = %tenant, request_id, reason = r.reason.code(), "ingest: refused by admission");
    })?;
    Ok((in_flight, admitted))
}

/// Why an `X-Idempotency-Key` request cannot go on.
#[derive(Debug)]
pub(super) enum IdempotencyError {
    InvalidKey,
    InFlight,
    Storage(StoreError),
    BodyMismatch,
}

impl From<IdempotencyError> for ApiError {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::InvalidKey => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("X-Idempotency-Key must be 1-{} visible ASCII characters", idempotency::MAX_KEY_LEN),
            ),
            IdempotencyError::InFlight => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this X-Idempotency-Key is still being processed; retry shortly",
            ),
            IdempotencyError::Storage(e) => store_unavailable(e),
            IdempotencyError::BodyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this X-Idempotency-Key was used with a different body",
            ),
        }
    }
}

/// An `X-Idempotency-Key` held by this request until it completes.
pub(super) struct Reservation<'h> {
    key: &'h str,
    guard: idempotency::InFlight,
}

/// Reserves the request's `X-Idempotency-Key`, if it has one, so no concurrent request with the
/// same key runs.
pub(super) fn reserve<'h>(
    state: &AppState,
    principal: &Principal,
    headers: &'h HeaderMap,
) -> Result<Option<Reservation<'h>>, IdempotencyError> {
    let Some(key) = headers.get(IDEMPOTENCY_KEY).map(|v| v.to_str().unwrap_or("")) else { return Ok(None) };
    if key.is_empty() || key.len() > idempotency::MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IdempotencyError::InvalidKey);
    }
    let scope = idempotency::scope(&principal.tenant, &principal.env, key);
    let guard = state.idempotency.reserve(&scope).ok_or(IdempotencyError::InFlight)?;
    Ok(Some(Reservation { key, guard }))
}

/// The limits a refused body's answer names.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    max_bytes: usize,
    max_events: usize,
}

/// A body or batch refused with `error`, answered with the limits it broke.
#[derive(Debug)]
pub(super) struct Rejected<E> {
    error: E,
    limits: BodyLimits,
}

impl<E> Rejected<E> {
    pub(super) fn new(error: E, limits: &LimitsConfig) -> Self {
        Self { error, limits: BodyLimits { max_bytes: limits.max_body_bytes, max_events: limits.max_events } }
    }
}

impl From<Rejected<BodyError>> for ApiError {
    fn from(Rejected { error: e, limits }: Rejected<BodyError>) -> Self {
        match e {
            BodyError::TooLarge { .. } | BodyError::TooManyEvents { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{e}; split the batch"))
                    .with_details(json!({ "max_bytes": limits.max_bytes, "max_events": limits.max_events }))
            }
            BodyError::UnsupportedEncoding(_) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", e.to_string())
            }
            BodyError::BadGzip(_) | BodyError::Malformed(_) | BodyError::Empty => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string())
            }
        }
    }
}

impl From<Rejected<PrepareError>> for ApiError {
    fn from(Rejected { error, limits }: Rejected<PrepareError>) -> Self {
        match error {
            PrepareError::Body(error) => Rejected { error, limits }.into(),
            PrepareError::Pii(v) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "pii_detected", format!(
                "event {} field `{}` is not allowed by the tenant's PII policy ({}); nothing from this request was stored",
                v.index, v.field, v.rule
            ))
            .with_details(json!({ "index": v.index, "field": v.field, "rule": v.rule })),
            PrepareError::NoValidEvents(rejected) => {
                ApiError::new(StatusCode::BAD_REQUEST, "no_valid_events", "no event in the batch is valid")
                    .with_details(json!({ "rejected": rejected }))
            }
            PrepareError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
    }
}

#[derive(Debug)]
pub(super) enum ReadError {
    TooLarge(Rejected<BodyError>),
    TooSlow,
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooLarge(r) => r.into(),
            ReadError::TooSlow => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body arrived too slowly")
            }
        }
    }
}

/// Reads the raw body, bounded in size and time.
pub(super) async fn read_raw(state: &AppState, body: Body) -> Result<Bytes, ReadError> {
    let limits = &state.limits;
    let timeout = Duration::from_millis(state.http.body_timeout_ms);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limits.max_body_bytes)).await {
        Ok(Ok(raw)) => Ok(raw),
        Ok(Err(_)) => {
            Err(ReadError::TooLarge(Rejected::new(BodyError::TooLarge { limit: limits.max_body_bytes }, limits)))
        }
        Err(_) => Err(ReadError::TooSlow),
    }
}

#[derive(Debug)]
pub(super) enum SignatureRefusal {
    Invalid(SignatureError),
    /// The replay guard could not be read or written.
    Storage(StoreError),
}

impl From<SignatureRefusal> for ApiError {
    fn from(e: SignatureRefusal) -> Self {
        match e {
            SignatureRefusal::Invalid(s) => s.into(),
            SignatureRefusal::Storage(e) => store_unavailable(e),
        }
    }
}

/// The edge's own store (idempotency keys, seen signatures) failed: nothing was accepted, and the
/// same request may succeed a second later.
fn store_unavailable(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()).with_retry_after(1)
}

/// Checks the request signature if the key requires one: valid, and never accepted before by
/// this edge (durably, across restarts). The verified signature, if any.
pub(super) fn verify_signature(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Option<Verified>, SignatureRefusal> {
    let Some(secret) = &principal.signing_secret else { return Ok(None) };
    let now = (now_ms() / 1000) as i64;
    let skew = state.http.signature_skew_secs;
    let sig = headers.get("x-signature").and_then(|v| v.to_str().ok());
    let verified = signature::verify(secret, sig, raw, now, skew).map_err(SignatureRefusal::Invalid)?;
    let seen = SeenSignature { signed_at: verified.timestamp, expires_ms: verified.expires_ms(skew) };
    let fresh = tokio::task::block_in_place(|| state.idempotency.admit_signature(&verified.mac, &seen))
        .map_err(SignatureRefusal::Storage)?;
    if !fresh {
        return Err(SignatureRefusal::Invalid(SignatureError::Replayed));
    }
    Ok(Some(verified))
}

/// The body after `Content-Encoding`, bounded by the body limit.
pub(super) fn decode<'a>(
    state: &AppState,
    headers: &HeaderMap,
    raw: &'a [u8],
) -> Result<Cow<'a, [u8]>, Rejected<BodyError>> {
    let limits = &state.limits;
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid"));
    body::decode(raw, encoding, limits.max_body_bytes).map_err(|e| Rejected::new(e, limits))
}

/// A keyed request's answer to store once its events are: the reservation, and the hash of the
/// body it answers.
pub(super) struct Pending {
    guard: idempotency::InFlight,
    request_hash: [u8; 32],
}

/// Who the batch is: new (with its ID, and the answer to store if it is keyed), or a replay of
/// a keyed request already answered.
pub(super) enum Identity {
    Fresh { batch_id: uuid::Uuid, pending: Option<Pending> },
    Replay(StoredResponse),
}

/// The batch ID: derived from the idempotency key or the signature, so a replay of this request
/// (to this edge or another) gets the same ID and core drops it; random otherwise.
pub(super) fn identify(
    state: &AppState,
    principal: &Principal,
    signed: Option<&Verified>,
    reservation: Option<Reservation<'_>>,
    decoded: &[u8],
) -> Result<Identity, IdempotencyError> {
    let Some(Reservation { key, guard }) = reservation else {
        let batch_id = match signed {
            Some(v) => sluice_wire::ids::signed_batch_id(&principal.tenant, &principal.env, &v.mac),
            None => sluice_wire::ids::new_batch_id(),
        };
        return Ok(Identity::Fresh { batch_id, pending: None });
    };
    // The decompressed body: an SDK that compresses its retry again (gzip stamps the time into
    // its header) sends other bytes for the same batch.
    let request_hash: [u8; 32] = Sha256::digest(decoded).into();
    let lookup = tokio::task::block_in_place(|| state.idempotency.lookup(guard, &request_hash, now_ms()))
        .map_err(IdempotencyError::Storage)?;
    match lookup {
        Lookup::Replay(stored) => Ok(Identity::Replay(stored)),
        Lookup::BodyMismatch => Err(IdempotencyError::BodyMismatch),
        Lookup::Fresh(guard) => Ok(Identity::Fresh {
            batch_id: sluice_wire::ids::keyed_batch_id(&principal.tenant, &principal.env, key),
            pending: Some(Pending { guard, request_hash }),
        }),
    }
}

/// Runs the ingest pipeline on a decompressed body; the callers map the outcome to HTTP.
pub(super) fn prepare(
    state: &AppState,
    principal: &Principal,
    decoded: &[u8],
    format: BodyFormat,
    batch_id: uuid::Uuid,
    api: Option<crate::ingest::compat::Api>,
) -> Result<Prepared, PrepareError> {
    let request = ingest::Request {
        principal,
        region: &state.region,
        batch_id,
        received_at_ms: now_ms(),
        body: decoded,
        format,
        limits: &state.limits,
        rules: &state.rules,
        pii: state.pii.policy_for(&principal.tenant),
        api,
    };
    ingest::prepare(&request)
}

/// What a stored request reports.
pub(super) struct Committed {
    accepted: usize,
    rejected: Vec<crate::ingest::validate::Reject>,
    /// The tenant's bucket after the charge, when its rate is limited.
    pub(super) rate: Option<RateInfo>,
}

#[derive(Debug)]
pub(super) enum CommitError {
    /// The tenant's rate, charged with the batch's events.
    Refused(Refusal),
    /// The batch does not fit in a WAL record.
    TooLarge(sluice_wire::record::RecordError),
    Wal(WalError),
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        let wal = match e {
            CommitError::Refused(r) => return r.into(),
            CommitError::TooLarge(e) => {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string());
            }
            CommitError::Wal(w) => w,
        };
        let err = match wal {
            WalError::Full { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "wal_full",
                "the edge is buffering its limit; retry later",
            ),
            WalError::Unreplicated(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica_unavailable",
                "the edge cannot reach the replicas a 202 needs; retry later",
            ),
            WalError::Failed(_) | WalError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the edge cannot persist events right now; retry later",
            ),
        };
        err.with_retry_after(1)
    }
}

/// The steps after the events are prepared, the same for every endpoint that stores them: charge
/// the tenant's rate, append to the WAL (fsync'd, and replicated where configured), account.
pub(super) async fn commit(
    state: &AppState,
    principal: &Principal,
    admitted: Option<&Admitted>,
    prepared: Prepared,
    trace: Option<String>,
    request_id: &str,
) -> Result<Committed, CommitError> {
    let admission = &state.admission;
    let tenant = &principal.tenant;
    let batch_id = prepared.batch_id;
    let rate = match admitted {
        Some(a) => {
            Some(admission.charge(a, prepared.accepted.len() + prepared.rejected.len()).map_err(CommitError::Refused)?)
        }
        None => None,
    };
    let lane = state.keys.lane(principal);
    let ingest::WalBatch { accepted, rejected, bytes } = prepared
        .into_wal_bytes(principal, &state.region, lane, trace, state.record_zstd_level)
        .map_err(CommitError::TooLarge)?;
    let enqueue = state.metrics.enqueue_latency.start_timer();
    let wal_bytes = bytes.len() as u64;
    if let Err(e) = state.wal.append(bytes).await {
        enqueue.stop_and_discard();
        tracing::warn!(tenant_id = %tenant, request_id, error = %e, "ingest: append refused");
        return Err(CommitError::Wal(e));
    }
    enqueue.observe_duration();
    admission.record(tenant, wal_bytes, accepted as u64);
    state.metrics.accepted_events.inc_by(accepted as u64);
    if lane == sluice_wire::Stream::Overflow {
        state.metrics.overflow_batches.with_label_values(&[tenant]).inc();
        state.metrics.overflow_events.with_label_values(&[tenant]).inc_by(accepted as u64);
    }
    tracing::debug!(tenant_id = %tenant, request_id, %batch_id, accepted, rejected = rejected.len(),
        lane = lane.as_str(), "ingest: accepted");
    Ok(Committed { accepted, rejected, rate })
}

/// The `202` of a stored batch, also stored as the answer to a keyed request's retries.
pub(super) fn complete(
    state: &AppState,
    tenant: &str,
    batch_id: uuid::Uuid,
    received_at_ms: u64,
    committed: Committed,
    pending: Option<Pending>,
    request_id: &str,
) -> Response {
    let Committed { accepted, rejected, rate } = committed;
    let mut body = json!({ "accepted": accepted, "batch_id": batch_id });
    if !rejected.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("rejected".into(), json!(rejected));
    }
    let body_bytes = serde_json::to_vec(&body).unwrap_or_default();
    if let Some(Pending { guard, request_hash }) = pending {
        let stored = StoredResponse { status: 202, created_ms: received_at_ms, request_hash, body: body_bytes.clone() };
        // Failing here leaves the events durable; a retry re-appends the same batch ID, which
        // core drops as a duplicate.
        if let Err(e) = tokio::task::block_in_place(|| state.idempotency.complete(guard, &stored)) {
            tracing::warn!(tenant_id = %tenant, request_id, error = %e, "ingest: storing idempotent response failed");
        }
    }
    let mut resp = json_response(StatusCode::ACCEPTED, body_bytes);
    if let Some(rate) = rate {
        insert_rate_headers(resp.headers_mut(), &rate);
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;

    use super::*;

    /// The status, `Retry-After` and JSON body the client sees for `e`.
    async fn answer(e: impl Into<ApiError>) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = e.into().into_response();
        let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap_or("").to_string());
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap_or_default();
        (status, retry, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// A client told its batch is too large learns both limits, whichever it broke, to split it.
    #[tokio::test]
    async fn a_refused_body_names_both_limits() {
        let limits = LimitsConfig::default();
        let (status, _, body) = answer(Rejected::new(BodyError::TooManyEvents { limit: 500 }, &limits)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "payload_too_large");
        assert_eq!(body["error"]["details"]["max_bytes"], limits.max_body_bytes);
        assert_eq!(body["error"]["details"]["max_events"], limits.max_events);
        // Through prepare too: the same answer.
        let (_, _, again) =
            answer(Rejected::new(PrepareError::Body(BodyError::TooManyEvents { limit: 500 }), &limits)).await;
        assert_eq!(again, body);
    }

    /// Every refused append is a `503` the SDK retries after a second, with a code that says why.
    #[tokio::test]
    async fn a_refused_append_is_retried_after_a_second() {
        for (e, code) in [
            (WalError::Full { used: 2, budget: 1 }, "wal_full"),
            (WalError::Unreplicated("peer down".into()), "replica_unavailable"),
            (WalError::Failed("EIO".into()), "storage_unavailable"),
            (WalError::Closed, "storage_unavailable"),
        ] {
            let (status, retry, body) = answer(CommitError::Wal(e)).await;
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")), "{code}");
            assert_eq!(body["error"]["code"], code);
        }
    }

    /// A failed store read, for the idempotency key or the signature guard, is retried like a
    /// refused append.
    #[tokio::test]
    async fn a_failed_store_is_retried_after_a_second() {
        let failed = || StoreError("redb: I/O error".into());
        for refusal in
            [ApiError::from(IdempotencyError::Storage(failed())), ApiError::from(SignatureRefusal::Storage(failed()))]
        {
            let (status, retry, body) = answer(refusal).await;
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
            assert_eq!(body["error"]["code"], "storage_unavailable");
        }
    }

    #[tokio::test]
    async fn an_unsupported_media_type_is_named() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
        let Err(e) = body_format(&headers) else { panic!("xml is not a batch") };
        let (status, _, body) = answer(e).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert_eq!(
            body["error"]["message"],
            "Content-Type `application/xml; charset=utf-8` is not supported; use application/json, text/plain or \
             application/x-ndjson"
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("Application/X-NDJSON"));
        assert!(matches!(body_format(&headers), Ok(BodyFormat::Ndjson)));
    }
}
