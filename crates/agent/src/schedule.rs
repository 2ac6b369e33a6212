//! `cron_restart`: parses an app's cron pattern in its time zone and runs a callback at
//! each fire time. What a fire does (restart the app, also when stopped, as PM2's
//! `God.registerCron` does) is the supervisor's business, not this module's.
//!
//! PM2 schedules with `croner` in JS; the Rust `croner` accepts the same patterns: five
//! fields, six with a leading seconds field, and `@daily`-style nicknames. PM2 has no
//! time zone option (#5618, PR #5877); `cron_timezone` adds one, with the host's zone as
//! the default, which is what PM2 does.

use std::time::{Duration, SystemTime};

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::Zoned;
use jiff::tz::TimeZone;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The nicknames croner knows (`@midnight` is spelled out before parsing).
const NICKNAMES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A parsed `cron_restart` pattern and the zone its fields are read in.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    zone: TimeZone,
}

/// The host's zone, read once: every app has a rotation schedule, and reading
/// `/etc/localtime` per app made starting 100 apps measurably slower.
fn host_zone() -> TimeZone {
    static ZONE: std::sync::OnceLock<TimeZone> = std::sync::OnceLock::new();
    ZONE.get_or_init(|| {
        TimeZone::try_system().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot tell the host's time zone; cron_restart uses UTC");
            TimeZone::UTC
        })
    })
    .clone()
}

impl CronSchedule {
    /// Parses a pattern (5 fields, 6 with seconds, or @daily-style nicknames) in
    /// `timezone` (an IANA name; `None` is the host's zone, as in PM2).
    pub fn parse(pattern: &str, timezone: Option<&str>) -> Result<CronSchedule, String> {
        let zone = match timezone {
            Some(name) => {
                TimeZone::get(name).map_err(|_| format!("unknown time zone \"{name}\""))?
            }
            // jiff reads `TZ`, then `/etc/localtime`. A host whose zone cannot be told
            // still gets a working schedule, in UTC, rather than an app that will not start.
            None => host_zone(),
        };
        let trimmed = pattern.trim();
        // The config crate accepts `@midnight` (a Vixie cron nickname); croner does not
        // know it, so it is spelled out here.
        let spelled = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            trimmed
        };
        // Counted here so the message speaks of fields, not of croner's options.
        // Seven fields (a year) would be a croner extension that PM2's config never
        // passes; refusing it keeps "5 or 6 fields" true everywhere.
        let fields = spelled.split_whitespace().count();
        let nickname = NICKNAMES.iter().any(|n| spelled.eq_ignore_ascii_case(n));
        if !nickname && !(5..=6).contains(&fields) {
            return Err(format!(
                "bad cron pattern \"{pattern}\": expected 5 or 6 fields or a nickname \
                 such as @daily, got {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(spelled)
            .map_err(|error| format!("bad cron pattern \"{pattern}\": {}", describe(&error)))?;
        Ok(CronSchedule { cron, zone })
    }

    /// The first fire time strictly after `after`, or `None` if it never fires (such as
    /// `0 0 30 2 *`, the 30th of February) or `after` is out of range.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let start = Zoned::new(Timestamp::try_from(after).ok()?, self.zone.clone());
        // `false`: not inclusive. croner works in whole seconds and drops the fraction
        // of `start`, so the answer is the first matching second after `after`.
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(SystemTime::from(next.timestamp()))
    }
}

/// croner's messages are capitalised sentences with a prefix such as "Component error:";
/// fleet's errors are short and lower-case.
fn describe(error: &CronError) -> String {
    let text = match error {
        CronError::EmptyPattern => return "the pattern is empty".to_string(),
        CronError::InvalidPattern(text)
        | CronError::IllegalCharacters(text)
        | CronError::ComponentError(text) => text.clone(),
        other => other.to_string(),
    };
    let text = text.trim().trim_end_matches('.');
    // Lower-case a capitalised first word, but leave a name such as `CronPattern`.
    let first_word = text.split_whitespace().next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        None => error.to_string(),
        Some(_) if first_word.chars().skip(1).any(char::is_uppercase) => text.to_string(),
        Some(first) => first.to_lowercase().chain(chars).collect(),
    }
}

/// Stops the cron task when dropped.
#[derive(Debug)]
pub struct CronHandle(JoinHandle<()>);

impl Drop for CronHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fire` at each fire time until the returned handle is dropped. Must be called
/// inside a tokio runtime; `fire` runs on that runtime's task, so it should be quick
/// (send a message to the supervisor, say) and never block.
///
/// Fire times are computed on the wall clock, since a pattern names wall-clock times,
/// but waiting uses tokio's clock. After a fire the next time is computed from the
/// previous fire time, unless the wall clock has since moved past it: a wall clock that
/// lags tokio's (tokio's paused clock in tests, or a wake-up a hair early) must not
/// yield the same fire time twice, and one that jumped ahead (a clock step, a resumed
/// suspend) skips the missed times rather than firing them in a burst. A wait already
/// under way is measured on the monotonic clock, so a clock step during it moves that
/// one fire; the next one is on time again.
pub fn spawn_cron(schedule: CronSchedule, fire: impl Fn() + Send + 'static) -> CronHandle {
    CronHandle(tokio::spawn(async move {
        // The last fire, on both clocks.
        let mut previous: Option<(SystemTime, Instant)> = None;
        loop {
            let wall_now = SystemTime::now();
            let (base_wall, base_tokio) = match previous {
                Some((fired_wall, fired_tokio)) if fired_wall >= wall_now => {
                    (fired_wall, fired_tokio)
                }
                _ => (wall_now, Instant::now()),
            };
            let Some(next) = schedule.next_after(base_wall) else {
                tracing::warn!(schedule = ?schedule.cron.pattern.as_str(), "cron_restart never fires again");
                return;
            };
            let wait = next.duration_since(base_wall).unwrap_or(Duration::ZERO);
            // An absolute deadline from the previous one: when tokio's clock jumps past
            // several fire times at once, each still fires once, in order.
            let deadline = base_tokio + wait;
            tokio::time::sleep_until(deadline).await;
            fire();
            previous = Some((next, deadline));
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// 2024-01-15 10:02:30 UTC, a Monday in winter (Paris is UTC+1).
    fn fixed() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_705_312_950)
    }

    fn utc(pattern: &str) -> CronSchedule {
        CronSchedule::parse(pattern, Some("UTC")).unwrap()
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn every_five_minutes_fires_at_the_next_multiple() {
        let next = utc("*/5 * * * *").next_after(fixed()).unwrap();
        assert_eq!(next, fixed() + secs(150)); // 10:05:00
        // Strictly after: a fire time is not its own successor.
        assert_eq!(utc("*/5 * * * *").next_after(next), Some(next + secs(300)));
    }

    #[test]
    fn a_time_zone_moves_the_instant() {
        let paris = CronSchedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        let in_utc = utc("0 3 * * *");
        // 03:00 on the 16th: 02:00 UTC in Paris, 03:00 UTC in UTC.
        let paris_next = paris.next_after(fixed()).unwrap();
        let utc_next = in_utc.next_after(fixed()).unwrap();
        assert_eq!(utc_next, fixed() + secs(16 * 3600 + 57 * 60 + 30));
        assert_eq!(paris_next + secs(3600), utc_next);
    }

    #[test]
    fn a_sixth_field_counts_seconds() {
        let schedule = utc("*/20 * * * * *");
        assert_eq!(schedule.next_after(fixed()), Some(fixed() + secs(10))); // :40
        // A fraction of a second is not a fire time: 10:02:39.5 -> 10:02:40.
        let just_before = fixed() + Duration::from_millis(9_500);
        assert_eq!(schedule.next_after(just_before), Some(fixed() + secs(10)));
    }

    #[test]
    fn nicknames_are_understood() {
        assert_eq!(
            utc("@hourly").next_after(fixed()),
            Some(fixed() + secs(57 * 60 + 30))
        );
        let midnight = fixed() + secs(13 * 3600 + 57 * 60 + 30);
        assert_eq!(utc("@daily").next_after(fixed()), Some(midnight));
        assert_eq!(utc("@midnight").next_after(fixed()), Some(midnight));
    }

    #[test]
    fn an_impossible_date_never_fires() {
        assert_eq!(utc("0 0 30 2 *").next_after(fixed()), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern_named() {
        for pattern in [
            "61 * * * *",
            "* * *",
            "* * * * * * *",
            "@often",
            "",
            "* * * * MOON",
        ] {
            let error = CronSchedule::parse(pattern, None).unwrap_err();
            assert!(
                error.starts_with(&format!("bad cron pattern \"{pattern}\": ")),
                "{error}"
            );
        }
    }

    #[test]
    fn an_unknown_time_zone_is_refused() {
        let error = CronSchedule::parse("0 3 * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(error, "unknown time zone \"Mars/Olympus\"");
    }

    #[tokio::test(start_paused = true)]
    async fn fires_once_per_period_until_dropped() {
        let fires = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fires);
        let handle = spawn_cron(utc("* * * * * *"), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        // The first fire comes at the next whole wall-clock second, whose distance
        // depends on when the test runs; step to it so the count below is exact.
        for _ in 0..200 {
            if fires.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
            settle().await;
        }
        assert_eq!(fires.load(Ordering::SeqCst), 1);
        // From here fires are 1 s apart: 3.5 s holds exactly three more.
        tokio::time::advance(Duration::from_millis(3_500)).await;
        settle().await;
        assert_eq!(fires.load(Ordering::SeqCst), 4);

        drop(handle);
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(fires.load(Ordering::SeqCst), 4);
    }

    /// Lets the cron task run everything that is due on the paused clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
}
