//! The unmodified Python SDKs (`posthog`, `segment-analytics-python`, pinned in
//! `tests/sdk/requirements.txt`) deliver to Sluice by their host setting alone: every call type
//! reaches the sink exactly once with its mapped fields, also when the answer to the SDK's first
//! request is lost and it resends; a wrong key gets the error the SDK reports.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::core_harness::{edge_forwarding_to_file_core, sink_file};
use sluice_tests::sdk::{DroppingProxy, assert_exactly_once, python, run_script, sink_events, wait_delivered};

const CALLS: &str = "300";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `seq` a script gave the call for `<prefix>-<seq>`.
fn seq(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("identity ends in its sequence number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_delivers_every_call_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let proxy = DroppingProxy::start(addr, 1);
        let report =
            run_script(&python(), &["python_sdks.py", "posthog", &proxy.url(), &key, CALLS, "php"], SCRIPT_TIMEOUT);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "one answer was lost and the SDK resent");
        let seen = wait_delivered(&sink, "php-", &report.sent, DELIVERY_TIMEOUT);
        for (sent, e) in assert_exactly_once(&seen, &report.sent) {
            assert_eq!((e["api"].as_str(), e["tenant"].as_str()), (Some("posthog"), Some("acme")), "{e}");
            assert!(e["timestamp"].is_i64() && e["sent_at"].is_i64(), "{e}");
            let p = &e["properties"];
            assert_eq!(p["$lib"], "posthog-python", "$-properties are kept: {e}");
            assert!(p.get("token").is_none() && p.get("api_key").is_none(), "{e}");
            let i = seq(&sent.id);
            let (name, check): (&str, Value) = match sent.call.as_str() {
                "capture" => ("py signup", p["seq"].clone()),
                "set" => ("$set", p["$set"]["seq"].clone()),
                "set_once" => ("$set_once", p["$set_once"]["first_seen"].clone()),
                "group_identify" => ("$groupidentify", p["$group_set"]["seats"].clone()),
                "alias" => ("$create_alias", Value::from(u64::from(p["alias"] == format!("{}-new", sent.id)) * i)),
                other => panic!("unexpected call {other}"),
            };
            assert_eq!((e["event"].as_str(), check.as_u64()), (Some(name), Some(i)), "{}: {e}", sent.call);
        }

        let bad = run_script(
            &python(),
            &["python_sdks.py", "posthog", &format!("http://{addr}"), "wrong", "5", "phbad"],
            SCRIPT_TIMEOUT,
        );
        assert!(!bad.errors.is_empty(), "the SDK reports a refused key");
        for err in &bad.errors {
            assert_eq!(err["status"], 401, "{err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains("key")), "posthog-python shows `detail`: {err}");
        }
        assert!(sink_events(&sink, "phbad-").is_empty());
    })
    .await
    .expect("sdk run");
    edge.shutdown().await;
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_delivers_every_call_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let proxy = DroppingProxy::start(addr, 1);
        let report =
            run_script(&python(), &["python_sdks.py", "segment", &proxy.url(), &key, CALLS, "sgp"], SCRIPT_TIMEOUT);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "one answer was lost and the SDK resent");
        let seen = wait_delivered(&sink, "sgp-", &report.sent, DELIVERY_TIMEOUT);
        for (sent, e) in assert_exactly_once(&seen, &report.sent) {
            assert_eq!((e["api"].as_str(), e["tenant"].as_str()), (Some("segment"), Some("acme")), "{e}");
            assert!(e["timestamp"].is_i64() && e["sent_at"].is_i64(), "{e}");
            let segment = &e["context"]["segment"];
            assert_eq!(segment["type"], sent.call.as_str(), "{e}");
            assert_eq!(e["context"]["library"]["name"], "analytics-python", "{e}");
            let (p, i) = (&e["properties"], Value::from(seq(&sent.id)));
            match sent.call.as_str() {
                "track" => assert_eq!((e["event"].as_str(), &p["seq"]), (Some("Py Signed Up"), &i), "{e}"),
                "identify" => assert_eq!((e["event"].as_str(), &p["seq"]), (Some("$identify"), &i), "{e}"),
                "page" => assert_eq!(
                    (e["event"].as_str(), &segment["name"], &p["url"]),
                    (Some("$page"), &"Home".into(), &"http://x/docs".into())
                ),
                "screen" => assert_eq!(
                    (e["event"].as_str(), &segment["category"], &p["seq"]),
                    (Some("$screen"), &"App".into(), &i)
                ),
                "group" => assert_eq!(
                    (e["event"].as_str(), &segment["groupId"], &p["seats"]),
                    (Some("$group"), &format!("g-{i}").into(), &i)
                ),
                "alias" => assert_eq!(
                    (e["event"].as_str(), &segment["previousId"]),
                    (Some("$alias"), &format!("{}-old", sent.id).into())
                ),
                other => panic!("unexpected call {other}"),
            }
        }

        let bad = run_script(
            &python(),
            &["python_sdks.py", "segment", &format!("http://{addr}"), "wrong", "5", "sgbad"],
            SCRIPT_TIMEOUT,
        );
        assert!(!bad.errors.is_empty(), "the SDK reports a refused key");
        for err in &bad.errors {
            assert_eq!((err["status"].as_u64(), err["code"].as_str()), (Some(401), Some("unauthorized")), "{err}");
        }
        assert!(sink_events(&sink, "sgbad-").is_empty());
    })
    .await
    .expect("sdk run");
    edge.shutdown().await;
    core.shutdown().await;
}
