//! The forwarder: tails the WAL, ships zstd frames to core over QUIC, and advances the durable
//! ack watermark only when core answers `Stored` (DESIGN rule 5: resend from the last *acked*
//! position, never the last sent one).
//!
//! The rules live in `window::Window`, a pure state machine: up to `max_in_flight` frames on
//! the wire at once (one QUIC stream each), acks applied in WAL order, any failure dropping the
//! whole window and resending from the acked position (core's dedupe index drops the frames it
//! had already stored), quarantine, node-down set, breaker and backoffs. This module is the thin
//! driver around it: it reads the WAL, routes and sends frames, waits with tokio, and keeps the
//! metrics.
//!
//! With several core nodes, each record goes to its tenant's node (`split`, pure): a frame's records
//! are split into one sub-frame per node, sent concurrently, and the frame counts as acked only
//! when every sub-frame is. A node that fails is skipped for `node_retry_secs`, so its tenants
//! move to their next choice on the resend (core dedupes per node, so a batch whose first copy
//! reached the failed node may be produced twice: a bounded duplicate, never a loss).
//!
//! A circuit breaker ([`sluice_wire::breaker`]) guards the link: a failed send opens it for an
//! exponential backoff with jitter, then one frame goes out alone as a probe (window of 1) and
//! its ack closes the breaker again. Its state is in [`LinkHealth`] for metrics and readiness.

mod error;
mod split;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use sluice_wire::{frame, record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::error::{NodeError, SendError};
use self::split::{Share, split};
use self::window::{Command, Event, FrameId, QuarantineCause, Window};
use crate::config::ForwarderConfig;
pub use crate::forwarder_control::{ForwarderControl, ForwarderState};
use crate::link_health::LinkHealth;
use crate::metrics::ForwarderMetrics;
use crate::routing::Rendezvous;
use crate::wal::{ReadOutcome, WalReader};

enum Flow {
    Continue,
    Stop,
}

/// One core node's connection. A node that failed is *down*: it gets no records while a
/// background probe reconnects to it every `node_retry_secs` (a QUIC handshake to a dead node
/// only fails after its timeout, which must not stall the other nodes' traffic).
#[derive(Default)]
struct NodeState {
    conn: Option<quinn::Connection>,
    probe: Option<JoinHandle<quinn::Connection>>,
}

impl NodeState {
    /// Takes the connection of a probe that finished; true if one did (the node is back).
    fn probe_finished(&mut self) -> bool {
        let Some(probe) = &mut self.probe else { return false };
        if !probe.is_finished() {
            return false;
        }
        self.conn = probe.now_or_never().and_then(Result::ok);
        self.probe = None;
        true
    }
}

/// The records of one frame bound for one core node, with the connection to send them on.
struct Part {
    node: usize,
    conn: quinn::Connection,
    data: Vec<u8>,
    count: u32,
}

/// The answer to one frame send: every part's exchange.
struct Reply {
    id: FrameId,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Future for Reply {
    type Output = (FrameId, Result<(), NodeError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        self.task
            .poll_unpin(cx)
            .map(|r| (id, r.unwrap_or_else(|e| Err((None, SendError::Stream(format!("send task: {e}")))))))
    }
}

pub struct Forwarder {
    config: ForwarderConfig,
    edge_id: String,
    endpoint: quinn::Endpoint,
    routing: Rendezvous,
    nodes: Vec<NodeState>,
    reader: WalReader,
    metrics: ForwarderMetrics,
    window: Window,
    replies: FuturesUnordered<Reply>,
    link: Arc<LinkHealth>,
    /// Origin of the window's clock.
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
        let linger = Duration::from_millis(config.linger_ms);
        let window = Window::new(config.max_in_flight, routing.nodes().len(), reader.acked(), linger, rand::random());
        Ok(Self {
            config,
            edge_id,
            endpoint,
            nodes: routing.nodes().iter().map(|_| NodeState::default()).collect(),
            routing,
            reader,
            metrics,
            window,
            replies: FuturesUnordered::new(),
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

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Runs until `stop` turns true. An I/O error on the WAL (a full disk refusing the
    /// watermark, a failed rename) does not stop forwarding: it is logged and retried with
    /// backoff, since a forwarder that exits leaves every later `202` stranded in the WAL.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let mut paused = self.control.paused.subscribe();
        let now = self.now();
        self.window.handle(now, Event::Paused(*paused.borrow_and_update()));
        while !*stop.borrow() {
            let done = match self.execute(&mut stop).await {
                Ok(Flow::Stop) => break,
                Ok(Flow::Continue) => self.publish(),
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                let now = self.now();
                self.window.handle(now, Event::WalFailed);
                let retry_in = self.window.resume_at().map_or(Duration::ZERO, |at| at.saturating_sub(now));
                tracing::error!(error = %e, retry_in_ms = retry_in.as_millis() as u64, "forwarder: WAL I/O error");
                continue;
            }
            // While paused with nothing in flight, new data only wakes the loop to refresh the
            // oldest-unacked metric.
            let idle_paused = self.control.is_paused() && self.window.is_empty() && self.window.resume_at().is_none();
            let wait_past = if self.window.wants_data() {
                Some(self.window.next())
            } else {
                idle_paused.then(|| self.reader.committed())
            };
            let wake = self.window.wake_at().map(|at| tokio::time::Instant::from_std(self.epoch + at));
            // Biased, pause first: a pause the admin API acknowledged must hold for data committed
            // after it, even when both are ready at once (an unbiased select picks at random,
            // and would read and send that data first).
            let event = tokio::select! {
                biased;
                Ok(()) = paused.changed() => Event::Paused(*paused.borrow_and_update()),
                Some((id, result)) = self.replies.next(), if !self.replies.is_empty() => Event::Reply { id, result },
                alive = self.reader.wait_past(wait_past.unwrap_or_default()), if wait_past.is_some() => {
                    if !alive {
                        break;
                    }
                    Event::Committed
                }
                // The window's `poll` picks up where the backoff or the linger ends.
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => continue,
                _ = stop.changed() => continue,
            };
            let now = self.now();
            self.window.handle(now, event);
        }
        self.abort_all();
        Ok(())
    }

    /// Carries out the window's commands until it has none.
    async fn execute(&mut self, stop: &mut watch::Receiver<bool>) -> std::io::Result<Flow> {
        while let Some(command) = self.window.poll(self.now()) {
            match command {
                Command::Read { from } => {
                    let outcome = tokio::task::block_in_place(|| self.reader.read(from, self.config.frame_bytes))?;
                    self.window.handle(self.now(), Event::Read(outcome));
                }
                Command::Send { id, segment, start, end, records, data } => {
                    // A handshake to an unreachable core can take its whole timeout: stopping (the
                    // end of a drain) must not wait for it.
                    let routed = tokio::select! {
                        r = self.route(data, records) => r,
                        _ = stop.changed() => return Ok(Flow::Stop),
                    };
                    match routed {
                        Ok(parts) => self.send(id, segment, start, end, parts),
                        Err(e) => self.window.handle(self.now(), Event::SendFailed(e)),
                    }
                }
                Command::AbortAll => self.abort_all(),
                Command::Ack { to, frame } => {
                    tokio::task::block_in_place(|| self.reader.ack(to))?;
                    if let Some(f) = frame {
                        tracing::debug!(
                            segment = to.segment,
                            start = f.start,
                            end = to.offset,
                            records = f.records,
                            "forwarder: frame acked"
                        );
                        self.control.acked();
                        self.metrics.forwarded_records.inc_by(u64::from(f.records));
                        self.metrics.forwarded_bytes.inc_by(to.offset - f.start);
                        if f.closed_circuit {
                            tracing::info!("forwarder: probe acked; circuit to core closed");
                        }
                    }
                    self.window.handle(self.now(), Event::Stored(to));
                }
                Command::Quarantine { segment, cause } => {
                    match &cause {
                        QuarantineCause::Corrupt { offset, error } => {
                            tracing::error!(segment, offset, %error, "forwarder: corrupt committed record");
                        }
                        QuarantineCause::Rejected { start, reason } => {
                            tracing::error!(segment, start, %reason, "forwarder: core rejected frame; quarantining segment");
                        }
                    }
                    tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
                    self.window.handle(self.now(), Event::Quarantined(self.reader.acked()));
                }
                Command::MarkDown(node) => self.probe(node),
                Command::Disconnect(node) => {
                    if let Some(state) = self.nodes.get_mut(node) {
                        state.conn = None;
                    }
                }
                Command::Backoff { error: (node, e), delay, failures, resend_from } => {
                    self.control.failed(&e);
                    self.link.opened();
                    let core = node.and_then(|n| self.routing.nodes().get(n)).map_or("-", |n| n.id.as_str());
                    tracing::warn!(error = %e, core, circuit = "open", failures, retry_in_ms = delay.as_millis() as u64,
                        resend_from_segment = resend_from.segment, resend_from_offset = resend_from.offset,
                        "forwarder: frame not acked; will resend unacked frames");
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Exports what the window knows: frames in flight, the oldest unacked record, the breaker.
    fn publish(&self) -> std::io::Result<()> {
        self.metrics.frames_in_flight.set(self.window.frames_in_flight() as i64);
        // Paused with nothing in flight, the next unread record is the one waiting.
        let oldest = if self.control.is_paused() && self.window.is_empty() {
            tokio::task::block_in_place(|| self.unread_since_ms())?
        } else {
            self.window.oldest_unacked_ms()
        };
        self.metrics.oldest_unacked_ms.store(oldest, Ordering::Relaxed);
        self.link.set_state(self.window.breaker_state());
        Ok(())
    }

    /// Drops every frame in flight: its answer no longer counts.
    fn abort_all(&mut self) {
        for reply in self.replies.iter() {
            reply.task.abort();
        }
        self.replies.clear();
    }

    /// Puts frame `id` on the wire: one stream per part, all answered before it counts.
    fn send(&mut self, id: FrameId, segment: u64, start: u64, end: u64, parts: Vec<Part>) {
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
        let task = tokio::spawn(async move {
            futures::future::join_all(sends).await.into_iter().collect::<Result<(), NodeError>>()
        });
        self.replies.push(Reply { id, task });
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
            for node in 0..self.nodes.len() {
                if self.nodes[node].probe_finished() {
                    let now = self.now();
                    self.window.handle(now, Event::NodeUp(node));
                }
            }
            let shares = split(&self.routing, &data, |i| !self.window.is_down(i))?;
            let mut parts = Vec::with_capacity(shares.len());
            let mut unreachable = None;
            for Share { node, data, count } in shares {
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
            self.window.mark_down(node);
            self.probe(node);
        }
    }

    /// Edge receipt time of the first record not yet read (0 if none): the oldest unacked one
    /// while forwarding is paused.
    fn unread_since_ms(&self) -> std::io::Result<u64> {
        let mut at = self.window.next();
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

    /// Drops `node`'s connection and probes it in the background until it answers again.
    fn probe(&mut self, node: usize) {
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
