//! What the CLI prints: the `list` table (PM2's columns), `describe`'s sections, and
//! the JSON forms the contract fixes. Meaning is never carried by colour alone.

use std::io::IsTerminal;

use comfy_table::{Table, presets};
use fleet_proto::agent::v1 as pb;
use serde_json::{Value, json};

/// Colour only on a terminal and never with `NO_COLOR` set.
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub enum LogStyle {
    /// `<id>|<app> | line`, as `pm2 logs` prints; coloured on a terminal.
    Pretty(bool),
    Raw,
    /// The contract's `{"ts", "host", "app", "instance", "stream", "line"}`.
    Json,
}

impl LogStyle {
    /// What `fleet logs --json` or `--raw` asks for; else pretty, coloured on a terminal.
    pub fn from_flags(json: bool, raw: bool) -> LogStyle {
        if json {
            LogStyle::Json
        } else if raw {
            LogStyle::Raw
        } else {
            LogStyle::Pretty(use_color())
        }
    }
}

pub struct LogPrinter {
    style: LogStyle,
    width: usize,
    /// Fleet logs: prefix every line with its host too.
    hosts: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

/// ANSI colours cycled over app names, so each app keeps one colour.
const APP_COLORS: &[&str] = &["36", "32", "35", "33", "34", "96", "92", "95"];

impl LogPrinter {
    pub fn new(style: LogStyle) -> LogPrinter {
        LogPrinter {
            style,
            width: 0,
            hosts: false,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    pub fn with_hosts(mut self) -> LogPrinter {
        self.hosts = true;
        self
    }

    /// Prints one entry; false once stdout is closed.
    pub fn print(&mut self, entry: &pb::LogEntry) -> bool {
        use std::io::Write;
        let stream = match pb::LogStream::try_from(entry.stream) {
            Ok(pb::LogStream::Err) => "err",
            _ => "out",
        };
        let result = if !entry.notice.is_empty() {
            match self.style {
                // Lines a follower missed name their app, instance and stream.
                LogStyle::Json if entry.missed > 0 => writeln!(
                    self.out,
                    "{}",
                    json!({
                        "ts": entry.ts_unix_ms,
                        "host": entry.host,
                        "notice": entry.notice,
                        "missed": entry.missed,
                        "app": entry.app,
                        "instance": entry.instance,
                        "stream": stream,
                    })
                ),
                LogStyle::Json => writeln!(
                    self.out,
                    "{}",
                    json!({"ts": entry.ts_unix_ms, "host": entry.host, "notice": entry.notice})
                ),
                _ => writeln!(self.out, "[fleet] {}", printable(&entry.notice)),
            }
        } else {
            match &self.style {
                // Bare lines for pipes; a terminal still never gets escape sequences.
                LogStyle::Raw if std::io::stdout().is_terminal() => {
                    writeln!(self.out, "{}", printable(&entry.line))
                }
                LogStyle::Raw => writeln!(self.out, "{}", entry.line),
                LogStyle::Json => writeln!(
                    self.out,
                    "{}",
                    json!({
                        "ts": entry.ts_unix_ms,
                        "host": entry.host,
                        "app": entry.app,
                        "instance": entry.instance,
                        "stream": stream,
                        "line": entry.line,
                    })
                ),
                LogStyle::Pretty(color) => {
                    let label = if self.hosts {
                        format!("{} {}#{}", entry.host, entry.app, entry.instance)
                    } else {
                        format!("{}|{}", entry.id, entry.app)
                    };
                    self.width = self.width.max(label.len());
                    if *color {
                        let hash = entry
                            .app
                            .bytes()
                            .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize);
                        let app_color = APP_COLORS[hash % APP_COLORS.len()];
                        // Standard error is marked in text too, not by colour alone.
                        let (start, mark) = if stream == "err" {
                            ("\x1b[31m", " err")
                        } else {
                            ("", "")
                        };
                        writeln!(
                            self.out,
                            "\x1b[{app_color}m{label:<width$}\x1b[0m{mark} | {start}{}\x1b[0m",
                            printable(&entry.line),
                            width = self.width
                        )
                    } else {
                        let mark = if stream == "err" { " err" } else { "" };
                        writeln!(
                            self.out,
                            "{label:<width$}{mark} | {}",
                            printable(&entry.line),
                            width = self.width
                        )
                    }
                }
            }
        };
        result.is_ok() && self.out.flush().is_ok()
    }
}

/// An app's (or a hook's) bytes must not drive the operator's terminal: tabs become
/// spaces and other control characters (escape sequences' ESC included) a visible
/// replacement. Every human-facing line goes through it; JSON escapes by itself.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

pub fn status_name(status: i32) -> &'static str {
    match pb::ProcessStatus::try_from(status).unwrap_or(pb::ProcessStatus::Unspecified) {
        pb::ProcessStatus::Launching => "launching",
        pb::ProcessStatus::Online => "online",
        pb::ProcessStatus::Stopping => "stopping",
        pb::ProcessStatus::Stopped => "stopped",
        pb::ProcessStatus::Errored => "errored",
        pb::ProcessStatus::WaitingRestart => "waiting-restart",
        pb::ProcessStatus::Unspecified => "unknown",
    }
}

fn exec_mode_name(mode: i32) -> &'static str {
    match pb::ExecMode::try_from(mode).unwrap_or(pb::ExecMode::Unspecified) {
        pb::ExecMode::Cluster => "cluster",
        _ => "fork",
    }
}

/// The contract's `list --json` object; `describe --json` adds details.
pub fn process_json(p: &pb::ProcessInfo, details: bool) -> Value {
    let mut value = json!({
        "id": p.id,
        "name": p.name,
        "namespace": p.namespace,
        "instance": p.instance,
        "pid": p.pid,
        "status": status_name(p.status),
        "restarts": p.restarts,
        "unstable_restarts": p.unstable_restarts,
        "uptime_ms": p.uptime_ms,
        "cpu_percent": p.cpu_percent,
        "memory_bytes": p.memory_bytes,
        "exec_mode": exec_mode_name(p.exec_mode),
        "host": p.host,
        "created_at_ms": p.created_at_unix_ms,
    });
    if details {
        let config: Value = serde_json::from_str(&p.config_json).unwrap_or(Value::Null);
        value["config"] = config;
        value["last_exit"] = match &p.last_exit {
            Some(exit) => json!({
                "code": exit.code,
                "signal": exit.signal,
                "error": exit.spawn_error,
                "at": exit.at_unix_ms,
                "uptime_ms": exit.uptime_ms,
                "unknown": exit.unknown,
            }),
            None => Value::Null,
        };
        value["log_files"] = json!(p.log_files);
        value["restart_at_ms"] = json!(p.restart_at_unix_ms);
        value["prev_restart_delay_ms"] = json!(p.prev_restart_delay_ms);
        value["restart_cause"] = match p.restart_cause.as_str() {
            "" => Value::Null,
            cause => json!({ "cause": cause, "at": p.restart_cause_at_unix_ms }),
        };
    }
    value
}

pub fn print_json(processes: &[pb::ProcessInfo], details: bool) {
    let array: Vec<Value> = processes.iter().map(|p| process_json(p, details)).collect();
    println!("{}", Value::Array(array));
}

/// PM2's compact durations: `42s`, `5m`, `3h`, `2D`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}D", s / 86_400),
    }
}

pub fn bytes(n: u64) -> String {
    const KB: f64 = 1024.0;
    let n = n as f64;
    if n < KB {
        format!("{n}b")
    } else if n < KB * KB {
        format!("{:.1}kb", n / KB)
    } else if n < KB * KB * KB {
        format!("{:.1}mb", n / KB / KB)
    } else {
        format!("{:.1}gb", n / KB / KB / KB)
    }
}

fn new_table() -> Table {
    let mut table = Table::new();
    let preset = if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::ASCII_MARKDOWN
    };
    table.load_preset(preset);
    table
}

pub fn print_table(processes: &[pb::ProcessInfo]) {
    println!("{}", process_table(processes));
}

/// `fleet list`: one row per instance.
pub fn process_table(processes: &[pb::ProcessInfo]) -> String {
    if processes.is_empty() {
        return "no app is running\nhint: `fleet start app.js` or `fleet start fleet.toml`"
            .to_string();
    }
    let mut table = new_table();
    table.set_header(vec![
        "id",
        "name",
        "namespace",
        "mode",
        "pid",
        "uptime",
        "↺",
        "status",
        "cpu",
        "mem",
    ]);
    for p in processes {
        table.add_row(vec![
            p.id.to_string(),
            p.name.clone(),
            p.namespace.clone(),
            exec_mode_name(p.exec_mode).to_string(),
            p.pid.map_or("-".into(), |pid| pid.to_string()),
            p.uptime_ms.map_or("-".into(), duration),
            p.restarts.to_string(),
            status_name(p.status).to_string(),
            format!("{:.1}%", p.cpu_percent),
            bytes(p.memory_bytes),
        ]);
    }
    table.to_string()
}

/// `fleet status <stage>`: one table for every host, unreachable hosts after it.
pub fn print_fleet_status(outcomes: &[fleet_remote::stage::HostOutcome], json: bool) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if !json {
        print!("{}", fleet_status_text(outcomes, now_ms));
        return;
    }
    let mut array = Vec::new();
    for outcome in outcomes {
        match &outcome.result {
            Ok(processes) => {
                let metrics = outcome.metrics.as_ref().map(host_metrics_json);
                for p in processes {
                    let mut value = process_json(p, false);
                    value["host"] = json!(outcome.host);
                    value["release"] = json!(fleet_remote::stage::release_of(&p.script));
                    if let Some(metrics) = &metrics {
                        value["host_metrics"] = metrics.clone();
                    }
                    if outcome.stale {
                        value["stale"] = json!(true);
                    }
                    array.push(value);
                }
            }
            Err(error) => {
                let mut value = json!({
                    "host": outcome.host,
                    "reachable": false,
                    "error": error,
                    "last_seen_ms": outcome.last_seen_unix_ms,
                });
                if outcome.stale {
                    value["stale"] = json!(true);
                }
                array.push(value);
            }
        }
    }
    println!("{}", Value::Array(array));
}

/// `fleet status <stage>`: a row per instance of every host, then a line for each
/// host with no app or out of reach (`now_ms`: for how long it has been).
pub fn fleet_status_text(outcomes: &[fleet_remote::stage::HostOutcome], now_ms: u64) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if outcomes.iter().any(|o| o.stale) {
        let _ = writeln!(
            text,
            "stale: the controller's store is unavailable; this is its memory and may be out of date"
        );
    }
    let mut table = new_table();
    table.set_header(vec![
        "host", "id", "name", "instance", "status", "pid", "cpu", "mem", "uptime", "↺", "release",
    ]);
    let mut rows = 0;
    for outcome in outcomes {
        let Ok(processes) = &outcome.result else {
            continue;
        };
        for p in processes {
            rows += 1;
            table.add_row(vec![
                outcome.host.clone(),
                p.id.to_string(),
                p.name.clone(),
                p.instance.to_string(),
                status_name(p.status).to_string(),
                p.pid.map_or("-".into(), |pid| pid.to_string()),
                format!("{:.1}%", p.cpu_percent),
                bytes(p.memory_bytes),
                p.uptime_ms.map_or("-".into(), duration),
                p.restarts.to_string(),
                fleet_remote::stage::release_of(&p.script)
                    .unwrap_or("-")
                    .to_string(),
            ]);
        }
    }
    if rows > 0 {
        let _ = writeln!(text, "{table}");
    }
    let hosts = host_metrics_table(outcomes);
    if !hosts.is_empty() {
        let _ = writeln!(text, "{hosts}");
    }
    for outcome in outcomes {
        match &outcome.result {
            Ok(processes) if processes.is_empty() => {
                let _ = writeln!(text, "{}: no app", outcome.host);
            }
            Ok(_) => {}
            Err(error) => {
                let seen = outcome
                    .last_seen_unix_ms
                    .map(|at| format!(" (last seen {} ago)", duration(now_ms.saturating_sub(at))))
                    .unwrap_or_default();
                let _ = writeln!(text, "{}: unreachable: {error}{seen}", outcome.host);
            }
        }
    }
    text
}

/// A host's metrics in `status --json` (beside each of its instances).
fn host_metrics_json(m: &fleet_proto::agent::v1::HostMetrics) -> Value {
    let disks: Vec<Value> = (m.disks.iter())
        .map(|d| {
            json!({
                "mount_point": d.mount_point,
                "fs_type": d.fs_type,
                "total_bytes": d.total_bytes,
                "available_bytes": d.available_bytes,
                "used_bytes": d.used_bytes,
                "paths": d.paths,
            })
        })
        .collect();
    json!({
        "at_ms": m.at_unix_ms,
        "cpus": m.cpus,
        "cpu_percent": m.cpu_percent,
        "load": [m.load1, m.load5, m.load15],
        "memory_total_bytes": m.memory_total_bytes,
        "memory_available_bytes": m.memory_available_bytes,
        "swap_total_bytes": m.swap_total_bytes,
        "swap_free_bytes": m.swap_free_bytes,
        "uptime_ms": m.uptime_ms,
        "disks": disks,
    })
}

/// A row per host whose metrics are known: CPU, load, memory in use and the fullest
/// of its filesystems. Empty when none are.
fn host_metrics_table(outcomes: &[fleet_remote::stage::HostOutcome]) -> String {
    let mut table = new_table();
    table.set_header(vec!["host", "cpu", "load", "memory", "disk", "up"]);
    let mut rows = 0;
    for outcome in outcomes {
        let (Ok(_), Some(m)) = (&outcome.result, &outcome.metrics) else {
            continue;
        };
        rows += 1;
        let used = m
            .memory_total_bytes
            .saturating_sub(m.memory_available_bytes);
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 * 100.0 / whole as f64
            }
        };
        // The fullest filesystem, by the share an app can no longer write.
        let fullest = (m.disks.iter())
            .map(|d| {
                (
                    share(
                        d.total_bytes - d.available_bytes.min(d.total_bytes),
                        d.total_bytes,
                    ),
                    d,
                )
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        table.add_row(vec![
            outcome.host.clone(),
            format!("{:.1}% of {}", m.cpu_percent, m.cpus),
            format!("{:.2} {:.2} {:.2}", m.load1, m.load5, m.load15),
            format!(
                "{} / {} ({:.0}%)",
                bytes(used),
                bytes(m.memory_total_bytes),
                share(used, m.memory_total_bytes)
            ),
            fullest.map_or("-".into(), |(full, d)| {
                format!(
                    "{} {full:.0}% ({} free)",
                    d.mount_point,
                    bytes(d.available_bytes)
                )
            }),
            duration(m.uptime_ms),
        ]);
    }
    if rows == 0 {
        return String::new();
    }
    table.to_string()
}

/// The result of an action on each host.
pub fn print_host_results(outcomes: &[fleet_remote::stage::HostOutcome]) {
    let mut table = new_table();
    table.set_header(vec!["host", "result", "instances"]);
    for outcome in outcomes {
        let (result, instances) = match &outcome.result {
            Ok(processes) => (
                "ok".to_string(),
                processes
                    .iter()
                    .map(|p| format!("{}#{} {}", p.name, p.instance, status_name(p.status)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(error) => (format!("failed: {error}"), String::new()),
        };
        table.add_row(vec![outcome.host.clone(), result, instances]);
    }
    println!("{table}");
}

pub fn print_description(processes: &[pb::ProcessInfo]) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for p in processes {
        let config: Value = serde_json::from_str(&p.config_json).unwrap_or(Value::Null);
        let text = |key: &str| match &config[key] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let mut table = new_table();
        let mut row = |key: &str, value: String| {
            table.add_row(vec![key.to_string(), value]);
        };
        row("status", status_name(p.status).into());
        row("name", p.name.clone());
        row("namespace", p.namespace.clone());
        row("id", p.id.to_string());
        row("instance", p.instance.to_string());
        row("pid", p.pid.map_or("-".into(), |pid| pid.to_string()));
        row("host", p.host.clone());
        row("script", p.script.clone());
        row("command", text("command"));
        row("args", text("args"));
        row("interpreter", text("interpreter"));
        row("cwd", text("cwd"));
        row("exec mode", exec_mode_name(p.exec_mode).into());
        row("restarts", p.restarts.to_string());
        if !p.restart_cause.is_empty() {
            let ago = p
                .restart_cause_at_unix_ms
                .map(|at| format!(", {} ago", duration(now_ms.saturating_sub(at))))
                .unwrap_or_default();
            row("restarted by fleet", format!("{}{ago}", p.restart_cause));
        }
        row("unstable restarts", p.unstable_restarts.to_string());
        row("uptime", p.uptime_ms.map_or("-".into(), duration));
        row(
            "created",
            format!(
                "{} ago",
                duration(now_ms.saturating_sub(p.created_at_unix_ms))
            ),
        );
        row(
            "last exit",
            match &p.last_exit {
                None => "-".into(),
                Some(exit) => {
                    let how = match (&exit.code, &exit.signal, &exit.spawn_error) {
                        (Some(code), _, _) => format!("code {code}"),
                        (_, Some(signal), _) => format!("signal {signal}"),
                        (_, _, Some(error)) => format!("failed to start: {error}"),
                        _ if exit.unknown => "unknown (it was no longer the agent's child)".into(),
                        _ => "unknown".into(),
                    };
                    format!(
                        "{how}, {} ago, after {} up",
                        duration(now_ms.saturating_sub(exit.at_unix_ms)),
                        duration(exit.uptime_ms)
                    )
                }
            },
        );
        if let Some(at) = p.restart_at_unix_ms {
            row(
                "next restart in",
                format!("{}ms", at.saturating_sub(now_ms)),
            );
        }
        if p.prev_restart_delay_ms > 0 {
            row("backoff delay", format!("{}ms", p.prev_restart_delay_ms));
        }
        row(
            "kill",
            format!(
                "{} then SIGKILL after {}ms",
                text("kill_signal"),
                text("kill_timeout_ms")
            ),
        );
        row("log files", p.log_files.join("\n"));
        println!("{table}");
    }
}

/// The summary table of a deploy: a row per host.
pub fn deploy_summary(hosts: &[fleet_remote::deploy::HostSummary]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["HOST", "RESULT", "STEP", "RELEASE", "TIME", "ERROR"]);
    for s in hosts {
        table.add_row([
            s.host.clone(),
            s.result.label().to_string(),
            s.step.clone(),
            s.release.clone().unwrap_or_default(),
            format!("{:.1}s", s.duration_ms as f64 / 1000.0),
            s.error.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// `fleet deploy <stage> list|curr|prev`: each host's releases (newest first, the
/// current and previous marked, a held lock shown), or its current or previous one.
pub fn releases_table(releases: &fleet_remote::deploy::Releases) -> comfy_table::Table {
    use fleet_remote::deploy::ListKind;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    match releases.kind {
        ListKind::All => table.set_header(["HOST", "RELEASE", "COMMIT", ""]),
        _ => table.set_header(["HOST", "RELEASE", "COMMIT"]),
    };
    for (host, result) in &releases.hosts {
        let Ok(state) = result else { continue };
        match releases.kind {
            ListKind::All => {
                for (id, commit) in state.releases.iter().rev() {
                    let mark = if state.current.as_deref() == Some(id) {
                        "current"
                    } else if state.previous.as_deref() == Some(id) {
                        "previous"
                    } else {
                        ""
                    };
                    table.add_row([host.as_str(), id, commit.get(..7).unwrap_or(commit), mark]);
                }
                if let Some(lock) = &state.lock {
                    table.add_row([host.as_str(), "(locked)", "", lock.as_str()]);
                }
            }
            ListKind::Current | ListKind::Previous => {
                let id = match releases.kind {
                    ListKind::Current => state.current.clone(),
                    _ => state.previous.clone(),
                };
                let id = id.unwrap_or_default();
                table.add_row([host.as_str(), id.as_str(), &state.short_commit(&id)]);
            }
        }
    }
    table
}

#[cfg(test)]
mod views;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_like_pm2() {
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(5 * 60_000), "5m");
        assert_eq!(duration(3 * 3_600_000), "3h");
        assert_eq!(duration(2 * 86_400_000), "2D");
        assert_eq!(bytes(512), "512b");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0mb");
    }
}
