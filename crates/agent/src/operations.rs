//! The agent's operations below its gRPC face: start, stop, restart, reload, scale,
//! delete, reset, signals, resurrect, list and log streams, each taking the
//! protocol's request and answering with the protocol's response or an
//! `AgentError`. The tonic service (`service`) and the controller link (`link`) both
//! call these; neither builds requests for the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_config::{AppSpec, ExecMode};
use fleet_proto::agent::v1 as pb;
use fleet_proto::ops::AgentCall;
use tokio::sync::mpsc;

use crate::core;
use crate::error::AgentError;
use crate::logs::{Chunk, LogHub, Stream};
use crate::supervisor::{Handle, ProcessView, Reply, Request, ScaleTo};

/// The largest message `fleet send` takes: an app's IPC channel is not a file transfer.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The longest `fleet send --wait` collects replies.
const MAX_REPLY_WAIT_MS: u32 = 60_000;
/// Replies kept for one `fleet send --wait`.
const MAX_REPLIES: usize = 1000;

/// How long an operation's instances get to settle when the supervisor names no
/// deadline of its own.
const DEFAULT_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct Operations {
    handle: Handle,
    hub: LogHub,
    /// This host's name in process infos and log entries.
    host: String,
}

impl Operations {
    pub fn new(handle: Handle, hub: LogHub, host: String) -> Operations {
        Operations { handle, hub, host }
    }

    /// This host's name in process infos and log entries.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn hub(&self) -> &LogHub {
        &self.hub
    }

    /// A fleet action from the controller, as `fleet_proto::ops::agent_call` maps it.
    pub async fn call(&self, call: AgentCall) -> Result<pb::OperationResponse, AgentError> {
        match call {
            AgentCall::Start(request) => self.start(request).await,
            AgentCall::Stop(request) => self.stop(request).await,
            AgentCall::Restart(request) => self.restart(request).await,
            AgentCall::Reload(request) => self.reload(request).await,
            AgentCall::Scale(request) => self.scale(request).await,
        }
    }

    /// Runs a request and answers with the touched instances once they settled.
    pub async fn operate(&self, request: Request) -> Result<pb::OperationResponse, AgentError> {
        let (ids, warnings, within) = match self.handle.call(request).await? {
            Reply::Settling { ids, notes, within } => (ids, notes, within),
            Reply::Touched(ids, notes) => (ids, notes, DEFAULT_SETTLE),
            other => return Err(AgentError::Internal(format!("unexpected reply {other:?}"))),
        };
        let views = self.handle.settled(&ids, within).await;
        Ok(pb::OperationResponse {
            processes: views.iter().map(|v| self.info(v)).collect(),
            warnings,
        })
    }

    pub fn info(&self, view: &ProcessView) -> pb::ProcessInfo {
        process_info(view, &self.host)
    }

    pub async fn views(
        &self,
        targets: Vec<String>,
        details: bool,
    ) -> Result<Vec<ProcessView>, AgentError> {
        match self.handle.call(Request::List { targets, details }).await? {
            Reply::Views(views) => Ok(views),
            other => Err(AgentError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn start(&self, r: pb::StartRequest) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Start {
            targets: r.targets,
            apps: specs(r.apps)?,
            force: r.force,
            from_config: r.from_config,
            update_env: update_env(r.update_env, r.cli_env),
        })
        .await
    }

    pub async fn stop(&self, r: pb::TargetRequest) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Stop { targets: r.targets }).await
    }

    pub async fn restart(
        &self,
        r: pb::RestartRequest,
    ) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Restart {
            targets: r.targets,
            apps: specs(r.apps)?,
            update_env: update_env(r.update_env, r.cli_env),
        })
        .await
    }

    /// Applies new configs (sent, or a config file on this host), then reloads the
    /// targets and those apps (`supervisor::Handle::reload`).
    pub async fn reload(&self, r: pb::ReloadRequest) -> Result<pb::OperationResponse, AgentError> {
        let mut apps = specs(r.apps)?;
        if !r.config_path.is_empty() {
            apps.extend(load_host_config(
                &r.config_path,
                &r.config_cwd,
                &r.env_stage,
            )?);
        }
        let mut targets = r.targets;
        if !apps.is_empty() {
            targets.extend(apps.iter().map(|a| a.name.clone()));
            self.handle
                .call(Request::Apply {
                    apps,
                    update_env: r.update_env,
                })
                .await?;
        } else if r.update_env {
            self.handle
                .call(Request::RefreshEnv {
                    targets: targets.clone(),
                    env: r.cli_env.into_iter().collect(),
                })
                .await?;
        }
        let views = self.views(targets, false).await?;
        let views = self
            .handle
            .reload(views, r.parallel.max(1) as usize)
            .await?;
        Ok(pb::OperationResponse {
            processes: views.iter().map(|v| self.info(v)).collect(),
            warnings: Vec::new(),
        })
    }

    pub async fn scale(&self, r: pb::ScaleRequest) -> Result<pb::OperationResponse, AgentError> {
        let to =
            match fleet_proto::ops::parse_scale(&r.count).map_err(AgentError::InvalidArgument)? {
                fleet_proto::ops::ScaleCount::Exactly(n) => ScaleTo::Exactly(n),
                fleet_proto::ops::ScaleCount::More(n) => ScaleTo::More(n),
                fleet_proto::ops::ScaleCount::Fewer(n) => ScaleTo::Fewer(n),
            };
        self.operate(Request::Scale { name: r.app, to }).await
    }

    pub async fn delete(&self, r: pb::TargetRequest) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Delete { targets: r.targets }).await
    }

    pub async fn reset(&self, r: pb::TargetRequest) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Reset { targets: r.targets }).await
    }

    pub async fn send_signal(
        &self,
        r: pb::SendSignalRequest,
    ) -> Result<pb::OperationResponse, AgentError> {
        let name = fleet_config::parse_signal(&r.signal).map_err(AgentError::InvalidArgument)?;
        let signal = crate::process::signal_from_name(&name)
            .ok_or_else(|| AgentError::InvalidArgument(format!("unknown signal {}", r.signal)))?;
        self.operate(Request::Signal {
            targets: r.targets,
            signal,
        })
        .await
    }

    pub async fn resurrect(&self) -> Result<pb::OperationResponse, AgentError> {
        self.operate(Request::Resurrect).await
    }

    /// `fleet send`: the message to the targets' Node IPC channel; with `wait_ms`,
    /// what they send back meanwhile.
    pub async fn send_message(
        &self,
        r: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, AgentError> {
        if r.json.len() > MAX_MESSAGE_BYTES {
            return Err(AgentError::InvalidArgument(format!(
                "the message is {} bytes; at most {MAX_MESSAGE_BYTES}",
                r.json.len()
            )));
        }
        let message: serde_json::Value = serde_json::from_str(&r.json)
            .map_err(|e| AgentError::InvalidArgument(format!("the message is not JSON: {e}")))?;
        let wait = std::time::Duration::from_millis(u64::from(r.wait_ms.min(MAX_REPLY_WAIT_MS)));
        // Listening before sending: a reply can come back at once.
        let mut replies = self.handle.node_messages();
        let (ids, warnings) = match self
            .handle
            .call(Request::SendMessage {
                targets: r.targets,
                message,
            })
            .await?
        {
            Reply::Touched(ids, notes) | Reply::Settling { ids, notes, .. } => (ids, notes),
            other => return Err(AgentError::Internal(format!("unexpected reply {other:?}"))),
        };
        let views = self.handle.views_of(&ids).await;
        let mut collected = Vec::new();
        let until = tokio::time::Instant::now() + wait;
        while !wait.is_zero() && collected.len() < MAX_REPLIES {
            match tokio::time::timeout_at(until, replies.recv()).await {
                Ok(Ok((id, value))) if ids.contains(&id) => {
                    let view = views.iter().find(|v| v.id == id);
                    collected.push(pb::MessageReply {
                        id,
                        name: view.map(|v| v.name.clone()).unwrap_or_default(),
                        instance: view.map_or(0, |v| v.instance),
                        json: value.to_string(),
                    });
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        Ok(pb::SendMessageResponse {
            delivered: views.iter().map(|v| self.info(v)).collect(),
            warnings,
            replies: collected,
        })
    }

    pub async fn list(&self, r: pb::ListRequest) -> Result<pb::ListResponse, AgentError> {
        let views = self.views(r.targets, r.details).await?;
        Ok(pb::ListResponse {
            processes: views.iter().map(|v| self.info(v)).collect(),
            host: self.handle.host_metrics(),
        })
    }

    /// The log lines of the targets: history, then (with `follow`) new lines as they
    /// come, until the receiver is dropped.
    pub async fn logs(
        &self,
        r: pb::LogsRequest,
    ) -> Result<mpsc::Receiver<pb::LogEntry>, AgentError> {
        // Unknown targets are an error now, not a silent empty stream.
        if !r.targets.is_empty() {
            self.views(r.targets.clone(), false).await?;
        }
        // Parsed once: a `/regex/` is not compiled again for every chunk.
        let targets = (r.targets.iter())
            .map(|t| crate::target::Target::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let matches = move |chunk: &Chunk| {
            targets.is_empty()
                || targets.iter().any(|target| {
                    let one = [(chunk.id, &*chunk.app, &*chunk.namespace)];
                    !target.select(one.into_iter()).is_empty()
                })
        };
        let stream = match pb::LogStream::try_from(r.stream) {
            Ok(pb::LogStream::Out) => Some(Stream::Out),
            Ok(pb::LogStream::Err) => Some(Stream::Err),
            _ => None,
        };
        // Subscribe before reading history so no line falls between the two; where each
        // instance's count of lines stood then tells what a lagging follower missed.
        let mut follow = r.follow.then(|| self.hub.subscribe());
        let (history, last_seq, marks) =
            (self.hub).history_and_marks(&matches, r.lines as usize, stream, r.since_unix_ms);
        let mut gaps = crate::logs::gaps::Gaps::new(marks);
        let (tx, rx) = tokio::sync::mpsc::channel(LOG_STREAM_BUFFER);
        let host = self.host.clone();
        tokio::spawn(async move {
            for (chunk, index, line) in history {
                if tx.send(entry(&chunk, index, line, &host)).await.is_err() {
                    return;
                }
            }
            let Some(follow) = follow.as_mut() else {
                return;
            };
            loop {
                let chunk = match follow.recv().await {
                    Ok(chunk) => chunk,
                    // What was skipped is counted per app by the next chunks (`gaps`).
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if chunk.seq <= last_seq
                    || !matches(&chunk)
                    || stream.is_some_and(|s| s != chunk.stream)
                {
                    continue;
                }
                let lines = chunk.lines().count() as u64;
                let missed = gaps.observe(chunk.id, chunk.stream, chunk.first_line, lines);
                if missed > 0 && tx.send(missed_notice(&chunk, missed, &host)).await.is_err() {
                    return;
                }
                for (index, line) in chunk.lines().enumerate() {
                    let line = String::from_utf8_lossy(line).into_owned();
                    if tx.send(entry(&chunk, index, line, &host)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Lines a `logs` client may have in flight before the agent waits for it; a slow
/// client only ever delays itself (the pumps never wait for followers).
const LOG_STREAM_BUFFER: usize = 1024;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `missed` lines of `chunk`'s instance and stream that a follower never got.
fn missed_notice(chunk: &Chunk, missed: u64, host: &str) -> pb::LogEntry {
    pb::LogEntry {
        missed,
        notice: format!(
            "{missed} lines of {}#{} ({}) were not shown: this client fell behind (they are in the log files)",
            chunk.app,
            chunk.instance,
            chunk.stream.as_str()
        ),
        line: String::new(),
        seq: 0,
        ..entry(chunk, 0, String::new(), host)
    }
}

/// Line `index` of `chunk`: its number in the instance's stream is the lines before
/// the chunk and its place in it.
fn entry(chunk: &Chunk, index: usize, line: String, host: &str) -> pb::LogEntry {
    pb::LogEntry {
        ts_unix_ms: chunk.ts_ms,
        app: chunk.app.to_string(),
        id: chunk.id,
        instance: chunk.instance,
        stream: match chunk.stream {
            Stream::Out => pb::LogStream::Out,
            Stream::Err => pb::LogStream::Err,
        } as i32,
        line,
        host: host.to_string(),
        notice: String::new(),
        missed: 0,
        seq: chunk.first_line + index as u64 + 1,
    }
}

/// Converts the supervisor's view of an instance to its protobuf form.
pub fn process_info(view: &ProcessView, host: &str) -> pb::ProcessInfo {
    pb::ProcessInfo {
        id: view.id,
        name: view.name.clone(),
        namespace: view.namespace.clone(),
        instance: view.instance,
        pid: view.pid,
        status: status_to_pb(view.status) as i32,
        restarts: view.restarts,
        uptime_ms: view.uptime_ms,
        cpu_percent: view.cpu_percent,
        memory_bytes: view.memory_bytes,
        exec_mode: match view.exec_mode {
            ExecMode::Fork => pb::ExecMode::Fork,
            ExecMode::Cluster | ExecMode::Proxy => pb::ExecMode::Cluster,
        } as i32,
        host: host.to_string(),
        unstable_restarts: view.unstable_restarts,
        last_exit: view.last_exit.as_ref().map(|exit| {
            let (code, signal, spawn_error) = match &exit.exit {
                core::Exit::Code(code) => (Some(*code), None, None),
                core::Exit::Signal(signal) => (None, Some(signal_name(*signal)), None),
                core::Exit::SpawnError(error) => (None, None, Some(error.clone())),
                core::Exit::Unknown => (None, None, None),
            };
            pb::ExitInfo {
                code,
                signal,
                spawn_error,
                unknown: exit.exit == core::Exit::Unknown,
                at_unix_ms: exit.at_ms,
                uptime_ms: exit.uptime_ms,
            }
        }),
        created_at_unix_ms: view.created_at_ms,
        restart_at_unix_ms: view.restart_at_ms,
        prev_restart_delay_ms: view.prev_restart_delay_ms,
        restart_cause: view
            .restart_cause
            .as_ref()
            .map(|(cause, _)| cause.clone())
            .unwrap_or_default(),
        restart_cause_at_unix_ms: view.restart_cause.as_ref().map(|(_, at)| *at),
        max_memory_bytes: view.max_memory_bytes,
        config_json: view
            .config
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        log_files: view.log_files.clone(),
        script: view.script.clone(),
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| signal.to_string())
}

fn status_to_pb(status: core::Status) -> pb::ProcessStatus {
    match status {
        core::Status::Launching => pb::ProcessStatus::Launching,
        core::Status::Online => pb::ProcessStatus::Online,
        core::Status::Stopping => pb::ProcessStatus::Stopping,
        core::Status::Stopped => pb::ProcessStatus::Stopped,
        core::Status::Errored => pb::ProcessStatus::Errored,
        core::Status::WaitingRestart => pb::ProcessStatus::WaitingRestart,
    }
}

/// Decodes the apps of a request and checks each with the config reader's rules (a
/// client need not have used the reader).
fn specs(apps: Vec<pb::AppConfig>) -> Result<Vec<AppSpec>, AgentError> {
    apps.into_iter()
        .map(|app| {
            let spec = serde_json::from_str::<AppSpec>(&app.json)
                .map_err(|e| AgentError::InvalidArgument(format!("bad app config: {e}")))?;
            fleet_config::validate_spec(&spec)
                .map_err(|e| AgentError::InvalidArgument(format!("app {:?}: {e}", spec.name)))?;
            Ok(spec)
        })
        .collect()
}

/// A config file on this host, loaded as `fleet start` would load it here: scripts and
/// interpreters resolve on this host, with the agent's environment.
fn load_host_config(path: &str, cwd: &str, env_stage: &str) -> Result<Vec<AppSpec>, AgentError> {
    let path = std::path::Path::new(path);
    let cwd = std::path::Path::new(cwd);
    // An empty `config_cwd` is unset: the file's own directory.
    let given = [("config_path", path), ("config_cwd", cwd)];
    for (key, given) in given.into_iter().filter(|(_, p)| !p.as_os_str().is_empty()) {
        if !given.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "{key} {} is not absolute",
                given.display()
            )));
        }
    }
    let cwd = if cwd.as_os_str().is_empty() {
        path.parent().map(Into::into).unwrap_or_default()
    } else {
        cwd.to_path_buf()
    };
    let options = fleet_config::LoadOptions {
        env_stage: (!env_stage.is_empty()).then(|| env_stage.to_string()),
        only: Vec::new(),
        // The agent's environment, less what systemd set for the agent's own service.
        inherited_env: Arc::new(
            std::env::vars()
                .filter(|(k, _)| !crate::sd_notify::SERVICE_VARIABLES.contains(&k.as_str()))
                .filter(|(k, _)| fleet_config::inheritable(k))
                .collect(),
        ),
        cwd,
    };
    let file = fleet_config::load(path, &options)
        .map_err(|errors| AgentError::InvalidArgument(errors.to_string()))?;
    if file.apps.is_empty() {
        return Err(AgentError::InvalidArgument(format!(
            "{}: no app to start",
            path.display()
        )));
    }
    Ok(file.apps)
}

fn update_env(
    update: bool,
    env: std::collections::HashMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    update.then(|| env.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid_json() -> String {
        let spec = AppSpec::with_defaults("api".into(), "api.js".into(), "/srv/api".into());
        let mut spec = spec;
        spec.command = vec!["/usr/bin/node".into(), "api.js".into()];
        serde_json::to_string(&spec).unwrap()
    }

    #[test]
    fn a_valid_spec_passes_the_api_checks() {
        assert!(specs(vec![pb::AppConfig { json: valid_json() }]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Mutated app configs, as any client could send them, decode and validate or
        /// are refused as invalid arguments; nothing panics.
        #[test]
        fn mutated_app_configs_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12)
        ) {
            let mut bytes = valid_json().into_bytes();
            for (at, byte, op) in edits {
                let at = at % bytes.len().max(1);
                match op {
                    0 if !bytes.is_empty() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if !bytes.is_empty() => { bytes.remove(at); }
                    _ => {}
                }
            }
            let json = String::from_utf8_lossy(&bytes).into_owned();
            match specs(vec![pb::AppConfig { json }]) {
                Ok(apps) => prop_assert_eq!(apps.len(), 1),
                Err(error) => prop_assert!(matches!(error, AgentError::InvalidArgument(_))),
            }
        }

        #[test]
        fn any_scale_count_parses_or_is_refused(count in "\\PC{0,24}") {
            if let Ok(parsed) = fleet_proto::ops::parse_scale(&count) {
                let n = match parsed {
                    fleet_proto::ops::ScaleCount::Exactly(n)
                    | fleet_proto::ops::ScaleCount::More(n)
                    | fleet_proto::ops::ScaleCount::Fewer(n) => n,
                };
                prop_assert!(n <= fleet_proto::ops::MAX_INSTANCES);
            }
        }
    }
}
