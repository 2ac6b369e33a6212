//! The controller's errors, and the one place where they become gRPC statuses. Messages
//! follow the house style: short, lower-case, with a `hint:` line where a fix is known.

use std::path::{Path, PathBuf};

use tonic::Status;

/// What can go wrong starting or running the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {store}: {error}")]
    Database {
        /// Where the store is (a file, or a URL without its password).
        store: String,
        /// Not a `source`: the message says it already, and a chain would say it twice.
        error: crate::store::DbError,
    },
    #[error(
        "store {store} has schema version {found}, this fleet-controller knows up to {known}\nhint: run the newer fleet-controller that wrote it"
    )]
    NewerSchema {
        store: String,
        found: i64,
        known: i64,
    },
    #[error("certificate {}: {source}", path.display())]
    Certificate { path: PathBuf, source: rcgen::Error },
    #[error(
        "{} exists but {} does not\nhint: restore {}, or move both away to create a new CA (every agent must then join again)",
        present.display(),
        missing.display(),
        missing.display()
    )]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("tls: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the database thread stopped")]
    StoreStopped,
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn database(store: impl std::fmt::Display, source: crate::store::DbError) -> Error {
        Error::Database {
            store: store.to_string(),
            error: source,
        }
    }

    /// Whether this is the store being away (not a refusal or a bug).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Database {
                error: crate::store::DbError::Unavailable(_),
                ..
            }
        )
    }

    pub(crate) fn certificate(path: &Path, source: rcgen::Error) -> Error {
        Error::Certificate {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why an RPC was refused: every refusal the controller makes, each with its gRPC code.
/// `From<Refusal> for Status` is the one mapping.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("invalid or missing API token\nhint: create one with `fleet-controller token create`")]
    BadApiToken,
    #[error(
        "API token {name} expired at {at}\nhint: create a new one with `fleet-controller token create`"
    )]
    ApiTokenExpired { name: String, at: String },
    #[error(
        "API token {0} was revoked\nhint: create a new one with `fleet-controller token create`"
    )]
    ApiTokenRevoked(String),
    #[error("API token {name} has the role {role}; this needs {needed} or above")]
    RoleTooLow {
        name: String,
        role: &'static str,
        needed: &'static str,
    },
    #[error(
        "client speaks protocol {client}.x, controller speaks {controller}.x; upgrade the {side}"
    )]
    ProtocolMismatch {
        client: u32,
        controller: u32,
        side: &'static str,
    },
    #[error("agent speaks protocol {agent}.x, controller speaks {controller}.x; upgrade the agent")]
    AgentProtocol { agent: u32, controller: u32 },
    #[error(
        "no client certificate: this agent has not joined\nhint: `fleet-agent join <url>` with a join token"
    )]
    NoClientCertificate,
    #[error("the client certificate names no host (no common name)")]
    NamelessCertificate,
    #[error("certificate is for {certificate}, agent claims {claimed}")]
    HostMismatch {
        certificate: String,
        claimed: String,
    },
    #[error("the first message of a session must be `hello`")]
    HelloFirst,
    #[error("no `hello` within {0} s of opening the session")]
    HelloTimeout(u64),
    #[error("unknown join token\nhint: create one with `fleet-controller join-token <host>`")]
    UnknownJoinToken,
    #[error(
        "this join token is for {token_host}, not {host}\nhint: create one with `fleet-controller join-token {host}`"
    )]
    JoinTokenHost { token_host: String, host: String },
    #[error(
        "this join token expired at {0}\nhint: create a new one with `fleet-controller join-token <host>`"
    )]
    JoinTokenExpired(String),
    #[error(
        "this join token was already used at {0}\nhint: join tokens work once; create a new one with `fleet-controller join-token <host>`"
    )]
    JoinTokenUsed(String),
    #[error(
        "{0} has already joined\nhint: `fleet-agent join --rejoin` replaces its certificate (the current one stops working)"
    )]
    AlreadyJoined(String),
    #[error(
        "this certificate of {0} was superseded (the host rejoined or renewed it)\nhint: use the agent's current certificate, or rejoin: `fleet-agent join --rejoin`"
    )]
    CertificateSuperseded(String),
    #[error(
        "{host} was removed at {at}\nhint: to bring it back, `fleet-controller join-token {host}` and `fleet-agent join`"
    )]
    HostRemoved { host: String, at: String },
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "the controller's store is unavailable, so nothing was changed: {0}\nhint: try again once the database is back; status still answers from memory"
    )]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        let message = refusal.to_string();
        match refusal {
            Refusal::RoleTooLow { .. } => Status::permission_denied(message),
            Refusal::BadApiToken
            | Refusal::ApiTokenExpired { .. }
            | Refusal::ApiTokenRevoked(_)
            | Refusal::NoClientCertificate
            | Refusal::UnknownJoinToken
            | Refusal::JoinTokenExpired(_)
            | Refusal::JoinTokenUsed(_)
            | Refusal::CertificateSuperseded(_)
            | Refusal::HostRemoved { .. } => Status::unauthenticated(message),
            Refusal::AlreadyJoined(_) => Status::already_exists(message),
            Refusal::NamelessCertificate
            | Refusal::HostMismatch { .. }
            | Refusal::JoinTokenHost { .. } => Status::permission_denied(message),
            Refusal::ProtocolMismatch { .. }
            | Refusal::AgentProtocol { .. }
            | Refusal::HelloFirst => Status::failed_precondition(message),
            Refusal::HelloTimeout(_) => Status::deadline_exceeded(message),
            Refusal::BadCsr(_) | Refusal::InvalidArgument(_) => Status::invalid_argument(message),
            Refusal::StoreUnavailable(_) => Status::unavailable(message),
            Refusal::Internal(_) => Status::internal(message),
        }
    }
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        if let Error::Database {
            error: crate::store::DbError::Unavailable(reason),
            ..
        } = &error
        {
            tracing::warn!(%error, "refused: the store is unavailable");
            return Refusal::StoreUnavailable(reason.clone());
        }
        tracing::error!(%error, "internal error");
        Refusal::Internal(error.to_string())
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        Refusal::from(error).into()
    }
}
