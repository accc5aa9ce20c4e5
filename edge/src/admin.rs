//! The admin HTTP API, on its own port (`admin.listen`), for operators and Prometheus:
//!
//! - `GET /metrics`: Prometheus text, unauthenticated (bind the port to a private interface);
//! - everything else needs `Authorization: Bearer <admin.token>`; without a configured token those
//!   routes answer `403` so a forgotten token never leaves them open.
//!
//! Errors use the public API's JSON shape `{"error":{"code","message"}}`.
//!
//! Kill switch (operator routes, bearer token): `POST /admission/block` and
//! `POST /admission/unblock` with `{"tenant":"…"}` or `{"tenant":"…","env":"…"}` take effect on
//! the next request and last until unblocked or the process restarts (for a lasting block, use
//! `disabled_tenants`/`disabled_envs` in the keys file); `GET /admission` lists the blocks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::{Block, KeyRing};
use crate::metrics::EdgeMetrics;
use crate::wal::Wal;

pub struct AdminState {
    pub edge_id: String,
    pub token: Option<String>,
    pub wal: Wal,
    pub metrics: Arc<EdgeMetrics>,
    pub keys: Arc<KeyRing>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    let operator = Router::new()
        .route("/status", get(status))
        // Kill switch (admission control).
        .route("/admission", get(admission_status))
        .route("/admission/block", post(block))
        .route("/admission/unblock", post(unblock))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(operator)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return error(StatusCode::FORBIDDEN, "admin_disabled", "no admin.token is configured on this edge");
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin bearer token");
    }
    next.run(req).await
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let committed = state.wal.committed();
    Json(json!({
        "edge_id": state.edge_id,
        "wal": {
            "unforwarded_bytes": state.wal.unforwarded_bytes(),
            "committed": { "segment": committed.segment, "offset": committed.offset },
        },
    }))
}

/// The kill-switch entry in a block/unblock body, or why it is not one (answered `400`).
fn parse_block(body: &[u8]) -> Result<Block, String> {
    let block: Block =
        serde_json::from_slice(body).map_err(|e| format!("expected {{\"tenant\":…,\"env\"?:…}}: {e}"))?;
    if block.tenant.is_empty() || block.env.as_ref().is_some_and(String::is_empty) {
        return Err("tenant and env must not be empty".into());
    }
    Ok(block)
}

async fn block(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    let block = match parse_block(&body) {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, "malformed_body", &m),
    };
    let added = state.keys.block(block.clone());
    tracing::warn!(tenant_id = %block.tenant, env = block.env.as_deref().unwrap_or("*"), added, "admin: kill switch on");
    Json(json!({ "blocked": block, "changed": added })).into_response()
}

async fn unblock(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    let block = match parse_block(&body) {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, "malformed_body", &m),
    };
    let removed = state.keys.unblock(&block);
    tracing::warn!(tenant_id = %block.tenant, env = block.env.as_deref().unwrap_or("*"), removed, "admin: kill switch off");
    Json(json!({ "unblocked": block, "changed": removed })).into_response()
}

async fn admission_status(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let snapshot = state.keys.snapshot();
    Json(json!({
        "blocks": state.keys.runtime_blocks(),
        "quotas": snapshot.quotas(),
    }))
}
