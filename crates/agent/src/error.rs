//! The agent's error type and its one mapping to gRPC status codes. The CLI maps the
//! codes back to exit statuses: `InvalidArgument` is bad usage or config (exit 2),
//! everything else a failed operation (exit 1).

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A target matched nothing.
    #[error("{0}")]
    NotFound(String),
    /// A bad config or argument; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The same script is already running under that name.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation cannot run in the current state (an empty save, a busy agent).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another operation on the same instances is under way (a reload, a replacement):
    /// the same call works once it ends. gRPC's `ABORTED`, so callers can wait and retry.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl From<AgentError> for tonic::Status {
    fn from(error: AgentError) -> tonic::Status {
        let message = error.to_string();
        match error {
            AgentError::NotFound(_) => tonic::Status::not_found(message),
            AgentError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            AgentError::AlreadyExists(_) => tonic::Status::already_exists(message),
            AgentError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            AgentError::Busy(_) => tonic::Status::aborted(message),
            AgentError::Internal(_) => tonic::Status::internal(message),
        }
    }
}
