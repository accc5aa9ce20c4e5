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

/// A region name unique to one test run, so topics never collide on a shared real broker.
pub fn unique_region(test: &str) -> String {
    format!("t-{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
