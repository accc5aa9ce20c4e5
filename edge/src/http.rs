//! The HTTP API: `POST /v1/events`, `POST /v1/events:debug`, `HEAD /health`, `GET /ready`, and
//! the PostHog and Segment routes of [`sdk`].
//! Every error is a JSON body `{"error":{"code":"…","message":"…"}}`; every response carries
//! `X-Request-Id`; a valid W3C `traceparent` is continued (same trace ID, new span ID).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Extension, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use sluice_wire::stored_response::StoredResponse;
use tower_http::cors::{Any, CorsLayer};
use tracing::Instrument;

use crate::api_error::{ApiError, ErrorCode, RATELIMIT_LIMIT, RATELIMIT_POLICY, RATELIMIT_REMAINING, RATELIMIT_RESET};
use crate::config::{HttpConfig, LimitsConfig, PiiConfig, ValidationConfig};
use crate::ingest::PrepareError;
use crate::ingest::admission::Admission;
use crate::ingest::admission::quota;
use crate::ingest::auth::{AuthError, KeyRing};
use crate::ingest::idempotency::IdempotencyStore;
use crate::link_health::LinkHealth;
use crate::metrics::EdgeMetrics;
use crate::server::PeerAddr;
use crate::wal::Wal;

mod sdk;
mod steps;

use self::steps::{Identity, Rejected};

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
    pub drain: Arc<crate::operate::drain::Drain>,
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
        .layer(middleware::from_fn_with_state(state.drain.clone(), crate::operate::drain::gate))
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

/// `POST /v1/events`: the steps of [`steps`], in order.
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
    state.admission.check_ip(client.map(|Extension(ClientIp(ip))| ip))?;
    let caller = steps::authenticate(&state, &headers, &uri)?;
    let principal = &caller.principal;
    tracing::Span::current().record("tenant_id", principal.tenant.as_str());
    // The in-flight guard is held until the answer is built.
    let (_in_flight, admitted) = steps::admit(&state, &principal.tenant, &headers, request_id)?;
    let reservation = steps::reserve(&state, principal, &headers)?;
    let raw = steps::read_raw(&state, body).await?;
    let signed = steps::verify_signature(&state, principal, &headers, &raw)?;
    let decoded = steps::decode(&state, &headers, &raw)?;
    let (batch_id, pending) = match steps::identify(&state, principal, signed.as_ref(), reservation, &decoded)? {
        Identity::Fresh { batch_id, pending } => (batch_id, pending),
        Identity::Replay(stored) => return Ok(replayed(stored)),
    };
    tracing::Span::current().record("batch_id", tracing::field::display(batch_id));
    let prepared = steps::prepare(&state, principal, &decoded, caller.format, batch_id, None)
        .map_err(|e| Rejected::new(e, &state.limits))?;
    // An inflated copy (up to the body limit) need not be held across the WAL append.
    drop(decoded);
    let received_at_ms = prepared.received_at_ms;
    let trace = trace.map(|Extension(TraceParent(tp))| tp);
    let committed = steps::commit(&state, principal, admitted.as_ref(), prepared, trace, request_id).await?;
    Ok(steps::complete(&state, &principal.tenant, batch_id, received_at_ms, committed, pending, request_id))
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
    let caller = steps::authenticate(&state, &headers, &uri)?;
    tracing::Span::current().record("tenant_id", caller.principal.tenant.as_str());
    if state.debug_limiter.check_key(&caller.principal.key_id).is_err() {
        let message = format!("the debug endpoint allows {} requests/s per key", state.limits.debug_requests_per_sec);
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).with_retry_after(1));
    }
    let raw = steps::read_raw(&state, body).await?;
    steps::verify_signature(&state, &caller.principal, &headers, &raw)?;
    let decoded = steps::decode(&state, &headers, &raw)?;
    let batch_id = sluice_wire::ids::new_batch_id();
    let (events, rejected, pii) =
        match steps::prepare(&state, &caller.principal, &decoded, caller.format, batch_id, None) {
            Ok(p) => {
                let produced = p.accepted.iter().map(|e| sluice_wire::record::spliced(&e.json, &p.shared));
                (produced.collect(), p.rejected, None)
            }
            Err(PrepareError::NoValidEvents(rejected)) => (Vec::new(), rejected, None),
            Err(PrepareError::Pii(v)) => (Vec::new(), Vec::new(), Some(v)),
            Err(e) => return Err(Rejected::new(e, &state.limits).into()),
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
