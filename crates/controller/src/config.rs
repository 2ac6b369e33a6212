//! The controller's settings, as the binary's flags give them and tests build them.

use std::path::PathBuf;
use std::time::Duration;

/// Where the controller listens unless told otherwise (the contract's default).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// How often agents send a heartbeat. Nomad's and the kubelet's lease renewals are
/// around 10 s; 5 s keeps `fleet status` fresh at a thousand hosts for 200 tiny
/// messages a second.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A host with no message for this long is unreachable: three missed heartbeats.
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(15);
/// A join token lasts an hour unless asked otherwise (the contract's default).
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A join token is a credential: it never lives longer than a day.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Refuses a join token lifetime over `MAX_JOIN_TOKEN_TTL` (or of zero).
pub fn check_join_ttl(ttl: Duration) -> Result<(), String> {
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(format!(
            "a join token lives between 1 second and {} hours (asked: {}s)",
            MAX_JOIN_TOKEN_TTL.as_secs() / 3600,
            ttl.as_secs()
        ));
    }
    Ok(())
}

/// An agent certificate lasts 90 days; the agent renews it over its session once it
/// expires within 30 (Let's Encrypt's cadence: a lost key is useful for weeks, not a
/// year, and renewal has a month to succeed).
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
pub const DEFAULT_AGENT_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// No agent certificate lives longer than this.
pub const MAX_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// Refuses an agent certificate lifetime of under a minute or over ten years.
pub fn check_agent_cert_lifetime(lifetime: Duration) -> Result<(), String> {
    if lifetime < Duration::from_secs(60) || lifetime > MAX_AGENT_CERT_LIFETIME {
        return Err(format!(
            "an agent certificate lives between 1 minute and 3650 days (asked: {}s)",
            lifetime.as_secs()
        ));
    }
    Ok(())
}

/// Everything `serve` needs besides its listener and shutdown signal.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Holds `ca.pem`, `ca.key`, `server.pem`, `server.key` and `controller.db`;
    /// created (mode 0700) on first start.
    pub data_dir: PathBuf,
    /// Names and addresses the server certificate is valid for, besides the listener's
    /// own address, `localhost` and `127.0.0.1`.
    pub sans: Vec<String>,
    /// Sent to agents in `Welcome`.
    pub heartbeat_interval: Duration,
    /// Silence after which a connected host counts as unreachable.
    pub unreachable_after: Duration,
    /// How long an agent certificate is valid, and how long before its end the agent
    /// is asked to renew it.
    pub agent_cert_lifetime: Duration,
    pub agent_cert_renew_before: Duration,
    /// The config file's `[alerts]`, when given (`--config`).
    pub alerts: Option<crate::alerts::config::Alerts>,
    /// The SSH key deploys run with (`--deploy-key`); else `deploy_key` in the data
    /// directory, made on first start.
    pub deploy_key: Option<PathBuf>,
    /// Where the state lives (`--store`): PostgreSQL shared by several controllers;
    /// `None` is `controller.db` in the data directory.
    pub store: Option<crate::store::PgLocation>,
    /// The key the CA's key is sealed with in a shared store (`--seal-key`); else
    /// `seal.key` in the data directory.
    pub seal_key: Option<PathBuf>,
    /// The URL agents and peer controllers reach this one at (`--advertise`); else
    /// `https://` and the listening address (the machine's name when listening on every
    /// address).
    pub advertise: Option<String>,
}

/// The seal key's file in the data directory, unless `--seal-key` names another.
pub const SEAL_KEY_FILE: &str = "seal.key";

impl ControllerConfig {
    /// Where the state lives.
    pub fn location(&self) -> crate::store::Location {
        match &self.store {
            Some(location) => crate::store::Location::Postgres(Box::new(location.clone())),
            None => crate::store::Location::Sqlite(self.data_dir.join(crate::DATABASE_FILE)),
        }
    }

    /// The seal key's path.
    pub fn seal_key_path(&self) -> PathBuf {
        self.seal_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join(SEAL_KEY_FILE))
    }

    pub fn new(data_dir: impl Into<PathBuf>) -> ControllerConfig {
        ControllerConfig {
            data_dir: data_dir.into(),
            sans: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
            agent_cert_lifetime: DEFAULT_AGENT_CERT_LIFETIME,
            agent_cert_renew_before: DEFAULT_AGENT_CERT_RENEW_BEFORE,
            alerts: None,
            deploy_key: None,
            store: None,
            seal_key: None,
            advertise: None,
        }
    }
}
