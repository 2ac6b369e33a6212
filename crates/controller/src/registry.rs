//! The live state of every host, in memory: its session (if one is open), its process
//! list as the agent last reported it, when it was last heard from, and the commands and
//! log subscriptions in flight on its session. Status answers come from here without
//! touching the database. The session tasks write a host's state; everyone else reads.
//! Locks here are short and never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use fleet_proto::agent::v1::{HostMetrics, LogEntry, ProcessInfo};
use fleet_proto::controller::v1::{
    AgentCommand, AgentHello, CommandResult, ControllerMessage, Delta, LogBatch, Snapshot,
    controller_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::store::KnownHost;

mod encoded;
pub use encoded::EncodedStatus;

/// The most processes one host may report (an agent's own cap on instances is far
/// below it): a certificate cannot grow the controller's memory without bound.
pub const MAX_PROCESSES_PER_HOST: usize = 10_000;
/// Filesystems in one host's metrics, and directories named per filesystem (twice
/// what an agent sends).
const MAX_DISKS: usize = 64;
const MAX_PATHS_PER_DISK: usize = 32;

/// Why a host that once had a session has none now, when the controller restarted since.
const NOT_SINCE_START: &str = "no session since the controller started";

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every host the controller knows, by name.
pub struct Registry {
    hosts: RwLock<HashMap<String, Arc<Mutex<HostState>>>>,
    unreachable_after: Duration,
    /// Session ids, command request ids and log subscription ids, unique per controller.
    next_id: AtomicU64,
}

/// What the controller knows about one host.
#[derive(Default)]
pub struct HostState {
    link: Option<Arc<SessionLink>>,
    processes: BTreeMap<u32, ProcessInfo>,
    seq: u64,
    /// Deltas are ignored until the next snapshot: the session is new, or a delta was
    /// missed.
    awaiting_snapshot: bool,
    /// A `ResyncRequest` went out and its snapshot has not come yet; one is enough.
    resync_asked: bool,
    /// When a message last arrived on the open session (monotonic clock).
    last_heard: Option<Instant>,
    /// The same moment as wall-clock time, or the database's last_seen for a host with
    /// no session since the controller started; 0 if never.
    last_seen_unix_ms: u64,
    agent_version: String,
    boot_id: String,
    /// The host's last metrics (CPU, load, memory, disks), from protocol 1.3 agents.
    metrics: Option<HostMetrics>,
    /// Why the last session ended.
    disconnected: Option<String>,
    /// When the open session began (wall clock).
    connected_unix_ms: u64,
    /// The processes, version and metrics as `HostStatus` fields, encoded when the
    /// agent reports a change (`encoded`), so a `Status` only copies them.
    encoded: Option<bytes::Bytes>,
}

/// A host as `Status` shows it.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub reachable: bool,
    pub error: String,
    pub last_seen_unix_ms: u64,
    /// Reachable since (the session's start), or unreachable since (last heard).
    pub since_unix_ms: u64,
    pub agent_version: String,
    pub processes: Vec<ProcessInfo>,
    /// While reachable: the host's last metrics.
    pub metrics: Option<HostMetrics>,
}

/// What a session's reader should do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Ask the agent for a full snapshot: a delta sequence number was skipped.
    Resync,
    /// This session was replaced by a newer one for the same host: stop reading.
    Replaced,
    /// The agent broke a bound: end the session, saying why.
    Refused(String),
}

impl Registry {
    pub fn new(unreachable_after: Duration, known: Vec<KnownHost>) -> Registry {
        let hosts = known
            .into_iter()
            .map(|host| {
                let state = HostState {
                    last_seen_unix_ms: host.last_seen_ms,
                    agent_version: host.agent_version,
                    disconnected: Some(NOT_SINCE_START.to_owned()),
                    ..HostState::default()
                };
                (host.name, Arc::new(Mutex::new(state)))
            })
            .collect();
        Registry {
            hosts: RwLock::new(hosts),
            unreachable_after,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn slot(&self, host: &str) -> Option<Arc<Mutex<HostState>>> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned()
    }

    /// Opens a session for `hello.host`, replacing (and closing) any older one. The
    /// returned handle is what the session's reader writes through.
    pub fn connect(
        &self,
        hello: &AgentHello,
        serial: &str,
        outbound: mpsc::Sender<ControllerMessage>,
    ) -> HostHandle {
        let slot = {
            let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
            hosts.entry(hello.host.clone()).or_default().clone()
        };
        let link = Arc::new(SessionLink::new(
            self.next_id(),
            hello.host.clone(),
            outbound,
        ));
        *lock(&link.serial) = serial.to_owned();
        let replaced = {
            let mut state = lock(&slot);
            // The same agent process reconnecting still runs the same apps: keep showing
            // them until its snapshot arrives. A new boot starts from nothing.
            if state.boot_id != hello.boot_id {
                state.processes.clear();
            }
            state.seq = 0;
            // The agent sends a snapshot right after `hello`, so none is asked for yet.
            state.awaiting_snapshot = true;
            state.resync_asked = false;
            state.last_heard = Some(Instant::now());
            state.last_seen_unix_ms = crate::now_unix_ms();
            state.connected_unix_ms = state.last_seen_unix_ms;
            state.agent_version = hello.agent_version.clone();
            state.encoded = None;
            state.boot_id = hello.boot_id.clone();
            state.disconnected = None;
            state.link.replace(link.clone())
        };
        if let Some(old) = replaced {
            tracing::info!(host = %hello.host, "a new session replaces the open one");
            old.close();
        }
        HostHandle { slot, link }
    }

    /// Every host the registry knows (joined, connected or not), sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }

    /// The host's state as `Status` shows it.
    pub fn view(&self, host: &str) -> HostView {
        let Some(slot) = self.slot(host) else {
            return HostView {
                error: "never connected".to_owned(),
                ..HostView::default()
            };
        };
        let state = lock(&slot);
        let mut view = HostView {
            last_seen_unix_ms: state.last_seen_unix_ms,
            agent_version: state.agent_version.clone(),
            ..HostView::default()
        };
        match self.unreachable_because(&state) {
            Some(error) => {
                view.error = error;
                view.since_unix_ms = state.last_seen_unix_ms;
            }
            None => {
                view.reachable = true;
                view.since_unix_ms = state.connected_unix_ms;
                view.metrics = state.metrics.clone();
                view.processes = state
                    .processes
                    .values()
                    .map(|process| {
                        let mut process = process.clone();
                        if process.host.is_empty() {
                            process.host = host.to_owned();
                        }
                        process
                    })
                    .collect();
            }
        }
        view
    }

    /// The open session of a reachable host, or why the host cannot be reached.
    pub fn reach(&self, host: &str) -> Result<Arc<SessionLink>, String> {
        let Some(slot) = self.slot(host) else {
            return Err("never connected".to_owned());
        };
        let state = lock(&slot);
        match (self.unreachable_because(&state), &state.link) {
            (None, Some(link)) => Ok(link.clone()),
            (Some(error), _) => Err(error),
            (None, None) => Err("never connected".to_owned()),
        }
    }

    /// Whether the host has a session heard from lately (`unreachable_because` is None).
    fn is_reachable(&self, state: &HostState) -> bool {
        matches!((&state.link, state.last_heard),
            (Some(_), Some(heard)) if heard.elapsed() <= self.unreachable_after)
    }

    fn unreachable_because(&self, state: &HostState) -> Option<String> {
        let last_seen = || crate::format_unix_ms(state.last_seen_unix_ms);
        match (&state.link, state.last_heard) {
            (Some(_), Some(heard)) => {
                let silent = heard.elapsed();
                (silent > self.unreachable_after).then(|| {
                    format!(
                        "no heartbeat for {}s (last seen {})",
                        silent.as_secs(),
                        last_seen()
                    )
                })
            }
            _ => Some(match &state.disconnected {
                Some(reason) if state.last_seen_unix_ms > 0 => {
                    format!("disconnected: {reason} (last seen {})", last_seen())
                }
                Some(reason) => format!("disconnected: {reason}"),
                None => "never connected".to_owned(),
            }),
        }
    }

    /// Closes the sessions of hosts whose certificate is no longer the current one
    /// (`current`: each recorded host's serial, `None` once removed; hosts not in it
    /// have none recorded). Returns the hosts whose session was closed.
    pub fn sweep(&self, current: &HashMap<String, Option<String>>) -> Vec<String> {
        let slots: Vec<(String, Arc<Mutex<HostState>>)> = (self.hosts.read())
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(host, slot)| (host.clone(), slot.clone()))
            .collect();
        let mut closed = Vec::new();
        for (host, slot) in slots {
            let Some(recorded) = current.get(&host) else {
                continue;
            };
            let link = lock(&slot).link.clone();
            if let Some(link) = link
                && recorded.as_deref() != Some(lock(&link.serial).as_str())
            {
                link.close();
                closed.push(host);
            }
        }
        closed
    }

    /// Sends `body` on every open session.
    pub fn send_all(&self, body: &controller_message::Body) {
        for link in self.open_links() {
            link.send_soon(body.clone());
        }
    }

    /// Closes every session (the controller is stopping).
    pub fn close_all(&self) {
        for link in self.open_links() {
            link.close();
        }
    }

    /// Every open session's link, read without holding the map's lock after.
    fn open_links(&self) -> Vec<Arc<SessionLink>> {
        let slots: Vec<_> = (self.hosts.read())
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        (slots.iter())
            .filter_map(|slot| lock(slot).link.clone())
            .collect()
    }
}

/// A session's write access to its host's state.
pub struct HostHandle {
    slot: Arc<Mutex<HostState>>,
    pub link: Arc<SessionLink>,
}

impl HostHandle {
    fn state(&self) -> Option<MutexGuard<'_, HostState>> {
        let state = lock(&self.slot);
        let current = state
            .link
            .as_ref()
            .is_some_and(|link| link.id == self.link.id);
        current.then_some(state)
    }

    /// Any message from the agent: it is alive.
    pub fn heard(&self) -> After {
        let Some(mut state) = self.state() else {
            return After::Replaced;
        };
        state.last_heard = Some(Instant::now());
        state.last_seen_unix_ms = crate::now_unix_ms();
        After::Continue
    }

    pub fn snapshot(&self, snapshot: Snapshot) -> After {
        let Some(mut state) = self.state() else {
            return After::Replaced;
        };
        if snapshot.processes.len() > MAX_PROCESSES_PER_HOST {
            return too_many(snapshot.processes.len());
        }
        state.processes = snapshot
            .processes
            .into_iter()
            .map(|process| compact(process, &self.link.host))
            .map(|process| (process.id, process))
            .collect();
        state.reencode();
        state.seq = snapshot.seq;
        state.awaiting_snapshot = false;
        state.resync_asked = false;
        After::Continue
    }

    /// Applies a delta whose `seq` follows the last one; otherwise asks for a snapshot
    /// (once: later deltas are ignored until it comes).
    pub fn delta(&self, delta: Delta) -> After {
        let Some(mut state) = self.state() else {
            return After::Replaced;
        };
        if state.awaiting_snapshot {
            // A delta before any snapshot on this session: the agent skipped it.
            return ask_resync(&mut state);
        }
        if delta.seq != state.seq + 1 {
            tracing::info!(host = %self.link.host, expected = state.seq + 1, got = delta.seq, "delta out of sequence; asking for a snapshot");
            state.awaiting_snapshot = true;
            return ask_resync(&mut state);
        }
        for id in delta.removed {
            state.processes.remove(&id);
        }
        for process in delta.changed {
            let process = compact(process, &self.link.host);
            state.processes.insert(process.id, process);
        }
        if state.processes.len() > MAX_PROCESSES_PER_HOST {
            let reported = state.processes.len();
            state.processes.clear();
            state.encoded = None;
            return too_many(reported);
        }
        state.reencode();
        state.seq = delta.seq;
        After::Continue
    }

    /// A heartbeat carries the agent's latest seq: one ahead of ours means a delta was
    /// lost on the way.
    pub fn heartbeat(&self, seq: u64) -> After {
        let Some(mut state) = self.state() else {
            return After::Replaced;
        };
        if state.awaiting_snapshot {
            return ask_resync(&mut state);
        }
        if seq > state.seq {
            tracing::info!(host = %self.link.host, ours = state.seq, agents = seq, "missed a delta; asking for a snapshot");
            state.awaiting_snapshot = true;
            return ask_resync(&mut state);
        }
        After::Continue
    }

    /// The host's metrics: kept as the latest. Bounded like the agent's sampler
    /// bounds them; more ends the session.
    pub fn host_metrics(&self, metrics: HostMetrics) -> After {
        let too_many = metrics.disks.len() > MAX_DISKS
            || (metrics.disks.iter()).any(|d| d.paths.len() > MAX_PATHS_PER_DISK);
        if too_many {
            return After::Refused(format!(
                "host metrics with {} filesystems; at most {MAX_DISKS}, each naming at most {MAX_PATHS_PER_DISK} directories",
                metrics.disks.len()
            ));
        }
        let Some(mut state) = self.state() else {
            return After::Replaced;
        };
        state.metrics = Some(metrics);
        state.reencode();
        After::Continue
    }

    /// The session ended: the host is unreachable from now on. Returns its last-seen
    /// time, or None when a newer session already took over.
    pub fn disconnect(&self, reason: &str) -> Option<u64> {
        let mut state = self.state()?;
        state.link = None;
        state.last_heard = None;
        state.disconnected = Some(reason.to_owned());
        Some(state.last_seen_unix_ms)
    }
}

fn too_many(reported: usize) -> After {
    After::Refused(format!(
        "the agent reported {reported} processes; a host may have at most {MAX_PROCESSES_PER_HOST}"
    ))
}

/// Asks for a snapshot unless one was asked for already: deltas and heartbeats that
/// were in flight when the request went out must not ask again.
fn ask_resync(state: &mut HostState) -> After {
    if state.resync_asked {
        return After::Continue;
    }
    state.resync_asked = true;
    After::Resync
}

/// The process list keeps what `list` shows; the resolved config (details only, and
/// the bulk of a ProcessInfo) is dropped to keep a thousand hosts in little memory.
/// What the controller keeps of a process an agent reported: no config, and the host
/// its certificate names (an agent cannot label its processes as another host's).
fn compact(mut process: ProcessInfo, host: &str) -> ProcessInfo {
    process.config_json = String::new();
    if process.host != host {
        process.host = host.to_string();
    }
    process
}

/// A log subscription's end in the controller: where a host's batches go.
struct LogSink {
    tx: mpsc::Sender<Vec<LogEntry>>,
    follow: bool,
    /// Lines dropped because the CLI read too slowly, reported with the next batch or
    /// as soon as the watcher's queue is empty (`flush_dropped`).
    dropped: crate::logdrops::Dropped,
    /// Set when this sink dropped lines: the watcher's stream then flushes the notices
    /// once it has read everything queued.
    pending: Arc<AtomicBool>,
}

/// What became of a log batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Nobody watches this subscription any more: tell the agent to stop.
    Unwatched,
}

/// One open session: the way to the agent, and what waits for its answers.
pub struct SessionLink {
    pub id: u64,
    pub host: String,
    outbound: mpsc::Sender<ControllerMessage>,
    pending: Mutex<HashMap<u64, oneshot::Sender<CommandResult>>>,
    logs: Mutex<HashMap<u64, LogSink>>,
    ended: watch::Sender<bool>,
    /// The serial of the certificate the session stands on (a renewal changes it).
    pub serial: Mutex<String>,
}

impl SessionLink {
    fn new(id: u64, host: String, outbound: mpsc::Sender<ControllerMessage>) -> SessionLink {
        SessionLink {
            id,
            host,
            outbound,
            pending: Mutex::default(),
            logs: Mutex::default(),
            ended: watch::Sender::new(false),
            serial: Mutex::default(),
        }
    }

    /// Ends the session: its stream to the agent closes, waiting commands fail and log
    /// followers of this host stop.
    pub fn close(&self) {
        self.ended.send_replace(true);
        lock(&self.pending).clear();
        lock(&self.logs).clear();
    }

    /// Resolves once the session is closed.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.subscribe();
        async move {
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }

    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Queues a message for the agent without waiting; when the queue is full it is
    /// sent by a task of its own.
    pub fn send_soon(&self, body: controller_message::Body) {
        let message = ControllerMessage { body: Some(body) };
        if let Err(mpsc::error::TrySendError::Full(message)) = self.outbound.try_send(message)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let outbound = self.outbound.clone();
            runtime.spawn(async move { outbound.send(message).await });
        }
    }

    /// Sends a command and waits for its result, for at most `timeout`.
    pub async fn command(
        &self,
        command: AgentCommand,
        timeout: Duration,
    ) -> Result<CommandResult, String> {
        let request_id = command.request_id;
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(request_id, reply);
        let message = ControllerMessage {
            body: Some(controller_message::Body::Command(command)),
        };
        let exchange = async {
            self.outbound
                .send(message)
                .await
                .map_err(|_| "the session closed".to_owned())?;
            answer
                .await
                .map_err(|_| "the session closed before the agent answered".to_owned())
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        lock(&self.pending).remove(&request_id);
        outcome.unwrap_or_else(|_| {
            Err(format!(
                "no answer from the agent within {}s",
                timeout.as_secs()
            ))
        })
    }

    /// Hands a command result to whoever waits for it.
    pub fn resolve(&self, result: CommandResult) {
        match lock(&self.pending).remove(&result.request_id) {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                tracing::debug!(host = %self.host, request_id = result.request_id, "a result nobody waits for (timed out?)")
            }
        }
    }

    pub fn add_log_subscription(
        &self,
        id: u64,
        tx: mpsc::Sender<Vec<LogEntry>>,
        follow: bool,
        pending: Arc<AtomicBool>,
    ) {
        lock(&self.logs).insert(
            id,
            LogSink {
                tx,
                follow,
                dropped: Default::default(),
                pending,
            },
        );
    }

    /// Sends the notices of lines this subscription dropped, if any and if its watcher's
    /// queue has room (a flood's last lost lines are told even if no line follows).
    /// True while some remain untold.
    pub fn flush_dropped(&self, id: u64) -> bool {
        let mut logs = lock(&self.logs);
        let Some(sink) = logs.get_mut(&id) else {
            return false;
        };
        let notices = (sink.dropped).take_notices(&self.host, crate::now_unix_ms());
        if notices.is_empty() {
            return false;
        }
        match sink.tx.try_send(notices) {
            Ok(()) => false,
            Err(mpsc::error::TrySendError::Full(notices)) => {
                sink.dropped.count(&notices);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Forgets a subscription; true if it was still open (the agent should be told).
    pub fn remove_log_subscription(&self, id: u64) -> bool {
        lock(&self.logs).remove(&id).is_some()
    }

    /// Passes a batch to the subscription's watcher. A watcher that reads too slowly
    /// loses lines rather than slowing the session (heartbeats and results share it);
    /// it is told how many with a notice. An empty batch ends a subscription that does
    /// not follow (its history is complete).
    pub fn deliver_logs(&self, batch: LogBatch) -> Delivery {
        let mut logs = lock(&self.logs);
        let Some(sink) = logs.get_mut(&batch.subscription_id) else {
            return Delivery::Unwatched;
        };
        if batch.entries.is_empty() {
            if !sink.follow {
                logs.remove(&batch.subscription_id);
            }
            return Delivery::Delivered;
        }
        let mut entries = (sink.dropped).take_notices(&self.host, crate::now_unix_ms());
        // The certificate's name, whatever the agent wrote: no host speaks for another.
        entries.extend(batch.entries.into_iter().map(|mut entry| {
            entry.host.clone_from(&self.host);
            entry
        }));
        match sink.tx.try_send(entries) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(entries)) => {
                sink.dropped.count(&entries);
                sink.pending.store(true, Ordering::Release);
                Delivery::Delivered
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                logs.remove(&batch.subscription_id);
                Delivery::Unwatched
            }
        }
    }
}

#[cfg(test)]
mod tests;
