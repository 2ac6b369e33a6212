//! Talking to the local agent: finds `FLEET_HOME`, starts `fleet-agent` in the
//! background when it is not running (as `pm2` spawns its daemon), connects over
//! `agent.sock` and does the version handshake.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_proto::agent::v1::agent_service_client::AgentServiceClient;
use fleet_proto::ops;
use nix::fcntl::{Flock, FlockArg};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a freshly started agent may take to open its socket. Restoring apps
/// stops orphans of a killed agent first, which can take a kill timeout (1.6 s).
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
const AGENT_POLL_INTERVAL: Duration = Duration::from_millis(10);

pub type Client = AgentServiceClient<Channel>;

/// The agent's home: `FLEET_HOME`, else `~/.fleet`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("FLEET_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    Ok(std::env::home_dir()
        .context("cannot find the home directory\nhint: set FLEET_HOME")?
        .join(".fleet"))
}

/// Connects to the agent of `home`, starting it first when `start` is set.
pub async fn connect(home: &Path, start: bool) -> anyhow::Result<Option<Client>> {
    let socket = home.join("agent.sock");
    if let Ok(client) = try_connect(&socket).await {
        return handshake(client).await.map(Some);
    }
    if !start {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + AGENT_START_TIMEOUT;
    // Several first commands at once: one of them starts the agent, the others wait
    // for it, so one agent ever runs for a home (not one per command, the extras
    // waiting for the home's lock and exiting).
    let _starting = starting_lock(home, deadline).await?;
    if let Ok(client) = try_connect(&socket).await {
        return handshake(client).await.map(Some);
    }
    spawn_agent(home)?;
    loop {
        if let Ok(client) = try_connect(&socket).await {
            return handshake(client).await.map(Some);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the agent did not start within {}s\nhint: see {}",
                AGENT_START_TIMEOUT.as_secs(),
                home.join("agent.log").display()
            );
        }
        tokio::time::sleep(AGENT_POLL_INTERVAL).await;
    }
}

pub async fn try_connect(socket: &Path) -> anyhow::Result<Channel> {
    // Fail fast when nothing listens: connecting a unix socket needs no name lookup.
    std::os::unix::net::UnixStream::connect(socket)?;
    let socket = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://agent.sock")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// The handshake (`fleet_proto::ops`), and a warning when the agent is another
/// version than this CLI.
async fn handshake(channel: Channel) -> anyhow::Result<Client> {
    let (client, hello) =
        ops::handshake(channel, ops::ANY_MINOR)
            .await
            .map_err(|error| match error {
                ops::HandshakeError::Refused { code, message } => {
                    crate::status_error(tonic::Status::new(code, message))
                }
                other => anyhow::Error::new(crate::Failure::failed(other.to_string())),
            })?;
    if hello.agent_version != env!("CARGO_PKG_VERSION") {
        eprintln!(
            "warning: the running agent is {} and this CLI is {}\nhint: `fleet update` replaces it without restarting any app",
            hello.agent_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    Ok(client)
}

/// How long `fleet kill` waits for the agent process to end after it answered.
const AGENT_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until `pid` has exited (a zombie its new parent has not reaped yet counts).
pub async fn wait_exit(pid: i32) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + AGENT_EXIT_TIMEOUT;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        };
        if gone {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the agent (pid {pid}) did not exit within {}s",
                AGENT_EXIT_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(AGENT_POLL_INTERVAL).await;
    }
}

/// `fleet-agent` beside this executable first, then on `PATH` (the contract's order).
pub fn agent_binary() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        let beside = me.with_file_name("fleet-agent");
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from("fleet-agent")
}

/// `agent.starting`'s lock, held by the one command that starts the agent until the
/// agent serves; the others wait for it (polling, so the deadline holds).
async fn starting_lock(
    home: &Path,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Flock<std::fs::File>> {
    create_home(home)?;
    let path = home.join("agent.starting");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "another command has been starting the agent for {}s",
                        AGENT_START_TIMEOUT.as_secs()
                    );
                }
                file = returned;
                tokio::time::sleep(AGENT_POLL_INTERVAL).await;
            }
            Err((_, errno)) => bail!("cannot lock {}: {errno}", path.display()),
        }
    }
}

fn create_home(home: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("cannot create {}", home.display()))
}

fn spawn_agent(home: &Path) -> anyhow::Result<()> {
    create_home(home)?;
    // Errors before the agent's logging starts land in its log file too.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("agent.log"))
        .with_context(|| format!("cannot open {}", home.join("agent.log").display()))?;
    let binary = agent_binary();
    let mut command = std::process::Command::new(&binary);
    command
        .arg("--daemon")
        .arg("--home")
        .arg(home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}\nhint: install fleet-agent beside fleet or on PATH",
                binary.display()
            )
        })?;
    Ok(())
}
