//! `fleet init` (PM2's `pm2 ecosystem`): a commented `fleet.toml` for the apps found in
//! a directory: `package.json`'s `main` or `start` script, Python entry points,
//! executables. With none found, a skeleton to fill in.
//!
//! `scan` reads the directory into `Found`s, `render` (pure) writes the file's text,
//! `run` is the command. It refuses to overwrite an existing `fleet.toml`.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::Failure;

/// `fleet init [--force]` in the current directory.
pub fn run(force: bool) -> anyhow::Result<()> {
    let dir = std::env::current_dir().context("cannot read the current directory")?;
    let path = dir.join("fleet.toml");
    if path.exists() && !force {
        return Err(Failure::usage(format!(
            "{} exists; `fleet init --force` replaces it",
            path.display()
        ))
        .into());
    }
    let found = scan(&dir);
    std::fs::write(&path, render(&found))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    if names.is_empty() {
        println!("wrote {} (a skeleton: no app found here)", path.display());
    } else {
        let names = names.join(", ");
        println!(
            "wrote {} with {names}; start them: fleet start",
            path.display()
        );
    }
    Ok(())
}

/// At most this many apps are proposed; a directory with more is not one project.
const MAX_APPS: usize = 12;

/// An app the directory seems to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub script: String,
    pub args: Vec<String>,
    /// Why this looks like an app, shown as a comment.
    pub because: String,
}

/// Python files that are entry points by name, whatever their contents.
const PYTHON_ENTRY_NAMES: &[&str] = &["main.py", "app.py", "server.py", "worker.py", "manage.py"];

/// Looks at `dir`'s top level (and its package.json).
pub fn scan(dir: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("package.json"))
        && let Ok(package) = serde_json::from_str::<Value>(&text)
        && let Some(app) = from_package(&package, |p| dir.join(p).is_file())
    {
        found.push(app);
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if name.starts_with('.') || !meta.is_file() {
            continue;
        }
        let text = || std::fs::read_to_string(entry.path()).unwrap_or_default();
        let because = if name.ends_with(".py") {
            if PYTHON_ENTRY_NAMES.contains(&name.as_str()) {
                Some("a Python entry point by its name".to_string())
            } else if text().contains("__main__") {
                Some("a Python file that runs as __main__".to_string())
            } else {
                None
            }
        } else if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            Some("an executable".to_string())
        } else {
            None
        };
        if let Some(because) = because {
            found.push(Found {
                name: fleet_config::default_name(&name),
                script: format!("./{name}"),
                args: Vec::new(),
                because,
            });
        }
    }
    dedupe_names(&mut found);
    found.truncate(MAX_APPS);
    found
}

/// The Node app of a package.json: its `main` when that file exists, else the file
/// its `start` script runs with node, else `npm start` itself.
pub fn from_package(package: &Value, exists: impl Fn(&str) -> bool) -> Option<Found> {
    let name = package["name"]
        .as_str()
        .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "app".to_string());
    let start = package["scripts"]["start"].as_str();
    if let Some(main) = package["main"].as_str().filter(|m| exists(m)) {
        return Some(Found {
            name,
            script: main.to_string(),
            args: Vec::new(),
            because: "package.json's main".to_string(),
        });
    }
    let start = start?;
    let words: Vec<&str> = start.split_whitespace().collect();
    if let ["node", script, rest @ ..] = words.as_slice()
        && exists(script)
    {
        return Some(Found {
            name,
            script: script.to_string(),
            args: rest.iter().map(|s| s.to_string()).collect(),
            because: format!("package.json's start script ({start})"),
        });
    }
    Some(Found {
        name,
        script: "npm".to_string(),
        args: vec!["start".to_string()],
        because: format!("package.json's start script ({start}), run by npm"),
    })
}

/// Two apps may not share a name: the second `api` becomes `api-2`.
fn dedupe_names(found: &mut [Found]) {
    let mut seen = std::collections::BTreeSet::new();
    for app in found.iter_mut() {
        let base = app.name.clone();
        let mut n = 1;
        while !seen.insert(app.name.clone()) {
            n += 1;
            app.name = format!("{base}-{n}");
        }
    }
}

/// A TOML string (JSON's escapes are TOML's).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}

/// A table key: bare when TOML allows it, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { quote(name) }
}

const HEADER: &str = "# fleet.toml, written by `fleet init`. Start everything: `fleet start`.
# Keys use PM2's names (instances, exec_mode, env, env_production, max_memory_restart...);
# every key and what it does is in fleet's README.
";

const OPTIONS: &str = "# instances = 2                 # or \"max\": one per CPU
# exec_mode = \"cluster\"        # with port: every instance shares it (LISTEN_FDS or Node's cluster)
# port = 3000
# env = { NODE_ENV = \"development\" }
# env_production = { NODE_ENV = \"production\" }   # fleet start --env production
# max_memory_restart = \"500M\"
# health_check = \"/health\"     # HTTP readiness and liveness
";

/// The file's text for `found` (a skeleton when empty).
pub fn render(found: &[Found]) -> String {
    let mut out = String::from(HEADER);
    if found.is_empty() {
        out.push_str(
            "# No app was found here (package.json, Python entry points, executables):\n\
             # fill in this one, or add more [apps.<name>] tables.\n\n[apps.app]\nscript = \"./server.js\"\n",
        );
        out.push_str(OPTIONS);
        return out;
    }
    for app in found {
        out.push_str(&format!("\n# {}\n[apps.{}]\n", app.because, key(&app.name)));
        out.push_str(&format!("script = {}\n", quote(&app.script)));
        if !app.args.is_empty() {
            let args: Vec<String> = app.args.iter().map(|a| quote(a)).collect();
            out.push_str(&format!("args = [{}]\n", args.join(", ")));
        }
        out.push_str(OPTIONS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn package_json_main_then_node_start_then_npm_start() {
        let all = |_: &str| true;
        let none = |_: &str| false;
        let package = json!({"name": "@acme/api", "main": "index.js", "scripts": {"start": "node server.js --port 3000"}});
        let found = from_package(&package, all).unwrap();
        assert_eq!(
            (found.name.as_str(), found.script.as_str()),
            ("api", "index.js")
        );
        let found = from_package(&package, |p: &str| p == "server.js").unwrap();
        assert_eq!(found.script, "server.js");
        assert_eq!(found.args, ["--port", "3000"]);
        let found = from_package(&package, none).unwrap();
        assert_eq!(
            (found.script.as_str(), found.args.clone()),
            ("npm", vec!["start".to_string()])
        );
        assert_eq!(from_package(&json!({"name": "lib"}), all), None);
    }

    #[test]
    fn rendered_files_are_toml_with_one_table_per_app() {
        let found = vec![
            Found {
                name: "api".into(),
                script: "index.js".into(),
                args: vec!["--port".into(), "3000".into()],
                because: "package.json's main".into(),
            },
            Found {
                name: "my worker".into(),
                script: "./worker.py".into(),
                args: Vec::new(),
                because: "a Python entry point by its name".into(),
            },
        ];
        let text = render(&found);
        assert!(
            text.contains("[apps.api]\nscript = \"index.js\"\nargs = [\"--port\", \"3000\"]\n"),
            "{text}"
        );
        assert!(text.contains("[apps.\"my worker\"]\n"), "{text}");
        assert!(render(&[]).contains("[apps.app]"));
    }

    #[test]
    fn names_are_made_unique() {
        let app = |name: &str| Found {
            name: name.into(),
            script: "x".into(),
            args: Vec::new(),
            because: String::new(),
        };
        let mut found = vec![app("api"), app("api"), app("api")];
        dedupe_names(&mut found);
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["api", "api-2", "api-3"]);
    }
}
