//! The HTTP API: `POST /v1/events`, `HEAD /health`. Every error is a JSON body
//! `{"error":{"code":"…","message":"…"}}`; every response carries `X-Request-Id`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use axum::{Json, Router};
use serde_json::json;
use sluice_wire::record::encode_record;
use sluice_wire::{BatchRecord, Stream};

use crate::auth::{AuthError, KeyStore};
use crate::body::{self, BodyError, BodyFormat};
use crate::config::LimitsConfig;
use crate::validate::{self, BatchContext};
use crate::wal::{Wal, WalError};

pub struct AppState {
    pub keys: KeyStore,
    pub wal: Wal,
    pub region: String,
    pub limits: LimitsConfig,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/health", head(health).get(health))
        .fallback(not_found)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Identifies one request in logs and responses; an incoming well-formed ID is kept so a client
/// or load balancer can correlate.
#[derive(Clone)]
struct RequestId(HeaderValue);

const REQUEST_ID: &str = "x-request-id";

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).unwrap_or(HeaderValue::from_static("invalid"))
        });
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<serde_json::Value>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after_secs: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(details), Some(obj)) = (self.details, error.as_object_mut()) {
            obj.insert("details".into(), details);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Unknown => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
            AuthError::Revoked => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
        }
    }
}

fn body_error(e: BodyError, limits: &LimitsConfig) -> ApiError {
    match e {
        BodyError::TooLarge { .. } | BodyError::TooManyEvents { .. } => {
            let mut err =
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{e}; split the batch"));
            err.details = Some(json!({ "max_bytes": limits.max_body_bytes, "max_events": limits.max_events }));
            err
        }
        BodyError::UnsupportedEncoding(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", e.to_string())
        }
        BodyError::BadGzip(_) | BodyError::Malformed(_) | BodyError::Empty => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string())
        }
    }
}

fn wal_error(e: WalError) -> ApiError {
    let mut err = match e {
        WalError::Full { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "wal_full", "the edge is buffering its limit; retry later")
        }
        WalError::Failed(_) | WalError::Closed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the edge cannot persist events right now; retry later",
        ),
    };
    err.retry_after_secs = Some(1);
    err
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::JsonArray);
    };
    let ct = ct.to_str().unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "text/plain" => Ok(BodyFormat::JsonArray),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type `{ct}` is not supported; use application/json or application/x-ndjson"),
        )),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request_id = request_id.to_str().unwrap_or("");
    let principal = state.keys.authenticate(api_key(&headers))?;
    let format = body_format(&headers)?;
    let limits = &state.limits;
    let raw: Bytes = axum::body::to_bytes(body, limits.max_body_bytes)
        .await
        .map_err(|_| body_error(BodyError::TooLarge { limit: limits.max_body_bytes }, limits))?;
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid"));
    let decoded = body::decode(&raw, encoding, limits.max_body_bytes).map_err(|e| body_error(e, limits))?;
    let events = body::parse(&decoded, format, limits.max_events).map_err(|e| body_error(e, limits))?;

    let ctx = BatchContext {
        batch_id: sluice_wire::ids::new_batch_id(),
        tenant: &principal.tenant,
        env: &principal.env,
        region: &state.region,
        received_at_ms: now_ms(),
    };
    let shared = ctx.shared_fields();
    let mut accepted = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    for (index, element) in events.into_iter().enumerate() {
        match validate::normalize_element(&ctx, &shared, index, element) {
            Ok(e) => accepted.push(e),
            Err(r) => rejected.push(r),
        }
    }
    if accepted.is_empty() {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "no_valid_events", "no event in the batch is valid");
        err.details = Some(json!({ "rejected": rejected }));
        return Err(err);
    }
    let count = accepted.len();
    let record = BatchRecord {
        batch_id: ctx.batch_id,
        tenant: principal.tenant.clone(),
        env: principal.env.clone(),
        region: state.region.clone(),
        received_at_ms: ctx.received_at_ms,
        stream: Stream::Events,
        events: accepted,
    };
    // Normalized events are larger than the input; sizing from them avoids regrowing the buffer.
    let size: usize = record.events.iter().map(|e| e.json.len() + e.event_id.len() + 8).sum();
    let mut bytes = Vec::with_capacity(size + 256);
    encode_record(&record, &mut bytes)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()))?;
    if let Err(e) = state.wal.append(bytes).await {
        tracing::warn!(tenant_id = %principal.tenant, request_id, error = %e, "ingest: append refused");
        return Err(wal_error(e));
    }
    tracing::debug!(tenant_id = %principal.tenant, request_id, batch_id = %ctx.batch_id, accepted = count, rejected = rejected.len(), "ingest: accepted");
    let mut body = json!({ "accepted": count, "batch_id": ctx.batch_id });
    if !rejected.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert("rejected".into(), json!(rejected));
    }
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
