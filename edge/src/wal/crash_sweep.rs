//! The crash sweep: scripted workloads on the simulated disk ([`super::sim`]), the power cut at
//! every storage operation in turn, each cut with every [`Loss`] model, then recovery and the
//! checks a `202` relies on:
//! - every acknowledged append that core had not acknowledged is there after recovery, byte for
//!   byte, at the position it was acknowledged at (what a `202` promises);
//! - everything recovery hands the forwarder is a record some append wrote (no garbage);
//! - the watermark never points past what core acknowledged (and so past synced data);
//! - recovery is idempotent: the power is cut again at every operation of recovery, and a second
//!   recovery finds the same records.
//!
//! Plus failpoints on the same code paths: `EIO` on `fdatasync` (the latch), a short write then
//! `ENOSPC` inside a group, `EIO` on a read during recovery.
//!
//! CI runs every crash point (a few seconds); a failure names the workload, the crash point and
//! the loss model, and `SLUICE_CRASH_REPLAY=<workload>:<crash point>:<loss>` runs that case alone.
//! `SLUICE_SOAK=1` sweeps recovery crash points under every loss model instead of one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_wire::record::check_record;

use super::mirror::{Mirror, MirrorAppend};
use super::sim::{Fault, FaultError, Loss, Op, Plan, SimDisk};
use super::{Position, ReadOutcome, Wal, WalError, WalReader, test_record, test_record_compressed};
use crate::config::{Preallocate, WalConfig};

const DIR: &str = "/sim/wal";

/// `preallocate` is `Off` or `Inline`: a background thread would make the order of operations,
/// and so the crash points, depend on timing.
fn config(preallocate: Preallocate) -> WalConfig {
    // 16 KiB segments: the records below rotate every two or three appends.
    WalConfig {
        dir: PathBuf::from(DIR),
        segment_bytes: 16 * 1024,
        budget_bytes: 1 << 30,
        max_group_bytes: 1 << 20,
        preallocate,
        ..WalConfig::default()
    }
}

/// One record of about `size` bytes whose events carry `tag`.
/// Odd tags are compressed records (version 5), so every crash case meets both formats; their
/// padding is hex noise that compresses about 2:1, for a record of about `size` bytes on disk.
fn record(tag: u64, size: usize) -> Vec<u8> {
    let room = size.saturating_sub(120);
    let pad = if !tag.is_multiple_of(2) {
        let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..2 * room)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x % 16) as usize])
            })
            .collect()
    } else {
        "x".repeat(room)
    };
    let json = format!(r#"{{"tag":{tag},"pad":"{pad}"}}"#).into_bytes();
    let events = vec![sluice_wire::EventRecord { event_id: format!("e{tag}"), json }];
    if tag.is_multiple_of(2) {
        return test_record(tag, events);
    }
    let record = test_record_compressed(tag, events);
    assert!(sluice_wire::record::is_compressed(&record), "tag {tag} of {size} bytes compresses");
    record
}

#[derive(Debug, Clone)]
enum Step {
    /// One group commit of these bytes (one record, or several back to back).
    Append(Vec<u8>),
    /// Core acknowledged everything up to the end of the `n`th append.
    Ack(usize),
}

struct Workload {
    name: String,
    steps: Vec<Step>,
    preallocate: Preallocate,
}

impl Workload {
    fn config(&self) -> WalConfig {
        config(self.preallocate)
    }
}

/// Appends of mixed sizes (some spanning pages, some groups of several records), rotations, and
/// acks that delete segments and move the watermark.
/// Each runs twice: segments that grow, and segments prepared ahead as zeros (`prealloc`).
fn workloads() -> Vec<Workload> {
    let mut out = Vec::new();
    for (name, steps) in scripts() {
        for (suffix, preallocate) in [("", Preallocate::Off), ("+prepared", Preallocate::Inline)] {
            out.push(Workload { name: format!("{name}{suffix}"), steps: steps.clone(), preallocate });
        }
    }
    out
}

fn scripts() -> Vec<(&'static str, Vec<Step>)> {
    let group = |tags: &[u64]| Step::Append(tags.iter().flat_map(|&t| record(t, 1500)).collect());
    vec![
        (
            "appends-rotation-acks",
            vec![
                Step::Append(record(1, 3000)),
                Step::Append(record(2, 9000)),
                group(&[3, 4, 5]),
                Step::Ack(1),
                Step::Append(record(6, 7000)),
                Step::Append(record(7, 200)),
                Step::Ack(3),
                Step::Append(record(8, 12000)),
                group(&[9, 10]),
                Step::Ack(5),
                Step::Append(record(11, 5000)),
            ],
        ),
        ("small-groups-one-segment", (1..=6).map(|t| Step::Append(record(t, 700))).chain([Step::Ack(2)]).collect()),
    ]
}

/// What the workload was told before the power went.
#[derive(Debug, Default)]
struct Told {
    /// Appends that completed (a `202`), with where they are.
    acked: Vec<(usize, Position, Vec<u8>)>,
    /// Every record any append tried to write.
    attempted: Vec<Vec<u8>>,
    /// The furthest position core acknowledged (the forwarder called `ack` with it).
    core_acked: Position,
}

fn split_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(len)) = check_record(bytes) {
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

fn run(disk: &SimDisk, w: &Workload) -> Told {
    let mut told = Told::default();
    for step in &w.steps {
        if let Step::Append(bytes) = step {
            told.attempted.extend(split_records(bytes));
        }
    }
    let Ok((wal, mut reader)) = Wal::open_on(&w.config(), Arc::new(disk.clone()), None) else { return told };
    let mut ends = Vec::new();
    for step in &w.steps {
        match step {
            Step::Append(bytes) => {
                let result = futures::executor::block_on(wal.append(bytes.clone()));
                let end = wal.committed();
                ends.push(result.is_ok().then_some(end));
                if result.is_ok() {
                    let start = Position { segment: end.segment, offset: end.offset - bytes.len() as u64 };
                    told.acked.push((ends.len(), start, bytes.clone()));
                }
            }
            Step::Ack(n) => {
                // The forwarder only ever acks what it read, i.e. what was committed. Core has
                // those records once the forwarder calls `ack`, whether or not the call gets
                // through its deletes and the watermark before the power goes.
                if let Some(Some(end)) = ends.get(n - 1) {
                    told.core_acked = told.core_acked.max(*end);
                    let _ = reader.ack(*end);
                }
            }
        }
    }
    told
}

/// What recovery hands the forwarder: the records, where they are, and corrupt spots met.
#[derive(Debug, PartialEq, Eq)]
struct Recovered {
    start: Position,
    records: Vec<(Position, Vec<u8>)>,
    corrupt: Vec<Position>,
}

fn read_all(reader: &WalReader) -> Result<Recovered, String> {
    let start = reader.acked();
    let (mut records, mut corrupt) = (Vec::new(), Vec::new());
    let mut at = start;
    for _ in 0..10_000 {
        match reader.read(at, 1 << 20).map_err(|e| format!("read at {at:?}: {e}"))? {
            ReadOutcome::Records { segment, start, end, data, .. } => {
                let mut offset = start;
                for r in split_records(&data) {
                    let len = r.len() as u64;
                    records.push((Position { segment, offset }, r));
                    offset += len;
                }
                at = Position { segment, offset: end };
            }
            ReadOutcome::NextSegment(next) => at = next,
            ReadOutcome::UpToDate => return Ok(Recovered { start, records, corrupt }),
            // The forwarder quarantines the segment and goes on with the next one.
            ReadOutcome::Corrupt { segment, offset, .. } => {
                corrupt.push(Position { segment, offset });
                at = Position { segment: segment + 1, offset: 0 };
            }
        }
    }
    Err("the reader never got up to date".into())
}

/// Opens the WAL on `disk` and checks what it hands the forwarder against what was told.
fn recover_and_check(disk: &SimDisk, w: &Workload, told: &Told) -> Result<Recovered, String> {
    let (wal, reader) =
        Wal::open_on(&w.config(), Arc::new(disk.clone()), None).map_err(|e| format!("recovery failed: {e}"))?;
    let got = read_all(&reader)?;
    drop((wal, reader));
    if got.start > told.core_acked && got.start.offset != 0 {
        return Err(format!("the reader starts at {:?}, past what core acked ({:?})", got.start, told.core_acked));
    }
    for (n, at, bytes) in &told.acked {
        let end = Position { segment: at.segment, offset: at.offset + bytes.len() as u64 };
        if end <= told.core_acked {
            continue;
        }
        let mut offset = at.offset;
        for r in split_records(bytes) {
            let here = Position { segment: at.segment, offset };
            if !got.records.iter().any(|(p, b)| *p == here && *b == r) {
                return Err(format!("append #{n} was acknowledged (ends {end:?}) but its record at {here:?} is gone"));
            }
            offset += r.len() as u64;
        }
    }
    if let Some((p, _)) = got.records.iter().find(|(_, b)| !told.attempted.contains(b)) {
        return Err(format!("recovery hands the forwarder a record no append wrote, at {p:?}"));
    }
    Ok(got)
}

struct Sweep {
    crash_points: u64,
    runs: u64,
    recovery_runs: u64,
    /// Cases where the forwarder would meet a corrupt record (and quarantine a segment).
    corrupt_cases: Vec<String>,
    failures: Vec<String>,
}

/// One case: the workload cut at `crash_at` (`None`: runs to the end), with `loss`.
fn case(w: &Workload, crash_at: Option<u64>, loss: Loss, recovery_losses: &[Loss], sweep: &mut Sweep) {
    let label = |what: &str| format!("{}:{}:{loss:?} {what}", w.name, crash_at.map_or("end".into(), |c| c.to_string()));
    let disk = SimDisk::new();
    disk.set_plan(Plan { crash_at, faults: Vec::new() });
    let told = run(&disk, w);
    let image = disk.power_loss(loss);
    sweep.runs += 1;
    let once = match recover_and_check(&image.power_loss(Loss::Keep), w, &told) {
        Ok(r) => r,
        Err(e) => return sweep.failures.push(label(&e)),
    };
    if !once.corrupt.is_empty() {
        let what = format!("corrupt records met at {:?}", once.corrupt);
        // Pages written back out of order can leave valid records after a torn one, which
        // recovery must keep for the forwarder to quarantine. With any other loss a corrupt
        // record is a bug, e.g. a finished segment that still ends in prepared zeros.
        if loss == Loss::Reorder {
            sweep.corrupt_cases.push(label(&what));
        } else {
            sweep.failures.push(label(&what));
        }
    }
    // Recovery cut at each of its own operations, then recovered again.
    let probe = image.power_loss(Loss::Keep);
    probe.set_plan(Plan::default());
    let _ = recover_and_check(&probe, w, &told);
    for r in 1..=probe.ops() {
        for &second in recovery_losses {
            let again = image.power_loss(Loss::Keep);
            again.set_plan(Plan { crash_at: Some(r), faults: Vec::new() });
            let _ = Wal::open_on(&w.config(), Arc::new(again.clone()), None);
            sweep.recovery_runs += 1;
            match recover_and_check(&again.power_loss(second), w, &told) {
                Ok(twice) if twice.records == once.records => {}
                Ok(_) => {
                    sweep.failures.push(label(&format!("recovery cut at op {r} ({second:?}) found other records")))
                }
                Err(e) => sweep.failures.push(label(&format!("recovery cut at op {r} ({second:?}): {e}"))),
            }
        }
    }
}

#[test]
fn every_crash_point_of_the_wal_keeps_what_was_acknowledged() {
    let soak = std::env::var("SLUICE_SOAK").is_ok_and(|v| !v.is_empty() && v != "0");
    let recovery_losses: &[Loss] = if soak { &Loss::ALL } else { &[Loss::Prefix] };
    let replay = std::env::var("SLUICE_CRASH_REPLAY").ok();
    let mut sweep =
        Sweep { crash_points: 0, runs: 0, recovery_runs: 0, corrupt_cases: Vec::new(), failures: Vec::new() };
    for w in workloads() {
        let clean = SimDisk::new();
        clean.set_plan(Plan::default());
        let told = run(&clean, &w);
        assert_eq!(told.acked.len(), w.steps.iter().filter(|s| matches!(s, Step::Append(_))).count());
        let ops = clean.ops();
        let points = (1..=ops).map(Some).chain([None]);
        for crash_at in points {
            sweep.crash_points += 1;
            for loss in Loss::ALL {
                let name = format!("{}:{}:{loss:?}", w.name, crash_at.map_or("end".into(), |c| c.to_string()));
                if replay.as_ref().is_some_and(|r| *r != name) {
                    continue;
                }
                case(&w, crash_at, loss, recovery_losses, &mut sweep);
            }
        }
    }
    eprintln!(
        "crash sweep: {} crash points × {} loss models = {} runs, {} recovery crash runs, {} failures; corrupt records met in {} cases: {:?}",
        sweep.crash_points,
        Loss::ALL.len(),
        sweep.runs,
        sweep.recovery_runs,
        sweep.failures.len(),
        sweep.corrupt_cases.len(),
        sweep.corrupt_cases,
    );
    assert!(
        sweep.failures.is_empty(),
        "crash sweep failures (replay with SLUICE_CRASH_REPLAY=<first field>):\n{}",
        sweep.failures.join("\n")
    );
    assert!(replay.is_some() || sweep.runs > 300, "the sweep ran {} cases", sweep.runs);
}

/// The replica's copy: appends at the origin's positions (new segments, a rewrite of a refused
/// group), a trim, cut at every operation; every `Stored` append past the trim must be there.
#[test]
fn every_crash_point_of_a_mirror_keeps_what_it_stored() {
    let dir = Path::new("/sim/replica/a/1");
    let (a, b, c, d) = (record(1, 3000), record(2, 5000), record(3, 2000), record(4, 4000));
    // (segment, offset, bytes); the third rewrites the second (the origin refused that group).
    let script: Vec<(u64, u64, Vec<u8>)> = vec![
        (1, 0, a.clone()),
        (1, a.len() as u64, b.clone()),
        (1, a.len() as u64, c.clone()),
        (2, 0, d.clone()),
        (2, d.len() as u64, a.clone()),
    ];
    // The appends stored, and how many were sent before the power went.
    let run_mirror = |disk: &SimDisk| -> (Vec<usize>, usize) {
        let Ok(mut m) = Mirror::open_on(Arc::new(disk.clone()), dir) else { return (Vec::new(), 0) };
        let mut stored = Vec::new();
        for (i, (seg, off, bytes)) in script.iter().enumerate() {
            if disk.crashed() {
                return (stored, i);
            }
            if matches!(m.append(*seg, *off, bytes), Ok(MirrorAppend::Stored)) {
                stored.push(i);
            }
            if i == 3 {
                let _ = m.trim(Position { segment: 2, offset: 0 });
            }
        }
        (stored, script.len())
    };
    let clean = SimDisk::new();
    clean.set_plan(Plan::default());
    assert_eq!(run_mirror(&clean), (vec![0, 1, 2, 3, 4], 5));
    let (mut runs, mut failures) = (0, Vec::new());
    for crash_at in (1..=clean.ops()).map(Some).chain([None]) {
        for loss in Loss::ALL {
            let disk = SimDisk::new();
            disk.set_plan(Plan { crash_at, faults: Vec::new() });
            let (stored, sent) = run_mirror(&disk);
            let image = disk.power_loss(loss);
            runs += 1;
            let m = match Mirror::open_on(Arc::new(image.clone()), dir) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("mirror:{crash_at:?}:{loss:?} reopen failed: {e}"));
                    continue;
                }
            };
            let got = match m.reader().map_err(|e| e.to_string()).and_then(|r| read_all(&r)) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("mirror:{crash_at:?}:{loss:?} {e}"));
                    continue;
                }
            };
            // What the origin still counts on: a rewrite at #1's offset (#2) means the origin
            // refused #1's group, and the trim after #3 means core acked segment 1.
            for &i in &stored {
                let (seg, off, bytes) = &script[i];
                let replaced = i == 1 && sent > 2;
                let trimmed = *seg == 1 && sent > 3;
                let here = Position { segment: *seg, offset: *off };
                if !replaced && !trimmed && !got.records.iter().any(|(p, r)| *p == here && r == bytes) {
                    failures.push(format!("mirror:{crash_at:?}:{loss:?} stored append #{i} at {here:?} is gone"));
                }
            }
        }
    }
    eprintln!("mirror crash sweep: {runs} runs, {} failures", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Records of about 2 000 bytes (a record's batch ID is random: make them once, compare those).
fn records(n: u64) -> Vec<Vec<u8>> {
    (1..=n).map(|t| record(t, 2000)).collect()
}

fn appends(wal: &Wal, records: &[Vec<u8>]) -> Vec<Result<(), WalError>> {
    records.iter().map(|r| futures::executor::block_on(wal.append(r.clone()))).collect()
}

/// Opens the WAL again on the disk as it is (a process restart, no power loss) and returns the
/// records it would forward.
fn reopen(disk: &SimDisk) -> Vec<Vec<u8>> {
    disk.set_plan(Plan::default());
    let (_wal, reader) = Wal::open_on(&config(Preallocate::Off), Arc::new(disk.clone()), None).expect("reopen");
    read_all(&reader).expect("read").records.into_iter().map(|(_, r)| r).collect()
}

fn plan(op: Op, nth: u64, error: FaultError) -> Plan {
    Plan { crash_at: None, faults: vec![Fault { op, nth, error }] }
}

/// fsyncgate: after `EIO` on `fdatasync` nothing is acknowledged again, though the disk works.
#[test]
fn eio_on_fdatasync_latches_the_wal() {
    let disk = SimDisk::new();
    let (wal, _reader) = Wal::open_on(&config(Preallocate::Off), Arc::new(disk.clone()), None).unwrap();
    // Syncs are counted from here: the third append's fdatasync fails.
    disk.set_plan(plan(Op::Sync, 3, FaultError::Io));
    let recs = records(6);
    let got = appends(&wal, &recs);
    assert!(got[0].is_ok() && got[1].is_ok(), "{got:?}");
    assert!(got[2..].iter().all(|r| matches!(r, Err(WalError::Failed(_)))), "latched after the failed sync: {got:?}");
    assert!(wal.is_failed());
    drop(wal);
    let recovered = reopen(&disk.power_loss(Loss::Keep));
    assert!(recovered == recs[..2], "the refused append is not resurrected: {} records", recovered.len());
}

/// `ENOSPC` after a short write in the middle of a group: the group is refused, the WAL latches,
/// and after a restart the half-written bytes are gone while the earlier appends are kept.
#[test]
fn a_short_write_then_enospc_refuses_the_group_and_leaves_no_trace() {
    let disk = SimDisk::new();
    let (wal, _reader) = Wal::open_on(&config(Preallocate::Off), Arc::new(disk.clone()), None).unwrap();
    disk.set_plan(plan(Op::Write, 3, FaultError::ShortWriteNoSpace));
    let recs = records(4);
    let got = appends(&wal, &recs);
    assert!(got[0].is_ok() && got[1].is_ok());
    assert!(got[2..].iter().all(Result::is_err), "{got:?}");
    drop(wal);
    let want = &recs[..2];
    assert!(reopen(&disk) == want, "after a restart");
    assert!(reopen(&disk.power_loss(Loss::Keep)) == want, "after a power loss");
}

/// `EIO` on a read during recovery fails the open with an error (no panic, nothing skipped);
/// the next open, with the disk readable again, finds everything.
#[test]
fn eio_on_read_during_recovery_fails_the_open_and_loses_nothing() {
    let disk = SimDisk::new();
    let (wal, _reader) = Wal::open_on(&config(Preallocate::Off), Arc::new(disk.clone()), None).unwrap();
    let recs = records(3);
    assert!(appends(&wal, &recs).iter().all(Result::is_ok));
    drop(wal);
    let image = disk.power_loss(Loss::Drop);
    let mut failed_opens = 0;
    for nth in 1..=4 {
        image.set_plan(plan(Op::Read, nth, FaultError::Io));
        if let Err(e) = Wal::open_on(&config(Preallocate::Off), Arc::new(image.clone()), None) {
            assert!(e.to_string().contains("injected EIO"), "{e}");
            failed_opens += 1;
        }
    }
    assert!(failed_opens >= 3, "recovery reads wal.id, the watermark, the directory and the tail");
    assert!(reopen(&image) == recs, "every append is there");
}

/// A full disk while a segment is prepared ahead: the segment grows instead, the WAL does not
/// latch, and the half-written file of zeros does not stay to hold the space.
#[test]
fn a_full_disk_while_preparing_a_segment_falls_back_to_a_growing_one() {
    let disk = SimDisk::new();
    drop(Wal::open_on(&config(Preallocate::Off), Arc::new(disk.clone()), None).unwrap());
    // With `wal.id` written, the first write of the next open is the zeros of its first segment.
    disk.set_plan(plan(Op::Write, 1, FaultError::ShortWriteNoSpace));
    let (wal, _reader) = Wal::open_on(&config(Preallocate::Inline), Arc::new(disk.clone()), None).unwrap();
    let prepared = Path::new(DIR).join(sluice_wire::wal_files::PREPARED_SEGMENT_FILE);
    assert_eq!(disk.contents(&prepared), None, "the failed preparation is removed");
    let recs = records(12);
    let got = appends(&wal, &recs);
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    assert!(!wal.is_failed());
    drop(wal);
    assert!(reopen(&disk.power_loss(Loss::Keep)) == recs, "after a power loss");
}

/// An acked segment is freed in steps; power lost between two of them leaves no shortened
/// segment (the reader would meet a torn record mid-WAL and quarantine it), only the renamed
/// file, which the next open removes. The segment is larger than a step here, unlike the
/// sweep's, so the steps really are cut.
#[test]
fn power_lost_while_an_acked_segment_is_freed_leaves_no_short_segment() {
    use super::segment::{DELETE_STEP, create_segment, delete_segment, list_segments};
    use super::storage::Storage;
    let dir = Path::new(DIR);
    let disk = SimDisk::new();
    disk.create_dir_all(dir).unwrap();
    let len = 3 * DELETE_STEP + DELETE_STEP / 2;
    for seq in [1, 2] {
        let mut file = create_segment(&disk, dir, seq).unwrap();
        file.write_at(&vec![b'r'; len as usize], 0).unwrap();
        file.sync_data().unwrap();
    }
    // Ops: the rename, the directory sync, then the first step; the second step fails.
    disk.set_plan(Plan { crash_at: Some(4), faults: Vec::new() });
    assert!(delete_segment(&disk, dir, 1).is_err());
    let doomed = dir.join(sluice_wire::wal_files::DELETED_SEGMENT_FILE);
    for loss in Loss::ALL {
        let image = disk.power_loss(loss);
        assert_eq!(list_segments(&image, dir).unwrap(), vec![(2, len)], "{loss:?}: only the live segment is one");
        let left = image.contents(&doomed).map(|c| c.len() as u64);
        assert!(matches!(left, Some(n) if n == len || n == len - DELETE_STEP), "{loss:?}: {left:?}");
        drop(Wal::open_on(&config(Preallocate::Off), Arc::new(image.clone()), None).unwrap());
        assert_eq!(image.contents(&doomed), None, "{loss:?}: the open removes the rest");
    }
    // Uninterrupted: four steps of at most DELETE_STEP, then the file is gone.
    let fresh = SimDisk::new();
    fresh.create_dir_all(dir).unwrap();
    let mut file = create_segment(&fresh, dir, 3).unwrap();
    file.write_at(&vec![b'r'; len as usize], 0).unwrap();
    fresh.set_plan(Plan::default());
    delete_segment(&fresh, dir, 3).unwrap();
    assert_eq!(fresh.ops(), 2 + 4 + 1, "rename, directory sync, four cuts, remove");
    assert_eq!(list_segments(&fresh, dir).unwrap(), vec![]);
    assert_eq!(fresh.contents(&doomed), None);
}
