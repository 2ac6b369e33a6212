//! The supervisor: one task owns the process table. Requests arrive over a channel
//! from the agent's operations (`Handle`); child exits, timers and metrics arrive over
//! the same channel from small helper tasks (`events`). Each input goes through the
//! instance's `core::Instance` state machine and the resulting actions are carried
//! out here (spawn, signal, timers). Nothing else mutates the table, so no lock is
//! ever held across an await.
//!
//! Files: `request/` handles one kind of request each, `replace` starts processes
//! and steps a zero-downtime replacement, `reload` orchestrates a reload over the
//! `Handle`, `view` holds the helpers they share.

mod events;
mod handle;
mod handoff;
mod reload;
mod replace;
mod request;
mod store;
mod view;

pub use handle::Handle;
pub use handoff::SupervisorCarry;
pub use view::describe_exit;
use view::{exit_of, instance_logs, millis_since_epoch, redacted, share_env};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_config::{AppSpec, ExecMode};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::core::{self, Action, Exit, Input, Status, TimerToken};
use crate::error::AgentError;
use crate::logs::{InstanceLogs, LogHub};
use crate::metrics::TreeUsage;
use crate::process::{self, LogPaths};
use crate::schedule::CronHandle;
use crate::store::{Home, SavedProcess};
use crate::watch::WatchHandle;

/// How often a stop checks whether children that outlived the leader are gone
/// (PM2 polls every 100 ms: `kill_retry_time`).
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// After SIGKILL a group can only linger as zombies its new parent has not reaped;
/// the stop is reported done after this long regardless.
const GROUP_KILL_GRACE: Duration = Duration::from_secs(2);
/// State-file writes are batched over this long: a crash loop must not turn into
/// a write per restart, and an agent crash loses at most this much.
const STATE_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// Messages from Node apps kept for `fleet send --wait` listeners that fall behind.
const NODE_MESSAGE_BACKLOG: usize = 256;

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
    /// Writes the state file now and empties systemd's file descriptor store (the
    /// agent stopped its apps and is about to exit).
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
    /// `fleet send`: a message over the targets' Node IPC channel.
    SendMessage {
        targets: Vec<String>,
        message: serde_json::Value,
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
    /// `max_memory_restart`, when set.
    pub max_memory_bytes: Option<u64>,
    /// Only with details: the resolved config, secrets redacted.
    pub config: Option<serde_json::Value>,
    /// The last start went online because `listen_timeout` ran out.
    pub ready_timed_out: bool,
    /// Why the last replacement of this instance (a reload) failed.
    pub replace_error: Option<String>,
    /// Why the agent last restarted the instance on its own, and when (unix ms).
    pub restart_cause: Option<(String, u64)>,
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
    /// The process of `generation` ended; the supervisor reaps it with its pidfd
    /// (none when it could not be watched).
    Exited {
        id: u32,
        generation: u64,
        pidfd: Option<std::os::fd::OwnedFd>,
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
    /// Every process the agent started and still waits for (`Instance::child_pids`).
    Children(oneshot::Sender<Vec<i32>>),
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
    /// Bring systemd's file descriptor store up to date (`store`).
    StoreSync,
    /// A Node app's message over its IPC channel.
    Node {
        id: u32,
        generation: u64,
        incoming: crate::node::Incoming,
    },
    /// `fleet update`: hand the table over to the next agent image, unless busy.
    HandOver(oneshot::Sender<Result<(SupervisorCarry, crate::handoff::Outgoing), String>>),
}

struct Instance {
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
    /// Why the agent itself last restarted the instance (a failing health check, a
    /// missed watchdog), with when (unix ms).
    restart_cause: Option<(String, u64)>,
    /// When the core's latest timer falls due (a handoff carries what is left of it).
    timer_due: Option<Instant>,
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
    /// Node cluster mode: the sockets bound for the workers' `queryServer`s, by app
    /// name and address, kept across restarts and reloads until the app is deleted.
    node_sockets: HashMap<String, HashMap<String, crate::node::Socket>>,
    /// What Node apps send that is not the protocol's, by instance id (`fleet send`).
    node_messages: tokio::sync::broadcast::Sender<(u32, serde_json::Value)>,
    reloading: HashSet<String>,
    /// `rotate_interval` timers by (pattern, time zone), shared by every app using them.
    rotation_timers: HashMap<(String, Option<String>), CronHandle>,
    /// Spawn generations are unique across instances and aborted replacements, so a
    /// late exit or timer can never be taken for the current process's.
    next_generation: u64,
    cpus: u32,
    instances: BTreeMap<u32, Instance>,
    next_id: u32,
    tx: mpsc::UnboundedSender<Msg>,
    changed: watch::Sender<u64>,
    work: VecDeque<(u32, Input)>,
    flush_pending: bool,
    /// Set while shutting down: the state file keeps what should run next time.
    frozen: bool,
    /// Under systemd: its file descriptor store, kept like the table (`store`).
    store: Option<crate::fdstore::Store>,
    store_pending: bool,
}

/// Starts the supervisor task with the instances saved in the state file.
/// Under systemd, `store` is its file descriptor store, kept up to date from here on.
pub fn start(
    home: Home,
    hub: LogHub,
    saved: Vec<SavedProcess>,
    store: Option<crate::fdstore::Store>,
) -> Handle {
    let (mut supervisor, rx, handle) = Supervisor::new(home, hub);
    supervisor.keep_store(store);
    supervisor.restore(saved);
    tokio::spawn(supervisor.run(rx));
    handle
}

/// Starts the supervisor task with the table a previous agent image handed over
/// (`fleet update`), snapshotted at `taken` on this clock.
pub fn take_over(
    home: Home,
    hub: LogHub,
    carry: SupervisorCarry,
    fds: &mut crate::handoff::Incoming,
    taken: Instant,
    store: Option<crate::fdstore::Store>,
) -> Handle {
    let (mut supervisor, rx, handle) = Supervisor::new(home, hub);
    // A store handed over with the table comes first (`take_over`).
    let carried = carry.store.is_some();
    supervisor.keep_store(store.filter(|_| !carried));
    if carried {
        supervisor.hub.keep_pipes_for_store();
    }
    supervisor.take_over(carry, fds, taken);
    supervisor.drain();
    tokio::spawn(supervisor.run(rx));
    handle
}

impl Supervisor {
    fn new(home: Home, hub: LogHub) -> (Supervisor, mpsc::UnboundedReceiver<Msg>, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (changed, changed_rx) = watch::channel(0);
        let (node_messages, _) = tokio::sync::broadcast::channel(NODE_MESSAGE_BACKLOG);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let supervisor = Supervisor {
            home,
            hub,
            ports: HashMap::new(),
            node_sockets: HashMap::new(),
            node_messages: node_messages.clone(),
            reloading: HashSet::new(),
            rotation_timers: HashMap::new(),
            next_generation: 0,
            cpus,
            instances: BTreeMap::new(),
            next_id: 0,
            tx: tx.clone(),
            changed,
            work: VecDeque::new(),
            flush_pending: false,
            frozen: false,
            store: None,
            store_pending: false,
        };
        let handle = Handle {
            tx,
            changed: changed_rx,
            node_messages,
            host: std::sync::Arc::default(),
        };
        (supervisor, rx, handle)
    }
}

impl Supervisor {
    fn keep_store(&mut self, store: Option<crate::fdstore::Store>) {
        if store.is_some() {
            self.hub.keep_pipes_for_store();
        }
        self.store = store;
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            if let Msg::HandOver(reply) = msg {
                if let Some(busy) = self.busy() {
                    let _ = reply.send(Err(busy));
                    continue;
                }
                // From here this task processes nothing else: no exit is reaped and
                // no timer fires until the next image has taken over.
                let _ = reply.send(Ok(self.hand_over().await));
                return;
            }
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
                pidfd,
            } => self.reap(id, generation, pidfd),
            Msg::GroupGone { id, generation } => {
                if self.is_current(id, generation) {
                    self.work.push_back((id, Input::GroupGone));
                }
            }
            Msg::Timer {
                id,
                generation,
                token,
            } => {
                if self.is_current(id, generation) {
                    self.work.push_back((id, Input::Timer(token)));
                }
            }
            Msg::Leaders(reply) => {
                let leaders = (self.instances.values())
                    .filter_map(|instance| instance.pid.map(|pid| (instance.id, pid)))
                    .collect();
                let _ = reply.send(leaders);
            }
            Msg::Children(reply) => {
                let pids = (self.instances.values())
                    .flat_map(Instance::child_pids)
                    .collect();
                let _ = reply.send(pids);
            }
            Msg::Readiness {
                id,
                generation,
                signal,
            } => self.on_readiness(id, generation, signal),
            Msg::RetireKill { id, generation } => self.retire_kill(id, generation),
            Msg::RotateLogs { pattern, timezone } => self.on_rotate_logs(&pattern, &timezone),
            Msg::Cron { id } => self.on_cron(id),
            Msg::Watched { id, paths } => self.on_watched(id, &paths),
            Msg::Usage(usage) => self.on_usage(&usage),
            Msg::Flush => {
                self.flush_pending = false;
                self.write_state();
            }
            Msg::Node {
                id,
                generation,
                incoming,
            } => self.on_node_message(id, generation, incoming),
            Msg::StoreSync => self.sync_store(),
            Msg::HandOver(_) => unreachable!("handled by `run`"),
        }
    }

    /// Reports one process's readiness signals (sd_notify, checks, watchdog) here.
    fn readiness_reporter(
        &self,
        id: u32,
        generation: u64,
    ) -> impl Fn(crate::readiness::Signal) + Clone + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |signal| {
            let _ = tx.send(Msg::Readiness {
                id,
                generation,
                signal,
            });
        }
    }

    /// Reports one process's Node IPC messages here.
    fn node_reporter(
        &self,
        id: u32,
        generation: u64,
    ) -> impl Fn(crate::node::Incoming) + Send + 'static {
        let tx = self.tx.clone();
        move |incoming| {
            let _ = tx.send(Msg::Node {
                id,
                generation,
                incoming,
            });
        }
    }

    /// The process of `generation` ended: reaps it and handles its exit.
    fn reap(&mut self, id: u32, generation: u64, pidfd: Option<std::os::fd::OwnedFd>) {
        let Some(pidfd) = pidfd else {
            self.on_exited(id, generation, Ok(crate::child::Ended::Unknown));
            return;
        };
        match crate::child::reap(&pidfd) {
            Ok(Some(ended)) => self.on_exited(id, generation, Ok(ended)),
            // Woken but still running (not expected of a pidfd): keep watching.
            Ok(None) => events::watch_exit(&self.tx, id, generation, pidfd),
            Err(error) => self.on_exited(id, generation, Err(error)),
        }
    }

    /// Whether `generation` is the instance's current process (not a standby's, a
    /// retiring one's or a stale one's).
    fn is_current(&self, id: u32, generation: u64) -> bool {
        (self.instances.get(&id)).is_some_and(|instance| instance.generation == generation)
    }

    /// Runs queued inputs through their state machines until nothing is left.
    fn drain(&mut self) {
        let mut touched = false;
        while let Some((id, input)) = self.work.pop_front() {
            let Some(instance) = self.instances.get_mut(&id) else {
                continue;
            };
            let actions = instance.core.handle(input, Instant::now());
            for action in actions {
                self.act(id, action);
            }
            if let Some(instance) = self.instances.get_mut(&id)
                && matches!(instance.core.status, Status::Stopped | Status::Errored)
            {
                // The group is gone: forget the pid so nothing can signal a reused one.
                instance.pid = None;
                instance.start_ticks = None;
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
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        match action {
            Action::Spawn => match self.start_process(id) {
                Ok(()) => self.work.push_back((id, Input::Spawned)),
                Err(error) => {
                    if let Some(instance) = self.instances.get_mut(&id) {
                        tracing::warn!(app = %instance.spec.name, id, %error, "cannot start instance");
                        instance.pid = None;
                    }
                    self.work.push_back((id, Input::SpawnFailed(error)));
                }
            },
            Action::SignalGroup => {
                if let Some(pgid) = instance.pid {
                    let channel = instance.probes.channel.as_ref().map(|c| c.sender());
                    replace::ask_to_stop(&instance.spec, pgid, channel.as_ref());
                }
            }
            Action::KillGroup => {
                if let Some(pgid) = instance.pid {
                    process::signal_group(pgid, Signal::SIGKILL);
                }
            }
            Action::WatchGroup => {
                let generation = instance.generation;
                let pgid = instance.pid;
                let kill_timeout = Duration::from_millis(instance.spec.kill_timeout_ms);
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
                instance.timer_due = Some(Instant::now() + after);
                let generation = instance.generation;
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
                if let Some(removed) = self.instances.remove(&id) {
                    replace::kill_retiring(&removed);
                    self.release_port_if_unused(&removed.spec.name);
                }
                self.hub.forget(id);
                self.hub.release_unused();
                if self.instances.is_empty() {
                    // PM2 numbers from 0 again once the list is empty.
                    self.next_id = 0;
                }
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
                    .filter_map(|id| self.instances.get(id))
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
}
