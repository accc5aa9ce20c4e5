//! The zero-loss ledger: a load driver that records every event a `202` acknowledged (and every
//! request answered otherwise, or not at all), a collector that reads the Kafka topic while the
//! test runs, and a checker that reports `accepted, delivered, lost, duplicated, unexpected`.
//!
//! Classification of an event ID seen in Kafka:
//! - **delivered**: its request got a `202`. `lost` = accepted events never delivered.
//! - **in doubt**: its request got no answer (connection reset, edge killed mid-request); it may
//!   or may not have been persisted, so it may appear or not. Counted, never an error.
//! - **unexpected**: anything else: an event of a request answered `4xx`/`5xx`, or an ID the
//!   driver never sent. A `503` means "not persisted"; such an event in Kafka breaks the contract.
//!
//! `duplicated` counts extra copies (an ID seen n times adds n-1).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Status(u16),
    NoAnswer,
}

#[derive(Default)]
struct Book {
    accepted: HashSet<String>,
    in_doubt: HashSet<String>,
    refused: HashSet<String>,
    requests_by_status: BTreeMap<String, u64>,
    last_accept: Option<Instant>,
    /// `503`/`429` answers without a `Retry-After` header (a contract violation).
    missing_retry_after: u64,
}

/// Every event the driver sent, by how its request was answered. Shared by driver threads.
#[derive(Clone, Default)]
pub struct Ledger {
    book: Arc<Mutex<Book>>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, ids: &[String], outcome: Outcome, retry_after: Option<&str>) {
        self.record_answer(ids, outcome, retry_after, false);
    }

    /// [`Ledger::record`]; `in_doubt` files a refusal's events as in doubt rather than refused:
    /// `503 replica_unavailable` means the origin cut the batch back, but a replica whose ack was
    /// lost with the link may hold it and forward it if it takes over.
    fn record_answer(&self, ids: &[String], outcome: Outcome, retry_after: Option<&str>, in_doubt: bool) {
        let mut b = self.book.lock().unwrap();
        let key = match outcome {
            Outcome::Accepted => "202".to_string(),
            Outcome::Status(s) => s.to_string(),
            Outcome::NoAnswer => "no answer".to_string(),
        };
        *b.requests_by_status.entry(key).or_default() += 1;
        match outcome {
            Outcome::Accepted => {
                b.accepted.extend(ids.iter().cloned());
                b.last_accept = Some(Instant::now());
            }
            Outcome::NoAnswer => b.in_doubt.extend(ids.iter().cloned()),
            Outcome::Status(s) => {
                if (s == 503 || s == 429) && retry_after.is_none() {
                    b.missing_retry_after += 1;
                }
                if in_doubt {
                    b.in_doubt.extend(ids.iter().cloned());
                } else {
                    b.refused.extend(ids.iter().cloned());
                }
            }
        }
    }

    /// Posts one batch and records the answer.
    pub fn post(&self, addr: SocketAddr, key: &str, ids: Vec<String>) -> Outcome {
        let body = body_for(&ids);
        let auth = format!("Bearer {key}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (outcome, retry_after, in_doubt) = match crate::http::request(addr, "POST", "/v1/events", &headers, &body) {
            Ok(r) if r.status == 202 => (Outcome::Accepted, None, false),
            Ok(r) => {
                let code =
                    serde_json::from_slice::<serde_json::Value>(&r.body).ok().map(|v| v["error"]["code"].clone());
                let unreplicated = r.status == 503 && code.is_some_and(|c| c == "replica_unavailable");
                (Outcome::Status(r.status), r.header("retry-after").map(str::to_string), unreplicated)
            }
            Err(_) => (Outcome::NoAnswer, None, false),
        };
        self.record_answer(&ids, outcome, retry_after.as_deref(), in_doubt);
        outcome
    }

    pub fn accepted(&self) -> HashSet<String> {
        self.book.lock().unwrap().accepted.clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.book.lock().unwrap().accepted.len()
    }

    pub fn requests(&self, status: &str) -> u64 {
        self.book.lock().unwrap().requests_by_status.get(status).copied().unwrap_or(0)
    }

    pub fn missing_retry_after(&self) -> u64 {
        self.book.lock().unwrap().missing_retry_after
    }

    pub fn last_accept(&self) -> Option<Instant> {
        self.book.lock().unwrap().last_accept
    }
}

/// A JSON array body with one event per ID.
pub fn body_for(ids: &[String]) -> Vec<u8> {
    let events: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"event": "page_view", "distinct_id": "user-7", "event_id": id, "timestamp": "2026-11-25T10:00:00Z", "properties": {"path": "/ledger", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}))
        .collect();
    serde_json::to_vec(&events).expect("json")
}

/// Steady load: `workers` threads each posting a batch of `batch` events, then pausing `pause`.
pub struct Driver {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Driver {
    pub fn start(
        ledger: &Ledger,
        addr: SocketAddr,
        key: &str,
        prefix: &str,
        workers: usize,
        batch: usize,
        pause: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..workers)
            .map(|w| {
                let (ledger, key, prefix, stop, sent) =
                    (ledger.clone(), key.to_string(), prefix.to_string(), stop.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let ids: Vec<String> = (0..batch).map(|i| format!("{prefix}-w{w}-r{seq}-e{i}")).collect();
                        seq += 1;
                        let outcome = ledger.post(addr, &key, ids);
                        sent.fetch_add(1, Ordering::Relaxed);
                        // Back off a little more when the edge is not there, as an SDK would.
                        let wait =
                            if outcome == Outcome::Accepted { pause } else { pause.max(Duration::from_millis(50)) };
                        std::thread::sleep(wait);
                    }
                })
            })
            .collect();
        Self { stop, sent, threads }
    }

    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more requests were sent (bounded by `timeout`).
    pub fn wait_requests(&self, n: u64, timeout: Duration) {
        let target = self.requests_sent() + n;
        let deadline = Instant::now() + timeout;
        while self.requests_sent() < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One delivered message as the collector saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub count: u64,
    pub first_at: Instant,
    pub batch_id: String,
}

#[derive(Default)]
struct Collected {
    by_id: HashMap<String, Seen>,
    malformed: u64,
}

/// Consumes a topic from the beginning in a background thread for the whole test.
pub struct Collector {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Collected>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    pub fn start(brokers: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("sluice-ledger-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        crate::kafka::assign_from_beginning(&consumer, topic, Duration::from_secs(30));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Collected::default()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let header = |name: &str| {
                            m.headers().and_then(|h| {
                                h.iter()
                                    .find(|x| x.key == name)
                                    .and_then(|x| x.value)
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                            })
                        };
                        let payload: Option<serde_json::Value> =
                            m.payload().and_then(|p| serde_json::from_slice(p).ok());
                        let id = header("event_id");
                        let mut c = seen2.lock().unwrap();
                        // Garbage must never be forwarded: a payload that is not the JSON event
                        // its header names is counted as malformed.
                        let ok = matches!((&payload, &id), (Some(p), Some(id)) if p["event_id"] == id.as_str());
                        if !ok {
                            c.malformed += 1;
                        }
                        if let Some(id) = id {
                            let batch_id = header("batch_id").unwrap_or_default();
                            c.by_id.entry(id).and_modify(|s| s.count += 1).or_insert(Seen {
                                count: 1,
                                first_at: Instant::now(),
                                batch_id,
                            });
                        }
                    }
                    Some(Err(e)) => eprintln!("ledger consumer: {e}"),
                    None => {}
                }
            }
        });
        Self { stop, seen, thread: Some(thread) }
    }

    /// Polls until every ID in `ids` was seen or `timeout` passes; returns whether all were.
    pub fn wait_for(&self, ids: &HashSet<String>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = {
                let c = self.seen.lock().unwrap();
                ids.iter().filter(|id| !c.by_id.contains_key(*id)).count()
            };
            if missing == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                eprintln!("ledger: {missing} accepted events still missing after {timeout:?}");
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many of `ids` have not been seen yet.
    pub fn missing(&self, ids: &HashSet<String>) -> usize {
        let c = self.seen.lock().unwrap();
        ids.iter().filter(|id| !c.by_id.contains_key(*id)).count()
    }

    /// Distinct event IDs seen so far.
    pub fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().by_id.len()
    }

    /// Keeps consuming for `grace` (to catch late duplicates), then stops.
    pub fn finish(mut self, grace: Duration) -> (HashMap<String, Seen>, u64) {
        std::thread::sleep(grace);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let c = std::mem::take(&mut *self.seen.lock().unwrap());
        (c.by_id, c.malformed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The checker's verdict for one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub requests: BTreeMap<String, u64>,
    pub accepted: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: u64,
    /// Distinct batches with at least one duplicated event.
    pub duplicated_batches: usize,
    pub unexpected: usize,
    pub in_doubt_delivered: usize,
    /// Accepted events the test itself destroyed or set aside (injected corruption): in a
    /// quarantined segment for an operator, never forwarded. Not counted as lost.
    pub excluded: usize,
    pub malformed: u64,
    pub recovery: Option<Duration>,
    pub lost_sample: Vec<String>,
}

impl Report {
    pub fn table_header() -> &'static str {
        "| scenario | requests (202 / 4xx-5xx / no answer) | accepted | delivered | lost | duplicated | unexpected | in doubt, delivered | quarantined | recovery |\n|---|---|---|---|---|---|---|---|---|---|"
    }

    pub fn row(&self) -> String {
        let ok = self.requests.get("202").copied().unwrap_or(0);
        let none = self.requests.get("no answer").copied().unwrap_or(0);
        let refused: u64 =
            self.requests.iter().filter(|(k, _)| *k != "202" && *k != "no answer").map(|(_, v)| *v).sum();
        let codes: Vec<String> = self
            .requests
            .iter()
            .filter(|(k, _)| *k != "202" && *k != "no answer")
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        let refused = if codes.is_empty() { refused.to_string() } else { format!("{refused} ({})", codes.join(", ")) };
        format!(
            "| {} | {ok} / {refused} / {none} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.accepted,
            self.delivered,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.in_doubt_delivered,
            self.excluded,
            self.recovery.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
        )
    }

    /// Prints the table and appends the row to `$SLUICE_LEDGER_OUT` when set. Written to the
    /// stderr handle directly, not with `eprintln!`, so the test harness does not capture it:
    /// every run shows its figures, passing or not.
    pub fn print(&self) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\nledger\n{}\n{}\n", Self::table_header(), self.row());
        if let Ok(path) = std::env::var("SLUICE_LEDGER_OUT")
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = writeln!(f, "{}", self.row());
        }
    }

    /// The zero-loss assertions: nothing lost, nothing refused or invented showed up, no garbage.
    pub fn assert_no_loss(&self) {
        assert_eq!(self.lost, 0, "{}: lost accepted events, e.g. {:?}", self.scenario, self.lost_sample);
        assert_eq!(self.unexpected, 0, "{}: events that were never acknowledged reached Kafka", self.scenario);
        assert_eq!(self.malformed, 0, "{}: malformed messages reached Kafka", self.scenario);
        assert!(self.accepted > 0, "{}: the scenario accepted nothing, so it proves nothing", self.scenario);
    }
}

/// Compares what the ledger accepted with what the collector saw.
pub fn check(
    scenario: &str,
    ledger: &Ledger,
    seen: &HashMap<String, Seen>,
    malformed: u64,
    excluded: &HashSet<String>,
    healed_at: Option<Instant>,
) -> Report {
    let b = ledger.book.lock().unwrap();
    let mut r = Report {
        scenario: scenario.to_string(),
        requests: b.requests_by_status.clone(),
        accepted: b.accepted.len(),
        malformed,
        ..Report::default()
    };
    let mut last_delivery: Option<Instant> = None;
    for id in &b.accepted {
        match seen.get(id) {
            Some(s) => {
                r.delivered += 1;
                last_delivery = Some(last_delivery.map_or(s.first_at, |l| l.max(s.first_at)));
            }
            None if excluded.contains(id) => r.excluded += 1,
            None => {
                r.lost += 1;
                if r.lost_sample.len() < 10 {
                    r.lost_sample.push(id.clone());
                }
            }
        }
    }
    let mut dup_batches = HashSet::new();
    for (id, s) in seen {
        if s.count > 1 {
            r.duplicated += s.count - 1;
            dup_batches.insert(s.batch_id.clone());
        }
        if b.accepted.contains(id) {
            continue;
        }
        if b.in_doubt.contains(id) {
            r.in_doubt_delivered += 1;
        } else {
            r.unexpected += 1;
        }
    }
    r.duplicated_batches = dup_batches.len();
    if let (Some(h), Some(l)) = (healed_at, last_delivery) {
        r.recovery = Some(l.saturating_duration_since(h));
    }
    r
}

/// `SLUICE_SOAK=1` selects the long profile.
pub fn soak() -> bool {
    std::env::var("SLUICE_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}
