//! The one generic document tree every format is parsed into, each node carrying its
//! 1-based line, so validation (`reader`, `app`, `deploy`) can report every error with
//! a line whatever the format. TOML goes through `toml`'s spanned `DeTable`, YAML and
//! JSON through `yaml_rust2`'s event parser; JavaScript is evaluated by `js`.

use std::collections::HashMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::yaml::Yaml;

/// A value with the line it starts on; `None` when the line is unknown (JavaScript
/// files whose key could not be found in the source).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Located<T> {
    pub value: T,
    pub line: Option<u32>,
}

impl<T> Located<T> {
    pub fn new(value: T, line: Option<u32>) -> Located<T> {
        Located { value, line }
    }
}

/// A map entry: key and value, each with its line.
pub(crate) type Entry = (Located<String>, Located<Node>);
pub(crate) type Entries = Vec<Entry>;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Located<Node>>),
    /// Entries in file order; keys are unique (duplicates are parse errors).
    Map(Entries),
}

/// A syntax error: line (when known) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: Option<u32>,
    pub message: String,
}

/// Byte offset to 1-based line.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> u32 {
        let line = self.starts.partition_point(|start| *start <= offset);
        u32::try_from(line).unwrap_or(u32::MAX)
    }
}

// ---------------------------------------------------------------------------------------
// TOML

pub(crate) fn parse_toml(text: &str) -> Result<Located<Node>, Vec<SyntaxError>> {
    let lines = LineIndex::new(text);
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|error| SyntaxError {
                line: error.span().map(|span| lines.line_of(span.start)),
                message: first_line(error.message()).to_string(),
            })
            .collect());
    }
    let line = Some(lines.line_of(table.span().start));
    Ok(Located::new(toml_table(table.get_ref(), &lines), line))
}

fn toml_table(table: &DeTable<'_>, lines: &LineIndex) -> Node {
    let mut entries: Vec<(usize, Located<String>, Located<Node>)> = table
        .iter()
        .map(|(key, value)| {
            let key_line = Some(lines.line_of(key.span().start));
            (
                key.span().start,
                Located::new(key.get_ref().to_string(), key_line),
                toml_value(value, lines, key_line),
            )
        })
        .collect();
    // Without `preserve_order` the map is sorted by key; the spans give file order back.
    entries.sort_by_key(|(start, _, _)| *start);
    Node::Map(entries.into_iter().map(|(_, k, v)| (k, v)).collect())
}

fn toml_value(
    value: &Spanned<DeValue<'_>>,
    lines: &LineIndex,
    key_line: Option<u32>,
) -> Located<Node> {
    let span = value.span();
    // Tables opened by a `[header]` have no useful span of their own; their key's is.
    let line = if span.is_empty() {
        key_line
    } else {
        Some(lines.line_of(span.start))
    };
    let node = match value.get_ref() {
        DeValue::String(s) => Node::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Node::Int(n),
            Err(_) => i
                .as_str()
                .parse()
                .map_or_else(|_| Node::Str(i.to_string()), Node::Float),
        },
        DeValue::Float(f) => f
            .as_str()
            .parse()
            .map_or_else(|_| Node::Str(f.to_string()), Node::Float),
        DeValue::Boolean(b) => Node::Bool(*b),
        DeValue::Datetime(d) => Node::Str(d.to_string()),
        DeValue::Array(items) => Node::Seq(
            items
                .iter()
                .map(|item| toml_value(item, lines, line))
                .collect(),
        ),
        DeValue::Table(table) => toml_table(table, lines),
    };
    Located::new(node, line)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

// ---------------------------------------------------------------------------------------
// YAML and JSON

pub(crate) fn parse_yaml(text: &str) -> Result<Located<Node>, Vec<SyntaxError>> {
    let mut builder = YamlBuilder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(error) = parser.load(&mut builder, false) {
        let mark = error.marker();
        return Err(vec![SyntaxError {
            line: Some(to_line(mark.line())),
            message: format!("{} (column {})", error.info(), mark.col() + 1),
        }]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder.root.unwrap_or(Located::new(Node::Null, Some(1))))
}

/// JSON is parsed as YAML (every JSON document is YAML 1.2) after `relax_json` turns
/// what PM2 tolerates in `.json` files — it evaluates them as JavaScript — into JSON.
pub(crate) fn parse_json(text: &str) -> Result<Located<Node>, Vec<SyntaxError>> {
    let relaxed = relax_json(text);
    parse_yaml(&relaxed).map_err(|yaml_errors| {
        // serde_json says what is wrong in JSON's terms ("expected `,` or `}`"); the
        // YAML parser's words are the fallback when only YAML objects.
        match serde_json::from_str::<serde::de::IgnoredAny>(&relaxed) {
            Err(error) if error.line() > 0 => {
                let message = error.to_string();
                let message = message
                    .rsplit_once(" at line ")
                    .map_or(message.as_str(), |(message, _)| message);
                let message = match error.column() {
                    0 => message.to_string(),
                    column => format!("{message} (column {column})"),
                };
                vec![SyntaxError {
                    line: Some(to_line(error.line())),
                    message,
                }]
            }
            _ => yaml_errors,
        }
    })
}

/// Blanks out `//` and `/* */` comments and trailing commas, and turns tabs outside
/// strings into spaces (YAML refuses tabs for indentation). Every replacement keeps
/// the text's length and newlines, so lines and columns stay right.
fn relax_json(text: &str) -> String {
    let mut out: Vec<char> = text.chars().collect();
    let mut i = 0;
    // Index of the last comma outside strings with only blanks since, if any.
    let mut pending_comma: Option<usize> = None;
    while i < out.len() {
        match out[i] {
            quote @ ('"' | '\'') => {
                pending_comma = None;
                i += 1;
                while i < out.len() && out[i] != quote && out[i] != '\n' {
                    if out[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '/' if out.get(i + 1) == Some(&'/') => {
                while i < out.len() && out[i] != '\n' {
                    out[i] = ' ';
                    i += 1;
                }
                continue;
            }
            '/' if out.get(i + 1) == Some(&'*') => {
                while i < out.len() && !(out[i] == '*' && out.get(i + 1) == Some(&'/')) {
                    if out[i] != '\n' {
                        out[i] = ' ';
                    }
                    i += 1;
                }
                for c in out.iter_mut().skip(i).take(2) {
                    *c = ' ';
                }
                i += 2;
                continue;
            }
            ',' => pending_comma = Some(i),
            '}' | ']' => {
                if let Some(comma) = pending_comma.take() {
                    out[comma] = ' ';
                }
            }
            '\t' => out[i] = ' ',
            c if c.is_whitespace() => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    out.into_iter().collect()
}

fn to_line(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

enum Frame {
    Seq {
        line: u32,
        anchor: usize,
        items: Vec<Located<Node>>,
    },
    Map {
        line: u32,
        anchor: usize,
        entries: Entries,
        key: Option<Located<String>>,
    },
}

/// Builds `Node`s from parser events, resolving aliases and `<<` merge keys (which
/// js-yaml, PM2's parser, supports) and reporting duplicate keys.
#[derive(Default)]
struct YamlBuilder {
    stack: Vec<Frame>,
    root: Option<Located<Node>>,
    anchors: HashMap<usize, Located<Node>>,
    errors: Vec<SyntaxError>,
}

impl MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = to_line(mark.line());
        match event {
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                line,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                line,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (Located::new(Node::Seq(items), Some(line)), anchor),
                    Some(Frame::Map {
                        line,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Located::new(Node::Map(self.merge_keys(entries)), Some(line)),
                        anchor,
                    ),
                    None => return,
                };
                self.insert(node, None, anchor);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = scalar(&text, style, tag.as_ref());
                self.insert(Located::new(node, Some(line)), Some(text), anchor);
            }
            Event::Alias(anchor) => {
                let mut node = self
                    .anchors
                    .get(&anchor)
                    .cloned()
                    .unwrap_or(Located::new(Node::Null, None));
                node.line = Some(line);
                let text = match &node.value {
                    Node::Str(s) => Some(s.clone()),
                    _ => None,
                };
                self.insert(node, text, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

impl YamlBuilder {
    /// Adds a finished node to its parent: a sequence item, a mapping key (`text` is
    /// the scalar's source text) or a mapping value.
    fn insert(&mut self, node: Located<Node>, text: Option<String>, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let text = match (&node.value, text) {
                        (Node::Seq(_) | Node::Map(_), _) | (_, None) => {
                            self.errors.push(SyntaxError {
                                line: node.line,
                                message: "a key must be a string".to_string(),
                            });
                            String::new()
                        }
                        (_, Some(text)) => text,
                    };
                    *key = Some(Located::new(text, node.line));
                }
                Some(key) => {
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.value == key.value) {
                        self.errors.push(SyntaxError {
                            line: key.line,
                            message: format!(
                                "duplicate key `{}` (first on line {})",
                                key.value,
                                first.line.unwrap_or(0)
                            ),
                        });
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }

    /// `<<: *defaults` (or a list of them) copies the entries the map does not set itself.
    fn merge_keys(&mut self, entries: Entries) -> Entries {
        if !entries.iter().any(|(k, _)| k.value == "<<") {
            return entries;
        }
        let (merges, mut own): (Entries, Entries) =
            entries.into_iter().partition(|(k, _)| k.value == "<<");
        for (key, value) in merges {
            let sources = match value.value {
                Node::Seq(items) => items,
                other => vec![Located::new(other, value.line)],
            };
            for source in sources {
                match source.value {
                    Node::Map(inherited) => {
                        for (k, v) in inherited {
                            if !own.iter().any(|(existing, _)| existing.value == k.value) {
                                own.push((k, v));
                            }
                        }
                    }
                    _ => self.errors.push(SyntaxError {
                        line: key.line,
                        message: "`<<` must merge a mapping or a list of mappings".to_string(),
                    }),
                }
            }
        }
        own
    }
}

fn scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Node {
    if style != TScalarStyle::Plain {
        return Node::Str(text.to_string());
    }
    if let Some(tag) = tag
        && tag.handle == "tag:yaml.org,2002:"
        && tag.suffix == "str"
    {
        return Node::Str(text.to_string());
    }
    match Yaml::from_str(text) {
        Yaml::Null => Node::Null,
        Yaml::Boolean(b) => Node::Bool(b),
        Yaml::Integer(i) => Node::Int(i),
        Yaml::Real(r) => r
            .parse()
            .map_or_else(|_| Node::Str(text.to_string()), Node::Float),
        _ => Node::Str(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Located<Node>) -> &Entries {
        match &node.value {
            Node::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn toml_keeps_file_order_and_lines() {
        let text =
            "[apps.zeta]\nscript = \"z.js\"\n\n[apps.alpha]\nscript = \"a.js\"\ninstances = 2\n";
        let root = parse_toml(text).unwrap();
        let apps = &map(&root)[0];
        assert_eq!(apps.0.value, "apps");
        let apps = map(&apps.1);
        assert_eq!(apps[0].0.value, "zeta");
        assert_eq!(apps[0].0.line, Some(1));
        assert_eq!(apps[1].0.value, "alpha");
        assert_eq!(apps[1].0.line, Some(4));
        let alpha = map(&apps[1].1);
        assert_eq!(alpha[1].0.value, "instances");
        assert_eq!(alpha[1].1, Located::new(Node::Int(2), Some(6)));
    }

    #[test]
    fn toml_syntax_errors_have_lines() {
        let errors = parse_toml("a = 1\nb = \n").unwrap_err();
        assert_eq!(errors[0].line, Some(2), "{errors:?}");
        let errors = parse_toml("a = 1\na = 2\n").unwrap_err();
        assert_eq!(errors[0].line, Some(2), "{errors:?}");
    }

    #[test]
    fn yaml_scalars_and_lines() {
        let text = "apps:\n  - name: api\n    port: 3000\n    ratio: 1.5\n    quoted: \"42\"\n    on: true\n    none: ~\n";
        let root = parse_yaml(text).unwrap();
        let apps = &map(&root)[0].1;
        let Node::Seq(apps) = &apps.value else {
            panic!()
        };
        let app = map(&apps[0]);
        assert_eq!(app[0].1, Located::new(Node::Str("api".into()), Some(2)));
        assert_eq!(app[1].1, Located::new(Node::Int(3000), Some(3)));
        assert_eq!(app[2].1.value, Node::Float(1.5));
        assert_eq!(app[3].1.value, Node::Str("42".into()));
        assert_eq!(app[4].1.value, Node::Bool(true));
        assert_eq!(app[5].1.value, Node::Null);
        assert_eq!(app[1].0.line, Some(3));
    }

    #[test]
    fn yaml_duplicate_keys_are_errors() {
        let errors = parse_yaml("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errors[0].line, Some(3));
        assert!(
            errors[0]
                .message
                .contains("duplicate key `a` (first on line 1)")
        );
    }

    #[test]
    fn yaml_anchors_and_merge_keys() {
        let text = "base: &base\n  a: 1\n  b: 2\nchild:\n  <<: *base\n  b: 3\n";
        let root = parse_yaml(text).unwrap();
        let child = map(&map(&root)[1].1);
        let pairs: Vec<_> = child
            .iter()
            .map(|(k, v)| (k.value.as_str(), v.value.clone()))
            .collect();
        assert_eq!(pairs, [("b", Node::Int(3)), ("a", Node::Int(1))]);
    }

    #[test]
    fn json_lines_tabs_and_compact_syntax() {
        let text = "{\n\t\"apps\": [\n\t\t{\"name\":\"api\",\"port\":3000, \"url\": \"http://x/\\u00e9\"}\n\t]\n}\n";
        let root = parse_json(text).unwrap();
        let (key, apps) = &map(&root)[0];
        assert_eq!(key.line, Some(2));
        let Node::Seq(apps) = &apps.value else {
            panic!()
        };
        let app = map(&apps[0]);
        assert_eq!(app[0].1, Located::new(Node::Str("api".into()), Some(3)));
        assert_eq!(app[1].1.value, Node::Int(3000));
        assert_eq!(app[2].1.value, Node::Str("http://x/é".into()));
    }

    #[test]
    fn json_comments_and_trailing_commas_like_pm2() {
        let text =
            "{\n  // comment\n  \"a\": \"x // not a comment\", /* block\n */ \"b\": [1, 2,],\n}\n";
        let root = parse_json(text).unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].1.value, Node::Str("x // not a comment".into()));
        assert_eq!(entries[1].0.line, Some(4));
        assert_eq!(
            entries[1].1.value,
            Node::Seq(vec![
                Located::new(Node::Int(1), Some(4)),
                Located::new(Node::Int(2), Some(4))
            ])
        );
    }

    #[test]
    fn json_syntax_error_has_line() {
        let errors = parse_json("{\n  \"a\": 1\n  \"b\": 2\n}\n").unwrap_err();
        assert!(
            errors[0].line.is_some_and(|line| (2..=3).contains(&line)),
            "{errors:?}"
        );
        let errors = parse_json("{\"a\": 1, \"a\": 2}").unwrap_err();
        assert!(errors[0].message.contains("duplicate key"));
    }
}
