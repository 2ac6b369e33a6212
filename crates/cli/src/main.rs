//! The `fleet` command. Parses arguments with clap and dispatches to `commands`;
//! maps every failure to the contract's exit codes: 1 when an operation failed,
//! 2 for bad usage or bad configuration.

mod client;
mod commands;
mod deploy;
mod deploy_controller;
mod fleet;
mod init;
mod monit;
mod output;
mod pm2;
mod progress;
mod startup;
mod trust;
mod update;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet",
    version,
    about = "Process and deploy manager: PM2's commands, for one host or twenty",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Learn the host keys of hosts never seen before (changed keys are still refused).
    #[arg(long, global = true)]
    accept_new_host_keys: bool,
    /// Accept, for this run only, that HOST (as the stage names it, or its HostName)
    /// offers another host key than the one known (repeatable). Verify the new
    /// fingerprint first: otherwise a changed key is always refused.
    #[arg(long = "accept-changed-host-key", value_name = "HOST", global = true)]
    accept_changed_host_keys: Vec<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start a script, a command, a config file, or (smart start) existing apps.
    Start(StartArgs),
    /// Stop apps: `kill_signal` to the whole process group, SIGKILL after `kill_timeout`.
    Stop(TargetArgs),
    /// Restart apps (counted in restarts).
    Restart(RestartArgs),
    /// Zero-downtime reload: each instance is replaced once its successor is ready.
    /// Fork-mode apps without a port are restarted, as PM2 does.
    Reload(ReloadArgs),
    /// Set an app's number of instances: `4`, `+2` or `-1`.
    Scale(ScaleArgs),
    /// Stop apps and remove them from the list.
    #[command(alias = "del")]
    Delete(TargetArgs),
    /// List every instance.
    #[command(visible_alias = "ls", alias = "l", alias = "ps")]
    List(ListArgs),
    /// Without a stage, `list`; with one, every app on every host of the stage.
    Status(StatusArgs),
    /// Show everything about the selected instances.
    #[command(alias = "desc", alias = "info", alias = "show")]
    Describe(DescribeArgs),
    /// Zero the restart counters.
    Reset(TargetArgs),
    /// Send a signal (`SIGUSR2`, `USR2` or a number) to the apps' main processes.
    SendSignal(SignalArgs),
    /// Save the process list to FLEET_HOME/dump.json (the previous one to dump.json.bak).
    #[command(alias = "dump")]
    Save(SaveArgs),
    /// Start the apps of the saved list that are not running.
    Resurrect,
    /// Stop and forget every app, then stop the agent (does not save).
    Kill,
    /// Check the agent answers (starts it when it is not running).
    Ping,
    /// Live dashboard: processes, CPU and memory, the selected app's log; with a
    /// stage, every host of it (unreachable ones marked).
    Monit(MonitArgs),
    /// Show the last lines of apps' logs, then (with -f) follow them live.
    #[command(alias = "log")]
    Logs(LogsArgs),
    /// Empty the log files of apps (all apps and the agent's log without a target).
    Flush(FlushArgs),
    /// Reopen every log file (after an external tool moved or deleted them).
    ReloadLogs,
    /// Send a message to Node apps' `process.on('message')` (PM2's
    /// `sendDataToProcessId`): JSON, or else the text as a string.
    Send(SendArgs),
    /// Install a systemd unit for this FLEET_HOME's agent: at boot it brings back what
    /// `fleet save` saved (PM2's `startup`). `--print` only shows it.
    Startup(StartupArgs),
    /// Remove the unit `fleet startup` installed (the running agent keeps running).
    Unstartup(UnstartupArgs),
    /// Replace the running agent with the fleet-agent beside fleet (or `--agent`),
    /// keeping every app running: same pids, sockets, log pipes and timers.
    Update(UpdateArgs),
    /// Write a commented fleet.toml for the apps found here (PM2's `ecosystem`).
    #[command(alias = "ecosystem")]
    Init(InitArgs),
    /// Install a `pm2` command that runs fleet (a symlink), for the PM2 command lines
    /// in deploy hooks, Dockerfiles and scripts.
    InstallPm2(InstallPm2Args),
    /// The process list in PM2's `jlist` JSON shape, for scripts written for PM2.
    #[command(hide = true)]
    Jlist(JlistArgs),
    /// Ship releases over SSH: `fleet deploy <stage> [setup|update|revert [n]|list|curr|prev|exec <cmd>|unlock]`.
    Deploy(DeployArgs),
    /// The controller: `fleet controller trust [URL]` pins its CA after you confirm
    /// the fingerprint.
    Controller(ControllerArgs),
}

#[derive(Args)]
pub struct ControllerArgs {
    #[command(subcommand)]
    pub command: ControllerCommand,
}

#[derive(clap::Subcommand)]
pub enum ControllerCommand {
    /// Show the CA the controller at URL (default FLEET_CONTROLLER) presents and pin it
    /// once confirmed: compare with `openssl x509 -noout -fingerprint -sha256 -in
    /// ca.pem` on the controller's machine. Later commands verify the controller
    /// against it (FLEET_CA still wins).
    Trust {
        url: Option<String>,
        /// The expected SHA-256 fingerprint (AB:CD:...), to confirm without a prompt.
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
    },
}

#[derive(Args)]
pub struct StartupArgs {
    /// The init system: `systemd` (the only one; others print the unit to adapt).
    pub platform: Option<String>,
    /// A user unit (~/.config/systemd/user) instead of a system unit.
    #[arg(long)]
    pub user: bool,
    /// Print the unit and where it would go; install nothing.
    #[arg(long)]
    pub print: bool,
    /// The system unit's `User=` (default: SUDO_USER under sudo, else you).
    #[arg(long = "unit-user", value_name = "USER")]
    pub unit_user: Option<String>,
}

#[derive(Args)]
pub struct UnstartupArgs {
    /// The user unit instead of the system unit.
    #[arg(long)]
    pub user: bool,
    #[arg(long = "unit-user", value_name = "USER")]
    pub unit_user: Option<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// The new fleet-agent binary (default: the one beside fleet, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    /// Replace an existing fleet.toml.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct InstallPm2Args {
    /// Where to put `pm2` (default: beside the fleet binary).
    pub dir: Option<std::path::PathBuf>,
    /// Replace an existing `pm2` (PM2's own) there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct JlistArgs {
    /// Indented, as `pm2 prettylist` prints it.
    #[arg(long)]
    pub pretty: bool,
}

#[derive(Args)]
pub struct DeployArgs {
    /// A stage of fleet.toml (`[deploy.<stage>]`) or of an ecosystem file's `deploy`.
    /// PM2's form with the config file first also works.
    pub stage: String,
    /// `setup`, `update` (the default), `revert [n]`, `list`, `curr`, `prev`,
    /// `exec <cmd>` (quote the command, or put it after `--`), `unlock`; with a
    /// controller, `attach [id]`, `cancel`, `history`.
    pub action: Vec<String>,
    /// Deploy this branch, tag or commit instead of the stage's `ref`.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Print the summary as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Leave hosts that were switched on the new release when others fail.
    #[arg(long)]
    pub no_rollback: bool,
    /// Why: kept in each host's lock and releases.log.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct SendArgs {
    /// `all`, an id, a name, a namespace or `/regex/`.
    pub target: String,
    /// The message: JSON (`'{"type":"process:msg","data":{}}'`), or any other text,
    /// sent as a string.
    pub message: String,
    /// Also print what the instances send back within this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub wait: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    /// `all`, an id, a name, a namespace or `/regex/` (default: every app).
    pub targets: Vec<String>,
    /// Lines of history per instance.
    #[arg(long, default_value_t = 15)]
    pub lines: u32,
    /// Keep following new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// One JSON object per line: {"ts", "host", "app", "instance", "stream", "line"}.
    #[arg(long)]
    pub json: bool,
    /// Lines only, without the app prefix.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Only standard output.
    #[arg(long, conflicts_with = "err")]
    pub out: bool,
    /// Only standard error.
    #[arg(long)]
    pub err: bool,
    /// Only lines from the last DURATION (`30s`, `10m`, `2h`).
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Args)]
pub struct FlushArgs {
    pub targets: Vec<String>,
}

#[derive(Args)]
pub struct StartArgs {
    /// Script, command string, config file, or existing app name/id/namespace/`/regex/`/`all`.
    /// None: the config file here (fleet.toml, then PM2's ecosystem names), as `pm2 start`.
    pub targets: Vec<String>,
    /// App name (default: the script's name without its extension).
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// Instances: a number, `max` (one per CPU) or `-N` (CPUs minus N).
    #[arg(short = 'i', long = "instances", allow_hyphen_values = true)]
    pub instances: Option<String>,
    /// Use env_<STAGE> from the config file.
    #[arg(long = "env")]
    pub env_stage: Option<String>,
    /// Only these apps of a config file (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Replace the apps' inherited environment with this shell's.
    #[arg(short = 'a', long)]
    pub update_env: bool,
    /// Start the script even if it already runs under the same name.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Never restart the app when it exits.
    #[arg(long)]
    pub no_autorestart: bool,
    /// Interpreter (`none` executes the script directly).
    #[arg(long)]
    pub interpreter: Option<String>,
    /// Arguments for the app, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Args)]
pub struct TargetArgs {
    /// `all`, an id, a name, a namespace, `/regex/` or a config file.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Only these apps of a config file (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Args)]
pub struct RestartArgs {
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[arg(long = "env")]
    pub env_stage: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Replace the apps' inherited environment with this shell's.
    #[arg(short = 'a', long)]
    pub update_env: bool,
}

#[derive(Args)]
pub struct ReloadArgs {
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[arg(long = "env")]
    pub env_stage: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Replace the apps' inherited environment with this shell's.
    #[arg(short = 'a', long)]
    pub update_env: bool,
    /// Instances replaced at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
}

#[derive(Args)]
pub struct ScaleArgs {
    pub app: String,
    /// `N`, `+N` or `-N`.
    #[arg(allow_hyphen_values = true)]
    pub count: String,
}

#[derive(Args)]
pub struct MonitArgs {
    /// A stage of fleet.toml (`[deploy.<stage>]`): watch every host of it.
    pub stage: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A stage of fleet.toml (`[deploy.<stage>]`).
    pub stage: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print a JSON array, one object per instance.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DescribeArgs {
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SignalArgs {
    pub signal: String,
    #[arg(required = true)]
    pub targets: Vec<String>,
}

#[derive(Args)]
pub struct SaveArgs {
    /// Save even an empty list.
    #[arg(long)]
    pub force: bool,
}

/// A failure with its exit code: 1 the operation failed, 2 bad usage or config.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        match error.downcast::<Failure>() {
            Ok(failure) => failure,
            Err(error) => Failure::failed(format!("{error:#}")),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The one mapping from the agent's status codes to exit codes.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::InvalidArgument => 2,
        _ => 1,
    };
    let message = match status.code() {
        tonic::Code::Unavailable => format!(
            "the agent is not reachable: {}\nhint: `fleet ping` starts it",
            status.message()
        ),
        _ => status.message().to_string(),
    };
    anyhow::Error::new(Failure { code, message })
}

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if pm2::invoked_as_pm2(argv.first().map(|a| a.as_os_str())) {
        let words: Option<Vec<String>> = argv[1..]
            .iter()
            .map(|a| a.to_str().map(String::from))
            .collect();
        let translated = words
            .ok_or_else(|| "pm2: arguments must be UTF-8".to_string())
            .and_then(|words| pm2::translate(&words));
        match translated {
            Ok(args) => {
                argv = std::iter::once("fleet".into())
                    .chain(args.into_iter().map(Into::into))
                    .collect()
            }
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
    }
    let cli = Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // One crypto backend for TLS to the controller.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let choices = fleet_remote::ssh::SshChoices {
        accept_new_host_keys: cli.accept_new_host_keys,
        accept_changed_host_keys: cli.accept_changed_host_keys,
        print_warnings: true,
        ..Default::default()
    };
    match runtime.block_on(commands::run(cli.command, choices)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
