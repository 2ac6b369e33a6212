//! The agent's link to a controller: `fleet-agent join` trades a one-time token for a
//! certificate (the key is generated here and never leaves the host), and `run` keeps
//! one mTLS session open: hello and a full snapshot first, then deltas when instances
//! change, metrics with each heartbeat, and commands and log subscriptions from the
//! controller. It reconnects with jittered backoff and never stops the agent from
//! supervising: apps keep running while the controller is away.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cpb::agent_link_client::AgentLinkClient;
use fleet_proto::agent::v1 as apb;
use fleet_proto::controller::v1 as cpb;
use fleet_proto::ops;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

mod config;

pub use config::LinkConfig;

use crate::error::AgentError;
use crate::operations::Operations;
use crate::store::Home;
use crate::supervisor::{Handle, Reply, Request};

/// First reconnect delay; doubled per round of failures (every controller known tried
/// once) up to `RECONNECT_MAX`, with jitter so a restarted controller is not hit by
/// every agent at once.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Between two controllers of one round, jittered down to a tenth: short, so an agent
/// whose controller died is back through another well within the 10 s the issue
/// allows, and spread, so its thousands of agents do not arrive in one instant.
const NEXT_CONTROLLER: Duration = Duration::from_secs(1);
/// HTTP/2 pings on the session, and how long one may go unanswered: a controller whose
/// machine or link died (no RST comes) is left within about 5 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connecting to one controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The most controllers remembered (a store's controllers are a handful).
const MAX_CONTROLLERS: usize = 32;
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Until the controller's `welcome` says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the host's metrics may go to the controller (sampled every 5 s).
const HOST_METRICS_INTERVAL: Duration = Duration::from_secs(10);
/// Log lines are sent in batches of at most this many, closed this long after their
/// first line.
const LOG_BATCH_LINES: usize = 256;
const LOG_BATCH_WAIT: Duration = Duration::from_millis(20);

fn tls(url: &str, ca_pem: &str) -> anyhow::Result<ClientTlsConfig> {
    // The one crypto backend, installed only by agents that talk to a controller: an
    // agent without one never pays for initialising it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let uri: tonic::transport::Uri = url
        .parse()
        .with_context(|| format!("bad controller url {url}"))?;
    let domain = uri
        .host()
        .context("the controller url has no host")?
        .to_string();
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain))
}

/// The join token for `fleet-agent join`: from `file` (`-`: stdin), else from
/// `FLEET_JOIN_TOKEN`, else from stdin (asked for without echo on a terminal). Bounded:
/// a token is a short line.
pub fn read_join_token(file: Option<&Path>) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Read};
    const MAX_TOKEN_BYTES: u64 = 4096;
    let from_stdin = || -> anyhow::Result<String> {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        let echo = terminal.then(|| {
            eprint!("join token: ");
            no_echo(&stdin)
        });
        let mut text = String::new();
        let read = stdin.lock().take(MAX_TOKEN_BYTES).read_line(&mut text);
        if let Some(Some(saved)) = echo {
            let _ =
                nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &saved);
            eprintln!();
        }
        read.context("cannot read the join token from stdin")?;
        Ok(text)
    };
    let text = match file {
        Some(path) if path == Path::new("-") => from_stdin()?,
        Some(path) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_TOKEN_BYTES).read_to_string(&mut text))
                .with_context(|| format!("cannot read the join token from {}", path.display()))?;
            text
        }
        None => match std::env::var("FLEET_JOIN_TOKEN") {
            Ok(token) => token,
            Err(_) => from_stdin()?,
        },
    };
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!(
            "no join token given\nhint: `fleet-controller join-token <host>` makes one; give it on stdin, with --token-file FILE, or in FLEET_JOIN_TOKEN"
        );
    }
    Ok(token.to_string())
}

/// Turns the terminal's echo off, returning what to restore.
fn no_echo(stdin: &std::io::Stdin) -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let saved = tcgetattr(stdin).ok()?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
    Some(saved)
}

/// `fleet-agent join <url>`: enrolls this agent as `host` with a join `token`.
/// With `rejoin`, a host that joined before gets a new certificate and its previous
/// one stops working.
pub async fn join(
    home: &Home,
    url: &str,
    token: &str,
    host: &str,
    ca: &Path,
    rejoin: bool,
) -> anyhow::Result<()> {
    fleet_proto::ops::check_controller_url(url).map_err(anyhow::Error::msg)?;
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("cannot read the controller's CA {}", ca.display()))?;
    let (key, csr) = key_and_csr(host)?;
    let channel = Endpoint::from_shared(url.to_string())?
        .tls_config(tls(url, &ca_pem)?)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))?;
    let response = AgentLinkClient::new(channel)
        .join(cpb::JoinRequest {
            token: token.to_string(),
            host: host.to_string(),
            csr_pem: csr,
            protocol_major: cpb::PROTOCOL_MAJOR,
            rejoin,
        })
        .await
        .map_err(|status| anyhow::anyhow!("the controller refused to join: {}", status.message()))?
        .into_inner();
    let mut config = LinkConfig {
        url: url.to_string(),
        host: host.to_string(),
        ca_pem: response.ca_pem,
        cert_pem: response.certificate_pem,
        key_pem: key.serialize_pem(),
        controllers: Vec::new(),
    };
    config.save(home)?;
    // The controllers sharing the store (1.7; an older controller's welcome says).
    config.save_controllers(home, &response.controllers);
    Ok(())
}

/// A new key for this agent, and a CSR for `host` signed with it.
fn key_and_csr(host: &str) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate().context("cannot generate the agent key")?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Keeps a session with the controller open until the agent stops. Each session
/// starts from the settings on disk, which a renewal rewrites.
pub async fn run(home: Home, config: LinkConfig, operations: Operations, handle: Handle) {
    let mut attempt: u32 = 0;
    let mut config = config;
    // The next controller to try among the candidates.
    let mut next = 0usize;
    loop {
        let started = tokio::time::Instant::now();
        if let Ok(Some(saved)) = LinkConfig::load(&home) {
            config = saved;
        }
        let candidates = config.candidates();
        let url = candidates[next % candidates.len()].clone();
        match session(&home, &mut config, &url, &operations, &handle).await {
            Ok(()) => tracing::info!(%url, "controller closed the session"),
            Err(error) => {
                tracing::warn!(%url, error = %format!("{error:#}"), "controller session failed")
            }
        }
        if started.elapsed() >= STABLE_SESSION {
            attempt = 0;
        }
        // Another controller next (after a session that lasted, or within a round);
        // the backoff only once a whole round failed.
        next = (next + 1) % candidates.len();
        if started.elapsed() >= STABLE_SESSION || next != 0 {
            tokio::time::sleep(jittered(NEXT_CONTROLLER, 0.1)).await;
            continue;
        }
        let exp = RECONNECT_MIN
            .saturating_mul(1 << attempt.min(10))
            .min(RECONNECT_MAX);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(jittered(exp, 0.5)).await;
    }
}

/// `delay` times a factor in [`low`, 1], from the clock's nanoseconds: enough to spread
/// thousands of agents turning to the same controllers at once.
fn jittered(delay: Duration, low: f64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay.mul_f64(low + (1.0 - low) * f64::from(nanos % 1000) / 1000.0)
}

/// The process list as the controller sees it: the enrolled host name, not the
/// machine's hostname (several test-bed hosts share one kernel hostname).
async fn snapshot(handle: &Handle, host: &str) -> HashMap<u32, apb::ProcessInfo> {
    match handle
        .call(Request::List {
            targets: Vec::new(),
            details: false,
        })
        .await
    {
        Ok(Reply::Views(views)) => views
            .iter()
            .map(|v| (v.id, crate::operations::process_info(v, host)))
            .collect(),
        _ => HashMap::new(),
    }
}

/// Two infos differ in what a status change is about (not the ever-moving metrics).
fn same_state(a: &apb::ProcessInfo, b: &apb::ProcessInfo) -> bool {
    let strip = |p: &apb::ProcessInfo| apb::ProcessInfo {
        cpu_percent: 0.0,
        memory_bytes: 0,
        uptime_ms: None,
        ..p.clone()
    };
    strip(a) == strip(b)
}

async fn session(
    home: &Home,
    config: &mut LinkConfig,
    url: &str,
    operations: &Operations,
    handle: &Handle,
) -> anyhow::Result<()> {
    let identity = Identity::from_pem(&config.cert_pem, &config.key_pem);
    let channel = Endpoint::from_shared(url.to_owned())?
        .tls_config(tls(url, &config.ca_pem)?.identity(identity))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let (tx, rx) = mpsc::channel::<cpb::AgentMessage>(256);
    let send = |body| cpb::AgentMessage { body: Some(body) };
    tx.send(send(cpb::agent_message::Body::Hello(cpb::AgentHello {
        protocol_major: cpb::PROTOCOL_MAJOR,
        protocol_minor: cpb::PROTOCOL_MINOR,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        host: config.host.clone(),
        boot_id: boot_id(),
    })))
    .await?;
    let mut sent = Sent::default();
    let first = sent.snapshot(snapshot(handle, &config.host).await);
    tx.send(send(first)).await?;

    let mut inbound = AgentLinkClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|status| {
            anyhow::anyhow!("the controller refused the session: {}", status.message())
        })?
        .into_inner();
    let mut heartbeat = DEFAULT_HEARTBEAT;
    let Some(cpb::ControllerMessage {
        body: Some(cpb::controller_message::Body::Welcome(welcome)),
    }) = inbound.message().await?
    else {
        bail!("the controller did not welcome this agent");
    };
    let Welcomed {
        host_metrics,
        mut renewing,
    } = welcomed(home, config, &welcome, &tx).await?;
    if welcome.heartbeat_interval_ms > 0 {
        heartbeat = Duration::from_millis(welcome.heartbeat_interval_ms);
    }
    tracing::info!(%url, host = %config.host, "connected to the controller");

    let mut changes = handle.changes();
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let mut subscriptions = Subscriptions::default();
    let mut host_tick = tokio::time::interval(HOST_METRICS_INTERVAL);
    let mut host_sent_at = 0;
    let result = loop {
        let body = tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(anyhow::anyhow!("{}", status.message())),
                };
                match &message.body {
                    Some(cpb::controller_message::Body::Renewed(renewed)) => {
                        match renewing.take() {
                            Some(key) => save_renewed(home, config, renewed, &key),
                            None => tracing::warn!("a certificate nobody asked for; ignored"),
                        }
                        continue;
                    }
                    Some(cpb::controller_message::Body::Controllers(set)) => {
                        config.save_controllers(home, &set.urls);
                        continue;
                    }
                    _ => {}
                }
                let resync = subscriptions.dispatch(message, operations, &tx, &config.host);
                if !resync {
                    continue;
                }
                sent.snapshot(snapshot(handle, &config.host).await)
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                // A state change: send what changed now, metrics wait for the heartbeat.
                match sent.state_delta(snapshot(handle, &config.host).await) {
                    Some(body) => body,
                    None => continue,
                }
            }
            _ = tick.tick() => sent.heartbeat(snapshot(handle, &config.host).await),
            _ = host_tick.tick(), if host_metrics => {
                // At most one every `HOST_METRICS_INTERVAL`, and only a new sample.
                match handle.host_metrics() {
                    Some(metrics) if metrics.at_unix_ms != host_sent_at => {
                        host_sent_at = metrics.at_unix_ms;
                        cpb::agent_message::Body::HostMetrics(metrics)
                    }
                    _ => continue,
                }
            }
        };
        if tx.send(send(body)).await.is_err() {
            break Ok(());
        }
    };
    subscriptions.abort_all();
    result
}

/// What a welcome settled for the session.
struct Welcomed {
    /// Host metrics go only to a controller that reads them (1.3 and later).
    host_metrics: bool,
    /// The key of a renewal asked for, until its certificate comes.
    renewing: Option<rcgen::KeyPair>,
}

/// Takes in the controller's welcome: the controllers to turn to, and a renewal of the
/// certificate asked for when it says so.
async fn welcomed(
    home: &Home,
    config: &mut LinkConfig,
    welcome: &cpb::Welcome,
    tx: &mpsc::Sender<cpb::AgentMessage>,
) -> anyhow::Result<Welcomed> {
    config.save_controllers(home, &welcome.controllers);
    let host_metrics = welcome.protocol_major == cpb::PROTOCOL_MAJOR && welcome.protocol_minor >= 3;
    let mut renewing = None;
    if welcome.renew_certificate {
        let (key, csr_pem) = key_and_csr(&config.host)?;
        tx.send(cpb::AgentMessage {
            body: Some(cpb::agent_message::Body::Renew(cpb::RenewRequest {
                csr_pem,
            })),
        })
        .await?;
        renewing = Some(key);
        tracing::info!("the certificate expires soon; asked the controller for a new one");
    }
    Ok(Welcomed {
        host_metrics,
        renewing,
    })
}

/// Keeps a renewed certificate and its key: the next session uses them (this one
/// already stands on the new serial).
fn save_renewed(
    home: &Home,
    config: &LinkConfig,
    renewed: &cpb::RenewedCertificate,
    key: &rcgen::KeyPair,
) {
    let saved = LinkConfig {
        cert_pem: renewed.certificate_pem.clone(),
        key_pem: key.serialize_pem(),
        ..config.clone()
    };
    match saved.save(home) {
        Ok(()) => tracing::info!("renewed the agent's certificate"),
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot keep the renewed certificate; the next session will be refused")
        }
    }
}

/// What the controller has been told: the process list as of the last snapshot or
/// delta, and that message's sequence number.
#[derive(Default)]
struct Sent {
    processes: HashMap<u32, apb::ProcessInfo>,
    seq: u64,
}

impl Sent {
    /// A full snapshot (the first message, and after a `Resync`).
    fn snapshot(&mut self, now: HashMap<u32, apb::ProcessInfo>) -> cpb::agent_message::Body {
        self.processes = now;
        self.seq += 1;
        cpb::agent_message::Body::Snapshot(cpb::Snapshot {
            processes: self.processes.values().cloned().collect(),
            seq: self.seq,
        })
    }

    /// The instances whose state changed (not just their metrics) and those gone, or
    /// `None` when nothing did.
    fn state_delta(
        &mut self,
        now: HashMap<u32, apb::ProcessInfo>,
    ) -> Option<cpb::agent_message::Body> {
        let changed: Vec<apb::ProcessInfo> = (now.values())
            .filter(|p| (self.processes.get(&p.id)).is_none_or(|old| !same_state(old, p)))
            .cloned()
            .collect();
        let removed: Vec<u32> = (self.processes.keys())
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for p in &changed {
            self.processes.insert(p.id, p.clone());
        }
        for id in &removed {
            self.processes.remove(id);
        }
        self.seq += 1;
        Some(cpb::agent_message::Body::Delta(cpb::Delta {
            changed,
            removed,
            seq: self.seq,
        }))
    }

    /// The heartbeat carries the metrics that moved since the last one. Deltas count
    /// up by one; a heartbeat repeats the last sequence number, so the controller can
    /// tell it missed nothing.
    fn heartbeat(&mut self, now: HashMap<u32, apb::ProcessInfo>) -> cpb::agent_message::Body {
        let moved: Vec<apb::ProcessInfo> = (now.values())
            .filter(|p| self.processes.get(&p.id) != Some(*p))
            .cloned()
            .collect();
        if moved.is_empty() {
            return cpb::agent_message::Body::Heartbeat(cpb::Heartbeat { seq: self.seq });
        }
        for p in &moved {
            self.processes.insert(p.id, p.clone());
        }
        self.seq += 1;
        cpb::agent_message::Body::Delta(cpb::Delta {
            changed: moved,
            removed: Vec::new(),
            seq: self.seq,
        })
    }
}

/// The log subscriptions the controller holds on this agent, each a forwarding task.
#[derive(Default)]
struct Subscriptions(HashMap<u64, tokio::task::JoinHandle<()>>);

impl Subscriptions {
    /// Acts on a controller message; returns whether it asked for a fresh snapshot.
    fn dispatch(
        &mut self,
        message: cpb::ControllerMessage,
        operations: &Operations,
        tx: &mpsc::Sender<cpb::AgentMessage>,
        host: &str,
    ) -> bool {
        match message.body {
            Some(cpb::controller_message::Body::Command(command)) => {
                let (operations, tx, host) = (operations.clone(), tx.clone(), host.to_string());
                tokio::spawn(async move {
                    let result = execute(&operations, command, &host).await;
                    let body = Some(cpb::agent_message::Body::Result(result));
                    let _ = tx.send(cpb::AgentMessage { body }).await;
                });
            }
            Some(cpb::controller_message::Body::Subscribe(subscribe)) => {
                let id = subscribe.subscription_id;
                let forward = forward_logs(operations.clone(), subscribe, tx.clone(), host.into());
                if let Some(old) = self.0.insert(id, tokio::spawn(forward)) {
                    old.abort();
                }
            }
            Some(cpb::controller_message::Body::Unsubscribe(unsubscribe)) => {
                if let Some(task) = self.0.remove(&unsubscribe.subscription_id) {
                    task.abort();
                }
            }
            Some(cpb::controller_message::Body::Resync(_)) => return true,
            Some(
                cpb::controller_message::Body::Welcome(_)
                | cpb::controller_message::Body::Renewed(_)
                | cpb::controller_message::Body::Controllers(_),
            )
            | None => {}
        }
        false
    }

    fn abort_all(self) {
        for task in self.0.into_values() {
            task.abort();
        }
    }
}

/// Runs a controller command through the same operations as the local API, mapped
/// by `fleet_proto::ops::agent_call` as every other route maps it.
async fn execute(
    operations: &Operations,
    command: cpb::AgentCommand,
    host: &str,
) -> cpb::CommandResult {
    let action = cpb::Action::try_from(command.action).unwrap_or(cpb::Action::Unspecified);
    let result = match ops::agent_call(action, command.targets, &command.count) {
        Ok(call) => operations.call(call).await,
        Err(error) => Err(AgentError::InvalidArgument(error.to_string())),
    };
    match result {
        Ok(response) => cpb::CommandResult {
            request_id: command.request_id,
            ok: true,
            error: String::new(),
            processes: response
                .processes
                .into_iter()
                .map(|mut p| {
                    p.host = host.to_string();
                    p
                })
                .collect(),
            code: 0,
        },
        Err(error) => {
            let status = tonic::Status::from(error);
            cpb::CommandResult {
                request_id: command.request_id,
                ok: false,
                error: status.message().to_string(),
                processes: Vec::new(),
                code: status.code() as i32,
            }
        }
    }
}

/// Streams the agent's log lines for one subscription in small batches.
async fn forward_logs(
    operations: Operations,
    subscribe: cpb::LogSubscribe,
    tx: mpsc::Sender<cpb::AgentMessage>,
    host: String,
) {
    let request = apb::LogsRequest {
        targets: subscribe.targets,
        lines: subscribe.lines,
        follow: subscribe.follow,
        ..Default::default()
    };
    let Ok(mut lines) = operations.logs(request).await else {
        return;
    };
    loop {
        // A batch starts with the next line and closes `LOG_BATCH_WAIT` after it (or
        // full): a quiet app's line waits at most that, a flood travels in batches.
        let Some(first) = lines.recv().await else {
            if !subscribe.follow {
                // An empty batch tells the controller the history is complete.
                let _ = tx.send(batch(subscribe.subscription_id, Vec::new())).await;
            }
            return;
        };
        let mut entries = vec![first];
        let deadline = tokio::time::Instant::now() + LOG_BATCH_WAIT;
        let mut ended = false;
        while entries.len() < LOG_BATCH_LINES {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        for entry in &mut entries {
            entry.host.clone_from(&host);
        }
        if ended {
            let _ = tx.send(batch(subscribe.subscription_id, entries)).await;
            if !subscribe.follow {
                let _ = tx.send(batch(subscribe.subscription_id, Vec::new())).await;
            }
            return;
        }
        if !entries.is_empty()
            && tx
                .send(batch(subscribe.subscription_id, entries))
                .await
                .is_err()
        {
            return;
        }
    }
}

fn batch(subscription_id: u64, entries: Vec<apb::LogEntry>) -> cpb::AgentMessage {
    cpb::AgentMessage {
        body: Some(cpb::agent_message::Body::Logs(cpb::LogBatch {
            subscription_id,
            entries,
        })),
    }
}

/// Different for every agent process: the pid and start time.
fn boot_id() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}-{started}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32, status: apb::ProcessStatus, cpu: f64) -> (u32, apb::ProcessInfo) {
        let info = apb::ProcessInfo {
            id,
            status: status as i32,
            cpu_percent: cpu,
            ..Default::default()
        };
        (id, info)
    }

    #[test]
    fn deltas_count_up_and_heartbeats_repeat_the_last_sequence_number() {
        let mut sent = Sent::default();
        let online = HashMap::from([info(0, apb::ProcessStatus::Online, 1.0)]);
        assert!(matches!(
            sent.snapshot(online.clone()),
            cpb::agent_message::Body::Snapshot(cpb::Snapshot { seq: 1, .. })
        ));
        // Nothing changed: no delta, and the heartbeat repeats 1.
        assert!(sent.state_delta(online.clone()).is_none());
        assert!(matches!(
            sent.heartbeat(online),
            cpb::agent_message::Body::Heartbeat(cpb::Heartbeat { seq: 1 })
        ));
        // Metrics alone wait for the heartbeat, which then carries them as a delta.
        let busier = HashMap::from([info(0, apb::ProcessStatus::Online, 50.0)]);
        assert!(sent.state_delta(busier.clone()).is_none());
        assert!(matches!(
            sent.heartbeat(busier),
            cpb::agent_message::Body::Delta(cpb::Delta { seq: 2, .. })
        ));
        // A state change and a removal go out at once.
        let stopped = HashMap::from([info(1, apb::ProcessStatus::Stopped, 0.0)]);
        match sent.state_delta(stopped) {
            Some(cpb::agent_message::Body::Delta(delta)) => {
                assert_eq!(delta.seq, 3);
                assert_eq!(delta.removed, vec![0]);
                assert_eq!(delta.changed.len(), 1);
            }
            other => panic!("expected a delta, got {other:?}"),
        }
    }
}
