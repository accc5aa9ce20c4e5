//! Core recovers by itself when its Kafka producer is wedged (issue 24).
//!
//! Seen against an independent Kafka-protocol broker: after the broker was replaced under an idle
//! producer, every produce failed (`UNKNOWN_PRODUCER_ID` about 9 times a second), librdkafka never
//! raised a fatal error, core logged only `MessageTimedOut`, and nothing was delivered until core
//! was restarted. Here the broker stops serving core's producer while it is idle (see
//! [`ProxiedKafka`]: the same symptom, which the mock cannot produce by itself), load goes on
//! (every request gets its `202` from the WAL), and core must replace its producer without a
//! restart and deliver every accepted event (zero-loss ledger).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sluice_tests::kafka_proxy::ProxiedKafka;
use sluice_tests::ledger::{Collector, Driver, Ledger, check};
use sluice_tests::procs::{EdgeOpts, Proc, TestEnv, bin_path};
use sluice_tests::{free_tcp_addr, free_udp_addr, wait_until};

/// The worst case for these settings: the first frame fails after one message timeout (5 s), the
/// circuit's probe after another, then the stall rule (5 s without a delivery) replaces the
/// producer and the next probe (circuit backoff ≤ 5 s) delivers: ~15 s. Doubled for slow CI.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_wedged_producer_is_replaced_without_a_restart_and_nothing_is_lost() {
    let env = TestEnv::new("wedge");
    let topic = env.topic();
    let kafka = ProxiedKafka::start(&[(topic.as_str(), 3), (env.dlq_topic().as_str(), 1)]);
    let (http, core_addr) = (free_tcp_addr(), free_udp_addr());
    // A short message timeout and stall time keep the test short; the client.id names the
    // producer the broker will stop serving.
    let config = env
        .core_config_with(
            core_addr,
            &kafka.brokers,
            &[("message.timeout.ms", "5000"), ("client.id", "core-under-test")],
        )
        .replace("[sink]\n", "[sink]\nproducer_stall_ms = 5000\n");
    let config_path = env.path().join("core.toml");
    std::fs::write(&config_path, config).unwrap();
    let core = Proc::spawn("core", &bin_path("sluice-core-under-test"), &config_path, env.path());
    let edge = env.spawn_edge_with(http, core_addr, &EdgeOpts { ack_timeout_secs: Some(3), ..EdgeOpts::default() });
    let collector = Collector::start(&kafka.brokers, &topic);
    let ledger = Ledger::new();

    // The producer delivers, then goes idle.
    let driver = Driver::start(&ledger, http, &env.key, "before", 2, 10, Duration::from_millis(20));
    wait_until("first deliveries", Duration::from_secs(30), || collector.seen_count() > 100);
    driver.stop();
    let before = ledger.accepted();
    assert!(collector.wait_for(&before, Duration::from_secs(30)), "the first phase was delivered");
    std::thread::sleep(Duration::from_secs(1));

    // The broker stops serving that producer; load goes on.
    kafka.wedge("core-under-test");
    let wedged = Instant::now();
    let driver = Driver::start(&ledger, http, &env.key, "after", 2, 10, Duration::from_millis(20));
    let delivered_before = collector.seen_count();
    let mut recovery = None;
    while wedged.elapsed() < Duration::from_secs(90) {
        if collector.seen_count() > delivered_before {
            recovery = Some(wedged.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    driver.wait_requests(20, Duration::from_secs(10));
    driver.stop();
    let accepted = ledger.accepted();
    collector.wait_for(&accepted, Duration::from_secs(60));
    let (seen, malformed) = collector.finish(Duration::from_secs(2));
    let mut report = check("producer wedged while idle", &ledger, &seen, malformed, &HashSet::new(), None);
    report.recovery = recovery;
    report.print();

    let log = core.log();
    let recovery = recovery.unwrap_or_else(|| panic!("core never delivered again after the wedge; core log:\n{log}"));
    assert!(recovery <= RECOVERY_BOUND, "recovery took {recovery:?}, more than {RECOVERY_BOUND:?}");
    assert!(
        log.contains("replaced it with a new one") && log.contains("\"stalled\""),
        "core says why it replaced the producer:\n{log}"
    );
    report.assert_no_loss();
    assert!(accepted.len() > before.len(), "requests were accepted while the producer was wedged");
    edge.assert_no_panic();
    core.assert_no_panic();
}
