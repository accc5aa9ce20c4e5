//! The HTTP API: `POST /v1/events`, `POST /v1/events:debug`, `HEAD /health`, `GET /ready`, and
//! the PostHog and Segment routes of [`sdk`].
//! Every error is a JSON body `{"error":{"code":"…","message":"…"}}`; every response carries
//! `X-Request-Id`; a valid W3C `traceparent` is continued (same trace ID, new span ID).

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Extension, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_wire::seen_signature::SeenSignature;
use sluice_wire::stored_response::StoredResponse;
use tower_http::cors::{Any, CorsLayer};
use tracing::Instrument;

use crate::admission::quota::{self, RateInfo};
use crate::admission::{Admission, Admitted};
use crate::api_error::{
    ApiError, ErrorCode, RATELIMIT_LIMIT, RATELIMIT_POLICY, RATELIMIT_REMAINING, RATELIMIT_RESET, insert_rate_headers,
};
use crate::auth::{AuthError, KeyRing, Principal};
use crate::body::{self, BodyError, BodyFormat};
use crate::clock::now_ms;
use crate::config::{HttpConfig, LimitsConfig, PiiConfig, ValidationConfig};
use crate::idempotency::{self, IdempotencyStore, Lookup};
use crate::ingest::{self, PrepareError, Prepared};
use crate::link_health::LinkHealth;
use crate::metrics::EdgeMetrics;
use crate::server::PeerAddr;
use crate::signature::{self, SignatureError, Verified};
use crate::wal::{Wal, WalError};

mod sdk;

pub struct AppState {
    pub keys: Arc<KeyRing>,
    pub wal: Wal,
    pub region: String,
    /// `wal.zstd_level`: how each request's record is compressed (0: not at all).
    pub record_zstd_level: i32,
    pub limits: LimitsConfig,
    pub rules: ValidationConfig,
    pub pii: PiiConfig,
    pub http: HttpConfig,
    /// Also remembers the accepted request signatures (replay guard).
    pub idempotency: Arc<IdempotencyStore>,
    pub debug_limiter: DefaultKeyedRateLimiter<String>,
    pub metrics: Arc<EdgeMetrics>,
    pub admission: Arc<Admission>,
    /// The forwarder's link to core (`None` when forwarding is off), for readiness.
    pub link: Option<Arc<LinkHealth>>,
    pub drain: Arc<crate::drain::Drain>,
}

impl AppState {
    pub fn debug_quota(per_sec: u32) -> Quota {
        // Never unlimited: at least 1/s.
        quota::quota(per_sec.max(1)).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
    }

    pub fn new_debug_limiter(per_sec: u32) -> DefaultKeyedRateLimiter<String> {
        RateLimiter::keyed(Self::debug_quota(per_sec))
    }
}

pub const IDEMPOTENCY_KEY: &str = "x-idempotency-key";
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
const REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";

pub fn router(state: Arc<AppState>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static(IDEMPOTENCY_KEY),
            HeaderName::from_static("x-signature"),
            HeaderName::from_static(REQUEST_ID),
            HeaderName::from_static(TRACEPARENT),
        ])
        .expose_headers([
            HeaderName::from_static(REQUEST_ID),
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            header::RETRY_AFTER,
            HeaderName::from_static(RATELIMIT_LIMIT),
            HeaderName::from_static(RATELIMIT_REMAINING),
            HeaderName::from_static(RATELIMIT_RESET),
            HeaderName::from_static(RATELIMIT_POLICY),
        ])
        .max_age(Duration::from_secs(86_400));
    let routes = Router::new()
        .route("/v1/events", post(ingest))
        .route("/v1/events:debug", post(debug))
        .route("/health", head(health).get(health))
        .route("/ready", get(ready))
        .merge(sdk::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.drain.clone(), crate::drain::gate))
        .with_state(state.clone());
    // CORS answers preflights in front of the routes: a layer on the routes themselves runs
    // inside each route's method router, which adds its own `Allow` (the route's methods) to the
    // preflight beside `Access-Control-Allow-Methods`.
    Router::new()
        .fallback_service(routes)
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// The client's address: the TCP peer, or the address a trusted proxy forwarded (see
/// [`crate::client_ip`]). Absent when the router runs without a connection (tests).
#[derive(Clone, Copy)]
struct ClientIp(std::net::IpAddr);

/// Identifies one request in logs and responses.
#[derive(Clone)]
struct RequestId(HeaderValue);

/// The `traceparent` of this request's span at the edge (the client's trace, the edge's span ID),
/// present only when the client sent a valid one.
#[derive(Clone)]
struct TraceParent(String);

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut parts = v.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

async fn request_context(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).unwrap_or(HeaderValue::from_static("invalid"))
        });
    let trace = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse_traceparent).map(
        |(trace, flags)| {
            let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
            (trace.to_string(), format!("00-{trace}-{span_id}-{flags}"))
        },
    );
    let client = req.extensions().get::<PeerAddr>().map(|&PeerAddr(peer)| {
        let http = &state.http;
        crate::client_ip::client_ip(peer.ip(), &http.trusted_proxies, http.client_ip_header, req.headers())
    });
    req.extensions_mut().insert(RequestId(id.clone()));
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientIp(ip));
    }
    if let Some((_, tp)) = &trace {
        req.extensions_mut().insert(TraceParent(tp.clone()));
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or(""),
        trace_id = trace.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""),
        method = %req.method(),
        path = %req.uri().path(),
        client_ip = client.map(tracing::field::display),
        // Filled in once known, so every log line of the request carries them.
        tenant_id = tracing::field::Empty,
        batch_id = tracing::field::Empty,
    );
    let timer = state.metrics.request_duration.start_timer();
    let mut resp = next.run(req).instrument(span).await;
    timer.observe_duration();
    let code = resp.extensions().get::<ErrorCode>().map_or("ok", |c| c.0);
    state.metrics.responses.with_label_values(&[resp.status().as_str(), code]).inc();
    resp.headers_mut().insert(REQUEST_ID, id);
    if let Some(v) = trace.and_then(|(_, tp)| HeaderValue::from_str(&tp).ok()) {
        resp.headers_mut().insert(TRACEPARENT, v);
    }
    resp
}

async fn health() -> StatusCode {
    StatusCode::OK
}

/// Readiness with the degraded states an operator (or a load balancer) should know about. `503`
/// only when the WAL is latched failed (nothing can be accepted until a restart); a full WAL or an
/// open circuit to core still answer every client with `503`/`429` + `Retry-After`, which is
/// better for SDKs than a connection refused by a balancer.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let used = state.wal.live_bytes();
    let mut degraded = Vec::new();
    if state.wal.is_failed() {
        degraded.push("wal_failed");
    }
    if used >= state.wal.budget() {
        degraded.push("wal_full");
    } else if state.admission.wal_under_pressure(used) {
        degraded.push("wal_high_water");
    }
    if let Some(link) = &state.link
        && link.state() != sluice_wire::breaker::BreakerState::Closed
    {
        degraded.push("core_unreachable");
    }
    let status = if state.wal.is_failed() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({ "status": if degraded.is_empty() { "ready" } else { "degraded" }, "degraded": degraded });
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn body_error(e: BodyError, limits: &LimitsConfig) -> ApiError {
    match e {
        BodyError::TooLarge { .. } | BodyError::TooManyEvents { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{e}; split the batch"))
                .with_details(json!({ "max_bytes": limits.max_body_bytes, "max_events": limits.max_events }))
        }
        BodyError::UnsupportedEncoding(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", e.to_string())
        }
        BodyError::BadGzip(_) | BodyError::Malformed(_) | BodyError::Empty => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string())
        }
    }
}

fn prepare_error(e: PrepareError, limits: &LimitsConfig) -> ApiError {
    match e {
        PrepareError::Body(b) => body_error(b, limits),
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

fn wal_error(e: WalError) -> ApiError {
    let err = match e {
        WalError::Full { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "wal_full", "the edge is buffering its limit; retry later")
        }
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

/// The API key from `Authorization: Bearer`, `X-Api-Key`, or (for `sendBeacon`) `?api_key=`.
/// An `Authorization` header of another scheme (a proxy's `Basic`, say) does not hide a key sent
/// the other ways; with none, the answer names the scheme instead of calling the key missing.
fn api_key<'a>(headers: &'a HeaderMap, uri: &'a Uri, allow_query: bool) -> Result<Option<&'a str>, AuthError> {
    let mut other_scheme = None;
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("").trim();
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(Some(token.trim()).filter(|t| !t.is_empty()));
        }
        other_scheme = Some(scheme);
    }
    let elsewhere = match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(v) => Some(v.trim()),
        None if allow_query => uri.query().and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("api_key="))),
        None => None,
    };
    match (elsewhere, other_scheme) {
        (None, Some(scheme)) => {
            // Echoed in the message: printable and short whatever the client sent.
            let scheme: String = scheme.chars().filter(char::is_ascii_graphic).take(32).collect();
            Err(AuthError::UnsupportedScheme(scheme))
        }
        (key, _) => Ok(key),
    }
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Ok(BodyFormat::JsonArray) };
    let ct = ct.to_str().unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        // text/plain is what `navigator.sendBeacon` sends without a CORS preflight.
        "application/json" | "text/plain" => Ok(BodyFormat::JsonArray),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type `{ct}` is not supported; use application/json, text/plain or application/x-ndjson"),
        )),
    }
}

/// The authenticated caller and the body's media type, known before the body is read.
struct Caller {
    principal: Principal,
    format: BodyFormat,
}

fn authenticate(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Caller, ApiError> {
    let principal = state.keys.authenticate(api_key(headers, uri, state.http.allow_query_key)?)?;
    Ok(Caller { principal, format: body_format(headers)? })
}

/// Reads the raw body (bounded in size and time) and checks the request signature if the key
/// requires one: valid, and never accepted before by this edge (durably, across restarts).
async fn read_body(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Option<Verified>), ApiError> {
    let raw = read_raw(state, body).await?;
    let verified = verify_signature(state, &caller.principal, headers, &raw)?;
    Ok((raw, verified))
}

/// Reads the raw body, bounded in size and time.
async fn read_raw(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limits = &state.limits;
    let timeout = Duration::from_millis(state.http.body_timeout_ms);
    let raw = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limits.max_body_bytes)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(_)) => return Err(body_error(BodyError::TooLarge { limit: limits.max_body_bytes }, limits)),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body arrived too slowly",
            ));
        }
    };
    Ok(raw)
}

/// Checks the request signature if the key requires one; the verified signature, if any.
fn verify_signature(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Option<Verified>, ApiError> {
    if let Some(secret) = &principal.signing_secret {
        let now = (now_ms() / 1000) as i64;
        let skew = state.http.signature_skew_secs;
        let sig = headers.get("x-signature").and_then(|v| v.to_str().ok());
        let verified = signature::verify(secret, sig, raw, now, skew)?;
        let seen = SeenSignature { signed_at: verified.timestamp, expires_ms: verified.expires_ms(skew) };
        let fresh = tokio::task::block_in_place(|| state.idempotency.admit_signature(&verified.mac, &seen))
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
        if !fresh {
            return Err(SignatureError::Replayed.into());
        }
        return Ok(Some(verified));
    }
    Ok(None)
}

/// The body after `Content-Encoding`, bounded by the body limit.
fn decode<'a>(state: &AppState, headers: &HeaderMap, raw: &'a [u8]) -> Result<Cow<'a, [u8]>, ApiError> {
    let limits = &state.limits;
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid"));
    body::decode(raw, encoding, limits.max_body_bytes).map_err(|e| body_error(e, limits))
}

/// Runs the ingest pipeline on a decoded `/v1/events` body.
fn prepare(state: &AppState, caller: &Caller, decoded: &[u8], batch_id: uuid::Uuid) -> Result<Prepared, PrepareError> {
    prepare_decoded(state, &caller.principal, decoded, caller.format, batch_id, None)
}

/// Runs the ingest pipeline on a decompressed body; the callers map the outcome to HTTP.
fn prepare_decoded(
    state: &AppState,
    principal: &Principal,
    decoded: &[u8],
    format: BodyFormat,
    batch_id: uuid::Uuid,
    api: Option<crate::compat::Api>,
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

async fn ingest(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    client: Option<Extension<ClientIp>>,
    trace: Option<Extension<TraceParent>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let request_id = request_id.to_str().unwrap_or("");
    let admission = &state.admission;
    admission.check_ip(client.map(|Extension(ClientIp(ip))| ip))?;
    let caller = authenticate(&state, &headers, &uri)?;
    tracing::Span::current().record("tenant_id", caller.principal.tenant.as_str());
    let tenant = caller.principal.tenant.clone();
    let content_length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    // Held until the answer is built: bounds the requests and bytes in memory.
    let _in_flight = admission.enter(content_length)?;
    let admitted = admission.admit(&state.keys.snapshot(), &tenant, state.wal.live_bytes()).map_err(|r| {
        tracing::debug!(tenant_id = %tenant, request_id, reason = r.reason.code(), "ingest: refused by admission");
        ApiError::from(r)
    })?;

    let idem_key = headers.get(IDEMPOTENCY_KEY).map(|v| v.to_str().unwrap_or(""));
    let reserved = match idem_key {
        None => None,
        Some(key) => {
            if key.is_empty() || key.len() > idempotency::MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    format!("X-Idempotency-Key must be 1-{} visible ASCII characters", idempotency::MAX_KEY_LEN),
                ));
            }
            let p = &caller.principal;
            let guard = state.idempotency.reserve(&idempotency::scope(&p.tenant, &p.env, key)).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_flight",
                    "a request with this X-Idempotency-Key is still being processed; retry shortly",
                )
            })?;
            Some((key, guard))
        }
    };
    let (raw, signed) = read_body(&state, &caller, &headers, body).await?;
    let decoded = decode(&state, &headers, &raw)?;
    let (batch_id, in_flight) = match reserved {
        // A replay of this request to another edge gets the same batch ID: core drops it.
        None => match &signed {
            Some(v) => {
                (sluice_wire::ids::signed_batch_id(&caller.principal.tenant, &caller.principal.env, &v.mac), None)
            }
            None => (sluice_wire::ids::new_batch_id(), None),
        },
        Some((key, guard)) => {
            // The decompressed body: an SDK that compresses its retry again (gzip stamps the time
            // into its header) sends other bytes for the same batch.
            let hash: [u8; 32] = Sha256::digest(&decoded).into();
            let lookup =
                tokio::task::block_in_place(|| state.idempotency.lookup(guard, &hash, now_ms())).map_err(|e| {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string())
                        .with_retry_after(1)
                })?;
            match lookup {
                Lookup::Replay(stored) => return Ok(replayed(stored)),
                Lookup::BodyMismatch => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this X-Idempotency-Key was used with a different body",
                    ));
                }
                Lookup::Fresh(guard) => {
                    let p = &caller.principal;
                    (sluice_wire::ids::keyed_batch_id(&p.tenant, &p.env, key), Some((guard, hash)))
                }
            }
        }
    };

    tracing::Span::current().record("batch_id", tracing::field::display(batch_id));
    let prepared = prepare(&state, &caller, &decoded, batch_id).map_err(|e| prepare_error(e, &state.limits))?;
    // An inflated copy (up to the body limit) need not be held across the WAL append.
    drop(decoded);
    let received_at_ms = prepared.received_at_ms;
    let trace = trace.map(|Extension(TraceParent(tp))| tp);
    let Committed { accepted, rejected, rate } =
        commit(&state, &caller.principal, admitted.as_ref(), prepared, trace, request_id).await?;
    let mut body = json!({ "accepted": accepted, "batch_id": batch_id });
    if !rejected.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("rejected".into(), json!(rejected));
    }
    let body_bytes = serde_json::to_vec(&body).unwrap_or_default();
    if let Some((guard, request_hash)) = in_flight {
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
    Ok(resp)
}

/// What a stored request reports.
struct Committed {
    accepted: usize,
    rejected: Vec<crate::validate::Reject>,
    /// The tenant's bucket after the charge, when its rate is limited.
    rate: Option<RateInfo>,
}

/// The steps after the events are prepared, the same for every endpoint that stores them: charge
/// the tenant's rate, append to the WAL (fsync'd, and replicated where configured), account.
async fn commit(
    state: &AppState,
    principal: &Principal,
    admitted: Option<&Admitted>,
    prepared: Prepared,
    trace: Option<String>,
    request_id: &str,
) -> Result<Committed, ApiError> {
    let admission = &state.admission;
    let tenant = &principal.tenant;
    let batch_id = prepared.batch_id;
    let rate = match admitted {
        Some(a) => Some(admission.charge(a, prepared.accepted.len() + prepared.rejected.len())?),
        None => None,
    };
    let lane = state.keys.lane(principal);
    let ingest::WalBatch { accepted, rejected, bytes } = prepared
        .into_wal_bytes(principal, &state.region, lane, trace, state.record_zstd_level)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()))?;
    let enqueue = state.metrics.enqueue_latency.start_timer();
    let wal_bytes = bytes.len() as u64;
    if let Err(e) = state.wal.append(bytes).await {
        enqueue.stop_and_discard();
        tracing::warn!(tenant_id = %tenant, request_id, error = %e, "ingest: append refused");
        return Err(wal_error(e));
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

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn replayed(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
    let mut resp = json_response(status, stored.body);
    resp.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// Validation echo: the normalized events and every rejection, nothing stored.
async fn debug(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, &uri)?;
    tracing::Span::current().record("tenant_id", caller.principal.tenant.as_str());
    if state.debug_limiter.check_key(&caller.principal.key_id).is_err() {
        let message = format!("the debug endpoint allows {} requests/s per key", state.limits.debug_requests_per_sec);
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).with_retry_after(1));
    }
    let (raw, _) = read_body(&state, &caller, &headers, body).await?;
    let decoded = decode(&state, &headers, &raw)?;
    let batch_id = sluice_wire::ids::new_batch_id();
    let (events, rejected, pii) = match prepare(&state, &caller, &decoded, batch_id) {
        Ok(p) => {
            let produced = p.accepted.iter().map(|e| sluice_wire::record::spliced(&e.json, &p.shared));
            (produced.collect(), p.rejected, None)
        }
        Err(PrepareError::NoValidEvents(rejected)) => (Vec::new(), rejected, None),
        Err(PrepareError::Pii(v)) => (Vec::new(), Vec::new(), Some(v)),
        Err(e) => return Err(prepare_error(e, &state.limits)),
    };
    let events: Vec<&serde_json::value::RawValue> =
        events.iter().filter_map(|json: &Vec<u8>| serde_json::from_slice(json).ok()).collect();
    let body = json!({
        "valid": !events.is_empty() && rejected.is_empty() && pii.is_none(),
        "events": events,
        "rejected": rejected,
        "pii_violation": pii,
        "batch_id": batch_id,
    });
    Ok(json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()))
}
