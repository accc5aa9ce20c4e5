//! Core produces a batch once even when the same frame arrives again (an edge that lost core's
//! ack resends from its last acked position; an operator replays a WAL).

use std::time::Duration;

use sluice_tests::free_udp_addr;
use sluice_tests::kafka::{TestKafka, consume};
use sluice_tests::procs::TestEnv;
use sluice_wire::protocol::{self, Ack, FrameHeader, PROTOCOL_VERSION};
use sluice_wire::record::encode_record;
use sluice_wire::{BatchRecord, EventRecord, Stream, frame};

fn frame_message(region: &str) -> Vec<u8> {
    let batch_id = sluice_wire::ids::new_batch_id();
    let record = BatchRecord {
        batch_id,
        tenant: "acme".into(),
        env: "prod".into(),
        region: region.into(),
        received_at_ms: 1_764_064_800_000,
        stream: Stream::Events,
        events: (0..3)
            .map(|i| EventRecord {
                event_id: format!("dup-{i}"),
                json: format!(r#"{{"event_id":"dup-{i}"}}"#).into_bytes(),
            })
            .collect(),
        traceparent: None,
        shared: Vec::new(),
    };
    let mut raw = Vec::new();
    encode_record(&record, &mut raw).unwrap();
    let header = FrameHeader {
        protocol_version: PROTOCOL_VERSION,
        edge_id: "edge-test".into(),
        segment: 1,
        start: 0,
        end: raw.len() as u64,
        record_count: 1,
        raw_len: raw.len() as u32,
    };
    frame::encode_message(&header, &raw, 3).unwrap()
}

async fn send(conn: &quinn::Connection, msg: &[u8]) -> Ack {
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(msg).await.unwrap();
    tx.finish().unwrap();
    protocol::decode_ack(&rx.read_to_end(4096).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frame_is_produced_once() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("dedupe");
    kafka.create_topic(&env.topic(), 1);
    let core_addr = free_udp_addr();
    let _core = env.spawn_core(core_addr, &kafka.brokers);

    let client =
        sluice_edge::tls::quic_client_config(&env.pki.ca_cert, Some(&env.pki.edge_cert), Some(&env.pki.edge_key))
            .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let msg = frame_message(&env.region);
    let mut conn = None;
    for _ in 0..100 {
        match endpoint.connect(core_addr, "localhost").unwrap().await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let conn = conn.expect("core never accepted a connection");
    for attempt in 0..3 {
        assert_eq!(send(&conn, &msg).await, Ack::Stored, "attempt {attempt}");
    }

    let brokers = kafka.brokers.clone();
    let topic = env.topic();
    let msgs = tokio::task::spawn_blocking(move || {
        consume(&brokers, &topic, 3, Duration::from_secs(30), Duration::from_secs(3))
    })
    .await
    .unwrap();
    let mut ids: Vec<_> = msgs.iter().map(|m| m.headers["event_id"].clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["dup-0", "dup-1", "dup-2"]);
}
