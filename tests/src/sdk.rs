//! Runs the real SDKs pinned in `tests/sdk/` (installed there by `tests/setup`) against a dev
//! pipeline, and reads back what reached the sink.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `tests/sdk/`: the scripts, the lockfiles, and the installed SDKs.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// The Python of the SDKs' virtualenv.
pub fn python() -> PathBuf {
    let python = sdk_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/setup (it installs tests/sdk/requirements.txt)",
        python.display()
    );
    python
}

/// `node`, checked to find the SDKs of `tests/sdk/node_modules`.
pub fn node() -> &'static str {
    let modules = sdk_dir().join("node_modules");
    assert!(modules.exists(), "{} is missing: run tests/setup (it runs npm ci in tests/sdk)", modules.display());
    "node"
}

/// One call an SDK script made.
#[derive(Debug, Clone)]
pub struct Sent {
    pub call: String,
    /// The identity the call was made for (unique per call).
    pub id: String,
    /// The message ID the SDK generated, when the SDK tells it.
    pub event_id: Option<String>,
}

/// What an SDK script reports: its calls, and the errors the SDK reported to it.
#[derive(Debug)]
pub struct Report {
    pub sent: Vec<Sent>,
    pub errors: Vec<Value>,
}

/// Parses the `sent` list of a script's report.
pub fn parse_sent(report: &Value) -> Vec<Sent> {
    report["sent"]
        .as_array()
        .expect("sent")
        .iter()
        .map(|s| Sent {
            call: s["call"].as_str().expect("call").to_string(),
            id: s["id"].as_str().expect("id").to_string(),
            event_id: s["event_id"].as_str().map(String::from),
        })
        .collect()
}

/// Runs an SDK script (`program args…` in `tests/sdk/`) and parses the JSON report it prints.
pub fn run_script(program: &Path, args: &[&str], timeout: Duration) -> Report {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(sdk_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("{} {args:?} did not finish within {timeout:?}", program.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        program.display(),
        out.status
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report from {args:?}\nstdout: {stdout}\nstderr: {stderr}"));
    let sent = parse_sent(&report);
    Report { sent, errors: report["errors"].as_array().cloned().unwrap_or_default() }
}

/// The events in a file sink whose `distinct_id` starts with `prefix`, by `distinct_id`.
pub fn sink_events(sink: &Path, prefix: &str) -> HashMap<String, Vec<Value>> {
    sink_events_by(sink, &by_distinct_id(prefix))
}

/// Names an event by the `distinct_id` a script gave it, when it starts with `prefix`.
pub fn by_distinct_id(prefix: &str) -> impl Fn(&Value) -> Option<String> + use<> {
    let prefix = prefix.to_string();
    move |event| event["distinct_id"].as_str().filter(|id| id.starts_with(&prefix)).map(String::from)
}

/// The events in a file sink that `identify` names, by that name.
pub fn sink_events_by(sink: &Path, identify: &dyn Fn(&Value) -> Option<String>) -> HashMap<String, Vec<Value>> {
    let text = std::fs::read_to_string(sink).unwrap_or_default();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
        if let Some(id) = identify(&event) {
            by_id.entry(id).or_default().push(event);
        }
    }
    by_id
}

/// Waits until every sent call is in the sink (named by `identify`), then a little longer so a
/// late duplicate would show, and returns the sink's events that `identify` names.
pub fn wait_delivered(
    sink: &Path,
    identify: &dyn Fn(&Value) -> Option<String>,
    sent: &[Sent],
    timeout: Duration,
) -> HashMap<String, Vec<Value>> {
    let started = Instant::now();
    loop {
        let seen = sink_events_by(sink, identify);
        let missing = sent.iter().filter(|s| !seen.contains_key(&s.id)).count();
        if missing == 0 {
            break;
        }
        assert!(started.elapsed() < timeout, "{missing} of {} events never reached the sink", sent.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    sink_events_by(sink, identify)
}

/// Asserts every sent call is in the sink exactly once, with the SDK's message ID where known,
/// and returns each call with its one event.
pub fn assert_exactly_once<'a>(seen: &HashMap<String, Vec<Value>>, sent: &'a [Sent]) -> Vec<(&'a Sent, Value)> {
    assert_eq!(seen.len(), sent.len(), "the sink holds other identities than the ones sent");
    sent.iter()
        .map(|s| {
            let events = &seen[&s.id];
            assert_eq!(events.len(), 1, "{} ({}) is in the sink {} times: {events:?}", s.id, s.call, events.len());
            let event = events[0].clone();
            if let Some(id) = &s.event_id {
                assert_eq!(event["event_id"].as_str(), Some(id.as_str()), "{}: the SDK's message ID", s.id);
            }
            assert!(event["event_id"].as_str().is_some_and(|id| !id.is_empty()), "{event}");
            (s, event)
        })
        .collect()
}

/// A loopback TCP proxy to `upstream` that cuts the first `drops` connections the moment the
/// upstream's answer arrives: the request was served (and stored), the client saw the
/// connection drop and must retry.
pub struct DroppingProxy {
    pub addr: SocketAddr,
    pub dropped: Arc<AtomicUsize>,
    /// Requests a browser sent as `Sec-Fetch-Mode: no-cors`: `navigator.sendBeacon` (fetches of
    /// posthog-js are `cors`).
    pub no_cors: Arc<AtomicUsize>,
}

impl DroppingProxy {
    pub fn start(upstream: SocketAddr, drops: usize) -> Self {
        let listener = TcpListener::bind(crate::free_tcp_addr()).expect("proxy bind");
        let addr = listener.local_addr().expect("addr");
        let dropped = Arc::new(AtomicUsize::new(0));
        let no_cors = Arc::new(AtomicUsize::new(0));
        let (counter, beacons) = (dropped.clone(), no_cors.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let (counter, beacons) = (counter.clone(), beacons.clone());
                std::thread::spawn(move || relay(client, server, &counter, drops, beacons));
            }
        });
        DroppingProxy { addr, dropped, no_cors }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn relay(client: TcpStream, server: TcpStream, dropped: &AtomicUsize, drops: usize, no_cors: Arc<AtomicUsize>) {
    let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from_client.read(&mut buf) {
            // A request head arrives at the start of a read; good enough for a test's counter.
            let chunk = buf[..n].to_ascii_lowercase();
            no_cors
                .fetch_add(chunk.windows(24).filter(|w| w == b"sec-fetch-mode: no-cors\r").count(), Ordering::SeqCst);
            if to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let (mut from_server, mut to_client) = (server, client);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first && dropped.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| (d < drops).then_some(d + 1)).is_ok() {
            let _ = to_client.shutdown(std::net::Shutdown::Both);
            let _ = from_server.shutdown(std::net::Shutdown::Both);
            return;
        }
        first = false;
        if to_client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_client.shutdown(std::net::Shutdown::Both);
}

/// One SDK's run: `program script sdk <host> <key> <calls> <prefix>`.
pub struct SdkRun {
    pub program: PathBuf,
    pub script: &'static str,
    pub sdk: &'static str,
    /// Identities are `<prefix>-<i>`.
    pub prefix: &'static str,
    pub calls: usize,
}

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The whole check of one SDK against a dev pipeline (in-process core with the file sink, and
/// an edge forwarding to it): the SDK sends through a [`DroppingProxy`] that loses its first
/// answer; every call must be in the sink exactly once, with `api` and the tenant set, and pass
/// `check`. Then the SDK sends with a wrong key: it must report errors, each passing `refused`,
/// and nothing of it may reach the sink.
pub async fn check_sdk(
    run: SdkRun,
    check: impl Fn(&Sent, &Value) + Send + 'static,
    refused: impl Fn(&Value) + Send + 'static,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = crate::core_harness::edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), crate::core_harness::sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let proxy = DroppingProxy::start(addr, 1);
        let calls = run.calls.to_string();
        let args =
            |host: &str, key: &str, prefix: &str| [run.script, run.sdk, host, key, &calls, prefix].map(String::from);
        let good = args(&proxy.url(), &key, run.prefix);
        let report = run_script(&run.program, &good.each_ref().map(String::as_str), SCRIPT_TIMEOUT);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.sent.len(), run.calls);
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "one answer was lost and the SDK resent");
        let seen = wait_delivered(&sink, &by_distinct_id(&format!("{}-", run.prefix)), &report.sent, DELIVERY_TIMEOUT);
        for (sent, event) in assert_exactly_once(&seen, &report.sent) {
            assert_eq!((event["api"].as_str(), event["tenant"].as_str()), (Some(run.sdk), Some("acme")), "{event}");
            assert!(event["timestamp"].is_i64(), "{event}");
            check(sent, &event);
        }

        let bad_prefix = format!("{}bad", run.prefix);
        let bad = args(&format!("http://{addr}"), "wrong-key", &bad_prefix);
        let bad = run_script(&run.program, &bad.each_ref().map(String::as_str), SCRIPT_TIMEOUT);
        assert!(!bad.errors.is_empty(), "the SDK reports a refused key");
        bad.errors.iter().for_each(refused);
        assert!(sink_events(&sink, &format!("{bad_prefix}-")).is_empty());
    })
    .await
    .expect("sdk run");
    edge.shutdown().await;
    core.shutdown().await;
}

/// The number a script gave the call for `<prefix>-<n>`.
pub fn seq(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("identity ends in its sequence number")
}

/// The mapped fields of a Segment call made by an SDK script (the same calls in both languages).
pub fn check_segment_event(sent: &Sent, e: &Value, library: &str, track_name: &str) {
    assert!(e["sent_at"].is_i64(), "{e}");
    assert_eq!(e["context"]["library"]["name"], library, "{e}");
    let (p, segment, i) = (&e["properties"], &e["context"]["segment"], Value::from(seq(&sent.id)));
    assert_eq!(segment["type"], sent.call.as_str(), "{e}");
    let (name, got, want): (&str, &Value, Value) = match sent.call.as_str() {
        "track" => (track_name, &p["seq"], i),
        "identify" => ("$identify", &p["seq"], i),
        "page" => ("$page", &segment["name"], "Home".into()),
        "screen" => ("$screen", &segment["name"], "Main".into()),
        "group" => ("$group", &segment["groupId"], format!("g-{i}").into()),
        "alias" => ("$alias", &segment["previousId"], format!("{}-old", sent.id).into()),
        other => panic!("unexpected call {other}"),
    };
    assert_eq!((e["event"].as_str(), got), (Some(name), &want), "{}: {e}", sent.call);
}
