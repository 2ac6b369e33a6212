//! An app's restart policy and its logs: the keys read in the order PM2 documents
//! them, each checked where it is read, then applied to the `AppSpec` over its
//! defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::load::LoadOptions;
use crate::reader::{self, Ctx, MapReader, Syntax};
use crate::spec::{AppSpec, Balance, HealthCheck, LogType};
use crate::units;

use super::fields::*;
use super::{DEV_NULL, TIME_LOG_DATE_FORMAT};

/// When and how the app restarts and stops, and what it watches.
pub(super) struct Policy {
    autorestart: Option<bool>,
    autostart: Option<bool>,
    max_restarts: Option<u32>,
    min_uptime: Option<u64>,
    restart_delay: Option<u64>,
    exp_backoff: Option<u64>,
    max_memory: Option<u64>,
    cron_restart: Option<Option<String>>,
    health_check: Option<HealthCheck>,
    watchdog: Option<u64>,
    balance: Option<Balance>,
    cron_timezone: Option<String>,
    watch_delay: Option<u64>,
    max_size: Option<u64>,
    retain: Option<u32>,
    compress: Option<bool>,
    rotate_interval: Option<Option<String>>,
    kill_timeout: Option<u64>,
    kill_signal: Option<String>,
    wait_ready: Option<bool>,
    shutdown_with_message: Option<bool>,
    listen_timeout: Option<u64>,
    stop_exit_codes: Option<Vec<i32>>,
    watch: Option<Vec<PathBuf>>,
    ignore_watch: Option<Vec<String>>,
}

pub(super) fn read_policy(ctx: &mut Ctx<'_>, r: &mut MapReader<'_>, cwd: &Path) -> Policy {
    let autorestart = take_bool(ctx, r, &["autorestart"]);
    let autostart = take_bool(ctx, r, &["autostart"]);
    let max_restarts = r
        .take(ctx, &["max_restarts"])
        .and_then(|f| reader::as_u32(ctx, &f));
    let min_uptime = take_duration(ctx, r, &["min_uptime"]);
    let restart_delay = take_duration(ctx, r, &["restart_delay"]);
    let exp_backoff = take_duration(ctx, r, &["exp_backoff_restart_delay"]);
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
    let (health_check, watchdog) = read_liveness(ctx, r);
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
    let watch_delay = take_duration(ctx, r, &["watch_delay"]);
    let max_size = r
        .take(ctx, &["max_size", "log_max_size"])
        .and_then(|f| reader::as_bytes(ctx, &f));
    let retain = r
        .take(ctx, &["retain", "log_retain"])
        .and_then(|f| reader::as_u32(ctx, &f));
    let compress = take_bool(ctx, r, &["compress", "log_compress"]);
    let rotate_interval = r
        .take(ctx, &["rotate_interval", "log_rotate_interval"])
        .and_then(|f| read_cron(ctx, &f));
    let kill_timeout = take_duration(ctx, r, &["kill_timeout"]);
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
    let wait_ready = take_bool(ctx, r, &["wait_ready"]);
    let shutdown_with_message = take_bool(ctx, r, &["shutdown_with_message"]);
    let listen_timeout = take_duration(ctx, r, &["listen_timeout"]);
    let stop_exit_codes = r
        .take(ctx, &["stop_exit_codes"])
        .and_then(|f| read_exit_codes(ctx, &f));
    let watch = r
        .take(ctx, &["watch"])
        .and_then(|f| read_watch(ctx, &f, cwd));
    let ignore_watch = r
        .take(ctx, &["ignore_watch"])
        .and_then(|f| reader::as_string_list(ctx, &f, false));
    Policy {
        autorestart,
        autostart,
        max_restarts,
        min_uptime,
        restart_delay,
        exp_backoff,
        max_memory,
        cron_restart,
        health_check,
        watchdog,
        balance,
        cron_timezone,
        watch_delay,
        max_size,
        retain,
        compress,
        rotate_interval,
        kill_timeout,
        kill_signal,
        wait_ready,
        shutdown_with_message,
        listen_timeout,
        stop_exit_codes,
        watch,
        ignore_watch,
    }
}

impl Policy {
    pub(super) fn apply(self, spec: &mut AppSpec) {
        spec.autorestart = self.autorestart.unwrap_or(spec.autorestart);
        spec.autostart = self.autostart.unwrap_or(spec.autostart);
        spec.max_restarts = self.max_restarts.unwrap_or(spec.max_restarts);
        spec.min_uptime_ms = self.min_uptime.unwrap_or(spec.min_uptime_ms);
        spec.restart_delay_ms = self.restart_delay.unwrap_or(spec.restart_delay_ms);
        spec.exp_backoff_restart_delay_ms = self.exp_backoff;
        spec.max_memory_restart_bytes = self.max_memory;
        spec.cron_restart = self.cron_restart.flatten();
        spec.cron_timezone = self.cron_timezone;
        spec.health_check = self.health_check;
        spec.watchdog_ms = self.watchdog;
        spec.balance = self.balance.unwrap_or_default();
        spec.watch_delay_ms = self.watch_delay.unwrap_or(spec.watch_delay_ms);
        let rotation = &mut spec.logs.rotation;
        rotation.max_size_bytes = self.max_size.unwrap_or(rotation.max_size_bytes);
        rotation.retain = self.retain.unwrap_or(rotation.retain);
        rotation.compress = self.compress.unwrap_or(rotation.compress);
        if let Some(interval) = self.rotate_interval {
            rotation.interval = interval;
        }
        spec.kill_timeout_ms = self.kill_timeout.unwrap_or(spec.kill_timeout_ms);
        spec.kill_signal = self.kill_signal.unwrap_or(spec.kill_signal.clone());
        spec.wait_ready = self.wait_ready.unwrap_or(spec.wait_ready);
        spec.shutdown_with_message = self.shutdown_with_message.unwrap_or(false);
        spec.listen_timeout_ms = self.listen_timeout.unwrap_or(spec.listen_timeout_ms);
        spec.stop_exit_codes = self.stop_exit_codes.unwrap_or_default();
        spec.watch = self.watch.unwrap_or_default();
        spec.ignore_watch = self.ignore_watch.unwrap_or_default();
    }
}

/// Where the app's output goes and how its lines look; also the environment it
/// inherits and the variables that number its instances.
pub(super) struct Logs {
    out_file: Option<Option<String>>,
    error_file: Option<Option<String>>,
    log_file: Option<Option<String>>,
    merge_logs: Option<bool>,
    log_date_format: Option<String>,
    time: Option<bool>,
    log_type: Option<LogType>,
    disable_logs: Option<bool>,
    instance_var: Option<String>,
    increment_var: Option<String>,
    filter_env: Option<EnvFilter>,
    pub(super) append_env_to_name: Option<bool>,
    pid_file: Option<Option<String>>,
}

pub(super) fn read_logs(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    cwd: &Path,
    home: Option<&str>,
) -> Logs {
    let out_file = r
        .take(ctx, &["out_file", "out", "output", "out_log"])
        .and_then(|f| read_log_path(ctx, &f, cwd, home, false));
    let error_file = r
        .take(ctx, &["error_file", "error", "err", "err_file", "err_log"])
        .and_then(|f| read_log_path(ctx, &f, cwd, home, false));
    let log_file = r
        .take(ctx, &["log_file", "log"])
        .and_then(|f| read_log_path(ctx, &f, cwd, home, true));
    let merge_logs = take_bool(ctx, r, &["merge_logs", "combine_logs"]);
    let log_date_format = r
        .take(ctx, &["log_date_format"])
        .and_then(|f| reader::as_string(ctx, &f))
        .filter(|format| !format.is_empty());
    let time = take_bool(ctx, r, &["time"]);
    let log_type =
        r.take(ctx, &["log_type"])
            .and_then(|f| match reader::as_string(ctx, &f)?.as_str() {
                "raw" => Some(LogType::Raw),
                "json" => Some(LogType::Json),
                // PM2 writes JSON lines for "json" and raw lines for anything else
                // (`log_type: "format"` is common), so its files keep loading.
                other if ctx.syntax != Syntax::Toml => {
                    let message = format!(
                        "{other:?} writes lines as they are, as in PM2 (only \"json\" changes them)"
                    );
                    ctx.warn(f.line, &f.path, &message);
                    Some(LogType::Raw)
                }
                other => {
                    ctx.error(
                        f.line,
                        &f.path,
                        format!("expected \"raw\" or \"json\", got {other:?}"),
                    );
                    None
                }
            });
    let disable_logs = take_bool(ctx, r, &["disable_logs"]);
    let instance_var = r
        .take(ctx, &["instance_var"])
        .and_then(|f| read_env_name(ctx, &f));
    let increment_var = r
        .take(ctx, &["increment_var"])
        .and_then(|f| read_env_name(ctx, &f));
    // `force` lets PM2 start a script twice; a config file's apps are named, so it has
    // nothing to do here. Its type is still checked.
    let _force = take_bool(ctx, r, &["force"]);
    let filter_env = r
        .take(ctx, &["filter_env"])
        .and_then(|f| match &f.value.value {
            crate::tree::Node::Bool(true) => Some(EnvFilter::All),
            crate::tree::Node::Bool(false) => Some(EnvFilter::None),
            _ => reader::as_string_list(ctx, &f, false).map(EnvFilter::Containing),
        });
    let append_env_to_name = take_bool(ctx, r, &["append_env_to_name"]);
    let pid_file = r
        .take(ctx, &["pid_file", "pid"])
        .and_then(|f| read_log_path(ctx, &f, cwd, home, false));
    Logs {
        out_file,
        error_file,
        log_file,
        merge_logs,
        log_date_format,
        time,
        log_type,
        disable_logs,
        instance_var,
        increment_var,
        filter_env,
        append_env_to_name,
        pid_file,
    }
}

impl Logs {
    pub(super) fn apply(self, spec: &mut AppSpec, opts: &LoadOptions) {
        spec.inherited_env = match self.filter_env.unwrap_or(EnvFilter::None) {
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
        spec.logs.out_file = self.out_file.flatten();
        spec.logs.error_file = self.error_file.flatten();
        spec.logs.log_file = self.log_file.flatten();
        spec.logs.merge_logs = self.merge_logs;
        // PM2 lets `time` replace a custom format (#5466); fleet keeps the custom one.
        spec.logs.log_date_format = self
            .log_date_format
            .or_else(|| (self.time == Some(true)).then(|| TIME_LOG_DATE_FORMAT.to_string()));
        spec.logs.log_type = self.log_type.unwrap_or_default();
        if self.disable_logs == Some(true) {
            spec.logs.out_file = Some(DEV_NULL.to_string());
            spec.logs.error_file = Some(DEV_NULL.to_string());
            spec.logs.log_file = Some(DEV_NULL.to_string());
        }
        spec.instance_var = self.instance_var.unwrap_or(spec.instance_var.clone());
        spec.pid_file = self
            .pid_file
            .flatten()
            .filter(|path| path != DEV_NULL)
            .map(Into::into);
        spec.increment_var = self.increment_var;
    }
}
