//! What the supervisor's helper tasks report, other than requests: a process
//! exited, a cron restart fired, a rotation timer fired, watched files changed, and
//! a metrics sample (checked against `max_memory_restart`).

use std::collections::HashMap;

use fleet_config::ExecMode;

use crate::core::{Exit, Input, Status};
use crate::metrics::TreeUsage;
use crate::node::{self, Incoming};
use crate::process;
use crate::readiness;
use crate::supervisor::{Msg, Supervisor, describe_exit, exit_of};

impl Supervisor {
    pub(super) fn on_exited(
        &mut self,
        id: u32,
        generation: u64,
        status: std::io::Result<crate::child::Ended>,
    ) {
        let Some(instance) = self.instances.get(&id) else {
            return;
        };
        let exit = match status {
            Ok(crate::child::Ended::Status(status)) => exit_of(status),
            Ok(crate::child::Ended::Unknown) => Exit::Unknown,
            Err(error) => Exit::SpawnError(format!("cannot wait for the process: {error}")),
        };
        if instance.generation != generation {
            // A standby or retiring process of a reload, or a stale one.
            self.other_exited(id, generation, &exit);
            return;
        }
        if instance.standby.is_some() {
            // The replacement died before it was ready: the reload fails and
            // the previous process keeps serving.
            self.abort_replace(
                id,
                format!("it exited before it was ready ({})", describe_exit(&exit)),
            );
            return;
        }
        let count = instance.spec.instances.resolve(self.cpus);
        if let (Some(path), Some(pid)) = (
            process::pid_path(&instance.spec, instance.instance, count),
            instance.pid,
        ) {
            process::remove_pid(&path, pid);
        }
        let group_empty = instance.pid.is_none_or(|pgid| !process::group_alive(pgid));
        tracing::info!(app = %instance.spec.name, id, ?exit, group_empty, "instance exited");
        self.work
            .push_back((id, Input::Exited { exit, group_empty }));
    }

    /// A `rotate_interval` fired: rotate the files of every instance using it.
    pub(super) fn on_rotate_logs(&mut self, pattern: &str, timezone: &Option<String>) {
        let files: Vec<std::path::PathBuf> = self
            .instances
            .values()
            .filter(|p| {
                p.spec.logs.rotation.interval.as_deref() == Some(pattern)
                    && p.spec.cron_timezone == *timezone
            })
            .flat_map(|p| p.logs.files())
            .collect();
        let hub = self.hub.clone();
        // Renames and reopens are file system work: off the supervisor task.
        tokio::task::spawn_blocking(move || hub.rotate(&files));
    }

    pub(super) fn on_cron(&mut self, id: u32) {
        // PM2's cron also starts a stopped app; fleet leaves an app the user
        // stopped alone and restarts it only when it runs (or has errored).
        if let Some(instance) = self.instances.get(&id)
            && instance.core.status != Status::Stopped
            && instance.core.status != Status::Stopping
        {
            tracing::info!(app = %instance.spec.name, id, "cron_restart");
            self.work.push_back((id, Input::Restart));
        }
    }

    /// A watched path of an app changed: every running instance of it restarts.
    pub(super) fn on_watched(&mut self, id: u32, paths: &[std::path::PathBuf]) {
        let Some(name) = self.instances.get(&id).map(|p| p.spec.name.clone()) else {
            return;
        };
        let shown: Vec<String> = paths
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        tracing::info!(app = %name, changed = ?shown, "change detected, restarting");
        let ids: Vec<u32> = self
            .instances
            .values()
            .filter(|p| p.spec.name == name && p.core.status.wants_running())
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.work.push_back((id, Input::Restart));
        }
    }

    /// Restarts an instance that runs but no longer works (its health check keeps
    /// failing, its watchdog went quiet): a readiness-gated replacement in cluster and
    /// proxy modes, so traffic sees no gap; a counted restart in fork mode. The cause
    /// shows in `describe`.
    pub(super) fn restart_for(&mut self, id: u32, cause: String) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        if !matches!(instance.core.status, Status::Online | Status::Launching) {
            return;
        }
        tracing::warn!(app = %instance.spec.name, id, %cause, "restarting");
        let now = super::view::millis_since_epoch(std::time::SystemTime::now());
        instance.restart_cause = Some((cause, now));
        let gated = instance.spec.exec_mode != ExecMode::Fork
            && instance.core.status == Status::Online
            && instance.standby.is_none();
        if gated && self.begin_replace(id).is_ok() {
            return;
        }
        self.work.push_back((id, Input::Restart));
    }

    pub(super) fn on_usage(&mut self, usage: &HashMap<u32, TreeUsage>) {
        for instance in self.instances.values_mut() {
            instance.usage = usage.get(&instance.id).copied().unwrap_or_default();
            // Checked at every sample (PM2 checks every 30 s, main pid only:
            // #5670, #3017) against the whole tree; a graceful, counted restart.
            if let Some(limit) = instance.spec.max_memory_restart_bytes
                && instance.core.status == Status::Online
                && instance.usage.memory_bytes > limit
            {
                tracing::warn!(
                    app = %instance.spec.name,
                    id = instance.id,
                    memory = instance.usage.memory_bytes,
                    limit,
                    "exceeds max_memory_restart, restarting"
                );
                instance.usage = TreeUsage::default();
                self.work.push_back((instance.id, Input::Restart));
            }
        }
    }
}

impl Supervisor {
    /// A Node app's message: readiness, a cluster worker's request for a listening
    /// socket, or a message for `fleet send --wait`.
    pub(super) fn on_node_message(&mut self, id: u32, generation: u64, incoming: Incoming) {
        let Some(instance) = self.instances.get(&id) else {
            return;
        };
        let spec = instance.spec.clone();
        match incoming {
            // PM2 takes 'ready' only from apps that said they would send it.
            Incoming::Ready if spec.wait_ready => {
                self.on_readiness(id, generation, readiness::Signal::Ready)
            }
            Incoming::Listening if !spec.wait_ready && node::is_cluster_worker(&spec) => {
                self.on_readiness(id, generation, readiness::Signal::Ready)
            }
            Incoming::Ready | Incoming::Listening => {}
            Incoming::QueryServer(query) => self.answer_query(id, generation, &spec.name, query),
            Incoming::Message(message) => {
                let _ = self.node_messages.send((id, message));
            }
        }
    }

    /// Answers a cluster worker's `queryServer` with the app's socket for that
    /// address, bound on first use, or with the bind's error.
    fn answer_query(&mut self, id: u32, generation: u64, app: &str, query: node::Query) {
        let sockets = self.node_sockets.entry(app.to_string()).or_default();
        let key = query.address_key();
        let socket = match sockets.get(&key) {
            Some(socket) => socket
                .try_clone()
                .map_err(|e| -e.raw_os_error().unwrap_or(22)),
            None => node::bind(&query).and_then(|socket| {
                let copy = socket
                    .try_clone()
                    .map_err(|e| -e.raw_os_error().unwrap_or(22));
                tracing::info!(app, address = %key, "cluster socket bound");
                sockets.insert(key.clone(), socket);
                copy
            }),
        };
        let Some(instance) = self.instances.get(&id) else {
            return;
        };
        // The asking process: the current one, or the standby during a reload.
        let channel = if instance.generation == generation {
            instance.probes.channel.as_ref()
        } else {
            instance.standby_channel(generation)
        };
        let Some(channel) = channel else {
            return;
        };
        match socket {
            Ok(socket) => channel.send_handle(query.reply(0), socket),
            Err(errno) => {
                tracing::warn!(app, address = %key, errno, "cannot bind for a cluster worker");
                channel.send(query.reply(errno));
            }
        }
    }
}

/// Tells the supervisor when the process of `generation` has ended, handing it the
/// pidfd to reap it with: only the supervisor's task reaps (see `child`). One
/// descriptor per process, held by this waiter until then.
pub(super) fn watch_exit(
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    id: u32,
    generation: u64,
    pidfd: std::os::fd::OwnedFd,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let pidfd = match crate::child::ended(pidfd).await {
            Ok(pidfd) => Some(pidfd),
            Err(error) => {
                tracing::error!(id, %error, "cannot watch a process; taken as ended");
                None
            }
        };
        let _ = tx.send(Msg::Exited {
            id,
            generation,
            pidfd,
        });
    });
}
