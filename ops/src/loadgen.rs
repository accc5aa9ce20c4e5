//! `sluicectl loadgen`: an HTTP load generator for the edge's `POST /v1/events`.
//!
//! Request bodies are encoded (and gzipped) once before the run and shared by reference, so the
//! generator spends its CPU on HTTP, not on JSON: on a 2-core machine it shares the cores with the
//! server it measures.
//!
//! Two modes. Closed loop: each connection sends its next request as soon as the previous one is
//! answered (maximum throughput). Open loop: requests are due at fixed intended times (the rate
//! spread over the connections, wrk2 style) and latency is measured from the *intended* send time,
//! so a stalled server is charged for every request it delayed, not just the one it was serving
//! (coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

/// Largest latency the histograms hold (longer ones are clamped to it); runs are far shorter.
const MAX_LATENCY_MICROS: u64 = 120_000_000;
/// Distinct bodies prepared per tenant, so consecutive requests do not repeat one body.
const BODIES_PER_TENANT: usize = 16;
/// A request unanswered this long counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// In open-loop mode, requests still queued this long after the deadline are counted as
/// `not_sent` rather than sent, so an overloaded server cannot stretch a run without bound.
const MAX_OVERRUN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("loadgen only talks to loopback; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("at least one API key is needed")]
    NoKeys,
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("API key is not a valid header value")]
    BadKey,
    #[error("gzip: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("histogram: {0}")]
    Histogram(String),
}

/// What to send and how.
#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// The edge's HTTP address (loopback only).
    pub target: SocketAddr,
    /// One API key per tenant; requests rotate over them.
    pub api_keys: Vec<String>,
    /// Size of one event's JSON text in bytes.
    pub event_bytes: usize,
    pub events_per_request: usize,
    pub gzip: bool,
    /// Distinct `distinct_id` values across the generated events.
    pub distinct_ids: usize,
    pub connections: usize,
    /// How long requests are issued (after the warm-up).
    pub duration: Duration,
    /// Requests completing in this first stretch are not counted.
    pub warmup: Duration,
    /// `None`: closed loop. `Some(r)`: open loop at `r` events per second in total.
    pub rate_events_per_sec: Option<f64>,
    /// Keep (batch_id, time of the 202) of every accepted request, for freshness measurements.
    pub collect_batches: bool,
}

impl LoadgenOptions {
    /// 300-byte events, 100 per request, plain JSON, closed loop.
    pub fn new(target: SocketAddr, api_keys: Vec<String>) -> Self {
        Self {
            target,
            api_keys,
            event_bytes: 300,
            events_per_request: 100,
            gzip: false,
            distinct_ids: 10_000,
            connections: 16,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate_events_per_sec: None,
            collect_batches: false,
        }
    }
}

/// One pre-encoded request: headers and body, cloned by reference count per send.
#[derive(Clone)]
struct Prepared {
    headers: HeaderMap,
    body: Bytes,
}

/// The JSON text of one synthetic event, padded to exactly `size` bytes when `size` is larger
/// than the fixed fields.
pub fn event_json(size: usize, distinct_id: usize, seq: usize, timestamp: &str) -> String {
    let head = format!(
        r#"{{"event":"page_view","distinct_id":"user-{distinct_id:08}","timestamp":"{timestamp}","properties":{{"path":"/docs/{}","pad":""#,
        seq % 1000
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// Event `n` of a stream that looks like what posthog-js sends (a 10 000-user population, random
/// insert/session/window IDs, a few dozen pages, browsers, OSes and screens; about 600 bytes),
/// generated deterministically from `n`: a fair test of compression, which `x` padding is not.
pub fn posthog_like_event_json(n: usize, timestamp: &str) -> String {
    /// splitmix64: well-mixed bits from any counter.
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    fn uuid(x: u64, y: u64) -> String {
        let (a, b) = (mix(x), mix(y ^ 0xA5A5));
        format!(
            "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
    const EVENTS: [&str; 6] = ["$pageview", "$pageview", "$autocapture", "$pageleave", "signup_clicked", "$rageclick"];
    const PAGES: [&str; 8] = [
        "/",
        "/pricing",
        "/docs/getting-started",
        "/docs/api/events",
        "/blog",
        "/changelog",
        "/signup",
        "/account/settings",
    ];
    const BROWSERS: [(&str, &str); 4] =
        [("Chrome", "131.0"), ("Safari", "18.1"), ("Firefox", "133.0"), ("Microsoft Edge", "131.0")];
    const OSES: [&str; 4] = ["Mac OS X", "Windows", "iOS", "Android"];
    const SCREENS: [(u32, u32); 4] = [(1440, 900), (1920, 1080), (390, 844), (1536, 864)];
    let r = mix(n as u64);
    let user = r % 10_000;
    let pick = |shift: u32, len: usize| ((r >> shift) as usize) % len;
    let (browser, version) = BROWSERS[pick(8, BROWSERS.len())];
    let (width, height) = SCREENS[pick(12, SCREENS.len())];
    let page = PAGES[pick(16, PAGES.len())];
    format!(
        r#"{{"event":"{event}","distinct_id":"{distinct}","timestamp":"{timestamp}","properties":{{"$os":"{os}","$browser":"{browser}","$browser_version":{version},"$device_type":"Desktop","$current_url":"https://app.example.com{page}?ref={ref_id}","$host":"app.example.com","$pathname":"{page}","$screen_height":{height},"$screen_width":{width},"$lib":"web","$lib_version":"1.200.2","$insert_id":"{insert:016x}","$time":{time}.{ms:03},"$device_id":"{device}","$session_id":"{session}","$window_id":"{window}","$referrer":"$direct","$referring_domain":"$direct","token":"phc_bench"}}}}"#,
        event = EVENTS[pick(4, EVENTS.len())],
        distinct = uuid(user, user),
        os = OSES[pick(20, OSES.len())],
        ref_id = (r >> 24) % 1000,
        insert = mix(r),
        time = 1_767_225_600 + (n as u64) / 100,
        ms = r % 1000,
        device = uuid(user ^ 0xD, user),
        session = uuid(user ^ 0x5, (n as u64) / 5000),
        window = uuid(r, r),
    )
}

/// A JSON array body of `events` events; `first` numbers them so bodies differ.
pub fn batch_body(event_bytes: usize, events: usize, first: usize, distinct_ids: usize, timestamp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(events * (event_bytes + 1) + 2);
    out.push(b'[');
    for i in 0..events {
        if i > 0 {
            out.push(b',');
        }
        let n = first + i;
        out.extend_from_slice(event_json(event_bytes, n % distinct_ids.max(1), n, timestamp).as_bytes());
    }
    out.push(b']');
    out
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

fn prepare(opts: &LoadgenOptions) -> Result<(Vec<Prepared>, u64), LoadgenError> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| LoadgenError::Invalid(e.to_string()))?;
    let host = HeaderValue::from_str(&opts.target.to_string()).map_err(|e| LoadgenError::Invalid(e.to_string()))?;
    let mut prepared = Vec::with_capacity(opts.api_keys.len() * BODIES_PER_TENANT);
    let mut raw_bytes = 0u64;
    for b in 0..BODIES_PER_TENANT {
        let raw = batch_body(
            opts.event_bytes,
            opts.events_per_request,
            b * opts.events_per_request,
            opts.distinct_ids,
            &timestamp,
        );
        raw_bytes = raw.len() as u64;
        let body = Bytes::from(if opts.gzip { gzip(&raw)? } else { raw });
        for key in &opts.api_keys {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.clone());
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| LoadgenError::BadKey)?,
            );
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if opts.gzip {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            prepared.push(Prepared { headers, body: body.clone() });
        }
    }
    Ok((prepared, raw_bytes))
}

/// When the requests of one connection are due in open-loop mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenLoop {
    /// Intended send time of the connection's first request.
    pub first: Instant,
    pub interval: Duration,
}

impl OpenLoop {
    /// Spreads `requests_per_sec` evenly over `connections`, staggering them so the combined
    /// stream has one request every `1 / requests_per_sec`.
    pub fn new(start: Instant, requests_per_sec: f64, connection: usize, connections: usize) -> Self {
        let gap = Duration::from_secs_f64(1.0 / requests_per_sec);
        Self { first: start + gap.mul_f64(connection as f64), interval: gap.mul_f64(connections as f64) }
    }

    pub fn intended(&self, k: u64) -> Instant {
        self.first + self.interval.mul_f64(k as f64)
    }
}

/// Answer to one request as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub batch_id: Option<String>,
}

/// Sends the `i`-th prepared request on one connection. A transport error is returned as `Err`
/// (the implementation reconnects on its next call).
pub trait Exchange: Send {
    fn send(&mut self, i: usize) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// Counters of one connection (or, merged, of the run).
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency in microseconds of every 2xx answer.
    pub latency: Histogram<u64>,
    pub ok_requests: u64,
    /// Errors by HTTP status (`"503"`) or `"transport"`.
    pub errors: BTreeMap<String, u64>,
    /// (batch_id, time of the 202) when collected.
    pub batches: Vec<(String, Instant)>,
}

impl Tally {
    pub fn new() -> Result<Self, LoadgenError> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .map_err(|e| LoadgenError::Histogram(e.to_string()))?,
            ok_requests: 0,
            errors: BTreeMap::new(),
            batches: Vec::new(),
        })
    }

    pub fn merge(&mut self, other: Tally) -> Result<(), LoadgenError> {
        self.latency.add(&other.latency).map_err(|e| LoadgenError::Histogram(e.to_string()))?;
        self.ok_requests += other.ok_requests;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.batches.extend(other.batches);
        Ok(())
    }

    /// Latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }
}

/// The plan of one connection: which bodies it sends, until when, and at which pace.
#[derive(Debug, Clone, Copy)]
pub struct ConnPlan {
    /// Index of the first prepared body; the connection walks the list from there.
    pub first_body: usize,
    pub bodies: usize,
    /// Answers arriving before this are not counted.
    pub count_from: Instant,
    /// No request is started at or after this.
    pub deadline: Instant,
    pub pace: Option<OpenLoop>,
    pub collect_batches: bool,
}

/// Runs one connection's requests. Latency is measured from the intended send time in open-loop
/// mode and from the actual send time in closed-loop mode.
pub async fn drive<E: Exchange>(ex: &mut E, plan: ConnPlan, tally: &mut Tally) {
    let mut k: u64 = 0;
    loop {
        let sent = match plan.pace {
            Some(p) => {
                let due = p.intended(k);
                if due >= plan.deadline {
                    break;
                }
                if Instant::now() >= plan.deadline + MAX_OVERRUN {
                    let left = plan.deadline.saturating_duration_since(due).as_secs_f64() / p.interval.as_secs_f64();
                    *tally.errors.entry("not_sent".into()).or_default() += left.ceil() as u64;
                    break;
                }
                if Instant::now() < due {
                    // On schedule: the timer's own lateness (tokio rounds to 1 ms) is the
                    // generator's, so the clock starts when the request actually goes out.
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule because this connection's previous answer came late: that
                    // wait is the server's, so the clock started at the intended time.
                    due
                }
            }
            None => {
                let now = Instant::now();
                if now >= plan.deadline {
                    break;
                }
                now
            }
        };
        let body = (plan.first_body + k as usize) % plan.bodies.max(1);
        k += 1;
        let result = ex.send(body).await;
        let done = Instant::now();
        if done < plan.count_from {
            continue;
        }
        match result {
            Ok(o) if (200..300).contains(&o.status) => {
                tally.ok_requests += 1;
                tally.latency.saturating_record(done.saturating_duration_since(sent).as_micros() as u64);
                if plan.collect_batches
                    && let Some(id) = o.batch_id
                {
                    tally.batches.push((id, done));
                }
            }
            Ok(o) => *tally.errors.entry(o.status.to_string()).or_default() += 1,
            Err(_) => {
                *tally.errors.entry("transport".into()).or_default() += 1;
                // A refused connection would otherwise spin; the pause is short against any run.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Pulls `"batch_id":"…"` out of a 202 body without parsing the JSON.
pub fn batch_id_of(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = br#""batch_id":""#;
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok().map(str::to_string)
}

/// HTTP/1.1 keep-alive connection over hyper's low-level client: one request at a time, which
/// is what a closed-loop connection needs, and no pool bookkeeping per request.
struct HttpExchange {
    target: SocketAddr,
    uri: Uri,
    prepared: Arc<Vec<Prepared>>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    want_body: bool,
}

impl HttpExchange {
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(self.target).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            // The connection ends when the sender is dropped or the server closes; either way
            // the next send reports it.
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn exchange(&mut self, i: usize) -> Result<Outcome, String> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let p = self.prepared.get(i).ok_or("no such prepared body")?;
        let mut req = Request::new(Full::new(p.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = p.headers.clone();
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        self.sender = Some(sender);
        let batch_id = if self.want_body { batch_id_of(&body) } else { None };
        Ok(Outcome { status, batch_id })
    }
}

impl Exchange for HttpExchange {
    async fn send(&mut self, i: usize) -> Result<Outcome, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(i)).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err("timed out".into())
            }
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The counted window (warm-up excluded).
    pub elapsed: Duration,
    pub events_per_request: u64,
    /// Uncompressed JSON bytes of one request body.
    pub raw_body_bytes: u64,
    /// Bytes of one request body as sent (gzipped when gzip is on).
    pub wire_body_bytes: u64,
    pub tally: Tally,
}

impl LoadReport {
    pub fn accepted_events(&self) -> u64 {
        self.tally.ok_requests * self.events_per_request
    }

    fn per_sec(&self, n: f64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { n / secs } else { 0.0 }
    }

    pub fn events_per_sec(&self) -> f64 {
        self.per_sec(self.accepted_events() as f64)
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.per_sec(self.tally.ok_requests as f64)
    }

    /// Uncompressed event JSON accepted per second, in MB (10^6 bytes).
    pub fn raw_mb_per_sec(&self) -> f64 {
        self.per_sec((self.tally.ok_requests * self.raw_body_bytes) as f64) / 1e6
    }

    /// Request body bytes on the wire per second, in MB.
    pub fn wire_mb_per_sec(&self) -> f64 {
        self.per_sec((self.tally.ok_requests * self.wire_body_bytes) as f64) / 1e6
    }

    pub fn error_count(&self) -> u64 {
        self.tally.errors.values().sum()
    }

    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let t = &self.tally;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut s = format!(
            "{:.1} s: {:.0} events/s, {:.0} requests/s, {:.1} MB/s JSON ({:.1} MB/s on the wire)\n\
             latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} answers)\n",
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.requests_per_sec(),
            self.raw_mb_per_sec(),
            self.wire_mb_per_sec(),
            ms(t.quantile(0.5)),
            ms(t.quantile(0.95)),
            ms(t.quantile(0.99)),
            ms(Duration::from_micros(t.latency.max())),
            t.ok_requests,
        );
        if t.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            let list: Vec<_> = t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            s.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        s
    }
}

fn validate(opts: &LoadgenOptions) -> Result<(), LoadgenError> {
    if !opts.target.ip().is_loopback() {
        return Err(LoadgenError::NotLoopback(opts.target));
    }
    if opts.api_keys.is_empty() {
        return Err(LoadgenError::NoKeys);
    }
    if opts.connections == 0 || opts.events_per_request == 0 {
        return Err(LoadgenError::Invalid("connections and events per request must be at least 1".into()));
    }
    if let Some(r) = opts.rate_events_per_sec
        && !(r.is_finite() && r > 0.0)
    {
        return Err(LoadgenError::Invalid(format!("rate {r} must be a positive number of events per second")));
    }
    Ok(())
}

/// Runs the load on the current tokio runtime. `progress` is advanced once per second of run.
pub async fn run(opts: &LoadgenOptions, progress: &indicatif::ProgressBar) -> Result<LoadReport, LoadgenError> {
    validate(opts)?;
    let (prepared, raw_body_bytes) = prepare(opts)?;
    let wire_body_bytes = prepared.first().map_or(0, |p| p.body.len() as u64);
    let bodies = prepared.len();
    let prepared = Arc::new(prepared);
    let uri: Uri =
        "/v1/events".parse().map_err(|e: hyper::http::uri::InvalidUri| LoadgenError::Invalid(e.to_string()))?;
    let start = Instant::now();
    let count_from = start + opts.warmup;
    let deadline = count_from + opts.duration;
    let requests_per_sec = opts.rate_events_per_sec.map(|r| r / opts.events_per_request as f64);
    let mut tasks = Vec::with_capacity(opts.connections);
    for c in 0..opts.connections {
        let plan = ConnPlan {
            first_body: c * bodies / opts.connections,
            bodies,
            count_from,
            deadline,
            pace: requests_per_sec.map(|rps| OpenLoop::new(start, rps, c, opts.connections)),
            collect_batches: opts.collect_batches,
        };
        let mut ex = HttpExchange {
            target: opts.target,
            uri: uri.clone(),
            prepared: prepared.clone(),
            sender: None,
            want_body: opts.collect_batches,
        };
        let mut tally = Tally::new()?;
        tasks.push(tokio::spawn(async move {
            drive(&mut ex, plan, &mut tally).await;
            tally
        }));
    }
    let total = (opts.warmup + opts.duration).as_secs();
    progress.set_length(total.max(1));
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                progress.set_position(start.elapsed().as_secs().min(total));
            }
        })
    };
    let mut tally = Tally::new()?;
    for t in tasks {
        match t.await {
            Ok(part) => tally.merge(part)?,
            Err(e) => *tally.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    ticker.abort();
    let elapsed = Instant::now().saturating_duration_since(count_from);
    Ok(LoadReport {
        elapsed,
        events_per_request: opts.events_per_request as u64,
        raw_body_bytes,
        wire_body_bytes,
        tally,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posthog_like_events_parse_differ_and_repeat_per_number() {
        let ts = "2026-01-01T00:00:00Z";
        let (a, b) = (posthog_like_event_json(1, ts), posthog_like_event_json(2, ts));
        assert_ne!(a, b);
        assert_eq!(a, posthog_like_event_json(1, ts));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert!(v["properties"]["$insert_id"].is_string() && v["distinct_id"].is_string(), "{v}");
        assert!((400..900).contains(&a.len()), "{} bytes", a.len());
    }

    #[test]
    fn events_have_the_requested_size_and_parse() {
        for size in [300, 1024] {
            let e = event_json(size, 7, 3, "2026-01-01T00:00:00Z");
            assert_eq!(e.len(), size);
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            assert_eq!(v["distinct_id"], "user-00000007");
        }
        let body = batch_body(300, 100, 0, 10, "2026-01-01T00:00:00Z");
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.len(), 100);
        assert_eq!(v[13]["distinct_id"], "user-00000003");
    }

    #[test]
    fn open_loop_staggers_connections() {
        let t0 = Instant::now();
        // 100 requests/s over 4 connections: each connection every 40 ms, offset by 10 ms.
        let p = OpenLoop::new(t0, 100.0, 1, 4);
        assert_eq!(p.intended(0), t0 + Duration::from_millis(10));
        assert_eq!(p.intended(3), t0 + Duration::from_millis(130));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut t = Tally::new().unwrap();
        for us in 1..=1000 {
            t.latency.record(us).unwrap();
        }
        let p50 = t.quantile(0.5).as_micros() as i64;
        let p99 = t.quantile(0.99).as_micros() as i64;
        assert!((p50 - 500).abs() <= 1, "p50 {p50}");
        assert!((p99 - 990).abs() <= 1, "p99 {p99}");
    }

    #[test]
    fn batch_id_is_found_in_a_202_body() {
        assert_eq!(batch_id_of(br#"{"accepted":3,"batch_id":"0193-ab"}"#).as_deref(), Some("0193-ab"));
        assert_eq!(batch_id_of(br#"{"error":{}}"#), None);
    }

    /// A server that takes 5 ms per request: closed-loop latency would read 5 ms forever.
    struct Slow;
    impl Exchange for Slow {
        async fn send(&mut self, _: usize) -> Result<Outcome, String> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Outcome { status: 202, batch_id: Some("b".into()) })
        }
    }

    #[tokio::test]
    async fn open_loop_charges_queueing_to_the_server() {
        let start = Instant::now();
        // Due every 1 ms for 40 ms: request k waits for the k before it, so its latency measured
        // from its intended time grows by ~4 ms per request.
        let plan = ConnPlan {
            first_body: 0,
            bodies: 1,
            count_from: start,
            deadline: start + Duration::from_millis(40),
            pace: Some(OpenLoop::new(start, 1000.0, 0, 1)),
            collect_batches: true,
        };
        let mut tally = Tally::new().unwrap();
        drive(&mut Slow, plan, &mut tally).await;
        assert_eq!(tally.ok_requests, 40);
        assert_eq!(tally.batches.len(), 40);
        assert!(tally.quantile(0.0) >= Duration::from_millis(5));
        assert!(tally.latency.max() >= 120_000, "max {} µs", tally.latency.max());

        let mut closed = Tally::new().unwrap();
        let plan = ConnPlan { pace: None, deadline: Instant::now() + Duration::from_millis(40), ..plan };
        drive(&mut Slow, plan, &mut closed).await;
        // Far below the open loop's ≥ 120 ms, with room for a late wake-up on a busy machine.
        assert!(closed.latency.max() < 100_000, "closed loop measures service time only");
    }
}
