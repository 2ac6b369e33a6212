//! One app's keys: PM2's names, aliases and loose types validated into an `AppSpec`,
//! with stage env selection, log and watch paths made absolute and the script resolved
//! (`resolve`). The file around the apps is `load`'s business.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::load::LoadOptions;
use crate::node_version;
use crate::reader::{self, Ctx, Field, MapReader, Syntax};
use crate::resolve::{self, absolute};
use crate::spec::{AppSpec, ExecMode, Instances};
use crate::tree::{Located, Node};

mod fields;
mod host;
mod policy;

use fields::*;
use host::read_host;
use policy::{read_logs, read_policy};

/// Names and namespaces end up in file names, targets and URLs; PM2 allows more but
/// then trips over them (`/` in a log path, `all` as a target).
const MAX_NAME_LEN: usize = 64;

/// A typo guard: no host fleet runs on has this many CPUs, so a bigger count is a mistake.
/// The agent checks every count it receives against it too.
pub const MAX_INSTANCES: u32 = 1024;

/// What `time: true` sets, as in PM2.
const TIME_LOG_DATE_FORMAT: &str = "YYYY-MM-DDTHH:mm:ss";

/// Where `disable_logs` and PM2's `"NULL"` log paths send output.
const DEV_NULL: &str = "/dev/null";

/// Node-only PM2 options: accepted so ecosystem files load, ignored with a warning.
const IGNORED_KEYS: &[&str] = &[
    "vizion",
    "pmx",
    "automation",
    "trace",
    "disable_trace",
    "source_map_support",
    "disable_source_map_support",
    "v8",
    "event_loop_inspector",
    "deep_monitoring",
    "io",
    "windows_hide",
    "post_update",
    "watch_options",
    "kill_retry_time",
];

/// Keys the pm2 CLI writes into an app for itself (`username`, `install_url`) or that
/// only steer its own command line (`force`, `write`, `execute_command`,
/// `name_prefix`): accepted with a notice, since they change nothing about the app.
const PM2_CLI_KEYS: &[&str] = &[
    "username",
    "install_url",
    "force",
    "write",
    "execute_command",
    "name_prefix",
];

/// PM2 options fleet refuses, with why and what to do instead.
const UNSUPPORTED_KEYS: &[(&str, &str, &str)] = &[
    (
        "container",
        "fleet does not run containers",
        "run the container's command as the script",
    ),
    (
        "docker",
        "fleet does not run containers",
        "run the container's command as the script",
    ),
    (
        "image_name",
        "fleet does not run containers",
        "run the container's command as the script",
    ),
];

/// What reading one app produced: its names for duplicate and `only` checks, and the
/// spec when it had no errors.
pub(crate) struct ReadApp {
    pub name: String,
    pub name_in_file: String,
    pub line: Option<u32>,
    pub selected: bool,
    pub spec: Option<AppSpec>,
}

/// What an app needs from outside itself.
pub(crate) struct AppContext<'a> {
    pub opts: &'a LoadOptions,
    /// The config file's directory: the default `cwd`.
    pub base_dir: &'a Path,
    /// The absolute config file, recorded as `AppSpec::source`.
    pub source: &'a Path,
    /// `deploy.<stage>.env` of the selected stage.
    pub deploy_env: Option<&'a BTreeMap<String, String>>,
    pub path_env: Option<&'a OsStr>,
    pub home: Option<&'a str>,
    /// False for `load_unresolved`: apps run elsewhere, so scripts are not looked for.
    pub resolve_scripts: bool,
}

/// Checks an app's name. PM2 takes names like `My APP` and `api/development`, so fleet
/// does too; files named after the app use `file_name_of` (PM2's own rule).
pub(crate) fn check_app_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".to_string());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("a name is at most {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} contains a control character"));
    }
    if name.trim() != name {
        return Err(format!("{name:?} starts or ends with a space"));
    }
    if name.starts_with(['/', '#']) {
        return Err(format!(
            "{name:?} cannot start with `/` or `#`: targets read those as a regex or an id"
        ));
    }
    if name.eq_ignore_ascii_case("all") {
        return Err("`all` is reserved: it targets every app".to_string());
    }
    Ok(())
}

/// An app's name as it appears in file names (its default log files): every
/// character but letters, digits, `.`, `_` and `-` becomes `-`, as PM2 formats it, so a
/// name never reaches outside its directory.
pub fn file_name_of(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if mapped.chars().all(|c| c == '.') {
        mapped.replace('.', "-")
    } else {
        mapped
    }
}

/// Checks a namespace or stage name: these are written in commands and paths as
/// they are, so only letters, digits, `.`, `_` and `-`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".to_string());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("a name is at most {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, `.`, `_` and `-`"
        ));
    }
    if name.chars().all(|c| c == '.') {
        return Err(format!("{name:?} is not a usable name"));
    }
    if name.eq_ignore_ascii_case("all") {
        return Err("`all` is reserved: it targets every app".to_string());
    }
    Ok(())
}

/// Reads one app. `table_name` is the `[apps.<name>]` key when the format names apps
/// by key; `line` is where the app starts. The keys are read in phases (names, how
/// it launches, its restart policy, its logs, what is ignored or refused), then the
/// script is resolved and the spec assembled.
pub(crate) fn read_app(
    ctx: &mut Ctx<'_>,
    path: &str,
    table_name: Option<&Located<String>>,
    node: &Located<Node>,
    env: &AppContext<'_>,
) -> Option<ReadApp> {
    let app_line = table_name.and_then(|t| t.line).or(node.line);
    let Node::Map(entries) = &node.value else {
        let got = ctx.type_name(&node.value);
        let expected = if ctx.syntax == Syntax::Toml {
            "a table"
        } else {
            "an object"
        };
        ctx.error(
            app_line,
            path,
            format!("expected {expected} describing an app, got {got}"),
        );
        return None;
    };
    let errors_before = ctx.errors.len();
    let mut r = MapReader::new(path, entries);
    let names = read_names(ctx, &mut r, path, table_name, app_line);
    // Before `read_launch`, whose `env_*` keys are stages.
    let env_file = r.take(ctx, &["env_file"]);
    let launch = read_launch(ctx, &mut r, env);
    let check_files = env.resolve_scripts && names.script.is_some();
    let host = read_host(ctx, &mut r, env_file, &launch.cwd, env.home, check_files);
    let policy = read_policy(ctx, &mut r, &launch.cwd);
    let logs = read_logs(ctx, &mut r, &launch.cwd, env.home);
    check_ignored_and_unsupported(ctx, &mut r);
    r.finish(ctx);

    let opts = env.opts;
    let name_in_file = names.name_in_file.clone();
    let mut name = name_in_file.clone();
    if logs.append_env_to_name == Some(true)
        && let Some(stage) = &opts.env_stage
    {
        name = format!("{name}-{stage}");
    }
    let selected = opts.only.is_empty()
        || opts
            .only
            .iter()
            .any(|only| *only == name_in_file || *only == name);
    let mut read = ReadApp {
        name: name.clone(),
        name_in_file,
        line: names.name_line,
        selected,
        spec: None,
    };
    let Some(script) = names.script.clone() else {
        return Some(read);
    };
    if ctx.errors.len() > errors_before {
        return Some(read);
    }
    // Only the selected apps' scripts are looked for: `--only api` must start even when
    // another app's build output is missing.
    let resolved = if env.resolve_scripts && selected {
        resolve_script(ctx, path, app_line, &script, &names, &launch, env)
    } else {
        Some((
            Vec::new(),
            launch.interpreter.clone().filter(|i| i != "none"),
        ))
    };
    let Some((command, interpreter)) = resolved else {
        return Some(read);
    };
    let exec_mode_field = launch.exec_mode_field.clone();
    // PM2's default for its own files: a Node (or Bun) app given `instances` and no
    // `exec_mode` runs in cluster mode (`Common.sink.determineExecMode`).
    let pm2_cluster_default =
        ctx.syntax != Syntax::Toml && launch.exec_mode.is_none() && launch.instances.is_some();
    let mut spec = AppSpec::with_defaults(name, script, launch.cwd.clone());
    spec.command = command;
    spec.interpreter = interpreter;
    launch.apply(&mut spec);
    host.apply(&mut spec);
    if pm2_cluster_default && runs_on_node(&spec) {
        spec.exec_mode = ExecMode::Cluster;
    }
    policy.apply(&mut spec);
    logs.apply(&mut spec, opts);
    spec.source = Some(env.source.to_path_buf());
    // A Node app in cluster mode shares what it binds as under PM2 (the agent is its
    // cluster primary); other programs each bind their own address.
    let shares_without_port = spec.exec_mode == ExecMode::Cluster && runs_on_node(&spec);
    if matches!(spec.exec_mode, ExecMode::Cluster | ExecMode::Proxy)
        && spec.port.is_none()
        && !shares_without_port
        && let Some(f) = &exec_mode_field
    {
        ctx.warn(
            f.line,
            &f.path,
            "without `port` every instance binds its own address; set `port` so fleet can share it",
        );
    }
    read.spec = Some(spec);
    Some(read)
}

/// Checks a spec that did not come through the reader (an agent's API takes specs from
/// any client) with the reader's rules: names that are safe in file names and targets,
/// bounded counts, absolute paths, a known signal.
pub fn validate_spec(spec: &AppSpec) -> Result<(), String> {
    check_app_name(&spec.name).map_err(|e| format!("name: {e}"))?;
    check_name(&spec.namespace).map_err(|e| format!("namespace: {e}"))?;
    let count = match spec.instances {
        Instances::Count(n) | Instances::MaxMinus(n) => n,
        Instances::Max => 0,
    };
    if count > MAX_INSTANCES {
        return Err(format!("instances: at most {MAX_INSTANCES}, got {count}"));
    }
    if !spec.cwd.is_absolute() {
        return Err(format!("cwd {} is not absolute", spec.cwd.display()));
    }
    if spec.command.is_empty() {
        return Err("no command to run".to_string());
    }
    if crate::units::parse_signal(&spec.kill_signal).is_err() {
        return Err(format!(
            "kill_signal {:?} is not a signal",
            spec.kill_signal
        ));
    }
    let paths = spec.pid_file.iter().chain(spec.env_files.iter());
    if let Some(path) = paths.into_iter().find(|p| !p.is_absolute()) {
        return Err(format!("{} is not absolute", path.display()));
    }
    Ok(())
}

/// Whether the app runs on Node (or Bun), whose instances speak Node's IPC protocol.
pub fn runs_on_node(spec: &AppSpec) -> bool {
    let is_node = |program: &str| {
        let name = program.rsplit('/').next().unwrap_or(program);
        name == "node" || name == "nodejs" || name == "bun" || name.starts_with("node@")
    };
    spec.interpreter.as_deref().is_some_and(is_node)
        || spec.command.first().is_some_and(|program| is_node(program))
}

/// The script and the app's name (the table key, `name`, or the script's).
struct Names<'a> {
    script_field: Option<Field<'a>>,
    script: Option<String>,
    name_in_file: String,
    name_line: Option<u32>,
}

fn read_names<'a>(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'a>,
    path: &str,
    table_name: Option<&Located<String>>,
    app_line: Option<u32>,
) -> Names<'a> {
    // Script and name first: the name is needed for `only`, the script for the name.
    let script_field = r.take(ctx, &["script", "exec", "cmd", "command"]);
    let script = match &script_field {
        Some(f) => reader::as_string(ctx, f).filter(|s| {
            let ok = !s.trim().is_empty();
            if !ok {
                ctx.error(f.line, &f.path, "script is empty");
            }
            ok
        }),
        None => {
            ctx.error_hint(
                app_line,
                path,
                "missing `script`",
                "set `script` to a file, a program on PATH or a command",
            );
            None
        }
    };
    let name_field = r.take(ctx, &["name"]);
    let written_name = name_field.as_ref().and_then(|f| reader::as_string(ctx, f));
    let (name_in_file, name_line) = match (table_name, &written_name) {
        (Some(table), Some(written)) => {
            if table.value != *written {
                let f = name_field.as_ref().expect("a written name has a field");
                ctx.error_hint(
                    f.line,
                    &f.path,
                    format!(
                        "name {written:?} differs from the table's name {:?}",
                        table.value
                    ),
                    "remove `name`: the table key is the app's name",
                );
            }
            (table.value.clone(), table.line)
        }
        (Some(table), None) => (table.value.clone(), table.line),
        (None, Some(written)) => (written.clone(), name_field.as_ref().and_then(|f| f.line)),
        (None, None) => match &script {
            Some(script) => (
                resolve::default_name(script),
                script_field.as_ref().and_then(|f| f.line),
            ),
            None => (String::new(), app_line),
        },
    };
    if (!name_in_file.is_empty() || script.is_some())
        && let Err(message) = check_app_name(&name_in_file)
    {
        let key = match (&name_field, table_name) {
            (_, Some(_)) => path.to_string(),
            (Some(f), None) => f.path.clone(),
            (None, None) => format!("{path}.script"),
        };
        if written_name.is_none() && table_name.is_none() {
            ctx.error_hint(
                name_line,
                &key,
                format!("cannot name the app after its script: {message}"),
                "set `name`",
            );
        } else {
            ctx.error(name_line, &key, message);
        }
    }
    Names {
        script_field,
        script,
        name_in_file,
        name_line,
    }
}

/// How the app starts: namespace, arguments, interpreter, cwd, instances, mode,
/// port and environment.
struct Launch<'a> {
    namespace: Option<String>,
    args: Vec<String>,
    interpreter_field: Option<Field<'a>>,
    interpreter: Option<String>,
    interpreter_args: Vec<String>,
    cwd_field: Option<Field<'a>>,
    cwd: PathBuf,
    instances: Option<Instances>,
    exec_mode_field: Option<Field<'a>>,
    exec_mode: Option<ExecMode>,
    port: Option<u16>,
    env: BTreeMap<String, String>,
}

fn read_launch<'a>(ctx: &mut Ctx<'_>, r: &mut MapReader<'a>, env: &AppContext<'_>) -> Launch<'a> {
    let opts = env.opts;
    let namespace = match r.take(ctx, &["namespace"]) {
        Some(f) => reader::as_string(ctx, &f).filter(|ns| match check_name(ns) {
            Ok(()) => true,
            Err(message) => {
                ctx.error(f.line, &f.path, message);
                false
            }
        }),
        None => None,
    };
    let args_field = r.take(ctx, &["args"]);
    let args = args_field
        .as_ref()
        .and_then(|f| reader::as_string_list(ctx, f, true))
        .unwrap_or_default();
    let interpreter_field = r.take(ctx, &["interpreter", "exec_interpreter"]);
    let interpreter = interpreter_field
        .as_ref()
        .and_then(|f| reader::as_string(ctx, f))
        .filter(|i| !i.trim().is_empty());
    let interpreter_args = r
        .take(ctx, &["interpreter_args", "node_args"])
        .and_then(|f| reader::as_string_list(ctx, &f, true))
        .unwrap_or_default();
    let cwd_field = r.take(ctx, &["cwd"]);
    let cwd = cwd_field
        .as_ref()
        .and_then(|f| reader::as_string(ctx, f))
        .map_or_else(
            || env.base_dir.to_path_buf(),
            |dir| absolute(&env.base_dir.join(expand_home(&dir, env.home))),
        );
    let instances = r
        .take(ctx, &["instances"])
        .and_then(|f| read_instances(ctx, &f));
    let exec_mode_field = r.take(ctx, &["exec_mode"]);
    let exec_mode = exec_mode_field
        .as_ref()
        .and_then(|f| read_exec_mode(ctx, f));
    let port = r
        .take(ctx, &["port"])
        .and_then(|f| reader::as_port(ctx, &f));

    // Env: `deploy.<stage>.env` < `env` < `env_<stage>` (PM2's precedence).
    let own_env = r.take(ctx, &["env"]).and_then(|f| reader::as_env(ctx, &f));
    let mut stage_env = None;
    for (stage, f) in r.take_prefixed("env_") {
        let values = reader::as_env(ctx, &f);
        let selected = opts.env_stage.as_deref().is_some_and(|wanted| {
            // `env_production` as written, or the snake_case of `envProduction`.
            f.raw_key.strip_prefix("env_") == Some(wanted) || stage == wanted
        });
        if selected {
            stage_env = values;
        }
    }
    let mut app_env = env.deploy_env.cloned().unwrap_or_default();
    app_env.extend(own_env.unwrap_or_default());
    app_env.extend(stage_env.unwrap_or_default());
    Launch {
        namespace,
        args,
        interpreter_field,
        interpreter,
        interpreter_args,
        cwd_field,
        cwd,
        instances,
        exec_mode_field,
        exec_mode,
        port,
        env: app_env,
    }
}

impl Launch<'_> {
    fn apply(self, spec: &mut AppSpec) {
        spec.namespace = self.namespace.unwrap_or(spec.namespace.clone());
        spec.args = self.args;
        spec.interpreter_args = self.interpreter_args;
        spec.instances = self.instances.unwrap_or(spec.instances);
        spec.exec_mode = self.exec_mode.unwrap_or(spec.exec_mode);
        spec.port = self.port;
        spec.env = self.env;
    }
}

/// The script resolved to a command (and interpreter) on this machine, or `None`
/// with the error reported at the key at fault.
fn resolve_script(
    ctx: &mut Ctx<'_>,
    path: &str,
    app_line: Option<u32>,
    script: &str,
    names: &Names<'_>,
    launch: &Launch<'_>,
    env: &AppContext<'_>,
) -> Option<(Vec<String>, Option<String>)> {
    let cwd = &launch.cwd;
    if !cwd.is_dir() {
        let (line, key) = match &launch.cwd_field {
            Some(f) => (f.line, f.path.clone()),
            None => (app_line, format!("{path}.cwd")),
        };
        ctx.error(line, &key, format!("cwd does not exist: {}", cwd.display()));
        return None;
    }
    // `node@<version>`: that version from nvm, fnm, volta or n (PM2 reads nvm's).
    let versioned = match launch
        .interpreter
        .as_deref()
        .and_then(node_version::requested)
    {
        Some(version) => match node_version::find(version, &env.opts.inherited_env, env.home) {
            Ok(node) => Some(node.display().to_string()),
            Err((message, hint)) => {
                let (line, key) = match &launch.interpreter_field {
                    Some(f) => (f.line, f.path.clone()),
                    None => (app_line, format!("{path}.interpreter")),
                };
                ctx.error_hint(line, &key, message, hint);
                return None;
            }
        },
        None => None,
    };
    match resolve::resolve(
        script,
        versioned.as_deref().or(launch.interpreter.as_deref()),
        &launch.interpreter_args,
        &launch.args,
        cwd,
        env.path_env,
    ) {
        Ok(resolved) => Some((resolved.command, resolved.interpreter)),
        Err(problem) => {
            let field = match problem.key {
                "interpreter" => launch
                    .interpreter_field
                    .as_ref()
                    .or(names.script_field.as_ref()),
                _ => names.script_field.as_ref(),
            };
            // A detected interpreter that is missing is reported at `script`.
            let (line, key) =
                field.map_or((app_line, path.to_string()), |f| (f.line, f.path.clone()));
            match problem.hint {
                Some(hint) => ctx.error_hint(line, &key, problem.message, hint),
                None => ctx.error(line, &key, problem.message),
            }
            None
        }
    }
}

/// Node-only PM2 keys are ignored with a warning; keys fleet cannot honour are errors.
fn check_ignored_and_unsupported(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>) {
    for key in IGNORED_KEYS {
        if let Some(f) = r.take(ctx, &[key]) {
            ctx.warn(f.line, &f.path, "ignored: a node-only pm2 option");
        }
    }
    for key in PM2_CLI_KEYS {
        if let Some(f) = r.take(ctx, &[key]) {
            ctx.warn(
                f.line,
                &f.path,
                "ignored: it steers the pm2 CLI, not the app",
            );
        }
    }
    if let Some(f) = r.take(ctx, &["treekill"]) {
        match reader::as_bool(ctx, &f) {
            Some(true) => ctx.warn(
                f.line,
                &f.path,
                "ignored: fleet always stops the whole process group",
            ),
            Some(false) => ctx.error_hint(
                f.line,
                &f.path,
                "cannot be false: fleet always stops the whole process group",
                "remove `treekill`",
            ),
            None => {}
        }
    }
    for (key, message, hint) in UNSUPPORTED_KEYS {
        if let Some(f) = r.take(ctx, &[key]) {
            ctx.error_hint(f.line, &f.path, format!("not supported: {message}"), *hint);
        }
    }
}

#[cfg(test)]
mod tests;
