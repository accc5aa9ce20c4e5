//! A core running in the test process, writing events to the file sink: for tests that need
//! real acks but no Kafka.

use std::net::SocketAddr;
use std::path::Path;

use sluice_core::config::{CoreConfig, SinkConfig};
use sluice_ops::devpki::DevPki;

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
