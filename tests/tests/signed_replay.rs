//! A captured signed request (`X-Signature`) cannot be replayed within the skew window: not to the
//! same edge after a restart (accepted signatures are stored durably, in the idempotency store),
//! and not to another edge of the POP (the batch ID of a signed request is derived from its
//! signature, so core's batch-ID dedupe drops the second copy). Real edge and core processes.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_tests::http::{Response, events_body, post_events};
use sluice_tests::kafka::{TestKafka, consume};
use sluice_tests::metrics::{sample, try_scrape};
use sluice_tests::procs::{EdgeOpts, TestEnv};
use sluice_tests::{free_tcp_addr, free_udp_addr, wait_until};

const SECRET: &[u8] = b"pop-wide-signing-secret";

#[test]
fn a_signed_request_is_accepted_once_across_restarts_and_across_the_pop() {
    let kafka = TestKafka::start();
    let env = TestEnv::new("signed-replay");
    kafka.create_topic(&env.topic(), 1);
    let (_, key) =
        sluice_ops::keys::add_with_signing(&env.keys_file, "acme", "prod", Some(hex::encode(SECRET))).expect("key");
    let core_addr = free_udp_addr();
    let core_admin = free_tcp_addr();
    let _core = env.spawn_core_node("core", core_addr, &kafka.brokers, core_admin);
    let node = |n: &str| EdgeOpts { node: Some(n.into()), ..EdgeOpts::default() };
    let (http_a, http_b) = (free_tcp_addr(), free_tcp_addr());
    let mut edge_a = env.spawn_edge_with(http_a, core_addr, &node("edge-a"));
    let _edge_b = env.spawn_edge_with(http_b, core_addr, &node("edge-b"));

    let (body, ids) = events_body("signed", 5);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    let signature = sluice_edge::ingest::signature::sign(SECRET, now, &body);
    let send = |addr: SocketAddr| -> Response {
        post_events(addr, &key, "application/json", &[("X-Signature", signature.as_str())], &body)
    };

    let first = send(http_a);
    assert_eq!(first.status, 202, "{}", String::from_utf8_lossy(&first.body));
    let batch_id = first.json()["batch_id"].as_str().expect("batch_id").to_string();
    assert_eq!(send(http_a).code(), "signature_replayed", "the same edge refuses it at once");

    edge_a.kill9();
    let mut edge_a = env.spawn_edge_with(http_a, core_addr, &node("edge-a"));
    assert_eq!(send(http_a).code(), "signature_replayed", "and after a kill -9 and restart");

    // Edge b never saw the signature: it accepts the copy, under the same batch ID.
    let copy = send(http_b);
    assert_eq!(copy.status, 202, "{}", String::from_utf8_lossy(&copy.body));
    assert_eq!(copy.json()["batch_id"].as_str(), Some(batch_id.as_str()), "the batch ID follows the signature");

    // Core delivered the batch once: each event once, from one of the two edges' copies.
    let consumed = consume(&kafka.brokers, &env.topic(), ids.len(), Duration::from_secs(30), Duration::from_secs(3));
    let mut seen: Vec<String> =
        consumed.iter().map(|m| m.payload["event_id"].as_str().unwrap_or_default().to_string()).collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "every event exactly once");
    assert!(consumed.iter().all(|m| m.payload["batch_id"].as_str() == Some(batch_id.as_str())));
    // Both copies reached core, and it dropped one as the batch it had delivered.
    wait_until("core to drop the second copy", Duration::from_secs(20), || {
        try_scrape(core_admin).and_then(|t| sample(&t, "sluice_core_duplicate_batches_total", "")) == Some(1.0)
    });
    let text = try_scrape(core_admin).expect("core metrics");
    assert_eq!(sample(&text, "sluice_core_batches_total", ""), Some(2.0), "two copies arrived");
    edge_a.assert_no_panic();
    edge_a.kill9();
}
