//! A deploy run by the controller, from the CLI's side: `submit` prepares it here
//! (`pre_deploy_local`, the ref resolved and packed in this repository), uploads it
//! once and follows its progress as the same `Event`s a local deploy sends, so the
//! terminal shows it exactly as before; `attach` follows a running (or past) one from
//! any machine; `cancel` stops one; `history` lists them. Following ends when the
//! deploy does, or when the caller detaches (the deploy goes on).

use fleet_proto::controller::v1 as cpb;
use tokio::sync::mpsc;

use super::{Action, DeployError, Event, Events, Options, Outcome, Report};
use crate::stage::{Stage, StageError, connect_controller};

/// Upload chunk size: well under gRPC's message limit.
const CHUNK: usize = 1 << 20;

/// What the follower is told to do, besides following.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop following; the deploy goes on.
    Detach,
    /// Ask the controller to cancel the deploy, and follow it to its end.
    Cancel,
}

/// How following a controller-run deploy ended.
#[derive(Debug)]
pub struct Followed {
    pub deploy_id: Option<u64>,
    /// `None` when detached before the end.
    pub outcome: Option<Result<Outcome, DeployError>>,
}

fn controller_error(error: StageError) -> DeployError {
    DeployError::Stage(error)
}

impl Followed {
    /// Ended before following anything.
    fn failed(error: DeployError) -> Followed {
        Followed {
            deploy_id: None,
            outcome: Some(Err(error)),
        }
    }
}

/// The stage's controller, or why `what` cannot run without one.
fn settings(stage: &Stage, what: &str) -> Result<crate::stage::ControllerSettings, DeployError> {
    (stage.controller.clone()).ok_or_else(|| {
        DeployError::Config(format!("`{what}` needs a controller (FLEET_CONTROLLER)"))
    })
}

/// A client of the stage's controller, for `what`.
async fn client(stage: &Stage, what: &str) -> Result<crate::stage::ControllerClient, DeployError> {
    connect_controller(&settings(stage, what)?)
        .await
        .map_err(controller_error)
}

fn refused(status: tonic::Status) -> DeployError {
    match status.code() {
        tonic::Code::InvalidArgument => DeployError::Config(status.message().to_owned()),
        _ => DeployError::Refused(status.message().to_owned()),
    }
}

/// Prepares `action` (update or revert) here and hands it to the stage's controller.
pub async fn submit(
    stage: Stage,
    action: Action,
    options: Options,
    events: Events,
    control: mpsc::Receiver<Control>,
) -> Followed {
    let settings = match settings(&stage, "deploy through the controller") {
        Ok(settings) => settings,
        Err(error) => return Followed::failed(error),
    };
    let (action_name, revert_steps) = match action {
        Action::Update => ("update", 0),
        Action::Revert(n) => ("revert", n as u32),
        _ => {
            return Followed::failed(DeployError::Config(
                "a controller runs update and revert only".into(),
            ));
        }
    };
    // Packing here and the controller's TLS handshake at once.
    let prepare = async {
        match action {
            Action::Update => super::prepare(stage.clone(), options.clone(), events.clone()).await,
            _ => Ok(super::Prepared::default()),
        }
    };
    let (prepared, client) = tokio::join!(prepare, connect_controller(&settings));
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return Followed::failed(error),
    };
    let mut client = match client {
        Ok(client) => client,
        Err(error) => return Followed::failed(controller_error(error)),
    };
    let archive = prepared.archive.clone().unwrap_or_default();
    let header = cpb::DeploySubmit {
        stage: stage.name.clone(),
        stage_json: serde_json::to_string(&stage.config).unwrap_or_default(),
        action: action_name.to_owned(),
        revert_steps,
        git_ref: (options.git_ref.clone())
            .or(stage.config.git_ref.clone())
            .unwrap_or_default(),
        no_rollback: options.no_rollback,
        reason: options.reason.clone().unwrap_or_default(),
        who: options.who.clone().unwrap_or_else(super::local_who),
        accept_new_host_keys: options.ssh.accept_new_host_keys,
        commit: prepared.commit.clone(),
        summary: prepared.summary.clone(),
        archive_bytes: archive.len() as u64,
    };
    let mut messages = vec![cpb::DeployUpload {
        body: Some(cpb::deploy_upload::Body::Submit(header)),
    }];
    messages.extend(archive.chunks(CHUNK).map(|chunk| cpb::DeployUpload {
        body: Some(cpb::deploy_upload::Body::Chunk(chunk.to_vec())),
    }));
    let progress = match client.submit_deploy(futures::stream::iter(messages)).await {
        Ok(progress) => progress.into_inner(),
        Err(status) => return Followed::failed(refused(status)),
    };
    follow(client, stage.name, progress, events, control).await
}

/// Follows the stage's running deploy (or `deploy_id`), replayed from its start.
pub async fn attach(
    stage: Stage,
    deploy_id: u64,
    events: Events,
    control: mpsc::Receiver<Control>,
) -> Followed {
    let mut client = match client(&stage, "attach").await {
        Ok(client) => client,
        Err(error) => return Followed::failed(error),
    };
    let request = cpb::AttachDeployRequest {
        stage: stage.name.clone(),
        deploy_id,
    };
    match client.attach_deploy(request).await {
        Ok(progress) => follow(client, stage.name, progress.into_inner(), events, control).await,
        Err(status) => Followed::failed(refused(status)),
    }
}

async fn follow(
    mut client: crate::stage::ControllerClient,
    stage: String,
    mut progress: tonic::Streaming<cpb::DeployProgress>,
    events: Events,
    mut control: mpsc::Receiver<Control>,
) -> Followed {
    let mut deploy_id = None;
    let mut controls_open = true;
    loop {
        let next = tokio::select! {
            next = progress.message() => next,
            order = control.recv(), if controls_open => {
                match order {
                    Some(Control::Detach) => return Followed { deploy_id, outcome: None },
                    Some(Control::Cancel) => {
                        let request = cpb::CancelDeployRequest { stage: stage.clone() };
                        if let Err(status) = client.cancel_deploy(request).await {
                            events.note(format!("cannot cancel: {}", status.message()));
                        }
                    }
                    None => controls_open = false,
                }
                continue;
            }
        };
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => {
                let why = "the controller ended the progress stream before the deploy ended";
                return Followed {
                    deploy_id,
                    outcome: Some(Err(DeployError::Refused(format!(
                        "{why}\nhint: `fleet deploy {stage} attach` follows it again"
                    )))),
                };
            }
            Err(status) => {
                return Followed {
                    deploy_id,
                    outcome: Some(Err(DeployError::Refused(format!(
                        "lost the controller: {}\nhint: the deploy goes on; `fleet deploy {stage} attach` follows it again",
                        status.message()
                    )))),
                };
            }
        };
        deploy_id = Some(message.deploy_id);
        if message.done {
            let outcome = match (message.report_json.is_empty(), message.error) {
                (false, _) => serde_json::from_str::<Report>(&message.report_json)
                    .map(Outcome::Report)
                    .map_err(|e| DeployError::Refused(format!("the controller's report: {e}"))),
                (true, error) => Err(DeployError::Refused(error)),
            };
            return Followed {
                deploy_id,
                outcome: Some(outcome),
            };
        }
        if let Ok(event) = serde_json::from_str::<Event>(&message.event_json) {
            events.emit(event);
        }
    }
}

/// Cancels the stage's running deploy; its id.
pub async fn cancel(stage: &Stage) -> Result<u64, DeployError> {
    let mut client = client(stage, "cancel").await?;
    let reply = client
        .cancel_deploy(cpb::CancelDeployRequest {
            stage: stage.name.clone(),
        })
        .await
        .map_err(refused)?;
    Ok(reply.into_inner().deploy_id)
}

/// The stage's past deploys run by the controller, newest first (JSON objects).
pub async fn history(stage: &Stage, limit: u32) -> Result<Vec<serde_json::Value>, DeployError> {
    let mut client = client(stage, "history").await?;
    let reply = client
        .deploy_history(cpb::DeployHistoryRequest {
            stage: stage.name.clone(),
            limit,
        })
        .await
        .map_err(refused)?;
    serde_json::from_str(&reply.into_inner().runs_json)
        .map_err(|e| DeployError::Refused(format!("the controller's history: {e}")))
}
