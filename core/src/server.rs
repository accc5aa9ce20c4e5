//! The QUIC ingest server: one bidirectional stream per frame, answered with an [`Ack`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_wire::BatchRecord;
use sluice_wire::frame;
use sluice_wire::protocol::{self, Ack, MAX_COMPRESSED_LEN, MAX_HEADER_LEN};

use crate::dedupe::DedupeIndex;
use crate::sink::Sink;

pub struct Ingest {
    pub dedupe: Arc<dyn DedupeIndex>,
    pub sink: Sink,
}

pub async fn serve(endpoint: quinn::Endpoint, ingest: Arc<Ingest>) {
    while let Some(incoming) = endpoint.accept().await {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "core: handshake failed");
                    return;
                }
            };
            let peer = conn.remote_address();
            tracing::info!(%peer, "core: edge connected");
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        tokio::spawn(handle_stream(ingest.clone(), send, recv));
                    }
                    Err(e) => {
                        tracing::info!(%peer, reason = %e, "core: edge disconnected");
                        return;
                    }
                }
            }
        });
    }
}

async fn handle_stream(ingest: Arc<Ingest>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let ack = match recv.read_to_end(4 + MAX_HEADER_LEN + MAX_COMPRESSED_LEN).await {
        Ok(msg) => ingest.process(&msg).await,
        Err(e) => {
            tracing::warn!(error = %e, "core: reading frame failed");
            return;
        }
    };
    let reply = match protocol::encode_ack(&ack) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "core: encoding ack failed");
            return;
        }
    };
    if let Err(e) = send.write_all(&reply).await {
        tracing::warn!(error = %e, "core: sending ack failed");
        return;
    }
    let _ = send.finish();
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Ingest {
    /// Decodes a frame, delivers the batches not delivered before, and says what the edge may do.
    pub async fn process(&self, msg: &[u8]) -> Ack {
        let (header, payload) = match protocol::decode_message(msg) {
            Ok(x) => x,
            Err(e) => {
                return Ack::Rejected { reason: format!("bad frame message: {e}") };
            }
        };
        let batches = match frame::decompress(payload, header.raw_len as usize) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(edge = %header.edge_id, segment = header.segment, start = header.start, error = %e, "core: undecodable frame");
                return Ack::Rejected { reason: e.to_string() };
            }
        };
        let ids: Vec<_> = batches.iter().map(|b| b.batch_id).collect();
        let dedupe = self.dedupe.clone();
        let seen = match tokio::task::spawn_blocking(move || dedupe.seen(&ids)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Ack::Retry { reason: e.to_string() };
            }
            Err(e) => {
                return Ack::Retry { reason: e.to_string() };
            }
        };
        let fresh: Vec<&BatchRecord> = batches.iter().zip(&seen).filter(|(_, s)| !**s).map(|(b, _)| b).collect();
        let duplicates = batches.len() - fresh.len();
        if !fresh.is_empty() {
            if let Err(e) = self.sink.deliver(&fresh).await {
                tracing::warn!(edge = %header.edge_id, segment = header.segment, error = %e, "core: sink refused frame; edge will resend");
                return Ack::Retry { reason: e.to_string() };
            }
            let ids: Vec<_> = fresh.iter().map(|b| b.batch_id).collect();
            let dedupe = self.dedupe.clone();
            // Recording after delivery: a crash in between re-delivers the frame (a duplicate with
            // the same IDs) rather than losing it.
            match tokio::task::spawn_blocking(move || dedupe.record(&ids, now_ms())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "core: dedupe record failed; a resend would duplicate")
                }
                Err(e) => tracing::warn!(error = %e, "core: dedupe record task failed"),
            }
        }
        tracing::debug!(edge = %header.edge_id, segment = header.segment, start = header.start, end = header.end,
            batches = batches.len(), duplicates, "core: frame stored");
        Ack::Stored
    }
}
