//! A core running in the test process, writing events to the file sink: for tests that need
//! real acks but no Kafka.

use std::net::SocketAddr;
use std::path::Path;

use sluice_core::config::{CoreConfig, SinkConfig};
use sluice_edge::config::EdgeConfig;
use sluice_ops::devpki::DevPki;

use crate::edge_harness::InProcessEdge;

/// Config of an in-process core on `listen` with the dev PKI's mTLS: dedupe index under
/// `<dir>/core`, events in `<dir>/sink/` ([`sink_file`]).
pub fn file_sink_config(listen: SocketAddr, pki: &DevPki, dir: &Path) -> CoreConfig {
    CoreConfig {
        listen,
        cert: pki.core_cert.clone(),
        key: pki.core_key.clone(),
        client_ca: Some(pki.ca_cert.clone()),
        data_dir: dir.join("core"),
        sink: SinkConfig::File { dir: dir.join("sink") },
        ..CoreConfig::default()
    }
}

/// The file holding the events of a core configured by [`file_sink_config`] with `dir`.
pub fn sink_file(dir: &Path) -> std::path::PathBuf {
    dir.join("sink").join(sluice_core::sink::EVENTS_FILE_NAME)
}

/// An in-process core with the file sink (events in [`sink_file`] of `dir`), and an in-process
/// edge forwarding to it (`customize` adjusts the edge's config): for tests that need real acks.
pub async fn edge_forwarding_to_file_core(
    dir: &Path,
    customize: impl FnOnce(&mut EdgeConfig),
) -> (sluice_core::Core, InProcessEdge) {
    let pki = sluice_ops::devpki::write_dev_pki(&dir.join("pki")).expect("pki");
    let config = file_sink_config("127.0.0.1:0".parse().expect("addr"), &pki, dir);
    let core = sluice_core::start(config).await.expect("core starts");
    let core_addr = core.addr;
    let edge = InProcessEdge::start(|c| {
        c.forwarder.enabled = true;
        c.forwarder.core_addr = core_addr;
        c.forwarder.ca_cert = pki.ca_cert.clone();
        c.forwarder.client_cert = Some(pki.edge_cert.clone());
        c.forwarder.client_key = Some(pki.edge_key.clone());
        customize(c);
    })
    .await;
    (core, edge)
}
