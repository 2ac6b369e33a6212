//! A stage reached over SSH: each host's agent through a direct-streamlocal channel,
//! the hosts in parallel (or rolling, for a reload) as `fleet_proto::ops` decides.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::agent::v1 as apb;
use fleet_proto::agent::v1::agent_service_client::AgentServiceClient;
use fleet_proto::controller::v1 as cpb;
use fleet_proto::ops::{self, AgentCall, Needs};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{HostOutcome, LOG_QUEUE, LogItem, LogsQuery, StageApi, StageError};
use crate::ssh::Pool;

/// One host of a stage and the pool that reaches it.
#[derive(Clone)]
pub struct SshHost {
    pub name: String,
    pub pool: Arc<Pool>,
    /// The stage's `fleet_home`; else the host is asked for its FLEET_HOME.
    pub fleet_home: Option<String>,
}

/// The agent of `host`, over SSH, after the handshake (`needs`: the protocol
/// version the caller relies on).
pub async fn agent_client(
    host: &SshHost,
    needs: Needs,
) -> Result<AgentServiceClient<Channel>, String> {
    let channel = host
        .pool
        .agent_channel(&host.name, host.fleet_home.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let (client, _) = ops::handshake(channel, needs)
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}

pub(super) struct SshStage {
    pub(super) hosts: Vec<SshHost>,
    /// How long `status` waits for each host.
    pub(super) status_timeout: Duration,
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

/// `call` on one host, within the action's timeout.
async fn run_on_host(host: SshHost, action: cpb::Action, call: AgentCall) -> HostOutcome {
    let timeout = ops::timeout(action);
    let result = tokio::time::timeout(timeout, async {
        let mut client = agent_client(&host, ops::ANY_MINOR).await?;
        let response = match call {
            AgentCall::Start(request) => client.start(request).await,
            AgentCall::Stop(request) => client.stop(request).await,
            AgentCall::Restart(request) => client.restart(request).await,
            AgentCall::Reload(request) => client.reload(request).await,
            AgentCall::Scale(request) => client.scale(request).await,
        };
        response
            .map(|r| with_host(r.into_inner().processes, &host.name))
            .map_err(|s| s.message().to_string())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())));
    HostOutcome {
        stale: false,
        host: host.name,
        result,
        last_seen_unix_ms: None,
        metrics: None,
    }
}

impl StageApi for SshStage {
    fn set_status_timeout(&mut self, timeout: Duration) {
        self.status_timeout = timeout;
    }

    fn status(&mut self) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>> {
        let hosts = self.hosts.clone();
        let timeout = self.status_timeout;
        async move {
            let jobs: Vec<_> = hosts
                .into_iter()
                .map(|host| {
                    tokio::spawn(async move {
                        let answer = tokio::time::timeout(timeout, async {
                            let mut client = agent_client(&host, ops::ANY_MINOR).await?;
                            let list = client
                                .list(apb::ListRequest::default())
                                .await
                                .map_err(|s| format!("agent: {}", s.message()))?
                                .into_inner();
                            Ok((with_host(list.processes, &host.name), list.host))
                        })
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("no answer within {}s", timeout.as_secs()))
                        });
                        let (result, metrics) = match answer {
                            Ok((processes, metrics)) => (Ok(processes), metrics),
                            Err(error) => (Err(error), None),
                        };
                        HostOutcome {
                            stale: false,
                            host: host.name,
                            result,
                            last_seen_unix_ms: None,
                            metrics,
                        }
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for job in jobs {
                match job.await {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                }
            }
            Ok(outcomes)
        }
        .boxed()
    }

    fn command(
        &mut self,
        action: cpb::Action,
        targets: Vec<String>,
        count: String,
    ) -> BoxFuture<'_, Result<Vec<HostOutcome>, StageError>> {
        let hosts = self.hosts.clone();
        async move {
            let call = ops::agent_call(action, targets, &count)
                .map_err(|e| StageError::Config(e.to_string()))?;
            Ok(ops::fan_out(
                action,
                hosts,
                move |host| run_on_host(host, action, call.clone()),
                |outcome| outcome.result.is_err(),
                |host| HostOutcome {
                    stale: false,
                    host: host.name,
                    result: Err(ops::NOT_REACHED.to_string()),
                    last_seen_unix_ms: None,
                    metrics: None,
                },
            )
            .await)
        }
        .boxed()
    }

    fn logs(
        &mut self,
        query: LogsQuery,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<LogItem>, StageError>> {
        let hosts = self.hosts.clone();
        async move {
            let (tx, rx) = mpsc::channel(LOG_QUEUE);
            for host in hosts {
                tokio::spawn(forward_host_logs(host, query.clone(), tx.clone()));
            }
            Ok(rx)
        }
        .boxed()
    }
}

/// One host's log stream into the merged channel, each line labelled with the host.
async fn forward_host_logs(host: SshHost, query: LogsQuery, tx: mpsc::Sender<LogItem>) {
    let stream = async {
        let mut client = agent_client(&host, ops::ANY_MINOR).await?;
        client
            .logs(apb::LogsRequest {
                targets: query.targets,
                lines: query.lines,
                follow: query.follow,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    };
    let mut stream = match stream.await {
        Ok(stream) => stream,
        Err(error) => {
            let _ = tx.send(Err(format!("{}: {error}", host.name))).await;
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(mut entry)) => {
                entry.host = host.name.clone();
                if tx.send(Ok(entry)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                let _ = tx
                    .send(Err(format!("{}: {}", host.name, status.message())))
                    .await;
                return;
            }
        }
    }
}
