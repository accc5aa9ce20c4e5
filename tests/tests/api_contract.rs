//! The edge's HTTP contract, one test per rule: every status code an SDK can see, idempotency,
//! signatures, PII policy, partial success, debug echo, browsers (CORS, sendBeacon), tracing
//! headers, slow clients and TLS. Every response is also checked against `edge/openapi.yaml`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_edge::config::{PiiDetector, PiiPolicy};
use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{Response, events_body, gzip_at, post_events, request};
use sluice_tests::openapi::Spec;

const EVENTS: &str = "/v1/events";
const DEBUG: &str = "/v1/events:debug";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let r = request(addr, "POST", path, headers, body).expect("request");
    Spec::load().check("POST", path, &r);
    r
}

fn code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_missing_unknown_revoked_and_disabled_tenant() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key, keys_file) = (e.addr(), e.key.clone(), e.keys_file.clone());
    blocking(move || {
        let (body, _) = events_body("auth", 1);
        let json = ("Content-Type", "application/json");
        assert_eq!(code(&post(addr, EVENTS, &[json], &body)), "unauthorized");
        assert_eq!(code(&post(addr, EVENTS, &[json, ("Authorization", "Bearer slk_nope")], &body)), "unauthorized");
        assert_eq!(post(addr, EVENTS, &[json, ("Authorization", &bearer(&key))], &body).status, 202);
        // Another scheme is named for what it is, with the ways a key can be sent.
        let r = post(addr, EVENTS, &[json, ("Authorization", "Basic dXNlcjpwYXNz")], &body);
        assert_eq!((r.status, code(&r)), (401, "unauthorized".to_string()));
        let message = r.json()["error"]["message"].as_str().unwrap_or("").to_string();
        for says in ["`Authorization: Basic` is not supported", "X-Api-Key", "?api_key="] {
            assert!(message.contains(says), "{message}");
        }
        // ...and does not hide a key sent another way (a proxy may add its own `Basic`).
        let r = post(addr, EVENTS, &[json, ("Authorization", "Basic dXNlcjpwYXNz"), ("X-Api-Key", &key)], &body);
        assert_eq!(r.status, 202);
        let message = post(addr, EVENTS, &[json], &body).json()["error"]["message"].as_str().unwrap_or("").to_string();
        assert!(message.contains("?api_key="), "{message}");

        let mut file = sluice_edge::ingest::auth::read_keys_file(&keys_file).unwrap();
        file.disabled_tenants.push("acme".into());
        sluice_ops::keys::save(&keys_file, &file).unwrap();
        let r = wait_for_status(addr, &key, &body, 403);
        assert_eq!(code(&r), "tenant_disabled");

        file.disabled_tenants.clear();
        file.keys[0].revoked = true;
        sluice_ops::keys::save(&keys_file, &file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = post(addr, EVENTS, &[json, ("Authorization", &bearer(&key))], &body);
            if code(&r) == "key_revoked" {
                assert_eq!(r.status, 403);
                break;
            }
            assert!(Instant::now() < deadline, "revocation never took effect");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    e.shutdown().await;
}

fn wait_for_status(addr: std::net::SocketAddr, key: &str, body: &[u8], status: u16) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post(addr, EVENTS, &[("Content-Type", "application/json"), ("Authorization", &bearer(key))], body);
        if r.status == status || Instant::now() > deadline {
            assert_eq!(r.status, status, "keys file change never took effect");
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rotation without downtime: while a client sends continuously, a new key is added, the client
/// switches to it, and the old key is revoked. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_drops_no_request() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, old_key, keys_file) = (e.addr(), e.key.clone(), e.keys_file.clone());
    let current = Arc::new(std::sync::Mutex::new(old_key.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (current, stop, sent) = (current.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let (body, _) = events_body("rot", 5);
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let key = current.lock().unwrap().clone();
                let r = post_events(addr, &key, "application/json", &[], &body);
                if r.status != 202 {
                    failures.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    let sent_so_far = sent.clone();
    blocking(move || {
        // Each phase lasts until the loader has sent 7 more requests, however slow fsync is.
        let load_runs = || {
            let from = sent_so_far.load(Ordering::Relaxed);
            sluice_tests::wait_until("7 more requests", Duration::from_secs(30), || {
                sent_so_far.load(Ordering::Relaxed) >= from + 7
            });
        };
        load_runs();
        let (new_id, new_key) = sluice_ops::keys::add(&keys_file, "acme", "prod").unwrap();
        // Roll the client once the edge knows the new key.
        let (body, _) = events_body("probe", 1);
        wait_for_status(addr, &new_key, &body, 202);
        *current.lock().unwrap() = new_key;
        load_runs();
        let old_id = sluice_edge::ingest::auth::read_keys_file(&keys_file).unwrap().keys[0].id.clone();
        assert_ne!(old_id, new_id);
        sluice_ops::keys::revoke(&keys_file, &old_id).unwrap();
        let r = wait_for_status(addr, &old_key, &body, 403);
        assert_eq!(code(&r), "key_revoked");
        load_runs();
        stop.store(true, Ordering::Relaxed);
    })
    .await;
    let failures = loader.join().unwrap();
    assert!(failures.is_empty(), "requests failed during rotation: {failures:?}");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replay_mismatch_in_flight_and_restart() {
    let mut e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    let first = blocking(move || {
        let auth = bearer(&key);
        let h = [("Content-Type", "application/json"), ("Authorization", auth.as_str()), ("X-Idempotency-Key", "order-42")];
        let (body, _) = events_body("idem", 3);
        let first = post(addr, EVENTS, &h, &body);
        assert_eq!(first.status, 202);
        assert_eq!(first.header("idempotent-replayed"), None);
        let again = post(addr, EVENTS, &h, &body);
        assert_eq!((again.status, again.header("idempotent-replayed")), (202, Some("true")));
        assert_eq!(again.body, first.body, "the original body, byte for byte");

        let (other, _) = events_body("different", 3);
        let r = post(addr, EVENTS, &h, &other);
        assert_eq!((r.status, code(&r)), (422, "idempotency_key_reused".to_string()));

        // Hold a request with a fresh key open mid-body; a duplicate must get 409, not race it.
        let mut slow = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nX-Idempotency-Key: slow-1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        slow.write_all(head.as_bytes()).unwrap();
        slow.write_all(&body[..10]).unwrap();
        // Time for the server to parse the head and reserve the key (nothing to poll for).
        std::thread::sleep(Duration::from_secs(1));
        let h2 = [("Content-Type", "application/json"), ("Authorization", auth.as_str()), ("X-Idempotency-Key", "slow-1")];
        let r = post(addr, EVENTS, &h2, &body);
        assert_eq!((r.status, code(&r)), (409, "idempotency_key_in_flight".to_string()));
        slow.write_all(&body[10..]).unwrap();
        let mut raw = String::new();
        slow.read_to_string(&mut raw).ok();
        assert!(raw.starts_with("HTTP/1.1 202"), "{raw}");
        let bad = [("Content-Type", "application/json"), ("Authorization", auth.as_str()), ("X-Idempotency-Key", "")];
        assert_eq!(code(&post(addr, EVENTS, &bad, &body)), "invalid_idempotency_key");
        first
    })
    .await;
    assert_eq!(e.appended(), 2, "replays and refusals append nothing");

    e.restart().await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let auth = bearer(&key);
        let h =
            [("Content-Type", "application/json"), ("Authorization", auth.as_str()), ("X-Idempotency-Key", "order-42")];
        let (body, _) = events_body("idem", 3);
        let r = post(addr, EVENTS, &h, &body);
        assert_eq!((r.status, r.header("idempotent-replayed")), (202, Some("true")));
        assert_eq!(r.body, first.body);
    })
    .await;
    assert_eq!(e.appended(), 0, "the restarted edge appended nothing for the replay");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_is_compared_after_decompression() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let auth = bearer(&key);
        let (body, _) = events_body("regzip", 2);
        let (first_gz, retry_gz) = (gzip_at(&body, 1_796_220_000), gzip_at(&body, 1_796_220_007));
        assert_ne!(first_gz, retry_gz, "the two attempts differ on the wire");
        let gz = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Authorization", auth.as_str()),
            ("X-Idempotency-Key", "regzip-1"),
        ];
        let first = post(addr, EVENTS, &gz, &first_gz);
        assert_eq!(first.status, 202);
        let retry = post(addr, EVENTS, &gz, &retry_gz);
        assert_eq!((retry.status, retry.header("idempotent-replayed")), (202, Some("true")));
        assert_eq!(retry.body, first.body);
        // The same batch uncompressed is the same request too.
        let plain = [gz[0], gz[2], gz[3]];
        let r = post(addr, EVENTS, &plain, &body);
        assert_eq!((r.status, r.header("idempotent-replayed")), (202, Some("true")));
        // Another batch is still another body, however it is encoded.
        let (other, _) = events_body("regzip-other", 2);
        let r = post(addr, EVENTS, &gz, &gzip_at(&other, 1_796_220_000));
        assert_eq!((r.status, code(&r)), (422, "idempotency_key_reused".to_string()));

        // Only a 2xx is remembered: a refused request leaves its key free for the corrected one.
        let fresh = [plain[0], plain[1], ("X-Idempotency-Key", "fix-then-send")];
        let r = post(addr, EVENTS, &fresh, br#"[{"event":""}]"#);
        assert_eq!((r.status, code(&r)), (400, "no_valid_events".to_string()));
        let r = post(addr, EVENTS, &fresh, &other);
        assert_eq!((r.status, r.header("idempotent-replayed")), (202, None));
    })
    .await;
    assert_eq!(e.appended(), 2, "the first attempt and the corrected request were stored");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_accept_reject_expire_and_replay() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, keys_file) = (e.addr(), e.keys_file.clone());
    blocking(move || {
        let mut file = sluice_edge::ingest::auth::read_keys_file(&keys_file).unwrap();
        let (mut entry, key) = sluice_edge::ingest::auth::new_key("acme", "prod");
        entry.signing_secret = Some(hex::encode(b"top-secret"));
        file.keys.push(entry);
        sluice_ops::keys::save(&keys_file, &file).unwrap();
        let (body, _) = events_body("sig", 2);
        let auth = bearer(&key);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let send = |sig: Option<&str>| {
            let mut h = vec![("Content-Type", "application/json"), ("Authorization", auth.as_str())];
            if let Some(s) = sig {
                h.push(("X-Signature", s));
            }
            post(addr, EVENTS, &h, &body)
        };
        // The ring reloads within ~50 ms; until then the key is unknown.
        let deadline = Instant::now() + Duration::from_secs(5);
        while code(&send(None)) == "unauthorized" {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(code(&send(None)), "signature_missing");
        let good = sluice_edge::ingest::signature::sign(b"top-secret", now, &body);
        assert_eq!(send(Some(&good)).status, 202);
        assert_eq!(code(&send(Some(&good))), "signature_replayed");
        let wrong = sluice_edge::ingest::signature::sign(b"not-the-secret", now, &body);
        assert_eq!(code(&send(Some(&wrong))), "signature_invalid");
        let stale = sluice_edge::ingest::signature::sign(b"top-secret", now - 3600, &body);
        assert_eq!(code(&send(Some(&stale))), "signature_expired");
    })
    .await;
    assert_eq!(e.appended(), 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_policy_refuses_the_whole_request_per_tenant() {
    let e = InProcessEdge::start(|c| {
        c.pii.tenants.insert(
            "acme".into(),
            PiiPolicy {
                disallowed_fields: vec!["properties.ssn".into()],
                detectors: vec![PiiDetector::Email, PiiDetector::CardNumber],
            },
        );
    })
    .await;
    let (addr, key, keys_file) = (e.addr(), e.key.clone(), e.keys_file.clone());
    blocking(move || {
        let body = br#"[{"event":"ok","distinct_id":"u","properties":{"plan":"pro"}},
                        {"event":"signup","distinct_id":"u","properties":{"contact":{"mail":"ann@example.com"}}}]"#;
        let r = post_events(addr, &key, "application/json", &[], body);
        Spec::load().check("POST", EVENTS, &r);
        assert_eq!((r.status, code(&r)), (422, "pii_detected".to_string()));
        let d = &r.json()["error"]["details"];
        assert_eq!(
            (d["index"].as_u64(), d["field"].as_str(), d["rule"].as_str()),
            (Some(1), Some("properties.contact.mail"), Some("email"))
        );
        let card = br#"[{"event":"pay","distinct_id":"u","properties":{"note":"4111 1111 1111 1111"}}]"#;
        assert_eq!(post_events(addr, &key, "application/json", &[], card).status, 422);
        let ssn = br#"[{"event":"x","distinct_id":"u","properties":{"ssn":"n/a"}}]"#;
        assert_eq!(
            post_events(addr, &key, "application/json", &[], ssn).json()["error"]["details"]["field"],
            "properties.ssn"
        );
        // Nesting an e-mail past the depth a check can walk does not get it through.
        let deep = format!(
            r#"[{{"event":"x","distinct_id":"u","properties":{}"ann@example.com"{}}}]"#,
            r#"{"a":"#.repeat(200),
            "}".repeat(200)
        );
        let r = post_events(addr, &key, "application/json", &[], deep.as_bytes());
        assert_eq!((r.status, code(&r)), (422, "pii_detected".to_string()), "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"]["details"]["rule"], "too_deep_to_check");
        // False positives stay out: handles, order numbers, version strings.
        let clean =
            br#"[{"event":"x","distinct_id":"u","properties":{"h":"@ann","order":"1234567890123","v":"1.2.3"}}]"#;
        assert_eq!(post_events(addr, &key, "application/json", &[], clean).status, 202);
        // Another tenant without a policy may send the same body.
        let (_, beta) = sluice_ops::keys::add(&keys_file, "beta", "prod").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = post_events(addr, &beta, "application/json", &[], body);
            if r.status == 202 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", r.status);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert_eq!(e.appended(), 2, "nothing from a refused request was stored");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_lists_rejects_and_no_valid_event_is_400() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let auth = bearer(&key);
        let nd = [("Content-Type", "application/x-ndjson"), ("Authorization", auth.as_str())];
        let body = b"{\"event\":\"a\",\"distinct_id\":\"u\"}\n{\"event\":\"b\",\"dist\n{\"event\":\"c\",\"distinct_id\":\"u\",\"timestamp\":\"nope\"}\n{\"event\":\"d\",\"distinct_id\":\"u\"}\n";
        let r = post(addr, EVENTS, &nd, body);
        assert_eq!(r.status, 202);
        let v = r.json();
        assert_eq!(v["accepted"], 2);
        let rejected: Vec<(u64, &str)> = v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["index"].as_u64().unwrap(), x["code"].as_str().unwrap()))
            .collect();
        assert_eq!(rejected, vec![(1, "malformed_json"), (2, "invalid_timestamp")]);
        // An event is an object: a positional array is not read field by field, and an NDJSON
        // line holding an array is named for what it is.
        let json = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
        let positional = br#"[["signup","user-1",1796220000,"evid",{"plan":"pro"}],{"event":"ok","distinct_id":"u"}]"#;
        let r = post(addr, EVENTS, &json, positional);
        assert_eq!((r.status, r.json()["accepted"].as_u64()), (202, Some(1)));
        assert_eq!(r.json()["rejected"][0]["code"], "invalid_type");
        let r = post(addr, EVENTS, &nd, b"[{\"event\":\"a\",\"distinct_id\":\"u\"}]\n");
        assert_eq!((r.status, code(&r)), (400, "no_valid_events".to_string()));
        let reject = &r.json()["error"]["details"]["rejected"][0];
        assert_eq!(reject["code"], "invalid_type");
        assert_eq!(reject["message"], "an event must be a JSON object, got an array");
        let r = post(addr, EVENTS, &nd, b"{\"event\":\"\"}\n{\"distinct_id\":\"u\"}\n");
        assert_eq!((r.status, code(&r)), (400, "no_valid_events".to_string()));
        assert_eq!(r.json()["error"]["details"]["rejected"].as_array().unwrap().len(), 2);
    })
    .await;
    // Each accepted request was one WAL append carrying its events and its dead-letter record.
    assert_eq!(e.appended(), 2);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_echoes_normalized_events_stores_nothing_and_is_rate_limited() {
    let e = InProcessEdge::start(|c| c.limits.debug_requests_per_sec = 1).await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let auth = bearer(&key);
        let h = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
        let body = br#"{"sent_at":"2026-11-25T10:00:01Z","batch":[{"event":"a","distinct_id":"u","timestamp":"2026-11-25T10:00:00Z"},{"event":7}]}"#;
        let r = post(addr, DEBUG, &h, body);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["valid"], false);
        assert_eq!(v["events"][0]["timestamp"], 1_795_600_800_000i64);
        assert_eq!(v["events"][0]["sent_at"], 1_795_600_801_000i64);
        assert_eq!(v["events"][0]["tenant"], "acme");
        assert_eq!(v["rejected"][0]["index"], 1);
        // Burst is 3× the rate: within a second the limiter must refuse.
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = post(addr, DEBUG, &h, body);
            statuses.push(r.status);
            if r.status == 429 {
                assert_eq!(code(&r), "rate_limited");
                assert!(r.header("retry-after").is_some());
                break;
            }
        }
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    })
    .await;
    assert_eq!(e.appended(), 0);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_preflight_and_send_beacon() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let r = request(
            addr,
            "OPTIONS",
            EVENTS,
            &[
                ("Origin", "https://shop.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization,content-type,x-idempotency-key"),
            ],
            b"",
        )
        .unwrap();
        assert!(r.status == 200 || r.status == 204, "{}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(r.header("access-control-allow-headers").unwrap_or("").contains("x-idempotency-key"));
        // One list of methods: no `Allow` from the route beside `Access-Control-Allow-Methods`.
        assert!(r.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")));
        assert_eq!(r.header("allow"), None);
        // sendBeacon: text/plain, key in the query string, no custom headers.
        let (body, _) = events_body("beacon", 2);
        let path = format!("{EVENTS}?api_key={key}");
        let r = post(
            addr,
            &path,
            &[("Content-Type", "text/plain;charset=UTF-8"), ("Origin", "https://shop.example")],
            &body,
        );
        assert_eq!(r.status, 202);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(r.header("access-control-expose-headers").unwrap_or("").contains("x-request-id"));
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_traceparent_and_unsupported_media() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        let auth = bearer(&key);
        let (body, _) = events_body("trace", 1);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = post(
            addr,
            EVENTS,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
                ("traceparent", tp),
                ("X-Request-Id", "req-123"),
            ],
            &body,
        );
        assert_eq!(r.header("x-request-id"), Some("req-123"));
        let echoed = r.header("traceparent").unwrap();
        assert!(
            echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && echoed.ends_with("-01") && echoed != tp,
            "{echoed}"
        );
        let r = post(
            addr,
            EVENTS,
            &[("Content-Type", "application/json"), ("Authorization", &auth), ("traceparent", "garbage")],
            &body,
        );
        assert!(r.header("traceparent").is_none());
        assert!(r.header("x-request-id").is_some_and(|v| v.len() == 36));
        let r = post(addr, EVENTS, &[("Content-Type", "application/xml"), ("Authorization", &auth)], &body);
        assert_eq!((r.status, code(&r)), (415, "unsupported_media_type".to_string()));
        let r = post(
            addr,
            EVENTS,
            &[("Content-Type", "application/json"), ("Content-Encoding", "br"), ("Authorization", &auth)],
            &body,
        );
        assert_eq!((r.status, code(&r)), (415, "unsupported_encoding".to_string()));
        // No Content-Type at all is read as JSON (documented in the README and the spec).
        let r = post(addr, EVENTS, &[("Authorization", &auth)], &body);
        assert_eq!(r.status, 202);
        let r = post(addr, DEBUG, &[("Content-Type", "text/plain"), ("Authorization", &auth)], &body);
        assert_eq!((r.status, r.json()["valid"].as_bool()), (200, Some(true)));
        let r = request(addr, "GET", "/nope", &[], b"").unwrap();
        assert_eq!((r.status, code(&r)), (404, "not_found".to_string()));
        for method in ["HEAD", "GET"] {
            let r = request(addr, method, "/health", &[], b"").unwrap();
            Spec::load().check(method, "/health", &r);
            assert_eq!(r.status, 200);
        }
    })
    .await;
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let e = InProcessEdge::start(|c| {
        c.http.header_timeout_ms = 300;
        c.http.body_timeout_ms = 300;
    })
    .await;
    let (addr, key) = (e.addr(), e.key.clone());
    blocking(move || {
        // Slowloris: headers never finish. The server closes the connection.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(started.elapsed() < Duration::from_secs(4), "connection held for {:?}", started.elapsed());

        // Body trickles: 408 with a JSON error.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[");
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
        assert!(raw.contains("request_timeout"), "{raw}");
    })
    .await;
    e.shutdown().await;
}
