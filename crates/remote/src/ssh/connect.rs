//! One SSH connection: TCP (or a direct-tcpip channel through a jump host), the
//! handshake with host key checking, authentication, keepalives; then session
//! channels (exec) and direct-streamlocal channels on it. Which connection to reuse
//! is left to `Pool`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::{Algorithm, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelOpenFailure, ChannelStream, ChannelWriteHalf, Preferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::known_hosts::{self, Verdict};
use super::options::{Resolved, StrictHostKeyChecking};
use super::{ExecOutput, SshError, auth};

/// Session channels (exec) open at once on one connection: below OpenSSH's
/// `MaxSessions` default of 10 (a real sshd refused the 11th of 30 concurrent
/// execs), leaving room for the user's own `ssh` multiplexed on a ControlMaster.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 8;
/// Output kept per stream of one exec; the rest is dropped and `truncated` set.
const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// The russh handler: checks the server's host key against known_hosts.
pub struct Checker {
    label: String,
    /// The name known_hosts files know the host by (HostKeyAlias, else HostName).
    hostname: String,
    port: u16,
    user_known_hosts: Vec<PathBuf>,
    global_known_hosts: Vec<PathBuf>,
    strict: StrictHostKeyChecking,
    hash_known_hosts: bool,
    accept_changed: bool,
    /// `@cert-authority` keys for this host: their host certificates are trusted.
    authorities: Vec<russh::keys::PublicKey>,
    warnings: Arc<super::Warnings>,
}

#[derive(Debug)]
pub enum CheckerError {
    Ssh(russh::Error),
    Refused(SshError),
}

impl From<russh::Error> for CheckerError {
    fn from(error: russh::Error) -> CheckerError {
        CheckerError::Ssh(error)
    }
}

impl client::Handler for Checker {
    type Error = CheckerError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, CheckerError> {
        // Certificate algorithms are asked for only when a CA is known for the host.
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => return self.check_certificate(cert),
        };
        let fingerprint = known_hosts::fingerprint(key);
        let files: Vec<PathBuf> = self
            .user_known_hosts
            .iter()
            .chain(&self.global_known_hosts)
            .cloned()
            .collect();
        match known_hosts::check(&files, &self.hostname, self.port, key) {
            Verdict::Known => Ok(true),
            Verdict::Revoked { file, line } => {
                Err(CheckerError::Refused(SshError::RevokedHostKey {
                    host: self.label.clone(),
                    fingerprint,
                    known_hosts: file,
                    line,
                }))
            }
            Verdict::Changed { file, line } => {
                // Never on StrictHostKeyChecking=no alone: only when the operator
                // named this host for this run.
                if self.accept_changed {
                    self.warn(format!(
                        "the host key of {} changed ({}:{} holds another; it now offers {fingerprint}); connected anyway, as --accept-changed-host-key asks",
                        self.label,
                        file.display(),
                        line
                    ));
                    return Ok(true);
                }
                Err(CheckerError::Refused(SshError::ChangedHostKey {
                    host: self.label.clone(),
                    fingerprint,
                    known_hosts: file,
                    line,
                }))
            }
            Verdict::Unknown => {
                // `UserKnownHostsFile none` leaves nowhere to learn into.
                let learn_into = self.user_known_hosts.first().cloned();
                if self.strict == StrictHostKeyChecking::Yes {
                    return Err(CheckerError::Refused(SshError::UnknownHostKey {
                        host: self.label.clone(),
                        fingerprint,
                        known_hosts: learn_into.unwrap_or_else(|| PathBuf::from("none")),
                    }));
                }
                if let Some(file) = learn_into
                    && let Err(error) = known_hosts::learn(
                        &file,
                        &self.hostname,
                        self.port,
                        key,
                        self.hash_known_hosts,
                    )
                {
                    self.warn(format!(
                        "cannot add the host key of {} to {}: {error}",
                        self.label,
                        file.display()
                    ));
                }
                Ok(true)
            }
        }
    }
}

impl Checker {
    fn warn(&self, message: String) {
        self.warnings.push(message);
    }

    fn known_files(&self) -> Vec<PathBuf> {
        (self.user_known_hosts.iter())
            .chain(&self.global_known_hosts)
            .cloned()
            .collect()
    }

    /// A host certificate: of the host type, signed by a CA known for this host (and
    /// not revoked, nor its key), valid now, naming this host if it names any, with
    /// no critical option.
    fn check_certificate(&self, cert: &russh::keys::Certificate) -> Result<bool, CheckerError> {
        use russh::keys::HashAlg;
        use russh::keys::ssh_key::certificate::CertType;
        let refuse = |why: String| {
            Err(CheckerError::Refused(SshError::Connect {
                host: self.label.clone(),
                source: format!("its host certificate {}: {why}", cert.key_id()),
            }))
        };
        let files = self.known_files();
        if cert.cert_type() != CertType::Host {
            return refuse("is not a host certificate".into());
        }
        if known_hosts::revoked(&files, cert.public_key())
            || known_hosts::revoked(&files, cert.signature_key())
        {
            return refuse("its key or its CA is @revoked in known_hosts".into());
        }
        let trusted: Vec<_> = (self.authorities.iter())
            .map(|ca| ca.fingerprint(HashAlg::Sha256))
            .collect();
        if let Err(error) = cert.validate(trusted.iter()) {
            return refuse(format!(
                "does not validate against the @cert-authority keys for this host ({error})"
            ));
        }
        let principals = cert.valid_principals();
        if !principals.is_empty()
            && !principals
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&self.hostname))
        {
            return refuse(format!(
                "is for {}, not {}",
                principals.join(", "),
                self.hostname
            ));
        }
        if !cert.critical_options().is_empty() {
            return refuse("carries critical options fleet does not know".into());
        }
        Ok(true)
    }
}

/// Asks for the algorithms of the host's known keys first, as OpenSSH orders
/// HostKeyAlgorithms, so a host with several keys shows the one on file.
fn preferred_for(known: &[Algorithm]) -> Preferred {
    let default = Preferred::default();
    let family = |a: &Algorithm, b: &Algorithm| {
        a == b || (matches!(a, Algorithm::Rsa { .. }) && matches!(b, Algorithm::Rsa { .. }))
    };
    let mut keys: Vec<Algorithm> = default
        .key
        .iter()
        .filter(|a| known.iter().any(|k| family(k, a)))
        .cloned()
        .collect();
    let rest: Vec<Algorithm> = default
        .key
        .iter()
        .filter(|a| !keys.contains(a))
        .cloned()
        .collect();
    keys.extend(rest);
    Preferred {
        key: Cow::Owned(keys),
        ..default
    }
}

/// An authenticated connection to one host.
pub struct Connection {
    pub handle: Handle<Checker>,
    /// Queues session channels below the server's MaxSessions.
    sessions: Semaphore,
    /// What errors call the host.
    pub label: String,
    pub connect_timeout: Duration,
    /// The jump host's connection, kept alive while this one lives.
    _via: Option<Arc<Connection>>,
    /// The ProxyCommand carrying this connection.
    _proxy: Option<ProxyCommand>,
}

/// Tracks handshakes in flight (for the concurrency test and for `--verbose` one day).
#[derive(Default)]
pub struct HandshakeGauge {
    pub current: std::sync::atomic::AtomicUsize,
    pub peak: std::sync::atomic::AtomicUsize,
}

struct GaugeGuard<'a>(&'a HandshakeGauge);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a HandshakeGauge) -> GaugeGuard<'a> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = gauge.current.fetch_add(1, SeqCst) + 1;
        gauge.peak.fetch_max(now, SeqCst);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0
            .current
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The host key checker and the client's settings for `resolved`: the algorithms of
/// its known keys asked for first, host certificates only where a CA is known.
fn prepare(
    resolved: &Resolved,
    label: String,
    warnings: Arc<super::Warnings>,
) -> (Checker, Arc<client::Config>) {
    let known_files: Vec<PathBuf> = (resolved.user_known_hosts.iter())
        .chain(&resolved.global_known_hosts)
        .cloned()
        .collect();
    let authorities =
        known_hosts::cert_authorities(&known_files, &resolved.host_key_name, resolved.port);
    let config = Arc::new(client::Config {
        keepalive_interval: resolved.keepalive_interval,
        keepalive_max: resolved.keepalive_max,
        // Long silent commands must not end the connection; keepalives find dead peers.
        inactivity_timeout: None,
        nodelay: true,
        preferred: Preferred {
            host_key_certificates: if authorities.is_empty() {
                Cow::Borrowed(&[])
            } else {
                Preferred::default().key
            },
            ..preferred_for(&known_hosts::known_algorithms(
                &known_files,
                &resolved.host_key_name,
                resolved.port,
            ))
        },
        ..client::Config::default()
    });
    let checker = Checker {
        label,
        hostname: resolved.host_key_name.clone(),
        port: resolved.port,
        user_known_hosts: resolved.user_known_hosts.clone(),
        global_known_hosts: resolved.global_known_hosts.clone(),
        strict: resolved.strict,
        hash_known_hosts: resolved.hash_known_hosts,
        accept_changed: resolved.accept_changed_host_key,
        authorities,
        warnings,
    };
    (checker, config)
}

/// Connects, checks the host key and authenticates, holding a handshake permit
/// throughout (the jump host's connection must already exist: waiting for it while
/// holding a permit could starve it).
pub async fn establish(
    resolved: &Resolved,
    label: String,
    via: Option<Arc<Connection>>,
    handshakes: &Semaphore,
    gauge: &HandshakeGauge,
    warnings: Arc<super::Warnings>,
) -> Result<Connection, SshError> {
    let Ok(_permit) = handshakes.acquire().await else {
        return Err(SshError::Channel {
            host: label,
            message: "the connection pool is closed".to_string(),
        });
    };
    let _gauge = GaugeGuard::new(gauge);
    let timeout = resolved.connect_timeout;
    let address = format!("{}:{}", resolved.hostname, resolved.port);
    let (checker, config) = prepare(resolved, label.clone(), warnings);
    let timed_out = |step: &'static str| SshError::Timeout {
        host: label.clone(),
        step,
        after: timeout,
    };
    let mut proxy_child = None;
    let mut handle = match &via {
        Some(jump) => {
            let channel = tokio::time::timeout(
                timeout,
                jump.handle.channel_open_direct_tcpip(
                    resolved.hostname.clone(),
                    u32::from(resolved.port),
                    "127.0.0.1",
                    0,
                ),
            )
            .await
            .map_err(|_| timed_out("connect through the jump host"))?
            .map_err(|error| SshError::Connect {
                host: label.clone(),
                source: format!(
                    "jump host {} cannot reach {address}: {}",
                    jump.label,
                    describe(&error)
                ),
            })?;
            handshake(channel.into_stream(), config, checker, timeout, &label).await?
        }
        None if resolved.proxy_command.is_some() => {
            let command = resolved.proxy_command.as_deref().unwrap_or_default();
            let (child, stream) = proxy(command).map_err(|error| SshError::Connect {
                host: label.clone(),
                source: format!("cannot run ProxyCommand `{command}`: {error}"),
            })?;
            proxy_child = Some(child);
            handshake(stream, config, checker, timeout, &label).await?
        }
        None => {
            let stream = tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((resolved.hostname.as_str(), resolved.port)),
            )
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(|error| SshError::Connect {
                host: label.clone(),
                source: format!("{address}: {}", lower_first(&error.to_string())),
            })?;
            let _ = stream.set_nodelay(true);
            handshake(stream, config, checker, timeout, &label).await?
        }
    };
    tokio::time::timeout(timeout, auth::authenticate(&mut handle, resolved, &label))
        .await
        .map_err(|_| timed_out("authentication"))??;
    Ok(Connection {
        handle,
        sessions: Semaphore::new(MAX_SESSIONS_PER_CONNECTION),
        label,
        connect_timeout: timeout,
        _via: via,
        _proxy: proxy_child,
    })
}

/// Runs a `ProxyCommand` (`sh -c`, as OpenSSH does): its stdout and stdin are the
/// connection; its stderr is the user's. It runs in a process group of its own, all
/// of which is killed when the connection is dropped (a shell's background job would
/// otherwise outlive it, holding the socket and the user's terminal).
fn proxy(
    command: &str,
) -> std::io::Result<(
    ProxyCommand,
    impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
)> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(std::io::Error::other("no pipes to the command"));
    };
    Ok((ProxyCommand(child), tokio::io::join(stdout, stdin)))
}

/// A running ProxyCommand; dropping it kills its whole process group.
pub struct ProxyCommand(tokio::process::Child);

impl Drop for ProxyCommand {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn handshake<R>(
    stream: R,
    config: Arc<client::Config>,
    checker: Checker,
    timeout: Duration,
    label: &str,
) -> Result<Handle<Checker>, SshError>
where
    R: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(timeout, client::connect_stream(config, stream, checker)).await {
        Err(_) => Err(SshError::Timeout {
            host: label.to_string(),
            step: "ssh handshake",
            after: timeout,
        }),
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(CheckerError::Refused(error))) => Err(error),
        Ok(Err(CheckerError::Ssh(error))) => Err(SshError::Connect {
            host: label.to_string(),
            source: format!("ssh handshake failed: {}", describe(&error)),
        }),
    }
}

/// A russh error in fleet's words.
pub fn describe(error: &russh::Error) -> String {
    match error {
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => {
            "the host could not connect (nothing listening?)".to_string()
        }
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited) => {
            "forbidden by the host's sshd configuration".to_string()
        }
        russh::Error::NoCommonAlgo { kind, .. } => {
            format!("no {kind:?} algorithm in common with the server").to_lowercase()
        }
        other => lower_first(&other.to_string()),
    }
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Closes a session channel when dropped (a cancelled exec), as russh sends no
/// CHANNEL_CLOSE for a dropped channel and leaked sessions count against MaxSessions.
struct CloseOnDrop(Option<ChannelWriteHalf<Msg>>);

impl CloseOnDrop {
    async fn close(mut self) {
        if let Some(channel) = self.0.take() {
            let _ = channel.close().await;
        }
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(channel) = self.0.take() {
            tokio::spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` (a `super::remote_command` line) with `input` written to its
    /// stdin (then EOF) while its output is read, so neither side waits on the other's
    /// window; collects the output until the channel closes or `timeout` passes
    /// (queueing excluded).
    pub async fn exec_with_input(
        &self,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let Ok(_permit) = self.sessions.acquire().await else {
            return Err(self.channel_error("the connection is closed".to_string()));
        };
        let deadline = Instant::now() + timeout;
        let timed_out = || SshError::Timeout {
            host: self.label.clone(),
            step: "command",
            after: timeout,
        };
        let channel = tokio::time::timeout_at(deadline, self.handle.channel_open_session())
            .await
            .map_err(|_| timed_out())?
            .map_err(|error| {
                self.channel_error(format!("cannot open a session: {}", describe(&error)))
            })?;
        let (mut read, write) = channel.split();
        let write = CloseOnDrop(Some(write));
        let run = async {
            let Some(channel) = &write.0 else {
                return Err(self.channel_error("the session closed".to_string()));
            };
            channel
                .exec(true, command)
                .await
                .map_err(|error| self.channel_error(describe(&error)))?;
            let send = async {
                if let Some(input) = input {
                    // A command that exits without reading all of its input is reported
                    // by its exit status, not as a write error.
                    let _ = channel.data(input).await;
                }
                let _ = channel.eof().await;
            };
            let mut output = ExecOutput::default();
            let receive = async {
                while let Some(message) = read.wait().await {
                    match message {
                        ChannelMsg::Data { data } => {
                            append(&mut output.stdout, &data, &mut output.truncated)
                        }
                        ChannelMsg::ExtendedData { data, ext: 1 } => {
                            append(&mut output.stderr, &data, &mut output.truncated)
                        }
                        ChannelMsg::ExitStatus { exit_status } => {
                            output.exit_status = Some(exit_status)
                        }
                        ChannelMsg::ExitSignal { signal_name, .. } => {
                            output.exit_signal = Some(format!("{signal_name:?}"))
                        }
                        ChannelMsg::Failure => {
                            return Err(self
                                .channel_error("the host refused to run the command".to_string()));
                        }
                        // Exit status may come after EOF: read until the channel closes.
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                Ok(())
            };
            let (_, received) = tokio::join!(send, receive);
            received.map(|()| output)
        };
        let result = tokio::time::timeout_at(deadline, run).await;
        write.close().await;
        result.map_err(|_| timed_out())?
    }

    /// Opens a direct-streamlocal channel to a unix socket on the host.
    pub async fn open_socket(&self, socket: &str) -> Result<ChannelStream<Msg>, SshError> {
        let channel = tokio::time::timeout(
            self.connect_timeout,
            self.handle.channel_open_direct_streamlocal(socket),
        )
        .await
        .map_err(|_| SshError::Timeout {
            host: self.label.clone(),
            step: "open the agent socket",
            after: self.connect_timeout,
        })?
        .map_err(|error| {
            let hint = match &error {
                russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => {
                    "\nhint: is fleet-agent running there? start it with `fleet-agent --daemon`, or set fleet_home if it uses another FLEET_HOME"
                }
                russh::Error::ChannelOpenFailure(
                    ChannelOpenFailure::AdministrativelyProhibited,
                ) => "\nhint: set `AllowStreamLocalForwarding yes` in the host's sshd_config",
                _ => "",
            };
            self.channel_error(format!(
                "cannot open {socket}: {}{hint}",
                describe(&error)
            ))
        })?;
        Ok(channel.into_stream())
    }

    fn channel_error(&self, message: String) -> SshError {
        SshError::Channel {
            host: self.label.clone(),
            message,
        }
    }
}

fn append(buffer: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_EXEC_OUTPUT.saturating_sub(buffer.len());
    if data.len() > room {
        *truncated = true;
    }
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}
