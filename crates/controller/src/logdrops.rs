//! Lines a slow log watcher lost at the controller, counted per instance and stream:
//! the watcher is told, with its next batch, how many lines of which app on which
//! host it missed (`LogEntry.missed`), never silently. Lines an agent already
//! reported missed (its own notices) are carried into the count when they are lost
//! here too.

use std::collections::BTreeMap;

use fleet_proto::agent::v1::{LogEntry, LogStream};

/// Missed lines by (id, app, instance, stream).
#[derive(Debug, Default)]
pub struct Dropped(BTreeMap<(u32, String, u32, i32), u64>);

impl Dropped {
    /// `entries` were not delivered: count their lines, and what their notices of
    /// missed lines said.
    pub fn count(&mut self, entries: &[LogEntry]) {
        for entry in entries {
            let lines = match (entry.notice.is_empty(), entry.missed) {
                (true, _) => 1,
                (false, missed) => missed,
            };
            if lines > 0 {
                let key = (entry.id, entry.app.clone(), entry.instance, entry.stream);
                *self.0.entry(key).or_default() += lines;
            }
        }
    }

    /// A notice per instance and stream with lines missed, emptying the count.
    pub fn take_notices(&mut self, host: &str, now_ms: u64) -> Vec<LogEntry> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|((id, app, instance, stream), missed)| {
                let stream_name = match LogStream::try_from(stream) {
                    Ok(LogStream::Err) => "err",
                    _ => "out",
                };
                LogEntry {
                    ts_unix_ms: now_ms,
                    notice: format!(
                        "{missed} lines of {app}#{instance} ({stream_name}) on {host} were not shown: this client read too slowly (they are in the host's log files)"
                    ),
                    missed,
                    id,
                    app,
                    instance,
                    stream,
                    host: host.to_owned(),
                    ..LogEntry::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(app: &str, instance: u32) -> LogEntry {
        LogEntry {
            app: app.into(),
            instance,
            line: "x".into(),
            ..LogEntry::default()
        }
    }

    #[test]
    fn lost_lines_and_lost_notices_are_counted_per_instance() {
        let mut dropped = Dropped::default();
        let agents_notice = LogEntry {
            notice: "7 lines of api#0 (out) were not shown".into(),
            missed: 7,
            ..line("api", 0)
        };
        dropped.count(&[
            line("api", 0),
            line("api", 0),
            line("worker", 1),
            agents_notice,
        ]);
        let notices = dropped.take_notices("web1", 5);
        let counts: Vec<(&str, u32, u64)> = (notices.iter())
            .map(|n| (n.app.as_str(), n.instance, n.missed))
            .collect();
        assert_eq!(counts, vec![("api", 0, 9), ("worker", 1, 1)]);
        assert!(
            notices[0]
                .notice
                .starts_with("9 lines of api#0 (out) on web1"),
            "{notices:?}"
        );
        assert!(dropped.take_notices("web1", 6).is_empty(), "emptied");
    }
}
