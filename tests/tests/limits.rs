//! Requests over the limits or with bad credentials or bodies get the right 4xx with a JSON error
//! body, and nothing is appended to the WAL.

use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{Response, events_body, gzip, post_events, request};

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_auth_and_malformed_bodies() {
    let e = InProcessEdge::start(|_| {}).await;
    let (addr, key) = (e.addr(), e.key.clone());
    tokio::task::spawn_blocking(move || {
        // 500 events is fine, 501 is not.
        let (ok, _) = events_body("max", 500);
        assert_eq!(post_events(addr, &key, "application/json", &[], &ok).status, 202);
        let (too_many, _) = events_body("over", 501);
        let r = post_events(addr, &key, "application/json", &[], &too_many);
        assert_error(&r, 413, "payload_too_large");
        assert_eq!(r.json()["error"]["details"]["max_events"], 500);
        assert_eq!(r.json()["error"]["details"]["max_bytes"], 524288);

        // 513 KB of valid JSON, plain and as a small gzip.
        let big = format!(
            "[{{\"event\":\"e\",\"distinct_id\":\"u\",\"properties\":{{\"pad\":\"{}\"}}}}]",
            "x".repeat(513 * 1024)
        );
        assert_error(&post_events(addr, &key, "application/json", &[], big.as_bytes()), 413, "payload_too_large");
        let bomb = gzip(big.as_bytes());
        assert!(bomb.len() < 16 * 1024);
        assert_error(
            &post_events(addr, &key, "application/json", &[("Content-Encoding", "gzip")], &bomb),
            413,
            "payload_too_large",
        );

        let (body, _) = events_body("auth", 1);
        assert_error(&post_events(addr, "slk_wrong", "application/json", &[], &body), 401, "unauthorized");
        let r = request(addr, "POST", "/v1/events", &[("Content-Type", "application/json")], &body).unwrap();
        assert_error(&r, 401, "unauthorized");
        let r =
            request(addr, "POST", "/v1/events", &[("X-Api-Key", &key), ("Content-Type", "application/json")], &body)
                .unwrap();
        assert_eq!(r.status, 202, "X-Api-Key is accepted");

        assert_error(&post_events(addr, &key, "application/json", &[], b"[{\"event\":"), 400, "malformed_body");
        assert_error(&post_events(addr, &key, "application/json", &[], b"{\"event\":\"x\"}"), 400, "malformed_body");
        assert_error(
            &post_events(addr, &key, "application/json", &[("Content-Encoding", "gzip")], b"not gzip"),
            400,
            "malformed_body",
        );
        assert_error(&post_events(addr, &key, "application/json", &[], b"[{\"event\":\"\"}]"), 400, "no_valid_events");
        assert_error(&post_events(addr, &key, "application/xml", &[], b"<x/>"), 415, "unsupported_media_type");
    })
    .await
    .unwrap();
    // Only the two valid requests reached the WAL.
    assert_eq!(e.appended(), 2);
    e.shutdown().await;
}
