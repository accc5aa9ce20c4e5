//! The unmodified posthog-js (pinned in `tests/sdk/package-lock.json`) in Debian's headless
//! Chromium, on a page the test's script serves, delivers to Sluice by its `api_host` alone:
//! every call type reaches the sink exactly once with its mapped fields, also when the answer to
//! its first request is lost and it resends; the events captured just before the page unloads
//! arrive by `navigator.sendBeacon`; an instance with a wrong key sees the 401.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use serde_json::Value;
use sluice_tests::core_harness::{edge_forwarding_to_file_core, sink_file};
use sluice_tests::sdk::{
    DELIVERY_TIMEOUT, DroppingProxy, Sent, assert_exactly_once, node, parse_sent, sdk_dir, seq, wait_delivered,
};

const PREFIX: &str = "jsb";

/// The tag the page gave an event: each posthog-js call puts it somewhere else.
fn test_id(e: &Value) -> Option<String> {
    let p = &e["properties"];
    [&p["test_id"], &p["$set"]["test_id"], &p["$group_set"]["test_id"], &p["alias"]]
        .into_iter()
        .find_map(Value::as_str)
        .filter(|id| id.starts_with("jsb-"))
        .map(String::from)
}

/// The next JSON line the script prints.
fn next_report(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Value {
    lines
        .find_map(|l| serde_json::from_str::<Value>(&l.expect("script output")).ok())
        .expect("the script ended without its report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_in_chromium_delivers_every_call_and_the_unload_beacon() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run tests/setup (it installs Debian's chromium)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let proxy = DroppingProxy::start(addr, 1);
        let mut child = Command::new(node())
            .args(["browser_posthog.js", &proxy.url(), &format!("http://{addr}"), &key, "200", PREFIX])
            .current_dir(sdk_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let sent = parse_sent(&next_report(&mut lines));
        assert_eq!(sent.len(), 200);
        wait_delivered(&sink, &test_id, &sent, DELIVERY_TIMEOUT);
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "one answer was lost and posthog-js resent");

        writeln!(child.stdin.as_mut().expect("stdin"), "unload").expect("tell the script to unload");
        let unloaded = next_report(&mut lines);
        assert!(proxy.no_cors.load(Ordering::SeqCst) >= 1, "the unload used sendBeacon");
        let errors = unloaded["errors"].as_array().expect("errors");
        assert!(!errors.is_empty() && errors.iter().all(|e| e["status"] == 401), "wrong key: {errors:?}");
        let all: Vec<Sent> = sent.into_iter().chain(parse_sent(&unloaded)).collect();
        let seen = wait_delivered(&sink, &test_id, &all, DELIVERY_TIMEOUT);
        for (sent, e) in assert_exactly_once(&seen, &all) {
            assert_eq!((e["api"].as_str(), e["tenant"].as_str()), (Some("posthog"), Some("acme")), "{e}");
            assert_eq!(e["distinct_id"], "jsbuser", "the page's bootstrapped distinct ID: {e}");
            let p = &e["properties"];
            assert_eq!(p["$lib"], "web", "$-properties are kept: {e}");
            assert!(p.get("token").is_none(), "{e}");
            let name = match sent.call.as_str() {
                "capture" => "js signup",
                "unload" => "js unload",
                "setPersonProperties" => "$set",
                "group" => "$groupidentify",
                "alias" => "$create_alias",
                other => panic!("unexpected call {other}"),
            };
            assert_eq!(e["event"], name, "{}: {e}", sent.call);
            if sent.call == "capture" {
                assert_eq!(p["seq"], seq(&sent.id), "{e}");
            }
        }
        let status = child.wait().expect("script exits");
        assert!(status.success(), "browser script: {status}");
    })
    .await
    .expect("browser run");
    edge.shutdown().await;
    core.shutdown().await;
}
