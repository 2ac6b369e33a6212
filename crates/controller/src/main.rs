//! The `fleet-controller` binary: argument parsing and logging, then
//! `fleet_controller::serve`, or one of the offline token commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_controller::ControllerConfig;
use fleet_controller::config::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_JOIN_TOKEN_TTL, DEFAULT_LISTEN, DEFAULT_UNREACHABLE_AFTER,
};

#[derive(Parser)]
#[command(
    name = "fleet-controller",
    version,
    about = "fleet's controller: agents dial in over mTLS, the CLI commands a stage's hosts"
)]
struct Args {
    /// Address to serve agents and the CLI on (TLS).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Data directory: CA, server certificate, database. Default ~/.fleet-controller.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Another name or address for the server certificate (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// How often agents send heartbeats [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Silence after which a host counts as unreachable [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    unreachable_after: Option<Duration>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API tokens for the CLI (`FLEET_TOKEN`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a one-time token a host's agent trades for its certificate.
    JoinToken {
        host: String,
        /// How long the token stays valid, e.g. 30m [default: 1h].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new API token; only its hash is stored.
    Create,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // The contract's exit codes: 2 for bad usage, 1 for a failed operation.
            let usage = matches!(
                error.downcast_ref(),
                Some(fleet_controller::Error::Invalid(_))
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let data = match args.data {
        Some(data) => data,
        None => std::env::home_dir()
            .context("cannot find the home directory; pass --data")?
            .join(".fleet-controller"),
    };
    match args.command {
        Some(Command::Token {
            command: TokenCommand::Create,
        }) => {
            let (id, token) = fleet_controller::create_api_token(&data)?;
            eprintln!("created API token {id}; it is shown once, keep it in FLEET_TOKEN");
            println!("{token}");
            Ok(())
        }
        Some(Command::JoinToken { host, ttl }) => {
            let ttl = ttl.unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
            let (token, expires) = fleet_controller::create_join_token(&data, &host, ttl)?;
            let until = jiff::Timestamp::from_second((expires / 1000) as i64)
                .map(|at| at.to_string())
                .unwrap_or_default();
            eprintln!(
                "join token for {host}, valid once until {until}; on the host run: fleet-agent join <url> <token>"
            );
            println!("{token}");
            Ok(())
        }
        None => {
            init_logging();
            let mut config = ControllerConfig::new(data);
            config.sans = args.sans;
            config.heartbeat_interval = args.heartbeat.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
            config.unreachable_after = args.unreachable_after.unwrap_or(DEFAULT_UNREACHABLE_AFTER);
            // A listen address given by name belongs in the certificate too.
            if let Some((host, _port)) = args.listen.rsplit_once(':') {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() {
                    config.sans.push(host.to_owned());
                }
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let listener = tokio::net::TcpListener::bind(&args.listen)
                        .await
                        .with_context(|| format!("cannot listen on {}", args.listen))?;
                    fleet_controller::serve(config, listener, shutdown_signal()).await?;
                    Ok(())
                })
        }
    }
}

fn init_logging() {
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|level| level.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `5s`, `1h`, `500ms`, `1h30m` (jiff's friendly format).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|error| format!("{text:?} is not a duration like 15s, 1h or 500ms ({error})"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}
