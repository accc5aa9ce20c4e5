//! Edge configuration: one TOML file, every field optional with the default documented here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client_ip::{Cidr, ForwardedHeader};
use crate::routing::{CoreNode, Rendezvous};

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
    /// How long a drain (SIGTERM, `POST /drain`) may take forwarding the WAL before the process
    /// exits anyway, seconds; what is left stays in the WAL. Keep it below the orchestrator's
    /// kill grace period. Default 60.
    pub drain_deadline_secs: u64,
    pub limits: LimitsConfig,
    pub validation: ValidationConfig,
    pub http: HttpConfig,
    pub idempotency: IdempotencyConfig,
    pub pii: PiiConfig,
    pub wal: WalConfig,
    pub forwarder: ForwarderConfig,
    pub admin: AdminConfig,
    pub replication: ReplicationConfig,
    pub admission: AdmissionConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            edge_id: "edge-1".into(),
            region: "local".into(),
            keys_file: PathBuf::from("keys.toml"),
            drain_deadline_secs: 60,
            limits: LimitsConfig::default(),
            validation: ValidationConfig::default(),
            http: HttpConfig::default(),
            idempotency: IdempotencyConfig::default(),
            pii: PiiConfig::default(),
            wal: WalConfig::default(),
            forwarder: ForwarderConfig::default(),
            admin: AdminConfig::default(),
            replication: ReplicationConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

impl EdgeConfig {
    /// The defaults with every file the edge keeps in `dir`: `keys.toml` and, as
    /// [`EdgeConfig::keep_state_in`] places them, the WAL and the idempotency store. The layout of
    /// the edges `sluicectl dev` and `bench` and the tests run.
    pub fn in_dir(dir: &Path) -> Self {
        let mut config = Self { keys_file: dir.join("keys.toml"), ..Self::default() };
        config.keep_state_in(dir);
        config
    }

    /// The WAL in `dir/wal`, the idempotency store in `dir/idempotency.redb`.
    pub fn keep_state_in(&mut self, dir: &Path) {
        self.wal.dir = dir.join("wal");
        self.idempotency.path = dir.join("idempotency.redb");
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most events in one request. Default 500.
    pub max_events: usize,
    /// Most bytes in one request body, counted after decompression. Default 524288 (512 KiB).
    pub max_body_bytes: usize,
    /// Most bytes of one event's JSON; larger events are rejected individually. Default 32768.
    pub max_event_bytes: usize,
    /// `POST /v1/events:debug` requests per second per API key (burst 3×). Default 2.
    pub debug_requests_per_sec: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_events: 500, max_body_bytes: 512 * 1024, max_event_bytes: 32 * 1024, debug_requests_per_sec: 2 }
    }
}

/// What to do with an event whose timestamp is further in the future than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuturePolicy {
    /// Accept it with `timestamp = received_at`, keeping the original as `client_timestamp`.
    Clamp,
    /// Reject the event (`timestamp_out_of_range`).
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Events with a timestamp older than this many seconds before receipt are rejected.
    /// Default 2592000 (30 days).
    pub max_past_secs: u64,
    /// Timestamps more than this many seconds after receipt are clamped or rejected. Default 3600.
    pub max_future_secs: u64,
    /// Default `clamp`.
    pub future_policy: FuturePolicy,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self { max_past_secs: 30 * 86_400, max_future_secs: 3_600, future_policy: FuturePolicy::Clamp }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 via ALPN) with this certificate chain and key (PEM).
    /// Both or neither; default plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A client must send each request head within this many milliseconds of its connection going
    /// idle (opened, or its last response ready), on HTTP/1.1 and HTTP/2; an idle connection is
    /// closed then. Default 10000.
    pub header_timeout_ms: u64,
    /// A client must send its whole body within this many milliseconds. Default 30000.
    pub body_timeout_ms: u64,
    /// Accept the API key as `?api_key=` (for `navigator.sendBeacon`, which cannot set headers).
    /// URLs end up in proxy logs, so this can be turned off. Default `true`.
    pub allow_query_key: bool,
    /// Allowed clock skew for `X-Signature` timestamps, seconds. Default 300.
    pub signature_skew_secs: u64,
    /// How often the keys file is checked for changes, milliseconds. Default 500, so a kill
    /// switch or quota change in the file takes effect within a second.
    pub keys_reload_ms: u64,
    /// Load balancers and proxies (CIDRs, e.g. `["10.0.0.0/8", "::1/128"]`) whose forwarding
    /// header is believed for the client address of per-IP limits and request logs. A request
    /// whose TCP peer is inside one of them is attributed to the rightmost address of
    /// `client_ip_header` that is not itself inside one; an entry that is not an address
    /// (`unknown`, `_hidden`, garbage) stops the walk at the proxy that wrote it. Default empty:
    /// the headers are ignored and the TCP peer is the client, so a client connecting directly
    /// can never choose its address. An invalid CIDR fails config loading.
    pub trusted_proxies: Vec<Cidr>,
    /// The header the trusted proxies write: `x-forwarded-for` (the default) or `forwarded`
    /// (RFC 7239 `for=`). Only this one is read: the other passes through the proxy untouched,
    /// as the client sent it.
    pub client_ip_header: ForwardedHeader,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            allow_query_key: true,
            signature_skew_secs: 300,
            keys_reload_ms: 500,
            trusted_proxies: Vec::new(),
            client_ip_header: ForwardedHeader::XForwardedFor,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The edge's redb state store: remembered responses, accepted signatures, and the tenant
    /// controls (blocks, overflow routes) set through the admin API. Keep it on a persistent
    /// volume. Default `data/idempotency.redb`.
    pub path: PathBuf,
    /// How long a key is remembered, seconds. Default 86400 (24 h).
    pub ttl_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("data/idempotency.redb"), ttl_secs: 86_400 }
    }
}

/// PII policy: a default for every tenant plus per-tenant overrides (an override replaces the
/// default entirely).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    pub default: PiiPolicy,
    pub tenants: std::collections::BTreeMap<String, PiiPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiPolicy {
    /// Field paths that must not be present, e.g. `properties.email`, `context.ip`.
    pub disallowed_fields: Vec<String>,
    /// Value detectors applied to every string in `properties` and `context`.
    pub detectors: Vec<PiiDetector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiDetector {
    /// Something shaped like an e-mail address.
    Email,
    /// 13-19 digits (spaces or dashes allowed between) that pass the Luhn check.
    CardNumber,
}

impl PiiConfig {
    pub fn policy_for(&self, tenant: &str) -> &PiiPolicy {
        self.tenants.get(tenant).unwrap_or(&self.default)
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
    /// zstd level each request's events are compressed at before they are written (record
    /// version 5): the WAL, the replicas and the frames to core then carry a third or less of the
    /// bytes, compressed once. `0` writes records uncompressed (versions 3 and 4), for a core
    /// older than version 5 records; such a core answers `Retry` to compressed frames, so the
    /// WAL holds them until core is upgraded. Default 1.
    pub zstd_level: i32,
    /// How the next segment is made before the writer needs it. Default `background`.
    pub preallocate: Preallocate,
}

/// Segments written ahead as zeros of their full size (`wal/prealloc.rs`): a group commit's
/// `fdatasync` into such a file writes only data, where appending to a growing file makes every
/// `fdatasync` also write the inode (its size changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preallocate {
    /// A thread prepares the next segment while the writer fills the current one; a rotation
    /// that finds none ready starts a growing file and does not wait.
    Background,
    /// The writer prepares each segment itself when it rotates (the rotation waits for the
    /// zeros); the order of file operations is then fixed, which the crash sweep needs.
    Inline,
    /// Segments start empty and grow with each append (before this setting existed).
    Off,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/wal"),
            segment_bytes: 64 * 1024 * 1024,
            budget_bytes: 8 * 1024 * 1024 * 1024,
            max_group_bytes: 8 * 1024 * 1024,
            zstd_level: 1,
            preallocate: Preallocate::Background,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwarderConfig {
    /// Forward the WAL to core. `false` keeps everything in the WAL (benchmarks, maintenance).
    /// Default `true`.
    pub enabled: bool,
    /// Core's QUIC address when there is one core node. Default `127.0.0.1:7000`.
    pub core_addr: SocketAddr,
    /// Several core nodes: each tenant goes to one of them by rendezvous hashing on the node ids,
    /// and to its next choice while that node is down. Default empty: `core_addr` alone.
    pub core_nodes: Vec<CoreNode>,
    /// Seconds a core node that failed is skipped before it is tried again. Default 5.
    pub node_retry_secs: u64,
    /// Name in core's certificate. Default `localhost`.
    pub server_name: String,
    /// CA certificate (PEM) that signed core's certificate. Required when enabled.
    pub ca_cert: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Target uncompressed frame size. Default 1 MiB.
    pub frame_bytes: usize,
    /// zstd level for frames of uncompressed records (`wal.zstd_level = 0`, or a WAL written
    /// before compression); frames of compressed records are sent as they are. Default 3.
    pub zstd_level: i32,
    /// Seconds to wait for core's ack before resending. Default 30.
    pub ack_timeout_secs: u64,
    /// Frames on the wire at once, awaiting core's ack. Default 4.
    pub max_in_flight: usize,
    /// Milliseconds a caught-up forwarder waits after new data is committed before it reads a
    /// frame, so a frame carries several group commits: a frame's cost (a QUIC stream, core's
    /// ack, a watermark write) is mostly fixed. Adds at most this much to end-to-end freshness;
    /// the `202` does not wait for it. `0` reads at once. Default 10.
    pub linger_ms: u64,
}

impl ForwarderConfig {
    /// The core nodes to route between: `core_nodes`, or `core_addr` alone.
    pub fn routing(&self) -> Rendezvous {
        if self.core_nodes.is_empty() {
            Rendezvous::new(vec![CoreNode { id: "core".into(), addr: self.core_addr }])
        } else {
            Rendezvous::new(self.core_nodes.clone())
        }
    }
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            core_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            core_nodes: Vec::new(),
            node_retry_secs: 5,
            server_name: "localhost".into(),
            ca_cert: PathBuf::from("ca.pem"),
            client_cert: None,
            client_key: None,
            frame_bytes: 1024 * 1024,
            zstd_level: 3,
            ack_timeout_secs: 30,
            max_in_flight: 4,
            linger_ms: 10,
        }
    }
}

/// The admin API (metrics, status, operator actions) on a separate port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; unset (the default) disables the admin API. Keep it on a private interface.
    pub listen: Option<SocketAddr>,
    /// Bearer token for every admin route except `GET /metrics`; unset refuses them (`403`).
    /// Overridable by `SLUICE_EDGE_ADMIN_TOKEN`.
    pub token: Option<String>,
}

/// Replication of the WAL to peer edges of the same POP (see ARCHITECTURE.md, "Replication").
/// With no `peers` (the default) the edge replicates nothing and a `202` means the local WAL only.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// QUIC address where this edge stores its peers' replicas; unset (the default) serves none.
    pub listen: Option<SocketAddr>,
    /// The edges this one replicates to: every group commit goes to each of them. Default none.
    pub peers: Vec<PeerConfig>,
    /// Copies a `202` needs, counting the local one: `factor - 1` peers must have fdatasync'd the
    /// group. Must not exceed `peers.len() + 1`. Default 2.
    pub factor: usize,
    /// What to do when fewer than `factor - 1` peers acknowledge a group. Default `require`.
    pub mode: DegradedMode,
    /// Milliseconds to wait for the peers' acks of one group. Default 1000.
    pub ack_timeout_ms: u64,
    /// Seconds a replica waits without hearing from an origin before it forwards the origin's
    /// unacknowledged records to core itself. Default 10.
    pub lease_secs: u64,
    /// Disk bytes this edge's copies of all its peers' WALs may take, apart from its own WAL's
    /// `wal.budget_bytes`. An append past it is refused (the origin counts the peer as not
    /// acking: `503 replica_unavailable` in `require` mode) until the origins' watermarks trim
    /// the copies. Default 8 GiB.
    pub replica_budget_bytes: u64,
    /// Name every peer's certificate must carry (one name shared by the POP). Unset (the
    /// default): a peer given by DNS name must present a certificate for that name, which proves
    /// the connection reached that very peer and not whichever pod holds its old IP now; a peer
    /// given by IP address must present one for `localhost` (the name earlier versions used).
    pub server_name: Option<String>,
    /// CA (PEM) of the peers' certificates. Default: `forwarder.ca_cert`.
    pub ca_cert: Option<PathBuf>,
    /// This edge's certificate and key (PEM), presented as server and as client to peers (needs
    /// both server and client auth usages). Default: `forwarder.client_cert` / `client_key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            listen: None,
            peers: Vec::new(),
            factor: 2,
            mode: DegradedMode::Require,
            ack_timeout_ms: 1_000,
            lease_secs: 10,
            replica_budget_bytes: 8 * 1024 * 1024 * 1024,
            server_name: None,
            ca_cert: None,
            cert: None,
            key: None,
        }
    }
}

impl ReplicationConfig {
    /// The peers `edge_id` replicates to: the list without the edge itself, so that every edge
    /// of a POP can share one config that names all of them (one Kubernetes ConfigMap).
    pub fn peers_of(&self, edge_id: &str) -> Vec<PeerConfig> {
        self.peers.iter().filter(|p| p.id != edge_id).cloned().collect()
    }

    /// The name `peer`'s certificate is verified against (see [`ReplicationConfig::server_name`]).
    pub fn server_name_for(&self, peer: &PeerAddr) -> String {
        match (&self.server_name, peer) {
            (Some(name), _) => name.clone(),
            (None, PeerAddr::Name { host, .. }) => host.clone(),
            (None, PeerAddr::Ip(_)) => "localhost".into(),
        }
    }
}

/// A peer edge of the POP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `edge_id`. An entry with this edge's own `edge_id` is skipped.
    pub id: String,
    /// The peer's `replication.listen` address: `ip:port`, `[ipv6]:port` or `host:port`. A host
    /// name is resolved again on every connection attempt, so a peer whose address changed (a
    /// rescheduled pod) is found again; one that does not resolve is retried like any
    /// unreachable peer.
    pub addr: PeerAddr,
}

/// Where a peer listens: an IP literal, or a DNS name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PeerAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAddrError {
    #[error("peer address {0:?} needs a port: host:port, ip:port or [ipv6]:port")]
    MissingPort(String),
    #[error("peer address {0:?}: port must be 1-65535")]
    BadPort(String),
    #[error("peer address {0:?}: an IPv6 address needs brackets, as in [::1]:7001")]
    UnbracketedIpv6(String),
    #[error("peer address {0:?}: {1:?} is neither an IP address nor a valid DNS name")]
    BadHost(String, String),
}

impl PeerAddr {
    /// Parses `ip:port`, `[ipv6]:port` or `host:port` (the form of `replication.peers[].addr`).
    pub fn parse(s: &str) -> Result<Self, PeerAddrError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let bracketed_without_port = s.starts_with('[') && s.ends_with(']');
        let Some((host, port)) = s.rsplit_once(':').filter(|_| !bracketed_without_port) else {
            return Err(PeerAddrError::MissingPort(s.into()));
        };
        if host.contains(':') {
            // `[v6]:port` that failed to parse, or a bare `::1` / `::1:7001`, where the port
            // cannot be told apart from the address.
            return Err(if host.starts_with('[') {
                PeerAddrError::BadHost(s.into(), host.into())
            } else {
                PeerAddrError::UnbracketedIpv6(s.into())
            });
        }
        if port.is_empty() {
            return Err(PeerAddrError::MissingPort(s.into()));
        }
        let port = port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| PeerAddrError::BadPort(s.into()))?;
        // An IP that is not a socket address (`1.2.3.4:x` was caught above), or a name that
        // could not go into TLS as the server name to verify.
        if host.parse::<std::net::IpAddr>().is_err() && rustls_pki_types::DnsName::try_from(host).is_ok() {
            Ok(Self::Name { host: host.to_string(), port })
        } else {
            Err(PeerAddrError::BadHost(s.into(), host.into()))
        }
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = PeerAddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(addr) => addr.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Ip(addr)
    }
}

/// Behaviour when a group cannot get the replica acks it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradedMode {
    /// Refuse: the request gets `503 replica_unavailable` with `Retry-After`, never a `202`.
    Require,
    /// Accept with the local fdatasync only, counted in `sluice_edge_replication_degraded_seconds_total`
    /// and logged as a warning.
    AllowLocal,
}

/// Admission control: rate limits, WAL-pressure shedding and the in-flight caps. Per-tenant
/// quotas and the kill switch live in the keys file (hot-reloaded); these are the edge-wide
/// defaults and thresholds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Events per second one tenant may send to this edge unless its `[tenants.<name>]` entry in
    /// the keys file sets `events_per_sec`; burst 3×. `0` means unlimited. Default 100000.
    pub tenant_events_per_sec: u32,
    /// Requests per second per client IP address, burst 3×. `0` (the default) turns it off.
    /// The address is the TCP peer's, or behind a load balancer the one it forwards when the
    /// balancer is listed in `http.trusted_proxies` (else every request would share the
    /// balancer's address).
    pub ip_requests_per_sec: u32,
    /// Fraction of `wal.budget_bytes` above which tenants sending more than their share of the
    /// recent WAL intake are shed with `429`. Default 0.8; values below 0.5 count as 0.5 (the WAL
    /// frees space a segment, up to a quarter of the budget, at a time).
    pub wal_high_water: f64,
    /// `Retry-After` of a shed (`429 shed`) or overload (`503 overloaded`) answer, seconds.
    /// Default 2.
    pub retry_after_secs: u64,
    /// Requests handled at once; more are answered `503 overloaded` at once. Default 1024.
    pub max_in_flight_requests: usize,
    /// Request memory held at once, bytes (each request reserves its `Content-Length` (or
    /// `limits.max_body_bytes` if unknown) plus `limits.max_body_bytes` for the decoded copy).
    /// More are answered `503 overloaded`. Default 268435456 (256 MiB).
    pub max_in_flight_bytes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            tenant_events_per_sec: 100_000,
            ip_requests_per_sec: 0,
            wal_high_water: 0.8,
            retry_after_secs: 2,
            max_in_flight_requests: 1024,
            max_in_flight_bytes: 256 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_in_a_dir_keeps_all_its_files_there() {
        let dir = Path::new("/srv/edge-3");
        let config = EdgeConfig::in_dir(dir);
        assert_eq!(config.keys_file, dir.join("keys.toml"));
        assert_eq!(config.wal.dir, dir.join("wal"));
        assert_eq!(config.idempotency.path, dir.join("idempotency.redb"));
    }

    fn name(host: &str, port: u16) -> PeerAddr {
        PeerAddr::Name { host: host.into(), port }
    }

    #[test]
    fn peer_addr_accepts_ips_and_dns_names() {
        let ok = [
            ("10.0.1.12:7100", PeerAddr::Ip("10.0.1.12:7100".parse().unwrap())),
            ("[::1]:7001", PeerAddr::Ip("[::1]:7001".parse().unwrap())),
            ("[2001:db8::5]:7001", PeerAddr::Ip("[2001:db8::5]:7001".parse().unwrap())),
            ("localhost:7001", name("localhost", 7001)),
            ("edge-1.edge.sluice.svc:7001", name("edge-1.edge.sluice.svc", 7001)),
            (
                "sluice-edge-0.sluice-edge-peers.sluice.svc:7001",
                name("sluice-edge-0.sluice-edge-peers.sluice.svc", 7001),
            ),
            ("EDGE-2.Example.COM:65535", name("EDGE-2.Example.COM", 65535)),
        ];
        for (text, want) in ok {
            let got = PeerAddr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text, "displays as written");
        }
    }

    /// An address and the error variant it must produce (each variant carries the text).
    type BadAddr = (&'static str, fn(String) -> PeerAddrError);

    #[test]
    fn peer_addr_rejects_missing_ports_and_bad_hosts() {
        use PeerAddrError::*;
        let bad: [BadAddr; 9] = [
            ("edge-1.edge.sluice.svc", MissingPort),
            ("edge-1:", MissingPort),
            ("10.0.1.12", MissingPort),
            ("[::1]", MissingPort),
            ("edge-1:0", BadPort),
            ("edge-1:70000", BadPort),
            ("edge-1:http", BadPort),
            ("::1:7001", UnbracketedIpv6),
            ("::1", UnbracketedIpv6),
        ];
        for (text, want) in bad {
            assert_eq!(PeerAddr::parse(text), Err(want(text.into())), "{text}");
        }
        for text in [":7001", "edge 1:7001", "edge_/1:7001", "999.1.2.3:7001", "[edge-1]:7001", "-edge:7001"] {
            assert!(matches!(PeerAddr::parse(text), Err(BadHost(..))), "{text}: {:?}", PeerAddr::parse(text));
        }
    }

    #[test]
    fn peers_parse_from_toml_and_skip_the_edge_itself() {
        let config: EdgeConfig = toml::from_str(
            r#"
            [replication]
            [[replication.peers]]
            id = "edge-0"
            addr = "edge-0.pop.svc:7001"
            [[replication.peers]]
            id = "edge-1"
            addr = "10.0.0.2:7001"
            "#,
        )
        .unwrap();
        let r = &config.replication;
        let ids: Vec<_> = r.peers_of("edge-0").into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["edge-1"]);
        assert_eq!(r.peers_of("edge-9").len(), 2, "an edge not in the list replicates to all of it");
        // Without a configured name, a named peer is verified against its own name.
        assert_eq!(r.server_name_for(&r.peers[0].addr), "edge-0.pop.svc");
        assert_eq!(r.server_name_for(&r.peers[1].addr), "localhost");
        let shared = ReplicationConfig { server_name: Some("pop.example".into()), ..r.clone() };
        assert_eq!(shared.server_name_for(&r.peers[0].addr), "pop.example");

        let err = toml::from_str::<EdgeConfig>("[[replication.peers]]\nid = \"x\"\naddr = \"edge-0.pop.svc\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a port"), "{err}");
    }

    #[test]
    fn trusted_proxies_parse_and_default_to_none() {
        assert!(EdgeConfig::default().http.trusted_proxies.is_empty());
        let c: EdgeConfig = toml::from_str(
            "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\nclient_ip_header = \"forwarded\"\n",
        )
        .expect("config");
        let shown: Vec<String> = c.http.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
        assert_eq!(c.http.client_ip_header, ForwardedHeader::Forwarded);
    }

    #[test]
    fn an_invalid_trusted_proxy_fails_loading_with_its_text() {
        for (bad, says) in [
            ("10.0.0.0/33", "prefix length 33 is over 32"),
            ("10.0.0.0/x", "not an IP address or CIDR"),
            ("10.1.0.0/8", "did you mean \"10.0.0.0/8\""),
        ] {
            let text = format!("[http]\ntrusted_proxies = [\"{bad}\"]\n");
            let e = toml::from_str::<EdgeConfig>(&text).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains(says) && e.contains("trusted_proxies"), "{e}");
        }
    }
}
