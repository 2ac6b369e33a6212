//! `fleet deploy [config] <stage> [action...]`: parses the action words (PM2's),
//! runs `fleet_remote::deploy` with its events drawn by `progress`, and prints the
//! outcome: the summary table (or `--json`), release listings, `exec` output,
//! `unlock` results. Exit 1 when a host failed, 2 for bad input.

use std::path::PathBuf;

use fleet_remote::deploy::{
    self, Action, DeployError, Events, Interrupt, Outcome, Releases, Report,
};
use serde_json::json;

use crate::progress::Progress;
use crate::{DeployArgs, Failure};

type Result<T> = std::result::Result<T, Failure>;

const USAGE: &str =
    "usage: fleet deploy <stage> [setup|update|revert [n]|list|curr|prev|exec <cmd>|unlock]";

impl From<DeployError> for Failure {
    fn from(error: DeployError) -> Failure {
        match error {
            DeployError::Config(message) => Failure::usage(message),
            DeployError::Stage(error) => error.into(),
            other => Failure::failed(other.to_string()),
        }
    }
}

/// `[action] [args...]` after the stage, PM2's words.
pub fn parse_action(words: &[String]) -> Result<Action> {
    let usage = |m: String| Failure::usage(format!("{m}\n{USAGE}"));
    let Some((first, rest)) = words.split_first() else {
        return Ok(Action::Update);
    };
    let no_args = |action: Action| {
        if rest.is_empty() {
            Ok(action)
        } else {
            Err(usage(format!("`{first}` takes no arguments, got {rest:?}")))
        }
    };
    match first.as_str() {
        "setup" => no_args(Action::Setup),
        "update" => no_args(Action::Update),
        "list" => no_args(Action::List),
        "curr" | "current" => no_args(Action::Curr),
        "prev" | "previous" => no_args(Action::Prev),
        "unlock" => no_args(Action::Unlock),
        "revert" => match rest {
            [] => Ok(Action::Revert(1)),
            [n] => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Action::Revert(n)),
                _ => Err(usage(format!("revert takes a number from 1 up, got {n:?}"))),
            },
            _ => Err(usage("revert takes at most one number".to_string())),
        },
        "exec" | "run" if rest.is_empty() => Err(usage("exec needs a command".to_string())),
        "exec" | "run" => Ok(Action::Exec(rest.join(" "))),
        other => Err(usage(format!("unknown deploy action {other:?}"))),
    }
}

pub async fn run(args: DeployArgs, ssh: fleet_remote::ssh::SshChoices) -> Result<()> {
    let mut words = vec![args.stage];
    words.extend(args.action);
    // PM2's `pm2 deploy ecosystem.config.js production`: the config file first.
    let first = PathBuf::from(&words[0]);
    let explicit = (words.len() >= 2 && first.is_file() && fleet_config::is_config_file(&first))
        .then(|| {
            words.remove(0);
            first
        });
    let stage_name = words.remove(0);
    let stage = match &explicit {
        Some(path) => fleet_remote::stage::find_in(path, &stage_name)?,
        None => fleet_remote::stage::find(&stage_name)?,
    };
    let stage = stage.ok_or_else(|| {
        Failure::usage(format!(
            "no stage {stage_name:?}: the config file has no [deploy.{stage_name}]\nhint: fleet deploy reads fleet.toml or ecosystem.config.js in the current directory, FLEET_CONFIG, or a config file given first"
        ))
    })?;
    if let Some(word) = words.first().map(String::as_str)
        && matches!(word, "attach" | "cancel" | "history")
    {
        return crate::deploy_controller::run_word(&stage, &words, args.json).await;
    }
    let action = parse_action(&words)?;
    let options = deploy::Options {
        git_ref: args.git_ref,
        no_rollback: args.no_rollback,
        reason: args.reason,
        ssh,
        ..deploy::Options::default()
    };
    if stage.controller.is_some() && matches!(action, Action::Update | Action::Revert(_)) {
        return crate::deploy_controller::submit(stage, action, options, args.json).await;
    }
    let hosts = stage.config.targets().into_iter().map(|t| t.host).collect();
    let progress = Progress::new(hosts);
    let (events, stream) = Events::channel();
    let drawing = tokio::spawn(progress.draw(stream));
    let interrupt = Interrupt::new();
    let watcher = tokio::spawn(watch_ctrl_c(interrupt.clone()));
    let finished = deploy::run(stage, action, options, events, interrupt).await;
    watcher.abort();
    // The deploy dropped its sender: the drawing ends once every event is drawn.
    if let Ok(progress) = drawing.await {
        progress.finish();
    }
    let result = finished
        .outcome
        .map_err(Failure::from)
        .and_then(|outcome| print(outcome, args.json));
    for warning in finished.warnings {
        eprintln!("warning: {warning}");
    }
    result
}

/// Ctrl-C: the steps in progress finish, no new one starts, hosts go back and unlock.
/// A second Ctrl-C quits at once (locks then expire after lock_ttl on the hosts).
async fn watch_ctrl_c(interrupt: Interrupt) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupt.interrupt();
    eprintln!(
        "interrupted: finishing the steps in progress, then going back and unlocking (Ctrl-C again to quit now)"
    );
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn print(outcome: Outcome, json: bool) -> Result<()> {
    match outcome {
        Outcome::Report(report) => print_report(&report, json),
        Outcome::Releases(releases) => print_releases(&releases, json),
        Outcome::Exec(results) => {
            let mut failed = Vec::new();
            for result in results {
                let host = result.host;
                match result.result {
                    Ok(output) => {
                        for line in String::from_utf8_lossy(&output.stdout).lines() {
                            println!("{host} | {line}");
                        }
                        for line in String::from_utf8_lossy(&output.stderr).lines() {
                            eprintln!("{host} | {line}");
                        }
                        if !output.success() {
                            let error = deploy::StepError::exit(&output);
                            failed.push(format!("{host} ({error})"));
                        }
                    }
                    Err(error) => failed.push(format!("{host} ({error})")),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::failed(format!(
                    "exec failed on {}",
                    failed.join(", ")
                )))
            }
        }
        Outcome::Unlock(results) => {
            let mut failed = Vec::new();
            for result in results {
                match result.result {
                    Ok(Some(owner)) => println!("{}: removed the lock of {owner}", result.host),
                    Ok(None) => println!("{}: not locked", result.host),
                    Err(error) => failed.push(format!("{} ({error})", result.host)),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::failed(format!(
                    "unlock failed on {}",
                    failed.join(", ")
                )))
            }
        }
    }
}

pub(crate) fn print_report(report: &Report, json: bool) -> Result<()> {
    if json {
        let value = serde_json::to_value(report).unwrap_or_default();
        println!("{value:#}");
    } else {
        println!("{}", crate::output::deploy_summary(&report.hosts));
        println!(
            "{} {}{} in {:.1}s{}",
            if report.ok { "✓" } else { "✗" },
            report.action,
            report
                .release
                .as_ref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default(),
            report.duration_ms as f64 / 1000.0,
            if report.rolled_back {
                ": rolled back, every host that was switched is on its previous release"
            } else {
                ""
            }
        );
    }
    if let Some(error) = &report.audit_error {
        eprintln!("warning: the controller did not record this deploy: {error}");
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::failed(report.failure_message()))
    }
}

fn print_releases(releases: &Releases, json: bool) -> Result<()> {
    let mut all_ok = true;
    let mut json_hosts = Vec::new();
    for (host, result) in &releases.hosts {
        match result {
            Err(error) => {
                all_ok = false;
                eprintln!("error: {host}: {error}");
                json_hosts.push(json!({"host": host, "reachable": false, "error": error.to_string()}));
            }
            Ok(state) => json_hosts.push(json!({
                "host": host,
                "current": state.current,
                "previous": state.previous,
                "releases": state.releases.iter().map(|(id, commit)| json!({"id": id, "commit": commit})).collect::<Vec<_>>(),
                "locked_by": state.lock,
            })),
        }
    }
    if json {
        println!("{:#}", serde_json::Value::Array(json_hosts));
    } else {
        println!("{}", crate::output::releases_table(releases));
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::failed("some hosts could not be reached"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn deploy_actions_take_pm2_words() {
        assert_eq!(parse_action(&[]).ok(), Some(Action::Update));
        assert_eq!(parse_action(&words("revert")).ok(), Some(Action::Revert(1)));
        assert_eq!(
            parse_action(&words("revert 3")).ok(),
            Some(Action::Revert(3))
        );
        assert_eq!(parse_action(&words("current")).ok(), Some(Action::Curr));
        assert_eq!(
            parse_action(&words("exec ls -la")).ok(),
            Some(Action::Exec("ls -la".into()))
        );
        for bad in ["revert 0", "revert x", "list now", "exec", "dance"] {
            let failure = parse_action(&words(bad)).expect_err(bad);
            assert_eq!(failure.code, 2, "{bad}");
            assert!(
                failure.message.ends_with(USAGE),
                "{bad}: {}",
                failure.message
            );
        }
    }
}
