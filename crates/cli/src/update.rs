//! `fleet update`: replaces the running agent with the `fleet-agent` beside `fleet`
//! (or `--agent PATH`) without restarting any app. The agent checks the binary and
//! re-executes as it (the agent's `handoff`); this command then waits until the agent
//! answers again and says whether the new binary took over or refused (the previous
//! one then carries on, and the command exits 1).

use std::path::{Path, PathBuf};

use anyhow::Result;
use fleet_proto::ops::{self, UpdateError};
use tokio::time::Instant;

use crate::{Failure, client};

pub async fn run(home: &Path, agent: Option<PathBuf>) -> Result<()> {
    let binary = new_binary(agent)?;
    let socket = home.join("agent.sock");
    if client::try_connect(&socket).await.is_err() {
        println!(
            "no agent is running for {}; the next fleet command starts {}",
            home.display(),
            binary.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    let connect = || async {
        client::try_connect(&socket)
            .await
            .map_err(|e| e.to_string())
    };
    match ops::update_agent(connect, &binary.display().to_string()).await {
        Ok(updated) => {
            println!(
                "agent updated in {} ms: fleet-agent {} ({}) is now {} ({}), pid {} kept; no app restarted",
                started.elapsed().as_millis(),
                updated.before.agent_version,
                updated.before.agent_binary,
                updated.version,
                updated.after.agent_binary,
                updated.after.agent_pid
            );
            Ok(())
        }
        Err(UpdateError::TooOld(version)) => Err(Failure::failed(format!(
            "the running agent ({version}) cannot be updated in place\nhint: `fleet kill` then any command starts the new agent (apps restart)"
        ))
        .into()),
        Err(UpdateError::HandedBack { reason }) => Err(Failure::failed(format!(
            "the new agent did not take over: {reason}\nthe previous agent carries on; no app restarted"
        ))
        .into()),
        Err(error @ UpdateError::Unreachable(_)) => Err(Failure::failed(format!(
            "{error}\nhint: see {}",
            home.join("agent.log").display()
        ))
        .into()),
        Err(UpdateError::Refused(reason)) => Err(Failure::failed(reason).into()),
    }
}

/// `--agent PATH`, else `fleet-agent` beside this executable or on `PATH`, as an
/// absolute path (the agent runs it, from its own working directory).
fn new_binary(agent: Option<PathBuf>) -> Result<PathBuf> {
    let candidate = match agent {
        Some(path) => path,
        None => {
            let found = client::agent_binary();
            if found.is_absolute() {
                found
            } else {
                which(&found).ok_or_else(|| {
                    Failure::failed(
                        "no fleet-agent beside fleet or on PATH\nhint: `fleet update --agent PATH`",
                    )
                })?
            }
        }
    };
    std::fs::canonicalize(&candidate).map_err(|e| {
        Failure::usage(format!(
            "cannot use {} as the new agent: {e}",
            candidate.display()
        ))
        .into()
    })
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
