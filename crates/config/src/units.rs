//! Loose scalar parsing shared by config files and CLI flags: durations, byte sizes,
//! signal names and shell-like splitting of argument strings. PM2 accepts all of these
//! as strings; the typed conversions from config nodes live in `reader`.

const MS_PER_SECOND: f64 = 1000.0;
const MS_PER_MINUTE: f64 = 60.0 * MS_PER_SECOND;
const MS_PER_HOUR: f64 = 60.0 * MS_PER_MINUTE;
const MS_PER_DAY: f64 = 24.0 * MS_PER_HOUR;

/// PM2 sizes are 1024-based (`max_memory_restart: "40M"` is 40 MiB).
const BYTES_PER_KIB: f64 = 1024.0;

/// Parses `"1500"`, `"1.5s"`, `"200ms"`, `"5m"`, `"1h"`, `"1d"` into milliseconds.
/// A bare number is milliseconds, as in PM2.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let expected =
        || format!("expected a number of milliseconds or a duration like \"5s\", got {s:?}");
    let (number, unit) = split_number_unit(s).ok_or_else(expected)?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => MS_PER_SECOND,
        "m" | "min" | "mins" | "minute" | "minutes" => MS_PER_MINUTE,
        "h" | "hr" | "hrs" | "hour" | "hours" => MS_PER_HOUR,
        "d" | "day" | "days" => MS_PER_DAY,
        _ => return Err(expected()),
    };
    if number < 0.0 {
        return Err(format!("a duration cannot be negative, got {s:?}"));
    }
    to_u64(number * factor).ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses `"40M"`, `"1G"`, `"512K"`, `"1048576"` (also `"40MB"`, `"1.5g"`) into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let expected = || format!("expected a number of bytes or a size like \"200M\", got {s:?}");
    let (number, unit) = split_number_unit(s).ok_or_else(expected)?;
    let power = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 2,
        "g" | "gb" | "gib" => 3,
        "t" | "tb" | "tib" => 4,
        _ => return Err(expected()),
    };
    if number < 0.0 {
        return Err(format!("a size cannot be negative, got {s:?}"));
    }
    to_u64(number * BYTES_PER_KIB.powi(power)).ok_or_else(|| format!("size {s:?} is too large"))
}

/// Splits `" 1.5 s"` into `(1.5, "s")`; `None` when there is no number in front.
fn split_number_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number = number.trim();
    // `f64::from_str` also takes "inf" and "nan"; a duration or size never is one.
    if number.is_empty() || !number.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some((value, unit.trim()))
}

fn to_u64(value: f64) -> Option<u64> {
    let rounded = value.round();
    // `u64::MAX as f64` rounds up to 2^64, so compare strictly below it.
    (rounded >= 0.0 && rounded < u64::MAX as f64).then_some(rounded as u64)
}

/// Linux signal numbers and names (x86, arm and most other Linux ports; the agent is
/// Linux-only because it reads `/proc`).
const SIGNALS: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (16, "SIGSTKFLT"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

/// Old names that mean the same signal.
const SIGNAL_ALIASES: &[(&str, &str)] = &[
    ("SIGIOT", "SIGABRT"),
    ("SIGPOLL", "SIGIO"),
    ("SIGCLD", "SIGCHLD"),
];

/// `"SIGUSR2"`, `"USR2"`, `"usr2"` or `"12"` to the canonical `"SIGUSR2"`.
pub fn parse_signal(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return SIGNALS
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, name)| name.to_string())
            .ok_or_else(|| format!("unknown signal number {number}"));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let name = SIGNAL_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name.as_str(), |(_, canonical)| canonical);
    SIGNALS
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(_, known)| known.to_string())
        .ok_or_else(|| format!("unknown signal {s:?}"))
}

/// Splits an argument string the way a POSIX shell would, without expansions:
/// whitespace separates words, single quotes are literal, double quotes allow `\"`,
/// `\\`, `\$` and `` \` ``, and a backslash outside quotes escapes the next character.
/// PM2 splits a string `args` the same way.
pub fn split_shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            // A backslash before a newline joins lines, as in sh.
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1500"), Ok(1500));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("200ms"), Ok(200));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms(" 2 S "), Ok(2000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
    }

    #[test]
    fn bad_durations() {
        assert!(parse_duration_ms("").is_err());
        assert!(
            parse_duration_ms("abc")
                .unwrap_err()
                .contains("duration like")
        );
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("inf").is_err());
        assert!(parse_duration_ms("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration_ms("1e30h").is_err());
    }

    #[test]
    fn sizes_are_1024_based() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("512K"), Ok(512 * 1024));
        assert_eq!(parse_bytes("40M"), Ok(40 * 1024 * 1024));
        assert_eq!(parse_bytes("40mb"), Ok(40 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1.5g"), Ok(1536 * 1024 * 1024));
        assert!(parse_bytes("40X").is_err());
        assert!(parse_bytes("-1M").unwrap_err().contains("negative"));
        assert!(parse_bytes("M").is_err());
    }

    #[test]
    fn signals() {
        for spelling in ["SIGUSR2", "USR2", "usr2", "12", "sigusr2", " 12 "] {
            assert_eq!(
                parse_signal(spelling).as_deref(),
                Ok("SIGUSR2"),
                "{spelling}"
            );
        }
        assert_eq!(parse_signal("SIGIOT").as_deref(), Ok("SIGABRT"));
        assert_eq!(parse_signal("term").as_deref(), Ok("SIGTERM"));
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("99").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn shell_words() {
        let split = |s| split_shell_words(s).unwrap();
        assert_eq!(split("a b  c"), ["a", "b", "c"]);
        assert_eq!(
            split("--name 'hello world' x"),
            ["--name", "hello world", "x"]
        );
        assert_eq!(split(r#"-m "a \"q\" b" c\ d"#), ["-m", r#"a "q" b"#, "c d"]);
        assert_eq!(split(r#""$HOME" '\n'"#), ["$HOME", "\\n"]);
        assert_eq!(split("''"), [""]);
        assert!(split("").is_empty());
        assert!(split_shell_words("'open").is_err());
        assert!(split_shell_words("\"open").is_err());
    }
}
