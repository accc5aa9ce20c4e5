//! `sluicectl dev --edges 3`: a local POP of three edges that replicate to each other. Guards
//! against a dev POP whose edges accept but do not replicate (every edge must hold a copy of each
//! other edge's WAL), or whose events never reach the sink.

use std::time::{Duration, Instant};

use sluice_ops::dev::{self, DevOptions, KafkaChoice};
use sluice_tests::free_port_run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_replicate_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DevOptions {
        dir: dir.path().to_path_buf(),
        // The three edges' HTTP listeners on consecutive ports.
        http: free_port_run(3),
        // Core on the first port, the three edges' replication listeners on the next three.
        quic: free_port_run(4),
        kafka: KafkaChoice::None,
        edges: 3,
        // Core's metrics on the first port, the three edges' admin APIs on the next three.
        admin: Some(free_port_run(4)),
    };
    let pop = dev::start(&opts).await.unwrap();
    assert_eq!(pop.peers.len(), 2);
    // Every edge and the core expose their metrics, and the printed summary names each address.
    let summary = pop.summary();
    let core_admin = pop.core.admin_addr.expect("core metrics port");
    assert!(summary.contains(&format!("core metrics : http://{core_admin}/metrics")), "{summary}");
    let edge_admins: Vec<_> =
        std::iter::once(&pop.edge).chain(&pop.peers).map(|e| e.admin_addr.expect("edge admin port")).collect();
    let token = pop.admin_token.clone().expect("admin token");
    assert!(summary.contains(&token), "{summary}");
    tokio::task::block_in_place(|| {
        assert!(sluice_tests::metrics::scrape(core_admin).contains("sluice_core_broker_lag_seconds"));
        for admin in &edge_admins {
            assert!(summary.contains(&format!("edge admin   : http://{admin}/metrics")), "{summary}");
            assert!(sluice_tests::metrics::scrape(*admin).contains("sluice_edge_wal_live_bytes"));
            let auth = format!("Bearer {token}");
            let r = sluice_tests::http::request(*admin, "GET", "/status", &[("Authorization", &auth)], b"").unwrap();
            assert_eq!(r.status, 200, "{admin}");
        }
    });
    let addrs: Vec<_> = std::iter::once(&pop.edge).chain(&pop.peers).map(|e| e.http_addr).collect();
    let key = pop.api_key.clone();
    let body = |i: usize| format!(r#"[{{"event":"e","distinct_id":"u","event_id":"pop-{i}"}}]"#);
    // An edge that started before its peers may still be probing them (an unanswered probe takes
    // up to `ack_timeout_ms`) and answer 503 + Retry-After meanwhile: retry as a client would.
    tokio::task::block_in_place(|| {
        for (i, addr) in addrs.iter().enumerate() {
            let auth = format!("Bearer {key}");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let r = sluice_tests::http::request(
                    *addr,
                    "POST",
                    "/v1/events",
                    &[("Authorization", &auth)],
                    body(i).as_bytes(),
                )
                .unwrap();
                if r.status == 202 {
                    break;
                }
                assert_eq!(r.status, 503, "edge {i}: {}", String::from_utf8_lossy(&r.body));
                assert!(Instant::now() < deadline, "edge {i} never accepted: {}", String::from_utf8_lossy(&r.body));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    // A group completes on the first of the two peers' acks; the other one follows.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let copy = dir.path().join(format!("edge-{i}/wal/replica/edge-{j}"));
            while segment_bytes(&copy) == 0 {
                assert!(Instant::now() < deadline, "edge-{i} holds no copy of edge-{j}'s records");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let sink = dev::events_file(pop.sink_dir.as_ref().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&sink).unwrap_or_default();
        if (0..3).all(|i| text.contains(&format!("pop-{i}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "events from every edge reach the sink; have:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pop.shutdown().await;
}

/// Bytes in the `*.wal` segments under a replica directory (any WAL ID).
fn segment_bytes(copy: &std::path::Path) -> u64 {
    let Ok(wals) = std::fs::read_dir(copy) else { return 0 };
    wals.flatten()
        .filter_map(|w| std::fs::read_dir(w.path()).ok())
        .flat_map(|d| d.flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "wal"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}
