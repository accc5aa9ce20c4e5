//! The forwarder keeps several frames on the wire at once (not one core round trip per frame),
//! and still advances the ack watermark only over a contiguous acked prefix when core answers
//! out of order.

use std::time::{Duration, Instant};

use sluice_edge::wal::Position;
use sluice_edge::wal::scan::acked_watermark;
use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{events_body, post_events};
use sluice_wire::protocol::{self, Ack};

const WINDOW: usize = 4;

/// The durable watermark as the edge stored it (replaced atomically: never torn).
fn watermark(dir: &std::path::Path) -> Option<Position> {
    acked_watermark(dir).expect("ack.watermark is readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_pipelined_and_acked_in_wal_order() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = sluice_ops::devpki::write_dev_pki(pki_dir.path()).unwrap();
    let server = sluice_core::tls::quic_server_config(&pki.core_cert, &pki.core_key, Some(&pki.ca_cert)).unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let core_addr = endpoint.local_addr().unwrap();

    // A fake core: holds the first WINDOW frames unanswered until all of them are open at once,
    // then acks them newest first; later frames are acked at once.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let fake_core = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let mut held = Vec::new();
        let mut released = false;
        loop {
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
            let msg = recv.read_to_end(64 << 20).await.unwrap();
            let (header, _) = protocol::decode_message(&msg).unwrap();
            let _ = seen_tx.send((header.segment, header.end));
            let stored = protocol::encode_ack(&Ack::Stored).unwrap();
            if !released {
                held.push(send);
                if held.len() == WINDOW {
                    for mut s in held.drain(..).rev() {
                        s.write_all(&stored).await.unwrap();
                        s.finish().unwrap();
                    }
                    released = true;
                }
            } else {
                send.write_all(&stored).await.unwrap();
                send.finish().unwrap();
            }
        }
    });

    let (ca, cert, key) = (pki.ca_cert.clone(), pki.edge_cert.clone(), pki.edge_key.clone());
    let e = InProcessEdge::start(move |c| {
        c.forwarder.enabled = true;
        c.forwarder.core_addr = core_addr;
        c.forwarder.ca_cert = ca;
        c.forwarder.client_cert = Some(cert);
        c.forwarder.client_key = Some(key);
        c.forwarder.frame_bytes = 1; // one record per frame
        c.forwarder.max_in_flight = WINDOW;
        c.forwarder.ack_timeout_secs = 60;
    })
    .await;
    let (addr, api_key) = (e.addr(), e.key.clone());
    tokio::task::spawn_blocking(move || {
        for i in 0..(WINDOW * 3) {
            let (body, _) = events_body(&format!("w{i}"), 5);
            assert_eq!(post_events(addr, &api_key, "application/json", &[], &body).status, 202);
        }
    })
    .await
    .unwrap();
    let committed = e.edge().wal.committed();

    // Every record reaches the fake core and the watermark ends exactly at the committed end.
    let wal_dir = e.config.wal.dir.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut frames = 0;
    loop {
        // Watermark first: a frame acked after the count below would otherwise go uncounted.
        let done = watermark(&wal_dir) == Some(committed);
        while let Ok(_f) = seen_rx.try_recv() {
            frames += 1;
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watermark {:?} never reached {committed:?} after {frames} frames (a window of one would stall here)",
            watermark(&wal_dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(frames, WINDOW * 3, "one frame per record, each sent once");
    fake_core.abort();
    e.shutdown().await;
}
