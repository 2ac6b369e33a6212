//! `update` and `revert`: what to ship (the commit packed, or resolved on the first
//! host for the clone strategy; for a revert, a release present on every host), then
//! the rollout as `plan::Plan` decides, host by host through `host`, and the report,
//! recorded in the controller's audit log when there is one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fleet_config::DeployStrategy;
use tokio::io::AsyncBufReadExt as _;

use super::Context;
use super::archive;
use super::error::DeployError;
use super::executor::Step;
use super::host::Payload;
use super::plan::{Next, Plan, Policy};
use super::script;
use super::summary::{HostSummary, Report};

/// What an update ships: the commit and, for the archive strategy, its packed tree.
struct Shipment {
    commit: String,
    summary: String,
    archive: Option<Vec<u8>>,
}

impl Context {
    pub(super) async fn update(&self) -> Result<Report, DeployError> {
        let started = Instant::now();
        let base_dir = self
            .stage
            .config_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let shipment = match &self.options.prepared {
            // Prepared where the deploy was asked for (a controller runs it).
            Some(prepared) if !prepared.commit.is_empty() => Shipment {
                commit: prepared.commit.clone(),
                summary: prepared.summary.clone(),
                archive: prepared.archive.as_ref().map(|a| a.to_vec()),
            },
            Some(_) => self.resolve_on_first_host().await?,
            None => {
                self.pre_deploy_local(&base_dir).await?;
                match self.stage.config.strategy {
                    DeployStrategy::Archive => self.pack(&base_dir)?,
                    DeployStrategy::Clone | DeployStrategy::Checkout => {
                        self.resolve_on_first_host().await?
                    }
                }
            }
        };
        let commit = &shipment.commit;
        let short = &commit[..7];
        let release = (self.options.release.clone()).unwrap_or_else(|| {
            format!(
                "{}-{short}",
                jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ"),
            )
        });
        self.events.started(&release, commit);
        self.connect_all().await?;
        let git_ref = self.git_ref_or_head();
        let summary = if shipment.summary.is_empty() {
            String::new()
        } else {
            format!(" {}", shipment.summary)
        };
        self.events.note(format!(
            "deploying {git_ref} ({short}{summary}) to {} host(s) of {} as release {release}",
            self.hosts.len(),
            self.stage.name
        ));
        if let Some(note) = super::pm2::differences(
            &self.stage.name,
            &self.stage.config,
            &self.stage.config_path,
        ) {
            self.events.note(note);
        }
        let payload = Payload::New {
            release: &release,
            commit,
            archive: shipment.archive.as_deref(),
        };
        let reason =
            (self.options.reason.clone()).unwrap_or_else(|| format!("deploy {git_ref} ({short})"));
        let (hosts, rolled_back) = self.roll_out(&payload, &reason).await;
        Ok(self
            .report(
                "update",
                Some(&release),
                Some(commit),
                hosts,
                rolled_back,
                started,
            )
            .await)
    }

    /// The stage's `pre_deploy_local`, run here before anything is sent.
    async fn pre_deploy_local(&self, base_dir: &std::path::Path) -> Result<(), DeployError> {
        let Some(command) = &self.stage.config.pre_deploy_local else {
            return Ok(());
        };
        self.events
            .note(format!("local | pre-deploy-local: {command}"));
        // Its output becomes the `local` host's lines: nothing here prints.
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(base_dir)
            .envs(self.stage.config.env.iter())
            .env("FLEET_STAGE", &self.stage.name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| DeployError::Local(format!("pre-deploy-local: cannot run sh: {e}")))?;
        let forward = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
            let events = self.events.clone();
            async move {
                let Some(stream) = stream else { return };
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    events.output("local", &line);
                }
            }
        };
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<_>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<_>);
        let (status, (), ()) = tokio::join!(child.wait(), forward(stdout), forward(stderr));
        let status = status
            .map_err(|e| DeployError::Local(format!("pre-deploy-local: cannot run sh: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(DeployError::Local(format!(
                "pre-deploy-local failed ({status}); nothing was sent to any host"
            )))
        }
    }

    /// With `preflight`: every host connected at once (step `connect`); a host whose key
    /// is not known refuses the whole deploy before anything changes. A host that cannot
    /// be reached is left to the rollout (it fails there, within `max_fail`).
    async fn connect_all(&self) -> Result<(), DeployError> {
        if !self.options.preflight {
            return Ok(());
        }
        let connects = self.hosts.iter().map(|host| async move {
            self.events.step(host.name(), "connect");
            (host.name(), host.pool().connect(host.name()).await)
        });
        let refused: Vec<String> = futures::future::join_all(connects)
            .await
            .into_iter()
            .filter_map(|(host, result)| match result {
                Err(
                    error @ (crate::ssh::SshError::UnknownHostKey { .. }
                    | crate::ssh::SshError::ChangedHostKey { .. }
                    | crate::ssh::SshError::RevokedHostKey { .. }),
                ) => Some(format!("{host}: {error}")),
                _ => None,
            })
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        for line in &refused {
            let host = line.split(':').next().unwrap_or("");
            self.events.failed(host, "connect", line);
        }
        Err(DeployError::Refused(format!(
            "refused before any host changed:\n{}",
            refused.join("\n")
        )))
    }

    /// `prepare`: `pre_deploy_local`, then the archive strategy's packing.
    pub(super) async fn prepare(&self) -> Result<super::Prepared, DeployError> {
        let base_dir = (self.stage.config_path.parent())
            .map(PathBuf::from)
            .unwrap_or_default();
        self.pre_deploy_local(&base_dir).await?;
        match self.stage.config.strategy {
            DeployStrategy::Archive => {
                // Off the runtime's thread: the controller's TLS handshake goes on meanwhile.
                let git_ref = self.git_ref.clone();
                let shipment =
                    tokio::task::spawn_blocking(move || pack_at(&base_dir, git_ref.as_deref()))
                        .await
                        .map_err(|e| DeployError::Local(format!("packing stopped: {e}")))??;
                Ok(super::Prepared {
                    commit: shipment.commit,
                    summary: shipment.summary,
                    archive: shipment.archive.map(Arc::new),
                })
            }
            DeployStrategy::Clone | DeployStrategy::Checkout => Ok(super::Prepared::default()),
        }
    }

    /// The archive strategy: the ref resolved and its tree packed here.
    fn pack(&self, base_dir: &std::path::Path) -> Result<Shipment, DeployError> {
        pack_at(base_dir, self.git_ref.as_deref())
    }

    /// The clone strategy: the first host's mirror resolves the ref, so every host
    /// exports exactly that commit.
    async fn resolve_on_first_host(&self) -> Result<Shipment, DeployError> {
        let repo = self.stage.config.repo.clone().unwrap_or_default();
        let git_ref = (self.git_ref.clone())
            .map(|r| r.strip_prefix("origin/").map(str::to_string).unwrap_or(r))
            .unwrap_or_else(|| "HEAD".to_string());
        let first = &self.hosts[0];
        let script = script::resolve_ref(&first.path, &repo, &git_ref);
        self.events.step(first.name(), "resolve ref");
        let host_error = |message: String| DeployError::Host {
            host: first.name().to_string(),
            message,
        };
        let output = first
            .exec(&Step::transfer(script, None))
            .await
            .map_err(|e| host_error(format!("resolve ref: {e}")))?;
        let sha = output.fact("commit").unwrap_or_default();
        let full_sha = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
        if output.raw.success() && !full_sha {
            return Err(host_error(format!(
                "the host reported {sha:?} for {git_ref:?}, not a commit id (40 or 64 hex digits)"
            )));
        }
        if !output.raw.success() {
            let error = super::StepError::exit(&output.raw);
            return Err(host_error(format!(
                "cannot resolve {git_ref:?} in {repo}: {error}"
            )));
        }
        Ok(Shipment {
            commit: sha,
            summary: String::new(),
            archive: None,
        })
    }

    pub(super) async fn revert(&self, n: usize) -> Result<Report, DeployError> {
        let started = Instant::now();
        // A resumed revert goes to the release its first attempt chose (hosts it
        // already reverted have another `current` now).
        let target = match &self.options.release {
            Some(release) => release.clone(),
            None => self.revert_target(n).await?,
        };
        self.events.started(&target, "");
        self.connect_all().await?;
        self.events.note(format!(
            "reverting {} host(s) of {} to release {target}",
            self.hosts.len(),
            self.stage.name
        ));
        let payload = Payload::Existing { release: &target };
        let reason = (self.options.reason.clone()).unwrap_or_else(|| format!("revert to {target}"));
        let (hosts, rolled_back) = self.roll_out(&payload, &reason).await;
        Ok(self
            .report("revert", Some(&target), None, hosts, rolled_back, started)
            .await)
    }

    /// The release `n` before the current one that every host has.
    async fn revert_target(&self, n: usize) -> Result<String, DeployError> {
        let inspected = self.inspect_all().await;
        let mut states = Vec::new();
        for (host, result) in &inspected {
            states.push(result.as_ref().map_err(|e| DeployError::Host {
                host: host.clone(),
                message: format!(
                    "{e}\nrevert needs every host, to find a release present on all of them"
                ),
            })?);
        }
        let common = super::inspect::common_releases(states.iter().copied());
        let reference = states.iter().find_map(|state| state.current.clone());
        let Some(current) = reference else {
            return Err(DeployError::Refused(
                "no host has a current release: nothing to revert".to_string(),
            ));
        };
        let older: Vec<String> = (common.into_iter())
            .filter(|r| *r < current)
            .rev()
            .collect();
        older.get(n.max(1) - 1).cloned().ok_or_else(|| {
            DeployError::Refused(format!(
                "there is no release {n} before {current} present on every host ({} found)\nhint: `fleet deploy {} list` shows each host's releases",
                older.len(),
                self.stage.name
            ))
        })
    }

    /// Batches of hosts through the steps up to health; then each host either records
    /// and unlocks, or goes back. Returns the hosts' summaries in the stage's order and
    /// whether the switched hosts were rolled back.
    async fn roll_out(&self, payload: &Payload<'_>, reason: &str) -> (Vec<HostSummary>, bool) {
        let config = &self.stage.config;
        let mut plan = Plan::new(
            self.hosts.len(),
            Policy {
                canary: config.canary,
                batch_size: config.batch.size(self.hosts.len()),
                max_fail: config.max_fail,
                no_rollback: self.options.no_rollback,
            },
        );
        let mut ready = Vec::new();
        let mut summaries: BTreeMap<String, HostSummary> = BTreeMap::new();
        let roll_back = loop {
            let batch = match plan.next(self.interrupt.is_set()) {
                Next::Batch(batch) => batch,
                Next::Finish { skipped, roll_back } => {
                    for index in skipped {
                        let host = self.hosts[index].name();
                        self.events.done(host, "skipped");
                        summaries.insert(host.to_string(), HostSummary::skipped(host));
                    }
                    break roll_back;
                }
            };
            let results =
                futures::future::join_all(batch.iter().map(|&index| {
                    self.host_deploy(Arc::clone(&self.hosts[index]), payload, reason)
                }))
                .await;
            let mut failed = 0;
            for result in results {
                match result {
                    Ok(live) => ready.push(live),
                    Err(summary) => {
                        failed += 1;
                        summaries.insert(summary.host.clone(), summary);
                    }
                }
            }
            plan.batch_done(failed, self.interrupt.is_set());
        };
        let finishes =
            futures::future::join_all(ready.into_iter().map(|(live, summary)| {
                self.host_finish(live, summary, payload, roll_back, reason)
            }))
            .await;
        for summary in finishes {
            summaries.insert(summary.host.clone(), summary);
        }
        let ordered = (self.hosts.iter())
            .filter_map(|h| summaries.remove(h.name()))
            .collect();
        (ordered, roll_back)
    }

    pub(super) async fn report(
        &self,
        action: &str,
        release: Option<&str>,
        commit: Option<&str>,
        mut hosts: Vec<HostSummary>,
        rolled_back: bool,
        started: Instant,
    ) -> Report {
        for summary in &mut hosts {
            summary.steps = self.events.step_times(&summary.host);
        }
        let mut report = Report {
            stage: self.stage.name.clone(),
            action: action.to_string(),
            release: release.map(str::to_string),
            commit: commit.map(str::to_string),
            git_ref: self.git_ref_or_head(),
            ok: Report::all_ok(&hosts),
            rolled_back,
            duration_ms: started.elapsed().as_millis() as u64,
            hosts,
            audit_error: None,
        };
        report.audit_error = self.audit(&report).await.err();
        report
    }

    /// With a controller: the deploy in its audit log, with each host's outcome and
    /// step timings (the dashboard's deploys page).
    async fn audit(&self, report: &Report) -> Result<(), String> {
        let Some(controller) = &self.stage.controller else {
            return Ok(());
        };
        let mut client = crate::stage::connect_controller(controller)
            .await
            .map_err(|e| e.to_string())?;
        let result = Report::audit_result(&report.hosts, report.rolled_back);
        client
            .record_deploy(fleet_proto::controller::v1::DeployRecord {
                stage: self.stage.name.clone(),
                action: report.action.clone(),
                release: report.release.clone().unwrap_or_default(),
                hosts: self.hosts.iter().map(|h| h.name().to_string()).collect(),
                result,
                who: self.who.clone(),
                git_ref: report.git_ref.clone(),
                commit: report.commit.clone().unwrap_or_default(),
                rolled_back: report.rolled_back,
                duration_ms: report.duration_ms,
                outcomes_json: serde_json::to_string(&report.hosts).unwrap_or_default(),
            })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(())
    }
}

/// `git_ref` resolved in the repository at `base_dir` and its tree packed.
fn pack_at(base_dir: &std::path::Path, git_ref: Option<&str>) -> Result<Shipment, DeployError> {
    let (repo, commit) = archive::resolve(base_dir, git_ref).map_err(DeployError::Config)?;
    let bytes = archive::pack(&repo, &commit.sha)
        .map_err(|e| DeployError::Local(format!("cannot pack commit {}: {e}", commit.sha)))?;
    Ok(Shipment {
        commit: commit.sha,
        summary: commit.summary,
        archive: Some(bytes),
    })
}
