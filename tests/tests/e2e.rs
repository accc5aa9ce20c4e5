//! The walking skeleton's promise: events posted as a JSON array, as NDJSON and gzip-compressed
//! travel edge → WAL → QUIC → core → Kafka and arrive exactly once, normalized, with headers;
//! an invalid event in an accepted batch reaches core's dead-letter topic; a request's W3C
//! `traceparent` follows its events into the Kafka headers.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use sluice_tests::http::{events_body, post_events};
use sluice_tests::kafka::{TestKafka, consume};
use sluice_tests::metrics::{sample, wait_for_sample};
use sluice_tests::procs::{EdgeOpts, Proc, TestEnv, bin_path};
use sluice_tests::{free_tcp_addr, free_udp_addr};

#[test]
fn array_ndjson_and_gzip_bodies_arrive_once_normalized() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("e2e");
    kafka.create_topic(&env.topic(), 3);
    kafka.create_topic(&env.dlq_topic(), 1);
    let core_addr = free_udp_addr();
    let (core_admin, edge_admin) = (free_tcp_addr(), free_tcp_addr());
    let core_config = env.path().join("core.toml");
    // Top-level keys go before the config's first section.
    let text = format!("admin_listen = \"{core_admin}\"\n{}", env.core_config(core_addr, &kafka.brokers));
    std::fs::write(&core_config, text).unwrap();
    let _core = Proc::spawn("core", &bin_path("sluice-core-under-test"), &core_config, env.path());
    let http = free_tcp_addr();
    let admin = EdgeOpts { extra_toml: format!("[admin]\nlisten = \"{edge_admin}\"\n"), ..EdgeOpts::default() };
    let _edge = env.spawn_edge_with(http, core_addr, &admin);

    let mut expected: Vec<String> = Vec::new();
    let mut batch_ids = HashSet::new();

    let (array, ids) = events_body("array", 3);
    expected.extend(ids);
    let mut with_bad: Vec<serde_json::Value> = serde_json::from_slice(&array).unwrap();
    with_bad.push(serde_json::json!({"event": "broken"}));
    let r = post_events(http, &env.key, "application/json", &[], &serde_json::to_vec(&with_bad).unwrap());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 3);
    assert_eq!(r.json()["rejected"][0]["index"], 3);
    let array_batch = r.json()["batch_id"].as_str().unwrap().to_string();
    batch_ids.insert(array_batch.clone());

    let ndjson: String = (0..3)
        .map(|i| {
            format!(
                "{{\"event\":\"click\",\"distinct_id\":\"u{i}\",\"event_id\":\"nd-{i}\",\"timestamp\":1795600800}}\n"
            )
        })
        .collect();
    expected.extend((0..3).map(|i| format!("nd-{i}")));
    let client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = post_events(http, &env.key, "application/x-ndjson", &[("traceparent", client_trace)], ndjson.as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let traced_batch = r.json()["batch_id"].as_str().unwrap().to_string();
    batch_ids.insert(traced_batch.clone());
    // The edge continues the client's trace with its own span; that span is what Kafka carries.
    let edge_trace = r.header("traceparent").expect("traceparent continued").to_string();
    assert!(edge_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && edge_trace != client_trace);

    let (plain, ids) = events_body("gzip", 3);
    expected.extend(ids);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let r = post_events(http, &env.key, "application/json", &[("Content-Encoding", "gzip")], &gz.finish().unwrap());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    batch_ids.insert(r.json()["batch_id"].as_str().unwrap().to_string());

    let msgs = consume(&kafka.brokers, &env.topic(), expected.len(), Duration::from_secs(60), Duration::from_secs(2));
    let got: Vec<String> = msgs.iter().map(|m| m.headers["event_id"].clone()).collect();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), expected.len(), "duplicates or losses: got {got:?}");
    assert_eq!(unique, expected.iter().collect::<HashSet<_>>());

    for m in &msgs {
        let p = &m.payload;
        assert_eq!(m.key.as_deref(), Some("acme"));
        assert_eq!(m.headers["tenant"], "acme");
        assert_eq!(m.headers["env"], "prod");
        assert!(batch_ids.contains(&m.headers["batch_id"]));
        assert_eq!(p["event_id"], m.headers["event_id"].as_str());
        assert_eq!(p["tenant"], "acme");
        assert_eq!(p["region"], env.region.as_str());
        assert_eq!(p["batch_id"], m.headers["batch_id"].as_str());
        assert!(p["received_at"].as_u64().unwrap() > 1_700_000_000_000);
        // Both the RFC 3339 form and epoch seconds normalize to epoch milliseconds.
        assert_eq!(p["timestamp"].as_i64(), Some(1_795_600_800_000), "{p}");
        let expected_trace = (m.headers["batch_id"] == traced_batch).then_some(&edge_trace);
        assert_eq!(m.headers.get("traceparent"), expected_trace, "{:?}", m.headers);
    }

    let dead = consume(&kafka.brokers, &env.dlq_topic(), 1, Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0].payload;
    assert_eq!((d["code"].as_str(), d["index"].as_u64()), (Some("missing_field"), Some(3)));
    assert_eq!(d["batch_id"], array_batch.as_str());
    assert_eq!(d["raw"], r#"{"event":"broken"}"#);
    assert_eq!(dead[0].headers["tenant"], "acme");

    // Both admin ports report the traffic: 9 accepted at the edge, 9 + 1 dead letter delivered.
    // Three events records and one dead-letter record acked by core.
    let edge = wait_for_sample(edge_admin, "sluice_edge_forwarded_records_total", "", 4.0);
    assert_eq!(sample(&edge, "sluice_edge_accepted_events_total", ""), Some(9.0), "{edge}");
    assert_eq!(sample(&edge, "sluice_edge_responses_total", r#"code="ok",status="202""#), Some(3.0), "{edge}");
    let core = wait_for_sample(core_admin, "sluice_core_delivered_events_total", r#"stream="events""#, 9.0);
    assert_eq!(sample(&core, "sluice_core_delivered_events_total", r#"stream="dead_letter""#), Some(1.0), "{core}");
    assert!(sample(&core, "sluice_core_frames_total", r#"ack="stored""#).is_some_and(|n| n >= 1.0), "{core}");
    assert_eq!(sample(&core, "sluice_core_events_in_delivery", ""), Some(0.0), "{core}");
    let ready = sluice_tests::http::request(core_admin, "GET", "/ready", &[], b"").expect("core /ready");
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")));
}

/// The edge's broker-lag metrics: while core is away the unacked WAL bytes and the age of the
/// oldest unacked record grow; once core is back and has acked everything both drop to 0, while
/// the live segment bytes (what the WAL budget counts) stay until the segment is deleted.
#[test]
fn wal_lag_metrics_rise_while_core_is_away_and_clear_after() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("lag");
    kafka.create_topic(&env.topic(), 1);
    let (core_addr, http, admin) = (free_udp_addr(), free_tcp_addr(), free_tcp_addr());
    let opts = EdgeOpts { extra_toml: format!("[admin]\nlisten = \"{admin}\"\n"), ..EdgeOpts::default() };
    let _edge = env.spawn_edge_with(http, core_addr, &opts);
    let (body, ids) = events_body("lag", 5);
    assert_eq!(post_events(http, &env.key, "application/json", &[], &body).status, 202);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = sluice_tests::metrics::scrape(admin);
        if sample(&text, "sluice_edge_wal_oldest_unacked_age_seconds", "").is_some_and(|age| age >= 1.5) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "lag age never grew:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(sample(&text, "sluice_edge_wal_unacked_bytes", "").is_some_and(|b| b > 0.0), "{text}");
    assert!(sample(&text, "sluice_edge_wal_live_bytes", "").is_some_and(|b| b > 0.0), "{text}");
    assert_eq!(sample(&text, "sluice_edge_forwarded_records_total", ""), Some(0.0), "{text}");

    let _core = env.spawn_core(core_addr, &kafka.brokers);
    let msgs = consume(&kafka.brokers, &env.topic(), ids.len(), Duration::from_secs(60), Duration::from_secs(1));
    assert_eq!(msgs.len(), ids.len());
    wait_for_sample(admin, "sluice_edge_wal_oldest_unacked_age_seconds", "", 0.0);
    let text = wait_for_sample(admin, "sluice_edge_wal_unacked_bytes", "", 0.0);
    // The acked records' segment is still open: it counts as live, not as unforwarded.
    assert!(sample(&text, "sluice_edge_wal_live_bytes", "").is_some_and(|b| b > 0.0), "{text}");
    assert_eq!(sample(&text, "sluice_edge_wal_unforwarded_bytes", ""), None, "{text}");
}
