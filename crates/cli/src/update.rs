//! `fleet update`: replaces the running agent with the `fleet-agent` beside `fleet`
//! (or `--agent PATH`) without restarting any app. The agent checks the binary and
//! re-executes as it (the agent's `handoff`); this command then waits until the agent
//! answers again and says whether the new binary took over or refused (the previous
//! one then carries on, and the command exits 1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use fleet_proto::agent::v1 as pb;
use tokio::time::Instant;

use crate::{Failure, client, status_error};

/// How long the agent has to come back after accepting (an exec takes milliseconds;
/// a slow disk or a busy machine gets slack).
const COME_BACK_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(5);

pub async fn run(home: &Path, agent: Option<PathBuf>) -> Result<()> {
    let binary = new_binary(agent)?;
    let Some(mut client) = client::connect(home, false).await? else {
        println!(
            "no agent is running for {}; the next fleet command starts {}",
            home.display(),
            binary.display()
        );
        return Ok(());
    };
    let before = hello(&mut client).await?;
    if before.protocol_minor < fleet_proto::ops::HANDOFF.minor {
        return Err(Failure::failed(format!(
            "the running agent ({}) cannot be updated in place\nhint: `fleet kill` then any command starts the new agent (apps restart)",
            before.agent_version
        ))
        .into());
    }
    let started = Instant::now();
    let request = pb::UpdateRequest {
        agent_path: binary.display().to_string(),
    };
    let accepted = match client.update(request).await {
        Ok(response) => Some(response.into_inner()),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
            ) =>
        {
            return Err(status_error(status));
        }
        // The exec may close the connection before the answer is out: the agent's
        // own record below says how it went.
        Err(_) => None,
    };
    drop(client);
    let after = come_back(home, before.handoff_attempts, started).await?;
    let elapsed = started.elapsed();
    if after.handoffs > before.handoffs {
        let to = accepted.map_or(after.agent_version.clone(), |a| a.to_version);
        println!(
            "agent updated in {} ms: fleet-agent {} ({}) is now {} ({}), pid {} kept; no app restarted",
            elapsed.as_millis(),
            before.agent_version,
            before.agent_binary,
            to,
            after.agent_binary,
            after.agent_pid
        );
        return Ok(());
    }
    Err(Failure::failed(format!(
        "the new agent did not take over: {}\nthe previous agent ({}, pid {}) carries on; no app restarted",
        if after.handoff_error.is_empty() {
            "no reason given"
        } else {
            after.handoff_error.as_str()
        },
        after.agent_binary,
        after.agent_pid
    ))
    .into())
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

async fn hello(client: &mut client::Client) -> Result<pb::HelloResponse> {
    Ok(client
        .hello(fleet_proto::ops::hello_request())
        .await
        .map_err(status_error)?
        .into_inner())
}

/// Polls the agent until it reports the attempt after `attempts` as over.
async fn come_back(home: &Path, attempts: u32, started: Instant) -> Result<pb::HelloResponse> {
    let deadline = started + COME_BACK_TIMEOUT;
    loop {
        if let Ok(Some(mut client)) = client::connect(home, false).await
            && let Ok(hello) = hello(&mut client).await
            && hello.handoff_attempts > attempts
        {
            return Ok(hello);
        }
        if Instant::now() >= deadline {
            return Err(Failure::failed(format!(
                "the agent did not answer within {}s of the update\nhint: see {}",
                COME_BACK_TIMEOUT.as_secs(),
                home.join("agent.log").display()
            ))
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}
