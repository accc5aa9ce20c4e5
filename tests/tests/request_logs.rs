//! Request logs are structured: every line logged while handling a request carries the request's
//! span with request_id, tenant_id, batch_id and the client's address. (Its own test binary: it installs the global
//! tracing subscriber.)

use std::io::Write;
use std::sync::{Arc, Mutex};

use sluice_tests::edge_harness::InProcessEdge;
use sluice_tests::http::{events_body, post_events};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_lines_carry_tenant_request_and_batch_ids() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().json().with_env_filter("sluice_edge=debug").with_writer(move || writer.clone()).init();
    let e = InProcessEdge::start(|c| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (addr, key) = (e.addr(), e.key.clone());
    let r = tokio::task::spawn_blocking(move || {
        let (body, _) = events_body("logs", 2);
        post_events(
            addr,
            &key,
            "application/json",
            &[("X-Request-Id", "req-logs-1"), ("X-Forwarded-For", "203.0.113.9")],
            &body,
        )
    })
    .await
    .unwrap();
    assert_eq!(r.status, 202);
    let batch_id = r.json()["batch_id"].as_str().unwrap().to_string();
    e.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "ingest: accepted")
        .unwrap_or_else(|| panic!("no 'ingest: accepted' line in:\n{text}"));
    let span = &line["span"];
    assert_eq!(span["request_id"], "req-logs-1", "{line}");
    assert_eq!(span["tenant_id"], "acme", "{line}");
    assert_eq!(span["batch_id"], batch_id.as_str(), "{line}");
    assert_eq!(span["client_ip"], "203.0.113.9", "behind a trusted proxy, the forwarded client: {line}");
}
