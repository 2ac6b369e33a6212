//! The one place a deploy touches a host: a `Step` (a script from `script`, its
//! timeout, its stdin) run over the host's SSH connection, and the host's agent
//! reached over the same connection. Steps come back as facts (`fleet:key=value`
//! lines) and output, or a typed `StepError`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::agent::v1 as apb;
use fleet_proto::agent::v1::agent_service_client::AgentServiceClient;
use fleet_proto::ops;
use tonic::transport::Channel;

use super::error::StepError;
use super::event::Events;
use super::script::{self, RemotePath};
use crate::ssh::{ExecOutput, Pool};
use crate::stage::SshHost;

/// Quick steps (lock, switch, record).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Transfers and clones.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Hooks (builds, migrations).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long every instance has to be online after the reload.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// One thing run on a host.
pub struct Step<'a> {
    pub script: String,
    pub timeout: Duration,
    /// The command's stdin (an archive for `tar -x`).
    pub input: Option<&'a [u8]>,
}

impl Step<'_> {
    /// A quick step (lock, switch, record, unlock).
    pub fn quick(script: String) -> Step<'static> {
        Step {
            script,
            timeout: STEP_TIMEOUT,
            input: None,
        }
    }

    /// A hook or a user's command: may build or migrate for a long time.
    pub fn hook(script: String) -> Step<'static> {
        Step {
            script,
            timeout: HOOK_TIMEOUT,
            input: None,
        }
    }

    /// A transfer, with the archive on stdin when there is one.
    pub fn transfer(script: String, input: Option<&[u8]>) -> Step<'_> {
        Step {
            script,
            timeout: TRANSFER_TIMEOUT,
            input,
        }
    }
}

/// What a step printed: its facts and the rest.
pub struct StepOutput {
    pub facts: Vec<(String, String)>,
    pub raw: ExecOutput,
}

impl StepOutput {
    fn new(raw: ExecOutput) -> StepOutput {
        let (facts, _) = script::facts(&String::from_utf8_lossy(&raw.stdout));
        StepOutput { facts, raw }
    }

    /// The first non-empty value of `key`.
    pub fn fact(&self, key: &str) -> Option<String> {
        fact(&self.facts, key)
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.facts
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The first non-empty value of `key` among `facts`.
pub fn fact(facts: &[(String, String)], key: &str) -> Option<String> {
    facts
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// One host of the stage and how to reach it.
pub struct Host {
    pub ssh: SshHost,
    pub path: RemotePath,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.ssh.name
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.ssh.pool
    }

    /// Runs `step`, whatever its exit status.
    pub async fn exec(&self, step: &Step<'_>) -> Result<StepOutput, StepError> {
        let pool = &self.ssh.pool;
        let output = match step.input {
            Some(input) => {
                pool.exec_with_input(self.name(), &step.script, input, step.timeout)
                    .await
            }
            None => pool.exec(self.name(), &step.script, step.timeout).await,
        }
        .map_err(StepError::Ssh)?;
        Ok(StepOutput::new(output))
    }

    /// Runs `step`; a non-zero exit is an error.
    pub async fn run(&self, step: &Step<'_>) -> Result<StepOutput, StepError> {
        let output = self.exec(step).await?;
        if output.raw.success() {
            Ok(output)
        } else {
            Err(StepError::exit(&output.raw))
        }
    }

    /// Runs a hook, its output shown line by line as the host's.
    pub async fn hook(&self, step: &Step<'_>, events: &Events) -> Result<(), StepError> {
        let output = self.exec(step).await?;
        for stream in [&output.raw.stdout, &output.raw.stderr] {
            let text = String::from_utf8_lossy(stream);
            let (_, rest) = script::facts(&text);
            for line in rest.lines() {
                events.output(self.name(), line);
            }
        }
        if output.raw.success() {
            Ok(())
        } else {
            Err(StepError::exit(&output.raw))
        }
    }

    /// The host's agent, new enough to load a release's config.
    pub async fn agent(&self) -> Result<AgentServiceClient<Channel>, StepError> {
        let channel = self
            .ssh
            .pool
            .agent_channel(self.name(), self.ssh.fleet_home.as_deref())
            .await
            .map_err(StepError::Ssh)?;
        let (client, _) = ops::handshake(channel, ops::RELEASE_CONFIG)
            .await
            .map_err(|e| StepError::Agent(e.to_string()))?;
        Ok(client)
    }

    /// Has the host's agent reload the apps of `config_path` (a file on the host, its
    /// relative paths starting at `config_cwd`, the release's root), readiness-gated; then waits until every instance of them is online
    /// (`on_health` is called when that wait starts). The error names the step.
    pub async fn reload_release(
        &self,
        config_path: String,
        config_cwd: String,
        stage: &str,
        on_health: impl FnOnce(),
    ) -> Result<(), (&'static str, StepError)> {
        let timeout = ops::RELOAD_TIMEOUT;
        let reloaded = tokio::time::timeout(timeout, async {
            let mut agent = self.agent().await?;
            let response = loop {
                let request = apb::ReloadRequest {
                    config_path: config_path.clone(),
                    config_cwd: config_cwd.clone(),
                    env_stage: stage.to_string(),
                    ..ops::reload_request(Vec::new())
                };
                match agent.reload(request).await {
                    Ok(response) => break response.into_inner(),
                    // Another reload of these apps is under way (one a deploy started
                    // before its controller restarted): wait for it, then reload.
                    Err(status) if status.code() == tonic::Code::Aborted => {
                        tokio::time::sleep(RELOAD_BUSY_RETRY).await;
                    }
                    Err(status) => return Err(StepError::Agent(status.message().to_string())),
                }
            };
            let mut names: Vec<String> =
                response.processes.iter().map(|p| p.name.clone()).collect();
            names.dedup();
            Ok::<_, StepError>((agent, names))
        })
        .await
        .map_err(|_| ("reload", StepError::Timeout(timeout)))?
        .map_err(|e| ("reload", e))?;
        let (mut agent, names) = reloaded;
        on_health();
        wait_online(&mut agent, names)
            .await
            .map_err(|e| ("health", e))
    }
}

/// How long a reload waits before asking again when the agent is replacing the apps
/// already.
const RELOAD_BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Polls the agent until every instance of `names` is online; fails at once when one
/// is errored or stopped, else after `HEALTH_TIMEOUT`.
async fn wait_online(
    agent: &mut AgentServiceClient<Channel>,
    names: Vec<String>,
) -> Result<(), StepError> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        let list = agent
            .list(apb::ListRequest {
                targets: names.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| StepError::Agent(format!("agent: {}", s.message())))?
            .into_inner()
            .processes;
        let bad: Vec<String> = list
            .iter()
            .filter(|p| p.status() != apb::ProcessStatus::Online)
            .map(|p| format!("{}#{} is {}", p.name, p.instance, status_name(p.status())))
            .collect();
        if bad.is_empty() && !list.is_empty() {
            return Ok(());
        }
        let hopeless = list.iter().any(|p| {
            matches!(
                p.status(),
                apb::ProcessStatus::Errored | apb::ProcessStatus::Stopped
            )
        });
        if hopeless || Instant::now() >= deadline {
            return Err(StepError::Unhealthy(bad.join(", ")));
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

fn status_name(status: apb::ProcessStatus) -> &'static str {
    match status {
        apb::ProcessStatus::Launching => "launching",
        apb::ProcessStatus::Online => "online",
        apb::ProcessStatus::Stopping => "stopping",
        apb::ProcessStatus::Stopped => "stopped",
        apb::ProcessStatus::Errored => "errored",
        apb::ProcessStatus::WaitingRestart => "waiting-restart",
        apb::ProcessStatus::Unspecified => "unknown",
    }
}
