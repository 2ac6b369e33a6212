//! The `fleet-agent` binary: argument parsing, detaching from the terminal, logging
//! to `FLEET_HOME/agent.log`, then `fleet_agent::daemon::run`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fleet_agent::{daemon, store::Home};

#[derive(Parser)]
#[command(
    name = "fleet-agent",
    version,
    about = "fleet's host agent: supervises apps and serves agent.sock"
)]
struct Args {
    /// The agent's home: socket, state, dump and logs.
    #[arg(long, env = "FLEET_HOME")]
    home: Option<PathBuf>,
    /// Start a new session (detach from the terminal) and log to FLEET_HOME/agent.log.
    /// The CLI starts the agent this way.
    #[arg(long)]
    daemon: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = match args.home {
        Some(home) => home,
        None => std::env::home_dir()
            .context("cannot find the home directory; set FLEET_HOME")?
            .join(".fleet"),
    };
    let home = Home::new(root);
    if args.daemon {
        // A new session: closing the terminal that ran `fleet` must not reach the agent.
        let _ = nix::unistd::setsid();
    }
    runtime()?.block_on(async move {
        let (_lock, listener) = daemon::bind(&home)?;
        init_logging(&home, args.daemon)?;
        daemon::run(home, listener, shutdown_signal()).await
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers are plenty for a supervisor and keep the agent's footprint small.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn init_logging(home: &Home, daemon: bool) -> anyhow::Result<()> {
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    if daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.agent_log())?;
        builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Resolves on SIGTERM, SIGINT or SIGQUIT. SIGHUP is ignored, as PM2's daemon does.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    let mut quit = signal(SignalKind::quit()).expect("install a SIGQUIT handler");
    let mut hup = signal(SignalKind::hangup()).expect("install a SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = quit.recv() => return,
            _ = hup.recv() => continue,
        }
    }
}
