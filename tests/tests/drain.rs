//! Graceful drain and forwarder control: a drained edge must refuse new work clearly (`503
//! draining` + `Retry-After`, readiness off), finish what it accepted, forward its WAL until empty
//! or the deadline, and exit, losing nothing: whatever core did not ack stays in the WAL.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::core_harness;
use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{events_body, post_events, request};
use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Driver, Ledger, check};
use sluice_tests::procs::{EdgeOpts, TestEnv};
use sluice_tests::wait_until;
use sluice_tests::{free_tcp_addr, free_udp_addr};

const TOKEN: &str = "drain-test-token";

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> sluice_tests::http::Response {
    let auth = format!("Bearer {TOKEN}");
    request(addr, method, path, &[("Authorization", auth.as_str())], body.as_bytes()).expect("admin request")
}

/// The value of an unlabelled metric on the admin port.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    sluice_tests::metrics::sample(&sluice_tests::metrics::scrape(admin), name, "")
}

fn admin_toml(addr: SocketAddr) -> String {
    format!("[admin]\nlisten = \"{addr}\"\ntoken = \"{TOKEN}\"\n")
}

/// `POST /drain`: readiness fails, new ingest requests get `503 draining` with `Retry-After`,
/// liveness stays up, and with forwarding off the drain ends at once leaving the WAL intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_turns_readiness_off_and_refuses_new_requests() {
    let e = InProcessEdge::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.admin.token = Some(TOKEN.into());
    })
    .await;
    let (addr, admin_addr, key) = (e.addr(), e.edge().admin_addr.expect("admin"), e.key.clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(request(addr, "GET", "/ready", &[], b"").expect("ready").status, 200);
        let (body, _) = events_body("before", 5);
        assert_eq!(post_events(addr, &key, "application/json", &[], &body).status, 202);
        let bad = admin(admin_addr, "POST", "/drain", "{\"deadline\":1}");
        assert_eq!((bad.status, bad.json()["error"]["code"].as_str()), (400, Some("malformed_body")));
        let r = admin(admin_addr, "POST", "/drain", "{\"deadline_secs\":5}");
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["started"], true);
        assert_eq!(admin(admin_addr, "POST", "/drain", "").json()["started"], false, "a second drain is a no-op");

        let ready = request(addr, "GET", "/ready", &[], b"").expect("ready");
        assert_eq!((ready.status, ready.json()["error"]["code"].as_str()), (503, Some("draining")));
        assert_eq!(request(addr, "HEAD", "/health", &[], b"").expect("health").status, 200, "liveness stays up");
        let (body, _) = events_body("after", 5);
        let refused = post_events(addr, &key, "application/json", &[], &body);
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"]["code"], "draining");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert!(refused.header("x-request-id").is_some());
        let spec = sluice_tests::openapi::Spec::load();
        spec.check("POST", "/v1/events", &refused);
        spec.check("GET", "/ready", &ready);

        let status = admin(admin_addr, "GET", "/status?records=true", "").json();
        assert_eq!(status["draining"], true);
        assert_eq!(status["drain"]["deadline_secs"], 5);
        assert_eq!(status["wal"]["unacked_records"], 1, "{status}");
        assert_eq!(status["forwarder"]["state"], "disabled");
        assert_eq!(metric(admin_addr, "sluice_edge_draining"), Some(1.0));
        let p = admin(admin_addr, "POST", "/forwarder/pause", "");
        assert_eq!((p.status, p.json()["error"]["code"].as_str()), (409, Some("forwarder_disabled")));
    })
    .await
    .expect("client");
    let report = tokio::time::timeout(Duration::from_secs(10), e.edge().drain.finished()).await.expect("drain ends");
    assert!(!report.complete, "forwarding is off: the record stays in the WAL");
    assert!(report.unacked_bytes > 0);
    assert_eq!(e.appended(), 1, "nothing was appended after the drain started");
    e.shutdown().await;
}

/// [`core_harness::edge_forwarding_to_file_core`] with the edge's admin API (token [`TOKEN`]).
async fn edge_forwarding_to_file_core(dir: &std::path::Path) -> (sluice_core::Core, InProcessEdge) {
    core_harness::edge_forwarding_to_file_core(dir, |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.admin.token = Some(TOKEN.into());
    })
    .await
}

/// `POST /forwarder/pause` stops forwarding (the WAL keeps the events, status shows them unacked
/// with their age); `resume` forwards them; a draining edge refuses a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_pause_keeps_events_in_the_wal_until_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, e) = edge_forwarding_to_file_core(dir.path()).await;
    let (addr, admin_addr, key) = (e.addr(), e.edge().admin_addr.expect("admin"), e.key.clone());
    let sink = core_harness::sink_file(dir.path());
    let delivered = move || std::fs::read_to_string(&sink).map(|s| s.lines().count()).unwrap_or(0);
    tokio::task::spawn_blocking(move || {
        let r = admin(admin_addr, "POST", "/forwarder/pause", "");
        assert_eq!((r.status, r.json()["forwarder"]["changed"].as_bool()), (200, Some(true)));
        let (body, _) = events_body("paused", 4);
        assert_eq!(post_events(addr, &key, "application/json", &[], &body).status, 202);
        std::thread::sleep(Duration::from_millis(500));
        let status = admin(admin_addr, "GET", "/status?records=true", "").json();
        assert_eq!(status["forwarder"]["paused"], true, "{status}");
        assert_eq!(status["wal"]["unacked_records"], 1, "{status}");
        assert!(status["wal"]["unacked_bytes"].as_u64().is_some_and(|b| b > 0), "{status}");
        assert!(status["wal"]["oldest_unacked_age_ms"].as_u64().is_some_and(|a| a >= 400), "{status}");
        assert_eq!(delivered(), 0, "a paused forwarder sends nothing");
        assert_eq!(metric(admin_addr, "sluice_edge_forwarder_paused"), Some(1.0));
        assert!(metric(admin_addr, "sluice_edge_wal_oldest_unacked_age_seconds").is_some_and(|a| a >= 0.4));
        assert!(metric(admin_addr, "sluice_edge_wal_unacked_bytes").is_some_and(|b| b > 0.0));

        assert_eq!(admin(admin_addr, "POST", "/forwarder/resume", "").status, 200);
        wait_until("the WAL to empty after resume", Duration::from_secs(30), || {
            admin(admin_addr, "GET", "/status", "").json()["wal"]["unacked_bytes"] == 0
        });
        assert_eq!(delivered(), 4);
        assert_eq!(metric(admin_addr, "sluice_edge_forwarder_paused"), Some(0.0));
        assert_eq!(metric(admin_addr, "sluice_edge_wal_unacked_bytes"), Some(0.0));
        assert_eq!(metric(admin_addr, "sluice_edge_wal_oldest_unacked_age_seconds"), Some(0.0));
        assert_eq!(metric(admin_addr, "sluice_edge_forwarded_records_total"), Some(1.0));
        let status = admin(admin_addr, "GET", "/status", "").json();
        assert_eq!(status["forwarder"]["state"], "forwarding", "{status}");
        assert_eq!(status["forwarder"]["circuit"], "closed", "{status}");
        assert_eq!(status["wal"]["oldest_unacked_age_ms"], serde_json::Value::Null);
        assert_eq!(status["wal"]["acked"], status["wal"]["committed"], "{status}");

        assert_eq!(admin(admin_addr, "POST", "/drain", "{\"deadline_secs\":20}").status, 202);
        let p = admin(admin_addr, "POST", "/forwarder/pause", "");
        assert_eq!((p.status, p.json()["error"]["code"].as_str()), (409, Some("draining")));
    })
    .await
    .expect("client");
    let report = tokio::time::timeout(Duration::from_secs(20), e.edge().drain.finished()).await.expect("drain ends");
    assert!(report.complete, "{report:?}");
    e.shutdown().await;
    core.shutdown().await;
}

/// SIGTERM under load, with a backlog in the WAL (forwarding paused for a while first): the edge
/// exits well within its deadline, every `202` reaches Kafka exactly once, refused requests are
/// `503 draining` with `Retry-After`, and the WAL is empty afterwards.
#[test]
fn sigterm_drain_under_load_loses_nothing_and_exits_in_time() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("drain");
    kafka.create_topic(&env.topic(), 3);
    let (http, core_addr, admin_addr) = (free_tcp_addr(), free_udp_addr(), free_tcp_addr());
    let _core = env.spawn_core(core_addr, &kafka.brokers);
    let deadline_secs = 30;
    let opts = EdgeOpts {
        drain_deadline_secs: Some(deadline_secs),
        extra_toml: admin_toml(admin_addr),
        ..EdgeOpts::default()
    };
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);
    let collector = Collector::start(&kafka.brokers, &env.topic());
    let ledger = Ledger::new();
    let driver = Driver::start(&ledger, http, &env.key, "drain", 2, 10, Duration::from_millis(10));
    wait_until("first deliveries", Duration::from_secs(30), || collector.seen_count() > 0);
    assert_eq!(admin(admin_addr, "POST", "/forwarder/pause", "").status, 200);
    driver.wait_requests(60, Duration::from_secs(30));
    let backlog = admin(admin_addr, "GET", "/status", "").json()["wal"]["unacked_bytes"].as_u64().unwrap_or(0);
    assert!(backlog > 0, "the test needs a backlog to drain");

    let term = Instant::now();
    edge.terminate();
    let status = edge.wait_exit(Duration::from_secs(deadline_secs + 15)).expect("the edge exits after draining");
    let took = term.elapsed();
    driver.stop();
    assert!(status.success(), "exit status {status}; log:\n{}", edge.log());
    assert!(took < Duration::from_secs(deadline_secs), "drain took {took:?}, past its deadline");
    assert!(edge.log().contains("drain: complete"), "{}", edge.log());

    let want = ledger.accepted();
    collector.wait_for(&want, Duration::from_secs(60));
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let report = check("drain SIGTERM under load", &ledger, &seen, malformed, &HashSet::new(), None);
    report.print();
    report.assert_no_loss();
    assert_eq!(report.duplicated, 0);
    assert_eq!(ledger.missing_retry_after(), 0, "every 503 carries Retry-After");
    let inspection = sluice_ops::wal::inspect(&env.wal_dir()).expect("inspect");
    assert_eq!(inspection.totals.unacked_records, 0, "the drained WAL is empty: {inspection:?}");
    eprintln!(
        "drained a {backlog} byte backlog in {took:?}; requests by status: 202={} 503={}",
        ledger.requests("202"),
        ledger.requests("503")
    );
}

/// With core unreachable the drain cannot empty the WAL: the edge still exits at its deadline,
/// and every accepted record is still in the WAL (for a restart or `sluicectl replay`).
#[test]
fn sigterm_with_core_away_exits_at_the_deadline_and_keeps_the_wal() {
    let env = TestEnv::new("drainaway");
    let (http, core_addr) = (free_tcp_addr(), free_udp_addr());
    let opts = EdgeOpts { drain_deadline_secs: Some(2), ..EdgeOpts::default() };
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);
    for i in 0..5 {
        let (body, _) = events_body(&format!("away{i}"), 3);
        assert_eq!(post_events(http, &env.key, "application/json", &[], &body).status, 202);
    }
    let term = Instant::now();
    edge.terminate();
    let status = edge.wait_exit(Duration::from_secs(20)).expect("the edge exits at its deadline");
    let took = term.elapsed();
    assert!(status.success(), "exit status {status}");
    // A stall on the QUIC handshake to the absent core would take its 10 s timeout on top.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(9), "took {took:?}");
    assert!(edge.log().contains("the rest stays in the WAL"), "{}", edge.log());
    let inspection = sluice_ops::wal::inspect(&env.wal_dir()).expect("inspect");
    assert_eq!((inspection.totals.unacked_records, inspection.totals.events), (5, 15), "{inspection:?}");
}

/// `sluicectl drain` (its library half): starts the drain, follows the backlog down to zero and
/// reports it, and notices the edge going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluicectl_drain_follows_the_backlog_to_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, e) = edge_forwarding_to_file_core(dir.path()).await;
    let (addr, admin_addr, key) = (e.addr(), e.edge().admin_addr.expect("admin"), e.key.clone());
    let backlog = tokio::task::spawn_blocking(move || {
        assert_eq!(admin(admin_addr, "POST", "/forwarder/pause", "").status, 200);
        for i in 0..20 {
            let (body, _) = events_body(&format!("cli{i}"), 10);
            assert_eq!(post_events(addr, &key, "application/json", &[], &body).status, 202);
        }
        admin(admin_addr, "GET", "/status", "").json()["wal"]["unacked_bytes"].as_u64().expect("bytes")
    })
    .await
    .expect("client");
    assert!(backlog > 0);
    // What the edge binary does: serve until a drain ends, then shut down (the admin port closes).
    let stopper = tokio::spawn(e.edge.expect("edge").serve_until_drained());
    let summary = tokio::task::spawn_blocking(move || {
        sluice_ops::drain::run(
            admin_addr,
            TOKEN,
            Some(20),
            Duration::from_millis(50),
            &indicatif::ProgressBar::hidden(),
        )
    })
    .await
    .expect("client")
    .expect("drain");
    assert!(summary.complete && summary.exited, "{summary:?}");
    assert_eq!(summary.unacked_records_before, Some(20));
    assert_eq!(
        (summary.unacked_bytes_before, summary.drained_bytes, summary.unacked_bytes_after),
        (backlog, backlog, 0)
    );
    let mut keys: Vec<String> =
        serde_json::to_value(&summary).expect("json").as_object().expect("object").keys().cloned().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "complete",
            "drained_bytes",
            "edge",
            "elapsed_ms",
            "exited",
            "rate_bytes_per_sec",
            "unacked_bytes_after",
            "unacked_bytes_before",
            "unacked_records_before"
        ]
    );
    tokio::time::timeout(Duration::from_secs(30), stopper).await.expect("edge stops").expect("stopper");
    core.shutdown().await;
    drop(dir);
}
