//! `fleet-runtime <config|script> [options] [-- args]`: a container's entry point, as
//! PM2's `pm2-runtime` (see `fleet_agent::runtime` for what it does and its exit codes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use fleet_agent::logs::LogHub;
use fleet_agent::runtime::{self, Output};
use fleet_agent::{daemon, store::Home};

#[derive(Parser)]
#[command(
    name = "fleet-runtime",
    version,
    about = "Run apps in the foreground as a container's entry point (PM2's pm2-runtime)"
)]
struct Args {
    /// A config file (fleet.toml, ecosystem.config.js, .json, .yaml) or a script.
    target: String,
    /// Use env_<STAGE> from the config file.
    #[arg(long = "env")]
    env_stage: Option<String>,
    /// Only these apps of a config file (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A script's app name (default: the script's name).
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// A script's instances: a number, `max` or `-N`.
    #[arg(short = 'i', long, allow_hyphen_values = true)]
    instances: Option<String>,
    /// A script's interpreter (`none` executes it directly).
    #[arg(long)]
    interpreter: Option<String>,
    /// Print app output lines bare, without the `app:instance | ` prefix.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    /// Print app output as JSON lines.
    #[arg(long)]
    json: bool,
    /// The runtime's home (socket, state, logs): FLEET_HOME, else ~/.fleet.
    #[arg(long, env = "FLEET_HOME")]
    home: Option<PathBuf>,
    /// A script's arguments.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("fleet-runtime: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<u8, String> {
    let root = args.home.clone().unwrap_or_else(|| {
        std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".fleet")
    });
    let home = Home::new(root);
    let apps = apps(&args)?;
    let output = match (args.raw, args.json) {
        (true, _) => Output::Raw,
        (_, true) => Output::Json,
        _ => Output::Prefixed,
    };
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let code = runtime.block_on(async move {
        let (_lock, listener) = daemon::bind(&home).map_err(|e| format!("{e:#}"))?;
        runtime::run(home, listener, LogHub::new(), apps, output)
            .await
            .map_err(|e| format!("{e:#}"))
    })?;
    Ok(u8::try_from(code).unwrap_or(1))
}

/// The apps of the config file, or the one script.
fn apps(args: &Args) -> Result<Vec<fleet_config::AppSpec>, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !fleet_agent::sd_notify::SERVICE_VARIABLES.contains(&k.as_str()))
        .filter(|(k, _)| fleet_config::inheritable(k))
        .collect();
    let options = fleet_config::LoadOptions {
        env_stage: args.env_stage.clone(),
        only: args.only.clone(),
        inherited_env: Arc::new(env),
        cwd,
    };
    let target = std::path::Path::new(&args.target);
    if fleet_config::is_config_file(target) && target.is_file() {
        let file = fleet_config::load(target, &options).map_err(|e| e.to_string())?;
        for warning in &file.warnings {
            eprintln!("fleet-runtime: warning: {warning}");
        }
        if file.apps.is_empty() {
            return Err(format!("{}: no app to run", target.display()));
        }
        return Ok(file.apps);
    }
    let script = fleet_config::ScriptOptions {
        name: args.name.clone(),
        interpreter: args.interpreter.clone(),
        args: args.args.clone(),
        instances: args.instances.clone(),
        namespace: None,
        no_autorestart: false,
    };
    let path = std::env::var_os("PATH");
    fleet_config::script_app(&args.target, &script, &options, path.as_deref())
        .map(|app| vec![app])
        .map_err(|e| e.to_string())
}
