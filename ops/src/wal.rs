//! `sluicectl wal ls|inspect|verify|dump <dir>`: what a WAL directory holds, read offline (a live
//! edge's directory, or one copied off a dead node). Records are walked with
//! `sluice_edge::wal::scan` and decoded by `sluice_wire::record`; nothing here writes to the WAL.
//!
//! The JSON shapes (`--json`) are a stable interface for scripts: fields are only ever added.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sluice_edge::wal::Position;
use sluice_edge::wal::scan::{self, Item, SegmentFile};
use sluice_wire::{BatchRecord, Stream};

#[derive(Debug, thiserror::Error)]
pub enum WalToolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a WAL directory (no segment files and no ack watermark)")]
    NotAWal(PathBuf),
    #[error("writing output: {0}")]
    Output(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalToolError + '_ {
    move |source| WalToolError::Io { path: path.to_path_buf(), source }
}

/// A WAL directory opened for reading: its segment files and ack watermark.
pub struct WalDir {
    pub dir: PathBuf,
    pub segments: Vec<SegmentFile>,
    /// `None`: core never acknowledged anything (or the watermark file is missing).
    pub acked: Option<Position>,
}

impl WalDir {
    pub fn open(dir: &Path) -> Result<Self, WalToolError> {
        let segments = scan::segment_files(dir).map_err(io_err(dir))?;
        let acked = scan::acked_watermark(dir).map_err(io_err(dir))?;
        if segments.is_empty() && acked.is_none() {
            return Err(WalToolError::NotAWal(dir.to_path_buf()));
        }
        Ok(Self { dir: dir.to_path_buf(), segments, acked })
    }

    /// Sequence number of the last live segment: the only place a torn tail is expected.
    fn last_live(&self) -> Option<u64> {
        self.segments.iter().filter(|s| !s.quarantined).map(|s| s.seq).max()
    }

    /// Whether the record at (`seq`, `offset`) of a live segment was acknowledged by core.
    pub fn is_acked(&self, seq: u64, offset: u64) -> bool {
        self.acked.is_some_and(|a| Position { segment: seq, offset } < a)
    }

    /// Calls `f` with every item of every segment (quarantined ones too), in order.
    pub fn walk(&self, mut f: impl FnMut(&SegmentFile, &Item)) -> Result<(), WalToolError> {
        for seg in &self.segments {
            let data = std::fs::read(&seg.path).map_err(io_err(&seg.path))?;
            for item in scan::Records::new(&data) {
                f(seg, &item);
            }
        }
        Ok(())
    }
}

/// One segment file, as `wal ls` lists it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SegmentInfo {
    pub seq: u64,
    pub file: String,
    pub bytes: u64,
    /// `live`, or `quarantined` (a `*.corrupt` file the forwarder set aside).
    pub state: &'static str,
    pub records: u64,
    pub events: u64,
    /// Records core has not acknowledged (always all of them in a quarantined segment).
    pub unacked_records: u64,
    pub unacked_bytes: u64,
    /// Damaged regions (checksum failures, torn tail).
    pub damaged: u64,
    pub oldest_received_at_ms: Option<u64>,
    pub newest_received_at_ms: Option<u64>,
}

/// Records and events of one tenant/env.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TenantInfo {
    pub tenant: String,
    pub env: String,
    pub records: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub unacked_records: u64,
    pub unacked_events: u64,
}

/// `wal inspect`: the whole directory summed up.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub dir: String,
    pub acked: Option<Position>,
    pub segments: Vec<SegmentInfo>,
    pub totals: SegmentInfo,
    pub tenants: Vec<TenantInfo>,
}

fn min_opt(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn max_opt(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// Reads every record of the directory once and sums it up.
pub fn inspect(dir: &Path) -> Result<Inspection, WalToolError> {
    let wal = WalDir::open(dir)?;
    let mut segments: BTreeMap<(u64, bool), SegmentInfo> = BTreeMap::new();
    let mut tenants: BTreeMap<(String, String), TenantInfo> = BTreeMap::new();
    for seg in &wal.segments {
        segments.insert(
            (seg.seq, seg.quarantined),
            SegmentInfo {
                seq: seg.seq,
                file: seg.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                bytes: seg.bytes,
                state: if seg.quarantined { "quarantined" } else { "live" },
                ..SegmentInfo::default()
            },
        );
    }
    wal.walk(|seg, item| {
        let Some(info) = segments.get_mut(&(seg.seq, seg.quarantined)) else { return };
        match item {
            Item::Record { offset, len, record } => {
                let unacked = seg.quarantined || !wal.is_acked(seg.seq, *offset);
                let events = record.events.len() as u64;
                info.records += 1;
                info.events += events;
                info.oldest_received_at_ms = min_opt(info.oldest_received_at_ms, record.received_at_ms);
                info.newest_received_at_ms = max_opt(info.newest_received_at_ms, record.received_at_ms);
                if unacked {
                    info.unacked_records += 1;
                    info.unacked_bytes += len;
                }
                let t = tenants.entry((record.tenant.clone(), record.env.clone())).or_insert_with(|| TenantInfo {
                    tenant: record.tenant.clone(),
                    env: record.env.clone(),
                    ..TenantInfo::default()
                });
                t.records += 1;
                match record.stream {
                    // Accepted events, whichever lane they go to (`dump` shows the stream).
                    Stream::Events | Stream::Overflow => t.events += events,
                    Stream::DeadLetter => t.dead_letters += events,
                }
                if unacked {
                    t.unacked_records += 1;
                    t.unacked_events += events;
                }
            }
            Item::Corrupt { .. } => info.damaged += 1,
        }
    })?;
    let segments: Vec<SegmentInfo> = segments.into_values().collect();
    let mut totals = SegmentInfo { file: "total".into(), state: "total", ..SegmentInfo::default() };
    for s in &segments {
        totals.bytes += s.bytes;
        totals.records += s.records;
        totals.events += s.events;
        totals.unacked_records += s.unacked_records;
        totals.unacked_bytes += s.unacked_bytes;
        totals.damaged += s.damaged;
        if let Some(o) = s.oldest_received_at_ms {
            totals.oldest_received_at_ms = min_opt(totals.oldest_received_at_ms, o);
        }
        if let Some(n) = s.newest_received_at_ms {
            totals.newest_received_at_ms = max_opt(totals.newest_received_at_ms, n);
        }
    }
    Ok(Inspection {
        dir: dir.display().to_string(),
        acked: wal.acked,
        segments,
        totals,
        tenants: tenants.into_values().collect(),
    })
}

/// One damaged region found by `wal verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub segment: u64,
    pub file: String,
    /// Byte offset in the segment file where the bad record starts.
    pub offset: u64,
    /// Bytes passed over to the next valid record (or the end of the file).
    pub bytes: u64,
    /// `torn_tail`: garbage after the last valid record of the last live segment, left by a
    /// crash mid-append; never acknowledged, and the edge truncates it on start. `corrupt`:
    /// anything else; acknowledged data was damaged.
    pub kind: &'static str,
    pub error: String,
}

/// `wal verify`: every record's checksum and decoding.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub dir: String,
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// No `corrupt` damage (a torn tail alone is expected after a crash).
    pub ok: bool,
    pub damage: Vec<Damage>,
}

pub fn verify(dir: &Path) -> Result<Verification, WalToolError> {
    let wal = WalDir::open(dir)?;
    let last_live = wal.last_live();
    let (mut records, mut damage) = (0u64, Vec::new());
    wal.walk(|seg, item| match item {
        Item::Record { .. } => records += 1,
        Item::Corrupt { offset, skipped, error, tail } => damage.push(Damage {
            segment: seg.seq,
            file: seg.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            offset: *offset,
            bytes: *skipped,
            kind: if *tail && !seg.quarantined && Some(seg.seq) == last_live { "torn_tail" } else { "corrupt" },
            error: error.to_string(),
        }),
    })?;
    Ok(Verification {
        dir: dir.display().to_string(),
        segments: wal.segments.len() as u64,
        records,
        bytes: wal.segments.iter().map(|s| s.bytes).sum(),
        ok: damage.iter().all(|d| d.kind == "torn_tail"),
        damage,
    })
}

/// Which records `wal dump` (and `replay --to-file`) print.
#[derive(Debug, Clone, Default)]
pub struct DumpFilter {
    pub tenant: Option<String>,
    pub batch_id: Option<uuid::Uuid>,
    /// `received_at` in `[since_ms, until_ms)`.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only records core has not acknowledged.
    pub unacked_only: bool,
}

impl DumpFilter {
    pub fn matches(&self, r: &BatchRecord, acked: bool) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == r.tenant)
            && self.batch_id.is_none_or(|b| b == r.batch_id)
            && self.since_ms.is_none_or(|s| r.received_at_ms >= s)
            && self.until_ms.is_none_or(|u| r.received_at_ms < u)
            && !(self.unacked_only && acked)
    }
}

/// One NDJSON line of `wal dump`: a record with its place in the WAL and its events as JSON.
pub fn record_json(segment: u64, offset: u64, acked: bool, r: &BatchRecord) -> serde_json::Value {
    let events: Vec<serde_json::Value> = r
        .events
        .iter()
        .map(|e| {
            let json = r.event_json(e);
            let event = serde_json::from_slice::<serde_json::Value>(&json)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&json).into_owned()));
            serde_json::json!({ "event_id": e.event_id, "event": event })
        })
        .collect();
    serde_json::json!({
        "segment": segment,
        "offset": offset,
        "acked": acked,
        "batch_id": r.batch_id,
        "tenant": r.tenant,
        "env": r.env,
        "region": r.region,
        "received_at_ms": r.received_at_ms,
        "stream": r.stream.as_str(),
        "traceparent": r.traceparent,
        "events": events,
    })
}

/// Prints the matching records as NDJSON; returns how many. Damaged regions are skipped (see
/// `wal verify`); records after them are still printed.
pub fn dump(dir: &Path, filter: &DumpFilter, out: &mut impl Write) -> Result<u64, WalToolError> {
    let wal = WalDir::open(dir)?;
    let mut n = 0u64;
    let mut failed = None;
    wal.walk(|seg, item| {
        let Item::Record { offset, record, .. } = item else { return };
        let acked = !seg.quarantined && wal.is_acked(seg.seq, *offset);
        if failed.is_some() || !filter.matches(record, acked) {
            return;
        }
        let line = record_json(seg.seq, *offset, acked, record);
        if let Err(e) =
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n"))
        {
            failed = Some(e);
            return;
        }
        n += 1;
    })?;
    match failed {
        Some(e) => Err(WalToolError::Output(e)),
        None => Ok(n),
    }
}

/// Epoch milliseconds as RFC 3339 (UTC), for the human-readable tables.
pub fn rfc3339(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses `--since`/`--until`: epoch milliseconds or an RFC 3339 time.
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{s}` is neither epoch milliseconds nor RFC 3339: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("`{s}` is before 1970"))
}

/// `wal ls` as a table.
pub fn render_ls(i: &Inspection) -> String {
    let mut out = format!(
        "{:<26} {:>12} {:>8} {:>8} {:>9} {:>8}  {:<25} {:<25} state\n",
        "segment", "bytes", "records", "events", "unacked", "damaged", "oldest received_at", "newest received_at"
    );
    for s in i.segments.iter().chain(std::iter::once(&i.totals)) {
        out.push_str(&format!(
            "{:<26} {:>12} {:>8} {:>8} {:>9} {:>8}  {:<25} {:<25} {}\n",
            s.file,
            s.bytes,
            s.records,
            s.events,
            s.unacked_records,
            s.damaged,
            rfc3339(s.oldest_received_at_ms),
            rfc3339(s.newest_received_at_ms),
            s.state
        ));
    }
    out.push_str(&format!("acked watermark: {}\n", render_pos(i.acked)));
    out
}

fn render_pos(p: Option<Position>) -> String {
    p.map_or("none (nothing acknowledged yet)".into(), |p| format!("segment {} offset {}", p.segment, p.offset))
}

/// `wal inspect` as text.
pub fn render_inspect(i: &Inspection) -> String {
    let t = &i.totals;
    let mut out = format!(
        "WAL {}\n  segments: {} ({} bytes), records: {}, events: {}, damaged regions: {}\n  \
         unacked: {} records, {} bytes\n  acked watermark: {}\n  received_at: {} .. {}\n  tenants:\n",
        i.dir,
        i.segments.len(),
        t.bytes,
        t.records,
        t.events,
        t.damaged,
        t.unacked_records,
        t.unacked_bytes,
        render_pos(i.acked),
        rfc3339(t.oldest_received_at_ms),
        rfc3339(t.newest_received_at_ms),
    );
    for tn in &i.tenants {
        out.push_str(&format!(
            "    {}/{}: {} records, {} events, {} dead letters; unacked {} records, {} events\n",
            tn.tenant, tn.env, tn.records, tn.events, tn.dead_letters, tn.unacked_records, tn.unacked_events
        ));
    }
    out
}

/// `wal verify` as text.
pub fn render_verify(v: &Verification) -> String {
    let mut out = format!("verified {} records in {} segments ({} bytes)\n", v.records, v.segments, v.bytes);
    for d in &v.damage {
        out.push_str(&format!(
            "{}: {} at offset {} ({} bytes): {}\n",
            d.file,
            if d.kind == "torn_tail" { "torn tail (never acknowledged; truncated on start)" } else { "CORRUPT" },
            d.offset,
            d.bytes,
            d.error
        ));
    }
    out.push_str(if v.ok { "OK\n" } else { "CORRUPTION FOUND\n" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_epoch_ms_or_rfc3339() {
        assert_eq!(parse_time_ms("1764064800000"), Ok(1_764_064_800_000));
        assert_eq!(parse_time_ms("2025-11-25T10:00:00Z"), Ok(1_764_064_800_000));
        assert!(parse_time_ms("yesterday").is_err());
        assert_eq!(rfc3339(Some(1_764_064_800_000)), "2025-11-25T10:00:00Z");
    }

    /// `wal dump` (and `replay --to-file`) show each event as produced: the batch's shared
    /// members, which version-3 records store once, are back in every event.
    #[test]
    fn dumped_events_carry_the_shared_members() {
        let r = BatchRecord {
            batch_id: uuid::Uuid::from_u128(1),
            tenant: "acme".into(),
            env: "prod".into(),
            region: "eu".into(),
            received_at_ms: 5,
            stream: Stream::Events,
            events: vec![sluice_wire::EventRecord { event_id: "e1".into(), json: br#"{"event_id":"e1"}"#.to_vec() }],
            traceparent: None,
            shared: br#","received_at":5,"tenant":"acme""#.to_vec(),
        };
        let line = record_json(1, 0, false, &r);
        assert_eq!(
            line["events"][0]["event"],
            serde_json::json!({"event_id": "e1", "received_at": 5, "tenant": "acme"})
        );
    }
}
