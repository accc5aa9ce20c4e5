//! The unmodified Python SDKs (`posthog`, `segment-analytics-python`, pinned in
//! `tests/sdk/requirements.txt`) deliver to Sluice by their host setting alone: every call type
//! reaches the sink exactly once with its mapped fields, also when the answer to the SDK's first
//! request is lost and it resends; a wrong key gets the error the SDK reports.

use serde_json::Value;
use sluice_tests::sdk::{SdkRun, check_sdk, check_segment_event, python, seq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_python_delivers_every_call_exactly_once() {
    let run = SdkRun { program: python(), script: "python_sdks.py", sdk: "posthog", prefix: "php", calls: 300 };
    check_sdk(
        run,
        |sent, e| {
            assert!(e["sent_at"].is_i64(), "{e}");
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
        },
        |err| {
            assert_eq!(err["status"], 401, "{err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains("key")), "posthog-python shows `detail`: {err}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_python_delivers_every_call_exactly_once() {
    let run = SdkRun { program: python(), script: "python_sdks.py", sdk: "segment", prefix: "sgp", calls: 300 };
    check_sdk(
        run,
        |sent, e| {
            check_segment_event(sent, e, "analytics-python", "Py Signed Up");
        },
        |err| assert_eq!((err["status"].as_u64(), err["code"].as_str()), (Some(401), Some("unauthorized")), "{err}"),
    )
    .await;
}
