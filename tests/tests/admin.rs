//! The edge admin API: token handling, status, and metrics that move with traffic; a taken admin
//! port on an edge or a core.

use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{events_body, post_events, request};
use sluice_tests::metrics::sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_its_token_and_metrics_follow_traffic() {
    let e = InProcessEdge::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.admin.token = Some("s3cret-admin".into());
    })
    .await;
    let (addr, admin, key) = (e.addr(), e.edge().admin_addr.expect("admin enabled"), e.key.clone());
    tokio::task::spawn_blocking(move || {
        let r = request(admin, "GET", "/status", &[], b"").expect("status");
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        let r = request(admin, "GET", "/status", &[("Authorization", "Bearer wrong")], b"").expect("status");
        assert_eq!(r.status, 401);
        let r = request(admin, "GET", "/status", &[("Authorization", "Bearer s3cret-admin")], b"").expect("status");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["edge_id"], "edge-1");
        assert_eq!(r.json()["wal"]["live_bytes"], 0);
        assert_eq!(r.json()["wal"]["unforwarded_bytes"], 0, "the old name stays");
        assert!(r.json()["replication"].is_null(), "no peers configured");

        let before = String::from_utf8(request(admin, "GET", "/metrics", &[], b"").expect("metrics").body).unwrap();
        assert_eq!(sample(&before, "sluice_edge_accepted_events_total", ""), Some(0.0));
        let (body, _) = events_body("m", 7);
        assert_eq!(post_events(addr, &key, "application/json", &[], &body).status, 202);
        assert_eq!(post_events(addr, "bad-key", "application/json", &[], &body).status, 401);

        let r = request(admin, "GET", "/metrics", &[], b"").expect("metrics");
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        assert_eq!(sample(&text, "sluice_edge_accepted_events_total", ""), Some(7.0), "{text}");
        assert_eq!(sample(&text, "sluice_edge_responses_total", r#"code="ok",status="202""#), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "sluice_edge_responses_total", r#"code="unauthorized",status="401""#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, "sluice_edge_enqueue_latency_seconds_count", ""), Some(1.0), "{text}");
        // Both ingest requests and the admin-port scrapes before them: only public API requests count.
        assert_eq!(sample(&text, "sluice_edge_request_duration_seconds_count", ""), Some(2.0), "{text}");
        let fsyncs = sample(&text, "sluice_edge_wal_fsyncs_total", "");
        assert!(fsyncs.is_some_and(|n| n >= 1.0), "{text}");
        // Every group commit's fdatasync is timed.
        assert_eq!(sample(&text, "sluice_edge_wal_fsync_duration_seconds_count", ""), fsyncs, "{text}");
        assert!(sample(&text, "sluice_edge_wal_live_bytes", "").is_some_and(|n| n > 0.0), "{text}");
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// A dashboard's series exist before anything happened: every refusal reason at 0 and, for each
/// tenant with a quota in the keys file, its utilization at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_a_dashboard_needs_exist_before_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = sluice_tests::edge_harness::config_in(dir.path());
    sluice_tests::edge_harness::set_quota(&config.keys_file, "acme", 5_000);
    config.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let edge = sluice_edge::Edge::builder(config).start().await.expect("edge starts");
    let admin = edge.admin_addr.expect("admin enabled");
    let text = tokio::task::spawn_blocking(move || sluice_tests::metrics::scrape(admin)).await.unwrap();
    for reason in ["ip_rate_limited", "rate_limited", "shed", "overloaded", "wal_full"] {
        let labels = format!(r#"reason="{reason}""#);
        assert_eq!(sample(&text, "sluice_edge_admission_refusals_total", &labels), Some(0.0), "{reason}:\n{text}");
    }
    assert_eq!(sample(&text, "sluice_edge_tenant_quota_utilization", r#"tenant="acme""#), Some(0.0), "{text}");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_refused_without_a_configured_token() {
    let e = InProcessEdge::start(|c| c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let admin = e.edge().admin_addr.expect("admin enabled");
    tokio::task::spawn_blocking(move || {
        let r = request(admin, "GET", "/status", &[("Authorization", "Bearer ")], b"").expect("status");
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["error"]["code"], "admin_disabled");
        assert_eq!(request(admin, "GET", "/metrics", &[], b"").expect("metrics").status, 200);
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// A taken admin port fails startup with the address in the error, and before anything else has
/// started: the replication listener, which used to be up and serving by then, is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_startup_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = sluice_ops::devpki::write_dev_pki(&dir.path().join("pki")).expect("pki");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let repl = sluice_tests::free_udp_addr();
    let (mut config, _) = sluice_tests::edge_harness::config_in(dir.path());
    config.admin.listen = Some(taken_addr);
    config.replication.listen = Some(repl);
    config.replication.peers =
        vec![sluice_edge::config::PeerConfig { id: "peer".into(), addr: sluice_tests::free_udp_addr().into() }];
    config.forwarder.ca_cert = pki.ca_cert.clone();
    config.forwarder.client_cert = Some(pki.edge_cert.clone());
    config.forwarder.client_key = Some(pki.edge_key.clone());

    let err = sluice_edge::Edge::builder(config).start().await.err().expect("a taken admin port fails startup");
    assert!(
        matches!(&err, sluice_edge::StartError::Bind { addr, .. } if *addr == taken_addr),
        "unexpected error: {err}"
    );
    std::net::UdpSocket::bind(repl).expect("the replication port is free: nothing was started");
}

/// The same for core: a taken admin port fails startup before its QUIC endpoint is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_core_startup_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = sluice_ops::devpki::write_dev_pki(&dir.path().join("pki")).expect("pki");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let listen = sluice_tests::free_udp_addr();
    let config = sluice_core::config::CoreConfig {
        admin_listen: Some(taken_addr),
        ..sluice_tests::core_harness::file_sink_config(listen, &pki, dir.path())
    };
    let err = sluice_core::start(config).await.err().expect("a taken admin port fails startup");
    assert!(
        matches!(&err, sluice_core::StartError::Bind { addr, .. } if *addr == taken_addr),
        "unexpected error: {err}"
    );
    std::net::UdpSocket::bind(listen).expect("the QUIC port is free: nothing was started");
}
