//! The JSON error of the HTTP API (`{"error":{"code":"…","message":"…"}}`), how the admission,
//! auth and signature refusals map to it, and the `RateLimit-*` headers that errors and
//! successes of rate-limited routes carry. A leaf: `http` and the drain gate both answer with it.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ingest::admission::Refusal;
use crate::ingest::admission::quota::{BURST_FACTOR, RateInfo};
use crate::ingest::auth::AuthError;
use crate::ingest::signature::SignatureError;

pub(crate) const RATELIMIT_LIMIT: &str = "ratelimit-limit";
pub(crate) const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
pub(crate) const RATELIMIT_RESET: &str = "ratelimit-reset";
pub(crate) const RATELIMIT_POLICY: &str = "ratelimit-policy";

/// The error code of a response, for the responses metric.
#[derive(Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    /// Read by the SDK routes, which answer in their API's own error shape.
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    details: Option<serde_json::Value>,
    retry_after_secs: Option<u64>,
    /// Boxed: rare, and it would double the size of every `Result<_, ApiError>`.
    rate: Option<Box<RateInfo>>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after_secs: None, rate: None }
    }

    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub(crate) fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(details), Some(obj)) = (self.details, error.as_object_mut()) {
            obj.insert("details".into(), details);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(rate) = self.rate {
            insert_rate_headers(resp.headers_mut(), &rate);
        }
        resp
    }
}

/// Whole seconds for `Retry-After`/`RateLimit-Reset`, rounded up so a client that waits that
/// long is not refused again for the same reason.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-*` headers (IETF draft `ratelimit-headers`): the bucket (burst) as the limit over a
/// window of `BURST_FACTOR` seconds, which is the configured rate.
pub(crate) fn insert_rate_headers(headers: &mut HeaderMap, rate: &RateInfo) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(rate.burst));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(rate.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(ceil_secs(rate.reset)));
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={BURST_FACTOR}", rate.burst)) {
        headers.insert(RATELIMIT_POLICY, v);
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status =
            if r.reason.is_unavailable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::TOO_MANY_REQUESTS };
        let mut err = ApiError::new(status, r.reason.code(), r.message);
        err.retry_after_secs = Some(ceil_secs(r.retry_after).max(1));
        err.rate = r.rate.map(Box::new);
        err
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match e {
            AuthError::Missing | AuthError::Unknown | AuthError::UnsupportedScheme(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            AuthError::Revoked => (StatusCode::FORBIDDEN, "key_revoked"),
            AuthError::TenantDisabled => (StatusCode::FORBIDDEN, "tenant_disabled"),
            AuthError::EnvDisabled => (StatusCode::FORBIDDEN, "environment_disabled"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> Self {
        let code = match e {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed | SignatureError::Mismatch => "signature_invalid",
            SignatureError::Skew(_) => "signature_expired",
            SignatureError::Replayed => "signature_replayed",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::admission::Reason;

    /// A rate refusal answers 429 with its code for the responses metric, `Retry-After` rounded
    /// up to whole seconds, and the bucket in the `RateLimit-*` headers.
    #[test]
    fn a_rate_refusal_carries_its_headers() {
        let rate = RateInfo { per_sec: 10, burst: 20, remaining: 0, reset: Duration::from_millis(1500) };
        let refusal = Refusal {
            reason: Reason::TenantRate,
            message: "slow down".into(),
            retry_after: Duration::from_millis(100),
            rate: Some(rate),
        };
        let resp = ApiError::from(refusal).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.extensions().get::<ErrorCode>().map(|c| c.0), Some("rate_limited"));
        let h = resp.headers();
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert_eq!(h[RATELIMIT_LIMIT], "20");
        assert_eq!(h[RATELIMIT_REMAINING], "0");
        assert_eq!(h[RATELIMIT_RESET], "2");
        assert_eq!(h[RATELIMIT_POLICY], format!("20;w={BURST_FACTOR}"));
    }

    #[test]
    fn an_unavailable_refusal_is_503() {
        let refusal =
            Refusal { reason: Reason::WalFull, message: "full".into(), retry_after: Duration::ZERO, rate: None };
        let resp = ApiError::from(refusal).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1", "never a Retry-After of 0");
        assert!(resp.headers().get(RATELIMIT_LIMIT).is_none());
    }
}
