//! The gRPC face of the agent (`fleet.agent.v1.AgentService`): the protocol version
//! check, then each call handed to `operations` and its `AgentError` mapped to a gRPC
//! status (`error`). Owns no state of its own.

use std::sync::Arc;

use fleet_proto::agent::v1 as pb;
use pb::agent_service_server::AgentService;
use tokio::sync::Notify;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::error::AgentError;
use crate::operations::Operations;
use crate::supervisor::{Reply, Request};

pub use crate::operations::process_info;

pub struct Service {
    operations: Operations,
    home: String,
    host: String,
    /// Notified by `Kill` once every app is gone; the daemon then shuts down.
    kill: Arc<Notify>,
    /// `Update`; none in `fleet-runtime`, which a container restarts instead.
    updater: Option<Arc<crate::update::Updater>>,
}

impl Service {
    pub fn new(
        operations: Operations,
        home: String,
        host: String,
        kill: Arc<Notify>,
        updater: Option<Arc<crate::update::Updater>>,
    ) -> Service {
        Service {
            operations,
            home,
            host,
            kill,
            updater,
        }
    }
}

fn answer<T>(result: Result<T, AgentError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
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
        use tokio_stream::StreamExt as _;
        let lines = self.operations.logs(request.into_inner()).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(lines).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn flush(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let targets = request.into_inner().targets;
        let flushed = if targets.is_empty() {
            // Every app's files and the agent's own log, as `pm2 flush` does.
            self.operations.hub().flush(None)
        } else {
            let views = self.operations.views(targets, false).await?;
            let paths: Vec<std::path::PathBuf> = views
                .iter()
                .flat_map(|v| v.log_files.iter().map(std::path::PathBuf::from))
                .collect();
            self.operations.hub().flush(Some(&paths))
        };
        Ok(Response::new(pb::FlushResponse {
            files: flushed.iter().map(|p| p.display().to_string()).collect(),
        }))
    }

    async fn reload_logs(
        &self,
        _request: GrpcRequest<pb::ReloadLogsRequest>,
    ) -> Result<Response<pb::ReloadLogsResponse>, Status> {
        let files = self.operations.hub().reopen_all() as u32;
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
        let record = (self.updater.as_ref())
            .map(|u| u.record())
            .unwrap_or_default();
        Ok(Response::new(pb::HelloResponse {
            protocol_major: pb::PROTOCOL_MAJOR,
            protocol_minor: pb::PROTOCOL_MINOR,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            agent_pid: std::process::id(),
            home: self.home.clone(),
            host: self.host.clone(),
            handoff_attempts: record.attempts,
            handoffs: record.handoffs,
            handoff_error: record.error.unwrap_or_default(),
            agent_binary: std::fs::read_link("/proc/self/exe")
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn update(
        &self,
        request: GrpcRequest<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let Some(updater) = &self.updater else {
            return Err(Status::failed_precondition(
                "fleet-runtime is not updated in place: restart its container with the new image",
            ));
        };
        let path = std::path::PathBuf::from(request.into_inner().agent_path);
        let accepted = updater.update(&path).await.map_err(Status::from)?;
        Ok(Response::new(pb::UpdateResponse {
            from_version: accepted.from_version,
            to_version: accepted.to_version,
            attempt: accepted.attempt,
        }))
    }

    async fn start(
        &self,
        request: GrpcRequest<pb::StartRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.start(request.into_inner()).await)
    }

    async fn stop(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.stop(request.into_inner()).await)
    }

    async fn restart(
        &self,
        request: GrpcRequest<pb::RestartRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.restart(request.into_inner()).await)
    }

    async fn reload(
        &self,
        request: GrpcRequest<pb::ReloadRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.reload(request.into_inner()).await)
    }

    async fn scale(
        &self,
        request: GrpcRequest<pb::ScaleRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.scale(request.into_inner()).await)
    }

    async fn delete(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.delete(request.into_inner()).await)
    }

    async fn reset(
        &self,
        request: GrpcRequest<pb::TargetRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.reset(request.into_inner()).await)
    }

    async fn send_signal(
        &self,
        request: GrpcRequest<pb::SendSignalRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.send_signal(request.into_inner()).await)
    }

    async fn list(
        &self,
        request: GrpcRequest<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        answer(self.operations.list(request.into_inner()).await)
    }

    async fn send_message(
        &self,
        request: GrpcRequest<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        answer(self.operations.send_message(request.into_inner()).await)
    }

    async fn resurrect(
        &self,
        _request: GrpcRequest<pb::ResurrectRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        answer(self.operations.resurrect().await)
    }

    async fn save(
        &self,
        request: GrpcRequest<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let force = request.into_inner().force;
        match self
            .operations
            .handle()
            .call(Request::Save { force })
            .await?
        {
            Reply::Saved { path, apps } => Ok(Response::new(pb::SaveResponse { path, apps })),
            other => Err(AgentError::Internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn kill(
        &self,
        _request: GrpcRequest<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let (ids, within) = match self
            .operations
            .handle()
            .call(Request::StopAll { forget: true })
            .await?
        {
            Reply::Settling { ids, within, .. } => (ids, within),
            other => {
                return Err(AgentError::Internal(format!("unexpected reply {other:?}")).into());
            }
        };
        self.operations.handle().settled(&ids, within).await;
        let stopped = ids.len() as u32;
        self.kill.notify_one();
        Ok(Response::new(pb::KillResponse { stopped }))
    }
}
