//! The runbook (`deploy/RUNBOOK.md`) as an executable document: every shell block marked
//! `<!-- runbook-test: NAME -->` is run as written, by bash, against real edge and core processes
//! and a Kafka-protocol broker, with the runbook's variables (`EDGE_ADMIN`, `WAL`, `KEYS`, ...)
//! pointing at this test's files. A block that fails fails the test, and so does a marked block
//! that no step here runs: a procedure cannot rot silently. The checks between blocks are what
//! the runbook promises the operator (the old key refused, the tenant blocked, the backlog held
//! while paused, the drain exiting, the replay delivering), and the whole run is held to the
//! zero-loss ledger: every `202` reaches Kafka exactly once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_tests::http::request;
use sluice_tests::kafka::TestKafka;
use sluice_tests::ledger::{Collector, Ledger, Outcome, body_for, check};
use sluice_tests::procs::{EdgeOpts, Proc, TestEnv, bin_path};
use sluice_tests::{free_tcp_addr, free_udp_addr, wait_until, walfile};

const MARKER: &str = "<!-- runbook-test: ";
const TOKEN: &str = "runbook-admin-token";

/// The marked blocks of the runbook, and which of them ran.
struct Runbook {
    blocks: BTreeMap<String, String>,
    ran: Mutex<BTreeSet<String>>,
}

impl Runbook {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/RUNBOOK.md");
        let text = std::fs::read_to_string(&path).expect("deploy/RUNBOOK.md");
        Runbook { blocks: parse_blocks(&text), ran: Mutex::new(BTreeSet::new()) }
    }

    /// Runs block `name` in a fresh `bash -eu -o pipefail` with `vars`; its stdout.
    fn run(&self, name: &str, vars: &[(&str, String)]) -> String {
        let script = self.blocks.get(name).unwrap_or_else(|| panic!("RUNBOOK.md has no block marked {name:?}"));
        self.ran.lock().expect("lock").insert(name.to_string());
        let mut child = Command::new("bash")
            .args(["-eu", "-o", "pipefail", "-c", script])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "runbook block {name:?} failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        stdout.into_owned()
    }

    fn assert_all_ran(&self) {
        let ran = self.ran.lock().expect("lock");
        let missed: Vec<&String> = self.blocks.keys().filter(|k| !ran.contains(*k)).collect();
        assert!(missed.is_empty(), "blocks marked in RUNBOOK.md that this test does not run: {missed:?}");
    }
}

/// The ```sh block after each marker, with the fence's indentation removed (blocks inside list
/// items are indented).
fn parse_blocks(text: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else { continue };
        let name = rest.strip_suffix("-->").map(str::trim).unwrap_or_else(|| panic!("unterminated marker: {line}"));
        let fence = lines.by_ref().find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert_eq!(fence.trim(), "```sh", "marker {name:?} must be followed by a ```sh block");
        let indent = fence.len() - fence.trim_start().len();
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
            .collect();
        assert!(blocks.insert(name.to_string(), body.join("\n")).is_none(), "block {name:?} marked twice");
    }
    blocks
}

#[test]
fn parse_blocks_takes_the_marked_fences_only() {
    let text = "x\n<!-- runbook-test: a -->\n```sh\necho a\n```\n```sh\nnot marked\n```\n   <!-- runbook-test: b -->\n\n   ```sh\n   echo b\n     indented\n   ```\n";
    let blocks = parse_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks["a"], "echo a");
    assert_eq!(blocks["b"], "echo b\n  indented");
}

/// A directory holding `sluicectl`, as an operator's `PATH` does.
fn sluicectl_on_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(bin_path("sluicectl-under-test"), bin.join("sluicectl")).expect("symlink");
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

fn wait_core_listening(core: &Proc) {
    wait_until("core listening", Duration::from_secs(30), || core.log().contains("core: listening"));
}

/// Sends one batch of fresh events with `key`, recorded in the ledger (a probe that is accepted
/// must reach Kafka like any other batch); the answer's `code` (`ok` for a 2xx).
fn probe(ledger: &Ledger, http: std::net::SocketAddr, key: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ids = vec![format!("probe-{n}")];
    let auth = format!("Bearer {key}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r = request(http, "POST", "/v1/events", &headers, &body_for(&ids)).expect("probe");
    let outcome = if r.status == 202 { Outcome::Accepted } else { Outcome::Status(r.status) };
    ledger.record(&ids, outcome, r.header("retry-after"));
    r.code()
}

/// The value of sample `name` in Prometheus text, whatever its labels (the runbook's greps leave
/// one series).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.split(['{', ' ']).next() == Some(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn post_ok(ledger: &Ledger, http: std::net::SocketAddr, key: &str, prefix: &str, batches: usize) {
    for b in 0..batches {
        let ids: Vec<String> = (0..10).map(|e| format!("{prefix}-b{b}-e{e}")).collect();
        assert_eq!(ledger.post(http, key, ids), Outcome::Accepted, "{prefix} batch {b}");
    }
}

#[test]
fn the_runbook_procedures_run_as_written() {
    let book = Runbook::load();
    let kafka = TestKafka::start();
    let env = TestEnv::new("runbook");
    let overflow_topic = format!("{}.overflow", env.topic());
    kafka.create_topic(&env.topic(), 3);
    kafka.create_topic(&overflow_topic, 3);
    let (http, core_addr, admin) = (free_tcp_addr(), free_udp_addr(), free_tcp_addr());
    let mut core = env.spawn_core(core_addr, &kafka.brokers);
    wait_core_listening(&core);
    let opts = EdgeOpts {
        extra_toml: format!("[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n"),
        drain_deadline_secs: Some(60),
        ..EdgeOpts::default()
    };
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);
    let collector = Collector::start(&kafka.brokers, &env.topic());
    let ledger = Ledger::new();

    let recovery: PathBuf = env.path().join("recovered-wal");
    let old_key_id = sluice_edge::ingest::auth::read_keys_file(&env.keys_file).expect("keys").keys[0].id.clone();
    let path = sluicectl_on_path(env.path());
    let vars = |extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("PATH", path.clone()),
            ("SLUICE_ADMIN_TOKEN", TOKEN.to_string()),
            ("EDGE_ADMIN", admin.to_string()),
            ("WAL", env.wal_dir().display().to_string()),
            // spawn_edge_with writes the config it starts the edge with to <dir>/edge.toml.
            ("EDGE_CONFIG", env.path().join("edge.toml").display().to_string()),
            ("KEYS", env.keys_file.display().to_string()),
            ("RECOVERY", recovery.display().to_string()),
            ("TENANT", "acme".to_string()),
        ];
        v.extend_from_slice(extra);
        v
    };
    post_ok(&ledger, http, &env.key, "start", 2);

    // 6. Rotating keys: the new key works, then the old one is refused.
    let out = book.run("key-new", &vars(&[]));
    let new_key = out
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .unwrap_or_else(|| panic!("keys new printed no secret:\n{out}"))
        .trim()
        .to_string();
    assert!(out.contains(&old_key_id), "keys list shows the key being replaced:\n{out}");
    wait_until("the new key is accepted", Duration::from_secs(10), || probe(&ledger, http, &new_key) == "ok");
    book.run("key-revoke", &vars(&[("OLD_KEY_ID", old_key_id.clone())]));
    wait_until("the old key is revoked", Duration::from_secs(10), || probe(&ledger, http, &env.key) == "key_revoked");
    let key = new_key;
    post_ok(&ledger, http, &key, "rotated", 2);

    // 7. Kill switch.
    let out = book.run("block-tenant", &vars(&[]));
    assert!(out.contains("acme"), "GET /admission lists the block:\n{out}");
    assert_eq!(probe(&ledger, http, &key), "tenant_disabled");
    book.run("unblock-tenant", &vars(&[]));
    assert_eq!(probe(&ledger, http, &key), "ok");

    // 7. Overflow lane: while routed, the tenant's events reach the overflow topic and not the
    // region's (the region's collector would count them as unexpected); after the removal, the
    // region's again.
    let overflow = Ledger::new();
    let overflow_collector = Collector::start(&kafka.brokers, &overflow_topic);
    let out = book.run("overflow-route", &vars(&[]));
    assert!(out.contains("acme"), "GET /admission lists the route:\n{out}");
    post_ok(&overflow, http, &key, "overflow", 3);
    let out = book.run("overflow-check", &vars(&[]));
    assert!(sample(&out, "sluice_edge_overflow_events_total").is_some_and(|n| n >= 30.0), "{out}");
    book.run("overflow-remove", &vars(&[]));
    post_ok(&ledger, http, &key, "unrouted", 2);
    assert!(
        overflow_collector.wait_for(&overflow.accepted(), Duration::from_secs(60)),
        "routed events in the overflow topic"
    );
    let (seen, malformed) = overflow_collector.finish(Duration::from_secs(1));
    let report = check("runbook: overflow lane", &overflow, &seen, malformed, &HashSet::new(), None);
    report.print();
    report.assert_no_loss();

    // 2. Holding the backlog while core is repaired: nothing leaves the WAL until resumed.
    book.run("forwarder-pause", &vars(&[]));
    post_ok(&ledger, http, &key, "paused", 5);
    std::thread::sleep(Duration::from_millis(500));
    let out = book.run("buffer-headroom", &vars(&[]));
    let unacked = sample(&out, "sluice_edge_wal_unacked_bytes").unwrap_or_else(|| panic!("no unacked bytes:\n{out}"));
    assert!(unacked > 0.0, "paused: the backlog stays in the WAL:\n{out}");
    assert!(out.contains("\"paused\": true"), "status shows the pause:\n{out}");
    book.run("forwarder-resume", &vars(&[]));
    assert!(collector.wait_for(&ledger.accepted(), Duration::from_secs(60)), "resumed: the backlog drains");

    // 3. Disk filling: the inspection commands show the WAL, by tenant.
    let out = book.run("disk-check", &vars(&[]));
    assert!(out.contains("acme") && out.contains(".wal"), "wal inspect/ls show tenants and segments:\n{out}");

    // 1. Drain for a deploy, with a backlog: the command follows it to zero and the edge exits 0.
    let pause = request(admin, "POST", "/forwarder/pause", &[("Authorization", &format!("Bearer {TOKEN}"))], b"")
        .expect("pause");
    assert_eq!(pause.status, 200);
    post_ok(&ledger, http, &key, "drained", 5);
    book.run("drain", &vars(&[]));
    let status = edge.wait_exit(Duration::from_secs(30)).expect("the drained edge exits");
    assert!(status.success(), "a drain exits 0: {status}\n{}", edge.log());
    assert!(collector.wait_for(&ledger.accepted(), Duration::from_secs(30)), "the drain forwarded the backlog");

    // 4 and 5. Node lost while core was away: copy its WAL, check it, replay it.
    core.kill9();
    let mut edge = env.spawn_edge_with(http, core_addr, &opts);
    post_ok(&ledger, http, &key, "lost", 8);
    edge.kill9();
    walfile::copy_dir(&env.wal_dir(), &recovery);
    let core = env.spawn_core(core_addr, &kafka.brokers);
    wait_core_listening(&core);
    let out = book.run("recovered-wal-check", &vars(&[]));
    assert!(out.contains("acme"), "wal inspect lists the unacked tenant:\n{out}");
    book.run("replay", &vars(&[]));
    assert!(
        collector.wait_for(&ledger.accepted(), Duration::from_secs(60)),
        "the replay delivered the lost node's WAL"
    );

    book.assert_all_ran();
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let report = check("runbook procedures", &ledger, &seen, malformed, &HashSet::new(), None);
    report.print();
    report.assert_no_loss();
    assert_eq!(report.duplicated, 0, "no procedure duplicates an event");
}
