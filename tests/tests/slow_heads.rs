//! Every request head on a connection has a deadline, on HTTP/1.1 and on HTTP/2 (h2c) alike, also
//! after a first request on a kept-alive connection: a client trickling a head (an HTTP/2
//! `HEADERS` frame, HTTP/1.1 header lines) or sending nothing after its first request is
//! cut off within about `http.header_timeout_ms`, so slow clients cannot pin connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_tests::edge_harness::InProcessEdge;

const HEADER_TIMEOUT_MS: u64 = 300;
/// How long a slow client keeps trickling; far beyond the deadline, so a missing deadline shows.
const TRICKLE_FOR: Duration = Duration::from_secs(8);
/// Closed no sooner than this: the close is the deadline's, not a protocol error's.
const NOT_BEFORE: Duration = Duration::from_millis(HEADER_TIMEOUT_MS / 2);
/// Closed within this of going idle (generous for a loaded 2-core machine; the trickle lasts 8 s).
const CUT_WITHIN: Duration = Duration::from_millis(HEADER_TIMEOUT_MS * 10);

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET /health` (static-table `:method GET`, `:scheme http`; literal `:path`,
/// `:authority`, no Huffman coding).
fn get_health_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 7];
    b.extend_from_slice(b"/health");
    b.extend_from_slice(&[0x01, 1, b'x']);
    b
}

/// A literal header `x-a: b` (new name, not indexed).
const TRICKLED_HEADER: [u8; 7] = [0x00, 3, b'x', b'-', b'a', 1, b'b'];

enum Seen {
    Frame { kind: u8, flags: u8, stream: u32 },
    Closed(Instant),
}

/// Reads the server's frames on a thread of its own until the connection closes.
fn read_frames(mut s: TcpStream) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut head = [0u8; 9];
        loop {
            if s.read_exact(&mut head).is_err() {
                let _ = tx.send(Seen::Closed(Instant::now()));
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).is_err() {
                let _ = tx.send(Seen::Closed(Instant::now()));
                return;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let _ = tx.send(Seen::Frame { kind: head[3], flags: head[4], stream });
        }
    });
    rx
}

/// An h2c connection that has had one complete `GET /health` answered on stream 1.
fn h2c_after_first_request(addr: SocketAddr) -> (TcpStream, mpsc::Receiver<Seen>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let frames = read_frames(s.try_clone().expect("clone"));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_health_block())).expect("request");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match frames.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Frame { kind: SETTINGS, flags, .. }) if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).expect("settings ack")
            }
            Ok(Seen::Frame { kind: HEADERS, stream: 1, .. }) => return (s, frames),
            Ok(Seen::Frame { .. }) => {}
            Ok(Seen::Closed(_)) => panic!("the server closed the connection before answering"),
            Err(_) => panic!("no response to the first request"),
        }
    }
}

/// Waits for the reader to see the connection close; the instant it did, or `None` if it was
/// still open after the trickle.
fn closed_at(frames: &mpsc::Receiver<Seen>, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        match frames.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Closed(at)) => return Some(at),
            Ok(Seen::Frame { .. }) => {}
            Err(_) => return None,
        }
    }
}

/// `closed` (since the slow part began) is the deadline's doing: not sooner, and in time.
fn assert_cut_off(what: &str, closed: Option<Duration>) {
    assert!(
        closed.is_some_and(|c| (NOT_BEFORE..CUT_WITHIN).contains(&c)),
        "{what}: connection closed after {closed:?}"
    );
}

async fn edge() -> InProcessEdge {
    InProcessEdge::start(|c| c.http.header_timeout_ms = HEADER_TIMEOUT_MS).await
}

/// On a kept-alive h2c connection, the second request's head trickles in: a `HEADERS` frame whose
/// bytes arrive one every 100 ms. (Trickling `CONTINUATION` frames instead would run into h2's
/// limit of 5 per head, an answer to floods, not to slowness.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_slowloris_after_a_first_request_is_cut_off() {
    let e = edge().await;
    let addr = e.addr();
    tokio::task::spawn_blocking(move || {
        let (mut s, frames) = h2c_after_first_request(addr);
        let started = Instant::now();
        let mut block = vec![0x82, 0x86];
        block.extend(TRICKLED_HEADER.iter().cycle().take(TRICKLED_HEADER.len() * 200));
        let headers = frame(HEADERS, END_STREAM | END_HEADERS, 3, &block);
        let mut sent = 0;
        while sent < headers.len() && started.elapsed() < TRICKLE_FOR && s.write_all(&headers[sent..=sent]).is_ok() {
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(sent < headers.len(), "the whole head was sent");
        let closed = closed_at(&frames, Duration::from_secs(1)).map(|at| at - started);
        assert_cut_off("trickled h2 head", closed);
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// A kept-alive h2c connection on which nothing more comes after the first response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_silent_after_a_first_request_is_cut_off() {
    let e = edge().await;
    let addr = e.addr();
    tokio::task::spawn_blocking(move || {
        let (_s, frames) = h2c_after_first_request(addr);
        let started = Instant::now();
        let closed = closed_at(&frames, TRICKLE_FOR).map(|at| at - started);
        assert_cut_off("silent h2 connection", closed);
    })
    .await
    .expect("client");
    e.shutdown().await;
}

/// The same on HTTP/1.1: a first request answered, then the next head trickles a byte at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_slowloris_after_a_first_request_is_cut_off() {
    let e = edge().await;
    let addr = e.addr();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let (tx, rx) = mpsc::channel();
        let mut reader = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = reader.read(&mut buf);
            let _ = tx.send(Instant::now());
        });
        let started = Instant::now();
        let mut head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a'));
        let mut closed_at = None;
        while closed_at.is_none() && started.elapsed() < TRICKLE_FOR {
            // A write to a closed connection may still succeed once; the reader sees the close.
            let _ = s.write_all(&[*head.next().unwrap_or(&b'a')]);
            closed_at = rx.recv_timeout(Duration::from_millis(100)).ok();
        }
        let closed = closed_at.map(|at| at - started);
        assert_cut_off("trickled HTTP/1.1 head", closed);
    })
    .await
    .expect("client");
    e.shutdown().await;
}
