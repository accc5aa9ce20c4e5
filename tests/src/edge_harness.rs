//! An edge running in the test process (forwarder off unless configured), for API tests that need
//! no core: quick to start, and its WAL statistics are directly visible.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use sluice_edge::Edge;
use sluice_edge::clock::Clock;
use sluice_edge::config::EdgeConfig;

pub struct InProcessEdge {
    pub edge: Option<Edge>,
    pub key: String,
    pub keys_file: PathBuf,
    pub config: EdgeConfig,
    pub dir: tempfile::TempDir,
    /// Admission control's clock, kept across restarts.
    clock: Clock,
}

impl InProcessEdge {
    /// Starts an edge with one key for tenant `acme`/`prod`; `customize` adjusts the config.
    pub async fn start(customize: impl FnOnce(&mut EdgeConfig)) -> Self {
        Self::start_with_clock(customize, Clock::real()).await
    }

    /// [`InProcessEdge::start`] with admission control (quotas, `Retry-After`, intake rates) on
    /// `clock`, e.g. a [`Clock::manual`] the test advances.
    pub async fn start_with_clock(customize: impl FnOnce(&mut EdgeConfig), clock: Clock) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut config, key) = config_in(dir.path());
        customize(&mut config);
        let edge = launch(&config, &clock).await.expect("edge starts");
        // Later restarts must reuse the same port, also when `customize` asked for any port.
        config.listen = edge.http_addr;
        InProcessEdge { edge: Some(edge), key, keys_file: config.keys_file.clone(), config, dir, clock }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.edge().http_addr
    }

    pub fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("edge is running")
    }

    /// Records appended to the WAL so far (one per accepted request).
    pub fn appended(&self) -> u64 {
        self.edge().wal.stats().records.load(Ordering::Relaxed)
    }

    /// Stops and starts the edge on the same directories and address.
    pub async fn restart(&mut self) {
        if let Some(e) = self.edge.take() {
            e.shutdown().await;
        }
        self.edge = Some(launch(&self.config, &self.clock).await.expect("edge restarts"));
    }

    pub async fn shutdown(mut self) {
        if let Some(e) = self.edge.take() {
            e.shutdown().await;
        }
    }
}

async fn launch(config: &EdgeConfig, clock: &Clock) -> Result<Edge, sluice_edge::StartError> {
    Edge::builder(config.clone()).clock(clock.clone()).start().await
}

/// The config of an in-process edge whose files live in `dir`, and the API key of its one
/// tenant `acme`/`prod`: forwarder off, keys reloaded every 50 ms, and an HTTP port outside the
/// ephemeral range, so that no outgoing connection takes it while the edge restarts.
pub fn config_in(dir: &std::path::Path) -> (EdgeConfig, String) {
    let mut config = EdgeConfig { listen: crate::free_tcp_addr(), ..EdgeConfig::in_dir(dir) };
    let (_, key) = sluice_ops::keys::add(&config.keys_file, "acme", "prod").expect("key");
    config.forwarder.enabled = false;
    config.http.keys_reload_ms = 50;
    (config, key)
}

/// Rewrites a keys file (atomically, as `sluicectl keys` does) with `change` applied; a running
/// edge picks it up at its next reload.
pub fn edit_keys(path: &std::path::Path, change: impl FnOnce(&mut sluice_edge::ingest::auth::KeysFile)) {
    let mut file = sluice_edge::ingest::auth::read_keys_file(path).expect("keys file");
    change(&mut file);
    sluice_ops::keys::save(path, &file).expect("save keys file");
}

/// Sets a tenant's events/s quota in a keys file.
pub fn set_quota(path: &std::path::Path, tenant: &str, events_per_sec: u32) {
    edit_keys(path, |f| {
        f.tenants.entry(tenant.into()).or_default().events_per_sec = Some(events_per_sec);
    });
}
