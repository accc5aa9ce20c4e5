//! Graceful drain, for maintenance and deploys (SIGTERM, or `POST /drain` on the admin API):
//!
//! 1. `/ready` fails at once (`503`), so the load balancer takes the node out;
//! 2. new ingest requests get `503 draining` with `Retry-After` (a clear answer instead of a
//!    refused connection, so an SDK retries on another node);
//! 3. requests already past the gate finish: their `202` still means "durable";
//! 4. the forwarder keeps running (resumed if an operator had paused it) until core has acked the
//!    whole WAL or the deadline passes;
//! 5. the drain reports, and the process exits. What core has not acked stays in the WAL, where a
//!    restart or `sluicectl replay` picks it up: a drain never drops anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::forwarder_control::ForwarderControl;
use crate::wal::Wal;

/// How often the drain task looks at in-flight requests and the WAL depth.
const POLL: Duration = Duration::from_millis(50);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Core acknowledged everything in the WAL before the deadline.
    pub complete: bool,
    /// Bytes left in the WAL for a restart or `sluicectl replay` (0 when complete).
    pub unacked_bytes: u64,
    /// Requests still running at the deadline (0 unless the deadline cut them short).
    pub in_flight_requests: usize,
    pub elapsed_ms: u64,
}

/// The drain state shared by the HTTP gate, the admin API and the drain task.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// The deadline of the drain once one was requested.
    requested: watch::Sender<Option<Duration>>,
    started: watch::Sender<Option<Instant>>,
    report: watch::Sender<Option<DrainReport>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requested: watch::Sender::new(None),
            started: watch::Sender::new(None),
            report: watch::Sender::new(None),
        }
    }
}

/// An ingest request that passed the gate; the drain waits for it.
pub struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// Starts a drain with `deadline`; returns `false` (and changes nothing) if one is running.
    pub fn begin(&self, deadline: Duration) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.started.send_replace(Some(Instant::now()));
        self.requested.send_replace(Some(deadline));
        true
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The requested deadline and when the drain started, while draining.
    pub fn progress(&self) -> Option<(Duration, Instant)> {
        Some(((*self.requested.borrow())?, (*self.started.borrow())?))
    }

    /// The outcome, once the drain finished.
    pub fn report(&self) -> Option<DrainReport> {
        *self.report.borrow()
    }

    /// Admits an ingest request unless draining. Counting before checking (both `SeqCst`) means
    /// the drain task, which sets the flag before reading the count, sees every admitted request.
    pub fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.is_draining()).then_some(guard)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves when a drain has finished.
    pub async fn finished(&self) -> DrainReport {
        let mut rx = self.report.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`; it cannot be dropped while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The drain task: waits for a drain request, then for in-flight requests and the forwarder.
    /// `forwarder` is `None` when forwarding is disabled: nothing would empty the WAL then.
    pub async fn run(self: Arc<Self>, wal: Wal, forwarder: Option<Arc<ForwarderControl>>) {
        let mut requested = self.requested.subscribe();
        let deadline = match requested.wait_for(Option::is_some).await {
            Ok(d) => d.unwrap_or_default(),
            Err(_) => return,
        };
        let started = (*self.started.borrow()).unwrap_or_else(Instant::now);
        let until = started + deadline;
        let depth = wal.depth().map(|d| d.unacked_bytes).unwrap_or(0);
        tracing::warn!(
            deadline_secs = deadline.as_secs_f64(),
            unacked_bytes = depth,
            "drain: started; readiness off, new requests get 503"
        );
        if let Some(f) = &forwarder
            && f.resume()
        {
            tracing::warn!("drain: forwarder was paused; resumed so the WAL can empty");
        }
        while self.in_flight() > 0 && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        let mut unacked = depth;
        loop {
            match tokio::task::spawn_blocking({
                let wal = wal.clone();
                move || wal.depth()
            })
            .await
            {
                Ok(Ok(d)) => unacked = d.unacked_bytes,
                Ok(Err(e)) => tracing::warn!(error = %e, "drain: reading the WAL depth failed"),
                Err(e) => tracing::warn!(error = %e, "drain: depth task failed"),
            }
            if forwarder.is_none() || (unacked == 0 && self.in_flight() == 0) || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let in_flight_requests = self.in_flight();
        let report = DrainReport {
            complete: unacked == 0 && in_flight_requests == 0,
            unacked_bytes: unacked,
            in_flight_requests,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        if report.complete {
            tracing::info!(elapsed_ms = report.elapsed_ms, "drain: complete; core acknowledged the whole WAL");
        } else {
            tracing::warn!(
                elapsed_ms = report.elapsed_ms,
                unacked_bytes = unacked,
                in_flight_requests,
                forwarding = forwarder.is_some(),
                "drain: deadline reached or forwarding off; the rest stays in the WAL"
            );
        }
        self.report.send_replace(Some(report));
    }
}

fn draining_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "draining",
        "this edge is draining for maintenance; retry on another",
    )
    .with_retry_after(1)
}

/// HTTP middleware: `/ready` fails while draining; `/v1/*` requests are refused once draining
/// and counted while they run. `/health` (liveness) stays up so the process is not killed early.
pub async fn gate(State(drain): State<Arc<Drain>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/ready" && drain.is_draining() {
        return draining_error().into_response();
    }
    if !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    match drain.enter() {
        Some(_running) => next.run(req).await,
        None => draining_error().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_admitted_before_the_drain_is_waited_for_and_later_ones_are_refused() {
        let d = Drain::default();
        let running = d.enter().expect("admitted before the drain");
        assert!(d.begin(Duration::from_secs(1)));
        assert!(!d.begin(Duration::from_secs(9)), "a second drain request changes nothing");
        assert_eq!(d.progress().map(|p| p.0), Some(Duration::from_secs(1)));
        assert_eq!(d.in_flight(), 1);
        assert!(d.enter().is_none(), "refused while draining");
        assert_eq!(d.in_flight(), 1, "a refused request is not counted");
        drop(running);
        assert_eq!(d.in_flight(), 0);
    }
}
