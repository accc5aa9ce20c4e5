//! Several core nodes per region: the edge routes each tenant to one node by rendezvous hashing,
//! and when a node dies mid-load its tenants move to their next choice (and back once it
//! returns). The ledger must show 0 lost; duplicates (a batch whose first copy reached the dead
//! node) are counted and bounded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_edge::routing::{CoreNode, Rendezvous};
use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Driver, Ledger, check};
use sluice_tests::metrics::{sample, try_scrape};
use sluice_tests::procs::{EdgeOpts, TestEnv};
use sluice_tests::wait_until;
use sluice_tests::{free_tcp_addr, free_udp_addr};

const NAMES: [&str; 3] = ["core-a", "core-b", "core-c"];
const FRAME_BYTES: usize = 32 * 1024;

fn delivered(admin: SocketAddr) -> f64 {
    let text = try_scrape(admin).unwrap_or_default();
    sample(&text, "sluice_core_delivered_events_total", r#"stream="events""#).unwrap_or(0.0)
}

#[test]
fn killed_core_node_moves_its_tenants_without_loss() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("corenodes");
    kafka.create_topic(&env.topic(), 3);
    let addrs: Vec<SocketAddr> = NAMES.iter().map(|_| free_udp_addr()).collect();
    let admins: Vec<SocketAddr> = NAMES.iter().map(|_| free_tcp_addr()).collect();
    let mut cores: Vec<_> =
        (0..3).map(|i| env.spawn_core_node(NAMES[i], addrs[i], &kafka.brokers, admins[i])).collect();

    // Two tenants per node, chosen with the edge's own routing so every node has traffic.
    let routing =
        Rendezvous::new(NAMES.iter().zip(&addrs).map(|(n, a)| CoreNode { id: n.to_string(), addr: *a }).collect());
    let mut per_node = [0; 3];
    let mut tenants = Vec::new();
    // Ledger ID prefixes of the tenants whose first choice is core-b.
    let mut on_b = Vec::new();
    for t in (0..).map(|i| format!("tenant-{i}")) {
        let node = routing.pick(&t, |_| true).expect("a node");
        if per_node[node] < 2 {
            per_node[node] += 1;
            if node == 1 {
                on_b.push(format!("cn{}-", tenants.len()));
            }
            tenants.push(t);
        }
        if tenants.len() == 6 {
            break;
        }
    }
    let keys: Vec<String> =
        tenants.iter().map(|t| sluice_ops::keys::add(&env.keys_file, t, "prod").expect("key").1).collect();

    let nodes: Vec<String> =
        NAMES.iter().zip(&addrs).map(|(n, a)| format!(r#"{{ id = "{n}", addr = "{a}" }}"#)).collect();
    let opts = EdgeOpts {
        frame_bytes: Some(FRAME_BYTES),
        ack_timeout_secs: Some(3),
        // Lands in the edge config's [forwarder] section, which `extra_toml` continues.
        extra_toml: format!("core_nodes = [{}]\nnode_retry_secs = 2\n", nodes.join(", ")),
        ..EdgeOpts::default()
    };
    let http = free_tcp_addr();
    let _edge = env.spawn_edge_with(http, addrs[0], &opts);
    let collector = Collector::start(&kafka.brokers, &env.topic());
    let ledger = Ledger::new();
    let drivers: Vec<Driver> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Driver::start(&ledger, http, key, &format!("cn{i}"), 1, 10, Duration::from_millis(20)))
        .collect();

    wait_until("every core node delivering", Duration::from_secs(60), || admins.iter().all(|a| delivered(*a) > 0.0));
    // Kill core-b mid-load: its tenants' new events must reach Kafka while it is still dead,
    // so through core-a or core-c.
    cores[1].kill9();
    let killed_at = Instant::now();
    let before = ledger.accepted();
    let on_b_since = || -> HashSet<String> {
        ledger
            .accepted()
            .difference(&before)
            .filter(|id| on_b.iter().any(|p| id.starts_with(p.as_str())))
            .cloned()
            .collect()
    };
    // A fixed set: re-reading the ledger on every poll would also demand the events accepted a
    // moment ago, and a steady stream is never fully caught up.
    wait_until("100 events of core-b's tenants accepted after the kill", Duration::from_secs(60), || {
        on_b_since().len() >= 100
    });
    let moved = on_b_since();
    assert!(
        collector.wait_for(&moved, Duration::from_secs(60)),
        "{} of {} events of core-b's tenants not delivered while core-b is dead",
        collector.missing(&moved),
        moved.len()
    );
    // core-b comes back (same data dir); after node_retry_secs its tenants return to it.
    cores[1] = env.spawn_core_node(NAMES[1], addrs[1], &kafka.brokers, admins[1]);
    wait_until("core-b delivering again", Duration::from_secs(60), || delivered(admins[1]) > 0.0);
    for d in drivers {
        d.stop();
    }

    let want = ledger.accepted();
    collector.wait_for(&want, Duration::from_secs(90));
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let report = check("core node kill -9 (3 nodes)", &ledger, &seen, malformed, &HashSet::new(), Some(killed_at));
    report.print();
    report.assert_no_loss();
    // Only frames in flight to core-b when it died can be produced twice: a window of 4 frames of
    // at most FRAME_BYTES, each request's record > 1 KiB.
    let bound = 4 * (FRAME_BYTES / 1024 + 1);
    assert!(report.duplicated_batches <= bound, "{} duplicated batches (bound {bound})", report.duplicated_batches);
}
