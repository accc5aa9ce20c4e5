//! The routes unmodified PostHog and Segment SDKs send to: the body is translated by
//! [`crate::ingest::compat`] and stored by the same steps as `POST /v1/events`, so the `200` these APIs
//! answer means what a `202` means (WAL fsync'd, on the replicas a `202` needs).
//!
//! Differences from `/v1/events`, all forced by the SDKs: the key may be in the body, so the body
//! is read before the key is checked; answers and errors have the shapes the SDKs parse
//! (PostHog `{"status":1}` / `{"type","code","detail"}`, Segment `{"success":true}` /
//! `{"success":false,"code","message"}`), with the same statuses and `Retry-After` as
//! `/v1/events`; no `X-Idempotency-Key` (no SDK sends one): a resend of the same events carries
//! the same message IDs, which map to the same batch ID, and core drops it as a duplicate.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;

use super::steps::{self, Committed, Rejected};
use super::{AppState, ClientIp, RequestId, TraceParent, api_key};
use crate::api_error::{ApiError, insert_rate_headers};
use crate::ingest::body::{self, BodyFormat};
use crate::ingest::compat::{Api, CompatError, Translated, posthog, segment};

/// PostHog's capture paths; each is served with and without a trailing slash.
const POSTHOG_PATHS: [&str; 5] = ["/batch", "/e", "/capture", "/i/v0/e", "/track"];

pub(super) fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for path in POSTHOG_PATHS {
        router = router.route(path, post(capture)).route(&format!("{path}/"), post(capture));
    }
    for path in segment::PATHS {
        router = router.route(path, post(capture));
    }
    router
}

/// What a compatible request brings besides its body.
struct Origin {
    api: Api,
    request_id: RequestId,
    client: Option<Extension<ClientIp>>,
    trace: Option<Extension<TraceParent>>,
    headers: HeaderMap,
    /// A key from the headers, which wins over one in the body.
    header_key: Option<String>,
}

/// Both APIs' routes: the path says which API (and for Segment, which call) it is.
async fn capture(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    client: Option<Extension<ClientIp>>,
    trace: Option<Extension<TraceParent>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let max = state.limits.max_body_bytes;
    // The SDKs put the key in the body (PostHog) or in Basic auth (Segment): a header of a scheme
    // the native API refuses is not an error here, it just holds no key.
    let header_key = api_key(&headers, &uri, state.http.allow_query_key).ok().flatten().map(String::from);
    match segment::call_for_path(uri.path()) {
        Some(call) => {
            let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let header_key = authorization.and_then(segment::basic_auth_user).or(header_key);
            let origin = Origin { api: Api::Segment, request_id, client, trace, headers, header_key };
            let translate = |raw: &[u8], headers: &HeaderMap| {
                let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid"));
                segment::translate(&body::decode(raw, encoding, max)?, call)
            };
            store(&state, origin, body, translate).await
        }
        None => {
            let origin = Origin { api: Api::PostHog, request_id, client, trace, headers, header_key };
            let translate = |raw: &[u8], headers: &HeaderMap| {
                let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or("invalid"));
                let (encoding, content_type) = (header(header::CONTENT_ENCODING), header(header::CONTENT_TYPE));
                let decoded = posthog::decode(raw, encoding, content_type, uri.query(), max)?;
                posthog::translate(&decoded, crate::clock::now_ms())
            };
            store(&state, origin, body, translate).await
        }
    }
}

/// Reads, translates, authenticates, admits and stores a compatible request, and answers in
/// the API's own shapes.
async fn store(
    state: &AppState,
    origin: Origin,
    body: Body,
    translate: impl FnOnce(&[u8], &HeaderMap) -> Result<Translated, CompatError>,
) -> Response {
    let api = origin.api;
    match try_store(state, origin, body, translate).await {
        Ok(resp) => resp,
        Err(e) => error_response(api, e),
    }
}

async fn try_store(
    state: &AppState,
    origin: Origin,
    body: Body,
    translate: impl FnOnce(&[u8], &HeaderMap) -> Result<Translated, CompatError>,
) -> Result<Response, ApiError> {
    let Origin { api, request_id, client, trace, headers, header_key } = origin;
    let request_id = request_id.0.to_str().unwrap_or("");
    let admission = &state.admission;
    admission.check_ip(client.map(|Extension(ClientIp(ip))| ip))?;
    let _in_flight = admission.enter(steps::content_length(&headers))?;
    let raw = steps::read_raw(state, body).await?;
    let translated = translate(&raw, &headers).map_err(|e| compat_error(e, state))?;
    let principal = state.keys.authenticate(header_key.as_deref().or(translated.key.as_deref()))?;
    tracing::Span::current().record("tenant_id", principal.tenant.as_str());
    let admitted = admission.admit(&state.keys.snapshot(), &principal.tenant, state.wal.live_bytes())?;
    steps::verify_signature(state, &principal, &headers, &raw)?;
    let batch_id = match &translated.retry_key {
        Some(ids) => {
            sluice_wire::ids::keyed_batch_id(&principal.tenant, &principal.env, &format!("{}:{ids}", api.name()))
        }
        None => sluice_wire::ids::new_batch_id(),
    };
    tracing::Span::current().record("batch_id", tracing::field::display(batch_id));
    let prepared = steps::prepare(state, &principal, &translated.body, BodyFormat::JsonArray, batch_id, Some(api))
        .map_err(|e| Rejected::new(e, &state.limits))?;
    let trace = trace.map(|Extension(TraceParent(tp))| tp);
    let Committed { rate, .. } =
        steps::commit(state, &principal, admitted.as_ref(), prepared, trace, request_id).await?;
    let body = match api {
        Api::PostHog => json!({ "status": 1 }),
        Api::Segment => json!({ "success": true }),
    };
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    if let Some(rate) = rate {
        insert_rate_headers(resp.headers_mut(), &rate);
    }
    Ok(resp)
}

fn compat_error(e: CompatError, state: &AppState) -> ApiError {
    match e {
        CompatError::Body(b) => Rejected::new(b, &state.limits).into(),
        CompatError::Malformed(_) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string()),
        CompatError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("{e}; split the batch"))
        }
        CompatError::UnsupportedCompression(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", e.to_string())
        }
    }
}

/// An error as the API's SDKs parse it (posthog-python reads `detail`, analytics-python `code`
/// and `message`), with the status, headers and metrics label of the `/v1/events` error.
fn error_response(api: Api, e: ApiError) -> Response {
    let body = match api {
        Api::PostHog => {
            let kind = match e.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "authentication_error",
                s if s.is_server_error() => "server_error",
                StatusCode::TOO_MANY_REQUESTS => "throttled_error",
                _ => "validation_error",
            };
            json!({ "type": kind, "code": e.code, "detail": e.message })
        }
        Api::Segment => json!({ "success": false, "code": e.code, "message": e.message }),
    };
    let (mut parts, _) = e.into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let json = Json(body).into_response();
    Response::from_parts(parts, json.into_body())
}
