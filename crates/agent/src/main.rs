//! The `fleet-agent` binary: argument parsing, detaching from the terminal, logging
//! to `FLEET_HOME/agent.log`, then `fleet_agent::daemon::run`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fleet_agent::logs::{LogHub, SharedFile};
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
    /// The first start after a reboot brings back what `fleet save` saved (the systemd
    /// unit `fleet startup` writes passes it); otherwise what ran before.
    #[arg(long)]
    resurrect: bool,
    /// Take over from a previous image of this agent (`fleet update`): the descriptor
    /// of its handoff document.
    #[arg(long, hide = true, value_name = "FD")]
    handoff: Option<i32>,
    /// Print the handoff formats this binary reads, for `fleet update`'s check.
    #[arg(long, hide = true)]
    handoff_check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Enroll this agent with a controller using a one-time join token; the agent
    /// connects to it from its next start on.
    ///
    /// The join token is read from `--token-file` (`-`: stdin), else from
    /// `FLEET_JOIN_TOKEN`, else from stdin (asked for, unechoed, on a terminal); never
    /// from the command line, where every local user could read it.
    Join {
        /// The controller, e.g. https://controller.example:7443
        url: String,
        /// Refused: a token on the command line is visible in /proc/PID/cmdline.
        #[arg(hide = true)]
        token: Option<String>,
        /// A file holding the join token (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The name this host has in the fleet (default: its hostname).
        #[arg(long)]
        host: Option<String>,
        /// The controller's CA certificate (its `<data>/ca.pem`).
        #[arg(long, env = "FLEET_CA")]
        ca: PathBuf,
        /// This host joined before: replace its certificate (the old one stops working).
        #[arg(long)]
        rejoin: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.handoff_check {
        println!("{}", fleet_agent::handoff::check_answer());
        return Ok(());
    }
    // First, before anything opens a descriptor: what systemd kept for this agent.
    let stored = fleet_agent::fdstore::Received::take();
    let root = match args.home {
        Some(home) => home,
        None => std::env::home_dir()
            .context("cannot find the home directory; set FLEET_HOME")?
            .join(".fleet"),
    };
    let home = Home::new(root);
    if let Some(Command::Join {
        url,
        token,
        token_file,
        host,
        ca,
        rejoin,
    }) = args.command
    {
        fleet_proto::ops::check_controller_url(&url).map_err(anyhow::Error::msg)?;
        if token.is_some() {
            anyhow::bail!(
                "a join token on the command line is visible to every local user (ps, /proc/PID/cmdline)\nhint: give it on stdin (`fleet-agent join {url} < token`), with --token-file FILE, or in FLEET_JOIN_TOKEN"
            );
        }
        let token = fleet_agent::link::read_join_token(token_file.as_deref())?;
        let host = match host {
            Some(host) => host,
            None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        };
        return runtime()?.block_on(async move {
            home.create()?;
            fleet_agent::link::join(&home, &url, &token, &host, &ca, rejoin).await?;
            println!("joined {url} as {host}; the agent connects from its next start\nhint: `fleet kill` then any command restarts the agent");
            Ok(())
        });
    }
    if args.daemon {
        // A new session: closing the terminal that ran `fleet` must not reach the agent.
        let _ = nix::unistd::setsid();
    }
    let taking_over = match args.handoff {
        Some(fd) => Some(receive(fd, &home)?),
        None => None,
    };
    runtime()?.block_on(async move {
        let (bound, start) = match taking_over {
            Some(mut take_over) => match daemon::adopt(&mut take_over) {
                Ok(bound) => (bound, daemon::Start::TakeOver(Box::new(take_over))),
                Err(error) => {
                    let refusal = fleet_agent::handoff::Refusal::of(
                        &take_over.document,
                        format!("cannot take over: {error:#}"),
                    );
                    anyhow::bail!(refusal.hand_back());
                }
            },
            None => (
                daemon::bind(&home)?,
                daemon::Start::Fresh {
                    resurrect: args.resurrect,
                    stored,
                },
            ),
        };
        let hub = LogHub::new();
        init_logging(&home, &hub, args.daemon)?;
        daemon::run(home, bound, hub, shutdown_signal(), start).await
    })
}

/// The previous image's document, checked; a document this binary will not take is
/// handed back to the previous binary (this call then does not return).
fn receive(fd: i32, home: &Home) -> anyhow::Result<daemon::TakeOver> {
    use fleet_agent::handoff::Refusal;
    let (document, fds) =
        fleet_agent::handoff::receive(fd).map_err(|r| anyhow::anyhow!(r.hand_back()))?;
    if document.home != home.root {
        let reason = format!(
            "this agent was started for {}, the handoff is for {}",
            home.root.display(),
            document.home.display()
        );
        anyhow::bail!(Refusal::of(&document, reason).hand_back());
    }
    Ok(daemon::TakeOver { document, fds })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers are plenty for a supervisor and keep the agent's footprint small.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The agent's own log goes to `FLEET_HOME/agent.log`, through the same rotating
/// writer as app logs (PM2's pm2.log is only rotated by the logrotate module).
fn init_logging(home: &Home, hub: &LogHub, daemon: bool) -> anyhow::Result<()> {
    let level = std::env::var("FLEET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    if daemon {
        let file = hub.file(&home.agent_log(), &fleet_config::Rotation::default())?;
        builder.with_ansi(false).with_writer(AgentLog(file)).init();
    } else {
        builder.init();
    }
    Ok(())
}

/// A `MakeWriter` over the shared, rotating agent log file; each event is one write.
struct AgentLog(SharedFile);

struct AgentLogWriter(SharedFile);

impl std::io::Write for AgentLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("agent log lock poisoned"))?
            .write(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AgentLog {
    type Writer = AgentLogWriter;

    fn make_writer(&'a self) -> AgentLogWriter {
        AgentLogWriter(self.0.clone())
    }
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
