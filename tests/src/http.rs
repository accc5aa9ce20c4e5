//! A deliberately tiny HTTP/1.1 client (one request per connection) so tests control every byte.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| std::io::Error::other(format!("unparseable response: {}", String::from_utf8_lossy(&raw))))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// `POST /v1/events` with a bearer key.
pub fn post_events(addr: SocketAddr, key: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    request(addr, "POST", "/v1/events", &headers, body).expect("POST /v1/events")
}

/// A JSON array body of `n` valid events named `<prefix>-<i>` with client event IDs.
pub fn events_body(prefix: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"event": "page_view", "distinct_id": "user-7", "event_id": id, "timestamp": "2026-11-25T10:00:00Z", "properties": {"path": "/"}}))
        .collect();
    (serde_json::to_vec(&events).expect("json"), ids)
}

/// `data` gzipped, as a client sends it with `Content-Encoding: gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_at(data, 0)
}

/// `data` gzipped with `mtime` in the header: SDKs compress every attempt again, and gzip stamps
/// the time, so two attempts of one body differ on the wire.
pub fn gzip_at(data: &[u8], mtime: u32) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(mtime).write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// `POST /v1/events` of `n` valid events (see [`events_body`]) as JSON.
pub fn post_batch(addr: SocketAddr, key: &str, prefix: &str, n: usize) -> Response {
    let (body, _) = events_body(prefix, n);
    post_events(addr, key, "application/json", &[], &body)
}

impl Response {
    /// `ok` for a 2xx, else the `error.code` of the JSON body.
    pub fn code(&self) -> String {
        if (200..300).contains(&self.status) {
            return "ok".into();
        }
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}
