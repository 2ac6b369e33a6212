//! `FleetService`, the CLI's face: every call carries a bearer API token. Status is
//! answered from the registry's memory; commands and log subscriptions go out on the
//! hosts' sessions; commands and join tokens are written to the audit log.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_proto::agent::v1::LogEntry;
use fleet_proto::controller::v1::fleet_service_server::FleetService;
use fleet_proto::controller::v1::{
    Action, AgentCommand, AttachDeployRequest, CancelDeployReply, CancelDeployRequest,
    CommandRequest, CommandResponse, CreateJoinTokenRequest, CreateJoinTokenResponse,
    DeployHistoryReply, DeployHistoryRequest, DeployRecord, DeployRecordReply, DeployUpload,
    FleetHello, FleetHelloReply, FleetLogsRequest, HostResult, LogSubscribe, LogUnsubscribe,
    PROTOCOL_MAJOR, PROTOCOL_MINOR, Stage, StatusRequest, StatusResponse, controller_message,
};
use fleet_proto::ops;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::DEFAULT_JOIN_TOKEN_TTL;
use crate::error::Refusal;
use crate::now_unix_ms;
use crate::registry::{SessionLink, lock};
use crate::server::Controller;
use crate::store::{self, AuditEntry};
use crate::tokens::Role;

/// Batches of log lines buffered for one watcher before lines are dropped (and the
/// watcher told), so a slow terminal never slows any agent's session.
const LOG_QUEUE_BATCHES: usize = 256;
/// A `logs` call without `follow` ends when every host has sent its history, or after
/// this long, whichever comes first.
const LOG_HISTORY_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) struct FleetApi {
    controller: Arc<Controller>,
    /// The stages as last written to the database, so Status writes only changes.
    recorded_stages: Mutex<HashMap<String, Vec<String>>>,
}

impl FleetApi {
    pub(crate) fn new(controller: Arc<Controller>) -> FleetApi {
        FleetApi {
            controller,
            recorded_stages: Mutex::default(),
        }
    }

    /// Checks the call's bearer token and that its role is at least `needed`; returns
    /// who made the call, for the audit log.
    async fn authorize<T>(&self, request: &Request<T>, needed: Role) -> Result<String, Status> {
        let token = (request.metadata().get("authorization")).and_then(|value| value.to_str().ok());
        let caller = (self.controller)
            .authorize(token, request.remote_addr(), needed)
            .await?;
        Ok(format!("token:{}", caller.name))
    }

    /// The request's stage with duplicate hosts removed, recorded in the database when
    /// it changed.
    fn stage(&self, stage: Option<Stage>) -> Result<Stage, Refusal> {
        let mut stage = stage
            .ok_or_else(|| Refusal::InvalidArgument("the request names no stage".to_owned()))?;
        let mut seen = HashSet::new();
        stage.hosts.retain(|host| seen.insert(host.clone()));
        let changed = {
            let mut recorded = lock(&self.recorded_stages);
            if recorded.get(&stage.name) == Some(&stage.hosts) {
                false
            } else {
                recorded.insert(stage.name.clone(), stage.hosts.clone());
                true
            }
        };
        if changed {
            let (name, hosts) = (stage.name.clone(), stage.hosts.clone());
            self.controller.store.write("stage", move |conn| {
                store::save_stage(conn, &name, &hosts, now_unix_ms())
            });
        }
        Ok(stage)
    }

    async fn audit(&self, entry: AuditEntry) -> Result<(), Status> {
        self.controller
            .store
            .call(move |conn| store::append_audit(conn, &entry))
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    type LogsStream = MergedLogs;
    type SubmitDeployStream = crate::deployer::service::Progress;
    type AttachDeployStream = crate::deployer::service::Progress;

    async fn submit_deploy(
        &self,
        request: Request<tonic::Streaming<DeployUpload>>,
    ) -> Result<Response<Self::SubmitDeployStream>, Status> {
        let who = self.authorize(&request, Role::Deploy).await?;
        let name = who.strip_prefix("token:").unwrap_or(&who).to_owned();
        let stream =
            crate::deployer::service::submit(&self.controller, &name, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn attach_deploy(
        &self,
        request: Request<AttachDeployRequest>,
    ) -> Result<Response<Self::AttachDeployStream>, Status> {
        self.authorize(&request, Role::Deploy).await?;
        let stream =
            crate::deployer::service::attach(&self.controller, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn cancel_deploy(
        &self,
        request: Request<CancelDeployRequest>,
    ) -> Result<Response<CancelDeployReply>, Status> {
        let who = self.authorize(&request, Role::Deploy).await?;
        let stage = request.into_inner().stage;
        let reply = crate::deployer::service::cancel(&self.controller, &stage).await?;
        self.audit(AuditEntry {
            at_ms: now_unix_ms(),
            who,
            action: "deploy cancel".to_owned(),
            stage,
            targets: vec![format!("deploy={}", reply.deploy_id)],
            result: "ok".to_owned(),
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn deploy_history(
        &self,
        request: Request<DeployHistoryRequest>,
    ) -> Result<Response<DeployHistoryReply>, Status> {
        self.authorize(&request, Role::Read).await?;
        let request = request.into_inner();
        let reply =
            crate::deployer::service::history(&self.controller, &request.stage, request.limit)
                .await?;
        Ok(Response::new(reply))
    }

    async fn hello(
        &self,
        request: Request<FleetHello>,
    ) -> Result<Response<FleetHelloReply>, Status> {
        self.authorize(&request, Role::Read).await?;
        let hello = request.into_inner();
        if hello.protocol_major != PROTOCOL_MAJOR {
            let side = if hello.protocol_major < PROTOCOL_MAJOR {
                "fleet CLI"
            } else {
                "controller"
            };
            return Err(Refusal::ProtocolMismatch {
                client: hello.protocol_major,
                controller: PROTOCOL_MAJOR,
                side,
            }
            .into());
        }
        Ok(Response::new(FleetHelloReply {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.authorize(&request, Role::Read).await?;
        let stage = self.stage(request.into_inner().stage)?;
        let registry = &self.controller.registry;
        // Each host as it was encoded when it last changed (`registry::encoded`).
        let here: Vec<Option<bytes::Bytes>> = (stage.hosts.iter())
            .map(|host| registry.encoded_if_reachable(host))
            .collect();
        // The hosts not held here may be held by a peer sharing the store.
        let elsewhere: Vec<String> = (stage.hosts.iter().zip(&here))
            .filter(|(_, encoded)| encoded.is_none())
            .map(|(host, _)| host.clone())
            .collect();
        let mut found = crate::peers::status_elsewhere(&self.controller, elsewhere).await;
        let encoded = (stage.hosts.iter().zip(here))
            .map(|(host, encoded)| {
                (encoded.or_else(|| found.remove(host)))
                    .unwrap_or_else(|| registry.encoded_status(host).bytes)
            })
            .collect();
        Ok(Response::new(StatusResponse {
            encoded,
            stale: !self.controller.store.is_available(),
            hosts: Vec::new(),
        }))
    }

    async fn logs(
        &self,
        request: Request<FleetLogsRequest>,
    ) -> Result<Response<MergedLogs>, Status> {
        self.authorize(&request, Role::Read).await?;
        let request = request.into_inner();
        let stage = self.stage(request.stage)?;
        Ok(Response::new(
            subscribe_logs(
                &self.controller,
                stage.hosts,
                request.targets,
                request.lines,
                request.follow,
            )
            .await,
        ))
    }

    async fn command(
        &self,
        request: Request<CommandRequest>,
    ) -> Result<Response<CommandResponse>, Status> {
        let who = self.authorize(&request, Role::Operate).await?;
        let request = request.into_inner();
        let action = Action::try_from(request.action).unwrap_or(Action::Unspecified);
        // The same check as the agent's, before anything is sent to a host.
        ops::agent_call(action, request.targets.clone(), &request.count)
            .map_err(|error| Refusal::InvalidArgument(error.to_string()))?;
        let stage = self.stage(request.stage)?;
        let command = HostCommand {
            action,
            targets: request.targets,
            count: request.count,
        };
        let hosts = run_command(&self.controller, who, stage, command).await?;
        Ok(Response::new(CommandResponse { hosts }))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let who = self.authorize(&request, Role::Admin).await?;
        let request = request.into_inner();
        crate::validate_host(&request.host).map_err(Refusal::InvalidArgument)?;
        let ttl = match request.ttl_seconds {
            0 => DEFAULT_JOIN_TOKEN_TTL,
            seconds => Duration::from_secs(seconds),
        };
        crate::config::check_join_ttl(ttl).map_err(Refusal::InvalidArgument)?;
        let host = request.host.clone();
        let (token, expires_unix_ms) = self
            .controller
            .store
            .call(move |conn| store::create_join_token(conn, &host, ttl, now_unix_ms()))
            .await?;
        self.audit(AuditEntry {
            at_ms: now_unix_ms(),
            who,
            action: "join-token".to_owned(),
            stage: String::new(),
            targets: vec![request.host],
            result: "ok".to_owned(),
        })
        .await?;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            expires_unix_ms,
        }))
    }

    async fn record_deploy(
        &self,
        request: Request<DeployRecord>,
    ) -> Result<Response<DeployRecordReply>, Status> {
        let who = self.authorize(&request, Role::Deploy).await?;
        let record = request.into_inner();
        if record.action.len() > 32
            || record.release.len() > 128
            || record.result.len() > 4096
            || record.git_ref.len() > 256
            || record.commit.len() > 64
            || record.outcomes_json.len() > crate::deploys::MAX_OUTCOMES_BYTES
        {
            return Err(Status::invalid_argument(
                "deploy record fields are too long",
            ));
        }
        let who = format!("{who} ({})", record.who);
        self::record(&self.controller, who, record).await?;
        Ok(Response::new(DeployRecordReply {}))
    }
}

/// A finished deploy in the `deploys` table, the metrics, the alerts and the audit
/// log: what the CLI reports with `RecordDeploy` and what the deployer records itself.
pub(crate) async fn record(
    controller: &Controller,
    who: String,
    record: DeployRecord,
) -> Result<(), Status> {
    let outcomes = match record.outcomes_json.as_str() {
        "" => serde_json::Value::Array(Vec::new()),
        text => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .filter(serde_json::Value::is_array)
            .ok_or_else(|| {
                Status::invalid_argument("deploy record outcomes are not a JSON list")
            })?,
    };
    let detail = crate::deploys::Deploy {
        id: 0,
        at_ms: now_unix_ms(),
        who: who.clone(),
        stage: record.stage.clone(),
        action: record.action.clone(),
        release: record.release.clone(),
        git_ref: record.git_ref.clone(),
        commit: record.commit.clone(),
        result: record.result.clone(),
        rolled_back: record.rolled_back,
        duration_ms: record.duration_ms,
        hosts: outcomes,
    };
    (controller.store)
        .call(move |conn| crate::deploys::record(conn, &detail))
        .await?;
    let mut targets = record.hosts;
    if !record.release.is_empty() {
        targets.insert(0, format!("release={}", record.release));
    }
    (controller.deploys).count(&record.stage, &record.action, &record.result);
    if let Some(alerts) = &controller.alerts {
        alerts
            .deploy(controller, &record.stage, &record.action, &record.result)
            .await;
    }
    audit(
        controller,
        AuditEntry {
            at_ms: now_unix_ms(),
            who,
            action: format!("deploy {}", record.action),
            stage: record.stage,
            targets,
            result: record.result,
        },
    )
    .await
}

/// A deploy the controller ran, recorded as `record` does for the CLI's.
pub(crate) async fn record_run(
    controller: &Controller,
    request: &crate::deployer::Request,
    result: &Result<fleet_remote::deploy::Report, String>,
    cancelled: bool,
) {
    let hosts: Vec<String> = request.config.host.clone();
    let deploy = match result {
        Ok(report) => {
            let mut result =
                fleet_remote::deploy::Report::audit_result(&report.hosts, report.rolled_back);
            if cancelled {
                result = format!("cancelled; {result}");
            }
            DeployRecord {
                stage: request.stage.clone(),
                action: report.action.clone(),
                release: report.release.clone().unwrap_or_default(),
                hosts,
                result,
                who: String::new(),
                git_ref: report.git_ref.clone(),
                commit: report.commit.clone().unwrap_or_default(),
                rolled_back: report.rolled_back,
                duration_ms: report.duration_ms,
                outcomes_json: serde_json::to_string(&report.hosts).unwrap_or_default(),
            }
        }
        Err(why) => DeployRecord {
            stage: request.stage.clone(),
            action: request.action.clone(),
            hosts,
            result: format!("failed: {}", why.lines().next().unwrap_or("")),
            git_ref: request.git_ref.clone().unwrap_or_default(),
            commit: request.commit.clone(),
            ..DeployRecord::default()
        },
    };
    if let Err(error) = record(controller, request.who.clone(), deploy).await {
        tracing::error!(stage = %request.stage, %error, "cannot record a deploy");
    }
}

/// Log lines of `hosts` (the apps in `targets`, all when empty) merged into one
/// stream: the last `lines` of each, then new ones while `follow`. A host that cannot
/// be reached is a notice line. The CLI's `Logs` and the dashboard's live logs.
pub(crate) async fn subscribe_logs(
    controller: &Controller,
    hosts: Vec<String>,
    targets: Vec<String>,
    lines: u32,
    follow: bool,
) -> MergedLogs {
    // Hosts a peer sharing the store holds: their lines come through it.
    let held = crate::peers::holders(controller, &hosts).await;
    let (mut merged, sender) = subscribe_held_logs(
        controller,
        hosts
            .into_iter()
            .filter(|h| !held.contains_key(h))
            .collect(),
        targets.clone(),
        lines,
        follow,
        true,
    );
    let mut by_peer: HashMap<String, Vec<String>> = HashMap::new();
    for (host, url) in held {
        by_peer.entry(url).or_default().push(host);
    }
    for (url, hosts) in by_peer {
        let query = crate::peers::LogQuery {
            hosts,
            targets: targets.clone(),
            lines,
            follow,
        };
        merged.forwards.push(crate::peers::forward_logs(
            controller,
            url,
            query,
            sender.clone(),
        ));
    }
    // The queue ends once every host's and peer's sender is gone: not this one.
    drop(sender);
    merged
}

/// The log lines of the `hosts` this controller holds a session with; with `notices`,
/// a line saying so for each it cannot reach (a peer asking leaves those out). Also a
/// sender into the same queue, for lines brought from peers; the stream ends once it
/// and every host's are dropped.
pub(crate) fn subscribe_held_logs(
    controller: &Controller,
    hosts: Vec<String>,
    targets: Vec<String>,
    lines: u32,
    follow: bool,
    notices_for_unreachable: bool,
) -> (MergedLogs, mpsc::Sender<Vec<LogEntry>>) {
    let registry = &controller.registry;
    let (tx, rx) = mpsc::channel(LOG_QUEUE_BATCHES);
    let mut subscriptions = Vec::new();
    let mut notices = Vec::new();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for host in hosts {
        match registry.reach(&host) {
            Ok(link) => {
                let subscription_id = registry.next_id();
                link.add_log_subscription(subscription_id, tx.clone(), follow, dropped.clone());
                if link.is_ended() {
                    link.remove_log_subscription(subscription_id);
                    continue;
                }
                link.send_soon(controller_message::Body::Subscribe(LogSubscribe {
                    subscription_id,
                    targets: targets.clone(),
                    lines,
                    follow,
                }));
                subscriptions.push((link, subscription_id));
            }
            Err(why) if notices_for_unreachable => notices.push(LogEntry {
                ts_unix_ms: now_unix_ms(),
                host,
                notice: format!("unreachable: {why}"),
                ..LogEntry::default()
            }),
            Err(_) => {}
        }
    }
    let merged = MergedLogs {
        queue: rx,
        ready: notices.into_iter(),
        subscriptions,
        dropped,
        deadline: (!follow).then(|| Box::pin(tokio::time::sleep(LOG_HISTORY_DEADLINE))),
        forwards: Vec::new(),
    };
    (merged, tx)
}

/// What to do on each host of a command.
#[derive(Clone)]
pub(crate) struct HostCommand {
    pub action: Action,
    pub targets: Vec<String>,
    pub count: String,
}
/// Runs `command` on every host of `stage` (in batches for a reload, as the agent
/// would) and writes it to the audit log as `who`'s: the CLI's `Command` and the
/// dashboard's actions both come here.
pub(crate) async fn run_command(
    controller: &Arc<Controller>,
    who: String,
    stage: Stage,
    command: HostCommand,
) -> Result<Vec<HostResult>, Status> {
    let (action, targets) = (command.action, command.targets.clone());
    let shared = controller.clone();
    // Hosts a peer sharing the store holds get the command through it.
    let held = Arc::new(crate::peers::holders(controller, &stage.hosts).await);
    let hosts = ops::fan_out(
        action,
        stage.hosts.clone(),
        move |host| {
            let (controller, command, held) = (shared.clone(), command.clone(), held.clone());
            async move {
                match held.get(&host) {
                    Some(url) => crate::peers::command_at(&controller, url, &host, &command).await,
                    None => run_on_host(&controller, &host, &command).await,
                }
            }
        },
        |result| !result.ok,
        |host| HostResult {
            host,
            ok: false,
            error: ops::NOT_REACHED.to_owned(),
            processes: Vec::new(),
        },
    )
    .await;
    let failures: Vec<String> = hosts
        .iter()
        .filter(|host| !host.ok)
        .map(|host| format!("{}: {}", host.host, host.error))
        .collect();
    audit(
        controller,
        AuditEntry {
            at_ms: now_unix_ms(),
            who,
            action: ops::action_name(action).to_owned(),
            stage: stage.name,
            targets,
            result: if failures.is_empty() {
                "ok".to_owned()
            } else {
                format!("failed: {}", failures.join("; "))
            },
        },
    )
    .await?;
    Ok(hosts)
}

async fn audit(controller: &Controller, entry: AuditEntry) -> Result<(), Status> {
    controller
        .store
        .call(move |conn| store::append_audit(conn, &entry))
        .await?;
    Ok(())
}

pub(crate) async fn run_on_host(
    controller: &Controller,
    host: &str,
    command: &HostCommand,
) -> HostResult {
    let failed = |error: String| HostResult {
        host: host.to_owned(),
        ok: false,
        error,
        processes: Vec::new(),
    };
    let link = match controller.registry.reach(host) {
        Ok(link) => link,
        Err(why) => return failed(format!("unreachable: {why}")),
    };
    let timeout = ops::timeout(command.action);
    let request = AgentCommand {
        request_id: controller.registry.next_id(),
        action: command.action.into(),
        targets: command.targets.clone(),
        count: command.count.clone(),
    };
    match link.command(request, timeout).await {
        Ok(result) => HostResult {
            host: host.to_owned(),
            ok: result.ok,
            error: result.error,
            processes: result
                .processes
                .into_iter()
                .map(|mut process| {
                    if process.host.is_empty() {
                        process.host = host.to_owned();
                    }
                    process
                })
                .collect(),
        },
        Err(error) => failed(error),
    }
}

/// The log lines of a stage's hosts, merged as they arrive. Dropping it (the CLI went
/// away) unsubscribes every host, so lines flow only while someone watches.
pub struct MergedLogs {
    queue: mpsc::Receiver<Vec<LogEntry>>,
    /// The tasks bringing peers' lines, stopped with this.
    forwards: Vec<crate::server::AbortOnDrop>,
    ready: std::vec::IntoIter<LogEntry>,
    subscriptions: Vec<(Arc<SessionLink>, u64)>,
    /// Some host's sink dropped lines: once the queue is empty, tell them.
    dropped: Arc<std::sync::atomic::AtomicBool>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for MergedLogs {
    type Item = Result<LogEntry, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(entry) = this.ready.next() {
                return Poll::Ready(Some(Ok(entry)));
            }
            if let Some(deadline) = &mut this.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            match this.queue.poll_recv(cx) {
                Poll::Ready(Some(batch)) => this.ready = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending
                    if this
                        .dropped
                        .swap(false, std::sync::atomic::Ordering::AcqRel) =>
                {
                    // Everything queued was read: the drop notices fit now.
                    for (link, subscription_id) in &this.subscriptions {
                        if link.flush_dropped(*subscription_id) {
                            this.dropped
                                .store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for MergedLogs {
    fn drop(&mut self) {
        for (link, subscription_id) in self.subscriptions.drain(..) {
            if link.remove_log_subscription(subscription_id) && !link.is_ended() {
                link.send_soon(controller_message::Body::Unsubscribe(LogUnsubscribe {
                    subscription_id,
                }));
            }
        }
    }
}
