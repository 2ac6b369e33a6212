//! JavaScript ecosystem files: evaluated with `node` (as PM2 `require`s them) into JSON,
//! and a heuristic that finds each key's line in the JavaScript source so errors can
//! still point somewhere. Parsing the JSON and validating it is the other modules' job.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{ConfigError, ConfigErrors};
use crate::load::LoadOptions;
use crate::resolve::find_on_path;
use crate::tree::{Entry, Located, Node};

/// A config file that takes longer than this to evaluate is stuck (PM2 gives a `.json`
/// file one second; `require` of a `.js` file has no limit, but a hang must not hang fleet).
const EVAL_TIMEOUT: Duration = Duration::from_secs(10);
const EVAL_POLL: Duration = Duration::from_millis(10);

/// Lines of node's stderr shown when evaluation fails.
const STDERR_LINES: usize = 6;

/// Separates the JSON from anything the config file itself prints.
const MARKER: &str = "@@fleet-config-json@@";

/// Loads the file given as the first argument like PM2 does (`require`, or `import` for
/// ES modules) and prints `module.exports.default ?? module.exports` as JSON.
const EVAL_SCRIPT: &str = r#"
const file = process.argv[1];
const url = require('url');
const load = async () => {
  if (file.endsWith('.mjs')) return import(url.pathToFileURL(file).href);
  try {
    return require(file);
  } catch (e) {
    if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
      return import(url.pathToFileURL(file).href);
    }
    throw e;
  }
};
load().then((m) => {
  let config = m && m.default !== undefined ? m.default : m;
  if (config && config.__esModule && config.default !== undefined) config = config.default;
  process.stdout.write(MARKER + JSON.stringify(config === undefined ? null : config));
}).catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
"#;

/// Runs node on `file`; returns the JSON it printed.
pub(crate) fn evaluate(
    file: &Path,
    shown: &Path,
    opts: &LoadOptions,
) -> Result<String, ConfigErrors> {
    let fail = |message: String, hint: Option<&str>| -> ConfigErrors {
        let error = ConfigError::new(shown, None, "", message);
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
        .into()
    };
    let path_env = opts
        .inherited_env
        .get("PATH")
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let Some(node) = find_on_path("node", path_env.as_deref()) else {
        return Err(fail(
            "node is needed to read a JavaScript config file and is not on PATH".to_string(),
            Some("install node, or convert it to fleet.toml / ecosystem.json"),
        ));
    };
    let script = EVAL_SCRIPT.replace("MARKER", &format!("'{MARKER}'"));
    // The config sees the CLI's environment and cwd, as with `pm2 start`.
    let cwd = if opts.cwd.is_dir() {
        opts.cwd.clone()
    } else {
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut child = Command::new(node)
        .arg("-e")
        .arg(script)
        .arg(file)
        .current_dir(cwd)
        .envs(opts.inherited_env.iter())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| fail(format!("cannot run node: {error}"), None))?;

    // Drain both pipes on threads so a chatty config cannot fill one and block node.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + EVAL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(EVAL_POLL),
            Ok(None) | Err(_) => {
                // Only the node process started above is killed, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(fail(
            format!(
                "node did not finish evaluating the file within {}s",
                EVAL_TIMEOUT.as_secs()
            ),
            Some("a config file must not wait for anything; export the config directly"),
        ));
    };
    if !status.success() {
        let excerpt: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .take(STDERR_LINES)
            .collect();
        let mut message = format!("node failed to evaluate the file ({status})");
        for line in excerpt {
            message.push_str("\n    ");
            message.push_str(line);
        }
        return Err(fail(message, None));
    }
    match json_after_marker(&stdout) {
        Some(json) => Ok(json.to_string()),
        None => Err(fail("node printed no config".to_string(), None)),
    }
}

/// What node printed after the last marker: the config's JSON (what the file printed
/// itself comes before).
fn json_after_marker(stdout: &str) -> Option<&str> {
    stdout.rfind(MARKER).map(|at| &stdout[at + MARKER.len()..])
}

/// Gives every node of a tree parsed from node's JSON the line of its key in the
/// JavaScript source, when a heuristic finds it: an app's keys are searched from the
/// line naming the app (`name: 'api'`), a nested key from its parent key's line.
pub(crate) fn assign_lines(root: &mut Located<Node>, source: &str) {
    let lines: Vec<&str> = source.lines().collect();
    clear_lines(root);
    let Node::Map(entries) = &mut root.value else {
        if let Node::Seq(apps) = &mut root.value {
            assign_apps(apps, &lines, 0);
        }
        return;
    };
    if !entries
        .iter()
        .any(|(k, _)| k.value == "apps" || k.value == "deploy")
    {
        // One app at the top level.
        assign_map(entries, &lines, 0, lines.len(), 0);
        return;
    }
    for (key, value) in entries.iter_mut() {
        let line = find_key(&lines, &key.value, 0, lines.len());
        set_line(key, value, line);
        let from = line.map_or(0, |l| l as usize - 1);
        match &mut value.value {
            Node::Seq(apps) if key.value == "apps" => assign_apps(apps, &lines, from),
            Node::Map(inner) => assign_map(inner, &lines, from, lines.len(), from),
            _ => {}
        }
    }
}

fn assign_apps(apps: &mut [Located<Node>], lines: &[&str], from: usize) {
    // Each app's name line (0-based), found in order; an app's keys are looked for
    // between its name and the next app's, or back to the previous app's.
    let mut starts: Vec<Option<usize>> = Vec::with_capacity(apps.len());
    let mut cursor = from;
    for app in apps.iter() {
        let start = app_name(app).and_then(|name| find_name_line(lines, &name, cursor));
        if let Some(start) = start {
            cursor = start + 1;
        }
        starts.push(start);
    }
    for (i, app) in apps.iter_mut().enumerate() {
        let previous = starts[..i]
            .iter()
            .rev()
            .flatten()
            .next()
            .map_or(from, |s| s + 1);
        let next = starts[i + 1..]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(lines.len());
        let start = starts[i].unwrap_or(previous);
        app.line = starts[i].map(to_line);
        if let Node::Map(entries) = &mut app.value {
            assign_map(entries, lines, start, next, previous);
        }
    }
}

fn app_name(app: &Located<Node>) -> Option<String> {
    let Node::Map(entries) = &app.value else {
        return None;
    };
    entries.iter().find_map(|(k, v)| match &v.value {
        Node::Str(name) if k.value == "name" => Some(name.clone()),
        _ => None,
    })
}

/// Finds each key in `from..to` (0-based), else looking back from `from` to `back_to`.
fn assign_map(entries: &mut [Entry], lines: &[&str], from: usize, to: usize, back_to: usize) {
    for (key, value) in entries.iter_mut() {
        let line = find_key(lines, &key.value, from, to)
            .or_else(|| find_key_backwards(lines, &key.value, back_to, from));
        set_line(key, value, line);
        if let (Node::Map(inner), Some(line)) = (&mut value.value, line) {
            let at = line as usize - 1;
            assign_map(inner, lines, at, to, at);
        }
    }
}

fn set_line(key: &mut Located<String>, value: &mut Located<Node>, line: Option<u32>) {
    key.line = line;
    value.line = line;
    if let Node::Seq(items) = &mut value.value {
        for item in items {
            item.line = line;
        }
    }
}

fn clear_lines(node: &mut Located<Node>) {
    node.line = None;
    match &mut node.value {
        Node::Seq(items) => items.iter_mut().for_each(clear_lines),
        Node::Map(entries) => {
            for (key, value) in entries {
                key.line = None;
                clear_lines(value);
            }
        }
        _ => {}
    }
}

/// The first line in `from..to` (0-based) with `key:`, `"key":` or `'key':`; 1-based.
fn find_key(lines: &[&str], key: &str, from: usize, to: usize) -> Option<u32> {
    (from..to.min(lines.len()))
        .find(|i| line_has_key(lines[*i], key))
        .map(to_line)
}

fn find_key_backwards(lines: &[&str], key: &str, back_to: usize, from: usize) -> Option<u32> {
    (back_to..from.min(lines.len()))
        .rev()
        .find(|i| line_has_key(lines[*i], key))
        .map(to_line)
}

/// The first line (0-based) from `from` with the app's name as a string literal,
/// preferably after `name:`.
fn find_name_line(lines: &[&str], name: &str, from: usize) -> Option<usize> {
    let literals = [
        format!("'{name}'"),
        format!("\"{name}\""),
        format!("`{name}`"),
    ];
    let has_literal = |line: &str| {
        literals
            .iter()
            .any(|literal| line.contains(literal.as_str()))
    };
    (from..lines.len())
        .find(|i| line_has_key(lines[*i], "name") && has_literal(lines[*i]))
        .or_else(|| (from..lines.len()).find(|i| has_literal(lines[*i])))
}

fn line_has_key(line: &str, key: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    line.match_indices(key).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = &line[at + key.len()..];
        let after = match before {
            Some(quote @ ('"' | '\'')) => match after.strip_prefix(quote) {
                Some(rest) => rest,
                None => return false,
            },
            Some(c) if is_ident(c) => return false,
            _ => after,
        };
        if after.chars().next().is_some_and(is_ident) {
            return false;
        }
        after.trim_start().starts_with(':')
    })
}

fn to_line(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::parse_json;
    use proptest::prelude::*;

    const SOURCE: &str = "module.exports = {\n  apps: [{\n    name: 'web',\n    script: 'web.js',\n    env: { PORT: 3000, 'NODE_ENV': \"production\" },\n  }, {\n    name: \"api\", instances: 'max',\n  }],\n};\n";
    const JSON: &str = r#"{"apps":[{"name":"web","script":"web.js","env":{"PORT":3000,"NODE_ENV":"production"}},{"name":"api","instances":"max"}]}"#;

    fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, op, byte) in edits {
            let at = if bytes.is_empty() {
                0
            } else {
                at % bytes.len()
            };
            match op % 3 {
                0 if !bytes.is_empty() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn lines_within(node: &Located<Node>, count: u32) -> bool {
        node.line.is_none_or(|l| l >= 1 && l <= count)
            && match &node.value {
                Node::Map(entries) => entries.iter().all(|(key, value)| {
                    key.line.is_none_or(|l| l >= 1 && l <= count) && lines_within(value, count)
                }),
                Node::Seq(items) => items.iter().all(|item| lines_within(item, count)),
                _ => true,
            }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The bridge's output: whatever node printed, the JSON is what follows the
        /// last marker, and mutated sources and outputs never panic; every line found
        /// is a line of the source.
        #[test]
        fn the_js_bridge_output_never_panics(
            printed in "[ -~\n]{0,80}",
            source_edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..10),
            json_edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
        ) {
            let stdout = format!("{printed}{MARKER}{}", mutate(JSON, &json_edits));
            let json = json_after_marker(&stdout).unwrap();
            let source = mutate(SOURCE, &source_edits);
            if let Ok(mut root) = parse_json(json) {
                assign_lines(&mut root, &source);
                let count = source.lines().count() as u32;
                prop_assert!(lines_within(&root, count.max(1)));
            }
            prop_assert_eq!(json_after_marker(&printed).is_some(), printed.contains(MARKER));
        }
    }

    #[test]
    fn keys_are_found_in_javascript_source() {
        assert!(line_has_key("    instances: 2,", "instances"));
        assert!(line_has_key("  \"instances\": 2,", "instances"));
        assert!(line_has_key("  'instances' : 2,", "instances"));
        assert!(!line_has_key("  max_instances: 2,", "instances"));
        assert!(!line_has_key("  instances_x: 2,", "instances"));
        assert!(!line_has_key("  // instances are many", "instances"));
    }

    #[test]
    fn lines_follow_each_app_name() {
        let source = "module.exports = {\n  apps: [\n    {\n      name: 'web',\n      script: 'web.js',\n      instancs: 2,\n    },\n    {\n      script: 'api.js',\n      name: 'api',\n      instancs: 4,\n      env: {\n        PORT: 3000,\n      },\n    },\n  ],\n};\n";
        let json = r#"{"apps":[{"name":"web","script":"web.js","instancs":2},{"script":"api.js","name":"api","instancs":4,"env":{"PORT":3000}}]}"#;
        let mut root = parse_json(json).unwrap();
        assign_lines(&mut root, source);
        let Node::Map(top) = &root.value else {
            panic!()
        };
        assert_eq!(top[0].0.line, Some(2));
        let Node::Seq(apps) = &top[0].1.value else {
            panic!()
        };
        let line_of = |app: &Located<Node>, key: &str| {
            let Node::Map(entries) = &app.value else {
                panic!()
            };
            entries.iter().find(|(k, _)| k.value == key).unwrap().0.line
        };
        assert_eq!(apps[0].line, Some(4));
        assert_eq!(line_of(&apps[0], "instancs"), Some(6));
        assert_eq!(apps[1].line, Some(10));
        assert_eq!(line_of(&apps[1], "instancs"), Some(11));
        // Written before `name`: found looking back.
        assert_eq!(line_of(&apps[1], "script"), Some(9));
        let Node::Map(app) = &apps[1].value else {
            panic!()
        };
        let Node::Map(env) = &app[3].1.value else {
            panic!()
        };
        assert_eq!(env[0].0.line, Some(13));
    }
}
