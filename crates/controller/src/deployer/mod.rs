//! Deploys the controller runs (`fleet deploy <stage>` with a controller in use): the
//! CLI resolves the ref and packs the release where its repository is, uploads it once
//! (`SubmitDeploy`), and the controller runs the deploy with the remote crate's plan and
//! executor, the same code as the CLI's SSH path, over SSH with its own deploy key and
//! known_hosts (`keys`). Every event is written to the store as it happens and streamed
//! to whoever follows (`follow`: a replay, then live); the submitter going away
//! detaches. One lock per stage in the store, with a fencing number written into each
//! host's lock. A controller that stopped mid-deploy takes each unfinished run up again
//! when it starts (`resume`): same release, same archive, a new fencing number; hosts
//! the first attempt switched count as switched, so the plan finishes the rollout or
//! rolls them back.

pub mod keys;
mod takeover;

pub(crate) use takeover::{notice_cancels, take_over};
pub mod runs;
pub(crate) mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_config::DeployStage;
use fleet_proto::controller::v1::DeployProgress;
use fleet_remote::deploy::{self, Action, Event, Events, Interrupt, Outcome, Prepared};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::now_unix_ms;
use crate::registry::lock;
use crate::server::Controller;

/// Events a run keeps in memory for followers; hook output past it is only counted.
const MAX_EVENTS: usize = 20_000;
/// Progress messages queued for one follower before it is cut off (it can attach again).
const FOLLOW_QUEUE: usize = 1024;
/// `ssh_options` a submitted stage may bring: none that names a file or a command on the
/// controller, or that loosens host key checking.
const ALLOWED_SSH_OPTIONS: &[&str] = &[
    "connecttimeout",
    "serveraliveinterval",
    "serveralivecountmax",
    "port",
    "user",
    "hostname",
];

/// What a submission asks for, kept with the run (JSON) so a restarted controller can
/// run it again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub stage: String,
    pub config: DeployStage,
    /// `update` or `revert`.
    pub action: String,
    pub revert_steps: u32,
    pub git_ref: Option<String>,
    pub no_rollback: bool,
    pub reason: Option<String>,
    /// `token:<name> (user@machine)`, for the hosts' locks and the audit log.
    pub who: String,
    pub accept_new_host_keys: bool,
    pub commit: String,
    pub summary: String,
    pub has_archive: bool,
}

/// One progress message: an event or the end.
#[derive(Clone)]
enum Item {
    Event(u64, Arc<str>),
    Done(Arc<(String, String)>),
}

/// A deploy running in this controller.
pub struct Run {
    pub id: u64,
    pub stage: String,
    interrupt: Interrupt,
    log: Mutex<RunLog>,
}

struct RunLog {
    events: Vec<(u64, Arc<str>)>,
    next_seq: u64,
    dropped_output: u64,
    done: Option<Arc<(String, String)>>,
    tx: broadcast::Sender<Item>,
}

impl Run {
    fn new(id: u64, stage: String, next_seq: u64) -> Run {
        Run {
            id,
            stage,
            interrupt: Interrupt::new(),
            log: Mutex::new(RunLog {
                events: Vec::new(),
                next_seq,
                dropped_output: 0,
                done: None,
                tx: broadcast::channel(FOLLOW_QUEUE).0,
            }),
        }
    }
}

/// The runs in progress, and where the deploy key and known hosts live.
pub struct Deployer {
    active: Mutex<HashMap<u64, Arc<Run>>>,
    pub files: keys::Files,
}

impl Deployer {
    pub fn new(files: keys::Files) -> Deployer {
        Deployer {
            active: Mutex::default(),
            files,
        }
    }

    /// The stage's running deploy, if this controller runs it.
    pub fn running(&self, stage: &str) -> Option<Arc<Run>> {
        lock(&self.active)
            .values()
            .find(|r| r.stage == stage)
            .cloned()
    }

    /// Starts run `id` (new, or resumed after a restart).
    pub(crate) fn start(
        controller: &Arc<Controller>,
        id: u64,
        request: Request,
        release: Option<String>,
        fence: u64,
        resumed: bool,
        start: Start,
    ) {
        let run = Arc::new(Run::new(id, request.stage.clone(), start.next_seq));
        if start.cancelled {
            run.interrupt.interrupt();
        }
        lock(&controller.deployer.active).insert(id, run.clone());
        let controller = controller.clone();
        tokio::spawn(async move {
            let attempt = Attempt {
                release,
                fence,
                resumed,
            };
            execute(&controller, &run, request, attempt).await;
            lock(&controller.deployer.active).remove(&run.id);
        });
    }

    /// Asks the stage's running deploy to stop; its id.
    pub fn cancel(&self, stage: &str) -> Option<u64> {
        let run = self.running(stage)?;
        run.interrupt.interrupt();
        Some(run.id)
    }
}

/// How a run starts: where its events resume, and whether it is cancelled already.
pub(crate) struct Start {
    pub next_seq: u64,
    pub cancelled: bool,
}

/// How this attempt at a run differs from a first one.
struct Attempt {
    release: Option<String>,
    fence: u64,
    resumed: bool,
}

/// Takes up every run a stopped controller left unfinished. On a shared store each
/// run is its controller's: those of one that died (a previous start of this one
/// included) are taken over once its lease ends (`takeover`).
pub(crate) async fn resume(controller: &Arc<Controller>) {
    if controller.config.store.is_some() {
        return;
    }
    let unfinished = until_stored(|| controller.store.call(runs::resume_all)).await;
    let unfinished = match unfinished {
        Ok(unfinished) => unfinished,
        Err(error) => {
            tracing::error!(%error, "cannot read the unfinished deploys");
            return;
        }
    };
    for run in unfinished {
        start_unfinished(controller, run).await;
    }
}

/// Starts again a run found unfinished (this controller's restart, or a dead peer's).
pub(crate) async fn start_unfinished(controller: &Arc<Controller>, run: runs::Unfinished) {
    {
        let request = match serde_json::from_str::<Request>(&run.request) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(id = run.id, %error, "an unfinished deploy's request is unreadable");
                return;
            }
        };
        let id = run.id;
        let next_seq = controller
            .store
            .call(move |conn| Ok(runs::events(conn, id, 0)?.last().map_or(1, |(s, _)| s + 1)))
            .await
            .unwrap_or(1);
        tracing::info!(id, stage = %run.stage, fence = run.fence, "resuming a deploy the controller stopped during");
        let mut request = request;
        if !run.commit.is_empty() {
            request.commit = run.commit.clone();
        }
        let release = Some(run.release).filter(|r| !r.is_empty());
        let start = Start {
            next_seq,
            cancelled: run.cancelling,
        };
        Deployer::start(controller, id, request, release, run.fence, true, start);
    }
}

/// Records one event of `run`: in memory for followers, then in the store.
fn push(controller: &Controller, run: &Run, event: &Event) {
    let json: Arc<str> = match serde_json::to_string(event) {
        Ok(json) => json.into(),
        Err(_) => return,
    };
    let seq = {
        let mut log = lock(&run.log);
        if log.events.len() >= MAX_EVENTS && matches!(event, Event::Output { .. }) {
            log.dropped_output += 1;
            return;
        }
        let seq = log.next_seq;
        log.next_seq += 1;
        log.events.push((seq, json.clone()));
        let _ = log.tx.send(Item::Event(seq, json.clone()));
        seq
    };
    let (id, at) = (run.id, now_unix_ms());
    controller.store.write("deploy event", move |conn| {
        runs::append_event(conn, id, seq, at, &json)
    });
    if let Event::Started { release, commit } = event {
        let (release, commit) = (release.clone(), commit.clone());
        controller.store.write("deploy release", move |conn| {
            runs::set_release(conn, id, &release, &commit)
        });
    }
}

/// The stage as the controller runs it: its own key and known hosts, no ssh_config,
/// no option that names a file or a command here, no agent forwarding, nothing run
/// locally (`pre_deploy_local` ran where the deploy was asked for).
pub fn controller_stage(files: &keys::Files, request: &Request) -> fleet_remote::stage::Stage {
    let mut config = request.config.clone();
    config.key = Some(files.deploy_key.display().to_string());
    config.ssh_options.retain(|option| {
        let name = option.split(['=', ' ']).next().unwrap_or("");
        ALLOWED_SSH_OPTIONS.contains(&name.to_ascii_lowercase().as_str())
    });
    config.forward_agent = false;
    config.pre_deploy_local = None;
    for host in config.hosts.values_mut() {
        host.key = None;
    }
    fleet_remote::stage::Stage {
        name: request.stage.clone(),
        config_path: files.dir.join("deploys").join("fleet.toml"),
        config,
        controller: None,
    }
}

/// The run's archive on disk, while the run may need it.
pub fn archive_path(files: &keys::Files, id: u64) -> PathBuf {
    files.dir.join("deploys").join(format!("{id}.tar"))
}

async fn execute(controller: &Arc<Controller>, run: &Arc<Run>, request: Request, attempt: Attempt) {
    let files = &controller.deployer.files;
    let stage = controller_stage(files, &request);
    let ssh = fleet_remote::ssh::SshChoices {
        accept_new_host_keys: request.accept_new_host_keys,
        accept_changed_host_keys: Vec::new(),
        print_warnings: false,
        known_hosts: Some(files.known_hosts.clone()),
        ssh_config: Some(files.ssh_config.clone()),
    };
    let archive = match request.has_archive {
        true => match std::fs::read(archive_path(files, run.id)) {
            Ok(bytes) => Some(Arc::new(bytes)),
            Err(error) => {
                let why = format!("the release archive of deploy #{} is gone: {error}", run.id);
                return end(controller, run, &request, Err(why)).await;
            }
        },
        false => None,
    };
    let options = deploy::Options {
        git_ref: request.git_ref.clone(),
        no_rollback: request.no_rollback,
        reason: request.reason.clone(),
        ssh: ssh.clone(),
        who: Some(request.who.clone()),
        prepared: Some(Prepared {
            commit: request.commit.clone(),
            summary: request.summary.clone(),
            archive,
        }),
        release: attempt.release.clone(),
        fence: attempt.fence,
        resumed: attempt.resumed,
        preflight: true,
    };
    let action = match request.action.as_str() {
        "revert" => Action::Revert(request.revert_steps.max(1) as usize),
        _ => Action::Update,
    };
    let (events, mut stream) = Events::channel();
    let forward = {
        let (controller, run) = (controller.clone(), run.clone());
        tokio::spawn(async move {
            while let Some(event) = stream.recv().await {
                push(&controller, &run, &event);
            }
        })
    };
    if attempt.resumed {
        events.note(format!(
            "the controller restarted during this deploy: taking it up again (fencing number {})",
            attempt.fence
        ));
    }
    let finished = deploy::run(stage, action, options, events, run.interrupt.clone()).await;
    let _ = forward.await;
    let result = match finished.outcome {
        Ok(Outcome::Report(report)) => Ok(report),
        Ok(_) => Err("the deploy ended without a report".to_owned()),
        Err(error) => Err(error.to_string()),
    };
    end(controller, run, &request, result).await;
}

/// The run's end: recorded (deploys table, audit log, alerts, metrics), its stage lock
/// released, its archive removed, and followers told.
async fn end(
    controller: &Arc<Controller>,
    run: &Run,
    request: &Request,
    result: Result<deploy::Report, String>,
) {
    let dropped = lock(&run.log).dropped_output;
    if dropped > 0 {
        push(
            controller,
            run,
            &Event::Note {
                host: None,
                text: format!(
                    "{dropped} lines of hook output were not kept (the first {MAX_EVENTS} events are)"
                ),
            },
        );
    }
    let cancelled = run.interrupt.is_set();
    let (state, report_json, error) = match &result {
        Ok(report) => {
            let state = match (report.ok, report.rolled_back, cancelled) {
                (_, _, true) => "cancelled",
                (true, _, _) => "ok",
                (false, true, _) => "rolled_back",
                (false, false, _) => "failed",
            };
            (
                state,
                serde_json::to_string(report).unwrap_or_default(),
                String::new(),
            )
        }
        Err(why) => ("error", String::new(), why.clone()),
    };
    crate::fleet_service::record_run(controller, request, &result, cancelled).await;
    let (id, report, why) = (run.id, report_json.clone(), error.clone());
    let finished = until_stored(|| {
        let (report, why) = (report.clone(), why.clone());
        controller.store.call(move |conn| {
            runs::finish(
                conn,
                id,
                state,
                Some(report.as_str()).filter(|r| !r.is_empty()),
                Some(why.as_str()).filter(|w| !w.is_empty()),
                now_unix_ms(),
            )
        })
    })
    .await;
    if let Err(error) = finished {
        tracing::error!(id, %error, "cannot record the end of a deploy");
    }
    let _ = std::fs::remove_file(archive_path(&controller.deployer.files, run.id));
    if controller.config.store.is_some() {
        let id = run.id;
        controller
            .store
            .write("deploy archive dropped", move |conn| {
                runs::drop_archive(conn, id)
            });
    }
    let done = Arc::new((report_json, error));
    let mut log = lock(&run.log);
    log.done = Some(done.clone());
    let _ = log.tx.send(Item::Done(done));
}

fn progress(id: u64, item: &Item) -> DeployProgress {
    match item {
        Item::Event(seq, json) => DeployProgress {
            deploy_id: id,
            seq: *seq,
            event_json: json.to_string(),
            ..DeployProgress::default()
        },
        Item::Done(done) => DeployProgress {
            deploy_id: id,
            done: true,
            report_json: done.0.clone(),
            error: done.1.clone(),
            ..DeployProgress::default()
        },
    }
}

/// How long a run's start or end waits for a store that is unavailable (SQLite busy
/// with another process's write, PostgreSQL restarting) before giving up: a lost end
/// would leave the stage locked.
const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `call` again every second while the store is unavailable, for `STORE_PATIENCE`.
async fn until_stored<T, F: std::future::Future<Output = Result<T, crate::Error>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, crate::Error> {
    let until = tokio::time::Instant::now() + STORE_PATIENCE;
    loop {
        match call().await {
            Err(error) if error.is_store_unavailable() && tokio::time::Instant::now() < until => {
                tracing::warn!(%error, "the store is unavailable; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// How often a follower of a run another controller runs reads its new events.
const STORE_FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Run `id`'s progress: every event so far, then the live ones, then its end.
pub(crate) async fn follow(
    controller: &Arc<Controller>,
    id: u64,
) -> mpsc::Receiver<Result<DeployProgress, Status>> {
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    let active = lock(&controller.deployer.active).get(&id).cloned();
    let controller = controller.clone();
    tokio::spawn(async move {
        let send = |item: Item| {
            let tx = tx.clone();
            async move { tx.send(Ok(progress(id, &item))).await.is_ok() }
        };
        let Some(run) = active else {
            // Finished, or run by another controller of the store: from the store, as its
            // events are written, until it ends.
            let mut last = 0;
            loop {
                let read = controller
                    .store
                    .call(move |conn| Ok((runs::events(conn, id, last)?, runs::outcome(conn, id)?)))
                    .await;
                let Ok((events, outcome)) = read else { return };
                for (seq, json) in events {
                    last = seq;
                    if !send(Item::Event(seq, json.into())).await {
                        return;
                    }
                }
                if let Some((report, error)) = outcome {
                    send(Item::Done(Arc::new((
                        report.unwrap_or_default(),
                        error.unwrap_or_default(),
                    ))))
                    .await;
                    return;
                }
                if controller.config.store.is_none() {
                    // One controller: a run it does not hold is over (a restart cut it).
                    send(Item::Done(Arc::new((
                        String::new(),
                        "the deploy has not ended".into(),
                    ))))
                    .await;
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(STORE_FOLLOW_EVERY).await;
            }
        };
        let (replay, done, mut live) = {
            let log = lock(&run.log);
            (log.events.clone(), log.done.clone(), log.tx.subscribe())
        };
        let mut last = 0;
        for (seq, json) in replay {
            last = seq;
            if !send(Item::Event(seq, json)).await {
                return;
            }
        }
        if let Some(done) = done {
            send(Item::Done(done)).await;
            return;
        }
        loop {
            match live.recv().await {
                Ok(Item::Event(seq, json)) if seq > last => {
                    last = seq;
                    if !send(Item::Event(seq, json)).await {
                        return;
                    }
                }
                Ok(Item::Event(..)) => {}
                Ok(Item::Done(done)) => {
                    send(Item::Done(done)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "this follower fell behind deploy #{id}: attach again to replay it"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}

/// Where the deployer's files are, for offline commands too.
pub fn files_of(data_dir: &Path, deploy_key: Option<&Path>) -> keys::Files {
    keys::Files::new(data_dir, deploy_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submitted_stage_runs_with_the_controllers_key_and_no_local_settings() {
        let dir = tempfile::tempdir().unwrap();
        let files = keys::Files::new(dir.path(), None);
        let mut config: DeployStage = serde_json::from_value(serde_json::json!({
            "user": "deploy", "host": ["h1", "h2"], "port": null, "key": "/home/me/.ssh/id",
            "ssh_options": ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                            "ProxyCommand nc %h %p", "ConnectTimeout=5", "IdentityFile=/x"],
            "repo": null, "ref": "main", "path": "/srv/app", "env": {}, "pre_setup": null,
            "post_setup": null, "pre_deploy_local": "make assets", "pre_deploy": null,
            "post_deploy": null, "fetch": null, "forward_agent": true, "needs_tty": false,
            "keep_releases": 5, "shared_dirs": [], "shared_files": [], "proxy_jump": null,
            "strategy": "archive", "batch": {"percent": 100}, "canary": false, "max_fail": 0,
            "hosts": {"h2": {"user": null, "port": 2222, "key": "/home/me/.ssh/other", "path": null}}
        }))
        .unwrap();
        config.env.insert("A".into(), "b".into());
        let request = Request {
            stage: "prod".into(),
            config,
            action: "update".into(),
            revert_steps: 0,
            git_ref: None,
            no_rollback: false,
            reason: None,
            who: "token:ci (me@laptop)".into(),
            accept_new_host_keys: false,
            commit: String::new(),
            summary: String::new(),
            has_archive: true,
        };
        let stage = controller_stage(&files, &request);
        assert_eq!(
            stage.config.key.as_deref(),
            Some(files.deploy_key.to_str().unwrap())
        );
        assert_eq!(
            stage.config.ssh_options,
            vec!["ConnectTimeout=5".to_owned()]
        );
        assert!(!stage.config.forward_agent);
        assert_eq!(stage.config.pre_deploy_local, None);
        assert_eq!(stage.config.hosts["h2"].key, None);
        assert_eq!(stage.config.hosts["h2"].port, Some(2222));
        assert!(
            stage.controller.is_none(),
            "the controller records the deploy itself"
        );
    }
}
