//! The gRPC face of the agent (`fleet.agent.v1.AgentService`): converts protobuf
//! messages to supervisor requests and back, checks the protocol version, and waits
//! for operations to settle before answering. Owns no state of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_config::{AppSpec, ExecMode};
use fleet_proto::agent::v1 as pb;
use pb::agent_service_server::AgentService;
use tokio::sync::Notify;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::core;
use crate::error::AgentError;
use crate::logs::{Chunk, LogHub, Stream};
use crate::supervisor::{Handle, ProcessView, Reply, Request, ScaleTo};

pub struct Service {
    handle: Handle,
    hub: LogHub,
    home: String,
    host: String,
    /// Notified by `Kill` once every app is gone; the daemon then shuts down.
    kill: Arc<Notify>,
}

impl Service {
    pub fn new(
        handle: Handle,
        hub: LogHub,
        home: String,
        host: String,
        kill: Arc<Notify>,
    ) -> Service {
        Service {
            handle,
            hub,
            home,
            host,
            kill,
        }
    }

    /// Runs an operation and answers with the touched instances once they settled.
    async fn operate(&self, request: Request) -> Result<Response<pb::OperationResponse>, Status> {
        let (ids, warnings, within) = match self.handle.call(request).await? {
            Reply::Settling { ids, notes, within } => (ids, notes, within),
            Reply::Touched(ids, notes) => (ids, notes, std::time::Duration::from_secs(10)),
            other => {
                return Err(AgentError::Internal(format!("unexpected reply {other:?}")).into());
            }
        };
        let views = self.handle.settled(&ids, within).await;
        Ok(Response::new(pb::OperationResponse {
            processes: views.iter().map(|v| self.info(v)).collect(),
            warnings,
        }))
    }

    fn info(&self, view: &ProcessView) -> pb::ProcessInfo {
        process_info(view, &self.host)
    }

    async fn views(&self, targets: Vec<String>, details: bool) -> Result<Vec<ProcessView>, Status> {
        match self.handle.call(Request::List { targets, details }).await? {
            Reply::Views(views) => Ok(views),
            other => Err(AgentError::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }
}

/// After the last replacement, time for the touched instances to settle.
const RELOAD_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);
/// Beyond `listen_timeout`, how long a replacement may take before the reload gives up.
const REPLACE_SLACK: std::time::Duration = std::time::Duration::from_secs(2);

struct ReloadUnlock {
    handle: Handle,
    names: Vec<String>,
}

impl Drop for ReloadUnlock {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let names = std::mem::take(&mut self.names);
        tokio::spawn(async move {
            let _ = handle.call(Request::ReloadUnlock { names }).await;
        });
    }
}

/// Reloads one instance: a replacement for a shared-port app, a restart otherwise.
async fn reload_one(handle: Handle, view: ProcessView) -> Result<(), String> {
    let label = format!("{}#{} (id {})", view.name, view.instance, view.id);
    if !view.shares_port || view.status != core::Status::Online {
        // PM2 restarts fork-mode apps on reload; a stopped instance just starts.
        let reply = handle
            .call(Request::Restart {
                targets: vec![format!("#{}", view.id)],
                apps: Vec::new(),
                update_env: None,
            })
            .await
            .map_err(|e| format!("{label}: {e}"))?;
        if let Reply::Settling { ids, within, .. } = reply {
            handle.settled(&ids, within).await;
        }
        return Ok(());
    }
    handle
        .call(Request::BeginReplace { id: view.id })
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    let timeout = std::time::Duration::from_millis(view.listen_timeout_ms);
    let until = tokio::time::Instant::now() + timeout + REPLACE_SLACK;
    let (views, done) = handle
        .wait_for(&[view.id], until, |views| {
            views
                .first()
                .is_none_or(|v| v.replace_error.is_some() || v.status == core::Status::Online)
        })
        .await;
    let Some(now) = views.first() else {
        return Err(format!("{label} was deleted during the reload"));
    };
    if let Some(error) = &now.replace_error {
        return Err(format!("{label} was not replaced: {error}"));
    }
    if !done || now.ready_timed_out {
        let reason = format!(
            "the replacement was not ready within {}ms",
            timeout.as_millis()
        );
        let _ = handle
            .call(Request::AbortReplace {
                id: view.id,
                reason: reason.clone(),
            })
            .await;
        return Err(format!("{label}: {reason}"));
    }
    handle
        .call(Request::CommitReplace { id: view.id })
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    Ok(())
}

/// Lines a `logs` client may have in flight before the agent waits for it; a slow
/// client only ever delays itself (the pumps never wait for followers).
const LOG_STREAM_BUFFER: usize = 1024;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn entry(chunk: &Chunk, line: String, host: &str) -> pb::LogEntry {
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
            };
            pb::ExitInfo {
                code,
                signal,
                spawn_error,
                at_unix_ms: exit.at_ms,
                uptime_ms: exit.uptime_ms,
            }
        }),
        created_at_unix_ms: view.created_at_ms,
        restart_at_unix_ms: view.restart_at_ms,
        prev_restart_delay_ms: view.prev_restart_delay_ms,
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

fn specs(apps: Vec<pb::AppConfig>) -> Result<Vec<AppSpec>, AgentError> {
    apps.into_iter()
        .map(|app| {
            serde_json::from_str::<AppSpec>(&app.json)
                .map_err(|e| AgentError::InvalidArgument(format!("bad app config: {e}")))
        })
        .collect()
}

/// A config file on this host, loaded as `fleet start` would load it here: scripts and
/// interpreters resolve on this host, with the agent's environment.
fn load_host_config(path: &str, env_stage: &str) -> Result<Vec<AppSpec>, AgentError> {
    let path = std::path::Path::new(path);
    if !path.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "config_path {} is not absolute",
            path.display()
        )));
    }
    let options = fleet_config::LoadOptions {
        env_stage: (!env_stage.is_empty()).then(|| env_stage.to_string()),
        only: Vec::new(),
        inherited_env: Arc::new(std::env::vars().collect()),
        cwd: path.parent().map(Into::into).unwrap_or_default(),
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

#[tonic::async_trait]
impl AgentService for Service {
    type LogsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::LogEntry, Status>> + Send + 'static>,
    >;

    async fn logs(
        &self,
        request: GrpcRequest<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        // Unknown targets are an error now, not a silent empty stream.
        if !r.targets.is_empty() {
            self.views(r.targets.clone(), false).await?;
        }
        let targets = r.targets;
        let matches = move |chunk: &Chunk| {
            targets.is_empty()
                || targets.iter().any(|target| {
                    let one = [(chunk.id, &*chunk.app, &*chunk.namespace)];
                    crate::target::select(target, one.into_iter()).is_ok_and(|ids| !ids.is_empty())
                })
        };
        let stream = match pb::LogStream::try_from(r.stream) {
            Ok(pb::LogStream::Out) => Some(Stream::Out),
            Ok(pb::LogStream::Err) => Some(Stream::Err),
            _ => None,
        };
        // Subscribe before reading history so no line falls between the two.
        let mut follow = r.follow.then(|| self.hub.subscribe());
        let (history, last_seq) =
            self.hub
                .history(&matches, r.lines as usize, stream, r.since_unix_ms);
        let (tx, rx) = tokio::sync::mpsc::channel(LOG_STREAM_BUFFER);
        let host = self.host.clone();
        tokio::spawn(async move {
            for (chunk, line) in history {
                if tx.send(Ok(entry(&chunk, line, &host))).await.is_err() {
                    return;
                }
            }
            let Some(follow) = follow.as_mut() else {
                return;
            };
            loop {
                let chunk = match follow.recv().await {
                    Ok(chunk) => chunk,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let notice = pb::LogEntry {
                            ts_unix_ms: now_ms(),
                            host: host.clone(),
                            notice: format!(
                                "{missed} batches of lines were not shown: this client fell behind (they are in the log files)"
                            ),
                            ..Default::default()
                        };
                        if tx.send(Ok(notice)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if chunk.seq <= last_seq
                    || !matches(&chunk)
                    || stream.is_some_and(|s| s != chunk.stream)
                {
                    continue;
                }
                for line in chunk.lines() {
                    let line = String::from_utf8_lossy(line).into_owned();
                    if tx.send(Ok(entry(&chunk, line, &host))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn flush(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let targets = request.into_inner().targets;
        let flushed = if targets.is_empty() {
            // Every app's files and the agent's own log, as `pm2 flush` does.
            self.hub.flush(None)
        } else {
            let views = self.views(targets, false).await?;
            let paths: Vec<std::path::PathBuf> = views
                .iter()
                .flat_map(|v| v.log_files.iter().map(std::path::PathBuf::from))
                .collect();
            self.hub.flush(Some(&paths))
        };
        Ok(Response::new(pb::FlushResponse {
            files: flushed.iter().map(|p| p.display().to_string()).collect(),
        }))
    }

    async fn reload_logs(
        &self,
        _request: GrpcRequest<pb::ReloadLogsRequest>,
    ) -> Result<Response<pb::ReloadLogsResponse>, Status> {
        let files = self.hub.reopen_all() as u32;
        Ok(Response::new(pb::ReloadLogsResponse { files }))
    }

    async fn hello(
        &self,
        request: GrpcRequest<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let hello = request.into_inner();
        if hello.protocol_major != pb::PROTOCOL_MAJOR {
            return Err(Status::failed_precondition(format!(
                "protocol version {}.{} is not supported: this agent ({}) speaks {}.x\nhint: run a fleet CLI of the same major version as the agent",
                hello.protocol_major,
                hello.protocol_minor,
                env!("CARGO_PKG_VERSION"),
                pb::PROTOCOL_MAJOR
            )));
        }
        Ok(Response::new(pb::HelloResponse {
            protocol_major: pb::PROTOCOL_MAJOR,
            protocol_minor: pb::PROTOCOL_MINOR,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_pid: std::process::id(),
            home: self.home.clone(),
            host: self.host.clone(),
        }))
    }

    async fn start(
        &self,
        request: GrpcRequest<pb::StartRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = request.into_inner();
        self.operate(Request::Start {
            targets: r.targets,
            apps: specs(r.apps)?,
            force: r.force,
            from_config: r.from_config,
            update_env: update_env(r.update_env, r.cli_env),
        })
        .await
    }

    async fn stop(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let targets = request.into_inner().targets;
        self.operate(Request::Stop { targets }).await
    }

    async fn restart(
        &self,
        request: GrpcRequest<pb::RestartRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = request.into_inner();
        self.operate(Request::Restart {
            targets: r.targets,
            apps: specs(r.apps)?,
            update_env: update_env(r.update_env, r.cli_env),
        })
        .await
    }

    async fn reload(
        &self,
        request: GrpcRequest<pb::ReloadRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = request.into_inner();
        let mut apps = specs(r.apps)?;
        if !r.config_path.is_empty() {
            apps.extend(load_host_config(&r.config_path, &r.env_stage)?);
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
        let mut names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        names.dedup();
        self.handle
            .call(Request::ReloadLock {
                names: names.clone(),
            })
            .await?;
        // Unlock on every exit path, including a client that hangs up mid-reload.
        let _unlock = ReloadUnlock {
            handle: self.handle.clone(),
            names,
        };
        let parallel = r.parallel.max(1) as usize;
        let ids: Vec<u32> = views.iter().map(|v| v.id).collect();
        for batch in views.chunks(parallel) {
            let mut jobs = tokio::task::JoinSet::new();
            for view in batch {
                jobs.spawn(reload_one(self.handle.clone(), view.clone()));
            }
            let mut failures = Vec::new();
            while let Some(result) = jobs.join_next().await {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(failure)) => failures.push(failure),
                    Err(panic) => failures.push(format!("internal error: {panic}")),
                }
            }
            if !failures.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "reload stopped: {}\nthe instances not yet replaced keep serving",
                    failures.join("; ")
                )));
            }
        }
        let views = self.handle.settled(&ids, RELOAD_SETTLE).await;
        Ok(Response::new(pb::OperationResponse {
            processes: views.iter().map(|v| self.info(v)).collect(),
            warnings: Vec::new(),
        }))
    }

    async fn scale(
        &self,
        request: GrpcRequest<pb::ScaleRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = request.into_inner();
        let count = r.count.trim();
        let parse = |digits: &str| {
            digits.parse::<u32>().map_err(|_| {
                AgentError::InvalidArgument(format!(
                    "invalid instance count {count:?}: expected N, +N or -N"
                ))
            })
        };
        let to = if let Some(more) = count.strip_prefix('+') {
            ScaleTo::More(parse(more)?)
        } else if let Some(fewer) = count.strip_prefix('-') {
            ScaleTo::Fewer(parse(fewer)?)
        } else {
            ScaleTo::Exactly(parse(count)?)
        };
        self.operate(Request::Scale { name: r.app, to }).await
    }

    async fn delete(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let targets = request.into_inner().targets;
        self.operate(Request::Delete { targets }).await
    }

    async fn reset(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let targets = request.into_inner().targets;
        self.operate(Request::Reset { targets }).await
    }

    async fn send_signal(
        &self,
        request: GrpcRequest<pb::SendSignalRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let r = request.into_inner();
        let name = fleet_config::parse_signal(&r.signal).map_err(AgentError::InvalidArgument)?;
        let signal = crate::process::signal_from_name(&name)
            .ok_or_else(|| AgentError::InvalidArgument(format!("unknown signal {}", r.signal)))?;
        self.operate(Request::Signal {
            targets: r.targets,
            signal,
        })
        .await
    }

    async fn list(
        &self,
        request: GrpcRequest<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let r = request.into_inner();
        match self
            .handle
            .call(Request::List {
                targets: r.targets,
                details: r.details,
            })
            .await?
        {
            Reply::Views(views) => Ok(Response::new(pb::ListResponse {
                processes: views.iter().map(|v| self.info(v)).collect(),
            })),
            other => Err(AgentError::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn save(
        &self,
        request: GrpcRequest<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let force = request.into_inner().force;
        match self.handle.call(Request::Save { force }).await? {
            Reply::Saved { path, apps } => Ok(Response::new(pb::SaveResponse { path, apps })),
            other => Err(AgentError::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn resurrect(
        &self,
        _request: GrpcRequest<pb::ResurrectRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        self.operate(Request::Resurrect).await
    }

    async fn kill(
        &self,
        _request: GrpcRequest<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let (ids, within) = match self.handle.call(Request::StopAll { forget: true }).await? {
            Reply::Settling { ids, within, .. } => (ids, within),
            other => {
                return Err(AgentError::Internal(format!("unexpected reply {other:?}")).into());
            }
        };
        self.handle.settled(&ids, within).await;
        let stopped = ids.len() as u32;
        self.kill.notify_one();
        Ok(Response::new(pb::KillResponse { stopped }))
    }
}
