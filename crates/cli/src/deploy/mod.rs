//! `fleet deploy <stage> [setup|update|revert [n]|list|curr|prev|exec <cmd>|unlock]`:
//! releases over SSH, rolled out in batches, with a lock per host and rollback.
//!
//! Per host (`update`): lock, transfer (or clone), link shared paths, `pre_deploy` in
//! the new release while the live one serves, switch `current`, ask the host's agent to
//! reload the release's app config (readiness-gated), `post_deploy`, health; the lock
//! stays held until the whole deploy is decided, then each host records the result,
//! prunes old releases and unlocks, or (failures beyond `max_fail`) goes back to its
//! previous release. What runs on hosts is built in `remote`; the archive in `archive`.

mod archive;
mod progress;
mod remote;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_config::{DeployStrategy, DeployTarget};
use fleet_proto::agent::v1 as apb;
use fleet_proto::agent::v1::agent_service_client::AgentServiceClient;
use serde::Serialize;
use serde_json::json;
use tonic::transport::Channel;

use crate::Failure;
use crate::ssh::{ExecOutput, Pool, SshError};
use crate::stage::Stage;
use progress::Progress;
use remote::RemotePath;

type Result<T> = std::result::Result<T, Failure>;

/// Quick steps (lock, switch, record).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Transfers and clones.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Hooks (builds, migrations).
const HOOK_TIMEOUT: Duration = Duration::from_secs(1800);
/// The agent's readiness-gated reload of every app of a release.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long every instance has to be online after the reload.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// What `fleet deploy` was asked to do.
pub enum Action {
    Setup,
    Update,
    Revert(usize),
    List,
    Curr,
    Prev,
    Exec(String),
    Unlock,
}

impl Action {
    /// `[action] [args...]` after the stage, PM2's words.
    pub fn parse(words: &[String]) -> Result<Action> {
        let usage = |m: String| {
            Failure::usage(format!(
                "{m}\nusage: fleet deploy <stage> [setup|update|revert [n]|list|curr|prev|exec <cmd>|unlock]"
            ))
        };
        let Some((first, rest)) = words.split_first() else {
            return Ok(Action::Update);
        };
        let no_args = |action: Action| {
            if rest.is_empty() {
                Ok(action)
            } else {
                Err(usage(format!("`{first}` takes no arguments, got {rest:?}")))
            }
        };
        match first.as_str() {
            "setup" => no_args(Action::Setup),
            "update" => no_args(Action::Update),
            "list" => no_args(Action::List),
            "curr" | "current" => no_args(Action::Curr),
            "prev" | "previous" => no_args(Action::Prev),
            "unlock" => no_args(Action::Unlock),
            "revert" => match rest {
                [] => Ok(Action::Revert(1)),
                [n] => match n.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(Action::Revert(n)),
                    _ => Err(usage(format!("revert takes a number from 1 up, got {n:?}"))),
                },
                _ => Err(usage("revert takes at most one number".to_string())),
            },
            "exec" | "run" => {
                if rest.is_empty() {
                    Err(usage("exec needs a command".to_string()))
                } else {
                    Ok(Action::Exec(rest.join(" ")))
                }
            }
            other => Err(usage(format!("unknown deploy action {other:?}"))),
        }
    }
}

pub struct Options {
    pub action: Action,
    pub git_ref: Option<String>,
    pub json: bool,
    pub no_rollback: bool,
    pub reason: Option<String>,
    pub accept_new_host_keys: bool,
}

/// One host of the stage and how to reach it.
struct Host {
    name: String,
    pool: Arc<Pool>,
    path: RemotePath,
    fleet_home: Option<String>,
}

impl Host {
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
    ) -> std::result::Result<ExecOutput, String> {
        self.pool
            .exec(&self.name, command, timeout)
            .await
            .map_err(|e| ssh_error(&e))
    }

    async fn agent(&self) -> std::result::Result<AgentServiceClient<Channel>, String> {
        let channel = self
            .pool
            .agent_channel(&self.name, self.fleet_home.as_deref())
            .await
            .map_err(|e| ssh_error(&e))?;
        let mut client = AgentServiceClient::new(channel);
        let hello = client
            .hello(apb::HelloRequest {
                protocol_major: apb::PROTOCOL_MAJOR,
                protocol_minor: apb::PROTOCOL_MINOR,
                client_version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .await
            .map_err(|s| format!("agent: {}", s.message()))?
            .into_inner();
        if hello.protocol_minor < 1 {
            return Err(format!(
                "the agent there ({}) is too old to apply a release's config\nhint: run `fleet deploy <stage> setup` to install the matching agent, then restart it",
                hello.agent_version
            ));
        }
        Ok(client)
    }
}

/// An SSH error on one line for the summary (the host is in its own column).
fn ssh_error(error: &SshError) -> String {
    let text = error.to_string();
    let host = error.host();
    text.strip_prefix(&format!("{host}: "))
        .unwrap_or(&text)
        .to_string()
}

/// A failed step's message: stderr (else stdout), trimmed to its last lines.
fn step_error(output: &ExecOutput) -> String {
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        String::from_utf8_lossy(&output.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    let status = match (&output.exit_status, &output.exit_signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by {signal}"),
        (None, None) => "the connection ended before the command did".to_string(),
    };
    if tail.is_empty() {
        status
    } else {
        format!("{tail} ({status})")
    }
}

/// Runs `fleet deploy`.
pub async fn run(stage: Stage, options: Options) -> Result<()> {
    // Everything that can be checked without a host is checked before any connection.
    let git_ref = options.git_ref.clone().or(stage.config.git_ref.clone());
    if let Some(git_ref) = &git_ref {
        remote::check_ref(git_ref).map_err(Failure::usage)?;
    }
    let targets = stage.config.targets();
    let mut paths = Vec::new();
    for target in &targets {
        paths.push(RemotePath::new(&target.path).map_err(|e| {
            Failure::usage(format!(
                "{}: deploy.{}: host {}: {e}",
                stage.config_path.display(),
                stage.name,
                target.host
            ))
        })?);
    }
    let hosts: Vec<Arc<Host>> = stage
        .ssh_targets(options.accept_new_host_keys)
        .into_iter()
        .zip(paths)
        .map(
            |((target, pool), path): ((DeployTarget, Arc<Pool>), RemotePath)| {
                Arc::new(Host {
                    name: target.host,
                    pool,
                    path,
                    fleet_home: stage.config.fleet_home.clone(),
                })
            },
        )
        .collect();
    let deploy = Deploy {
        progress: Progress::new(hosts.iter().map(|h| h.name.clone()).collect(), options.json),
        stage,
        hosts,
        options,
        git_ref,
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    // Ctrl-C: the steps in progress finish, no new one starts, hosts go back and unlock.
    // A second Ctrl-C quits at once (locks then expire after lock_ttl on the hosts).
    let interrupted = Arc::clone(&deploy.interrupted);
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        interrupted.store(true, Ordering::SeqCst);
        eprintln!(
            "interrupted: finishing the steps in progress, then going back and unlocking (Ctrl-C again to quit now)"
        );
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    let result = match &deploy.options.action {
        Action::Setup => deploy.setup().await,
        Action::Update => deploy.update().await,
        Action::Revert(n) => deploy.revert(*n).await,
        Action::List => deploy.list(ListKind::All).await,
        Action::Curr => deploy.list(ListKind::Current).await,
        Action::Prev => deploy.list(ListKind::Previous).await,
        Action::Exec(command) => deploy.exec(command).await,
        Action::Unlock => deploy.unlock().await,
    };
    watcher.abort();
    deploy.progress.finish();
    for host in &deploy.hosts {
        host.pool.close().await;
    }
    let mut warnings = BTreeSet::new();
    for host in &deploy.hosts {
        warnings.extend(host.pool.take_warnings());
    }
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    result
}

struct Deploy {
    stage: Stage,
    hosts: Vec<Arc<Host>>,
    options: Options,
    /// Set by Ctrl-C.
    interrupted: Arc<AtomicBool>,
    git_ref: Option<String>,
    progress: Progress,
}

/// How one host's deploy ended.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum HostResult {
    /// On the new release.
    Ok,
    /// The host failed; `release` says where it is now.
    Failed,
    /// Deployed, then taken back to its previous release because others failed.
    RolledBack,
    /// Not attempted: the deploy stopped before its batch.
    Skipped,
    /// Already on the requested release.
    Unchanged,
}

#[derive(Clone, Debug, Serialize)]
struct HostSummary {
    host: String,
    result: HostResult,
    /// The step that failed (or the last one done).
    step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The release `current` points at now, as far as fleet knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    duration_ms: u64,
}

/// A host in the middle of a deploy: locked, maybe switched.
struct Live {
    host: Arc<Host>,
    token: String,
    /// `path` resolved on the host (absolute).
    root: String,
    /// The release `current` pointed at before.
    previous: Option<String>,
    /// Every release on the host when it was locked.
    releases: Vec<String>,
    switched: bool,
    /// The new release is unpacked (archive) by the lock's exec.
    transferred: bool,
    /// The lock's exec also switched `current`.
    switch_done: bool,
    /// The switched-to release's config file, when `switch_done`.
    config_file: Option<String>,
    /// Set when the lock could not be renewed (someone removed it).
    lock_lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// What a host is switched to.
enum Payload<'a> {
    /// A new release: the archive, or the clone strategy's commit.
    New {
        release: &'a str,
        commit: &'a str,
        archive: Option<&'a [u8]>,
    },
    /// An existing release (`revert`).
    Existing { release: &'a str },
}

impl Payload<'_> {
    fn release(&self) -> &str {
        match self {
            Payload::New { release, .. } | Payload::Existing { release } => release,
        }
    }
}

enum ListKind {
    All,
    Current,
    Previous,
}

/// The controller client, its URL and CA, shared by the hosts joining it in `setup`.
type Joiner = Arc<tokio::sync::Mutex<(crate::stage::ControllerClient, String, String)>>;

/// A host's step failed: where and why.
struct StepFailure {
    step: &'static str,
    error: String,
}

fn fail(step: &'static str, error: impl Into<String>) -> StepFailure {
    StepFailure {
        step,
        error: error.into(),
    }
}

impl Deploy {
    fn who(&self) -> String {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| nix::unistd::getuid().to_string());
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_string());
        format!("{user}@{host}")
    }

    fn ttl_secs(&self) -> u64 {
        self.stage.config.lock_ttl_ms.div_ceil(1000).max(2)
    }

    fn hook_env(&self, release: &str, previous: Option<&str>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .stage
            .config
            .env
            .iter()
            .filter(|(k, _)| valid_env_name(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("FLEET_STAGE".into(), self.stage.name.clone()));
        env.push(("FLEET_RELEASE".into(), release.to_string()));
        env.push((
            "FLEET_PREVIOUS_RELEASE".into(),
            previous.unwrap_or("").to_string(),
        ));
        env
    }

    /// Hook output, each line prefixed with the host.
    fn show_output(&self, host: &str, output: &ExecOutput) {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            let (_, rest) = remote::facts(&text);
            for line in rest.lines() {
                self.progress.line(&format!("{host} | {line}"));
            }
        }
    }

    // --- update and revert ------------------------------------------------------------

    async fn update(&self) -> Result<()> {
        let config = &self.stage.config;
        let started = Instant::now();
        let base_dir = self
            .stage
            .config_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        if let Some(command) = &config.pre_deploy_local {
            self.progress
                .line(&format!("local | pre-deploy-local: {command}"));
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&base_dir)
                .envs(self.stage.config.env.iter())
                .env("FLEET_STAGE", &self.stage.name)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .status()
                .await
                .map_err(|e| Failure::failed(format!("pre-deploy-local: cannot run sh: {e}")))?;
            if !status.success() {
                return Err(Failure::failed(format!(
                    "pre-deploy-local failed ({status}); nothing was sent to any host"
                )));
            }
        }
        // The commit: resolved here (archive) or on the first host (clone).
        let (commit, summary, archive) = match config.strategy {
            DeployStrategy::Archive => {
                let (repo, commit) =
                    archive::resolve(&base_dir, self.git_ref.as_deref()).map_err(Failure::usage)?;
                let bytes = archive::pack(&repo, &commit.sha).map_err(|e| {
                    Failure::failed(format!("cannot pack commit {}: {e}", commit.sha))
                })?;
                (commit.sha, commit.summary, Some(bytes))
            }
            DeployStrategy::Clone => {
                let repo = config.repo.clone().unwrap_or_default();
                let git_ref = self
                    .git_ref
                    .clone()
                    .map(|r| r.strip_prefix("origin/").map(str::to_string).unwrap_or(r))
                    .unwrap_or_else(|| "HEAD".to_string());
                let first = &self.hosts[0];
                let script = remote::clone_release(
                    &first.path,
                    &repo,
                    &git_ref,
                    "",
                    "",
                    &remote::Shared {
                        dirs: &[],
                        files: &[],
                    },
                    true,
                );
                self.progress.step(&first.name, "resolve ref");
                let output = first
                    .run(&script, TRANSFER_TIMEOUT)
                    .await
                    .map_err(|e| Failure::failed(format!("{}: resolve ref: {e}", first.name)))?;
                let (facts, _) = remote::facts(&String::from_utf8_lossy(&output.stdout));
                let sha = fact(&facts, "commit").unwrap_or_default();
                if !output.success() || sha.len() < 7 {
                    return Err(Failure::failed(format!(
                        "{}: cannot resolve {git_ref:?} in {repo}: {}",
                        first.name,
                        step_error(&output)
                    )));
                }
                (sha, String::new(), None)
            }
        };
        let release = format!(
            "{}-{}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ"),
            &commit[..7]
        );
        self.progress.line(&format!(
            "deploying {} ({}{}) to {} host(s) of {} as release {release}",
            self.git_ref.as_deref().unwrap_or("HEAD"),
            &commit[..7],
            if summary.is_empty() {
                String::new()
            } else {
                format!(" {summary}")
            },
            self.hosts.len(),
            self.stage.name
        ));
        let payload = Payload::New {
            release: &release,
            commit: &commit,
            archive: archive.as_deref(),
        };
        let reason = self.options.reason.clone().unwrap_or_else(|| {
            format!(
                "deploy {} ({})",
                self.git_ref.as_deref().unwrap_or("HEAD"),
                &commit[..7]
            )
        });
        let (summaries, rolled_back) = self.roll_out(&payload, &reason).await;
        self.report(
            "update",
            Some(&release),
            Some(&commit),
            summaries,
            rolled_back,
            started,
        )
        .await
    }

    async fn revert(&self, n: usize) -> Result<()> {
        let started = Instant::now();
        let inspected = self.inspect_all().await;
        let mut common: Option<BTreeSet<String>> = None;
        let mut reference: Option<String> = None;
        for (host, result) in &inspected {
            let state = result.as_ref().map_err(|e| {
                Failure::failed(format!(
                    "{host}: {e}\nrevert needs every host, to find a release present on all of them"
                ))
            })?;
            let releases: BTreeSet<String> =
                state.releases.iter().map(|(r, _)| r.clone()).collect();
            common = Some(match common {
                None => releases,
                Some(c) => c.intersection(&releases).cloned().collect(),
            });
            if reference.is_none() {
                reference = state.current.clone();
            }
        }
        let Some(current) = reference else {
            return Err(Failure::failed(
                "no host has a current release: nothing to revert",
            ));
        };
        let older: Vec<String> = common
            .unwrap_or_default()
            .into_iter()
            .filter(|r| *r < current)
            .rev()
            .collect();
        let Some(target) = older.get(n - 1).cloned() else {
            return Err(Failure::failed(format!(
                "there is no release {n} before {current} present on every host ({} found)\nhint: `fleet deploy {} list` shows each host's releases",
                older.len(),
                self.stage.name
            )));
        };
        self.progress.line(&format!(
            "reverting {} host(s) of {} to release {target}",
            self.hosts.len(),
            self.stage.name
        ));
        let payload = Payload::Existing { release: &target };
        let reason = self
            .options
            .reason
            .clone()
            .unwrap_or_else(|| format!("revert to {target}"));
        let (summaries, rolled_back) = self.roll_out(&payload, &reason).await;
        self.report(
            "revert",
            Some(&target),
            None,
            summaries,
            rolled_back,
            started,
        )
        .await
    }

    /// Batches of hosts through the steps up to health; then each host either records
    /// and unlocks, or goes back.
    async fn roll_out(&self, payload: &Payload<'_>, reason: &str) -> (Vec<HostSummary>, bool) {
        let config = &self.stage.config;
        let batch_size = config.batch.size(self.hosts.len());
        let mut batches: Vec<Vec<Arc<Host>>> = Vec::new();
        let mut rest: &[Arc<Host>] = &self.hosts;
        if config.canary && self.hosts.len() > 1 {
            batches.push(vec![Arc::clone(&self.hosts[0])]);
            rest = &self.hosts[1..];
        }
        for chunk in rest.chunks(batch_size) {
            batches.push(chunk.to_vec());
        }
        let mut done: Vec<(Live, HostSummary)> = Vec::new();
        let mut summaries: BTreeMap<String, HostSummary> = BTreeMap::new();
        let mut failures = 0u32;
        let mut stopped = false;
        for (index, batch) in batches.iter().enumerate() {
            stopped |= self.interrupted.load(Ordering::SeqCst);
            if stopped {
                for host in batch {
                    self.progress.done(&host.name, "skipped");
                    summaries.insert(
                        host.name.clone(),
                        HostSummary {
                            host: host.name.clone(),
                            result: HostResult::Skipped,
                            step: String::new(),
                            error: Some("not attempted: the deploy stopped".to_string()),
                            release: None,
                            previous: None,
                            duration_ms: 0,
                        },
                    );
                }
                continue;
            }
            let results = futures::future::join_all(
                batch
                    .iter()
                    .map(|host| self.host_deploy(Arc::clone(host), payload, reason)),
            )
            .await;
            for (host, result) in batch.iter().zip(results) {
                match result {
                    Ok((live, summary)) => done.push((live, summary)),
                    Err(summary) => {
                        failures += 1;
                        summaries.insert(host.name.clone(), summary);
                    }
                }
            }
            let canary_failed = config.canary && index == 0 && failures > 0;
            if failures > config.max_fail
                || canary_failed
                || self.interrupted.load(Ordering::SeqCst)
            {
                stopped = true;
            }
        }
        let stopped = stopped || self.interrupted.load(Ordering::SeqCst);
        let roll_back = stopped && !self.options.no_rollback;
        let finishes =
            futures::future::join_all(done.into_iter().map(|(live, summary)| {
                self.host_finish(live, summary, payload, roll_back, reason)
            }))
            .await;
        for summary in finishes {
            summaries.insert(summary.host.clone(), summary);
        }
        let ordered = self
            .hosts
            .iter()
            .filter_map(|h| summaries.remove(&h.name))
            .collect();
        (ordered, roll_back)
    }

    /// One host up to health. On failure, the host is back where it was (as far as it
    /// can be reached) and unlocked.
    async fn host_deploy(
        &self,
        host: Arc<Host>,
        payload: &Payload<'_>,
        reason: &str,
    ) -> std::result::Result<(Live, HostSummary), HostSummary> {
        let started = Instant::now();
        let release = payload.release().to_string();
        let failed = |f: StepFailure, release: Option<String>, previous: Option<String>| {
            self.progress.failed(&host.name, f.step, &f.error);
            HostSummary {
                host: host.name.clone(),
                result: HostResult::Failed,
                step: f.step.to_string(),
                error: Some(f.error),
                release,
                previous,
                duration_ms: started.elapsed().as_millis() as u64,
            }
        };
        let mut live = match self.lock(&host, payload, reason).await {
            Ok(live) => live,
            Err((f, None)) => return Err(failed(f, None, None)),
            Err((f, Some(mut live))) => {
                let previous = live.previous.clone();
                let now_on = self.undo(&mut live, payload).await;
                self.release_lock(live).await;
                let mut summary = failed(f, now_on, previous);
                summary.duration_ms = started.elapsed().as_millis() as u64;
                return Err(summary);
            }
        };
        if payload_is_current(payload, &live) {
            self.progress.done(&host.name, "already on this release");
            let summary = HostSummary {
                host: host.name.clone(),
                result: HostResult::Unchanged,
                step: "switch".into(),
                error: None,
                release: Some(release.clone()),
                previous: live.previous.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            };
            return Ok((live, summary));
        }
        match self.advance(&mut live, payload).await {
            Ok(()) => {
                self.progress
                    .step(&host.name, "ready (waiting for the other hosts)");
                let summary = HostSummary {
                    host: host.name.clone(),
                    result: HostResult::Ok,
                    step: "health".into(),
                    error: None,
                    release: Some(release),
                    previous: live.previous.clone(),
                    duration_ms: started.elapsed().as_millis() as u64,
                };
                Ok((live, summary))
            }
            Err(f) => {
                let previous = live.previous.clone();
                let now_on = self.undo(&mut live, payload).await;
                let mut summary = failed(f, now_on.clone(), previous);
                if let Err(error) = now_on_error(&now_on, &live) {
                    summary.error = Some(format!("{}; {error}", summary.error.unwrap_or_default()));
                }
                self.release_lock(live).await;
                summary.duration_ms = started.elapsed().as_millis() as u64;
                Err(summary)
            }
        }
    }

    async fn lock(
        &self,
        host: &Arc<Host>,
        payload: &Payload<'_>,
        reason: &str,
    ) -> std::result::Result<Live, (StepFailure, Option<Live>)> {
        self.progress.step(&host.name, "lock");
        let token = random_token();
        let since = jiff::Timestamp::now().to_string();
        let owner = self.who();
        let info = remote::LockInfo {
            token: &token,
            owner: &owner,
            pid: std::process::id(),
            since: &since,
            reason,
            // Only a new release is the lock's to clean up if the deploy is abandoned.
            release: match payload {
                Payload::New { release, .. } => release,
                Payload::Existing { .. } => "",
            },
        };
        // One exec does as much as it can: lock, unpack the archive and (without a
        // pre-deploy hook) switch. Each sshd session costs a fork, a login shell and its
        // start-up files on the host.
        let config = &self.stage.config;
        let mut script = remote::lock(&host.path, &info, self.ttl_secs());
        let mut input = None;
        let mut switches = false;
        match payload {
            Payload::New {
                release,
                commit,
                archive: Some(bytes),
            } => {
                let shared = remote::Shared {
                    dirs: &config.shared_dirs,
                    files: &config.shared_files,
                };
                script.push_str("echo fleet:step=transfer\n");
                script.push_str(&remote::unpack(&host.path, release, commit, &shared));
                input = Some(*bytes);
                if config.pre_deploy.is_none() {
                    script.push_str("echo fleet:step=switch\n");
                    script.push_str(&remote::switch(&host.path, release));
                    switches = true;
                }
            }
            Payload::Existing { release } => {
                script.push_str("echo fleet:step=switch\n");
                script.push_str(&remote::switch(&host.path, release));
                switches = true;
            }
            Payload::New { archive: None, .. } => {}
        }
        let output = match input {
            Some(bytes) => host
                .pool
                .exec_with_input(&host.name, &script, bytes, TRANSFER_TIMEOUT)
                .await
                .map_err(|e| ssh_error(&e)),
            None => host.run(&script, STEP_TIMEOUT).await,
        }
        .map_err(|e| (fail("lock", e), None))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.exit_status == Some(remote::LOCKED_STATUS) {
            let field = |key: &str| {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .unwrap_or("?")
                    .to_string()
            };
            return Err((
                fail(
                    "lock",
                    format!(
                        "locked by {} (pid {}) since {}: {}\nhint: wait for that deploy to end; if it is gone, `fleet deploy {} unlock`",
                        field("owner"),
                        field("pid"),
                        field("since"),
                        field("reason"),
                        self.stage.name
                    ),
                ),
                None,
            ));
        }
        let (facts, _) = remote::facts(&stdout);
        let Some(root) = fact(&facts, "root") else {
            // The lock was not taken.
            return Err((fail("lock", step_error(&output)), None));
        };
        if let Some(stale) = fact(&facts, "stale_lock") {
            self.progress.line(&format!(
                "{} | took over a stale lock (held by {stale}, not renewed for {}s)",
                host.name,
                self.ttl_secs()
            ));
        }
        let previous = fact(&facts, "current")
            .and_then(|c| c.rsplit('/').next().map(str::to_string))
            .filter(|c| remote::valid_release(c));
        let releases: Vec<String> = facts
            .iter()
            .filter(|(k, _)| k == "release")
            .map(|(_, v)| v.clone())
            .filter(|r| remote::valid_release(r))
            .collect();
        let lock_lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_loop(
            Arc::clone(host),
            token.clone(),
            Duration::from_millis((self.stage.config.lock_ttl_ms / 4).clamp(500, 10_000)),
            Arc::clone(&lock_lost),
        ));
        let reached = facts
            .iter()
            .rev()
            .find(|(k, _)| k == "step")
            .map(|(_, v)| v.as_str());
        let live = Live {
            host: Arc::clone(host),
            token,
            root,
            previous,
            releases,
            // Unsure (the connection ended): as if switched, so undo switches back.
            switched: fact(&facts, "switched").is_some()
                || (output.exit_status.is_none() && reached == Some("switch")),
            transferred: matches!(reached, Some("transfer" | "switch")),
            switch_done: switches && fact(&facts, "switched").is_some(),
            config_file: fact(&facts, "config"),
            lock_lost,
            renewer,
            started: Instant::now(),
        };
        if !output.success() {
            let step = match reached {
                Some("transfer") => "transfer",
                Some("switch") => "switch",
                _ => "lock",
            };
            return Err((fail(step, step_error(&output)), Some(live)));
        }
        Ok(live)
    }

    /// Transfer, shared links, pre-deploy, switch, reload, post-deploy, health.
    async fn advance(
        &self,
        live: &mut Live,
        payload: &Payload<'_>,
    ) -> std::result::Result<(), StepFailure> {
        let host = Arc::clone(&live.host);
        let config = &self.stage.config;
        let release = payload.release();
        let shared = remote::Shared {
            dirs: &config.shared_dirs,
            files: &config.shared_files,
        };
        match payload {
            Payload::New { .. } if live.transferred => {
                if let Some(command) = &config.pre_deploy {
                    self.hook(live, "pre-deploy", release, command).await?;
                }
            }
            // The clone strategy (an archive is unpacked by the lock's exec).
            Payload::New { commit, .. } => {
                self.progress.step(&host.name, "transfer");
                let script = remote::clone_release(
                    &host.path,
                    config.repo.as_deref().unwrap_or_default(),
                    "",
                    release,
                    commit,
                    &shared,
                    false,
                );
                let output = host
                    .run(&script, TRANSFER_TIMEOUT)
                    .await
                    .map_err(|e| fail("transfer", e))?;
                if !output.success() {
                    return Err(fail("transfer", step_error(&output)));
                }
                if let Some(command) = &config.pre_deploy {
                    self.hook(live, "pre-deploy", release, command).await?;
                }
            }
            Payload::Existing { release } => {
                if !live.releases.iter().any(|r| r == release) {
                    return Err(fail(
                        "switch",
                        format!("release {release} is not on this host"),
                    ));
                }
            }
        }
        let config_file = if live.switch_done {
            live.config_file.clone()
        } else {
            self.check_lock(live, "switch")?;
            self.progress.step(&host.name, "switch");
            let config_file = self
                .switch(&host, release)
                .await
                .map_err(|e| fail("switch", e))?;
            live.switched = true;
            config_file
        };
        self.check_lock(live, "reload")?;
        self.apply(live, release, config_file.as_deref(), "reload")
            .await?;
        if let (Payload::New { .. }, Some(command)) = (payload, &config.post_deploy) {
            self.hook(live, "post-deploy", release, command).await?;
        }
        self.check_lock(live, "health")?;
        Ok(())
    }

    /// Before each step: the deploy was not interrupted and still holds the host's lock.
    fn check_lock(&self, live: &Live, step: &'static str) -> std::result::Result<(), StepFailure> {
        if self.interrupted.load(Ordering::SeqCst) {
            return Err(fail(step, "interrupted (Ctrl-C)"));
        }
        if live.lock_lost.load(Ordering::SeqCst) {
            return Err(fail(
                step,
                "the deploy lock was removed by someone else (fleet deploy unlock?)",
            ));
        }
        Ok(())
    }

    async fn hook(
        &self,
        live: &Live,
        name: &'static str,
        release: &str,
        command: &str,
    ) -> std::result::Result<(), StepFailure> {
        let host = &live.host;
        self.check_lock(live, name)?;
        self.progress.step(&host.name, name);
        let env = self.hook_env(release, live.previous.as_deref());
        let output = host
            .run(
                &remote::hook(&host.path, Some(release), &env, command),
                HOOK_TIMEOUT,
            )
            .await
            .map_err(|e| fail(name, e))?;
        self.show_output(&host.name, &output);
        if !output.success() {
            return Err(fail(name, step_error(&output)));
        }
        Ok(())
    }

    /// Switches `current`; returns the release's config file name, if it has one.
    async fn switch(
        &self,
        host: &Host,
        release: &str,
    ) -> std::result::Result<Option<String>, String> {
        let output = host
            .run(&remote::switch(&host.path, release), STEP_TIMEOUT)
            .await?;
        if !output.success() {
            return Err(step_error(&output));
        }
        let (facts, _) = remote::facts(&String::from_utf8_lossy(&output.stdout));
        Ok(fact(&facts, "config"))
    }

    /// Asks the agent to reload the release's apps, then waits until all are online.
    async fn apply(
        &self,
        live: &Live,
        release: &str,
        config_file: Option<&str>,
        step: &'static str,
    ) -> std::result::Result<(), StepFailure> {
        let host = &live.host;
        let Some(config_file) = config_file else {
            // No app config in the release: its hooks manage the apps.
            return Ok(());
        };
        self.progress.step(&host.name, step);
        let config_path = format!(
            "{}/releases/{release}/{config_file}",
            live.root.trim_end_matches('/')
        );
        let names = tokio::time::timeout(RELOAD_TIMEOUT, async {
            let mut agent = host.agent().await?;
            let response = agent
                .reload(apb::ReloadRequest {
                    config_path: config_path.clone(),
                    env_stage: self.stage.name.clone(),
                    parallel: 1,
                    ..Default::default()
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let mut names: Vec<String> =
                response.processes.iter().map(|p| p.name.clone()).collect();
            names.dedup();
            Ok::<_, String>((agent, names))
        })
        .await
        .map_err(|_| {
            fail(
                step,
                format!("no answer within {}s", RELOAD_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|e| fail(step, e))?;
        let (mut agent, names) = names;
        self.progress.step(&host.name, "health");
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let list = agent
                .list(apb::ListRequest {
                    targets: names.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| fail("health", format!("agent: {}", s.message())))?
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
                return Err(fail("health", bad.join(", ")));
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// After a failure: switch back (when switched) and reload the previous release.
    /// Returns the release `current` points at afterwards, if known.
    async fn undo(&self, live: &mut Live, payload: &Payload<'_>) -> Option<String> {
        let host = Arc::clone(&live.host);
        if !live.switched {
            if let Payload::New { release, .. } = payload {
                let _ = host
                    .run(&remote::discard(&host.path, release), STEP_TIMEOUT)
                    .await;
            }
            return live.previous.clone();
        }
        let Some(previous) = live.previous.clone() else {
            // A first deploy has nothing to go back to.
            return Some(payload.release().to_string());
        };
        self.progress.step(&host.name, "roll back");
        match self.switch(&host, &previous).await {
            Ok(config_file) => {
                live.switched = false;
                if let Err(f) = self
                    .apply(live, &previous, config_file.as_deref(), "reload previous")
                    .await
                {
                    self.progress.line(&format!(
                        "{} | rollback: {}: {}",
                        host.name, f.step, f.error
                    ));
                }
                Some(previous)
            }
            Err(error) => {
                self.progress
                    .line(&format!("{} | rollback: switch: {error}", host.name));
                Some(payload.release().to_string())
            }
        }
    }

    /// Records the host's result, prunes, unlocks; or rolls it back first.
    async fn host_finish(
        &self,
        mut live: Live,
        mut summary: HostSummary,
        payload: &Payload<'_>,
        roll_back: bool,
        reason: &str,
    ) -> HostSummary {
        let host = Arc::clone(&live.host);
        let release = payload.release().to_string();
        if roll_back && summary.result == HostResult::Ok {
            let now_on = self.undo(&mut live, payload).await;
            summary.result = HostResult::RolledBack;
            summary.release = now_on;
            summary.step = "roll back".into();
            self.progress.done(&host.name, "rolled back");
        }
        let result = match summary.result {
            HostResult::Ok | HostResult::Unchanged => "ok",
            HostResult::RolledBack => "rolled_back",
            _ => "failed",
        };
        let record = json!({
            "id": release,
            "commit": match payload { Payload::New { commit, .. } => commit.to_string(), _ => String::new() },
            "ref": self.git_ref.clone().unwrap_or_else(|| "HEAD".into()),
            "action": match payload { Payload::New { .. } => "update", _ => "revert" },
            "who": self.who(),
            "when": jiff::Timestamp::now().to_string(),
            "reason": reason,
            "previous": live.previous,
            "result": result,
        })
        .to_string();
        // Never the current or the previous release.
        let mut prune = Vec::new();
        if summary.result == HostResult::Ok
            && let Payload::New { .. } = payload
        {
            let keep = self.stage.config.keep_releases as usize;
            let mut all: Vec<String> = live.releases.clone();
            all.push(release.clone());
            all.sort();
            all.dedup();
            let excess = all.len().saturating_sub(keep);
            prune = all
                .into_iter()
                .take(excess)
                .filter(|r| *r != release && Some(r) != live.previous.as_ref())
                .collect();
        }
        live.renewer.abort();
        let output = host
            .run(
                &remote::finish(&host.path, &live.token, &record, &prune),
                STEP_TIMEOUT,
            )
            .await;
        match output {
            Ok(output) if output.success() => {}
            Ok(output) => {
                summary.error = Some(format!("record and unlock: {}", step_error(&output)))
            }
            Err(error) => summary.error = Some(format!("record and unlock: {error}")),
        }
        if summary.result == HostResult::Ok {
            self.progress.done(
                &host.name,
                &format!(
                    "deployed {release} in {:.1}s",
                    live.started.elapsed().as_secs_f64()
                ),
            );
        }
        summary
    }

    async fn release_lock(&self, live: Live) {
        live.renewer.abort();
        let _ = live
            .host
            .run(&remote::unlock(&live.host.path, &live.token), STEP_TIMEOUT)
            .await;
    }

    async fn report(
        &self,
        action: &str,
        release: Option<&str>,
        commit: Option<&str>,
        summaries: Vec<HostSummary>,
        rolled_back: bool,
        started: Instant,
    ) -> Result<()> {
        self.progress.finish();
        let ok = summaries
            .iter()
            .all(|s| matches!(s.result, HostResult::Ok | HostResult::Unchanged));
        let failed: Vec<&HostSummary> = summaries
            .iter()
            .filter(|s| s.result == HostResult::Failed)
            .collect();
        let audit_result = if ok {
            "ok".to_string()
        } else {
            format!(
                "failed on {}{}",
                failed
                    .iter()
                    .map(|s| s.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if rolled_back { "; rolled back" } else { "" }
            )
        };
        let audit = self.audit(action, release, &audit_result).await;
        if self.options.json {
            let value = json!({
                "stage": self.stage.name,
                "action": action,
                "release": release,
                "commit": commit,
                "ref": self.git_ref.clone().unwrap_or_else(|| "HEAD".into()),
                "ok": ok,
                "rolled_back": rolled_back,
                "duration_ms": started.elapsed().as_millis() as u64,
                "hosts": summaries,
            });
            println!("{value:#}");
        } else {
            print_summary(&summaries);
            println!(
                "{} {}{} in {:.1}s{}",
                if ok { "✓" } else { "✗" },
                action,
                release.map(|r| format!(" {r}")).unwrap_or_default(),
                started.elapsed().as_secs_f64(),
                if rolled_back {
                    ": rolled back, every host that was switched is on its previous release"
                } else {
                    ""
                }
            );
        }
        if let Err(error) = audit {
            eprintln!("warning: the controller did not record this deploy: {error}");
        }
        if ok {
            Ok(())
        } else {
            let detail = if failed.len() > 3 {
                "see the table above".to_string()
            } else {
                failed
                    .iter()
                    .map(|s| {
                        format!(
                            "{} ({}: {})",
                            s.host,
                            s.step,
                            s.error
                                .as_deref()
                                .unwrap_or("")
                                .lines()
                                .next()
                                .unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Err(Failure::failed(format!(
                "{action} failed on {} of {} host(s): {detail}",
                failed.len().max(1),
                summaries.len(),
            )))
        }
    }

    /// With a controller: the deploy in its audit log.
    async fn audit(
        &self,
        action: &str,
        release: Option<&str>,
        result: &str,
    ) -> std::result::Result<(), String> {
        let Some(controller) = &self.stage.controller else {
            return Ok(());
        };
        let mut client = crate::stage::connect_controller(controller)
            .await
            .map_err(|f| f.message)?;
        client
            .record_deploy(fleet_proto::controller::v1::DeployRecord {
                stage: self.stage.name.clone(),
                action: action.to_string(),
                release: release.unwrap_or("").to_string(),
                hosts: self.hosts.iter().map(|h| h.name.clone()).collect(),
                result: result.to_string(),
                who: self.who(),
            })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(())
    }

    // --- setup --------------------------------------------------------------------------

    async fn setup(&self) -> Result<()> {
        let started = Instant::now();
        let agent_binary = local_agent_binary()?;
        let bytes = std::fs::read(&agent_binary)
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", agent_binary.display())))?;
        let sha = sha256_hex(&bytes);
        let join = match &self.stage.controller {
            None => None,
            Some(controller) => {
                let ca = match &controller.ca {
                    Some(path) => std::fs::read_to_string(path).map_err(|e| {
                        Failure::usage(format!("cannot read FLEET_CA {}: {e}", path.display()))
                    })?,
                    None => {
                        return Err(Failure::usage(
                            "joining agents to the controller needs its CA: set FLEET_CA to the controller's ca.pem",
                        ));
                    }
                };
                let client = crate::stage::connect_controller(controller).await?;
                Some((client, controller.url.clone(), ca))
            }
        };
        let join = join.map(|j| Arc::new(tokio::sync::Mutex::new(j)));
        let results = futures::future::join_all(self.hosts.iter().map(|host| {
            let join = join.clone();
            let bytes = &bytes;
            let sha = &sha;
            async move {
                let started = Instant::now();
                let result = self.setup_host(host, bytes, sha, join).await;
                (host.name.clone(), result, started.elapsed())
            }
        }))
        .await;
        let mut summaries = Vec::new();
        for (host, result, elapsed) in results {
            let (result, step, error) = match result {
                Ok(note) => {
                    self.progress.done(&host, &note);
                    (HostResult::Ok, "done".to_string(), None)
                }
                Err(f) => {
                    self.progress.failed(&host, f.step, &f.error);
                    (HostResult::Failed, f.step.to_string(), Some(f.error))
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
            });
        }
        self.report("setup", None, None, summaries, false, started)
            .await
    }

    async fn setup_host(
        &self,
        host: &Host,
        bytes: &[u8],
        sha: &str,
        join: Option<Joiner>,
    ) -> std::result::Result<String, StepFailure> {
        let config = &self.stage.config;
        let env = self.hook_env("", None);
        if let Some(command) = &config.pre_setup {
            self.progress.step(&host.name, "pre-setup");
            let output = host
                .run(&remote::hook(&host.path, None, &env, command), HOOK_TIMEOUT)
                .await
                .map_err(|e| fail("pre-setup", e))?;
            self.show_output(&host.name, &output);
            if !output.success() {
                return Err(fail("pre-setup", step_error(&output)));
            }
        }
        self.progress.step(&host.name, "directories");
        let output = host
            .run(
                &remote::setup_dirs(&host.path, &config.shared_dirs),
                STEP_TIMEOUT,
            )
            .await
            .map_err(|e| fail("directories", e))?;
        if !output.success() {
            return Err(fail("directories", step_error(&output)));
        }
        let home = match &host.fleet_home {
            Some(home) => home.clone(),
            None => host
                .pool
                .fleet_home(&host.name)
                .await
                .map_err(|e| fail("agent", ssh_error(&e)))?,
        };
        if !home.starts_with('/') || home.contains(['\n', '\'']) {
            return Err(fail(
                "agent",
                format!("FLEET_HOME {home:?} on the host is not an absolute path"),
            ));
        }
        self.progress.step(&host.name, "agent");
        let output = host
            .run(&remote::agent_probe(&home), STEP_TIMEOUT)
            .await
            .map_err(|e| fail("agent", e))?;
        let (facts, _) = remote::facts(&String::from_utf8_lossy(&output.stdout));
        let installed = fact(&facts, "sha256").unwrap_or_default();
        let systemd = fact(&facts, "systemd").as_deref() == Some("yes");
        let root = fact(&facts, "uid").as_deref() == Some("0");
        let running = fact(&facts, "running");
        let mut notes = Vec::new();
        if installed != sha {
            self.progress.step(&host.name, "upload agent");
            let output = host
                .pool
                .exec_with_input(
                    &host.name,
                    &remote::agent_install(&home),
                    bytes,
                    TRANSFER_TIMEOUT,
                )
                .await
                .map_err(|e| fail("upload agent", ssh_error(&e)))?;
            if !output.success() {
                return Err(fail("upload agent", step_error(&output)));
            }
            notes.push("agent installed".to_string());
        }
        if let Some(join) = join {
            self.progress.step(&host.name, "join controller");
            let joined = host
                .run(
                    &format!(
                        "cat {}/controller/url 2>/dev/null || true",
                        crate::ssh::quote(&home)
                    ),
                    STEP_TIMEOUT,
                )
                .await
                .map_err(|e| fail("join controller", e))?;
            let mut join = join.lock().await;
            let (client, url, ca) = &mut *join;
            if String::from_utf8_lossy(&joined.stdout).trim() != url.as_str() {
                let token = client
                    .create_join_token(fleet_proto::controller::v1::CreateJoinTokenRequest {
                        host: host.name.clone(),
                        ttl_seconds: 600,
                    })
                    .await
                    .map_err(|s| fail("join controller", format!("controller: {}", s.message())))?
                    .into_inner()
                    .token;
                let output = host
                    .run(
                        &remote::agent_join(&home, url, &token, &host.name, ca),
                        STEP_TIMEOUT,
                    )
                    .await
                    .map_err(|e| fail("join controller", e))?;
                if !output.success() {
                    return Err(fail("join controller", step_error(&output)));
                }
                notes.push("joined the controller".to_string());
                if running.is_some() {
                    notes.push(
                        "the running agent connects to the controller from its next start"
                            .to_string(),
                    );
                }
            }
        }
        match running {
            None => {
                self.progress.step(&host.name, "start agent");
                let output = host
                    .run(&remote::agent_start(&home, systemd, root), STEP_TIMEOUT)
                    .await
                    .map_err(|e| fail("start agent", e))?;
                if !output.success() {
                    return Err(fail("start agent", step_error(&output)));
                }
                notes.push(if systemd {
                    "agent started (systemd unit fleet-agent.service)".to_string()
                } else {
                    "agent started".to_string()
                });
            }
            Some(running) => {
                let (pid, exe) = running.split_once(' ').unwrap_or((&running, ""));
                if installed != sha && exe.starts_with(&format!("{home}/bin/fleet-agent")) {
                    notes.push(format!(
                        "the running agent (pid {pid}) keeps its old version until restarted"
                    ));
                } else {
                    notes.push(format!("agent running (pid {pid})"));
                }
            }
        }
        if let Some(command) = &config.post_setup {
            self.progress.step(&host.name, "post-setup");
            let output = host
                .run(&remote::hook(&host.path, None, &env, command), HOOK_TIMEOUT)
                .await
                .map_err(|e| fail("post-setup", e))?;
            self.show_output(&host.name, &output);
            if !output.success() {
                return Err(fail("post-setup", step_error(&output)));
            }
        }
        Ok(notes.join(", "))
    }

    // --- list, curr, prev, exec, unlock ---------------------------------------------

    async fn inspect_all(&self) -> Vec<(String, std::result::Result<HostState, String>)> {
        futures::future::join_all(self.hosts.iter().map(|host| async move {
            let result = async {
                let output = host.run(&remote::inspect(&host.path), STEP_TIMEOUT).await?;
                if !output.success() {
                    return Err(step_error(&output));
                }
                let (facts, _) = remote::facts(&String::from_utf8_lossy(&output.stdout));
                let current = fact(&facts, "current")
                    .and_then(|c| c.rsplit('/').next().map(str::to_string))
                    .filter(|c| remote::valid_release(c));
                let mut releases: Vec<(String, String)> = facts
                    .iter()
                    .filter(|(k, _)| k == "release")
                    .filter_map(|(_, v)| {
                        let (id, commit) = v.split_once(' ').unwrap_or((v, ""));
                        remote::valid_release(id).then(|| (id.to_string(), commit.to_string()))
                    })
                    .collect();
                releases.sort();
                Ok(HostState {
                    current,
                    releases,
                    lock: fact(&facts, "lock"),
                })
            }
            .await;
            (host.name.clone(), result)
        }))
        .await
    }

    async fn list(&self, kind: ListKind) -> Result<()> {
        let inspected = self.inspect_all().await;
        self.progress.finish();
        let mut all_ok = true;
        let mut json_hosts = Vec::new();
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::NOTHING);
        match kind {
            ListKind::All => table.set_header(["HOST", "RELEASE", "COMMIT", ""]),
            _ => table.set_header(["HOST", "RELEASE", "COMMIT"]),
        };
        for (host, result) in &inspected {
            match result {
                Err(error) => {
                    all_ok = false;
                    eprintln!("error: {host}: {error}");
                    json_hosts.push(json!({"host": host, "reachable": false, "error": error}));
                }
                Ok(state) => {
                    let commit_of = |id: &str| {
                        state
                            .releases
                            .iter()
                            .find(|(r, _)| r == id)
                            .map(|(_, c)| c.get(..7).unwrap_or(c).to_string())
                            .unwrap_or_default()
                    };
                    let previous = state.current.as_ref().and_then(|c| {
                        state
                            .releases
                            .iter()
                            .rev()
                            .map(|(r, _)| r)
                            .find(|r| *r < c)
                            .cloned()
                    });
                    match kind {
                        ListKind::All => {
                            for (id, commit) in state.releases.iter().rev() {
                                let mark = if state.current.as_deref() == Some(id) {
                                    "current"
                                } else if previous.as_deref() == Some(id) {
                                    "previous"
                                } else {
                                    ""
                                };
                                table.add_row([
                                    host.as_str(),
                                    id,
                                    commit.get(..7).unwrap_or(commit),
                                    mark,
                                ]);
                            }
                            if let Some(lock) = &state.lock {
                                table.add_row([host.as_str(), "(locked)", "", lock.as_str()]);
                            }
                        }
                        ListKind::Current | ListKind::Previous => {
                            let id = match kind {
                                ListKind::Current => state.current.clone(),
                                _ => previous.clone(),
                            };
                            let id = id.unwrap_or_default();
                            table.add_row([host.as_str(), id.as_str(), &commit_of(&id)]);
                        }
                    }
                    json_hosts.push(json!({
                        "host": host,
                        "current": state.current,
                        "previous": previous,
                        "releases": state.releases.iter().map(|(id, commit)| json!({"id": id, "commit": commit})).collect::<Vec<_>>(),
                        "locked_by": state.lock,
                    }));
                }
            }
        }
        if self.options.json {
            println!("{:#}", serde_json::Value::Array(json_hosts));
        } else {
            println!("{table}");
        }
        if all_ok {
            Ok(())
        } else {
            Err(Failure::failed("some hosts could not be reached"))
        }
    }

    async fn exec(&self, command: &str) -> Result<()> {
        let env = self.hook_env("", None);
        let results = futures::future::join_all(self.hosts.iter().map(|host| {
            let env = &env;
            async move {
                let script = remote::exec_in_current(&host.path, env, command);
                (host.name.clone(), host.run(&script, HOOK_TIMEOUT).await)
            }
        }))
        .await;
        self.progress.finish();
        let mut failed = Vec::new();
        for (host, result) in results {
            match result {
                Ok(output) => {
                    for line in String::from_utf8_lossy(&output.stdout).lines() {
                        println!("{host} | {line}");
                    }
                    for line in String::from_utf8_lossy(&output.stderr).lines() {
                        eprintln!("{host} | {line}");
                    }
                    if !output.success() {
                        failed.push(format!("{host} ({})", step_error(&output)));
                    }
                }
                Err(error) => failed.push(format!("{host} ({error})")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Failure::failed(format!(
                "exec failed on {}",
                failed.join(", ")
            )))
        }
    }

    async fn unlock(&self) -> Result<()> {
        let results = futures::future::join_all(self.hosts.iter().map(|host| async move {
            (
                host.name.clone(),
                host.run(&remote::force_unlock(&host.path), STEP_TIMEOUT)
                    .await,
            )
        }))
        .await;
        self.progress.finish();
        let mut failed = Vec::new();
        for (host, result) in results {
            match result {
                Ok(output) if output.success() => {
                    let text = String::from_utf8_lossy(&output.stdout);
                    let owner = text.lines().find_map(|l| l.strip_prefix("owner="));
                    match owner {
                        Some(owner) => println!("{host}: removed the lock of {owner}"),
                        None => println!("{host}: not locked"),
                    }
                }
                Ok(output) => failed.push(format!("{host} ({})", step_error(&output))),
                Err(error) => failed.push(format!("{host} ({error})")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Failure::failed(format!(
                "unlock failed on {}",
                failed.join(", ")
            )))
        }
    }
}

struct HostState {
    current: Option<String>,
    /// (id, commit), oldest first.
    releases: Vec<(String, String)>,
    lock: Option<String>,
}

fn payload_is_current(payload: &Payload<'_>, live: &Live) -> bool {
    matches!(payload, Payload::Existing { release } if live.previous.as_deref() == Some(*release))
}

/// After an undo: whether the host is on a release that works.
fn now_on_error(now_on: &Option<String>, live: &Live) -> std::result::Result<(), String> {
    if live.switched {
        return Err(format!(
            "could not switch back: current is {}",
            now_on.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(())
}

/// Renews the host's lock until aborted; a renewal that finds the lock gone or someone
/// else's sets `lost`. Network errors are retried: the lock's TTL covers them.
async fn renew_loop(host: Arc<Host>, token: String, every: Duration, lost: Arc<AtomicBool>) {
    let script = remote::renew(&host.path, &token);
    loop {
        tokio::time::sleep(every).await;
        if let Ok(output) = host.run(&script, every.max(Duration::from_secs(5))).await
            && output.exit_status == Some(1)
        {
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}

fn fact(facts: &[(String, String)], key: &str) -> Option<String> {
    facts
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
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

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_bytes(buffer: &mut [u8]) {
    use std::io::Read as _;
    if let Ok(mut file) = std::fs::File::open("/dev/urandom")
        && file.read_exact(buffer).is_ok()
    {
        return;
    }
    // Unique enough for a lock token when /dev/urandom is missing.
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond(),
        std::thread::current().id()
    );
    for (i, b) in sha256(seed.as_bytes())
        .iter()
        .enumerate()
        .take(buffer.len())
    {
        buffer[i] = *b;
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `fleet-agent` uploaded by `setup`: `FLEET_AGENT_BINARY`, else the one next to
/// this `fleet` (they are built and shipped together, so versions match).
fn local_agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_AGENT_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("cannot find the fleet binary: {e}")))?;
    let agent = exe.with_file_name("fleet-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(Failure::failed(format!(
            "{} is missing: setup uploads the fleet-agent that sits next to fleet\nhint: install both binaries together, or set FLEET_AGENT_BINARY",
            agent.display()
        )))
    }
}

fn print_summary(summaries: &[HostSummary]) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["HOST", "RESULT", "STEP", "RELEASE", "TIME", "ERROR"]);
    for s in summaries {
        let result = match s.result {
            HostResult::Ok => "ok",
            HostResult::Failed => "FAILED",
            HostResult::RolledBack => "rolled back",
            HostResult::Skipped => "skipped",
            HostResult::Unchanged => "unchanged",
        };
        table.add_row([
            s.host.clone(),
            result.to_string(),
            s.step.clone(),
            s.release.clone().unwrap_or_default(),
            format!("{:.1}s", s.duration_ms as f64 / 1000.0),
            s.error.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
}
