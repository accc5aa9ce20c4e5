//! Admission control keeps overload from becoming an outage (the noisy-neighbour latency test is
//! in `noisy_neighbour.rs`, a process of its own so no other test skews its timing): `Retry-After`
//! is accurate enough that a client honouring it succeeds; per-IP limits; WAL-pressure shedding refuses the
//! tenant over its share and lets it back once core drains the WAL; the kill switch takes effect
//! within a second without a restart, from the admin API and from the keys file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_edge::auth::TenantEnv;
use sluice_tests::edge_harness::{InProcessEdge, edit_keys, set_quota};
use sluice_tests::http::{Response, post_batch as post, request};
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

async fn edge_with_admin(customize: impl FnOnce(&mut sluice_edge::config::EdgeConfig)) -> InProcessEdge {
    InProcessEdge::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.admin.token = Some(ADMIN_TOKEN.into());
        customize(c);
    })
    .await
}

/// A tenant over its quota gets `429` with `Retry-After` and `RateLimit-*` headers; retrying at
/// once is refused again, waiting `Retry-After` seconds succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_accurate_and_a_client_honouring_it_succeeds() {
    let e = edge_with_admin(|_| {}).await;
    let (addr, admin_addr, keys_file) = (e.addr(), e.edge().admin_addr.expect("admin"), e.keys_file.clone());
    // 20 events/s, burst 60: three requests of 20 events. One request's worth refills in a second,
    // so the five requests up to "impatient" (three of them fsync'd) must take less than that, or
    // the bucket refilled meanwhile and they prove nothing: then try again with a fresh tenant.
    let batch = 20;
    tokio::task::spawn_blocking(move || {
        let spec = Spec::load();
        for attempt in 0..3 {
            let tenant = format!("metered-{attempt}");
            let (_, key) = sluice_ops::keys::add(&keys_file, &tenant, "prod").expect("key");
            set_quota(&keys_file, &tenant, 20);
            wait_quota(admin_addr, &tenant);
            let started = Instant::now();
            let burst: Vec<Response> = (0..3).map(|i| post(addr, &key, &format!("m{i}"), batch)).collect();
            let over = post(addr, &key, "over", batch);
            let impatient = post(addr, &key, "impatient", batch);
            if started.elapsed() > Duration::from_millis(900) {
                eprintln!("attempt {attempt}: the requests took {:?}, longer than a refill; again", started.elapsed());
                continue;
            }
            let mut remaining = Vec::new();
            for (i, r) in burst.iter().enumerate() {
                assert_eq!(r.status, 202, "request {i}: {}", String::from_utf8_lossy(&r.body));
                spec.check("POST", "/v1/events", r);
                assert_eq!(r.header("ratelimit-limit"), Some("60"));
                assert_eq!(r.header("ratelimit-policy"), Some("60;w=3"));
                remaining.push(r.header("ratelimit-remaining").and_then(|v| v.parse::<u32>().ok()).expect("remaining"));
            }
            assert!(remaining.windows(2).all(|w| w[1] < w[0]), "remaining counts down: {remaining:?}");
            assert_eq!((over.status, over.code().as_str()), (429, "rate_limited"));
            spec.check("POST", "/v1/events", &over);
            assert_eq!(over.header("ratelimit-remaining"), Some("0"));
            // 20 events at 20/s: the bucket needs at most a second, rounded up to whole seconds.
            let retry_after: u64 = over.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
            assert_eq!(retry_after, 1);
            assert_eq!(impatient.status, 429, "retrying at once is refused");
            std::thread::sleep(Duration::from_secs(retry_after));
            let r = post(addr, &key, "patient", batch);
            assert_eq!(r.status, 202, "after Retry-After: {}", String::from_utf8_lossy(&r.body));
            return;
        }
        panic!("three attempts were each slower than one refill (1 s)");
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// Per-IP limits count every request from one address, whichever tenant or key it carries, and
/// are checked before authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_an_address_over_its_rate() {
    // 1 request/s, burst 3: the five requests have a whole second before a token comes back. Only
    // the first is fsync'd; the others carry a wrong key and are answered at once.
    let e = InProcessEdge::start(|c| c.admission.ip_requests_per_sec = 1).await;
    let (addr, key) = (e.addr(), e.key.clone());
    tokio::task::spawn_blocking(move || {
        let keys = [key.as_str(), "slk_wrong", "slk_wrong", "slk_wrong", "slk_wrong"];
        let codes: Vec<String> =
            keys.iter().enumerate().map(|(i, k)| post(addr, k, &format!("ip{i}"), 1).code()).collect();
        assert_eq!(codes, ["ok", "unauthorized", "unauthorized", "ip_rate_limited", "ip_rate_limited"]);
        let r = post(addr, &key, "ip-last", 1);
        assert_eq!(r.code(), "ip_rate_limited", "the valid key is refused too");
        assert!(r.header("retry-after").is_some());
        Spec::load().check("POST", "/v1/events", &r);
    })
    .await
    .expect("client");
    e.shutdown().await;
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
                        assert!(wal.unforwarded_bytes() > budget / 2, "shed below the high-water mark");
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
        let drained = wait_until("the WAL to drain below the mark", Duration::from_secs(60), || {
            wal.unforwarded_bytes() < budget / 2
        });
        eprintln!("WAL drained below the high-water mark {drained:?} after core started");
        let mut i = 1_000_000;
        assert!(wal.unforwarded_bytes() < budget / 2);
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
