//! Admission control keeps overload from becoming an outage (the noisy-neighbour latency test is
//! in `noisy_neighbour.rs`, a process of its own so no other test skews its timing): `Retry-After`
//! is accurate enough that a client honouring it succeeds; per-IP limits; WAL-pressure shedding refuses the
//! tenant over its share and lets it back once core drains the WAL; the kill switch takes effect
//! within a second without a restart, from the admin API and from the keys file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_edge::clock::Clock;
use sluice_edge::ingest::auth::TenantEnv;
use sluice_tests::edge_harness::{InProcessEdge, edit_keys, set_quota};
use sluice_tests::http::{Response, events_body, post_batch as post, post_events, request};
use sluice_tests::metrics::sample;
use sluice_tests::openapi::Spec;
use sluice_tests::wait_until;

const ADMIN_TOKEN: &str = "adm1n";

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    request(addr, method, path, &headers, body.as_bytes()).expect("admin request")
}

/// Waits until the edge has loaded `tenant`'s quota from the keys file.
fn wait_quota(admin_addr: SocketAddr, tenant: &str) {
    wait_until("the quota to be loaded", Duration::from_secs(10), || {
        !admin(admin_addr, "GET", "/admission", "").json()["quotas"][tenant].is_null()
    });
}

/// Turns on the admin API (ephemeral port, [`ADMIN_TOKEN`]).
fn admin_api(c: &mut sluice_edge::config::EdgeConfig) {
    c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    c.admin.token = Some(ADMIN_TOKEN.into());
}

async fn edge_with_admin(customize: impl FnOnce(&mut sluice_edge::config::EdgeConfig)) -> InProcessEdge {
    InProcessEdge::start(|c| {
        admin_api(c);
        customize(c);
    })
    .await
}

/// A tenant over its quota gets `429` with `Retry-After` and `RateLimit-*` headers; retrying at
/// once, or a millisecond before `Retry-After`, is refused; at `Retry-After` it succeeds.
/// Admission control runs on a manual clock, so no refill happens while the test is not looking
/// and every figure is exact however slow the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_accurate_and_a_client_honouring_it_succeeds() {
    let (clock, hand) = Clock::manual();
    let e = InProcessEdge::start_with_clock(admin_api, clock).await;
    let (addr, admin_addr, keys_file) = (e.addr(), e.edge().admin_addr.expect("admin"), e.keys_file.clone());
    tokio::task::spawn_blocking(move || {
        let spec = Spec::load();
        // 20 events/s, burst 60: three requests of 20 events.
        let (_, key) = sluice_ops::keys::add(&keys_file, "metered", "prod").expect("key");
        set_quota(&keys_file, "metered", 20);
        wait_quota(admin_addr, "metered");
        let batch = 20;
        for (i, remaining) in [40, 20, 0].into_iter().enumerate() {
            let r = post(addr, &key, &format!("m{i}"), batch);
            assert_eq!(r.status, 202, "request {i}: {}", String::from_utf8_lossy(&r.body));
            spec.check("POST", "/v1/events", &r);
            assert_eq!(r.header("ratelimit-limit"), Some("60"));
            assert_eq!(r.header("ratelimit-policy"), Some("60;w=3"));
            assert_eq!(r.header("ratelimit-remaining"), Some(remaining.to_string().as_str()), "request {i}");
        }
        let over = post(addr, &key, "over", batch);
        assert_eq!((over.status, over.code().as_str()), (429, "rate_limited"));
        spec.check("POST", "/v1/events", &over);
        assert_eq!(over.header("ratelimit-remaining"), Some("0"));
        // 20 events at 20/s: the bucket needs exactly a second.
        assert_eq!(over.header("retry-after"), Some("1"));
        assert_eq!(post(addr, &key, "impatient", batch).code(), "rate_limited", "retrying at once is refused");
        hand.advance(Duration::from_millis(999));
        assert_eq!(post(addr, &key, "early", batch).code(), "rate_limited", "1 ms before Retry-After: refused");
        hand.advance(Duration::from_millis(1));
        let r = post(addr, &key, "patient", batch);
        assert_eq!(r.status, 202, "at Retry-After: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"), "the refusals took nothing");
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// Per-tenant quotas are hot-reloaded from the keys file: raising, removing (0 = unlimited) and
/// setting a quota again take effect at the next reload, without a restart, on a clock that does
/// not move (so no refill can pass for the new quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_change_in_the_keys_file_applies_without_restart() {
    let (clock, _hand) = Clock::manual();
    let e = InProcessEdge::start_with_clock(admin_api, clock).await;
    let (addr, admin_addr, keys_file) = (e.addr(), e.edge().admin_addr.expect("admin"), e.keys_file.clone());
    tokio::task::spawn_blocking(move || {
        let (_, key) = sluice_ops::keys::add(&keys_file, "reloaded", "prod").expect("key");
        let set = |per_sec: u32| {
            set_quota(&keys_file, "reloaded", per_sec);
            wait_until("the new quota to be loaded", Duration::from_secs(10), || {
                admin(admin_addr, "GET", "/admission", "").json()["quotas"]["reloaded"] == per_sec
            });
        };
        set(10);
        let r = post(addr, &key, "a", 30);
        assert_eq!(
            (r.status, r.header("ratelimit-limit"), r.header("ratelimit-remaining")),
            (202, Some("30"), Some("0"))
        );
        assert_eq!(post(addr, &key, "b", 30).code(), "rate_limited", "10/s: the burst of 30 is spent");

        set(100);
        let r = post(addr, &key, "c", 30);
        assert_eq!(r.status, 202, "raised to 100/s: {}", String::from_utf8_lossy(&r.body));
        assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("300"), Some("270")));

        set(0);
        for i in 0..5 {
            let r = post(addr, &key, &format!("u{i}"), 100);
            assert_eq!(r.status, 202, "unlimited, request {i}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("ratelimit-limit"), None, "no limit, no RateLimit headers");
        }

        set(10);
        let r = post(addr, &key, "d", 30);
        assert_eq!((r.status, r.header("ratelimit-limit")), (202, Some("30")), "limited again, from a full bucket");
        assert_eq!(post(addr, &key, "e", 1).code(), "rate_limited");
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// Per-IP limits count every request from one address, whichever tenant or key it carries, and
/// are checked before authentication. On a manual clock: no token comes back until the test
/// advances it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_an_address_over_its_rate() {
    // 1 request/s, burst 3. Only the first is fsync'd; the others carry a wrong key.
    let (clock, hand) = Clock::manual();
    let e = InProcessEdge::start_with_clock(|c| c.admission.ip_requests_per_sec = 1, clock).await;
    let (addr, key) = (e.addr(), e.key.clone());
    tokio::task::spawn_blocking(move || {
        let keys = [key.as_str(), "slk_wrong", "slk_wrong", "slk_wrong", "slk_wrong"];
        let codes: Vec<String> =
            keys.iter().enumerate().map(|(i, k)| post(addr, k, &format!("ip{i}"), 1).code()).collect();
        assert_eq!(codes, ["ok", "unauthorized", "unauthorized", "ip_rate_limited", "ip_rate_limited"]);
        let r = post(addr, &key, "ip-last", 1);
        assert_eq!(r.code(), "ip_rate_limited", "the valid key is refused too");
        assert_eq!(r.header("retry-after"), Some("1"));
        Spec::load().check("POST", "/v1/events", &r);
        hand.advance(Duration::from_secs(1));
        assert_eq!(post(addr, &key, "ip-later", 1).code(), "ok", "a second later one request's worth is back");
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// Behind a trusted load balancer (loopback here) each client named by `X-Forwarded-For` gets its
/// own per-IP budget; a client prepending a fake entry is still counted as the address the proxy
/// saw. Without `trusted_proxies` the header is ignored: a client connecting directly cannot
/// escape its limit by claiming other addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_uses_the_forwarded_client_only_from_trusted_proxies() {
    for trusted in [true, false] {
        let (clock, _hand) = Clock::manual();
        let e = InProcessEdge::start_with_clock(
            |c| {
                c.admission.ip_requests_per_sec = 1;
                if trusted {
                    c.http.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
                }
            },
            clock,
        )
        .await;
        let (addr, key) = (e.addr(), e.key.clone());
        tokio::task::spawn_blocking(move || {
            let (body, _) = events_body("xff", 1);
            let from =
                |xff: &str| post_events(addr, &key, "application/json", &[("X-Forwarded-For", xff)], &body).code();
            // Burst 3 for 203.0.113.1, the last one with a spoofed entry the proxy appended to.
            let first: Vec<String> =
                ["203.0.113.1", "203.0.113.1", "198.51.100.7, 203.0.113.1"].into_iter().map(from).collect();
            assert_eq!(first, ["ok", "ok", "ok"], "trusted: {trusted}");
            let spoofed = from("198.51.100.7, 203.0.113.1");
            let other = from("203.0.113.2");
            if trusted {
                assert_eq!(spoofed, "ip_rate_limited", "a prepended entry does not buy a new budget");
                assert_eq!(other, "ok", "another client behind the proxy has its own budget");
            } else {
                assert_eq!(spoofed, "ip_rate_limited");
                assert_eq!(other, "ip_rate_limited", "untrusted peer: the header is ignored, one shared budget");
            }
        })
        .await
        .expect("client");
        e.shutdown().await;
    }
}

/// With core away the WAL fills; past the high-water mark the tenant sending far more than its
/// share is shed with `429 shed` while the small tenant keeps getting `202`; once core is up and
/// the WAL drains below the mark, the big tenant is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_high_water_shedding_engages_and_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = sluice_ops::devpki::write_dev_pki(&dir.path().join("pki")).expect("pki");
    let core_addr = sluice_tests::free_udp_addr();
    let budget: u64 = 512 * 1024;
    let fwd_pki = pki.clone();
    let e = edge_with_admin(move |c| {
        c.wal.budget_bytes = budget;
        c.admission.wal_high_water = 0.5;
        c.admission.tenant_events_per_sec = 0;
        c.forwarder.enabled = true;
        c.forwarder.core_addr = core_addr;
        c.forwarder.ca_cert = fwd_pki.ca_cert.clone();
        c.forwarder.client_cert = Some(fwd_pki.edge_cert.clone());
        c.forwarder.client_key = Some(fwd_pki.edge_key.clone());
        c.forwarder.ack_timeout_secs = 2;
    })
    .await;
    let (addr, hog_key, admin_addr) = (e.addr(), e.key.clone(), e.edge().admin_addr.expect("admin"));
    let (_, small_key) = sluice_ops::keys::add(&e.keys_file, "small", "prod").expect("key");
    let wal = e.edge().wal.clone();
    let key = small_key.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the small tenant's key to load", Duration::from_secs(5), || post(addr, &key, "s", 1).status == 202)
    })
    .await
    .expect("key loads");
    let stop = Arc::new(AtomicBool::new(false));
    let small_refused = Arc::new(AtomicU64::new(0));
    let small = {
        let (stop, refused, key) = (stop.clone(), small_refused.clone(), small_key.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = post(addr, &key, &format!("small-{i}"), 1);
                if r.status != 202 {
                    eprintln!("small tenant refused: {} {}", r.status, String::from_utf8_lossy(&r.body));
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let ready = move || {
        let r = request(addr, "GET", "/ready", &[], b"").expect("ready");
        Spec::load().check("GET", "/ready", &r);
        r.json()
    };
    let hog = move |i: &mut u64| {
        *i += 1;
        let r = post(addr, &hog_key, &format!("hog-{i}"), 20);
        std::thread::sleep(Duration::from_millis(10));
        r
    };
    let shed_seen = tokio::task::spawn_blocking({
        let (wal, hog) = (wal.clone(), hog.clone());
        move || {
            let mut i = 0;
            let mut shed_seen = 0;
            let start = Instant::now();
            // Engage: the hog is shed once the WAL is far enough above the mark.
            while shed_seen == 0 {
                assert!(start.elapsed() < Duration::from_secs(60), "the hog was never shed");
                let r = hog(&mut i);
                match (r.status, r.code().as_str()) {
                    (202, _) => {}
                    (429, "shed") => {
                        assert!(r.header("retry-after").is_some());
                        Spec::load().check("POST", "/v1/events", &r);
                        assert!(wal.live_bytes() > budget / 2, "shed below the high-water mark");
                        shed_seen += 1;
                    }
                    (s, c) => panic!("hog got {s} {c} before being shed"),
                }
            }
            let r = ready();
            assert_eq!(r["status"], "degraded", "{r}");
            assert!(r["degraded"].to_string().contains("wal_high_water"), "{r}");
            // The forwarder's first connection attempt times out after 10 s.
            wait_until("readiness to report core unreachable", Duration::from_secs(30), || {
                ready()["degraded"].to_string().contains("core_unreachable")
            });
            // While core is away the hog keeps being shed (never a 503: the WAL is not full).
            for _ in 0..50 {
                let r = hog(&mut i);
                match (r.status, r.code().as_str()) {
                    (202, _) => {}
                    (429, "shed") => shed_seen += 1,
                    (s, c) => panic!("hog got {s} {c} while shedding"),
                }
            }
            shed_seen
        }
    })
    .await
    .expect("hog");
    assert!(shed_seen > 10, "the hog was shed only {shed_seen} times");
    assert_eq!(small_refused.load(Ordering::Relaxed), 0, "the small tenant was refused while the hog was shed");

    // Release: core comes up, the WAL drains below the mark, the hog is accepted again.
    let core = sluice_core::start(sluice_tests::core_harness::file_sink_config(core_addr, &pki, dir.path()))
        .await
        .expect("core starts");
    tokio::task::spawn_blocking(move || {
        let drained =
            wait_until("the WAL to drain below the mark", Duration::from_secs(60), || wal.live_bytes() < budget / 2);
        eprintln!("WAL drained below the high-water mark {drained:?} after core started");
        let mut i = 1_000_000;
        assert!(wal.live_bytes() < budget / 2);
        for _ in 0..20 {
            let r = hog(&mut i);
            assert_eq!(r.status, 202, "hog after the drain: {}", String::from_utf8_lossy(&r.body));
        }
        // The forwarder's probe got through: its circuit closed, and readiness says so.
        wait_until("readiness without degraded states", Duration::from_secs(30), || ready()["status"] == "ready");
        let text = String::from_utf8(admin(admin_addr, "GET", "/metrics", "").body).expect("utf-8");
        assert_eq!(sample(&text, "sluice_edge_forwarder_breaker_state", ""), Some(0.0), "{text}");
        assert!(sample(&text, "sluice_edge_forwarder_breaker_opens_total", "").is_some_and(|n| n >= 1.0), "{text}");
        assert!(sample(&text, "sluice_edge_admission_refusals_total", r#"reason="shed""#).is_some_and(|n| n >= 10.0));
    })
    .await
    .expect("release");
    stop.store(true, Ordering::Relaxed);
    small.join().expect("small");
    assert_eq!(small_refused.load(Ordering::Relaxed), 0, "the small tenant was refused");
    e.shutdown().await;
    core.shutdown().await;
}

/// The kill switch blocks a tenant or one environment at once, without a restart: through the
/// admin API (immediately) and through the keys file (within a second at the default reload
/// interval); unblocking works the same ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_takes_effect_within_a_second_without_restart() {
    let e =
        edge_with_admin(|c| c.http.keys_reload_ms = sluice_edge::config::HttpConfig::default().keys_reload_ms).await;
    let (addr, admin_addr, prod) = (e.addr(), e.edge().admin_addr.expect("admin"), e.key.clone());
    let (_, dev) = sluice_ops::keys::add(&e.keys_file, "acme", "dev").expect("key");
    let keys_file = e.keys_file.clone();
    tokio::task::spawn_blocking(move || {
        let status = |key: &str| post(addr, key, "k", 1);
        wait_until("the new key to load", Duration::from_secs(5), || status(&dev).status == 202);

        // Admin API: one environment, then the whole tenant.
        let r = admin(admin_addr, "POST", "/admission/block", r#"{"tenant":"acme","env":"dev"}"#);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = status(&dev);
        assert_eq!((r.status, r.code().as_str()), (403, "environment_disabled"), "blocked on the next request");
        Spec::load().check("POST", "/v1/events", &r);
        assert_eq!(status(&prod).status, 202, "the tenant's other environment still works");
        admin(admin_addr, "POST", "/admission/block", r#"{"tenant":"acme"}"#);
        let r = status(&prod);
        assert_eq!((r.status, r.code().as_str()), (403, "tenant_disabled"));
        let listed = admin(admin_addr, "GET", "/admission", "").json();
        assert_eq!(listed["blocks"].as_array().map(Vec::len), Some(2), "{listed}");
        for body in [r#"{"tenant":"acme"}"#, r#"{"tenant":"acme","env":"dev"}"#] {
            assert_eq!(admin(admin_addr, "POST", "/admission/unblock", body).json()["changed"], true);
        }
        assert_eq!(status(&prod).status, 202);
        assert_eq!(status(&dev).status, 202);
        let r = admin(admin_addr, "POST", "/admission/block", r#"{"env":"dev"}"#);
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("malformed_body")));
        let r = request(admin_addr, "POST", "/admission/block", &[], br#"{"tenant":"acme"}"#).expect("admin");
        assert_eq!(r.status, 401, "the kill switch needs the admin token");

        // Keys file: one environment, then the tenant; timed from the write.
        let t = Instant::now();
        edit_keys(&keys_file, |f| f.disabled_envs.push(TenantEnv { tenant: "acme".into(), env: "dev".into() }));
        wait_until("the file's env block", Duration::from_secs(5), || status(&dev).status == 403);
        let env_block = t.elapsed();
        assert_eq!(status(&prod).status, 202);
        let t = Instant::now();
        edit_keys(&keys_file, |f| f.disabled_tenants.push("acme".into()));
        wait_until("the file's tenant block", Duration::from_secs(5), || status(&prod).status == 403);
        let tenant_block = t.elapsed();
        let t = Instant::now();
        edit_keys(&keys_file, |f| {
            f.disabled_tenants.clear();
            f.disabled_envs.clear();
        });
        wait_until("the unblock", Duration::from_secs(5), || status(&prod).status == 202 && status(&dev).status == 202);
        let unblock = t.elapsed();
        eprintln!("kill switch from the keys file: env {env_block:?}, tenant {tenant_block:?}, unblock {unblock:?}");
        for (what, d) in [("env block", env_block), ("tenant block", tenant_block), ("unblock", unblock)] {
            assert!(d < Duration::from_secs(1), "{what} took {d:?}");
        }
    })
    .await
    .expect("client");
    e.shutdown().await;
}
