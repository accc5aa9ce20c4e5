//! Harness for tests that run real Sluice processes on loopback against a Kafka-protocol broker.
//!
//! The broker is librdkafka's in-process mock cluster unless `SLUICE_TEST_KAFKA=host:port` names
//! a real one. Each test uses its own region, hence its own topic `events.<region>`.

pub mod edge_harness;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod procs;
pub mod udp_proxy;
pub mod walfile;

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("no free TCP port on loopback")
}

/// A free UDP port on loopback.
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("no free UDP port on loopback")
}

/// The first of `n` consecutive free UDP ports below Linux's ephemeral range (32768+). A port
/// from `bind(0)` that is released again is often handed to the very next `bind(0)` (a UDP
/// proxy, a QUIC client endpoint), so a server started a moment later on it finds it taken;
/// ports outside the range are never handed out that way.
pub fn udp_addr_outside_ephemeral_range(n: u16) -> SocketAddr {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let first = rng.random_range(20_000..32_000 - n);
        let free = (first..first + n).all(|p| UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], p))).is_ok());
        if free {
            return SocketAddr::from(([127, 0, 0, 1], first));
        }
    }
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
