//! Core configuration: one TOML file, every field optional with the default documented here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// QUIC listen address. Default `127.0.0.1:7000`.
    pub listen: SocketAddr,
    /// Server certificate chain and key (PEM). Defaults `core.pem`, `core.key`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, edges must present a client certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Directory for the dedupe index. Default `data/core`.
    pub data_dir: PathBuf,
    /// How long a delivered batch ID is remembered. Default 48 hours.
    pub dedupe_ttl_hours: u64,
    /// Admin HTTP listen address serving `GET /metrics` (Prometheus text); unset (the default)
    /// disables it. Keep it on a private interface.
    pub admin_listen: Option<SocketAddr>,
    pub sink: SinkConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            cert: PathBuf::from("core.pem"),
            key: PathBuf::from("core.key"),
            client_ca: None,
            data_dir: PathBuf::from("data/core"),
            dedupe_ttl_hours: 48,
            admin_listen: None,
            sink: SinkConfig::default(),
        }
    }
}

/// Where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// fsync'd NDJSON files, for trying Sluice without a broker.
    File {
        /// Default `data/core/sink`.
        dir: PathBuf,
    },
    Kafka(KafkaConfig),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::File { dir: PathBuf::from("data/core/sink") }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Events go to `<topic_prefix><region>`, those of tenants an edge routes to the overflow lane
    /// to `<topic_prefix><region>.overflow`. Default `events.`.
    pub topic_prefix: String,
    /// Dead-letter topic. Default `events.dlq`.
    pub dlq_topic: String,
    /// Extra librdkafka properties (e.g. security settings). `acks` and `enable.idempotence` are
    /// fixed and cannot be overridden. `client.id` defaults to `sluice-core`; a producer that
    /// replaced a stuck one gets `-<generation>` appended.
    pub properties: BTreeMap<String, String>,
    /// A producer whose frames fail (at least two) with not one delivery for this long is
    /// replaced by a new one, without a restart. Default 30 000 (the default
    /// `message.timeout.ms`): a producer wedged by lost broker-side state recovers within about
    /// two message timeouts. A fatal error, or two frames failing with producer-state errors
    /// (`UNKNOWN_PRODUCER_ID`, `OUT_OF_ORDER_SEQUENCE_NUMBER`, …), replaces it at once.
    /// Replacements back off from 5 s, doubling to 5 min until a delivery succeeds.
    pub producer_stall_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "events.".into(),
            dlq_topic: "events.dlq".into(),
            properties: BTreeMap::new(),
            producer_stall_ms: 30_000,
        }
    }
}
