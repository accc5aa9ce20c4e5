//! `sluicectl wal ls|inspect|verify|dump` and `replay --to-file` on a WAL written by the real
//! writer: the counts, the ack split and the damage reports must be exact (an operator acts on
//! them after a crash), and the `--json` shapes are pinned here so scripts do not break.

use std::path::Path;

use serde_json::json;
use sluice_edge::config::{Preallocate, WalConfig};
use sluice_edge::wal::{Position, Wal};
use sluice_ops::wal::{self, DumpFilter};
use sluice_tests::walfile;
use sluice_wire::record::{encode_record, encode_record_compressed, is_compressed};
use sluice_wire::{BatchRecord, EventRecord, Stream};

const T0: u64 = 1_764_064_800_000;

/// Record `i`: tenant acme (even) or zeta (odd), two ~3 KB events, received at T0 + i s.
fn record(i: u64) -> BatchRecord {
    BatchRecord {
        batch_id: uuid::Uuid::from_u128(u128::from(i) + 1),
        tenant: if i.is_multiple_of(2) { "acme" } else { "zeta" }.into(),
        env: "prod".into(),
        region: "eu".into(),
        received_at_ms: T0 + i * 1000,
        stream: Stream::Events,
        events: (0..2)
            .map(|e| EventRecord {
                event_id: format!("e{i}-{e}"),
                json: json!({ "event_id": format!("e{i}-{e}"), "pad": "x".repeat(3000) }).to_string().into_bytes(),
            })
            .collect(),
        traceparent: None,
        shared: Vec::new(),
    }
}

fn encoded(i: u64) -> Vec<u8> {
    let mut b = Vec::new();
    encode_record(&record(i), &mut b).expect("encode");
    b
}

/// The tests below pin where each record is: segments that grow, rotated only when full (a
/// writer on a growing segment moves to a prepared one as soon as it is ready, at any record).
fn config(dir: &Path) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 16 * 1024,
        preallocate: Preallocate::Off,
        ..WalConfig::default()
    }
}

/// Six records through the real WAL writer with 16 KiB segments (two records per segment:
/// segments 1, 2, 3), core having acked record 0 only.
async fn fixture(dir: &Path) -> u64 {
    let config = config(dir);
    let (wal, mut reader) = Wal::open(&config).expect("open");
    for i in 0..6 {
        wal.append(encoded(i)).await.expect("append");
    }
    let len = encoded(0).len() as u64;
    tokio::task::block_in_place(|| reader.ack(Position { segment: 1, offset: len })).expect("ack");
    len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_json_is_exact_and_stable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let len = fixture(&dir).await;
    assert!((0..6).all(|i| encoded(i).len() as u64 == len), "fixture records have one size");
    let got = serde_json::to_value(wal::inspect(&dir).expect("inspect")).expect("json");
    let seg = |seq: u64, unacked: u64, first: u64| {
        json!({
            "seq": seq, "file": format!("{seq:020}.wal"), "bytes": 2 * len, "state": "live",
            "records": 2, "events": 4, "unacked_records": unacked, "unacked_bytes": unacked * len, "damaged": 0,
            "oldest_received_at_ms": T0 + first * 1000, "newest_received_at_ms": T0 + (first + 1) * 1000,
        })
    };
    let tenant = |name: &str, unacked: u64| {
        json!({ "tenant": name, "env": "prod", "records": 3, "events": 6, "dead_letters": 0,
                "unacked_records": unacked, "unacked_events": 2 * unacked })
    };
    let want = json!({
        "dir": dir.display().to_string(),
        "acked": { "segment": 1, "offset": len },
        "segments": [seg(1, 1, 0), seg(2, 2, 2), seg(3, 2, 4)],
        "totals": {
            "seq": 0, "file": "total", "bytes": 6 * len, "state": "total", "records": 6, "events": 12,
            "unacked_records": 5, "unacked_bytes": 5 * len, "damaged": 0,
            "oldest_received_at_ms": T0, "newest_received_at_ms": T0 + 5000,
        },
        "tenants": [tenant("acme", 2), tenant("zeta", 3)],
    });
    assert_eq!(got, want);
    let table = wal::render_ls(&wal::inspect(&dir).expect("inspect"));
    assert!(
        table.contains("00000000000000000002.wal") && table.contains("acked watermark: segment 1 offset"),
        "{table}"
    );
}

/// A flipped bit in an older segment is reported as corruption at the damaged record's offset;
/// garbage after the last record of the last segment is a torn tail (expected after a crash).
/// The records after the damage are still readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_bit_flip_at_its_record_and_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let len = fixture(&dir).await;
    let clean = wal::verify(&dir).expect("verify");
    assert!(clean.ok && clean.damage.is_empty() && clean.records == 6, "{clean:?}");

    // Second record of segment 2, a byte in the middle of its body.
    let seg2 = walfile::segments(&dir)[1].clone();
    walfile::flip_byte(&seg2, (len + len / 2) as usize);
    let seg3 = walfile::segments(&dir)[2].clone();
    let mut torn = encoded(9);
    torn.truncate(100);
    let mut data = std::fs::read(&seg3).expect("read");
    data.extend_from_slice(&torn);
    std::fs::write(&seg3, &data).expect("write");

    let v = wal::verify(&dir).expect("verify");
    assert!(!v.ok);
    assert_eq!(v.records, 5);
    let got = serde_json::to_value(&v).expect("json");
    assert_eq!(got["damage"][0]["error"].as_str().map(|e| e.contains("checksum")), Some(true), "{got}");
    let mut damage = got["damage"].clone();
    for d in damage.as_array_mut().expect("array") {
        d.as_object_mut().expect("object").remove("error");
    }
    assert_eq!(
        damage,
        json!([
            { "segment": 2, "file": "00000000000000000002.wal", "offset": len, "bytes": len, "kind": "corrupt" },
            { "segment": 3, "file": "00000000000000000003.wal", "offset": 2 * len, "bytes": 100, "kind": "torn_tail" },
        ])
    );
    let mut keys: Vec<&str> = got.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["bytes", "damage", "dir", "ok", "records", "segments"]);
    let text = wal::render_verify(&v);
    assert!(text.contains(&format!("00000000000000000002.wal: CORRUPT at offset {len}")), "{text}");

    // The torn tail alone passes.
    std::fs::write(&seg2, [encoded(2), encoded(3)].concat()).expect("repair");
    assert!(wal::verify(&dir).expect("verify").ok);

    let mut out = Vec::new();
    assert_eq!(wal::dump(&dir, &DumpFilter::default(), &mut out).expect("dump"), 6);
}

fn dump_ids(dir: &Path, filter: &DumpFilter) -> Vec<String> {
    let mut out = Vec::new();
    wal::dump(dir, filter, &mut out).expect("dump");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("NDJSON line")["batch_id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn id(i: u128) -> String {
    uuid::Uuid::from_u128(i + 1).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_prints_ndjson_and_filters_by_tenant_time_batch_and_ack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    fixture(&dir).await;
    assert_eq!(dump_ids(&dir, &DumpFilter::default()), (0..6).map(id).collect::<Vec<_>>());
    let acme = DumpFilter { tenant: Some("acme".into()), ..DumpFilter::default() };
    assert_eq!(dump_ids(&dir, &acme), [id(0), id(2), id(4)]);
    let window = DumpFilter { since_ms: Some(T0 + 1000), until_ms: Some(T0 + 3000), ..DumpFilter::default() };
    assert_eq!(dump_ids(&dir, &window), [id(1), id(2)]);
    let one = DumpFilter { batch_id: Some(uuid::Uuid::from_u128(5)), ..DumpFilter::default() };
    assert_eq!(dump_ids(&dir, &one), [id(4)]);
    let unacked = DumpFilter { unacked_only: true, ..DumpFilter::default() };
    assert_eq!(dump_ids(&dir, &unacked), (1..6).map(id).collect::<Vec<_>>());

    let mut out = Vec::new();
    wal::dump(&dir, &one, &mut out).expect("dump");
    let line: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let len = encoded(0).len() as u64;
    assert_eq!(
        line,
        json!({
            "segment": 3, "offset": 0, "acked": false, "batch_id": id(4), "tenant": "acme", "env": "prod",
            "region": "eu", "received_at_ms": T0 + 4000, "stream": "events", "traceparent": null,
            "events": [
                { "event_id": "e4-0", "event": { "event_id": "e4-0", "pad": "x".repeat(3000) } },
                { "event_id": "e4-1", "event": { "event_id": "e4-1", "pad": "x".repeat(3000) } },
            ],
        })
    );
    let first = dump_ids(&dir, &DumpFilter::default());
    assert_eq!(first.len(), 6, "acked record 0 ({len} bytes) is still printed without --unacked");
}

/// `replay --to-file` writes the unacked records (or, with `--all`, every record) as NDJSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_file_writes_the_selected_records() {
    use sluice_ops::replay::{self, ReplayOptions, Target};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    fixture(&dir).await;
    for (all, want) in [(false, (1..6).map(id).collect::<Vec<_>>()), (true, (0..6).map(id).collect())] {
        let out = tmp.path().join(format!("out-{all}.ndjson"));
        let opts = ReplayOptions {
            dir: dir.clone(),
            all,
            include_quarantined: false,
            state_file: replay::default_state_file(&dir),
            restart: false,
            frame_bytes: 10_000,
        };
        let summary =
            replay::run(&opts, Target::File(out.clone()), &indicatif::ProgressBar::hidden()).await.expect("replay");
        assert_eq!(summary.records as usize, want.len());
        assert_eq!(summary.skipped_acked, if all { 0 } else { 1 });
        let got = batch_ids_in(&out);
        assert_eq!(got, want);
    }
    assert!(!replay::default_state_file(&dir).exists(), "--to-file keeps no progress file");
}

/// The `batch_id` of every line of an NDJSON replay output, in order.
fn batch_ids_in(ndjson: &Path) -> Vec<String> {
    std::fs::read_to_string(ndjson)
        .expect("replay output")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("line")["batch_id"].as_str().unwrap_or("").into())
        .collect()
}

/// A quarantined segment (renamed `*.corrupt` by the forwarder) is listed as such, its damage is
/// reported, and `replay --include-quarantined` salvages the valid records around the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_segments_are_listed_and_salvaged_on_request() {
    use sluice_ops::replay::{self, ReplayOptions, Target};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let len = fixture(&dir).await;
    let seg2 = walfile::segments(&dir)[1].clone();
    walfile::flip_byte(&seg2, (len / 2) as usize);
    std::fs::rename(&seg2, seg2.with_extension("corrupt")).expect("quarantine");

    let i = wal::inspect(&dir).expect("inspect");
    let states: Vec<(u64, &str, u64, u64)> =
        i.segments.iter().map(|s| (s.seq, s.state, s.records, s.damaged)).collect();
    assert_eq!(states, [(1, "live", 2, 0), (2, "quarantined", 1, 1), (3, "live", 2, 0)]);
    let v = wal::verify(&dir).expect("verify");
    assert!(!v.ok);
    assert_eq!((v.damage.len(), v.damage[0].segment, v.damage[0].offset, v.damage[0].kind), (1, 2, 0, "corrupt"));

    for (include, want) in [(false, vec![id(1), id(4), id(5)]), (true, vec![id(1), id(3), id(4), id(5)])] {
        let out = tmp.path().join(format!("salvage-{include}.ndjson"));
        let opts = ReplayOptions {
            dir: dir.clone(),
            all: false,
            include_quarantined: include,
            state_file: replay::default_state_file(&dir),
            restart: false,
            frame_bytes: 1 << 20,
        };
        let summary =
            replay::run(&opts, Target::File(out.clone()), &indicatif::ProgressBar::hidden()).await.expect("replay");
        assert_eq!(summary.damaged, u64::from(include));
        let got = batch_ids_in(&out);
        assert_eq!(got, want, "include_quarantined={include}");
    }
}

/// A WAL written before and after `wal.zstd_level` was turned on holds both record formats:
/// every tool reads both the same (counts, the ack split, the events as produced, replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_read_compressed_and_uncompressed_records_alike() {
    use sluice_ops::replay::{self, ReplayOptions, Target};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let (wal, mut reader) = Wal::open(&config(&dir)).expect("open");
    let mut sizes = Vec::new();
    for i in 0..6 {
        // Odd records compressed: segments hold both formats side by side.
        let bytes = if i % 2 == 1 {
            let mut b = Vec::new();
            encode_record_compressed(&record(i), 1, &mut b).expect("encode");
            assert!(is_compressed(&b), "a 6 KB record of padding compresses");
            b
        } else {
            encoded(i)
        };
        sizes.push(bytes.len() as u64);
        wal.append(bytes).await.expect("append");
    }
    assert!(sizes[1] * 10 < sizes[0], "compressed {} vs {} bytes", sizes[1], sizes[0]);
    tokio::task::block_in_place(|| reader.ack(Position { segment: 1, offset: sizes[0] + sizes[1] })).expect("ack");

    let inspection = serde_json::to_value(wal::inspect(&dir).expect("inspect")).expect("json");
    let totals = &inspection["totals"];
    assert_eq!((totals["records"].as_u64(), totals["events"].as_u64()), (Some(6), Some(12)), "{inspection}");
    assert_eq!(totals["unacked_records"].as_u64(), Some(4));
    assert_eq!(totals["bytes"].as_u64(), Some(sizes.iter().sum()));
    let verified = wal::verify(&dir).expect("verify");
    assert_eq!((verified.records, verified.ok, verified.damage.len()), (6, true, 0));

    let mut out = Vec::new();
    assert_eq!(wal::dump(&dir, &DumpFilter::default(), &mut out).expect("dump"), 6);
    let plain: Vec<_> = (0..6).map(|i| wal::record_json(0, 0, false, &record(i))).collect();
    let dumped: Vec<serde_json::Value> =
        String::from_utf8(out).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("ndjson")).collect();
    for (got, want) in dumped.iter().zip(&plain) {
        assert_eq!((&got["batch_id"], &got["events"]), (&want["batch_id"], &want["events"]));
    }

    let file = tmp.path().join("replayed.ndjson");
    let opts = ReplayOptions {
        dir: dir.clone(),
        all: true,
        include_quarantined: false,
        state_file: replay::default_state_file(&dir),
        restart: false,
        frame_bytes: 10_000,
    };
    replay::run(&opts, Target::File(file.clone()), &indicatif::ProgressBar::hidden()).await.expect("replay");
    assert_eq!(batch_ids_in(&file), (0..6).map(id).collect::<Vec<_>>());
}

/// The segment being written is prepared ahead: zeros after its records, up to its full size.
/// The tools read a live WAL like that as it is, with no damage reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_read_a_segment_prepared_ahead_without_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    // `Inline`: the first segment is prepared as the WAL opens.
    let (wal, _reader) = Wal::open(&WalConfig { preallocate: Preallocate::Inline, ..config(&dir) }).expect("open");
    for i in 0..3 {
        wal.append(encoded(i)).await.expect("append");
    }
    let segment = walfile::segments(&dir).pop().expect("a segment");
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), 16 * 1024, "prepared");
    let report = wal::verify(&dir).expect("verify");
    assert!(report.ok && report.damage.is_empty() && report.records == 3, "{report:?}");
    let inspection = serde_json::to_value(wal::inspect(&dir).expect("inspect")).expect("json");
    assert_eq!(inspection["totals"]["records"].as_u64(), Some(3), "{inspection}");
}
