//! The forwarder's window of frames in flight, as a pure state machine (sans-IO, like
//! quinn-proto under quinn): no sockets, no tasks, no clock, no files. The driver (`super`)
//! feeds it [`Event`]s with the time since a fixed origin and carries out the [`Command`]s it
//! asks for in the order given (`poll` until `None`, then wait for what [`Window::wants_data`],
//! [`Window::resume_at`] and the replies say).
//!
//! The rules it keeps (DESIGN rule 5):
//! - Frames are read from `next` and sent while fewer than the window are in flight: the
//!   configured `max_in_flight` while the breaker is closed, one probe otherwise, none while an
//!   operator paused forwarding (frames already out are still settled).
//! - Caught up, the window waits `linger` after new data is committed before it reads: a frame
//!   then carries what came meanwhile, not one group commit. A frame costs about the same
//!   whatever it holds (a QUIC stream, core's ack, a watermark write), so under a steady load
//!   the forwarder sends at most one short frame per `linger`, not one per group. A reader that
//!   is behind reads full frames back to back, without waiting.
//! - Core answers in any order, but answers are applied in WAL order: the watermark only ever
//!   advances over a contiguous prefix of answered frames, and a failure counts once every frame
//!   before it is settled.
//! - A failure drops the whole window and resends from the acked position after the breaker's
//!   backoff; the first frame after it goes alone as the half-open probe. A node that could not
//!   be reached is marked down (with several nodes) so its tenants move on the resend.
//! - A frame core rejects for good, or a corrupt committed record, quarantines its segment once
//!   everything before it is acked, and forwarding goes on after that segment.
//! - A failed WAL operation drops the window too and retries after a doubling backoff, reset by
//!   the next sign of progress (a stored watermark, a quarantine, or the reader caught up).

use std::collections::VecDeque;
use std::time::Duration;

use sluice_wire::breaker::{Breaker, BreakerState};
use sluice_wire::record::{self, RecordError};

use super::error::{NodeError, SendError};
use crate::wal::{Position, ReadOutcome};

pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Names one send of a frame; a resend gets a new one, so an answer to a dropped send is ignored.
pub type FrameId = u64;

#[derive(Debug)]
pub enum Event {
    /// The answer to [`Command::Read`].
    Read(ReadOutcome),
    /// Core's answer to frame `id` (all its shares), in whatever order answers come.
    Reply { id: FrameId, result: Result<(), NodeError> },
    /// The frame of the last [`Command::Send`] could not go out at all (no node to route to, no
    /// connection): counts at once, whatever is still in flight.
    SendFailed(NodeError),
    /// [`Command::Ack`] is done: the WAL's watermark is at this position.
    Stored(Position),
    /// [`Command::Quarantine`] is done: the WAL's watermark is at this position.
    Quarantined(Position),
    /// A WAL operation asked for failed; what the WAL acked so far still stands.
    WalFailed,
    /// Data was committed past [`Window::next`].
    Committed,
    /// A down node answered its probe.
    NodeUp(usize),
    /// An operator paused (`true`) or resumed forwarding.
    Paused(bool),
}

#[derive(Debug)]
pub enum Command {
    /// Read whole committed records from `from` (one frame's worth); answer with [`Event::Read`].
    Read { from: Position },
    /// Send these records `[start, end)` of `segment` as frame `id`; answer with
    /// [`Event::Reply`] or [`Event::SendFailed`].
    Send { id: FrameId, segment: u64, start: u64, end: u64, records: u32, data: Vec<u8> },
    /// Every frame in flight is dropped: stop waiting for their answers.
    AbortAll,
    /// Core has everything before `to`: store the watermark (and trim), answer with
    /// [`Event::Stored`]. `frame` is the frame that ends there, if one does.
    Ack { to: Position, frame: Option<Acked> },
    /// Take `segment` out of service; answer with [`Event::Quarantined`].
    Quarantine { segment: u64, cause: QuarantineCause },
    /// Route nothing to this node and probe it until it answers ([`Event::NodeUp`]).
    MarkDown(usize),
    /// The only node failed: drop its connection so the next send reconnects.
    Disconnect(usize),
    /// A send failed: nothing is read or sent until [`Window::resume_at`].
    Backoff { error: NodeError, delay: Duration, failures: u32, resend_from: Position },
}

/// What a [`Command::Ack`] acknowledges, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub start: u64,
    pub records: u32,
    /// This ack was the half-open probe's: the circuit to core closed.
    pub closed_circuit: bool,
}

#[derive(Debug)]
pub enum QuarantineCause {
    Corrupt { offset: u64, error: RecordError },
    Rejected { start: u64, reason: String },
}

/// What the window waits for, oldest first.
#[derive(Debug)]
enum Slot {
    Frame(InFlight),
    /// The reader moved from a finished segment to `0`; acking it deletes the old segment.
    SegmentEnd(Position),
}

#[derive(Debug)]
struct InFlight {
    id: FrameId,
    segment: u64,
    start: u64,
    end: u64,
    records: u32,
    /// Edge receipt time of the frame's first record (for the lag metric).
    first_received_ms: u64,
    result: Option<Result<(), NodeError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A read may be asked for when the window has room.
    Ready,
    /// A [`Command::Read`] is out.
    Asked,
    /// Nothing committed past `next`: wait for [`Event::Committed`].
    UpToDate,
    /// Data was committed while up to date: read at this time.
    Lingering(Duration),
    /// A corrupt record at `next` waits for the frames before it to settle. Re-reading it before
    /// any of them is answered would only find it corrupt again.
    Corrupt,
}

#[derive(Debug)]
pub struct Window {
    limit: usize,
    linger: Duration,
    /// Per core node: routed around until its probe succeeds.
    down: Vec<bool>,
    /// Up to where core acked a contiguous prefix (acks still queued included): forwarding
    /// restarts here.
    acked: Position,
    /// What the WAL confirmed storing as its watermark.
    stored: Position,
    /// Where the next frame is read from: at or past `acked`.
    next: Position,
    slots: VecDeque<Slot>,
    next_id: FrameId,
    breaker: Breaker,
    paused: bool,
    reading: Reading,
    /// Nothing is read or sent before this time (a backoff).
    resume_at: Option<Duration>,
    wal_backoff: Duration,
    /// The oldest unacked receipt time while no frame is in flight (0 when caught up).
    idle_oldest_ms: u64,
    /// Jitter for the breaker's backoff (splitmix64), seeded by the driver.
    rng: u64,
    commands: VecDeque<Command>,
}

impl Window {
    /// `max_in_flight` frames at most (at least 1), `nodes` core nodes, resuming from the WAL's
    /// `acked` position; once caught up, reads `linger` after new data is committed.
    pub fn new(max_in_flight: usize, nodes: usize, acked: Position, linger: Duration, seed: u64) -> Self {
        Self {
            limit: max_in_flight.max(1),
            linger,
            down: vec![false; nodes],
            acked,
            stored: acked,
            next: acked,
            slots: VecDeque::new(),
            next_id: 0,
            breaker: Breaker::new(MIN_BACKOFF, MAX_BACKOFF),
            paused: false,
            reading: Reading::Ready,
            resume_at: None,
            wal_backoff: MIN_BACKOFF,
            idle_oldest_ms: 0,
            rng: seed,
            commands: VecDeque::new(),
        }
    }

    pub fn next(&self) -> Position {
        self.next
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn is_down(&self, node: usize) -> bool {
        self.down.get(node).copied().unwrap_or(false)
    }

    /// Nothing in flight, not even a segment end.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn frames_in_flight(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Frame(_))).count()
    }

    /// Edge receipt time of the oldest record core has not acknowledged, as far as the window
    /// knows: its oldest frame's, or with none in flight the first one read since everything
    /// was acked (it is still unacked after a failure), or 0 once caught up.
    pub fn oldest_unacked_ms(&self) -> u64 {
        self.slots
            .iter()
            .find_map(|s| match s {
                Slot::Frame(f) => Some(f.first_received_ms),
                Slot::SegmentEnd(_) => None,
            })
            .unwrap_or(self.idle_oldest_ms)
    }

    /// When a backoff ends.
    pub fn resume_at(&self) -> Option<Duration> {
        self.resume_at
    }

    /// When the driver calls [`Window::poll`] again, whatever else happens: a backoff's end or
    /// a linger's.
    pub fn wake_at(&self) -> Option<Duration> {
        let linger = match self.reading {
            Reading::Lingering(at) => Some(at),
            _ => None,
        };
        self.resume_at.into_iter().chain(linger).min()
    }

    /// The window has room and the reader is at the committed end: new data is worth waking for.
    pub fn wants_data(&self) -> bool {
        self.reading == Reading::UpToDate && self.resume_at.is_none() && self.slots.len() < self.window()
    }

    /// Routes around `node` from now on (also when the driver finds it unreachable while routing).
    pub fn mark_down(&mut self, node: usize) {
        if let Some(d) = self.down.get_mut(node) {
            *d = true;
        }
    }

    /// Frames allowed in flight now.
    fn window(&self) -> usize {
        if self.paused {
            0
        } else if self.breaker.state() == BreakerState::Closed {
            self.limit
        } else {
            1
        }
    }

    /// The next thing to do at `now`, or `None` to wait.
    pub fn poll(&mut self, now: Duration) -> Option<Command> {
        if let Some(c) = self.commands.pop_front() {
            return Some(c);
        }
        if let Some(at) = self.resume_at {
            if now < at {
                return None;
            }
            self.resume_at = None;
            // Past a send failure's backoff this turns the breaker half-open: one probe goes out.
            self.breaker.poll(now);
        }
        if let Reading::Lingering(at) = self.reading {
            if now < at {
                return None;
            }
            self.reading = Reading::Ready;
        }
        if self.reading == Reading::Ready && self.slots.len() < self.window() {
            self.reading = Reading::Asked;
            return Some(Command::Read { from: self.next });
        }
        None
    }

    pub fn handle(&mut self, now: Duration, event: Event) {
        match (self.reading, &event) {
            // Only new data is worth reading for: an answer or an ack changes nothing at `next`.
            (Reading::UpToDate, Event::Committed) => {
                self.reading =
                    if self.linger.is_zero() { Reading::Ready } else { Reading::Lingering(now + self.linger) };
            }
            // The frames before it may have settled, and the segment may now be quarantined.
            (Reading::Corrupt, e) if !matches!(e, Event::Read(_)) => self.reading = Reading::Ready,
            _ => {}
        }
        match event {
            Event::Read(outcome) => self.on_read(outcome, now),
            Event::Reply { id, result } => {
                let slot = self.slots.iter_mut().find_map(|s| match s {
                    Slot::Frame(f) if f.id == id && f.result.is_none() => Some(f),
                    _ => None,
                });
                // An answer to a send dropped by a restart no longer counts.
                if let Some(f) = slot {
                    f.result = Some(result);
                    self.settle(now);
                }
            }
            Event::SendFailed(error) => self.fail(now, error),
            Event::Stored(at) => {
                self.stored = self.stored.max(at);
                self.wal_backoff = MIN_BACKOFF;
            }
            Event::Quarantined(at) => {
                self.stored = self.stored.max(at);
                self.acked = self.acked.max(at);
                self.next = self.acked;
                self.reading = Reading::Ready;
                self.wal_backoff = MIN_BACKOFF;
            }
            Event::WalFailed => {
                // What was queued on the strength of the failed operation is void; the
                // restart resends it. Node and backoff bookkeeping already decided stays.
                self.commands.retain(|c| !matches!(c, Command::Ack { .. } | Command::Quarantine { .. }));
                self.acked = self.stored;
                self.restart();
                let until = now + self.wal_backoff;
                self.resume_at = Some(self.resume_at.map_or(until, |at| at.max(until)));
                self.wal_backoff = (self.wal_backoff * 2).min(MAX_BACKOFF);
            }
            Event::Committed => {}
            Event::NodeUp(node) => {
                if let Some(d) = self.down.get_mut(node) {
                    *d = false;
                }
            }
            Event::Paused(paused) => self.paused = paused,
        }
    }

    fn on_read(&mut self, outcome: ReadOutcome, now: Duration) {
        self.reading = Reading::Ready;
        match outcome {
            ReadOutcome::UpToDate => {
                self.reading = Reading::UpToDate;
                if self.slots.is_empty() {
                    self.idle_oldest_ms = 0;
                }
                self.wal_backoff = MIN_BACKOFF;
            }
            ReadOutcome::NextSegment(next) => {
                self.slots.push_back(Slot::SegmentEnd(next));
                self.next = next;
                self.settle(now);
            }
            ReadOutcome::Corrupt { segment, offset, error } => {
                self.reading = Reading::Corrupt;
                // Quarantine only once everything before the bad record is acked.
                if self.slots.is_empty() {
                    self.commands
                        .push_back(Command::Quarantine { segment, cause: QuarantineCause::Corrupt { offset, error } });
                }
            }
            ReadOutcome::Records { segment, start, end, data, count } => {
                let first_received_ms = record::peek_prefix(&data).map_or(0, |p| p.received_at_ms);
                if self.slots.is_empty() {
                    // This frame starts at the acked position: its first record stays the oldest
                    // unacked one even if the send fails.
                    self.idle_oldest_ms = first_received_ms;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.slots.push_back(Slot::Frame(InFlight {
                    id,
                    segment,
                    start,
                    end,
                    records: count,
                    first_received_ms,
                    result: None,
                }));
                self.next = Position { segment, offset: end };
                self.commands.push_back(Command::Send { id, segment, start, end, records: count, data });
            }
        }
    }

    /// Applies the answers at the head of the window, in WAL order, up to the first frame still
    /// unanswered.
    fn settle(&mut self, now: Duration) {
        while let Some(slot) = self.slots.pop_front() {
            let mut f = match slot {
                Slot::SegmentEnd(to) => {
                    self.acked = to;
                    self.commands.push_back(Command::Ack { to, frame: None });
                    continue;
                }
                Slot::Frame(f) => f,
            };
            match f.result.take() {
                None => {
                    self.slots.push_front(Slot::Frame(f));
                    return;
                }
                Some(Ok(())) => {
                    let closed_circuit = self.breaker.state() != BreakerState::Closed;
                    self.breaker.on_success();
                    let to = Position { segment: f.segment, offset: f.end };
                    self.acked = to;
                    let frame = Some(Acked { start: f.start, records: f.records, closed_circuit });
                    self.commands.push_back(Command::Ack { to, frame });
                }
                Some(Err((_, SendError::Rejected(reason)))) => {
                    let (segment, cause) = (f.segment, QuarantineCause::Rejected { start: f.start, reason });
                    // Back at the head until the restart, which reads its receipt time.
                    self.slots.push_front(Slot::Frame(f));
                    self.restart();
                    self.commands.push_back(Command::Quarantine { segment, cause });
                    return;
                }
                Some(Err(error)) => {
                    self.slots.push_front(Slot::Frame(f));
                    self.fail(now, error);
                    return;
                }
            }
        }
        // All read is acked, and at most a linger's worth of new data is not read yet.
        if matches!(self.reading, Reading::UpToDate | Reading::Lingering(_)) {
            self.idle_oldest_ms = 0;
        }
    }

    /// A send failed: blame the node if it was unreachable, drop the window, back off.
    fn fail(&mut self, now: Duration, error: NodeError) {
        if let (Some(node), true) = (error.0, error.1.unreachable()) {
            if self.down.len() > 1 {
                self.mark_down(node);
                self.commands.push_back(Command::MarkDown(node));
            } else {
                self.commands.push_back(Command::Disconnect(node));
            }
        }
        self.restart();
        let jitter = self.jitter();
        let delay = self.breaker.on_failure(now, jitter);
        self.resume_at = Some(now + delay);
        let (failures, resend_from) = (self.breaker.failures(), self.next);
        self.commands.push_back(Command::Backoff { error, delay, failures, resend_from });
    }

    /// Forgets everything in flight and reads again from the acked position (DESIGN rule 5).
    /// Frames that reached core anyway are dropped there by the dedupe index.
    fn restart(&mut self) {
        // The oldest frame dropped is still the oldest unacked one.
        self.idle_oldest_ms = self.oldest_unacked_ms();
        self.slots.clear();
        self.commands.retain(|c| !matches!(c, Command::Send { .. }));
        self.commands.push_back(Command::AbortAll);
        self.next = self.acked;
        self.reading = Reading::Ready;
    }

    /// A fraction in `[0, 1)`.
    fn jitter(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::forward::split::tests::record_of;

    const MS: Duration = Duration::from_millis(1);
    /// Every test record is this long; one record per frame.
    const REC: u64 = 10;

    fn pos(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    fn retry() -> NodeError {
        (Some(0), SendError::Retry("busy".into()))
    }

    /// A WAL and a core for the window, checking as it goes that the watermark only covers
    /// frames core stored, that no frame is on the wire twice without a restart in between, and
    /// that no more than `limit` frames are out.
    struct Sim {
        w: Window,
        limit: usize,
        now: Duration,
        /// Records per segment; the last segment is the one being written.
        segments: Vec<u64>,
        corrupt: Option<Position>,
        /// Records carry real encoded records stamped `1000 + offset / REC`.
        stamped: bool,
        stored: Position,
        /// Sent, unanswered, not aborted: (id, segment, start).
        out: Vec<(FrameId, u64, u64)>,
        /// Every send, in order: (segment, start).
        sends: Vec<(u64, u64)>,
        /// Sent since the last restart, to catch a duplicate.
        live: HashSet<(u64, u64)>,
        /// Frames core answered `Stored`.
        stored_by_core: HashSet<(u64, u64)>,
        /// Every ack the WAL took, with whether a frame ended there.
        acks: Vec<(Position, bool)>,
        reads: usize,
        aborts: usize,
        /// Each backoff's delay and the consecutive failures it counts.
        backoffs: Vec<(Duration, u32)>,
        marked_down: Vec<usize>,
        disconnected: Vec<usize>,
        quarantined: Vec<u64>,
        fail_next_send: Option<NodeError>,
        fail_acks: bool,
    }

    impl Sim {
        fn new(limit: usize, nodes: usize, segments: Vec<u64>) -> Self {
            Self::lingering(limit, nodes, segments, Duration::ZERO)
        }

        fn lingering(limit: usize, nodes: usize, segments: Vec<u64>, linger: Duration) -> Self {
            Self {
                w: Window::new(limit, nodes, Position::default(), linger, 7),
                limit,
                now: Duration::ZERO,
                segments,
                corrupt: None,
                stamped: false,
                stored: Position::default(),
                out: Vec::new(),
                sends: Vec::new(),
                live: HashSet::new(),
                stored_by_core: HashSet::new(),
                acks: Vec::new(),
                reads: 0,
                aborts: 0,
                backoffs: Vec::new(),
                marked_down: Vec::new(),
                disconnected: Vec::new(),
                quarantined: Vec::new(),
                fail_next_send: None,
                fail_acks: false,
            }
        }

        fn committed(&self) -> Position {
            pos(self.segments.len() as u64 - 1, self.segments.last().copied().unwrap_or(0) * REC)
        }

        fn read(&self, from: Position) -> ReadOutcome {
            if from >= self.committed() {
                return ReadOutcome::UpToDate;
            }
            if from.offset >= self.segments[from.segment as usize] * REC {
                return ReadOutcome::NextSegment(pos(from.segment + 1, 0));
            }
            if self.corrupt == Some(from) {
                return ReadOutcome::Corrupt {
                    segment: from.segment,
                    offset: from.offset,
                    error: RecordError::Incomplete,
                };
            }
            let data = if self.stamped { record_of("acme", 1000 + from.offset / REC) } else { Vec::new() };
            ReadOutcome::Records { segment: from.segment, start: from.offset, end: from.offset + REC, data, count: 1 }
        }

        /// Carries out commands until the window waits.
        fn run(&mut self) {
            while let Some(c) = self.w.poll(self.now) {
                let now = self.now;
                match c {
                    Command::Read { from } => {
                        self.reads += 1;
                        let outcome = self.read(from);
                        self.w.handle(now, Event::Read(outcome));
                    }
                    Command::Send { id, segment, start, end, records, .. } => {
                        assert_eq!((end - start, records), (REC, 1));
                        if let Some(e) = self.fail_next_send.take() {
                            self.w.handle(now, Event::SendFailed(e));
                            continue;
                        }
                        assert!(
                            self.live.insert((segment, start)),
                            "({segment}, {start}) sent twice without a restart"
                        );
                        self.sends.push((segment, start));
                        self.out.push((id, segment, start));
                        assert!(
                            self.out.len() <= self.limit,
                            "{} frames in flight, window {}",
                            self.out.len(),
                            self.limit
                        );
                    }
                    Command::AbortAll => {
                        self.aborts += 1;
                        self.out.clear();
                        self.live.clear();
                    }
                    Command::Ack { to, frame } => {
                        if self.fail_acks {
                            self.w.handle(now, Event::WalFailed);
                            continue;
                        }
                        assert!(
                            to > self.stored,
                            "watermark moved back or stood still: {to:?} after {:?}",
                            self.stored
                        );
                        for seg in 0..=to.segment {
                            let end = if seg == to.segment { to.offset } else { self.segments[seg as usize] * REC };
                            for start in (0..end).step_by(REC as usize) {
                                assert!(
                                    self.stored_by_core.contains(&(seg, start)) || self.quarantined.contains(&seg),
                                    "watermark {to:?} passes ({seg}, {start}), which core never stored"
                                );
                            }
                        }
                        if let Some(f) = frame {
                            assert_eq!(to.offset - f.start, REC);
                        }
                        self.stored = to;
                        self.acks.push((to, frame.is_some()));
                        self.w.handle(now, Event::Stored(to));
                    }
                    Command::Quarantine { segment, .. } => {
                        self.quarantined.push(segment);
                        if segment as usize == self.segments.len() - 1 {
                            self.segments.push(0);
                        }
                        self.stored = self.stored.max(pos(segment + 1, 0));
                        self.w.handle(now, Event::Quarantined(self.stored));
                    }
                    Command::MarkDown(n) => self.marked_down.push(n),
                    Command::Disconnect(n) => self.disconnected.push(n),
                    Command::Backoff { delay, failures, .. } => self.backoffs.push((delay, failures)),
                }
            }
        }

        /// Core answers the `k`-th frame still out (in send order).
        fn answer(&mut self, k: usize, result: Result<(), NodeError>) {
            let (id, segment, start) = self.out.remove(k);
            if result.is_ok() {
                self.stored_by_core.insert((segment, start));
            }
            self.w.handle(self.now, Event::Reply { id, result });
            self.run();
        }

        fn answer_start(&mut self, start: u64, result: Result<(), NodeError>) {
            let k = self.out.iter().position(|o| o.2 == start).expect("frame is out");
            self.answer(k, result);
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.run();
        }

        fn append(&mut self, records: u64) {
            *self.segments.last_mut().unwrap() += records;
            self.w.handle(self.now, Event::Committed);
            self.run();
        }

        fn starts(&self) -> Vec<u64> {
            self.sends.iter().map(|s| s.1).collect()
        }
    }

    #[test]
    fn out_of_order_answers_advance_the_watermark_over_the_answered_prefix_only() {
        let mut s = Sim::new(4, 1, vec![4]);
        s.run();
        assert_eq!(s.starts(), [0, 10, 20, 30], "the whole window goes out before any answer");
        s.answer_start(30, Ok(()));
        s.answer_start(20, Ok(()));
        assert!(s.acks.is_empty(), "frames 2 and 3 stored, but 0 and 1 are not");
        s.answer_start(0, Ok(()));
        assert_eq!(s.acks, [(pos(0, 10), true)]);
        s.answer_start(10, Ok(()));
        assert_eq!(s.acks.iter().map(|a| a.0.offset).collect::<Vec<_>>(), [10, 20, 30, 40]);
        assert_eq!(s.sends.len(), 4, "nothing resent");
        assert!(s.w.wants_data() && s.w.is_empty());
    }

    #[test]
    fn never_more_than_the_window_in_flight_and_new_data_fills_it() {
        let mut s = Sim::new(3, 1, vec![10]);
        s.run();
        assert_eq!((s.out.len(), s.w.frames_in_flight()), (3, 3));
        assert!(!s.w.wants_data(), "a full window does not wait for data");
        while !s.out.is_empty() {
            s.answer(0, Ok(()));
            assert!(s.out.len() <= 3);
        }
        assert_eq!(s.starts(), (0..10).map(|i| i * REC).collect::<Vec<_>>(), "each frame sent once, in order");
        assert_eq!(s.stored, pos(0, 100));
        let reads = s.reads;
        s.run();
        assert_eq!(s.reads, reads, "caught up: no reads until data is committed");
        assert!(s.w.wants_data());
        s.append(2);
        assert_eq!(s.starts()[10..], [100, 110]);
    }

    #[test]
    fn a_failure_resends_everything_unacked_after_the_backoff_with_one_probe_first() {
        let mut s = Sim::new(3, 1, vec![5]);
        s.run();
        s.answer_start(0, Ok(()));
        assert_eq!(s.starts(), [0, 10, 20, 30]);
        s.answer_start(20, Ok(()));
        s.answer_start(30, Err(retry()));
        assert_eq!((s.aborts, s.backoffs.len()), (0, 0), "a failure counts once the frames before it are settled");
        s.answer_start(10, Err(retry()));
        assert_eq!(s.stored, pos(0, 10), "frame 2 was stored by core but frame 1 was not: the watermark stays");
        assert_eq!((s.aborts, s.backoffs.len()), (1, 1));
        assert!(s.out.is_empty(), "the whole window is dropped");
        assert_eq!(s.w.breaker_state(), BreakerState::Open);
        let (delay, _) = s.backoffs[0];
        assert!((25 * MS..50 * MS).contains(&delay), "{delay:?}");
        assert_eq!(s.w.resume_at(), Some(s.now + delay));
        s.advance(delay - MS);
        assert_eq!(s.sends.len(), 4, "nothing goes out during the backoff");
        s.advance(MS);
        assert_eq!(s.starts()[4..], [10], "one probe, from the acked position");
        assert_eq!(s.w.breaker_state(), BreakerState::HalfOpen);
        s.answer(0, Ok(()));
        assert_eq!(s.w.breaker_state(), BreakerState::Closed);
        assert_eq!(s.starts()[5..], [20, 30, 40], "the full window again, frame 2 resent");
        assert!(s.disconnected.is_empty(), "core answered retry: the connection is fine");
    }

    #[test]
    fn the_backoff_doubles_per_consecutive_failure_up_to_the_cap_and_starts_over_after_an_ack() {
        let mut s = Sim::new(2, 1, vec![3]);
        s.run();
        for k in 0..9u32 {
            s.answer(0, Err(retry()));
            let backoff = (MIN_BACKOFF * 2u32.pow(k)).min(MAX_BACKOFF);
            let (delay, failures) = *s.backoffs.last().unwrap();
            assert!(
                delay >= backoff / 2 && delay < backoff,
                "failure {}: {delay:?} outside [{:?}, {backoff:?})",
                k + 1,
                backoff / 2
            );
            assert_eq!(failures, k + 1);
            s.advance(delay);
            assert_eq!(s.out.len(), 1, "one probe after each backoff");
        }
        s.answer(0, Ok(()));
        s.answer(0, Err(retry()));
        let (delay, failures) = *s.backoffs.last().unwrap();
        assert!(delay < MIN_BACKOFF && failures == 1, "{delay:?} after {failures} failures");
    }

    #[test]
    fn an_unreachable_node_is_marked_down_only_when_there_are_others() {
        let mut s = Sim::new(4, 3, vec![4]);
        s.run();
        s.answer(0, Err((Some(1), SendError::Timeout(Duration::from_secs(30)))));
        assert_eq!(s.marked_down, [1]);
        assert!(s.w.is_down(1) && !s.w.is_down(0) && !s.w.is_down(2));
        s.w.handle(s.now, Event::NodeUp(1));
        assert!(!s.w.is_down(1), "its probe answered: it gets its tenants back");
        // Core answering (retry) or no node to blame: nobody is marked down.
        s.advance(Duration::from_secs(1));
        s.answer(0, Err((Some(2), SendError::Retry("busy".into()))));
        s.advance(Duration::from_secs(1));
        s.answer(0, Err((None, SendError::Stream("send task: panicked".into()))));
        assert_eq!((s.marked_down.len(), s.disconnected.len()), (1, 0));
        // With one node there is nowhere else to go: reconnect to it instead.
        let mut one = Sim::new(4, 1, vec![4]);
        one.run();
        one.answer(0, Err((Some(0), SendError::Connect("refused".into()))));
        assert_eq!((one.marked_down.len(), one.disconnected.as_slice()), (0, &[0][..]));
        assert!(!one.w.is_down(0));
    }

    #[test]
    fn a_frame_that_cannot_go_out_drops_the_window_at_once_and_late_answers_are_ignored() {
        let mut s = Sim::new(3, 2, vec![3]);
        s.w.handle(s.now, Event::Read(s.read(pos(0, 0))));
        let Some(Command::Send { id, .. }) = s.w.poll(s.now) else { panic!("a send of frame 0") };
        s.out.push((id, 0, 0));
        // The next frame finds every node down.
        s.fail_next_send = Some((None, SendError::Connect("every core node is down".into())));
        s.run();
        assert_eq!((s.aborts, s.backoffs.len()), (1, 1), "dropped although frame 0 is unanswered");
        assert!(s.marked_down.is_empty(), "no one node to blame");
        s.w.handle(s.now, Event::Reply { id, result: Ok(()) });
        s.w.handle(s.now, Event::Reply { id: id + 99, result: Ok(()) });
        s.run();
        assert!(s.acks.is_empty(), "answers to dropped or unknown sends do not move the watermark");
        s.advance(Duration::from_secs(1));
        assert_eq!(s.starts(), [0], "the probe resends from the acked position");
    }

    #[test]
    fn a_rejected_frame_quarantines_its_segment_and_forwarding_goes_on() {
        // Segment 0 is finished with two records, segment 1 is being written.
        let mut s = Sim::new(4, 1, vec![2, 2]);
        s.run();
        assert_eq!(s.sends, [(0, 0), (0, 10), (1, 0)], "the segment end takes a slot of the window");
        s.answer_start(0, Ok(()));
        assert_eq!(s.sends[3], (1, 10), "the ack made room in the window");
        s.answer_start(10, Err((Some(0), SendError::Rejected("undecodable".into()))));
        assert_eq!(s.quarantined, [0]);
        assert!(
            s.backoffs.is_empty() && s.w.breaker_state() == BreakerState::Closed,
            "a refusal is not a link failure"
        );
        assert_eq!(s.stored, pos(1, 0), "the watermark moves past the quarantined segment");
        assert_eq!(s.sends[4..], [(1, 0), (1, 10)], "segment 1 is resent at once");
        s.answer(0, Ok(()));
        s.answer(0, Ok(()));
        assert_eq!(s.stored, pos(1, 20));
    }

    #[test]
    fn a_corrupt_record_is_quarantined_once_the_frames_before_it_are_acked() {
        let mut s = Sim::new(4, 1, vec![4]);
        s.corrupt = Some(pos(0, 20));
        s.run();
        assert_eq!(s.starts(), [0, 10]);
        assert!(s.quarantined.is_empty(), "frames before it are unanswered");
        let reads = s.reads;
        s.run();
        s.w.handle(s.now, Event::Committed);
        s.run();
        assert!(s.reads <= reads + 1, "no spinning on the corrupt record while waiting");
        s.answer(0, Ok(()));
        assert!(s.quarantined.is_empty());
        s.answer(0, Ok(()));
        assert_eq!(s.quarantined, [0]);
        assert_eq!(s.stored, pos(1, 0));
        assert!(s.w.wants_data(), "the writer moved to segment 1; forwarding waits there");
        s.append(1);
        assert_eq!(s.sends.last(), Some(&(1, 0)));
    }

    #[test]
    fn paused_sends_nothing_new_but_settles_what_is_in_flight() {
        let mut s = Sim::new(2, 1, vec![4]);
        s.w.handle(s.now, Event::Paused(true));
        s.run();
        assert_eq!((s.reads, s.sends.len()), (0, 0));
        assert!(!s.w.wants_data());
        s.w.handle(s.now, Event::Paused(false));
        s.run();
        assert_eq!(s.starts(), [0, 10]);
        s.w.handle(s.now, Event::Paused(true));
        s.answer(0, Ok(()));
        s.answer(0, Ok(()));
        assert_eq!((s.stored, s.sends.len()), (pos(0, 20), 2), "acked, nothing new sent");
        s.w.handle(s.now, Event::Paused(false));
        s.run();
        assert_eq!(s.starts()[2..], [20, 30]);
    }

    #[test]
    fn a_wal_failure_drops_the_window_and_queued_acks_and_retries_with_a_doubling_backoff() {
        let mut s = Sim::new(2, 1, vec![4]);
        s.run();
        s.fail_acks = true;
        s.answer_start(10, Ok(()));
        s.answer_start(0, Ok(()));
        assert_eq!((s.aborts, s.stored), (1, pos(0, 0)), "the first ack failed; the second one is not tried");
        assert_eq!(s.w.resume_at(), Some(s.now + MIN_BACKOFF));
        assert!(s.backoffs.is_empty(), "the WAL failed, not the link: the breaker stays closed");
        s.advance(MIN_BACKOFF - MS);
        assert_eq!(s.sends.len(), 2);
        s.advance(MS);
        assert_eq!(s.starts()[2..], [0, 10], "resent from the stored watermark, the full window");
        s.answer(0, Ok(()));
        assert_eq!(s.w.resume_at(), Some(s.now + 2 * MIN_BACKOFF), "doubles while the WAL keeps failing");
        s.fail_acks = false;
        s.advance(2 * MIN_BACKOFF);
        s.answer(0, Ok(()));
        assert_eq!(s.stored, pos(0, 10));
        s.fail_acks = true;
        s.answer(0, Ok(()));
        assert_eq!(s.w.resume_at(), Some(s.now + MIN_BACKOFF), "a stored watermark reset the backoff");
    }

    #[test]
    fn the_oldest_unacked_time_follows_the_oldest_frame_and_outlives_a_failure() {
        let mut s = Sim::new(2, 1, vec![3]);
        s.stamped = true;
        s.run();
        assert_eq!(s.w.oldest_unacked_ms(), 1000);
        s.answer(0, Ok(()));
        assert_eq!(s.w.oldest_unacked_ms(), 1001);
        s.answer(0, Err(retry()));
        assert!(s.w.is_empty());
        assert_eq!(s.w.oldest_unacked_ms(), 1001, "nothing in flight, but frame 1 is still unacked");
        s.advance(Duration::from_secs(1));
        s.answer(0, Ok(()));
        s.answer(0, Ok(()));
        assert_eq!(s.stored, pos(0, 30));
        assert_eq!(s.w.oldest_unacked_ms(), 0, "caught up");
    }

    /// Caught up, new data waits out the linger and then goes in as few frames as the reads
    /// allow; what is committed meanwhile does not restart the wait, and an answer or an ack
    /// reads nothing.
    #[test]
    fn caught_up_new_data_waits_the_linger_and_answers_read_nothing() {
        let mut s = Sim::lingering(4, 1, vec![1], 10 * MS);
        s.run();
        assert_eq!(s.starts(), [0], "data there at the start is read at once");
        s.answer(0, Ok(()));
        assert!(s.w.wants_data());
        let reads = s.reads;
        s.append(1);
        assert_eq!((s.reads, s.w.wake_at()), (reads, Some(s.now + 10 * MS)), "new data waits the linger");
        assert!(!s.w.wants_data(), "lingering, the driver does not wait for more commits");
        s.advance(6 * MS);
        s.append(1);
        assert_eq!((s.reads, s.w.wake_at()), (reads, Some(s.now + 4 * MS)), "more data does not restart the wait");
        s.advance(4 * MS);
        assert_eq!(s.starts(), [0, 10, 20], "both records go out once the linger is over");
        assert_eq!(s.w.wake_at(), None);
        let reads = s.reads;
        s.answer(0, Ok(()));
        s.answer(0, Ok(()));
        assert_eq!(s.reads, reads, "answers and acks while caught up read nothing");
        assert_eq!(s.stored, pos(0, 30));
    }

    /// A reader that is behind reads back to back, linger or not.
    #[test]
    fn a_reader_behind_does_not_linger() {
        let mut s = Sim::lingering(2, 1, vec![6], 10 * MS);
        s.run();
        while !s.out.is_empty() {
            s.answer(0, Ok(()));
        }
        assert_eq!(s.now, Duration::ZERO);
        assert_eq!(s.stored, pos(0, 60), "everything went out without the clock moving");
    }

    proptest! {
        /// Whatever core answers and in whatever order (stored, retry, or an unreachable node),
        /// with any window and segment layout:
        /// - the watermark only moves forward and never past a frame core has not stored;
        /// - no more than the window is ever out, and a frame goes out again only after a
        ///   restart dropped its earlier send;
        /// - once core stores everything it is sent, the watermark reaches the committed end
        ///   and every frame was acked (counted as forwarded) exactly once;
        /// - all of it with data committed meanwhile, with or without a linger.
        #[test]
        fn the_watermark_never_passes_an_unstored_frame_and_every_frame_is_acked_once(
            limit in 1usize..6,
            segments in proptest::collection::vec(1u64..6, 1..4),
            linger in prop_oneof![Just(Duration::ZERO), Just(10 * MS)],
            answers in proptest::collection::vec((any::<u8>(), 0u8..7), 0..80),
        ) {
            let mut s = Sim::lingering(limit, 1, segments, linger);
            s.run();
            for (pick, kind) in answers {
                if kind >= 5 {
                    s.append(u64::from(pick % 3) + 1);
                    continue;
                }
                if s.out.is_empty() {
                    s.advance(MAX_BACKOFF);
                    continue;
                }
                let k = usize::from(pick) % s.out.len();
                let result = match kind {
                    0 => Err(retry()),
                    1 => Err((Some(0), SendError::Stream("reset".into()))),
                    _ => Ok(()),
                };
                s.answer(k, result);
            }
            for _ in 0..10_000 {
                if s.stored == s.committed() {
                    break;
                }
                if s.out.is_empty() {
                    s.advance(MAX_BACKOFF);
                } else {
                    s.answer(s.out.len() - 1, Ok(()));
                }
            }
            prop_assert_eq!(s.stored, s.committed());
            let frame_acks: Vec<Position> = s.acks.iter().filter(|a| a.1).map(|a| a.0).collect();
            let records: u64 = s.segments.iter().sum();
            prop_assert_eq!(frame_acks.len() as u64, records, "every frame acked exactly once");
        }
    }
}
