//! Fleet commands: `fleet status|logs|start|stop|restart|reload <stage> ...` across the
//! hosts of a `[deploy.<stage>]`. Through the controller when one is configured
//! (`FLEET_CONTROLLER` + `FLEET_TOKEN`, or `[controller] url`), otherwise straight to
//! each host's agent over SSH, in parallel. Same output and exit codes either way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_config::{DeployStage, DeployTarget, LoadOptions};
use fleet_proto::agent::v1 as apb;
use fleet_proto::agent::v1::agent_service_client::AgentServiceClient;
use fleet_proto::controller::v1 as cpb;
use fleet_proto::controller::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Failure;
use crate::ssh::{Pool, SshSettings};

type Result<T> = std::result::Result<T, Failure>;

/// Concurrent SSH handshakes (the contract's default cap).
const MAX_HANDSHAKES: usize = 30;
/// How long one host may take to answer a status or a command over SSH.
const HOST_TIMEOUT: Duration = Duration::from_secs(30);
/// A reload may wait for readiness on every instance of a host.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The config files searched for stages, in order (PM2's names after fleet's own).
pub const CONFIG_NAMES: &[&str] = &[
    "fleet.toml",
    "ecosystem.config.js",
    "ecosystem.config.cjs",
    "ecosystem.json",
    "ecosystem.yaml",
    "ecosystem.yml",
];

/// A stage and how to reach its hosts.
pub struct Stage {
    pub name: String,
    /// The config file the stage comes from (absolute).
    pub config_path: PathBuf,
    pub config: DeployStage,
    pub controller: Option<ControllerSettings>,
}

pub struct ControllerSettings {
    pub url: String,
    pub token: String,
    pub ca: Option<PathBuf>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let cwd = std::env::current_dir().ok()?;
    CONFIG_NAMES
        .iter()
        .map(|n| cwd.join(n))
        .find(|p| p.is_file())
}

/// The stage named `name` in the config file, if there is one (anything else means the
/// word is a local target, not a stage).
pub fn find(name: &str) -> Result<Option<Stage>> {
    match config_path() {
        Some(path) => find_in(&path, name),
        None => Ok(None),
    }
}

/// The stage named `name` in the config file at `path`.
pub fn find_in(path: &std::path::Path, name: &str) -> Result<Option<Stage>> {
    let options = LoadOptions {
        cwd: std::env::current_dir().unwrap_or_default(),
        inherited_env: Arc::new(std::env::vars().collect()),
        ..LoadOptions::default()
    };
    // Scripts need not exist here: the apps live on the hosts.
    let file = fleet_config::load_unresolved(path, &options)
        .map_err(|errors| Failure::usage(errors.to_string()))?;
    let Some(config) = file.deploy.get(name).cloned() else {
        return Ok(None);
    };
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let url = env("FLEET_CONTROLLER").or_else(|| file.controller.as_ref().map(|c| c.url.clone()));
    let controller = match url {
        None => None,
        Some(url) => Some(ControllerSettings {
            url,
            token: env("FLEET_TOKEN").ok_or_else(|| {
                Failure::usage(
                    "a controller is configured but FLEET_TOKEN is not set\nhint: `fleet-controller token create` prints one",
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

/// The user, port and key a host is reached with (hosts may override the stage's).
type SshIdentity = (Option<String>, Option<u16>, Option<String>);

/// One host's answer.
pub struct HostOutcome {
    pub host: String,
    pub result: std::result::Result<Vec<apb::ProcessInfo>, String>,
    /// For unreachable hosts through the controller.
    pub last_seen_unix_ms: Option<u64>,
}

/// How the CLI reaches the stage's hosts.
pub enum Remote {
    Controller(
        FleetServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>,
    ),
    Ssh(Vec<(String, Arc<Pool>, Option<String>)>),
}

/// A client of the controller's fleet API, carrying the bearer token.
pub type ControllerClient =
    FleetServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

impl Stage {
    fn proto(&self) -> cpb::Stage {
        cpb::Stage {
            name: self.name.clone(),
            hosts: self.config.host.clone(),
        }
    }

    pub async fn connect(&self, accept_new_host_keys: bool) -> Result<Remote> {
        if let Some(controller) = &self.controller {
            return connect_controller(controller).await.map(Remote::Controller);
        }
        let hosts = self
            .ssh_targets(accept_new_host_keys)
            .into_iter()
            .map(|(target, pool)| (target.host, pool, self.config.fleet_home.clone()))
            .collect();
        Ok(Remote::Ssh(hosts))
    }

    /// Every host with its effective settings and the SSH pool that reaches it: one pool
    /// per distinct SSH identity, since hosts may override user, port and key.
    pub fn ssh_targets(&self, accept_new_host_keys: bool) -> Vec<(DeployTarget, Arc<Pool>)> {
        let mut pools: BTreeMap<SshIdentity, Arc<Pool>> = BTreeMap::new();
        let mut hosts = Vec::new();
        for target in self.config.targets() {
            let key = (target.user.clone(), target.port, target.key.clone());
            let pool = pools
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Pool::new(
                        SshSettings {
                            user: target.user.clone(),
                            port: target.port,
                            key: target.key.as_ref().map(PathBuf::from),
                            ssh_options: self.config.ssh_options.clone(),
                            proxy_jump: self.config.proxy_jump.clone(),
                            known_hosts: None,
                            ssh_config: None,
                            accept_new_host_keys,
                            connect_timeout: Duration::from_secs(10),
                            host_keys: Default::default(),
                        },
                        MAX_HANDSHAKES,
                    ))
                })
                .clone();
            hosts.push((target, pool));
        }
        hosts
    }
}

pub async fn connect_controller(settings: &ControllerSettings) -> Result<ControllerClient> {
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &settings.ca {
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| Failure::usage(format!("cannot read FLEET_CA {}: {e}", ca.display())))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    } else {
        tls = tls.with_enabled_roots();
    }
    let channel = Endpoint::from_shared(settings.url.clone())
        .map_err(|e| Failure::usage(format!("bad controller url {}: {e}", settings.url)))?
        .tls_config(tls)
        .map_err(|e| Failure::usage(format!("bad TLS settings: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            Failure::failed(format!(
                "cannot reach the controller at {}: {e}",
                settings.url
            ))
        })?;
    let value = format!("Bearer {}", settings.token)
        .parse()
        .map_err(|_| Failure::usage("FLEET_TOKEN has characters a header cannot carry"))?;
    let mut client = FleetServiceClient::with_interceptor(channel, Bearer(value));
    let hello = client
        .hello(cpb::FleetHello {
            protocol_major: cpb::PROTOCOL_MAJOR,
            protocol_minor: cpb::PROTOCOL_MINOR,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(controller_error)?;
    let _ = hello;
    Ok(client)
}

fn controller_error(status: tonic::Status) -> Failure {
    Failure::failed(format!("controller: {}", status.message()))
}

async fn agent(
    pool: &Pool,
    host: &str,
    fleet_home: Option<&str>,
) -> std::result::Result<AgentServiceClient<Channel>, String> {
    let channel = pool
        .agent_channel(host, fleet_home)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = AgentServiceClient::new(channel);
    client
        .hello(apb::HelloRequest {
            protocol_major: apb::PROTOCOL_MAJOR,
            protocol_minor: apb::PROTOCOL_MINOR,
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(|s| format!("agent: {}", s.message()))?;
    Ok(client)
}

/// Every host's process list (or why it could not be reached), in the stage's order.
pub async fn status(stage: &Stage, remote: &mut Remote) -> Result<Vec<HostOutcome>> {
    match remote {
        Remote::Controller(client) => {
            let response = client
                .status(cpb::StatusRequest {
                    stage: Some(stage.proto()),
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            Ok(response
                .hosts
                .into_iter()
                .map(|h| HostOutcome {
                    result: if h.reachable {
                        Ok(h.processes)
                    } else {
                        Err(h.error)
                    },
                    last_seen_unix_ms: (h.last_seen_unix_ms > 0).then_some(h.last_seen_unix_ms),
                    host: h.host,
                })
                .collect())
        }
        Remote::Ssh(hosts) => {
            let jobs = hosts.iter().map(|(host, pool, home)| {
                let (host, pool, home) = (host.clone(), pool.clone(), home.clone());
                tokio::spawn(async move {
                    let result = tokio::time::timeout(HOST_TIMEOUT, async {
                        let mut client = agent(&pool, &host, home.as_deref()).await?;
                        let list = client
                            .list(apb::ListRequest::default())
                            .await
                            .map_err(|s| format!("agent: {}", s.message()))?
                            .into_inner()
                            .processes;
                        Ok(with_host(list, &host))
                    })
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {}s", HOST_TIMEOUT.as_secs()))
                    });
                    HostOutcome {
                        host,
                        result,
                        last_seen_unix_ms: None,
                    }
                })
            });
            let mut outcomes = Vec::new();
            for job in jobs.collect::<Vec<_>>() {
                outcomes.push(
                    job.await
                        .map_err(|e| Failure::failed(format!("internal error: {e}")))?,
                );
            }
            Ok(outcomes)
        }
    }
}

/// The agent reports the machine's hostname; the stage's name for the host is what
/// users know it by.
fn with_host(processes: Vec<apb::ProcessInfo>, host: &str) -> Vec<apb::ProcessInfo> {
    processes
        .into_iter()
        .map(|mut p| {
            p.host = host.to_string();
            p
        })
        .collect()
}

/// Runs an action on every host. Reload rolls host by host and stops at the first
/// host that fails; the others run in parallel.
pub async fn command(
    stage: &Stage,
    remote: &mut Remote,
    action: cpb::Action,
    targets: Vec<String>,
) -> Result<Vec<HostOutcome>> {
    match remote {
        Remote::Controller(client) => {
            let response = client
                .command(cpb::CommandRequest {
                    stage: Some(stage.proto()),
                    action: action as i32,
                    targets,
                    count: String::new(),
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            Ok(response
                .hosts
                .into_iter()
                .map(|h| HostOutcome {
                    result: if h.ok { Ok(h.processes) } else { Err(h.error) },
                    host: h.host,
                    last_seen_unix_ms: None,
                })
                .collect())
        }
        Remote::Ssh(hosts) => {
            let run = |host: String,
                       pool: Arc<Pool>,
                       home: Option<String>,
                       targets: Vec<String>| async move {
                let timeout = if action == cpb::Action::Reload {
                    RELOAD_TIMEOUT
                } else {
                    HOST_TIMEOUT
                };
                let result = tokio::time::timeout(timeout, async {
                    let mut client = agent(&pool, &host, home.as_deref()).await?;
                    let response = match action {
                        cpb::Action::Start => {
                            client
                                .start(apb::StartRequest {
                                    targets,
                                    ..Default::default()
                                })
                                .await
                        }
                        cpb::Action::Stop => client.stop(apb::TargetRequest { targets }).await,
                        cpb::Action::Restart => {
                            client
                                .restart(apb::RestartRequest {
                                    targets,
                                    ..Default::default()
                                })
                                .await
                        }
                        cpb::Action::Reload => {
                            client
                                .reload(apb::ReloadRequest {
                                    targets,
                                    parallel: 1,
                                    ..Default::default()
                                })
                                .await
                        }
                        _ => return Err("unsupported action".to_string()),
                    };
                    response
                        .map(|r| with_host(r.into_inner().processes, &host))
                        .map_err(|s| s.message().to_string())
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())));
                HostOutcome {
                    host,
                    result,
                    last_seen_unix_ms: None,
                }
            };
            let mut outcomes = Vec::new();
            if action == cpb::Action::Reload {
                let mut failed = false;
                for (host, pool, home) in hosts.iter() {
                    if failed {
                        outcomes.push(HostOutcome {
                            host: host.clone(),
                            result: Err("not reloaded: an earlier host failed".into()),
                            last_seen_unix_ms: None,
                        });
                        continue;
                    }
                    let outcome =
                        run(host.clone(), pool.clone(), home.clone(), targets.clone()).await;
                    failed = outcome.result.is_err();
                    outcomes.push(outcome);
                }
            } else {
                let jobs: Vec<_> = hosts
                    .iter()
                    .map(|(host, pool, home)| {
                        tokio::spawn(run(
                            host.clone(),
                            pool.clone(),
                            home.clone(),
                            targets.clone(),
                        ))
                    })
                    .collect();
                for job in jobs {
                    outcomes.push(
                        job.await
                            .map_err(|e| Failure::failed(format!("internal error: {e}")))?,
                    );
                }
            }
            Ok(outcomes)
        }
    }
}

/// Merged log lines of every host, printed as they come; returns when every stream
/// ended (without `follow`) or on Ctrl-C. Hosts that cannot be reached are reported
/// on stderr and make the exit status 1.
pub async fn logs(
    stage: &Stage,
    remote: &mut Remote,
    targets: Vec<String>,
    lines: u32,
    follow: bool,
    printer: &mut crate::output::LogPrinter,
) -> Result<bool> {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<std::result::Result<apb::LogEntry, String>>(1024);
    match remote {
        Remote::Controller(client) => {
            let mut stream = client
                .logs(cpb::FleetLogsRequest {
                    stage: Some(stage.proto()),
                    targets,
                    lines,
                    follow,
                })
                .await
                .map_err(controller_error)?
                .into_inner();
            tokio::spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(entry)) => {
                            if tx.send(Ok(entry)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            let _ = tx
                                .send(Err(format!("controller: {}", status.message())))
                                .await;
                            return;
                        }
                    }
                }
            });
        }
        Remote::Ssh(hosts) => {
            for (host, pool, home) in hosts.iter() {
                let (host, pool, home, tx, targets) = (
                    host.clone(),
                    pool.clone(),
                    home.clone(),
                    tx.clone(),
                    targets.clone(),
                );
                tokio::spawn(async move {
                    let stream = async {
                        let mut client = agent(&pool, &host, home.as_deref()).await?;
                        client
                            .logs(apb::LogsRequest {
                                targets,
                                lines,
                                follow,
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|s| s.message().to_string())
                    };
                    let mut stream = match stream.await {
                        Ok(stream) => stream,
                        Err(error) => {
                            let _ = tx.send(Err(format!("{host}: {error}"))).await;
                            return;
                        }
                    };
                    loop {
                        match stream.message().await {
                            Ok(Some(mut entry)) => {
                                entry.host = host.clone();
                                if tx.send(Ok(entry)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(status) => {
                                let _ = tx.send(Err(format!("{host}: {}", status.message()))).await;
                                return;
                            }
                        }
                    }
                });
            }
            drop(tx);
        }
    }
    let mut all_ok = true;
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = tokio::signal::ctrl_c() => return Ok(all_ok),
        };
        match next {
            Some(Ok(entry)) => {
                if !printer.print(&entry) {
                    return Ok(all_ok);
                }
            }
            Some(Err(error)) => {
                eprintln!("error: {error}");
                all_ok = false;
            }
            None => return Ok(all_ok),
        }
    }
}

/// `path` relative to a release directory: `/srv/app/releases/<id>/...` -> `<id>`.
pub fn release_of(script: &str) -> Option<&str> {
    let (_, rest) = script.split_once("/releases/")?;
    rest.split('/').next().filter(|id| !id.is_empty())
}
