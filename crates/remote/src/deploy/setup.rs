//! `fleet deploy <stage> setup`: on every host, idempotently, the hooks around it,
//! the directories, the `fleet-agent` and `fleet` beside this binary (each uploaded
//! only when its sha256 differs; `pm2` is a link to `fleet`, for PM2's hooks), the host joined to the controller once (when there is one) and
//! the agent started (a systemd unit where systemd runs, else a daemon).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fleet_proto::controller::v1 as cpb;
use fleet_proto::ops;

use super::Context;
use super::error::{DeployError, StepError};
use super::executor::{Host, Step};
use super::script;
use super::summary::{HostResult, HostSummary, Report};
use crate::stage::ControllerClient;

/// How long a join token made for `setup` lives: long enough for the slowest host.
const JOIN_TOKEN_TTL_SECS: u64 = 600;

/// The controller the hosts join: its client (one at a time), URL and CA.
struct Joiner {
    client: tokio::sync::Mutex<ControllerClient>,
    /// The controller that answered, which agents join.
    url: String,
    /// Every controller of the setting: an agent joined to any of them is left alone.
    urls: Vec<String>,
    ca: String,
}

/// A host's setup step failed.
struct Failure {
    step: &'static str,
    error: StepError,
}

fn at(step: &'static str) -> impl FnOnce(StepError) -> Failure {
    move |error| Failure { step, error }
}

impl Context {
    pub(super) async fn setup(&self) -> Result<Report, DeployError> {
        let started = Instant::now();
        let agent = Binary::read(&local_agent_binary()?)?;
        // Hooks that call `pm2` (a PM2 deploy section's) get fleet's, so they drive the
        // agent; other stages need no CLI on the hosts.
        let cli = match (self.stage.config.hooks_call_pm2(), local_cli_binary()) {
            (false, _) => None,
            (true, Some(path)) => Some(Binary::read(&path)?),
            (true, None) => {
                self.events.note(
                    "no `fleet` beside this binary: the hosts get no `pm2`, so hooks that call pm2 will not find it",
                );
                None
            }
        };
        let binaries = Binaries { agent, cli };
        let join = match &self.stage.controller {
            None => None,
            Some(controller) => {
                let Some(path) = &controller.ca else {
                    return Err(DeployError::Config(
                        "joining agents to the controller needs its CA: set FLEET_CA to the controller's ca.pem".to_string(),
                    ));
                };
                let ca = std::fs::read_to_string(path).map_err(|e| {
                    DeployError::Config(format!("cannot read FLEET_CA {}: {e}", path.display()))
                })?;
                // Agents join the controller that answered; they learn the others
                // sharing its store from it.
                let (client, url) = crate::stage::connect_controller_at(controller).await?;
                Some(Arc::new(Joiner {
                    client: tokio::sync::Mutex::new(client),
                    url,
                    urls: crate::stage::controller_urls(&controller.url)?,
                    ca,
                }))
            }
        };
        let results = futures::future::join_all(self.hosts.iter().map(|host| {
            let (join, binaries) = (join.clone(), &binaries);
            async move {
                let started = Instant::now();
                let result = self.setup_host(host, binaries, join).await;
                (host.name().to_string(), result, started.elapsed())
            }
        }))
        .await;
        let mut summaries = Vec::new();
        for (host, result, elapsed) in results {
            let (result, step, error) = match result {
                Ok(note) => {
                    self.events.done(&host, &note);
                    (HostResult::Ok, "done".to_string(), None)
                }
                Err(f) => {
                    let error = f.error.to_string();
                    self.events.failed(&host, f.step, &error);
                    (HostResult::Failed, f.step.to_string(), Some(error))
                }
            };
            summaries.push(HostSummary {
                host,
                result,
                step,
                error,
                release: None,
                previous: None,
                duration_ms: elapsed.as_millis() as u64,
                steps: Vec::new(),
            });
        }
        Ok(self
            .report("setup", None, None, summaries, false, started)
            .await)
    }

    /// One host; returns what was done, as a note.
    async fn setup_host(
        &self,
        host: &Host,
        binaries: &Binaries,
        join: Option<Arc<Joiner>>,
    ) -> Result<String, Failure> {
        let (bytes, sha) = (&binaries.agent.bytes, binaries.agent.sha.as_str());
        let config = &self.stage.config;
        let env = self.hook_env("", None);
        if let Some(command) = &config.pre_setup {
            self.events.step(host.name(), "pre-setup");
            let home = host.ssh.fleet_home.as_deref();
            let step = Step::hook(script::hook(&host.path, None, &env, home, command));
            host.hook(&step, &self.events)
                .await
                .map_err(at("pre-setup"))?;
        }
        self.events.step(host.name(), "directories");
        let step = Step::quick(script::setup_dirs(&host.path, &config.shared_dirs));
        host.run(&step).await.map_err(at("directories"))?;
        let home = self.host_home(host).await?;
        self.events.step(host.name(), "agent");
        let probe =
            (host.exec(&Step::quick(script::agent_probe(&home))).await).map_err(at("agent"))?;
        let installed = probe.fact("sha256").unwrap_or_default();
        let systemd = probe.fact("systemd").as_deref() == Some("yes");
        let root = probe.fact("uid").as_deref() == Some("0");
        let running = probe.fact("running");
        let mut notes = Vec::new();
        if installed != sha {
            self.events.step(host.name(), "upload agent");
            let step = Step::transfer(script::agent_install(&home), Some(bytes));
            host.run(&step).await.map_err(at("upload agent"))?;
            notes.push("agent installed".to_string());
        }
        if let Some(cli) = &binaries.cli {
            let installed = probe.fact("cli_sha256").unwrap_or_default();
            if installed != cli.sha || probe.fact("pm2").is_none() {
                self.events.step(host.name(), "upload fleet");
                let step = Step::transfer(script::cli_install(&home), Some(&cli.bytes));
                host.run(&step).await.map_err(at("upload fleet"))?;
                notes.push(format!("fleet and pm2 installed in {home}/bin"));
            }
        }
        if let Some(join) = join {
            self.join(host, &home, &join, running.is_some(), &mut notes)
                .await
                .map_err(at("join controller"))?;
        }
        match running {
            None => {
                self.events.step(host.name(), "start agent");
                let supervision = match (systemd, root) {
                    (true, true) => script::Supervision::SystemdSystem,
                    (true, false) => script::Supervision::SystemdUser,
                    (false, _) => script::Supervision::Daemon,
                };
                let script = script::agent_start(&home, supervision)
                    .map_err(|e| at("start agent")(StepError::Host(e)))?;
                let step = Step::quick(script);
                host.run(&step).await.map_err(at("start agent"))?;
                notes.push(if systemd {
                    "agent started (systemd unit fleet-agent.service)".to_string()
                } else {
                    "agent started".to_string()
                });
            }
            Some(running) => {
                let (pid, exe) = running.split_once(' ').unwrap_or((&running, ""));
                if installed != sha && exe.starts_with(&format!("{home}/bin/fleet-agent")) {
                    self.events.step(host.name(), "update agent");
                    notes.push(self.update_agent(host, &home, pid).await?);
                } else {
                    notes.push(format!("agent running (pid {pid})"));
                }
            }
        }
        if let Some(command) = &config.post_setup {
            self.events.step(host.name(), "post-setup");
            let home = host.ssh.fleet_home.as_deref();
            let step = Step::hook(script::hook(&host.path, None, &env, home, command));
            host.hook(&step, &self.events)
                .await
                .map_err(at("post-setup"))?;
        }
        Ok(notes.join(", "))
    }

    /// Replaces the host's running agent with the binary just installed, keeping its
    /// apps (`fleet update`); an agent too old for that keeps running as it is.
    async fn update_agent(&self, host: &Host, home: &str, pid: &str) -> Result<String, Failure> {
        let connect = || async {
            (host.ssh.pool)
                .agent_channel(host.name(), host.ssh.fleet_home.as_deref())
                .await
                .map_err(|e| e.to_string())
        };
        match ops::update_agent(connect, &format!("{home}/bin/fleet-agent")).await {
            Ok(updated) => Ok(format!(
                "agent updated in place to {} (pid {} kept, no app restarted)",
                updated.version, updated.after.agent_pid
            )),
            Err(ops::UpdateError::TooOld(version)) => Ok(format!(
                "the running agent (pid {pid}, {version}) predates `fleet update` and keeps its old version until restarted"
            )),
            Err(error) => Err(at("update agent")(StepError::Agent(error.to_string()))),
        }
    }

    /// The host's FLEET_HOME: the stage's `fleet_home`, else asked of the host.
    async fn host_home(&self, host: &Host) -> Result<String, Failure> {
        let home = match &host.ssh.fleet_home {
            Some(home) => home.clone(),
            None => (host.pool().fleet_home(host.name()).await)
                .map_err(|e| at("agent")(StepError::Ssh(e)))?,
        };
        if !home.starts_with('/') || home.contains(['\n', '\'']) {
            return Err(at("agent")(StepError::Host(format!(
                "FLEET_HOME {home:?} on the host is not an absolute path"
            ))));
        }
        Ok(home)
    }

    /// Joins the host's agent to the controller, unless it already joined this one.
    async fn join(
        &self,
        host: &Host,
        home: &str,
        join: &Joiner,
        running: bool,
        notes: &mut Vec<String>,
    ) -> Result<(), StepError> {
        self.events.step(host.name(), "join controller");
        let joined = host
            .exec(&Step::quick(script::agent_controller_url(home)))
            .await?;
        let joined = String::from_utf8_lossy(&joined.raw.stdout);
        if join.urls.iter().any(|url| url == joined.trim()) {
            return Ok(());
        }
        let token = {
            let mut client = join.client.lock().await;
            client
                .create_join_token(cpb::CreateJoinTokenRequest {
                    host: host.name().to_string(),
                    ttl_seconds: JOIN_TOKEN_TTL_SECS,
                })
                .await
                .map_err(|s| StepError::Controller(s.message().to_string()))?
                .into_inner()
                .token
        };
        let step = Step::quick(script::agent_join(
            home,
            &join.url,
            &token,
            host.name(),
            &join.ca,
        ));
        host.run(&step).await?;
        notes.push("joined the controller".to_string());
        if running {
            notes.push(
                "the running agent connects to the controller from its next start".to_string(),
            );
        }
        Ok(())
    }
}

/// A binary `setup` uploads, with its sha256 (uploaded only when the host's differs).
struct Binary {
    bytes: Vec<u8>,
    sha: String,
}

impl Binary {
    fn read(path: &std::path::Path) -> Result<Binary, DeployError> {
        let bytes = std::fs::read(path)
            .map_err(|e| DeployError::Local(format!("cannot read {}: {e}", path.display())))?;
        let sha = sha256_hex(&bytes);
        Ok(Binary { bytes, sha })
    }
}

/// The agent, and the CLI that hooks reach as `pm2`.
struct Binaries {
    agent: Binary,
    cli: Option<Binary>,
}

/// The `fleet` CLI uploaded beside the agent: `FLEET_CLI_BINARY`, else the one next
/// to this executable.
fn local_cli_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_CLI_BINARY") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let cli = exe.with_file_name("fleet");
    cli.is_file().then_some(cli)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    (sha2::Sha256::digest(bytes).iter())
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `fleet-agent` uploaded by `setup`: `FLEET_AGENT_BINARY`, else the one next to
/// this executable (they are built and shipped together, so versions match).
fn local_agent_binary() -> Result<PathBuf, DeployError> {
    if let Some(path) = std::env::var_os("FLEET_AGENT_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| DeployError::Local(format!("cannot find the fleet binary: {e}")))?;
    let agent = exe.with_file_name("fleet-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(DeployError::Local(format!(
            "{} is missing: setup uploads the fleet-agent that sits next to fleet\nhint: install both binaries together, or set FLEET_AGENT_BINARY",
            agent.display()
        )))
    }
}
