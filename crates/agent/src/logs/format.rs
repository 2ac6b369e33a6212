//! How a captured line is written: raw, raw with a `log_date_format` prefix (PM2's
//! dayjs tokens, `"<date>: "`), or one JSON object per line in PM2's shape
//! (`{message, timestamp, type, process_id, app_name}`).

use std::fmt::Write as _;

use jiff::Zoned;

/// One piece of a parsed dayjs format.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Year4,
    Year2,
    Month2,
    Month,
    Day2,
    Day,
    Hour2,
    Hour,
    Hour12_2,
    Hour12,
    Minute2,
    Minute,
    Second2,
    Second,
    Millis,
    OffsetColon,
    Offset,
    AmPmUpper,
    AmPmLower,
    UnixSeconds,
    UnixMillis,
}

/// A dayjs format string, parsed once. Unknown letters are kept as text, so a bogus
/// format never crashes (PM2 case 34).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateFormat {
    pieces: Vec<Piece>,
}

/// dayjs tokens, longest first so `YYYY` wins over `YY`.
const TOKENS: &[(&str, Piece)] = &[
    ("YYYY", Piece::Year4),
    ("SSS", Piece::Millis),
    ("YY", Piece::Year2),
    ("MM", Piece::Month2),
    ("DD", Piece::Day2),
    ("HH", Piece::Hour2),
    ("hh", Piece::Hour12_2),
    ("mm", Piece::Minute2),
    ("ss", Piece::Second2),
    ("ZZ", Piece::Offset),
    ("M", Piece::Month),
    ("D", Piece::Day),
    ("H", Piece::Hour),
    ("h", Piece::Hour12),
    ("m", Piece::Minute),
    ("s", Piece::Second),
    ("Z", Piece::OffsetColon),
    ("A", Piece::AmPmUpper),
    ("a", Piece::AmPmLower),
    ("X", Piece::UnixSeconds),
    ("x", Piece::UnixMillis),
];

impl DateFormat {
    pub fn parse(format: &str) -> DateFormat {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        'outer: while !rest.is_empty() {
            // `[...]` escapes text, as in dayjs.
            if let Some(inner) = rest.strip_prefix('[')
                && let Some(end) = inner.find(']')
            {
                text.push_str(&inner[..end]);
                rest = &inner[end + 1..];
                continue;
            }
            for (token, piece) in TOKENS {
                if let Some(after) = rest.strip_prefix(token) {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    rest = after;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().expect("rest is not empty");
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        DateFormat { pieces }
    }

    pub fn format(&self, at: &Zoned) -> String {
        let mut out = String::with_capacity(32);
        let hour12 = match at.hour() % 12 {
            0 => 12,
            h => h,
        };
        let offset = at.offset().seconds();
        let (sign, offset) = if offset < 0 {
            ('-', -offset)
        } else {
            ('+', offset)
        };
        for piece in &self.pieces {
            let _ = match piece {
                Piece::Text(text) => write!(out, "{text}"),
                Piece::Year4 => write!(out, "{:04}", at.year()),
                Piece::Year2 => write!(out, "{:02}", at.year().rem_euclid(100)),
                Piece::Month2 => write!(out, "{:02}", at.month()),
                Piece::Month => write!(out, "{}", at.month()),
                Piece::Day2 => write!(out, "{:02}", at.day()),
                Piece::Day => write!(out, "{}", at.day()),
                Piece::Hour2 => write!(out, "{:02}", at.hour()),
                Piece::Hour => write!(out, "{}", at.hour()),
                Piece::Hour12_2 => write!(out, "{hour12:02}"),
                Piece::Hour12 => write!(out, "{hour12}"),
                Piece::Minute2 => write!(out, "{:02}", at.minute()),
                Piece::Minute => write!(out, "{}", at.minute()),
                Piece::Second2 => write!(out, "{:02}", at.second()),
                Piece::Second => write!(out, "{}", at.second()),
                Piece::Millis => write!(out, "{:03}", at.millisecond()),
                Piece::OffsetColon => {
                    write!(out, "{sign}{:02}:{:02}", offset / 3600, offset % 3600 / 60)
                }
                Piece::Offset => write!(out, "{sign}{:02}{:02}", offset / 3600, offset % 3600 / 60),
                Piece::AmPmUpper => write!(out, "{}", if at.hour() < 12 { "AM" } else { "PM" }),
                Piece::AmPmLower => write!(out, "{}", if at.hour() < 12 { "am" } else { "pm" }),
                Piece::UnixSeconds => write!(out, "{}", at.timestamp().as_second()),
                Piece::UnixMillis => write!(out, "{}", at.timestamp().as_millisecond()),
            };
        }
        out
    }
}

/// How one instance's lines are written to its files.
#[derive(Clone, Debug)]
pub struct LineFormat {
    pub date: Option<DateFormat>,
    pub json: bool,
    pub app: String,
    pub id: u32,
}

impl LineFormat {
    /// Whether lines are written exactly as the app wrote them (the fast path).
    pub fn is_raw(&self) -> bool {
        self.date.is_none() && !self.json
    }

    /// Appends `line` (without its newline) as it goes into a file.
    pub fn write_line(&self, out: &mut Vec<u8>, line: &[u8], stamp: &str, stream: &str) {
        if self.json {
            let message = String::from_utf8_lossy(line);
            let value = serde_json::json!({
                "message": message,
                "timestamp": stamp,
                "type": stream,
                "process_id": self.id,
                "app_name": self.app,
            });
            let _ = serde_json::to_writer(&mut *out, &value);
        } else {
            if self.date.is_some() {
                out.extend_from_slice(stamp.as_bytes());
                out.extend_from_slice(b": ");
            }
            out.extend_from_slice(line);
        }
        out.push(b'\n');
    }

    /// The timestamp text for lines captured at `at`: the configured format, or
    /// ISO 8601 for JSON lines without one.
    pub fn stamp(&self, at: &Zoned) -> String {
        match &self.date {
            Some(format) => format.format(at),
            None if self.json => at.timestamp().to_string(),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Zoned {
        "2026-03-04T05:06:07.089+01:00[Europe/Paris]"
            .parse()
            .unwrap()
    }

    #[test]
    fn dayjs_tokens() {
        let f = |s: &str| DateFormat::parse(s).format(&at());
        assert_eq!(f("YYYY-MM-DDTHH:mm:ss"), "2026-03-04T05:06:07");
        assert_eq!(f("YY/M/D H:m:s.SSS"), "26/3/4 5:6:7.089");
        assert_eq!(f("hh:mm A Z"), "05:06 AM +01:00");
        assert_eq!(f("[Day] D ZZ"), "Day 4 +0100");
        assert_eq!(f("YYYY"), "2026");
    }

    #[test]
    fn a_bogus_format_is_text_not_a_crash() {
        assert_eq!(DateFormat::parse("qqq!").format(&at()), "qqq!");
        assert_eq!(
            DateFormat::parse("[qq").format(&at()),
            "[qq",
            "an unclosed bracket is text"
        );
    }

    #[test]
    fn json_lines_follow_pm2() {
        let format = LineFormat {
            date: None,
            json: true,
            app: "api".into(),
            id: 3,
        };
        let mut out = Vec::new();
        format.write_line(&mut out, b"hello \"world\"", &format.stamp(&at()), "out");
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["message"], "hello \"world\"");
        assert_eq!(value["type"], "out");
        assert_eq!(value["process_id"], 3);
        assert_eq!(value["app_name"], "api");
        assert!(
            value["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2026-03-04T04:06:07")
        );
    }

    #[test]
    fn date_prefix() {
        let format = LineFormat {
            date: Some(DateFormat::parse("YYYY")),
            json: false,
            app: "api".into(),
            id: 0,
        };
        let mut out = Vec::new();
        format.write_line(&mut out, b"line", &format.stamp(&at()), "out");
        assert_eq!(out, b"2026: line\n");
    }
}
