//! Where an origin's append lands in a copy, as a pure function of the copy's end: the append
//! rules of [`super`], with no files. The copy carries out the [`Placement`] (create, cut,
//! write, sync) or answers with it.

use crate::wal::Position;

/// What to do with an append at `(segment, offset)` to a copy that ends at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Write at `offset` of the copy's last segment, after cutting the copy back to `offset`
    /// first when `cut` (bytes of a group the origin refused and cut from its own WAL).
    Write { cut: bool },
    /// Start `segment` (empty) after the copy's last one, then write at 0.
    NewSegment,
    /// The copy ends at `have` in `segment` (its last), before the append: the origin sends
    /// the bytes from there first.
    Behind { segment: u64, have: u64 },
    /// In a segment older than the copy's last: the origin never goes back.
    Stale { segment: u64, last: u64 },
}

pub fn place(end: Position, segment: u64, offset: u64) -> Placement {
    if segment < end.segment {
        return Placement::Stale { segment, last: end.segment };
    }
    if segment > end.segment {
        return if offset == 0 {
            Placement::NewSegment
        } else {
            Placement::Behind { segment: end.segment, have: end.offset }
        };
    }
    if offset > end.offset {
        return Placement::Behind { segment, have: end.offset };
    }
    Placement::Write { cut: offset < end.offset }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(segment: u64, offset: u64) -> Position {
        Position { segment, offset }
    }

    #[test]
    fn an_append_at_the_end_is_written() {
        assert_eq!(place(end(3, 100), 3, 100), Placement::Write { cut: false });
        // An empty copy (no segment yet) takes a first segment at any number, from 0.
        assert_eq!(place(end(0, 0), 0, 0), Placement::Write { cut: false });
        assert_eq!(place(end(0, 0), 7, 0), Placement::NewSegment);
    }

    #[test]
    fn an_append_before_the_end_cuts_the_refused_bytes_after_it() {
        assert_eq!(place(end(3, 100), 3, 40), Placement::Write { cut: true });
        assert_eq!(place(end(3, 100), 3, 0), Placement::Write { cut: true });
    }

    #[test]
    fn a_gap_answers_where_the_copy_ends() {
        assert_eq!(place(end(3, 100), 3, 101), Placement::Behind { segment: 3, have: 100 });
        // A later segment that does not start at 0: the copy's end is still in its last one.
        assert_eq!(place(end(3, 100), 4, 5), Placement::Behind { segment: 3, have: 100 });
        assert_eq!(place(end(3, 100), 9, 1), Placement::Behind { segment: 3, have: 100 });
    }

    #[test]
    fn a_later_segment_from_zero_starts_a_new_one_whatever_the_gap() {
        // Segments in between are the origin's business: it sends them first when it knows
        // the copy lacks them (catch-up), and skips those core already acked.
        assert_eq!(place(end(3, 100), 4, 0), Placement::NewSegment);
        assert_eq!(place(end(3, 100), 8, 0), Placement::NewSegment);
    }

    #[test]
    fn an_older_segment_is_stale() {
        assert_eq!(place(end(5, 10), 4, 0), Placement::Stale { segment: 4, last: 5 });
        assert_eq!(place(end(5, 0), 0, 0), Placement::Stale { segment: 0, last: 5 });
    }
}
