//! A `202` survives `kill -9` of the edge while core is unreachable: the restarted edge recovers
//! its WAL and forwards every accepted event exactly once when core appears.

use std::collections::HashSet;
use std::time::Duration;

use sluice_tests::http::{events_body, post_events};
use sluice_tests::kafka::{TestKafka, consume};
use sluice_tests::procs::TestEnv;
use sluice_tests::{free_tcp_addr, free_udp_addr};

#[test]
fn accepted_events_survive_edge_kill_while_core_is_down() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("durability");
    kafka.create_topic(&env.topic(), 3);
    let core_addr = free_udp_addr();
    let http = free_tcp_addr();

    let mut edge = env.spawn_edge(http, core_addr);
    let mut expected = Vec::new();
    for round in 0..4 {
        let (body, ids) = events_body(&format!("kill-{round}"), 25);
        let r = post_events(http, &env.key, "application/json", &[], &body);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        expected.extend(ids);
    }
    edge.kill9();
    assert!(!edge.is_running());

    let _core = env.spawn_core(core_addr, &kafka.brokers);
    let _edge = env.spawn_edge(http, core_addr);
    let msgs = consume(&kafka.brokers, &env.topic(), expected.len(), Duration::from_secs(60), Duration::from_secs(2));
    let got: Vec<&str> = msgs.iter().map(|m| m.headers["event_id"].as_str()).collect();
    let unique: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(got.len(), expected.len(), "lost or duplicated events");
    assert_eq!(unique, expected.iter().map(String::as_str).collect());
}
