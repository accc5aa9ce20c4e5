//! QUIC TLS: the forwarder's client side (core's CA, optional client certificate for mutual TLS),
//! and both sides of edge↔edge replication (always mutual TLS, its own ALPN).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Pem { path: String, source: rustls_pki_types::pem::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    #[error("client_cert and client_key must be set together")]
    HalfClientIdentity,
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { path: path.display().to_string(), source })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem { path: path.display().to_string(), source })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Client config for the forwarder (edge → core).
pub fn quic_client_config(
    ca: &Path,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<quinn::ClientConfig, TlsError> {
    quic_client_config_for(sluice_wire::protocol::ALPN, ca, client_cert, client_key)
}

/// Client config speaking protocol `alpn`.
pub fn quic_client_config_for(
    alpn: &[u8],
    ca: &Path,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<quinn::ClientConfig, TlsError> {
    let roots = roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut crypto = match (client_cert, client_key) {
        (Some(cert), Some(key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfClientIdentity),
    };
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        std::time::Duration::from_secs(20)
            .try_into()
            .map_err(|e: quinn::VarIntBoundsExceeded| TlsError::Quic(e.to_string()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Server config for the replication listener: this edge's certificate, and peers must present a
/// certificate signed by `client_ca` (mutual TLS).
pub fn quic_server_config(
    alpn: &[u8],
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}
