//! Loading a config file: picking the format, the document's shape (`[apps.<name>]`
//! tables, an ecosystem's `apps` list or object, a bare list), the `deploy` and
//! `controller` sections, duplicate names and `--only`. Keys of one app are `app`'s,
//! of one stage `deploy`'s.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::app::{self, AppContext, ReadApp};
use crate::deploy::{self, DeployStage};
use crate::error::{ConfigError, ConfigErrors};
use crate::js;
use crate::reader::{self, Ctx, Field, MapReader, Syntax, normalise_key};
use crate::resolve::absolute;
use crate::spec::AppSpec;
use crate::tree::{self, Entry, Located, Node, SyntaxError};

/// Options for resolving a config file or a CLI start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--env production`: selects `env_production` and `deploy.production.env`.
    pub env_stage: Option<String>,
    /// `--only a,b` (empty = all apps).
    pub only: Vec<String>,
    /// The CLI's whole environment; copied into `AppSpec::inherited_env`. Its `PATH`
    /// finds interpreters and programs, its `HOME` expands `~`.
    pub inherited_env: Arc<BTreeMap<String, String>>,
    /// The CLI's cwd; relative config paths are resolved against it, and so are a PM2
    /// file's relative `cwd`, `script` and log paths (fleet.toml's start at its own
    /// directory).
    pub cwd: PathBuf,
}

/// A loaded, fully validated config file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigFile {
    /// Absolute.
    pub path: PathBuf,
    /// In file order, filtered by `only`.
    pub apps: Vec<AppSpec>,
    pub deploy: BTreeMap<String, DeployStage>,
    pub controller: Option<ControllerSection>,
    /// Rendered like errors (`file:line: key: message`), e.g. node-only PM2 keys ignored.
    pub warnings: Vec<String>,
}

/// `[controller]`: the controller the CLI talks to instead of SSH.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// `https://host:port`, or several controllers sharing a store, comma-separated and
    /// tried in order.
    pub url: String,
}

/// The syntaxes `load_str` parses; `.js` files become JSON through node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
    Yaml,
}

const JS_EXTENSIONS: &[&str] = &["js", "cjs", "mjs"];

/// Whether `fleet start <path>` means a config file rather than a script: `.toml`,
/// `.json`, `.yaml`/`.yml`, `*.config.{js,cjs,mjs}` and `ecosystem*.{js,cjs,mjs}`.
pub fn is_config_file(path: &Path) -> bool {
    let Some(name) = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
    else {
        return false;
    };
    let Some((stem, extension)) = name.rsplit_once('.') else {
        return false;
    };
    match extension {
        "toml" | "json" | "yaml" | "yml" => !stem.is_empty(),
        e if JS_EXTENSIONS.contains(&e) => {
            stem.ends_with(".config") || stem.starts_with("ecosystem")
        }
        _ => false,
    }
}

/// Loads and validates a config file; every error in it is reported at once.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<ConfigFile, ConfigErrors> {
    load_file(path, opts, true)
}

/// Like `load`, but does not look for scripts or interpreters on this machine: for
/// `fleet deploy`, whose apps run on other hosts. `command` stays empty and
/// `interpreter` is the one written, if any.
pub fn load_unresolved(path: &Path, opts: &LoadOptions) -> Result<ConfigFile, ConfigErrors> {
    load_file(path, opts, false)
}

/// Validates config text as if it were the file `path` (which need not exist; its
/// directory is the apps' default cwd).
pub fn load_str(
    text: &str,
    format: Format,
    path: &Path,
    opts: &LoadOptions,
) -> Result<ConfigFile, ConfigErrors> {
    let (parsed, syntax) = match format {
        Format::Toml => (tree::parse_toml(text), Syntax::Toml),
        Format::Json => (tree::parse_json(text), Syntax::Json),
        Format::Yaml => (tree::parse_yaml(text), Syntax::Yaml),
    };
    let root = parsed.map_err(|errors| syntax_errors(path, errors))?;
    build(&root, syntax, path, opts, true)
}

fn load_file(
    path: &Path,
    opts: &LoadOptions,
    resolve_scripts: bool,
) -> Result<ConfigFile, ConfigErrors> {
    let file = absolute(&opts.cwd.join(path));
    let extension = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let read = || {
        std::fs::read_to_string(&file).map_err(|error| {
            let message = match error.kind() {
                std::io::ErrorKind::NotFound => "file not found".to_string(),
                _ => format!("cannot read the file: {error}"),
            };
            ConfigErrors::from(ConfigError::new(path, None, "", message))
        })
    };
    let (parsed, syntax) = match extension.as_str() {
        "toml" => (tree::parse_toml(&read()?), Syntax::Toml),
        "json" => (tree::parse_json(&read()?), Syntax::Json),
        "yaml" | "yml" => (tree::parse_yaml(&read()?), Syntax::Yaml),
        e if JS_EXTENSIONS.contains(&e) => {
            let source = read()?;
            let json = js::evaluate(&file, path, opts)?;
            let parsed = tree::parse_json(&json).map(|mut root| {
                js::assign_lines(&mut root, &source);
                root
            });
            (parsed, Syntax::Js)
        }
        _ => {
            return Err(ConfigError::new(path, None, "", "not a config file")
                .with_hint("use fleet.toml, or an ecosystem file: .json, .yaml, .yml or .config.js")
                .into());
        }
    };
    let root = parsed.map_err(|errors| syntax_errors(path, errors))?;
    build(&root, syntax, path, opts, resolve_scripts)
}

fn syntax_errors(path: &Path, errors: Vec<SyntaxError>) -> ConfigErrors {
    ConfigErrors {
        errors: errors
            .into_iter()
            .map(|error| ConfigError::new(path, error.line, "", error.message))
            .collect(),
    }
}

/// Top-level keys of every format.
const APPS: &str = "apps";
const DEPLOY: &str = "deploy";
const CONTROLLER: &str = "controller";
/// PM2's `pm2 serve` entries.
const STATIC: &str = "static";

fn build(
    root: &Located<Node>,
    syntax: Syntax,
    shown: &Path,
    opts: &LoadOptions,
    resolve_scripts: bool,
) -> Result<ConfigFile, ConfigErrors> {
    let file = absolute(&opts.cwd.join(shown));
    // fleet.toml's relative paths start at its own directory; a PM2 file's start where
    // the command runs, as PM2 resolves them, so a project that runs
    // `pm2 start deploy/ecosystem.config.js` from its root keeps working.
    let base_dir = match syntax {
        Syntax::Toml => file
            .parent()
            .map_or_else(|| opts.cwd.clone(), Path::to_path_buf),
        Syntax::Json | Syntax::Yaml | Syntax::Js => opts.cwd.clone(),
    };
    let path_env: Option<OsString> = opts
        .inherited_env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let home = opts
        .inherited_env
        .get("HOME")
        .cloned()
        .or_else(|| std::env::var("HOME").ok());
    let mut ctx = Ctx::new(shown, syntax);
    let package = package_json_apps(shown, root);
    let root = package.as_ref().unwrap_or(root);

    let empty = Vec::new();
    let (entries, bare_apps): (&[Entry], Option<&Located<Node>>) = match &root.value {
        Node::Null => (&empty, None),
        Node::Seq(_) if syntax != Syntax::Toml => (&empty, Some(root)),
        Node::Map(entries) if syntax != Syntax::Toml && looks_like_one_app(entries) => {
            (&empty, Some(root))
        }
        Node::Map(entries) => (entries, None),
        other => {
            let got = ctx.type_name(other);
            ctx.error(
                root.line,
                "",
                format!("expected an object with `apps` (and `deploy`), got {got}"),
            );
            return Err(ConfigErrors { errors: ctx.errors });
        }
    };
    let mut r = MapReader::new("", entries);
    let apps_field = r.take(&mut ctx, &[APPS]).or_else(|| {
        bare_apps.map(|node| Field {
            path: APPS.to_string(),
            raw_key: APPS,
            line: node.line,
            value: node,
        })
    });
    let deploy_field = r.take(&mut ctx, &[DEPLOY]);
    let controller_field = r.take(&mut ctx, &[CONTROLLER]);
    if let Some(f) = r.take(&mut ctx, &[STATIC]) {
        ctx.error_hint(
            f.line,
            &f.path,
            "not supported: pm2 serve entries",
            "run a static file server as an app",
        );
    }
    if syntax == Syntax::Toml {
        r.finish(&mut ctx);
    } else {
        r.finish_ignoring_others(&mut ctx);
    }

    let deploy = deploy_field
        .map(|f| deploy::read_deploy(&mut ctx, &f, &base_dir, home.as_deref()))
        .unwrap_or_default();
    let deploy_env = opts
        .env_stage
        .as_ref()
        .and_then(|stage| deploy.get(stage))
        .map(|stage| &stage.env);
    let app_context = AppContext {
        opts,
        base_dir: &base_dir,
        source: &file,
        deploy_env,
        path_env: path_env.as_deref(),
        home: home.as_deref(),
        resolve_scripts,
    };
    let read = apps_field
        .map(|f| read_apps(&mut ctx, &f, &app_context))
        .unwrap_or_default();
    check_names(&mut ctx, &read, opts);
    let controller = controller_field.and_then(|f| read_controller(&mut ctx, &f));

    if !ctx.errors.is_empty() {
        // Top to bottom reads best; errors without a line (JavaScript) go last.
        ctx.errors
            .sort_by_key(|error| error.line.unwrap_or(u32::MAX));
        return Err(ConfigErrors { errors: ctx.errors });
    }
    Ok(ConfigFile {
        path: file,
        apps: read
            .into_iter()
            .filter(|app| app.selected)
            .filter_map(|app| app.spec)
            .collect(),
        deploy,
        controller,
        warnings: ctx.warnings,
    })
}

/// A `package.json` (which PM2 starts): only its `apps` (with `deploy`) or `pm2` key
/// is the ecosystem; the rest is npm's. `None` for any other file, or a package.json
/// with neither key (then the usual errors explain what is missing).
fn package_json_apps(shown: &Path, root: &Located<Node>) -> Option<Located<Node>> {
    if shown.file_name().is_none_or(|name| name != "package.json") {
        return None;
    }
    let Node::Map(entries) = &root.value else {
        return None;
    };
    let find = |key: &str| entries.iter().find(|(k, _)| k.value == key);
    if find(APPS).is_some() {
        let kept = entries
            .iter()
            .filter(|(k, _)| k.value == APPS || k.value == DEPLOY)
            .cloned()
            .collect();
        return Some(Located::new(Node::Map(kept), root.line));
    }
    find("pm2").map(|(_, value)| value.clone())
}

/// An ecosystem whose top level is one app (`{ "script": ... }`), which PM2 accepts.
fn looks_like_one_app(entries: &[Entry]) -> bool {
    let keys: Vec<String> = entries
        .iter()
        .map(|(k, _)| normalise_key(&k.value))
        .collect();
    let top_level = [APPS, DEPLOY, CONTROLLER, STATIC];
    !keys.iter().any(|k| top_level.contains(&k.as_str()))
        && keys
            .iter()
            .any(|k| matches!(k.as_str(), "script" | "exec" | "cmd" | "command" | "name"))
}

/// `apps`: `[apps.<name>]` tables (any format), a list of apps, or one app object.
fn read_apps(ctx: &mut Ctx<'_>, field: &Field<'_>, context: &AppContext<'_>) -> Vec<ReadApp> {
    match &field.value.value {
        Node::Map(entries) if ctx.syntax == Syntax::Toml || is_keyed_by_name(entries) => entries
            .iter()
            .filter_map(|(name, app)| {
                let path = reader::join_key(&field.path, &name.value);
                app::read_app(ctx, &path, Some(name), app, context)
            })
            .collect(),
        Node::Map(_) => app::read_app(ctx, &field.path, None, field.value, context)
            .into_iter()
            .collect(),
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, app)| {
                let path = match written_name(app) {
                    Some(name) => reader::join_key(&field.path, name),
                    None => format!("{}[{i}]", field.path),
                };
                app::read_app(ctx, &path, None, app, context)
            })
            .collect(),
        _ => {
            let expected = if ctx.syntax == Syntax::Toml {
                "tables like [apps.api]"
            } else {
                "a list of apps"
            };
            ctx.wrong_type(field, expected);
            Vec::new()
        }
    }
}

/// `apps: { api: {...}, worker: {...} }` (fleet.toml's shape in JSON or YAML) rather
/// than one app object: every value is an object and no key is an app option.
fn is_keyed_by_name(entries: &[Entry]) -> bool {
    !entries.is_empty()
        && entries.iter().all(|(key, value)| {
            matches!(value.value, Node::Map(_))
                && !matches!(normalise_key(&key.value).as_str(), "env" | "watch_options")
                && !normalise_key(&key.value).starts_with("env_")
        })
}

/// The app's `name`, if written as a plain valid name, for its key path.
fn written_name(app: &Located<Node>) -> Option<&str> {
    let Node::Map(entries) = &app.value else {
        return None;
    };
    entries.iter().find_map(|(key, value)| match &value.value {
        Node::Str(name) if key.value == "name" && app::check_app_name(name).is_ok() => {
            Some(name.as_str())
        }
        _ => None,
    })
}

/// Names are unique within a file; every `--only` name must exist.
fn check_names(ctx: &mut Ctx<'_>, apps: &[ReadApp], opts: &LoadOptions) {
    let mut seen: HashMap<&str, Option<u32>> = HashMap::new();
    for app in apps.iter().filter(|app| !app.name.is_empty()) {
        match seen.get(app.name.as_str()) {
            Some(first) => {
                let first = first
                    .map(|line| format!(" (first on line {line})"))
                    .unwrap_or_default();
                ctx.error_hint(
                    app.line,
                    &reader::join_key(APPS, &app.name),
                    format!("duplicate app name {:?}{first}", app.name),
                    "app names must be unique within a file; set `name` on one of them",
                );
            }
            None => {
                seen.insert(&app.name, app.line);
            }
        }
    }
    for only in &opts.only {
        if !apps
            .iter()
            .any(|app| app.name_in_file == *only || app.name == *only)
        {
            let names: Vec<&str> = apps.iter().map(|app| app.name.as_str()).collect();
            let hint = if names.is_empty() {
                "this file has no apps".to_string()
            } else {
                format!("apps in this file: {}", names.join(", "))
            };
            ctx.error_hint(None, "--only", format!("no app named {only:?}"), hint);
        }
    }
}

fn read_controller(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<ControllerSection> {
    let Node::Map(entries) = &field.value.value else {
        ctx.wrong_type(field, "a table with `url`");
        return None;
    };
    let mut r = MapReader::new(&field.path, entries);
    let url = match r.take(ctx, &["url"]) {
        Some(f) => reader::as_string(ctx, &f).filter(|url| {
            // Several controllers sharing a store: comma-separated, each https.
            let ok = url.split(',').map(str::trim).all(|url| {
                url.starts_with("https://") && url.len() > "https://".len()
            });
            if !ok {
                ctx.error_hint(
                    f.line,
                    &f.path,
                    format!("expected an https:// URL, got {url:?}"),
                    "the controller serves TLS only, like url = \"https://controller.example:7443\"",
                );
            }
            ok
        }),
        None => {
            ctx.error(field.line, &field.path, "missing `url`");
            None
        }
    };
    r.finish(ctx);
    url.map(|url| ControllerSection { url })
}
