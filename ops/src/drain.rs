//! `sluicectl drain --edge <admin addr>`: asks an edge to drain (`POST /drain` on its admin API),
//! then follows `GET /status` until the drain reports or the edge exits, with a progress bar of
//! the WAL bytes core has still to acknowledge, and a final summary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API at {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("admin API at {addr}: unparseable response")]
    Unparseable { addr: SocketAddr },
    #[error("admin API at {addr} answered {status}: {body}")]
    Status { addr: SocketAddr, status: u16, body: String },
}

/// One request to an edge's admin API (HTTP/1.1, one connection per request); returns the JSON.
pub fn admin_request(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<serde_json::Value, AdminError> {
    admin_request_with_timeout(addr, token, method, path, body, Duration::from_secs(30))
}

fn admin_request_with_timeout(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<serde_json::Value, AdminError> {
    let body = admin_exchange(addr, Some(token), method, path, body, timeout)?;
    serde_json::from_slice(&body).map_err(|_| AdminError::Unparseable { addr })
}

/// An edge's `GET /metrics` (Prometheus text; the one admin route without a token).
pub fn admin_metrics(addr: SocketAddr) -> Result<String, AdminError> {
    let body = admin_exchange(addr, None, "GET", "/metrics", "", Duration::from_secs(5))?;
    String::from_utf8(body).map_err(|_| AdminError::Unparseable { addr })
}

/// One request on a connection of its own; the body of a `2xx` answer.
fn admin_exchange(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Vec<u8>, AdminError> {
    let io = |source| AdminError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(AdminError::Unparseable { addr })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or(AdminError::Unparseable { addr })?;
    let body = raw.split_off(split + 4);
    // axum answers with Content-Length, so the body is not chunked.
    if !(200..300).contains(&status) {
        return Err(AdminError::Status { addr, status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    Ok(body)
}

/// What `sluicectl drain` reports at the end (`--json` prints this).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainSummary {
    pub edge: String,
    /// Core acknowledged the whole WAL before the edge exited.
    pub complete: bool,
    /// The edge process exited (its admin API stopped answering) after the drain.
    pub exited: bool,
    pub unacked_bytes_before: u64,
    pub unacked_records_before: Option<u64>,
    /// What the WAL still held at the end (it stays there for a restart or `sluicectl replay`).
    pub unacked_bytes_after: u64,
    pub drained_bytes: u64,
    pub elapsed_ms: u64,
    /// Drained bytes per second.
    pub rate_bytes_per_sec: f64,
}

impl DrainSummary {
    pub fn render(&self) -> String {
        format!(
            "drain of {}: {} in {:.1} s; drained {} of {} bytes ({:.1} MB/s); {} bytes left in the WAL{}\n",
            self.edge,
            if self.complete { "complete" } else { "INCOMPLETE (deadline reached or forwarding off)" },
            self.elapsed_ms as f64 / 1000.0,
            self.drained_bytes,
            self.unacked_bytes_before,
            self.rate_bytes_per_sec / 1e6,
            self.unacked_bytes_after,
            if self.exited { "; the edge exited" } else { "" },
        )
    }
}

fn unacked_bytes(status: &serde_json::Value) -> u64 {
    status["wal"]["unacked_bytes"].as_u64().unwrap_or(0)
}

/// Every how many progress polls the unacked records are counted too.
const RECORDS_EVERY_POLLS: u64 = 4;

/// Starts the drain and follows it. `deadline_secs` overrides the edge's `drain_deadline_secs`.
///
/// The drain request itself waits for the edge's report (`POST /drain?wait=true`, on its own
/// thread), so the outcome is known even when the drain ends between two polls and the edge exits
/// right after; `GET /status` polls only feed the progress bar.
pub fn run(
    edge: SocketAddr,
    token: &str,
    deadline_secs: Option<u64>,
    poll: Duration,
    progress: &indicatif::ProgressBar,
) -> Result<DrainSummary, AdminError> {
    let before = admin_request(edge, token, "GET", "/status?records=true", "")?;
    let total = unacked_bytes(&before);
    let body = deadline_secs.map_or(String::new(), |d| format!("{{\"deadline_secs\":{d}}}"));
    let started = Instant::now();
    let token_owned = token.to_string();
    // The edge's deadline is unknown here: wait up to a day; the edge always answers at its deadline.
    let waiter = std::thread::spawn(move || {
        admin_request_with_timeout(edge, &token_owned, "POST", "/drain?wait=true", &body, Duration::from_secs(86_400))
    });
    progress.set_length(total.max(1));
    let mut summary = DrainSummary {
        edge: edge.to_string(),
        unacked_bytes_before: total,
        unacked_records_before: before["wal"]["unacked_records"].as_u64(),
        unacked_bytes_after: total,
        ..DrainSummary::default()
    };
    let mut records_left = summary.unacked_records_before;
    let mut polls = 0u64;
    while !waiter.is_finished() {
        // Counting records walks the WAL's record headers on the edge: about once a second.
        let count = polls.is_multiple_of(RECORDS_EVERY_POLLS);
        polls += 1;
        let path = if count { "/status?records=true" } else { "/status" };
        // A failed poll (the edge exiting) is not the outcome: the waiting request is.
        if let Ok(status) = admin_request(edge, token, "GET", path, "") {
            let left = unacked_bytes(&status);
            if count {
                records_left = status["wal"]["unacked_records"].as_u64().or(records_left);
            }
            progress.set_position(total.saturating_sub(left));
            progress.set_message(format!(
                "{} records left, forwarder {}, {} requests in flight",
                records_left.map_or("?".into(), |r| r.to_string()),
                status["forwarder"]["state"].as_str().unwrap_or("?"),
                status["in_flight_requests"].as_u64().unwrap_or(0)
            ));
            summary.unacked_bytes_after = left;
        }
        std::thread::sleep(poll);
    }
    let answer = waiter.join().map_err(|_| AdminError::Unparseable { addr: edge })??;
    let report = &answer["report"];
    summary.complete = report["complete"].as_bool().unwrap_or(false);
    summary.unacked_bytes_after = report["unacked_bytes"].as_u64().unwrap_or(summary.unacked_bytes_after);
    {
        // Wait (bounded) for the process to go away, so a script can restart it right after.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if TcpStream::connect_timeout(&edge, Duration::from_secs(1)).is_err() {
                summary.exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.drained_bytes = total.saturating_sub(summary.unacked_bytes_after);
    summary.rate_bytes_per_sec = summary.drained_bytes as f64 / started.elapsed().as_secs_f64().max(1e-3);
    progress.set_position(summary.drained_bytes);
    Ok(summary)
}
