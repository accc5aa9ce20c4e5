//! A Kafka broker behind a TCP proxy that can stop serving one client: a one-broker librdkafka
//! mock cluster advertising the proxy's address, so every connection of a client (bootstrap and
//! partition leader) goes through the proxy. [`ProxiedKafka::wedge`] makes the proxy cut the
//! connections of a client (by the `client.id` of its request headers) and from then on read that
//! client's requests without ever answering them, while other clients are served as before.
//!
//! That is how a producer wedged by broker-side state looks from the producer: no delivery, only
//! `MessageTimedOut`, no fatal error, and a new producer (a new `client.id`) delivers at once.
//! The mock cannot hold such state itself: it checks producer IDs only for transactional
//! producers, and librdkafka answers `UNKNOWN_PRODUCER_ID` by acquiring a new ID.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

/// One mock cluster, created through the C API because the Rust wrapper does not expose the
/// advertised-listener setting.
struct MockCluster {
    cluster: *mut rd::rd_kafka_mock_cluster_t,
    /// The client handle the cluster runs on; must outlive `cluster`.
    _handle: BaseProducer,
    bootstrap: String,
}

// SAFETY: librdkafka's mock cluster API is thread safe (each call locks the cluster or posts an
// op to its thread); the pointer is only destroyed in `Drop`.
unsafe impl Send for MockCluster {}

impl MockCluster {
    fn new(advertised: SocketAddr, topics: &[(&str, i32)]) -> Self {
        let handle: BaseProducer = ClientConfig::new().create().expect("mock cluster handle");
        // SAFETY: the handle is a live client; the strings outlive the calls.
        unsafe {
            let cluster = rd::rd_kafka_mock_cluster_new(handle.client().native_ptr(), 1);
            assert!(!cluster.is_null(), "mock cluster");
            let bootstrap =
                CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(cluster)).to_string_lossy().into_owned();
            let host = CString::new(advertised.ip().to_string()).expect("host");
            rd::rd_kafka_mock_broker_set_host_port(cluster, 1, host.as_ptr(), i32::from(advertised.port()));
            for (topic, partitions) in topics {
                let name = CString::new(*topic).expect("topic");
                let err = rd::rd_kafka_mock_topic_create(cluster, name.as_ptr(), *partitions, 1);
                assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "create {topic}");
            }
            Self { cluster, _handle: handle, bootstrap }
        }
    }
}

impl Drop for MockCluster {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_mock_cluster_new`, destroyed once, before its handle.
        unsafe { rd::rd_kafka_mock_cluster_destroy(self.cluster) }
    }
}

#[derive(Default)]
struct Routing {
    target: String,
    /// Clients (by `client.id`) whose requests are read and never answered.
    wedged: Vec<String>,
    /// Every open connection with its client's `client.id`, so a wedge can cut them.
    open: Vec<(String, TcpStream)>,
    stop: bool,
}

pub struct ProxiedKafka {
    /// What clients use as `bootstrap.servers`.
    pub brokers: String,
    addr: SocketAddr,
    routing: Arc<Mutex<Routing>>,
    _cluster: MockCluster,
}

impl ProxiedKafka {
    /// Starts a cluster holding `topics` (name, partitions) and the proxy in front of it.
    pub fn start(topics: &[(&str, i32)]) -> Self {
        let listener = TcpListener::bind(crate::free_tcp_addr()).expect("proxy listener");
        let addr = listener.local_addr().expect("proxy addr");
        let cluster = MockCluster::new(addr, topics);
        let routing = Arc::new(Mutex::new(Routing { target: cluster.bootstrap.clone(), ..Routing::default() }));
        let r = routing.clone();
        std::thread::spawn(move || accept_loop(&listener, &r));
        ProxiedKafka { brokers: addr.to_string(), addr, routing, _cluster: cluster }
    }

    /// Stops serving the client whose requests carry `client_id`: its connections are cut, and
    /// those it opens next are read but never answered.
    pub fn wedge(&self, client_id: &str) {
        let mut r = self.routing.lock().unwrap();
        r.wedged.push(client_id.to_string());
        for (_, c) in r.open.iter().filter(|(id, _)| id == client_id) {
            let _ = c.shutdown(Shutdown::Both);
        }
        r.open.retain(|(id, _)| id != client_id);
    }
}

impl Drop for ProxiedKafka {
    fn drop(&mut self) {
        let mut r = self.routing.lock().unwrap();
        r.stop = true;
        for (_, c) in r.open.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(r);
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept_loop(listener: &TcpListener, routing: &Arc<Mutex<Routing>>) {
    for client in listener.incoming() {
        if routing.lock().unwrap().stop {
            return;
        }
        let Ok(client) = client else { continue };
        let routing = routing.clone();
        std::thread::spawn(move || serve(client, &routing));
    }
}

/// Reads the connection's first request for its `client.id`, then either relays the connection
/// to the broker or swallows it.
fn serve(mut client: TcpStream, routing: &Mutex<Routing>) {
    let Ok(first) = read_request(&mut client) else { return };
    let id = client_id(&first);
    let (wedged, target) = {
        let r = routing.lock().unwrap();
        (r.wedged.contains(&id), r.target.clone())
    };
    let Ok(tracked) = client.try_clone() else { return };
    if wedged {
        routing.lock().unwrap().open.push((id, tracked));
        // Read and drop until the client gives up; never answer.
        while read_request(&mut client).is_ok() {}
        return;
    }
    let Ok(mut server) = TcpStream::connect_timeout(&target.parse().expect("mock address"), Duration::from_secs(2))
    else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    routing.lock().unwrap().open.push((id, tracked));
    if server.write_all(&first).is_err() {
        return;
    }
    std::thread::spawn(move || pump(s2, c2));
    pump(client, server);
}

/// One request as framed on the wire: `size i32` and that many bytes.
fn read_request(from: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size)?;
    let len = u32::from_be_bytes(size) as usize;
    let mut request = vec![0u8; 4 + len];
    request[..4].copy_from_slice(&size);
    from.read_exact(&mut request[4..])?;
    Ok(request)
}

/// The `client_id` of a request header (v1 and v2 both start `api_key i16, api_version i16,
/// correlation_id i32, client_id nullable string i16+bytes`).
fn client_id(request: &[u8]) -> String {
    let Some(len) = request.get(12..14).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return String::new() };
    let len = usize::try_from(len).unwrap_or(0);
    request.get(14..14 + len).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// Copies one direction until either side closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
