//! `sluicectl bench` in its smoke configuration: every part of the suite measures something. An
//! integration test because the replicated phases start their peer edge as `sluicectl edge`, a
//! process of its own, which needs the real binary.

use indicatif::{MultiProgress, ProgressDrawTarget};
use sluice_ops::bench::{self, BenchOptions, Phases, ReplicationRound};

#[test]
fn smoke_run_measures_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BenchOptions {
        phases: Phases::smoke(),
        connections: 4,
        peer_exe: Some(env!("CARGO_BIN_EXE_sluicectl").into()),
        ..BenchOptions::new(dir.path().to_path_buf())
    };
    let r = bench::run(&opts, &MultiProgress::with_draw_target(ProgressDrawTarget::hidden())).unwrap();
    let edge = &r.edge[0];
    assert!(edge.report.events_per_sec() > 0.0);
    assert!(edge.wal.groups > 0 && edge.events_per_server_cpu_sec() > 0.0);
    assert_eq!(edge.report.error_count(), 0);
    // The forwarder ran, as in production: the acking core acknowledged frames of this phase.
    assert!(edge.forwarded_frames.is_some_and(|n| n > 0), "{:?}", edge.forwarded_frames);
    // Every answered request made one WAL append, seen by the server-side histogram.
    let appends = edge.appends;
    assert!(appends.total >= edge.report.tally.ok_requests && appends.total > 0, "{appends:?}");
    assert!(appends.over_51ms <= appends.over_12ms && appends.over_12ms <= appends.total);
    // Every group commit's fdatasync was timed.
    assert_eq!(edge.fsyncs.total, edge.wal.groups, "{:?}", edge.fsyncs);
    // Every request the server answered was timed, including the warm-up's.
    let handled = edge.handled;
    assert!(handled.total >= appends.total, "{handled:?} vs {appends:?}");
    assert!(handled.p99_bound_ms > 0.0 && handled.p99_bound_ms.is_finite(), "{handled:?}");
    assert!(r.core.eps(r.core.core_serial) > 0.0 && r.core.eps(r.core.bare_serial) > 0.0);
    assert!(!r.e2e.freshness.is_empty(), "some events were seen in Kafka");

    // The replicated phases: the peer is another process, so its CPU is its own group, and its
    // stages (scraped from its /metrics) saw every group the origin replicated.
    let replicated = &r.replication[1];
    assert!(replicated.report.events_per_sec() > 0.0 && replicated.report.error_count() == 0);
    assert!(replicated.cpu.get("peer") > std::time::Duration::ZERO, "{:?}", replicated.cpu);
    assert_eq!(r.replication[0].cpu.get("peer"), std::time::Duration::ZERO, "local only has no peer");
    let fsync = replicated.stages.iter().find(|(name, _)| *name == "fsync").expect("the peer's fsync stage").1;
    assert!(fsync.total >= replicated.wal.groups && fsync.total > 0, "{fsync:?} vs {} groups", replicated.wal.groups);
    let round = ReplicationRound::of(&r.replication[..4]).expect("a whole round");
    assert!(round.cpu_ratio > 0.0 && round.max_ratio > 0.0);

    let table = bench::render(&opts, &r, "machine");
    assert!(table.contains("### 4. End to end"), "{table}");
    assert!(table.contains("p99 at 80% of max: within 15 ms in"), "{table}");
    assert!(table.contains("1: replicated R=2, closed loop"), "{table}");
    assert!(table.contains("| median |"), "{table}");
}
