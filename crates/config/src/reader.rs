//! The validation toolkit: `Ctx` collects every error and warning of one file,
//! `MapReader` hands out a map's keys by name (with aliases and camelCase spellings)
//! and reports the ones nobody asked for, and the `as_*` functions convert nodes with
//! PM2's loose typing. What the keys mean is left to `app` and `deploy`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::ConfigError;
use crate::tree::{self, Located, Node};
use crate::units;

/// Which syntax the user wrote, for naming types in messages as they know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Syntax {
    Toml,
    Json,
    Yaml,
    Js,
}

pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub syntax: Syntax,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a Path, syntax: Syntax) -> Ctx<'a> {
        Ctx {
            file,
            syntax,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, line: Option<u32>, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, line, key, message));
    }

    pub fn error_hint(
        &mut self,
        line: Option<u32>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::new(self.file, line, key, message).with_hint(hint));
    }

    /// Warnings render like errors (`file:line: key: message`) but never stop a load.
    pub fn warn(&mut self, line: Option<u32>, key: &str, message: &str) {
        let error = ConfigError::new(self.file, line, key, message);
        self.warnings.push(error.to_string());
    }

    /// "a list", "a table" (TOML) or "an object" (JSON, YAML, JavaScript).
    pub fn type_name(&self, node: &Node) -> &'static str {
        match node {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => match self.syntax {
                Syntax::Toml => "an array",
                _ => "a list",
            },
            Node::Map(_) => match self.syntax {
                Syntax::Toml => "a table",
                _ => "an object",
            },
        }
    }

    /// Reports a value of the wrong type: `expected <what>, got a list`.
    pub fn wrong_type(&mut self, field: &Field<'_>, expected: &str) {
        let got = self.type_name(&field.value.value);
        self.error(
            field.line,
            &field.path,
            format!("expected {expected}, got {got}"),
        );
    }
}

/// One key taken from a map: its full dotted path, the key as written and its value.
#[derive(Clone, Debug)]
pub(crate) struct Field<'n> {
    pub path: String,
    pub raw_key: &'n str,
    pub line: Option<u32>,
    pub value: &'n Located<Node>,
}

struct Entry<'n> {
    raw: &'n str,
    normalised: String,
    path: String,
    key_line: Option<u32>,
    value: &'n Located<Node>,
    taken: bool,
}

/// Reads one map: `take` the known keys, then `finish` to report the rest as unknown.
pub(crate) struct MapReader<'n> {
    entries: Vec<Entry<'n>>,
    /// Every name asked for, with its native spelling, for did-you-mean hints.
    known: Vec<(&'static str, &'static str)>,
}

impl<'n> MapReader<'n> {
    /// `path` is the map's own key path (`apps.api`); an empty path is the document.
    pub fn new(path: &str, entries: &'n [tree::Entry]) -> MapReader<'n> {
        let entries = entries
            .iter()
            .map(|(key, value)| Entry {
                raw: &key.value,
                normalised: normalise_key(&key.value),
                path: join_key(path, &key.value),
                key_line: key.line,
                value,
                taken: false,
            })
            .collect();
        MapReader {
            entries,
            known: Vec::new(),
        }
    }

    /// Takes the key spelled as any of `names` (native name first, then aliases; each
    /// also matches its camelCase and hyphenated spellings). Setting the same option
    /// twice through two spellings is an error.
    pub fn take(&mut self, ctx: &mut Ctx<'_>, names: &[&'static str]) -> Option<Field<'n>> {
        let native = names[0];
        self.known.extend(names.iter().map(|name| (*name, native)));
        let mut found: Option<usize> = None;
        for i in 0..self.entries.len() {
            if self.entries[i].taken || !names.contains(&self.entries[i].normalised.as_str()) {
                continue;
            }
            self.entries[i].taken = true;
            match found {
                None => found = Some(i),
                // PM2's files often set an option under two of its names (`merge_logs`
                // and `combine_logs`); the same value twice is no conflict.
                Some(first)
                    if same_scalar(
                        &self.entries[first].value.value,
                        &self.entries[i].value.value,
                    ) => {}
                Some(first) => {
                    let (first, again) = (&self.entries[first], &self.entries[i]);
                    let message = match first.key_line {
                        Some(line) => format!(
                            "`{native}` is already set by `{}` on line {line}",
                            first.raw
                        ),
                        None => format!("`{native}` is already set by `{}`", first.raw),
                    };
                    ctx.error(again.key_line, &again.path, message);
                }
            }
        }
        found.map(|i| self.field(i))
    }

    /// Takes every key whose normalised name starts with `prefix` (`env_` stages),
    /// returning the rest of the normalised name with each field.
    pub fn take_prefixed(&mut self, prefix: &'static str) -> Vec<(String, Field<'n>)> {
        let mut taken = Vec::new();
        for i in 0..self.entries.len() {
            let entry = &mut self.entries[i];
            if entry.taken {
                continue;
            }
            if let Some(rest) = entry.normalised.strip_prefix(prefix)
                && !rest.is_empty()
            {
                entry.taken = true;
                taken.push((rest.to_string(), i));
            }
        }
        taken
            .into_iter()
            .map(|(rest, i)| (rest, self.field(i)))
            .collect()
    }

    fn field(&self, i: usize) -> Field<'n> {
        let entry = &self.entries[i];
        Field {
            path: entry.path.clone(),
            raw_key: entry.raw,
            // The key's line, not the value's: a YAML block list or map starts on the
            // line after its key, and the key is what the user looks for.
            line: entry.key_line.or(entry.value.line),
            value: entry.value,
        }
    }

    /// Reports every key nobody took as `unknown key`, with a did-you-mean hint.
    pub fn finish(self, ctx: &mut Ctx<'_>) {
        self.report_untaken(ctx, false);
    }

    /// As `finish`, for a level where PM2 ignores what it does not know (an ecosystem
    /// file's top level, where YAML anchors live): a likely typo of a known key stays
    /// an error; any other key is a warning saying it is ignored.
    pub fn finish_ignoring_others(self, ctx: &mut Ctx<'_>) {
        self.report_untaken(ctx, true);
    }

    fn report_untaken(self, ctx: &mut Ctx<'_>, ignore_others: bool) {
        for entry in self.entries.iter().filter(|entry| !entry.taken) {
            let (line, path) = (entry.key_line, &entry.path);
            match did_you_mean(&entry.normalised, &self.known) {
                Some(name) => {
                    ctx.error_hint(line, path, "unknown key", format!("did you mean `{name}`?"))
                }
                None if ignore_others => ctx.warn(line, path, "ignored, as PM2 ignores it"),
                None => ctx.error(line, path, "unknown key"),
            }
        }
    }
}

/// `apps` + `api` = `apps.api`; keys that are not plain words are quoted, as in TOML.
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// PM2 generates camelCase aliases for every option (`maxMemoryRestart`) and writes
/// deploy hooks with hyphens (`post-deploy`); both become snake_case here. A key that
/// is all capitals stays as it is, so `PORT` is not mistaken for `port`.
pub(crate) fn normalise_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut previous: Option<char> = None;
    for c in key.chars() {
        if c == '-' {
            out.push('_');
        } else if c.is_ascii_uppercase()
            && previous.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_uppercase()
            && out.is_empty()
            && key.chars().any(|c| c.is_ascii_lowercase())
        {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
        previous = Some(c);
    }
    out
}

/// The native name of the closest known key, if it is close enough to be a typo.
fn did_you_mean(key: &str, known: &[(&'static str, &'static str)]) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    let threshold = (key.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|(name, native)| (edit_distance(&key, name), *native))
        .filter(|(distance, _)| *distance <= threshold)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, native)| native)
}

/// Levenshtein distance.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

// ---------------------------------------------------------------------------------------
// Loose conversions. Each reports its own error and returns `None` on a bad value.

/// A string; numbers are accepted and printed as JavaScript would (`name: 123`).
pub(crate) fn as_string(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    match &field.value.value {
        Node::Str(s) => Some(s.clone()),
        Node::Int(_) | Node::Float(_) => Some(scalar_text(&field.value.value)),
        _ => {
            ctx.wrong_type(field, "a string");
            None
        }
    }
}

/// A boolean; PM2 also takes the strings `"true"` and `"false"`.
pub(crate) fn as_bool(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<bool> {
    match &field.value.value {
        Node::Bool(b) => Some(*b),
        Node::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Node::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => {
            let got = describe(ctx, &field.value.value);
            ctx.error(
                field.line,
                &field.path,
                format!("expected true or false, got {got}"),
            );
            None
        }
    }
}

/// An integer, from a number or a numeric string (`"instances": "2"`).
pub(crate) fn as_integer(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<i64> {
    let value = match &field.value.value {
        Node::Int(n) => Some(*n),
        Node::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
        Node::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if value.is_none() {
        let got = describe(ctx, &field.value.value);
        ctx.error(
            field.line,
            &field.path,
            format!("expected a whole number, got {got}"),
        );
    }
    value
}

/// An integer within `min..=max`.
pub(crate) fn as_ranged(ctx: &mut Ctx<'_>, field: &Field<'_>, min: i64, max: i64) -> Option<i64> {
    let value = as_integer(ctx, field)?;
    if value < min || value > max {
        ctx.error(
            field.line,
            &field.path,
            format!("expected a number from {min} to {max}, got {value}"),
        );
        return None;
    }
    Some(value)
}

pub(crate) fn as_u32(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<u32> {
    as_ranged(ctx, field, 0, i64::from(u32::MAX)).and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn as_port(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<u16> {
    as_ranged(ctx, field, 1, i64::from(u16::MAX)).and_then(|n| u16::try_from(n).ok())
}

/// Milliseconds from a number or a duration string (`"5s"`).
pub(crate) fn as_duration_ms(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<u64> {
    const EXPECTED: &str = "expected a number of milliseconds or a duration like \"5s\"";
    match &field.value.value {
        Node::Int(n) if *n >= 0 => u64::try_from(*n).ok(),
        Node::Float(f) if *f >= 0.0 && f.is_finite() && *f < 1.0e18 => Some(f.round() as u64),
        Node::Int(_) | Node::Float(_) => {
            let text = scalar_text(&field.value.value);
            ctx.error(
                field.line,
                &field.path,
                format!("a duration cannot be negative, got {text}"),
            );
            None
        }
        Node::Str(s) => match units::parse_duration_ms(s) {
            Ok(ms) => Some(ms),
            Err(message) => {
                ctx.error(field.line, &field.path, message);
                None
            }
        },
        other => {
            let got = ctx.type_name(other);
            ctx.error(field.line, &field.path, format!("{EXPECTED}, got {got}"));
            None
        }
    }
}

/// Bytes from a number or a size string (`"40M"`).
pub(crate) fn as_bytes(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<u64> {
    const EXPECTED: &str = "expected a number of bytes or a size like \"200M\"";
    match &field.value.value {
        Node::Int(n) if *n >= 0 => u64::try_from(*n).ok(),
        Node::Float(f) if *f >= 0.0 && f.is_finite() && *f < 1.0e18 => Some(f.round() as u64),
        Node::Int(_) | Node::Float(_) => {
            let text = scalar_text(&field.value.value);
            ctx.error(
                field.line,
                &field.path,
                format!("a size cannot be negative, got {text}"),
            );
            None
        }
        Node::Str(s) => match units::parse_bytes(s) {
            Ok(bytes) => Some(bytes),
            Err(message) => {
                ctx.error(field.line, &field.path, message);
                None
            }
        },
        other => {
            let got = ctx.type_name(other);
            ctx.error(field.line, &field.path, format!("{EXPECTED}, got {got}"));
            None
        }
    }
}

/// A string or a list of strings (numbers allowed). With `split`, a single string is
/// split like a shell would (`args: "--port 3000"`); without, it is one item.
pub(crate) fn as_string_list(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    split: bool,
) -> Option<Vec<String>> {
    match &field.value.value {
        Node::Str(s) if split => match units::split_shell_words(s) {
            Ok(words) => Some(words),
            Err(message) => {
                ctx.error(field.line, &field.path, message);
                None
            }
        },
        Node::Str(s) => Some(vec![s.clone()]),
        Node::Int(_) | Node::Float(_) | Node::Bool(_) if split => {
            Some(vec![scalar_text(&field.value.value)])
        }
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match &item.value {
                    Node::Str(s) => out.push(s.clone()),
                    Node::Int(_) | Node::Float(_) | Node::Bool(_) => {
                        out.push(scalar_text(&item.value))
                    }
                    other => {
                        let got = ctx.type_name(other);
                        ctx.error(
                            item.line.or(field.line),
                            &format!("{}[{i}]", field.path),
                            format!("expected a string, got {got}"),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        _ => {
            let expected = if ctx.syntax == Syntax::Toml {
                "a string or an array of strings"
            } else {
                "a string or a list of strings"
            };
            ctx.wrong_type(field, expected);
            None
        }
    }
}

/// An environment map: values become strings as PM2 passes them (numbers and booleans
/// printed, objects and lists JSON-encoded).
pub(crate) fn as_env(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<BTreeMap<String, String>> {
    let Node::Map(entries) = &field.value.value else {
        let expected = if ctx.syntax == Syntax::Toml {
            "a table"
        } else {
            "an object"
        };
        ctx.wrong_type(field, &format!("{expected} of environment variables"));
        return None;
    };
    let mut env = BTreeMap::new();
    let mut ok = true;
    for (key, value) in entries {
        let path = join_key(&field.path, &key.value);
        if key.value.is_empty() || key.value.contains(['=', '\0']) {
            ctx.error(
                key.line,
                &path,
                "an environment variable name must be non-empty without `=` or NUL",
            );
            ok = false;
            continue;
        }
        let text = match &value.value {
            Node::Str(s) => s.clone(),
            Node::Seq(_) | Node::Map(_) => to_json(&value.value).to_string(),
            other => scalar_text(other),
        };
        if text.contains('\0') {
            ctx.error(
                value.line,
                &path,
                "an environment value cannot contain a NUL byte",
            );
            ok = false;
            continue;
        }
        env.insert(key.value.clone(), text);
    }
    ok.then_some(env)
}

/// Text of a scalar as JavaScript's `String()` prints it (`3000`, `1.5`, `true`, `null`).
pub(crate) fn scalar_text(node: &Node) -> String {
    match node {
        Node::Null => "null".to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Int(n) => n.to_string(),
        Node::Float(f) if f.fract() == 0.0 && f.abs() < 1.0e21 => format!("{f:.0}"),
        Node::Float(f) => f.to_string(),
        Node::Str(s) => s.clone(),
        Node::Seq(_) | Node::Map(_) => to_json(node).to_string(),
    }
}

pub(crate) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(n) => Value::from(*n),
        Node::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s.clone()),
        Node::Seq(items) => Value::Array(items.iter().map(|item| to_json(&item.value)).collect()),
        Node::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.value.clone(), to_json(&v.value)))
                .collect(),
        ),
    }
}

/// A value for a message: scalars quoted as written, containers by type.
pub(crate) fn describe(ctx: &Ctx<'_>, node: &Node) -> String {
    match node {
        Node::Str(s) => format!("{s:?}"),
        Node::Int(_) | Node::Float(_) | Node::Bool(_) | Node::Null => scalar_text(node),
        other => ctx.type_name(other).to_string(),
    }
}

/// Whether two values are the same scalar (a string, number, boolean or null).
fn same_scalar(a: &Node, b: &Node) -> bool {
    !matches!(a, Node::Seq(_) | Node::Map(_)) && a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_and_hyphens_normalise() {
        assert_eq!(normalise_key("maxMemoryRestart"), "max_memory_restart");
        assert_eq!(normalise_key("max_memory_restart"), "max_memory_restart");
        assert_eq!(normalise_key("post-deploy"), "post_deploy");
        assert_eq!(normalise_key("envProduction"), "env_production");
        assert_eq!(normalise_key("windowsHide"), "windows_hide");
        assert_eq!(normalise_key("PORT"), "PORT");
        assert_eq!(normalise_key("Script"), "script");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("instancs", "instances"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let known = [
            ("instances", "instances"),
            ("interpreter", "interpreter"),
            ("exec_interpreter", "interpreter"),
        ];
        assert_eq!(did_you_mean("instancs", &known), Some("instances"));
        assert_eq!(did_you_mean("exec_interpretr", &known), Some("interpreter"));
        assert_eq!(did_you_mean("zzz", &known), None);
    }

    #[test]
    fn key_paths_quote_odd_keys() {
        assert_eq!(join_key("", "apps"), "apps");
        assert_eq!(join_key("apps", "my-api"), "apps.my-api");
        assert_eq!(join_key("apps", "my.api"), "apps.\"my.api\"");
    }

    #[test]
    fn scalars_print_like_javascript() {
        assert_eq!(scalar_text(&Node::Float(3000.0)), "3000");
        assert_eq!(scalar_text(&Node::Float(1.5)), "1.5");
        assert_eq!(scalar_text(&Node::Int(-2)), "-2");
        assert_eq!(scalar_text(&Node::Bool(false)), "false");
    }
}
