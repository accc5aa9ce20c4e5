//! The HTTP server loop: the axum router on hyper, with the read deadlines `axum::serve` lacks.
//!
//! - A connection that has not delivered a complete request head within
//!   `header_read_timeout_ms` of opening is dropped (covers a client that connects and sends
//!   nothing, and HTTP/1 headers trickled a byte at a time; hyper's own header timeout covers
//!   later requests on a kept-alive connection).
//! - A request body must arrive within `body_read_timeout_ms` after the head, else `408`. The
//!   body is read here, at most `max_body_bytes + 1` of it, so the handler's own limit still
//!   answers `413` for anything larger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish their
/// requests (bounded by the same deadlines).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    max_body_bytes: usize,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(config.header_read_timeout_ms.max(1));
    let body_timeout = Duration::from_millis(config.body_read_timeout_ms.max(1));
    let app = app.layer(axum::middleware::from_fn(move |req: Request, next: axum::middleware::Next| {
        read_body_within(req, next, body_timeout, max_body_bytes)
    }));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let app = app.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let started = Arc::new(AtomicBool::new(false));
            let flag = started.clone();
            let service =
                TowerToHyperService::new(app.map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    flag.store(true, Ordering::Relaxed);
                    req.map(Body::new)
                }));
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let first_request = tokio::time::sleep(header_timeout);
            tokio::pin!(first_request);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "http: connection ended with an error");
                        }
                        return;
                    }
                    _ = &mut first_request, if !started.load(Ordering::Relaxed) => {
                        tracing::debug!(%peer, "http: no complete request head in time; closing");
                        return;
                    }
                    _ = stopped(&mut stop), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the edge is going away: stop too.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Reads the body (at most `max_bytes + 1`) within `timeout`, answering `408` when it is slower.
async fn read_body_within(req: Request, next: axum::middleware::Next, timeout: Duration, max_bytes: usize) -> Response {
    let (parts, body) = req.into_parts();
    let read = async move {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                let room = (max_bytes + 1).saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
                if buf.len() > max_bytes {
                    break;
                }
            }
        }
        Ok::<_, axum::Error>(buf)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(buf)) => next.run(Request::from_parts(parts, Body::from(buf))).await,
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "malformed_body", &format!("reading the body failed: {e}")),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!("the body did not arrive within {} ms", timeout.as_millis()),
        ),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp =
        (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response();
    let headers = resp.headers_mut();
    headers.insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    if let Ok(id) = axum::http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-request-id", id);
    }
    resp
}
