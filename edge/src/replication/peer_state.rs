//! What the origin knows of one peer's copy and what it sends that peer next, as a pure state
//! machine (sans-IO, like `forward::window`): no sockets, no tasks, no clock reads, no files.
//! The driver (`super::client`'s peer task) hands it one run of groups at a time
//! ([`PeerState::run`]), carries out the [`Command`]s it asks for in order (`poll` until
//! [`Command::Done`]) and feeds back what came of them as [`Event`]s.
//!
//! The rules it keeps:
//! - Groups queued meanwhile that are contiguous in the WAL go as one append ([`Runs`]).
//! - A peer that failed is skipped for a backoff (doubling from [`MIN_BACKOFF`] to
//!   [`MAX_BACKOFF`], reset by the next stored run): its runs count as not stored at once, so a
//!   dead peer costs the ack timeout once per backoff instead of on every group.
//! - A run is appended only where the copy is known to match the local WAL up to the run's
//!   start (its *level*). Otherwise the peer first gets what it lacks: from the level if known,
//!   else from where it says its copy ends (`Locate`), the rest of that segment, every local
//!   segment after it and the start of the run's segment (catch-up), in appends of whole
//!   records read from the local segments. Only then does the run count toward the acks.
//! - A run answered with `Behind` (the replica lost or cut its copy) is caught up from there
//!   and sent once more; behind again is a failure.
//! - Any failure forgets the level: an exchange that failed may still have been stored.
//! - Every append carries a new `seq` (the replica drops an append older than one it applied).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_wire::replication::{Origin, PeerMessage, PeerReply};

use crate::wal::Position;

pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Bytes `[start, end)` of local segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub segment: u64,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Send this message on its own stream and answer with [`Event::Replied`].
    Exchange(PeerMessage),
    /// List the committed lengths of the local segments from `first` to `to.segment` (which
    /// counts up to `to.offset`), leaving out deleted ones; answer with [`Event::Lengths`].
    ListLengths { first: u64, to: Position },
    /// Read whole records of a local segment from `range.start`, one message's worth at most
    /// (or the one record there, if larger), not past `range.end`; answer with
    /// [`Event::Records`].
    ReadRecords(Range),
    /// A catch-up starts (for the log): `ranges` ranges of `bytes` bytes in all.
    CatchingUp { from: Position, to: Position, ranges: usize, bytes: u64 },
    /// The run is over; its groups count as stored by this peer or not.
    Done(Outcome),
}

#[derive(Debug)]
pub enum Event {
    /// The answer to [`Command::Exchange`], with the message sent (an append's bytes come back
    /// to be sent again).
    Replied { sent: PeerMessage, reply: Result<PeerReply, String> },
    /// The answer to [`Command::ListLengths`]: `(segment, committed length)`, oldest first.
    Lengths(Result<Vec<(u64, u64)>, String>),
    /// The answer to [`Command::ReadRecords`].
    Records(Result<Vec<u8>, String>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer has the run durable; its copy matches the local WAL up to `end`. `back`: the
    /// peer had failed before.
    Stored { end: Position, back: bool },
    /// The peer did not store the run. `newly_down`: it had not failed before (worth a warning).
    Failed { error: String, newly_down: bool },
}

/// The run being sent and what it waits for.
#[derive(Debug)]
enum Step {
    Idle,
    /// Asked where the copy ends.
    Locating(Run),
    /// Asked for the local segments' lengths, to catch up from `from`.
    Listing {
        run: Run,
        from: Position,
    },
    /// Asked for the next records of `catch_up.range`.
    Reading(CatchUp),
    /// Sent `len` bytes of catch-up at the start of `catch_up.range`.
    CatchUpSent {
        catch_up: CatchUp,
        len: u64,
    },
    /// Sent the run itself (its bytes are in the message).
    Appending {
        at: Position,
        end: Position,
        retried: bool,
    },
}

#[derive(Debug)]
struct Run {
    at: Position,
    bytes: Vec<u8>,
    /// The run was answered `Behind` once already.
    retried: bool,
}

#[derive(Debug)]
struct CatchUp {
    run: Run,
    /// What is left of the range being sent (its start moves on with every chunk).
    range: Range,
    rest: VecDeque<Range>,
}

#[derive(Debug)]
pub struct PeerState {
    origin: Origin,
    seq: u64,
    /// Where the peer's copy ends, known to match the local WAL up to there; `None` at start and
    /// after a failure, when the next run first asks the peer (`Locate`).
    level: Option<Position>,
    down_until: Option<Instant>,
    backoff: Duration,
    step: Step,
    commands: VecDeque<Command>,
}

impl PeerState {
    /// Appends go out as `origin`, with `seq` numbers after `seq` (which must grow across the
    /// origin's restarts).
    pub fn new(origin: Origin, seq: u64) -> Self {
        Self {
            origin,
            seq,
            level: None,
            down_until: None,
            backoff: MIN_BACKOFF,
            step: Step::Idle,
            commands: VecDeque::new(),
        }
    }

    /// Whether a run handed over at `now` goes to the peer: not while it is in its backoff
    /// after a failure (the run then counts as not stored, and [`PeerState::run`] is not called).
    pub fn admits(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|t| now >= t)
    }

    /// Starts sending `bytes`, the run of groups at `at`. Only one run at a time: the previous
    /// one ended with [`Command::Done`].
    pub fn run(&mut self, at: Position, bytes: Vec<u8>) {
        debug_assert!(matches!(self.step, Step::Idle), "one run at a time");
        let run = Run { at, bytes, retried: false };
        match self.level {
            Some(level) if level == at => self.append(run),
            Some(level) => self.list(run, level),
            None => {
                self.step = Step::Locating(run);
                self.commands.push_back(Command::Exchange(PeerMessage::Locate { origin: self.origin.clone() }));
            }
        }
    }

    /// The link to the peer is a new connection, made between runs: the peer may have restarted
    /// without its copy, and an empty copy accepts an append at the start of a segment, so
    /// the next run first asks where the copy ends (`Locate`) instead of trusting the level.
    pub fn reconnected(&mut self) {
        debug_assert!(matches!(self.step, Step::Idle), "between runs");
        self.level = None;
    }

    /// The next thing to do, oldest first.
    pub fn poll(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// What came of the last command; `now` dates a failure's backoff.
    pub fn handle(&mut self, event: Event, now: Instant) {
        match (std::mem::replace(&mut self.step, Step::Idle), event) {
            (Step::Locating(run), Event::Replied { reply, .. }) => match reply {
                Ok(PeerReply::CopyEnd { end }) => self.list(run, end),
                Ok(other) => self.fail(format!("locating the copy: {}", describe(&other)), now),
                Err(e) => self.fail(e, now),
            },
            (Step::Listing { run, from }, Event::Lengths(lengths)) => match lengths {
                Ok(lengths) => self.catch_up(run, from, &lengths),
                Err(e) => self.fail(e, now),
            },
            (Step::Reading(catch_up), Event::Records(records)) => match records {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    let at = Position { segment: catch_up.range.segment, offset: catch_up.range.start };
                    self.send(at, bytes);
                    self.step = Step::CatchUpSent { catch_up, len };
                }
                Err(e) => self.fail(e, now),
            },
            (Step::CatchUpSent { mut catch_up, len }, Event::Replied { reply, .. }) => match reply {
                Ok(PeerReply::Stored) => {
                    catch_up.range.start += len;
                    if catch_up.range.start < catch_up.range.end {
                        self.read(catch_up);
                    } else {
                        self.next_range(catch_up);
                    }
                }
                Ok(PeerReply::Behind { segment, have }) => {
                    let at = Position { segment: catch_up.range.segment, offset: catch_up.range.start };
                    let have = Position { segment, offset: have };
                    self.fail(format!("catch-up: peer behind at {have:?} while sending {at:?}"), now);
                }
                Ok(other) => self.fail(describe(&other), now),
                Err(e) => self.fail(e, now),
            },
            (Step::Appending { at, end, retried }, Event::Replied { sent, reply }) => match reply {
                Ok(PeerReply::Stored) => self.stored(end),
                Ok(PeerReply::Behind { segment, have }) => {
                    let have = Position { segment, offset: have };
                    if retried {
                        return self.fail(format!("peer still behind at {have:?} after catching up"), now);
                    }
                    let PeerMessage::Append { bytes, .. } = sent else {
                        return self.fail("the run's append came back as another message".into(), now);
                    };
                    self.list(Run { at, bytes, retried: true }, have);
                }
                Ok(other) => self.fail(describe(&other), now),
                Err(e) => self.fail(e, now),
            },
            (step, event) => {
                debug_assert!(false, "{event:?} does not answer {step:?}");
                self.fail(format!("replication: {event:?} while {step:?}"), now);
            }
        }
    }

    fn list(&mut self, run: Run, from: Position) {
        self.commands.push_back(Command::ListLengths { first: from.segment, to: run.at });
        self.step = Step::Listing { run, from };
    }

    fn catch_up(&mut self, run: Run, from: Position, lengths: &[(u64, u64)]) {
        let mut plan: VecDeque<Range> = catch_up_plan(from, run.at, lengths).into();
        let Some(range) = plan.pop_front() else { return self.append(run) };
        self.commands.push_back(Command::CatchingUp {
            from,
            to: run.at,
            ranges: plan.len() + 1,
            bytes: std::iter::once(&range).chain(&plan).map(|r| r.end - r.start).sum(),
        });
        self.read(CatchUp { run, range, rest: plan });
    }

    /// Asks for the next chunk of the range. An empty range is still sent (as one empty
    /// append): it cuts off bytes of a refused group the copy has past the segment's end, or
    /// starts an empty segment.
    fn read(&mut self, catch_up: CatchUp) {
        self.commands.push_back(Command::ReadRecords(catch_up.range));
        self.step = Step::Reading(catch_up);
    }

    fn next_range(&mut self, mut catch_up: CatchUp) {
        match catch_up.rest.pop_front() {
            Some(range) => {
                catch_up.range = range;
                self.read(catch_up);
            }
            None => self.append(catch_up.run),
        }
    }

    fn append(&mut self, run: Run) {
        let end = Position { segment: run.at.segment, offset: run.at.offset + run.bytes.len() as u64 };
        self.send(run.at, run.bytes);
        self.step = Step::Appending { at: run.at, end, retried: run.retried };
    }

    fn send(&mut self, at: Position, bytes: Vec<u8>) {
        self.seq += 1;
        self.commands.push_back(Command::Exchange(PeerMessage::Append {
            origin: self.origin.clone(),
            seq: self.seq,
            segment: at.segment,
            offset: at.offset,
            bytes,
        }));
    }

    fn stored(&mut self, end: Position) {
        self.level = Some(end);
        self.backoff = MIN_BACKOFF;
        let back = self.down_until.take().is_some();
        self.commands.push_back(Command::Done(Outcome::Stored { end, back }));
    }

    fn fail(&mut self, error: String, now: Instant) {
        self.level = None;
        self.step = Step::Idle;
        let newly_down = self.down_until.is_none();
        self.down_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.commands.push_back(Command::Done(Outcome::Failed { error, newly_down }));
    }
}

/// Merges the groups queued for a peer into runs that are contiguous in the WAL: fed the groups
/// in order (refused ones left out), it says where a new run starts.
#[derive(Debug, Default)]
pub struct Runs {
    /// End of the current run.
    end: Option<Position>,
}

impl Runs {
    /// The group of `len` bytes at `at` is next: whether it starts a new run (rather than
    /// continuing the current one, which then goes out first if there is one).
    pub fn starts_run(&mut self, at: Position, len: u64) -> bool {
        let continues = self.end == Some(at);
        self.end = Some(Position { segment: at.segment, offset: at.offset + len });
        !continues
    }
}

pub fn describe(reply: &PeerReply) -> String {
    match reply {
        PeerReply::Refused { reason } => format!("refused: {reason}"),
        PeerReply::Full { used_bytes, budget_bytes } => {
            format!("replica budget full: {used_bytes} of {budget_bytes} bytes of peers' copies in use")
        }
        other => format!("unexpected reply {other:?}"),
    }
}

/// What a peer whose copy ends at `from` lacks to be level with the local WAL at `to`, given the
/// local segments' committed lengths (`to.segment` last): oldest first. Nothing when the copy is
/// at or past `to` in its segment (an append before the copy's end cuts and overwrites it).
pub fn catch_up_plan(from: Position, to: Position, lengths: &[(u64, u64)]) -> Vec<Range> {
    if from.segment >= to.segment {
        return if from.segment == to.segment && from.offset < to.offset {
            vec![Range { segment: to.segment, start: from.offset, end: to.offset }]
        } else {
            Vec::new()
        };
    }
    lengths
        .iter()
        .filter(|&&(segment, _)| segment >= from.segment && segment <= to.segment)
        .filter_map(|&(segment, len)| {
            let start = if segment == from.segment { from.offset.min(len) } else { 0 };
            let needed = if segment == from.segment {
                // Also when the copy has more than the segment: the empty append cuts it back.
                from.offset != len
            } else {
                segment < to.segment || len > 0
            };
            needed.then_some(Range { segment, start, end: len })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::wal::mirror::rules::{Placement, place};

    fn pos(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    fn range(segment: u64, start: u64, end: u64) -> Range {
        Range { segment, start, end }
    }

    fn origin() -> Origin {
        Origin { node_id: "edge-a".into(), wal_id: 7 }
    }

    #[test]
    fn a_peer_that_missed_several_segments_gets_all_of_them() {
        // The copy ends inside segment 3; the origin wrote 4, 5 and 6 since and is in 7.
        let lengths = [(3, 900), (4, 1000), (5, 1000), (6, 980), (7, 120)];
        assert_eq!(
            catch_up_plan(pos(3, 400), pos(7, 120), &lengths),
            [range(3, 400, 900), range(4, 0, 1000), range(5, 0, 1000), range(6, 0, 980), range(7, 0, 120)]
        );
        // At the start of a new segment, with the copy's last segment complete: nothing to send.
        assert_eq!(catch_up_plan(pos(6, 980), pos(7, 0), &[(6, 980), (7, 0)]), []);
        // An empty copy of a WAL whose first segments were acked and deleted locally.
        assert_eq!(catch_up_plan(pos(0, 0), pos(9, 50), &[(8, 700), (9, 50)]), [range(8, 0, 700), range(9, 0, 50)]);
    }

    #[test]
    fn within_a_segment_only_the_gap_is_sent() {
        assert_eq!(catch_up_plan(pos(5, 100), pos(5, 300), &[(5, 300)]), [range(5, 100, 300)]);
        assert_eq!(catch_up_plan(pos(5, 300), pos(5, 300), &[(5, 300)]), []);
        // The copy has a refused group's bytes past the append: the append overwrites them.
        assert_eq!(catch_up_plan(pos(5, 400), pos(5, 300), &[(5, 300)]), []);
    }

    #[test]
    fn refused_bytes_past_a_finished_segment_are_cut() {
        // The copy holds 50 bytes of a refused group after segment 4's real end.
        assert_eq!(
            catch_up_plan(pos(4, 1050), pos(5, 10), &[(4, 1000), (5, 10)]),
            [range(4, 1000, 1000), range(5, 0, 10)]
        );
    }

    /// Where each group of a sequence goes: the indices at which runs start.
    fn run_starts(groups: &[(Position, u64)]) -> Vec<usize> {
        let mut runs = Runs::default();
        groups.iter().enumerate().filter(|&(_, &(at, len))| runs.starts_run(at, len)).map(|(i, _)| i).collect()
    }

    #[test]
    fn contiguous_groups_merge_into_one_run() {
        assert_eq!(run_starts(&[(pos(1, 0), 10), (pos(1, 10), 5), (pos(1, 15), 1)]), [0]);
        // A gap (a group refused and left out), a cut back (the next group where a refused one
        // was, after the one before it) and a new segment each start a run.
        assert_eq!(run_starts(&[(pos(1, 0), 10), (pos(1, 30), 5)]), [0, 1]);
        assert_eq!(run_starts(&[(pos(1, 0), 10), (pos(1, 10), 5), (pos(1, 10), 7)]), [0, 2]);
        assert_eq!(run_starts(&[(pos(1, 0), 10), (pos(2, 0), 5), (pos(2, 5), 5)]), [0, 1]);
    }

    /// Takes the next command, which must be there.
    fn next(s: &mut PeerState) -> Command {
        s.poll().expect("a command")
    }

    fn reply(s: &mut PeerState, sent: PeerMessage, reply: PeerReply, now: Instant) {
        s.handle(Event::Replied { sent, reply: Ok(reply) }, now);
    }

    fn expect_append(command: Command) -> (PeerMessage, u64, Position, Vec<u8>) {
        match command {
            Command::Exchange(msg @ PeerMessage::Append { .. }) => {
                let PeerMessage::Append { seq, segment, offset, ref bytes, .. } = msg else { unreachable!() };
                let (at, bytes) = (pos(segment, offset), bytes.clone());
                (msg, seq, at, bytes)
            }
            other => panic!("expected an append, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_peer_is_located_then_level_runs_go_straight_out() {
        let now = Instant::now();
        let mut s = PeerState::new(origin(), 100);
        s.run(pos(2, 50), vec![1; 10]);
        let Command::Exchange(locate @ PeerMessage::Locate { .. }) = next(&mut s) else { panic!("locate first") };
        reply(&mut s, locate, PeerReply::CopyEnd { end: pos(2, 50) }, now);
        // The copy is level: the lengths are listed (nothing to send) and the run goes out.
        assert!(matches!(next(&mut s), Command::ListLengths { first: 2, to } if to == pos(2, 50)));
        s.handle(Event::Lengths(Ok(vec![(2, 50)])), now);
        let (msg, seq, at, bytes) = expect_append(next(&mut s));
        assert_eq!((seq, at, bytes), (101, pos(2, 50), vec![1; 10]));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), done(Outcome::Stored { end: pos(2, 60), back: false }));
        assert!(s.poll().is_none());
        // Level now: the next run goes out with no question asked.
        s.run(pos(2, 60), vec![2; 5]);
        let (msg, seq, at, _) = expect_append(next(&mut s));
        assert_eq!((seq, at), (102, pos(2, 60)));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), done(Outcome::Stored { end: pos(2, 65), back: false }));
    }

    fn done(outcome: Outcome) -> Command {
        Command::Done(outcome)
    }

    #[test]
    fn a_peer_behind_gets_the_missing_bytes_in_chunks_then_the_run() {
        let now = Instant::now();
        let mut s = PeerState::new(origin(), 0);
        s.run(pos(4, 30), vec![9; 3]);
        let Command::Exchange(locate) = next(&mut s) else { panic!() };
        reply(&mut s, locate, PeerReply::CopyEnd { end: pos(3, 10) }, now);
        assert!(matches!(next(&mut s), Command::ListLengths { first: 3, .. }));
        s.handle(Event::Lengths(Ok(vec![(3, 40), (4, 30)])), now);
        assert_eq!(next(&mut s), Command::CatchingUp { from: pos(3, 10), to: pos(4, 30), ranges: 2, bytes: 60 });
        // Segment 3 from 10 to 40 in two chunks (the reads end on record boundaries).
        assert_eq!(next(&mut s), Command::ReadRecords(range(3, 10, 40)));
        s.handle(Event::Records(Ok(vec![0; 20])), now);
        let (msg, _, at, _) = expect_append(next(&mut s));
        assert_eq!(at, pos(3, 10));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), Command::ReadRecords(range(3, 30, 40)));
        s.handle(Event::Records(Ok(vec![0; 10])), now);
        let (msg, _, at, _) = expect_append(next(&mut s));
        assert_eq!(at, pos(3, 30));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), Command::ReadRecords(range(4, 0, 30)));
        s.handle(Event::Records(Ok(vec![0; 30])), now);
        let (msg, _, at, _) = expect_append(next(&mut s));
        assert_eq!(at, pos(4, 0));
        reply(&mut s, msg, PeerReply::Stored, now);
        let (msg, _, at, bytes) = expect_append(next(&mut s));
        assert_eq!((at, bytes), (pos(4, 30), vec![9; 3]));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), done(Outcome::Stored { end: pos(4, 33), back: false }));
    }

    #[test]
    fn a_run_answered_behind_is_caught_up_and_sent_once_more() {
        let now = Instant::now();
        let mut s = level_at(pos(1, 100), now);
        s.run(pos(1, 100), vec![5; 10]);
        let (msg, ..) = expect_append(next(&mut s));
        // The replica lost its copy past 60.
        reply(&mut s, msg, PeerReply::Behind { segment: 1, have: 60 }, now);
        assert!(matches!(next(&mut s), Command::ListLengths { first: 1, .. }));
        s.handle(Event::Lengths(Ok(vec![(1, 100)])), now);
        assert!(matches!(next(&mut s), Command::CatchingUp { .. }));
        assert_eq!(next(&mut s), Command::ReadRecords(range(1, 60, 100)));
        s.handle(Event::Records(Ok(vec![0; 40])), now);
        let (msg, ..) = expect_append(next(&mut s));
        reply(&mut s, msg, PeerReply::Stored, now);
        let (msg, _, at, bytes) = expect_append(next(&mut s));
        assert_eq!((at, bytes), (pos(1, 100), vec![5; 10]), "the same run, its bytes back");
        // Behind a second time: the peer fails.
        reply(&mut s, msg, PeerReply::Behind { segment: 1, have: 60 }, now);
        assert!(matches!(next(&mut s), Command::Done(Outcome::Failed { newly_down: true, .. })));
    }

    /// A state whose copy is known level at `at`.
    fn level_at(at: Position, now: Instant) -> PeerState {
        let mut s = PeerState::new(origin(), 0);
        s.run(at, Vec::new());
        let Command::Exchange(locate) = next(&mut s) else { panic!() };
        reply(&mut s, locate, PeerReply::CopyEnd { end: at }, now);
        next(&mut s);
        s.handle(Event::Lengths(Ok(vec![(at.segment, at.offset)])), now);
        let (msg, ..) = expect_append(next(&mut s));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert!(matches!(next(&mut s), Command::Done(Outcome::Stored { .. })));
        s
    }

    #[test]
    fn a_failed_peer_is_skipped_for_a_doubling_backoff_and_relocated() {
        let t0 = Instant::now();
        let mut s = level_at(pos(1, 0), t0);
        let mut now = t0;
        let mut backoffs = Vec::new();
        for attempt in 0..7 {
            assert!(s.admits(now));
            s.run(pos(1, 0), vec![1]);
            let command = next(&mut s);
            if attempt > 0 {
                // A failure forgot where the copy ends.
                assert!(matches!(command, Command::Exchange(PeerMessage::Locate { .. })), "{command:?}");
            }
            let Command::Exchange(sent) = command else { panic!() };
            s.handle(Event::Replied { sent, reply: Err("no answer".into()) }, now);
            let Command::Done(Outcome::Failed { newly_down, .. }) = next(&mut s) else { panic!() };
            assert_eq!(newly_down, attempt == 0, "warned once");
            let mut wait = Duration::ZERO;
            while !s.admits(now + wait) {
                wait += Duration::from_millis(10);
            }
            backoffs.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(backoffs, [100, 200, 400, 800, 1600, 2000, 2000]);
        // Back: the backoff starts over.
        s.run(pos(1, 0), vec![1]);
        let Command::Exchange(locate) = next(&mut s) else { panic!() };
        reply(&mut s, locate, PeerReply::CopyEnd { end: pos(1, 0) }, now);
        next(&mut s);
        s.handle(Event::Lengths(Ok(vec![(1, 0)])), now);
        let (msg, ..) = expect_append(next(&mut s));
        reply(&mut s, msg, PeerReply::Stored, now);
        assert_eq!(next(&mut s), done(Outcome::Stored { end: pos(1, 1), back: true }));
        s.run(pos(1, 1), vec![1]);
        let (msg, ..) = expect_append(next(&mut s));
        s.handle(Event::Replied { sent: msg, reply: Err("lost".into()) }, now);
        next(&mut s);
        assert!(!s.admits(now + Duration::from_millis(99)));
        assert!(s.admits(now + MIN_BACKOFF));
    }

    #[test]
    fn refusals_and_local_errors_fail_the_run() {
        let now = Instant::now();
        let full = PeerReply::Full { used_bytes: 10, budget_bytes: 10 };
        let mut s = level_at(pos(1, 0), now);
        s.run(pos(1, 0), vec![1]);
        let (msg, ..) = expect_append(next(&mut s));
        reply(&mut s, msg, full, now);
        let Command::Done(Outcome::Failed { error, .. }) = next(&mut s) else { panic!() };
        assert_eq!(error, "replica budget full: 10 of 10 bytes of peers' copies in use");
        let later = now + MAX_BACKOFF;
        s.run(pos(1, 0), vec![1]);
        let Command::Exchange(locate) = next(&mut s) else { panic!() };
        reply(&mut s, locate, PeerReply::Refused { reason: "disk".into() }, later);
        let Command::Done(Outcome::Failed { error, .. }) = next(&mut s) else { panic!() };
        assert_eq!(error, "locating the copy: refused: disk");
        let later = later + MAX_BACKOFF;
        s.run(pos(1, 0), vec![1]);
        let Command::Exchange(locate) = next(&mut s) else { panic!() };
        reply(&mut s, locate, PeerReply::CopyEnd { end: pos(0, 0) }, later);
        next(&mut s);
        s.handle(Event::Lengths(Err("listing the local segments to catch up: EIO".into())), later);
        let Command::Done(Outcome::Failed { error, .. }) = next(&mut s) else { panic!() };
        assert!(error.contains("EIO"));
        assert!(s.poll().is_none());
    }

    /// The origin's WAL, the peer's copy (kept by the replica's own append rules), and a link
    /// that may fail, for the property below.
    struct World {
        /// Local committed segments (deleted ones absent).
        local: BTreeMap<u64, Vec<u8>>,
        /// The copy's segments.
        copy: BTreeMap<u64, Vec<u8>>,
        last_seq: u64,
    }

    impl World {
        fn copy_end(&self) -> Position {
            self.copy.iter().next_back().map_or(pos(0, 0), |(&s, b)| pos(s, b.len() as u64))
        }

        /// The replica's side of one exchange.
        fn answer(&mut self, msg: &PeerMessage) -> PeerReply {
            match msg {
                PeerMessage::Locate { .. } => PeerReply::CopyEnd { end: self.copy_end() },
                PeerMessage::Append { seq, segment, offset, bytes, .. } => {
                    assert!(*seq > self.last_seq, "seq grows");
                    self.last_seq = *seq;
                    match place(self.copy_end(), *segment, *offset) {
                        Placement::Behind { segment, have } => PeerReply::Behind { segment, have },
                        Placement::Stale { segment, last } => {
                            PeerReply::Refused { reason: format!("stale {segment} < {last}") }
                        }
                        Placement::NewSegment | Placement::Write { .. } => {
                            let seg = self.copy.entry(*segment).or_default();
                            seg.truncate(*offset as usize);
                            seg.extend_from_slice(bytes);
                            PeerReply::Stored
                        }
                    }
                }
                PeerMessage::Heartbeat { .. } => unreachable!("not sent by the peer task"),
            }
        }

        /// The driver's side of one command.
        fn carry_out(&mut self, command: Command, link: Link) -> Option<Event> {
            match command {
                Command::Exchange(msg) => {
                    let reply = match link {
                        Link::Up => Ok(self.answer(&msg)),
                        Link::Lost => Err("no answer".into()),
                        Link::AnswerLost => {
                            self.answer(&msg);
                            Err("answer lost".into())
                        }
                    };
                    Some(Event::Replied { sent: msg, reply })
                }
                Command::ListLengths { first, to } => {
                    let mut out: Vec<(u64, u64)> = self
                        .local
                        .range(first..to.segment)
                        .map(|(&segment, bytes)| (segment, bytes.len() as u64))
                        .collect();
                    out.push((to.segment, to.offset));
                    Some(Event::Lengths(Ok(out)))
                }
                Command::ReadRecords(r) => {
                    // Chunks of at most 7 bytes stand for reads that end on record boundaries.
                    let seg = &self.local[&r.segment];
                    let end = r.end.min(r.start + 7) as usize;
                    Some(Event::Records(Ok(seg[r.start as usize..end].to_vec())))
                }
                Command::CatchingUp { .. } => None,
                Command::Done(_) => unreachable!("taken by the caller"),
            }
        }
    }

    /// What becomes of the next exchange.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Link {
        Up,
        /// The message is lost on the way.
        Lost,
        /// The replica applies the message but the answer is lost.
        AnswerLost,
    }

    #[derive(Debug, Clone)]
    enum Happening {
        /// A group of this many bytes is committed locally and goes out as a run.
        Group(u8),
        /// The writer moves to a new segment.
        Roll,
        /// The next exchange fails this way.
        Fail(Link),
        /// The replica restarts without its disk: the copy is gone and the next exchange fails
        /// (on the connection to the replica's previous process). The state only learns of the
        /// loss through that failure: an append at the start of a segment is accepted by an
        /// empty copy, so without it the copy would silently lack the segments before.
        CopyLost,
        /// The replica restarts without its disk while no exchange is under way: nothing fails,
        /// the driver's next run finds the connection closed and opens a new one, and tells the
        /// state so ([`PeerState::reconnected`]).
        CopyLostBetweenRuns,
        /// Core acked the oldest local segment: the origin and the copy delete it (the copy
        /// keeps its last segment, whose end it goes on from).
        Trim,
    }

    fn happening() -> impl Strategy<Value = Happening> {
        prop_oneof![
            8 => (1u8..20).prop_map(Happening::Group),
            2 => Just(Happening::Roll),
            2 => Just(Happening::Fail(Link::Lost)),
            2 => Just(Happening::Fail(Link::AnswerLost)),
            1 => Just(Happening::CopyLost),
            1 => Just(Happening::CopyLostBetweenRuns),
            1 => Just(Happening::Trim),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever fails or is lost on the way, a run reported stored means the copy holds
        /// exactly the local WAL's bytes of every local segment, up to the run's end, and a
        /// failure leaves no level believed in. With `require`, the writer cuts a group no
        /// peer stored back off its WAL, and the next group is written in its place.
        #[test]
        fn a_stored_run_leaves_the_copy_level_with_the_wal(
            steps in proptest::collection::vec(happening(), 1..60),
            require in any::<bool>(),
        ) {
            let mut w = World { local: BTreeMap::from([(1, Vec::new())]), copy: BTreeMap::new(), last_seq: 0 };
            let mut s = PeerState::new(origin(), 0);
            let mut now = Instant::now();
            let mut link = Link::Up;
            let mut reconnect = false;
            let mut tag = 0u8;
            for happening in steps {
                match happening {
                    Happening::Roll => {
                        let last = *w.local.keys().next_back().unwrap();
                        w.local.insert(last + 1, Vec::new());
                    }
                    // A failure already coming is not made milder by another one.
                    Happening::Fail(how) if link == Link::Up => link = how,
                    Happening::Fail(_) => {}
                    Happening::CopyLost => {
                        w.copy.clear();
                        link = Link::Lost;
                    }
                    Happening::CopyLostBetweenRuns => {
                        w.copy.clear();
                        reconnect = true;
                    }
                    Happening::Trim => {
                        if w.local.len() > 1 {
                            let first = *w.local.keys().next().unwrap();
                            w.local.remove(&first);
                            if w.copy.keys().next_back() != Some(&first) {
                                w.copy.remove(&first);
                            }
                        }
                    }
                    Happening::Group(len) => {
                        tag = tag.wrapping_add(1);
                        let (&segment, seg) = w.local.iter_mut().next_back().unwrap();
                        let at = pos(segment, seg.len() as u64);
                        let bytes = vec![tag; usize::from(len)];
                        seg.extend_from_slice(&bytes);
                        now += MAX_BACKOFF;
                        prop_assert!(s.admits(now));
                        if std::mem::take(&mut reconnect) {
                            s.reconnected();
                        }
                        s.run(at, bytes);
                        let outcome = loop {
                            match s.poll().expect("a run ends with Done") {
                                Command::Done(outcome) => break outcome,
                                command => {
                                    let this = if matches!(command, Command::Exchange(_)) {
                                        std::mem::replace(&mut link, Link::Up)
                                    } else {
                                        Link::Up
                                    };
                                    if let Some(event) = w.carry_out(command, this) {
                                        s.handle(event, now);
                                    }
                                }
                            }
                        };
                        prop_assert!(s.poll().is_none());
                        match outcome {
                            Outcome::Stored { end, .. } => {
                                prop_assert_eq!(end, pos(segment, at.offset + u64::from(len)));
                                prop_assert_eq!(w.copy_end(), end);
                                for (seg, bytes) in &w.local {
                                    prop_assert_eq!(w.copy.get(seg), Some(bytes), "segment {}", seg);
                                }
                                prop_assert_eq!(s.level, Some(end));
                            }
                            Outcome::Failed { .. } => {
                                prop_assert_eq!(s.level, None);
                                if require {
                                    w.local.get_mut(&segment).unwrap().truncate(at.offset as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
