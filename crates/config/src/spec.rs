//! The resolved app specification: what the CLI sends to the agent and what the agent
//! stores in its state file and in `dump.json`. Parsing lives in `load`, `app` and
//! `resolve`; this module only owns the types, their defaults and their invariants.
//!
//! Every duration is in milliseconds and every size in bytes, so the JSON form is
//! unambiguous. Defaults are PM2's (`reference/pm2-behaviour.md` §2) unless a comment
//! says why fleet differs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// PM2's default `min_uptime`: an exit sooner than this after a start is "unstable".
pub const DEFAULT_MIN_UPTIME_MS: u64 = 1000;
/// PM2's default `max_restarts`: unstable restarts allowed before `errored`.
pub const DEFAULT_MAX_RESTARTS: u32 = 16;
/// PM2's default `kill_timeout` (`PM2_KILL_TIMEOUT`).
pub const DEFAULT_KILL_TIMEOUT_MS: u64 = 1600;
/// PM2's default `listen_timeout` (`PM2_GRACEFUL_LISTEN_TIMEOUT`).
pub const DEFAULT_LISTEN_TIMEOUT_MS: u64 = 3000;
/// PM2's kill signal (`PM2_KILL_SIGNAL`); fleet makes it a per-app setting.
pub const DEFAULT_KILL_SIGNAL: &str = "SIGINT";
/// fleet's own instance variable; `NODE_APP_INSTANCE` is always set too, for PM2 apps.
pub const DEFAULT_INSTANCE_VAR: &str = "FLEET_APP_INSTANCE";
/// PM2's instance variable, set alongside `instance_var` for compatibility.
pub const PM2_INSTANCE_VAR: &str = "NODE_APP_INSTANCE";
/// Debounce for `watch`: editors write a file in several steps; one restart per burst.
pub const DEFAULT_WATCH_DELAY_MS: u64 = 500;

fn default_watch_delay_ms() -> u64 {
    DEFAULT_WATCH_DELAY_MS
}

/// Variables of the shell that starts apps which never reach them: fleet's and PM2's
/// credentials and settings, and the ssh agent (an app must not act as its operator).
/// An app's own `env` may still set any of them.
pub const NOT_INHERITED: &[&str] = &[
    "FLEET_TOKEN",
    "FLEET_CONTROLLER",
    "FLEET_CA",
    "FLEET_HOME",
    "FLEET_CONFIG",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "PM2_PUBLIC_KEY",
    "PM2_SECRET_KEY",
];

/// Whether a variable of the starting shell reaches apps (see `NOT_INHERITED`).
pub fn inheritable(key: &str) -> bool {
    !NOT_INHERITED.contains(&key)
}

/// PM2's default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One app, fully resolved: paths absolute, interpreter chosen, env merged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: String,
    pub namespace: String,
    /// The script as the user wrote it (a path, a program on `PATH`, or a command string).
    pub script: String,
    /// What is executed: program and leading arguments (interpreter, its args, script),
    /// without `args`. A command string is `["sh", "-c", "<cmd>"]`.
    pub command: Vec<String>,
    /// Arguments after the script, passed verbatim.
    pub args: Vec<String>,
    /// `None` when the script is executed directly (PM2's `none`).
    pub interpreter: Option<String>,
    pub interpreter_args: Vec<String>,
    pub cwd: PathBuf,
    pub instances: Instances,
    pub exec_mode: ExecMode,
    pub port: Option<u16>,
    /// The app's own environment after stage selection (`deploy.<stage>.env` <
    /// `env` < `env_<stage>`), values as strings.
    pub env: BTreeMap<String, String>,
    /// The CLI's environment when the app was started; the app's `env` wins over it.
    /// Only `--update-env` replaces it (PM2's immutable environment). Shared: the apps
    /// of one `fleet start` all carry the same one, and the agent keeps a single copy.
    pub inherited_env: Arc<BTreeMap<String, String>>,
    pub autorestart: bool,
    /// Kept from the config (PM2's `autostart`): false registers the app as `stopped`.
    pub autostart: bool,
    pub max_restarts: u32,
    pub min_uptime_ms: u64,
    pub restart_delay_ms: u64,
    pub exp_backoff_restart_delay_ms: Option<u64>,
    pub max_memory_restart_bytes: Option<u64>,
    pub cron_restart: Option<String>,
    /// An IANA time zone for `cron_restart` (`cron_timezone`); `None` is the host's.
    #[serde(default)]
    pub cron_timezone: Option<String>,
    pub kill_timeout_ms: u64,
    /// A validated signal name such as `SIGINT`.
    pub kill_signal: String,
    pub wait_ready: bool,
    /// PM2's `shutdown_with_message`: a stop sends `'shutdown'` over a Node app's IPC
    /// channel instead of `kill_signal` (SIGKILL after `kill_timeout` still follows).
    #[serde(default)]
    pub shutdown_with_message: bool,
    /// PM2's `pid_file`: the running process's pid is written here (with the instance
    /// number before `.pid` when the app has several), and removed when it exits.
    #[serde(default)]
    pub pid_file: Option<std::path::PathBuf>,
    /// `env_file`: `.env` files (absolute) the agent reads at each start, in order; their
    /// variables sit between the inherited environment and `env`.
    #[serde(default)]
    pub env_files: Vec<PathBuf>,
    /// PM2's `uid` (`user`): the user the app runs as, a name or a number. Only an agent
    /// running as root can switch; `None` is the agent's own user.
    #[serde(default)]
    pub user: Option<String>,
    /// PM2's `gid`: the app's group, a name or a number; `None` is the user's own group.
    #[serde(default)]
    pub group: Option<String>,
    pub listen_timeout_ms: u64,
    /// `watchdog = "10s"`: the app sends `WATCHDOG=1` to `NOTIFY_SOCKET` at least this
    /// often once ready (systemd's `WatchdogSec`), or it is restarted.
    #[serde(default)]
    pub watchdog_ms: Option<u64>,
    /// An HTTP check of each instance (`health_check = { path, interval, timeout }`).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// How the proxy (`exec_mode = "proxy"`) picks an instance (`balance`).
    #[serde(default)]
    pub balance: Balance,
    pub stop_exit_codes: Vec<i32>,
    pub watch: Vec<PathBuf>,
    pub ignore_watch: Vec<String>,
    /// A burst of changes within this long restarts once (`watch_delay`).
    #[serde(default = "default_watch_delay_ms")]
    pub watch_delay_ms: u64,
    pub logs: LogSpec,
    pub instance_var: String,
    pub increment_var: Option<String>,
    /// The config file the app came from, if any (for `describe` and config targets).
    pub source: Option<PathBuf>,
}

/// Log file settings as given, except that paths are absolute (a relative one is
/// resolved against the app's cwd, as in PM2); the agent derives the final paths
/// (PM2's naming) since they depend on its `FLEET_HOME` and on instance numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// `Some("/dev/null")` disables; `None` means the default `<home>/logs/<name>-out.log`.
    pub out_file: Option<String>,
    pub error_file: Option<String>,
    /// Combined file; `None` = disabled (PM2's default). `Some("")` is PM2's
    /// `log_file: true`: the default combined path `<home>/logs/<name>.log`.
    pub log_file: Option<String>,
    /// `None` = PM2's default: merged for a single instance, suffixed otherwise.
    pub merge_logs: Option<bool>,
    pub log_date_format: Option<String>,
    pub log_type: LogType,
    /// Rotation, built into the agent (PM2 needs the pm2-logrotate module).
    #[serde(default)]
    pub rotation: Rotation,
}

/// pm2-logrotate's defaults: 10 MB, 30 files kept, no gzip, and a daily rotation.
pub const DEFAULT_ROTATE_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_ROTATE_RETAIN: u32 = 30;
pub const DEFAULT_ROTATE_INTERVAL: &str = "0 0 * * *";

/// When a log file is renamed aside and a new one opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Rotate once a file grows past this many bytes (`max_size`); 0 disables.
    pub max_size_bytes: u64,
    /// Rotated files kept per log file (`retain`); older ones are deleted.
    pub retain: u32,
    /// Gzip rotated files (`compress`).
    pub compress: bool,
    /// A cron pattern for rotation by time (`rotate_interval`); `None` disables.
    pub interval: Option<String>,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            max_size_bytes: DEFAULT_ROTATE_MAX_SIZE,
            retain: DEFAULT_ROTATE_RETAIN,
            compress: false,
            interval: Some(DEFAULT_ROTATE_INTERVAL.to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    #[default]
    Raw,
    Json,
}

/// Defaults of `health_check`: a check a second, each allowed two seconds.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 2000;
/// Failed checks in a row after which a running instance is restarted
/// (`health_fail_count`).
pub const DEFAULT_HEALTH_FAIL_COUNT: u32 = 3;

fn default_health_fail_count() -> u32 {
    DEFAULT_HEALTH_FAIL_COUNT
}

/// `GET http://127.0.0.1:<instance port><path>` answering 2xx means ready (and, while
/// running, healthy: an unhealthy instance of a proxied app gets no new connections).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// After this many failed checks in a row a running instance is restarted (the
    /// first failure already takes it out of a proxy's rotation).
    #[serde(default = "default_health_fail_count")]
    pub fail_count: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    Fork,
    /// The agent's listening socket inherited by every instance.
    Cluster,
    /// The agent balances connections to each instance's own `PORT`.
    Proxy,
}

/// PM2's `instances`: a number, `max` (0 means the same), or negative (CPUs minus n).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    Count(u32),
    Max,
    /// CPUs minus this many, at least 1.
    MaxMinus(u32),
}

impl Instances {
    /// The number of instances on a host with `cpus` CPUs; never less than 1.
    pub fn resolve(self, cpus: u32) -> u32 {
        match self {
            Instances::Count(0) | Instances::Max => cpus.max(1),
            Instances::Count(n) => n,
            Instances::MaxMinus(n) => cpus.saturating_sub(n).max(1),
        }
    }
}

impl AppSpec {
    /// A spec with PM2's defaults for `script`, as `fleet start <script>` builds it
    /// before flags apply. `command` and `interpreter` are left for the caller
    /// (see `resolve_command`).
    pub fn with_defaults(name: String, script: String, cwd: PathBuf) -> AppSpec {
        AppSpec {
            name,
            namespace: DEFAULT_NAMESPACE.to_string(),
            script,
            command: Vec::new(),
            args: Vec::new(),
            interpreter: None,
            interpreter_args: Vec::new(),
            cwd,
            instances: Instances::Count(1),
            exec_mode: ExecMode::Fork,
            port: None,
            env: BTreeMap::new(),
            inherited_env: Arc::default(),
            autorestart: true,
            autostart: true,
            max_restarts: DEFAULT_MAX_RESTARTS,
            min_uptime_ms: DEFAULT_MIN_UPTIME_MS,
            restart_delay_ms: 0,
            exp_backoff_restart_delay_ms: None,
            max_memory_restart_bytes: None,
            cron_restart: None,
            cron_timezone: None,
            kill_timeout_ms: DEFAULT_KILL_TIMEOUT_MS,
            kill_signal: DEFAULT_KILL_SIGNAL.to_string(),
            wait_ready: false,
            shutdown_with_message: false,
            pid_file: None,
            env_files: Vec::new(),
            user: None,
            group: None,
            health_check: None,
            watchdog_ms: None,
            balance: Balance::RoundRobin,
            listen_timeout_ms: DEFAULT_LISTEN_TIMEOUT_MS,
            stop_exit_codes: Vec::new(),
            watch: Vec::new(),
            ignore_watch: Vec::new(),
            watch_delay_ms: DEFAULT_WATCH_DELAY_MS,
            logs: LogSpec::default(),
            instance_var: DEFAULT_INSTANCE_VAR.to_string(),
            increment_var: None,
            source: None,
        }
    }

    /// The environment an instance starts with: inherited, then the app's own, then
    /// `PORT`, the instance variables and `increment_var`.
    pub fn instance_env(
        &self,
        instance: u32,
        from_files: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = (*self.inherited_env).clone();
        env.extend(from_files);
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(port) = self.port {
            env.insert("PORT".to_string(), port.to_string());
        }
        env.insert(self.instance_var.clone(), instance.to_string());
        env.insert(PM2_INSTANCE_VAR.to_string(), instance.to_string());
        if let Some(var) = &self.increment_var {
            // PM2 starts from the app's value of the variable (0 when unset or not a number).
            let base: i64 = env.get(var).and_then(|v| v.parse().ok()).unwrap_or(0);
            env.insert(var.clone(), (base + i64::from(instance)).to_string());
        }
        if self
            .interpreter
            .as_deref()
            .is_some_and(|i| i.contains("python"))
        {
            // PM2 sets this so Python output reaches the log as it is written.
            env.entry("PYTHONUNBUFFERED".to_string())
                .or_insert_with(|| "1".to_string());
        }
        env
    }
}
