//! `.env` files (`env_file`), read as the npm `dotenv` package reads them, since that
//! is what a Node project's `.env` was written for: `KEY=value` lines, an optional
//! `export `, `#` comments, single, double or backtick quotes (a quoted value may span
//! lines), `\n` and `\r` expanded inside double quotes, and no `$VAR` expansion (a
//! password containing `$` stays as written). A line that is not an assignment is
//! skipped, as dotenv skips it; `parse` reports it so a local load can warn.
//!
//! Pure: the agent reads the file (bounded by `MAX_ENV_FILE_BYTES`) and calls `parse`
//! at each start, so a changed `.env` takes effect on the next restart and its values
//! never travel through the CLI, the API or the saved process list.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Bigger than any real `.env`; a bound so a wrong path (a log, a device) cannot make
/// the agent read without end.
pub const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

/// What one file says: its variables (a later line wins, as in dotenv) and the lines
/// that were skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvFile {
    pub vars: BTreeMap<String, String>,
    /// 1-based numbers of lines that are neither assignments, comments nor blank.
    pub skipped_lines: Vec<u32>,
}

/// Reads and parses `path`, bounded by `MAX_ENV_FILE_BYTES`; `Ok(None)` when there is
/// no such file. Errors name the path.
pub fn read(path: &Path) -> Result<Option<EnvFile>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("env_file {}: {}", path.display(), describe(&e))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("env_file {}: {}", path.display(), describe(&e)))?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(format!(
            "env_file {}: larger than {} KiB; is it the right file?",
            path.display(),
            MAX_ENV_FILE_BYTES / 1024
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("env_file {}: not UTF-8 text", path.display()))?;
    Ok(Some(parse(&text)))
}

fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "not found".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

/// Parses a `.env` text (see the module comment for the rules).
pub fn parse(text: &str) -> EnvFile {
    let text = text.replace("\r\n", "\n");
    let mut out = EnvFile::default();
    let mut rest = text.as_str();
    let mut line = 1u32;
    while !rest.is_empty() {
        let (consumed, parsed) = parse_entry(rest);
        let (entry, tail) = rest.split_at(consumed);
        match parsed {
            Entry::Var(key, value) => {
                out.vars.insert(key, value);
            }
            Entry::Skipped => out.skipped_lines.push(line),
            Entry::Blank => {}
        }
        line += entry.matches('\n').count() as u32;
        rest = tail;
    }
    out
}

enum Entry {
    Var(String, String),
    Skipped,
    Blank,
}

/// One entry at the start of `text`: how many bytes it covers (through its newline)
/// and what it was.
fn parse_entry(text: &str) -> (usize, Entry) {
    let line_end = text.find('\n').map_or(text.len(), |i| i + 1);
    let line = text[..line_end].trim_end_matches('\n');
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return (line_end, Entry::Blank);
    }
    let body = body
        .strip_prefix("export")
        .filter(|after| after.starts_with([' ', '\t']))
        .map_or(body, str::trim_start);
    let key_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(body.len());
    let (key, after_key) = body.split_at(key_len);
    let after_ws = after_key.trim_start_matches([' ', '\t']);
    // dotenv takes `KEY=value` and `KEY: value`.
    let value_part = match after_ws.strip_prefix('=') {
        Some(value) => value,
        None => match after_ws.strip_prefix(':') {
            Some(value) if value.is_empty() || value.starts_with([' ', '\t']) => value,
            _ => return (line_end, Entry::Skipped),
        },
    };
    if key.is_empty() {
        return (line_end, Entry::Skipped);
    }
    let value_part = value_part.trim_start_matches([' ', '\t']);
    // Every slice above borrows from `text`: this is where the value starts in it, to
    // measure a quoted value that spans lines.
    let start = value_part.as_ptr() as usize - text.as_ptr() as usize;
    if let Some(quote) = value_part
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\'' | '`'))
        && let Some((value, end)) = quoted(&text[start..], quote)
    {
        let consumed = start + end;
        let consumed = consumed
            + text[consumed..]
                .find('\n')
                .map_or(text.len() - consumed, |i| i + 1);
        return (consumed, Entry::Var(key.to_string(), value));
    }
    // Unquoted: up to a `#` comment, trimmed.
    let value = value_part.split('#').next().unwrap_or("").trim();
    (line_end, Entry::Var(key.to_string(), value.to_string()))
}

/// A value in `quote`s at the start of `text`: its contents (escapes expanded inside
/// double quotes) and the byte offset just past the closing quote. `None` when the
/// quote never closes, which dotenv reads as an unquoted value.
fn quoted(text: &str, quote: char) -> Option<(String, usize)> {
    let inner = &text[quote.len_utf8()..];
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if c == quote && !escaped {
            let raw = &inner[..i];
            let value = if quote == '"' {
                raw.replace("\\n", "\n").replace("\\r", "\r")
            } else {
                raw.to_string()
            };
            return Some((value, quote.len_utf8() + i + c.len_utf8()));
        }
        escaped = c == '\\' && !escaped;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text).vars.into_iter().collect()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn reads_dotenv_lines() {
        let text = "# comment\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\n\
                    D='single $NOT_EXPANDED'\nE=unquoted # comment\nF=\nG: colon\n";
        assert_eq!(
            vars(text),
            vec![
                pair("A", "1"),
                pair("B", "two words"),
                pair("C", "quoted # not a comment"),
                pair("D", "single $NOT_EXPANDED"),
                pair("E", "unquoted"),
                pair("F", ""),
                pair("G", "colon"),
            ]
        );
    }

    #[test]
    fn double_quotes_expand_newlines_and_span_lines() {
        let text = "KEY=\"-----BEGIN\nline\n-----END\"\nNEXT=\"a\\nb\"\nRAW='a\\nb'\n";
        assert_eq!(
            vars(text),
            vec![
                pair("KEY", "-----BEGIN\nline\n-----END"),
                pair("NEXT", "a\nb"),
                pair("RAW", "a\\nb"),
            ]
        );
    }

    #[test]
    fn later_lines_win_and_nonsense_is_reported() {
        let parsed = parse("A=1\nthis is not an assignment\r\nA=2\n=nokey\n");
        assert_eq!(parsed.vars.get("A").map(String::as_str), Some("2"));
        assert_eq!(parsed.skipped_lines, vec![2, 4]);
    }

    #[test]
    fn line_numbers_count_multiline_values() {
        let parsed = parse("A=\"x\ny\"\nbad\n");
        assert_eq!(parsed.skipped_lines, vec![3]);
    }

    #[test]
    fn an_unclosed_quote_is_a_plain_value() {
        assert_eq!(
            vars("A=\"open\nB=2\n"),
            vec![pair("A", "\"open"), pair("B", "2")]
        );
    }

    #[test]
    fn reading_is_bounded_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&dir.path().join(".env")), Ok(None));
        let unreadable = read(dir.path()).unwrap_err();
        assert!(unreadable.starts_with("env_file /"), "{unreadable}");
        let big = dir.path().join("big.env");
        std::fs::write(&big, vec![b'a'; MAX_ENV_FILE_BYTES as usize + 1]).unwrap();
        assert!(read(&big).unwrap_err().contains("larger than"));
    }
}
