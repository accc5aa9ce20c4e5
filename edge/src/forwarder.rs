//! The forwarder: tails the WAL, ships zstd frames to core over QUIC, and advances the durable
//! ack watermark only when core answers `Stored` (DESIGN rule 5: resend from the last *acked*
//! position, never the last sent one).
//!
//! Up to `max_in_flight` frames are on the wire at once (one QUIC stream each), so forwarding is
//! not bound by one core round trip per frame. Acks are applied in WAL order; any failure drops
//! the whole window and resends from the acked position, and core's dedupe index drops the
//! frames it had already stored.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_wire::frame;
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ForwarderConfig;
pub use crate::forwarder_control::{ForwarderControl, ForwarderState};
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

enum Step {
    Continue,
    Stop,
}

/// What the forwarder waits for, oldest first. Acks are applied strictly in this order, so the
/// watermark only ever covers a contiguous prefix of the WAL, whatever order core answers in.
enum Pending {
    /// A frame on the wire; done means core answered `Stored` for `[start, end)`.
    Frame { segment: u64, start: u64, end: u64, records: u32, reply: JoinHandle<Result<(), SendError>> },
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

pub struct Forwarder {
    config: ForwarderConfig,
    edge_id: String,
    endpoint: quinn::Endpoint,
    conn: Option<quinn::Connection>,
    reader: WalReader,
    /// Where the next frame is read from: at or past the acked position.
    next: Position,
    in_flight: VecDeque<Pending>,
    backoff: Duration,
    control: Arc<ForwarderControl>,
}

impl Forwarder {
    pub fn new(
        config: ForwarderConfig,
        edge_id: String,
        reader: WalReader,
        client: quinn::ClientConfig,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr =
            if config.core_addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client);
        let next = reader.acked();
        Ok(Self {
            config,
            edge_id,
            endpoint,
            conn: None,
            reader,
            next,
            in_flight: VecDeque::new(),
            backoff: MIN_BACKOFF,
            control: Arc::default(),
        })
    }

    /// Lets an operator pause, resume and watch this forwarder.
    pub fn with_control(mut self, control: Arc<ForwarderControl>) -> Self {
        self.control = control;
        self
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
        if *stop.borrow() {
            return Ok(Step::Stop);
        }
        while self.in_flight.len() < self.config.max_in_flight.max(1) && !self.control.is_paused() {
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
                    // A handshake to an unreachable core can take its whole timeout: stopping (the end
                    // of a drain) must not wait for it.
                    let connected = tokio::select! {
                        c = self.connection() => c,
                        _ = stop.changed() => return Ok(Step::Stop),
                    };
                    let conn = match connected {
                        Ok(c) => c,
                        Err(e) => return Ok(self.failed(e, stop).await),
                    };
                    let header = FrameHeader {
                        protocol_version: PROTOCOL_VERSION,
                        edge_id: self.edge_id.clone(),
                        segment,
                        start,
                        end,
                        record_count: count,
                        raw_len: data.len() as u32,
                    };
                    let timeout = Duration::from_secs(self.config.ack_timeout_secs);
                    let reply = match frame::encode_message(&header, &data, self.config.zstd_level) {
                        Ok(message) => tokio::spawn(send_on(conn, message, timeout)),
                        Err(e) => tokio::spawn(async move { Err(SendError::Encode(e.to_string())) }),
                    };
                    self.in_flight.push_back(Pending::Frame { segment, start, end, records: count, reply });
                    self.next = Position { segment, offset: end };
                }
            }
        }
        let Some(oldest) = self.in_flight.pop_front() else {
            let from = self.next;
            let mut paused = self.control.paused.subscribe();
            let is_paused = *paused.borrow_and_update();
            tokio::select! {
                alive = self.reader.wait_past(from), if !is_paused => if !alive { return Ok(Step::Stop) },
                _ = paused.changed(), if is_paused => {}
                _ = stop.changed() => {}
            }
            return Ok(Step::Continue);
        };
        match oldest {
            Pending::SegmentEnd(next) => tokio::task::block_in_place(|| self.reader.ack(next))?,
            Pending::Frame { segment, start, end, records, mut reply } => {
                let window_open =
                    self.in_flight.len() + 1 < self.config.max_in_flight.max(1) && !self.control.is_paused();
                let from = self.next;
                let result = tokio::select! {
                    r = &mut reply => r.unwrap_or_else(|e| Err(SendError::Stream(format!("send task: {e}")))),
                    // New data while the window has room: send it now rather than after this ack.
                    alive = self.reader.wait_past(from), if window_open => {
                        self.in_flight.push_front(Pending::Frame { segment, start, end, records, reply });
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
                        self.backoff = MIN_BACKOFF;
                    }
                    Err(SendError::Rejected(reason)) => {
                        tracing::error!(segment, start, %reason, "forwarder: core rejected frame; quarantining segment");
                        self.restart_from_acked();
                        tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
                        self.next = self.reader.acked();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, segment, start, "forwarder: frame not acked");
                        return Ok(self.failed(e, stop).await);
                    }
                }
            }
        }
        Ok(Step::Continue)
    }

    /// A send failed: drop the window, back off, and resend from the acked position.
    async fn failed(&mut self, e: SendError, stop: &mut watch::Receiver<bool>) -> Step {
        self.control.failed(&e);
        if matches!(e, SendError::Connect(_) | SendError::Stream(_) | SendError::Timeout(_)) {
            self.conn = None;
        }
        self.restart_from_acked();
        tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, resend_from_segment = self.next.segment,
            resend_from_offset = self.next.offset, "forwarder: will resend unacked frames");
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = stop.changed() => return Step::Stop,
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Step::Continue
    }

    async fn connection(&mut self) -> Result<quinn::Connection, SendError> {
        if let Some(c) = &self.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connecting = self
            .endpoint
            .connect(self.config.core_addr, &self.config.server_name)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| SendError::Connect("handshake timed out".into()))?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tracing::info!(core = %self.config.core_addr, "forwarder: connected to core");
        self.conn = Some(conn.clone());
        Ok(conn)
    }
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
