//! The overflow lane and lasting tenant controls, through real edge and core processes and the
//! zero-loss ledger: a tenant routed to `events.<region>.overflow` (by the admin API, then by the
//! keys file) has every event it was answered `202` for delivered there exactly once, and none in
//! its region's topic, across a `kill -9` of the edge; the other tenants, and the routed tenant
//! once un-routed, stay on the region's topic. The admin API's blocks and routes outlive the
//! crash: in force and listed after the restart.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::http::{Response, request};
use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Ledger, Outcome, Report, check};
use sluice_tests::metrics::sample;
use sluice_tests::procs::{EdgeOpts, Proc, TestEnv};
use sluice_tests::{free_tcp_addr, free_udp_addr, wait_until};

const TOKEN: &str = "overflow-admin";

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    request(addr, method, path, &headers, body.as_bytes()).expect("admin request")
}

/// `requests` batches of 10 events for `key`, each of which must be accepted.
fn send(ledger: &Ledger, http: SocketAddr, key: &str, prefix: &str, requests: usize) {
    for r in 0..requests {
        let ids: Vec<String> = (0..10).map(|i| format!("{prefix}-r{r}-e{i}")).collect();
        assert_eq!(ledger.post(http, key, ids), Outcome::Accepted, "{prefix} request {r}");
    }
}

fn settle(name: &str, ledger: &Ledger, collector: Collector) -> Report {
    assert!(collector.wait_for(&ledger.accepted(), Duration::from_secs(60)), "{name}: not everything arrived");
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let report = check(name, ledger, &seen, malformed, &Default::default(), None);
    report.print();
    report
}

#[test]
fn overflow_lane_keeps_every_guarantee_and_tenant_controls_outlive_a_crash() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("overflow");
    let overflow_topic = format!("{}.overflow", env.topic());
    for topic in [env.topic(), overflow_topic.clone(), env.dlq_topic()] {
        kafka.create_topic(&topic, 3);
    }
    let (_, dev_key) = sluice_ops::keys::add(&env.keys_file, "acme", "dev").expect("key");
    let (_, small_key) = sluice_ops::keys::add(&env.keys_file, "small", "prod").expect("key");
    let (http, core_addr, admin_addr) = (free_tcp_addr(), free_udp_addr(), free_tcp_addr());
    let opts = EdgeOpts {
        extra_toml: format!("[admin]\nlisten = \"{admin_addr}\"\ntoken = \"{TOKEN}\"\n"),
        ..EdgeOpts::default()
    };
    // One ledger per topic: an event in a topic its ledger did not accept counts as unexpected.
    let (on_overflow, on_events) = (Ledger::new(), Ledger::new());
    let (overflow_seen, events_seen) =
        (Collector::start(&kafka.brokers, &overflow_topic), Collector::start(&kafka.brokers, &env.topic()));
    let mut core: Proc = env.spawn_core(core_addr, &kafka.brokers);
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);

    let r = admin(admin_addr, "POST", "/admission/overflow", r#"{"tenant":"acme"}"#);
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(true)), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(admin(admin_addr, "POST", "/admission/block", r#"{"tenant":"acme","env":"dev"}"#).status, 200);
    let r = admin(admin_addr, "POST", "/admission/overflow", r#"{"tenant":""}"#);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("malformed_body")));
    let r = request(admin_addr, "POST", "/admission/overflow", &[], br#"{"tenant":"small"}"#).expect("admin");
    assert_eq!(r.status, 401, "routing needs the admin token");

    send(&on_overflow, http, &env.key, "routed-before-crash", 15);
    send(&on_events, http, &small_key, "small-before-crash", 15);

    // A crash, not a drain: what the admin API set must come back from disk.
    edge.kill9();
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);
    let listed = admin(admin_addr, "GET", "/admission", "").json();
    assert_eq!(listed["overflow"], serde_json::json!([{"tenant": "acme"}]), "{listed}");
    assert_eq!(listed["blocks"], serde_json::json!([{"tenant": "acme", "env": "dev"}]), "{listed}");
    let status = admin(admin_addr, "GET", "/status", "").json();
    assert_eq!(status["admission"]["overflow"], listed["overflow"], "{status}");
    assert_eq!(status["admission"]["blocks"], listed["blocks"], "{status}");
    let blocked = on_events.post(http, &dev_key, vec!["dev-after-crash".into()]);
    assert_eq!(blocked, Outcome::Status(403), "the block is still in force");

    send(&on_overflow, http, &env.key, "routed-after-crash", 15);
    send(&on_events, http, &small_key, "small-after-crash", 5);
    let metrics = String::from_utf8(request(admin_addr, "GET", "/metrics", &[], b"").expect("metrics").body).unwrap();
    assert_eq!(sample(&metrics, "sluice_edge_overflow_events_total", r#"tenant="acme""#), Some(150.0), "{metrics}");
    assert_eq!(sample(&metrics, "sluice_edge_overflow_batches_total", r#"tenant="acme""#), Some(15.0), "{metrics}");
    assert_eq!(sample(&metrics, "sluice_edge_overflow_events_total", r#"tenant="small""#), None, "{metrics}");

    // Un-routed: back on the region's topic at once.
    let r = admin(admin_addr, "POST", "/admission/overflow/remove", r#"{"tenant":"acme"}"#);
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(true)));
    send(&on_events, http, &env.key, "unrouted", 10);

    // The keys file routes a tenant too (hot-reloaded), and taking it out routes it back.
    let route_in_file = |on: bool| {
        sluice_ops::keys::set_overflow(&env.keys_file, "acme", on).expect("keys file");
        let want = if on { serde_json::json!(["acme"]) } else { serde_json::json!([]) };
        wait_until("the keys file to reload", Duration::from_secs(10), || {
            admin(admin_addr, "GET", "/admission", "").json()["keys_file_overflow_tenants"] == want
        });
    };
    route_in_file(true);
    send(&on_overflow, http, &env.key, "routed-by-file", 10);
    route_in_file(false);
    send(&on_events, http, &env.key, "unrouted-by-file", 5);

    let overflow = settle("overflow lane: routed tenant, kill -9 of the edge", &on_overflow, overflow_seen);
    let events = settle("overflow lane: the region's topic", &on_events, events_seen);
    for report in [&overflow, &events] {
        report.assert_no_loss();
        assert_eq!(report.duplicated, 0, "{}: core dedupes what the restarted edge resent", report.scenario);
    }
    assert_eq!(overflow.accepted, 400);
    assert_eq!(events.accepted, 350);
    edge.assert_no_panic();
    core.assert_no_panic();
    edge.terminate();
    core.terminate();
}
