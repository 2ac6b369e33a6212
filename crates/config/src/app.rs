//! One app's keys: PM2's names, aliases and loose types validated into an `AppSpec`,
//! with stage env selection, log and watch paths made absolute and the script resolved
//! (`resolve`). The file around the apps is `load`'s business.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::load::LoadOptions;
use crate::reader::{self, Ctx, Field, MapReader, Syntax};
use crate::resolve::{self, absolute};
use crate::spec::{
    AppSpec, Balance, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_TIMEOUT_MS, ExecMode, HealthCheck,
    Instances, LogType,
};
use crate::tree::{Located, Node};
use crate::units;

/// Names and namespaces end up in file names, targets and URLs; PM2 allows more but
/// then trips over them (`/` in a log path, `all` as a target).
const MAX_NAME_LEN: usize = 64;

/// A typo guard: no host fleet runs on has this many CPUs, so a bigger count is a mistake.
const MAX_INSTANCES: i64 = 1024;

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

/// PM2 options fleet refuses, with why and what to do instead.
const UNSUPPORTED_KEYS: &[(&str, &str, &str)] = &[
    (
        "uid",
        "fleet does not switch users",
        "run a fleet agent as that user, with its own FLEET_HOME",
    ),
    (
        "gid",
        "fleet does not switch groups",
        "run a fleet agent as a user of that group, with its own FLEET_HOME",
    ),
    (
        "user",
        "fleet does not switch users",
        "run a fleet agent as that user, with its own FLEET_HOME",
    ),
    (
        "shutdown_with_message",
        "fleet has no IPC channel to send a shutdown message",
        "handle a signal instead and set `kill_signal`",
    ),
    (
        "pid_file",
        "fleet does not write pid files",
        "read pids from `fleet list --json`",
    ),
    (
        "pid",
        "fleet does not write pid files",
        "read pids from `fleet list --json`",
    ),
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

/// Checks an app, namespace or stage name.
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
/// by key; `line` is where the app starts.
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
    let opts = env.opts;

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
        && let Err(message) = check_name(&name_in_file)
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

    let autorestart = take_bool(ctx, &mut r, &["autorestart"]);
    let autostart = take_bool(ctx, &mut r, &["autostart"]);
    let max_restarts = r
        .take(ctx, &["max_restarts"])
        .and_then(|f| reader::as_u32(ctx, &f));
    let min_uptime = take_duration(ctx, &mut r, &["min_uptime"]);
    let restart_delay = take_duration(ctx, &mut r, &["restart_delay"]);
    let exp_backoff = take_duration(ctx, &mut r, &["exp_backoff_restart_delay"]);
    let max_memory = r.take(ctx, &["max_memory_restart"]).and_then(|f| {
        let bytes = reader::as_bytes(ctx, &f)?;
        if bytes == 0 {
            ctx.error_hint(
                f.line,
                &f.path,
                "must be more than 0 bytes",
                "remove the key to disable the limit",
            );
            return None;
        }
        Some(bytes)
    });
    let cron_restart = r
        .take(ctx, &["cron_restart", "cron"])
        .and_then(|f| read_cron(ctx, &f));
    let health_check = r
        .take(ctx, &["health_check"])
        .and_then(|f| read_health_check(ctx, &f));
    let balance =
        r.take(ctx, &["balance"])
            .and_then(|f| match reader::as_string(ctx, &f)?.as_str() {
                "round-robin" | "round_robin" | "roundrobin" => Some(Balance::RoundRobin),
                "least-connections" | "least_connections" | "leastconn" => {
                    Some(Balance::LeastConnections)
                }
                other => {
                    ctx.error_hint(
                        f.line,
                        &f.path,
                        format!("unknown balancing {other:?}"),
                        "use \"round-robin\" or \"least-connections\"",
                    );
                    None
                }
            });
    let cron_timezone = r
        .take(ctx, &["cron_timezone", "cron_tz"])
        .and_then(|f| read_timezone(ctx, &f));
    let watch_delay = take_duration(ctx, &mut r, &["watch_delay"]);
    let max_size = r
        .take(ctx, &["max_size", "log_max_size"])
        .and_then(|f| reader::as_bytes(ctx, &f));
    let retain = r
        .take(ctx, &["retain", "log_retain"])
        .and_then(|f| reader::as_u32(ctx, &f));
    let compress = take_bool(ctx, &mut r, &["compress", "log_compress"]);
    let rotate_interval = r
        .take(ctx, &["rotate_interval", "log_rotate_interval"])
        .and_then(|f| read_cron(ctx, &f));
    let kill_timeout = take_duration(ctx, &mut r, &["kill_timeout"]);
    let kill_signal = r.take(ctx, &["kill_signal"]).and_then(|f| {
        let text = reader::as_string(ctx, &f)?;
        match units::parse_signal(&text) {
            Ok(signal) => Some(signal),
            Err(message) => {
                ctx.error_hint(
                    f.line,
                    &f.path,
                    message,
                    "use a name like \"SIGTERM\" or \"SIGINT\"",
                );
                None
            }
        }
    });
    let wait_ready = take_bool(ctx, &mut r, &["wait_ready"]);
    let listen_timeout = take_duration(ctx, &mut r, &["listen_timeout"]);
    let stop_exit_codes = r
        .take(ctx, &["stop_exit_codes"])
        .and_then(|f| read_exit_codes(ctx, &f));
    let watch = r
        .take(ctx, &["watch"])
        .and_then(|f| read_watch(ctx, &f, &cwd));
    let ignore_watch = r
        .take(ctx, &["ignore_watch"])
        .and_then(|f| reader::as_string_list(ctx, &f, false));

    let out_file = r
        .take(ctx, &["out_file", "out", "output", "out_log"])
        .and_then(|f| read_log_path(ctx, &f, &cwd, env.home, false));
    let error_file = r
        .take(ctx, &["error_file", "error", "err", "err_file", "err_log"])
        .and_then(|f| read_log_path(ctx, &f, &cwd, env.home, false));
    let log_file = r
        .take(ctx, &["log_file", "log"])
        .and_then(|f| read_log_path(ctx, &f, &cwd, env.home, true));
    let merge_logs = take_bool(ctx, &mut r, &["merge_logs", "combine_logs"]);
    let log_date_format = r
        .take(ctx, &["log_date_format"])
        .and_then(|f| reader::as_string(ctx, &f))
        .filter(|format| !format.is_empty());
    let time = take_bool(ctx, &mut r, &["time"]);
    let log_type =
        r.take(ctx, &["log_type"])
            .and_then(|f| match reader::as_string(ctx, &f)?.as_str() {
                "raw" => Some(LogType::Raw),
                "json" => Some(LogType::Json),
                other => {
                    ctx.error(
                        f.line,
                        &f.path,
                        format!("expected \"raw\" or \"json\", got {other:?}"),
                    );
                    None
                }
            });
    let disable_logs = take_bool(ctx, &mut r, &["disable_logs"]);
    let instance_var = r
        .take(ctx, &["instance_var"])
        .and_then(|f| read_env_name(ctx, &f));
    let increment_var = r
        .take(ctx, &["increment_var"])
        .and_then(|f| read_env_name(ctx, &f));
    // `force` lets PM2 start a script twice; a config file's apps are named, so it has
    // nothing to do here. Its type is still checked.
    let _force = take_bool(ctx, &mut r, &["force"]);
    let filter_env = r
        .take(ctx, &["filter_env"])
        .and_then(|f| match &f.value.value {
            Node::Bool(true) => Some(EnvFilter::All),
            Node::Bool(false) => Some(EnvFilter::None),
            _ => reader::as_string_list(ctx, &f, false).map(EnvFilter::Containing),
        });
    let append_env_to_name = take_bool(ctx, &mut r, &["append_env_to_name"]);

    for key in IGNORED_KEYS {
        if let Some(f) = r.take(ctx, &[key]) {
            ctx.warn(f.line, &f.path, "ignored: a node-only pm2 option");
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
    r.finish(ctx);

    let mut name = name_in_file.clone();
    if append_env_to_name == Some(true)
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
        line: name_line,
        selected,
        spec: None,
    };
    let Some(script) = script else {
        return Some(read);
    };
    if ctx.errors.len() > errors_before {
        return Some(read);
    }

    // Only the selected apps' scripts are looked for: `--only api` must start even when
    // another app's build output is missing.
    let (command, resolved_interpreter) = if env.resolve_scripts && selected {
        if !cwd.is_dir() {
            let (line, key) = match &cwd_field {
                Some(f) => (f.line, f.path.clone()),
                None => (app_line, format!("{path}.cwd")),
            };
            ctx.error(line, &key, format!("cwd does not exist: {}", cwd.display()));
            return Some(read);
        }
        match resolve::resolve(
            &script,
            interpreter.as_deref(),
            &interpreter_args,
            &args,
            &cwd,
            env.path_env,
        ) {
            Ok(resolved) => (resolved.command, resolved.interpreter),
            Err(problem) => {
                let field = match problem.key {
                    "interpreter" => interpreter_field.as_ref().or(script_field.as_ref()),
                    _ => script_field.as_ref(),
                };
                // A detected interpreter that is missing is reported at `script`.
                let (line, key) =
                    field.map_or((app_line, path.to_string()), |f| (f.line, f.path.clone()));
                match problem.hint {
                    Some(hint) => ctx.error_hint(line, &key, problem.message, hint),
                    None => ctx.error(line, &key, problem.message),
                }
                return Some(read);
            }
        }
    } else {
        (Vec::new(), interpreter.filter(|i| i != "none"))
    };

    let mut spec = AppSpec::with_defaults(name, script, cwd);
    spec.namespace = namespace.unwrap_or(spec.namespace);
    spec.command = command;
    spec.args = args;
    spec.interpreter = resolved_interpreter;
    spec.interpreter_args = interpreter_args;
    spec.instances = instances.unwrap_or(spec.instances);
    spec.exec_mode = exec_mode.unwrap_or(spec.exec_mode);
    spec.port = port;
    spec.env = app_env;
    spec.inherited_env = match filter_env.unwrap_or(EnvFilter::None) {
        EnvFilter::None => opts.inherited_env.clone(),
        EnvFilter::All => Arc::default(),
        EnvFilter::Containing(parts) => Arc::new(
            opts.inherited_env
                .iter()
                .filter(|(key, _)| !parts.iter().any(|part| key.contains(part.as_str())))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
    };
    spec.autorestart = autorestart.unwrap_or(spec.autorestart);
    spec.autostart = autostart.unwrap_or(spec.autostart);
    spec.max_restarts = max_restarts.unwrap_or(spec.max_restarts);
    spec.min_uptime_ms = min_uptime.unwrap_or(spec.min_uptime_ms);
    spec.restart_delay_ms = restart_delay.unwrap_or(spec.restart_delay_ms);
    spec.exp_backoff_restart_delay_ms = exp_backoff;
    spec.max_memory_restart_bytes = max_memory;
    spec.cron_restart = cron_restart.flatten();
    spec.cron_timezone = cron_timezone;
    spec.health_check = health_check;
    spec.balance = balance.unwrap_or_default();
    spec.watch_delay_ms = watch_delay.unwrap_or(spec.watch_delay_ms);
    spec.logs.rotation.max_size_bytes = max_size.unwrap_or(spec.logs.rotation.max_size_bytes);
    spec.logs.rotation.retain = retain.unwrap_or(spec.logs.rotation.retain);
    spec.logs.rotation.compress = compress.unwrap_or(spec.logs.rotation.compress);
    if let Some(interval) = rotate_interval {
        spec.logs.rotation.interval = interval;
    }
    spec.kill_timeout_ms = kill_timeout.unwrap_or(spec.kill_timeout_ms);
    spec.kill_signal = kill_signal.unwrap_or(spec.kill_signal);
    spec.wait_ready = wait_ready.unwrap_or(spec.wait_ready);
    spec.listen_timeout_ms = listen_timeout.unwrap_or(spec.listen_timeout_ms);
    spec.stop_exit_codes = stop_exit_codes.unwrap_or_default();
    spec.watch = watch.unwrap_or_default();
    spec.ignore_watch = ignore_watch.unwrap_or_default();
    spec.logs.out_file = out_file.flatten();
    spec.logs.error_file = error_file.flatten();
    spec.logs.log_file = log_file.flatten();
    spec.logs.merge_logs = merge_logs;
    // PM2 lets `time` replace a custom format (#5466); fleet keeps the custom one.
    spec.logs.log_date_format =
        log_date_format.or_else(|| (time == Some(true)).then(|| TIME_LOG_DATE_FORMAT.to_string()));
    spec.logs.log_type = log_type.unwrap_or_default();
    if disable_logs == Some(true) {
        spec.logs.out_file = Some(DEV_NULL.to_string());
        spec.logs.error_file = Some(DEV_NULL.to_string());
        spec.logs.log_file = Some(DEV_NULL.to_string());
    }
    spec.instance_var = instance_var.unwrap_or(spec.instance_var);
    spec.increment_var = increment_var;
    spec.source = Some(env.source.to_path_buf());

    if matches!(spec.exec_mode, ExecMode::Cluster | ExecMode::Proxy)
        && spec.port.is_none()
        && let Some(f) = &exec_mode_field
    {
        // PM2 ecosystems often say `cluster` and let Node's cluster module share the
        // port the code binds; fleet shares a socket only when it knows the port.
        ctx.warn(
            f.line,
            &f.path,
            "without `port` every instance binds its own address; set `port` so fleet can share it",
        );
    }
    read.spec = Some(spec);
    Some(read)
}

enum EnvFilter {
    None,
    All,
    Containing(Vec<String>),
}

fn take_bool(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, names: &[&'static str]) -> Option<bool> {
    r.take(ctx, names).and_then(|f| reader::as_bool(ctx, &f))
}

fn take_duration(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, names: &[&'static str]) -> Option<u64> {
    r.take(ctx, names)
        .and_then(|f| reader::as_duration_ms(ctx, &f))
}

/// A number, a numeric string, `"max"`, 0 (= max) or negative (CPUs minus n).
fn read_instances(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Instances> {
    let number = match &field.value.value {
        Node::Int(n) => Some(*n),
        Node::Float(f) if f.fract() == 0.0 && f.abs() <= MAX_INSTANCES as f64 => Some(*f as i64),
        Node::Str(s) if s.trim().eq_ignore_ascii_case("max") => return Some(Instances::Max),
        Node::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(number) = number else {
        let got = reader::describe(ctx, &field.value.value);
        ctx.error(
            field.line,
            &field.path,
            format!("expected a number, \"max\" or a negative number (CPUs minus n), got {got}"),
        );
        return None;
    };
    if number.abs() > MAX_INSTANCES {
        ctx.error(
            field.line,
            &field.path,
            format!("expected at most {MAX_INSTANCES} instances, got {number}"),
        );
        return None;
    }
    let count = u32::try_from(number.unsigned_abs()).ok()?;
    Some(match number {
        0 => Instances::Max,
        n if n < 0 => Instances::MaxMinus(count),
        _ => Instances::Count(count),
    })
}

fn read_exec_mode(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<ExecMode> {
    match reader::as_string(ctx, field)?.as_str() {
        "fork" | "fork_mode" => Some(ExecMode::Fork),
        "cluster" | "cluster_mode" => Some(ExecMode::Cluster),
        "proxy" => Some(ExecMode::Proxy),
        other => {
            ctx.error(
                field.line,
                &field.path,
                format!("expected \"fork\", \"cluster\" or \"proxy\", got {other:?}"),
            );
            None
        }
    }
}

/// `health_check = { path = "/health", interval = "1s", timeout = "2s" }`; a bare
/// string is the path.
fn read_health_check(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<HealthCheck> {
    let (path, interval, timeout) = match &field.value.value {
        Node::Str(path) => (Some(path.clone()), None, None),
        Node::Map(entries) => {
            let mut r = MapReader::new(&field.path, entries);
            let path = r
                .take(ctx, &["path"])
                .and_then(|f| reader::as_string(ctx, &f));
            let interval = r
                .take(ctx, &["interval"])
                .and_then(|f| reader::as_duration_ms(ctx, &f));
            let timeout = r
                .take(ctx, &["timeout"])
                .and_then(|f| reader::as_duration_ms(ctx, &f));
            r.finish(ctx);
            (path, interval, timeout)
        }
        other => {
            let got = ctx.type_name(other);
            ctx.error(
                field.line,
                &field.path,
                format!("expected a path or {{ path, interval, timeout }}, got {got}"),
            );
            return None;
        }
    };
    let path = path.unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        ctx.error_hint(
            field.line,
            &field.path,
            format!("{path:?} is not a URL path"),
            "use a path such as \"/health\"",
        );
        return None;
    }
    Some(HealthCheck {
        path,
        interval_ms: interval.unwrap_or(DEFAULT_HEALTH_INTERVAL_MS).max(1),
        timeout_ms: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT_MS).max(1),
    })
}

/// An IANA zone name such as `Europe/Paris` or `UTC`; the agent checks it exists.
fn read_timezone(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    let zone = reader::as_string(ctx, field)?;
    let valid = !zone.is_empty()
        && !zone.starts_with('/')
        && !zone.contains("..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if valid {
        Some(zone)
    } else {
        ctx.error_hint(
            field.line,
            &field.path,
            format!("{zone:?} is not a time zone name"),
            "use an IANA name such as \"Europe/Paris\" or \"UTC\"",
        );
        None
    }
}

/// `Some(None)` is PM2's explicit "no cron" (`0` or `false`).
fn read_cron(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Option<String>> {
    match &field.value.value {
        Node::Bool(false) | Node::Int(0) => return Some(None),
        Node::Str(s) if s.trim() == "0" => return Some(None),
        Node::Str(_) => {}
        other => {
            let got = ctx.type_name(other);
            ctx.error(
                field.line,
                &field.path,
                format!("expected a cron pattern like \"0 3 * * *\", got {got}"),
            );
            return None;
        }
    }
    let pattern = reader::as_string(ctx, field)?.trim().to_string();
    const NICKNAMES: &[&str] = &[
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let fields = pattern.split_whitespace().count();
    if NICKNAMES.contains(&pattern.as_str()) || fields == 5 || fields == 6 {
        return Some(Some(pattern));
    }
    ctx.error_hint(
        field.line,
        &field.path,
        format!("a cron pattern has 5 or 6 fields, got {fields} in {pattern:?}"),
        "minute hour day-of-month month day-of-week, with an optional leading seconds field",
    );
    None
}

fn read_exit_codes(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Vec<i32>> {
    let items: Vec<(Option<u32>, String, &Node)> = match &field.value.value {
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                (
                    item.line.or(field.line),
                    format!("{}[{i}]", field.path),
                    &item.value,
                )
            })
            .collect(),
        other => vec![(field.line, field.path.clone(), other)],
    };
    let mut codes = Vec::with_capacity(items.len());
    let mut ok = true;
    for (line, path, node) in items {
        let code = match node {
            Node::Int(n) => Some(*n),
            Node::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        match code.filter(|c| (0..=255).contains(c)) {
            Some(code) => codes.push(i32::try_from(code).unwrap_or_default()),
            None => {
                let got = reader::describe(ctx, node);
                ctx.error(
                    line,
                    &path,
                    format!("expected an exit code from 0 to 255, got {got}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(codes)
}

/// `true` watches the cwd, a string or list names paths relative to it.
fn read_watch(ctx: &mut Ctx<'_>, field: &Field<'_>, cwd: &Path) -> Option<Vec<PathBuf>> {
    match &field.value.value {
        Node::Bool(true) => Some(vec![cwd.to_path_buf()]),
        Node::Bool(false) => Some(Vec::new()),
        Node::Str(_) | Node::Seq(_) => {
            let paths = reader::as_string_list(ctx, field, false)?;
            Some(paths.iter().map(|p| absolute(&cwd.join(p))).collect())
        }
        _ => {
            ctx.wrong_type(field, "true, a path or a list of paths");
            None
        }
    }
}

/// A log path: relative to the cwd as in PM2; `null`/`"NULL"` disable the stream.
/// `log_file: true` is `Some("")`, the default combined path; `false` is none.
fn read_log_path(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    cwd: &Path,
    home: Option<&str>,
    combined: bool,
) -> Option<Option<String>> {
    match &field.value.value {
        Node::Bool(true) if combined => Some(Some(String::new())),
        Node::Bool(false) if combined => Some(None),
        Node::Null => Some(Some(DEV_NULL.to_string())),
        Node::Str(s) if s == "NULL" || s == DEV_NULL => Some(Some(DEV_NULL.to_string())),
        Node::Str(s) if s.trim().is_empty() => {
            ctx.error_hint(
                field.line,
                &field.path,
                "a log path cannot be empty",
                "remove the key for the default path",
            );
            None
        }
        Node::Str(s) => Some(Some(
            absolute(&cwd.join(expand_home(s, home)))
                .to_string_lossy()
                .into_owned(),
        )),
        _ => {
            ctx.wrong_type(field, if combined { "a path or true" } else { "a path" });
            None
        }
    }
}

fn read_env_name(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    let name = reader::as_string(ctx, field)?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        ctx.error(
            field.line,
            &field.path,
            format!("{name:?} is not an environment variable name (letters, digits and `_`)"),
        );
        return None;
    }
    Some(name)
}

fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ if path == "~" && home.is_some() => PathBuf::from(home.unwrap_or_default()),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["api", "api-2", "my_app.v2", "123", "A"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "all",
            "ALL",
            "a b",
            "/api/",
            "a/b",
            "..",
            &"x".repeat(65),
            "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
