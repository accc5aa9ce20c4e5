//! `sluicectl wal dump` filters through the real command line: `--tenant`, `--since`/`--until`
//! (epoch milliseconds or RFC 3339; since inclusive, until exclusive), `--batch-id` and
//! `--unacked`, alone and combined, and a clear error for a time it cannot parse. The filter
//! logic itself is pinned in `tests/tests/wal_tools.rs`; this guards the flags' wiring.

use std::path::Path;
use std::process::Command;

use sluice_edge::config::WalConfig;
use sluice_edge::wal::{Position, Wal};
use sluice_wire::record::encode_record;
use sluice_wire::{BatchRecord, EventRecord, Stream};

/// 2025-11-25T10:00:00Z.
const T0: u64 = 1_764_064_800_000;
const TENANTS: [&str; 4] = ["acme", "zeta", "acme", "acme"];

fn batch_id(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(i as u128 + 1)
}

fn encoded(i: usize) -> Vec<u8> {
    let record = BatchRecord {
        batch_id: batch_id(i),
        tenant: TENANTS[i].into(),
        env: "prod".into(),
        region: "eu".into(),
        received_at_ms: T0 + i as u64 * 1000,
        stream: Stream::Events,
        events: vec![EventRecord { event_id: format!("e{i}"), json: format!(r#"{{"event_id":"e{i}"}}"#).into_bytes() }],
        traceparent: None,
        shared: Vec::new(),
    };
    let mut b = Vec::new();
    encode_record(&record, &mut b).expect("encode");
    b
}

/// Records 0–3 (tenants above, received 1 s apart), core having acked record 0.
async fn fixture(dir: &Path) {
    let (wal, mut reader) = Wal::open(&WalConfig { dir: dir.to_path_buf(), ..WalConfig::default() }).expect("open");
    for i in 0..TENANTS.len() {
        wal.append(encoded(i)).await.expect("append");
    }
    let first = encoded(0).len() as u64;
    tokio::task::block_in_place(|| reader.ack(Position { segment: 1, offset: first })).expect("ack");
}

/// Runs `sluicectl wal dump <dir> <args>`; the batch IDs printed, or the error text.
fn dump(dir: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["wal", "dump"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run sluicectl");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("NDJSON")["batch_id"].as_str().unwrap_or("").into()
        })
        .collect();
    assert!(stderr.contains(&format!("{} records", ids.len())), "summary on stderr: {stderr}");
    Ok(ids)
}

fn ids(records: &[usize]) -> Result<Vec<String>, String> {
    Ok(records.iter().map(|&i| batch_id(i).to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_flags_select_records_alone_and_combined() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    fixture(&dir).await;
    let until = (T0 + 3000).to_string();
    let id3 = batch_id(3).to_string();
    assert_eq!(dump(&dir, &[]), ids(&[0, 1, 2, 3]));
    assert_eq!(dump(&dir, &["--tenant", "acme"]), ids(&[0, 2, 3]));
    assert_eq!(dump(&dir, &["--since", "2025-11-25T10:00:01Z", "--until", &until]), ids(&[1, 2]), "RFC 3339 and ms");
    assert_eq!(dump(&dir, &["--tenant", "acme", "--since", "2025-11-25T10:00:01Z", "--until", &until]), ids(&[2]));
    assert_eq!(dump(&dir, &["--tenant", "acme", "--unacked"]), ids(&[2, 3]));
    assert_eq!(dump(&dir, &["--batch-id", &id3]), ids(&[3]));
    assert_eq!(dump(&dir, &["--batch-id", &id3, "--tenant", "zeta"]), ids(&[]), "filters combine with AND");
    let err = dump(&dir, &["--since", "yesterday"]).expect_err("an unparseable time is refused");
    assert!(err.contains("neither epoch milliseconds nor RFC 3339"), "{err}");
}
