//! The HTTP(S) accept loop, with the read deadlines `axum::serve` lacks, so slow clients
//! (slowloris) cannot pin connections:
//!
//! - A connection must deliver its first complete request head within `header_timeout` of
//!   opening (covers a client that connects and sends nothing, and the HTTP/1-vs-2 sniffing);
//!   hyper's own header timeout covers later requests on a kept-alive connection. With TLS the
//!   handshake must also finish within that time.
//! - The body deadline is enforced where the body is read (`http::read_body`, `408`).
//!
//! HTTP/1.1 and HTTP/2 are served (ALPN with TLS, sniffed without). Stopping lets in-flight
//! requests finish (graceful shutdown of every connection).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
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
            let deadline = tokio::time::Instant::now() + header_timeout;
            match tls {
                None => serve_connection(stream, app, &builder, deadline, stop, peer).await,
                Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_connection(s, app, &builder, deadline, stop, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    first_head_deadline: tokio::time::Instant,
    mut stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let service = TowerToHyperService::new(app.map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
        flag.store(true, Ordering::Relaxed);
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(PeerAddr(peer));
        req
    }));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let first_head = tokio::time::sleep_until(first_head_deadline);
    tokio::pin!(first_head);
    let mut head_deadline_armed = true;
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "http: connection ended with an error");
                }
                return;
            }
            _ = &mut first_head, if head_deadline_armed => {
                // The guard is evaluated when the select starts, not when the timer fires: the
                // head may have arrived meanwhile, and then the connection must live on.
                if started.load(Ordering::Relaxed) {
                    head_deadline_armed = false;
                    continue;
                }
                tracing::debug!(%peer, "http: no complete request head in time; closing");
                return;
            }
            _ = stopped(&mut stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the edge is going away: stop too.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
