//! Edge configuration: one TOML file, every field optional with the default documented here.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Stable identity of this edge; names its WAL position at core. Default `edge-1`.
    pub edge_id: String,
    /// Region stamped on every event and used for the Kafka topic `events.<region>`. Default `local`.
    pub region: String,
    /// API keys file (see `sluicectl keys`). Default `keys.toml`.
    pub keys_file: PathBuf,
    pub limits: LimitsConfig,
    pub wal: WalConfig,
    pub forwarder: ForwarderConfig,
    pub server: ServerConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            edge_id: "edge-1".into(),
            region: "local".into(),
            keys_file: PathBuf::from("keys.toml"),
            limits: LimitsConfig::default(),
            wal: WalConfig::default(),
            forwarder: ForwarderConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

/// HTTP connection deadlines, so slow clients (slowloris) cannot pin connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// A connection must deliver a complete request head within this many milliseconds of
    /// opening (and of each later request starting), or it is closed. Default 10000.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive in full within this many milliseconds after its head, or the
    /// request is answered `408`. Default 30000.
    pub body_read_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { header_read_timeout_ms: 10_000, body_read_timeout_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most events in one request. Default 500.
    pub max_events: usize,
    /// Most bytes in one request body, counted after decompression. Default 524288 (512 KiB).
    pub max_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_events: 500, max_body_bytes: 512 * 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Directory of segment files and the ack watermark. Default `data/wal`.
    pub dir: PathBuf,
    /// A segment is rotated once it reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Unforwarded bytes the WAL may hold; past it the edge answers 503. Default 8 GiB.
    pub budget_bytes: u64,
    /// Most bytes one group commit writes before its fdatasync. Default 8 MiB.
    pub max_group_bytes: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/wal"),
            segment_bytes: 64 * 1024 * 1024,
            budget_bytes: 8 * 1024 * 1024 * 1024,
            max_group_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwarderConfig {
    /// Forward the WAL to core. `false` keeps everything in the WAL (benchmarks, maintenance).
    /// Default `true`.
    pub enabled: bool,
    /// Core's QUIC address. Default `127.0.0.1:7000`.
    pub core_addr: SocketAddr,
    /// Name in core's certificate. Default `localhost`.
    pub server_name: String,
    /// CA certificate (PEM) that signed core's certificate. Required when enabled.
    pub ca_cert: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Target uncompressed frame size. Default 1 MiB.
    pub frame_bytes: usize,
    /// zstd level for frames. Default 3.
    pub zstd_level: i32,
    /// Seconds to wait for core's ack before resending. Default 30.
    pub ack_timeout_secs: u64,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            core_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            server_name: "localhost".into(),
            ca_cert: PathBuf::from("ca.pem"),
            client_cert: None,
            client_key: None,
            frame_bytes: 1024 * 1024,
            zstd_level: 3,
            ack_timeout_secs: 30,
        }
    }
}
