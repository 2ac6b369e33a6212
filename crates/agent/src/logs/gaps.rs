//! Lines a follower missed, counted exactly: every chunk carries the number of lines
//! its instance's stream had produced before it (`Chunk::first_line`), so a follower
//! that fell behind (the hub's broadcast skipped chunks) learns, from the next chunk
//! of each instance's stream, how many lines of that app it did not see. Pure: the
//! follower feeds chunks in, notices come out.

use std::collections::HashMap;

use super::Stream;

/// Lines captured so far of each instance's stream.
pub type Marks = HashMap<(u32, Stream), u64>;

/// Where each instance's stream is expected to go on next, for one follower.
#[derive(Debug, Default)]
pub struct Gaps {
    next: HashMap<(u32, Stream), u64>,
}

impl Gaps {
    /// A follower that has seen every line up to `marks` (from `LogHub::marks`, taken
    /// with its history): an instance's stream with no mark starts at line 0.
    pub fn new(marks: Marks) -> Gaps {
        Gaps { next: marks }
    }

    /// A chunk of `lines` lines starting at `first_line` of `(id, stream)` arrived:
    /// how many lines before it were never seen. A chunk starting before what was
    /// expected comes from a counter that began again at 0 (the instance was deleted
    /// and its id reused): the lines before it in the new count were missed.
    pub fn observe(&mut self, id: u32, stream: Stream, first_line: u64, lines: u64) -> u64 {
        let expected = self.next.get(&(id, stream)).copied().unwrap_or(0);
        let missed = match first_line.checked_sub(expected) {
            Some(skipped) => skipped,
            None => first_line,
        };
        self.next
            .insert((id, stream), first_line.saturating_add(lines));
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_chunk_is_counted_by_its_lines_per_instance() {
        let mut gaps = Gaps::new(HashMap::from([((1, Stream::Out), 10)]));
        assert_eq!(gaps.observe(1, Stream::Out, 10, 5), 0);
        // Lines 15..40 were in chunks this follower never got.
        assert_eq!(gaps.observe(1, Stream::Out, 40, 2), 25);
        assert_eq!(gaps.observe(1, Stream::Out, 42, 1), 0);
        // Another stream and another instance count on their own.
        assert_eq!(gaps.observe(1, Stream::Err, 3, 1), 3);
        assert_eq!(gaps.observe(2, Stream::Out, 0, 7), 0);
        assert_eq!(gaps.observe(2, Stream::Out, 9, 1), 2);
    }

    #[test]
    fn a_counter_begun_again_counts_from_zero() {
        let mut gaps = Gaps::new(HashMap::from([((1, Stream::Out), 100)]));
        assert_eq!(gaps.observe(1, Stream::Out, 100, 1), 0);
        // The instance was deleted and its id reused: its count began again.
        assert_eq!(gaps.observe(1, Stream::Out, 0, 3), 0);
        assert_eq!(gaps.observe(1, Stream::Out, 3, 1), 0);
        assert_eq!(gaps.observe(1, Stream::Out, 10, 1), 6);
        assert_eq!(
            gaps.observe(1, Stream::Out, 4, 1),
            4,
            "begun again, 4 lines unseen"
        );
    }
}
