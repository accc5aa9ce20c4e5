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
    /// A corrupt record at `next` waits for the frames before it to settle. Re-reading it before
    /// any of them is answered would only find it corrupt again.
    Corrupt,
}

#[derive(Debug)]
pub struct Window {
    limit: usize,
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
    /// `acked` position.
    pub fn new(max_in_flight: usize, nodes: usize, acked: Position, seed: u64) -> Self {
        Self {
            limit: max_in_flight.max(1),
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

    pub fn failures(&self) -> u32 {
        self.breaker.failures()
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

    /// When a backoff ends; the driver calls [`Window::poll`] then.
    pub fn resume_at(&self) -> Option<Duration> {
        self.resume_at
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
        if self.reading == Reading::Ready && self.slots.len() < self.window() {
            self.reading = Reading::Asked;
            return Some(Command::Read { from: self.next });
        }
        None
    }

    pub fn handle(&mut self, now: Duration, event: Event) {
        if matches!(self.reading, Reading::UpToDate | Reading::Corrupt) && !matches!(event, Event::Read(_)) {
            self.reading = Reading::Ready;
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
                    self.commands.push_back(Command::Quarantine { segment, cause: QuarantineCause::Corrupt { offset, error } });
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
                    self.restart();
                    let cause = QuarantineCause::Rejected { start: f.start, reason };
                    self.commands.push_back(Command::Quarantine { segment: f.segment, cause });
                    return;
                }
                Some(Err(error)) => {
                    self.fail(now, error);
                    return;
                }
            }
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
