//! A stage of hosts (`[deploy.<stage>]`) and how to reach it: through the controller
//! when one is configured (`FLEET_CONTROLLER` + `FLEET_TOKEN`, or `[controller] url`),
//! otherwise straight to each host's agent over SSH. Both routes implement one trait,
//! `StageApi` (status, command, logs), so callers never match on the route.

mod controller;
mod resume;
mod ssh;
pub mod trust;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_config::{DeployStage, DeployTarget, LoadOptions};
use fleet_proto::agent::v1 as apb;
use fleet_proto::controller::v1 as cpb;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::ssh::{HandshakeLimit, Pool, SshChoices, SshSettings};
pub use controller::{
    ControllerClient, connect_controller, connect_controller_at, controller_urls,
};
pub use ssh::{SshHost, agent_client};

/// Concurrent SSH handshakes for a whole stage (the contract's default cap), shared
/// by every pool of the stage whatever its user, port or key.
pub const MAX_HANDSHAKES: usize = crate::ssh::DEFAULT_MAX_HANDSHAKES;

/// Why a stage could not be found, read or reached.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The config file or the environment is wrong: the user must fix something.
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the controller at {url}: {reason}")]
    ControllerUnreachable { url: String, reason: String },
    /// The controller answered with an error.
    #[error("controller: {0}")]
    Controller(String),
}

impl StageError {
    /// Whether the user's input or configuration is at fault (rather than a host or
    /// the network).
    pub fn is_config(&self) -> bool {
        matches!(self, StageError::Config(_))
    }
}

/// A stage and how to reach its hosts.
#[derive(Clone)]
pub struct Stage {
    pub name: String,
    /// The config file the stage comes from (absolute).
    pub config_path: PathBuf,
    pub config: DeployStage,
    pub controller: Option<ControllerSettings>,
}

/// The controller the CLI talks to, from the environment or `[controller]`.
#[derive(Clone)]
pub struct ControllerSettings {
    pub url: String,
    pub token: String,
    pub ca: Option<PathBuf>,
}

/// The stage named `name` in the config file found by `fleet_config::discover`, if
/// there is one (anything else means the word is a local target, not a stage).
pub fn find(name: &str) -> Result<Option<Stage>, StageError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    match fleet_config::discover(&cwd) {
        Some(path) => find_in(&path, name),
        None => Ok(None),
    }
}

/// As `find`, for a word that may or may not name a stage (`fleet logs api`): only a
/// config file that is data (fleet.toml, JSON, YAML) or `FLEET_CONFIG` is read, so no
/// JavaScript runs that the user did not name.
pub fn find_if_stage(name: &str) -> Result<Option<Stage>, StageError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    match fleet_config::discover_data(&cwd) {
        Some(path) => find_in(&path, name),
        None => Ok(None),
    }
}

/// The stage named `name` in the config file at `path`.
pub fn find_in(path: &Path, name: &str) -> Result<Option<Stage>, StageError> {
    let options = LoadOptions {
        cwd: std::env::current_dir().unwrap_or_default(),
        inherited_env: Arc::new(std::env::vars().collect()),
        ..LoadOptions::default()
    };
    // Scripts need not exist here: the apps live on the hosts.
    let file = fleet_config::load_unresolved(path, &options)
        .map_err(|errors| StageError::Config(errors.to_string()))?;
    let Some(config) = file.deploy.get(name).cloned() else {
        return Ok(None);
    };
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let url = env("FLEET_CONTROLLER").or_else(|| file.controller.as_ref().map(|c| c.url.clone()));
    if let Some(url) = &url {
        controller::controller_urls(url)?;
    }
    let controller = match url {
        None => None,
        Some(url) => Some(ControllerSettings {
            url,
            token: env("FLEET_TOKEN").ok_or_else(|| {
                StageError::Config(
                    "a controller is configured but FLEET_TOKEN is not set\nhint: `fleet-controller token create` prints one".to_string(),
                )
            })?,
            ca: env("FLEET_CA").map(PathBuf::from),
        }),
    };
    Ok(Some(Stage {
        name: name.to_string(),
        config_path: file.path.clone(),
        config,
        controller,
    }))
}

/// One host's answer to a status or a command.
#[derive(Clone, Debug)]
pub struct HostOutcome {
    pub host: String,
    pub result: Result<Vec<apb::ProcessInfo>, String>,
    /// For unreachable hosts through the controller.
    pub last_seen_unix_ms: Option<u64>,
    /// The host's CPU, load, memory and disks (`status`, agents from protocol 1.6 over
    /// SSH, controllers from 1.3).
    pub metrics: Option<apb::HostMetrics>,
    /// The controller answered from memory while its store was unavailable (controller
    /// protocol 1.6): the figures may be out of date.
    pub stale: bool,
}

/// What `logs` asks of every host.
#[derive(Clone, Debug, Default)]
pub struct LogsQuery {
    pub targets: Vec<String>,
    pub lines: u32,
    pub follow: bool,
}

/// A log line of some host, or why a host's stream ended early.
pub type LogItem = Result<apb::LogEntry, String>;

/// Lines in flight between the hosts' streams and the reader.
const LOG_QUEUE: usize = 1024;

/// The operations a stage supports, whatever the route to its hosts.
pub trait StageApi: Send {
    /// Every host's process list (or why it could not be reached), in the stage's order.
    fn status(&mut self) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>>;

    /// `action` on every host, with the policy of `fleet_proto::ops::fan_out`: a reload
    /// rolls host by host and stops at the first failure, the others run in parallel.
    /// `count` is `scale`'s `N`, `+N` or `-N`.
    fn command(
        &mut self,
        action: cpb::Action,
        targets: Vec<String>,
        count: String,
    ) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>>;

    /// Every host's log lines, merged as they arrive; the channel closes when every
    /// stream ended (without `follow`). A host that cannot be reached sends an error.
    fn logs(
        &mut self,
        query: LogsQuery,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<LogItem>, StageError>>;

    /// How long `status` waits for each host before calling it unreachable (a live
    /// view wants seconds, not `fleet status`'s patience). The controller answers from
    /// memory and has its own heartbeat deadline.
    fn set_status_timeout(&mut self, _timeout: Duration) {}
}

/// The user, port and key a host is reached with (hosts may override the stage's).
type SshIdentity = (Option<String>, Option<u16>, Option<String>);

impl Stage {
    fn proto(&self) -> cpb::Stage {
        cpb::Stage {
            name: self.name.clone(),
            hosts: self.config.host.clone(),
        }
    }

    /// The route to the stage's hosts: the controller when configured, else SSH.
    pub async fn connect(&self, choices: &SshChoices) -> Result<Box<dyn StageApi>, StageError> {
        if let Some(settings) = &self.controller {
            let client = connect_controller(settings).await?;
            return Ok(Box::new(controller::ControllerStage {
                client,
                stage: self.proto(),
                settings: settings.clone(),
            }));
        }
        let hosts = self
            .ssh_targets(choices)
            .into_iter()
            .map(|(target, pool)| SshHost {
                name: target.host,
                pool,
                fleet_home: self.config.fleet_home.clone(),
            })
            .collect();
        Ok(Box::new(ssh::SshStage {
            hosts,
            status_timeout: STATUS_TIMEOUT,
        }))
    }

    /// Every host with its effective settings and the SSH pool that reaches it: one pool
    /// per distinct SSH identity, since hosts may override user, port and key. The
    /// pools share one cap on handshakes in flight.
    pub fn ssh_targets(&self, choices: &SshChoices) -> Vec<(DeployTarget, Arc<Pool>)> {
        let limit = HandshakeLimit::new(MAX_HANDSHAKES);
        let mut pools: BTreeMap<SshIdentity, Arc<Pool>> = BTreeMap::new();
        let mut hosts = Vec::new();
        for target in self.config.targets() {
            let key = (target.user.clone(), target.port, target.key.clone());
            let pool = pools
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Pool::with_limit(
                        SshSettings {
                            user: target.user.clone(),
                            port: target.port,
                            key: target.key.as_ref().map(PathBuf::from),
                            ssh_options: self.config.ssh_options.clone(),
                            proxy_jump: self.config.proxy_jump.clone(),
                            known_hosts: choices.known_hosts.clone(),
                            ssh_config: choices.ssh_config.clone(),
                            accept_new_host_keys: choices.accept_new_host_keys,
                            accept_changed_host_keys: choices.accept_changed_host_keys.clone(),
                            print_warnings: choices.print_warnings,
                            connect_timeout: crate::ssh::DEFAULT_CONNECT_TIMEOUT,
                            host_keys: Default::default(),
                        },
                        limit.clone(),
                    ))
                })
                .clone();
            hosts.push((target, pool));
        }
        hosts
    }
}

/// The release a script path belongs to: `/srv/app/releases/<id>/...` -> `<id>`.
pub fn release_of(script: &str) -> Option<&str> {
    let (_, rest) = script.split_once("/releases/")?;
    rest.split('/').next().filter(|id| !id.is_empty())
}

/// How long one host may take to answer a status over SSH.
const STATUS_TIMEOUT: Duration = fleet_proto::ops::COMMAND_TIMEOUT;

#[cfg(test)]
mod tests {
    use super::release_of;

    #[test]
    fn a_script_under_releases_names_its_release() {
        assert_eq!(
            release_of("/srv/app/releases/20261124T101500.123Z-abc1234/app.js"),
            Some("20261124T101500.123Z-abc1234")
        );
        assert_eq!(release_of("/srv/app/current/app.js"), None);
        assert_eq!(release_of("/srv/app/releases/"), None);
    }
}
