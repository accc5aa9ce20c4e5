//! The admin HTTP API, on its own port (`admin.listen`), for operators and Prometheus:
//!
//! - `GET /metrics`: Prometheus text, unauthenticated (bind the port to a private interface);
//! - everything else needs `Authorization: Bearer <admin.token>`; without a configured token those
//!   routes answer `403` so a forgotten token never leaves them open:
//!   - `GET /status[?records=true]`: WAL depth (bytes, and records when asked: that walks the
//!     record headers), age of the oldest unacked record, ack watermark, forwarder and drain state,
//!     replication peers with their lag;
//!   - `POST /drain[?wait=true]` (optional body `{"deadline_secs":n}`): graceful drain, then the
//!     process exits (see [`crate::operate::drain`]); with `wait` the answer carries the drain's report;
//!   - `POST /forwarder/pause`, `POST /forwarder/resume`: stop/restart sending frames to core (the
//!     WAL keeps accepting up to its budget), e.g. during a core or broker incident.
//!
//! Errors use the public API's JSON shape `{"error":{"code","message"}}`.
//!
//! Tenant controls (operator routes, bearer token), each with `{"tenant":"…"}` or
//! `{"tenant":"…","env":"…"}`: the kill switch `POST /admission/block` / `POST /admission/unblock`,
//! and the overflow lane `POST /admission/overflow` / `POST /admission/overflow/remove` (the
//! accepted events go to `events.<region>.overflow`). They take effect on the next request and
//! are stored durably (the edge's state store, fsync'd) before the call answers, so they last
//! across restarts until undone. `GET /admission` and `GET /status` list them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::{DegradedMode, PeerConfig};
use crate::forwarder_control::ForwarderControl;
use crate::ingest::auth::{Controls, KeyRing, TenantScope};
use crate::ingest::idempotency::IdempotencyStore;
use crate::metrics::EdgeMetrics;
use crate::operate::drain::Drain;
use crate::replication::ReplicationMetrics;
use crate::wal::{Position, Wal};

pub struct AdminState {
    pub edge_id: String,
    pub token: Option<String>,
    pub wal: Wal,
    pub metrics: Arc<EdgeMetrics>,
    pub keys: Arc<KeyRing>,
    /// Where the tenant controls are stored.
    pub store: Arc<IdempotencyStore>,
    pub drain: Arc<Drain>,
    /// Deadline of a `POST /drain` without one (`drain_deadline_secs`).
    pub drain_deadline: Duration,
    /// `None` when forwarding is disabled.
    pub forwarder: Option<Arc<ForwarderControl>>,
    /// The forwarder's circuit to core, `None` when forwarding is disabled.
    pub link: Option<Arc<crate::link_health::LinkHealth>>,
    /// The POP peers this edge replicates to, `None` without replication.
    pub replication: Option<ReplicationView>,
}

/// What `GET /status` shows of replication: the configured peers and how far each is behind.
pub struct ReplicationView {
    pub factor: usize,
    pub mode: DegradedMode,
    pub peers: Vec<PeerConfig>,
    pub metrics: Arc<ReplicationMetrics>,
}

impl ReplicationView {
    fn status(&self) -> serde_json::Value {
        let peers: Vec<_> = self
            .peers
            .iter()
            .map(|p| {
                let lag = self.metrics.lag_bytes.with_label_values(&[p.id.as_str()]).get();
                json!({ "id": p.id, "addr": p.addr.to_string(), "lag_bytes": lag })
            })
            .collect();
        json!({
            "factor": self.factor,
            "mode": match self.mode { DegradedMode::Require => "require", DegradedMode::AllowLocal => "allow_local" },
            "degraded": self.metrics.degraded.get() == 1,
            "peers": peers,
        })
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    let operator = Router::new()
        .route("/status", get(status))
        // Kill switch (admission control).
        .route("/admission", get(admission_status))
        .route("/admission/block", post(block))
        .route("/admission/unblock", post(unblock))
        .route("/admission/overflow", post(overflow))
        .route("/admission/overflow/remove", post(overflow_remove))
        .route("/drain", post(drain))
        .route("/forwarder/pause", post(pause))
        .route("/forwarder/resume", post(resume))
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

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct StatusQuery {
    /// Also count unacked records (one read per record header).
    records: bool,
}

fn position(p: Position) -> serde_json::Value {
    json!({ "segment": p.segment, "offset": p.offset })
}

async fn status(State(state): State<Arc<AdminState>>, Query(q): Query<StatusQuery>) -> Response {
    let wal = state.wal.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let depth = wal.depth()?;
        let oldest = wal.oldest_unacked(&depth)?;
        let records = if q.records { Some(wal.unacked_records(&depth)?) } else { None };
        std::io::Result::Ok((depth, oldest, records))
    })
    .await;
    let (depth, oldest, records) = match scanned {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "wal_unreadable", &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    };
    let now = crate::clock::now_ms();
    let oldest_at = oldest.map(|r| r.received_at_ms);
    let forwarder = match &state.forwarder {
        Some(f) => json!({
            "enabled": true,
            "paused": f.is_paused(),
            "state": f.state().as_str(),
            "frames_acked": f.frames_acked(),
            "last_error": f.last_error(),
            "circuit": state.link.as_ref().map(|l| l.state().as_str()),
        }),
        None => {
            json!({ "enabled": false, "paused": false, "state": "disabled", "frames_acked": 0, "last_error": null,
                    "circuit": null })
        }
    };
    let drain = state.drain.progress().map(|(deadline, started)| {
        json!({
            "deadline_secs": deadline.as_secs(),
            "elapsed_ms": started.elapsed().as_millis() as u64,
            "report": state.drain.report(),
        })
    });
    Json(json!({
        "edge_id": state.edge_id,
        "draining": state.drain.is_draining(),
        "drain": drain,
        "in_flight_requests": state.drain.in_flight(),
        "wal": {
            "live_bytes": state.wal.live_bytes(),
            // The same value under its old name, kept for scripts written against earlier
            // releases; `live_bytes` says what it is (segments still on disk).
            "unforwarded_bytes": state.wal.live_bytes(),
            "unacked_bytes": depth.unacked_bytes,
            "unacked_records": records,
            "oldest_unacked_received_at_ms": oldest_at,
            "oldest_unacked_age_ms": oldest_at.map(|t| now.saturating_sub(t)),
            "committed": position(depth.committed),
            "acked": position(depth.acked),
        },
        "forwarder": forwarder,
        "replication": state.replication.as_ref().map(ReplicationView::status),
        "admission": controls_status(&state),
    }))
    .into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DrainRequest {
    deadline_secs: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct DrainQuery {
    /// Answer only when the drain has finished, with its report (`sluicectl drain` waits so).
    wait: bool,
}

async fn drain(State(state): State<Arc<AdminState>>, Query(q): Query<DrainQuery>, body: Bytes) -> Response {
    let req: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    &format!("expected {{\"deadline_secs\":n}}: {e}"),
                );
            }
        }
    };
    let deadline = req.deadline_secs.map_or(state.drain_deadline, Duration::from_secs);
    let started = state.drain.begin(deadline);
    if started {
        tracing::warn!(deadline_secs = deadline.as_secs(), "admin: drain requested; the process exits when it ends");
    }
    let deadline_secs = state.drain.progress().map_or(deadline.as_secs(), |(d, _)| d.as_secs());
    if q.wait {
        let report = state.drain.finished().await;
        return Json(json!({ "draining": true, "started": started, "deadline_secs": deadline_secs, "report": report }))
            .into_response();
    }
    (StatusCode::ACCEPTED, Json(json!({ "draining": true, "started": started, "deadline_secs": deadline_secs })))
        .into_response()
}

async fn pause(State(state): State<Arc<AdminState>>) -> Response {
    set_paused(&state, true)
}

async fn resume(State(state): State<Arc<AdminState>>) -> Response {
    set_paused(&state, false)
}

fn set_paused(state: &AdminState, paused: bool) -> Response {
    let Some(f) = &state.forwarder else {
        return error(StatusCode::CONFLICT, "forwarder_disabled", "forwarding is disabled in this edge's config");
    };
    if paused && state.drain.is_draining() {
        return error(StatusCode::CONFLICT, "draining", "a draining edge keeps forwarding until its WAL is empty");
    }
    let changed = if paused { f.pause() } else { f.resume() };
    tracing::warn!(paused, changed, "admin: forwarder {}", if paused { "paused" } else { "resumed" });
    Json(json!({ "forwarder": { "paused": paused, "changed": changed } })).into_response()
}

/// The tenant (or environment) in a block/unblock/overflow body, or why it is not one (`400`).
fn parse_scope(body: &[u8]) -> Result<TenantScope, String> {
    let scope: TenantScope =
        serde_json::from_slice(body).map_err(|e| format!("expected {{\"tenant\":…,\"env\"?:…}}: {e}"))?;
    if scope.tenant.is_empty() || scope.env.as_ref().is_some_and(String::is_empty) {
        return Err("tenant and env must not be empty".into());
    }
    Ok(scope)
}

/// One tenant control: which set of [`Controls`] it edits, and whether it adds or removes.
#[derive(Clone, Copy)]
enum Control {
    Block,
    Unblock,
    Overflow,
    OverflowRemove,
}

impl Control {
    /// Applies the control to `controls`; whether that changed anything.
    fn apply(self, controls: &mut Controls, scope: &TenantScope) -> bool {
        match self {
            Control::Block => controls.blocks.insert(scope.clone()),
            Control::Unblock => controls.blocks.remove(scope),
            Control::Overflow => controls.overflow.insert(scope.clone()),
            Control::OverflowRemove => controls.overflow.remove(scope),
        }
    }

    /// The answer's member naming the scope.
    fn verb(self) -> &'static str {
        match self {
            Control::Block => "blocked",
            Control::Unblock => "unblocked",
            Control::Overflow => "overflow",
            Control::OverflowRemove => "overflow_removed",
        }
    }
}

async fn control(state: Arc<AdminState>, body: Bytes, control: Control) -> Response {
    let scope = match parse_scope(&body) {
        Ok(s) => s,
        Err(m) => return error(StatusCode::BAD_REQUEST, "malformed_body", &m),
    };
    let stored = {
        let (state, scope) = (state.clone(), scope.clone());
        tokio::task::spawn_blocking(move || {
            state.keys.change_controls(|c| control.apply(c, &scope), |c| state.store.store_controls(c))
        })
        .await
    };
    let changed = match stored {
        Ok(Ok(changed)) => changed,
        Ok(Err(e)) => {
            tracing::error!(tenant_id = %scope.tenant, error = %e, "admin: storing a tenant control failed; not applied");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "state_unwritable", &e.to_string());
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    };
    tracing::warn!(tenant_id = %scope.tenant, env = scope.env.as_deref().unwrap_or("*"), changed,
        control = control.verb(), "admin: tenant control");
    let mut answer = json!({ "changed": changed });
    answer[control.verb()] = json!(scope);
    Json(answer).into_response()
}

async fn block(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    control(state, body, Control::Block).await
}

async fn unblock(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    control(state, body, Control::Unblock).await
}

async fn overflow(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    control(state, body, Control::Overflow).await
}

async fn overflow_remove(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    control(state, body, Control::OverflowRemove).await
}

/// The tenant controls in force: set through this API (stored), and from the keys file.
fn controls_status(state: &AdminState) -> serde_json::Value {
    let controls = state.keys.controls();
    let snapshot = state.keys.snapshot();
    json!({
        "blocks": controls.blocks,
        "overflow": controls.overflow,
        "keys_file_overflow_tenants": snapshot.overflow_tenants(),
    })
}

async fn admission_status(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let mut status = controls_status(&state);
    status["quotas"] = json!(state.keys.snapshot().quotas());
    Json(status)
}
