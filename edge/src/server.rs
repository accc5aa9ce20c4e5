//! The HTTP(S) accept loop, with the read deadlines `axum::serve` lacks, so slow clients
//! (slowloris) cannot pin connections:
//!
//! - Every request head is due within `header_timeout` of the connection going idle: of its
//!   opening for the first request (covers a client that connects and sends nothing, the
//!   HTTP/1-vs-2 sniffing and, with TLS, the handshake), of the last response for the next one on
//!   a kept-alive connection. An idle connection past that is closed, on HTTP/1.1 and HTTP/2
//!   alike: HTTP/2 has no header timeout of its own, so without this a client could hold a
//!   connection by trickling `CONTINUATION` frames or by staying silent after a first request.
//! - The body deadline is enforced where the body is read (`http::read_body`, `408`); while a
//!   request is being handled the connection is not idle.
//!
//! HTTP/1.1 and HTTP/2 are served (ALPN with TLS, sniffed without). Stopping lets in-flight
//! requests finish (graceful shutdown of every connection).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::tls::{TlsError, load_certs, load_key};

/// The client's address, in every request's extensions (per-IP limits).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// TLS for the public API: HTTP/2 and HTTP/1.1 offered via ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `stop` turns true, then lets open connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let header_timeout = header_timeout.max(Duration::from_millis(1));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (app, builder, tls, stop) = (app.clone(), builder.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            let opened = Instant::now();
            let conn = Connection { app, peer, header_timeout, activity: Arc::new(Activity::new(opened)) };
            match tls {
                None => conn.serve(stream, &builder, stop).await,
                Some(acceptor) => match tokio::time::timeout_at(opened + header_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(s)) => conn.serve(s, &builder, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The requests of one connection being handled, and when it last went idle.
struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Held while a request is handled (until its response is ready).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle from now, if this was the last request: the next head is due a timeout later.
        *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new(opened: Instant) -> Self {
        Self { active: AtomicUsize::new(0), idle_since: Mutex::new(opened) }
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When to look again, or `None` if the connection has been idle for `timeout`: no request
    /// head arrived in time.
    fn next_check(&self, timeout: Duration, now: Instant) -> Option<Instant> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return Some(now + timeout);
        }
        let due = *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner) + timeout;
        (due > now).then_some(due)
    }
}

struct Connection {
    app: Router,
    peer: std::net::SocketAddr,
    header_timeout: Duration,
    activity: Arc<Activity>,
}

impl Connection {
    async fn serve<S>(self, stream: S, builder: &auto::Builder<TokioExecutor>, mut stop: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { app, peer, header_timeout, activity } = self;
        let requests = activity.clone();
        // Called by hyper once a request's head is complete; on HTTP/2 the handler then runs in a
        // task of its own, which holds `Busy` until its response is ready.
        let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let busy = requests.busy();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(PeerAddr(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await;
                drop(busy);
                response
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let check = tokio::time::sleep_until(Instant::now() + header_timeout);
        tokio::pin!(check);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "http: connection ended with an error");
                    }
                    return;
                }
                _ = &mut check => match activity.next_check(header_timeout, Instant::now()) {
                    Some(at) => check.as_mut().reset(at),
                    None => {
                        tracing::debug!(%peer, "http: no complete request head in time; closing");
                        return;
                    }
                },
                _ = stopped(&mut stop), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the edge is going away: stop too.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_from_its_opening_and_from_its_last_response() {
        let t = Duration::from_secs(10);
        let opened = Instant::now();
        let a = Arc::new(Activity::new(opened));
        assert_eq!(a.next_check(t, opened + Duration::from_secs(4)), Some(opened + t), "first head due at open + t");
        assert_eq!(a.next_check(t, opened + t), None, "no head by then: close");
        let busy = a.busy();
        let later = opened + Duration::from_secs(60);
        assert_eq!(a.next_check(t, later), Some(later + t), "a request in flight keeps it open");
        drop(busy);
        let idle = *a.idle_since.lock().unwrap();
        assert!(idle > opened, "idle again from the response");
        assert_eq!(a.next_check(t, idle + t), None, "the next head is due a timeout after the response");
    }
}
