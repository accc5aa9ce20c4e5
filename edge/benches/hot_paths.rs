//! Micro-benchmarks of the per-event hot path of an edge and of the forwarder's framing:
//! body parse + validate + normalize, WAL record encoding, zstd frame compression.
//!
//! `cargo bench -p sluice-edge`. Throughput is reported per event (or per byte for zstd).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_edge::body::{self, BodyFormat};
use sluice_edge::validate::{self, BatchContext};
use sluice_wire::record::encode_record;
use sluice_wire::{BatchRecord, Stream, frame};

const EVENTS: usize = 100;

/// 300-byte events shaped like an SDK's: name, identity, RFC 3339 time, a few properties.
fn body(events: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for i in 0..events {
        if i > 0 {
            out.push(b',');
        }
        let head = format!(
            r#"{{"event":"page_view","distinct_id":"user-{i:08}","timestamp":"2026-11-25T12:00:00Z","properties":{{"path":"/docs/{i}","pad":""#
        );
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b'x', 300 - head.len() - 3));
        out.extend_from_slice(br#""}}"#);
    }
    out.push(b']');
    out
}

fn ctx() -> BatchContext<'static> {
    BatchContext {
        batch_id: uuid::Uuid::now_v7(),
        tenant: "acme",
        env: "prod",
        region: "eu-west",
        received_at_ms: 1_764_072_000_000,
    }
}

fn record(raw: &[u8]) -> BatchRecord {
    let c = ctx();
    let shared = c.shared_fields();
    let events = body::parse(raw, BodyFormat::JsonArray, 500)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, e)| validate::normalize_element(&c, &shared, i, e).unwrap())
        .collect();
    BatchRecord {
        batch_id: c.batch_id,
        tenant: c.tenant.into(),
        env: c.env.into(),
        region: c.region.into(),
        received_at_ms: c.received_at_ms,
        stream: Stream::Events,
        events,
    }
}

fn parse_validate_normalize(c: &mut Criterion) {
    let raw = body(EVENTS);
    let ctx = ctx();
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("parse+validate+normalize 100x300B", |b| {
        b.iter(|| {
            let events = body::parse(black_box(&raw), BodyFormat::JsonArray, 500).unwrap();
            let shared = ctx.shared_fields();
            let out: Vec<_> =
                events.into_iter().enumerate().map(|(i, e)| validate::normalize_element(&ctx, &shared, i, e)).collect();
            black_box(out)
        })
    });
    let rec = record(&raw);
    g.bench_function("encode_record 100 events", |b| {
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            buf.clear();
            encode_record(black_box(&rec), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
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

criterion_group!(benches, parse_validate_normalize, zstd_framing);
criterion_main!(benches);
