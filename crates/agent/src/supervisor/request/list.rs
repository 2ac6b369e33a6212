//! `List` and `Views`: the selected instances as `ProcessView`s, and PM2's target
//! rules resolved to ids (`select`).

use std::time::SystemTime;

use fleet_config::ExecMode;
use tokio::time::Instant;

use crate::core::Status;
use crate::error::AgentError;
use crate::supervisor::{
    ExitView, Instance, ProcessView, Reply, Supervisor, millis_since_epoch, redacted,
};

impl Supervisor {
    pub(in crate::supervisor) fn list(
        &self,
        targets: &[String],
        details: bool,
    ) -> Result<Reply, AgentError> {
        let ids = if targets.is_empty() {
            self.instances.keys().copied().collect()
        } else {
            self.select(targets)?
        };
        Ok(Reply::Views(
            ids.iter()
                .filter_map(|id| self.instances.get(id))
                .map(|instance| self.view(instance, details))
                .collect(),
        ))
    }

    /// Views of these ids; ids that no longer exist are left out, not an error.
    pub(in crate::supervisor) fn views(&self, ids: &[u32]) -> Reply {
        Reply::Views(
            ids.iter()
                .filter_map(|id| self.instances.get(id))
                .map(|instance| self.view(instance, false))
                .collect(),
        )
    }

    /// Resolves targets to ids, in order, without duplicates. `#<id>` is an exact id
    /// (used internally); PM2's order for a bare word is name, namespace, then id.
    pub(in crate::supervisor) fn select(&self, targets: &[String]) -> Result<Vec<u32>, AgentError> {
        let mut ids: Vec<u32> = Vec::new();
        let mut missing = Vec::new();
        for target in targets {
            let found = crate::target::select(
                target,
                self.instances
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

    pub(in crate::supervisor) fn view(&self, p: &Instance, details: bool) -> ProcessView {
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
            max_memory_bytes: p.spec.max_memory_restart_bytes,
            config: details.then(|| redacted(&p.spec)),
            ready_timed_out: p.core.ready_timed_out,
            replace_error: p.replace_error.clone(),
            restart_cause: p.restart_cause.clone(),
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
