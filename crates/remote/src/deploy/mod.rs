//! `fleet deploy <stage> [setup|update|revert [n]|list|curr|prev|exec <cmd>|unlock]`:
//! releases over SSH, rolled out in batches, with a lock per host and rollback.
//!
//! Per host (`update`): lock, transfer (or clone), link shared paths, `pre_deploy` in
//! the new release while the live one serves, switch `current`, ask the host's agent to
//! reload the release's app config (readiness-gated), `post_deploy`, health; the lock
//! stays held until the whole deploy is decided, then each host records the result,
//! prunes old releases and unlocks, or (failures beyond `max_fail`) goes back to its
//! previous release.
//!
//! The decisions are pure (`plan`); `rollout` and `host` carry them out with
//! `executor`, the one place that touches a host; what runs there is written in
//! `script`, the commit is packed in `archive`. `setup` and `inspect` (list, curr,
//! prev, exec, unlock) are their own. Progress goes out as `event`s and the result
//! comes back as a `Report` or a listing: nothing here prints.

mod archive;
pub mod error;
pub mod event;
mod executor;
mod host;
mod inspect;
pub mod plan;
mod pm2;
mod rollout;
mod script;
mod setup;
pub mod submit;
pub mod summary;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use error::{DeployError, StepError};
pub use event::{Event, Events, Interrupt};
pub use inspect::{ExecResult, HostReleases, ListKind, Releases, UnlockResult};
pub use script::check_ref;
pub use summary::{HostResult, HostSummary, Report};

use crate::stage::{SshHost, Stage};
use executor::Host;
use script::RemotePath;

/// What `fleet deploy` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Setup,
    Update,
    /// Back `n` releases (1: the one before `current`).
    Revert(usize),
    List,
    Curr,
    Prev,
    Exec(String),
    Unlock,
}

/// How the deploy runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The branch, tag or commit instead of the stage's `ref`.
    pub git_ref: Option<String>,
    /// Leave switched hosts on the new release when others fail.
    pub no_rollback: bool,
    /// Why: kept in each host's lock and releases.log.
    pub reason: Option<String>,
    /// Host keys the operator accepts on this run, and whether warnings print now.
    pub ssh: crate::ssh::SshChoices,
    /// Who deploys, as `user@machine`; by default this process's user and hostname.
    pub who: Option<String>,
    /// Set by a controller running the deploy: what the CLI prepared (`prepare`), the
    /// release's name, the stage lock's fencing number (written into each host's lock)
    /// and whether this run resumes one that a controller restart cut short.
    pub prepared: Option<Prepared>,
    pub release: Option<String>,
    pub fence: u64,
    pub resumed: bool,
    /// Connect to every host first (the step `connect`) and refuse the deploy, before
    /// any host changes, when a host's key is unknown, changed or revoked.
    pub preflight: bool,
}

/// What `update` ships, resolved and packed where the deploy was asked for: the commit
/// and, for the archive strategy, its packed tree. Empty for the clone strategy (the
/// first host resolves the ref) unless a resumed run pins the commit it resolved.
#[derive(Clone, Default)]
pub struct Prepared {
    pub commit: String,
    pub summary: String,
    pub archive: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("commit", &self.commit)
            .field("archive_bytes", &self.archive.as_ref().map(|a| a.len()))
            .finish()
    }
}

/// For a deploy a controller will run: `pre_deploy_local` here, then (archive strategy)
/// the ref resolved and its tree packed here, as `update` would.
pub async fn prepare(
    stage: Stage,
    options: Options,
    events: Events,
) -> Result<Prepared, DeployError> {
    let context = Context::new(stage, options, events, Interrupt::new())?;
    context.prepare().await
}

/// What a deploy came back with.
#[derive(Debug)]
pub enum Outcome {
    /// `setup`, `update` or `revert`.
    Report(Report),
    /// `list`, `curr` or `prev`.
    Releases(Releases),
    Exec(Vec<ExecResult>),
    Unlock(Vec<UnlockResult>),
}

/// A finished deploy: its outcome, and warnings to show once (ignored ssh options,
/// host keys accepted because of `StrictHostKeyChecking=no`).
pub struct Finished {
    pub outcome: Result<Outcome, DeployError>,
    pub warnings: Vec<String>,
}

/// Everything a deploy's parts share.
struct Context {
    stage: Stage,
    hosts: Vec<Arc<Host>>,
    options: Options,
    git_ref: Option<String>,
    who: String,
    events: Events,
    interrupt: Interrupt,
}

/// Runs `action` on `stage`'s hosts. Everything that can be checked without a host
/// is checked before any connection.
pub async fn run(
    stage: Stage,
    action: Action,
    options: Options,
    events: Events,
    interrupt: Interrupt,
) -> Finished {
    let context = match Context::new(stage, options, events, interrupt) {
        Ok(context) => context,
        Err(error) => {
            return Finished {
                outcome: Err(error),
                warnings: Vec::new(),
            };
        }
    };
    let outcome = match action {
        Action::Setup => context.setup().await.map(Outcome::Report),
        Action::Update => context.update().await.map(Outcome::Report),
        Action::Revert(n) => context.revert(n).await.map(Outcome::Report),
        Action::List => Ok(Outcome::Releases(context.list(ListKind::All).await)),
        Action::Curr => Ok(Outcome::Releases(context.list(ListKind::Current).await)),
        Action::Prev => Ok(Outcome::Releases(context.list(ListKind::Previous).await)),
        Action::Exec(command) => Ok(Outcome::Exec(context.exec(&command).await)),
        Action::Unlock => Ok(Outcome::Unlock(context.unlock().await)),
    };
    for host in &context.hosts {
        host.pool().close().await;
    }
    let mut warnings = BTreeSet::new();
    for host in &context.hosts {
        warnings.extend(host.pool().take_warnings());
    }
    Finished {
        outcome,
        warnings: warnings.into_iter().collect(),
    }
}

impl Context {
    fn new(
        stage: Stage,
        options: Options,
        events: Events,
        interrupt: Interrupt,
    ) -> Result<Context, DeployError> {
        let git_ref = options.git_ref.clone().or(stage.config.git_ref.clone());
        if let Some(git_ref) = &git_ref {
            check_ref(git_ref).map_err(DeployError::Config)?;
        }
        let mut paths = Vec::new();
        for target in stage.config.targets() {
            paths.push(RemotePath::new(&target.path).map_err(|e| {
                DeployError::Config(format!(
                    "{}: deploy.{}: host {}: {e}",
                    stage.config_path.display(),
                    stage.name,
                    target.host
                ))
            })?);
        }
        let hosts = stage
            .ssh_targets(&options.ssh)
            .into_iter()
            .zip(paths)
            .map(|((target, pool), path)| {
                Arc::new(Host {
                    ssh: SshHost {
                        name: target.host,
                        pool,
                        fleet_home: stage.config.fleet_home.clone(),
                    },
                    path,
                })
            })
            .collect();
        let who = options.who.clone().unwrap_or_else(local_who);
        Ok(Context {
            stage,
            hosts,
            options,
            git_ref,
            who,
            events,
            interrupt,
        })
    }

    /// The stage's `env` (valid names only) and FLEET_STAGE, FLEET_RELEASE,
    /// FLEET_PREVIOUS_RELEASE, for hooks and `exec`.
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

    fn git_ref_or_head(&self) -> String {
        self.git_ref.clone().unwrap_or_else(|| "HEAD".into())
    }
}

/// `user@machine` of this process.
fn local_who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| nix::unistd::getuid().to_string());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string());
    format!("{user}@{host}")
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
