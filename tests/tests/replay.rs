//! Recovering a dead node's disk: an edge that never reached core is `kill -9`ed, its WAL
//! directory is copied away, and `sluicectl replay` ships it to core. Every accepted event must
//! reach Kafka exactly once; replaying again (resumed, or from scratch with `--all`) must add no
//! duplicates, because every record keeps its batch ID and core dedupes by it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sluice_edge::routing::{CoreNode, Rendezvous};
use sluice_ops::replay::{self, CoreTarget, ReplayOptions, ReplaySummary, Target};
use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Ledger, Outcome, check};
use sluice_tests::procs::TestEnv;
use sluice_tests::{core_harness, free_tcp_addr, free_udp_addr, walfile};

/// Replay to `nodes` over mutual TLS with the dev PKI's edge certificate.
fn core_target(pki: &sluice_ops::devpki::DevPki, nodes: Vec<CoreNode>) -> Target {
    let client = sluice_edge::tls::quic_client_config(&pki.ca_cert, Some(&pki.edge_cert), Some(&pki.edge_key))
        .expect("client config");
    Target::Core(CoreTarget {
        routing: Rendezvous::new(nodes),
        server_name: "localhost".into(),
        client,
        edge_id: "replay-test".into(),
        zstd_level: 3,
        ack_timeout: Duration::from_secs(20),
        max_attempts: 10,
        max_in_flight: 4,
    })
}

fn run_replay(env: &TestEnv, core: std::net::SocketAddr, opts: &ReplayOptions) -> ReplaySummary {
    let target = core_target(&env.pki, vec![CoreNode { id: "core".into(), addr: core }]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(replay::run(opts, target, &indicatif::ProgressBar::hidden())).expect("replay")
}

#[test]
fn replaying_a_killed_nodes_wal_delivers_everything_exactly_once() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("replay");
    kafka.create_topic(&env.topic(), 3);
    let (http, core_addr) = (free_tcp_addr(), free_udp_addr());
    // The edge's core never answers: everything it accepts stays in its WAL.
    let mut edge = env.spawn_edge(http, core_addr);
    let ledger = Ledger::new();
    for r in 0..40 {
        let ids: Vec<String> = (0..10).map(|e| format!("replay-r{r}-e{e}")).collect();
        assert_eq!(ledger.post(http, &env.key, ids), Outcome::Accepted);
    }
    edge.kill9();
    let copied = env.path().join("dead-node-wal");
    walfile::copy_dir(&env.wal_dir(), &copied);
    let verified = sluice_ops::wal::verify(&copied).expect("verify");
    assert!(verified.ok && verified.records == 40, "{verified:?}");

    let core = env.spawn_core(core_addr, &kafka.brokers);
    let until = Instant::now() + Duration::from_secs(30);
    while !core.log().contains("core: listening") {
        assert!(Instant::now() < until, "core did not start:\n{}", core.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let collector = Collector::start(&kafka.brokers, &env.topic());
    let state_file = replay::default_state_file(&copied);
    let opts = ReplayOptions {
        dir: copied.clone(),
        all: false,
        include_quarantined: false,
        state_file: state_file.clone(),
        restart: false,
        // Several frames, so progress is recorded between them.
        frame_bytes: 16 * 1024,
    };
    let first = run_replay(&env, core_addr, &opts);
    assert_eq!((first.records, first.events), (40, 400), "{first:?}");
    assert!(first.frames > 1, "{first:?}");
    assert!(collector.wait_for(&ledger.accepted(), Duration::from_secs(60)), "not every accepted event arrived");

    // Run again: the progress file says everything was delivered.
    let again = run_replay(&env, core_addr, &opts);
    assert_eq!((again.records, again.skipped_done), (0, 40), "{again:?}");

    // Resume from the middle (as after an interrupted run): only the rest is sent.
    // The records may span segments: the first after a start gives way to a prepared one.
    let records: Vec<(u64, walfile::FoundRecord)> = walfile::segments(&copied)
        .iter()
        .flat_map(|path| {
            let seq: u64 =
                path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("segment name");
            walfile::records(path).into_iter().map(move |r| (seq, r))
        })
        .collect();
    assert_eq!(records.len(), 40);
    let (mid_segment, mid) = &records[25];
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("state")).expect("state json");
    state["next"] = serde_json::json!({ "segment": mid_segment, "offset": mid.offset });
    std::fs::write(&state_file, serde_json::to_vec(&state).expect("json")).expect("write state");
    let resumed = run_replay(&env, core_addr, &ReplayOptions { frame_bytes: 1 << 20, ..opts.clone() });
    assert_eq!((resumed.records, resumed.skipped_done), (15, 25), "{resumed:?}");

    // From scratch, every record: core's dedupe drops them all.
    let all = run_replay(&env, core_addr, &ReplayOptions { all: true, restart: true, ..opts.clone() });
    assert_eq!(all.records, 40, "{all:?}");

    let (seen, malformed) = collector.finish(Duration::from_secs(3));
    let report = check("replay of a killed node's WAL, 4 runs", &ledger, &seen, malformed, &HashSet::new(), None);
    report.print();
    report.assert_no_loss();
    assert_eq!(report.duplicated, 0, "replays must not duplicate (batch IDs are deduped by core)");
}

/// With several core nodes a replay sends each tenant's records to the node the forwarder would
/// (rendezvous hashing): each node's dedupe index only knows the batches it delivered, so a batch
/// sent elsewhere would be produced twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_routes_each_tenant_to_its_core_node() {
    use sluice_edge::config::WalConfig;
    use sluice_edge::wal::Wal;
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = sluice_ops::devpki::write_dev_pki(&tmp.path().join("pki")).expect("pki");
    let wal_dir = tmp.path().join("wal");
    let tenants: Vec<String> = (0..8).map(|t| format!("tenant-{t}")).collect();
    {
        let (wal, _reader) = Wal::open(&WalConfig { dir: wal_dir.clone(), ..WalConfig::default() }).expect("wal");
        for (i, tenant) in tenants.iter().enumerate() {
            let record = sluice_wire::BatchRecord {
                batch_id: uuid::Uuid::from_u128(i as u128 + 1),
                tenant: tenant.clone(),
                env: "prod".into(),
                region: "eu".into(),
                received_at_ms: 1_764_064_800_000,
                stream: sluice_wire::Stream::Events,
                events: vec![sluice_wire::EventRecord {
                    event_id: format!("ev-{i}"),
                    json: serde_json::json!({ "event_id": format!("ev-{i}"), "tenant": tenant })
                        .to_string()
                        .into_bytes(),
                }],
                traceparent: None,
                shared: Vec::new(),
            };
            let mut bytes = Vec::new();
            sluice_wire::record::encode_record(&record, &mut bytes).expect("encode");
            wal.append(bytes).await.expect("append");
        }
    }
    let mut cores = Vec::new();
    for name in ["a", "b"] {
        let dir = tmp.path().join(format!("core-{name}"));
        let config = core_harness::file_sink_config("127.0.0.1:0".parse().expect("addr"), &pki, &dir);
        let core = sluice_core::start(config).await.expect("core");
        cores.push((core, core_harness::sink_file(&dir)));
    }
    let nodes: Vec<CoreNode> =
        cores.iter().zip(["core-a", "core-b"]).map(|((c, _), id)| CoreNode { id: id.into(), addr: c.addr }).collect();
    let routing = Rendezvous::new(nodes.clone());
    let target = core_target(&pki, nodes);
    let opts = ReplayOptions {
        dir: wal_dir.clone(),
        all: false,
        include_quarantined: false,
        state_file: replay::default_state_file(&wal_dir),
        restart: false,
        frame_bytes: 1 << 20,
    };
    let summary = replay::run(&opts, target, &indicatif::ProgressBar::hidden()).await.expect("replay");
    assert_eq!(summary.records, 8);
    let mut per_node = [0usize; 2];
    for (node, (_, sink)) in cores.iter().enumerate() {
        for line in std::fs::read_to_string(sink).unwrap_or_default().lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("json");
            let tenant = event["tenant"].as_str().expect("tenant");
            assert_eq!(routing.pick(tenant, |_| true), Some(node), "{tenant} landed on the wrong node");
            per_node[node] += 1;
        }
    }
    assert_eq!(per_node.iter().sum::<usize>(), 8, "every event delivered once: {per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "both nodes got tenants: {per_node:?}");
    for (core, _) in cores {
        core.shutdown().await;
    }
}
