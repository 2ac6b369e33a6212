//! The supervisor core: one instance's lifecycle as a state machine with no I/O.
//! Inputs (a command, a spawn result, an exit, a timer) go in with the current time;
//! outputs (spawn, signal the group, schedule a timer, remove) come out for the shell
//! in `supervisor` to carry out. Tested on tokio's paused clock without processes.
//!
//! The restart policy keeps PM2's semantics (`reference/pm2-behaviour.md` §5):
//! unstable restarts counted inside a `min_uptime * max_restarts` window lead to
//! `errored`; `restart_delay` and `exp_backoff_restart_delay` (x1.5, capped, reset
//! after a stable run) put the instance in `waiting-restart`; `autorestart = false`
//! and `stop_exit_codes` leave it `stopped`.

use std::time::Duration;

use fleet_config::AppSpec;
use tokio::time::Instant;

/// PM2 multiplies the previous backoff delay by 1.5 on each crash (`God.handleExit`).
const BACKOFF_FACTOR: f64 = 1.5;
/// PM2 caps the exponential backoff at 15 s.
pub const BACKOFF_CAP: Duration = Duration::from_millis(15_000);
/// PM2's `EXP_BACKOFF_RESET_TIMER`: after this long online the backoff starts over.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_millis(30_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Launching,
    Online,
    Stopping,
    Stopped,
    Errored,
    WaitingRestart,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Launching => "launching",
            Status::Online => "online",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Errored => "errored",
            Status::WaitingRestart => "waiting-restart",
        }
    }

    /// Whether the user wants this instance running (what survives an agent restart).
    pub fn wants_running(self) -> bool {
        matches!(
            self,
            Status::Launching | Status::Online | Status::WaitingRestart
        )
    }

    /// Whether an operation that touched the instance has finished with it.
    pub fn is_settled(self) -> bool {
        !matches!(self, Status::Launching | Status::Stopping)
    }
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
    SpawnError(String),
    /// The process ended but was not the agent's child (adopted after an agent
    /// crash), so its exit code could not be known.
    Unknown,
}

/// The restart and stop settings the core needs, taken from an `AppSpec`.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub autorestart: bool,
    pub stop_exit_codes: Vec<i32>,
    pub min_uptime: Duration,
    pub max_restarts: u32,
    pub restart_delay: Duration,
    pub exp_backoff: Option<Duration>,
    pub kill_timeout: Duration,
    /// The instance is `launching` until the shell reports it ready (sd_notify, a
    /// health check or its port), or until `listen_timeout` (PM2's `wait_ready`).
    pub needs_ready: bool,
    pub listen_timeout: Duration,
}

impl Policy {
    pub fn from_spec(spec: &AppSpec) -> Policy {
        Policy {
            autorestart: spec.autorestart,
            stop_exit_codes: spec.stop_exit_codes.clone(),
            min_uptime: Duration::from_millis(spec.min_uptime_ms),
            max_restarts: spec.max_restarts,
            restart_delay: Duration::from_millis(spec.restart_delay_ms),
            exp_backoff: spec
                .exp_backoff_restart_delay_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            kill_timeout: Duration::from_millis(spec.kill_timeout_ms),
            needs_ready: spec.wait_ready
                || spec.health_check.is_some()
                || crate::node::is_cluster_worker(spec)
                || (spec.exec_mode == fleet_config::ExecMode::Proxy && spec.port.is_some()),
            listen_timeout: Duration::from_millis(spec.listen_timeout_ms),
        }
    }
}

/// What happens to the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Start a stopped or errored instance (not counted as a restart).
    Start,
    /// Restart (counted); starts a stopped instance too.
    Restart,
    Stop,
    Delete,
    /// Zero the counters.
    Reset,
    /// The shell started the process.
    Spawned,
    /// The process said it is ready (or its check passed).
    Ready,
    /// The shell could not start the process.
    SpawnFailed(String),
    /// The group leader exited; `group_empty` tells whether any process of its group remains.
    Exited {
        exit: Exit,
        group_empty: bool,
    },
    /// No process of the instance's group remains.
    GroupGone,
    /// A timer the core scheduled fired.
    Timer(TimerToken),
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// Send the app's `kill_signal` to the whole process group.
    SignalGroup,
    /// SIGKILL the whole process group.
    KillGroup,
    /// Report `GroupGone` once the group is empty (or after it was SIGKILLed).
    WatchGroup,
    Schedule {
        token: TimerToken,
        after: Duration,
    },
    /// Forget the instance.
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TimerToken {
    pub seq: u64,
    pub kind: TimerKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    RestartDue,
    ReadyTimeout,
    KillTimeout,
    BackoffReset,
}

/// What to do once a stop has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterStop {
    Stay,
    Start { counted: bool },
    Remove,
}

/// One instance's lifecycle state.
#[derive(Clone, Debug)]
pub struct Instance {
    pub status: Status,
    pub policy: Policy,
    /// Restarts as PM2 counts them (crash, restart, reload, memory, cron, watch).
    pub restarts: u32,
    pub unstable_restarts: u32,
    /// Start of the unstable-restart window: creation or the last manual (re)start.
    pub window_start: Instant,
    /// When the running process was spawned.
    pub started_at: Option<Instant>,
    pub prev_restart_delay: Duration,
    /// In `waiting-restart`: when the next start is due.
    pub restart_at: Option<Instant>,
    pub last_exit: Option<(Exit, Instant, Duration)>,
    /// The last start went online because `listen_timeout` ran out, not because the
    /// instance said it was ready (PM2 goes online then too; a reload does not).
    pub ready_timed_out: bool,
    after_stop: AfterStop,
    leader_alive: bool,
    /// The only timer the core currently honours; others are stale.
    timer: Option<TimerToken>,
    timer_seq: u64,
}

/// One instance's lifecycle between two agent images (`fleet update`): instants as
/// how long before the snapshot they were, or how long after it they fall due.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub status: Status,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub window_start_ago_ms: u64,
    pub started_ago_ms: Option<u64>,
    pub prev_restart_delay_ms: u64,
    pub restart_in_ms: Option<u64>,
    /// The exit, how long ago, and the uptime it ended.
    pub last_exit: Option<(Exit, u64, u64)>,
    pub ready_timed_out: bool,
    pub after_stop: AfterStop,
    pub leader_alive: bool,
    pub timer: Option<TimerToken>,
    pub timer_seq: u64,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `at - ago`, or `at` itself on a clock too young to go back that far.
fn before(at: Instant, ago_ms: u64) -> Instant {
    at.checked_sub(Duration::from_millis(ago_ms)).unwrap_or(at)
}

impl Instance {
    /// The lifecycle as of `now`, for the next agent image.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let ago = |at: Instant| ms(now.saturating_duration_since(at));
        Snapshot {
            status: self.status,
            restarts: self.restarts,
            unstable_restarts: self.unstable_restarts,
            window_start_ago_ms: ago(self.window_start),
            started_ago_ms: self.started_at.map(ago),
            prev_restart_delay_ms: ms(self.prev_restart_delay),
            restart_in_ms: self
                .restart_at
                .map(|at| ms(at.saturating_duration_since(now))),
            last_exit: (self.last_exit.as_ref())
                .map(|(exit, at, uptime)| (exit.clone(), ago(*at), ms(*uptime))),
            ready_timed_out: self.ready_timed_out,
            after_stop: self.after_stop,
            leader_alive: self.leader_alive,
            timer: self.timer,
            timer_seq: self.timer_seq,
        }
    }

    /// The lifecycle a previous agent image snapshotted at `taken` (on this clock).
    pub fn from_snapshot(snapshot: Snapshot, policy: Policy, taken: Instant) -> Instance {
        Instance {
            status: snapshot.status,
            policy,
            restarts: snapshot.restarts,
            unstable_restarts: snapshot.unstable_restarts,
            window_start: before(taken, snapshot.window_start_ago_ms),
            started_at: snapshot.started_ago_ms.map(|ago| before(taken, ago)),
            prev_restart_delay: Duration::from_millis(snapshot.prev_restart_delay_ms),
            restart_at: (snapshot.restart_in_ms).map(|ms| taken + Duration::from_millis(ms)),
            last_exit: (snapshot.last_exit).map(|(exit, ago, uptime)| {
                (exit, before(taken, ago), Duration::from_millis(uptime))
            }),
            ready_timed_out: snapshot.ready_timed_out,
            after_stop: snapshot.after_stop,
            leader_alive: snapshot.leader_alive,
            timer: snapshot.timer,
            timer_seq: snapshot.timer_seq,
        }
    }

    /// A new instance, not yet started.
    pub fn new(policy: Policy, now: Instant) -> Instance {
        Instance {
            status: Status::Stopped,
            policy,
            restarts: 0,
            unstable_restarts: 0,
            window_start: now,
            started_at: None,
            prev_restart_delay: Duration::ZERO,
            restart_at: None,
            last_exit: None,
            ready_timed_out: false,
            after_stop: AfterStop::Stay,
            leader_alive: false,
            timer: None,
            timer_seq: 0,
        }
    }

    /// Whether the user wants this instance running: what a restarted agent restores.
    pub fn wants_running(&self) -> bool {
        self.status.wants_running()
            || (self.status == Status::Stopping
                && matches!(self.after_stop, AfterStop::Start { .. }))
    }

    /// Feeds one input; returns the actions for the shell.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.start(now, false, &mut out),
            Input::Restart => self.start(now, true, &mut out),
            Input::Stop => self.stop(AfterStop::Stay, &mut out),
            Input::Delete => self.stop(AfterStop::Remove, &mut out),
            Input::Reset => {
                self.restarts = 0;
                self.unstable_restarts = 0;
                self.window_start = now;
                self.prev_restart_delay = Duration::ZERO;
            }
            Input::Spawned => {
                self.started_at = Some(now);
                self.leader_alive = true;
                self.ready_timed_out = false;
                if self.policy.needs_ready {
                    self.schedule(
                        TimerKind::ReadyTimeout,
                        self.policy.listen_timeout,
                        &mut out,
                    );
                } else {
                    self.online(&mut out);
                }
            }
            Input::Ready => {
                if self.status == Status::Launching && self.leader_alive {
                    self.online(&mut out);
                }
            }
            Input::SpawnFailed(error) => {
                self.started_at = Some(now);
                self.exited(Exit::SpawnError(error), true, now, &mut out);
            }
            Input::Exited { exit, group_empty } => self.exited(exit, group_empty, now, &mut out),
            Input::GroupGone => {
                if self.status == Status::Stopping && !self.leader_alive {
                    self.finish_stop(now, &mut out);
                }
            }
            Input::Timer(token) => {
                if self.timer == Some(token) {
                    self.timer = None;
                    self.timer_fired(token.kind, now, &mut out);
                }
            }
        }
        out
    }

    fn start(&mut self, now: Instant, counted: bool, out: &mut Vec<Action>) {
        match self.status {
            Status::Online | Status::Launching => {
                // A running instance is restarted: stop first, then start.
                self.stop(AfterStop::Start { counted: true }, out);
            }
            Status::Stopping => self.after_stop = AfterStop::Start { counted: true },
            Status::Stopped | Status::Errored | Status::WaitingRestart => {
                // A manual start opens a fresh window, like PM2's `resetState`.
                self.window_start = now;
                self.unstable_restarts = 0;
                self.prev_restart_delay = Duration::ZERO;
                let counted = counted || self.status == Status::WaitingRestart;
                self.spawn(counted, out);
            }
        }
    }

    fn stop(&mut self, then: AfterStop, out: &mut Vec<Action>) {
        match self.status {
            Status::Online | Status::Launching => {
                self.status = Status::Stopping;
                self.after_stop = then;
                out.push(Action::SignalGroup);
                self.schedule(TimerKind::KillTimeout, self.policy.kill_timeout, out);
            }
            Status::Stopping => {
                // A second stop or delete wins over a pending restart.
                if then != AfterStop::Stay || matches!(self.after_stop, AfterStop::Start { .. }) {
                    self.after_stop = then;
                }
            }
            Status::Stopped | Status::Errored | Status::WaitingRestart => {
                self.timer = None;
                self.restart_at = None;
                if self.status == Status::WaitingRestart {
                    self.status = Status::Stopped;
                }
                if then == AfterStop::Remove {
                    out.push(Action::Remove);
                }
            }
        }
    }

    fn exited(&mut self, exit: Exit, group_empty: bool, now: Instant, out: &mut Vec<Action>) {
        let uptime = self
            .started_at
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default();
        self.last_exit = Some((exit.clone(), now, uptime));
        self.leader_alive = false;
        if self.status == Status::Stopping {
            if group_empty {
                self.finish_stop(now, out);
            } else {
                // Children outlived the leader: the stop is done only when they are gone
                // (PM2 #6084 leaves them holding the port).
                out.push(Action::WatchGroup);
            }
            return;
        }
        if !group_empty {
            // The leader crashed and left children behind; they would hold ports and
            // files the next start needs.
            out.push(Action::KillGroup);
        }
        self.started_at = None;
        self.timer = None;

        let expected =
            matches!(exit, Exit::Code(code) if self.policy.stop_exit_codes.contains(&code));
        if !self.policy.autorestart || expected {
            self.status = Status::Stopped;
            return;
        }

        let window = self.policy.min_uptime * self.policy.max_restarts;
        if now.saturating_duration_since(self.window_start) < window
            && uptime < self.policy.min_uptime
        {
            self.unstable_restarts += 1;
        }
        if self.unstable_restarts >= self.policy.max_restarts {
            self.status = Status::Errored;
            return;
        }

        if uptime >= BACKOFF_RESET_AFTER {
            self.prev_restart_delay = Duration::ZERO;
        }
        let delay = match self.policy.exp_backoff {
            Some(base) => {
                let next = if self.prev_restart_delay.is_zero() {
                    base
                } else {
                    let grown = self.prev_restart_delay.as_millis() as f64 * BACKOFF_FACTOR;
                    Duration::from_millis(grown.floor() as u64).min(BACKOFF_CAP)
                };
                self.prev_restart_delay = next;
                next
            }
            None => self.policy.restart_delay,
        };
        if delay.is_zero() {
            self.spawn(true, out);
        } else {
            self.status = Status::WaitingRestart;
            self.restart_at = Some(now + delay);
            self.schedule(TimerKind::RestartDue, delay, out);
        }
    }

    fn finish_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.timer = None;
        self.started_at = None;
        self.status = Status::Stopped;
        match std::mem::replace(&mut self.after_stop, AfterStop::Stay) {
            AfterStop::Stay => {}
            AfterStop::Remove => out.push(Action::Remove),
            AfterStop::Start { counted } => {
                self.window_start = now;
                self.unstable_restarts = 0;
                self.prev_restart_delay = Duration::ZERO;
                self.spawn(counted, out);
            }
        }
    }

    fn timer_fired(&mut self, kind: TimerKind, now: Instant, out: &mut Vec<Action>) {
        match (kind, self.status) {
            (TimerKind::RestartDue, Status::WaitingRestart) => {
                self.restart_at = None;
                self.spawn(true, out);
            }
            (TimerKind::ReadyTimeout, Status::Launching) => {
                // PM2's `listen_timeout`: online anyway, but remembered, so a reload
                // can refuse a replacement that never said it was ready.
                self.ready_timed_out = true;
                self.online(out);
            }
            (TimerKind::KillTimeout, Status::Stopping) => {
                out.push(Action::KillGroup);
                if !self.leader_alive {
                    // Only stragglers were left; SIGKILL cannot be ignored.
                    out.push(Action::WatchGroup);
                }
            }
            (TimerKind::BackoffReset, Status::Online)
                if self
                    .started_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= BACKOFF_RESET_AFTER) =>
            {
                self.prev_restart_delay = Duration::ZERO;
            }
            _ => {}
        }
    }

    fn online(&mut self, out: &mut Vec<Action>) {
        self.status = Status::Online;
        if self.policy.exp_backoff.is_some() {
            self.schedule(TimerKind::BackoffReset, BACKOFF_RESET_AFTER, out);
        } else {
            self.timer = None;
        }
    }

    fn spawn(&mut self, counted: bool, out: &mut Vec<Action>) {
        if counted {
            self.restarts += 1;
        }
        self.status = Status::Launching;
        self.restart_at = None;
        self.timer = None;
        out.push(Action::Spawn);
    }

    fn schedule(&mut self, kind: TimerKind, after: Duration, out: &mut Vec<Action>) {
        self.timer_seq += 1;
        let token = TimerToken {
            seq: self.timer_seq,
            kind,
        };
        self.timer = Some(token);
        out.push(Action::Schedule { token, after });
    }
}

#[cfg(test)]
mod tests;
