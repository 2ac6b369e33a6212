//! The deploy calls of `FleetService`: `SubmitDeploy` (checked, the archive written to
//! the data directory as it arrives, the stage's lock taken, the run started, its
//! progress streamed back), `AttachDeploy`, `CancelDeploy` and `DeployHistory`.
//!
//! Roles: submitting and cancelling need `deploy`; attaching too (hook output can say
//! more than a status does); the history (results, no output) needs `read`.

use std::io::Write as _;
use std::sync::Arc;

use fleet_config::DeployStage;
use fleet_proto::controller::v1::{
    AttachDeployRequest, CancelDeployReply, DeployHistoryReply, DeployProgress, DeploySubmit,
    DeployUpload, deploy_upload,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{Deployer, Request, archive_path, follow, runs};
use crate::now_unix_ms;
use crate::server::Controller;

/// The largest release archive a submission may upload.
pub const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
/// The largest stage description (JSON).
const MAX_STAGE_JSON: usize = 256 * 1024;
/// History answers at most this many runs.
const MAX_HISTORY: u32 = 1000;

pub type Progress = ReceiverStream<Result<DeployProgress, Status>>;

/// Whether `name` can be a stage's name here: what `[deploy.<name>]` allows.
fn check_stage_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(Status::invalid_argument(format!(
            "{name:?} is not a stage name (letters, digits, `.`, `_`, `-`; at most 64)"
        ))),
    }
}

fn printable(what: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{what} must be one line of at most {max} bytes"
        )));
    }
    Ok(())
}

/// The submission checked, as the run will keep it.
fn request_of(submit: &DeploySubmit, token_name: &str) -> Result<Request, Status> {
    check_stage_name(&submit.stage)?;
    if submit.stage_json.len() > MAX_STAGE_JSON {
        return Err(Status::invalid_argument(
            "the stage's description is too large",
        ));
    }
    let config: DeployStage = serde_json::from_str(&submit.stage_json)
        .map_err(|e| Status::invalid_argument(format!("the stage's description: {e}")))?;
    if config.host.is_empty() {
        return Err(Status::invalid_argument(format!(
            "stage {} has no host",
            submit.stage
        )));
    }
    if !matches!(submit.action.as_str(), "update" | "revert") {
        return Err(Status::invalid_argument(
            "a controller runs `update` and `revert`; `setup`, `list`, `exec` and `unlock` run from the CLI",
        ));
    }
    if !submit.git_ref.is_empty() {
        fleet_remote::deploy::check_ref(&submit.git_ref).map_err(Status::invalid_argument)?;
    }
    let commit_ok = submit.commit.is_empty()
        || (matches!(submit.commit.len(), 40 | 64)
            && submit.commit.bytes().all(|b| b.is_ascii_hexdigit()));
    if !commit_ok {
        return Err(Status::invalid_argument("commit must be a full commit id"));
    }
    printable("who", &submit.who, 256)?;
    printable("reason", &submit.reason, 1024)?;
    printable("summary", &submit.summary, 1024)?;
    if submit.archive_bytes > MAX_ARCHIVE_BYTES {
        return Err(Status::invalid_argument(format!(
            "the release archive is {} bytes; at most {MAX_ARCHIVE_BYTES}",
            submit.archive_bytes
        )));
    }
    if submit.action == "update"
        && submit.archive_bytes == 0
        && config.strategy == fleet_config::DeployStrategy::Archive
    {
        return Err(Status::invalid_argument(
            "an update with the archive strategy needs its archive",
        ));
    }
    Ok(Request {
        stage: submit.stage.clone(),
        config,
        action: submit.action.clone(),
        revert_steps: submit.revert_steps,
        git_ref: Some(submit.git_ref.clone()).filter(|r| !r.is_empty()),
        no_rollback: submit.no_rollback,
        reason: Some(submit.reason.clone()).filter(|r| !r.is_empty()),
        who: format!("token:{token_name} ({})", submit.who),
        accept_new_host_keys: submit.accept_new_host_keys,
        commit: submit.commit.clone(),
        summary: submit.summary.clone(),
        has_archive: submit.archive_bytes > 0,
    })
}

/// Who holds `stage`'s lock, as a refusal.
fn busy(stage: &str, holder: &runs::Holder) -> Status {
    Status::failed_precondition(format!(
        "stage {stage} is being deployed: deploy #{} by token {} from {} (ref {})\nhint: `fleet deploy {stage} attach` follows it, `fleet deploy {stage} cancel` stops it",
        holder.run_id,
        holder.token_name,
        holder.machine,
        if holder.git_ref.is_empty() {
            "HEAD"
        } else {
            &holder.git_ref
        }
    ))
}

/// Receives the archive into a private temporary file of the data directory.
async fn receive(
    controller: &Controller,
    upload: &mut Streaming<DeployUpload>,
    expected: u64,
) -> Result<Option<tempfile::NamedTempFile>, Status> {
    if expected == 0 {
        return Ok(None);
    }
    let dir = controller.deployer.files.dir.join("deploys");
    let mut file = tempfile::Builder::new()
        .prefix("upload-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|e| Status::internal(format!("cannot store the archive: {e}")))?;
    let mut received = 0u64;
    while let Some(message) = upload.message().await? {
        let Some(deploy_upload::Body::Chunk(chunk)) = message.body else {
            return Err(Status::invalid_argument(
                "after the first message, only archive chunks",
            ));
        };
        received += chunk.len() as u64;
        if received > expected {
            return Err(Status::invalid_argument(format!(
                "the archive is longer than the {expected} bytes announced"
            )));
        }
        file.write_all(&chunk)
            .map_err(|e| Status::internal(format!("cannot store the archive: {e}")))?;
    }
    if received != expected {
        return Err(Status::invalid_argument(format!(
            "the archive ended after {received} of {expected} bytes"
        )));
    }
    // Not fsynced: like the run's row (SQLite, synchronous=NORMAL), it survives the
    // controller's death, not the machine's; a run whose archive is gone ends saying so.
    Ok(Some(file))
}

pub(crate) async fn submit(
    controller: &Arc<Controller>,
    token_name: &str,
    mut upload: Streaming<DeployUpload>,
) -> Result<Progress, Status> {
    let first = upload
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an empty submission"))?;
    let Some(deploy_upload::Body::Submit(submit)) = first.body else {
        return Err(Status::invalid_argument(
            "a submission starts with the deploy's description",
        ));
    };
    let request = request_of(&submit, token_name)?;
    // Refused before the upload when the stage is busy.
    let stage = request.stage.clone();
    let holder = controller
        .store
        .call(move |conn| runs::holder(conn, &stage))
        .await?;
    if let Some(holder) = holder {
        return Err(busy(&request.stage, &holder));
    }
    let archive = receive(controller, &mut upload, submit.archive_bytes).await?;
    let json = serde_json::to_string(&request).map_err(|e| Status::internal(e.to_string()))?;
    let machine = submit
        .who
        .rsplit_once('@')
        .map_or(submit.who.as_str(), |(_, m)| m)
        .to_owned();
    let (stage, action, who, token, git_ref, commit) = (
        request.stage.clone(),
        request.action.clone(),
        request.who.clone(),
        token_name.to_owned(),
        submit.git_ref.clone(),
        submit.commit.clone(),
    );
    let me = controller.peers.me.id.clone();
    let begun = controller
        .store
        .call(move |conn| {
            runs::begin(
                conn,
                &runs::NewRun {
                    stage: &stage,
                    action: &action,
                    who: &who,
                    token_name: &token,
                    machine: &machine,
                    git_ref: &git_ref,
                    commit: &commit,
                    request: &json,
                    now_ms: now_unix_ms(),
                    controller: &me,
                },
            )
        })
        .await?;
    let (id, fence) = begun.map_err(|holder| busy(&request.stage, &holder))?;
    if let Some(archive) = archive {
        let path = archive_path(&controller.deployer.files, id);
        archive
            .persist(&path)
            .map_err(|e| Status::internal(format!("cannot store the archive: {e}")))?;
        // Another controller of a shared store takes the run over from the store's copy.
        if controller.config.store.is_some() {
            super::takeover::keep_archive(controller, id, &path)
                .await
                .map_err(|e| {
                    Status::unavailable(format!("cannot keep the archive in the store: {e}"))
                })?;
        }
    }
    tracing::info!(id, stage = %request.stage, who = %request.who, "deploy submitted");
    let start = super::Start {
        next_seq: 1,
        cancelled: false,
    };
    Deployer::start(controller, id, request, None, fence, false, start);
    Ok(ReceiverStream::new(follow(controller, id).await))
}

pub(crate) async fn attach(
    controller: &Arc<Controller>,
    request: AttachDeployRequest,
) -> Result<Progress, Status> {
    check_stage_name(&request.stage)?;
    let id = match request.deploy_id {
        0 => {
            let stage = request.stage.clone();
            controller
                .store
                .call(move |conn| runs::latest(conn, &stage))
                .await?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "stage {} has no deploy run by the controller",
                        request.stage
                    ))
                })?
        }
        id => id,
    };
    Ok(ReceiverStream::new(follow(controller, id).await))
}

pub(crate) async fn cancel(
    controller: &Controller,
    stage: &str,
) -> Result<CancelDeployReply, Status> {
    check_stage_name(stage)?;
    let not_running = || Status::not_found(format!("no deploy of stage {stage} is running"));
    let deploy_id = match controller.deployer.cancel(stage) {
        Some(id) => id,
        // Another controller of the store runs it: the cancel is stored, and that one
        // takes it up at its next lease renewal (`takeover::notice_cancels`).
        None if controller.config.store.is_some() => {
            let stage = stage.to_owned();
            controller
                .store
                .call(move |conn| runs::running(conn, &stage))
                .await?
                .ok_or_else(not_running)?
        }
        None => return Err(not_running()),
    };
    controller.store.write("deploy cancel", move |conn| {
        runs::mark_cancelling(conn, deploy_id)
    });
    Ok(CancelDeployReply { deploy_id })
}

pub(crate) async fn history(
    controller: &Controller,
    stage: &str,
    limit: u32,
) -> Result<DeployHistoryReply, Status> {
    let stage = Some(stage.to_owned()).filter(|s| !s.is_empty());
    if let Some(stage) = &stage {
        check_stage_name(stage)?;
    }
    let limit = if limit == 0 {
        50
    } else {
        limit.min(MAX_HISTORY)
    };
    let runs = controller
        .store
        .call(move |conn| runs::history(conn, stage.as_deref(), None, limit))
        .await?;
    Ok(DeployHistoryReply {
        runs_json: serde_json::to_string(&runs).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn submit() -> DeploySubmit {
        DeploySubmit {
            stage: "prod".into(),
            stage_json: serde_json::json!({
                "user": null, "host": ["h1"], "port": null, "key": null, "ssh_options": [],
                "repo": null, "ref": null, "path": "/srv/app", "env": {}, "pre_setup": null,
                "post_setup": null, "pre_deploy_local": null, "pre_deploy": null,
                "post_deploy": null, "fetch": null, "forward_agent": false, "needs_tty": false,
                "keep_releases": 5, "shared_dirs": [], "shared_files": [], "proxy_jump": null,
                "strategy": "archive", "batch": {"percent": 100}, "canary": false, "max_fail": 0, "hosts": {}
            })
            .to_string(),
            action: "update".into(),
            git_ref: "main".into(),
            who: "me@laptop".into(),
            commit: "a".repeat(40),
            archive_bytes: 10,
            ..DeploySubmit::default()
        }
    }

    #[test]
    fn a_submission_is_checked_before_anything_runs() {
        let request = request_of(&submit(), "ci").unwrap();
        assert_eq!(
            (request.who.as_str(), request.has_archive),
            ("token:ci (me@laptop)", true)
        );
        let bad = |change: fn(&mut DeploySubmit)| {
            let mut s = submit();
            change(&mut s);
            request_of(&s, "ci").unwrap_err().code()
        };
        assert_eq!(
            bad(|s| s.stage = "../etc".into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|s| s.action = "setup".into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|s| s.git_ref = "main; rm -rf /".into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|s| s.commit = "zz".into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|s| s.who = "me\n@x".into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(bad(|s| s.archive_bytes = 0), tonic::Code::InvalidArgument);
        assert_eq!(
            bad(|s| s.archive_bytes = MAX_ARCHIVE_BYTES + 1),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            bad(|s| s.stage_json = "{}".into()),
            tonic::Code::InvalidArgument
        );
    }

    proptest! {
        #[test]
        fn generated_submissions_never_panic(
            stage in ".{0,80}",
            json in ".{0,200}",
            action in "(update|revert|setup|.{0,8})",
            git_ref in ".{0,40}",
            who in ".{0,40}",
            commit in "[0-9a-fz]{0,64}",
            archive in any::<u64>(),
        ) {
            let s = DeploySubmit {
                stage, stage_json: json, action, git_ref, who, commit,
                archive_bytes: archive, ..DeploySubmit::default()
            };
            let _ = request_of(&s, "ci");
        }

        #[test]
        fn a_mutated_stage_description_never_panics(at in 0usize..2000, byte in any::<u8>()) {
            let mut s = submit();
            let mut json = s.stage_json.into_bytes();
            let at = at % json.len();
            json[at] = byte;
            s.stage_json = String::from_utf8_lossy(&json).into_owned();
            let _ = request_of(&s, "ci");
        }
    }
}
