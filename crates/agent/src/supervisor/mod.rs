//! The supervisor: one task owns the process table. Commands arrive over a channel
//! from the gRPC service; child exits, timers and metrics arrive over the same channel
//! from small helper tasks. Each input goes through the instance's `core::Instance`
//! state machine and the resulting actions are carried out here (spawn, signal,
//! timers). Nothing else mutates the table, so no lock is ever held across an await.

mod replace;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_config::{AppSpec, ExecMode};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::core::{self, Action, Exit, Input, Status, TimerToken};
use crate::error::AgentError;
use crate::logs::{DateFormat, InstanceLogs, LineFormat, LogHub};
use crate::metrics::TreeUsage;
use crate::process::{self, LogPaths};
use crate::schedule::{CronHandle, CronSchedule, spawn_cron};
use crate::store::{Home, SavedList, SavedProcess};
use crate::watch::{WatchHandle, WatchSpec, spawn_watch};

/// How often a stop checks whether children that outlived the leader are gone
/// (PM2 polls every 100 ms: `kill_retry_time`).
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// After SIGKILL a group can only linger as zombies its new parent has not reaped;
/// the stop is reported done after this long regardless.
const GROUP_KILL_GRACE: Duration = Duration::from_secs(2);
/// State-file writes are batched over this long: a crash loop must not turn into
/// a write per restart, and an agent crash loses at most this much.
const STATE_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// Time allowed beyond kill timeouts for an operation to settle (spawns are immediate).
const SETTLE_SLACK: Duration = Duration::from_secs(5);
/// Env keys whose values `describe` never prints.
const SECRET_KEY_PARTS: &[&str] = &[
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "COOKIE",
    "SESSION",
    "DSN",
];

/// A request from the service.
#[derive(Debug)]
pub enum Request {
    Start {
        targets: Vec<String>,
        apps: Vec<AppSpec>,
        force: bool,
        from_config: bool,
        update_env: Option<BTreeMap<String, String>>,
    },
    Restart {
        targets: Vec<String>,
        apps: Vec<AppSpec>,
        update_env: Option<BTreeMap<String, String>>,
    },
    Stop {
        targets: Vec<String>,
    },
    Delete {
        targets: Vec<String>,
    },
    Reset {
        targets: Vec<String>,
    },
    Signal {
        targets: Vec<String>,
        signal: Signal,
    },
    List {
        targets: Vec<String>,
        details: bool,
    },
    Save {
        force: bool,
    },
    Resurrect,
    /// Stops every app; with `forget`, deletes them (`fleet kill`), otherwise keeps
    /// them in the state file so the next agent brings them back.
    StopAll {
        forget: bool,
    },
    /// Writes the state file now (the agent is about to exit).
    Persist,
    /// Views of these ids; ids that no longer exist are left out, not an error.
    Views {
        ids: Vec<u32>,
    },
    /// Takes the new configs of existing apps without restarting them (a reload
    /// of a config file applies them instance by instance).
    Apply {
        apps: Vec<AppSpec>,
        update_env: bool,
    },
    /// Replaces the inherited environment of the targets (`--update-env`).
    RefreshEnv {
        targets: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// Marks apps as being reloaded; refused if one already is.
    ReloadLock {
        names: Vec<String>,
    },
    ReloadUnlock {
        names: Vec<String>,
    },
    /// Starts a replacement for a running instance, keeping the old one serving.
    BeginReplace {
        id: u32,
    },
    /// The replacement is ready: the old process drains and stops.
    CommitReplace {
        id: u32,
    },
    /// The replacement failed: it is killed and the old process stays.
    AbortReplace {
        id: u32,
        reason: String,
    },
    /// `fleet scale <app> <n|+n|-n>`.
    Scale {
        name: String,
        to: ScaleTo,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleTo {
    Exactly(u32),
    More(u32),
    Fewer(u32),
}

#[derive(Debug)]
pub enum Reply {
    /// Ids the operation touched, and notes for the user.
    Touched(Vec<u32>, Vec<String>),
    /// The same, with how long the operation may take to settle.
    Settling {
        ids: Vec<u32>,
        notes: Vec<String>,
        within: Duration,
    },
    Views(Vec<ProcessView>),
    Saved {
        path: String,
        apps: u32,
    },
}

/// What the outside world sees of one instance.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessView {
    pub id: u32,
    pub name: String,
    pub namespace: String,
    pub instance: u32,
    pub pid: Option<u32>,
    pub status: Status,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub uptime_ms: Option<u64>,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub exec_mode: ExecMode,
    pub created_at_ms: u64,
    pub restart_at_ms: Option<u64>,
    pub prev_restart_delay_ms: u64,
    pub last_exit: Option<ExitView>,
    pub script: String,
    /// Only with details: the resolved config, secrets redacted.
    pub config: Option<serde_json::Value>,
    /// The last start went online because `listen_timeout` ran out.
    pub ready_timed_out: bool,
    /// Why the last replacement of this instance (a reload) failed.
    pub replace_error: Option<String>,
    /// A replacement is starting while the previous process keeps serving.
    pub replacing: bool,
    /// A shared socket or proxy port (cluster and proxy modes), else fork.
    pub shares_port: bool,
    pub listen_timeout_ms: u64,
    pub log_files: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitView {
    pub exit: Exit,
    pub at_ms: u64,
    pub uptime_ms: u64,
}

enum Msg {
    Request(Request, oneshot::Sender<Result<Reply, AgentError>>),
    Exited {
        id: u32,
        generation: u64,
        status: std::io::Result<std::process::ExitStatus>,
    },
    GroupGone {
        id: u32,
        generation: u64,
    },
    Timer {
        id: u32,
        generation: u64,
        token: TimerToken,
    },
    Leaders(oneshot::Sender<Vec<(u32, i32)>>),
    /// `cron_restart` fired for an instance.
    Cron {
        id: u32,
    },
    /// An instance's sd_notify message or health check result.
    Readiness {
        id: u32,
        generation: u64,
        signal: crate::readiness::Signal,
    },
    /// The kill timeout of a retiring process (replaced by a reload) ran out.
    RetireKill {
        id: u32,
        generation: u64,
    },
    /// A `rotate_interval` fired: rotate the files of every instance using it.
    RotateLogs {
        pattern: String,
        timezone: Option<String>,
    },
    /// A watched path of an app changed (`watch`).
    Watched {
        id: u32,
        paths: Vec<std::path::PathBuf>,
    },
    Usage(HashMap<u32, TreeUsage>),
    Flush,
}

/// A cheap, clonable way to talk to the supervisor task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    changed: watch::Receiver<u64>,
}

impl Handle {
    pub async fn call(&self, request: Request) -> Result<Reply, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Request(request, reply))
            .map_err(|_| AgentError::Internal("the supervisor has stopped".into()))?;
        rx.await
            .map_err(|_| AgentError::Internal("the supervisor has stopped".into()))?
    }

    /// Waits until every instance in `ids` has settled (is neither launching nor
    /// stopping) or is gone, then returns their views. Gives up at `deadline`
    /// and returns them as they are.
    pub async fn settled(&self, ids: &[u32], deadline: Duration) -> Vec<ProcessView> {
        let mut changed = self.changed.clone();
        let until = Instant::now() + deadline;
        loop {
            changed.mark_unchanged();
            let views = self.views(ids).await;
            if views.iter().all(|v| v.status.is_settled()) {
                return views;
            }
            if tokio::time::timeout_at(until, changed.changed())
                .await
                .is_err()
            {
                return views;
            }
        }
    }

    async fn views(&self, ids: &[u32]) -> Vec<ProcessView> {
        // By id, not by `#id` targets: an id that is gone is simply absent (a target
        // matching nothing is an error, which made a stop look settled too early).
        let ids = ids.to_vec();
        match self.call(Request::Views { ids }).await {
            Ok(Reply::Views(views)) => views,
            _ => Vec::new(),
        }
    }

    /// Waits until `done` holds for the views of `ids` (gone ones left out), or until
    /// `until`; returns the last views and whether `done` held.
    pub async fn wait_for(
        &self,
        ids: &[u32],
        until: Instant,
        done: impl Fn(&[ProcessView]) -> bool,
    ) -> (Vec<ProcessView>, bool) {
        let mut changed = self.changed.clone();
        loop {
            changed.mark_unchanged();
            let views = self.views(ids).await;
            if done(&views) {
                return (views, true);
            }
            if tokio::time::timeout_at(until, changed.changed())
                .await
                .is_err()
            {
                return (views, false);
            }
        }
    }

    /// A receiver that changes whenever any instance does (the controller link sends
    /// deltas on it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// The leader pid of every running instance, for the metrics sampler.
    pub async fn leaders(&self) -> Vec<(u32, i32)> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Leaders(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub fn report_usage(&self, usage: HashMap<u32, TreeUsage>) {
        let _ = self.tx.send(Msg::Usage(usage));
    }

    /// Resolves once the supervisor task has ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

struct Proc {
    id: u32,
    spec: Arc<AppSpec>,
    instance: u32,
    core: core::Instance,
    pid: Option<i32>,
    start_ticks: Option<u64>,
    /// Bumped on every spawn so exits and timers of an earlier process are ignored.
    generation: u64,
    created_at: SystemTime,
    logs: LogPaths,
    /// The open files and line format of this instance, built at its first spawn and
    /// again after a config change.
    log_io: Option<Arc<InstanceLogs>>,
    usage: TreeUsage,
    /// Timers and watchers that live as long as the instance (dropping stops them).
    triggers: Triggers,
    /// Proxy mode: the private port of the running process.
    private_port: Option<u16>,
    /// Readiness probes of the running process (dropping stops them).
    probes: replace::Probes,
    /// False while a health check fails: no new proxied connections.
    healthy: bool,
    /// The process sent `STOPPING=1`: no new proxied connections.
    draining: bool,
    /// During a reload: the previous process, still serving.
    standby: Option<replace::Standby>,
    /// Replaced processes finishing their in-flight work.
    retiring: Vec<replace::Retiring>,
    replace_error: Option<String>,
}

#[derive(Default)]
struct Triggers {
    cron_restart: Option<CronHandle>,
    watch: Option<WatchHandle>,
}

struct Supervisor {
    home: Home,
    hub: LogHub,
    /// Listening sockets and proxies, by app name, kept across restarts and reloads.
    ports: HashMap<String, replace::AppPort>,
    reloading: HashSet<String>,
    /// `rotate_interval` timers by (pattern, time zone), shared by every app using them.
    rotation_timers: HashMap<(String, Option<String>), CronHandle>,
    /// Spawn generations are unique across instances and aborted replacements, so a
    /// late exit or timer can never be taken for the current process's.
    next_generation: u64,
    cpus: u32,
    procs: BTreeMap<u32, Proc>,
    next_id: u32,
    tx: mpsc::UnboundedSender<Msg>,
    changed: watch::Sender<u64>,
    work: VecDeque<(u32, Input)>,
    flush_pending: bool,
    /// Set while shutting down: the state file keeps what should run next time.
    frozen: bool,
}

/// Starts the supervisor task with the instances saved in the state file.
pub fn start(home: Home, hub: LogHub, saved: Vec<SavedProcess>) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (changed, changed_rx) = watch::channel(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mut supervisor = Supervisor {
        home,
        hub,
        ports: HashMap::new(),
        reloading: HashSet::new(),
        rotation_timers: HashMap::new(),
        next_generation: 0,
        cpus,
        procs: BTreeMap::new(),
        next_id: 0,
        tx: tx.clone(),
        changed,
        work: VecDeque::new(),
        flush_pending: false,
        frozen: false,
    };
    supervisor.restore(saved);
    tokio::spawn(supervisor.run(rx));
    Handle {
        tx,
        changed: changed_rx,
    }
}

impl Supervisor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            self.on_message(msg);
            self.drain();
        }
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Request(request, reply) => {
                let result = self
                    .on_request(request)
                    .map(|reply| self.with_deadline(reply));
                self.drain();
                let _ = reply.send(result);
            }
            Msg::Exited {
                id,
                generation,
                status,
            } => {
                let Some(proc) = self.procs.get(&id) else {
                    return;
                };
                let exit = match status {
                    Ok(status) => exit_of(status),
                    Err(error) => Exit::SpawnError(format!("cannot wait for the process: {error}")),
                };
                if proc.generation != generation {
                    // A standby or retiring process of a reload, or a stale one.
                    self.other_exited(id, generation, &exit);
                    return;
                }
                if proc.standby.is_some() {
                    // The replacement died before it was ready: the reload fails and
                    // the previous process keeps serving.
                    self.abort_replace(
                        id,
                        format!("it exited before it was ready ({})", describe_exit(&exit)),
                    );
                    return;
                }
                let group_empty = proc.pid.is_none_or(|pgid| !process::group_alive(pgid));
                tracing::info!(app = %proc.spec.name, id, ?exit, group_empty, "instance exited");
                self.work
                    .push_back((id, Input::Exited { exit, group_empty }));
            }
            Msg::GroupGone { id, generation } => {
                if self
                    .procs
                    .get(&id)
                    .is_some_and(|p| p.generation == generation)
                {
                    self.work.push_back((id, Input::GroupGone));
                }
            }
            Msg::Timer {
                id,
                generation,
                token,
            } => {
                if self
                    .procs
                    .get(&id)
                    .is_some_and(|p| p.generation == generation)
                {
                    self.work.push_back((id, Input::Timer(token)));
                }
            }
            Msg::Leaders(reply) => {
                let leaders = self
                    .procs
                    .values()
                    .filter_map(|p| p.pid.map(|pid| (p.id, pid)))
                    .collect();
                let _ = reply.send(leaders);
            }
            Msg::Readiness {
                id,
                generation,
                signal,
            } => self.on_readiness(id, generation, signal),
            Msg::RetireKill { id, generation } => self.retire_kill(id, generation),
            Msg::RotateLogs { pattern, timezone } => {
                let files: Vec<std::path::PathBuf> = self
                    .procs
                    .values()
                    .filter(|p| {
                        p.spec.logs.rotation.interval.as_deref() == Some(pattern.as_str())
                            && p.spec.cron_timezone == timezone
                    })
                    .flat_map(|p| p.logs.files())
                    .collect();
                let hub = self.hub.clone();
                // Renames and reopens are file system work: off the supervisor task.
                tokio::task::spawn_blocking(move || hub.rotate(&files));
            }
            Msg::Cron { id } => {
                // PM2's cron also starts a stopped app; fleet leaves an app the user
                // stopped alone and restarts it only when it runs (or has errored).
                if let Some(proc) = self.procs.get(&id)
                    && proc.core.status != Status::Stopped
                    && proc.core.status != Status::Stopping
                {
                    tracing::info!(app = %proc.spec.name, id, "cron_restart");
                    self.work.push_back((id, Input::Restart));
                }
            }
            Msg::Watched { id, paths } => {
                let Some(name) = self.procs.get(&id).map(|p| p.spec.name.clone()) else {
                    return;
                };
                let shown: Vec<String> = paths
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect();
                tracing::info!(app = %name, changed = ?shown, "change detected, restarting");
                let ids: Vec<u32> = self
                    .procs
                    .values()
                    .filter(|p| p.spec.name == name && p.core.status.wants_running())
                    .map(|p| p.id)
                    .collect();
                for id in ids {
                    self.work.push_back((id, Input::Restart));
                }
            }
            Msg::Usage(usage) => {
                for proc in self.procs.values_mut() {
                    proc.usage = usage.get(&proc.id).copied().unwrap_or_default();
                    // Checked at every sample (PM2 checks every 30 s, main pid only:
                    // #5670, #3017) against the whole tree; a graceful, counted restart.
                    if let Some(limit) = proc.spec.max_memory_restart_bytes
                        && proc.core.status == Status::Online
                        && proc.usage.memory_bytes > limit
                    {
                        tracing::warn!(
                            app = %proc.spec.name,
                            id = proc.id,
                            memory = proc.usage.memory_bytes,
                            limit,
                            "exceeds max_memory_restart, restarting"
                        );
                        proc.usage = TreeUsage::default();
                        self.work.push_back((proc.id, Input::Restart));
                    }
                }
            }
            Msg::Flush => {
                self.flush_pending = false;
                self.write_state();
            }
        }
    }

    /// Runs queued inputs through their state machines until nothing is left.
    fn drain(&mut self) {
        let mut touched = false;
        while let Some((id, input)) = self.work.pop_front() {
            let Some(proc) = self.procs.get_mut(&id) else {
                continue;
            };
            let actions = proc.core.handle(input, Instant::now());
            for action in actions {
                self.act(id, action);
            }
            if let Some(proc) = self.procs.get_mut(&id)
                && matches!(proc.core.status, Status::Stopped | Status::Errored)
            {
                // The group is gone: forget the pid so nothing can signal a reused one.
                proc.pid = None;
                proc.start_ticks = None;
            }
            touched = true;
        }
        if touched {
            self.update_backends();
            self.changed.send_modify(|v| *v += 1);
            self.schedule_flush();
        }
    }

    fn act(&mut self, id: u32, action: Action) {
        let tx = self.tx.clone();
        let Some(proc) = self.procs.get_mut(&id) else {
            return;
        };
        match action {
            Action::Spawn => match self.start_process(id) {
                Ok(()) => self.work.push_back((id, Input::Spawned)),
                Err(error) => {
                    if let Some(proc) = self.procs.get_mut(&id) {
                        tracing::warn!(app = %proc.spec.name, id, %error, "cannot start instance");
                        proc.pid = None;
                    }
                    self.work.push_back((id, Input::SpawnFailed(error)));
                }
            },
            Action::SignalGroup => {
                if let Some(pgid) = proc.pid {
                    let signal =
                        process::signal_from_name(&proc.spec.kill_signal).unwrap_or(Signal::SIGINT);
                    process::signal_group(pgid, signal);
                }
            }
            Action::KillGroup => {
                if let Some(pgid) = proc.pid {
                    process::signal_group(pgid, Signal::SIGKILL);
                }
            }
            Action::WatchGroup => {
                let generation = proc.generation;
                let pgid = proc.pid;
                let kill_timeout = Duration::from_millis(proc.spec.kill_timeout_ms);
                tokio::spawn(async move {
                    if let Some(pgid) = pgid {
                        let until = Instant::now() + kill_timeout + GROUP_KILL_GRACE;
                        while process::group_alive(pgid) && Instant::now() < until {
                            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
                        }
                    }
                    let _ = tx.send(Msg::GroupGone { id, generation });
                });
            }
            Action::Schedule { token, after } => {
                let generation = proc.generation;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(Msg::Timer {
                        id,
                        generation,
                        token,
                    });
                });
            }
            Action::Remove => {
                if let Some(removed) = self.procs.remove(&id) {
                    replace::kill_retiring(&removed);
                    self.release_port_if_unused(&removed.spec.name);
                }
                self.hub.forget(id);
                self.hub.release_unused();
                if self.procs.is_empty() {
                    // PM2 numbers from 0 again once the list is empty.
                    self.next_id = 0;
                }
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Result<Reply, AgentError> {
        match request {
            Request::Start {
                targets,
                apps,
                force,
                from_config,
                update_env,
            } => {
                let mut touched = Vec::new();
                let mut notes = Vec::new();
                if !targets.is_empty() {
                    let ids = self.select(&targets)?;
                    self.refresh_env(&ids, update_env.as_ref());
                    for &id in &ids {
                        let input = match self.procs[&id].core.status {
                            Status::Stopped | Status::Errored => Input::Start,
                            _ => Input::Restart,
                        };
                        self.work.push_back((id, input));
                    }
                    touched.extend(ids);
                }
                if !apps.is_empty() {
                    self.check_supported(&apps)?;
                    if from_config {
                        touched.extend(self.apply_configs(apps, update_env.is_some(), false, true));
                    } else {
                        self.check_duplicates(&apps, force)?;
                        for spec in apps {
                            touched.extend(self.create(spec, &mut notes));
                        }
                    }
                }
                Ok(Reply::Touched(touched, notes))
            }
            Request::Restart {
                targets,
                apps,
                update_env,
            } => {
                let mut touched = Vec::new();
                if !targets.is_empty() {
                    let ids = self.select(&targets)?;
                    self.refresh_env(&ids, update_env.as_ref());
                    for &id in &ids {
                        self.work.push_back((id, Input::Restart));
                    }
                    touched.extend(ids);
                }
                if !apps.is_empty() {
                    self.check_supported(&apps)?;
                    touched.extend(self.apply_configs(apps, update_env.is_some(), true, true));
                }
                Ok(Reply::Touched(touched, Vec::new()))
            }
            Request::Stop { targets } => self.for_each(&targets, Input::Stop),
            Request::Delete { targets } => self.for_each(&targets, Input::Delete),
            Request::Reset { targets } => self.for_each(&targets, Input::Reset),
            Request::Signal { targets, signal } => {
                let ids = self.select(&targets)?;
                let mut notes = Vec::new();
                for &id in &ids {
                    let proc = &self.procs[&id];
                    match proc.pid.filter(|_| proc.core.status == Status::Online) {
                        // PM2 signals the main pid only; so does fleet, so an app can
                        // handle a signal for its workers itself.
                        Some(pid) => {
                            if let Err(error) =
                                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                            {
                                notes.push(format!("{} (id {id}): {error}", proc.spec.name));
                            }
                        }
                        None => notes.push(format!(
                            "{} (id {id}) is {}, no signal sent",
                            proc.spec.name,
                            proc.core.status.as_str()
                        )),
                    }
                }
                Ok(Reply::Touched(ids, notes))
            }
            Request::List { targets, details } => {
                let ids = if targets.is_empty() {
                    self.procs.keys().copied().collect()
                } else {
                    self.select(&targets)?
                };
                Ok(Reply::Views(
                    ids.iter()
                        .filter_map(|id| self.procs.get(id))
                        .map(|p| self.view(p, details))
                        .collect(),
                ))
            }
            Request::Save { force } => {
                if self.procs.is_empty() && !force {
                    return Err(AgentError::FailedPrecondition(
                        "nothing to save: no app is registered\nhint: `fleet save --force` writes an empty list".into(),
                    ));
                }
                let dump = self.home.dump_file();
                if dump.exists() {
                    std::fs::copy(&dump, self.home.dump_backup()).map_err(|e| {
                        AgentError::Internal(format!("cannot back up {}: {e}", dump.display()))
                    })?;
                }
                let list = SavedList::new(self.saved());
                list.write(&dump).map_err(|e| {
                    AgentError::Internal(format!("cannot write {}: {e}", dump.display()))
                })?;
                Ok(Reply::Saved {
                    path: dump.display().to_string(),
                    apps: list.processes.len() as u32,
                })
            }
            Request::Resurrect => {
                let (list, notes) = self.read_dump()?;
                let mut touched = Vec::new();
                let running: Vec<String> =
                    self.procs.values().map(|p| p.spec.name.clone()).collect();
                for saved in list.processes {
                    if running.contains(&saved.spec.name) {
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.insert(id, saved.instance, saved.spec, saved.restarts);
                    if saved.wants_running {
                        self.work.push_back((id, Input::Start));
                    }
                    touched.push(id);
                }
                Ok(Reply::Touched(touched, notes))
            }
            Request::Views { ids } => Ok(Reply::Views(
                ids.iter()
                    .filter_map(|id| self.procs.get(id))
                    .map(|p| self.view(p, false))
                    .collect(),
            )),
            Request::Apply { apps, update_env } => {
                self.check_supported(&apps)?;
                let ids = self.apply_configs(apps, update_env, true, false);
                Ok(Reply::Touched(ids, Vec::new()))
            }
            Request::RefreshEnv { targets, env } => {
                let ids = self.select(&targets)?;
                self.refresh_env(&ids, Some(&env));
                Ok(Reply::Touched(ids, Vec::new()))
            }
            Request::ReloadLock { names } => {
                if let Some(busy) = names.iter().find(|n| self.reloading.contains(*n)) {
                    return Err(AgentError::FailedPrecondition(format!(
                        "a reload of {busy} is already running\nhint: wait for it to finish"
                    )));
                }
                self.reloading.extend(names);
                Ok(Reply::Touched(Vec::new(), Vec::new()))
            }
            Request::ReloadUnlock { names } => {
                for name in names {
                    self.reloading.remove(&name);
                }
                Ok(Reply::Touched(Vec::new(), Vec::new()))
            }
            Request::BeginReplace { id } => self.begin_replace(id),
            Request::CommitReplace { id } => {
                self.commit_replace(id);
                Ok(Reply::Touched(vec![id], Vec::new()))
            }
            Request::AbortReplace { id, reason } => {
                self.abort_replace(id, reason);
                Ok(Reply::Touched(vec![id], Vec::new()))
            }
            Request::Scale { name, to } => self.scale(&name, to),
            Request::Persist => {
                self.write_state();
                Ok(Reply::Touched(Vec::new(), Vec::new()))
            }
            Request::StopAll { forget } => {
                if !forget {
                    // Keep what should run next time before the stops change it.
                    self.write_state();
                    self.frozen = true;
                }
                let input = if forget { Input::Delete } else { Input::Stop };
                let ids: Vec<u32> = self.procs.keys().copied().collect();
                for &id in &ids {
                    self.work.push_back((id, input.clone()));
                }
                Ok(Reply::Touched(ids, Vec::new()))
            }
        }
    }

    /// An operation settles within the longest kill timeout among the instances it
    /// touched, plus the sweep of stragglers and some slack for a start.
    fn with_deadline(&self, reply: Reply) -> Reply {
        match reply {
            Reply::Touched(ids, notes) => {
                let longest = ids
                    .iter()
                    .filter_map(|id| self.procs.get(id))
                    .map(|p| p.spec.kill_timeout_ms)
                    .max()
                    .unwrap_or(0);
                Reply::Settling {
                    ids,
                    notes,
                    within: Duration::from_millis(longest) + GROUP_KILL_GRACE + SETTLE_SLACK,
                }
            }
            other => other,
        }
    }

    fn for_each(&mut self, targets: &[String], input: Input) -> Result<Reply, AgentError> {
        let ids = self.select(targets)?;
        for &id in &ids {
            if matches!(input, Input::Stop | Input::Delete) {
                // A stop wins over a reload in progress: the previous process goes back
                // in place and is stopped like any other.
                self.abort_replace(id, "stopped during the reload".into());
            }
            self.work.push_back((id, input.clone()));
        }
        Ok(Reply::Touched(ids, Vec::new()))
    }

    /// Resolves targets to ids, in order, without duplicates. `#<id>` is an exact id
    /// (used internally); PM2's order for a bare word is name, namespace, then id.
    fn select(&self, targets: &[String]) -> Result<Vec<u32>, AgentError> {
        let mut ids: Vec<u32> = Vec::new();
        let mut missing = Vec::new();
        for target in targets {
            let found = crate::target::select(
                target,
                self.procs
                    .values()
                    .map(|p| (p.id, p.spec.name.as_str(), p.spec.namespace.as_str())),
            )?;
            if found.is_empty() {
                missing.push(target.clone());
            }
            for id in found {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if !missing.is_empty() {
            let list = missing.join(", ");
            return Err(AgentError::NotFound(format!(
                "no process matches {list}\nhint: `fleet list` shows names, ids and namespaces"
            )));
        }
        Ok(ids)
    }

    fn refresh_env(&mut self, ids: &[u32], env: Option<&BTreeMap<String, String>>) {
        let Some(env) = env else { return };
        let mut env = Arc::new(env.clone());
        self.share_env(&mut env);
        for id in ids {
            if let Some(proc) = self.procs.get_mut(id) {
                Arc::make_mut(&mut proc.spec).inherited_env = env.clone();
            }
        }
    }

    /// Refuses, with every problem at once, what the agent cannot run: a cron pattern
    /// or time zone it cannot read, a watch path that does not exist, and the shared
    /// listening socket whose machinery has not landed yet.
    fn check_supported(&self, apps: &[AppSpec]) -> Result<(), AgentError> {
        let mut problems = Vec::new();
        for spec in apps {
            let name = &spec.name;
            if spec.exec_mode == ExecMode::Cluster
                && spec.port.is_some()
                && spec.health_check.is_some()
            {
                problems.push(format!(
                    "app {name}: health_check cannot address one instance behind a shared socket\nhint: use exec_mode = \"proxy\", or wait_ready with sd_notify (READY=1)"
                ));
            }
            for pattern in spec
                .cron_restart
                .iter()
                .chain(spec.logs.rotation.interval.iter())
            {
                if let Err(error) = CronSchedule::parse(pattern, spec.cron_timezone.as_deref()) {
                    problems.push(format!("app {name}: {error}"));
                }
            }
            for path in &spec.watch {
                if !path.exists() {
                    problems.push(format!(
                        "app {name}: watch path {} does not exist",
                        path.display()
                    ));
                }
            }
            if spec.command.is_empty() {
                problems.push(format!("app {name}: no command to run"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AgentError::InvalidArgument(problems.join("\n")))
        }
    }

    fn check_duplicates(&self, apps: &[AppSpec], force: bool) -> Result<(), AgentError> {
        if force {
            return Ok(());
        }
        for spec in apps {
            if let Some(existing) = self
                .procs
                .values()
                .find(|p| p.spec.name == spec.name && p.spec.script == spec.script)
            {
                return Err(AgentError::AlreadyExists(format!(
                    "script already launched as {} (id {})\nhint: `fleet restart {}` restarts it; add -f to start another copy",
                    spec.name, existing.id, spec.name
                )));
            }
        }
        Ok(())
    }

    /// Applies configs from a file: an app that exists takes the new config (keeping
    /// its inherited environment unless `update_env`), is scaled to the new instance
    /// count and restarted; an app that does not exist is created.
    /// With `restart_existing` false (a reload), instances that keep running only take
    /// the new config; the reload then replaces them one by one.
    fn apply_configs(
        &mut self,
        apps: Vec<AppSpec>,
        update_env: bool,
        count_restart: bool,
        restart_existing: bool,
    ) -> Vec<u32> {
        let mut touched = Vec::new();
        let mut notes = Vec::new();
        for mut spec in apps {
            self.share_env(&mut spec.inherited_env);
            let existing: Vec<u32> = self
                .procs
                .values()
                .filter(|p| p.spec.name == spec.name)
                .map(|p| p.id)
                .collect();
            if existing.is_empty() {
                touched.extend(self.create(spec, &mut notes));
                continue;
            }
            if !update_env {
                spec.inherited_env = self.procs[&existing[0]].spec.inherited_env.clone();
            }
            let wanted = spec.instances.resolve(self.cpus);
            let spec = Arc::new(spec);
            let mut kept = Vec::new();
            let mut rearm = Vec::new();
            for &id in &existing {
                let proc = self.procs.get_mut(&id).expect("selected above");
                if proc.instance < wanted {
                    proc.spec = spec.clone();
                    proc.core.policy = core::Policy::from_spec(&spec);
                    proc.logs =
                        LogPaths::for_instance(&spec, proc.instance, wanted, &self.home.logs_dir());
                    proc.log_io = None;
                    rearm.push(id);
                    kept.push(proc.instance);
                    let input = match (proc.core.status, count_restart) {
                        (Status::Stopped | Status::Errored, false) => Input::Start,
                        _ => Input::Restart,
                    };
                    if restart_existing {
                        self.work.push_back((id, input));
                    }
                } else {
                    self.work.push_back((id, Input::Delete));
                }
                touched.push(id);
            }
            for id in rearm {
                self.arm_triggers(id);
            }
            for instance in (0..wanted).filter(|i| !kept.contains(i)) {
                let id = self.next_id;
                self.next_id += 1;
                self.insert(id, instance, spec.clone(), 0);
                self.work.push_back((id, Input::Start));
                touched.push(id);
            }
        }
        touched
    }

    /// Makes `env` the copy an existing instance already holds when they are equal: a
    /// `fleet start` of 100 apps sends the CLI's environment 100 times, a few KB each.
    fn share_env(&self, env: &mut Arc<BTreeMap<String, String>>) {
        share_env(self.procs.values().map(|p| &p.spec.inherited_env), env);
    }

    /// Registers a new app's instances and starts them (unless `autostart` is off).
    fn create(&mut self, spec: AppSpec, notes: &mut Vec<String>) -> Vec<u32> {
        let count = spec.instances.resolve(self.cpus);
        let autostart = spec.autostart;
        let spec = Arc::new(spec);
        // Instance numbers continue after copies already running under the same name
        // (`start -f`), lowest free number first as PM2 does on scale.
        let mut used: Vec<u32> = self
            .procs
            .values()
            .filter(|p| p.spec.name == spec.name)
            .map(|p| p.instance)
            .collect();
        let mut ids = Vec::new();
        for _ in 0..count {
            let instance = (0..).find(|n| !used.contains(n)).expect("unbounded range");
            used.push(instance);
            let id = self.next_id;
            self.next_id += 1;
            self.insert(id, instance, spec.clone(), 0);
            if autostart {
                self.work.push_back((id, Input::Start));
            }
            ids.push(id);
        }
        if !autostart {
            notes.push(format!(
                "{} registered as stopped (autostart = false)",
                spec.name
            ));
        }
        ids
    }

    fn insert(&mut self, id: u32, instance: u32, spec: Arc<AppSpec>, restarts: u32) {
        let instances = spec.instances.resolve(self.cpus);
        let mut core = core::Instance::new(core::Policy::from_spec(&spec), Instant::now());
        core.restarts = restarts;
        let logs = LogPaths::for_instance(&spec, instance, instances, &self.home.logs_dir());
        self.procs.insert(
            id,
            Proc {
                id,
                spec,
                instance,
                core,
                pid: None,
                start_ticks: None,
                generation: 0,
                created_at: SystemTime::now(),
                logs,
                log_io: None,
                usage: TreeUsage::default(),
                triggers: Triggers::default(),
                private_port: None,
                probes: replace::Probes::default(),
                healthy: true,
                draining: false,
                standby: None,
                retiring: Vec::new(),
                replace_error: None,
            },
        );
        self.next_id = self.next_id.max(id + 1);
        self.arm_triggers(id);
    }

    /// Starts the instance's cron restart, log rotation by time and watcher (again
    /// after a config change). Patterns and paths were checked in `validate`.
    fn arm_triggers(&mut self, id: u32) {
        let Some(proc) = self.procs.get_mut(&id) else {
            return;
        };
        let spec = proc.spec.clone();
        let mut triggers = Triggers::default();
        if let Some(pattern) = &spec.cron_restart {
            match CronSchedule::parse(pattern, spec.cron_timezone.as_deref()) {
                Ok(schedule) => {
                    let tx = self.tx.clone();
                    triggers.cron_restart = Some(spawn_cron(schedule, move || {
                        let _ = tx.send(Msg::Cron { id });
                    }));
                }
                Err(error) => tracing::error!(app = %spec.name, %error, "cron_restart ignored"),
            }
        }
        // Rotation by time: one timer per distinct pattern and zone for the whole
        // agent (a timer per app cost memory for 100 identical daily schedules).
        if let Some(pattern) = spec.logs.rotation.interval.clone() {
            let key = (pattern, spec.cron_timezone.clone());
            if !self.rotation_timers.contains_key(&key)
                && let Ok(schedule) = CronSchedule::parse(&key.0, key.1.as_deref())
            {
                let tx = self.tx.clone();
                let fired = key.clone();
                let handle = spawn_cron(schedule, move || {
                    let _ = tx.send(Msg::RotateLogs {
                        pattern: fired.0.clone(),
                        timezone: fired.1.clone(),
                    });
                });
                self.rotation_timers.insert(key, handle);
            }
        }
        // One watcher per app is enough: instance 0 watches for all of them.
        if !spec.watch.is_empty() && proc.instance == 0 {
            let tx = self.tx.clone();
            let watch = WatchSpec {
                paths: spec.watch.clone(),
                ignore: spec.ignore_watch.clone(),
                delay: Duration::from_millis(spec.watch_delay_ms),
            };
            match spawn_watch(watch, move |paths| {
                let _ = tx.send(Msg::Watched { id, paths });
            }) {
                Ok(handle) => triggers.watch = Some(handle),
                Err(error) => tracing::error!(app = %spec.name, %error, "watch failed"),
            }
        }
        proc.triggers = triggers;
    }

    /// Brings back what the state file says was running. An instance whose process
    /// outlived the previous agent has been stopped already (see `daemon`).
    fn restore(&mut self, saved: Vec<SavedProcess>) {
        for mut entry in saved {
            let id = entry.id;
            self.share_env(&mut Arc::make_mut(&mut entry.spec).inherited_env);
            self.insert(id, entry.instance, entry.spec, entry.restarts);
            if let Some(proc) = self.procs.get_mut(&id) {
                proc.created_at = UNIX_EPOCH + Duration::from_millis(entry.created_at_ms);
            }
            if entry.wants_running {
                self.work.push_back((id, Input::Start));
            }
        }
        self.drain();
    }

    fn read_dump(&self) -> Result<(SavedList, Vec<String>), AgentError> {
        let dump = self.home.dump_file();
        let backup = self.home.dump_backup();
        match SavedList::read(&dump) {
            Ok(list) => Ok((list, Vec::new())),
            Err(dump_error) => match SavedList::read(&backup) {
                Ok(list) => {
                    if dump.exists() {
                        // PM2 deletes a corrupt dump so the next save starts clean;
                        // fleet keeps it aside for inspection instead.
                        let _ = std::fs::rename(&dump, dump.with_extension("json.corrupt"));
                    }
                    Ok((
                        list,
                        vec![format!("{dump_error}; restored from {}", backup.display())],
                    ))
                }
                Err(backup_error) => Err(AgentError::FailedPrecondition(format!(
                    "nothing to resurrect: {dump_error}; {backup_error}\nhint: `fleet save` writes the list"
                ))),
            },
        }
    }

    fn saved(&self) -> Vec<SavedProcess> {
        self.procs
            .values()
            .map(|p| SavedProcess {
                id: p.id,
                instance: p.instance,
                spec: Arc::clone(&p.spec),
                wants_running: p.core.wants_running(),
                restarts: p.core.restarts,
                pid: p.pid,
                start_ticks: p.start_ticks,
                created_at_ms: millis_since_epoch(p.created_at),
            })
            .collect()
    }

    fn schedule_flush(&mut self) {
        if self.flush_pending || self.frozen {
            return;
        }
        self.flush_pending = true;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STATE_FLUSH_DELAY).await;
            let _ = tx.send(Msg::Flush);
        });
    }

    fn write_state(&mut self) {
        if self.frozen {
            return;
        }
        let path = self.home.state_file();
        if let Err(error) = SavedList::new(self.saved()).write(&path) {
            tracing::error!(path = %path.display(), %error, "cannot write the state file");
        }
    }

    fn view(&self, p: &Proc, details: bool) -> ProcessView {
        let now = Instant::now();
        let to_wall = |at: Instant| -> u64 {
            let ago = now.saturating_duration_since(at);
            millis_since_epoch(SystemTime::now() - ago)
        };
        let running = matches!(
            p.core.status,
            Status::Online | Status::Launching | Status::Stopping
        );
        ProcessView {
            id: p.id,
            name: p.spec.name.clone(),
            namespace: p.spec.namespace.clone(),
            instance: p.instance,
            pid: p.pid.filter(|_| running).map(|pid| pid as u32),
            status: p.core.status,
            restarts: p.core.restarts,
            unstable_restarts: p.core.unstable_restarts,
            uptime_ms: p
                .core
                .started_at
                .filter(|_| running)
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            cpu_percent: if running { p.usage.cpu_percent } else { 0.0 },
            memory_bytes: if running { p.usage.memory_bytes } else { 0 },
            exec_mode: p.spec.exec_mode,
            created_at_ms: millis_since_epoch(p.created_at),
            restart_at_ms: p.core.restart_at.map(to_wall),
            prev_restart_delay_ms: p.core.prev_restart_delay.as_millis() as u64,
            last_exit: p
                .core
                .last_exit
                .as_ref()
                .map(|(exit, at, uptime)| ExitView {
                    exit: exit.clone(),
                    at_ms: to_wall(*at),
                    uptime_ms: uptime.as_millis() as u64,
                }),
            script: p.spec.script.clone(),
            config: details.then(|| redacted(&p.spec)),
            ready_timed_out: p.core.ready_timed_out,
            replace_error: p.replace_error.clone(),
            replacing: p.standby.is_some(),
            shares_port: p.spec.port.is_some() && p.spec.exec_mode != ExecMode::Fork,
            listen_timeout_ms: p.spec.listen_timeout_ms,
            log_files: p
                .logs
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect(),
        }
    }
}

/// Opens an instance's log files (shared with other instances writing the same path).
fn instance_logs(hub: &LogHub, proc: &Proc) -> Result<Arc<InstanceLogs>, String> {
    let rotation = &proc.spec.logs.rotation;
    let open = |path: &Option<std::path::PathBuf>| -> Result<_, String> {
        path.as_ref()
            .map(|p| {
                hub.file(p, rotation)
                    .map_err(|e| format!("cannot open the log file {}: {e}", p.display()))
            })
            .transpose()
    };
    Ok(Arc::new(InstanceLogs {
        id: proc.id,
        app: Arc::from(proc.spec.name.as_str()),
        namespace: Arc::from(proc.spec.namespace.as_str()),
        instance: proc.instance,
        out: open(&proc.logs.out)?,
        err: open(&proc.logs.err)?,
        combined: open(&proc.logs.combined)?,
        format: LineFormat {
            date: proc
                .spec
                .logs
                .log_date_format
                .as_deref()
                .map(DateFormat::parse),
            json: proc.spec.logs.log_type == fleet_config::LogType::Json,
            app: proc.spec.name.clone(),
            id: proc.id,
        },
    }))
}

/// `code 1`, `signal SIGKILL`, or the spawn error, for messages.
pub fn describe_exit(exit: &Exit) -> String {
    match exit {
        Exit::Code(code) => format!("code {code}"),
        Exit::Signal(signal) => match Signal::try_from(*signal) {
            Ok(signal) => format!("signal {}", signal.as_str()),
            Err(_) => format!("signal {signal}"),
        },
        Exit::SpawnError(error) => error.clone(),
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Env = Arc<BTreeMap<String, String>>;

/// Replaces `env` with the first of `held` equal to it.
fn share_env<'a>(mut held: impl Iterator<Item = &'a Env>, env: &mut Env) {
    if let Some(same) = held.find(|held| Arc::ptr_eq(held, env) || *held == env) {
        *env = same.clone();
    }
}

/// The spec as JSON with secret-looking environment values replaced.
fn redacted(spec: &AppSpec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    for field in ["env", "inherited_env"] {
        if let Some(serde_json::Value::Object(map)) = value.get_mut(field) {
            for (key, value) in map.iter_mut() {
                let upper = key.to_ascii_uppercase();
                if SECRET_KEY_PARTS.iter().any(|part| upper.contains(part)) {
                    *value = serde_json::Value::String("[redacted]".into());
                }
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_environments_are_held_once() {
        let env = |pairs: &[(&str, &str)]| -> Env {
            Arc::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let held = [env(&[("A", "1")]), env(&[("A", "1"), ("B", "2")])];
        let mut new = env(&[("A", "1"), ("B", "2")]);
        share_env(held.iter(), &mut new);
        assert!(Arc::ptr_eq(&new, &held[1]));
        let mut other = env(&[("A", "2")]);
        share_env(held.iter(), &mut other);
        assert!(!held.iter().any(|h| Arc::ptr_eq(h, &other)));
        assert_eq!(other["A"], "2");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut spec = AppSpec::with_defaults("api".into(), "api.js".into(), "/".into());
        spec.env.insert("DB_PASSWORD".into(), "hunter2".into());
        spec.env.insert("PORT".into(), "80".into());
        Arc::make_mut(&mut spec.inherited_env).insert("AWS_SECRET_ACCESS_KEY".into(), "x".into());
        let value = redacted(&spec);
        assert_eq!(value["env"]["DB_PASSWORD"], "[redacted]");
        assert_eq!(value["env"]["PORT"], "80");
        assert_eq!(
            value["inherited_env"]["AWS_SECRET_ACCESS_KEY"],
            "[redacted]"
        );
    }
}
