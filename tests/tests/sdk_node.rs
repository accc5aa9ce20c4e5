//! The unmodified Node SDKs (`posthog-node`, `@segment/analytics-node`, pinned in
//! `tests/sdk/package-lock.json`) deliver to Sluice by their host setting alone: every call type
//! reaches the sink exactly once with its mapped fields, also when the answer to the SDK's first
//! request is lost and it resends; a wrong key gets the error the SDK reports.

use serde_json::Value;
use sluice_tests::sdk::{SdkRun, check_sdk, check_segment_event, node, seq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_node_delivers_every_call_exactly_once() {
    let run = SdkRun { program: node().into(), script: "node_sdks.js", sdk: "posthog", prefix: "phn", calls: 300 };
    check_sdk(
        run,
        |sent, e| {
            assert!(e["sent_at"].is_i64(), "{e}");
            let p = &e["properties"];
            assert_eq!(p["$lib"], "posthog-node", "$-properties are kept: {e}");
            let i = Value::from(seq(&sent.id));
            let (name, got, want): (&str, &Value, Value) = match sent.call.as_str() {
                "capture" => ("node signup", &p["seq"], i),
                "identify" => ("$identify", &p["$set"]["seq"], i),
                "alias" => ("$create_alias", &p["alias"], format!("{}-new", sent.id).into()),
                "groupIdentify" => ("$groupidentify", &p["$group_set"]["seats"], i),
                other => panic!("unexpected call {other}"),
            };
            assert_eq!((e["event"].as_str(), got), (Some(name), &want), "{}: {e}", sent.call);
        },
        |err| assert_eq!(err["status"], 401, "{err}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_node_delivers_every_call_exactly_once() {
    let run = SdkRun { program: node().into(), script: "node_sdks.js", sdk: "segment", prefix: "sgn", calls: 300 };
    check_sdk(
        run,
        |sent, e| {
            assert!(e["event_id"].as_str().is_some_and(|id| id.starts_with("node-next-")), "the SDK's messageId: {e}");
            check_segment_event(sent, e, "@segment/analytics-node", "Node Signed Up");
        },
        |err| {
            assert_eq!(err["code"], "delivery_failure", "{err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains("401")), "{err}");
        },
    )
    .await;
}
