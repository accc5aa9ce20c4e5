//! The forwarder: tails the WAL, ships zstd frames to core over QUIC, and advances the durable
//! ack watermark only when core answers `Stored` (DESIGN rule 5: resend from the last *acked*
//! position, never the last sent one).

use std::net::SocketAddr;
use std::time::Duration;

use sluice_wire::frame;
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use tokio::sync::watch;

use crate::config::ForwarderConfig;
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

pub struct Forwarder {
    config: ForwarderConfig,
    edge_id: String,
    endpoint: quinn::Endpoint,
    conn: Option<quinn::Connection>,
    reader: WalReader,
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
        Ok(Self { config, edge_id, endpoint, conn: None, reader })
    }

    /// Runs until `stop` turns true. An I/O error on the WAL (a full disk refusing the
    /// watermark, a failed rename) does not stop forwarding: it is logged and retried with
    /// backoff, since a forwarder that exits leaves every later `202` stranded in the WAL.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let mut wal_backoff = MIN_BACKOFF;
        loop {
            match self.step(&mut stop).await {
                Ok(Step::Continue) => wal_backoff = MIN_BACKOFF,
                Ok(Step::Stop) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = wal_backoff.as_millis() as u64, "forwarder: WAL I/O error");
                    tokio::select! {
                        _ = tokio::time::sleep(wal_backoff) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    wal_backoff = (wal_backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads from the acked position and forwards one frame (or moves past a segment).
    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> std::io::Result<Step> {
        let mut backoff = MIN_BACKOFF;
        if *stop.borrow() {
            return Ok(Step::Stop);
        }
        let from = self.reader.acked();
        let outcome = tokio::task::block_in_place(|| self.reader.read(from, self.config.frame_bytes))?;
        match outcome {
            ReadOutcome::UpToDate => {
                tokio::select! {
                    alive = self.reader.wait_past(from) => if !alive { return Ok(Step::Stop) },
                    _ = stop.changed() => {}
                }
            }
            ReadOutcome::NextSegment(next) => tokio::task::block_in_place(|| self.reader.ack(next))?,
            ReadOutcome::Corrupt { segment, offset, error } => {
                tracing::error!(segment, offset, %error, "forwarder: corrupt committed record");
                tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
            }
            ReadOutcome::Records { segment, start, end, data, count } => {
                let header = FrameHeader {
                    protocol_version: PROTOCOL_VERSION,
                    edge_id: self.edge_id.clone(),
                    segment,
                    start,
                    end,
                    record_count: count,
                    raw_len: data.len() as u32,
                };
                let message = encode(&header, &data, self.config.zstd_level);
                loop {
                    let result = match &message {
                        Ok(m) => self.send(m).await,
                        Err(e) => Err(SendError::Encode(e.clone())),
                    };
                    match result {
                        Ok(()) => {
                            tokio::task::block_in_place(|| self.reader.ack(Position { segment, offset: end }))?;
                            tracing::debug!(segment, start, end, records = count, "forwarder: frame acked");
                            break;
                        }
                        Err(SendError::Rejected(reason)) => {
                            tracing::error!(segment, start, %reason, "forwarder: core rejected frame; quarantining segment");
                            tokio::task::block_in_place(|| self.reader.quarantine(segment))?;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, segment, start, retry_in_ms = backoff.as_millis() as u64, "forwarder: frame not acked, will resend");
                            if matches!(e, SendError::Connect(_) | SendError::Stream(_) | SendError::Timeout(_)) {
                                self.conn = None;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stop.changed() => return Ok(Step::Stop),
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
        Ok(Step::Continue)
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

    async fn send(&mut self, message: &[u8]) -> Result<(), SendError> {
        let conn = self.connection().await?;
        let timeout = Duration::from_secs(self.config.ack_timeout_secs);
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| SendError::Stream(e.to_string()))?;
            send.write_all(message).await.map_err(|e| SendError::Stream(e.to_string()))?;
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
}

fn encode(header: &FrameHeader, data: &[u8], level: i32) -> Result<Vec<u8>, String> {
    let mut message = protocol::encode_header(header).map_err(|e| e.to_string())?;
    message.extend_from_slice(&frame::compress(data, level).map_err(|e| e.to_string())?);
    Ok(message)
}
