//! The supervisor's part of `fleet update` (see `crate::handoff`): handing the process
//! table over to the next agent image, and taking it over in that image.
//!
//! Handing over happens on the supervisor's own task, which then processes nothing
//! else: no exit is reaped (exits are reaped only here, see `child`), no timer fires,
//! no process starts. Each pump and channel stops between two reads and gives back its
//! descriptor and unfinished line. A reload in progress cannot cross (its steps run in
//! an operation of this image), so the supervisor says it is busy instead.
//!
//! Taking over rebuilds each instance from its snapshot: a pidfd for its process (a
//! zombie waiting since the exec is reaped at once), the pipes pumped again after
//! their unfinished lines, probes and triggers armed again, the core's pending timer
//! armed for what was left of it.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fleet_config::{AppSpec, ExecMode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::replace::{self, AppPort};
use super::{Instance, Supervisor, instance_logs, millis_since_epoch};
use crate::cluster::{Proxy, ProxyCarry, SteeringCarry};
use crate::core::{self, Action, Status};
use crate::fdstore::{Store, StoreCarry};
use crate::handoff::{Fd, Incoming, Outgoing};
use crate::logs::Stream;
use crate::node::{self, ChannelCarry, SocketKind};
use crate::process;
use crate::readiness;

/// The process table between two agent images.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SupervisorCarry {
    pub next_id: u32,
    pub next_generation: u64,
    pub instances: Vec<InstanceCarry>,
    pub ports: Vec<PortCarry>,
    pub node_sockets: Vec<NodeSocketCarry>,
    pub pipes: Vec<PipeDoc>,
    /// systemd's file descriptor store as this image kept it (`crate::fdstore`).
    #[serde(default)]
    pub store: Option<StoreCarry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InstanceCarry {
    pub id: u32,
    pub instance: u32,
    pub spec: AppSpec,
    pub core: core::Snapshot,
    pub pid: Option<i32>,
    pub start_ticks: Option<u64>,
    pub generation: u64,
    pub created_at_ms: u64,
    pub private_port: Option<u16>,
    pub healthy: bool,
    pub draining: bool,
    pub replace_error: Option<String>,
    pub restart_cause: Option<(String, u64)>,
    /// What was left of the core's pending timer.
    pub timer_in_ms: Option<u64>,
    pub notify: Option<(PathBuf, Fd)>,
    pub channel: Option<ChannelDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelDoc {
    pub fd: Fd,
    pub partial: Vec<u8>,
    pub skipping: bool,
    pub awaiting_ack: bool,
    pub queued: Vec<(serde_json::Value, Option<Fd>)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PortCarry {
    pub app: String,
    pub port: u16,
    pub proxy: bool,
    pub listener: Fd,
    pub steering: Option<SteeringDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SteeringDoc {
    pub state: Fd,
    pub sockets: Fd,
    pub program: Fd,
    pub link: Fd,
    pub filled: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeSocketCarry {
    pub app: String,
    pub address: String,
    pub fd: Fd,
    pub kind: SocketKind,
    pub unix_path: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PipeDoc {
    pub id: u32,
    pub stream: Stream,
    pub fd: Fd,
    pub pending: Vec<u8>,
}

impl Supervisor {
    /// Why the table cannot be handed over now, if it cannot.
    pub(super) fn busy(&self) -> Option<String> {
        if !self.reloading.is_empty() {
            let mut names: Vec<&str> = self.reloading.iter().map(String::as_str).collect();
            names.sort_unstable();
            return Some(format!("a reload of {} is in progress", names.join(", ")));
        }
        let replacing = self.instances.values().find(|p| p.standby.is_some());
        if let Some(p) = replacing {
            return Some(format!("{} (id {}) is being replaced", p.spec.name, p.id));
        }
        let retiring = self.instances.values().find(|p| !p.retiring.is_empty());
        if let Some(p) = retiring {
            return Some(format!(
                "replaced processes of {} are still finishing (within its kill_timeout)",
                p.spec.name
            ));
        }
        None
    }

    /// Stops everything between two steps and hands the table over. Consumes the
    /// supervisor: from here on this image only execs.
    pub(super) async fn hand_over(mut self) -> (SupervisorCarry, Outgoing) {
        self.write_state();
        self.frozen = true;
        let mut out = Outgoing::default();
        let now = Instant::now();
        let mut carry = SupervisorCarry {
            next_id: self.next_id,
            next_generation: self.next_generation,
            ..SupervisorCarry::default()
        };
        let instances = std::mem::take(&mut self.instances);
        for (id, mut p) in instances {
            let mut probes = std::mem::take(&mut p.probes);
            let notify = (probes.notify.take())
                .and_then(readiness::NotifySocket::hand_over)
                .map(|(path, fd)| (path, out.put(fd)));
            let channel = match probes.channel.take() {
                Some(channel) => match channel.hand_over().await {
                    Ok(channel) => Some(channel_doc(channel, &mut out)),
                    Err(error) => {
                        tracing::error!(id, %error, "cannot hand a Node channel over");
                        None
                    }
                },
                None => None,
            };
            carry
                .instances
                .push(instance_carry(&p, now, notify, channel));
        }
        for (app, port) in std::mem::take(&mut self.ports) {
            match hand_over_port(app.clone(), port, &mut out) {
                Ok(port) => carry.ports.push(port),
                Err(error) => tracing::error!(app, %error, "cannot hand a port over"),
            }
        }
        for (app, sockets) in std::mem::take(&mut self.node_sockets) {
            for (address, socket) in sockets {
                carry.node_sockets.push(NodeSocketCarry {
                    app: app.clone(),
                    address,
                    fd: out.put(socket.fd),
                    kind: socket.kind,
                    unix_path: socket.unix_path,
                });
            }
        }
        carry.store = self.store.take().map(|store| store.hand_over(&mut out));
        for pipe in self.hub.hand_over().await {
            carry.pipes.push(PipeDoc {
                id: pipe.id,
                stream: pipe.stream,
                fd: out.put(pipe.fd),
                pending: pipe.pending,
            });
        }
        (carry, out)
    }

    /// Rebuilds the table a previous image handed over; `taken` is when it was
    /// snapshotted, on this clock.
    pub(super) fn take_over(&mut self, carry: SupervisorCarry, fds: &mut Incoming, taken: Instant) {
        self.next_generation = carry.next_generation;
        if let Some(store) = carry.store {
            self.store = Some(Store::take_over(store, fds));
        }
        for port in carry.ports {
            let app = port.app.clone();
            let balance = (carry.instances.iter())
                .find(|p| p.spec.name == app)
                .map(|p| p.spec.balance)
                .unwrap_or_default();
            match take_over_port(port, balance, fds) {
                Ok(port) => {
                    self.ports.insert(app, port);
                }
                Err(error) => tracing::error!(app, %error, "cannot take a port over"),
            }
        }
        for socket in carry.node_sockets {
            match fds.take(socket.fd) {
                Ok(fd) => {
                    (self.node_sockets.entry(socket.app).or_default()).insert(
                        socket.address,
                        node::Socket {
                            fd,
                            kind: socket.kind,
                            unix_path: socket.unix_path,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(app = %socket.app, %error, "cannot take a cluster socket over")
                }
            }
        }
        for instance in carry.instances {
            self.take_over_instance(instance, fds, taken);
        }
        self.next_id = self.next_id.max(carry.next_id);
        for pipe in carry.pipes {
            let Ok(fd) = fds.take(pipe.fd) else { continue };
            // A pipe of an instance that is gone is closed with `fd`.
            if let Some(io) = self.instances.get(&pipe.id).and_then(|p| p.log_io.clone()) {
                self.hub.capture(io, pipe.stream, fd, pipe.pending);
            }
        }
        self.update_backends();
        self.changed.send_modify(|v| *v += 1);
        self.schedule_flush();
    }

    fn take_over_instance(&mut self, carried: InstanceCarry, fds: &mut Incoming, taken: Instant) {
        let id = carried.id;
        let generation = carried.generation;
        let spec = Arc::new(carried.spec);
        self.insert(id, carried.instance, spec.clone(), carried.core.restarts);
        let policy = core::Policy::from_spec(&spec);
        let leader_alive = carried.core.leader_alive;
        let status = carried.core.status;
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        p.core = core::Instance::from_snapshot(carried.core, policy, taken);
        p.pid = carried.pid;
        p.start_ticks = carried.start_ticks;
        p.generation = generation;
        p.created_at = UNIX_EPOCH + Duration::from_millis(carried.created_at_ms);
        p.private_port = carried.private_port;
        p.healthy = carried.healthy;
        p.draining = carried.draining;
        p.replace_error = carried.replace_error;
        p.restart_cause = carried.restart_cause;
        match instance_logs(&self.hub, p) {
            Ok(io) => p.log_io = Some(io),
            Err(error) => {
                tracing::error!(app = %spec.name, id, %error, "cannot open the log files")
            }
        }
        let mut probes = replace::Probes::default();
        if let Some((path, fd)) = carried.notify
            && let Ok(fd) = fds.take(fd)
        {
            let report = self.readiness_reporter(id, generation);
            match readiness::adopt_notify_socket(&path, fd, report) {
                Ok(socket) => probes.notify = Some(socket),
                Err(error) => tracing::error!(id, %error, "cannot take a notify socket over"),
            }
        }
        if let Some(doc) = carried.channel {
            match take_over_channel(doc, fds, self.node_reporter(id, generation)) {
                Ok(channel) => probes.channel = Some(channel),
                Err(error) => tracing::error!(id, %error, "cannot take a Node channel over"),
            }
        }
        if matches!(status, Status::Launching | Status::Online) {
            let shared_mode = spec.port.is_some() && spec.exec_mode != ExecMode::Fork;
            self.arm_probes(
                &mut probes,
                &spec,
                id,
                generation,
                carried.private_port,
                shared_mode,
            );
        }
        if let Some(p) = self.instances.get_mut(&id) {
            p.probes = probes;
        }
        if let Some(pid) = carried.pid.filter(|_| leader_alive) {
            self.watch_adopted(id, generation, pid, carried.start_ticks);
        }
        let Some(p) = self.instances.get_mut(&id) else {
            return;
        };
        if let (Some(token), Some(left)) = (p.core.snapshot(taken).timer, carried.timer_in_ms) {
            // What was left of it, counted from the snapshot.
            let due = taken + Duration::from_millis(left);
            let after = due.saturating_duration_since(Instant::now());
            self.act(id, Action::Schedule { token, after });
        }
        if status == Status::Stopping && !leader_alive {
            self.act(id, Action::WatchGroup);
        }
    }

    /// Waits for a process of the previous image through a new pidfd. A process that
    /// is not the one that was handed over (its start time differs) counts as ended.
    fn watch_adopted(&mut self, id: u32, generation: u64, pid: i32, ticks: Option<u64>) {
        let same = process::start_ticks(pid) == ticks;
        match crate::child::pidfd_open(pid) {
            Ok(pidfd) if same => {
                super::events::watch_exit(&self.tx, id, generation, pidfd);
            }
            result => {
                let reason = match result {
                    Err(error) => error.to_string(),
                    Ok(_) => "its pid names another process".into(),
                };
                tracing::warn!(id, pid, %reason, "a handed-over process is gone");
                self.on_exited(id, generation, Ok(crate::child::Ended::Unknown));
            }
        }
    }
}

/// One instance as a handoff or systemd's store carries it.
pub(super) fn instance_carry(
    p: &Instance,
    now: Instant,
    notify: Option<(PathBuf, Fd)>,
    channel: Option<ChannelDoc>,
) -> InstanceCarry {
    let timer_in_ms = (p.timer_due)
        .filter(|_| p.core.snapshot(now).timer.is_some())
        .map(|due| due.saturating_duration_since(now).as_millis() as u64);
    InstanceCarry {
        id: p.id,
        instance: p.instance,
        spec: (*p.spec).clone(),
        core: p.core.snapshot(now),
        pid: p.pid,
        start_ticks: p.start_ticks,
        generation: p.generation,
        created_at_ms: millis_since_epoch(p.created_at),
        private_port: p.private_port,
        healthy: p.healthy,
        draining: p.draining,
        replace_error: p.replace_error.clone(),
        restart_cause: p.restart_cause.clone(),
        timer_in_ms,
        notify,
        channel,
    }
}

pub(super) fn channel_doc(channel: ChannelCarry, out: &mut Outgoing) -> ChannelDoc {
    ChannelDoc {
        fd: out.put(channel.fd),
        partial: channel.partial,
        skipping: channel.skipping,
        awaiting_ack: channel.awaiting_ack,
        queued: (channel.queued.into_iter())
            .map(|(message, fd)| (message, fd.map(|fd| out.put(fd))))
            .collect(),
    }
}

fn take_over_channel(
    doc: ChannelDoc,
    fds: &mut Incoming,
    report: impl Fn(node::Incoming) + Send + 'static,
) -> std::io::Result<node::Channel> {
    let mut queued = Vec::new();
    for (message, fd) in doc.queued {
        queued.push((message, fd.map(|fd| fds.take(fd)).transpose()?));
    }
    let carry = ChannelCarry {
        fd: fds.take(doc.fd)?,
        partial: doc.partial,
        skipping: doc.skipping,
        awaiting_ack: doc.awaiting_ack,
        queued,
    };
    node::Channel::adopt(carry, report)
}

fn hand_over_port(app: String, port: AppPort, out: &mut Outgoing) -> std::io::Result<PortCarry> {
    Ok(match port {
        AppPort::Shared { port, listener } => PortCarry {
            app,
            port,
            proxy: false,
            listener: out.put(OwnedFd::from(listener)),
            steering: None,
        },
        AppPort::Proxy { port, proxy } => proxy_doc(app, port, proxy.hand_over()?, out),
    })
}

pub(super) fn proxy_doc(
    app: String,
    port: u16,
    carry: ProxyCarry,
    out: &mut Outgoing,
) -> PortCarry {
    PortCarry {
        app,
        port,
        proxy: true,
        listener: out.put(carry.listener),
        steering: carry.steering.map(|s| SteeringDoc {
            state: out.put(s.state),
            sockets: out.put(s.sockets),
            program: out.put(s.program),
            link: out.put(s.link),
            filled: s.filled,
        }),
    }
}

fn take_over_port(
    port: PortCarry,
    balance: fleet_config::Balance,
    fds: &mut Incoming,
) -> std::io::Result<AppPort> {
    let listener = fds.take(port.listener)?;
    if !port.proxy {
        return Ok(AppPort::Shared {
            port: port.port,
            listener: std::net::TcpListener::from(listener),
        });
    }
    let steering = match port.steering {
        Some(s) => Some(SteeringCarry {
            state: fds.take(s.state)?,
            sockets: fds.take(s.sockets)?,
            program: fds.take(s.program)?,
            link: fds.take(s.link)?,
            filled: s.filled,
        }),
        None => None,
    };
    let proxy = Proxy::adopt(ProxyCarry { listener, steering }, balance)?;
    Ok(AppPort::Proxy {
        port: port.port,
        proxy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_carry_round_trips_through_json() {
        let carry = SupervisorCarry::default();
        let json = serde_json::to_string(&carry).unwrap();
        let back: SupervisorCarry = serde_json::from_str(&json).unwrap();
        assert!(back.instances.is_empty() && back.pipes.is_empty());
    }
}
