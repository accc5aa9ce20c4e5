//! Reading Prometheus text from an admin port.

use std::net::SocketAddr;

/// `GET /metrics` as text.
pub fn scrape(admin: SocketAddr) -> String {
    try_scrape(admin).expect("scraping /metrics")
}

/// `GET /metrics`, or `None` while the process is not (yet) listening.
pub fn try_scrape(admin: SocketAddr) -> Option<String> {
    let r = crate::http::request(admin, "GET", "/metrics", &[], b"").ok()?;
    assert_eq!(r.status, 200, "GET /metrics");
    Some(String::from_utf8(r.body).expect("metrics are UTF-8"))
}

/// The value of an unlabelled sample (`labels` empty), or of the first sample of `name` whose
/// label set contains `labels` verbatim (labels are rendered sorted by name).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let matches = match series.split_once('{') {
            Some((n, rest)) => n == name && rest.contains(labels),
            None => series == name && labels.is_empty(),
        };
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Scrapes until `name{labels}` equals `want` (metrics may trail what a consumer already saw by
/// a moment); panics with the last scrape after 10 s.
pub fn wait_for_sample(admin: SocketAddr, name: &str, labels: &str, want: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = try_scrape(admin).unwrap_or_default();
        if sample(&text, name, labels) == Some(want) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{name}{{{labels}}} never reached {want}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
