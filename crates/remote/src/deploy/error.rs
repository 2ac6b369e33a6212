//! What can go wrong in a deploy: `StepError` for one host's step (SSH, the step's
//! exit status with the tail of its output, the agent, a timeout, the lock), and
//! `DeployError` for the deploy as a whole. Callers choose exit codes from the
//! variants; the messages carry what a user needs (the host is in its own column).

use std::time::Duration;

use crate::ssh::{ExecOutput, SshError};

/// Lines of a failed step's output kept in its error.
const TAIL_LINES: usize = 5;

/// Why one host's step failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StepError {
    /// Reaching the host failed (connect, host key, authentication, channel).
    #[error("{}", ssh_message(.0))]
    Ssh(SshError),
    /// The step ran and failed: its exit status and the last lines of its output.
    #[error("{}", exit_message(.tail, .status))]
    Exit { status: ExitStatus, tail: String },
    /// The host's agent refused or failed (its message as it gave it).
    #[error("{0}")]
    Agent(String),
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// Another deploy holds the host's lock.
    #[error(
        "locked by {owner} (pid {pid}) since {since}: {reason}\nhint: wait for that deploy to end; if it is gone, `fleet deploy {stage} unlock`"
    )]
    Locked {
        owner: String,
        pid: String,
        since: String,
        reason: String,
        stage: String,
    },
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
    #[error("the deploy lock was removed by someone else (fleet deploy unlock?)")]
    LockLost,
    /// Instances that are not online after the reload.
    #[error("{0}")]
    Unhealthy(String),
    /// The host is not as the step needs it (a release missing, a bad FLEET_HOME).
    #[error("{0}")]
    Host(String),
    #[error("controller: {0}")]
    Controller(String),
}

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal(String),
    /// The connection ended before the command did.
    Unknown,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit status {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by {signal}"),
            ExitStatus::Unknown => f.write_str("the connection ended before the command did"),
        }
    }
}

impl StepError {
    /// A step that ran and did not succeed: stderr (else stdout), last lines.
    pub fn exit(output: &ExecOutput) -> StepError {
        let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            String::from_utf8_lossy(&output.stderr).into_owned()
        } else {
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        let status = match (&output.exit_status, &output.exit_signal) {
            (Some(code), _) => ExitStatus::Code(*code),
            (None, Some(signal)) => ExitStatus::Signal(signal.clone()),
            (None, None) => ExitStatus::Unknown,
        };
        StepError::Exit { status, tail }
    }
}

fn exit_message(tail: &str, status: &ExitStatus) -> String {
    if tail.is_empty() {
        status.to_string()
    } else {
        format!("{tail} ({status})")
    }
}

/// An SSH error on one line for the summary: without the host, which has its column.
fn ssh_message(error: &SshError) -> String {
    let text = error.to_string();
    let host = error.host();
    text.strip_prefix(&format!("{host}: "))
        .unwrap_or(&text)
        .to_string()
}

/// Why a deploy could not run at all (before or outside any host's steps).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The stage, a ref, a path or a flag is wrong: nothing was sent to any host.
    #[error("{0}")]
    Config(String),
    /// Something on this machine failed (the repository, a local hook, a file).
    #[error("{0}")]
    Local(String),
    /// A host that every host depends on failed (resolving a ref, finding a release
    /// present on every host).
    #[error("{host}: {message}")]
    Host { host: String, message: String },
    /// Nothing the user can act on other than fixing the deploy's input.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_keeps_the_last_lines_of_stderr_and_its_status() {
        let output = ExecOutput {
            stdout: b"ignored\n".to_vec(),
            stderr: b"1\n2\n\n3\n4\n5\n6\n".to_vec(),
            exit_status: Some(3),
            ..Default::default()
        };
        assert_eq!(
            StepError::exit(&output).to_string(),
            "2\n3\n4\n5\n6 (exit status 3)"
        );
        let killed = ExecOutput {
            exit_signal: Some("KILL".into()),
            ..Default::default()
        };
        assert_eq!(StepError::exit(&killed).to_string(), "killed by KILL");
        assert_eq!(
            StepError::exit(&ExecOutput::default()).to_string(),
            "the connection ended before the command did"
        );
    }
}
