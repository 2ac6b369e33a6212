//! The supervisor's process start with shared ports and readiness probes, and the
//! pieces of a zero-downtime reload: a replacement starts while the previous process
//! (the standby) keeps serving; once the replacement is ready the standby is taken out
//! of rotation and drains (it is retiring); if the replacement never gets ready it is
//! killed and the standby stays. The order of the steps is the service's (`reload`).
//! Also `scale`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_config::ExecMode;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::{Instance, Msg, Reply, ScaleTo, Supervisor, instance_logs};
use crate::account;
use crate::cluster::{self, Proxy};
use crate::core::{self, Input, Status};
use crate::error::AgentError;
use crate::logs::Stream;
use crate::metrics::TreeUsage;
use crate::node;
use crate::process;
use crate::readiness::{self, NotifySocket};

/// How long a replaced instance behind the proxy keeps its listener after it left the
/// rotation, so connections already handed to it get accepted rather than reset.
const PROXY_RETIRE_GRACE: Duration = Duration::from_millis(250);

/// A listening socket the agent keeps for an app.
pub(in crate::supervisor) enum AppPort {
    /// Inherited by every instance (`exec_mode = "cluster"`).
    Shared {
        port: u16,
        listener: std::net::TcpListener,
    },
    /// Balanced over the instances' private ports (`exec_mode = "proxy"`).
    Proxy { port: u16, proxy: Proxy },
}

impl AppPort {
    fn port(&self) -> u16 {
        match self {
            AppPort::Shared { port, .. } | AppPort::Proxy { port, .. } => *port,
        }
    }

    fn mode(&self) -> ExecMode {
        match self {
            AppPort::Shared { .. } => ExecMode::Cluster,
            AppPort::Proxy { .. } => ExecMode::Proxy,
        }
    }
}

/// The readiness probes of one process; dropping them stops them.
#[derive(Default)]
pub(super) struct Probes {
    pub(super) notify: Option<NotifySocket>,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    /// Node's IPC channel: closing it makes a Node cluster worker exit, so it lives
    /// as long as the process (into `Retiring` after a reload).
    pub(super) channel: Option<node::Channel>,
    /// `watchdog`: restarts the instance when its pings stop.
    pub(super) watchdog: Option<readiness::Watchdog>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The previous process of an instance while its replacement starts.
pub(super) struct Standby {
    core: core::Instance,
    pid: Option<i32>,
    start_ticks: Option<u64>,
    generation: u64,
    port: Option<u16>,
    probes: Probes,
    healthy: bool,
    draining: bool,
    usage: TreeUsage,
}

/// A replaced process finishing its in-flight work before it exits.
pub(super) struct Retiring {
    pid: i32,
    start_ticks: Option<u64>,
    generation: u64,
    /// Kept until the process exits (see `Probes::channel`).
    _channel: Option<node::Channel>,
}

impl Instance {
    /// Every process of this instance the agent started and still waits for: the
    /// running one, a reload's standby, the retiring ones.
    pub(super) fn child_pids(&self) -> impl Iterator<Item = i32> + '_ {
        let standby = self.standby.as_ref().and_then(|s| s.pid);
        self.pid
            .into_iter()
            .chain(standby)
            .chain(self.retiring.iter().map(|r| r.pid))
    }

    /// The IPC channel of the standby of `generation`, during a reload.
    pub(super) fn standby_channel(&self, generation: u64) -> Option<&node::Channel> {
        (self.standby.as_ref())
            .filter(|standby| standby.generation == generation)
            .and_then(|standby| standby.probes.channel.as_ref())
    }
}

/// SIGKILLs what is left of an instance's previous processes (it is being removed).
pub(super) fn kill_retiring(instance: &Instance) {
    let standby = instance
        .standby
        .as_ref()
        .and_then(|s| s.pid.map(|pid| (pid, s.start_ticks)));
    let retiring = instance.retiring.iter().map(|r| (r.pid, r.start_ticks));
    for (pid, ticks) in standby.into_iter().chain(retiring) {
        if process::start_ticks(pid) == ticks {
            process::signal_group(pid, Signal::SIGKILL);
        }
    }
}

impl Supervisor {
    /// Starts the instance's process: its log pipes, the app's shared socket or a
    /// private port, a `NOTIFY_SOCKET` when it says it will be ready, and its probes.
    pub(super) fn start_process(&mut self, id: u32) -> Result<(), String> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let spec = self
            .instances
            .get(&id)
            .ok_or("the instance is gone")?
            .spec
            .clone();
        let shared_mode = spec.port.is_some() && spec.exec_mode != ExecMode::Fork;

        let run_as = account::resolve(spec.user.as_deref(), spec.group.as_deref())?;
        let mut env = {
            let instance = &self.instances[&id];
            instance
                .spec
                .instance_env(instance.instance, process::env_from_files(&spec)?)
        };
        if let Some(run_as) = &run_as {
            run_as.set_env(&mut env);
        }
        pm2_env(&mut env, id, &spec);
        let (listener, private_port) = if shared_mode {
            self.port_for_instance(&spec, &mut env)?
        } else {
            (None, None)
        };

        let mut probes = Probes::default();
        if spec.wait_ready || spec.watchdog_ms.is_some() {
            let shared = run_as.is_some();
            probes.notify = Some(self.notify_socket(id, generation, shared, &mut env)?);
        }
        if let Some(period) = spec.watchdog_ms {
            // systemd's variable: sd_watchdog_enabled(3) and the apps that read it.
            env.insert("WATCHDOG_USEC".into(), (period * 1000).to_string());
        }

        let node_channel = if node::runs_on_node(&spec) {
            let (channel, theirs) = self.node_channel(id, generation)?;
            env.insert("NODE_CHANNEL_FD".into(), node::CHANNEL_FD.to_string());
            env.insert("NODE_CHANNEL_SERIALIZATION_MODE".into(), "json".into());
            if node::is_cluster_worker(&spec) {
                // Node's cluster worker: `cluster.isWorker`, listens through the agent.
                env.insert("NODE_UNIQUE_ID".into(), id.to_string());
            }
            probes.channel = Some(channel);
            Some(theirs)
        } else {
            None
        };

        let instance = self.instances.get_mut(&id).ok_or("the instance is gone")?;
        let io = match &instance.log_io {
            Some(io) => io.clone(),
            None => {
                let io = instance_logs(&self.hub, instance)?;
                instance.log_io = Some(io.clone());
                io
            }
        };
        let spawned = process::spawn(
            &spec,
            env,
            io.captures(Stream::Out),
            io.captures(Stream::Err),
            listener,
            node_channel,
            run_as.as_ref(),
        )?;
        let pid = spawned.pid;
        instance.generation = generation;
        instance.pid = Some(pid);
        instance.start_ticks = process::start_ticks(pid);
        instance.usage = TreeUsage::default();
        instance.private_port = private_port;
        instance.healthy = true;
        instance.draining = false;
        for (stream, pipe) in [(Stream::Out, spawned.stdout), (Stream::Err, spawned.stderr)] {
            if let Some(pipe) = pipe {
                process::enlarge_pipe(&pipe);
                self.hub.capture(io.clone(), stream, pipe, Vec::new());
            }
        }
        super::events::watch_exit(&self.tx, id, generation, spawned.pidfd);

        self.arm_probes(
            &mut probes,
            &spec,
            id,
            generation,
            private_port,
            shared_mode,
        );
        let instance = self.instances.get_mut(&id).ok_or("the instance is gone")?;
        instance.probes = probes;
        let count = spec.instances.resolve(self.cpus);
        if let Some(path) = process::pid_path(&spec, instance.instance, count) {
            process::write_pid(&path, pid);
        }
        tracing::info!(app = %spec.name, id, pid, "instance started");
        Ok(())
    }

    /// Readiness and liveness of a just-started process: an HTTP health check or a
    /// port check (the port a probe checks: the private one behind the proxy, or the
    /// app's own in fork mode; a shared socket cannot address one instance), and the
    /// `watchdog` timer.
    pub(super) fn arm_probes(
        &self,
        probes: &mut Probes,
        spec: &fleet_config::AppSpec,
        id: u32,
        generation: u64,
        private_port: Option<u16>,
        shared_mode: bool,
    ) {
        let probe_port = private_port.or(if shared_mode { None } else { spec.port });
        let report = self.readiness_reporter(id, generation);
        if let (Some(check), Some(port)) = (&spec.health_check, probe_port) {
            probes.task = Some(readiness::watch_health(port, check.clone(), report));
        } else if let (false, Some(port)) = (spec.wait_ready, private_port) {
            probes.task = Some(readiness::watch_port(port, move || {
                report(readiness::Signal::Ready)
            }));
        }
        if let Some(period) = spec.watchdog_ms.map(Duration::from_millis) {
            // The first period starts once start-up may be over, as systemd's does.
            let grace = Duration::from_millis(spec.listen_timeout_ms);
            let report = self.readiness_reporter(id, generation);
            probes.watchdog = Some(readiness::Watchdog::start(period, grace, move || {
                report(readiness::Signal::WatchdogMissed)
            }));
        }
    }

    /// The app's shared socket (passed as fd 3, `LISTEN_FDS`) or, behind the proxy, a
    /// private port (`PORT`) for one instance's process.
    fn port_for_instance(
        &mut self,
        spec: &fleet_config::AppSpec,
        env: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<(Option<OwnedFd>, Option<u16>), String> {
        self.ensure_port(spec)?;
        match &self.ports[&spec.name] {
            AppPort::Shared {
                listener: socket, ..
            } => {
                let fd = socket
                    .try_clone()
                    .map_err(|e| format!("cannot pass the listening socket: {e}"))?;
                env.insert("LISTEN_FDS".into(), "1".into());
                env.insert("LISTEN_FDNAMES".into(), spec.name.clone());
                Ok((Some(OwnedFd::from(fd)), None))
            }
            AppPort::Proxy { .. } => {
                let port = cluster::free_loopback_port()
                    .map_err(|e| format!("cannot find a free port: {e}"))?;
                env.insert("PORT".into(), port.to_string());
                Ok((None, Some(port)))
            }
        }
    }

    /// A Node IPC channel for one process, reporting its messages to this task.
    fn node_channel(&self, id: u32, generation: u64) -> Result<(node::Channel, OwnedFd), String> {
        node::Channel::open(self.node_reporter(id, generation))
            .map_err(|e| format!("cannot open the Node IPC channel: {e}"))
    }

    /// The sd_notify socket of one process (`NOTIFY_SOCKET`), reporting to this task.
    /// An app running as another user cannot reach into the agent's owner-only home,
    /// so it gets an abstract socket (`@…`, Linux), named after this agent's pid.
    fn notify_socket(
        &self,
        id: u32,
        generation: u64,
        abstract_name: bool,
        env: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<NotifySocket, String> {
        let path = if abstract_name {
            PathBuf::from(format!(
                "@fleet-notify/{}/{id}-{generation}",
                std::process::id()
            ))
        } else {
            self.home
                .root
                .join("notify")
                .join(format!("{id}-{generation}.sock"))
        };
        let socket = readiness::notify_socket(&path, self.readiness_reporter(id, generation))
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        env.insert("NOTIFY_SOCKET".into(), path.display().to_string());
        Ok(socket)
    }

    /// Binds the app's port the first time an instance needs it; afterwards it stays
    /// bound until the app is deleted, so restarts and reloads never drop a connection.
    fn ensure_port(&mut self, spec: &fleet_config::AppSpec) -> Result<(), String> {
        let port = spec.port.expect("shared mode has a port");
        if let Some(existing) = self.ports.get(&spec.name)
            && existing.port() == port
            && existing.mode() == spec.exec_mode
        {
            return Ok(());
        }
        self.ports.remove(&spec.name);
        let listener =
            cluster::bind_shared(port).map_err(|e| format!("cannot listen on port {port}: {e}"))?;
        let app_port = match spec.exec_mode {
            ExecMode::Proxy => AppPort::Proxy {
                port,
                proxy: Proxy::spawn(listener, spec.balance, cluster::steering_allowed())
                    .map_err(|e| format!("cannot start the proxy on port {port}: {e}"))?,
            },
            _ => AppPort::Shared { port, listener },
        };
        tracing::info!(app = %spec.name, port, mode = ?spec.exec_mode, "listening");
        self.ports.insert(spec.name.clone(), app_port);
        Ok(())
    }

    /// Closes an app's port once no instance of it is left.
    pub(super) fn release_port_if_unused(&mut self, name: &str) {
        if self.instances.values().any(|p| p.spec.name == name) {
            return;
        }
        if self.ports.remove(name).is_some() {
            tracing::info!(app = %name, "port closed");
        }
        if let Some(sockets) = self.node_sockets.remove(name) {
            tracing::info!(app = %name, sockets = sockets.len(), "cluster sockets closed");
            for socket in sockets.into_values() {
                socket.close();
            }
        }
    }

    /// Gives each proxy the instances that may take new connections: online, healthy,
    /// not draining; during a reload the standby too until the replacement is ready.
    pub(super) fn update_backends(&mut self) {
        for (name, port) in self.ports.iter_mut() {
            let AppPort::Proxy { proxy, .. } = port else {
                continue;
            };
            let mut ready = Vec::new();
            for p in self.instances.values().filter(|p| &p.spec.name == name) {
                if let Some(standby) = &p.standby
                    && let Some(port) = standby.port
                    && let Some(pid) = standby.pid
                    && standby.healthy
                    && !standby.draining
                {
                    ready.push(cluster::Ready {
                        id: p.id,
                        pid,
                        port,
                    });
                }
                if p.core.status == Status::Online
                    && p.healthy
                    && !p.draining
                    && let Some(port) = p.private_port
                    && let Some(pid) = p.pid
                {
                    ready.push(cluster::Ready {
                        id: p.id,
                        pid,
                        port,
                    });
                }
            }
            proxy.set_backends(&ready);
        }
    }

    pub(super) fn on_readiness(&mut self, id: u32, generation: u64, signal: readiness::Signal) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        if instance.generation == generation {
            match signal {
                readiness::Signal::Ready => self.work.push_back((id, Input::Ready)),
                readiness::Signal::Stopping => instance.draining = true,
                readiness::Signal::Healthy(healthy) => {
                    if !healthy {
                        tracing::warn!(app = %instance.spec.name, id, "health check failing: no new connections");
                    }
                    instance.healthy = healthy;
                }
                readiness::Signal::Watchdog => {
                    if let Some(watchdog) = &instance.probes.watchdog {
                        watchdog.ping();
                    }
                }
                readiness::Signal::Unresponsive(failures) => {
                    let cause = format!("health check failed {failures} times in a row");
                    self.restart_for(id, cause);
                }
                readiness::Signal::WatchdogMissed => {
                    let period = instance.spec.watchdog_ms.unwrap_or_default();
                    let cause = format!("no WATCHDOG=1 within its watchdog ({period}ms)");
                    self.restart_for(id, cause);
                }
            }
        } else if let Some(standby) = instance
            .standby
            .as_mut()
            .filter(|s| s.generation == generation)
        {
            match signal {
                readiness::Signal::Stopping => standby.draining = true,
                readiness::Signal::Healthy(healthy) => standby.healthy = healthy,
                _ => {}
            }
        }
        self.update_backends();
    }

    /// Starts a replacement of a running instance; the current process becomes the
    /// standby and keeps serving.
    pub(super) fn begin_replace(&mut self, id: u32) -> Result<Reply, AgentError> {
        let instance = self
            .instances
            .get_mut(&id)
            .ok_or_else(|| AgentError::NotFound(format!("instance {id} is gone")))?;
        if instance.standby.is_some() {
            return Err(AgentError::Busy(format!(
                "{} (id {id}) is already being replaced",
                instance.spec.name
            )));
        }
        if instance.core.status != Status::Online {
            return Err(AgentError::FailedPrecondition(format!(
                "{} (id {id}) is {}, not online",
                instance.spec.name,
                instance.core.status.as_str()
            )));
        }
        let mut fresh =
            core::Instance::new(core::Policy::from_spec(&instance.spec), Instant::now());
        fresh.restarts = instance.core.restarts + 1;
        let old = std::mem::replace(&mut instance.core, fresh);
        instance.standby = Some(Standby {
            core: old,
            pid: instance.pid.take(),
            start_ticks: instance.start_ticks.take(),
            generation: instance.generation,
            port: instance.private_port.take(),
            probes: std::mem::take(&mut instance.probes),
            healthy: instance.healthy,
            draining: instance.draining,
            usage: instance.usage,
        });
        instance.replace_error = None;
        self.work.push_back((id, Input::Start));
        Ok(Reply::Touched(vec![id], Vec::new()))
    }

    /// The replacement is ready: the standby leaves the rotation, gets its kill signal
    /// to finish in-flight work, and SIGKILL if it is still there after `kill_timeout`.
    pub(super) fn commit_replace(&mut self, id: u32) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        let Some(standby) = instance.standby.take() else {
            return;
        };
        let mut standby = standby;
        if let Some(pid) = standby.pid {
            let channel = standby.probes.channel.take();
            self.retire(id, pid, standby.start_ticks, standby.generation, channel);
        }
        tracing::info!(id, "replaced; the previous process drains");
        self.update_backends();
        self.changed.send_modify(|v| *v += 1);
    }

    /// The replacement failed: kill it and put the standby back as the instance.
    pub(super) fn abort_replace(&mut self, id: u32, reason: String) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        let Some(standby) = instance.standby.take() else {
            return;
        };
        // Behind a shared socket a replacement may accept connections before it says
        // it is ready: it is stopped gracefully like a replaced process, not killed.
        let failed = instance
            .pid
            .map(|pid| (pid, instance.start_ticks, instance.generation));
        tracing::warn!(app = %instance.spec.name, id, %reason, "replacement failed; the previous process keeps serving");
        instance.core = standby.core;
        instance.pid = standby.pid;
        instance.start_ticks = standby.start_ticks;
        instance.generation = standby.generation;
        instance.private_port = standby.port;
        let failed_channel = instance.probes.channel.take();
        instance.probes = standby.probes;
        instance.healthy = standby.healthy;
        instance.draining = standby.draining;
        instance.usage = standby.usage;
        instance.replace_error = Some(reason);
        let restore_crashed = standby.pid.is_none();
        if let Some((pid, ticks, generation)) = failed {
            self.retire(id, pid, ticks, generation, failed_channel);
        }
        if restore_crashed {
            // The previous process died meanwhile: an ordinary crash now.
            self.work.push_back((
                id,
                Input::Exited {
                    exit: core::Exit::Code(-1),
                    group_empty: true,
                },
            ));
        }
        self.update_backends();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends a process that no longer is the instance's its kill signal, and SIGKILL if
    /// it is still there after `kill_timeout`.
    fn retire(
        &mut self,
        id: u32,
        pid: i32,
        start_ticks: Option<u64>,
        generation: u64,
        channel: Option<node::Channel>,
    ) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        let spec = Arc::clone(&instance.spec);
        let sender = channel.as_ref().map(node::Channel::sender);
        // Behind the proxy, a connection handed to this process just before it left the
        // rotation may still sit in its accept queue; closing the listener now would
        // reset it. Signal only once such connections have been accepted.
        let grace = if instance.spec.exec_mode == ExecMode::Proxy {
            PROXY_RETIRE_GRACE
        } else {
            Duration::ZERO
        };
        instance.retiring.push(Retiring {
            pid,
            start_ticks,
            generation,
            _channel: channel,
        });
        let tx = self.tx.clone();
        let after = Duration::from_millis(instance.spec.kill_timeout_ms);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if process::start_ticks(pid) == start_ticks {
                ask_to_stop(&spec, pid, sender.as_ref());
            }
            tokio::time::sleep(after).await;
            let _ = tx.send(Msg::RetireKill { id, generation });
        });
    }

    /// An exit of a process that is not the instance's current one.
    pub(super) fn other_exited(&mut self, id: u32, generation: u64, exit: &core::Exit) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        if let Some(standby) = instance
            .standby
            .as_mut()
            .filter(|s| s.generation == generation)
        {
            tracing::warn!(app = %instance.spec.name, id, exit = %super::describe_exit(exit), "the previous process exited during its replacement");
            standby.pid = None;
            self.update_backends();
        } else if let Some(at) = instance
            .retiring
            .iter()
            .position(|r| r.generation == generation)
        {
            instance.retiring.remove(at);
        }
    }

    pub(super) fn retire_kill(&mut self, id: u32, generation: u64) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        if let Some(at) = instance
            .retiring
            .iter()
            .position(|r| r.generation == generation)
        {
            let retiring = instance.retiring.remove(at);
            if process::start_ticks(retiring.pid) == retiring.start_ticks {
                tracing::warn!(app = %instance.spec.name, id, pid = retiring.pid, "the previous process outlived kill_timeout: SIGKILL");
                process::signal_group(retiring.pid, Signal::SIGKILL);
            }
        }
    }

    /// `fleet scale`: PM2's semantics. More instances take the lowest free numbers;
    /// fewer remove the lowest numbers (PM2 keeps 2 and 3 when 4 become 2); the same
    /// count is an error.
    pub(super) fn scale(&mut self, name: &str, to: ScaleTo) -> Result<Reply, AgentError> {
        let mut members: Vec<(u32, u32)> = self
            .instances
            .values()
            .filter(|p| p.spec.name == name)
            .map(|p| (p.instance, p.id))
            .collect();
        if members.is_empty() {
            return Err(AgentError::NotFound(format!(
                "no app named {name}\nhint: `fleet list` shows the apps"
            )));
        }
        members.sort();
        let current = members.len() as u32;
        let target = match to {
            ScaleTo::Exactly(n) => n,
            ScaleTo::More(n) => current.saturating_add(n),
            ScaleTo::Fewer(n) => current.saturating_sub(n),
        };
        if target > fleet_proto::ops::MAX_INSTANCES {
            return Err(AgentError::InvalidArgument(format!(
                "cannot scale {name} to {target} instances: at most {}",
                fleet_proto::ops::MAX_INSTANCES
            )));
        }
        if target == 0 {
            return Err(AgentError::InvalidArgument(format!(
                "cannot scale {name} to 0 instances\nhint: `fleet stop {name}` stops every instance"
            )));
        }
        if target == current {
            return Err(AgentError::FailedPrecondition(format!(
                "{name} already has {current} instance(s)"
            )));
        }
        let first = members[0].1;
        let running = self
            .instances
            .values()
            .any(|p| p.spec.name == name && p.core.wants_running());
        let mut spec = (*self.instances[&first].spec).clone();
        spec.instances = fleet_config::Instances::Count(target);
        let spec = Arc::new(spec);
        for (_, id) in &members {
            if let Some(instance) = self.instances.get_mut(id) {
                instance.spec = spec.clone();
            }
        }
        let mut touched = Vec::new();
        if target > current {
            // The lowest free numbers, in one pass (PM2 reuses the lowest free number).
            let used: std::collections::BTreeSet<u32> =
                members.iter().map(|(instance, _)| *instance).collect();
            let mut next = 0;
            for _ in current..target {
                while used.contains(&next) {
                    next += 1;
                }
                let instance = next;
                next += 1;
                let id = self.next_id;
                self.next_id += 1;
                self.insert(id, instance, spec.clone(), 0);
                if running {
                    self.work.push_back((id, Input::Start));
                }
                touched.push(id);
            }
        } else {
            for (_, id) in members.iter().take((current - target) as usize) {
                self.work.push_back((*id, Input::Delete));
                touched.push(*id);
            }
        }
        Ok(Reply::Touched(touched, Vec::new()))
    }
}

/// The variables PM2 sets that apps read (`process.env.pm_id` is a common "am I the
/// first instance" check): the process id, the app's name, its mode and script.
fn pm2_env(
    env: &mut std::collections::BTreeMap<String, String>,
    id: u32,
    spec: &fleet_config::AppSpec,
) {
    env.insert("pm_id".into(), id.to_string());
    env.insert("name".into(), spec.name.clone());
    let mode = match spec.exec_mode {
        ExecMode::Fork => "fork_mode",
        ExecMode::Cluster | ExecMode::Proxy => "cluster_mode",
    };
    env.insert("exec_mode".into(), mode.into());
    env.insert("pm_exec_path".into(), spec.script.clone());
    env.insert("pm_cwd".into(), spec.cwd.display().to_string());
}

/// Asks a process to stop as the app wants: `'shutdown'` over its Node IPC channel
/// with PM2's `shutdown_with_message`, else `kill_signal` to its group. SIGKILL after
/// `kill_timeout` is the caller's.
pub(super) fn ask_to_stop(spec: &fleet_config::AppSpec, pgid: i32, channel: Option<&node::Sender>) {
    match channel {
        Some(channel) if spec.shutdown_with_message => channel.send(node::SHUTDOWN.into()),
        _ => {
            let signal = process::signal_from_name(&spec.kill_signal).unwrap_or(Signal::SIGINT);
            process::signal_group(pgid, signal);
        }
    }
}
