//! The commands across a stage's hosts: `fleet status <stage>`, `fleet logs <stage>`
//! and `fleet start|stop|restart|reload <stage> ...`. `fleet_remote::stage` reaches
//! the hosts (through the controller or over SSH); this file prints and picks the
//! exit codes, the same either way.

use fleet_proto::controller::v1::Action;
use fleet_remote::ssh::SshChoices;
use fleet_remote::stage::{self, LogsQuery, Stage, StageError};

use crate::{Command, Failure, LogsArgs, output};

type Result<T> = std::result::Result<T, Failure>;

impl From<StageError> for Failure {
    fn from(error: StageError) -> Failure {
        if error.is_config() {
            Failure::usage(error.to_string())
        } else {
            Failure::failed(error.to_string())
        }
    }
}

/// A command aimed at a stage rather than this host, run across the stage's hosts;
/// `None` when the command is for this host. A first word naming a stage of the
/// config file makes it a fleet command: `fleet restart production api`.
pub async fn route(command: &Command, ssh: &SshChoices) -> Option<Result<()>> {
    let (targets, action) = match command {
        Command::Start(args) => (&args.targets, Action::Start),
        Command::Stop(args) => (&args.targets, Action::Stop),
        Command::Restart(args) => (&args.targets, Action::Restart),
        Command::Reload(args) => (&args.targets, Action::Reload),
        Command::Status(args) => {
            let name = args.stage.as_ref()?;
            return Some(match stage::find(name) {
                Ok(Some(stage)) => status(&stage, args.json, ssh).await,
                Ok(None) => Err(Failure::usage(format!(
                    "no stage {name:?}: fleet.toml has no [deploy.{name}]\nhint: `fleet status` without a stage lists this host's apps"
                ))),
                Err(error) => Err(error.into()),
            });
        }
        Command::Monit(args) => {
            let name = args.stage.as_ref()?;
            return Some(match stage::find(name) {
                Ok(Some(stage)) => crate::monit::run_stage(stage, ssh.clone()).await,
                Ok(None) => Err(Failure::usage(format!(
                    "no stage {name:?}: fleet.toml has no [deploy.{name}]\nhint: `fleet monit` without a stage watches this host's apps"
                ))),
                Err(error) => Err(error.into()),
            });
        }
        Command::Logs(args) => {
            return match stage_of(&args.targets) {
                Ok(Some((stage, targets))) => Some(logs(&stage, targets, args, ssh).await),
                Ok(None) => None,
                Err(error) => Some(Err(error)),
            };
        }
        _ => return None,
    };
    if targets.len() < 2 {
        return None;
    }
    match stage_of(targets) {
        Ok(Some((stage, targets))) => Some(command_on_stage(&stage, action, targets, ssh).await),
        Ok(None) => None,
        Err(error) => Some(Err(error)),
    }
}

/// The stage named by the first of `targets`, and the rest of them; `None` when the
/// first word is not a stage (a local target then). Only data config files are read
/// for this guess (`stage::find_if_stage`); `status <stage>` and `deploy` name a stage,
/// so they read an ecosystem.config.js too.
pub fn stage_of(targets: &[String]) -> Result<Option<(Stage, Vec<String>)>> {
    match targets.split_first() {
        Some((first, rest)) => Ok(stage::find_if_stage(first)?.map(|s| (s, rest.to_vec()))),
        None => Ok(None),
    }
}

/// `fleet status <stage>`: every instance of every host; exit 1 if a host is unreachable.
pub async fn status(stage: &Stage, json: bool, ssh: &SshChoices) -> Result<()> {
    let mut remote = stage.connect(ssh).await?;
    let outcomes = remote.status().await?;
    output::print_fleet_status(&outcomes, json);
    let unreachable = outcomes.iter().filter(|o| o.result.is_err()).count();
    if unreachable > 0 {
        return Err(Failure::failed(format!(
            "{unreachable} of {} hosts could not be reached",
            outcomes.len()
        )));
    }
    Ok(())
}

/// An action on every host of the stage.
pub async fn command_on_stage(
    stage: &Stage,
    action: Action,
    targets: Vec<String>,
    ssh: &SshChoices,
) -> Result<()> {
    let mut remote = stage.connect(ssh).await?;
    let outcomes = remote.command(action, targets, String::new()).await?;
    output::print_host_results(&outcomes);
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        return Err(Failure::failed(format!(
            "{failed} of {} hosts failed",
            outcomes.len()
        )));
    }
    Ok(())
}

/// Merged log lines of every host, printed as they come, until every stream ended
/// (without `-f`) or Ctrl-C. Hosts that cannot be reached are reported on stderr and
/// make the exit status 1.
pub async fn logs(
    stage: &Stage,
    targets: Vec<String>,
    args: &LogsArgs,
    ssh: &SshChoices,
) -> Result<()> {
    let mut remote = stage.connect(ssh).await?;
    let style = output::LogStyle::from_flags(args.json, args.raw);
    let mut printer = output::LogPrinter::new(style).with_hosts();
    let mut lines = remote
        .logs(LogsQuery {
            targets,
            lines: args.lines,
            follow: args.follow,
        })
        .await?;
    let mut all_ok = true;
    loop {
        let next = tokio::select! {
            next = lines.recv() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        match next {
            Some(Ok(entry)) => {
                if !printer.print(&entry) {
                    break;
                }
            }
            Some(Err(error)) => {
                eprintln!("error: {error}");
                all_ok = false;
            }
            None => break,
        }
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::failed("some hosts could not be reached"))
    }
}
