//! Replicated edge WAL: a `202` survives the loss of a whole edge node. Two edges form a POP and
//! replicate to each other; the zero-loss ledger checks every accepted event reaches Kafka when
//! an edge is `kill -9`ed *and its disk is deleted* (a replica takes over forwarding), when the
//! replica dies (`require` refuses with `503`, `allow_local` accepts and reports degraded mode),
//! when the replica is cut off by the network for 10 s under load (the same, then healed), and
//! across a network cut between the edges. Two quick in-process cases check that a peer
//! named by DNS name is reached, and that a name which does not resolve is a refused group, not a
//! startup failure.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Driver, Ledger, Outcome, Report, check};
use sluice_tests::procs::{EdgeOpts, Proc, TestEnv};
use sluice_tests::udp_proxy::{Mode, UdpProxy};
use sluice_tests::wait_until;
use sluice_tests::{free_tcp_addr, free_udp_addr};

const BATCH: usize = 10;
const PAUSE: Duration = Duration::from_millis(20);
const LEASE_SECS: u64 = 2;
const ADMIN_TOKEN: &str = "pop-admin";

/// One edge of the POP: its addresses stay fixed across restarts.
struct Node {
    name: &'static str,
    http: SocketAddr,
    repl: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn new(name: &'static str) -> Self {
        Node { name, http: free_tcp_addr(), repl: free_udp_addr(), admin: free_tcp_addr() }
    }

    /// Edge options: replicate to `peers` (id, address), serve replicas on `self.repl`.
    fn opts(&self, peers: &[(&str, SocketAddr)], mode: &str) -> EdgeOpts {
        let mut extra = format!(
            "[admin]\nlisten = \"{}\"\ntoken = \"{ADMIN_TOKEN}\"\n[replication]\nlisten = \"{}\"\nfactor = 2\nmode = \"{mode}\"\nack_timeout_ms = 2000\nlease_secs = {LEASE_SECS}\n",
            self.admin, self.repl
        );
        for (id, addr) in peers {
            extra.push_str(&format!("[[replication.peers]]\nid = \"{id}\"\naddr = \"{addr}\"\n"));
        }
        EdgeOpts { node: Some(self.name.into()), ack_timeout_secs: Some(3), extra_toml: extra, ..EdgeOpts::default() }
    }

    /// `GET /status` on the admin API.
    fn status(&self) -> serde_json::Value {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let r = sluice_tests::http::request(self.admin, "GET", "/status", &[("Authorization", &auth)], b"")
            .expect("status");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    fn metric(&self, name: &str) -> f64 {
        self.metric_opt(name).unwrap_or_else(|| panic!("{name} not in {}'s /metrics", self.name))
    }

    /// A sample of `/metrics` (`name` may carry labels: `x{peer="b"}`), if the edge exports it.
    fn metric_opt(&self, name: &str) -> Option<f64> {
        let r = sluice_tests::http::request(self.admin, "GET", "/metrics", &[], b"").expect("metrics");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines().find_map(|l| {
            l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }
}

struct Pop {
    kafka: TestKafka,
    env: TestEnv,
    core_addr: SocketAddr,
}

impl Pop {
    fn new(name: &str) -> Self {
        let kafka = TestKafka::start();
        let env = TestEnv::new(name);
        kafka.create_topic(&env.topic(), 3);
        Pop { kafka, env, core_addr: free_udp_addr() }
    }

    fn core(&self) -> Proc {
        self.env.spawn_core(self.core_addr, &self.kafka.brokers)
    }

    fn edge(&self, node: &Node, opts: &EdgeOpts) -> Proc {
        self.env.spawn_edge_with(node.http, self.core_addr, opts)
    }

    fn collector(&self) -> Collector {
        Collector::start(&self.kafka.brokers, &self.env.topic())
    }
}

fn settle(name: &str, ledger: &Ledger, collector: Collector, healed: Option<Instant>) -> Report {
    collector.wait_for(&ledger.accepted(), Duration::from_secs(90));
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let report = check(name, ledger, &seen, malformed, &HashSet::new(), healed);
    report.print();
    report
}

fn post(ledger: &Ledger, node: &Node, key: &str, id: String) -> Outcome {
    ledger.post(node.http, key, (0..BATCH).map(|e| format!("{id}-e{e}")).collect())
}

/// Posts while the POP is healthy: a replica ack slower than the timeout on a loaded machine
/// gives a `503` (recorded by the ledger like any other), so retry a few times.
fn post_healthy(ledger: &Ledger, node: &Node, key: &str, id: String) {
    for attempt in 0..5 {
        if post(ledger, node, key, format!("{id}-a{attempt}")) == Outcome::Accepted {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{id}: no 202 from {} in 5 attempts with its replica up", node.name);
}

/// The headline: with core down, edge `a` accepts under load (replicating to `b`), then is
/// `kill -9`ed and its WAL directory deleted. Core comes up; only `b`'s copy holds `a`'s events,
/// and `b` forwards them after the lease. Then `a` returns with an empty disk (a new WAL ID):
/// it accepts again, and `b` drops the old copy once core has all of it.
#[test]
fn node_and_disk_loss_is_covered_by_the_replica() {
    let pop = Pop::new("repl-nodeloss");
    let (a, b) = (Node::new("a"), Node::new("b"));
    let a_opts = a.opts(&[("b", b.repl)], "require");
    let b_opts = b.opts(&[("a", a.repl)], "require");
    let _b_proc = pop.edge(&b, &b_opts);
    let mut a_proc = pop.edge(&a, &a_opts);
    let collector = pop.collector();
    let ledger = Ledger::new();

    let driver = Driver::start(&ledger, a.http, &pop.env.key, "nodeloss", 2, BATCH, PAUSE);
    wait_until("a accepting", Duration::from_secs(60), || ledger.requests("202") >= 40);
    a_proc.kill9();
    driver.stop();
    let a_wal = pop.env.node_wal_dir(Some("a"));
    std::fs::remove_dir_all(&a_wal).expect("deleting a's WAL");
    let copies = pop.env.node_wal_dir(Some("b")).join("replica").join("a");
    assert!(copies.exists(), "b holds no copy of a's WAL");

    let _core = pop.core();
    let healed = Instant::now();
    let accepted_before = ledger.accepted();
    assert!(
        collector.wait_for(&accepted_before, Duration::from_secs(90)),
        "a's acknowledged events did not reach Kafka through b; b log:\n{}",
        _b_proc.log()
    );
    assert!(_b_proc.log().contains("taking over"), "b never took over");

    // a comes back with an empty disk and accepts again.
    let a_proc = pop.edge(&a, &a_opts);
    for i in 0..20 {
        post_healthy(&ledger, &a, &pop.env.key, format!("after-{i}"));
    }
    wait_until("b to drop the orphaned copy", Duration::from_secs(60), || {
        std::fs::read_dir(&copies).map(|d| d.count()).unwrap_or(0) == 1
    });

    let report = settle("R1 edge kill -9 + WAL deleted, replica takes over", &ledger, collector, Some(healed));
    report.assert_no_loss();
    a_proc.assert_no_panic();
    _b_proc.assert_no_panic();
}

/// Takeover resends only what core had not acknowledged: `a` forwards a first phase fully (its
/// watermark reaches `b` by heartbeat, and `b` trims), then core goes away, `a` accepts a second
/// phase, and `a` dies with its disk. The restarted core (same dedupe index) must get the second
/// phase from `b`, and see few first-phase batches again: a takeover from the start of the copy
/// would resend all of them. `b` exports the takeover like a forwarder of its own: running with
/// the copy unacked and sends failing while core is still down, then what it forwarded.
#[test]
fn takeover_resends_only_what_core_had_not_acked() {
    let pop = Pop::new("repl-watermark");
    let core_admin = free_tcp_addr();
    let mut core = pop.env.spawn_core_node("core", pop.core_addr, &pop.kafka.brokers, core_admin);
    let (a, b) = (Node::new("a"), Node::new("b"));
    let b_proc = pop.edge(&b, &b.opts(&[("a", a.repl)], "require"));
    let mut a_proc = pop.edge(&a, &a.opts(&[("b", b.repl)], "require"));
    let collector = pop.collector();
    let ledger = Ledger::new();
    let driver = Driver::start(&ledger, a.http, &pop.env.key, "first", 2, BATCH, PAUSE);
    wait_until("the first phase", Duration::from_secs(60), || ledger.requests("202") >= 100);
    driver.stop();
    let first_batches = ledger.requests("202");
    assert!(collector.wait_for(&ledger.accepted(), Duration::from_secs(60)), "first phase not delivered");
    // Heartbeats run every lease / 4: let `b` hear the final watermark.
    std::thread::sleep(Duration::from_millis(LEASE_SECS * 1000));
    core.kill9();
    for i in 0..20 {
        post_healthy(&ledger, &a, &pop.env.key, format!("second-{i}"));
    }
    a_proc.kill9();
    std::fs::remove_dir_all(pop.env.node_wal_dir(Some("a"))).expect("deleting a's WAL");
    let takeover = |name: &str| b.metric_opt(&format!("sluice_edge_takeover_{name}{{origin=\"a\"}}"));
    wait_until("b to take over a's copy with core down", Duration::from_secs(60), || {
        takeover("active") == Some(1.0)
            && takeover("unacked_bytes").is_some_and(|v| v > 0.0)
            && takeover("oldest_unacked_age_seconds").is_some_and(|v| v > 0.0)
            && takeover("send_failures_total").is_some_and(|v| v >= 1.0)
    });
    assert_eq!(takeover("forwarded_records_total"), Some(0.0), "nothing forwarded with core down");
    let _core = pop.env.spawn_core_node("core", pop.core_addr, &pop.kafka.brokers, core_admin);
    let healed = Instant::now();

    let report = settle("R5 takeover after core acked a first phase", &ledger, collector, Some(healed));
    report.assert_no_loss();
    let core_metric = |name: &str| -> f64 {
        let r = sluice_tests::http::request(core_admin, "GET", "/metrics", &[], b"").expect("core metrics");
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} not in core's /metrics"))
    };
    let resent = core_metric("sluice_core_duplicate_batches_total");
    eprintln!("takeover: core saw {resent} of {first_batches} first-phase batches again");
    assert!(b_proc.log().contains("taking over"), "b never took over");
    assert!(
        resent < first_batches as f64 / 4.0,
        "the takeover resent {resent} of {first_batches} batches core had acknowledged"
    );
    // Once core has all of the copy the takeover stops; its counters stay.
    wait_until("b's takeover to finish", Duration::from_secs(30), || {
        takeover("active") == Some(0.0) && takeover("unacked_bytes") == Some(0.0)
    });
    let records = takeover("forwarded_records_total").unwrap_or(0.0);
    assert!(records >= 20.0, "b forwarded {records} records; a accepted 20 after core went away");
    assert!(takeover("forwarded_bytes_total").is_some_and(|v| v > 0.0));
    assert_eq!(takeover("frames_in_flight"), Some(0.0));
    b_proc.assert_no_panic();
}

/// The replica dies under `require`: once it is gone, no request to the origin gets a `202`
/// (every one is `503` + `Retry-After`); when it returns, the origin accepts again.
#[test]
fn replica_loss_with_require_refuses() {
    let pop = Pop::new("repl-require");
    let _core = pop.core();
    let (a, b) = (Node::new("a"), Node::new("b"));
    let b_opts = b.opts(&[("a", a.repl)], "require");
    let mut b_proc = pop.edge(&b, &b_opts);
    // Small segments, so trimming the replica by a's watermark has whole segments to delete.
    let a_proc = pop.edge(&a, &EdgeOpts { segment_bytes: Some(16 * 1024), ..a.opts(&[("b", b.repl)], "require") });
    let collector = pop.collector();
    let ledger = Ledger::new();
    for i in 0..10 {
        post_healthy(&ledger, &a, &pop.env.key, format!("before-{i}"));
    }
    b_proc.kill9();
    let refused_before = ledger.requests("503");
    for i in 0..15 {
        let outcome = post(&ledger, &a, &pop.env.key, format!("down-{i}"));
        assert_eq!(outcome, Outcome::Status(503), "request {i} without a replica");
    }
    assert_eq!(ledger.requests("503") - refused_before, 15);
    assert_eq!(ledger.missing_retry_after(), 0, "every 503 carries Retry-After");
    // The PostHog and Segment routes give the same guarantee: no replica, no success answer.
    let key = &pop.env.key;
    let compat = [
        (
            "/batch/",
            serde_json::json!({"api_key": key, "batch": [{"event": "e", "distinct_id": "u", "uuid": "ph-down"}]}),
        ),
        ("/v1/batch", serde_json::json!({"writeKey": key, "batch": [{"type": "track", "event": "e", "userId": "u"}]})),
    ];
    for (path, body) in compat {
        let body = serde_json::to_vec(&body).expect("json");
        let r = sluice_tests::http::request(a.http, "POST", path, &[], &body).expect("compat request");
        assert_eq!((r.status, r.json()["code"].as_str()), (503, Some("replica_unavailable")), "{path}");
        assert!(r.header("retry-after").is_some(), "{path}");
    }
    assert_eq!(a.metric("sluice_edge_replication_degraded"), 1.0);

    let b_proc = pop.edge(&b, &b_opts);
    let mut i = 0;
    wait_until("a accepting once b is back", Duration::from_secs(30), || {
        i += 1;
        post(&ledger, &a, &pop.env.key, format!("back-{i}")) == Outcome::Accepted
    });
    for j in 0..10 {
        post_healthy(&ledger, &a, &pop.env.key, format!("after-{j}"));
    }
    assert_eq!(a.metric("sluice_edge_replication_degraded"), 0.0);

    let report = settle("R2 replica down, require", &ledger, collector, None);
    report.assert_no_loss();
    assert_eq!(report.duplicated, 0);
    // Everything is delivered, so a's watermark is past every full segment: b trims its copy.
    let copy = pop.env.node_wal_dir(Some("b")).join("replica").join("a");
    wait_until("b to trim its copy of a's WAL", Duration::from_secs(30), || {
        let segments: Vec<_> = walfile_segments(&copy);
        segments.len() == 1
    });
    a_proc.assert_no_panic();
    b_proc.assert_no_panic();
}

/// The replica dies under `allow_local`: the origin keeps answering `202` from its local fsync
/// alone and reports degraded mode; when the replica returns, the origin sends it the part of the
/// segment it missed and is replicated again.
#[test]
fn replica_loss_with_allow_local_degrades() {
    let pop = Pop::new("repl-allowlocal");
    let _core = pop.core();
    let (a, b) = (Node::new("a"), Node::new("b"));
    let b_opts = b.opts(&[("a", a.repl)], "allow_local");
    let mut b_proc = pop.edge(&b, &b_opts);
    let a_proc = pop.edge(&a, &a.opts(&[("b", b.repl)], "allow_local"));
    let collector = pop.collector();
    let ledger = Ledger::new();
    for i in 0..10 {
        post_healthy(&ledger, &a, &pop.env.key, format!("before-{i}"));
    }
    // In allow_local a group whose replica ack came late is still a 202, and the gauge follows
    // the last group: wait for a replicated one rather than assume the last was.
    wait_until("a replicated group before the kill", Duration::from_secs(30), || {
        post(&ledger, &a, &pop.env.key, format!("settle-{}", rand_suffix()));
        a.metric("sluice_edge_replication_degraded") == 0.0
    });
    b_proc.kill9();
    for i in 0..15 {
        assert_eq!(post(&ledger, &a, &pop.env.key, format!("down-{i}")), Outcome::Accepted);
    }
    assert_eq!(a.metric("sluice_edge_replication_degraded"), 1.0);
    assert!(a.metric("sluice_edge_replication_unreplicated_groups_total") >= 1.0);
    assert!(a.metric("sluice_edge_replication_ack_latency_seconds_count") >= 1.0, "acks before b died");
    // The heartbeat task updates the lag every lease / 4.
    wait_until("the replication lag to show", Duration::from_secs(10), || {
        a.metric("sluice_edge_replication_lag_bytes{peer=\"b\"}") > 0.0
    });
    assert!(a_proc.log().contains("degraded"), "no warning logged");
    // The operator's view of the same: the peer, its lag, degraded mode.
    let status = a.status();
    let repl = &status["replication"];
    assert_eq!((repl["mode"].as_str(), repl["degraded"].as_bool()), (Some("allow_local"), Some(true)), "{status}");
    assert_eq!(repl["peers"][0]["id"], "b", "{status}");
    assert!(repl["peers"][0]["lag_bytes"].as_u64().is_some_and(|l| l > 0), "{status}");

    let b_proc = pop.edge(&b, &b_opts);
    wait_until("replication to resume", Duration::from_secs(30), || {
        post(&ledger, &a, &pop.env.key, format!("probe-{}", rand_suffix()));
        a.metric("sluice_edge_replication_degraded") == 0.0
    });
    assert!(a.metric("sluice_edge_replication_degraded_seconds_total") > 0.0);
    assert!(a_proc.log().contains("sending it the missing bytes"), "b was not caught up:\n{}", a_proc.log());
    wait_until("the replication lag to clear", Duration::from_secs(10), || {
        a.metric("sluice_edge_replication_lag_bytes{peer=\"b\"}") == 0.0
    });
    assert_eq!(a.status()["replication"]["degraded"], false);

    let report = settle("R3 replica down, allow_local", &ledger, collector, None);
    report.assert_no_loss();
    assert_eq!(report.duplicated, 0);
    a_proc.assert_no_panic();
    b_proc.assert_no_panic();
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The network between the two edges is cut for longer than the lease while both take load
/// (`allow_local`): each replica takes over the other's copy while the origin is still alive and
/// forwarding too, then the link heals. Nothing is lost; duplicates are counted and reported.
#[test]
fn partition_between_edges_then_heal() {
    let pop = Pop::new("repl-partition");
    let _core = pop.core();
    let (a, b) = (Node::new("a"), Node::new("b"));
    let to_b = UdpProxy::start(b.repl);
    let to_a = UdpProxy::start(a.repl);
    let b_proc = pop.edge(&b, &b.opts(&[("a", to_a.addr)], "allow_local"));
    let a_proc = pop.edge(&a, &a.opts(&[("b", to_b.addr)], "allow_local"));
    let collector = pop.collector();
    let ledger = Ledger::new();
    let da = Driver::start(&ledger, a.http, &pop.env.key, "part-a", 1, BATCH, PAUSE);
    let db = Driver::start(&ledger, b.http, &pop.env.key, "part-b", 1, BATCH, PAUSE);
    wait_until("first deliveries", Duration::from_secs(30), || collector.seen_count() > 0);

    to_b.set(Mode::Blackhole);
    to_a.set(Mode::Blackhole);
    std::thread::sleep(Duration::from_secs(LEASE_SECS * 3));
    to_b.set(Mode::Pass);
    to_a.set(Mode::Pass);
    let healed = Instant::now();
    wait_until("replication to resume", Duration::from_secs(30), || {
        a.metric("sluice_edge_replication_degraded") == 0.0 && b.metric("sluice_edge_replication_degraded") == 0.0
    });
    da.wait_requests(20, Duration::from_secs(20));
    da.stop();
    db.stop();

    let report = settle("R4 edge↔edge cut 6 s (> lease), heal", &ledger, collector, Some(healed));
    report.assert_no_loss();
    assert!(b_proc.log().contains("taking over") || a_proc.log().contains("taking over"), "no takeover during the cut");
    assert!(a.metric("sluice_edge_replication_degraded_seconds_total") > 0.0);
    eprintln!("partition: {} duplicated events in {} batches", report.duplicated, report.duplicated_batches);
    a_proc.assert_no_panic();
    b_proc.assert_no_panic();
}

/// How long the peer is cut off in the partition tests: 5 × the lease, 5 × the ack timeout.
const CUT: Duration = Duration::from_secs(10);

/// Answers the origin gave, by status.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Answers {
    accepted: u64,
    refused: u64,
}

impl Answers {
    fn of(ledger: &Ledger) -> Self {
        Answers { accepted: ledger.requests("202"), refused: ledger.requests("503") }
    }

    fn since(self, earlier: Answers) -> Answers {
        Answers { accepted: self.accepted - earlier.accepted, refused: self.refused - earlier.refused }
    }
}

/// What a partition run saw.
struct Partitioned {
    /// Answers from one ack timeout after the cut (what was in flight at the cut has settled)
    /// until the heal.
    cut_off: Answers,
    /// Answers after the heal, until the origin's peer was back to replicated.
    after: Answers,
    /// Status and error code of one request sent while cut off.
    probe: (u16, Option<String>),
    report: Report,
    a_log: String,
}

/// `a` takes load (2 workers) and replicates to `b` (`factor = 2`: `b` is its only possible
/// replica) through a UDP proxy; the proxy drops both directions for [`CUT`] under that load,
/// then passes again. Waits until `a` is replicated again (degraded 0, lag 0 with a `202` after
/// the heal), lets the load run a little longer, and settles the ledger.
fn peer_partitioned_under_load(scenario: &str, mode: &str) -> Partitioned {
    let pop = Pop::new(&format!("repl-cut-{mode}"));
    let _core = pop.core();
    let (a, b) = (Node::new("a"), Node::new("b"));
    let to_b = UdpProxy::start(b.repl);
    let b_proc = pop.edge(&b, &b.opts(&[("a", a.repl)], mode));
    let a_proc = pop.edge(&a, &a.opts(&[("b", to_b.addr)], mode));
    let collector = pop.collector();
    let ledger = Ledger::new();
    let driver = Driver::start(&ledger, a.http, &pop.env.key, &format!("cut-{mode}"), 2, BATCH, PAUSE);
    wait_until("a accepting, replicated", Duration::from_secs(60), || {
        ledger.requests("202") >= 30 && a.metric("sluice_edge_replication_degraded") == 0.0
    });

    to_b.set(Mode::Blackhole);
    let cut = Instant::now();
    let degraded_after =
        wait_until("a to report degraded", CUT, || a.metric("sluice_edge_replication_degraded") == 1.0);
    eprintln!("{mode}: degraded {degraded_after:?} after the cut");
    // The ack timeout of the groups in flight at the cut, and slack for a loaded machine.
    std::thread::sleep(Duration::from_millis(3_000).saturating_sub(cut.elapsed()));
    let settled = Answers::of(&ledger);
    let probe = probe(&ledger, &a, &pop.env.key);
    std::thread::sleep(CUT.saturating_sub(cut.elapsed()));
    assert_eq!(a.metric("sluice_edge_replication_degraded"), 1.0, "a still degraded at the end of the cut");
    let cut_off = Answers::of(&ledger).since(settled);
    to_b.set(Mode::Pass);
    let healed = Instant::now();
    let back = Answers::of(&ledger);
    wait_until("a replicated again", Duration::from_secs(60), || {
        Answers::of(&ledger).since(back).accepted > 0
            && a.metric("sluice_edge_replication_degraded") == 0.0
            && a.metric("sluice_edge_replication_lag_bytes{peer=\"b\"}") == 0.0
    });
    let after = Answers::of(&ledger).since(back);
    driver.wait_requests(20, Duration::from_secs(30));
    driver.stop();
    assert!(a.metric("sluice_edge_replication_degraded_seconds_total") >= 5.0, "the cut lasted {CUT:?}");
    assert_eq!(ledger.missing_retry_after(), 0, "every 503 carries Retry-After");

    let report = settle(scenario, &ledger, collector, Some(healed));
    report.assert_no_loss();
    eprintln!("{mode}: cut off {cut_off:?}, after the heal {after:?}, {} duplicated events", report.duplicated);
    a_proc.assert_no_panic();
    b_proc.assert_no_panic();
    Partitioned { cut_off, after, probe, report, a_log: a_proc.log() }
}

/// One request to `node` whose answer the ledger records like the driver's; returns its status
/// and error code.
fn probe(ledger: &Ledger, node: &Node, key: &str) -> (u16, Option<String>) {
    let ids = vec![format!("probe-{}", rand_suffix())];
    let auth = format!("Bearer {key}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r =
        sluice_tests::http::request(node.http, "POST", "/v1/events", &headers, &sluice_tests::ledger::body_for(&ids))
            .expect("probe request");
    let outcome = if r.status == 202 { Outcome::Accepted } else { Outcome::Status(r.status) };
    ledger.record(&ids, outcome, r.header("retry-after"));
    let code = (r.status != 202).then(|| r.json()["error"]["code"].as_str().map(str::to_string)).flatten();
    (r.status, code)
}

/// `require`: while `b` is cut off, `a` is below R and answers `503 replica_unavailable` to
/// every request (none gets a `202`); after the heal it accepts again. Nothing it accepted is lost.
#[test]
fn peer_partitioned_under_load_with_require_refuses_then_heals() {
    let run = peer_partitioned_under_load("R6 peer cut 10 s under load, require", "require");
    assert_eq!(run.cut_off.accepted, 0, "a 202 while the only replica was cut off: {:?}", run.cut_off);
    assert!(run.cut_off.refused > 0, "no request was refused while cut off: {:?}", run.cut_off);
    assert_eq!(run.probe, (503, Some("replica_unavailable".into())));
    assert!(run.report.requests.get("503").is_some_and(|&n| n >= run.cut_off.refused));
}

/// `allow_local`: while `b` is cut off, `a` answers `202` from its own fsync (none is refused)
/// and reports degraded mode; after the heal it sends `b` what it missed (catch-up) and is
/// replicated again. Nothing it accepted is lost.
#[test]
fn peer_partitioned_under_load_with_allow_local_degrades_then_catches_up() {
    let run = peer_partitioned_under_load("R7 peer cut 10 s under load, allow_local", "allow_local");
    assert_eq!(run.cut_off.refused, 0, "a 503 in allow_local: {:?}", run.cut_off);
    assert!(run.cut_off.accepted > 0, "no 202 while cut off: {:?}", run.cut_off);
    assert_eq!(run.probe, (202, None));
    assert_eq!(run.after.refused, 0, "{:?}", run.after);
    assert!(run.a_log.contains("sending it the missing bytes"), "b was not caught up after the heal");
}

/// Segment files under every WAL ID of a replica copy.
fn walfile_segments(copy: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(copy)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|w| sluice_tests::walfile::segments(&w.path()))
        .collect()
}

/// Two in-process edges sharing a dev PKI (certificates for `localhost`): `b` serves replicas,
/// `a` (built by the caller) replicates to it in `require` mode. Forwarding is off; the tests
/// only look at the replica ack.
async fn named_peer_pair(
    dir: &std::path::Path,
    peer_addr: impl FnOnce(SocketAddr) -> String,
) -> (sluice_edge::Edge, sluice_edge::Edge, String) {
    let pki = sluice_ops::devpki::write_dev_pki(&dir.join("pki")).expect("pki");
    for edge in ["a", "b"] {
        std::fs::create_dir_all(dir.join(edge)).expect("edge dir");
    }
    let tls = |c: &mut sluice_edge::config::EdgeConfig| {
        c.forwarder.ca_cert = pki.ca_cert.clone();
        c.forwarder.client_cert = Some(pki.edge_cert.clone());
        c.forwarder.client_key = Some(pki.edge_key.clone());
    };
    let (mut b, _) = sluice_tests::edge_harness::config_in(&dir.join("b"));
    b.edge_id = "b".into();
    b.replication.listen = Some("127.0.0.1:0".parse().expect("addr"));
    tls(&mut b);
    let b = sluice_edge::Edge::builder(b).start().await.expect("b starts");
    let repl = b.replication_addr.expect("b serves replicas");

    let (mut a, key) = sluice_tests::edge_harness::config_in(&dir.join("a"));
    a.edge_id = "a".into();
    tls(&mut a);
    // The peer list names both edges, as a POP's shared ConfigMap does; `a` skips itself.
    let peer = |id: &str, addr: &str| sluice_edge::config::PeerConfig {
        id: id.into(),
        addr: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
    };
    a.replication.peers = vec![peer("a", "127.0.0.1:9"), peer("b", &peer_addr(repl))];
    a.replication.factor = 2;
    a.replication.mode = sluice_edge::config::DegradedMode::Require;
    // The first group waits for the first handshake; keep a loaded machine from turning it into a 503.
    a.replication.ack_timeout_ms = 5_000;
    let a = sluice_edge::Edge::builder(a).start().await.expect("a starts");
    (a, b, key)
}

/// A peer given as `localhost:<port>` is resolved and reached: `a` answers `202` in `require`
/// mode, which needs `b`'s ack, and `b` holds a copy of `a`'s WAL. The certificate is verified
/// against the name `localhost` (no `server_name` configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_given_by_dns_name_is_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, key) = named_peer_pair(dir.path(), |repl| format!("localhost:{}", repl.port())).await;
    let http = a.http_addr;
    let r = tokio::task::spawn_blocking(move || sluice_tests::http::post_batch(http, &key, "named", 3))
        .await
        .expect("client");
    assert_eq!((r.status, r.code()), (202, "ok".to_string()), "{}", String::from_utf8_lossy(&r.body));
    let copy = dir.path().join("b").join("wal").join("replica").join("a");
    assert!(copy.is_dir(), "b keeps a's replica under {}", copy.display());
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer name that does not resolve (`.invalid` never does, RFC 6761) does not stop the edge from
/// starting; in `require` mode its groups get no replica ack, so requests are `503
/// replica_unavailable` until the name resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_name_that_does_not_resolve_refuses_without_failing_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, key) = named_peer_pair(dir.path(), |repl| format!("no-such-edge.invalid:{}", repl.port())).await;
    let http = a.http_addr;
    let r = tokio::task::spawn_blocking(move || sluice_tests::http::post_batch(http, &key, "unresolved", 1))
        .await
        .expect("client");
    assert_eq!((r.status, r.code()), (503, "replica_unavailable".to_string()), "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    a.shutdown().await;
    b.shutdown().await;
}

/// A replica away for several segments is brought level on all of them before it counts again.
/// Core is down, so `a` trims nothing; `b` dies, `a` (allow_local) writes four more segments,
/// `b` returns and `a` sends it every segment it missed. Then `a` dies with its disk: only `b`'s
/// copy is left, and its takeover must deliver every accepted event, the missed segments too.
#[test]
fn a_replica_away_for_several_segments_is_caught_up_on_all_of_them() {
    let pop = Pop::new("repl-catchup");
    let (a, b) = (Node::new("a"), Node::new("b"));
    let b_opts = b.opts(&[("a", a.repl)], "allow_local");
    let mut b_proc = pop.edge(&b, &b_opts);
    let a_opts = EdgeOpts { segment_bytes: Some(16 * 1024), ..a.opts(&[("b", b.repl)], "allow_local") };
    let mut a_proc = pop.edge(&a, &a_opts);
    let collector = pop.collector();
    let ledger = Ledger::new();
    for i in 0..5 {
        post_healthy(&ledger, &a, &pop.env.key, format!("before-{i}"));
    }
    wait_until("a replicated group before the kill", Duration::from_secs(30), || {
        post(&ledger, &a, &pop.env.key, format!("settle-{}", rand_suffix()));
        a.metric("sluice_edge_replication_degraded") == 0.0
    });
    b_proc.kill9();
    let a_wal = pop.env.node_wal_dir(Some("a"));
    let at_kill = sluice_tests::walfile::segments(&a_wal).len();
    let mut i = 0;
    while sluice_tests::walfile::segments(&a_wal).len() < at_kill + 4 {
        assert_eq!(post(&ledger, &a, &pop.env.key, format!("away-{i}")), Outcome::Accepted, "allow_local");
        i += 1;
    }
    let b_proc = pop.edge(&b, &b_opts);
    wait_until("b to count again", Duration::from_secs(60), || {
        post(&ledger, &a, &pop.env.key, format!("back-{}", rand_suffix()));
        a.metric("sluice_edge_replication_degraded") == 0.0
    });
    assert!(a_proc.log().contains("missing bytes of every segment"), "b was not caught up:\n{}", a_proc.log());
    // b's copy is a's WAL, segment by segment, the ones written while b was away included.
    let copy = pop.env.node_wal_dir(Some("b")).join("replica").join("a");
    let copied = walfile_segments(&copy);
    for segment in sluice_tests::walfile::segments(&a_wal) {
        let name = segment.file_name().expect("segment name");
        let theirs = copied.iter().find(|c| c.file_name() == Some(name)).unwrap_or_else(|| {
            panic!("b has no copy of {name:?}; it has {copied:?}");
        });
        let ours = sluice_tests::walfile::record_bytes(&segment);
        assert_eq!(std::fs::read(theirs).ok(), Some(ours), "{name:?} differs on b");
    }

    a_proc.kill9();
    std::fs::remove_dir_all(&a_wal).expect("deleting a's WAL");
    let _core = pop.core();
    let healed = Instant::now();
    let report = settle("replica away for 4 segments, then the origin's disk lost", &ledger, collector, Some(healed));
    report.assert_no_loss();
    assert!(b_proc.log().contains("taking over"), "b never took over");
    b_proc.assert_no_panic();
}

/// Peers' copies live inside a budget of their own: `b` refuses appends past
/// `replica_budget_bytes`, and `a` (require) answers `503 replica_unavailable` rather than a
/// `202` it could not back with a replica. Once core has a's events, a's watermark trims `b`'s
/// copy and `a` accepts again; nothing accepted is lost.
#[test]
fn a_full_replica_budget_refuses_with_503() {
    const BUDGET: u64 = 48 * 1024;
    let pop = Pop::new("repl-budget");
    let (a, b) = (Node::new("a"), Node::new("b"));
    let mut b_opts = b.opts(&[("a", a.repl)], "require");
    b_opts.extra_toml =
        b_opts.extra_toml.replace("[replication]\n", &format!("[replication]\nreplica_budget_bytes = {BUDGET}\n"));
    let b_proc = pop.edge(&b, &b_opts);
    let a_proc = pop.edge(&a, &EdgeOpts { segment_bytes: Some(16 * 1024), ..a.opts(&[("b", b.repl)], "require") });
    let collector = pop.collector();
    let ledger = Ledger::new();
    // Core is down: nothing is acked, so nothing trims b's copy until the budget is full.
    post_healthy(&ledger, &a, &pop.env.key, "first".into());
    let mut i = 0;
    while post(&ledger, &a, &pop.env.key, format!("fill-{i}")) == Outcome::Accepted {
        i += 1;
        assert!(i < 500, "b never refused an append with a {BUDGET}-byte budget");
    }
    assert_eq!(b.metric("sluice_edge_replication_replica_budget_bytes"), BUDGET as f64);
    assert!(b.metric("sluice_edge_replication_replica_refusals_total") >= 1.0);
    assert!(b.metric("sluice_edge_replication_replica_bytes") <= BUDGET as f64);
    assert!(a_proc.log().contains("replica budget full"), "a did not see b's refusal:\n{}", a_proc.log());
    let body = sluice_tests::ledger::body_for(&["raw".into()]);
    let auth = format!("Bearer {}", pop.env.key);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r = sluice_tests::http::request(a.http, "POST", "/v1/events", &headers, &body).expect("request");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("replica_unavailable")));
    assert!(r.header("retry-after").is_some());

    let _core = pop.core();
    let mut j = 0;
    wait_until("a accepting once b's copy is trimmed", Duration::from_secs(60), || {
        j += 1;
        post(&ledger, &a, &pop.env.key, format!("trimmed-{j}")) == Outcome::Accepted
    });
    let report = settle("replica budget full, require", &ledger, collector, None);
    report.assert_no_loss();
    a_proc.assert_no_panic();
    b_proc.assert_no_panic();
}
