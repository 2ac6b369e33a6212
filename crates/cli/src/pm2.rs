//! `fleet` run as `pm2` (a `pm2` symlink to it, see `fleet install-pm2`): the PM2
//! command lines found in deploy hooks, Dockerfiles and scripts, translated into
//! fleet's own (`pm2 reload ecosystem.config.js --env production` is `fleet reload
//! --env=production ecosystem.config.js`), and `jlist`/`prettylist` in PM2's JSON
//! shape for scripts that parse it. What has no fleet equivalent says so and exits 2; nothing is silently dropped
//! except flags that only change PM2's own chatter (`--silent`, `--no-color`).
//!
//! Pure: `translate` maps arguments, `jlist` maps the process list; `main` runs them.

use std::path::{Path, PathBuf};

use fleet_proto::agent::v1 as pb;
use serde_json::{Value, json};

/// Flags that only change how PM2 itself prints or runs in the background; taking
/// them keeps scripts working and changes nothing under fleet.
const QUIET_FLAGS: &[&str] = &[
    "-s",
    "--silent",
    "--no-color",
    "-m",
    "--mini-list",
    "--no-vizion",
    "--no-pmx",
    "--no-automation",
];

/// How a PM2 flag maps onto fleet: the same flag (with or without a value), or
/// handled by the command itself.
#[derive(Clone, Copy)]
enum Flag {
    /// Passed on as fleet's flag of this name, with its value.
    Value(&'static str),
    /// Passed on as fleet's flag of this name, without a value.
    Switch(&'static str),
}

/// The flags each command takes, as `(pm2 spellings, fleet flag)`.
fn flags_of(command: &str) -> &'static [(&'static [&'static str], Flag)] {
    const START: &[(&[&str], Flag)] = &[
        (&["--name", "-n"], Flag::Value("--name")),
        (&["--instances", "-i"], Flag::Value("--instances")),
        (&["--env"], Flag::Value("--env")),
        (&["--only"], Flag::Value("--only")),
        (&["--update-env", "-a"], Flag::Switch("--update-env")),
        (&["--force", "-f"], Flag::Switch("--force")),
        (&["--namespace"], Flag::Value("--namespace")),
        (&["--no-autorestart"], Flag::Switch("--no-autorestart")),
        (&["--interpreter"], Flag::Value("--interpreter")),
    ];
    const RESTART: &[(&[&str], Flag)] = &[
        (&["--env"], Flag::Value("--env")),
        (&["--only"], Flag::Value("--only")),
        (&["--update-env", "-a"], Flag::Switch("--update-env")),
    ];
    const RELOAD: &[(&[&str], Flag)] = &[
        (&["--env"], Flag::Value("--env")),
        (&["--only"], Flag::Value("--only")),
        (&["--update-env", "-a"], Flag::Switch("--update-env")),
        (&["--parallel"], Flag::Value("--parallel")),
    ];
    const TARGETS: &[(&[&str], Flag)] = &[(&["--only"], Flag::Value("--only"))];
    const SAVE: &[(&[&str], Flag)] = &[(&["--force", "-f"], Flag::Switch("--force"))];
    const LOGS: &[(&[&str], Flag)] = &[
        (&["--lines", "-l"], Flag::Value("--lines")),
        (&["--raw"], Flag::Switch("--raw")),
        (&["--err"], Flag::Switch("--err")),
        (&["--out"], Flag::Switch("--out")),
        (&["--json"], Flag::Switch("--json")),
    ];
    match command {
        "start" => START,
        "restart" => RESTART,
        "reload" => RELOAD,
        "stop" | "delete" => TARGETS,
        "save" => SAVE,
        "logs" => LOGS,
        _ => &[],
    }
}

/// Maps a PM2 command line (without `pm2`) onto fleet's. Errors are for the user, and
/// mean exit 2.
pub fn translate(args: &[String]) -> Result<Vec<String>, String> {
    let mut words = args
        .iter()
        .map(String::as_str)
        .skip_while(|a| QUIET_FLAGS.contains(a));
    let Some(command) = words.next() else {
        return Err("usage: pm2 <command> ...  (fleet's pm2 understands start, startOrRestart, startOrReload, reload, restart, stop, delete, save, list, jlist, logs and the others `fleet --help` lists)".to_string());
    };
    let rest: Vec<&str> = words.collect();
    let fleet = match command {
        "-v" | "-V" | "--version" | "version" => return Ok(vec!["--version".to_string()]),
        "jlist" => return no_arguments(command, &rest).map(|()| vec!["jlist".to_string()]),
        "prettylist" => {
            return no_arguments(command, &rest)
                .map(|()| vec!["jlist".to_string(), "--pretty".to_string()]);
        }
        "start" => "start",
        // PM2's `startOr*` start what is absent and restart or reload the rest, which
        // is what fleet's restart and reload do with a config file.
        "restart" | "startOrRestart" => "restart",
        "reload" | "startOrReload" | "startOrGracefulReload" | "gracefulReload" => "reload",
        "stop" => "stop",
        "delete" | "del" => "delete",
        "save" | "dump" => "save",
        "list" | "ls" | "l" | "ps" | "status" => "list",
        "logs" | "log" => "logs",
        "describe" | "desc" | "info" | "show" => "describe",
        "flush" => "flush",
        "reset" => "reset",
        "resurrect" => "resurrect",
        "kill" => "kill",
        "ping" => "ping",
        "monit" => "monit",
        "reloadLogs" => "reload-logs",
        "sendSignal" => "send-signal",
        "scale" => "scale",
        // `pm2 deploy [file] <env> [command]`: fleet deploy takes PM2's form as is.
        "deploy" => {
            let mut out = vec!["deploy".to_string()];
            out.extend(rest.iter().map(|s| s.to_string()));
            return Ok(out);
        }
        other => return Err(unsupported(other)),
    };
    let mut out = vec![fleet.to_string()];
    let mut positional = Vec::new();
    let mut after_dashes = Vec::new();
    let mut follow = fleet == "logs";
    let known = flags_of(fleet);
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i];
        i += 1;
        if arg == "--" {
            after_dashes.extend(rest[i..].iter().map(|s| s.to_string()));
            break;
        }
        if !arg.starts_with('-') || arg == "-" || is_negative_number(arg) {
            positional.push(arg.to_string());
            continue;
        }
        if QUIET_FLAGS.contains(&arg) {
            continue;
        }
        if fleet == "logs" && arg == "--nostream" {
            follow = false;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg, None),
        };
        let Some((_, flag)) = known.iter().find(|(names, _)| names.contains(&name)) else {
            return Err(format!(
                "pm2 {command}: {name} is not supported by fleet's pm2 (see `fleet {fleet} --help`)"
            ));
        };
        match *flag {
            Flag::Switch(to) => out.push(to.to_string()),
            Flag::Value(to) => {
                let value = match inline {
                    Some(value) => value.to_string(),
                    None if i < rest.len() => {
                        i += 1;
                        rest[i - 1].to_string()
                    }
                    None => return Err(format!("pm2 {command}: {name} needs a value")),
                };
                out.push(format!("{to}={value}"));
            }
        }
    }
    if follow {
        out.push("--follow".to_string());
    }
    if fleet == "list" && !positional.is_empty() {
        return Err(format!("pm2 {command}: takes no arguments under fleet"));
    }
    out.extend(positional);
    if !after_dashes.is_empty() {
        out.push("--".to_string());
        out.extend(after_dashes);
    }
    Ok(out)
}

fn no_arguments(command: &str, rest: &[&str]) -> Result<(), String> {
    match rest.iter().find(|a| !QUIET_FLAGS.contains(a)) {
        None => Ok(()),
        Some(arg) => Err(format!(
            "pm2 {command}: {arg} is not supported by fleet's pm2"
        )),
    }
}

fn is_negative_number(arg: &str) -> bool {
    arg.strip_prefix('-')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn unsupported(command: &str) -> String {
    let why = match command {
        "startup" | "unstartup" => {
            "fleet's agent is a systemd unit already: `fleet deploy <stage> setup` installs it"
        }
        "install" | "uninstall" | "module:generate" | "publish" | "link" | "unlink" | "plus"
        | "update" | "updatePM2" | "serve" | "set" | "get" | "conf" | "config" | "multiset"
        | "report" | "dashboard" | "dash" | "trigger" | "attach" | "inspect" | "pull"
        | "backward" | "forward" | "autoinstall" | "examples" | "completion" | "env" | "id"
        | "pid" | "cleardump" | "reloadx" | "slist" | "sysmonit" => "it has no fleet equivalent",
        _ => "unknown command",
    };
    format!(
        "pm2 {command}: not supported by fleet's pm2: {why} (fleet --help lists what fleet does)"
    )
}

/// The process list as `pm2 jlist` prints it: the fields scripts read (`name`,
/// `pid`, `pm_id`, `monit`, and `pm2_env`'s `status`, `restart_time`, `pm_uptime` and
/// the rest PM2 exports to apps).
pub fn jlist(processes: &[pb::ProcessInfo]) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Value::Array(processes.iter().map(|p| process(p, now_ms)).collect())
}

fn process(p: &pb::ProcessInfo, now_ms: u64) -> Value {
    let status = match crate::output::status_name(p.status) {
        "waiting-restart" => "waiting restart",
        other => other,
    };
    let exec_mode = match pb::ExecMode::try_from(p.exec_mode) {
        Ok(pb::ExecMode::Cluster) => "cluster_mode",
        _ => "fork_mode",
    };
    let pm_uptime = p
        .uptime_ms
        .map_or(p.created_at_unix_ms, |up| now_ms.saturating_sub(up));
    json!({
        "pid": p.pid.unwrap_or(0),
        "name": p.name,
        "pm_id": p.id,
        "monit": { "memory": p.memory_bytes, "cpu": p.cpu_percent },
        "pm2_env": {
            "name": p.name,
            "namespace": p.namespace,
            "pm_id": p.id,
            "status": status,
            "exec_mode": exec_mode,
            "NODE_APP_INSTANCE": p.instance,
            "restart_time": p.restarts,
            "unstable_restarts": p.unstable_restarts,
            "pm_uptime": pm_uptime,
            "created_at": p.created_at_unix_ms,
            "pm_exec_path": p.script,
            "versioning": Value::Null,
        },
    })
}

/// Whether this process was started as `pm2` (through a symlink or a copy).
pub fn invoked_as_pm2(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == "pm2")
}

/// `fleet install-pm2 [DIR]`: a `pm2` symlink to this executable in `dir` (default:
/// beside it). An existing `pm2` that is not fleet's (PM2 itself) is kept unless
/// `force`. Returns the link's path.
pub fn install(dir: Option<PathBuf>, force: bool) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the fleet binary: {e}"))?;
    let dir = match dir {
        Some(dir) => dir,
        None => exe
            .parent()
            .map(Path::to_path_buf)
            .ok_or("cannot tell the fleet binary's directory")?,
    };
    let link = dir.join("pm2");
    match std::fs::symlink_metadata(&link) {
        Ok(_) if std::fs::read_link(&link).is_ok_and(|target| target == exe) => return Ok(link),
        Ok(_) if !force => {
            return Err(format!(
                "{} exists and is not fleet's; pass --force to replace it",
                link.display()
            ));
        }
        Ok(_) => std::fs::remove_file(&link)
            .map_err(|e| format!("cannot replace {}: {e}", link.display()))?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&exe, &link)
        .map_err(|e| format!("cannot create {}: {e}", link.display()))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(line: &str) -> Result<Vec<String>, String> {
        translate(&words(line))
    }

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn deploy_hook_lines_map_onto_fleet() {
        let cases = [
            (
                "reload ecosystem.config.js --env production",
                "reload --env=production ecosystem.config.js",
            ),
            (
                "startOrRestart ecosystem.json --env=staging --update-env",
                "restart --env=staging --update-env ecosystem.json",
            ),
            (
                "startOrReload ecosystem.config.js --only api,worker",
                "reload --only=api,worker ecosystem.config.js",
            ),
            (
                "start app.js -n api -i max -- --port 3000",
                "start --name=api --instances=max app.js -- --port 3000",
            ),
            ("start app.js -i -1", "start --instances=-1 app.js"),
            ("stop all", "stop all"),
            ("delete api", "delete api"),
            ("del 3", "delete 3"),
            ("save --force", "save --force"),
            ("ls", "list"),
            ("status", "list"),
            ("logs api --lines 20", "logs --lines=20 --follow api"),
            ("logs --nostream --raw", "logs --raw"),
            ("-s restart api", "restart api"),
            (
                "deploy ecosystem.config.js production setup",
                "deploy ecosystem.config.js production setup",
            ),
        ];
        for (pm2, expected) in cases {
            assert_eq!(fleet(pm2), Ok(words(expected)), "pm2 {pm2}");
        }
    }

    #[test]
    fn list_forms_and_version() {
        assert_eq!(fleet("jlist"), Ok(words("jlist")));
        assert_eq!(fleet("prettylist"), Ok(words("jlist --pretty")));
        assert_eq!(fleet("-v"), Ok(words("--version")));
    }

    #[test]
    fn what_fleet_cannot_do_is_named() {
        for (line, expected) in [
            ("startup systemd", "pm2 startup: not supported"),
            ("install pm2-logrotate", "pm2 install: not supported"),
            ("start app.js --watch", "--watch is not supported"),
            ("reload app --nosuch", "--nosuch is not supported"),
            ("start app.js --name", "--name needs a value"),
            ("list extra", "takes no arguments"),
            ("frobnicate", "unknown command"),
            ("", "usage: pm2"),
        ] {
            let error = translate(&words(line)).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn jlist_has_pm2s_shape() {
        let p = pb::ProcessInfo {
            id: 2,
            name: "api".into(),
            namespace: "default".into(),
            instance: 1,
            pid: Some(4242),
            status: pb::ProcessStatus::Online as i32,
            restarts: 3,
            uptime_ms: Some(1000),
            memory_bytes: 2048,
            exec_mode: pb::ExecMode::Cluster as i32,
            script: "app.js".into(),
            ..Default::default()
        };
        let value = process(&p, 10_000);
        assert_eq!(value["pid"], 4242);
        assert_eq!(value["pm_id"], 2);
        assert_eq!(value["monit"]["memory"], 2048);
        assert_eq!(value["pm2_env"]["status"], "online");
        assert_eq!(value["pm2_env"]["exec_mode"], "cluster_mode");
        assert_eq!(value["pm2_env"]["restart_time"], 3);
        assert_eq!(value["pm2_env"]["pm_uptime"], 9000);
        assert_eq!(value["pm2_env"]["NODE_APP_INSTANCE"], 1);
    }
}
