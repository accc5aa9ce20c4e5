//! With certificate paths configured the edge serves HTTPS, offering HTTP/2 and HTTP/1.1 via
//! ALPN, and both carry the same API.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::events_body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in sluice_edge::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http2_and_http1() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = sluice_ops::devpki::write_dev_pki(pki_dir.path()).unwrap();
    let (cert, key) = (pki.core_cert.clone(), pki.core_key.clone());
    let e = InProcessEdge::start(move |c| {
        c.http.tls_cert = Some(cert);
        c.http.tls_key = Some(key);
    })
    .await;
    let (body, _) = events_body("tls", 2);

    let tls = connect(e.addr(), &pki.ca_cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("https://localhost:{}/v1/events", e.addr().port()))
        .header("authorization", format!("Bearer {}", e.key))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 202);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&got).unwrap()["accepted"], 2);

    let mut tls = connect(e.addr(), &pki.ca_cert, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        e.key,
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    assert!(raw.starts_with(b"HTTP/1.1 202"), "{}", String::from_utf8_lossy(&raw));

    // Plain HTTP to the TLS port is not served.
    let r = sluice_tests::http::request(e.addr(), "HEAD", "/health", &[], b"");
    assert!(r.map(|r| r.status != 200).unwrap_or(true));
    assert_eq!(e.appended(), 2);
    e.shutdown().await;
}
