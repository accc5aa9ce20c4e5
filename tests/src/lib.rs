//! Harness for tests that run real Sluice processes on loopback against a Kafka-protocol broker.
//!
//! The broker is librdkafka's in-process mock cluster unless `SLUICE_TEST_KAFKA=host:port` names
//! a real one. Each test uses its own region, hence its own topic `events.<region>`.

pub mod core_harness;
pub mod edge_harness;
pub mod http;
pub mod kafka;
pub mod kafka_proxy;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod procs;
pub mod sdk;
pub mod udp_proxy;
pub mod walfile;

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A loopback port free for TCP, for a server a test starts a moment later.
pub fn free_tcp_addr() -> SocketAddr {
    free_port_run(1)
}

/// A loopback port free for UDP (QUIC), for a server a test starts a moment later.
pub fn free_udp_addr() -> SocketAddr {
    free_port_run(1)
}

/// The first of `n` consecutive loopback ports, each free for both TCP and UDP when probed.
///
/// The ports are picked outside the kernel's ephemeral range (`ip_local_port_range`), because a
/// port from `bind(0)` that is released again is soon handed to some outgoing connection or
/// client socket (an HTTP client, a Kafka client, a QUIC client endpoint) and the server started
/// later finds it taken: CI once failed with "binding 127.0.0.1:43981: Address already in use".
/// Ports outside the range are only ever taken by an explicit bind, and this process never
/// hands the same one out twice, so tests running in parallel threads cannot collide either.
pub fn free_port_run(n: u16) -> SocketAddr {
    use rand::Rng;
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

    let (low, high) = ephemeral_port_range();
    // Prefer the ports below the range; a kernel configured to start it low leaves those above.
    let candidates = if low >= 12_000 { 10_000..low } else { high.saturating_add(1)..u16::MAX };
    assert!(candidates.len() > usize::from(n) * 4, "no room outside the ephemeral port range {low}-{high}");
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rng = rand::rng();
    loop {
        let first = rng.random_range(candidates.start..candidates.end - n);
        let run = first..first + n;
        let free = run.clone().all(|p| {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            !handed_out.contains(&p) && TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
        });
        if free {
            handed_out.extend(run);
            return SocketAddr::from(([127, 0, 0, 1], first));
        }
    }
}

/// Linux's `net.ipv4.ip_local_port_range`, or its default where it cannot be read.
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|b| b.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A region name unique to one test run, so topics never collide on a shared real broker.
pub fn unique_region(test: &str) -> String {
    format!("t-{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`. Returns how long
/// it took.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let (low, high) = ephemeral_port_range();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let first = free_port_run(3).port();
            for port in first..first + 3 {
                assert!(!(low..=high).contains(&port), "port {port} is in the ephemeral range {low}-{high}");
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
