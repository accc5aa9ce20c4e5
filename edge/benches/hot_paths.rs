//! Micro-benchmarks of the per-event hot path of an edge and of the forwarder's framing:
//! body parse + validate + normalize (of an array, an envelope and NDJSON; and the parse alone),
//! WAL record encoding, zstd frame compression, and the admission checks every request passes,
//! and one WAL group commit (write + `fdatasync`) through the storage trait beside the same
//! syscalls on a plain `File`, in the same run.
//!
//! `cargo bench -p sluice-edge`. Throughput is reported per event (or per byte for zstd).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_edge::config::{LimitsConfig, PiiPolicy, ValidationConfig};
use sluice_edge::ingest::auth::Principal;
use sluice_edge::ingest::body::BodyFormat;
use sluice_edge::ingest::{self, Prepared, Request};
use sluice_wire::record::{encode_record, encode_record_compressed};
use sluice_wire::{BatchRecord, Stream, frame};

const EVENTS: usize = 100;

/// One 300-byte event shaped like an SDK's: name, identity, RFC 3339 time, a few properties.
fn event(i: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"event":"page_view","distinct_id":"user-{i:08}","timestamp":"2026-11-25T10:00:00Z","properties":{{"path":"/docs/{i}","pad":""#
    );
    let mut out = head.as_bytes().to_vec();
    out.extend(std::iter::repeat_n(b'x', 300 - head.len() - 3));
    out.extend_from_slice(br#""}}"#);
    out
}

/// A JSON array of `events` 300-byte events.
fn body(events: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for i in 0..events {
        if i > 0 {
            out.push(b',');
        }
        out.extend(event(i));
    }
    out.push(b']');
    out
}

/// The same events in the envelope PostHog and Segment SDKs send (and their translations are).
fn envelope(events: usize) -> Vec<u8> {
    let mut out = br#"{"sent_at":"2026-11-25T10:00:01Z","batch":"#.to_vec();
    out.extend(body(events));
    out.push(b'}');
    out
}

/// The same events as NDJSON.
fn ndjson(events: usize) -> Vec<u8> {
    (0..events).flat_map(|i| event(i).into_iter().chain([b'\n'])).collect()
}

struct Fixture {
    principal: Principal,
    limits: LimitsConfig,
    rules: ValidationConfig,
    pii: PiiPolicy,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            principal: Principal {
                key_id: "k".into(),
                tenant: "acme".into(),
                env: "prod".into(),
                signing_secret: None,
            },
            limits: LimitsConfig::default(),
            rules: ValidationConfig::default(),
            pii: PiiPolicy::default(),
        }
    }

    /// The whole per-request pipeline of `POST /v1/events` after the body is read: parse, validate,
    /// normalize every event.
    fn prepare(&self, raw: &[u8]) -> Prepared {
        self.prepare_as(raw, BodyFormat::JsonArray)
    }

    fn prepare_as(&self, raw: &[u8], format: BodyFormat) -> Prepared {
        let request = Request {
            principal: &self.principal,
            region: "eu-west",
            batch_id: uuid::Uuid::now_v7(),
            received_at_ms: 1_795_600_800_000,
            body: raw,
            format,
            limits: &self.limits,
            rules: &self.rules,
            pii: &self.pii,
            api: None,
        };
        ingest::prepare(&request).unwrap()
    }
}

fn record(raw: &[u8]) -> BatchRecord {
    let p = Fixture::new().prepare(raw);
    assert!(p.rejected.is_empty());
    BatchRecord {
        batch_id: p.batch_id,
        tenant: "acme".into(),
        env: "prod".into(),
        region: "eu-west".into(),
        received_at_ms: p.received_at_ms,
        stream: Stream::Events,
        events: p.accepted,
        traceparent: None,
        shared: p.shared,
    }
}

fn parse_validate_normalize(c: &mut Criterion) {
    let raw = body(EVENTS);
    let fixture = Fixture::new();
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("parse+validate+normalize 100x300B", |b| b.iter(|| black_box(fixture.prepare(black_box(&raw)))));
    let wrapped = envelope(EVENTS);
    assert_eq!(fixture.prepare(&wrapped).accepted.len(), EVENTS);
    g.bench_function("parse+validate+normalize 100x300B envelope", |b| {
        b.iter(|| black_box(fixture.prepare(black_box(&wrapped))))
    });
    let lines = ndjson(EVENTS);
    assert_eq!(fixture.prepare_as(&lines, BodyFormat::Ndjson).accepted.len(), EVENTS);
    g.bench_function("parse+validate+normalize 100x300B ndjson", |b| {
        b.iter(|| black_box(fixture.prepare_as(black_box(&lines), BodyFormat::Ndjson)))
    });
    let limit = fixture.limits.max_events;
    g.bench_function("batch::parse alone 100x300B", |b| {
        b.iter(|| black_box(sluice_edge::ingest::batch::parse(black_box(&raw), BodyFormat::JsonArray, limit).unwrap()))
    });
    g.finish();
}

/// A request's record, uncompressed (version 3) and compressed (version 5) at the default level,
/// for a one-event and a 100-event request: what compression costs per call and per event.
fn record_encoding(c: &mut Criterion) {
    let level = sluice_edge::config::WalConfig::default().zstd_level;
    let mut g = c.benchmark_group("record");
    for events in [1, EVENTS] {
        let rec = record(&body(events));
        g.throughput(Throughput::Elements(events as u64));
        let mut buf = Vec::with_capacity(64 * 1024);
        g.bench_function(format!("encode_record {events} events"), |b| {
            b.iter(|| {
                buf.clear();
                encode_record(black_box(&rec), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        g.bench_function(format!("encode_record_compressed {events} events"), |b| {
            b.iter(|| {
                buf.clear();
                encode_record_compressed(black_box(&rec), level, &mut buf).unwrap();
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn zstd_framing(c: &mut Criterion) {
    let rec = record(&body(EVENTS));
    let mut raw = Vec::new();
    while raw.len() < 1 << 20 {
        encode_record(&rec, &mut raw).unwrap();
    }
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("zstd compress 1 MiB level 3", |b| b.iter(|| black_box(frame::compress(&raw, 3).unwrap())));
    let z = frame::compress(&raw, 3).unwrap();
    g.bench_function("zstd decompress + decode 1 MiB", |b| {
        b.iter(|| black_box(frame::decompress(&z, raw.len()).unwrap()))
    });
    g.finish();
}

/// What admission control adds to one accepted request of a rate-limited tenant: the in-flight
/// permits, the WAL-pressure check, the bucket charge on arrival and its settlement, and the
/// usage record.
fn admission(c: &mut Criterion) {
    use sluice_edge::config::AdmissionConfig;
    use sluice_edge::ingest::admission::Admission;
    use sluice_edge::ingest::auth::KeyStore;
    let refusals = prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
    // A quota no benchmark loop reaches, so every request is admitted.
    let config = AdmissionConfig { tenant_events_per_sec: u32::MAX / 4, ..AdmissionConfig::default() };
    let a = Admission::new(config, 512 * 1024, 1 << 33, refusals, sluice_edge::clock::Clock::real());
    let keys = KeyStore::default();
    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit+charge+record one request", |b| {
        b.iter(|| {
            let _in_flight = a.enter(Some(30_000)).unwrap();
            let admitted = a.admit(&keys, black_box("acme"), 1 << 20).unwrap().unwrap();
            black_box(a.charge(&admitted, EVENTS).unwrap());
            a.record("acme", 30_000, EVENTS as u64);
        })
    });
    g.finish();
}

/// A 256 KiB group commit (positional write + `fdatasync`) through `dyn StorageFile`, as the WAL
/// writer does it, and on a plain `File`, alternately in one run: the trait must cost nothing
/// next to the syscalls. Files live in `SLUICE_BENCH_DIR` (default: the system temp dir; a tmpfs
/// there shows the dispatch cost without the disk's).
fn wal_group_commit(c: &mut Criterion) {
    use sluice_edge::wal::storage::{FileStorage, Storage};
    use std::os::unix::fs::FileExt;
    let base = std::env::var_os("SLUICE_BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let group = vec![7u8; 256 * 1024];
    const GROUPS_PER_FILE: u64 = 64;
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Bytes(group.len() as u64));
    g.sample_size(30);
    let mut via_trait = FileStorage.create_new(&dir.path().join("trait.wal")).unwrap();
    let mut n = 0u64;
    g.bench_function("group commit 256 KiB via dyn StorageFile", |b| {
        b.iter(|| {
            let offset = (n % GROUPS_PER_FILE) * group.len() as u64;
            n += 1;
            via_trait.write_at(black_box(&group), offset).unwrap();
            via_trait.sync_data().unwrap();
        })
    });
    let plain =
        std::fs::File::options().read(true).write(true).create_new(true).open(dir.path().join("plain.wal")).unwrap();
    let mut m = 0u64;
    g.bench_function("group commit 256 KiB on std::fs::File", |b| {
        b.iter(|| {
            let offset = (m % GROUPS_PER_FILE) * group.len() as u64;
            m += 1;
            plain.write_all_at(black_box(&group), offset).unwrap();
            plain.sync_data().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, parse_validate_normalize, record_encoding, zstd_framing, admission, wal_group_commit);
criterion_main!(benches);
