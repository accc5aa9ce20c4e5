//! The forwarder: tails the WAL, ships zstd frames to core over QUIC, and advances the durable
//! ack watermark only when core answers `Stored` (DESIGN rule 5: resend from the last *acked*
//! position, never the last sent one).
//!
//! Up to `max_in_flight` frames are on the wire at once (one QUIC stream each), so forwarding is
//! not bound by one core round trip per frame. Acks are applied in WAL order; any failure drops
//! the whole window and resends from the acked position, and core's dedupe index drops the
//! frames it had already stored.
//!
//! With several core nodes, each record goes to its tenant's node (`routing`): a frame's records
//! are split into one sub-frame per node, sent concurrently, and the frame counts as acked only
//! when every sub-frame is. A node that fails is skipped for `node_retry_secs`, so its tenants
//! move to their next choice on the resend (core dedupes per node, so a batch whose first copy
//! reached the failed node may be produced twice: a bounded duplicate, never a loss).
//!
//! A circuit breaker ([`sluice_wire::breaker`]) guards the link: a failed send opens it for an
//! exponential backoff with jitter, then one frame goes out alone as a probe (window of 1) and
//! its ack closes the breaker again. Its state is in [`LinkHealth`] for metrics and readiness.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;

use sluice_wire::breaker::{Breaker, BreakerState};
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use sluice_wire::{frame, record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ForwarderConfig;
pub use crate::forwarder_control::{ForwarderControl, ForwarderState};
use crate::metrics::ForwarderMetrics;
use crate::routing::Rendezvous;
use crate::wal::{Position, ReadOutcome, WalReader};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to core: {0}")]
    Connect(String),
    #[error("QUIC stream: {0}")]
    Stream(String),
    #[error("core did not ack within {0:?}")]
    Timeout(Duration),
    #[error("core asked to retry: {0}")]
    Retry(String),
    #[error("core rejected the frame: {0}")]
    Rejected(String),
    #[error("encoding: {0}")]
    Encode(String),
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The forwarder's view of its link to core, shared with metrics and readiness.
#[derive(Debug, Default)]
pub struct LinkHealth {
    state: AtomicU8,
    opens: AtomicU64,
}

impl LinkHealth {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// How many times the breaker opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn record_failure_for_test(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }
}

enum Step {
    Continue,
    Stop,
}

/// What the forwarder waits for, oldest first. Acks are applied strictly in this order, so the
/// watermark only ever covers a contiguous prefix of the WAL, whatever order core answers in.
enum Pending {
    /// A frame on the wire; done means core answered `Stored` for `[start, end)`.
    /// `first_received_ms` is the edge receipt time of its first record (for the lag metric).
    Frame {
        segment: u64,
        start: u64,
        end: u64,
        records: u32,
        first_received_ms: u64,
        reply: JoinHandle<Result<(), NodeError>>,
    },
    /// The reader moved from a finished segment to `0`; acking it deletes the old segment.
    SegmentEnd(Position),
}

impl Pending {
    fn abort(&self) {
        if let Pending::Frame { reply, .. } = self {
            reply.abort();
        }
    }
}

/// A failed exchange and the core node it was with; `None` when no one node is to blame (every
/// node is down, the frame could not be split, the send task died), so none is marked down.
type NodeError = (Option<usize>, SendError);

/// One core node's connection. A node that failed is *down*: it gets no records while a
/// background probe reconnects to it every `node_retry_secs` (a QUIC handshake to a dead node
/// only fails after its timeout, which must not stall the other nodes' traffic).
#[derive(Default)]
struct NodeState {
    conn: Option<quinn::Connection>,
    probe: Option<JoinHandle<quinn::Connection>>,
}

impl NodeState {
    /// Takes the probe's connection if it has one; true while the node is still down.
    fn down(&mut self) -> bool {
        let Some(probe) = &mut self.probe else { return false };
        if !probe.is_finished() {
            return true;
        }
        self.conn = (&mut *probe).now_or_never().and_then(Result::ok);
        self.probe = None;
        self.conn.is_none()
    }
}

/// The records of one frame bound for one core node.
struct Part {
    node: usize,
    conn: quinn::Connection,
    data: Vec<u8>,
    count: u32,
}

pub struct Forwarder {
    config: ForwarderConfig,
    edge_id: String,
    endpoint: quinn::Endpoint,
    routing: Rendezvous,
    nodes: Vec<NodeState>,
    reader: WalReader,
    metrics: ForwarderMetrics,
    /// Where the next frame is read from: at or past the acked position.
    next: Position,
    in_flight: VecDeque<Pending>,
    breaker: Breaker,
    link: Arc<LinkHealth>,
    /// Origin of the breaker's clock.
    epoch: Instant,
    control: Arc<ForwarderControl>,
}

impl Forwarder {
    pub fn new(
        config: ForwarderConfig,
        edge_id: String,
        reader: WalReader,
        client: quinn::ClientConfig,
        metrics: ForwarderMetrics,
    ) -> std::io::Result<Self> {
        let routing = config.routing();
        let ipv6 = routing.nodes().iter().any(|n| n.addr.is_ipv6());
        let bind: SocketAddr = if ipv6 { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client);
        let next = reader.acked();
        Ok(Self {
            config,
            edge_id,
            endpoint,
            nodes: routing.nodes().iter().map(|_| NodeState::default()).collect(),
            routing,
            reader,
            metrics,
            next,
            in_flight: VecDeque::new(),
            breaker: Breaker::new(MIN_BACKOFF, MAX_BACKOFF),
            link: Arc::default(),
            epoch: Instant::now(),
            control: Arc::default(),
        })
    }

    /// Lets an operator pause, resume and watch this forwarder.
    pub fn with_control(mut self, control: Arc<ForwarderControl>) -> Self {
        self.control = control;
        self
    }

    /// The breaker state, updated as the forwarder runs.
    pub fn link_health(&self) -> Arc<LinkHealth> {
        self.link.clone()
    }

    /// Frames allowed on the wire: none while an operator has paused forwarding, the configured
    /// window while the breaker is closed, a single probe otherwise.
    fn window(&self) -> usize {
        if self.control.is_paused() {
            0
        } else if self.breaker.state() == BreakerState::Closed {
            self.config.max_in_flight.max(1)
        } else {
            1
        }
    }

    fn publish_breaker(&self) {
        self.link.state.store(self.breaker.state() as u8, Ordering::Relaxed);
    }

    /// Runs until `stop` turns true. An I/O error on the WAL (a full disk refusing the
    /// watermark, a failed rename) does not stop forwarding: it is logged and retried with
    /// backoff, since a forwarder that exits leaves every later `202` stranded in the WAL.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let mut wal_backoff = MIN_BACKOFF;
        loop {
            match self.step(&mut stop).await {
                Ok(Step::Continue) => wal_backoff = MIN_BACKOFF,
                Ok(Step::Stop) => {
                    self.restart_from_acked();
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = wal_backoff.as_millis() as u64, "forwarder: WAL I/O error");
                    self.restart_from_acked();
                    tokio::select! {
                        _ = tokio::time::sleep(wal_backoff) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    wal_backoff = (wal_backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Forgets everything in flight and reads again from the acked position (DESIGN rule 5).
    /// Frames that reached core anyway are dropped there by the dedupe index.
    fn restart_from_acked(&mut self) {
        for p in self.in_flight.drain(..) {
            p.abort();
        }
        self.next = self.reader.acked();
    }

    /// Tops up the window of frames in flight, then settles the oldest one.
    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> std::io::Result<Step> {
        let frames = self.in_flight.iter().filter(|p| matches!(p, Pending::Frame { .. })).count();
        self.metrics.frames_in_flight.set(frames as i64);
        // The oldest frame in flight starts at the acked position. With none in flight (after a
        // failure) the last value stands: that data is still unacked.
        if let Some(ms) = self.in_flight.iter().find_map(|p| match p {
            Pending::Frame { first_received_ms, .. } => Some(*first_received_ms),
            Pending::SegmentEnd(_) => None,
        }) {
            self.metrics.oldest_unacked_ms.store(ms, Ordering::Relaxed);
        }
        if *stop.borrow() {
            return Ok(Step::Stop);
        }
        while self.in_flight.len() < self.window() {
            let outcome = tokio::task::block_in_place(|| self.reader.read(self.next, self.config.frame_bytes))?;
            match outcome {
                ReadOutcome::UpToDate => break,
                ReadOutcome::NextSegment(next) => {
                    self.in_flight.push_back(Pending::SegmentEnd(next));
                    self.next = next;
                }
                ReadOutcome::Corrupt { segment, offset, error } => {
                    // Quarantine only once everything before the bad record is acked.
                    if self.in_flight.is_empty() {
                        tracing::error!(segment, offset, %error, "forwarder: corrupt committed record");
                        tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
                        self.next = self.reader.acked();
                        return Ok(Step::Continue);
                    }
                    break;
                }
                ReadOutcome::Records { segment, start, end, data, count } => {
                    let first_received_ms = record::peek_prefix(&data).map_or(0, |p| p.received_at_ms);
                    if self.in_flight.is_empty() {
                        // Nothing in flight: this frame starts at the acked position, so its first
                        // record is the oldest unacked one even if it cannot be sent now.
                        self.metrics.oldest_unacked_ms.store(first_received_ms, Ordering::Relaxed);
                    }
                    // A handshake to an unreachable core can take its whole timeout: stopping (the end
                    // of a drain) must not wait for it.
                    let routed = tokio::select! {
                        r = self.route(data, count) => r,
                        _ = stop.changed() => return Ok(Step::Stop),
                    };
                    let parts = match routed {
                        Ok(p) => p,
                        Err((node, e)) => return Ok(self.failed(node, e, stop).await),
                    };
                    let timeout = Duration::from_secs(self.config.ack_timeout_secs);
                    let mut sends = Vec::with_capacity(parts.len());
                    for Part { node, conn, data, count } in parts {
                        let header = FrameHeader {
                            protocol_version: PROTOCOL_VERSION,
                            edge_id: self.edge_id.clone(),
                            segment,
                            start,
                            end,
                            record_count: count,
                            raw_len: data.len() as u32,
                        };
                        let message = frame::encode_message(&header, &data, self.config.zstd_level)
                            .map_err(|e| (Some(node), SendError::Encode(e.to_string())));
                        sends.push(async move { send_on(conn, message?, timeout).await.map_err(|e| (Some(node), e)) });
                    }
                    let reply = tokio::spawn(async move {
                        futures::future::join_all(sends).await.into_iter().collect::<Result<(), NodeError>>()
                    });
                    self.in_flight.push_back(Pending::Frame {
                        segment,
                        start,
                        end,
                        records: count,
                        first_received_ms,
                        reply,
                    });
                    self.next = Position { segment, offset: end };
                }
            }
        }
        let Some(oldest) = self.in_flight.pop_front() else {
            let from = self.next;
            let mut paused = self.control.paused.subscribe();
            let is_paused = *paused.borrow_and_update();
            // Everything read is acked and the reader is at the end: nothing is waiting. Unless an
            // operator paused forwarding: then the next unread record is waiting.
            let waiting_since = if is_paused { tokio::task::block_in_place(|| self.unread_since_ms())? } else { 0 };
            self.metrics.oldest_unacked_ms.store(waiting_since, Ordering::Relaxed);
            // While paused, new data only wakes the loop to refresh that metric.
            let wake_past = if is_paused { self.reader.committed() } else { from };
            tokio::select! {
                alive = self.reader.wait_past(wake_past) => if !alive { return Ok(Step::Stop) },
                _ = paused.changed(), if is_paused => {}
                _ = stop.changed() => {}
            }
            return Ok(Step::Continue);
        };
        match oldest {
            Pending::SegmentEnd(next) => tokio::task::block_in_place(|| self.reader.ack(next))?,
            Pending::Frame { segment, start, end, records, first_received_ms, mut reply } => {
                let window_open = self.in_flight.len() + 1 < self.window();
                let from = self.next;
                let result = tokio::select! {
                    r = &mut reply => r.unwrap_or_else(|e| Err((None, SendError::Stream(format!("send task: {e}"))))),
                    // New data while the window has room: send it now rather than after this ack.
                    alive = self.reader.wait_past(from), if window_open => {
                        self.in_flight.push_front(Pending::Frame {
                            segment,
                            start,
                            end,
                            records,
                            first_received_ms,
                            reply,
                        });
                        return Ok(if alive { Step::Continue } else { Step::Stop });
                    }
                    _ = stop.changed() => {
                        reply.abort();
                        return Ok(Step::Stop);
                    }
                };
                match result {
                    Ok(()) => {
                        tokio::task::block_in_place(|| self.reader.ack(Position { segment, offset: end }))?;
                        tracing::debug!(segment, start, end, records, "forwarder: frame acked");
                        self.control.acked();
                        self.metrics.forwarded_records.inc_by(u64::from(records));
                        self.metrics.forwarded_bytes.inc_by(end - start);
                        if self.breaker.state() != BreakerState::Closed {
                            tracing::info!("forwarder: probe acked; circuit to core closed");
                        }
                        self.breaker.on_success();
                        self.publish_breaker();
                    }
                    Err((_, SendError::Rejected(reason))) => {
                        tracing::error!(segment, start, %reason, "forwarder: core rejected frame; quarantining segment");
                        self.restart_from_acked();
                        tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
                        self.next = self.reader.acked();
                    }
                    Err((node, e)) => {
                        let core = node.map_or("-", |n| self.routing.nodes()[n].id.as_str());
                        tracing::warn!(error = %e, segment, start, core, "forwarder: frame not acked");
                        return Ok(self.failed(node, e, stop).await);
                    }
                }
            }
        }
        Ok(Step::Continue)
    }

    /// A send failed: drop the window, back off, and resend from the acked position. A node
    /// that is unreachable (not one that asked to retry) is skipped for a while when there are
    /// others to route to.
    async fn failed(&mut self, node: Option<usize>, e: SendError, stop: &mut watch::Receiver<bool>) -> Step {
        self.control.failed(&e);
        if let Some(node) = node
            && matches!(e, SendError::Connect(_) | SendError::Stream(_) | SendError::Timeout(_))
        {
            if self.routing.nodes().len() > 1 {
                self.mark_down(node);
            } else if let Some(state) = self.nodes.get_mut(node) {
                state.conn = None;
            }
        }
        self.restart_from_acked();
        let delay = self.breaker.on_failure(self.epoch.elapsed(), rand::random::<f64>());
        self.link.opens.fetch_add(1, Ordering::Relaxed);
        self.publish_breaker();
        tracing::warn!(error = %e, circuit = "open", failures = self.breaker.failures(), retry_in_ms = delay.as_millis() as u64,
            resend_from_segment = self.next.segment, resend_from_offset = self.next.offset,
            "forwarder: will resend unacked frames");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return Step::Stop,
        }
        // The backoff has passed: the next frame goes alone, as the half-open probe.
        self.breaker.poll(self.epoch.elapsed());
        self.publish_breaker();
        Step::Continue
    }

    /// Splits a frame's records by their tenant's core node (among the nodes that are not down)
    /// and connects to each node needed. A node that cannot be reached is marked down and the
    /// split is redone without it.
    async fn route(&mut self, data: Vec<u8>, count: u32) -> Result<Vec<Part>, NodeError> {
        if self.nodes.len() == 1 {
            let conn = self.connection(0).await.map_err(|e| (Some(0), e))?;
            return Ok(vec![Part { node: 0, conn, data, count }]);
        }
        loop {
            let down: Vec<bool> = self.nodes.iter_mut().map(NodeState::down).collect();
            let mut split: Vec<(Vec<u8>, u32)> = vec![(Vec::new(), 0); self.nodes.len()];
            let mut rest = data.as_slice();
            while !rest.is_empty() {
                let bad = |e: record::RecordError| (None, SendError::Encode(e.to_string()));
                let len =
                    record::check_record(rest).map_err(bad)?.ok_or_else(|| bad(record::RecordError::Incomplete))?;
                let tenant = record::peek_prefix(&rest[..len]).map_err(bad)?.tenant;
                // Every node down: fail this attempt (the caller backs off) until a probe succeeds.
                let Some(node) = self.routing.pick(tenant, |i| !down[i]) else {
                    return Err((None, SendError::Connect("every core node is down".into())));
                };
                split[node].0.extend_from_slice(&rest[..len]);
                split[node].1 += 1;
                rest = &rest[len..];
            }
            let mut parts = Vec::new();
            let mut unreachable = None;
            for (node, (data, count)) in split.into_iter().enumerate().filter(|(_, (d, _))| !d.is_empty()) {
                match self.connection(node).await {
                    Ok(conn) => parts.push(Part { node, conn, data, count }),
                    Err(e) => {
                        unreachable = Some((node, e));
                        break;
                    }
                }
            }
            let Some((node, e)) = unreachable else { return Ok(parts) };
            tracing::warn!(core = %self.routing.nodes()[node].id, error = %e, "forwarder: core node unreachable");
            self.mark_down(node);
        }
    }

    /// Edge receipt time of the first record not yet read (0 if none): the oldest unacked one
    /// while forwarding is paused.
    fn unread_since_ms(&self) -> std::io::Result<u64> {
        let mut at = self.next;
        loop {
            match self.reader.read(at, 1)? {
                ReadOutcome::Records { data, .. } => {
                    return Ok(record::peek_prefix(&data).map_or(0, |p| p.received_at_ms));
                }
                ReadOutcome::NextSegment(next) => at = next,
                ReadOutcome::UpToDate | ReadOutcome::Corrupt { .. } => return Ok(0),
            }
        }
    }

    /// Stops routing to `node` and probes it in the background until it answers again.
    fn mark_down(&mut self, node: usize) {
        let Some(state) = self.nodes.get_mut(node) else { return };
        state.conn = None;
        if state.probe.is_some() {
            return;
        }
        let (endpoint, addr, name) =
            (self.endpoint.clone(), self.routing.nodes()[node].addr, self.config.server_name.clone());
        let (id, retry) =
            (self.routing.nodes()[node].id.clone(), Duration::from_secs(self.config.node_retry_secs.max(1)));
        tracing::warn!(core = %id, retry_in_secs = retry.as_secs(), "forwarder: core node down; its tenants move to their next choice");
        state.probe = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(retry).await;
                match connect(&endpoint, addr, &name).await {
                    Ok(conn) => {
                        tracing::info!(core = %id, "forwarder: core node is back; its tenants return");
                        return conn;
                    }
                    Err(e) => tracing::debug!(core = %id, error = %e, "forwarder: core node still down"),
                }
            }
        }));
    }

    async fn connection(&mut self, node: usize) -> Result<quinn::Connection, SendError> {
        let state = &mut self.nodes[node];
        if let Some(c) = &state.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let addr = self.routing.nodes()[node].addr;
        let conn = connect(&self.endpoint, addr, &self.config.server_name).await?;
        tracing::info!(core = %self.routing.nodes()[node].id, %addr, "forwarder: connected to core");
        state.conn = Some(conn.clone());
        Ok(conn)
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, SendError> {
    handshake(endpoint, addr, server_name).await.map_err(SendError::Connect)
}

/// Connects to a core node, giving up after 10 s; the error is the reason. Also used by
/// `sluicectl replay` and by replication to reach a peer edge (inside its ack timeout).
pub async fn handshake(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint.connect(addr, server_name).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// One frame exchange on its own stream: write the message, wait for core's ack. Also used by
/// `sluicectl replay`.
pub async fn send_on(conn: quinn::Connection, message: Vec<u8>, timeout: Duration) -> Result<(), SendError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| SendError::Stream(e.to_string()))?;
        send.write_all(&message).await.map_err(|e| SendError::Stream(e.to_string()))?;
        send.finish().map_err(|e| SendError::Stream(e.to_string()))?;
        recv.read_to_end(64 * 1024).await.map_err(|e| SendError::Stream(e.to_string()))
    };
    let reply = tokio::time::timeout(timeout, exchange).await.map_err(|_| SendError::Timeout(timeout))??;
    match protocol::decode_ack(&reply).map_err(|e| SendError::Stream(e.to_string()))? {
        Ack::Stored => Ok(()),
        Ack::Retry { reason } => Err(SendError::Retry(reason)),
        Ack::Rejected { reason } => Err(SendError::Rejected(reason)),
    }
}
