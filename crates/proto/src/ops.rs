//! What every speaker of the protocols must agree on, written once: the agent
//! handshake and its version policy, the mapping from a fleet action to the agent
//! request that carries it out, how long each action may take on one host, and the
//! rolling-reload policy across hosts. The CLI (locally and over SSH), the controller
//! and the agent's controller link import these instead of keeping their own copies.

use std::future::Future;
use std::time::Duration;

use crate::agent::v1 as apb;
use crate::controller::v1 as cpb;
use apb::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// Start, stop, restart and scale on one host: they wait for instances to settle
/// (a stop for `kill_timeout`, PM2's 1.6 s default, a start for `min_uptime`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A reload on one host waits for every replacement instance to be ready, one after
/// another (`listen_timeout` each, PM2's 3 s default, and apps that take longer to
/// warm up); a deploy's reload also loads the release's config first. Five minutes
/// covers a host of many apps; it was 300 s over SSH, 60 s through the controller
/// and 600 s in a deploy before these shared one definition.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Instances replaced at once in a reload: PM2's reload goes one at a time.
pub const RELOAD_PARALLEL: u32 = 1;

/// How long `action` may take on one host before the caller gives up on that host.
pub fn timeout(action: cpb::Action) -> Duration {
    match action {
        cpb::Action::Reload => RELOAD_TIMEOUT,
        _ => COMMAND_TIMEOUT,
    }
}

/// The agent request that carries out a fleet action on one host.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentCall {
    Start(apb::StartRequest),
    Stop(apb::TargetRequest),
    Restart(apb::RestartRequest),
    Reload(apb::ReloadRequest),
    Scale(apb::ScaleRequest),
}

/// A controller URL is `https://host[:port]`: tokens never travel in cleartext, so
/// `http://` (or anything else) is refused before any connection.
pub fn check_controller_url(url: &str) -> Result<(), String> {
    match url.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(format!(
            "controller URL {url:?}: only https:// is accepted (tokens never travel in cleartext), like https://controller.example:7443"
        )),
    }
}

/// The most instances an app may have, checked wherever a count arrives (the agent,
/// the controller before it fans out). The same cap as `fleet_config::MAX_INSTANCES`.
pub const MAX_INSTANCES: u32 = 1024;

/// The largest answer a client takes from a controller (tonic's default is 4 MiB): a
/// `Status` costs about 130 bytes an instance, so 10,000 hosts of 10 apps are 13 MB,
/// and a peer holding 3,500 of them already passes 4 MiB. The controller is a server
/// the client authenticated.
pub const MAX_CONTROLLER_ANSWER_BYTES: usize = 256 << 20;

/// A scale count: `N`, `+N` or `-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleCount {
    Exactly(u32),
    More(u32),
    Fewer(u32),
}

/// Parses a scale count, bounded by `MAX_INSTANCES`.
pub fn parse_scale(count: &str) -> Result<ScaleCount, String> {
    let count = count.trim();
    let (kind, digits): (fn(u32) -> ScaleCount, &str) = match count.as_bytes().first() {
        Some(b'+') => (ScaleCount::More, &count[1..]),
        Some(b'-') => (ScaleCount::Fewer, &count[1..]),
        _ => (ScaleCount::Exactly, count),
    };
    let n: u32 = digits
        .parse()
        .map_err(|_| format!("invalid instance count {count:?}: expected N, +N or -N"))?;
    if n > MAX_INSTANCES {
        return Err(format!(
            "invalid instance count {count:?}: an app has at most {MAX_INSTANCES} instances"
        ));
    }
    Ok(kind(n))
}

/// Why an action cannot become an agent request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no action: start, stop, restart, reload or scale")]
    NoAction,
    #[error("scale needs an app and a count: N, +N or -N")]
    ScaleWithoutCount,
    #[error("{0}")]
    BadCount(String),
}

/// `action` on `targets` (for `scale`, the first target is the app and `count` is
/// `N`, `+N` or `-N`), as the agent request that does it.
pub fn agent_call(
    action: cpb::Action,
    targets: Vec<String>,
    count: &str,
) -> Result<AgentCall, CallError> {
    Ok(match action {
        cpb::Action::Unspecified => return Err(CallError::NoAction),
        cpb::Action::Start => AgentCall::Start(apb::StartRequest {
            targets,
            ..Default::default()
        }),
        cpb::Action::Stop => AgentCall::Stop(apb::TargetRequest { targets }),
        cpb::Action::Restart => AgentCall::Restart(apb::RestartRequest {
            targets,
            ..Default::default()
        }),
        cpb::Action::Reload => AgentCall::Reload(reload_request(targets)),
        cpb::Action::Scale => {
            let app = targets.into_iter().next().unwrap_or_default();
            if app.is_empty() || count.is_empty() {
                return Err(CallError::ScaleWithoutCount);
            }
            parse_scale(count).map_err(CallError::BadCount)?;
            AgentCall::Scale(apb::ScaleRequest {
                app,
                count: count.to_string(),
            })
        }
    })
}

/// A readiness-gated reload of `targets`, one instance at a time.
pub fn reload_request(targets: Vec<String>) -> apb::ReloadRequest {
    apb::ReloadRequest {
        targets,
        parallel: RELOAD_PARALLEL,
        ..Default::default()
    }
}

/// The action's name in the audit log and in messages.
pub fn action_name(action: cpb::Action) -> &'static str {
    match action {
        cpb::Action::Unspecified => "unspecified",
        cpb::Action::Start => "start",
        cpb::Action::Stop => "stop",
        cpb::Action::Restart => "restart",
        cpb::Action::Reload => "reload",
        cpb::Action::Scale => "scale",
    }
}

/// Whether `action` rolls across hosts (one after another, stopping at the first
/// failure) rather than running on every host at once. A reload rolls, as PM2's
/// reload goes one instance after another: a bad release then reaches one host, not
/// all of them.
pub fn rolls(action: cpb::Action) -> bool {
    action == cpb::Action::Reload
}

/// The error of a host a rolling action did not reach.
pub const NOT_REACHED: &str = "not reloaded: an earlier host failed";

/// Runs `run` on every host with `action`'s policy: all at once, or rolling (see
/// `rolls`), in which case hosts after a failure get `skipped(host)`. Results come
/// back in the order of `hosts`.
pub async fn fan_out<H, T, F, Fut>(
    action: cpb::Action,
    hosts: Vec<H>,
    run: F,
    failed: impl Fn(&T) -> bool,
    skipped: impl Fn(H) -> T,
) -> Vec<T>
where
    H: Send + 'static,
    T: Send + 'static,
    F: Fn(H) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let mut results = Vec::with_capacity(hosts.len());
    if rolls(action) {
        let mut stopped = false;
        for host in hosts {
            if stopped {
                results.push(skipped(host));
                continue;
            }
            let result = run(host).await;
            stopped = failed(&result);
            results.push(result);
        }
        return results;
    }
    let tasks: Vec<_> = hosts
        .into_iter()
        .map(|host| tokio::spawn(run(host)))
        .collect();
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            // A panicking host task is a bug; its host's result is lost, the others not.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    results
}

/// Why the handshake with an agent failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The agent refused or could not answer `Hello`.
    #[error("agent: {message}")]
    Refused { code: tonic::Code, message: String },
    /// The agent speaks an older minor version than the caller needs.
    #[error(
        "the agent there ({agent_version}) is too old to {what}\nhint: run `fleet deploy <stage> setup` to install the matching agent, then restart it"
    )]
    TooOld {
        agent_version: String,
        what: &'static str,
    },
}

/// The `Hello` every client sends first.
pub fn hello_request() -> apb::HelloRequest {
    apb::HelloRequest {
        protocol_major: apb::PROTOCOL_MAJOR,
        protocol_minor: apb::PROTOCOL_MINOR,
        client_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// What a caller needs of the agent's protocol beyond the major version (which the
/// agent itself checks): a minor version and what it is needed for.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub minor: u32,
    pub what: &'static str,
}

/// Any 1.x agent.
pub const ANY_MINOR: Needs = Needs {
    minor: 0,
    what: "answer",
};

/// 1.1: `ReloadRequest.config_path` (a deploy has the agent load a release's config).
pub const RELEASE_CONFIG: Needs = Needs {
    minor: 1,
    what: "apply a release's config",
};

/// 1.5: `Update`, the agent replaced without restarting apps (`fleet update`).
pub const HANDOFF: Needs = Needs {
    minor: 5,
    what: "be updated in place",
};

/// How long an updated agent has to answer again (an exec takes milliseconds).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(15);

/// How `update_agent` went.
#[derive(Debug)]
pub struct Updated {
    pub before: apb::HelloResponse,
    pub after: apb::HelloResponse,
    /// The new binary's version, as it answered the agent's check.
    pub version: String,
}

/// Why `update_agent` did not update.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The agent predates `Update` (protocol 1.5).
    #[error("the running agent ({0}) cannot be updated in place")]
    TooOld(String),
    /// The agent refused before changing anything: the binary does not run or does
    /// not take this agent's state, or a reload is in progress.
    #[error("{0}")]
    Refused(String),
    /// The new binary refused the handoff; the previous agent carries on.
    #[error("the new agent did not take over: {reason}; the previous agent carries on")]
    HandedBack { reason: String },
    #[error("{0}")]
    Unreachable(String),
}

/// Replaces the running agent with the binary at `path` (on the agent's host) without
/// restarting any app: `Update`, then `Hello` until the agent reports the attempt as
/// over. `connect` opens a new channel to the agent each time (the exec cuts the old
/// one). Shared by `fleet update` and `fleet deploy <stage> setup`.
pub async fn update_agent<F, Fut>(connect: F, path: &str) -> Result<Updated, UpdateError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Channel, String>>,
{
    let unreachable = |e: String| UpdateError::Unreachable(e);
    let channel = connect().await.map_err(unreachable)?;
    let (mut client, before) = handshake(channel, ANY_MINOR)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if before.protocol_minor < HANDOFF.minor {
        return Err(UpdateError::TooOld(before.agent_version));
    }
    let started = tokio::time::Instant::now();
    let request = apb::UpdateRequest {
        agent_path: path.to_string(),
    };
    // The agent checks the binary (up to 10 s) and waits out a reload (up to 10 s).
    let answer = tokio::time::timeout(Duration::from_secs(30), client.update(request)).await;
    let answer = answer.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
    let version = match answer {
        Ok(answer) => Some(answer.into_inner().to_version),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
            ) =>
        {
            return Err(UpdateError::Refused(status.message().to_string()));
        }
        // The exec may cut the connection before the answer is out: the agent's
        // record says how it went.
        Err(_) => None,
    };
    drop(client);
    let deadline = started + UPDATE_TIMEOUT;
    let hello = || async {
        let channel = connect().await.ok()?;
        handshake(channel, ANY_MINOR)
            .await
            .ok()
            .map(|(_, hello)| hello)
    };
    loop {
        // Each try is bounded: a connection the previous image accepted just before
        // its exec must not hold the wait.
        if let Ok(Some(after)) = tokio::time::timeout(Duration::from_secs(2), hello()).await
            && after.handoff_attempts > before.handoff_attempts
        {
            if after.handoffs > before.handoffs {
                let version = version.unwrap_or_else(|| after.agent_version.clone());
                return Ok(Updated {
                    before,
                    after,
                    version,
                });
            }
            return Err(UpdateError::HandedBack {
                reason: if after.handoff_error.is_empty() {
                    "no reason given".into()
                } else {
                    after.handoff_error
                },
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(unreachable(format!(
                "the agent did not answer within {}s of the update",
                UPDATE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Says `Hello` over `channel` and applies the version policy: the agent refuses
/// another major version, and the caller refuses an agent older than `needs`.
pub async fn handshake(
    channel: Channel,
    needs: Needs,
) -> Result<(AgentServiceClient<Channel>, apb::HelloResponse), HandshakeError> {
    let mut client = AgentServiceClient::new(channel);
    let hello = client
        .hello(hello_request())
        .await
        .map_err(|status| HandshakeError::Refused {
            code: status.code(),
            message: status.message().to_string(),
        })?
        .into_inner();
    if hello.protocol_minor < needs.minor {
        return Err(HandshakeError::TooOld {
            agent_version: hello.agent_version,
            what: needs.what,
        });
    }
    Ok((client, hello))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_maps_to_one_agent_request() {
        let targets = vec!["api".to_string()];
        assert!(matches!(
            agent_call(cpb::Action::Start, targets.clone(), ""),
            Ok(AgentCall::Start(r)) if r.targets == targets
        ));
        assert!(matches!(
            agent_call(cpb::Action::Stop, targets.clone(), ""),
            Ok(AgentCall::Stop(r)) if r.targets == targets
        ));
        assert!(matches!(
            agent_call(cpb::Action::Restart, targets.clone(), ""),
            Ok(AgentCall::Restart(r)) if r.targets == targets
        ));
        assert!(matches!(
            agent_call(cpb::Action::Reload, targets.clone(), ""),
            Ok(AgentCall::Reload(r)) if r.targets == targets && r.parallel == 1
        ));
        assert_eq!(
            agent_call(cpb::Action::Scale, targets.clone(), "+2"),
            Ok(AgentCall::Scale(apb::ScaleRequest {
                app: "api".into(),
                count: "+2".into()
            }))
        );
        assert_eq!(
            agent_call(cpb::Action::Scale, targets, ""),
            Err(CallError::ScaleWithoutCount)
        );
        assert_eq!(
            agent_call(cpb::Action::Unspecified, Vec::new(), ""),
            Err(CallError::NoAction)
        );
    }

    #[test]
    fn only_a_reload_rolls_and_waits_longer() {
        assert!(rolls(cpb::Action::Reload));
        assert_eq!(timeout(cpb::Action::Reload), RELOAD_TIMEOUT);
        for action in [
            cpb::Action::Start,
            cpb::Action::Stop,
            cpb::Action::Restart,
            cpb::Action::Scale,
        ] {
            assert!(!rolls(action));
            assert_eq!(timeout(action), COMMAND_TIMEOUT);
        }
    }

    #[tokio::test]
    async fn a_rolling_action_stops_at_the_first_failed_host() {
        let hosts = vec![1, 2, 3, 4];
        let results = fan_out(
            cpb::Action::Reload,
            hosts,
            |host| async move { if host == 2 { Err(host) } else { Ok(host) } },
            |result| result.is_err(),
            |host| Err(-host),
        )
        .await;
        assert_eq!(results, vec![Ok(1), Err(2), Err(-3), Err(-4)]);
    }

    #[tokio::test]
    async fn a_parallel_action_reaches_every_host_in_order() {
        let results = fan_out(
            cpb::Action::Restart,
            vec![1, 2, 3],
            |host| async move { if host == 1 { Err(host) } else { Ok(host) } },
            |result| result.is_err(),
            |host| Err(-host),
        )
        .await;
        assert_eq!(results, vec![Err(1), Ok(2), Ok(3)]);
    }
}
