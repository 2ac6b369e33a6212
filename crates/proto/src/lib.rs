//! fleet's gRPC contract: the generated code, and (`ops`) the few definitions every
//! speaker of it must share: the agent handshake, the action-to-request mapping, the
//! per-action timeouts and the rolling-reload policy. Other crates convert to their
//! domain types at the edge.

pub mod codec;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod ops;
pub mod status;

/// The host agent's local API (`fleet.agent.v1`), served on `FLEET_HOME/agent.sock`.
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("fleet.agent.v1");

        /// The protocol's major version. A client whose major differs is refused in `Hello`.
        pub const PROTOCOL_MAJOR: u32 = 1;
        /// Minor versions add fields and calls only; either side ignores what it doesn't know.
        /// 1.1: `ReloadRequest.config_path` and `env_stage`. 1.2: `SendMessage`.
        /// 1.3: `ReloadRequest.config_cwd`. 1.4: `ProcessInfo.restart_cause`.
        /// 1.5: `Update` (agent handoff), `Hello`'s handoff fields, `ExitInfo.unknown`.
        /// 1.6: `ListResponse.host` (the host's metrics), `LogEntry.missed`.
        /// 1.7: `ProcessInfo.max_memory_bytes`. 1.8: `LogEntry.seq`.
        pub const PROTOCOL_MINOR: u32 = 8;
    }
}

/// The controller's API (`fleet.controller.v1`): agents' sessions (mTLS) and the CLI's
/// calls (bearer token), both over TLS.
pub mod controller {
    pub mod v1 {
        tonic::include_proto!("fleet.controller.v1");
        pub use crate::status::StatusResponse;

        pub const PROTOCOL_MAJOR: u32 = 1;
        /// 1.1: `RecordDeploy`. 1.2: certificate renewal over the session
        /// (`Welcome.renew_certificate`, `renew`, `renewed`), `JoinRequest.rejoin`.
        /// 1.3: host metrics (`AgentMessage.host_metrics`, `HostStatus.metrics`).
        /// 1.4: `DeployRecord`'s ref, commit, rollback, duration and host outcomes.
        /// 1.5: deploys run by the controller (`SubmitDeploy`, `AttachDeploy`,
        /// `CancelDeploy`, `DeployHistory`). 1.6: controllers sharing a store:
        /// `StatusResponse.stale` (the store is unavailable), `Welcome.controllers`,
        /// `PeerService`. 1.7: `PeerStatusReply.hosts` as encoded `HostStatus` bytes
        /// (the same wire format); `ControllerMessage.controllers` (the controller set
        /// changed), `JoinResponse.controllers`, `HostStatus.since_unix_ms`.
        pub const PROTOCOL_MINOR: u32 = 7;
    }
}
