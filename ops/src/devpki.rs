//! Throwaway PKI for `sluicectl dev` and tests: a CA, core's server certificate and an edge client
//! certificate (core runs with mutual TLS even locally, so dev exercises the production path).
//! Production deployments supply their own certificate paths.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the PEM files written by [`write_dev_pki`].
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub core_cert: PathBuf,
    pub core_key: PathBuf,
    pub edge_cert: PathBuf,
    pub edge_key: PathBuf,
}

/// Generates a fresh CA and leaf certificates for `localhost`/`127.0.0.1`/`::1` into `dir`.
pub fn write_dev_pki(dir: &Path) -> anyhow::Result<DevPki> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, "sluice dev CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf = |name: &str, usages: Vec<ExtendedKeyUsagePurpose>| -> anyhow::Result<(String, String)> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (core_pem, core_key) = leaf("sluice-core", vec![ExtendedKeyUsagePurpose::ServerAuth])?;
    // An edge is a client of core and of its POP peers, and the server its peers replicate to.
    let (edge_pem, edge_key) =
        leaf("sluice-edge", vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth])?;
    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        core_cert: dir.join("core.pem"),
        core_key: dir.join("core.key"),
        edge_cert: dir.join("edge.pem"),
        edge_key: dir.join("edge.key"),
    };
    std::fs::write(&pki.ca_cert, ca.pem())?;
    std::fs::write(&pki.core_cert, core_pem)?;
    std::fs::write(&pki.core_key, core_key)?;
    std::fs::write(&pki.edge_cert, edge_pem)?;
    std::fs::write(&pki.edge_key, edge_key)?;
    Ok(pki)
}
