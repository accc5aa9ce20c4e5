//! A UDP proxy between edge and core that can cut the network: pass, blackhole (drop every
//! packet both ways), or degrade (drop a share of packets and reorder others).
//!
//! One client (the edge's QUIC endpoint) at a time: replies go to the last address that sent.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    /// Drop `loss_pct` % of packets; hold back `reorder_pct` % and send them after the next one.
    Degraded {
        loss_pct: u32,
        reorder_pct: u32,
    },
}

#[derive(Default)]
struct State {
    blackhole: AtomicBool,
    loss_pct: AtomicU32,
    reorder_pct: AtomicU32,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

pub struct UdpProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("proxy front socket");
        let back = UdpSocket::bind("127.0.0.1:0").expect("proxy back socket");
        back.connect(target).expect("proxy connect");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().expect("clone"), back.try_clone().expect("clone"));
        let (s1, s2, c1, c2) = (state.clone(), state.clone(), client.clone(), client);
        let up = std::thread::spawn(move || {
            pump(
                &s1,
                |buf| {
                    let (n, from) = front.recv_from(buf)?;
                    *c1.lock().unwrap() = Some(from);
                    Ok(n)
                },
                |data| {
                    let _ = back.send(data);
                },
            )
        });
        let down = std::thread::spawn(move || {
            pump(
                &s2,
                |buf| back2.recv(buf),
                |data| {
                    if let Some(c) = *c2.lock().unwrap() {
                        let _ = front2.send_to(data, c);
                    }
                },
            )
        });
        Self { addr, state, threads: vec![up, down] }
    }

    pub fn set(&self, mode: Mode) {
        let (bh, loss, reorder) = match mode {
            Mode::Pass => (false, 0, 0),
            Mode::Blackhole => (true, 0, 0),
            Mode::Degraded { loss_pct, reorder_pct } => (false, loss_pct, reorder_pct),
        };
        self.state.loss_pct.store(loss, Ordering::Relaxed);
        self.state.reorder_pct.store(reorder, Ordering::Relaxed);
        self.state.blackhole.store(bh, Ordering::Relaxed);
    }

    /// (forwarded, dropped) packet counts.
    pub fn counts(&self) -> (u64, u64) {
        (self.state.forwarded.load(Ordering::Relaxed), self.state.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn pump(state: &State, mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>, mut send: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 65536];
    let mut held: Option<Vec<u8>> = None;
    let mut rng = rand::rng();
    while !state.stop.load(Ordering::Relaxed) {
        let n = match recv(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                // Idle: release a held-back packet rather than keep it forever.
                if let Some(h) = held.take()
                    && !state.blackhole.load(Ordering::Relaxed)
                {
                    send(&h);
                }
                continue;
            }
        };
        if state.blackhole.load(Ordering::Relaxed) || rng.random_range(0..100) < state.loss_pct.load(Ordering::Relaxed)
        {
            state.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        state.forwarded.fetch_add(1, Ordering::Relaxed);
        if held.is_none() && rng.random_range(0..100) < state.reorder_pct.load(Ordering::Relaxed) {
            held = Some(buf[..n].to_vec());
            continue;
        }
        send(&buf[..n]);
        if let Some(h) = held.take() {
            send(&h);
        }
    }
}
