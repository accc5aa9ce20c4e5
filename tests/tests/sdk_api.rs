//! The PostHog and Segment routes beyond what the pinned SDK versions send (legacy posthog-js
//! form bodies, lz-string, single events with the key in `properties.token`, Segment's single
//! calls and limits), and the `/v1/events` policies applied to them (PII policy, rate limits,
//! dead letters), each answer checked against `openapi.yaml` in the API's own shapes.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use sluice_tests::core_harness::{edge_forwarding_to_file_core, sink_file};
use sluice_tests::edge_harness::set_quota;
use sluice_tests::http::{Response, gzip, request};
use sluice_tests::metrics::{sample, scrape};
use sluice_tests::openapi::Spec;
use sluice_tests::sdk::sink_events;
use sluice_tests::wait_until;

fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let resp = request(addr, "POST", path, headers, body).expect("request");
    Spec::load().check("POST", path, &resp);
    resp
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish().into_bytes()
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_body_forms_map_into_the_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let event = |id: &str| {
            json!({"event": "$pageview", "uuid": format!("uuid-{id}"), "offset": 1000,
            "properties": {"token": key, "distinct_id": format!("form-{id}"), "$current_url": "http://x/"}})
        };
        let text = |id: &str| serde_json::to_string(&json!([event(id)])).expect("json");
        let b64 = base64::engine::general_purpose::STANDARD.encode(text("b64"));
        let lz = lz_str::compress_to_base64(&text("lz"));
        let b64_track = base64::engine::general_purpose::STANDARD.encode(text("track"));
        let text_plain = ("Content-Type", "text/plain");
        let cases = [
            ("/e/", FORM, form(&[("data", &b64)])),
            ("/e/?compression=lz64", FORM, form(&[("data", &lz)])),
            ("/track", FORM, form(&[("data", &b64_track), ("compression", "base64")])),
            ("/i/v0/e/?compression=gzip-js&ip=0", text_plain, gzip(text("gz").as_bytes())),
            ("/capture/", ("Content-Type", "application/json"), serde_json::to_vec(&event("single")).expect("json")),
        ];
        for (path, header, body) in &cases {
            let r = post(addr, path, &[*header], body);
            assert_eq!((r.status, r.json()), (200, json!({"status": 1})), "{path}");
        }
        wait_until("the form events reach the sink", Duration::from_secs(30), || {
            sink_events(&sink, "form-").len() == 5
        });
        let seen = sink_events(&sink, "form-");
        for id in ["b64", "lz", "track", "gz", "single"] {
            let e = &seen[&format!("form-{id}")][0];
            assert_eq!(
                (e["event_id"].as_str(), e["api"].as_str()),
                (Some(format!("uuid-{id}").as_str()), Some("posthog"))
            );
            assert!(e["properties"].get("token").is_none(), "{e}");
            let lag = e["received_at"].as_i64().unwrap() - e["timestamp"].as_i64().unwrap();
            assert!((1000..5000).contains(&lag), "timestamp is receipt minus offset: {e}");
        }

        let bad = post(addr, "/batch/", &[], br#"{"api_key":"nope","batch":[{"event":"e","distinct_id":"u"}]}"#);
        assert_eq!(bad.status, 401);
        assert_eq!(
            (bad.json()["type"].as_str(), bad.json()["code"].as_str()),
            (Some("authentication_error"), Some("unauthorized"))
        );
        let missing = post(addr, "/batch/", &[], br#"{"batch":[{"event":"e","distinct_id":"u"}]}"#);
        assert_eq!(missing.status, 401, "no key anywhere");
        let broken = post(addr, "/e/", &[FORM], b"data=%%%");
        assert_eq!((broken.status, broken.json()["code"].as_str()), (400, Some("malformed_body")));
        let br = post(addr, "/e/?compression=br", &[], b"{}");
        assert_eq!(br.status, 415);
    })
    .await
    .expect("client");
    edge.shutdown().await;
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_single_calls_limits_and_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |_| {}).await;
    let (addr, key, sink) = (edge.addr(), edge.key.clone(), sink_file(dir.path()));
    tokio::task::spawn_blocking(move || {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:")));
        let auth = [("Authorization", basic.as_str()), ("Content-Type", "application/json")];
        let identify = br#"{"userId":"seg-1","traits":{"plan":"pro"},"messageId":"m-1"}"#;
        let r = post(addr, "/v1/identify", &auth, identify);
        assert_eq!((r.status, r.json()), (200, json!({"success": true})));
        let in_body =
            serde_json::to_vec(&json!({"writeKey": key, "anonymousId": "seg-2", "event": "E", "messageId": "m-2"}))
                .expect("json");
        assert_eq!(post(addr, "/v1/track", &[], &in_body).status, 200, "writeKey in the body");
        let gz = gzip(br#"{"batch":[{"type":"page","userId":"seg-3","name":"Home","messageId":"m-3"}]}"#);
        let r = post(addr, "/v1/batch", &[auth[0], ("Content-Encoding", "gzip")], &gz);
        assert_eq!(r.status, 200);
        wait_until("the segment calls reach the sink", Duration::from_secs(30), || {
            sink_events(&sink, "seg-").len() == 3
        });
        let seen = sink_events(&sink, "seg-");
        let names: Vec<_> = (1..=3).map(|i| seen[&format!("seg-{i}")][0]["event"].clone()).collect();
        assert_eq!(names, [json!("$identify"), json!("E"), json!("$page")]);
        assert_eq!(seen["seg-1"][0]["properties"], json!({"plan": "pro"}));

        let big = format!(r#"{{"userId":"seg-big","event":"E","properties":{{"p":"{}"}}}}"#, "x".repeat(33 * 1024));
        let r = post(addr, "/v1/track", &auth, big.as_bytes());
        assert_eq!(
            (r.status, r.json()["code"].as_str(), r.json()["success"].as_bool()),
            (413, Some("payload_too_large"), Some(false))
        );
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("wrong:"));
        let r = post(addr, "/v1/batch", &[("Authorization", &wrong)], br#"{"batch":[]}"#);
        assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("unauthorized")));
        let r = post(addr, "/v1/batch", &auth, br#"{"batch":[{"type":"track","userId":"seg-x"}]}"#);
        assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("no_valid_events")), "a track call needs `event`");
    })
    .await
    .expect("client");
    edge.shutdown().await;
    core.shutdown().await;
}

/// PII policy, tenant rate limits, dead letters and metrics work on the compatible routes as on
/// `/v1/events`, answered in the API's shapes so the SDKs retry what they should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_to_the_compatible_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (core, edge) = edge_forwarding_to_file_core(dir.path(), |c| {
        c.pii.default.disallowed_fields = vec!["properties.ssn".into()];
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let (addr, key, keys_file) = (edge.addr(), edge.key.clone(), edge.keys_file.clone());
    let admin = edge.edge().admin_addr.expect("admin");
    let dead_letters = dir.path().join("sink").join(sluice_core::sink::DEAD_LETTER_FILE_NAME);
    tokio::task::spawn_blocking(move || {
        let batch = |events: Value| serde_json::to_vec(&json!({"api_key": key, "batch": events})).expect("json");
        let pii =
            post(addr, "/batch/", &[], &batch(json!([{"event": "e", "distinct_id": "u", "properties": {"ssn": "1"}}])));
        assert_eq!((pii.status, pii.json()["code"].as_str()), (422, Some("pii_detected")));

        let partial = batch(json!([{"event": "ok", "distinct_id": "u"}, {"distinct_id": "no-name"}]));
        assert_eq!(post(addr, "/batch/", &[], &partial).status, 200, "the valid event is stored");
        let metrics = scrape(admin);
        assert_eq!(sample(&metrics, "sluice_edge_accepted_events_total", ""), Some(1.0), "{metrics}");
        assert_eq!(sample(&metrics, "sluice_edge_responses_total", r#"code="pii_detected""#), Some(1.0), "{metrics}");
        wait_until("the invalid event is dead-lettered", Duration::from_secs(30), || {
            std::fs::read_to_string(&dead_letters).is_ok_and(|t| t.contains("no-name") && t.contains("missing_field"))
        });

        set_quota(&keys_file, "acme", 1);
        let events: Vec<Value> = (0..10).map(|i| json!({"event": "e", "distinct_id": format!("q-{i}")})).collect();
        let limited = wait_until_status(|| post(addr, "/batch/", &[], &batch(json!(events))), 429);
        assert_eq!(limited.json()["type"], "throttled_error");
        assert!(limited.header("retry-after").is_some(), "posthog SDKs wait Retry-After and retry a 429");
    })
    .await
    .expect("client");
    edge.shutdown().await;
    core.shutdown().await;
}

/// Repeats `send` (the keys file reloads within 50 ms) until it answers `status`.
fn wait_until_status(send: impl Fn() -> Response, status: u16) -> Response {
    let mut last = None;
    wait_until("the expected status", Duration::from_secs(10), || {
        let r = send();
        let hit = r.status == status;
        last = Some(r);
        hit
    });
    last.expect("a response")
}
