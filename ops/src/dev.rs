//! `sluicectl dev`: core and edge in one process on loopback, with throwaway certificates, a fresh
//! API key and the embedded file sink (or a mock / real Kafka cluster).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sluice_core::config::{CoreConfig, KafkaConfig, SinkConfig};
use sluice_edge::config::{EdgeConfig, PeerConfig};

use crate::devpki::write_dev_pki;

/// The region `dev` stamps on events; events go to topic `events.dev`.
pub const DEV_REGION: &str = "dev";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaChoice {
    /// Embedded NDJSON file sink.
    None,
    /// librdkafka's in-process mock cluster.
    Mock,
    /// A real broker list.
    Brokers(String),
}

impl std::str::FromStr for KafkaChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "none" | "file" => KafkaChoice::None,
            "mock" => KafkaChoice::Mock,
            brokers => KafkaChoice::Brokers(brokers.to_string()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub kafka: KafkaChoice,
    /// Edges in the POP. With more than one, each replicates every group to the others
    /// (`factor` 2, `require`): edge `i` serves HTTP on `http` port + i and replicas on `quic`
    /// port + 1 + i, with its own WAL under `<dir>/edge-<i>/`.
    pub edges: usize,
    /// Core's metrics port; edge `i` serves its admin API (metrics, status, drain) on this port
    /// + 1 + i. `None`: no admin ports.
    pub admin: Option<SocketAddr>,
}

pub struct DevPipeline {
    /// The first edge (HTTP on `DevOptions::http`).
    pub edge: sluice_edge::Edge,
    /// The other edges of the POP, when `DevOptions::edges` > 1.
    pub peers: Vec<sluice_edge::Edge>,
    pub core: sluice_core::Core,
    pub api_key: String,
    /// The edges' admin token (`Authorization: Bearer`), when they have admin ports.
    pub admin_token: Option<String>,
    /// Where the file sink writes, when it is used.
    pub sink_dir: Option<PathBuf>,
    /// Bootstrap servers of the Kafka sink, when it is used.
    pub brokers: Option<String>,
    pub topic: String,
    /// Kept alive for as long as the pipeline runs.
    pub mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

pub async fn start(opts: &DevOptions) -> anyhow::Result<DevPipeline> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = write_dev_pki(&dir.join("pki")).context("generating dev certificates")?;
    let mut edge_config = EdgeConfig { listen: opts.http, region: DEV_REGION.into(), ..EdgeConfig::in_dir(dir) };
    let _ = std::fs::remove_file(&edge_config.keys_file);
    let (_, api_key) = crate::keys::add(&edge_config.keys_file, "dev", "development")?;
    let topic = format!("events.{DEV_REGION}");

    let (sink, sink_dir, brokers, mock) = match &opts.kafka {
        KafkaChoice::None => {
            let d = dir.join("sink");
            (SinkConfig::File { dir: d.clone() }, Some(d), None, None)
        }
        KafkaChoice::Mock => {
            let mock = MockCluster::new(3).context("starting the mock Kafka cluster")?;
            mock.create_topic(&topic, 3, 3).context("creating topic")?;
            mock.create_topic("events.dlq", 1, 3).context("creating DLQ topic")?;
            let b = mock.bootstrap_servers();
            (kafka_sink(&b), None, Some(b), Some(mock))
        }
        KafkaChoice::Brokers(b) => (kafka_sink(b), None, Some(b.clone()), None),
    };
    let core = sluice_core::start(CoreConfig {
        listen: opts.quic,
        cert: pki.core_cert.clone(),
        key: pki.core_key.clone(),
        client_ca: Some(pki.ca_cert.clone()),
        data_dir: dir.join("core"),
        sink,
        admin_listen: opts.admin,
        ..CoreConfig::default()
    })
    .await
    .context("starting core")?;
    edge_config.forwarder.core_addr = core.addr;
    edge_config.forwarder.ca_cert = pki.ca_cert.clone();
    edge_config.forwarder.client_cert = Some(pki.edge_cert.clone());
    edge_config.forwarder.client_key = Some(pki.edge_key.clone());
    // A fresh token each run, like the API key: the admin routes can drain or block tenants.
    let admin_token = opts.admin.map(|_| uuid::Uuid::new_v4().simple().to_string());
    edge_config.admin.token = admin_token.clone();
    let mut edges = Vec::new();
    for (i, mut config) in pop_configs(&edge_config, opts.edges, opts.quic, dir)?.into_iter().enumerate() {
        if let Some(admin) = opts.admin {
            config.admin.listen = Some(offset(admin, 1 + i)?);
        }
        let id = config.edge_id.clone();
        edges.push(sluice_edge::Edge::builder(config).start().await.with_context(|| format!("starting {id}"))?);
    }
    let edge = edges.remove(0);
    Ok(DevPipeline { edge, peers: edges, core, api_key, admin_token, sink_dir, brokers, topic, mock })
}

/// `addr` with its port moved up by `by`.
fn offset(addr: SocketAddr, by: usize) -> anyhow::Result<SocketAddr> {
    let port = u16::try_from(usize::from(addr.port()) + by).context("port out of range")?;
    Ok(SocketAddr::new(addr.ip(), port))
}

/// One edge config per POP member: `edge-<i>` with its own HTTP port, WAL and idempotency store,
/// replicating to every other member. One edge keeps `base` as it is (no replication).
pub fn pop_configs(base: &EdgeConfig, edges: usize, quic: SocketAddr, dir: &Path) -> anyhow::Result<Vec<EdgeConfig>> {
    if edges <= 1 {
        return Ok(vec![base.clone()]);
    }
    let repl = (0..edges).map(|i| offset(quic, 1 + i)).collect::<anyhow::Result<Vec<_>>>()?;
    (0..edges)
        .map(|i| {
            let mut c = base.clone();
            c.edge_id = format!("edge-{i}");
            c.listen = offset(base.listen, i)?;
            c.keep_state_in(&dir.join(&c.edge_id));
            c.replication.listen = Some(repl[i]);
            c.replication.peers = (0..edges)
                .filter(|&j| j != i)
                .map(|j| PeerConfig { id: format!("edge-{j}"), addr: repl[j].into() })
                .collect();
            Ok(c)
        })
        .collect()
}

fn kafka_sink(brokers: &str) -> SinkConfig {
    SinkConfig::Kafka(KafkaConfig { brokers: brokers.to_string(), ..KafkaConfig::default() })
}

impl DevPipeline {
    /// What `sluicectl dev` prints once the pipeline is up: every address a user needs.
    pub fn summary(&self) -> String {
        let mut out = String::from("Sluice dev pipeline is up.\n");
        for (i, edge) in std::iter::once(&self.edge).chain(&self.peers).enumerate() {
            out.push_str(&format!("  edge HTTP    : http://{}", edge.http_addr));
            if let Some(replicas) = edge.replication_addr {
                out.push_str(&format!(" (replicas on {replicas})"));
            }
            out.push('\n');
            if let Some(admin) = edge.admin_addr {
                out.push_str(&format!("  edge admin   : http://{admin}/metrics, /status (edge {i})\n"));
            }
        }
        out.push_str(&format!("  core QUIC    : {}\n", self.core.addr));
        if let Some(admin) = self.core.admin_addr {
            out.push_str(&format!("  core metrics : http://{admin}/metrics\n"));
        }
        out.push_str(&format!("  API key      : {}\n", self.api_key));
        if let Some(token) = &self.admin_token {
            out.push_str(&format!("  admin token  : {token} (Authorization: Bearer, for /status, /drain, ...)\n"));
        }
        match (&self.sink_dir, &self.brokers) {
            (Some(d), _) => out.push_str(&format!("  sink         : {}\n", events_file(d).display())),
            (None, Some(b)) => out.push_str(&format!("  sink         : Kafka {b}, topic {}\n", self.topic)),
            (None, None) => {}
        }
        out
    }

    pub fn curl_line(&self) -> String {
        format!(
            "curl -i -X POST http://{}/v1/events -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \
             -d '[{{\"event\":\"signup\",\"distinct_id\":\"user-1\",\"properties\":{{\"plan\":\"pro\"}}}}]'",
            self.edge.http_addr, self.api_key
        )
    }

    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        for e in self.peers {
            e.shutdown().await;
        }
        self.core.shutdown().await;
    }
}

/// The sink file events land in with the file sink.
pub fn events_file(sink_dir: &Path) -> PathBuf {
    sink_dir.join(sluice_core::sink::EVENTS_FILE_NAME)
}
