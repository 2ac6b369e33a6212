//! One host through an `update` or `revert`, carrying out `plan::HostWalk`'s
//! decisions: lock (with unpack and switch in the same exec where it can), the
//! remaining steps, and on failure the undo; later, once the rollout is decided, the
//! record, prune and unlock (or a rollback first). The lock is renewed in the
//! background while the host is held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use fleet_config::DeployStrategy;

use super::Context;
use super::error::StepError;
use super::executor::{Host, Step, StepOutput};
use super::plan::{self, HostNext, HostWalk, LockState, Phase, Stop, Undo};
use super::script::{self, LockInfo};
use super::summary::{HostResult, HostSummary};

/// What a host is switched to.
pub(super) enum Payload<'a> {
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
    pub(super) fn release(&self) -> &str {
        match self {
            Payload::New { release, .. } | Payload::Existing { release } => release,
        }
    }
}

/// A host in the middle of a deploy: locked, maybe switched.
pub(super) struct Live {
    host: Arc<Host>,
    token: String,
    /// `path` resolved on the host (absolute).
    root: String,
    /// The release `current` pointed at when the host was locked.
    current: Option<String>,
    /// The release to go back to: `current`, or the one before it when `current` is
    /// already this deploy's.
    previous: Option<String>,
    /// Every release on the host when it was locked.
    releases: Vec<String>,
    walk: HostWalk,
    /// The switched-to release's config file.
    config_file: Option<String>,
    /// Set when the lock could not be renewed (someone removed it).
    lock_lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// A host's step failed: where and why.
pub(super) struct Failure {
    step: &'static str,
    error: StepError,
}

fn fail(step: &'static str, error: StepError) -> Failure {
    Failure { step, error }
}

impl Context {
    /// One host up to health. On failure, the host is back where it was (as far as
    /// it can be reached) and unlocked.
    pub(super) async fn host_deploy(
        &self,
        host: Arc<Host>,
        payload: &Payload<'_>,
        reason: &str,
    ) -> Result<(Live, HostSummary), HostSummary> {
        let started = Instant::now();
        let summary = |result, step: &str, error: Option<String>, release, previous| HostSummary {
            host: host.name().to_string(),
            result,
            step: step.to_string(),
            error,
            release,
            previous,
            duration_ms: started.elapsed().as_millis() as u64,
            steps: Vec::new(),
        };
        let (mut live, failure) = match self.lock(&host, payload, reason).await {
            Ok(live) => (live, None),
            Err((f, None)) => {
                self.events
                    .failed(host.name(), f.step, &f.error.to_string());
                return Err(summary(
                    HostResult::Failed,
                    f.step,
                    Some(f.error.to_string()),
                    None,
                    None,
                ));
            }
            Err((f, Some(live))) => (live, Some(f)),
        };
        let failure = match failure {
            Some(f) => Some(f),
            // A run taken up again after its controller restarted goes on from the
            // switch (reload, hooks, health): this deploy switched the host before.
            None if is_current(payload, &live) && !self.options.resumed => {
                self.events.done(host.name(), "already on this release");
                let s = summary(
                    HostResult::Unchanged,
                    "switch",
                    None,
                    Some(payload.release().to_string()),
                    live.previous.clone(),
                );
                return Ok((live, s));
            }
            None => self.advance(&mut live, payload).await.err(),
        };
        let Some(f) = failure else {
            self.events
                .step(host.name(), "ready (waiting for the other hosts)");
            let s = summary(
                HostResult::Ok,
                "health",
                None,
                Some(payload.release().to_string()),
                live.previous.clone(),
            );
            return Ok((live, s));
        };
        let error = f.error.to_string();
        self.events.failed(host.name(), f.step, &error);
        let previous = live.previous.clone();
        let now_on = self.undo(&mut live, payload).await;
        let mut error = error;
        if live.walk.switched {
            error = format!(
                "{error}; could not switch back: current is {}",
                now_on.as_deref().unwrap_or("unknown")
            );
        }
        self.release_lock(live).await;
        Err(summary(
            HostResult::Failed,
            f.step,
            Some(error),
            now_on,
            previous,
        ))
    }

    /// Takes the host's lock and, in the same exec, unpacks the archive and switches
    /// when no pre-deploy hook must run in between (each sshd session costs a fork, a
    /// login shell and its start-up files on the host).
    async fn lock(
        &self,
        host: &Arc<Host>,
        payload: &Payload<'_>,
        reason: &str,
    ) -> Result<Live, (Failure, Option<Live>)> {
        self.events.step(host.name(), "lock");
        let token = random_token().map_err(|e| (fail("lock", e), None))?;
        let since = jiff::Timestamp::now().to_string();
        let info = LockInfo {
            token: &token,
            fence: self.options.fence,
            owner: &self.who,
            pid: std::process::id(),
            since: &since,
            reason,
            // Only a new release is the lock's to clean up if the deploy is abandoned.
            release: match payload {
                Payload::New { release, .. } => release,
                Payload::Existing { .. } => "",
            },
        };
        let config = &self.stage.config;
        let shared = script::Shared {
            dirs: &config.shared_dirs,
            files: &config.shared_files,
        };
        let (then, input, switches) = match payload {
            Payload::New {
                release,
                commit,
                archive: Some(bytes),
            } => {
                let switch = config.pre_deploy.is_none();
                let then = script::LockThen::Unpack {
                    release,
                    commit,
                    shared,
                    switch,
                };
                (then, Some(*bytes), switch)
            }
            Payload::Existing { release } => (script::LockThen::Switch { release }, None, true),
            Payload::New { archive: None, .. } => (script::LockThen::Nothing, None, false),
        };
        let script = script::lock_and(&host.path, &info, self.ttl_secs(), &then);
        let step = match input {
            Some(_) => Step::transfer(script, input),
            None => Step::quick(script),
        };
        let output = host
            .exec(&step)
            .await
            .map_err(|e| (fail("lock", e), None))?;
        let stdout = String::from_utf8_lossy(&output.raw.stdout).into_owned();
        if output.raw.exit_status == Some(script::LOCKED_STATUS) {
            return Err((fail("lock", self.locked_error(&stdout)), None));
        }
        let Some(root) = output.fact("root") else {
            // The lock was not taken.
            return Err((fail("lock", StepError::exit(&output.raw)), None));
        };
        if let Some(stale) = output.fact("stale_lock") {
            self.events.host_note(
                host.name(),
                format!(
                    "took over a stale lock (held by {stale}, not renewed for {}s)",
                    self.ttl_secs()
                ),
            );
        }
        let live = self.live(host, token, root, &output, payload, switches);
        if !output.raw.success() {
            let step = match output.all("step").last().map(String::as_str) {
                Some("transfer") => "transfer",
                Some("switch") => "switch",
                _ => "lock",
            };
            return Err((fail(step, StepError::exit(&output.raw)), Some(live)));
        }
        Ok(live)
    }

    /// The host as the lock's exec left it, with the lock's renewal running.
    fn live(
        &self,
        host: &Arc<Host>,
        token: String,
        root: String,
        output: &StepOutput,
        payload: &Payload<'_>,
        switches: bool,
    ) -> Live {
        let current = output
            .fact("current")
            .and_then(|c| c.rsplit('/').next().map(str::to_string))
            .filter(|c| script::valid_release(c));
        let releases: Vec<String> = output
            .all("release")
            .into_iter()
            .filter(|r| script::valid_release(r))
            .collect();
        // On the new release already (a resumed run): what it goes back to is the
        // newest release before it.
        let previous = match current.as_deref() == Some(payload.release()) {
            true => (releases.iter())
                .filter(|r| r.as_str() < payload.release())
                .max()
                .cloned(),
            false => current.clone(),
        };
        let reached = output.all("step").last().cloned();
        let switched = output.fact("switched").is_some();
        // On this deploy's release already (taken up again after a controller restart):
        // transferred and switched, whatever the strategy.
        let already = current.as_deref() == Some(payload.release());
        let lock = LockState {
            transferred: already || matches!(reached.as_deref(), Some("transfer" | "switch")),
            switch_done: already || (switches && switched),
        };
        let config = &self.stage.config;
        let kind = match payload {
            Payload::New {
                archive: Some(_), ..
            } => plan::Payload::Archive,
            Payload::New { archive: None, .. } => plan::Payload::Clone,
            Payload::Existing { release } => plan::Payload::Existing {
                present: releases.iter().any(|r| r == release),
            },
        };
        let hooks = plan::Hooks {
            pre_deploy: config.pre_deploy.is_some(),
            post_deploy: config.post_deploy.is_some(),
            post_deploy_starts_apps: config.post_deploy_starts_apps(),
        };
        let mut walk = HostWalk::new(kind, hooks, lock);
        // Unsure (the connection ended mid-switch): as if switched, so undo switches back.
        walk.switched = already
            || switched
            || (output.raw.exit_status.is_none() && reached.as_deref() == Some("switch"));
        let lock_lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_loop(
            Arc::clone(host),
            token.clone(),
            Duration::from_millis((config.lock_ttl_ms / 4).clamp(500, 10_000)),
            Arc::clone(&lock_lost),
        ));
        Live {
            host: Arc::clone(host),
            token,
            root,
            current,
            previous,
            releases,
            walk,
            config_file: output.fact("config"),
            lock_lost,
            renewer,
            started: Instant::now(),
        }
    }

    fn locked_error(&self, stdout: &str) -> StepError {
        if let Some(seen) = stdout.lines().find_map(|l| l.strip_prefix("fleet:fenced=")) {
            return StepError::Host(format!(
                "a newer deploy of this stage took this host (fencing number {seen}, this deploy's {}): this deploy lost the stage's lock",
                self.options.fence
            ));
        }
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or("?")
                .to_string()
        };
        StepError::Locked {
            owner: field("owner"),
            pid: field("pid"),
            since: field("since"),
            reason: field("reason"),
            stage: self.stage.name.clone(),
        }
    }

    pub(super) fn ttl_secs(&self) -> u64 {
        self.stage.config.lock_ttl_ms.div_ceil(1000).max(2)
    }

    /// The host's steps after the lock, as the walk decides, up to health.
    async fn advance(&self, live: &mut Live, payload: &Payload<'_>) -> Result<(), Failure> {
        loop {
            let next = live.walk.next(
                self.interrupt.is_set(),
                live.lock_lost.load(Ordering::SeqCst),
            );
            let phase = match next {
                HostNext::Ready => return Ok(()),
                HostNext::Stop { at, why } => {
                    let error = match why {
                        Stop::Interrupted => StepError::Interrupted,
                        Stop::LockLost => StepError::LockLost,
                        Stop::MissingRelease => StepError::Host(format!(
                            "release {} is not on this host",
                            payload.release()
                        )),
                    };
                    return Err(fail(at, error));
                }
                HostNext::Run(phase) => phase,
            };
            self.run_phase(live, payload, phase)
                .await
                .map_err(|(step, e)| fail(step, e))?;
            live.walk.step_done(phase);
        }
    }

    async fn run_phase(
        &self,
        live: &mut Live,
        payload: &Payload<'_>,
        phase: Phase,
    ) -> Result<(), (&'static str, StepError)> {
        let host = Arc::clone(&live.host);
        let release = payload.release();
        let config = &self.stage.config;
        let name = phase.name();
        if phase != Phase::Reload {
            self.events.step(host.name(), name);
        }
        // Every step that changes the host starts by checking the lock is still this
        // deploy's (another deployer may have taken it over while this one stalled).
        let guarded =
            |script: String| format!("{}{script}", script::still_locked(&host.path, &live.token));
        let hook = |command: &str| {
            let env = self.hook_env(release, live.previous.as_deref());
            let home = host.ssh.fleet_home.as_deref();
            Step::hook(guarded(script::hook(
                &host.path,
                Some(release),
                &env,
                home,
                command,
            )))
        };
        match phase {
            Phase::Transfer => {
                let Payload::New { commit, .. } = payload else {
                    return Ok(());
                };
                let script = script::clone_release(
                    &host.path,
                    &script::Source {
                        repo: config.repo.as_deref().unwrap_or_default(),
                        commit,
                        checkout: (config.strategy == DeployStrategy::Checkout)
                            .then(|| branch_of(config.git_ref.as_deref())),
                    },
                    release,
                    &script::Shared {
                        dirs: &config.shared_dirs,
                        files: &config.shared_files,
                    },
                );
                host.run(&Step::transfer(guarded(script), None))
                    .await
                    .map(drop)
            }
            Phase::PreDeploy => {
                let command = config.pre_deploy.as_deref().unwrap_or_default();
                host.hook(&hook(command), &self.events).await
            }
            Phase::PostDeploy => {
                let command = config.post_deploy.as_deref().unwrap_or_default();
                host.hook(&hook(command), &self.events).await
            }
            Phase::Switch => {
                let step = Step::quick(guarded(script::switch(&host.path, release)));
                host.run(&step).await.map(|output| {
                    live.config_file = output.fact("config");
                })
            }
            Phase::Reload => {
                return self
                    .apply(live, release, live.config_file.clone(), "reload")
                    .await;
            }
        }
        .map_err(|e| (name, e))
    }

    /// Switches `current`; returns the release's config file name, if it has one.
    /// A switch back (a rollback): like every step that changes the host, only while
    /// the lock is still this deploy's.
    async fn switch(
        &self,
        host: &Host,
        release: &str,
        token: &str,
    ) -> Result<Option<String>, StepError> {
        let script = format!(
            "{}{}",
            script::still_locked(&host.path, token),
            script::switch(&host.path, release)
        );
        let output = host.run(&Step::quick(script)).await?;
        Ok(output.fact("config"))
    }

    /// Asks the agent to reload the release's apps, then waits until all are online.
    /// A release without an app config is left to its hooks.
    async fn apply(
        &self,
        live: &Live,
        release: &str,
        config_file: Option<String>,
        step: &'static str,
    ) -> Result<(), (&'static str, StepError)> {
        let Some(config_file) = config_file else {
            return Ok(());
        };
        let host = &live.host;
        self.events.step(host.name(), step);
        let release_dir = format!("{}/releases/{release}", live.root.trim_end_matches('/'));
        let config_path = format!("{release_dir}/{config_file}");
        host.reload_release(config_path, release_dir, &self.stage.name, || {
            self.events.step(host.name(), "health")
        })
        .await
        .map_err(|(which, e)| (if which == "reload" { step } else { which }, e))
    }

    /// After a failure or a rollback decision: as `plan::undo` says. Returns the
    /// release `current` points at afterwards, if known.
    async fn undo(&self, live: &mut Live, payload: &Payload<'_>) -> Option<String> {
        let host = Arc::clone(&live.host);
        match live.walk.undo(live.previous.is_some()) {
            Undo::Nothing => live.previous.clone(),
            Undo::Discard => {
                let script = format!(
                    "{}{}",
                    script::still_locked(&host.path, &live.token),
                    script::discard(&host.path, payload.release())
                );
                let _ = host.exec(&Step::quick(script)).await;
                live.previous.clone()
            }
            Undo::StayOnNew => Some(payload.release().to_string()),
            Undo::SwitchBack => {
                let previous = live.previous.clone().unwrap_or_default();
                self.events.step(host.name(), "roll back");
                match self.switch(&host, &previous, &live.token).await {
                    Ok(config_file) => {
                        live.walk.switched = false;
                        if let Err((step, error)) = self
                            .apply(live, &previous, config_file, "reload previous")
                            .await
                        {
                            self.events
                                .host_note(host.name(), format!("rollback: {step}: {error}"));
                        }
                        Some(previous)
                    }
                    Err(error) => {
                        self.events
                            .host_note(host.name(), format!("rollback: switch: {error}"));
                        Some(payload.release().to_string())
                    }
                }
            }
        }
    }

    /// Records the host's result, prunes, unlocks; or rolls it back first.
    pub(super) async fn host_finish(
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
            self.events.done(host.name(), "rolled back");
        }
        let (action, commit) = match payload {
            Payload::New { commit, .. } => ("update", commit.to_string()),
            Payload::Existing { .. } => ("revert", String::new()),
        };
        let record = json!({
            "id": release,
            "commit": commit,
            "ref": self.git_ref_or_head(),
            "action": action,
            "who": self.who,
            "when": jiff::Timestamp::now().to_string(),
            "reason": reason,
            "previous": live.previous,
            "result": summary.result.record(),
        })
        .to_string();
        let prune = match payload {
            Payload::New { .. } if summary.result == HostResult::Ok => plan::prune(
                &live.releases,
                &release,
                live.previous.as_deref(),
                self.stage.config.keep_releases as usize,
            ),
            _ => Vec::new(),
        };
        live.renewer.abort();
        let step = Step::quick(format!(
            "{}{}",
            script::still_locked(&host.path, &live.token),
            script::finish(&host.path, &live.token, &record, &prune)
        ));
        if let Err(error) = host.run(&step).await {
            summary.error = Some(format!("record and unlock: {error}"));
        }
        if summary.result == HostResult::Ok {
            let took = live.started.elapsed().as_secs_f64();
            self.events
                .done(host.name(), &format!("deployed {release} in {took:.1}s"));
        }
        summary
    }

    async fn release_lock(&self, live: Live) {
        live.renewer.abort();
        let step = Step::quick(script::unlock(&live.host.path, &live.token));
        let _ = live.host.exec(&step).await;
    }
}

/// A revert to the release the host is already on.
/// Whether the host is on the payload's release already: a revert's target, or (a run
/// resumed after a controller restart) the release this deploy switched it to.
fn is_current(payload: &Payload<'_>, live: &Live) -> bool {
    live.current.as_deref() == Some(payload.release())
}

/// Renews the host's lock until aborted; a renewal that finds the lock gone or someone
/// else's sets `lost`. Network errors are retried: the lock's TTL covers them.
async fn renew_loop(host: Arc<Host>, token: String, every: Duration, lost: Arc<AtomicBool>) {
    let step = Step {
        script: script::renew(&host.path, &token),
        timeout: every.max(Duration::from_secs(5)),
        input: None,
    };
    loop {
        tokio::time::sleep(every).await;
        if let Ok(output) = host.exec(&step).await
            && output.raw.exit_status == Some(1)
        {
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// A lock token: 128 bits from the OS's random source.
fn random_token() -> Result<String, StepError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StepError::Host(format!("this machine's random source failed: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The branch a checkout release has checked out: PM2's `ref` without its remote
/// (`origin/main` is `main`); `None` (a detached checkout) for no ref.
fn branch_of(git_ref: Option<&str>) -> Option<String> {
    let git_ref = git_ref?;
    let branch = git_ref.split_once('/').map_or(git_ref, |(_, b)| b);
    let valid = !branch.is_empty()
        && !branch.starts_with('-')
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    valid.then(|| branch.to_string())
}
