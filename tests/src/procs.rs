//! Spawning edge and core as real OS processes, so tests can `kill -9` them.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_ops::devpki::{DevPki, write_dev_pki};

/// Per-test state: a temp dir with certificates, a keys file and one API key for tenant `acme`.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub key: String,
    pub keys_file: PathBuf,
    pub region: String,
}

impl TestEnv {
    pub fn new(test: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = write_dev_pki(&dir.path().join("pki")).expect("dev pki");
        let keys_file = dir.path().join("keys.toml");
        let (_, key) = sluice_ops::keys::add(&keys_file, "acme", "prod").expect("key");
        TestEnv { dir, pki, key, keys_file, region: crate::unique_region(test) }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn topic(&self) -> String {
        format!("events.{}", self.region)
    }

    /// Core's dead-letter topic in this test.
    pub fn dlq_topic(&self) -> String {
        format!("dlq.{}", self.region)
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.path().join("wal")
    }

    /// The WAL directory of edge `node` (`EdgeOpts::node`), or of the single edge.
    pub fn node_wal_dir(&self, node: Option<&str>) -> PathBuf {
        match node {
            Some(n) => self.path().join(format!("{n}-wal")),
            None => self.wal_dir(),
        }
    }

    /// Edge config TOML: forwarder to `core` with mutual TLS, WAL under the test dir.
    pub fn edge_config(&self, http: SocketAddr, core: SocketAddr) -> String {
        self.edge_config_with(http, core, &EdgeOpts::default())
    }

    /// Edge config TOML with the knobs of `opts` (WAL budget and place, forwarder timeouts, ...).
    pub fn edge_config_with(&self, http: SocketAddr, core: SocketAddr, opts: &EdgeOpts) -> String {
        let wal_dir = opts.wal_dir.clone().unwrap_or_else(|| self.node_wal_dir(opts.node.as_deref()));
        let (edge_id, idem) = match &opts.node {
            Some(n) => (n.as_str(), self.path().join(format!("{n}-idempotency.redb"))),
            None => ("edge-1", self.path().join("idempotency.redb")),
        };
        let mut wal = String::new();
        if let Some(b) = opts.budget_bytes {
            wal.push_str(&format!("budget_bytes = {b}\n"));
        }
        if let Some(b) = opts.segment_bytes {
            wal.push_str(&format!("segment_bytes = {b}\n"));
        }
        let mut fwd = String::new();
        if let Some(s) = opts.ack_timeout_secs {
            fwd.push_str(&format!("ack_timeout_secs = {s}\n"));
        }
        if let Some(b) = opts.frame_bytes {
            fwd.push_str(&format!("frame_bytes = {b}\n"));
        }
        let top = opts.drain_deadline_secs.map(|s| format!("drain_deadline_secs = {s}\n")).unwrap_or_default();
        format!(
            r#"{top}listen = "{http}"
edge_id = "{edge_id}"
region = "{region}"
keys_file = "{keys}"
[idempotency]
path = "{idem}"
[wal]
dir = "{wal_dir}"
{wal}[forwarder]
core_addr = "{core}"
ca_cert = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
{fwd}{extra}"#,
            region = self.region,
            keys = self.keys_file.display(),
            wal_dir = wal_dir.display(),
            idem = idem.display(),
            ca = self.pki.ca_cert.display(),
            cert = self.pki.edge_cert.display(),
            key = self.pki.edge_key.display(),
            extra = opts.extra_toml,
        )
    }

    pub fn core_config(&self, listen: SocketAddr, brokers: &str) -> String {
        self.core_config_with(listen, brokers, &[])
    }

    /// Core config TOML with extra librdkafka properties (e.g. a short `message.timeout.ms`).
    pub fn core_config_with(&self, listen: SocketAddr, brokers: &str, kafka_props: &[(&str, &str)]) -> String {
        self.core_config_in(listen, brokers, kafka_props, &self.path().join("core"))
    }

    fn core_config_in(&self, listen: SocketAddr, brokers: &str, kafka_props: &[(&str, &str)], data: &Path) -> String {
        let mut props = String::new();
        if !kafka_props.is_empty() {
            props.push_str("[sink.properties]\n");
            for (k, v) in kafka_props {
                props.push_str(&format!("\"{k}\" = \"{v}\"\n"));
            }
        }
        format!(
            r#"listen = "{listen}"
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
data_dir = "{data}"
[sink]
type = "kafka"
brokers = "{brokers}"
dlq_topic = "{dlq}"
{props}"#,
            cert = self.pki.core_cert.display(),
            key = self.pki.core_key.display(),
            ca = self.pki.ca_cert.display(),
            data = data.display(),
            dlq = self.dlq_topic(),
        )
    }

    pub fn spawn_edge(&self, http: SocketAddr, core: SocketAddr) -> Proc {
        self.spawn_edge_with(http, core, &EdgeOpts::default())
    }

    pub fn spawn_edge_with(&self, http: SocketAddr, core: SocketAddr, opts: &EdgeOpts) -> Proc {
        let name = opts.node.clone().unwrap_or_else(|| "edge".into());
        let config = self.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.edge_config_with(http, core, opts)).expect("edge config");
        let p = Proc::spawn(name, &bin_path("sluice-edge-under-test"), &config, self.path());
        wait_healthy(http, &p);
        p
    }

    pub fn spawn_core(&self, listen: SocketAddr, brokers: &str) -> Proc {
        self.spawn_core_with(listen, brokers, &[])
    }

    /// One of several core nodes: its own config, data directory (`<name>/`) and admin port.
    pub fn spawn_core_node(&self, name: &'static str, listen: SocketAddr, brokers: &str, admin: SocketAddr) -> Proc {
        let config = self.path().join(format!("{name}.toml"));
        // Top-level keys go before the config's first section.
        let text = format!(
            "admin_listen = \"{admin}\"\n{}",
            self.core_config_in(listen, brokers, &[], &self.path().join(name))
        );
        std::fs::write(&config, text).expect("core config");
        Proc::spawn(name, &bin_path("sluice-core-under-test"), &config, self.path())
    }

    pub fn spawn_core_with(&self, listen: SocketAddr, brokers: &str, kafka_props: &[(&str, &str)]) -> Proc {
        let config = self.path().join("core.toml");
        std::fs::write(&config, self.core_config_with(listen, brokers, kafka_props)).expect("core config");
        Proc::spawn("core", &bin_path("sluice-core-under-test"), &config, self.path())
    }
}

/// Edge knobs the fault tests turn; `None` keeps the edge's default.
#[derive(Debug, Clone, Default)]
pub struct EdgeOpts {
    /// Several edges in one test: this one's `edge_id`, which also names its config, log,
    /// idempotency store and default WAL directory (`<node>-wal`).
    pub node: Option<String>,
    pub wal_dir: Option<PathBuf>,
    pub budget_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub ack_timeout_secs: Option<u64>,
    pub frame_bytes: Option<usize>,
    /// Appended verbatim at the end of the config (whole TOML sections).
    pub extra_toml: String,
    pub drain_deadline_secs: Option<u64>,
}

/// Path of a binary of this package. Cargo builds a package's binaries before its integration
/// tests and puts them one directory above the test executables (`target/<profile>/deps/..`).
pub fn bin_path(name: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built; run the tests with cargo test --workspace", path.display());
    path.display().to_string()
}

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, exe: &str, config: &Path, dir: &Path) -> Proc {
        let name = name.into();
        let log = dir.join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(exe)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {exe}: {e}"));
        Proc { name, child, log }
    }

    /// `kill -9`: no shutdown hooks, no flushing.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -TERM`: the edge drains, then exits.
    pub fn terminate(&mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process logged a panic.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `HEAD /health` answers 200.
pub fn wait_healthy(http: SocketAddr, p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = crate::http::request(http, "HEAD", "/health", &[], b"")
            && r.status == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} at {http} never became healthy; log:\n{}", p.name, p.log());
}
