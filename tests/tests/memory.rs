//! Memory stays bounded under overload: an edge process is driven with ten times the number of
//! concurrent clients that saturate it, every one sending the largest body allowed (512 KiB,
//! read and parsed in full), and its peak RSS (`VmHWM`) must stay within the in-flight byte cap
//! plus a fixed working set above its idle RSS. Without the cap every connection's body is
//! buffered at once and the bound is exceeded (measured: see RELIABILITY.md).
//!
//! The bodies end in an event that violates the PII policy, so each is read, decoded and
//! validated in full and answered `422`: the memory path of an accepted request without filling
//! the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_tests::procs::{EdgeOpts, Proc, TestEnv};
use sluice_tests::{free_tcp_addr, free_udp_addr};

/// In-flight byte cap of the edge under test (each request reserves about 1 MiB).
const IN_FLIGHT_MIB: u64 = 16;
/// Peak RSS allowed above idle beyond the cap: allocator slack, the copies of the bodies being
/// parsed (one per worker thread), buffers of connections being refused.
const WORKING_SET_MIB: u64 = 32;
/// Clients that keep the edge busy (closed loop), and the overload: ten times as many.
const SATURATING_CLIENTS: usize = 16;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// A 512 KiB JSON array; its last event carries `properties.ssn`, which the policy forbids.
fn big_body() -> Vec<u8> {
    let pad = "x".repeat(1000);
    let mut events: Vec<serde_json::Value> = (0..480)
        .map(|i| serde_json::json!({"event": "e", "distinct_id": format!("u{i}"), "properties": {"pad": pad}}))
        .collect();
    events.push(serde_json::json!({"event": "e", "distinct_id": "u", "properties": {"ssn": "078-05-1120"}}));
    let body = serde_json::to_vec(&events).expect("json");
    assert!(body.len() <= 512 * 1024 && body.len() > 480 * 1024, "{}", body.len());
    body
}

struct Load {
    answered: u64,
    refused: u64,
    no_answer: u64,
    elapsed: Duration,
}

/// `clients` threads post `body` back to back for `run`.
fn load(edge: std::net::SocketAddr, key: &str, body: &Arc<Vec<u8>>, clients: usize, run: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 3]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, counts, body, auth) = (stop.clone(), counts.clone(), body.clone(), format!("Bearer {key}"));
            std::thread::spawn(move || {
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                while !stop.load(Ordering::Relaxed) {
                    let slot = match sluice_tests::http::request(edge, "POST", "/v1/events", &headers, &body) {
                        Ok(r) if r.status == 422 => 0,
                        Ok(r) => {
                            assert!(r.status == 503 || r.status == 429, "unexpected {}", r.status);
                            1
                        }
                        // Refused before the body was read: the close may reset the connection.
                        Err(_) => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    Load { answered: get(0), refused: get(1), no_answer: get(2), elapsed: start.elapsed() }
}

#[test]
fn edge_rss_stays_bounded_under_10x_overload() {
    let env = TestEnv::new("memory");
    let http = free_tcp_addr();
    let extra = format!(
        "[pii.default]\ndisallowed_fields = [\"properties.ssn\"]\n[admission]\nmax_in_flight_bytes = {}\n",
        IN_FLIGHT_MIB * 1024 * 1024
    );
    let edge: Proc = env.spawn_edge_with(http, free_udp_addr(), &EdgeOpts { extra_toml: extra, ..EdgeOpts::default() });
    let body = Arc::new(big_body());
    let idle_kib = status_kib(edge.pid(), "VmRSS:");

    let base = load(http, &env.key, &body, SATURATING_CLIENTS, Duration::from_secs(3));
    assert!(base.answered > 0, "the edge answered nothing");
    let over = load(http, &env.key, &body, SATURATING_CLIENTS * 10, Duration::from_secs(6));
    let peak_kib = status_kib(edge.pid(), "VmHWM:");
    let bound_mib = idle_kib / 1024 + IN_FLIGHT_MIB + WORKING_SET_MIB;
    let rate = |l: &Load| l.answered as f64 / l.elapsed.as_secs_f64();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\nmemory: edge RSS idle {} MiB, peak {} MiB (bound {bound_mib} MiB, in-flight cap {IN_FLIGHT_MIB} MiB); \
         {SATURATING_CLIENTS} clients: {:.0} bodies/s parsed; {} clients: {:.0} bodies/s parsed, {} refused \
         (503/429), {} cut off before their body was read\n",
        idle_kib / 1024,
        peak_kib / 1024,
        rate(&base),
        SATURATING_CLIENTS * 10,
        rate(&over),
        over.refused,
        over.no_answer,
    );
    assert!(over.answered > 0, "the overloaded edge answered nothing");
    assert!(peak_kib / 1024 <= bound_mib, "peak RSS {} MiB over the bound of {bound_mib} MiB", peak_kib / 1024);
    assert!(!edge.log().contains("panicked"), "{}", edge.log());
}
