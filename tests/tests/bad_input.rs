//! Hostile clients cannot break the edge: a few thousand malformed, oversized, wrongly encoded
//! and non-HTTP requests each get a 4xx (never a 5xx, a hang or a crash), slow clients
//! (slowloris: headers or body trickled a byte at a time, also after a first request on a
//! kept-alive connection) are cut off by the server's read
//! deadlines instead of pinning connections forever, and valid traffic is served throughout.
//! Nothing but the valid requests reaches the WAL.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_edge::config::EdgeConfig;
use sluice_tests::http::{events_body, gzip, post_events, request};

const HEADER_TIMEOUT_MS: u64 = 1500;
const BODY_TIMEOUT_MS: u64 = 1500;

async fn start_edge() -> (sluice_edge::Edge, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EdgeConfig { listen: "127.0.0.1:0".parse().unwrap(), ..EdgeConfig::in_dir(dir.path()) };
    let (_, key) = sluice_ops::keys::add(&config.keys_file, "acme", "prod").unwrap();
    config.forwarder.enabled = false;
    config.http.header_timeout_ms = HEADER_TIMEOUT_MS;
    config.http.body_timeout_ms = BODY_TIMEOUT_MS;
    let edge = sluice_edge::Edge::builder(config).start().await.unwrap();
    (edge, key, dir)
}

/// One malformed request, chosen by `i`; returns the status the edge must give (or 0 for
/// "closed or 400" on bytes that are not HTTP at all).
fn hostile(addr: SocketAddr, key: &str, i: usize) -> (u16, u16) {
    let ct = "application/json";
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let (status, want) = match i % 14 {
        0 => (post_events(addr, key, ct, &[], b"[{\"event\":").status, 400),
        1 => (post_events(addr, key, ct, &[], &[0xff, 0xfe, 0x00, 0x9f, 0x80]).status, 400),
        2 => (post_events(addr, key, ct, &[("Content-Encoding", "gzip")], b"\x1f\x8bnot really gzip").status, 400),
        3 => (post_events(addr, key, ct, &[("Content-Encoding", "br")], b"[]").status, 415),
        4 => (post_events(addr, key, "application/xml", &[], b"<a/>").status, 415),
        5 => (post_events(addr, key, ct, &[], deep.as_bytes()).status, 400),
        6 => (post_events(addr, key, ct, &[], &vec![b' '; 600 * 1024]).status, 413),
        7 => (post_events(addr, key, ct, &[("Content-Encoding", "gzip")], &gzip(&vec![b'['; 2 << 20])).status, 413),
        8 => (post_events(addr, "slk_nope", ct, &[], b"[]").status, 401),
        9 => (post_events(addr, key, "application/x-ndjson", &[], b"\n\n  \n").status, 400),
        10 => (post_events(addr, key, ct, &[], b"[{\"event\":1,\"distinct_id\":[]}]").status, 400),
        11 => {
            // Gzip whose stream ends early (truncated download).
            let g = gzip(&events_body("trunc", 5).0);
            (post_events(addr, key, ct, &[("Content-Encoding", "gzip")], &g[..g.len() / 2]).status, 400)
        }
        12 => (post_events(addr, key, ct, &[], &events_body("many", 501).0).status, 413),
        _ => (raw_garbage(addr, i), 0),
    };
    (status, want)
}

/// Bytes that are not HTTP: the edge answers 400 or closes; either way it must not hang.
fn raw_garbage(addr: SocketAddr, i: usize) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let junk: Vec<u8> = (0..512).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
    let _ = s.write_all(&junk);
    let _ = s.write_all(b"\r\n\r\n");
    let mut out = Vec::new();
    let started = Instant::now();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(9), "the edge hung on garbage");
    std::str::from_utf8(&out).ok().and_then(|t| t.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Opens a connection that sends `prefix` and then one byte of `trickle` every `every`, and
/// returns how long until the server closed it (or `None` if it never did within `limit`).
fn slow_client(
    addr: SocketAddr,
    prefix: Vec<u8>,
    trickle: Vec<u8>,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).ok()?;
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(10))).ok()?;
    if s.write_all(&prefix).is_err() {
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 4096];
    for b in trickle.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(started.elapsed());
        }
        let until = Instant::now() + every;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {} // a 408 answer; the close follows
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return Some(started.elapsed()),
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_gets_4xx_and_valid_traffic_still_flows() {
    let (edge, key, _dir) = start_edge().await;
    let addr = edge.http_addr;
    let n: usize = if sluice_tests::ledger::soak() { 20_000 } else { 2_000 };
    let key2 = key.clone();
    let bad = tokio::task::spawn_blocking(move || {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let key = key2.clone();
                std::thread::spawn(move || {
                    let mut by_status = std::collections::BTreeMap::new();
                    for i in (w..n).step_by(4) {
                        let (status, want) = hostile(addr, &key, i);
                        if want == 0 {
                            assert!(status == 0 || status == 400, "garbage #{i} got {status}");
                        } else {
                            assert_eq!(status, want, "hostile request kind {} (#{i})", i % 14);
                        }
                        *by_status.entry(status).or_insert(0u64) += 1;
                    }
                    by_status
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect::<Vec<_>>()
    });

    // Slowloris while the hostile requests run: headers trickled, a body trickled, and a
    // connection that sends nothing at all.
    let slow = tokio::task::spawn_blocking(move || {
        let limit = Duration::from_secs(20);
        let every = Duration::from_millis(300);
        let mut clients = Vec::new();
        for i in 0..60 {
            let (prefix, trickle): (Vec<u8>, Vec<u8>) = match i % 4 {
                // One complete request on a kept-alive connection, then the next one trickled.
                3 => (b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/events HTTP/1.1\r\n".to_vec(), b"X-Slow: a\r\n".to_vec()),
                0 => (b"POST /v1/events HTTP/1.1\r\nHost: x\r\n".to_vec(), b"X-Slow: aaaaaaaa\r\n".to_vec()),
                1 => (
                    b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[".to_vec(),
                    b"{}, ".to_vec(),
                ),
                _ => (Vec::new(), Vec::new()),
            };
            clients.push(std::thread::spawn(move || {
                if trickle.is_empty() {
                    // Silent: connect and wait for the server to give up.
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(limit)).unwrap();
                    let started = Instant::now();
                    let mut b = [0u8; 64];
                    return match s.read(&mut b) {
                        Ok(_) | Err(_) if started.elapsed() < limit - Duration::from_millis(100) => {
                            Some(started.elapsed())
                        }
                        _ => None,
                    };
                }
                slow_client(addr, prefix, trickle, every, limit)
            }));
        }
        clients.into_iter().map(|c| c.join().unwrap()).collect::<Vec<_>>()
    });

    // Valid traffic is served while all that goes on.
    let key3 = key.clone();
    let valid = tokio::task::spawn_blocking(move || {
        let mut ok = 0;
        for i in 0..40 {
            let (body, _) = events_body(&format!("valid-{i}"), 5);
            let started = Instant::now();
            let r = post_events(addr, &key3, "application/json", &[], &body);
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            assert!(started.elapsed() < Duration::from_secs(5), "valid request took {:?}", started.elapsed());
            ok += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });

    let valid_ok = valid.await.unwrap();
    let closed = slow.await.unwrap();
    let tallies = bad.await.unwrap();
    let never_closed = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(never_closed, 0, "{never_closed} slow connections were never cut off: {closed:?}");
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(HEADER_TIMEOUT_MS.max(BODY_TIMEOUT_MS) * 4),
        "a slow client held a connection for {slowest:?}"
    );
    let mut total = std::collections::BTreeMap::new();
    for t in tallies {
        for (k, v) in t {
            *total.entry(k).or_insert(0u64) += v;
        }
    }
    println!(
        "hostile requests by status (0 = closed without answer): {total:?}; slowest slow client cut after {slowest:?}"
    );

    // And after all of it, the edge still serves.
    let (body, _) = events_body("after", 3);
    let r = tokio::task::spawn_blocking(move || post_events(addr, &key, "application/json", &[], &body)).await.unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(edge.wal.stats().records.load(Ordering::Relaxed), valid_ok + 1, "only valid requests reached the WAL");
    let health =
        tokio::task::spawn_blocking(move || request(addr, "HEAD", "/health", &[], b"").unwrap()).await.unwrap();
    assert_eq!(health.status, 200);
    edge.shutdown().await;
}
