//! What a `logs -f` follower through controllers printed, so that after its controller
//! dies it can follow again through another and print nothing twice: each line carries
//! its number in its instance's stream (`LogEntry.seq`, agent protocol 1.8); the
//! follower asks the new controller for history again and skips every line it already
//! printed (same host, instance and stream, a number and a time not past the last one
//! printed; a newer time means the agent started counting again). A gap between the
//! last line printed and the first one seen again is said as a notice. Pure: entries
//! in, decisions out.

use std::collections::HashMap;

use fleet_proto::agent::v1 as apb;

/// The last line printed of each (host, instance id, stream): its number and time.
#[derive(Debug, Default)]
pub struct Printed {
    last: HashMap<(String, u32, i32), (u64, u64)>,
    /// Since the last reconnect: the streams whose first line came again.
    resumed: HashMap<(String, u32, i32), bool>,
}

/// What to do with an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Print,
    /// Printed before the reconnect.
    Skip,
    /// Print it, after a notice that this many lines before it were never shown.
    Gap(u64),
}

/// Streams remembered at most (instances × 2 of a stage; old ones are forgotten first
/// only in the sense that nothing is kept past this: a bound, not a cache).
const MAX_STREAMS: usize = 100_000;

impl Printed {
    /// The follower reconnected: history comes again.
    pub fn reconnected(&mut self) {
        self.resumed.clear();
    }

    /// Decides on `entry` and remembers it when printed.
    pub fn admit(&mut self, entry: &apb::LogEntry) -> Decision {
        if entry.seq == 0 || !entry.notice.is_empty() {
            return Decision::Print;
        }
        let key = (entry.host.clone(), entry.id, entry.stream);
        let first_since_reconnect = !self.resumed.contains_key(&key);
        let decision = match self.last.get(&key) {
            Some(&(seq, at)) if entry.seq <= seq && entry.ts_unix_ms <= at => {
                return Decision::Skip;
            }
            Some(&(seq, at))
                if first_since_reconnect && entry.seq > seq + 1 && entry.ts_unix_ms >= at =>
            {
                Decision::Gap(entry.seq - seq - 1)
            }
            _ => Decision::Print,
        };
        if self.last.len() < MAX_STREAMS || self.last.contains_key(&key) {
            self.last.insert(key.clone(), (entry.seq, entry.ts_unix_ms));
            self.resumed.insert(key, true);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(host: &str, id: u32, seq: u64, at: u64) -> apb::LogEntry {
        apb::LogEntry {
            host: host.into(),
            id,
            seq,
            ts_unix_ms: at,
            line: format!("line {seq}"),
            ..apb::LogEntry::default()
        }
    }

    #[test]
    fn history_after_a_reconnect_prints_only_what_was_not_printed() {
        let mut printed = Printed::default();
        for seq in 1..=5 {
            assert_eq!(
                printed.admit(&line("a", 0, seq, 100 + seq)),
                Decision::Print
            );
        }
        printed.reconnected();
        // The new controller sends the last lines again, then new ones.
        for seq in 2..=5 {
            assert_eq!(printed.admit(&line("a", 0, seq, 100 + seq)), Decision::Skip);
        }
        assert_eq!(printed.admit(&line("a", 0, 6, 106)), Decision::Print);
        // Another instance and another host count on their own.
        assert_eq!(printed.admit(&line("a", 1, 1, 100)), Decision::Print);
        assert_eq!(printed.admit(&line("b", 0, 3, 100)), Decision::Print);
    }

    #[test]
    fn lines_lost_between_two_controllers_are_said_and_a_restarted_count_is_printed() {
        let mut printed = Printed::default();
        printed.admit(&line("a", 0, 10, 100));
        printed.reconnected();
        // More lines than the history holds were written meanwhile.
        assert_eq!(printed.admit(&line("a", 0, 15, 200)), Decision::Gap(4));
        assert_eq!(printed.admit(&line("a", 0, 16, 201)), Decision::Print);
        // The agent began counting again (restarted): lower numbers, newer times.
        printed.reconnected();
        assert_eq!(printed.admit(&line("a", 0, 1, 300)), Decision::Print);
        // Notices and entries of old agents (no number) always print.
        let mut notice = line("a", 0, 0, 1);
        notice.notice = "unreachable".into();
        assert_eq!(printed.admit(&notice), Decision::Print);
        assert_eq!(printed.admit(&line("a", 0, 0, 1)), Decision::Print);
    }
}
